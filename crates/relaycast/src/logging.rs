//! Logging: `tracing` to stderr as text or JSON, and the spans that give
//! every line of a publisher's or a viewer's session its stream name, peer
//! address and transport.
//!
//! The spans are made once per request by [`session_span`] (an axum
//! middleware on the router): `ingest{stream, peer, transport}` for
//! `/publish/…`, `viewer{stream, peer, transport}` for `/live/…`. Work
//! that outlives the request (an upgraded WebSocket) carries the span on with
//! `Span::current()` captured in the handler; the raw TCP ingest makes its
//! own `ingest` span per connection.

use crate::config::{LogConfig, LogFormat};
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber (stderr). `RUST_LOG` overrides
/// `config.filter`. Fails when a subscriber is already installed.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .map_err(|e| anyhow::anyhow!("log filter {:?}: {e}", config.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal, not in files, journald or `docker logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let r = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    r.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

/// What a request path is, for its span: (span kind, stream name).
fn classify(path: &str) -> Option<(&'static str, &str)> {
    if let Some(rest) = path.strip_prefix("/publish/") {
        return Some(("ingest", rest));
    }
    let rest = path.strip_prefix("/live/")?;
    let name = rest.split('/').next().unwrap_or(rest);
    Some(("viewer", name.strip_suffix(".mp4").unwrap_or(name)))
}

/// The transport label of a request to `/publish/…` or `/live/…`.
fn transport(req: &Request) -> &'static str {
    let upgrade = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let path = req.uri().path();
    if upgrade {
        "ws"
    } else if path.starts_with("/publish/") {
        "http"
    } else if path.ends_with(".mp4") && !path.ends_with("/init.mp4") {
        "stream"
    } else if path.ends_with("/poll") {
        "poll"
    } else {
        "http"
    }
}

/// Axum middleware: run publish and watch requests inside an
/// `ingest`/`viewer` span with the stream name and the peer address.
pub async fn session_span(req: Request, next: Next) -> Response {
    let Some((kind, stream)) = classify(req.uri().path()) else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_string(), |c| c.0.to_string());
    let transport = transport(&req);
    let span = if kind == "ingest" {
        tracing::info_span!("ingest", stream = %stream, peer = %peer, transport)
    } else {
        tracing::info_span!("viewer", stream = %stream, peer = %peer, transport)
    };
    next.run(req).instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified() {
        assert_eq!(classify("/publish/cam"), Some(("ingest", "cam")));
        assert_eq!(classify("/live/cam"), Some(("viewer", "cam")));
        assert_eq!(classify("/live/cam.mp4"), Some(("viewer", "cam")));
        assert_eq!(classify("/live/cam/poll"), Some(("viewer", "cam")));
        assert_eq!(classify("/metrics"), None);
    }
}
