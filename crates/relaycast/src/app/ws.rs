//! The parts of RFC 6455 that sit around the frames, shared by the relay's
//! hand-framed WebSocket adapters (the viewer egress at `/live/{name}` and
//! the publisher ingest at `/publish/{name}`): the opening handshake (one
//! check, [`handshake`], in front of every WebSocket endpoint including
//! Socket.IO's, and [`upgrade`] for the two hand-framed ones), and the
//! closing handshake ([`close_frame`], [`linger`]).
//!
//! The frames themselves are [`crate::proto::ws`] (sans-IO).

use crate::Error;
use crate::app::error_response;
use crate::proto::ws;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::Instrument;

/// How long a closing connection keeps reading (and dropping) what the client
/// still sends before the relay closes TCP: the rest of a refused message,
/// then the client's close frame. Closing with unread input makes the kernel
/// send a reset, and a reset discards the close frame the client has not read.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes read and dropped while lingering.
pub const LINGER_BYTES: u64 = 64 << 20;

fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Is `key` a valid `Sec-WebSocket-Key`: 16 bytes, base64 (RFC 6455 §4.1)?
pub fn valid_key(key: &[u8]) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

/// Middleware in front of every route (the Socket.IO layer included): the
/// opening handshake's rules that hold whatever the endpoint.
///
/// - Only an HTTP/1.1 request with `Upgrade: websocket` and `Connection:
///   upgrade` is a WebSocket upgrade. Any other request loses its
///   `Sec-WebSocket-Key` (so no endpoint answers it with 101: Socket.IO's
///   looks at the key and its `transport=websocket` query only); an HTTP/1.0
///   request also loses `Upgrade` and the connection's upgrade handle (RFC
///   9110 §7.8: a server must ignore `Upgrade` in an HTTP/1.0 request), and
///   the endpoint answers it as the plain request it is.
/// - An HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441) is a
///   WebSocket handshake too: it must carry `sec-websocket-version: 13`,
///   else 426; it has no key.
/// - A WebSocket upgrade must carry `Sec-WebSocket-Version: 13`, else 426
///   Upgrade Required, and a `Sec-WebSocket-Key` of 16 bytes of base64, else
///   400; both refusals carry `Sec-WebSocket-Version: 13` (RFC 6455 §4.2.2,
///   §4.4) and a JSON body saying why.
pub async fn handshake(mut req: Request, next: Next) -> Response {
    if is_h2_websocket(req.method(), req.version(), req.extensions()) {
        // RFC 8441 §5: the same version rule, no key.
        if req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            == Some(b"13")
        {
            return next.run(req).await;
        }
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket over HTTP/2 (extended CONNECT) needs sec-websocket-version: 13",
        );
    }
    let old = req.version() < Version::HTTP_11;
    let h = req.headers();
    let upgrade =
        has_token(h, header::UPGRADE, "websocket") && has_token(h, header::CONNECTION, "upgrade");
    if old || !upgrade {
        let h = req.headers_mut();
        h.remove(header::SEC_WEBSOCKET_KEY);
        if old {
            h.remove(header::UPGRADE);
            req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
        }
        return next.run(req).await;
    }
    let h = req.headers();
    let refusal = if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        Some((
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket upgrade needs Sec-WebSocket-Version: 13",
        ))
    } else if !h
        .get(header::SEC_WEBSOCKET_KEY)
        .is_some_and(|k| valid_key(k.as_bytes()))
    {
        Some((
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade needs a Sec-WebSocket-Key of 16 bytes in base64",
        ))
    } else {
        None
    };
    let Some((status, why)) = refusal else {
        return next.run(req).await;
    };
    refuse(status, why)
}

