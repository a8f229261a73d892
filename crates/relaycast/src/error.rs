//! The library's error type: who caused it, and what the client is told —
//! mapped once, here, to an HTTP status, a WebSocket close code, a QUIC
//! application code and a raw-TCP error line; and why a limit refused a
//! client ([`Reason`]).

use crate::media::MediaError;
use crate::proto::code::{quic, rtmp, ws};

/// Everything that can go wrong, each variant mapped once to an HTTP status
/// and a WebSocket close code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream name is not `[A-Za-z0-9_-]{1,64}` (client).
    #[error("invalid stream name {0:?}: use 1 to 64 of [A-Za-z0-9_-]")]
    BadName(String),
    /// A malformed request (client).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A message of a kind the endpoint does not take, e.g. text where the
    /// stream's binary is expected (client).
    #[error("bad request: {0}")]
    WrongMessageType(String),
    /// A WebSocket client broke the framing rules of RFC 6455 (client).
    #[error("websocket protocol error: {0}")]
    Protocol(String),
    /// A WebSocket text message (or close reason) that is not UTF-8 (client).
    #[error("websocket: {0}")]
    InvalidText(String),
    /// No such stream (client).
    #[error("no stream named {0:?}")]
    NotFound(String),
    /// A publisher is already live on that name (client).
    #[error("stream {0:?} already has a live publisher")]
    AlreadyLive(String),
    /// Another publisher took this stream over (client).
    #[error("stream {0:?} was taken over by another publisher")]
    TakenOver(String),
    /// The publisher sent something that is not acceptable fMP4 (publisher).
    #[error(transparent)]
    Media(#[from] MediaError),
    /// A WebSocket message over the limit (client).
    #[error("message of {size} bytes is over the {limit}-byte limit")]
    MessageTooBig {
        /// message size
        size: usize,
        /// configured limit
        limit: usize,
    },
    /// No or wrong credentials (client).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Credentials valid but not for this (client).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A configured limit refuses the request (load).
    #[error("over limit: {0}")]
    Limit(String),
    /// A limit refused or cut off this client; counted by reason (load or client).
    #[error("refused ({}): {detail}", reason.name())]
    Refused {
        /// Which limit.
        reason: Reason,
        /// What was over it.
        detail: String,
    },
    /// What was asked for does not exist yet and did not come in time (a
    /// blocking playlist reload, a preload-hinted part): try again (load).
    #[error("not available yet: {0}")]
    Unavailable(String),
    /// A transport that is not enabled on this relay (load: the operator
    /// can turn it on); the text says how.
    #[error("{0}")]
    Off(String),
    /// The relay is shutting down.
    #[error("relay shutting down")]
    Shutdown,
    /// An I/O error on a connection.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A bug or an unexpected state (internal).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::BadName(_)
            | Error::BadRequest(_)
            | Error::WrongMessageType(_)
            | Error::Protocol(_)
            | Error::InvalidText(_) => 400,
            Error::NotFound(_) => 404,
            Error::AlreadyLive(_) | Error::TakenOver(_) => 409,
            Error::Media(m) => m.http_status(),
            Error::MessageTooBig { .. } => 413,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::Limit(_) | Error::Off(_) | Error::Unavailable(_) => 503,
            Error::Refused { reason, .. } => reason.http_status(),
            Error::Shutdown => 503,
            Error::Io(_) => 400,
            Error::Internal(_) => 500,
        }
    }

    /// The WebSocket close code for this error.
    pub fn ws_close_code(&self) -> u16 {
        match self {
            Error::BadName(_) | Error::BadRequest(_) => ws::POLICY,
            Error::WrongMessageType(_) => ws::UNSUPPORTED,
            Error::Protocol(_) => ws::PROTOCOL,
            Error::InvalidText(_) => ws::INVALID_DATA,
            Error::NotFound(_) => ws::NOT_FOUND,
            Error::AlreadyLive(_) | Error::TakenOver(_) => ws::CONFLICT,
            Error::Media(MediaError::BoxTooLarge { .. }) => ws::TOO_BIG,
            Error::Media(_) => ws::INVALID_DATA,
            Error::MessageTooBig { .. } => ws::TOO_BIG,
            Error::Unauthorized(_) | Error::Forbidden(_) => ws::POLICY,
            Error::Limit(_) | Error::Off(_) | Error::Unavailable(_) => ws::TRY_AGAIN,
            Error::Refused { reason, .. } => reason.ws_close_code(),
            Error::Shutdown => ws::GOING_AWAY,
            Error::Io(_) => ws::PROTOCOL,
            Error::Internal(_) => ws::INTERNAL,
        }
    }

    /// The QUIC application error code for this error.
    pub fn quic_code(&self) -> u32 {
        match self {
            Error::BadName(_)
            | Error::BadRequest(_)
            | Error::WrongMessageType(_)
            | Error::Protocol(_)
            | Error::InvalidText(_)
            | Error::Io(_) => quic::BAD_REQUEST,
            Error::NotFound(_) => quic::NOT_FOUND,
            Error::AlreadyLive(_) | Error::TakenOver(_) => quic::CONFLICT,
            Error::Media(MediaError::BoxTooLarge { .. }) | Error::MessageTooBig { .. } => {
                quic::TOO_BIG
            }
            Error::Media(_) => quic::BAD_MEDIA,
            Error::Unauthorized(_) => quic::UNAUTHORIZED,
            Error::Forbidden(_) => quic::FORBIDDEN,
            Error::Limit(_) | Error::Off(_) | Error::Refused { .. } | Error::Unavailable(_) => {
                quic::LIMIT
            }
            Error::Shutdown => quic::SHUTDOWN,
            Error::Internal(_) => quic::INTERNAL,
        }
    }

    /// The RTMP status code an encoder is refused or cut off with:
    /// `NetStream.Publish.BadName` for a name that is invalid or already
    /// live, `NetStream.Publish.Denied` for keys, limits, callbacks and
    /// shutdown, `NetStream.Failed` for what went wrong after publishing started.
    pub fn rtmp_code(&self) -> &'static str {
        match self {
            Error::BadName(_) | Error::AlreadyLive(_) | Error::NotFound(_) => {
                rtmp::PUBLISH_BAD_NAME
            }
            Error::Unauthorized(_)
            | Error::Forbidden(_)
            | Error::Limit(_)
            | Error::Off(_)
            | Error::Unavailable(_)
            | Error::Refused { .. }
            | Error::Shutdown => rtmp::PUBLISH_DENIED,
            Error::BadRequest(_)
            | Error::WrongMessageType(_)
            | Error::Protocol(_)
            | Error::InvalidText(_)
            | Error::TakenOver(_)
            | Error::Media(_)
            | Error::MessageTooBig { .. }
            | Error::Io(_)
            | Error::Internal(_) => rtmp::PUBLISH_FAILED,
        }
    }

    /// The SRT rejection code for a refused caller: 2000 + the HTTP status
    /// on the wire (libsrt's `SRT_REJX_*`: 2401 unauthorized, 2403
    /// forbidden, 2409 conflict, …).
    pub fn srt_reject_code(&self) -> i32 {
        crate::proto::code::srt::PREDEFINED + i32::from(self.http_status())
    }

    /// The line a raw TCP publisher reads before the relay closes:
    /// `ERROR <HTTP status> <message>`.
    pub fn tcp_line(&self) -> String {
        format!("ERROR {} {self}\n", self.http_status())
    }
}

