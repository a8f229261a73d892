//! HTTP ingest: `PUT` or `POST /publish/{name}`, the body is the fMP4 stream
//! for as long as the broadcast lasts (chunked or sized). The relay reads it
//! incrementally and answers when it ends or fails, with a JSON summary.
//!
//! Telling a refused publisher why. A refusal (bad name, key, name in use,
//! limits) is answered before the body is read, with the status, a JSON
//! body, and the reason in the status line too (`HTTP/1.1 409 Conflict:
//! stream "x" already has a live publisher`), and logged once at WARN with
//! the peer. Whether the client can read it depends on the client:
//!
//! - A client that reads the response while it sends (curl, browsers, our
//!   `relaycast publish`) reads it as soon as it is sent; the relay then
//!   reads and drops the body for a bounded time ([`linger`]) so that
//!   closing with unread data does not reset the connection under it.
//! - ffmpeg's HTTP output reads nothing until its body has ended (its
//!   `http_write` only writes; its close reads and discards the reply), so
//!   however the relay answers, a refusal mid-body reaches it as "Broken
//!   pipe". With `-send_expect_100 1` (ffmpeg sends it by itself when the URL
//!   has `user:pass@`) it sends `Expect: 100-continue` and reads the status
//!   before sending the body: a refusal at admission is then printed by
//!   ffmpeg ("HTTP error 409 Conflict: …", "Server returned 4XX …"). For such
//!   a request the relay answers without `100 Continue` and does not linger
//!   (the client has sent nothing). hyper sends `100 Continue` when the body
//!   is first read, which happens only after admission.
//!
//! A body that ends because the publisher went away (connection closed or
//! reset before the last chunk: ffmpeg killed, a network cut) is an ordinary
//! end of a broadcast, logged at INFO; it is told apart from a malformed body
//! by hyper's error kind, not by its text.

use super::{admit, key_from};
use crate::Error;
use crate::app::{AppState, error_response};
use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::net::SocketAddr;

/// Most of a refused publisher's body read (and dropped) while it gets its answer.
const LINGER_BYTES: usize = 4 << 20;
/// Longest time spent on that.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest reason put in a status line.
const MAX_REASON: usize = 160;

/// Read and drop the rest of a refused or failed publisher's body for a short
/// while (a lingering close, as nginx does): a client still sending its
/// stream then reads the answer instead of a connection reset that would hide it.
fn linger(mut body: axum::body::BodyDataStream) {
    tokio::spawn(async move {
        let mut read = 0;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while let Some(Ok(d)) = body.next().await {
                read += d.len();
                if read > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// True when the client waits for `100 Continue` before sending its body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Put `e` in the status line after the standard phrase, for clients that
/// print only that (ffmpeg): printable ASCII, at most [`MAX_REASON`] bytes.
fn with_reason(mut r: Response, e: &Error) -> Response {
    let canonical = r.status().canonical_reason().unwrap_or("Error");
    let mut phrase: String = format!("{canonical}: {e}")
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    phrase.truncate(MAX_REASON);
    if let Ok(p) = hyper::ext::ReasonPhrase::try_from(phrase) {
        r.extensions_mut().insert(p);
    }
    r
}

/// A request body error, classified by hyper's error kind: the publisher
/// going away before the last chunk (connection closed early or reset) is
/// [`Error::Io`], an ordinary end; anything else (a malformed chunk) is a bad
/// request.
fn body_error(e: axum::Error) -> Error {
    let text = e.to_string();
    let inner = e.into_inner();
    let gone = match inner.downcast_ref::<hyper::Error>() {
        Some(h) => {
            h.is_incomplete_message()
                || h.is_closed()
                || h.is_canceled()
                || std::error::Error::source(h).is_some_and(|s| s.is::<std::io::Error>())
        }
        None => false,
    };
    if gone {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the publisher went away mid-body: {text}"),
        ))
    } else {
        Error::BadRequest(format!("body: {text}"))
    }
}

/// A publisher's session while its handler runs. hyper drops the handler
/// when the connection closes first — which is how an ordinary ffmpeg
/// upload ends: it writes the last chunk and closes at once, and hyper,
/// seeing the end of the connection, may drop the handler before it has
/// read that last chunk. The end is then logged here, once: "finished"
/// when the stream stopped on a box boundary, "ended" when inside a box.
struct Session<'a> {
    inner: super::IngestSession,
    name: &'a str,
    peer: Option<SocketAddr>,
    /// The handler got to answer (and logs the end itself).
    answered: bool,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let (name, peer) = (self.name, self.peer);
        let fragments = self.inner.summary(None).fragments;
        match self.inner.finish() {
            Ok(()) => tracing::info!(
                stream = %name, ?peer, fragments,
                "HTTP publisher finished (it closed the connection without reading the answer)"
            ),
            Err(e) => tracing::info!(
                stream = %name, ?peer, fragments, reason = %e,
                "HTTP publisher ended: the connection closed"
            ),
        }
    }
}

/// Serve one publisher.
pub async fn serve(
    app: AppState,
    name: String,
    key: Option<String>,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
    body: Body,
) -> Response {
    let key = key_from(key.as_deref(), &headers);
    let session = match admit(
        &app,
        crate::fanout::Ingest::Http,
        &name,
        key.as_deref(),
        peer,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                stream = %name,
                ?peer,
                status = e.http_status(),
                reason = %e,
                "HTTP publish refused"
            );
            // A client waiting for `100 Continue` has sent no body: dropping
            // it (unread) makes hyper answer without the 100.
            if !expects_continue(&headers) {
                linger(body.into_data_stream());
            }
            return with_reason(error_response(&e), &e);
        }
    };
    tracing::info!(stream = %name, ?peer, "HTTP publisher connected");
    let mut session = Session {
        inner: session,
        name: &name,
        peer,
        answered: false,
    };
    let mut body = body.into_data_stream();
    let result = {
        let mut source = (&mut body).map(|r| r.map_err(body_error));
        session.inner.run(&mut source, &app).await
    };
    session.answered = true;
    let summary = session.inner.summary(result.as_ref().err());
    drop(session);
    let e = match result {
        Ok(()) => {
            tracing::info!(stream = %name, ?peer, fragments = summary.fragments, "HTTP publisher finished");
            return (StatusCode::OK, Json(summary)).into_response();
        }
        Err(e) => e,
    };
    match &e {
        Error::Io(_) | Error::Shutdown => tracing::info!(
            stream = %name, ?peer, fragments = summary.fragments, reason = %e,
            "HTTP publisher ended"
        ),
        _ => tracing::warn!(
            stream = %name, ?peer, fragments = summary.fragments, status = e.http_status(),
            reason = %e, "HTTP publisher failed"
        ),
    }
    // Still sending (every case but a publisher already gone): read and drop
    // its body for a moment, or closing with unread input would reset the
    // connection and could destroy the answer before the client reads it.
    // That includes a shutdown: the relay's drain waits for this connection
    // (at most LINGER_TIME, within the shutdown deadline), and the publisher
    // reads its 503 (#12 item 25: the 1,000-viewer shutdown test saw no
    // answer now and then).
    if !matches!(e, Error::Io(_)) {
        linger(body);
    }
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Json(summary)).into_response();
    if let Some(v) = error_response(&e).headers().get(header::RETRY_AFTER) {
        r.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    with_reason(r, &e)
}
