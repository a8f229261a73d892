//! End-to-end delivery latency, publisher → WebSocket viewer, for RTMP
//! ingest next to fMP4 ingest (#13): is a stream published over RTMP as
//! quick to reach viewers as the same stream published as CMAF?
//!
//! One input for both: ffmpeg encodes 640x360p30 H.264 (1 s GOPs, x264
//! zerolatency) + AAC to FLV once. Each run starts a relay in this process
//! (RTMP on 127.0.0.1:0) and one WebSocket viewer, then publishes that media
//! in real time on a schedule fixed by the media clock, `t0 + timestamp`:
//!
//! - **rtmp**: our OBS-like client (`tests/common/rtmp.rs`) sends every FLV
//!   tag at `t0 + its timestamp`, as an encoder sends each frame when it is
//!   encoded; the relay remuxes them into fragments of at most 100 ms.
//! - **fmp4**: the same tags remuxed to CMAF here beforehand, with the
//!   relay's own remuxer and its default 100 ms fragments, so both paths
//!   carry the same fragments; each fragment goes out over a WebSocket
//!   publish at `t0 + the end of its last sample`, when an encoder making
//!   100 ms fragments has it complete.
//!
//! The figure is, per fragment, viewer arrival − `t0 + the fragment's first
//! decode time` (the fragment's `dts` in the viewer's control message):
//! from the first frame of a fragment being ready at the publisher to the
//! whole fragment at the viewer. Both paths pay the ~100 ms of fragmenting
//! (the fMP4 encoder before sending, the relay's remux for RTMP); the
//! difference is what RTMP ingest adds. The first second is not counted.
//!
//! `cargo bench -p relaycast --bench ingest_latency` (env `RUNS`, default 3;
//! `SECS` measured per run, default 8). Prints p50/p99 per run, the medians
//! over runs and the ratios rtmp / fmp4; no assertions.

#[path = "../tests/common/rtmp.rs"]
mod rtmp;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use relaycast::media::remux::cmaf::{MuxerConfig, Output};
use relaycast::media::remux::flv::{FlvRemuxer, file_tags};
use rml_rtmp::rml_amf0::Amf0Value;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Seconds of media made (more than any run sends).
const MEDIA_SECS: u32 = 20;
/// Not counted: the first fragments (joins, TCP warm-up).
const SKIP_MS: f64 = 1000.0;

fn make_flv() -> Option<Vec<u8>> {
    let out = std::env::temp_dir().join(format!("relaycast-ingest-lat-{}.flv", std::process::id()));
    let ok = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &MEDIA_SECS.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
        ])
        .args(["-pix_fmt", "yuv420p", "-g", "30", "-keyint_min", "30"])
        .args(["-sc_threshold", "0", "-b:v", "2M"])
        .args(["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-f", "flv"])
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    let data = ok.then(|| std::fs::read(&out).ok()).flatten();
    let _ = std::fs::remove_file(&out);
    data
}

/// The FLV tags as the relay's remux would cut them: (init, [(end ms, fragment)]).
fn cmaf(audio: bool, video: bool, tags: &[(u8, u32, Bytes)]) -> (Bytes, Vec<(f64, Bytes)>) {
    let mut m = FlvRemuxer::new(MuxerConfig::default());
    m.muxer().expect(video, audio);
    let mut init = Bytes::new();
    let mut frags = Vec::new();
    let take = |o: Output, init: &mut Bytes, frags: &mut Vec<(f64, Bytes)>| match o {
        Output::Init(i) => *init = i.bytes,
        Output::Fragment(f) => {
            let end = (f.decode_time + f.duration) as f64 * 1000.0 / f64::from(f.timescale);
            frags.push((end, f.bytes));
        }
    };
    for (kind, ms, body) in tags.iter().cloned() {
        let _ = m.push_tag(kind, ms, body);
        while let Some(o) = m.poll() {
            take(o, &mut init, &mut frags);
        }
    }
    m.finish();
    while let Some(o) = m.poll() {
        take(o, &mut init, &mut frags);
    }
    (init, frags)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Fmp4,
    Rtmp,
}

