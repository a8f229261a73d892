"""SRS (github.com/ossrs/srs) as a peer of benches/compare: get its source, build it into a cache folder,
write the config of a run. Used by benches/compare (system `srs-flv`); stdlib only.

SRS takes FLV by HTTP POST on its `stream_caster flv` (which relays it to SRS's own RTMP listener, in the
same process) and serves HTTP-FLV; `relaycast load --transport flv` talks both.
"""

import os
import shutil
import subprocess
import sys
import time

BENCHES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHES)
PORTS = {}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)


SRS_CACHE = os.path.join(BENCHES, ".peers", "srs")   # gitignored: the source tree and its build
SRS_MIRRORS = ["/work/.mirror/ossrs+srs/repo"]       # bare git snapshots that may be on the box
SRS_GIT = "https://github.com/ossrs/srs"
SRS_DEPS = ["automake", "autoconf", "libtool", "pkg-config", "unzip", "tcl", "cmake", "libssl-dev"]
# PEERS.md §5: vendored 3rdparty, system OpenSSL, no WebRTC/SRT/FFmpeg/GB28181, no ASan (configure turns
# it on by default).
SRS_CONFIGURE = ("./configure --rtc=off --srt=off --ffmpeg-fit=off --sys-ssl=on --utest=off --gb28181=off "
                 "--sanitizer=off --jobs=2")
SRS_BIN = None  # objs/srs once ensure() found or built it


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srs_trunk(d):
    """The folder with `configure` and src/app of an SRS tree given as the repository or its trunk/."""
    for t in (d, os.path.join(d, "trunk")):
        if os.path.isfile(os.path.join(t, "configure")) and os.path.isdir(os.path.join(t, "src", "app")):
            return t
    return None


def srs_from_mirror(git_dir, dest):
    """Extracts HEAD of a bare mirror into dest, leaving out blobs the snapshot lacks (large files
    such as the vendored OpenSSL 1.0 tarball, unused with --sys-ssl=on)."""
    tree = sh(f"git --git-dir={git_dir} ls-tree -r -z HEAD")
    if tree.returncode != 0:
        return False
    entries = [e for e in tree.stdout.split("\0") if e]
    blobs = {}
    for e in entries:
        meta, path = e.split("\t", 1)
        mode, kind, oid = meta.split()
        if kind == "blob":
            blobs[oid] = path
    chk = subprocess.run(["git", f"--git-dir={git_dir}", "cat-file", "--batch-check"], input="\n".join(blobs),
                         capture_output=True, text=True)
    missing = [blobs[line.split()[0]] for line in chk.stdout.splitlines() if line.endswith(" missing")]
    if missing:
        log(f"compare: SRS mirror lacks {len(missing)} file(s), left out: {', '.join(missing)[:200]}")
    excl = " ".join(f"':(exclude){m}'" for m in missing)
    r = sh(f"git --git-dir={git_dir} archive HEAD -- . {excl} | tar -x -C {dest}")
    return r.returncode == 0


def ensure(src, skips):
    """Finds or builds objs/srs in SRS_CACHE. Source, in order: --srs-src / SRS_SRC (copied), the tree
    already in the cache, a bare mirror snapshot on the box, `git clone --depth 1`. Skips SRS with a line
    saying why when none works."""
    global SRS_BIN
    tree = os.path.join(SRS_CACHE, "src")
    origin_file = os.path.join(SRS_CACHE, "origin")
    origin = os.path.abspath(src) if src else None
    try:
        with open(origin_file) as f:
            have = f.read().strip()
    except OSError:
        have = None
    if origin and have != origin:
        if not srs_trunk(origin):
            skips["srs"] = f"SRS: not run. --srs-src/SRS_SRC {origin} is not an SRS source tree (no trunk/configure)"
            return
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(origin, tree, symlinks=True, ignore=shutil.ignore_patterns(".git", "objs"))
        how = origin
    elif srs_trunk(tree):
        how = have or "cache"
    else:
        how = None
        for m in SRS_MIRRORS:
            if os.path.isdir(m):
                shutil.rmtree(tree, ignore_errors=True)
                os.makedirs(tree)
                if srs_from_mirror(m, tree) and srs_trunk(tree):
                    how = m
                    break
        if not how:
            shutil.rmtree(tree, ignore_errors=True)
            os.makedirs(SRS_CACHE, exist_ok=True)
            log(f"compare: git clone --depth 1 {SRS_GIT}")
            r = sh(f"timeout 300 git clone --depth 1 {SRS_GIT} {tree}")
            if r.returncode == 0 and srs_trunk(tree):
                how = SRS_GIT
            else:
                skips["srs"] = ("SRS: not run. No source: no --srs-src/SRS_SRC, no mirror snapshot "
                                f"({', '.join(SRS_MIRRORS)}), and git clone {SRS_GIT} failed: "
                                + (r.stderr.strip().splitlines() or ["?"])[-1][:150])
                return
    with open(origin_file, "w") as f:
        f.write(how + "\n")
    trunk = srs_trunk(tree)
    binary = os.path.join(trunk, "objs", "srs")
    if not os.path.exists(binary):
        if not all(shutil.which(b) for b in ("automake", "autoconf", "libtoolize", "cmake", "tclsh", "unzip")):
            deps = " ".join(SRS_DEPS)
            log(f"compare: apt-get install {deps}")
            sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y {deps} || "
               f"(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {deps})")
        log(f"compare: building SRS from {how} in {trunk} (a few minutes on the shared box)")
        t0 = time.time()
        r = sh(f"nice -n 10 {SRS_CONFIGURE} && nice -n 10 make -j2", cwd=trunk)
        if r.returncode != 0 or not os.path.exists(binary):
            skips["srs"] = ("SRS: not run. Its build failed (see configure/make in "
                            f"{os.path.relpath(trunk, ROOT)}): " + (r.stderr.strip().splitlines() or ["?"])[-1][:150])
            return
        log(f"compare: SRS built in {time.time() - t0:.0f} s")
    SRS_BIN = binary
    PORTS["srs"], PORTS["srs-caster"], PORTS["srs-rtmp"] = free_port(), free_port(), free_port()


def start(workdir):
    """Writes the SRS config of a run and returns (HTTP-FLV port, command). conf/http.flv.live.conf plus
    the FLV stream caster (POST in), gop_cache on, room for the biggest viewer counts; other settings are
    SRS defaults (so play merges writes for up to mw_latency = 350 ms, which shows in its latency)."""
    d = os.path.join(workdir, "srs")
    os.makedirs(d, exist_ok=True)
    http, caster, rtmp = PORTS["srs"], PORTS["srs-caster"], PORTS["srs-rtmp"]
    conf = f"""# written by benches/compare
listen 127.0.0.1:{rtmp};
max_connections 12000;
daemon off;
work_dir {d};
pid {d}/srs.pid;
srs_log_tank console;
srs_log_level warn;
stream_caster {{
    enabled on;
    caster flv;
    output rtmp://127.0.0.1:{rtmp}/[app]/[stream];
    listen {caster};
}}
http_server {{
    enabled on;
    listen 127.0.0.1:{http};
    dir {d};
}}
vhost __defaultVhost__ {{
    http_remux {{
        enabled on;
        mount [vhost]/[app]/[stream].flv;
    }}
    play {{
        gop_cache on;
    }}
    publish {{
        # Tags are length-prefixed NALUs; do not guess Annex B first.
        try_annexb_first off;
    }}
}}
"""
    path = os.path.join(d, "srs.conf")
    with open(path, "w") as f:
        f.write(conf)
    return http, [SRS_BIN, "-c", path]
