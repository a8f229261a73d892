//! RTMP ingest with the real encoders: ffmpeg publishing FLV over RTMP (and
//! RTMPS), checked with ffprobe and WebSocket viewers; the refusals an
//! encoder shows its user, read from ffmpeg's stderr.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// ffmpeg publishing a live H.264/AAC test signal as FLV to `url`, for
/// `seconds` (None: until killed).
fn ffmpeg_flv(url: &str, seconds: Option<u32>, extra: &[&str]) -> tokio::process::Command {
    ffmpeg_encoder(seconds, &[extra, &["-f", "flv"][..]].concat(), url)
}

/// A relay with RTMP on 127.0.0.1:0.
async fn rtmp_relay(
    mut cfg: relaycast::config::Config,
) -> (relaycast::server::Running, SocketAddr) {
    cfg.ingest.rtmp.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let relay = relay(cfg).await;
    let rtmp = relay.rtmp.expect("RTMP listener bound");
    assert_ne!(rtmp.port(), 0, "the real port is reported");
    (relay, rtmp)
}

/// Run ffmpeg to completion (bounded) and return (success, stderr).
async fn run_to_end(mut c: tokio::process::Command) -> (bool, String) {
    let out = tokio::time::timeout(Duration::from_secs(20), c.output())
        .await
        .expect("ffmpeg ended within 20 s")
        .expect("run ffmpeg");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_rtmp_reaches_ffprobe_and_two_identical_viewers_and_survives_an_encoder_restart() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let (relay, rtmp) = rtmp_relay(config()).await;
    let http = relay.addr;
    let url = format!("rtmp://{rtmp}/live/cam");
    let (mut a, ra, enc) = identical_viewers(http, "cam", || {
        ffmpeg_flv(&url, None, &[]).spawn().expect("spawn ffmpeg")
    })
    .await;
    let init = &ra.of_type("init");
    assert!(
        init.first().is_some_and(|i| i["mime"]
            .as_str()
            .is_some_and(|m| m.contains("avc1.") && m.contains("mp4a.40.2"))),
        "init control message: {init:?}"
    );
    // Fragments of at most ~100 ms: 30 fps video, so at most 4 frames of 33 ms.
    let frags: Vec<_> = ra.of_type("fragment");
    assert!(frags.len() >= 20);
    let (codecs, video, audio) = ffprobe_live(&format!("http://{http}/live/cam.mp4")).await;
    assert_eq!(codecs, vec!["h264".to_string(), "aac".to_string()]);
    assert!(
        video >= 50 && audio >= 50,
        "decoded {video} video, {audio} audio frames"
    );

    // Kill the encoder and start it again within the grace period (3 s).
    let mut enc = restart_encoder(enc, || {
        ffmpeg_flv(&url, None, &[]).spawn().expect("respawn ffmpeg")
    })
    .await;
    fragments_after_publisher_gone(&mut a, 15).await;
    enc.start_kill().expect("kill ffmpeg");
    let m = relaycast::server::metrics_text(&relay.state.registry, &relay.state.limits.refused);
    assert!(
        m.contains("relaycast_ingest_publishers_total{transport=\"rtmp\"} 2"),
        "{m}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn rtmp_refusals_reach_the_encoder_as_status_messages() {
    if !have("ffmpeg") {
        return;
    }
    let mut cfg = config();
    cfg.ingest
        .keys
        .insert("studio".into(), "studio-secret-1".into());
    cfg.ingest.keys.insert("cam".into(), "cam-secret-12".into());
    let (relay, rtmp) = rtmp_relay(cfg).await;
    let cases = [
        // (url, what ffmpeg's stderr must say)
        (format!("rtmp://{rtmp}/live/cam"), "needs a key"),
        (
            format!("rtmp://{rtmp}/live/cam?key=nope"),
            "wrong publish key",
        ),
        (
            format!("rtmp://{rtmp}/live/bad*name"),
            "invalid stream name",
        ),
        (
            format!("rtmp://{rtmp}/other/cam"),
            "unknown RTMP application",
        ),
    ];
    for (url, want) in &cases {
        let (ok, stderr) = run_to_end(ffmpeg_flv(url, Some(3), &[])).await;
        assert!(!ok, "{url}: ffmpeg should fail");
        assert!(
            stderr.contains(want),
            "{url}: stderr {stderr:?} lacks {want:?}"
        );
    }
    // A live name cannot be taken by a second encoder.
    let mut first = ffmpeg_flv(
        &format!("rtmp://{rtmp}/live/cam?key=cam-secret-12"),
        None,
        &[],
    )
    .spawn()
    .expect("spawn");
    let http = relay.addr;
    let info = reqwest_info(&format!("http://{http}/live/cam/info?wait=10")).await;
    assert_eq!(info["live"], true, "{info}");
    let (ok, stderr) = run_to_end(ffmpeg_flv(
        &format!("rtmp://{rtmp}/live/cam?key=cam-secret-12"),
        Some(3),
        &[],
    ))
    .await;
    assert!(
        !ok && stderr.contains("already has a live publisher"),
        "{stderr}"
    );
    first.start_kill().expect("kill");
    // The key alone as the stream key (OBS's one field) publishes to its stream.
    let mut by_key = ffmpeg_flv(&format!("rtmp://{rtmp}/live/studio-secret-1"), None, &[])
        .spawn()
        .expect("spawn");
    let info = reqwest_info(&format!("http://{http}/live/studio/info?wait=10")).await;
    assert_eq!(info["live"], true, "{info}");
    by_key.start_kill().expect("kill");
    let m = relaycast::server::metrics_text(&relay.state.registry, &relay.state.limits.refused);
    assert!(m.contains("reason=\"wrong_key\"} 1"), "{m}");
    assert!(m.contains("reason=\"missing_key\"} 1"), "{m}");
    relay.shutdown().await;
}

/// GET a JSON document.
async fn reqwest_info(url: &str) -> serde_json::Value {
    use http_body_util::BodyExt;
    let u = url::Url::parse(url).expect("url");
    let tcp =
        tokio::net::TcpStream::connect((u.host_str().expect("host"), u.port().expect("port")))
            .await
            .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(&u[url::Position::BeforePath..])
        .header("host", "x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let r = tokio::time::timeout(Duration::from_secs(15), send.send_request(req))
        .await
        .expect("answered")
        .expect("response");
    let body = r.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn ffmpeg_rtmps_with_the_relays_certificate_publishes() {
    if !have("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
    let mut cfg = config();
    cfg.server.tls_cert = Some(dir.path().join("cert.pem"));
    cfg.server.tls_key = Some(dir.path().join("key.pem"));
    cfg.ingest.rtmp.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let relay = relay(cfg).await;
    let rtmps = relay.rtmps.expect("RTMPS listener bound");
    assert!(relay.rtmp.is_none());
    let mut enc = ffmpeg_flv(&format!("rtmps://{rtmps}/live/secure"), None, &[])
        .spawn()
        .expect("spawn ffmpeg");
    // The relay serves HTTPS with that certificate; read the stream's state directly.
    let stream = relay
        .state
        .registry
        .find("secure", Duration::from_secs(10))
        .await
        .expect("the RTMPS publisher created the stream");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = serde_json::to_value(stream.info()).expect("info");
        if info["codecs"].is_string() || tokio::time::Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info["live"], true, "{info}");
    assert!(
        info["codecs"]
            .as_str()
            .is_some_and(|c| c.contains("avc1.") && c.contains("mp4a.40.2")),
        "{info}"
    );
    enc.start_kill().expect("kill");
    let m = relaycast::server::metrics_text(&relay.state.registry, &relay.state.limits.refused);
    assert!(
        m.contains("relaycast_ingest_publishers_total{transport=\"rtmp\"} 1"),
        "{m}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_flvmux_rtmp2sink_publishes_and_ffprobe_decodes() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let gst_ok = std::process::Command::new("gst-inspect-1.0")
        .arg("rtmp2sink")
        .output()
        .is_ok_and(|o| o.status.success());
    if !gst_ok {
        if std::env::var("RELAYCAST_REQUIRE_FFMPEG").as_deref() == Ok("1") {
            panic!("GStreamer rtmp2sink is required in CI (gstreamer1.0-plugins-bad)");
        }
        eprintln!("skipping: GStreamer rtmp2sink not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("in.mp4");
    let made = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t",
            "8",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
        ])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k"])
        .arg(&clip)
        .status()
        .await
        .expect("ffmpeg");
    assert!(made.success());
    let (relay, rtmp) = rtmp_relay(config()).await;
    let pipeline = format!(
        "filesrc location={} ! qtdemux name=d d.video_0 ! queue ! h264parse ! flvmux name=m streamable=true ! rtmp2sink location=rtmp://{rtmp}/live/gst sync=true d.audio_0 ! queue ! aacparse ! m.",
        clip.display()
    );
    let mut gst = tokio::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split(' '))
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn gst-launch-1.0");
    let (codecs, video, audio) =
        ffprobe_live(&format!("http://{}/live/gst.mp4?wait=10", relay.addr)).await;
    assert_eq!(codecs, vec!["h264".to_string(), "aac".to_string()]);
    assert!(
        video >= 50 && audio >= 50,
        "decoded {video} video, {audio} audio frames"
    );
    gst.start_kill().expect("kill gst");
    relay.shutdown().await;
}
