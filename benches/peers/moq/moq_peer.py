"""moq-relay as a peer of benches/compare (PEERS.md section 6).

moq-relay speaks MoQ over QUIC (and a MoQ/qmux polyfill over WebSocket), not plain WS/HTTP, so
`relaycast load` cannot watch it; the load comes from its own tool, moq-bench: one publisher connection
with one broadcast at the scenario's bitrate and fragment rate (a moq frame per fragment, a group per
GOP), and N subscriber connections (one each) that discover the broadcast by announcement. Figures come
from moq-bench's JSONL (cumulative bytes, frames and groups, every 500 ms) over the measured window, the
relay's CPU and RSS from /proc, and the subscriber process's CPU as the load generator's. moq-bench
reports no delivery latency and no join time: those cells stay empty ('–').

Install (when benches/.peers/moq/bin lacks the binaries): moq-bench is not on crates.io (publish = false),
so everything is built from one moq-dev/moq checkout (so relay and bench speak the same protocol
version): $MOQ_SRC, else benches/.peers/moq/src, else a bare snapshot of moq-dev/moq on the box
(MOQ_MIRRORS), else a `git clone --depth 1` of github.com/moq-dev/moq there. `cargo build --release
--locked -p moq-relay -p moq-cli -p moq-bench` takes about 11 min of both cores, cold (PEERS.md).
Without a checkout the peer is skipped with a line saying so: crates.io has moq-relay and moq-cli but
not moq-bench, and the relay alone cannot be measured.
"""

import json
import os
import shutil
import signal
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PEER_DIR = os.path.join(ROOT, "benches", ".peers", "moq")
BIN = os.path.join(PEER_DIR, "bin")
RELAY = os.path.join(BIN, "moq-relay")
BENCH = os.path.join(BIN, "moq-bench")
PORT = 19485
URL = f"http://localhost:{PORT}"
REPO = "https://github.com/moq-dev/moq"
MOQ_MIRRORS = ["/work/.mirror/moq-dev+moq/repo"]  # bare git snapshots that may be on the box

RELAY_TOML = """\
[log]
level = "warn"

[server]
listen = "127.0.0.1:{port}"
tls.generate = ["localhost"]

[web.http]
listen = "127.0.0.1:{port}"

[auth]
public = ""
"""


def _log(*a):
    import sys
    print(*a, file=sys.stderr, flush=True)


def _have():
    return os.access(RELAY, os.X_OK) and os.access(BENCH, os.X_OK)


def ensure(skips):
    """Installs moq-relay, moq and moq-bench under benches/.peers/moq/bin when missing; on failure sets
    skips['moq-relay'] to a line saying why."""
    if _have():
        return
    os.makedirs(BIN, exist_ok=True)
    t0 = time.time()
    src = os.environ.get("MOQ_SRC") or os.path.join(PEER_DIR, "src")
    def checked_out():
        return os.path.isfile(os.path.join(src, "rs", "moq-bench", "Cargo.toml"))
    if not checked_out() and not os.environ.get("MOQ_SRC"):
        for m in MOQ_MIRRORS:
            if os.path.isdir(m):
                _log(f"compare: moq: no checkout at {src}; extracting the snapshot {m}")
                shutil.rmtree(src, ignore_errors=True)
                os.makedirs(src)
                subprocess.run(f"git --git-dir={m} archive HEAD | tar -x -C {src}", shell=True,
                               capture_output=True, timeout=600)
                if checked_out():
                    break
    if not checked_out() and not os.environ.get("MOQ_SRC"):
        _log(f"compare: moq: no checkout at {src}; git clone --depth 1 {REPO}")
        shutil.rmtree(src, ignore_errors=True)
        try:
            subprocess.run(["git", "clone", "--depth", "1", REPO, src], capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            pass
    if os.path.isfile(os.path.join(src, "rs", "moq-bench", "Cargo.toml")):
        _log(f"compare: moq: building moq-relay, moq-cli and moq-bench in {src} (about 11 min of both cores, "
             f"log in {PEER_DIR}/build.log)")
        with open(os.path.join(PEER_DIR, "build.log"), "a") as logf:
            r = subprocess.run(["nice", "-n", "19", "cargo", "build", "--release", "--locked",
                                "-p", "moq-relay", "-p", "moq-cli", "-p", "moq-bench",
                                "--bin", "moq-relay", "--bin", "moq", "--bin", "moq-bench"],
                               cwd=src, stdout=logf, stderr=logf)
        if r.returncode == 0:
            for b in ("moq-relay", "moq", "moq-bench"):
                shutil.copy2(os.path.join(src, "target", "release", b), os.path.join(BIN, b))
    if _have():
        _log(f"compare: moq: installed in {BIN} in {(time.time() - t0) / 60:.1f} min")
    elif not os.path.isfile(os.path.join(src, "rs", "moq-bench", "Cargo.toml")):
        skips["moq-relay"] = ("moq-relay: not run. moq-bench (its load tool) is not on crates.io and no "
                              f"moq-dev/moq checkout was found (set MOQ_SRC or put one at {src})")
    else:
        skips["moq-relay"] = f"moq-relay: not run. It could not be built or installed (see {PEER_DIR}/build.log)"


def version():
    if not os.access(RELAY, os.X_OK):
        return ""
    r = subprocess.run([RELAY, "--version"], capture_output=True, text=True, timeout=10)
    src = os.environ.get("MOQ_SRC") or os.path.join(PEER_DIR, "src")
    rev = ""
    if os.path.exists(os.path.join(src, ".git")):  # a clone (not the enclosing relaycast repository)
        r2 = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %cs"], capture_output=True, text=True)
        rev = r2.stdout.strip() if r2.returncode == 0 else ""
    if not rev and os.path.exists(os.path.join(src, "REVISION")):  # an exported snapshot: its commit, by hand
        with open(os.path.join(src, "REVISION")) as f:
            rev = f.read().strip()
    built = f" (moq-dev/moq{' @ ' + rev if rev else ''})"
    return (r.stdout.strip() if r.returncode == 0 else "moq-relay") + built


def _rate(s):
    s = str(s).strip()
    mul = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}.get(s[-1:], None)
    return float(s[:-1]) * mul if mul else float(s)


