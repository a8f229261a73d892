//! WebSocket viewers: `GET /live/{name}` with `Upgrade: websocket`.
//!
//! Binary messages are exactly the stored init and fragment bytes; text
//! messages are JSON control (see `docs/protocol.md`). Events that are ready
//! together are fed as one batch and flushed once.

use super::{Transport, WatchQuery, event_parts, hello_json};
use crate::fanout::{EndReason, Event, Viewer, ViewerStart};
use crate::server::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tracing::Instrument;

/// Most events written before a flush.
const BATCH: usize = 64;

/// Upgrade and serve one viewer.
pub async fn serve(
    app: AppState,
    name: String,
    q: WatchQuery,
    peer: Option<std::net::SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let wait = app.wait_for(q.wait);
    let cfg = &app.config.egress;
    let ws = ws
        .read_buffer_size(cfg.ws_read_buffer)
        .write_buffer_size(cfg.ws_write_buffer)
        .max_message_size(64 << 10);
    // The upgraded connection runs in a task of its own: carry the session span.
    let span = tracing::Span::current();
    ws.on_upgrade(move |mut socket| {
        async move {
            let start = ViewerStart {
                after: q.resume_after(&app.registry, &name),
                transport: Transport::WebSocket,
            };
            let viewer = super::admit(&app, &name, &q, start, wait, peer).await;
            match viewer {
                Ok(viewer) => run(socket, viewer, app).await,
                Err(e) => {
                    let _ = socket.send(close(e.ws_close_code(), &e.to_string())).await;
                }
            }
        }
        .instrument(span)
    })
}

fn close(code: u16, reason: &str) -> Message {
    // Close reasons are limited to 123 bytes.
    let mut reason = reason.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

fn text(json: bytes::Bytes) -> Message {
    match Utf8Bytes::try_from(json) {
        Ok(t) => Message::Text(t),
        Err(_) => Message::Text(Utf8Bytes::from_static("{}")),
    }
}

async fn run(socket: WebSocket, mut viewer: Viewer, app: AppState) {
    let (mut tx, mut rx) = socket.split();
    let stream = viewer.stream().clone();
    let hello = hello_json(
        stream.name(),
        stream.epoch(),
        stream.is_live(),
        viewer.resumed(),
        viewer.cursor(),
    );
    if tx.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    let end = loop {
        let ev = tokio::select! {
            ev = viewer.next() => ev,
            msg = rx.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
            _ = app.shutdown.cancelled() => break EndReason::Shutdown,
        };
        let mut batch = vec![ev];
        while batch.len() < BATCH {
            match viewer.try_next() {
                Some(ev) => batch.push(ev),
                None => break,
            }
        }
        let mut end = None;
        let write = async {
            for ev in &batch {
                if let Event::End(r) = ev {
                    end = Some(*r);
                    break;
                }
                let (meta, payload) = event_parts(ev);
                tx.feed(text(meta)).await?;
                if let Some(p) = payload {
                    tx.feed(Message::Binary(p)).await?;
                }
            }
            tx.flush().await
        };
        let ok = tokio::select! {
            r = write => r.is_ok(),
            _ = app.shutdown.cancelled() => break EndReason::Shutdown,
        };
        if !ok {
            return;
        }
        viewer.wrote_events(&batch);
        if let Some(r) = end {
            break r;
        }
    };
    if end == EndReason::Lagging {
        tracing::info!(skips = viewer.total_skips(), "viewer disconnected: lagging");
    }
    let (meta, _) = event_parts(&Event::End(end));
    let code = match end {
        EndReason::PublisherGone => 1000,
        EndReason::Lagging => 4008,
        EndReason::Shutdown => 1001,
    };
    let bye = async {
        tx.send(text(meta)).await?;
        tx.send(close(code, end.message())).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
}
