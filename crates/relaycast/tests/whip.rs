//! WHIP ingest (#16): the endpoint's refusals (each a clear 4xx/503 with
//! its reason), CORS, a session that never completes ICE (timed out, its
//! name released, another stream undisturbed), and a real WebRTC publisher:
//! `str0m` as the client in-process (H.264 from ffmpeg's libx264, Opus)
//! → the relay → a WebSocket viewer and ffprobe on `/live/NAME.mp4`.

mod common;

use bytes::Bytes;
use common::*;
use relaycast::config::Config;
use relaycast::server::Running;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

async fn whip_relay(mut cfg: Config) -> Running {
    if std::env::var("WHIP_DEBUG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    cfg.ingest.whip.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let r = relay(cfg).await;
    assert!(r.webrtc.is_some_and(|a| a.port() != 0), "WebRTC UDP bound");
    r
}

/// One HTTP/1.1 request: (status, headers, body as text).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, hyper::HeaderMap, String) {
    let (s, h, b) = request(addr, method, path, headers, Bytes::from(body.to_string())).await;
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

/// POST an offer to `/whip/{name}` with `key`.
async fn post_offer(
    addr: SocketAddr,
    name: &str,
    key: Option<&str>,
    sdp: &str,
) -> (u16, hyper::HeaderMap, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut h = vec![("content-type", "application/sdp")];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    call(addr, "POST", &format!("/whip/{name}"), &h, sdp).await
}

/// A WebRTC client (str0m, full ICE) with H.264 video and Opus audio,
/// send-only, on its own UDP socket: its offer, the pending state.
async fn client() -> (
    Rtc,
    UdpSocket,
    String,
    SdpPendingOffer,
    Vec<(Mid, MediaKind)>,
) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(Instant::now());
    let c = Candidate::host(socket.local_addr().expect("addr"), "udp").expect("candidate");
    rtc.add_local_candidate(c);
    let mut api = rtc.sdp_api();
    let mids = [MediaKind::Video, MediaKind::Audio]
        .map(|k| (api.add_media(k, Direction::SendOnly, None, None, None), k))
        .to_vec();
    let (offer, pending) = api.apply().expect("an offer");
    (rtc, socket, offer.to_sdp_string(), pending, mids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_off_answers_503_with_the_reason() {
    let relay = relay(config()).await;
    let (status, _, body) = post_offer(relay.addr, "cam", None, "v=0\r\n").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--webrtc"), "{body}");
    let (status, _, body) = call(relay.addr, "DELETE", "/whip/cam/abc", &[], "").await;
    assert_eq!(status, 503, "{body}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_refusals_say_why_and_cors_lets_browsers_in() {
    let mut cfg = config();
    cfg.ingest.publish_key = Some("sekrit-key-123".into());
    let relay = whip_relay(cfg).await;
    let a = relay.addr;
    let (_rtc, _sock, offer, _, _) = client().await;
    let key = Some("sekrit-key-123");

    let (s, _, b) = post_offer(a, "cam", None, &offer).await;
    assert_eq!(s, 401, "no key: {b}");
    let (s, _, b) = post_offer(a, "cam", Some("wrong-key-456"), &offer).await;
    assert_eq!(s, 403, "wrong key: {b}");
    let (s, _, b) = post_offer(a, "cam", key, "this is not SDP").await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("SDP"), "{b}");
    // The same offer with other codecs in place of H.264 and Opus.
    let vp8_only = offer
        .replace("H264/90000", "VP8/90000")
        .replace("opus/48000/2", "PCMU/8000");
    assert_ne!(vp8_only, offer);
    let (s, _, b) = post_offer(a, "cam", key, &vp8_only).await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("neither H.264"), "{b}");
    let (s, _, b) = call(
        a,
        "POST",
        "/whip/cam",
        &[("authorization", "Bearer sekrit-key-123")],
        &offer,
    )
    .await;
    assert_eq!(s, 400, "no Content-Type: {b}");
    assert!(b.contains("application/sdp"), "{b}");
    let (s, _, b) = post_offer(a, "bad.name", key, &offer).await;
    assert_eq!(s, 400, "{b}");

    let auth = [("authorization", "Bearer sekrit-key-123")];
    let (s, _, b) = call(a, "DELETE", "/whip/cam/nosuchsession", &auth, "").await;
    assert_eq!(s, 404, "{b}");
    let (s, h, b) = call(a, "PATCH", "/whip/cam/nosuchsession", &auth, "").await;
    assert_eq!(s, 405, "{b}");
    assert!(h.get("allow").is_some());

    // CORS preflight, as a browser on another origin sends it.
    let (s, h, _) = call(
        a,
        "OPTIONS",
        "/whip/cam",
        &[
            ("origin", "http://example.test"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
        "",
    )
    .await;
    assert!(s == 200 || s == 204, "preflight {s}");
    let hv = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert!(hv("access-control-allow-headers").contains("authorization"));
    assert!(hv("access-control-allow-methods").contains("delete"));
    assert_eq!(hv("access-control-allow-origin"), "*");

    // Accepted: 201, the answer, a Location; then DELETE ends it (and a second DELETE is 404).
    let origin = [
        ("content-type", "application/sdp"),
        ("authorization", "Bearer sekrit-key-123"),
        ("origin", "http://example.test"),
    ];
    let (s, h, answer) = call(a, "POST", "/whip/cam", &origin, &offer).await;
    assert_eq!(s, 201, "{answer}");
    assert_eq!(hv_of(&h, "content-type"), "application/sdp");
    assert!(hv_of(&h, "access-control-expose-headers").contains("location"));
    let location = header(&h, "location");
    assert!(location.starts_with("/whip/cam/"), "{location}");
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(answer.contains("a=candidate:"), "{answer}");
    let (s, _, b) = post_offer(a, "cam", key, &offer).await;
    assert_eq!(s, 409, "the name is taken while the session lives: {b}");
    let (s, _, b) = call(a, "DELETE", &location, &[], "").await;
    assert_eq!(s, 401, "DELETE needs the key too: {b}");
    let (s, _, b) = call(a, "DELETE", &location, &auth, "").await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = call(a, "DELETE", &location, &auth, "").await;
    assert_eq!(s, 404, "{b}");
    relay.shutdown().await;
}

fn header(h: &hyper::HeaderMap, n: &str) -> String {
    h.get(n)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn hv_of(h: &hyper::HeaderMap, n: &str) -> String {
    header(h, n).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_completes_ice_times_out_and_releases_its_name() {
    let mut cfg = config();
    cfg.ingest.whip.handshake_timeout = Duration::from_secs(1);
    cfg.server.demo = true;
    let relay = whip_relay(cfg).await;
    let a = relay.addr;
    // A control stream (the built-in looping demo), watched throughout.
    let mut viewer = ws_connect(&format!("ws://{a}/live/demo?wait=10")).await;
    let before = ws_read(&mut viewer, 2, Duration::from_secs(10)).await;
    assert!(before.seqs.len() >= 2, "control stream plays");

    // An offer whose client never sends a STUN check.
    let (_rtc, _sock, offer, _, _) = client().await;
    let (s, _, b) = post_offer(a, "silent", None, &offer).await;
    assert_eq!(s, 201, "{b}");
    let (s, _, b) = post_offer(a, "silent", None, &offer).await;
    assert_eq!(s, 409, "{b}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, _, b) = post_offer(a, "silent", None, &offer).await;
    assert_eq!(s, 201, "the timed-out session released the name: {b}");

    let after = ws_read(&mut viewer, 2, Duration::from_secs(10)).await;
    assert!(
        after.seqs.len() >= 2 && after.close.is_none(),
        "control viewer undisturbed: {after:?}"
    );
    relay.shutdown().await;
}

/// H.264 access units (Annex B, x264 with AUDs, baseline: no B-frames) from
/// ffmpeg's test source: 3 s at 30 fps, a keyframe every second.
async fn h264_access_units() -> Vec<Vec<u8>> {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=320x180:rate=30", "-t", "3"])
        .args(X264_LIVE)
        .args(["-profile:v", "baseline", "-pix_fmt", "yuv420p", "-g", "30"])
        .args(["-x264-params", "aud=1", "-f", "h264", "-"])
        .output()
        .await
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = out.stdout;
    let aud = [0u8, 0, 0, 1, 9];
    let mut starts: Vec<usize> = data
        .windows(5)
        .enumerate()
        .filter(|(_, w)| *w == aud)
        .map(|(i, _)| i)
        .collect();
    starts.push(data.len());
    starts
        .windows(2)
        .map(|w| data[w[0]..w[1]].to_vec())
        .collect()
}

/// Drive the client: ICE/DTLS, then 30 fps video and 20 ms Opus frames
/// (silence) in real time, looping the access units until `stop`.
async fn publish(
    mut rtc: Rtc,
    socket: UdpSocket,
    mids: Vec<(Mid, MediaKind)>,
    aus: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> Result<u64, String> {
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let mut connected = None::<Instant>;
    let (mut vn, mut an) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Ok(vn);
        }
        let timeout = loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => connected = Some(Instant::now()),
                Output::Event(e) => {
                    if std::env::var("WHIP_DEBUG").is_ok() {
                        eprintln!("client event: {e:?}");
                    }
                }
            }
        };
        // Media due now.
        if let Some(t0) = connected {
            let elapsed = t0.elapsed();
            let want_v = (elapsed.as_millis() / 33) as u64;
            let want_a = (elapsed.as_millis() / 20) as u64;
            let mut wrote = false;
            for &(mid, kind) in &mids {
                let (n, want) = match kind {
                    MediaKind::Video => (&mut vn, want_v),
                    MediaKind::Audio => (&mut an, want_a),
                };
                if *n > want {
                    continue;
                }
                let Some(w) = rtc.writer(mid) else { continue };
                let codec = if kind == MediaKind::Video {
                    Codec::H264
                } else {
                    Codec::Opus
                };
                let Some(pt) = w
                    .payload_params()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt())
                else {
                    return Err(format!("no {codec:?} negotiated"));
                };
                let (time, data) = match kind {
                    MediaKind::Video => (
                        MediaTime::new(*n * 3000, Frequency::NINETY_KHZ),
                        aus[(*n as usize) % aus.len()].clone(),
                    ),
                    MediaKind::Audio => (
                        MediaTime::new(*n * 960, Frequency::FORTY_EIGHT_KHZ),
                        vec![0xf8, 0xff, 0xfe],
                    ),
                };
                w.write(pt, Instant::now(), time, data)
                    .map_err(|e| e.to_string())?;
                *n += 1;
                wrote = true;
                break; // one mutation, then drain
            }
            if wrote {
                continue;
            }
        }
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(5));
        let input = match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, source))) => match buf[..n].try_into() {
                Ok(contents) => Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    },
                ),
                Err(_) => continue,
            },
            _ => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input).map_err(|e| e.to_string())?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_client_publishes_h264_and_opus_to_viewers_and_ffprobe() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let relay = whip_relay(config()).await;
    let a = relay.addr;
    let aus = h264_access_units().await;
    assert!(aus.len() >= 60, "{} access units", aus.len());
    let mut viewer = ws_connect(&format!("ws://{a}/live/webcam?wait=15")).await;
    let (mut rtc, socket, offer, pending, mids) = client().await;
    let (s, h, answer) = post_offer(a, "webcam", None, &offer).await;
    assert_eq!(s, 201, "{answer}");
    let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    let stop = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn(publish(rtc, socket, mids, aus, stop.clone()));

    let got = ws_read(&mut viewer, 10, Duration::from_secs(15)).await;
    if got.seqs.len() < 10 {
        stop.store(true, Ordering::Relaxed);
        panic!(
            "viewer got {:?} {:?}; client: {:?}",
            got.seqs,
            got.texts,
            client.await
        );
    }
    let (init, frags) = split(&got.bytes);
    assert!(!frags.is_empty());
    assert!(
        init.codecs.contains("avc1") && init.codecs.contains("opus"),
        "{}",
        init.codecs
    );
    let (codecs, frames, audio) = ffprobe_live(&format!("http://{a}/live/webcam.mp4")).await;
    assert_eq!(codecs, vec!["h264".to_string(), "opus".to_string()]);
    assert!(
        frames >= 30 && audio >= 50,
        "{frames} video, {audio} audio frames"
    );
    let m = relaycast::server::metrics_text(&relay.state.registry, &relay.state.limits.refused);
    assert!(
        m.contains("relaycast_ingest_publishers_total{transport=\"whip\"} 1"),
        "{m}"
    );
    // DELETE ends the session: the viewer is told the publisher is gone.
    let (s, _, b) = call(a, "DELETE", &header(&h, "location"), &[], "").await;
    assert_eq!(s, 200, "{b}");
    stop.store(true, Ordering::Relaxed);
    let sent = client.await.expect("join").expect("client ran");
    assert!(sent >= 60, "{sent} frames sent");
    relay.shutdown().await;
}
