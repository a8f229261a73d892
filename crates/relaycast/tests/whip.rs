//! WHIP ingest (#16): the endpoint's refusals (each a clear 4xx/503 with
//! its reason), CORS, a session that never completes ICE (timed out, its
//! name released, another stream undisturbed), and a real WebRTC publisher:
//! `str0m` as the client in-process (H.264 from ffmpeg's libx264, VP9 from
//! its libvpx-vp9 or AV1 from its libaom-av1, Opus; H.264, then VP9, then
//! AV1 chosen when several are offered)
//! → the relay → a WebSocket viewer and ffprobe on `/live/NAME.mp4`; the
//! keyframe request after video loss, for each of the three codecs (the
//! client drops video RTP at its UDP socket); trickle ICE by `PATCH` (RFC 9725 §4.3.1) and its refusals.

mod common;

use bytes::Bytes;
use common::*;
use relaycast::config::Config;
use relaycast::server::Running;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

type Client = (
    Rtc,
    UdpSocket,
    String,
    SdpPendingOffer,
    Vec<(Mid, MediaKind)>,
);

/// A WebRTC client (str0m, full ICE) with H.264 video and Opus audio,
/// send-only, on its own UDP socket: its offer, the pending state.
async fn client() -> Client {
    client_with(&[MediaKind::Video, MediaKind::Audio]).await
}

/// A client sending `kinds` (video is H.264, audio Opus).
async fn client_with(kinds: &[MediaKind]) -> Client {
    client_offering(&[Codec::H264], kinds).await
}

