//! WHIP ingest (RFC 9725): OBS 30+ and browsers publish over WebRTC.
//!
//! `POST /whip/{name}` with an `application/sdp` offer (publish key as
//! `Authorization: Bearer KEY`, checked by the one [`super::authorize`])
//! answers `201 Created` with the SDP answer, `Location:
//! /whip/{name}/{session}`, an `ETag` and `Accept-Patch:
//! application/trickle-ice-sdpfrag`; `DELETE` on that location ends the
//! session. `PATCH` on it with an `application/trickle-ice-sdpfrag` body is
//! trickle ICE (RFC 9725 §4.3.1): the client's late `a=candidate` lines go
//! to the session's `Rtc`, `204 No Content`. The relay itself has nothing
//! to trickle (ICE-lite, one host candidate, all in the answer). An ICE
//! restart (a new `a=ice-ufrag`/`a=ice-pwd`) is `422`: a session that
//! supports trickle ICE but not restarts says so (§4.3.1), and str0m 0.24
//! restarts ICE only inside a full SDP offer/answer, which WHIP does not
//! renegotiate. When `--webrtc` is not given every `/whip/` request is
//! `503` with the reason.
//!
//! Media arrive on one UDP socket for every session (`serve --webrtc
//! ADDR`), demultiplexed by asking each session's `Rtc` whether it
//! [`accepts`](str0m::Rtc::accepts) a datagram (ICE ufrag, then the
//! remote address ICE nominated). One task ([`Driver`]) owns the socket
//! and every session's `Rtc` and drives them sans-IO: datagrams and time
//! in, datagrams and events out. Depacketized frames (H.264 access units
//! in Annex B, VP9 frames, AV1 temporal units, Opus packets, on their RTP clocks) go through the sans-IO
//! [`crate::media::remux::rtp::RtpRemuxer`] to CMAF, and those fMP4 bytes
//! through the one ingest loop [`super::IngestSession::run`] (admission,
//! limits, idle timeout, metrics `transport="whip"`, grace period) in a
//! task per session, exactly as RTMP and SRT do. A keyframe is asked for
//! (PLI) at the start, after loss, and when the last one is older than
//! `ingest.whip.keyframe_interval` (2 s; WebRTC encoders send one only when
//! asked); a session that has not completed ICE
//! and DTLS within `ingest.whip.handshake_timeout` is closed with the
//! reason logged, which releases the stream name.
//!
//! Video codecs: H.264, VP9 or AV1, the first of these the offer carries
//! (browsers offer VP8, VP9, H.264, AV1 and more; OBS offers H.264 and may
//! add others). Only the chosen codec is enabled in the session's `Rtc`,
//! so the answer lists that one alone and the publisher cannot send
//! another. H.264 first because it is what every viewer plays: MSE in
//! every browser (Safari and iOS included, where VP9 and AV1 in MP4 are
//! not a given), hardware decoding on phones, and the HLS players that
//! take `avc1` everywhere; it is also what OBS sends by default. VP9 next
//! (`vp09` in fMP4 plays in Chromium and Firefox MSE, decodes in software
//! everywhere), then AV1 (`av01`: the same browsers, but software decoding
//! costs viewers several times VP9's CPU where there is no AV1 hardware).
//! VP8 is not negotiated: Chromium's MSE does not take `vp08` in MP4
//! (`MediaSource.isTypeSupported('video/mp4; codecs="vp08.00.10.08"')` is
//! false in Chromium 156), so fMP4 viewers could not play it.
//!
//! Why `str0m` and not `webrtc-rs`: `str0m` is sans-IO like the rest of
//! the relay (the caller owns sockets and clocks, one task can drive every
//! session from one UDP port, and it tests without timers), has ICE-lite,
//! DTLS-SRTP and the H.264/Opus depacketizers with a frame-level API, and
//! runs on a pure-Rust crypto backend (`rust-crypto`: no OpenSSL, no C
//! build). `webrtc-rs` owns its sockets and spawns tasks per peer
//! connection, which would mean one UDP port per session or a mux shim.

