//! `quic`: the relay's QUIC endpoint and the `relaycast/1` protocol spoken
//! over it (see `docs/protocol.md`, section "QUIC").
//!
//! One QUIC connection carries one session. The client opens one
//! bidirectional stream and writes a [`Request`] (publish or watch, stream
//! name, key, `after`); the server answers with a [`Response`]. Then:
//!
//! - **publish**: the client writes the fMP4 byte stream on the same
//!   bidirectional stream (ordered: the relay needs every byte) and finishes
//!   it; the server answers with a summary and both sides close.
//! - **watch**: the server sends media on **one unidirectional stream per
//!   group**: every group stream starts with an init frame and continues with
//!   the fragments of one group (GOP) in order. A new group stream opens at
//!   every keyframe, init change and skip. A viewer that falls behind has its
//!   current group stream reset (its unsent data is dropped, nothing old is
//!   retransmitted) and continues at the newest keyframe on a fresh stream:
//!   flow control of one viewer never reaches the publisher or any other
//!   viewer, and a stale group never blocks a newer one. Control messages
//!   (skip, publisher gone/back, end) are JSON frames on the bidirectional
//!   stream.
//!
//! Errors close the connection with an application error code ([`code`])
//! and a human-readable reason.
//!
//! This module holds the endpoint, TLS (a configured certificate or a
//! generated self-signed one, pinned by SHA-256 fingerprint), the framing and
//! the accept loop; the publish session is [`crate::ingest::quic`], the watch
//! session [`crate::egress::quic`], and the client side of both is [`client`].

pub mod client;
mod frame;
mod tls;

pub use frame::{MediaFrame, read_control, read_media, write_control, write_control_raw};
pub use tls::{QuicTls, client_config, fingerprint_hex};

use crate::Error;
use crate::server::AppState;
use quinn::VarInt;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The ALPN protocol id.
pub const ALPN: &[u8] = b"relaycast/1";

/// Largest control frame (JSON) accepted.
pub const MAX_CONTROL: usize = 64 << 10;

/// Largest init or fragment payload accepted in a media frame.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// How long a client has to send its request after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes the server may have in flight per connection before writes wait.
/// Flow control beyond this makes a slow viewer fall behind in the ring,
/// where the lag policy applies.
const SEND_WINDOW: u64 = 4 << 20;

/// QUIC application error codes (connection close and stream reset codes).
pub mod code {
    /// Normal end of a session.
    pub const DONE: u32 = 0;
    /// Malformed request or frame (HTTP 400).
    pub const BAD_REQUEST: u32 = 1;
    /// A publish key is required (401).
    pub const UNAUTHORIZED: u32 = 2;
    /// Wrong key, or not allowed (403).
    pub const FORBIDDEN: u32 = 3;
    /// No such stream (404).
    pub const NOT_FOUND: u32 = 4;
    /// Another publisher is live on that name, or took it over (409).
    pub const CONFLICT: u32 = 5;
    /// The publisher's bytes are not acceptable fMP4.
    pub const BAD_MEDIA: u32 = 6;
    /// A box or frame over the size limit (413).
    pub const TOO_BIG: u32 = 7;
    /// The viewer kept falling behind and was disconnected.
    pub const LAGGING: u32 = 8;
    /// The stream ended: its publisher left.
    pub const PUBLISHER_GONE: u32 = 9;
    /// The relay is shutting down.
    pub const SHUTDOWN: u32 = 10;
    /// A configured limit refused the session (503).
    pub const LIMIT: u32 = 11;
    /// A bug or unexpected state on the relay.
    pub const INTERNAL: u32 = 12;
    /// Stream reset code: the server abandoned this group (the viewer skipped).
    pub const SKIPPED: u32 = 13;
}

