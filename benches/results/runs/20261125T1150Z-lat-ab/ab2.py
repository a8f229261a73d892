#!/usr/bin/env python3
"""ab.py OUT.jsonl RUNS CELL VARIANT... : interleaved runs (round robin), relaycast load with the same load binary."""
import json, subprocess, sys, os, statistics, time
out, runs, cell = sys.argv[1], int(sys.argv[2]), sys.argv[3]
variants = sys.argv[4:]
CELLS = {
 "frame1000": dict(viewers=1000, bitrate="2.5M", fps=30, gop=1, duration=10, warmup=1),
 "frame100": dict(viewers=100, bitrate="2.5M", fps=30, gop=1, duration=10, warmup=1),
 "tput1000": dict(viewers=1000, bitrate="20M", fps=10, gop=1, duration=10, warmup=1),
 "tput100": dict(viewers=100, bitrate="200M", fps=10, gop=1, duration=10, warmup=1),
}
env = dict(os.environ, RELAYCAST_LIMITS__MAX_CONNECTIONS_PER_IP="0")
for r in range(runs):
    for v in variants:
        cmd = (["taskset", "-c", "1"] if v.startswith("pin0") else []) + ["/tmp/relaycast-base", "load", "--json", "--label", f"{cell}/{v}", "--transport", "ws",
               "--spawn-relay", "127.0.0.1:0", "--relay-bin", f"/tmp/ab/{v}"]
        for k, x in CELLS[cell].items():
            cmd += ["--" + k, str(x)]
        la = open("/proc/loadavg").read().split()[0]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        rep = None
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                rep = json.loads(line)
        if rep is None:
            print("no report", v, p.stderr[-300:], flush=True); continue
        rec = dict(cell=cell, variant=v, run=r, load1=float(la), gbit=rep.get("gbit_s"), delivered=rep.get("delivered_ratio"),
                   p50=rep["latency_ms"]["p50"], p99=rep["latency_ms"]["p99"], cpu_pct=rep.get("relay_cpu_pct"),
                   cpu_s_gbit=rep.get("relay_cpu_s_per_gbit"), skips=rep.get("skips"), lg=rep.get("own_cpu_pct"))
        print(json.dumps(rec), flush=True)
        with open(out, "a") as f: f.write(json.dumps(rec) + "\n")
        time.sleep(0.5)
