"""benches/outside/outside.py: one run of the outsider's benchmark (issue #15), used by benches/compare.

The outside engineer's setup, reproduced: a server started fresh, Node `ws` viewers in 2 processes
(benches/outside/viewers.js) connected before publishing, and one publisher (publish.js) of an H.264+AAC
fMP4 with 100 ms fragments paced at real time: one chunked HTTP PUT for relaycast, one WebSocket message
per fragment for nchan and the Node ws relay. relaycast's JSON text messages are received and ignored.

Figures per run: latency p50/p99 (publisher send -> the whole message received, matched by mfhd seq), server
CPU (utime+stime of the server process over the paced window, % of one core), RSS per viewer ((peak RSS
while publishing - RSS before viewers) / viewers; relaycast's live heap from /metrics
before viewers, once connected and at the end of publishing, which tells the viewers from the ring's growth),
fragments missed by any viewer (skips), load average.
"""

import json
import os
import signal
import subprocess
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MEDIA_DIR = os.path.join(os.path.dirname(HERE), "out", "outside-media")
FRAG_MS = 100
TICK = os.sysconf("SC_CLK_TCK")


def log(*a):
    import sys
    print(*a, file=sys.stderr, flush=True)


def ensure(skips):
    """npm ci in benches/outside when its node_modules is missing."""
    if not os.path.isdir(os.path.join(HERE, "node_modules", "ws")):
        r = subprocess.run("npm ci --no-audit --no-fund", shell=True, cwd=HERE, capture_output=True, text=True)
        if r.returncode != 0:
            skips["outside"] = "outside clients: npm ci in benches/outside failed: " + r.stderr[-200:]


def media(bitrate_k, seconds, frag_ms=FRAG_MS):
    """An H.264 + AAC fMP4 of `seconds` with `frag_ms` fragments (100 ms; 33 = one 30 fps frame per fragment)
    at about `bitrate_k` kbit/s (CBR), cached."""
    os.makedirs(MEDIA_DIR, exist_ok=True)
    tag = "" if frag_ms == FRAG_MS else f"-{frag_ms}ms"
    path = os.path.join(MEDIA_DIR, f"cbr{bitrate_k}k-{seconds}s{tag}.mp4")
    if os.path.exists(path):
        return path
    ab = 96 if bitrate_k > 300 else 48
    vb = bitrate_k - ab
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", "testsrc2=size=854x480:rate=30",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
           "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
           "-g", "30", "-keyint_min", "30", "-sc_threshold", "0",
           "-b:v", f"{vb}k", "-maxrate", f"{vb}k", "-bufsize", f"{max(vb // 5, 20)}k", "-x264-params", "nal-hrd=cbr",
           "-c:a", "aac", "-b:a", f"{ab}k", "-ac", "2",
           "-f", "mp4", "-movflags", "empty_moov+default_base_moof+skip_trailer",
           "-frag_duration", str(frag_ms * 1000), path + ".tmp.mp4"]
    subprocess.run(cmd, check=True)
    os.rename(path + ".tmp.mp4", path)
    return path


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def heap_allocated(port):
    """relaycast's live heap (jemalloc stats.allocated, `relaycast_heap_allocated_bytes` on /metrics), or None
    (another system, or no answer). With RSS it tells the viewers' heap from the resume ring's growth."""
    if not port:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode("utf-8", "replace").splitlines():
                if line.startswith("relaycast_heap_allocated_bytes "):
                    return int(float(line.split()[1]))
    except (OSError, ValueError):
        pass
    return None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def readline(p, timeout):
    """One stdout line of a child within `timeout` seconds, or None."""
    import select
    r, _, _ = select.select([p.stdout], [], [], timeout)
    if not r:
        return None
    return p.stdout.readline()


def nstat():
    """Kernel SNMP counters (absolute), as a dict."""
    out = subprocess.run(["nstat", "-a", "-z", "-s"], capture_output=True, text=True).stdout
    d = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        if len(f) >= 2 and f[1].isdigit():
            d[f[0]] = int(f[1])
    return d