/// The application error code for a library error (mapped once, here).
pub fn error_code(e: &Error) -> u32 {
    use crate::media::MediaError;
    match e {
        Error::BadName(_) | Error::BadRequest(_) | Error::Io(_) => code::BAD_REQUEST,
        Error::NotFound(_) => code::NOT_FOUND,
        Error::AlreadyLive(_) | Error::TakenOver(_) => code::CONFLICT,
        Error::Media(MediaError::BoxTooLarge { .. }) | Error::MessageTooBig { .. } => code::TOO_BIG,
        Error::Media(_) => code::BAD_MEDIA,
        Error::Unauthorized(_) => code::UNAUTHORIZED,
        Error::Forbidden(_) => code::FORBIDDEN,
        Error::Limit(_) | Error::Refused { .. } => code::LIMIT,
        Error::Shutdown => code::SHUTDOWN,
        Error::Internal(_) => code::INTERNAL,
    }
}

/// Close `conn` with `code` and `reason` (cut to what fits a close frame).
pub fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    let mut reason = reason.to_string();
    while reason.len() > 512 {
        reason.pop();
    }
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// Everything the QUIC side of the relay can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// A `quic://` URL that cannot be used.
    #[error("bad QUIC URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Certificates, keys or the TLS configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// A socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting failed before the session started.
    #[error("connecting to {addr}: {why}")]
    Connect {
        /// Where to.
        addr: String,
        /// Why it failed.
        why: String,
    },
    /// The connection broke (timeout, reset, or closed by the peer's QUIC stack).
    #[error("QUIC connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The relay refused or ended the session with an application error code.
    #[error("relay closed the session: {reason} (code {code})")]
    Closed {
        /// One of [`code`].
        code: u32,
        /// The relay's reason.
        reason: String,
    },
    /// The relay abandoned a group stream (the viewer skipped forward).
    #[error("group stream reset by the relay (code {0})")]
    Reset(u64),
    /// The peer broke the `relaycast/1` protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl QuicError {
    /// The application code when the relay closed the session with one.
    pub fn code(&self) -> Option<u32> {
        match self {
            QuicError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Turn a connection error into `Closed` when it carries an application code.
    pub fn from_connection(e: quinn::ConnectionError) -> QuicError {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => QuicError::Closed {
                code: u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            e => QuicError::Connection(e),
        }
    }
}

impl From<quinn::ReadError> for QuicError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => QuicError::from_connection(c),
            quinn::ReadError::Reset(code) => QuicError::Reset(code.into_inner()),
            e => QuicError::Protocol(format!("reading: {e}")),
        }
    }
}

impl From<quinn::WriteError> for QuicError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => QuicError::from_connection(c),
            e => QuicError::Protocol(format!("writing: {e}")),
        }
    }
}

/// What a session asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Send an fMP4 byte stream.
    Publish,
    /// Receive a stream.
    Watch,
}

/// The first frame on the request stream (client → server).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Publish or watch.
    pub op: Op,
    /// Stream name.
    pub name: String,
    /// Publish key (publish only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Watch: resume after this seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Watch: seconds to wait for a stream that has not started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<f64>,
    /// Watch: `"edge"` when a relay pulls the stream (cascade; counted apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Watch: signed URL expiry (Unix seconds), when the stream needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Watch: signed URL signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// The server's answer on the request stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// The session started.
    pub ok: bool,
    /// On refusal: one of [`code`].
    #[serde(default)]
    pub code: u32,
    /// On refusal: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Watch: the stream's epoch on this relay.
    #[serde(default)]
    pub epoch: u64,
    /// Watch: the sequence space of the seqs (equal on every relay of one
    /// cascade that serves the same publish; see `docs/cascade.md`).
    #[serde(default)]
    pub seq_space: u64,
    /// Watch: a publisher is live.
    #[serde(default)]
    pub live: bool,
    /// Watch: `after` was honoured.
    #[serde(default)]
    pub resumed: bool,
    /// Watch: seq of the next fragment.
    #[serde(default)]
    pub next_seq: u64,
}

impl Response {
    /// A refusal for `e`.
    pub fn refusal(e: &Error) -> Response {
        Response {
            ok: false,
            code: error_code(e),
            error: Some(e.to_string()),
            ..Response::default()
        }
    }
}

/// Where the QUIC endpoint listens and how clients pin its certificate
/// (`GET /api/quic`).
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    /// UDP address.
    pub addr: SocketAddr,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fingerprint: String,
}

