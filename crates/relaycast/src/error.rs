//! The library's error type: who caused it, and what the client is told.

use crate::media::MediaError;

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
        reason: crate::limits::Reason,
        /// What was over it.
        detail: String,
    },
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
            Error::BadName(_) | Error::BadRequest(_) => 400,
            Error::NotFound(_) => 404,
            Error::AlreadyLive(_) | Error::TakenOver(_) => 409,
            Error::Media(m) => m.http_status(),
            Error::MessageTooBig { .. } => 413,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::Limit(_) => 503,
            Error::Refused { reason, .. } => reason.http_status(),
            Error::Shutdown => 503,
            Error::Io(_) => 400,
            Error::Internal(_) => 500,
        }
    }

    /// The WebSocket close code for this error.
    pub fn ws_close_code(&self) -> u16 {
        match self {
            Error::BadName(_) | Error::BadRequest(_) => 1008,
            Error::NotFound(_) => 4004,
            Error::AlreadyLive(_) | Error::TakenOver(_) => 4009,
            Error::Media(MediaError::BoxTooLarge { .. }) => 1009,
            Error::Media(_) => 1007,
            Error::MessageTooBig { .. } => 1009,
            Error::Unauthorized(_) | Error::Forbidden(_) => 1008,
            Error::Limit(_) => 1013,
            Error::Refused { reason, .. } => reason.ws_close_code(),
            Error::Shutdown => 1001,
            Error::Io(_) => 1002,
            Error::Internal(_) => 1011,
        }
    }
}
