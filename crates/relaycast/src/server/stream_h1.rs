//! HTTP streaming viewers over plain HTTP/1.1, taken before hyper sees the
//! connection, so that the fan-out writers can write their bodies (#15).
//!
//! A connection whose first request is `GET /live/{name}.mp4 HTTP/1.1`
//! (looked at with `MSG_PEEK`, nothing taken until it is known) has its
//! request head read here and parsed with `httparse` (the parser hyper
//! uses). The request then goes through the same router as any other, with
//! every layer (session span, CORS, handshake rules) and the same handler,
//! which admits the viewer (auth, limits, the stream) and leaves it in a
//! [`TakeOver`] instead of making a body. What is written here is the
//! response head (status and headers as the router made them, the body
//! `Transfer-Encoding: chunked` and `Connection: close`); the body is the
//! viewer's session (`egress::websocket::spawn_http_stream`). A refusal
//! (404, 401, 429, 503, …) is written whole and the connection closed.
//! Anything else (another path or method, HTTP/1.0, a request with a body,
//! a head over [`MAX_HEAD`], TLS, HTTP/2) is left to hyper.
//!
//! Why by hand: hyper gives a connection back only after a 101 or a
//! CONNECT; the body of a 200 is written by hyper's connection task, one
//! task woken per viewer per fragment (a third of the relay's CPU was in
//! user space at 4,000 HTTP streaming viewers that way, and the relay used
//! 1.3 × nchan's CPU; benches/results/NOTES.md, "HTTP streaming viewers in
//! the writers"). What is by hand here is only the request head out of
//! `httparse` and the response head.