/// The QUIC endpoint's [`Info`] as it is now: the fingerprint follows the
/// certificate when a SIGHUP reloads it (what `GET /api/quic` serves).
#[derive(Debug)]
pub struct LiveInfo {
    addr: SocketAddr,
    fingerprint: parking_lot::RwLock<String>,
}

impl LiveInfo {
    /// Start from `info`.
    pub fn new(info: Info) -> LiveInfo {
        LiveInfo {
            addr: info.addr,
            fingerprint: parking_lot::RwLock::new(info.fingerprint),
        }
    }

    /// Address and the fingerprint of the certificate served now.
    pub fn get(&self) -> Info {
        Info {
            addr: self.addr,
            fingerprint: self.fingerprint.read().clone(),
        }
    }

    /// The endpoint now serves a certificate with this fingerprint.
    pub fn set_fingerprint(&self, fingerprint: String) {
        *self.fingerprint.write() = fingerprint;
    }
}

/// The relay's QUIC endpoint, bound and ready to accept.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    info: Info,
}

impl QuicServer {
    /// Bind `addr` with the certificate of `tls`.
    pub fn bind(addr: SocketAddr, tls: &QuicTls) -> Result<QuicServer, QuicError> {
        let endpoint = quinn::Endpoint::server(Self::server_config(tls)?, addr)?;
        let info = Info {
            addr: endpoint.local_addr()?,
            fingerprint: tls.fingerprint.clone(),
        };
        Ok(QuicServer { endpoint, info })
    }

    /// The endpoint's configuration for the certificate of `tls`.
    fn server_config(tls: &QuicTls) -> Result<quinn::ServerConfig, QuicError> {
        let mut server = quinn::ServerConfig::with_crypto(tls.server_crypto()?);
        let mut transport = quinn::TransportConfig::default();
        transport
            .send_window(SEND_WINDOW)
            .max_concurrent_bidi_streams(VarInt::from_u32(4))
            // Clients never open unidirectional streams (media flows to them).
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(Duration::from_secs(2)));
        server.transport_config(Arc::new(transport));
        Ok(server)
    }

    /// Address and fingerprint.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// Accept sessions until shutdown.
    pub async fn run(self, app: AppState) {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => i,
                _ = app.shutdown.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let app = app.clone();
            tokio::spawn(async move {
                let peer = incoming.remote_address();
                // The client IP's connection limit, shared with HTTP and raw
                // TCP ingest: the guard counts this connection (from its
                // handshake on) for as long as it lives.
                let guard = app.limits.connection(peer.ip());
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "QUIC handshake failed");
                        return;
                    }
                };
                let _guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        // Counted by `connection`; the client gets the
                        // limit's code and why.
                        tracing::info!(%peer, error = %e, "QUIC connection refused");
                        close(&conn, error_code(&e), &e.to_string());
                        return;
                    }
                };
                if let Err(e) = session(&conn, &app).await {
                    match conn.close_reason() {
                        // The client left (or the connection died) first: nothing to tell it.
                        Some(reason) => {
                            tracing::debug!(%peer, error = %e, %reason, "QUIC session ended by the client")
                        }
                        None => {
                            tracing::info!(%peer, error = %e, "QUIC session refused or failed");
                            close(&conn, error_code(&e), &e.to_string());
                        }
                    }
                }
            });
        }
        self.endpoint
            .close(VarInt::from_u32(code::SHUTDOWN), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Bind the QUIC endpoint when `quic.listen` is set and spawn its accept
/// loop onto `tasks`. Uses `server.tls_cert`/`server.tls_key` when set, else
/// a self-signed certificate whose fingerprint is logged. The returned
/// [`LiveInfo`] follows certificate reloads.
pub fn start(
    state: &AppState,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Option<Arc<LiveInfo>>, QuicError> {
    let Some(listen) = state.config.quic.listen else {
        return Ok(None);
    };
    let server = &state.config.server;
    let tls = QuicTls::from_config(
        server.tls_cert.as_deref(),
        server.tls_key.as_deref(),
        listen,
    )?;
    let quic = QuicServer::bind(listen, &tls).map_err(|e| match e {
        QuicError::Io(io) => QuicError::Io(std::io::Error::new(
            io.kind(),
            format!("QUIC on {listen}: {io}"),
        )),
        e => e,
    })?;
    let info = quic.info().clone();
    let live = Arc::new(LiveInfo::new(info.clone()));
    tracing::info!(
        addr = %info.addr,
        fingerprint = %info.fingerprint,
        self_signed = tls.self_signed,
        "QUIC (relaycast/1) listening"
    );
    if let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) {
        // The same certificate as https, reloaded on SIGHUP like it: new
        // QUIC connections get the new one, established ones keep theirs,
        // and /api/quic reports the new fingerprint.
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let endpoint = quic.endpoint.clone();
                let (cert, key) = (cert.clone(), key.clone());
                let shutdown = state.shutdown.clone();
                let live = live.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            r = hup.recv() => if r.is_none() { return },
                            _ = shutdown.cancelled() => return,
                        }
                        let reloaded = QuicTls::from_pem_files(&cert, &key).and_then(|tls| {
                            QuicServer::server_config(&tls).map(|c| (c, tls.fingerprint))
                        });
                        match reloaded {
                            Ok((c, fingerprint)) => {
                                endpoint.set_server_config(Some(c));
                                tracing::info!(%fingerprint, "SIGHUP: QUIC certificate reloaded");
                                live.set_fingerprint(fingerprint);
                            }
                            Err(e) => tracing::error!(error = %e, "SIGHUP: QUIC reload failed; keeping the old certificate"),
                        }
                    }
                }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: QUIC certificate reload disabled")
            }
        }
    }
    tasks.push(tokio::spawn(quic.run(state.clone())));
    Ok(Some(live))
}

