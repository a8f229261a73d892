//! `egress`: viewer transports. Each one is a thin adapter that starts from
//! "a cursor on a stream" ([`Viewer`](crate::fanout::Viewer)) and writes its
//! events in the transport's framing:
//!
//! - [`websocket`]: binary messages = the stored bytes, text = JSON control;
//! - [`http_stream`]: one never-ending `video/mp4` response;
//! - [`poll`]: long polling and plain polling, one request per batch;
//! - [`socketio`]: Socket.IO events for apps that speak it;
//! - [`quic`]: `relaycast/1` over QUIC, one stream per group;
//! - [`hls`]: LL-HLS, HLS and DASH manifests and the files they name,
//!   answered from the ring (a request per part or segment, cacheable).

pub mod hls;
pub mod http_stream;
pub mod poll;
pub mod quic;
pub mod socketio;
pub mod websocket;

use crate::Error;
use crate::app::AppState;
pub use crate::fanout::Transport;
use crate::fanout::{Event, Registry, StreamName, Viewer, ViewerStart};
use crate::proto::control::Control;
use bytes::Bytes;
use serde::Deserialize;
use std::net::SocketAddr;

/// Admission of a viewer, the one check every watch path (WebSocket, HTTP
/// stream, poll, init, info, Socket.IO, QUIC, HLS/DASH) makes first: a valid name
/// (400), the signed URL when the stream needs one (403), and the `on_play`
/// callback (403). Refusals are counted by reason.
pub async fn authorize(
    app: &AppState,
    name: &str,
    exp: Option<u64>,
    sig: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<(), Error> {
    let name = &*StreamName::parse(name)?;
    let refused = &app.limits.refused;
    app.auth.check_signature(refused, name, exp, sig)?;
    app.auth
        .callback(refused, crate::auth::Action::Play, name, peer, None)
        .await
}

/// [`authorize`], then subscribe (waiting up to `wait` for the stream) and
/// hold the viewer to the viewer limits (503 / close 1013 when full).
///
/// Boxed: admission is the largest state of a viewer session (4.5 KB with
/// the key callback over HTTP, `-Zprint-type-sizes`) and lives only until
/// the viewer is in; awaited inline it would stay part of every long-lived
/// session's state (#15).
pub fn admit<'a>(
    app: &'a AppState,
    name: &'a str,
    q: &'a WatchQuery,
    start: ViewerStart,
    wait: std::time::Duration,
    peer: Option<SocketAddr>,
) -> futures_util::future::BoxFuture<'a, Result<Viewer, Error>> {
    Box::pin(admit_now(app, name, q, start, wait, peer))
}

async fn admit_now(
    app: &AppState,
    name: &str,
    q: &WatchQuery,
    start: ViewerStart,
    wait: std::time::Duration,
    peer: Option<SocketAddr>,
) -> Result<Viewer, Error> {
    authorize(app, name, q.exp, q.sig.as_deref(), peer).await?;
    let viewer = tokio::select! {
        v = app.registry.subscribe(name, start, wait) => v?,
        _ = app.shutdown.cancelled() => return Err(Error::Shutdown),
    };
    app.limits.check_viewer(&app.registry, viewer.stream())?;
    Ok(viewer)
}

/// Logs the end of one viewer session, once, when dropped: whichever way
/// it ends (the stream ended, the viewer left or lagged, an error, the
/// relay shutting down), with the session's span (stream, peer, transport)
/// and how long it lasted. A transport keeps one for as long as its viewer
/// is served.
#[derive(Debug)]
pub struct EndLog {
    span: tracing::Span,
    started: std::time::Instant,
}

impl EndLog {
    /// For the viewer session of the current span.
    pub fn new() -> EndLog {
        EndLog::in_span(tracing::Span::current())
    }

    /// For a viewer session logged under `span`.
    pub fn in_span(span: tracing::Span) -> EndLog {
        EndLog {
            span,
            started: std::time::Instant::now(),
        }
    }
}

impl Default for EndLog {
    fn default() -> Self {
        EndLog::new()
    }
}

impl Drop for EndLog {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(parent: &self.span, duration_s = format!("{secs:.1}"), "viewer ended");
    }
}

/// Query parameters shared by every watch path.
#[derive(Debug, Default, Deserialize)]
pub struct WatchQuery {
    /// Resume after this seq.
    pub after: Option<u64>,
    /// The epoch (life of the stream) that `after` belongs to; see [`WatchQuery::resume_after`].
    pub epoch: Option<u64>,
    /// Seconds to wait for a stream that has not started.
    pub wait: Option<f64>,
    /// Long poll: seconds to wait for the next fragment.
    pub timeout: Option<f64>,
    /// Per-fragment control: HTTP stream `meta=1` carries control messages
    /// in `free` boxes (default off); WebSocket `meta=0` leaves out the
    /// `fragment` JSON message before each fragment (default on).
    pub meta: Option<u8>,
    /// Signed URL expiry (Unix seconds).
    pub exp: Option<u64>,
    /// Signed URL signature.
    pub sig: Option<String>,
}

