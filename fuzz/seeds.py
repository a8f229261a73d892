#!/usr/bin/env python3
"""Seed corpora for the fuzz targets: the init segment and first few
fragments of every clip in tests/fixtures (small, so libFuzzer's max_len
stays small and executions fast)."""
import os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
fixtures = os.path.join(root, "tests", "fixtures")
out_dirs = [os.path.join(root, "fuzz", "corpus", t) for t in ("splitter", "ws_publish")]
for d in out_dirs:
    os.makedirs(d, exist_ok=True)

def boxes(data):
    off = 0
    while off + 8 <= len(data):
        size, typ = struct.unpack(">I4s", data[off:off + 8])
        if size == 1:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
        if size < 8 or off + size > len(data):
            return
        yield typ, data[off:off + size]
        off += size

n = 0
for name in sorted(os.listdir(fixtures)):
    if not name.endswith(".mp4"):
        continue
    data = open(os.path.join(fixtures, name), "rb").read()
    seed, frags = b"", 0
    for typ, b in boxes(data):
        if typ == b"mdat":
            frags += 1
        if len(seed) + len(b) > 16384 and frags > 0:
            break
        seed += b
        if frags >= 3:
            break
    for d in out_dirs:
        open(os.path.join(d, "seed-" + name), "wb").write(seed)
    n += 1
print(f"{n} seeds of up to 16 KiB in fuzz/corpus/*", file=sys.stderr)

# The remux targets: a short FLV and MPEG-TS from ffmpeg, when it is here
# (160x90, 10 frames: a few KiB each).
import shutil, subprocess
for target, fmt in (("flv_remux", "flv"), ("ts_remux", "mpegts")):
    d = os.path.join(root, "fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    if shutil.which("ffmpeg") is None:
        continue
    out = os.path.join(d, "seed-h264-aac." + fmt)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=160x90:rate=10", "-f", "lavfi", "-i", "sine=sample_rate=8000",
                    "-t", "1", "-c:v", "libx264", "-g", "5", "-c:a", "aac", "-b:a", "16k",
                    "-f", fmt, out], check=False)
os.makedirs(os.path.join(root, "fuzz", "corpus", "rtmp_session"), exist_ok=True)
