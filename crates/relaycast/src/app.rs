//! The application layer: what every ingest and egress adapter shares — the
//! relay's state ([`AppState`]), the client's address ([`Peer`]), and an
//! [`Error`] as an HTTP response ([`error_response`]). Adapters import this,
//! never the server that routes to them.

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

/// May this request read the operator endpoints (`/metrics`, the full
/// `/api/streams`)? With the operator token (`Authorization: Bearer`,
/// compared in constant time), or from loopback when that is allowed.
pub fn is_operator(
    app: &AppState,
    peer: Option<SocketAddr>,
    headers: &axum::http::HeaderMap,
) -> bool {
    let server = &app.config.server;
    if let Some(token) = &server.operator_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if given.is_some_and(|g| crate::auth::keys_equal(g, token)) {
            return true;
        }
    }
    // No peer: the router was called without a socket (in-process tests).
    server.operator_from_loopback && peer.is_none_or(|p| p.ip().is_loopback())
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

/// What an accept loop does when `accept` fails (out of file descriptors,
/// EMFILE/ENFILE, or a connection reset before it was accepted): back off
/// so the loop never spins, keep accepting afterwards, and log at most once
/// per [`AcceptErrors::LOG_EVERY`] with how many failures were not logged.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last_log: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// Least time between two log lines.
    pub const LOG_EVERY: Duration = Duration::from_secs(10);
    /// Pause after a failed accept.
    pub const BACKOFF: Duration = Duration::from_millis(100);

    /// Note a failed accept on `listener` (a name for the log), then pause.
    pub async fn failed(&mut self, listener: &str, e: &std::io::Error) {
        let now = std::time::Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Self::LOG_EVERY)
        {
            tracing::warn!(
                listener,
                error = %e,
                also_failed = self.unlogged,
                "accept failed (out of file descriptors?): backing off, still accepting"
            );
            self.last_log = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        tokio::time::sleep(Self::BACKOFF).await;
    }
}