/// Latencies (ms) of the fragments one viewer received in one run.
async fn run(
    path: Path,
    secs: f64,
    audio: bool,
    video: bool,
    tags: &[(u8, u32, Bytes)],
    fmp4: &(Bytes, Vec<(f64, Bytes)>),
) -> Vec<f64> {
    let mut cfg = relaycast::config::Config::default();
    cfg.server.demo = false;
    cfg.ingest.rtmp.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let relay = relaycast::server::start(cfg, Some(l))
        .await
        .expect("start relay");
    let http = relay.addr;
    let rtmp_addr = relay.rtmp.expect("rtmp");
    let name = "lat";
    let (mut viewer, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}/live/{name}?wait=10"))
            .await
            .expect("viewer");
    let t0 = Instant::now() + Duration::from_millis(300);
    let until_ms = secs * 1000.0 + SKIP_MS;
    let publisher = {
        let tags = tags.to_vec();
        let (init, frags) = fmp4.clone();
        tokio::spawn(async move {
            match path {
                Path::Rtmp => {
                    let mut obs = rtmp::Obs::connect(rtmp_addr).await;
                    let mut meta = Vec::new();
                    if video {
                        meta.push(("videocodecid", Amf0Value::Number(7.0)));
                    }
                    if audio {
                        meta.push(("audiocodecid", Amf0Value::Number(10.0)));
                    }
                    obs.start(name, meta).await;
                    for (kind, ms, body) in tags {
                        if f64::from(ms) > until_ms {
                            break;
                        }
                        tokio::time::sleep_until(t0 + Duration::from_millis(u64::from(ms))).await;
                        obs.tag(kind, ms, body).await;
                    }
                    obs.stop(name).await;
                }
                Path::Fmp4 => {
                    let (mut ws, _) =
                        tokio_tungstenite::connect_async(format!("ws://{http}/publish/{name}"))
                            .await
                            .expect("publish");
                    ws.send(Message::Binary(init)).await.expect("init");
                    for (end, bytes) in frags {
                        if end > until_ms {
                            break;
                        }
                        tokio::time::sleep_until(t0 + Duration::from_secs_f64(end / 1000.0)).await;
                        ws.send(Message::Binary(bytes)).await.expect("fragment");
                    }
                    let _ = ws.close(None).await;
                }
            }
        })
    };
    let mut lat = Vec::new();
    let mut dts: Option<f64> = None;
    let deadline = t0 + Duration::from_secs_f64(until_ms / 1000.0 + 2.0);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, viewer.next()).await {
        match m {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                dts = (v["type"] == "fragment")
                    .then(|| v["dts"].as_f64())
                    .flatten();
            }
            Message::Binary(_) => {
                if let Some(d) = dts.take() {
                    let arrived = Instant::now().duration_since(t0).as_secs_f64() * 1000.0;
                    let ms = arrived - d * 1000.0;
                    if d * 1000.0 >= SKIP_MS {
                        lat.push(ms);
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
        if Instant::now() > deadline {
            break;
        }
    }
    publisher.abort();
    relay.shutdown().await;
    lat
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let secs: f64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(8.0)
        .min(f64::from(MEDIA_SECS) - 3.0);
    let Some(flv) = make_flv() else {
        eprintln!("ingest_latency: ffmpeg not found, nothing measured");
        return;
    };
    let flv = Bytes::from(flv);
    let (audio, video, mut tags) = file_tags(&flv);
    // Audio and video only (the script tag's onMetaData goes in `start`).
    tags.retain(|(kind, _, _)| *kind == 8 || *kind == 9);
    let fmp4 = cmaf(audio, video, &tags);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut p50 = [Vec::new(), Vec::new()];
    let mut p99 = [Vec::new(), Vec::new()];
    println!(
        "ingest_latency: {runs} runs x {secs} s, {} fragments of CMAF made from the same FLV",
        fmp4.1.len()
    );
    for r in 0..runs {
        // Alternate the order so neither path always runs on a warmer box.
        let order = if r % 2 == 0 {
            [Path::Fmp4, Path::Rtmp]
        } else {
            [Path::Rtmp, Path::Fmp4]
        };
        for path in order {
            let mut lat = rt.block_on(run(path, secs, audio, video, &tags, &fmp4));
            let i = path as usize;
            let (a, b) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
            println!(
                "run {r} {path:?}: n={} p50 {a:.1} ms p99 {b:.1} ms (min {:.1} max {:.1})",
                lat.len(),
                lat.first().copied().unwrap_or(f64::NAN),
                lat.last().copied().unwrap_or(f64::NAN)
            );
            p50[i].push(a);
            p99[i].push(b);
        }
    }
    let (f50, r50) = (median(p50[0].clone()), median(p50[1].clone()));
    let (f99, r99) = (median(p99[0].clone()), median(p99[1].clone()));
    println!("median of {runs} runs: fmp4 p50 {f50:.1} ms p99 {f99:.1} ms");
    println!("median of {runs} runs: rtmp p50 {r50:.1} ms p99 {r99:.1} ms");
    println!(
        "ratio rtmp/fmp4: p50 {:.2}, p99 {:.2}",
        r50 / f50,
        r99 / f99
    );
}