def ss_totals(port):
    """Sums over the server's established sockets on `port` (`ss -ti`): segments and bytes sent."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    tot = {"sockets": 0, "segs_out": 0, "data_segs_out": 0, "bytes_sent": 0, "bytes_acked": 0}
    for tok in out.split():
        if ":" not in tok:
            continue
        k, _, v = tok.partition(":")
        if k in tot and v.isdigit():
            tot[k] += int(v)
        if k == "segs_out":
            tot["sockets"] += 1
    return tot


def strace_summary(path):
    """writev calls, iovecs and bytes per call from an `strace -f -e trace=writev` log."""
    import re
    calls = iovs = nbytes = 0
    for line in open(path, errors="replace"):
        if "writev(" not in line or "resumed" in line:
            continue
        m = re.search(r"\)\s*=\s*(\d+)", line)
        if not m:
            continue
        calls += 1
        nbytes += int(m.group(1))
        c = re.search(r"\], (\d+)\)", line)
        iovs += int(c.group(1)) if c else 0
    return {"writev_calls": calls, "iov_per_writev": iovs / calls if calls else 0,
            "bytes_per_writev": nbytes / calls if calls else 0}


def run(system, urls, server_pid, viewers, bitrate_k, seconds, workdir, nice, procs=2, count=None, port=None,
        frag_ms=FRAG_MS, streams=1):
    """One run against a started server. urls: (mode put|ws, publish URL, watch URL). Returns a report dict.
    frag_ms: fragment duration (100; 33 for per-frame fragments at 30 fps). streams: the viewers spread over
    this many streams (URLs hold "{s}"), each published with the same fragments.
    count: None, "ss" (kernel counters: nstat over the window, `ss -ti` totals of the server's sockets)
    or "strace" (writev calls, iovecs and bytes per call: perturbs timing, count-only)
    or "perf" (`perf record -g` of the server over the paced window; the file's path in the report)."""
    mode, pub_url, watch_url = urls
    nfrags = int(seconds * 1000 / frag_ms)
    path = media(bitrate_k, int(seconds) + 4, frag_ms)
    sent = os.path.join(workdir, f"sent-{system}-{os.getpid()}-{time.time_ns()}.json")
    node = nice + ["node"]
    pub = subprocess.Popen(node + [os.path.join(HERE, "publish.js"), mode, pub_url, path, str(frag_ms), str(nfrags), sent, str(streams)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, process_group=0)
    vps = []
    rep = {"system": system, "viewers": viewers, "bitrate_k": bitrate_k, "seconds": seconds, "streams": streams,
           "loadavg_start": loadavg()}
    try:
        if (readline(pub, 15) or "").strip() != "ready":
            rep["error"] = "publisher not ready"
            return rep
        time.sleep(0.5)
        rss0 = proc_rss(server_pid)
        hport = port if system.startswith("relaycast") else None
        heap0 = heap_allocated(hport)
        per = [viewers // procs + (1 if i < viewers % procs else 0) for i in range(procs)]
        for n in per:
            vps.append(subprocess.Popen(node + [os.path.join(HERE, "viewers.js"), watch_url, str(n), sent, str(streams)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        process_group=0))
        deadline = time.time() + 120
        for v in vps:
            line = readline(v, max(1, deadline - time.time()))
            if not line or not line.startswith("ready"):
                rep["error"] = f"viewers not connected within 120 s ({line!r})"
                return rep
        # Let the server settle: some (nchan) finish subscribing after the
        # WebSocket is open, and a fragment published before that is lost to
        # every viewer. Wait until it uses < 3 % of a core over 0.5 s (at most 30 s).
        settle = time.time() + 30
        time.sleep(1.0)
        while time.time() < settle:
            c0 = proc_cpu_s(server_pid)
            time.sleep(0.5)
            if proc_cpu_s(server_pid) - c0 < 0.015:
                break
        rep["settle_s"] = round(30 - (settle - time.time()), 1)
        rss_conn = proc_rss(server_pid)
        heap_conn = heap_allocated(hport)
        tracer = None
        if count == "ss":
            ns0, ss0 = nstat(), ss_totals(port)
        elif count == "perf":
            perf_data = os.path.join(workdir, f"perf-{system.replace('@', '-')}.data")
            tracer = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-q", "-o", perf_data,
                                       "-p", str(server_pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        elif count == "strace":
            trace_log = os.path.join(workdir, f"strace-{system}.log")
            tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=writev", "-s", "0", "-o", trace_log,
                                       "-p", str(server_pid)], stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu0, t0 = proc_cpu_s(server_pid), time.time()
        ccpu0 = sum(proc_cpu_s(v.pid) for v in vps)
        pub.stdin.write("go\n")
        pub.stdin.flush()
        peak = rss_conn
        while pub.poll() is None and time.time() < t0 + seconds + 30:
            peak = max(peak, proc_rss(server_pid))
            time.sleep(0.25)
        cpu1, t1 = proc_cpu_s(server_pid), time.time()
        heap_end = heap_allocated(hport)
        rep["client_cpu_pct"] = 100.0 * (sum(proc_cpu_s(v.pid) for v in vps) - ccpu0) / (t1 - t0)
        time.sleep(1.0)  # the last fragment reaches every viewer
        if count == "ss":
            ns1, ss1 = nstat(), ss_totals(port)
            rep["nstat"] = {k: ns1.get(k, 0) - ns0.get(k, 0) for k in
                            ("IpOutRequests", "TcpOutSegs", "IpExtOutOctets", "TcpExtTCPOrigDataSent")}
            rep["ss"] = {k: ss1[k] - ss0[k] if k != "sockets" else ss1[k] for k in ss1}
        elif tracer:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
            if count == "perf":
                rep["perf_data"] = perf_data
            else:
                rep["strace"] = strace_summary(trace_log)
        outs = []
        for v in vps:
            try:
                v.stdin.write("stop\n")
                v.stdin.flush()
                out, _ = v.communicate(timeout=60)
                outs.append(json.loads(out.strip().splitlines()[-1]))
            except (subprocess.TimeoutExpired, ValueError, IndexError, BrokenPipeError):
                rep["error"] = "a viewer process gave no report"
                return rep
        hist = {}
        counts = []
        for o in outs:
            counts += o["counts"]
            for k, c in o["hist"].items():
                hist[int(k)] = hist.get(int(k), 0) + c
        frags = outs[0]["frags"] if outs else 0
        total = sum(hist.values())

        def pct(q):
            want, acc = q * total, 0
            for k in sorted(hist):
                acc += hist[k]
                if acc >= want:
                    return k / 100.0
            return None
        rep.update({
            "frags": frags,
            "delivered": sum(counts), "expected": frags * viewers,
            "skips": frags * viewers - sum(counts),
            "viewers_short": sum(1 for c in counts if c < frags),
            "short_counts": {str(c): n for c, n in sorted(__import__("collections").Counter(
                c for c in counts if c < frags).items())[:12]},
            "closed": sum(o["closed"] for o in outs), "errors": sum(o["errors"] for o in outs),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": max(hist) / 100.0 if hist else None,
            "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
            "rss_before_b": rss0, "rss_connected_b": rss_conn, "rss_peak_b": peak,
            "rss_per_viewer_b": (peak - rss0) / viewers,
            "heap_before_b": heap0, "heap_connected_b": heap_conn, "heap_end_b": heap_end,
            "client_rss_b": sum(o["client_rss"] for o in outs),
            "loadavg_end": loadavg(),
        })
        return rep
    finally:
        for p in [pub] + vps:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        try:
            os.unlink(sent)
        except OSError:
            pass
