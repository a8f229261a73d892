//! Remux cost: MB/s of FLV (RTMP) and MPEG-TS (SRT, in 1316-byte datagram
//! payloads) remuxed to CMAF, one core, no I/O. The inputs are made by
//! ffmpeg (720p30 H.264 at 6 Mbit/s + AAC, 4 s); without ffmpeg the bench
//! says so and measures nothing. At 10 Mbit/s (1.25 MB/s) of ingest the
//! share of a core is 1.25 / (MB/s) — see docs/performance.md.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use relaycast_media::remux::cmaf::{MuxerConfig, Output};
use relaycast_media::remux::flv::{FlvRemuxer, file_tags};
use relaycast_media::remux::ts::TsRemuxer;

fn make(fmt: &str) -> Option<Vec<u8>> {
    let out = std::env::temp_dir().join(format!(
        "relaycast-remux-bench-{}.{fmt}",
        std::process::id()
    ));
    let ok = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "4"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "6M",
            "-g",
            "60",
        ])
        .args(["-c:a", "aac", "-b:a", "128k", "-f", fmt])
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    let data = ok.then(|| std::fs::read(&out).ok()).flatten();
    let _ = std::fs::remove_file(&out);
    data
}

/// Bytes of every output a remuxer has ready (`poll` until `None`).
fn drain(mut poll: impl FnMut() -> Option<Output>) -> usize {
    std::iter::from_fn(&mut poll).map(|o| o.bytes().len()).sum()
}

fn remux(c: &mut Criterion) {
    let (Some(flv), Some(ts)) = (make("flv"), make("mpegts")) else {
        eprintln!("remux bench: ffmpeg not found, nothing measured");
        return;
    };
    let flv = Bytes::from(flv);
    let (audio, video, tags) = file_tags(&flv);
    let mut g = c.benchmark_group("remux");
    g.throughput(Throughput::Bytes(flv.len() as u64));
    g.bench_function("flv_to_cmaf", |b| {
        b.iter(|| {
            let mut m = FlvRemuxer::new(MuxerConfig::default());
            m.muxer().expect(video, audio);
            let mut out = 0usize;
            for (kind, ms, body) in tags.iter().cloned() {
                let _ = m.push_tag(kind, ms, body);
                out += drain(|| m.poll());
            }
            m.finish();
            out + drain(|| m.poll())
        })
    });
    g.throughput(Throughput::Bytes(ts.len() as u64));
    g.bench_function("ts_to_cmaf", |b| {
        b.iter(|| {
            let mut m = TsRemuxer::new(MuxerConfig::default());
            let mut out = 0usize;
            for piece in ts.chunks(1316) {
                m.push(piece);
                out += drain(|| m.poll());
            }
            m.finish();
            out + drain(|| m.poll())
        })
    });
    g.finish();
}

criterion_group!(benches, remux);
criterion_main!(benches);
