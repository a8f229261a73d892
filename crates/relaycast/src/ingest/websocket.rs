//! WebSocket ingest: `GET /publish/{name}` upgraded; binary messages are
//! consecutive bytes of the fMP4 stream, split anywhere. Errors close the
//! socket with a code and a reason: 1008 bad key or name, 1009 too big,
//! 1003 text instead of binary, 1007 not fMP4, 4009 name already live.

use super::{IngestSession, admit, key_from};
use crate::Error;
use crate::app::{AppState, error_response};
use crate::limits::Reason;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use std::net::SocketAddr;
use tracing::Instrument;

/// Upgrade and serve one publisher.
pub async fn serve(
    app: AppState,
    name: String,
    key: Option<String>,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let cfg = app.config.ingest.clone();
    let max = cfg.max_ws_message;
    // Refuse before upgrading when we can: a clear HTTP status beats a close code.
    if !crate::fanout::valid_name(&name) {
        return error_response(&Error::BadName(name));
    }
    // Admission (key, limits, callback) happens before the upgrade is
    // answered; a refusal is told as a close code (1008, 1013) on the
    // upgraded socket, which every WebSocket client can read.
    let key = key_from(key.as_deref(), &headers);
    let admitted = admit(&app, &name, key.as_deref(), peer).await;
    // The upgraded connection runs in a task of its own: carry the session span.
    let span = tracing::Span::current();
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            async move {
                let r = match admitted {
                    Ok(session) => run(socket, app, name.clone(), cfg, session).await,
                    Err(e) => refuse(socket, e).await,
                };
                if let Err(e) = r {
                    tracing::warn!(stream = %name, error = %e, "WebSocket publisher failed");
                }
            }
            .instrument(span)
        })
}

/// The size in tungstenite's "Message too long: SIZE > MAX" (the frame or
/// message that went over the limit), when the text carries it.
fn oversize(text: &str) -> Option<usize> {
    let (_, rest) = text.split_once("too long: ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn refuse(mut socket: WebSocket, e: Error) -> Result<(), Error> {
    let _ = socket.send(close(&e)).await;
    Err(e)
}

fn close(e: &Error) -> Message {
    let mut reason = e.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code: e.ws_close_code(),
        reason: Utf8Bytes::from(reason),
    }))
}

async fn run(
    mut socket: WebSocket,
    app: AppState,
    name: String,
    cfg: crate::config::IngestConfig,
    mut session: IngestSession,
) -> Result<(), Error> {
    tracing::info!(stream = %name, "WebSocket publisher connected");
    let result = loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(cfg.idle_timeout, socket.recv()) => m,
            _ = app.shutdown.cancelled() => break Err(Error::Shutdown),
        };
        match msg {
            Err(_) => {
                break Err(app.limits.refused.refuse(
                    Reason::PublisherIdle,
                    format!("no data for {:?}", cfg.idle_timeout),
                ));
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break session.finish(),
            Ok(Some(Err(e))) => {
                let text = e.to_string();
                if text.contains("too long") || text.contains("too big") {
                    let e = Error::MessageTooBig {
                        size: oversize(&text).unwrap_or(0),
                        limit: cfg.max_ws_message,
                    };
                    app.limits.refused.note_ingest_error(&e);
                    break Err(e);
                }
                break Err(Error::BadRequest(format!("websocket: {text}")));
            }
            Ok(Some(Ok(Message::Binary(data)))) => {
                if let Err(e) = session.push(data) {
                    break Err(e);
                }
            }
            Ok(Some(Ok(Message::Text(_)))) => {
                break Err(Error::BadRequest(
                    "text message: send the fMP4 stream as binary messages".into(),
                ));
            }
            Ok(Some(Ok(_))) => {}
        }
    };
    let summary = session.summary(result.as_ref().err());
    drop(session);
    let json = serde_json::to_string(&summary).unwrap_or_default();
    let _ = socket.send(Message::Text(json.into())).await;
    match &result {
        Ok(()) => {
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: Utf8Bytes::from_static("publish finished"),
                })))
                .await;
        }
        Err(e) => {
            let mut frame = close(e);
            if let (Error::BadRequest(m), Message::Close(Some(f))) = (e, &mut frame)
                && m.starts_with("text message")
            {
                f.code = 1003;
            }
            let _ = socket.send(frame).await;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn oversize_reads_the_size_from_tungstenite_errors() {
        assert_eq!(
            super::oversize("Space limit exceeded: Message too long: 102400 > 65536"),
            Some(102400)
        );
        assert_eq!(super::oversize("connection reset"), None);
    }
}
