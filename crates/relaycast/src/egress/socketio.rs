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
/// Largest polling payload (socketioxide's default, 100 KB, is less than one 1 s fragment).
const MAX_PAYLOAD: u64 = 64 << 20;

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
    let (layer, io) = SocketIo::builder()
        .max_payload(MAX_PAYLOAD)
        .max_buffer_size(BUFFER)
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
    let stream = viewer.stream().clone();
    let hello = super::hello(
        stream.name(),
        stream.epoch(),
        stream.is_live(),
        viewer.resumed(),
        viewer.cursor(),
    );
    if socket.emit("hello", &hello).is_err() {
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