/// A client offering the video codecs `video` (H.264, VP9, AV1), audio Opus.
async fn client_offering(video: &[Codec], kinds: &[MediaKind]) -> Client {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(video.contains(&Codec::H264))
        .enable_vp9(video.contains(&Codec::Vp9))
        .enable_av1(video.contains(&Codec::Av1))
        .enable_opus(true, false)
        .build(Instant::now());
    let c = Candidate::host(socket.local_addr().expect("addr"), "udp").expect("candidate");
    rtc.add_local_candidate(c);
    let mut api = rtc.sdp_api();
    let mids = kinds
        .iter()
        .map(|&k| (api.add_media(k, Direction::SendOnly, None, None, None), k))
        .collect();
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
    assert!(b.contains("H.264, VP9 or AV1"), "{b}");
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
    let (s, h, b) = call(a, "PATCH", "/whip/cam", &auth, "").await;
    assert_eq!(s, 405, "PATCH goes to a session, not the endpoint: {b}");
    assert_eq!(header(&h, "allow"), "POST, OPTIONS");

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
    assert!(hv("access-control-allow-methods").contains("patch"));
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
    assert!(hv_of(&h, "access-control-expose-headers").contains("accept-patch"));
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
/// ffmpeg's test source: `seconds` at 30 fps, a keyframe every `gop` frames
/// (and no others: no scene-cut keyframes).
async fn h264_access_units(seconds: u32, gop: u32) -> Vec<Vec<u8>> {
    let (t, g) = (seconds.to_string(), gop.to_string());
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=320x180:rate=30", "-t", &t])
        .args(X264_LIVE)
        .args(["-profile:v", "baseline", "-pix_fmt", "yuv420p", "-g", &g])
        .args(["-sc_threshold", "0"])
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

/// Whether an access unit (Annex B) holds an IDR slice (NAL type 5).
fn has_idr(au: &[u8]) -> bool {
    au.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 5)
}

/// Video frames from ffmpeg through IVF (VP9 frames, a superframe as one;
/// AV1 temporal units): `seconds` of the test source at 30 fps, encoded
/// with `encoder` (codec and options), a keyframe every `gop` frames.
async fn ivf_frames(seconds: u32, gop: u32, encoder: &[&str]) -> Vec<Vec<u8>> {
    let (t, g) = (seconds.to_string(), gop.to_string());
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=320x180:rate=30", "-t", &t])
        .args(encoder)
        .args(["-pix_fmt", "yuv420p", "-g", &g])
        .args(["-keyint_min", &g, "-f", "ivf", "-"])
        .output()
        .await
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // IVF: a 32-byte file header, then per frame a 12-byte header (size
    // u32 LE, pts u64) and the frame.
    let data = out.stdout;
    assert_eq!(data.get(..4), Some(&b"DKIF"[..]), "IVF");
    let mut frames = Vec::new();
    let mut at = 32;
    while let Some(h) = data.get(at..at + 12) {
        let size = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let frame = data.get(at + 12..at + 12 + size).expect("whole IVF frame");
        frames.push(frame.to_vec());
        at += 12 + size;
    }
    frames
}

/// libvpx-vp9 as a browser's realtime encoder runs it.
const VP9_RT: &[&str] = &[
    "-c:v",
    "libvpx-vp9",
    "-deadline",
    "realtime",
    "-cpu-used",
    "8",
    "-b:v",
    "500k",
];
/// libaom-av1 in its realtime mode (no lookahead: no hidden frames).
const AV1_RT: &[&str] = &[
    "-c:v",
    "libaom-av1",
    "-usage",
    "realtime",
    "-cpu-used",
    "8",
    "-lag-in-frames",
    "0",
    "-b:v",
    "300k",
];

/// Whether a frame is a keyframe: an H.264 IDR; a VP9 (super)frame whose
/// first frame's profile-0 header is `10 0 0 0 0 …` (marker, profile,
/// show_existing_frame 0, frame_type KEY); an AV1 temporal unit with a
/// sequence header after its temporal delimiter (libaom sends one with
/// every key frame).
fn is_key(codec: Codec, frame: &[u8]) -> bool {
    match codec {
        Codec::Vp9 => frame.first().is_some_and(|b| b & 0xfc == 0x80),
        Codec::Av1 => frame.get(..3) == Some(&[0x12, 0x00, 0x0a][..]),
        _ => has_idr(frame),
    }
}

/// The RTP payload type of an (S)RTP datagram, `None` for RTCP, STUN and
/// DTLS: RFC 7983 (first byte 128..=191 is RTP/RTCP), RFC 5761 §4 (a
/// second byte 192..=223 is RTCP). SRTP leaves the RTP header in clear.
fn rtp_pt(d: &[u8]) -> Option<u8> {
    let (&b0, &b1) = (d.first()?, d.get(1)?);
    if !(128..=191).contains(&b0) || (192..=223).contains(&b1) {
        return None;
    }
    Some(b1 & 0x7f)
}

/// What a test steers in, and reads out of, a running [`publish`].
#[derive(Default)]
struct Knobs {
    stop: AtomicBool,
    /// Video RTP datagrams (H.264 or its retransmission payload type) still
    /// to drop at the client's socket, as a lossy network would.
    drop_video: AtomicU32,
    /// Drop every retransmission (RTX) datagram: NACKs cannot repair a loss.
    no_rtx: AtomicBool,
    /// Datagrams dropped so far.
    dropped: AtomicU32,
    /// Keyframe requests (PLI/FIR) the relay sent for the video.
    keyframe_requests: AtomicU32,
    /// Send the keyframe (the first access unit) only when asked: at
    /// start and after each keyframe request; the loop over the access
    /// units skips it. Off: loop over all of them.
    keyframes_on_request: bool,
    /// Keyframes sent.
    keyframes_sent: AtomicU32,
    /// The video codec of the frames (`None`: H.264 access units).
    video: Option<Codec>,
}

impl Knobs {
    fn get(&self, n: &AtomicU32) -> u32 {
        n.load(Ordering::Relaxed)
    }
}

/// Drive the client: ICE/DTLS, then 30 fps video and 20 ms Opus frames
/// (silence) in real time, looping the access units until `knobs.stop`.
async fn publish(
    mut rtc: Rtc,
    socket: UdpSocket,
    mids: Vec<(Mid, MediaKind)>,
    aus: Vec<Vec<u8>>,
    knobs: Arc<Knobs>,
) -> Result<u64, String> {
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let mut connected = None::<Instant>;
    let (mut vn, mut an) = (0u64, 0u64);
    // Next access unit when keyframes are sent on request.
    let mut vi = 0usize;
    // The video's payload types: H.264's, and their retransmissions'.
    let (mut video_pts, mut rtx_pts) = (Vec::new(), Vec::new());
    let video_mid = mids
        .iter()
        .find(|(_, k)| *k == MediaKind::Video)
        .map(|m| m.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if knobs.stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Ok(vn);
        }
        let timeout = loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let pt = rtp_pt(&t.contents);
                    let rtx = pt.is_some_and(|p| rtx_pts.contains(&p));
                    let video = pt.is_some_and(|p| video_pts.contains(&p)) || rtx;
                    let lose = (rtx && knobs.no_rtx.load(Ordering::Relaxed))
                        || (video
                            && knobs
                                .drop_video
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok());
                    if lose {
                        knobs.dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                }
                Output::Event(Event::Connected) => connected = Some(Instant::now()),
                Output::Event(Event::KeyframeRequest(r)) if Some(r.mid) == video_mid => {
                    knobs.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    vi = 0;
                }
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
                    knobs.video.unwrap_or(Codec::H264)
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
                if kind == MediaKind::Video && video_pts.is_empty() {
                    for p in w.payload_params().filter(|p| p.spec().codec == codec) {
                        video_pts.push(*p.pt());
                        rtx_pts.extend(p.resend().map(|r| *r));
                    }
                }
                let (time, data) = match kind {
                    MediaKind::Video => {
                        let i = if knobs.keyframes_on_request {
                            let i = vi;
                            vi = if vi + 1 < aus.len() { vi + 1 } else { 1 };
                            i
                        } else {
                            (*n as usize) % aus.len()
                        };
                        if is_key(codec, &aus[i]) {
                            knobs.keyframes_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        (
                            MediaTime::new(*n * 3000, Frequency::NINETY_KHZ),
                            aus[i].clone(),
                        )
                    }
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
    let aus = h264_access_units(3, 30).await;
    assert!(aus.len() >= 60, "{} access units", aus.len());
    let mut viewer = ws_connect(&format!("ws://{a}/live/webcam?wait=15")).await;
    let (mut rtc, socket, offer, pending, mids) = client().await;
    let (s, h, answer) = post_offer(a, "webcam", None, &offer).await;
    assert_eq!(s, 201, "{answer}");
    let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    let knobs = Arc::new(Knobs::default());
    let client = tokio::spawn(publish(rtc, socket, mids, aus, knobs.clone()));

    let got = ws_read(&mut viewer, 10, Duration::from_secs(15)).await;
    if got.seqs.len() < 10 {
        knobs.stop.store(true, Ordering::Relaxed);
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
    knobs.stop.store(true, Ordering::Relaxed);
    let sent = client.await.expect("join").expect("client ran");
    assert!(sent >= 60, "{sent} frames sent");
    relay.shutdown().await;
}

/// An offer of the two video codecs `both` (rtpmaps `rtpmaps`): the answer
/// has the first alone, not a word of the second; the session is then ended.
async fn answers_one_of(a: std::net::SocketAddr, both: [Codec; 2], rtpmaps: [&str; 2]) {
    let (_rtc, _sock, offer, _, _) = client_offering(&both, &[MediaKind::Video]).await;
    assert!(offer.contains(rtpmaps[0]) && offer.contains(rtpmaps[1]));
    let (s, h, answer) = post_offer(a, "both", None, &offer).await;
    assert_eq!(s, 201, "{answer}");
    let second = rtpmaps[1].split('/').next().unwrap_or(rtpmaps[1]);
    assert!(
        answer.contains(rtpmaps[0]) && !answer.contains(second),
        "{answer}"
    );
    let (s, _, b) = call(a, "DELETE", &header(&h, "location"), &[], "").await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_client_publishes_vp9_and_opus_to_viewers_and_ffprobe() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let relay = whip_relay(config()).await;
    let a = relay.addr;
    // Offered both H.264 and VP9, the relay answers H.264 alone (its preference).
    answers_one_of(a, [Codec::H264, Codec::Vp9], ["H264/90000", "VP9/90000"]).await;

    let frames = ivf_frames(3, 30, VP9_RT).await;
    publishes(&relay, Codec::Vp9, frames, "vp09.00.11.08", "vp9").await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_client_publishes_av1_and_opus_to_viewers_and_ffprobe() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let relay = whip_relay(config()).await;
    let a = relay.addr;
    // Offered VP9 and AV1, the relay answers VP9 alone.
    answers_one_of(a, [Codec::Vp9, Codec::Av1], ["VP9/90000", "AV1/90000"]).await;

    let frames = ivf_frames(3, 30, AV1_RT).await;
    // libaom's 320x180: seq_profile 0, seq_level_idx 0 (2.0), Main tier, 8-bit.
    publishes(&relay, Codec::Av1, frames, "av01.0.00M.08", "av1").await;
    relay.shutdown().await;
}

/// A client offering `codec` video (alone) and Opus publishes `frames`
/// (from [`ivf_frames`]) in real time: the answer has that codec alone, a
/// viewer's fragments are fMP4 the splitter takes (as from fMP4 ingest),
/// starting at a keyframe, with `codecs` (the video codec string) and
/// Opus, and ffprobe decodes `probed` video and Opus from `/live/NAME.mp4`.
async fn publishes(
    relay: &Running,
    codec: Codec,
    frames: Vec<Vec<u8>>,
    codecs: &str,
    probed: &str,
) {
    let a = relay.addr;
    assert!(frames.len() >= 60, "{} {codec:?} frames", frames.len());
    assert!(is_key(codec, &frames[0]), "starts with a keyframe");
    let name = format!("{probed}cam");
    let mut viewer = ws_connect(&format!("ws://{a}/live/{name}?wait=15")).await;
    let kinds = [MediaKind::Video, MediaKind::Audio];
    let (mut rtc, socket, offer, pending, mids) = client_offering(&[codec], &kinds).await;
    let (s, h, answer) = post_offer(a, &name, None, &offer).await;
    assert_eq!(s, 201, "{answer}");
    let rtpmap = format!("{codec}/90000");
    assert!(
        answer.contains(&rtpmap) && !answer.contains("H264"),
        "{answer}"
    );
    let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    let knobs = Arc::new(Knobs {
        video: Some(codec),
        ..Knobs::default()
    });
    let client = tokio::spawn(publish(rtc, socket, mids, frames, knobs.clone()));

    let got = ws_read(&mut viewer, 10, Duration::from_secs(15)).await;
    if got.seqs.len() < 10 {
        knobs.stop.store(true, Ordering::Relaxed);
        panic!(
            "viewer got {:?} {:?}; client: {:?}",
            got.seqs,
            got.texts,
            client.await
        );
    }
    // The fan-out's bytes are fMP4 the splitter takes, as from fMP4 ingest.
    let (init, frags) = split(&got.bytes);
    assert!(frags.len() >= 9, "{} fragments", frags.len());
    assert_eq!(init.codecs, format!("{codecs},opus"));
    assert_eq!(keys(&got).first(), Some(&true), "starts at a keyframe");
    let (names, decoded, audio) = ffprobe_live(&format!("http://{a}/live/{name}.mp4")).await;
    assert_eq!(names, vec![probed.to_string(), "opus".to_string()]);
    assert!(
        decoded >= 30 && audio >= 50,
        "{decoded} video, {audio} audio frames"
    );
    let (s, _, b) = call(a, "DELETE", &header(&h, "location"), &[], "").await;
    assert_eq!(s, 200, "{b}");
    knobs.stop.store(true, Ordering::Relaxed);
    let sent = client.await.expect("join").expect("client ran");
    assert!(sent >= 60, "{sent} frames sent");
}

/// Poll `done` every 20 ms for at most `limit`; false if it never held.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The `fragment` control messages' `key` flags, in order.
fn keys(r: &common::Received) -> Vec<bool> {
    r.of_type("fragment")
        .iter()
        .map(|v| v["key"].as_bool().expect("fragment key"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_video_loss_the_relay_asks_for_a_keyframe_and_viewers_go_on() {
    if !have("ffmpeg") {
        return;
    }
    // 10 s with one keyframe, at the start: the client sends a keyframe
    // only when the relay asks (at start, and after loss, or never again).
    let aus = h264_access_units(10, 1000).await;
    assert!(aus.len() >= 250, "{} access units", aus.len());
    loss_then_keyframe(Codec::H264, aus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_vp9_video_loss_the_relay_asks_for_a_keyframe_and_viewers_go_on() {
    if !have("ffmpeg") {
        return;
    }
    let frames = ivf_frames(10, 1000, VP9_RT).await;
    assert!(frames.len() >= 250, "{} VP9 frames", frames.len());
    loss_then_keyframe(Codec::Vp9, frames).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_av1_video_loss_the_relay_asks_for_a_keyframe_and_viewers_go_on() {
    if !have("ffmpeg") {
        return;
    }
    let frames = ivf_frames(10, 1000, AV1_RT).await;
    assert!(frames.len() >= 250, "{} AV1 temporal units", frames.len());
    loss_then_keyframe(Codec::Av1, frames).await;
}

/// A video-only `codec` client sends `aus` (one keyframe, the first) and a
/// keyframe only when asked; a run of its video packets is lost: the relay
/// asks for a keyframe and the viewer goes on from it.
async fn loss_then_keyframe(codec: Codec, aus: Vec<Vec<u8>>) {
    // Keyframes asked for only at the start and after loss (not by age).
    let mut cfg = config();
    cfg.ingest.whip.keyframe_interval = Duration::ZERO;
    let relay = whip_relay(cfg).await;
    let a = relay.addr;
    let idrs: Vec<usize> = (0..aus.len()).filter(|&i| is_key(codec, &aus[i])).collect();
    assert_eq!(idrs, vec![0], "one keyframe, the first access unit");
    let mut viewer = ws_connect(&format!("ws://{a}/live/lossy?wait=15")).await;
    // Video only: a fragment out of the relay is video that got through.
    let (mut rtc, socket, offer, pending, mids) =
        client_offering(&[codec], &[MediaKind::Video]).await;
    let (s, _, answer) = post_offer(a, "lossy", None, &offer).await;
    assert_eq!(s, 201, "{answer}");
    let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    let knobs = Arc::new(Knobs {
        keyframes_on_request: true,
        video: Some(codec),
        ..Knobs::default()
    });
    let client = tokio::spawn(publish(rtc, socket, mids, aus, knobs.clone()));
    let fail = |what: String| {
        knobs.stop.store(true, Ordering::Relaxed);
        panic!("{what}");
    };

    let before = ws_read(&mut viewer, 5, Duration::from_secs(15)).await;
    if before.seqs.len() < 5 {
        fail(format!("viewer got {:?} {:?}", before.seqs, before.texts));
    }
    assert_eq!(keys(&before).first(), Some(&true), "starts at the keyframe");
    // Mid-GOP now (the next keyframe is whenever the relay asks): lose a
    // run of video packets, retransmissions included.
    let asked = knobs.get(&knobs.keyframe_requests);
    let sent = knobs.get(&knobs.keyframes_sent);
    knobs.no_rtx.store(true, Ordering::Relaxed);
    knobs.drop_video.store(12, Ordering::Relaxed);
    let requested = wait_until(Duration::from_secs(10), || {
        knobs.get(&knobs.keyframe_requests) > asked
    })
    .await;
    if !requested {
        fail(format!(
            "no keyframe request within 10 s after the loss ({} datagrams dropped, {} left to drop; {asked} requests before)",
            knobs.get(&knobs.dropped),
            knobs.get(&knobs.drop_video),
        ));
    }
    assert_eq!(knobs.get(&knobs.drop_video), 0, "the whole run was lost");
    let answered = wait_until(Duration::from_secs(5), || {
        knobs.get(&knobs.keyframes_sent) > sent
    })
    .await;
    assert!(answered, "the client sent the keyframe asked for");

    // Viewers go on: a keyframe fragment, then more video.
    let mut after = common::Received::default();
    let deadline = Instant::now() + Duration::from_secs(15);
    let resumed = |r: &common::Received| {
        let k = keys(r);
        k.iter().position(|&k| k).is_some_and(|i| k.len() >= i + 6)
    };
    while !resumed(&after) && Instant::now() < deadline {
        let r = ws_read(&mut viewer, 1, Duration::from_secs(2)).await;
        if r.close.is_some() {
            fail(format!("viewer closed: {:?}", r.close));
        }
        after.texts.extend(r.texts);
        after.seqs.extend(r.seqs);
    }
    if !resumed(&after) {
        fail(format!(
            "after the keyframe request the viewer got fragments with keys {:?}",
            keys(&after)
        ));
    }
    knobs.stop.store(true, Ordering::Relaxed);
    client.await.expect("join").expect("client ran");
    relay.shutdown().await;
}

/// A WebRTC encoder (a browser's) sends a keyframe only when asked: the
/// relay asks whenever the last one is older than `keyframe_interval`, so
/// the stream has bounded groups (viewers join near live, HLS segments end)
/// with no loss at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_never_sends_keyframes_unasked_is_asked_every_interval() {
    if !have("ffmpeg") {
        return;
    }
    let mut cfg = config();
    cfg.ingest.whip.keyframe_interval = Duration::from_secs(1);
    let relay = whip_relay(cfg).await;
    let a = relay.addr;
    let aus = h264_access_units(10, 1000).await;
    let mut viewer = ws_connect(&format!("ws://{a}/live/groups?wait=15")).await;
    let (mut rtc, socket, offer, pending, mids) = client_with(&[MediaKind::Video]).await;
    let (s, _, answer) = post_offer(a, "groups", None, &offer).await;
    assert_eq!(s, 201, "{answer}");
    let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    let knobs = Arc::new(Knobs {
        keyframes_on_request: true,
        ..Knobs::default()
    });
    let client = tokio::spawn(publish(rtc, socket, mids, aus, knobs.clone()));
    // Three groups after the first: three keyframe fragments more.
    let mut got = common::Received::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let groups = |r: &common::Received| keys(r).iter().filter(|&&k| k).count();
    while groups(&got) < 4 && Instant::now() < deadline {
        let r = ws_read(&mut viewer, 1, Duration::from_secs(2)).await;
        if r.close.is_some() {
            break;
        }
        got.texts.extend(r.texts);
        got.seqs.extend(r.seqs);
    }
    knobs.stop.store(true, Ordering::Relaxed);
    assert_eq!(knobs.get(&knobs.dropped), 0, "no loss in this test");
    assert!(
        groups(&got) >= 4,
        "keyframe fragments {} of {} ({} keyframe requests, {} keyframes sent)",
        groups(&got),
        keys(&got).len(),
        knobs.get(&knobs.keyframe_requests),
        knobs.get(&knobs.keyframes_sent)
    );
    client.await.expect("join").expect("client ran");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_ice_patch_adds_candidates_and_refuses_what_it_should() {
    if !have("ffmpeg") {
        return;
    }
    let mut cfg = config();
    cfg.ingest.publish_key = Some("sekrit-key-123".into());
    let relay = whip_relay(cfg).await;
    let a = relay.addr;
    let key = Some("sekrit-key-123");
    let auth = ("authorization", "Bearer sekrit-key-123");
    let frag_type = ("content-type", "application/trickle-ice-sdpfrag");
    let aus = h264_access_units(3, 30).await;
    let mut viewer = ws_connect(&format!("ws://{a}/live/trickled?wait=15")).await;
    let (mut rtc, socket, offer, pending, mids) = client().await;

    // The offer goes without its candidate; the client trickles it after.
    let line = |prefix: &str| {
        offer
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in the offer"))
            .to_string()
    };
    let candidate = line("a=candidate:");
    let bare: String = offer
        .lines()
        .filter(|l| !l.starts_with("a=candidate:") && *l != "a=end-of-candidates")
        .map(|l| format!("{l}\r\n"))
        .collect();
    assert!(!bare.contains("a=candidate"));
    let (s, h, answer) = post_offer(a, "trickled", key, &bare).await;
    assert_eq!(s, 201, "{answer}");
    assert_eq!(
        header(&h, "accept-patch"),
        "application/trickle-ice-sdpfrag"
    );
    let location = header(&h, "location");
    let etag = header(&h, "etag");
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    // RFC 9725 §4.3.1's fragment: credentials, the bundle's first m-line, candidates.
    let (ufrag, pwd) = (line("a=ice-ufrag:"), line("a=ice-pwd:"));
    let (m, mid) = (line("m="), line("a=mid:"));
    let frag =
        format!("{ufrag}\r\n{pwd}\r\n{m}\r\n{mid}\r\n{candidate}\r\na=end-of-candidates\r\n");

    // Refusals, each with the reason; the session is untouched by them.
    let patch = |path: String, headers: Vec<(&'static str, String)>, body: String| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        call(a, "PATCH", &path, &h, &body).await
    };
    let hdr = |hs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        hs.iter().map(|(n, v)| (*n, v.to_string())).collect()
    };
    let (s, _, b) = patch(location.clone(), hdr(&[frag_type]), frag.clone()).await;
    assert_eq!(s, 401, "no key: {b}");
    let wrong = ("authorization", "Bearer wrong-key-456");
    let (s, _, b) = patch(location.clone(), hdr(&[frag_type, wrong]), frag.clone()).await;
    assert_eq!(s, 403, "wrong key: {b}");
    let sdp_type = ("content-type", "application/sdp");
    let (s, _, b) = patch(location.clone(), hdr(&[sdp_type, auth]), frag.clone()).await;
    assert_eq!(s, 415, "{b}");
    assert!(b.contains("application/trickle-ice-sdpfrag"), "{b}");
    let (s, _, b) = patch(location.clone(), hdr(&[auth]), frag.clone()).await;
    assert_eq!(s, 415, "no content type: {b}");
    let nosuch = "/whip/trickled/nosuchsession".to_string();
    let (s, _, b) = patch(nosuch, hdr(&[frag_type, auth]), frag.clone()).await;
    assert_eq!(s, 404, "{b}");
    let (s, _, b) = patch(location.clone(), hdr(&[frag_type, auth]), "hello".into()).await;
    assert_eq!(s, 400, "{b}");
    let big = "a=end-of-candidates\r\n".repeat(1000);
    let (s, _, b) = patch(location.clone(), hdr(&[frag_type, auth]), big).await;
    assert_eq!(s, 413, "{b}");
    let other = ("if-match", "\"another-ice-session\"");
    let (s, _, b) = patch(
        location.clone(),
        hdr(&[frag_type, auth, other]),
        frag.clone(),
    )
    .await;
    assert_eq!(s, 412, "{b}");
    let restart = format!(
        "a=ice-ufrag:newU\r\na=ice-pwd:aNewPasswordOf24CharsXYZ\r\n{m}\r\n{mid}\r\n{candidate}\r\n"
    );
    let any = ("if-match", "*");
    let (s, _, b) = patch(location.clone(), hdr(&[frag_type, auth, any]), restart).await;
    assert_eq!(s, 422, "{b}");
    assert!(b.contains("ICE restart"), "{b}");
    let (s, h, b) = call(a, "POST", &location, &[auth], "").await;
    assert_eq!(s, 405, "{b}");
    assert!(header(&h, "allow").contains("PATCH"));

    // The candidate, trickled: 204, no body.
    let ok = hdr(&[frag_type, auth, ("if-match", &etag)]);
    let (s, _, b) = patch(location.clone(), ok, frag.clone()).await;
    assert_eq!((s, b.as_str()), (204, ""));

    // And the session publishes.
    let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    let knobs = Arc::new(Knobs::default());
    let client = tokio::spawn(publish(rtc, socket, mids, aus, knobs.clone()));
    let got = ws_read(&mut viewer, 10, Duration::from_secs(15)).await;
    if got.seqs.len() < 10 {
        knobs.stop.store(true, Ordering::Relaxed);
        panic!(
            "viewer got {:?} {:?}; client: {:?}",
            got.seqs,
            got.texts,
            client.await
        );
    }
    let (s, _, b) = call(a, "DELETE", &location, &[auth], "").await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = patch(location.clone(), hdr(&[frag_type, auth]), frag).await;
    assert_eq!(s, 404, "ended: {b}");
    knobs.stop.store(true, Ordering::Relaxed);
    client.await.expect("join").expect("client ran");
    relay.shutdown().await;
}
