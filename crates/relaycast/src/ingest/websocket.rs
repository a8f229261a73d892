//! WebSocket ingest: `GET /publish/{name}` upgraded; binary messages are
//! consecutive bytes of the fMP4 stream, split anywhere. Errors close the
//! socket with a code and a reason: 1008 bad key or name, 1009 too big,
//! 1003 text instead of binary, 1007 not fMP4, 4009 name already live.

use super::{IngestSession, admit, key_from};
use crate::Error;
use crate::app::{AppState, error_response};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::StreamExt;
use std::future::ready;
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
    if let Err(e) = crate::fanout::StreamName::parse(&name) {
        return error_response(&e);
    }
    // Admission (key, limits, callback) happens before the upgrade is
    // answered; a refusal is told as a close code (1008, 1013) on the
    // upgraded socket, which every WebSocket client can read.
    let key = key_from(key.as_deref(), &headers);
    let admitted = admit(
        &app,
        crate::fanout::Ingest::WebSocket,
        &name,
        key.as_deref(),
        peer,
    )
    .await;
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

/// A WebSocket read error, classified by its type: a message or frame over
/// the limit is [`Error::MessageTooBig`] (counted), anything else a bad
/// request.
fn ws_error(e: axum::Error, limit: usize, refused: &crate::limits::Refused) -> Error {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::CapacityError;
    let text = e.to_string();
    match e.into_inner().downcast::<WsError>().map(|b| *b) {
        Ok(WsError::Capacity(CapacityError::MessageTooLong { size, .. })) => {
            let e = Error::MessageTooBig { size, limit };
            refused.note_ingest_error(&e);
            e
        }
        _ => Error::BadRequest(format!("websocket: {text}")),
    }
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
    let result = {
        let limit = cfg.max_ws_message;
        let refused = app.limits.refused.clone();
        let mut source = (&mut socket)
            .take_while(|m| ready(!matches!(m, Ok(Message::Close(_)))))
            .filter_map(move |m| {
                ready(match m {
                    Ok(Message::Binary(data)) => Some(Ok(data)),
                    Ok(Message::Text(_)) => Some(Err(Error::WrongMessageType(
                        "text message: send the fMP4 stream as binary messages".into(),
                    ))),
                    Ok(_) => None, // ping, pong
                    Err(e) => Some(Err(ws_error(e, limit, &refused))),
                })
            });
        session.run(&mut source, &app).await
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
            let _ = socket.send(close(e)).await;
        }
    }
    result
}