use super::{IngestSession, attach, authorize, key_from};
use crate::Error;
use crate::app::{AppState, Peer, error_response};
use crate::fanout::Ingest;
use crate::media::remux::cmaf::MuxerConfig;
use crate::media::remux::rtp::{OPUS_CLOCK, RtpRemuxer, VIDEO_CLOCK};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::Codec as RtcCodec;
use str0m::media::{Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// What WHIP says when it is off.
pub const OFF: &str = "WHIP is off: start the relay with --webrtc ADDR (ingest.whip.listen)";
/// Fragments queued between the UDP driver and a session's ingest loop; a
/// loop that falls this far behind ends its session.
const QUEUE: usize = 256;
/// Least time between two keyframe requests of one session.
const PLI_EVERY: Duration = Duration::from_millis(500);
/// Longest wait of the driver between two looks at its sessions (handshake
/// timeouts, ended ingest loops).
const TICK: Duration = Duration::from_millis(100);
/// Most candidates a session takes by trickle ICE (a host, a reflexive and
/// a relay candidate per interface fit; each costs ICE candidate pairs in
/// the one driver task that serves every session). Later ones are dropped.
const MAX_TRICKLED: usize = 32;
/// Largest trickle-ICE `PATCH` body (a few candidate lines fit many times).
const MAX_SDPFRAG: usize = 16 * 1024;

/// The running WHIP ingest: the UDP driver's mailbox and what every answer needs.
pub struct Whip {
    commands: mpsc::Sender<Command>,
    /// The host candidate's address (public IP, bound port).
    candidate: SocketAddr,
    /// One DTLS certificate for every session (its fingerprint is in each answer).
    cert: DtlsCert,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Whip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whip")
            .field("candidate", &self.candidate)
            .finish_non_exhaustive()
    }
}

enum Command {
    Add(Box<Session>),
    Remove {
        name: String,
        id: String,
        done: oneshot::Sender<bool>,
    },
    /// Trickle ICE: candidates a client found after its offer.
    Trickle {
        name: String,
        id: String,
        patch: Box<SdpFrag>,
        done: oneshot::Sender<Trickled>,
    },
}

/// What a trickle-ICE `PATCH` body (RFC 8840 `application/trickle-ice-sdpfrag`) says.
#[derive(Debug, Default, PartialEq)]
struct SdpFrag {
    /// `If-Match` of the request (the entity-tags listed, or `*`), if any.
    if_match: Option<String>,
    ufrag: Option<String>,
    pwd: Option<String>,
    /// The candidates the relay can use (UDP, with an IP address).
    candidates: Vec<Candidate>,
    /// Candidates left aside: another transport, or an address the relay
    /// cannot resolve (mDNS `.local` names), as RFC 9725 §4.3.1 asks.
    discarded: usize,
    end_of_candidates: bool,
}

/// The driver's answer to a [`Command::Trickle`].
#[derive(Debug, PartialEq)]
enum Trickled {
    /// Candidates added (how many).
    Added(usize),
    NoSession,
    /// `If-Match` names another ICE session.
    EtagMismatch,
    /// New ICE credentials: an ICE restart, not offered.
    Restart,
}

/// Bind the WebRTC UDP socket on `listen` and start its driver; returns the
/// handle the HTTP routes use, the bound address and the task.
pub async fn start(
    listen: SocketAddr,
    app: AppState,
) -> anyhow::Result<(Arc<Whip>, SocketAddr, JoinHandle<()>)> {
    let socket = UdpSocket::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {listen} (WHIP/WebRTC UDP): {e}"))?;
    let bound = socket.local_addr()?;
    let ip = app.config.ingest.whip.public_ip.unwrap_or(bound.ip());
    if ip.is_unspecified() {
        anyhow::bail!(
            "--webrtc {listen} listens on every address: give --public-ip (ingest.whip.public_ip)"
        );
    }
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or_else(|| anyhow::anyhow!("WHIP: cannot generate a DTLS certificate"))?;
    let (commands, rx) = mpsc::channel(64);
    let driver = Driver {
        socket,
        local: bound,
        sessions: Vec::new(),
        handshake_timeout: app.config.ingest.whip.handshake_timeout,
    };
    let task = tokio::spawn(driver.run(rx, app.shutdown.clone()));
    let whip = Whip {
        commands,
        candidate: SocketAddr::new(ip, bound.port()),
        cert,
        next_id: AtomicU64::new(1),
    };
    Ok((Arc::new(whip), bound, task))
}

/// What the `/whip/` routes hold: the relay, and WHIP when it is on.
#[derive(Clone)]
struct Routes {
    app: AppState,
    whip: Option<Arc<Whip>>,
}

/// The `/whip/` routes with their CORS (browsers publish from other
/// origins: `Authorization` and `Content-Type` allowed, `Location` and
/// `ETag` exposed). `whip` is `None` when WHIP is off: every request is 503.
pub fn router(app: AppState, whip: Option<Arc<Whip>>) -> Router {
    use axum::routing::post;
    let cors = tower_http::cors::CorsLayer::new()
        .allow_methods([Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            HeaderName::from_static("accept-patch"),
        ])
        .allow_origin(tower_http::cors::Any)
        .max_age(Duration::from_secs(600));
    Router::new()
        .route("/whip/{name}", post(offer).patch(patch_endpoint))
        .route(
            "/whip/{name}/{session}",
            axum::routing::delete(end).patch(trickle).post(post_session),
        )
        .layer(cors)
        .with_state(Routes { app, whip })
}