/// One connection: read the request, hand over to publish or watch.
async fn session(conn: &quinn::Connection, app: &AppState) -> Result<(), Error> {
    let accepted = tokio::select! {
        r = tokio::time::timeout(REQUEST_TIMEOUT, conn.accept_bi()) => r,
        _ = app.shutdown.cancelled() => return Err(Error::Shutdown),
    };
    let (mut send, mut recv) = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return Ok(()), // the client went away
        Err(_) => {
            return Err(Error::BadRequest(format!(
                "no request within {REQUEST_TIMEOUT:?}"
            )));
        }
    };
    let req: Request = match tokio::time::timeout(REQUEST_TIMEOUT, read_control(&mut recv)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Err(Error::BadRequest("no request".into())),
        Ok(Err(e)) => return Err(Error::BadRequest(format!("request: {e}"))),
        Err(_) => {
            return Err(Error::BadRequest(format!(
                "no request within {REQUEST_TIMEOUT:?}"
            )));
        }
    };
    let result = match req.op {
        Op::Publish => crate::ingest::quic::serve(conn, &mut send, recv, &req, app).await,
        Op::Watch => crate::egress::quic::serve(conn, &mut send, &req, app).await,
    };
    if let Err(e) = &result {
        // Say why on the request stream as well; the close carries the code.
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            write_control(&mut send, &Response::refusal(e)),
        )
        .await;
    }
    result
}

/// The `GET /api/quic` route: where the QUIC endpoint is and the
/// fingerprint of the certificate it serves now.
pub fn api_router(info: Option<Arc<LiveInfo>>) -> axum::Router {
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/api/quic",
        axum::routing::get(move || {
            let info = info.as_ref().map(|i| i.get());
            async move {
                match info {
                    Some(i) => axum::Json(i).into_response(),
                    None => (
                        axum::http::StatusCode::NOT_FOUND,
                        axum::Json(serde_json::json!({
                            "error": "QUIC is not enabled on this relay (serve --quic ADDR)"
                        })),
                    )
                        .into_response(),
                }
            }
        }),
    )
}

