//! `egress`: viewer transports. Each one is a thin adapter that starts from
//! "a cursor on a stream" ([`Viewer`](crate::fanout::Viewer)) and writes its
//! events in the transport's framing:
//!
//! - [`websocket`]: binary messages = the stored bytes, text = JSON control;
//! - [`http_stream`]: one never-ending `video/mp4` response;
//! - [`poll`]: long polling and plain polling, one request per batch;
//! - [`socketio`]: Socket.IO events for apps that speak it;
//! - [`quic`]: `relaycast/1` over QUIC, one stream per group.

pub mod http_stream;
pub mod poll;
pub mod quic;
pub mod socketio;
pub mod websocket;

use crate::Error;
use crate::fanout::{Event, Registry, Viewer, ViewerStart};
use crate::server::AppState;
use bytes::Bytes;
use serde::Deserialize;
use std::net::SocketAddr;

/// Admission of a viewer, the one check every watch path (WebSocket, HTTP
/// stream, poll, init, info, Socket.IO, QUIC) makes first: a valid name
/// (400), the signed URL when the stream needs one (403), and the `on_play`
/// callback (403). Refusals are counted by reason.
pub async fn authorize(
    app: &AppState,
    name: &str,
    exp: Option<u64>,
    sig: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<(), Error> {
    if !crate::fanout::valid_name(name) {
        return Err(Error::BadName(name.to_string()));
    }
    let refused = &app.limits.refused;
    app.auth.check_signature(refused, name, exp, sig)?;
    app.auth
        .callback(refused, crate::auth::Action::Play, name, peer, None)
        .await
}

/// [`authorize`], then subscribe (waiting up to `wait` for the stream) and
/// hold the viewer to the viewer limits (503 / close 1013 when full).
pub async fn admit(
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

/// The viewer transports, for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Transport {
    /// WebSocket `/live/{name}`.
    WebSocket = 0,
    /// HTTP streaming `/live/{name}.mp4`.
    HttpStream = 1,
    /// Long polling.
    LongPoll = 2,
    /// Plain polling (`wait=0`).
    Poll = 3,
    /// Socket.IO.
    SocketIo = 4,
    /// QUIC.
    Quic = 5,
    /// An edge relay pulling the stream (cascade).
    Edge = 6,
}

impl Transport {
    /// Number of transports.
    pub const COUNT: usize = 7;
    /// Every transport.
    pub const ALL: [Transport; Self::COUNT] = [
        Transport::WebSocket,
        Transport::HttpStream,
        Transport::LongPoll,
        Transport::Poll,
        Transport::SocketIo,
        Transport::Quic,
        Transport::Edge,
    ];

    /// Label used in JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::HttpStream => "stream",
            Transport::LongPoll => "longpoll",
            Transport::Poll => "poll",
            Transport::SocketIo => "socketio",
            Transport::Quic => "quic",
            Transport::Edge => "edge",
        }
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
    /// HTTP stream: carry control messages in `free` boxes.
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

/// JSON control messages (shared by WebSocket, Socket.IO and `meta=1`).
pub fn hello_json(stream: &str, epoch: u64, live: bool, resumed: bool, next_seq: u64) -> String {
    format!(
        r#"{{"type":"hello","stream":"{stream}","epoch":{epoch},"live":{live},"resumed":{resumed},"next_seq":{next_seq},"server_time":{}}}"#,
        crate::fanout::unix_ms()
    )
}

/// `{"type":"skip",…}`.
pub fn skip_json(from: u64, to: u64, total: u64) -> String {
    format!(
        r#"{{"type":"skip","from":{from},"to":{to},"skipped":{},"skips":{total}}}"#,
        to.saturating_sub(from)
    )
}

/// `{"type":"publisher",…}`.
pub fn publisher_json(live: bool) -> &'static str {
    if live {
        r#"{"type":"publisher","state":"back"}"#
    } else {
        r#"{"type":"publisher","state":"gone"}"#
    }
}

/// `{"type":"end",…}`.
pub fn end_json(reason: &str) -> String {
    serde_json::json!({"type": "end", "reason": reason}).to_string()
}

/// One event as (control JSON, optional binary payload): the shape every
/// message-based transport sends.
pub fn event_parts(ev: &Event) -> (Bytes, Option<Bytes>) {
    match ev {
        Event::Init(i) => (i.meta.clone(), Some(i.init.bytes.clone())),
        Event::Fragment(c) => (c.meta.clone(), Some(c.bytes.clone())),
        Event::Skip { from, to, total } => (Bytes::from(skip_json(*from, *to, *total)), None),
        Event::Publisher(live) => (Bytes::from_static(publisher_json(*live).as_bytes()), None),
        Event::End(r) => (Bytes::from(end_json(r.message())), None),
    }
}

/// A top-level `free` box carrying `relaycast` + a JSON control message:
/// in-band metadata that MP4 readers skip.
pub fn meta_box(json: &[u8]) -> Bytes {
    let size = 8 + 9 + json.len();
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&(size as u32).to_be_bytes());
    v.extend_from_slice(b"free");
    v.extend_from_slice(b"relaycast");
    v.extend_from_slice(json);
    Bytes::from(v)
}

/// The init and fragment payload of an event, if it has one.
pub fn payload(ev: &Event) -> Option<&Bytes> {
    match ev {
        Event::Init(i) => Some(&i.init.bytes),
        Event::Fragment(c) => Some(&c.bytes),
        _ => None,
    }
}