fn off() -> Response {
    error_response(&Error::Off(OFF.into()))
}

/// The media type of a trickle-ICE `PATCH` body (RFC 8840).
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// A status with a JSON `{"error": …}` body.
fn status(code: StatusCode, error: String) -> Response {
    (code, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

/// 405 with `Allow`.
fn not_allowed(r: &Routes, allow: &'static str, error: &str) -> Response {
    if r.whip.is_none() {
        return off();
    }
    let mut resp = status(StatusCode::METHOD_NOT_ALLOWED, error.to_string());
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `PATCH /whip/{name}`: the endpoint is not a session.
async fn patch_endpoint(State(r): State<Routes>) -> Response {
    not_allowed(
        &r,
        "POST, OPTIONS",
        "PATCH (trickle ICE) goes to the session URL, the Location of the 201",
    )
}

/// `POST /whip/{name}/{session}`: a session takes PATCH and DELETE.
async fn post_session(State(r): State<Routes>) -> Response {
    not_allowed(
        &r,
        "PATCH, DELETE, OPTIONS",
        "a WHIP session takes PATCH (trickle ICE) and DELETE; offers go to /whip/{name}",
    )
}

/// `POST /whip/{name}`: an offer in, the answer out.
async fn offer(
    State(r): State<Routes>,
    Path(name): Path<String>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(whip) = r.whip else {
        return off();
    };
    let sdp_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().eq_ignore_ascii_case("application/sdp"));
    if sdp_type != Some(true) {
        // Also how the broadcast page asks whether WHIP is on (400, not
        // 503): answered before admission, nothing counted, not logged.
        return error_response(&Error::BadRequest(
            "a WHIP offer is sent with Content-Type: application/sdp".into(),
        ));
    }
    let app = r.app;
    match publish(&app, &whip, &name, peer, &headers, &body).await {
        Ok((id, answer)) => {
            let location = format!("/whip/{name}/{id}");
            let mut resp = (StatusCode::CREATED, answer).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&etag(&id)) {
                h.insert(header::ETAG, v);
            }
            // RFC 5789 §3.1: PATCH is allowed on the session, with this type.
            h.insert(
                HeaderName::from_static("accept-patch"),
                HeaderValue::from_static(SDPFRAG),
            );
            resp
        }
        Err(e) => {
            tracing::warn!(stream = %name, ?peer, status = e.http_status(), reason = %e, "WHIP publish refused");
            error_response(&e)
        }
    }
}

/// Admission, the answer, then the session handed to the driver.
async fn publish(
    app: &AppState,
    whip: &Whip,
    name: &str,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, String), Error> {
    let key = key_from(None, headers);
    authorize(app, name, key.as_deref(), peer).await?;
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::BadRequest("the SDP offer is not UTF-8".into()))?;
    let (video, audio) = offered_codecs(text);
    let offer = SdpOffer::from_sdp_string(text)
        .map_err(|e| Error::BadRequest(format!("bad SDP offer: {e}")))?;
    if video.is_none() && !audio {
        return Err(Error::BadRequest(
            "the offer has neither H.264, VP9 or AV1 video nor Opus audio: this relay takes those"
                .into(),
        ));
    }
    let (ice_ufrag, ice_pwd) = ice_creds(text);
    let mut rtc = Rtc::builder()
        .set_ice_lite(true)
        .set_dtls_cert(whip.cert.clone())
        .clear_codecs()
        .enable_h264(video == Some(Video::H264))
        .enable_vp9(video == Some(Video::Vp9))
        .enable_av1(video == Some(Video::Av1))
        .enable_opus(true, false)
        .build(Instant::now());
    let candidate = Candidate::host(whip.candidate, "udp")
        .map_err(|e| Error::Internal(format!("WHIP host candidate {}: {e}", whip.candidate)))?;
    rtc.add_local_candidate(candidate);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| Error::BadRequest(format!("cannot answer the SDP offer: {e}")))?;
    let ingest = attach(app, Ingest::Whip, name)?;
    let id = format!(
        "{:x}{}",
        whip.next_id.fetch_add(1, Ordering::Relaxed),
        str0m::IceCreds::new().ufrag
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    let cfg = &app.config.ingest.whip;
    let session = Session {
        id: id.clone(),
        name: name.to_string(),
        peer,
        rtc,
        remux: RtpRemuxer::new(
            MuxerConfig {
                max_fragment_us: cfg.fragment_ms.saturating_mul(1000),
                ..MuxerConfig::default()
            },
            video.is_some(),
            audio,
        ),
        tx,
        created: Instant::now(),
        connected: false,
        deadline: Instant::now(),
        last_pli: None,
        keyframe_every_us: match cfg.keyframe_interval.as_micros() {
            0 => u64::MAX,
            us => u64::try_from(us).unwrap_or(u64::MAX),
        },
        video_mid: None,
        ice_ufrag,
        ice_pwd,
        trickled: 0,
    };
    let span = tracing::info_span!("ingest", stream = %name, ?peer, transport = "whip");
    tokio::spawn(run_ingest(ingest, rx, app.clone(), name.to_string(), peer).instrument(span));
    whip.commands
        .send(Command::Add(Box::new(session)))
        .await
        .map_err(|_| Error::Shutdown)?;
    tracing::info!(stream = %name, ?peer, session = %id, "WHIP session created; waiting for ICE/DTLS");
    Ok((id, answer.to_sdp_string()))
}