/// A refused opening handshake: `status`, the JSON reason, and
/// `Sec-WebSocket-Version: 13` (RFC 6455 §4.2.2, §4.4).
fn refuse(status: StatusCode, why: &str) -> Response {
    let mut r = error_response(&Error::BadRequest(why.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    r
}

/// A validated upgrade request.
pub struct Upgrade {
    /// The connection (HTTP/1.1) or the stream (HTTP/2), once the answer is sent.
    on_upgrade: hyper::upgrade::OnUpgrade,
    /// `Sec-WebSocket-Accept` of an HTTP/1.1 upgrade; `None` for an HTTP/2
    /// extended CONNECT (RFC 8441 §5: no key, no accept, a 200 answer).
    accept: Option<HeaderValue>,
}

/// Is this an HTTP/2 extended CONNECT for a WebSocket (RFC 8441 §4:
/// `:method CONNECT` with `:protocol websocket`)?
pub fn is_h2_websocket(method: &Method, version: Version, ext: &axum::http::Extensions) -> bool {
    method == Method::CONNECT
        && version == Version::HTTP_2
        && ext
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Checks that `parts` is a WebSocket opening handshake and takes the
/// connection's upgrade handle: an HTTP/1.1 upgrade (GET, `Connection:
/// upgrade`, `Upgrade: websocket`, version 13, a valid key), or an HTTP/2
/// extended CONNECT (RFC 8441: `:protocol websocket`, version 13), whose
/// stream then carries the same frames.
pub fn upgrade(parts: &mut Parts) -> Option<Upgrade> {
    let h = &parts.headers;
    if is_h2_websocket(&parts.method, parts.version, &parts.extensions) {
        if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
            return None;
        }
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        return Some(Upgrade {
            on_upgrade,
            accept: None,
        });
    }
    if parts.method != Method::GET
        || parts.version < Version::HTTP_11
        || !has_token(h, header::CONNECTION, "upgrade")
        || !has_token(h, header::UPGRADE, "websocket")
        || h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13")
    {
        return None;
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY)?;
    if !valid_key(key.as_bytes()) {
        return None;
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = HeaderValue::from_str(&accept).ok()?;
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
    Some(Upgrade {
        on_upgrade,
        accept: Some(accept),
    })
}

impl Upgrade {
    /// Answer 101 and serve the upgraded connection with `serve`, in a task
    /// of its own that carries the current (session) span.
    pub fn spawn<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let resp = self.response();
        let on_upgrade = self.on_upgrade;
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                if let Ok(io) = on_upgrade.await {
                    serve(TokioIo::new(io)).await;
                }
            }
            .instrument(span),
        );
        resp
    }

    /// Like [`Upgrade::spawn`], but the task is not instrumented: `serve`
    /// gets the session span and enters it only where it logs. A viewer's
    /// task is polled once per fragment, and entering and leaving a span on
    /// every poll is a measurable share of the relay's CPU at thousands of
    /// viewers (#15).
    pub fn spawn_in_span<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(TokioIo<hyper::upgrade::Upgraded>, tracing::Span) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let resp = self.response();
        let on_upgrade = self.on_upgrade;
        let span = tracing::Span::current();
        tokio::spawn(async move {
            if let Ok(io) = on_upgrade.await {
                serve(TokioIo::new(io), span).await;
            }
        });
        resp
    }

    /// The 101 Switching Protocols answer (HTTP/1.1), or 200 (RFC 8441 §5).
    fn response(&self) -> Response {
        let mut resp = Response::new(axum::body::Body::empty());
        let Some(accept) = &self.accept else {
            return resp;
        };
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept.clone());
        resp
    }
}

/// A server close frame's payload: `code` and `reason` (cut to the 123 bytes
/// a close frame has room for, at a character boundary).
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = BytesMut::with_capacity(2 + end);
    payload.put_u16(code);
    payload.put_slice(&reason.as_bytes()[..end]);
    payload.freeze()
}

/// A whole server close frame.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let payload = close_payload(code, reason);
    let mut f = BytesMut::with_capacity(4 + payload.len());
    ws::put_header(&mut f, ws::CLOSE, payload.len(), None);
    f.put_slice(&payload);
    f.freeze()
}

/// The closing handshake's last part, once the relay sent its close frame:
/// read and drop what the client still sends (the rest of a refused
/// message, then its own close frame, found by `reader` in
/// [`ws::Reader::drain`] mode; `buffered` are bytes already read) until that
/// close, the end of the stream, [`LINGER_TIME`] or [`LINGER_BYTES`]. The
/// caller then closes TCP without a reset.
pub async fn linger<R: AsyncRead + Unpin>(rd: &mut R, reader: &mut ws::Reader, buffered: &[u8]) {
    reader.drain();
    let mut buf = vec![0u8; buffered.len().max(16 << 10)];
    buf[..buffered.len()].copy_from_slice(buffered);
    let mut have = buffered.len();
    let mut read = 0u64;
    let work = async {
        loop {
            loop {
                let s = reader.next(&mut buf[..have]);
                buf.copy_within(s.used..have, 0);
                have -= s.used;
                if let Some(ws::Event::Close(_)) = s.event {
                    return;
                }
                if s.used == 0 {
                    break;
                }
            }
            if have == buf.len() {
                // A header that cannot be (after a protocol error): drop it.
                have = 0;
            }
            match rd.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    have += n;
                    read += n as u64;
                    if read > LINGER_BYTES {
                        return;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, work).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_16_bytes_of_base64() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!valid_key(b"abc"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZSE="), "17 bytes");
        assert!(!valid_key(b"!!!!!!!!!!!!!!!!!!!!!!=="));
    }

    #[test]
    fn close_reasons_are_cut_at_a_character() {
        let p = close_payload(1000, &"é".repeat(100));
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
