#!/usr/bin/env python3
"""How cost grows with viewers (#15): from one `benches/compare --scenarios
outside` run (raw.jsonl), a markdown table per cell and system (outside
client) and two SVG plots against viewers on a log axis: server CPU seconds
per Gbit delivered, and RSS per viewer.

    benches/outside/growth.py RUN_DIR      # writes RUN_DIR/growth.md, growth-cpu.svg, growth-rss.svg
"""
import json
import math
import os
import sys

COLORS = {"relaycast": "#d62728", "nchan": "#1f77b4", "node-ws": "#2ca02c",
          "relaycast-http": "#ff9896", "nchan-http": "#aec7e8"}


def rows(path):
    out = []
    for line in open(path):
        r = json.loads(line)
        if r.get("scenario") != "outside" or r.get("client") != "outside":
            continue
        # Gbit delivered: what was asked × the share of the fragments that arrived (a system that drops
        # fragments does less work).
        share = r["delivered"] / r["expected"] if r.get("expected") else 1.0
        gbit = r["viewers"] * r["bitrate_k"] * 1e3 * r["seconds"] / 1e9 * share
        r["cpu_s_per_gbit"] = r["cpu_pct"] / 100 * r["seconds"] / gbit
        r["rss_kib"] = r["rss_per_viewer_b"] / 1024
        out.append(r)
    return out


def svg(rs, key, title, unit):
    w, h, pad = 640, 360, 60
    xs = sorted({r["viewers"] for r in rs})
    top = max(r[key] for r in rs) * 1.1
    lx0, lx1 = math.log10(xs[0]), math.log10(xs[-1])

    def px(v):
        return pad + (math.log10(v) - lx0) / max(lx1 - lx0, 1e-9) * (w - 2 * pad)

    def py(v):
        return h - pad - v / top * (h - 2 * pad)

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
         f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
         f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
         f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">viewers (log)</text>',
         f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">{unit}</text>']
    for x in xs:
        s.append(f'<text x="{px(x)}" y="{h - pad + 16}" text-anchor="middle">{x:,}</text>')
    for i in range(5):
        v = top * i / 4
        s.append(f'<text x="{pad - 6}" y="{py(v) + 4}" text-anchor="end">{v:.3g}</text>')
    for n, (system, color) in enumerate(COLORS.items()):
        pts = sorted((r["viewers"], r[key]) for r in rs if r["system"] == system)
        if not pts:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="6 3"' if system.endswith("-http") else ""
        s.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        s += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        s.append(f'<text x="{w - pad - 90}" y="{pad + 16 * n}" fill="{color}">{system}</text>')
    s.append("</svg>")
    return "\n".join(s)


def main():
    run = sys.argv[1]
    rs = rows(os.path.join(run, "raw.jsonl"))
    if not rs:
        sys.exit("growth: no outside-client rows in " + run)
    md = ["| cell | system | delivered | p50 / p99 ms | server CPU % of a core | CPU s/Gbit | ratio to nchan (same transport) | RSS per viewer KiB |",
          "|---|---|---|---|---|---|---|---|"]
    for x in sorted({r["x"] for r in rs}, key=lambda c: int(c.split("x")[0])):
        cell = [r for r in rs if r["x"] == x]
        for r in cell:
            # HTTP streaming against nchan's http-raw-stream, WebSocket against nchan's WebSocket.
            peer = "nchan-http" if r["system"].endswith("-http") else "nchan"
            nchan = next((q for q in cell if q["system"] == peer), None)
            ratio = f'{r["cpu_s_per_gbit"] / nchan["cpu_s_per_gbit"]:.2f}' if nchan else "–"
            md.append(f'| {x} | {r["system"]} | {r["delivered"]:,}/{r["expected"]:,} | {r["p50_ms"]:.1f} / {r["p99_ms"]:.1f} '
                      f'| {r["cpu_pct"]:.1f} | {r["cpu_s_per_gbit"]:.4f} | {ratio} | {r["rss_kib"]:.1f} |')
    open(os.path.join(run, "growth.md"), "w").write("\n".join(md) + "\n")
    open(os.path.join(run, "growth-cpu.svg"), "w").write(svg(rs, "cpu_s_per_gbit", "Server CPU per Gbit delivered", "CPU s / Gbit"))
    open(os.path.join(run, "growth-rss.svg"), "w").write(svg(rs, "rss_kib", "Server RSS per viewer", "KiB"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
