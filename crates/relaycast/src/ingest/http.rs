//! HTTP ingest: `PUT` or `POST /publish/{name}`, the body is the fMP4 stream
//! for as long as the broadcast lasts (chunked or sized). The relay reads it
//! incrementally and answers when it ends or fails, with a JSON summary.

use super::{admit, key_from};
use crate::Error;
use crate::app::{AppState, error_response};
use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::net::SocketAddr;

/// Most of a refused publisher's body read (and dropped) while it gets its answer.
const LINGER_BYTES: usize = 4 << 20;
/// Longest time spent on that.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Read and drop the rest of a refused or failed publisher's body for a short
/// while (a lingering close, as nginx does): a client still sending its
/// stream then reads the answer instead of a connection reset that would hide it.
fn linger(mut body: axum::body::BodyDataStream) {
    tokio::spawn(async move {
        let mut read = 0;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while let Some(Ok(d)) = body.next().await {
                read += d.len();
                if read > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// Serve one publisher.
pub async fn serve(
    app: AppState,
    name: String,
    key: Option<String>,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
    body: Body,
) -> Response {
    let key = key_from(key.as_deref(), &headers);
    let mut session = match admit(
        &app,
        crate::fanout::Ingest::Http,
        &name,
        key.as_deref(),
        peer,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            linger(body.into_data_stream());
            return error_response(&e);
        }
    };
    tracing::info!(stream = %name, ?peer, "HTTP publisher connected");
    let mut body = body.into_data_stream();
    let result = {
        let mut source =
            (&mut body).map(|r| r.map_err(|e| Error::BadRequest(format!("body: {e}"))));
        session.run(&mut source, &app).await
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
            if !matches!(e, Error::Shutdown) {
                linger(body);
            }
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = (status, Json(summary)).into_response();
            if let Some(v) = crate::app::error_response(&e)
                .headers()
                .get(axum::http::header::RETRY_AFTER)
            {
                r.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v.clone());
            }
            r
        }
    }
}