/// A parsed `quic://HOST:PORT[/NAME][?fingerprint=HEX]`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuicUrl {
    /// Host name or IP, as given.
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// Stream name (the path), if any.
    pub name: Option<String>,
    /// Pinned SHA-256 of the server certificate.
    pub fingerprint: Option<[u8; 32]>,
    /// Watch: `?wait=SECONDS` for a stream that has not started.
    pub wait: Option<f64>,
    /// Watch: `?exp=UNIX&sig=HEX`, a signed viewer URL (`relaycast sign`).
    pub signed: Option<(u64, String)>,
    /// `quic://HOST:PORT`, without path or parameters (for display and labels).
    pub base: String,
}

impl QuicUrl {
    /// Parse a `quic://` URL.
    pub fn parse(s: &str) -> Result<QuicUrl, QuicError> {
        let bad = |why: &str| QuicError::Url {
            url: s.to_string(),
            why: why.to_string(),
        };
        let u = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        if u.scheme() != "quic" {
            return Err(bad("the scheme must be quic://"));
        }
        let host = u
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u.port().ok_or_else(|| bad("no port"))?;
        let path = u.path().trim_start_matches('/');
        let name = if path.is_empty() {
            None
        } else if crate::fanout::valid_name(path) {
            Some(path.to_string())
        } else {
            return Err(bad("the path must be a stream name ([A-Za-z0-9_-]{1,64})"));
        };
        let mut fingerprint = None;
        let mut wait = None;
        let mut exp = None;
        let mut sig = None;
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "fingerprint" => {
                    let hex: String = v.chars().filter(|c| *c != ':').collect();
                    let bytes =
                        hex::decode(&hex).map_err(|_| bad("fingerprint must be 64 hex digits"))?;
                    let arr: [u8; 32] = bytes
                        .try_into()
                        .map_err(|_| bad("fingerprint must be 64 hex digits (SHA-256)"))?;
                    fingerprint = Some(arr);
                }
                "wait" => {
                    wait = Some(
                        v.parse::<f64>()
                            .ok()
                            .filter(|w| w.is_finite() && *w >= 0.0)
                            .ok_or_else(|| bad("wait must be a number of seconds"))?,
                    );
                }
                "exp" => {
                    exp = Some(
                        v.parse::<u64>()
                            .map_err(|_| bad("exp must be Unix seconds"))?,
                    );
                }
                "sig" => sig = Some(v.into_owned()),
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        let signed = match (exp, sig) {
            (Some(e), Some(s)) => Some((e, s)),
            (None, None) => None,
            _ => return Err(bad("a signed URL needs both exp and sig")),
        };
        let base = format!("quic://{}:{port}", u.host_str().unwrap_or(""));
        Ok(QuicUrl {
            host,
            port,
            name,
            fingerprint,
            wait,
            signed,
            base,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_fingerprint() {
        let u = QuicUrl::parse("quic://127.0.0.1:4433/cam-1").expect("parses");
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 4433);
        assert_eq!(u.name.as_deref(), Some("cam-1"));
        assert_eq!(u.fingerprint, None);
        let fp = "ab".repeat(32);
        let u = QuicUrl::parse(&format!("quic://[::1]:9/x?fingerprint={fp}")).expect("parses");
        assert_eq!(u.host, "::1");
        assert_eq!(u.fingerprint, Some([0xab; 32]));
        let u = QuicUrl::parse("quic://origin.example:4433").expect("parses");
        assert_eq!(u.name, None);
        for bad in [
            "http://h:1/x",
            "quic://h/x",
            "quic://h:1/a/b",
            "quic://h:1/x?fingerprint=12",
            "quic://h:1/x?key=1",
        ] {
            assert!(QuicUrl::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn every_error_maps_to_a_distinct_meaningful_code() {
        assert_eq!(error_code(&Error::NotFound("x".into())), code::NOT_FOUND);
        assert_eq!(
            error_code(&Error::Unauthorized("k".into())),
            code::UNAUTHORIZED
        );
        assert_eq!(error_code(&Error::Forbidden("k".into())), code::FORBIDDEN);
        assert_eq!(error_code(&Error::AlreadyLive("x".into())), code::CONFLICT);
        assert_eq!(error_code(&Error::Shutdown), code::SHUTDOWN);
    }
}