def _cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / 100.0
    except (OSError, IndexError, ValueError):
        return None


def _rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _last(path):
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _stop(proc):
    if proc and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def run(flags, label, workdir, nice):
    """One cell: relay + publisher + N subscribers; returns a report shaped like `relaycast load --json`
    (keys it cannot fill are left out), or None."""
    d = os.path.join(workdir, "moq")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "relay.toml")
    with open(conf, "w") as f:
        f.write(RELAY_TOML.format(port=PORT))
    n = int(flags["viewers"])
    bitrate = _rate(flags["bitrate"])
    fps = float(flags["fps"])
    gop = float(flags.get("gop", 1))
    warmup = float(flags.get("warmup", 1))
    window = float(flags["duration"])
    join_rate = float(flags.get("join_rate", 0) or 0)
    # moq-bench staggers connections over --startup, then each gathers announcements for one more
    # --startup before subscribing.
    startup = max(0.5, n / join_rate) if join_rate else 1.0
    frame = max(200, int(round(bitrate / 8 / fps)))
    group = max(0, int(round(gop * fps)) - 1)
    total = 2 * startup + warmup + window + 3
    common = ["--client-connect", URL, "--name", "fan", "--fps", str(int(round(fps))),
              "--frame-size", str(frame), "--group-size", str(group), "--report", "500ms"]
    subs_out = os.path.join(d, "subs.jsonl")
    if os.path.exists(subs_out):
        os.remove(subs_out)
    env = dict(os.environ, RUST_LOG="warn")
    relay = pub = subs = None
    try:
        relay = subprocess.Popen(nice + [RELAY, conf], cwd=d, stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(d, "relay.log"), "w"), env=env, process_group=0)
        deadline = time.time() + 10
        while time.time() < deadline:
            if subprocess.run(f"ss -ltn 'sport = :{PORT}' | grep -q LISTEN", shell=True).returncode == 0:
                break
            time.sleep(0.1)
        pub = subprocess.Popen(nice + [BENCH] + common + ["--connections", "1", "--broadcasts", "1", "--subscribe",
                                                          "0", "--duration", f"{int((total + 2) * 1000)}ms"],
                               stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "pub.log"), "w"), env=env,
                               process_group=0)
        time.sleep(1.0)
        rss_base = _rss_kib(relay.pid)
        subs = subprocess.Popen(nice + [BENCH] + common + [
            "--connections", str(n), "--broadcasts", "0", "--subscribe", "1", "--startup", f"{int(startup * 1000)}ms",
            "--duration", f"{int(total * 1000)}ms", "--output", subs_out],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "subs.log"), "w"), env=env,
            process_group=0)
        time.sleep(2 * startup + warmup)
        l0, cpu0, own0 = _last(subs_out), _cpu_s(relay.pid), _cpu_s(subs.pid)
        rss_peak = rss_base
        end = time.time() + window
        while time.time() < end:
            time.sleep(min(0.5, max(0.0, end - time.time())))
            rss_peak = max(rss_peak, _rss_kib(relay.pid))
        time.sleep(0.55)  # one more report line
        l1, cpu1, own1 = _last(subs_out), _cpu_s(relay.pid), _cpu_s(subs.pid)
    finally:
        for p in (subs, pub, relay):
            _stop(p)
    if not l0 or not l1 or l1["timestamp_ms"] <= l0["timestamp_ms"]:
        _log(f"compare: moq-relay {label}: no moq-bench stats (see {d}/subs.log)")
        return None
    dt = (l1["timestamp_ms"] - l0["timestamp_ms"]) / 1000.0
    byts = l1["bytes_recv"] - l0["bytes_recv"]
    frames = l1["frames_recv"] - l0["frames_recv"]
    gbit = byts * 8 / 1e9
    relay_cpu = (cpu1 or 0) - (cpu0 or 0)
    connected = int(l1.get("connections", 0))
    lost = max(0, l1["groups_expected"] - l1["groups_present"])
    return {
        "label": label, "transport": "moq (moq-bench)", "raw": True, "streams": 1, "viewers": n,
        "connected": connected, "connect_failed": max(0, n - connected), "dropped": 0,
        "subscriptions": int(l1.get("subscriptions", 0)),
        "bitrate": int(bitrate), "fps": fps, "fragment_bytes": frame, "window_s": dt,
        "gbit_s": gbit / dt, "expected_gbit_s": bitrate * n / 1e9, "fragments_s": frames / dt,
        "delivered_ratio": frames / (fps * dt * n) if n else 0.0,
        # No latency_ms / join_ms / first_fragment_ms: moq-bench does not measure them.
        "skips": lost, "missed": lost, "lost_groups": lost, "groups_expected": l1["groups_expected"],
        "relay_pid": relay.pid, "relay_rss_base_kib": rss_base, "relay_rss_peak_kib": rss_peak,
        "mem_per_viewer_b": max(0, rss_peak - rss_base) * 1024 / n if n else 0.0,
        "relay_cpu_s": relay_cpu, "relay_cpu_pct": relay_cpu / dt * 100,
        "relay_cpu_s_per_gbit": relay_cpu / gbit if gbit > 0 else 0.0,
        "own_cpu_pct": ((own1 or 0) - (own0 or 0)) / dt * 100,
    }
