//! The core relay end to end: real sockets on 127.0.0.1:0, real ffmpeg and
//! ffprobe, WebSocket and HTTP-stream viewers.

mod common;

use bytes::Bytes;
use common::*;
use std::time::Duration;

/// Bytes a viewer that joined at fragment `from` must get: init, then every fragment from there.
fn expected_from(
    init: &relaycast::media::Init,
    frags: &[relaycast::media::Fragment],
    from: usize,
) -> Vec<u8> {
    let mut v = init.bytes.to_vec();
    for f in &frags[from..] {
        v.extend_from_slice(&f.bytes);
    }
    v
}

#[tokio::test]
async fn websocket_viewer_gets_the_published_bytes_exactly() {
    let relay = relay(config()).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);
    // The file has nothing the splitter drops: the pieces are the whole file.
    assert_eq!(expected_from(&init, &frags, 0), file.to_vec());

    let mut ws = ws_connect(&format!("ws://{base}/live/exact?wait=10")).await;
    let url = format!("http://{base}/publish/exact");
    let body = file.clone();
    let publish = tokio::spawn(async move { put_chunked(&url, body, 777, Duration::ZERO).await });
    let first_key = frags.iter().position(|f| f.keyframe).expect("a keyframe");
    let want = frags.len() - first_key;
    let got = ws_read(&mut ws, want, Duration::from_secs(20)).await;
    let (status, body) = publish.await.expect("join");
    assert_eq!(status, 200, "publish answered {body}");
    let summary: serde_json::Value = serde_json::from_str(&body).expect("JSON summary");
    assert_eq!(summary["fragments"], frags.len() as u64);
    assert_eq!(summary["bytes"], file.len() as u64);

    assert_eq!(
        got.seqs.len(),
        want,
        "every fragment from the join keyframe"
    );
    assert_eq!(
        got.bytes,
        expected_from(&init, &frags, first_key),
        "byte for byte"
    );
    // Each binary message is exactly one stored item, announced by its control message.
    assert_eq!(got.binaries[0], init.bytes);
    let hello = &got.of_type("hello")[0];
    assert_eq!(hello["stream"], "exact");
    let inits = got.of_type("init");
    assert_eq!(inits[0]["codecs"], init.codecs.as_str());
    let seqs: Vec<u64> = got.seqs.clone();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive seqs: {seqs:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn late_viewer_starts_at_the_newest_keyframe_and_resumes_with_after() {
    let relay = relay(config()).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);
    // Publish everything but keep the stream open: the body never ends until we drop it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let url = format!("http://{base}/publish/late");
    let publisher = tokio::spawn(async move { put_stream(&url, rx).await });
    tx.send(file.clone()).await.expect("send");
    // Wait until the relay has every fragment.
    let info_url = format!("http://{base}/live/late/info");
    for _ in 0..100 {
        let (s, _, b) = get(&info_url).await;
        if s == 200 {
            let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
            if v["seq"] == (frags.len() - 1) as u64 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_key = frags.iter().rposition(|f| f.keyframe).expect("keyframe");
    let mut ws = ws_connect(&format!("ws://{base}/live/late")).await;
    let got = ws_read(&mut ws, frags.len() - last_key, Duration::from_secs(5)).await;
    assert_eq!(
        got.seqs.first(),
        Some(&(last_key as u64)),
        "joins at the newest keyframe"
    );
    assert_eq!(got.bytes, expected_from(&init, &frags, last_key));

    // Resume after seq 10: everything from 11 on, nothing twice.
    let mut ws = ws_connect(&format!("ws://{base}/live/late?after=10")).await;
    let got = ws_read(&mut ws, frags.len() - 11, Duration::from_secs(5)).await;
    assert_eq!(got.of_type("hello")[0]["resumed"], true);
    assert_eq!(got.seqs.first(), Some(&11));
    assert_eq!(got.bytes, expected_from(&init, &frags, 11));

    // After a seq the relay never had: the newest keyframe, and a skip says so.
    let mut ws = ws_connect(&format!("ws://{base}/live/late?after=999999")).await;
    let got = ws_read(&mut ws, 1, Duration::from_secs(5)).await;
    assert_eq!(got.of_type("hello")[0]["resumed"], false);
    assert_eq!(got.of_type("skip").len(), 1);
    assert_eq!(got.seqs.first(), Some(&(last_key as u64)));
    drop(tx);
    let _ = publisher.await;
    relay.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_clear_statuses_and_disturb_nothing() {
    let relay = relay(config()).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);

    // A healthy stream, watched throughout.
    let mut ws = ws_connect(&format!("ws://{base}/live/healthy?wait=10")).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let url = format!("http://{base}/publish/healthy");
    let healthy = tokio::spawn(async move { put_stream(&url, rx).await });
    let half = frags.len() / 2;
    let cut = init.bytes.len() + frags[..half].iter().map(|f| f.bytes.len()).sum::<usize>();
    tx.send(file.slice(..cut)).await.expect("send");

    // 404: unknown stream, on every watch path.
    assert_eq!(get(&format!("http://{base}/live/nope.mp4")).await.0, 404);
    assert_eq!(get(&format!("http://{base}/live/nope/info")).await.0, 404);
    assert_eq!(get(&format!("http://{base}/live/nope/poll")).await.0, 404);
    let mut nope = ws_connect(&format!("ws://{base}/live/nope")).await;
    let r = ws_read(&mut nope, 1, Duration::from_secs(5)).await;
    assert_eq!(r.close.as_ref().map(|c| c.0), Some(4004), "{r:?}");
    // 400: bad names.
    let (s, _) = put_chunked(
        &format!("http://{base}/publish/bad.name"),
        file.clone(),
        4096,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        get(&format!("http://{base}/live/{}/info", "x".repeat(65)))
            .await
            .0,
        400
    );
    // 409: a second publisher on a live name.
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/healthy"),
        file.clone(),
        4096,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 409, "{body}");
    // 413: a box over the limit (16 MiB by default), refused from its header.
    let mut big = init.bytes.to_vec();
    big.extend_from_slice(&(64u32 << 20).to_be_bytes());
    big.extend_from_slice(b"mdat");
    big.extend_from_slice(&[0u8; 1024]);
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/big"),
        Bytes::from(big),
        4096,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 413, "{body}");
    // 400: garbage, and a moof before any moov.
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/garbage"),
        Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        7,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("error"), "{body}");
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/nomoov"),
        frags[0].bytes.clone(),
        100,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 400, "{body}");
    // A body cut inside a box: 400 on finish.
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/cut"),
        file.slice(..cut + 10),
        1000,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 400, "{body}");

    // The healthy stream's viewer saw none of that: the rest arrives intact.
    tx.send(file.slice(cut..)).await.expect("send");
    let first_key = frags.iter().position(|f| f.keyframe).expect("key");
    let got = ws_read(&mut ws, frags.len() - first_key, Duration::from_secs(10)).await;
    assert_eq!(got.bytes, expected_from(&init, &frags, first_key));
    drop(tx);
    let (s, _) = healthy.await.expect("join");
    assert_eq!(s, 200);
    relay.shutdown().await;
}

