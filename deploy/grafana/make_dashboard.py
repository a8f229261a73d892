#!/usr/bin/env python3
"""Writes deploy/grafana/relaycast.json, the Grafana dashboard for relaycast's
/metrics (edit this file, not the JSON; `deploy/validate` checks that every
metric the dashboard uses is one the relay exposes)."""
import json, os

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
y = 0

def panel(title, exprs, unit="short", kind="timeseries", w=12, h=8, stack=False, desc=""):
    global y
    x = 0 if len([p for p in panels if p["gridPos"]["y"] == y]) == 0 else 12
    if x == 0 and panels and panels[-1]["gridPos"]["y"] == y and panels[-1]["gridPos"]["w"] == 24:
        pass
    p = {
        "id": len(panels) + 1,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"stacking": {"mode": "normal" if stack else "none"}, "fillOpacity": 10},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l}
            for i, (e, l) in enumerate(exprs)
        ],
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
        p["fieldConfig"]["defaults"].pop("custom")
    panels.append(p)
    if x + w >= 24:
        y += h

SEL = '{job=~"$job", instance=~"$instance"}'
S = '{job=~"$job", instance=~"$instance", stream=~"$stream"}'

def row_stats():
    global y
    stats = [
        ("Streams", f"sum(relaycast_streams{SEL})"),
        ("Publishers", f"sum(relaycast_publishers{SEL})"),
        ("Viewers", f"sum(relaycast_viewers{SEL})"),
        ("Out", f"sum(rate(relaycast_bytes_out_total{SEL}[1m])) * 8"),
    ]
    for i, (t, e) in enumerate(stats):
        panels.append({
            "id": len(panels) + 1, "type": "stat", "title": t, "datasource": DS,
            "gridPos": {"x": 6 * i, "y": y, "w": 6, "h": 4},
            "fieldConfig": {"defaults": {"unit": "bps" if t == "Out" else "short"}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
            "targets": [{"refId": "A", "datasource": DS, "expr": e}],
        })
    y += 4

row_stats()
panel("Viewers by transport", [(f"sum by (transport) (relaycast_viewers{SEL})", "{{transport}}")], stack=True)
panel("Viewers by stream", [(f"sum by (stream) (relaycast_stream_viewers{S})", "{{stream}}")], stack=True)
panel("Throughput", [
    (f"sum(rate(relaycast_bytes_in_total{SEL}[1m])) * 8", "in"),
    (f"sum(rate(relaycast_bytes_out_total{SEL}[1m])) * 8", "out"),
], unit="bps")
panel("Fragments per second", [
    (f"sum(rate(relaycast_fragments_in_total{SEL}[1m]))", "in"),
    (f"sum(rate(relaycast_fragments_out_total{SEL}[1m]))", "out"),
], unit="ops")
panel("Join time (connect → first fragment)", [
    (f"histogram_quantile(0.5, sum by (le) (rate(relaycast_join_seconds_bucket{SEL}[5m])))", "p50"),
    (f"histogram_quantile(0.99, sum by (le) (rate(relaycast_join_seconds_bucket{SEL}[5m])))", "p99"),
], unit="s")
panel("Delivery latency (arrival → written to viewer)", [
    (f"histogram_quantile(0.5, sum by (le) (rate(relaycast_delivery_seconds_bucket{SEL}[5m])))", "p50"),
    (f"histogram_quantile(0.99, sum by (le) (rate(relaycast_delivery_seconds_bucket{SEL}[5m])))", "p99"),
    (f"sum(rate(relaycast_delivery_seconds_sum{SEL}[5m])) / sum(rate(relaycast_delivery_seconds_count{SEL}[5m]))", "mean"),
], unit="s")
panel("Slow viewers: skips and lag disconnects", [
    (f"sum(rate(relaycast_skips_total{SEL}[5m]))", "skips/s"),
    (f"sum(rate(relaycast_lag_disconnects_total{SEL}[5m]))", "lag disconnects/s"),
], unit="ops")
panel("Refused clients by reason", [
    (f"sum by (reason) (rate(relaycast_refused_total{SEL}[5m]))", "{{reason}}"),
], unit="ops", stack=True)
panel("Publisher connections", [
    (f"sum(increase(relaycast_publishes_total{SEL}[5m]))", "publishes / 5m"),
    (f"sum(relaycast_publishers{SEL})", "live publishers"),
])
panel("Upstream (cascade) state", [
    (f"sum by (state) (relaycast_upstream_streams{SEL})", "{{state}}"),
], stack=True)
panel("Stream out rate", [(f"sum by (stream) (rate(relaycast_stream_bytes_out_total{S}[1m])) * 8", "{{stream}}")], unit="bps")
panel("Stream delivery p99", [
    (f"histogram_quantile(0.99, sum by (stream, le) (rate(relaycast_stream_delivery_seconds_bucket{S}[5m])))", "{{stream}}"),
], unit="s")
panel("Memory", [
    (f"process_resident_memory_bytes{SEL}", "{{instance}}"),
    (f"process_resident_memory_bytes{SEL} / on(instance) clamp_min(sum by (instance) (relaycast_viewers{SEL}), 1)", "per viewer {{instance}}"),
    (f"relaycast_heap_allocated_bytes{SEL}", "heap allocated {{instance}}"),
    (f"relaycast_heap_resident_bytes{SEL}", "heap resident {{instance}}"),
], unit="bytes")
panel("Open file descriptors", [(f"process_open_fds{SEL}", "{{instance}}")])

def var(name, query, include_all=True):
    return {
        "name": name, "type": "query", "datasource": DS, "refresh": 2,
        "query": {"query": query, "refId": name}, "definition": query,
        "includeAll": include_all, "multi": True, "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    }

dash = {
    "title": "relaycast",
    "uid": "relaycast",
    "description": "relaycast live fMP4 relay: streams, viewers, throughput, join time, delivery latency, slow viewers, refusals, cascade.",
    "tags": ["relaycast", "streaming"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {"text": "Prometheus", "value": "prometheus"}},
        var("job", "label_values(relaycast_build_info, job)"),
        var("instance", 'label_values(relaycast_build_info{job=~"$job"}, instance)'),
        var("stream", 'label_values(relaycast_stream_live{job=~"$job", instance=~"$instance"}, stream)'),
    ]},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relaycast.json")
with open(out, "w") as f:
    json.dump(dash, f, indent=2)
    f.write("\n")
print(f"wrote {out}: {len(panels)} panels")
