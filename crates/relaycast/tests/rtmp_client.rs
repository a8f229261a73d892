//! RTMP ingest driven by a test client of our own that sends exactly what
//! OBS sends (Set Chunk Size, connect, releaseStream, FCPublish,
//! createStream, publish, @setDataFrame/onMetaData, media, FCUnpublish,
//! deleteStream, acknowledgements) — including a reconnect — and Enhanced
//! RTMP HEVC and AV1 that Debian's ffmpeg 5.1 cannot send; the result is
//! checked with ffprobe.

mod common;

use common::rtmp::{Obs, s};
use common::*;
use relaycast::media::remux::{build_hvcc, split_annexb};
use rml_rtmp::rml_amf0::Amf0Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// ffmpeg writes a raw elementary stream; None when it cannot (missing encoder).
fn raw_stream(codec_args: &[&str], format: &str) -> Option<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("relaycast-rtmpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let out = dir.join(format!("v.{format}"));
    let ok = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
            "-t",
            "2",
        ])
        .args(codec_args)
        .args(["-f", format])
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| std::fs::read(&out).ok()).flatten()
}

/// HEVC access units (keyframe, length-prefixed NAL units) and the hvcC.
fn hevc_access_units(data: &[u8]) -> (Vec<u8>, Vec<(bool, Vec<u8>)>) {
    let (mut vps, mut sps, mut pps) = (None, None, None);
    let mut aus: Vec<(bool, Vec<u8>)> = Vec::new();
    for n in split_annexb(data) {
        let t = (n[0] >> 1) & 0x3f;
        match t {
            32 => vps = Some(n.to_vec()),
            33 => sps = Some(n.to_vec()),
            34 => pps = Some(n.to_vec()),
            0..=31 => {
                if n.get(2).is_some_and(|b| b & 0x80 != 0) || aus.is_empty() {
                    aus.push(((16..=23).contains(&t), Vec::new()));
                }
                if let Some(au) = aus.last_mut() {
                    au.1.extend_from_slice(&(n.len() as u32).to_be_bytes());
                    au.1.extend_from_slice(n);
                }
            }
            _ => {}
        }
    }
    let (Some(v), Some(s), Some(p)) = (vps, sps, pps) else {
        panic!("no HEVC parameter sets")
    };
    let hvcc = build_hvcc(&v, &s, &p).expect("hvcC");
    (hvcc.to_vec(), aus)
}

/// AV1 temporal units from a low-overhead OBU stream (each starts with a
/// temporal delimiter; keyframe = carries a sequence header) and an av1C.
fn av1_temporal_units(data: &[u8]) -> (Vec<u8>, Vec<(bool, Vec<u8>)>) {
    fn leb128(b: &[u8]) -> Option<(usize, usize)> {
        let mut v = 0usize;
        for (i, byte) in b.iter().take(8).enumerate() {
            v |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((v, i + 1));
            }
        }
        None
    }
    let mut tus: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut seq_header = None;
    let mut pos = 0;
    while pos < data.len() {
        let header = data[pos];
        let kind = (header >> 3) & 0xf;
        let ext = usize::from(header & 4 != 0);
        let (size, n) = leb128(&data[pos + 1 + ext..]).expect("OBU size");
        let end = pos + 1 + ext + n + size;
        let obu = &data[pos..end];
        match kind {
            2 => tus.push((false, Vec::new())), // temporal delimiter: dropped (CMAF)
            1 => {
                seq_header.get_or_insert_with(|| obu.to_vec());
                if let Some(tu) = tus.last_mut() {
                    tu.0 = true;
                    tu.1.extend_from_slice(obu);
                }
            }
            _ => {
                if let Some(tu) = tus.last_mut() {
                    tu.1.extend_from_slice(obu);
                }
            }
        }
        pos = end;
    }
    // av1C: marker+version, profile 0 / level 8, 8-bit 4:2:0, no delay, then the sequence header.
    let mut av1c = vec![0x81, 0x08, 0x0c, 0x00];
    av1c.extend_from_slice(&seq_header.expect("AV1 sequence header"));
    (av1c, tus)
}