/// Why a client was refused or cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Reason {
    /// `max_streams` reached.
    Streams = 0,
    /// `max_viewers_per_stream` reached.
    ViewersPerStream,
    /// `max_viewers` reached.
    Viewers,
    /// `max_connections_per_ip` reached.
    ConnectionsPerIp,
    /// A publisher over `max_ingest_bitrate`.
    IngestBitrate,
    /// A box over `max_box_size`.
    BoxSize,
    /// A WebSocket message over `max_ws_message`.
    WsMessage,
    /// A publisher silent for `idle_timeout`.
    PublisherIdle,
    /// Headers (or the TLS handshake) not in within `header_read_timeout`.
    HeaderTimeout,
    /// A publisher without a key where one is needed.
    MissingKey,
    /// A publisher with a wrong key.
    WrongKey,
    /// A viewer without a valid signed URL where one is needed.
    BadSignature,
    /// An `on_publish` / `on_play` callback said no (or failed, with deny as default).
    CallbackDenied,
    /// A connection's writes made no progress for `write_stall_timeout`.
    WriteStalled,
    /// The streams together hold `memory_budget` bytes.
    MemoryBudget,
    /// `max_sessions_per_ip` reached (Socket.IO / Engine.IO sessions).
    SessionsPerIp,
}

impl Reason {
    /// Number of reasons.
    pub const COUNT: usize = 16;
    /// Every reason.
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::Streams,
        Reason::ViewersPerStream,
        Reason::Viewers,
        Reason::ConnectionsPerIp,
        Reason::IngestBitrate,
        Reason::BoxSize,
        Reason::WsMessage,
        Reason::PublisherIdle,
        Reason::HeaderTimeout,
        Reason::MissingKey,
        Reason::WrongKey,
        Reason::BadSignature,
        Reason::CallbackDenied,
        Reason::WriteStalled,
        Reason::MemoryBudget,
        Reason::SessionsPerIp,
    ];

    /// Label for metrics (`reason="…"`).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Streams => "max_streams",
            Reason::ViewersPerStream => "max_viewers_per_stream",
            Reason::Viewers => "max_viewers",
            Reason::ConnectionsPerIp => "max_connections_per_ip",
            Reason::IngestBitrate => "max_ingest_bitrate",
            Reason::BoxSize => "max_box_size",
            Reason::WsMessage => "max_ws_message",
            Reason::PublisherIdle => "publisher_idle",
            Reason::HeaderTimeout => "header_read_timeout",
            Reason::MissingKey => "missing_key",
            Reason::WrongKey => "wrong_key",
            Reason::BadSignature => "bad_signature",
            Reason::CallbackDenied => "callback_denied",
            Reason::WriteStalled => "write_stalled",
            Reason::MemoryBudget => "memory_budget",
            Reason::SessionsPerIp => "max_sessions_per_ip",
        }
    }

    /// HTTP status of a refusal for this reason: 429 when this client asks
    /// too much, 503 when the relay is full, 408 for a silent publisher.
    /// (Key, signature, size and callback refusals have their own error
    /// variants; these are their counters only.)
    pub fn http_status(self) -> u16 {
        match self {
            Reason::ConnectionsPerIp | Reason::SessionsPerIp | Reason::IngestBitrate => 429,
            Reason::PublisherIdle | Reason::HeaderTimeout => 408,
            _ => 503,
        }
    }

    /// WebSocket close code of a refusal for this reason.
    pub fn ws_close_code(self) -> u16 {
        match self {
            Reason::PublisherIdle | Reason::HeaderTimeout => ws::POLICY,
            _ => ws::TRY_AGAIN,
        }
    }
}
