#!/usr/bin/env python3
import json, sys, statistics, collections
rows=[json.loads(l) for f in sys.argv[1:] for l in open(f)]
g=collections.OrderedDict()
for r in rows: g.setdefault((r["cell"],r["variant"]),[]).append(r)
def m(vs,fmt):
    vs=[v for v in vs if v is not None]
    if not vs: return "-"
    return f"{fmt.format(statistics.median(vs))} ({fmt.format(min(vs))}–{fmt.format(max(vs))})"
print("| cell | variant | n | Gbit/s | delivered | p50 ms | p99 ms | relay CPU % | CPU s/Gbit | skips | load1 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (c,v),rs in g.items():
    print(f"| {c} | {v} | {len(rs)} | {m([r['gbit'] for r in rs],'{:.2f}')} | {m([r['delivered']*100 for r in rs],'{:.1f}%')} | {m([r['p50'] for r in rs],'{:.2f}')} | {m([r['p99'] for r in rs],'{:.2f}')} | {m([r['cpu_pct'] for r in rs],'{:.1f}')} | {m([r['cpu_s_gbit'] for r in rs],'{:.3f}')} | {m([r['skips'] for r in rs],'{:.0f}')} | {m([r['load1'] for r in rs],'{:.1f}')} |")
