#!/usr/bin/env python3
"""Structure checks for deploy/ that need no cluster and no Docker daemon
(called by deploy/validate). With --metrics FILE: check that every metric
the Grafana dashboard uses is a family in that /metrics scrape."""
import json, os, re, sys
import yaml

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
errors = []

def check(cond, msg):
    if not cond:
        errors.append(msg)

def load_yaml(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

dash = json.load(open("deploy/grafana/relaycast.json"))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
used = set(re.findall(r"\b((?:relaycast|process)_[a-z_]+)", " ".join(exprs)))

if len(sys.argv) == 3 and sys.argv[1] == "--metrics":
    families = set(re.findall(r"^# TYPE (\S+) ", open(sys.argv[2]).read(), re.M))
    def exposed(m):
        return m in families or any(m == f + s for f in families for s in ("_bucket", "_sum", "_count"))
    missing = sorted(m for m in used if not exposed(m))
    check(not missing, f"dashboard uses metrics /metrics does not have: {missing}")
    if errors:
        sys.exit("\n".join(errors))
    sys.exit(0)

# Every YAML file parses.
for root, _, files in os.walk("deploy"):
    for f in files:
        if f.endswith((".yml", ".yaml")):
            load_yaml(os.path.join(root, f))

# Dashboard: unique ids, targets, no gridPos overlap.
ids = [p["id"] for p in dash["panels"]]
check(len(ids) == len(set(ids)), "dashboard: duplicate panel ids")
check(all(p.get("targets") for p in dash["panels"]), "dashboard: a panel without targets")
cells = set()
for p in dash["panels"]:
    g = p["gridPos"]
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            check((x, y) not in cells, f"dashboard: panel {p['title']!r} overlaps another")
            cells.add((x, y))
    check(g["x"] + g["w"] <= 24, f"dashboard: panel {p['title']!r} wider than the grid")
for needed in ["relaycast_viewers", "relaycast_join_seconds_bucket", "relaycast_delivery_seconds_bucket",
               "relaycast_refused_total", "relaycast_skips_total", "relaycast_lag_disconnects_total",
               "relaycast_upstream_streams", "relaycast_bytes_in_total", "relaycast_bytes_out_total"]:
    check(needed in used, f"dashboard: nothing shows {needed}")

# Kubernetes.
objs = []
for f in sorted(os.listdir("deploy/k8s")):
    if f.endswith(".yaml") and f != "kustomization.yaml":
        objs += load_yaml(os.path.join("deploy/k8s", f))
kust = load_yaml("deploy/k8s/kustomization.yaml")[0]
for r in kust["resources"]:
    check(os.path.exists(os.path.join("deploy/k8s", r)), f"kustomization: missing {r}")
by_kind = {}
for o in objs:
    for k in ("apiVersion", "kind", "metadata"):
        check(k in o, f"k8s: object without {k}: {o}")
    by_kind.setdefault(o["kind"], []).append(o)
workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
check(any(o["kind"] == "StatefulSet" for o in workloads), "k8s: no origin StatefulSet")
check(any(o["kind"] == "Deployment" for o in workloads), "k8s: no edge Deployment")
cm = by_kind["ConfigMap"][0]
m = re.search(r"shutdown_timeout\s*=\s*([0-9.]+)", cm["data"]["relaycast.toml"])
shutdown = float(m.group(1)) if m else 5.0
for w in workloads:
    name = w["metadata"]["name"]
    spec = w["spec"]
    tmpl = spec["template"]
    labels = tmpl["metadata"]["labels"]
    for k, v in spec["selector"]["matchLabels"].items():
        check(labels.get(k) == v, f"{name}: selector {k}={v} does not match the pod template")
    pod = tmpl["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > shutdown, f"{name}: terminationGracePeriodSeconds {grace} ≤ shutdown_timeout {shutdown}")
    check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: not runAsNonRoot")
    for c in pod["containers"]:
        rp = c.get("readinessProbe", {}).get("httpGet", {})
        check(rp.get("path") == "/healthz", f"{name}: readiness probe is not /healthz")
        pnames = {p["name"] for p in c.get("ports", [])}
        check(rp.get("port") in pnames, f"{name}: readiness probe port {rp.get('port')} not a container port")
        for mnt in c.get("volumeMounts", []):
            check(any(v["name"] == mnt["name"] for v in pod.get("volumes", [])), f"{name}: mount {mnt['name']} without a volume")
    if w["kind"] == "StatefulSet":
        check(any(s["metadata"]["name"] == spec["serviceName"] for s in by_kind["Service"]),
              f"{name}: serviceName {spec['serviceName']} has no Service")
    if w["kind"] == "Deployment":
        args = " ".join(pod["containers"][0].get("args", []))
        check("--origin=quic://" in args, f"{name}: edge without --origin quic://")
for s in by_kind["Service"]:
    sel = s["spec"]["selector"]
    targets = [w for w in workloads if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
    check(targets, f"Service {s['metadata']['name']}: selects no workload")
    for p in s["spec"]["ports"]:
        for w in targets:
            cports = {(cp["name"], cp.get("protocol", "TCP")) for c in w["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])}
            check((p["targetPort"], p.get("protocol", "TCP")) in cports,
                  f"Service {s['metadata']['name']}: targetPort {p['targetPort']}/{p.get('protocol','TCP')} not in {w['metadata']['name']}")
check(any(p.get("protocol") == "UDP" for s in by_kind["Service"] for p in s["spec"]["ports"]
          if "edge" in s["metadata"]["name"]), "k8s: no UDP Service for the edges' QUIC")
for h in by_kind.get("HorizontalPodAutoscaler", []):
    ref = h["spec"]["scaleTargetRef"]
    check(any(w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"] for w in workloads),
          f"HPA {h['metadata']['name']}: no {ref['kind']} {ref['name']}")
check(by_kind.get("HorizontalPodAutoscaler"), "k8s: no HorizontalPodAutoscaler")

# Compose.
comp = load_yaml("deploy/docker-compose.yml")[0]
svcs = comp["services"]
for s in ("origin", "edge1", "edge2", "prometheus", "grafana"):
    check(s in svcs, f"compose: no service {s}")
for e in ("edge1", "edge2"):
    cmd = " ".join(svcs[e]["command"])
    check("--origin=quic://origin:4433" in cmd, f"compose: {e} does not pull from quic://origin:4433")
for s, spec in svcs.items():
    for v in spec.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("./") and not src.startswith("./tls"):
            check(os.path.exists(os.path.join("deploy", src)), f"compose: {s} mounts missing {src}")
prom = load_yaml("deploy/prometheus.yml")[0]
targets = {t for j in prom["scrape_configs"] for sc in j["static_configs"] for t in sc["targets"]}
for s in ("origin", "edge1", "edge2"):
    check(f"{s}:8080" in targets, f"prometheus.yml: does not scrape {s}:8080")

# Dockerfile: multi-stage, non-root, sources it copies exist.
df = open("deploy/Dockerfile").read()
check(len(re.findall(r"^FROM ", df, re.M)) >= 2, "Dockerfile: not multi-stage")
users = re.findall(r"^USER (\S+)", df, re.M)
check(users and users[-1].split(":")[0] not in ("root", "0"), "Dockerfile: runs as root")
for src in re.findall(r"^COPY (?!--from)(.+) \S+$", df, re.M):
    for p in src.split():
        check(os.path.exists(p), f"Dockerfile: COPY {p}: no such path")

if errors:
    sys.exit("deploy/validate.py:\n  " + "\n  ".join(errors))