impl WatchQuery {
    /// The `after` to honour. A seq belongs to one life of a stream (its
    /// epoch): when the client says which epoch its `after` came from and the
    /// stream now has another (the relay restarted, the stream was
    /// recreated), the seq means nothing here, and the viewer starts afresh
    /// at the newest keyframe (`resumed: false`) rather than mid-group.
    pub fn resume_after(&self, registry: &Registry, name: &str) -> Option<u64> {
        resume_after(self.after, self.epoch, registry, name)
    }
}

/// [`WatchQuery::resume_after`] for transports with their own request shape.
pub fn resume_after(
    after: Option<u64>,
    epoch: Option<u64>,
    registry: &Registry,
    name: &str,
) -> Option<u64> {
    let after = after?;
    match epoch {
        Some(e) if registry.get(name).map(|s| s.epoch()) != Some(e) => None,
        _ => Some(after),
    }
}

/// The `hello` that opens `viewer`'s session.
pub fn hello(viewer: &Viewer) -> Control {
    let stream = viewer.stream();
    Control::Hello {
        stream: stream.name().to_string(),
        epoch: stream.epoch(),
        live: stream.is_live(),
        resumed: viewer.resumed(),
        next_seq: viewer.cursor(),
        server_time: crate::fanout::unix_ms(),
    }
}

/// The control message of an event without a stored one (skip, publisher,
/// end); init and fragment events carry theirs, built once per stream.
pub fn control(ev: &Event) -> Option<Control> {
    match ev {
        Event::Skip { from, to, total } => Some(Control::skip(*from, *to, *total)),
        Event::Publisher(live) => Some(Control::publisher(*live)),
        // With the `relaycast/1` code of the reason, so that a client can
        // tell "the stream is over" (9) from "come back" (8 lagging, 10
        // shutting down) without reading the text.
        Event::End(r) => Some(Control::End {
            reason: r.message().into(),
            status: None,
            code: Some(quic::end_code(*r)),
            groups: None,
        }),
        Event::Init(_) | Event::Fragment(_) => None,
    }
}

/// One event as (control JSON, optional binary payload): the shape every
/// message-based transport sends.
pub fn event_parts(ev: &Event) -> (Bytes, Option<Bytes>) {
    match ev {
        Event::Init(i) => (i.meta.clone(), Some(i.init.bytes.clone())),
        Event::Fragment(c) => (c.meta.clone(), Some(c.bytes.clone())),
        ev => (control(ev).map(|c| c.to_bytes()).unwrap_or_default(), None),
    }
}

/// A top-level `free` box carrying `relaycast` + a JSON control message:
/// in-band metadata that MP4 readers skip.
pub fn meta_box(json: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(META_BOX_HEADER + json.len());
    v.extend_from_slice(&meta_box_header(json.len()));
    v.extend_from_slice(json);
    Bytes::from(v)
}

/// Bytes of a [`meta_box`] before its JSON.
pub const META_BOX_HEADER: usize = 8 + 9;

/// The start of a [`meta_box`] for `json_len` bytes of JSON: its size, type
/// and tag (written next to shared JSON, the JSON is not copied).
pub fn meta_box_header(json_len: usize) -> [u8; META_BOX_HEADER] {
    let mut h = [0u8; META_BOX_HEADER];
    let size = u32::try_from(META_BOX_HEADER + json_len).unwrap_or(u32::MAX);
    h[..4].copy_from_slice(&size.to_be_bytes());
    h[4..8].copy_from_slice(b"free");
    h[8..].copy_from_slice(b"relaycast");
    h
}

/// The init and fragment payload of an event, if it has one.
pub fn payload(ev: &Event) -> Option<&Bytes> {
    match ev {
        Event::Init(i) => Some(&i.init.bytes),
        Event::Fragment(c) => Some(&c.bytes),
        _ => None,
    }
}

/// A response body that is the concatenation of stored chunks, sent as they
/// are (shared `Bytes`, no copy), with its exact length known up front (so
/// it goes out with `Content-Length`, not chunked).
pub fn chunks_body(chunks: Vec<Bytes>) -> axum::body::Body {
    axum::body::Body::new(ChunksBody {
        left: chunks.iter().map(|c| c.len() as u64).sum(),
        chunks: chunks.into(),
    })
}

struct ChunksBody {
    chunks: std::collections::VecDeque<Bytes>,
    left: u64,
}

impl http_body::Body for ChunksBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(c) = &next {
            self.left -= c.len() as u64;
        }
        std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}
