//! Socket.IO viewers at `/socket.io/` (socketioxide), for apps that already
//! speak it: emit `watch` with `{name, after}`; receive `hello`, `init`
//! (JSON meta, binary), `fragment` (JSON meta, binary), `skip`, `publisher`
//! and `end`. Works over the websocket and the polling transports.
//!
//! socketioxide queues packets per socket and refuses more when the queue is
//! full; the viewer then simply stops reading its cursor until there is
//! room, so a slow Socket.IO viewer falls behind the ring and gets the same
//! lag policy (skip to a keyframe, then disconnect) as any other. The queue
//! is kept short (`BUFFER` packets, one per fragment) so that this happens
//! about as soon as for a WebSocket viewer, and so that a stalled client pins
//! a few fragments in memory, not minutes of them.
//!
//! What a client may send is capped apart from what the relay sends
//! (fragments of several MB): a viewer only ever emits `watch`, so polling
//! POST bodies and WebSocket messages are limited to [`MAX_CLIENT_BYTES`],
//! and a POST body must arrive whole within [`CLIENT_BODY_DEADLINE`]
//! ([`limit_clients`], in front of the Socket.IO layer; socketioxide's
//! own `max_payload` bounds both directions of polling, so it stays large).
//!
//! Sessions are bounded too: an Engine.IO session outlives its connections
//! (a polling client's lives until its ping timeout), so a client that
//! handshakes in a loop would hold thousands while its connections come and
//! go. A handshake takes a [`crate::limits::SessionGuard`]
//! (`max_sessions_per_ip`, and `max_viewers` sessions relay-wide; 429 / 503
//! otherwise), which rides in the request's extensions: engineioxide keeps
//! the handshake's request parts in the session, so the guard is released
//! when the session is dropped.
//!
//! Engine.IO heartbeat (protocol v4): the relay sends the first PING one
//! `pingInterval` after the handshake, then one per interval, and drops a
//! client that does not answer within `pingTimeout` ([`Heartbeat`]). The
//! vendored `engineioxide` (see `vendor/engineioxide/RELAYCAST.md`) fixes
//! its release's first PING, which went out at once, so that a client that
//! stopped answering was dropped after `pingTimeout` instead of
//! `pingInterval + pingTimeout`.

use super::Transport;
use crate::app::AppState;
use crate::fanout::{EndReason, Event, Viewer, ViewerStart};
use crate::proto::control::Control;
use bytes::Bytes;
use serde::Deserialize;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::{SendError, SocketError, SocketIo};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Packets queued per socket before emits are refused (socketioxide's
/// default is 128). One fragment is one packet, binary attachment included:
/// 32 is a few seconds of a typical stream, enough to ride over a polling
/// round trip, and a bound on what a stalled client holds.
const BUFFER: usize = 32;
/// Largest polling payload (socketioxide's default, 100 KB, is less than one
/// 1 s fragment). socketioxide applies it to both directions; what a client
/// may send is capped much lower by [`MAX_CLIENT_BYTES`].
const MAX_PAYLOAD: u64 = 64 << 20;
/// Most bytes a client may send in one polling POST body or one WebSocket
/// message (a viewer's `watch` is a few hundred bytes).
pub const MAX_CLIENT_BYTES: usize = 64 << 10;
/// Time a polling POST body has to arrive whole.
pub const CLIENT_BODY_DEADLINE: Duration = Duration::from_secs(10);
/// The path socketioxide serves (its default).
const PATH: &str = "/socket.io";

/// Engine.IO heartbeat timings (advertised in the handshake as
/// `pingInterval` and `pingTimeout`).
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    /// Time between the relay's PINGs (the first one too).
    pub ping_interval: Duration,
    /// Time a client has to answer a PING with a PONG.
    pub ping_timeout: Duration,
}

