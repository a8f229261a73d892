//! HTTP ingest: `PUT` or `POST /publish/{name}`, the body is the fMP4 stream
//! for as long as the broadcast lasts (chunked or sized). The relay reads it
//! incrementally and answers when it ends or fails, with a JSON summary.

use super::{IngestSession, authorize, key_from};
use crate::server::{AppState, error_response};
use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

/// Serve one publisher.
pub async fn serve(
    app: AppState,
    name: String,
    key: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let cfg = &app.config.ingest;
    if !crate::fanout::valid_name(&name) {
        return error_response(&crate::Error::BadName(name));
    }
    if let Err(e) = authorize(cfg, &name, key_from(key.as_deref(), &headers).as_deref()) {
        return error_response(&e);
    }
    let publisher = match app.registry.publish(&name) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    tracing::info!(stream = %name, "HTTP publisher connected");
    let mut session = IngestSession::new(publisher, cfg);
    let mut body = body.into_data_stream();
    let result = loop {
        let next = tokio::select! {
            n = tokio::time::timeout(cfg.idle_timeout, body.next()) => n,
            _ = app.shutdown.cancelled() => break Err(crate::Error::Shutdown),
        };
        match next {
            Err(_) => {
                break Err(crate::Error::BadRequest(format!(
                    "no data for {:?}",
                    cfg.idle_timeout
                )));
            }
            Ok(None) => break session.finish(),
            Ok(Some(Err(e))) => break Err(crate::Error::BadRequest(format!("body: {e}"))),
            Ok(Some(Ok(data))) => {
                if let Err(e) = session.push(data) {
                    break Err(e);
                }
            }
        }
    };
    let summary = session.summary(result.as_ref().err());
    drop(session);
    match result {
        Ok(()) => {
            tracing::info!(stream = %name, fragments = summary.fragments, "HTTP publisher finished");
            (StatusCode::OK, Json(summary)).into_response()
        }
        Err(e) => {
            tracing::warn!(stream = %name, error = %e, "HTTP publisher failed");
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(summary)).into_response()
        }
    }
}