/// Publish `units` as Enhanced RTMP with FourCC `fourcc` over the OBS
/// sequence; returns what a WebSocket viewer received.
async fn publish_enhanced(
    relay: &relaycast::server::Running,
    rtmp: SocketAddr,
    name: &str,
    fourcc: &[u8; 4],
    config: Vec<u8>,
    units: &[(bool, Vec<u8>)],
) -> Received {
    let mut viewer = ws_connect(&format!("ws://{}/live/{name}?wait=10", relay.addr)).await;
    let mut obs = Obs::connect(rtmp).await;
    let codec_id = f64::from(u32::from_be_bytes(*fourcc));
    obs.start(
        name,
        vec![
            ("videocodecid", Amf0Value::Number(codec_id)),
            ("width", Amf0Value::Number(320.0)),
            ("height", Amf0Value::Number(240.0)),
        ],
    )
    .await;
    // ExVideoTagHeader: IsExHeader | FrameType(1 key) | PacketType 0 SequenceStart.
    let mut start = vec![0x90];
    start.extend_from_slice(fourcc);
    start.extend_from_slice(&config);
    obs.video(0, start).await;
    for (i, (key, unit)) in units.iter().enumerate() {
        // PacketType 3 = CodedFramesX (no composition time); frame type 1 key / 2 inter.
        let mut tag = vec![0x80 | if *key { 0x10 } else { 0x20 } | 3];
        tag.extend_from_slice(fourcc);
        tag.extend_from_slice(unit);
        obs.video(i as u32 * 1000 / 30, tag).await;
    }
    obs.stop(name).await;
    // Everything up to the publisher's goodbye (all frames are flushed at the stop).
    let mut got = Received::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        let r = ws_read(&mut viewer, 1, Duration::from_secs(1)).await;
        let done = r.close.is_some()
            || r.texts
                .iter()
                .any(|t| t["type"] == "publisher" || t["type"] == "end");
        got.bytes.extend_from_slice(&r.bytes);
        got.seqs.extend(r.seqs);
        got.texts.extend(r.texts);
        if done {
            break;
        }
    }
    got
}