/// The entity-tag of a session's ICE session (RFC 9725 §4.3.1). It never
/// changes: the relay does not restart ICE.
fn etag(id: &str) -> String {
    format!("\"{id}\"")
}

/// The offer's ICE credentials (the first `a=ice-ufrag`/`a=ice-pwd`: one
/// BUNDLE transport), to tell a trickle `PATCH` from an ICE restart.
fn ice_creds(sdp: &str) -> (Option<String>, Option<String>) {
    let attr = |name: &str| {
        sdp.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    (attr("a=ice-ufrag:"), attr("a=ice-pwd:"))
}

/// Parse a trickle-ICE SDP fragment (RFC 8840 §9: `a=ice-ufrag`,
/// `a=ice-pwd`, `a=candidate`, `a=end-of-candidates`, with `m=`/`a=mid`
/// lines that a BUNDLEd session does not need). A line that is not a
/// candidate at all is `Err`; a candidate the relay cannot use (TCP, an
/// mDNS name instead of an IP) is counted and left out (RFC 9725 §4.3.1:
/// "silently discard the candidate").
fn parse_sdpfrag(body: &str) -> Result<SdpFrag, String> {
    let mut frag = SdpFrag::default();
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            frag.ufrag = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            frag.pwd = Some(v.trim().to_string());
        } else if line == "a=end-of-candidates" {
            frag.end_of_candidates = true;
        } else if let Some(c) = line.strip_prefix("a=") {
            if !c.starts_with("candidate:") {
                continue;
            }
            // candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ KIND …
            let fields: Vec<&str> = c.split_whitespace().collect();
            if fields.len() < 8 || fields[6] != "typ" {
                return Err(format!("not an ICE candidate: {line:?}"));
            }
            let udp = fields[2].eq_ignore_ascii_case("udp");
            if !udp || fields[4].parse::<std::net::IpAddr>().is_err() {
                frag.discarded += 1;
                continue;
            }
            let cand = Candidate::from_sdp_string(c)
                .map_err(|e| format!("bad ICE candidate {line:?}: {e}"))?;
            frag.candidates.push(cand);
        } else if !is_sdp_line(line) {
            return Err(format!("not an SDP line (x=…): {line:?}"));
        }
    }
    if frag.candidates.is_empty()
        && frag.discarded == 0
        && !frag.end_of_candidates
        && frag.ufrag.is_none()
    {
        return Err(
            "the SDP fragment has no a=candidate, a=end-of-candidates or a=ice-ufrag line".into(),
        );
    }
    Ok(frag)
}

/// `x=…`: an SDP line of any type (RFC 8866 §5); those a trickle fragment
/// does not need (`m=`, `a=mid`, `a=ice-options`, …) are skipped.
fn is_sdp_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 2 && b[0].is_ascii_lowercase() && b[1] == b'='
}

/// A video codec the relay takes over WHIP, in order of preference (see
/// the module comment: H.264 first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Video {
    H264,
    Vp9,
    Av1,
}

/// Which of the codecs the relay carries an offer lists: the preferred
/// video codec among them, and whether Opus is there.
fn offered_codecs(sdp: &str) -> (Option<Video>, bool) {
    let mut video: Option<Video> = None;
    let mut audio = false;
    for line in sdp.lines() {
        let Some(map) = line.trim().strip_prefix("a=rtpmap:") else {
            continue;
        };
        let codec = map.split_whitespace().nth(1).unwrap_or_default();
        let codec = codec.split('/').next().unwrap_or_default();
        let this = if codec.eq_ignore_ascii_case("h264") {
            Some(Video::H264)
        } else if codec.eq_ignore_ascii_case("vp9") {
            Some(Video::Vp9)
        } else if codec.eq_ignore_ascii_case("av1") {
            Some(Video::Av1)
        } else {
            None
        };
        video = match (video, this) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        audio |= codec.eq_ignore_ascii_case("opus");
    }
    (video, audio)
}

