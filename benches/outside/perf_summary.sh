#!/bin/sh
# benches/outside/perf_summary.sh PERF.DATA OUT.txt: what a `perf record -g` of a server (compare
# --outside-count perf) spent its samples on: kernel vs user share, top DSOs, and the top symbols
# (self time, no children), as text for benches/results/.
set -e
in=$1; out=$2
{
  echo "# perf report of $in"
  echo "## samples by DSO (self)"
  perf report -i "$in" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
  echo "## top symbols (self)"
  perf report -i "$in" --no-children --sort sym --stdio -g none --percent-limit 0.4 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -60
} > "$out"