/// (codec, width, height, frames) of an fMP4 file, by ffprobe.
fn ffprobe_file(bytes: &[u8], name: &str) -> String {
    let path =
        std::env::temp_dir().join(format!("relaycast-rtmpc-{}-{name}.mp4", std::process::id()));
    std::fs::write(&path, bytes).expect("write");
    let o = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .args([
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let _ = std::fs::remove_file(&path);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

async fn rtmp_relay() -> (relaycast::server::Running, SocketAddr) {
    let mut cfg = config();
    cfg.ingest.rtmp.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let relay = relay(cfg).await;
    let rtmp = relay.rtmp.expect("rtmp");
    (relay, rtmp)
}

#[tokio::test]
async fn obs_sequence_with_enhanced_rtmp_hevc_decodes_and_a_reconnect_continues() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let Some(raw) = raw_stream(
        &[
            "-c:v",
            "libx265",
            "-x265-params",
            "keyint=30:bframes=0:log-level=error",
        ],
        "hevc",
    ) else {
        eprintln!("skipping: ffmpeg has no libx265");
        return;
    };
    let (hvcc, aus) = hevc_access_units(&raw);
    assert_eq!(aus.len(), 60);
    let (relay, rtmp) = rtmp_relay().await;
    let got = publish_enhanced(&relay, rtmp, "hevc", b"hvc1", hvcc.clone(), &aus).await;
    let init = got.of_type("init");
    assert!(
        init.first()
            .is_some_and(|i| i["codecs"].as_str().is_some_and(|c| c.starts_with("hvc1."))),
        "{init:?}"
    );
    // The whole publish, as the viewer received it: 60 frames of 320x240 HEVC.
    assert_eq!(ffprobe_file(&got.bytes, "hevc"), "hevc,320,240,60");

    // OBS reconnects (same key, new connection, timestamps from 0): the
    // viewer of the stream continues.
    let mut viewer = ws_connect(&format!("ws://{}/live/again?wait=10", relay.addr)).await;
    for round in 0..2 {
        let mut obs = Obs::connect(rtmp).await;
        obs.start(
            "again",
            vec![(
                "videocodecid",
                Amf0Value::Number(f64::from(u32::from_be_bytes(*b"hvc1"))),
            )],
        )
        .await;
        let mut start = vec![0x90];
        start.extend_from_slice(b"hvc1");
        start.extend_from_slice(&hvcc);
        obs.video(0, start).await;
        for (i, (key, unit)) in aus.iter().enumerate() {
            let mut tag = vec![0x80 | if *key { 0x10 } else { 0x20 } | 3];
            tag.extend_from_slice(b"hvc1");
            tag.extend_from_slice(unit);
            obs.video(i as u32 * 1000 / 30, tag).await;
        }
        if round == 0 {
            // A dropped connection, not a clean stop: no FCUnpublish.
            drop(obs);
        } else {
            obs.stop("again").await;
        }
    }
    let r = ws_read(&mut viewer, 30, Duration::from_secs(15)).await;
    assert!(r.close.is_none() || r.seqs.len() >= 30, "{:?}", r.close);
    assert!(
        r.seqs.len() >= 30,
        "fragments over both connections: {}",
        r.seqs.len()
    );
    let m = relaycast::server::metrics_text(&relay.state.registry, &relay.state.limits.refused);
    assert!(
        m.contains("relaycast_ingest_publishers_total{transport=\"rtmp\"} 3"),
        "{m}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn enhanced_rtmp_av1_decodes() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let Some(raw) = raw_stream(
        &[
            "-c:v",
            "libsvtav1",
            "-preset",
            "12",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
        ],
        "obu",
    ) else {
        eprintln!("skipping: ffmpeg has no libsvtav1 or obu muxer");
        return;
    };
    let (av1c, tus) = av1_temporal_units(&raw);
    assert_eq!(tus.len(), 60);
    let (relay, rtmp) = rtmp_relay().await;
    let got = publish_enhanced(&relay, rtmp, "av1", b"av01", av1c, &tus).await;
    let init = got.of_type("init");
    assert!(
        init.first()
            .is_some_and(|i| i["codecs"].as_str().is_some_and(|c| c.starts_with("av01."))),
        "{init:?}"
    );
    assert_eq!(ffprobe_file(&got.bytes, "av1"), "av1,320,240,60");
    relay.shutdown().await;
}

/// The commands OBS sends without waiting are answered as nginx-rtmp and
/// SRS answer them (`releaseStream` → `_result`; `FCPublish` → `_result`
/// and `onFCPublish` NetStream.Publish.Start), and a publisher is told when
/// the relay shuts down: an `onStatus` NetStream.Unpublish.Success of level
/// `status` (so encoders reconnect), then a clean close.
#[tokio::test]
async fn fcpublish_is_answered_and_shutdown_is_told() {
    let (relay, rtmp) = rtmp_relay().await;
    let mut obs = Obs::connect(rtmp).await;
    obs.command("connect", vec![], 0).await;
    obs.until("_result").await;
    obs.command("releaseStream", vec![s("told")], 0).await;
    obs.until("_result").await;
    obs.command("FCPublish", vec![s("told")], 0).await;
    let fc = obs.until("onFCPublish").await;
    let fc = format!("{fc:?}");
    assert!(fc.contains("NetStream.Publish.Start"), "{fc}");
    assert!(fc.contains("told"), "{fc}");
    obs.command("createStream", vec![], 0).await;
    let result = obs.until("_result").await;
    obs.stream_id = result
        .iter()
        .find_map(|v| match v {
            Amf0Value::Number(n) => Some(*n as u32),
            _ => None,
        })
        .expect("stream id");
    let sid = obs.stream_id;
    obs.command("publish", vec![s("told"), s("live")], sid)
        .await;
    let status = format!("{:?}", obs.until("onStatus").await);
    assert!(status.contains("NetStream.Publish.Start"), "{status}");
    // The relay shuts down while the encoder publishes.
    let shutdown = tokio::spawn(relay.shutdown());
    let status = format!("{:?}", obs.until("onStatus").await);
    assert!(status.contains("NetStream.Unpublish.Success"), "{status}");
    assert!(status.contains("\"status\""), "level status: {status}");
    // Then the relay closes the connection.
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match obs.sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the relay did not close the connection");
    assert!(shutdown.await.expect("join"), "drained within the deadline");
}