/// The session's fMP4 through the one ingest loop.
async fn run_ingest(
    mut ingest: IngestSession,
    rx: mpsc::Receiver<Bytes>,
    app: AppState,
    name: String,
    peer: Option<SocketAddr>,
) {
    let mut source = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Error>(b), rx))
    }));
    let result = ingest.run(&mut source, &app).await;
    let summary = ingest.summary(result.as_ref().err());
    match &result {
        Ok(()) => {
            tracing::info!(stream = %name, ?peer, fragments = summary.fragments, "WHIP publisher finished")
        }
        Err(e) => {
            tracing::warn!(stream = %name, ?peer, fragments = summary.fragments, reason = %e, "WHIP publisher ended")
        }
    }
}

/// A request on a session (`DELETE`, `PATCH`) carries the publish key of
/// its offer where keys are configured: 401 without, 403 with another.
fn check_session_key(app: &AppState, name: &str, headers: &HeaderMap) -> Result<(), Error> {
    let key = key_from(None, headers);
    crate::auth::check_key(
        app.config.ingest.key_for(name),
        &app.limits.refused,
        name,
        key.as_deref(),
    )
}

fn no_session(name: &str, id: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        format!("no WHIP session /whip/{name}/{id} (ended, timed out, or never created)"),
    )
}

/// `PATCH /whip/{name}/{session}`: trickle ICE (RFC 9725 §4.3.1). The
/// candidates go to the session's `Rtc`: `204`. Refused: another content
/// type `415`, a body that is not an SDP fragment `400`, no such session
/// `404`, an `If-Match` that is not the session's `ETag` (nor `*`) `412`,
/// an ICE restart `422` (supported: trickle ICE only; the session and its
/// ICE go on untouched, as §4.3.2 asks of a refused restart).
async fn trickle(
    State(r): State<Routes>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(whip) = r.whip else {
        return off();
    };
    if let Err(e) = check_session_key(&r.app, &name, &headers) {
        return error_response(&e);
    }
    let is_frag = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(SDPFRAG));
    if !is_frag {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a WHIP PATCH (trickle ICE) is sent with Content-Type: {SDPFRAG}"),
        );
    }
    if body.len() > MAX_SDPFRAG {
        return status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "an SDP fragment of {} bytes is over the {MAX_SDPFRAG}-byte limit",
                body.len()
            ),
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return error_response(&Error::BadRequest("the SDP fragment is not UTF-8".into()));
    };
    let mut patch = match parse_sdpfrag(text) {
        Ok(f) => f,
        Err(e) => return error_response(&Error::BadRequest(e)),
    };
    patch.if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (done, answer) = oneshot::channel();
    let cmd = Command::Trickle {
        name: name.clone(),
        id: id.clone(),
        patch: Box::new(patch),
        done,
    };
    if whip.commands.send(cmd).await.is_err() {
        return error_response(&Error::Shutdown);
    }
    match answer.await {
        Ok(Trickled::Added(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Trickled::NoSession) => no_session(&name, &id),
        Ok(Trickled::EtagMismatch) => status(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "If-Match does not name this ICE session: its ETag is {}",
                etag(&id)
            ),
        ),
        Ok(Trickled::Restart) => status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ICE restart is not supported (trickle ICE is): the session keeps its ICE; \
             to change networks, DELETE it and POST a new offer"
                .into(),
        ),
        Err(_) => error_response(&Error::Shutdown),
    }
}

/// `DELETE /whip/{name}/{session}`: end it (the publish key is checked as for the offer).
async fn end(
    State(r): State<Routes>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(whip) = r.whip else {
        return off();
    };
    if let Err(e) = check_session_key(&r.app, &name, &headers) {
        return error_response(&e);
    }
    let (done, removed) = oneshot::channel();
    let cmd = Command::Remove {
        name: name.clone(),
        id: id.clone(),
        done,
    };
    if whip.commands.send(cmd).await.is_err() {
        return error_response(&Error::Shutdown);
    }
    match removed.await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => no_session(&name, &id),
        Err(_) => error_response(&Error::Shutdown),
    }
}

