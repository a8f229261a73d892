//! WebSocket ingest: `GET /publish/{name}` upgraded; binary messages are
//! consecutive bytes of the fMP4 stream, split anywhere. Errors close the
//! socket with a code and a reason: 1008 bad key or name (policy), 1002 a
//! broken frame (protocol), 1007 not fMP4 (or a text message that is not
//! UTF-8), 1009 a message over `max_ws_message`, 1003 text instead of
//! binary, 4009 name already live. Every end, the client's close included,
//! is answered with the JSON summary (a text message) and then a close frame
//! (the client's own code echoed when it closed).
//!
//! Hand-framed with [`crate::proto::ws::Reader`] rather than axum's
//! `WebSocket` (tungstenite), for three reasons: each payload piece goes to
//! the splitter as it arrives (a message is never assembled, whatever its
//! size); tungstenite refuses to send once the client's close has arrived,
//! so the summary and the echoed close were never sent (clients saw 1006);
//! and after refusing a message the relay must keep reading (a lingering
//! close, [`crate::app::ws::linger`]) or the kernel's reset discards the
//! close frame (clients saw 1006, not 1009).

use super::{IngestSession, admit, key_from};
use crate::Error;
use crate::app::ws::{Upgrade, close_frame, linger};
use crate::app::{AppState, error_response};
use crate::proto::code::ws as ws_code;
use crate::proto::ws;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes asked of the socket per read.
const READ: usize = 64 << 10;
/// Bound on writing the summary and the close frame.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Upgrade and serve one publisher.
pub async fn serve(
    app: AppState,
    name: String,
    key: Option<String>,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
    up: Upgrade,
) -> Response {
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
    up.spawn(move |io| async move {
        let max = app.config.ingest.max_ws_message as u64;
        let mut conn = Conn {
            io,
            buf: BytesMut::new(),
            reader: ws::Reader::new(max),
            client_close: None,
        };
        let r = match admitted {
            Ok(session) => run(&mut conn, app, &name, session).await,
            Err(e) => {
                conn.finish(None, &e).await;
                Err(e)
            }
        };
        if let Err(e) = r {
            tracing::warn!(stream = %name, error = %e, "WebSocket publisher failed");
        }
    })
}

/// The upgraded connection of one publisher.
struct Conn<IO> {
    io: IO,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    reader: ws::Reader,
    /// The code of the client's close, once it arrived.
    client_close: Option<u16>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// The next piece of the stream: `None` at the client's close or the end
    /// of the connection.
    async fn next(
        &mut self,
        refused: &crate::limits::Refused,
    ) -> Option<Result<bytes::Bytes, Error>> {
        loop {
            let s = self.reader.next(&mut self.buf[..]);
            let piece = self.buf.split_to(s.used);
            match s.event {
                None if s.used == 0 => {
                    self.buf.reserve(READ);
                    match self.io.read_buf(&mut self.buf).await {
                        Ok(0) => return None,
                        Ok(_) => {}
                        Err(e) => return Some(Err(Error::Io(e))),
                    }
                }
                None | Some(ws::Event::Pong) => {}
                Some(ws::Event::Data { text: true, .. }) => {
                    return Some(Err(Error::WrongMessageType(
                        "text message: send the fMP4 stream as binary messages".into(),
                    )));
                }
                Some(ws::Event::Data { range, .. }) => {
                    if !range.is_empty() {
                        return Some(Ok(piece.freeze().slice(range)));
                    }
                }
                Some(ws::Event::Ping(r)) => {
                    let mut pong = BytesMut::with_capacity(2 + r.len());
                    ws::put_header(&mut pong, ws::PONG, r.len(), None);
                    pong.put_slice(&piece[r]);
                    if let Err(e) = self.io.write_all(&pong).await {
                        return Some(Err(Error::Io(e)));
                    }
                }
                Some(ws::Event::Close(code)) => {
                    self.client_close = Some(code);
                    return None;
                }
                Some(ws::Event::Fail { code, reason }) => {
                    let e = match code {
                        ws_code::TOO_BIG => {
                            let size =
                                usize::try_from(self.reader.message_len()).unwrap_or(usize::MAX);
                            let limit =
                                usize::try_from(self.reader.max_message()).unwrap_or(usize::MAX);
                            let e = Error::MessageTooBig { size, limit };
                            refused.note_ingest_error(&e);
                            e
                        }
                        ws_code::INVALID_DATA => Error::InvalidText(reason.into()),
                        _ => Error::Protocol(reason.into()),
                    };
                    return Some(Err(e));
                }
            }
        }
    }

    /// Ends the session: the summary (when there is one) as a text message,
    /// then a close frame (the client's code echoed when it closed and all
    /// went well, else the error's), then a lingering close.
    async fn finish(&mut self, summary: Option<String>, e: &Error) {
        self.finish_with(summary, e.ws_close_code(), &e.to_string())
            .await
    }

    async fn finish_with(&mut self, summary: Option<String>, code: u16, reason: &str) {
        let mut out = BytesMut::new();
        if let Some(s) = summary {
            ws::put_header(&mut out, ws::TEXT, s.len(), None);
            out.put_slice(s.as_bytes());
        }
        out.put_slice(&close_frame(code, reason));
        let write = async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        };
        if tokio::time::timeout(WRITE_TIMEOUT, write).await.is_err() {
            return;
        }
        if self.client_close.is_none() {
            let buffered = self.buf.split().freeze();
            linger(&mut self.io, &mut self.reader, &buffered).await;
        }
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.io.shutdown()).await;
    }
}

async fn run<IO: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<IO>,
    app: AppState,
    name: &str,
    mut session: IngestSession,
) -> Result<(), Error> {
    tracing::info!(stream = %name, "WebSocket publisher connected");
    let refused = app.limits.refused.clone();
    let result = {
        let refused = &refused;
        let mut source = Box::pin(futures_util::stream::unfold(
            &mut *conn,
            move |c| async move {
                let item = c.next(refused).await?;
                Some((item, c))
            },
        ));
        session.run(&mut source, &app).await
    };
    let summary = session.summary(result.as_ref().err());
    drop(session);
    let json = serde_json::to_string(&summary).unwrap_or_default();
    match &result {
        Ok(()) => {
            let code = conn.client_close.unwrap_or(ws_code::NORMAL);
            conn.finish_with(Some(json), code, "publish finished").await
        }
        Err(e) => conn.finish(Some(json), e).await,
    }
    result
}