use crate::app::AppState;
use crate::egress::http_stream::TakeOver;
use crate::limits::Counted;
use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use bytes::{BufMut, Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest request head taken here (a bigger one is hyper's to refuse).
pub(super) const MAX_HEAD: usize = 8 << 10;
/// Most headers in a request taken here.
const MAX_HEADERS: usize = 64;
/// The start of every request taken here.
const PREFIX: &[u8] = b"GET /live/";

/// A request taken here, and the length of its head (boxed: it is carried
/// through the connection's state only on the way to the router).
pub(super) type Head = Box<(Request<()>, usize)>;

/// Looks at the client's first request without taking it: `Some` when it
/// is an HTTP/1.1 `GET /live/{name}.mp4` without a body (the request, and
/// the length of its head), `None` for anything else (hyper's). Waits for
/// the whole head; the caller bounds the wait (the header timeout).
pub(super) async fn peek(tcp: &TcpStream) -> Option<Head> {
    let mut small = [0u8; PREFIX.len()];
    loop {
        let n = tcp.peek(&mut small).await.ok()?;
        if n == 0 || small[..n] != PREFIX[..n] {
            return None;
        }
        if n == PREFIX.len() {
            break;
        }
        // The request line split across packets: look again shortly (rare).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut buf = vec![0u8; MAX_HEAD];
    loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        match parse(&buf[..n]) {
            Parsed::Stream(head) => return Some(head),
            Parsed::Other => return None,
            Parsed::Partial if n == buf.len() => return None,
            Parsed::Partial => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// What the first bytes of a connection are.
enum Parsed {
    /// A request taken here, and the length of its head.
    Stream(Head),
    /// Not all of the head yet.
    Partial,
    /// Hyper's.
    Other,
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Parsed::Other;
    }
    let Some(target) = req.path else {
        return Parsed::Other;
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let name = path
        .strip_prefix("/live/")
        .and_then(|n| n.strip_suffix(".mp4"));
    if name.is_none_or(|n| n.is_empty() || n.contains('/')) {
        return Parsed::Other;
    }
    let Ok(uri) = Uri::try_from(target) else {
        return Parsed::Other;
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        map.append(name, value);
    }
    // A request with a body (or framing hyper has rules for) is hyper's.
    let has_body = map.contains_key(axum::http::header::TRANSFER_ENCODING)
        || map
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Parsed::Other;
    }
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Parsed::Stream(Box::new((request, len)))
}

/// Serves the request [`peek`] found: takes its head off the socket, runs
/// it through the router, and hands an admitted viewer to its session.
pub(super) async fn serve(
    mut tcp: TcpStream,
    head: Head,
    guard: crate::limits::ConnGuard,
    peer: SocketAddr,
    app: Router,
    state: AppState,
) {
    use tower::ServiceExt;
    let (request, head_len) = *head;
    // The head was peeked whole: it is in the socket's buffer.
    let mut head = vec![0u8; head_len];
    if tcp.read_exact(&mut head).await.is_err() {
        return;
    }
    drop(head);
    let limits = state.limits.clone();
    let io = Counted::new(tcp, guard)
        .with_write_deadline(limits.config().write_stall_timeout, limits.refused.clone());
    let take_over = TakeOver::default();
    let (mut parts, ()) = request.into_parts();
    parts.extensions.insert(axum::extract::ConnectInfo(peer));
    parts.extensions.insert(take_over.clone());
    let request = Request::from_parts(parts, axum::body::Body::empty());
    let response = match app.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if let Some(t) = take_over.take() {
        let head = encode_head(&response, None);
        crate::egress::websocket::spawn_http_stream(io, t.viewer, state, t.meta, head, t.span);
        return;
    }
    // Refused (or anything but a stream): the whole answer, then close.
    let (parts, body) = response.into_parts();
    let body =
        tokio::time::timeout(Duration::from_secs(5), axum::body::to_bytes(body, 1 << 20)).await;
    let Ok(Ok(body)) = body else {
        return;
    };
    let head = encode_head(&Response::from_parts(parts, ()), Some(body.len()));
    super::answer_and_close(io, &head, &body).await;
}

/// A response head: the status line, the response's headers, `Date`, and
/// the framing: `Content-Length: len`, or a chunked body when `None`;
/// `Connection: close` either way (the connection serves this one request).
fn encode_head<B>(response: &Response<B>, len: Option<usize>) -> Bytes {
    use axum::http::header;
    let status = response.status();
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in response.headers() {
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ]
        .contains(name)
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !response.headers().contains_key(header::DATE) {
        out.put_slice(b"date: ");
        out.put_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.put_slice(b"\r\n");
    }
    match len {
        Some(n) => {
            use std::fmt::Write;
            let _ = write!(out, "content-length: {n}\r\n");
        }
        None => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"connection: close\r\n\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(bytes: &[u8]) -> Option<(Request<()>, usize)> {
        match parse(bytes) {
            Parsed::Stream(head) => Some(*head),
            _ => None,
        }
    }

    #[test]
    fn takes_only_a_plain_http11_get_of_a_stream() {
        let req = b"GET /live/cam.mp4?meta=1 HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\n\r\nrest";
        let (r, len) = stream(req).expect("taken");
        assert_eq!(len, req.len() - 4);
        assert_eq!(r.uri().path(), "/live/cam.mp4");
        assert_eq!(r.uri().query(), Some("meta=1"));
        assert_eq!(r.headers()["origin"], "http://a");
        for other in [
            &b"GET /live/cam HTTP/1.1\r\n\r\n"[..],
            b"GET /live/a/b.mp4 HTTP/1.1\r\n\r\n",
            b"GET /live/.mp4 HTTP/1.1\r\n\r\n",
            b"HEAD /live/cam.mp4 HTTP/1.1\r\n\r\n",
            b"GET /live/cam.mp4 HTTP/1.0\r\n\r\n",
            b"GET /live/cam.mp4 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /live/cam.mp4 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /live/cam.mp4 HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                stream(other).is_none(),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        assert!(matches!(
            parse(b"GET /live/cam.mp4 HTTP/1.1\r\nHost:"),
            Parsed::Partial
        ));
    }

    #[test]
    fn the_head_says_chunked_and_close_and_keeps_the_handlers_headers() {
        let mut r = Response::new(());
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("video/mp4"));
        r.headers_mut()
            .insert("content-length", HeaderValue::from_static("0"));
        let head = encode_head(&r, None);
        let text = String::from_utf8_lossy(&head);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-type: video/mp4\r\n"));
        assert!(!text.contains("content-length"));
        assert!(text.contains("\r\ndate: "));
        assert!(text.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"));
        let head = encode_head(&r, Some(12));
        assert!(String::from_utf8_lossy(&head).contains("content-length: 12\r\n"));
    }
}