/// One WebRTC publisher, owned by the driver.
struct Session {
    id: String,
    name: String,
    peer: Option<SocketAddr>,
    rtc: Rtc,
    remux: RtpRemuxer,
    /// To the session's ingest loop; closed when that loop ended.
    tx: mpsc::Sender<Bytes>,
    created: Instant,
    /// ICE and DTLS completed.
    connected: bool,
    /// When the `Rtc` wants time next.
    deadline: Instant,
    last_pli: Option<Instant>,
    /// Longest group before a keyframe is asked for (µs; `u64::MAX`: never
    /// by age). WebRTC encoders (a browser's above all) send a keyframe only
    /// when asked: without this a stream is one endless group, a new viewer
    /// joins far back (or at a picture frozen by a loss it never saw) and an
    /// HLS segment never ends. An encoder with a shorter keyframe interval
    /// of its own (OBS's setting) is never asked.
    keyframe_every_us: u64,
    video_mid: Option<Mid>,
    /// The offer's ICE credentials (a trickle `PATCH` repeats them; new ones are a restart).
    ice_ufrag: Option<String>,
    ice_pwd: Option<String>,
    /// Candidates taken by trickle ICE so far (at most [`MAX_TRICKLED`]).
    trickled: usize,
}

impl Session {
    /// Drain the `Rtc` until it asks for a timeout (transmitting and
    /// handling events on the way); `Err(reason)` ends the session.
    fn drain(&mut self, socket: &UdpSocket) -> Result<(), String> {
        loop {
            let out = self
                .rtc
                .poll_output()
                .map_err(|e| format!("WebRTC error: {e}"))?;
            match out {
                Output::Timeout(t) => {
                    self.deadline = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    // UDP: a full socket buffer drops the datagram, as the network would.
                    let _ = socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => self.event(e)?,
            }
        }
    }

    fn event(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::Connected => {
                self.connected = true;
                tracing::info!(stream = %self.name, peer = ?self.peer, session = %self.id, "WHIP publisher connected (ICE and DTLS done)");
                self.keyframe();
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                return Err("ICE disconnected (the publisher went away)".into());
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Video => {
                // str0m may say Connected before the media: ask for the first keyframe now.
                self.video_mid = Some(m.mid);
                if self.connected {
                    self.keyframe();
                }
            }
            Event::MediaData(d) => {
                let time = |clock: u32| -> i64 {
                    let t = match Frequency::new(clock) {
                        Some(f) if d.time.frequency() != f => d.time.rebase(f),
                        _ => d.time,
                    };
                    i64::try_from(MediaTime::numer(&t)).unwrap_or(i64::MAX)
                };
                let arrival = d.network_time.saturating_duration_since(self.created);
                let arrival = u64::try_from(arrival.as_micros()).unwrap_or(u64::MAX);
                let codec = d.params.spec().codec;
                match codec {
                    RtcCodec::H264 | RtcCodec::Vp9 | RtcCodec::Av1 => {
                        self.video_mid = Some(d.mid);
                        if !d.contiguous {
                            tracing::debug!(stream = %self.name, session = %self.id, "WHIP video loss: waiting for a keyframe");
                            self.remux.lost();
                        }
                        // str0m's frame mode hands out whole pictures (the
                        // packets up to the marker bit): an H.264 access
                        // unit, a VP9 frame or superframe, an AV1 temporal
                        // unit (OBUs with their sizes).
                        let t = time(VIDEO_CLOCK);
                        match codec {
                            RtcCodec::H264 => self.remux.push_h264(t, arrival, &d.data),
                            RtcCodec::Vp9 => {
                                let frame = Bytes::copy_from_slice(&d.data);
                                self.remux.push_vp9(t, arrival, frame)
                            }
                            _ => self.remux.push_av1(t, arrival, &d.data),
                        };
                        if self.remux.wants_keyframe(arrival, self.keyframe_every_us) {
                            self.keyframe();
                        }
                    }
                    RtcCodec::Opus => {
                        let packet = Bytes::copy_from_slice(&d.data);
                        self.remux.push_opus(time(OPUS_CLOCK), arrival, packet);
                    }
                    _ => {}
                }
                self.forward()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Ask the publisher for a keyframe (PLI), at most every [`PLI_EVERY`].
    fn keyframe(&mut self) {
        let now = Instant::now();
        if self
            .last_pli
            .is_some_and(|t| now.duration_since(t) < PLI_EVERY)
        {
            return;
        }
        if let Some(mid) = self.video_mid
            && let Some(mut w) = self.rtc.writer(mid)
        {
            match w.request_keyframe(None, KeyframeRequestKind::Pli) {
                Ok(()) => {
                    tracing::debug!(stream = %self.name, session = %self.id, "WHIP keyframe requested (PLI)");
                    self.last_pli = Some(now);
                }
                Err(e) => {
                    tracing::debug!(stream = %self.name, session = %self.id, error = %e, "WHIP keyframe request failed")
                }
            }
        }
    }

    /// Apply a trickle-ICE `PATCH` (RFC 9725 §4.3.1); `Err(reason)` (from
    /// draining the `Rtc`) ends the session.
    fn trickle(&mut self, patch: SdpFrag, socket: &UdpSocket) -> (Trickled, Result<(), String>) {
        if let Some(tags) = &patch.if_match {
            let mine = etag(&self.id);
            let matches = tags
                .split(',')
                .map(str::trim)
                .any(|t| t == "*" || t == mine);
            if !matches {
                return (Trickled::EtagMismatch, Ok(()));
            }
        }
        let differs = |given: &Option<String>, ours: &Option<String>| {
            given.as_ref().is_some_and(|g| Some(g) != ours.as_ref())
        };
        if differs(&patch.ufrag, &self.ice_ufrag) || differs(&patch.pwd, &self.ice_pwd) {
            return (Trickled::Restart, Ok(()));
        }
        let room = MAX_TRICKLED.saturating_sub(self.trickled);
        let n = patch.candidates.len().min(room);
        let over = patch.candidates.len() - n;
        for c in patch.candidates.into_iter().take(n) {
            self.rtc.add_remote_candidate(c);
        }
        self.trickled += n;
        if over > 0 {
            tracing::debug!(stream = %self.name, session = %self.id, over, "WHIP trickle ICE: over {MAX_TRICKLED} candidates, dropped");
        }
        tracing::debug!(stream = %self.name, session = %self.id, added = n, discarded = patch.discarded, end = patch.end_of_candidates, "WHIP trickle ICE");
        (Trickled::Added(n), self.drain(socket))
    }

    /// Hand the remuxer's output to the ingest loop.
    fn forward(&mut self) -> Result<(), String> {
        while let Some(o) = self.remux.poll() {
            match self.tx.try_send(o.bytes().clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(format!(
                        "the ingest loop is {QUEUE} fragments behind the WebRTC session"
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err("the ingest session ended".into());
                }
            }
        }
        Ok(())
    }

    /// Feed one input and drain. A datagram str0m refuses is dropped (a
    /// broken session shows as not alive, or times out).
    fn input(&mut self, input: Input, socket: &UdpSocket) -> Result<(), String> {
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(stream = %self.name, session = %self.id, error = %e, "WHIP input dropped");
        }
        self.drain(socket)
    }

    /// End the session: the last fragment out, the peer told (DTLS close),
    /// the ingest loop's source closed (it finishes and releases the stream).
    fn close(mut self, socket: &UdpSocket) {
        self.remux.finish();
        let _ = self.forward();
        self.rtc.disconnect();
        let _ = self.drain(socket);
    }
}

/// The one task that owns the WebRTC UDP socket and every session.
struct Driver {
    socket: UdpSocket,
    local: SocketAddr,
    sessions: Vec<Session>,
    handshake_timeout: Duration,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut buf = vec![0u8; 2048];
        loop {
            self.sweep();
            let now = Instant::now();
            let next = self
                .sessions
                .iter()
                .map(|s| s.deadline)
                .min()
                .unwrap_or(now + TICK)
                .min(now + TICK)
                .max(now);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => self.datagram(&buf[..n], source),
                    Err(e) => {
                        // ICMP port unreachable from a gone peer, on some systems: keep serving.
                        tracing::debug!(error = %e, "WHIP UDP receive error");
                    }
                },
                c = commands.recv() => match c {
                    Some(Command::Add(mut s)) => {
                        if let Err(reason) = s.drain(&self.socket) {
                            tracing::warn!(stream = %s.name, session = %s.id, %reason, "WHIP session failed at start");
                            s.close(&self.socket);
                        } else {
                            self.sessions.push(*s);
                        }
                    }
                    Some(Command::Remove { name, id, done }) => {
                        let found = self.sessions.iter().position(|s| s.id == id && s.name == name);
                        if let Some(i) = found {
                            let s = self.sessions.swap_remove(i);
                            tracing::info!(stream = %s.name, session = %s.id, "WHIP session ended by DELETE");
                            s.close(&self.socket);
                        }
                        let _ = done.send(found.is_some());
                    }
                    Some(Command::Trickle { name, id, patch, done }) => {
                        let found = self.sessions.iter().position(|s| s.id == id && s.name == name);
                        let answer = match found {
                            Some(i) => {
                                let (answer, result) = self.sessions[i].trickle(*patch, &self.socket);
                                if let Err(reason) = result {
                                    let s = self.sessions.swap_remove(i);
                                    tracing::warn!(stream = %s.name, peer = ?s.peer, session = %s.id, %reason, "WHIP session ended");
                                    s.close(&self.socket);
                                }
                                answer
                            }
                            None => Trickled::NoSession,
                        };
                        let _ = done.send(answer);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        for s in std::mem::take(&mut self.sessions) {
            s.close(&self.socket);
        }
    }

    /// Give a datagram to the session that accepts it.
    fn datagram(&mut self, data: &[u8], source: SocketAddr) {
        let Ok(contents) = data.try_into() else {
            return; // not STUN, DTLS or (S)RTP: ignore
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        let Some(i) = self.sessions.iter().position(|s| s.rtc.accepts(&input)) else {
            return;
        };
        if let Err(reason) = self.sessions[i].input(input, &self.socket) {
            let s = self.sessions.swap_remove(i);
            tracing::warn!(stream = %s.name, peer = ?s.peer, session = %s.id, %reason, "WHIP session ended");
            s.close(&self.socket);
        }
    }

    /// Timeouts due, handshakes that took too long, ingest loops that ended.
    fn sweep(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.sessions.len() {
            let s = &mut self.sessions[i];
            let mut ended = None;
            if s.tx.is_closed() {
                ended = Some("the ingest session ended".to_string());
            } else if !s.connected && now.duration_since(s.created) >= self.handshake_timeout {
                ended = Some(format!(
                    "ICE/DTLS not completed within {:?}: closed, stream name released",
                    self.handshake_timeout
                ));
            } else if s.deadline <= now
                && let Err(r) = s.input(Input::Timeout(now), &self.socket)
            {
                ended = Some(r);
            } else if !s.rtc.is_alive() {
                ended = Some("the WebRTC session closed".into());
            }
            match ended {
                Some(reason) => {
                    let s = self.sessions.swap_remove(i);
                    tracing::warn!(stream = %s.name, peer = ?s.peer, session = %s.id, %reason, "WHIP session ended");
                    s.close(&self.socket);
                }
                None => i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_in_offers() {
        let both = "v=0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:102 H264/90000\r\n";
        assert_eq!(offered_codecs(both), (Some(Video::H264), true));
        let vp8 = "a=rtpmap:96 VP8/90000\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(offered_codecs(vp8), (None, false));
        assert_eq!(offered_codecs("a=rtpmap:\r\n"), (None, false));
        // A browser's list: VP8, VP9, H.264 (in its order): H.264 wins.
        let browser = "a=rtpmap:96 VP8/90000\r\na=rtpmap:98 VP9/90000\r\n\
            a=rtpmap:102 H264/90000\r\na=rtpmap:45 AV1/90000\r\n";
        assert_eq!(offered_codecs(browser), (Some(Video::H264), false));
        let vp9 = "a=rtpmap:98 VP9/90000\r\na=rtpmap:100 vp9/90000\r\n";
        assert_eq!(offered_codecs(vp9), (Some(Video::Vp9), false));
        let av1_vp9 = "a=rtpmap:45 AV1/90000\r\na=rtpmap:98 VP9/90000\r\n";
        assert_eq!(offered_codecs(av1_vp9), (Some(Video::Vp9), false));
        let av1 = "a=rtpmap:45 AV1/90000\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(offered_codecs(av1), (Some(Video::Av1), true));
    }

    #[test]
    fn trickle_fragments() {
        // RFC 9725 §4.3.1's example, shortened: one UDP host candidate used,
        // a TCP one and an mDNS one left aside.
        let body = "a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
            a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n\
            a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active generation 0\r\n\
            a=candidate:99 1 udp 2122260223 4b1c2d3e-aaaa.local 50000 typ host\r\n\
            a=end-of-candidates\r\n";
        let f = parse_sdpfrag(body).expect("parses");
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.candidates.len(), 1);
        assert_eq!(
            f.candidates[0].addr(),
            "192.0.2.1:61764".parse().expect("addr")
        );
        assert_eq!(f.discarded, 2);
        assert!(f.end_of_candidates);
        assert!(parse_sdpfrag("a=end-of-candidates").is_ok_and(|f| f.candidates.is_empty()));
        assert!(parse_sdpfrag("").is_err(), "empty");
        assert!(parse_sdpfrag("hello").is_err(), "not SDP");
        let other_lines = "v=0\r\na=ice-options:trickle\r\na=end-of-candidates\r\n";
        assert!(
            parse_sdpfrag(other_lines).is_ok(),
            "other SDP lines are skipped"
        );
        assert!(
            parse_sdpfrag("a=candidate:1 1 udp").is_err(),
            "short candidate"
        );
        let bad_port = "a=candidate:1 1 udp 5 192.0.2.1 notaport typ host";
        assert!(parse_sdpfrag(bad_port).is_err(), "{bad_port}");
        assert_eq!(
            ice_creds("v=0\r\na=ice-ufrag:ab\r\na=ice-pwd:cd\r\n"),
            (Some("ab".into()), Some("cd".into()))
        );
    }
}
