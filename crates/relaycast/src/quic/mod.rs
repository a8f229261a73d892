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
//! This module is the protocol: requests and responses, the framing, codes,
//! URLs, TLS (a configured certificate or a generated self-signed one,
//! pinned by SHA-256 fingerprint) and the [`client`]. The server's endpoint
//! and dispatcher are `crate::server::quic`; the publish session is
//! `crate::ingest::quic`, the watch session `crate::egress::quic`.

pub mod client;
mod frame;
mod tls;

pub use frame::{MediaFrame, read_control, read_media, write_control, write_control_raw};
pub use tls::{QuicTls, client_config, fingerprint_hex};

use crate::Error;
use quinn::VarInt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The ALPN protocol id.
pub const ALPN: &[u8] = b"relaycast/1";

/// Largest control frame (JSON) accepted.
pub const MAX_CONTROL: usize = 64 << 10;

/// Largest init or fragment payload accepted in a media frame.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// How long a client has to send its request after connecting.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes the server may have in flight per connection before writes wait.
/// Flow control beyond this makes a slow viewer fall behind in the ring,
/// where the lag policy applies.
pub const SEND_WINDOW: u64 = 4 << 20;

/// QUIC application error codes (connection close and stream reset codes).
pub use crate::proto::code::quic as code;

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
            code: e.quic_code(),
            error: Some(e.to_string()),
            ..Response::default()
        }
    }
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
        assert_eq!((Error::NotFound("x".into())).quic_code(), code::NOT_FOUND);
        assert_eq!(
            (Error::Unauthorized("k".into())).quic_code(),
            code::UNAUTHORIZED
        );
        assert_eq!((Error::Forbidden("k".into())).quic_code(), code::FORBIDDEN);
        assert_eq!((Error::AlreadyLive("x".into())).quic_code(), code::CONFLICT);
        assert_eq!((Error::Shutdown).quic_code(), code::SHUTDOWN);
    }
}
