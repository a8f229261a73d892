//! The application layer: what every ingest and egress adapter shares — the
//! relay's state ([`AppState`]), the client's address ([`Peer`]), and an
//! [`Error`] as an HTTP response ([`error_response`]). Adapters import this,
//! never the server that routes to them. [`ws`]: the WebSocket handshake
//! and the closing handshake every hand-framed WebSocket adapter shares.

pub mod ws;

use crate::Error;
use crate::config::Config;
use crate::fanout::Registry;
use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Every stream.
    pub registry: Registry,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Cancelled on SIGINT/SIGTERM: every long-lived task watches it.
    pub shutdown: CancellationToken,
    /// Signed viewer URLs and callbacks.
    pub auth: Arc<crate::auth::Auth>,
    /// Limits and the refusal counters.
    pub limits: Arc<crate::limits::Limits>,
}

/// The client's address (from the accept loop); `None` when the router runs
/// without one (e.g. `oneshot` in tests).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

impl AppState {
    /// A viewer's `wait=` clamped to the configured maximum.
    pub fn wait_for(&self, wait: Option<f64>) -> Duration {
        wait.and_then(|w| Duration::try_from_secs_f64(w).ok())
            .unwrap_or(Duration::ZERO)
            .min(self.config.egress.max_wait)
    }
}

/// An error as an HTTP response: its status and a one-line JSON body.
pub fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (
        status,
        axum::Json(serde_json::json!({"error": e.to_string()})),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}