#[tokio::test]
async fn publisher_reconnect_within_grace_keeps_viewers() {
    let relay = relay(config()).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_keyframe.mp4");
    let (_, frags) = split(&file);
    let mut ws = ws_connect(&format!("ws://{base}/live/again?wait=10")).await;
    let url = format!("http://{base}/publish/again");
    let (s, _) = put_chunked(&url, file.clone(), 8192, Duration::ZERO).await;
    assert_eq!(s, 200);
    // Back within the grace period (3 s in tests).
    let (s, _) = put_chunked(&url, file.clone(), 8192, Duration::ZERO).await;
    assert_eq!(s, 200);
    let got = ws_read(&mut ws, 2 * frags.len(), Duration::from_secs(10)).await;
    assert_eq!(got.seqs.len(), 2 * frags.len(), "{:?}", got.texts);
    assert!(
        got.seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seqs keep counting: {:?}",
        got.seqs
    );
    let states: Vec<_> = got
        .of_type("publisher")
        .iter()
        .map(|v| v["state"].clone())
        .collect();
    assert_eq!(states, vec!["gone", "back"]);
    // The same init bytes are not sent twice.
    assert_eq!(got.of_type("init").len(), 1);
    // When no publisher returns, the viewer is told the stream ended.
    let rest = ws_read(&mut ws, usize::MAX, Duration::from_secs(10)).await;
    assert_eq!(rest.close.as_ref().map(|c| c.0), Some(1000), "{rest:?}");
    assert_eq!(rest.of_type("end").len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn ffmpeg_publishes_and_ffprobe_decodes_the_http_stream() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let relay = relay(config()).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let mut ffmpeg = ffmpeg_live(
        8,
        &format!("http://{base}/publish/cam"),
        &["-method", "PUT", "-chunked_post", "1"],
    )
    .spawn()
    .expect("spawn ffmpeg");
    let probe = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-read_intervals",
            "%+3",
            "-show_entries",
            "stream=codec_name,width,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(format!("http://{base}/live/cam.mp4?wait=10"))
        .output()
        .await
        .expect("ffprobe");
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(probe.status.success(), "ffprobe failed: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "ffprobe reported errors: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&probe.stdout).expect("json");
    let s = &v["streams"][0];
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(s["width"], 320);
    let frames: u64 = s["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .expect("frames");
    assert!(frames >= 60, "decoded {frames} frames");
    let status = ffmpeg.wait().await.expect("ffmpeg");
    assert!(status.success(), "ffmpeg publisher exited with {status}");
    relay.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_never_ending_responses_at_a_fragment_boundary() {
    let mut cfg = config();
    cfg.server.shutdown_timeout = Duration::from_secs(5);
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_every_frame.mp4");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let url = format!("http://{base}/publish/sd");
    let publisher = tokio::spawn(async move { put_stream(&url, rx).await });
    tx.send(file.slice(..file.len() / 2)).await.expect("send");
    let stream_url = format!("http://{base}/live/sd.mp4?wait=5");
    let viewer = tokio::spawn(async move { get(&stream_url).await });
    let mut ws = ws_connect(&format!("ws://{base}/live/sd?wait=5")).await;
    let _ = ws_read(&mut ws, 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    assert!(relay.shutdown().await, "drained before the deadline");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, _, body) = viewer.await.expect("viewer");
    assert_eq!(status, 200);
    // The body ends cleanly after a whole box.
    let mut off = 0usize;
    while off + 8 <= body.len() {
        let size = u32::from_be_bytes(body[off..off + 4].try_into().expect("4 bytes")) as usize;
        assert!(size >= 8);
        off += size;
    }
    assert_eq!(off, body.len(), "the response ends at a box boundary");
    assert!(body.len() > 1000);
    let rest = ws_read(&mut ws, usize::MAX, Duration::from_secs(5)).await;
    assert_eq!(rest.close.as_ref().map(|c| c.0), Some(1001), "{rest:?}");
    drop(tx);
    let _ = publisher.await;
}