impl Default for Heartbeat {
    /// The Engine.IO reference values: 25 s and 20 s.
    fn default() -> Self {
        Heartbeat {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

/// Middleware in front of the Socket.IO layer. A handshake (a request
/// without `sid`) takes a session guard from [`crate::limits::Limits::session`]
/// (refused with 429 / 503 otherwise). A polling POST to `/socket.io/` may
/// carry at most [`MAX_CLIENT_BYTES`] (413 otherwise, at once when
/// `Content-Length` says so) and must arrive whole within
/// [`CLIENT_BODY_DEADLINE`] (408); it is read here, into at most that many
/// bytes, before socketioxide sees it. Other paths pass untouched.
pub async fn limit_clients(
    axum::extract::State(app): axum::extract::State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use crate::Error;
    use crate::app::error_response;
    use axum::body::Body;
    use http_body_util::BodyExt;
    let path = req.uri().path();
    if !(path == PATH || path.starts_with("/socket.io/")) {
        return next.run(req).await;
    }
    let handshake = !req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv.starts_with("sid="));
    if handshake {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(ip) = peer {
            match app.limits.session(ip) {
                Ok(guard) => {
                    req.extensions_mut().insert(std::sync::Arc::new(guard));
                }
                Err(e) => {
                    tracing::debug!(%ip, error = %e, "Socket.IO handshake refused");
                    return error_response(&e);
                }
            }
        }
    }
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let too_big = || {
        let mut r = error_response(&Error::BadRequest(format!(
            "a Socket.IO request body may carry at most {MAX_CLIENT_BYTES} bytes"
        )));
        *r.status_mut() = axum::http::StatusCode::PAYLOAD_TOO_LARGE;
        r
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_CLIENT_BYTES as u64) {
        return with_close(too_big());
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_CLIENT_BYTES);
    let body = match tokio::time::timeout(CLIENT_BODY_DEADLINE, limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return with_close(too_big()),
        Ok(Err(e)) => {
            return error_response(&Error::BadRequest(format!("Socket.IO body: {e}")));
        }
        Err(_) => {
            let mut r = error_response(&Error::BadRequest(format!(
                "Socket.IO body not in within {CLIENT_BODY_DEADLINE:?}"
            )));
            *r.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
            return with_close(r);
        }
    };
    next.run(axum::extract::Request::from_parts(parts, Body::from(body)))
        .await
}

/// Ask hyper to close the connection after this answer (the rest of a
/// refused body is not read).
fn with_close(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

#[derive(Debug, Deserialize)]
struct WatchReq {
    name: String,
    after: Option<u64>,
    epoch: Option<u64>,
    wait: Option<f64>,
    /// Signed URL expiry, as on the HTTP watch paths.
    exp: Option<u64>,
    /// Signed URL signature.
    sig: Option<String>,
}

/// Build the Socket.IO layer and register the viewer namespace.
pub fn layer(app: AppState) -> socketioxide::layer::SocketIoLayer {
    layer_with(app, Heartbeat::default())
}

/// [`layer`] with other heartbeat timings (tests use short ones).
pub fn layer_with(app: AppState, heartbeat: Heartbeat) -> socketioxide::layer::SocketIoLayer {
    let parser = socketioxide::ParserConfig::common()
        .max_incoming_binary_buf_size(MAX_CLIENT_BYTES)
        .max_incoming_binaries(1);
    let (layer, io) = SocketIo::builder()
        .req_path(PATH)
        .ping_interval(heartbeat.ping_interval)
        .ping_timeout(heartbeat.ping_timeout)
        .max_payload(MAX_PAYLOAD)
        .ws_max_message_size(MAX_CLIENT_BYTES)
        .ws_max_frame_size(MAX_CLIENT_BYTES)
        .max_buffer_size(BUFFER)
        .with_parser(parser.packet_completion_timeout(CLIENT_BODY_DEADLINE))
        .build_layer();
    io.ns("/", move |socket: SocketRef| {
        let app = app.clone();
        async move {
            let current = std::sync::Arc::new(parking_lot::Mutex::new(CancellationToken::new()));
            let on_close = current.clone();
            socket.on_disconnect(move || {
                let t = on_close.lock().clone();
                async move { t.cancel() }
            });
            socket.on(
                "watch",
                move |socket: SocketRef, TryData(req): TryData<WatchReq>| {
                    let app = app.clone();
                    let current = current.clone();
                    async move {
                        let req = match req {
                            Ok(r) => r,
                            Err(e) => {
                                let _ = socket.emit(
                                    "error",
                                    &serde_json::json!({"error": format!("watch: {e}; expected {{name, after}}")}),
                                );
                                return;
                            }
                        };
                        // A new `watch` replaces the previous one on this socket.
                        let token = CancellationToken::new();
                        std::mem::replace(&mut *current.lock(), token.clone()).cancel();
                        tokio::spawn(watch(socket, req, app, token));
                    }
                },
            );
        }
    });
    layer
}

async fn watch(socket: SocketRef, req: WatchReq, app: AppState, token: CancellationToken) {
    let start = ViewerStart {
        after: super::resume_after(req.after, req.epoch, &app.registry, &req.name),
        transport: Transport::SocketIo,
    };
    let peer = socket
        .req_parts()
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let q = super::WatchQuery {
        exp: req.exp,
        sig: req.sig.clone(),
        ..Default::default()
    };
    let viewer = match super::admit(&app, &req.name, &q, start, app.wait_for(req.wait), peer).await
    {
        Ok(v) => v,
        Err(e) => {
            let _ = socket.emit(
                "end",
                &Control::End {
                    reason: e.to_string(),
                    status: Some(e.http_status()),
                    code: None,
                    groups: None,
                },
            );
            return;
        }
    };
    if socket.emit("hello", &super::hello(&viewer)).is_err() {
        return;
    }
    run(socket, viewer, app, token).await;
}

async fn run(socket: SocketRef, mut viewer: Viewer, app: AppState, token: CancellationToken) {
    loop {
        let ev = tokio::select! {
            ev = viewer.next() => ev,
            _ = token.cancelled() => return,
            _ = app.shutdown.cancelled() => Event::End(EndReason::Shutdown),
        };
        let end = matches!(ev, Event::End(_));
        // Wait for room in the socket's queue; meanwhile the cursor stands
        // still and the lag policy applies.
        loop {
            match emit(&socket, &ev) {
                Ok(()) => {
                    // Queued on the socket (socketioxide writes it out).
                    if let Event::Fragment(c) = &ev {
                        viewer.wrote(c.arrived, std::time::Instant::now());
                    }
                    break;
                }
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        _ = token.cancelled() => return,
                    }
                }
                Err(_) => return,
            }
        }
        if end {
            // Let the queue drain, then close.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = socket.clone().disconnect();
            return;
        }
    }
}

fn emit(socket: &SocketRef, ev: &Event) -> Result<(), SendError> {
    match ev {
        Event::Init(i) => socket.emit(
            "init",
            &(
                Control::Init {
                    version: i.version,
                    mime: i.init.mime.clone(),
                    codecs: i.init.codecs.clone(),
                    size: i.init.bytes.len(),
                },
                Bytes::clone(&i.init.bytes),
            ),
        ),
        Event::Fragment(c) => socket.emit(
            "fragment",
            &(
                Control::Fragment {
                    seq: c.seq,
                    key: c.keyframe,
                    t: c.t_ms,
                    size: c.bytes.len(),
                    dts: None,
                },
                Bytes::clone(&c.bytes),
            ),
        ),
        Event::Skip { from, to, total } => socket.emit("skip", &Control::skip(*from, *to, *total)),
        Event::Publisher(live) => socket.emit("publisher", &Control::publisher(*live)),
        Event::End(r) => socket.emit("end", &Control::end(r.message())),
    }
}
