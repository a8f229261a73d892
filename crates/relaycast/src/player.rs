//! The browser player (`player/`), embedded in the binary: `GET /` lists the
//! streams, `GET /watch/{name}` plays one, `GET /broadcast/{name}` publishes
//! from the camera. With `server.player_dir` set, files are read from disk
//! instead (for development).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use include_dir::{Dir, include_dir};
use std::path::Path;

static PLAYER: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../player");

fn content_type(file: &str) -> &'static str {
    match Path::new(file).extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// Serve `file` (a path inside `player/`).
pub async fn serve(dir: Option<&Path>, file: &str) -> Response {
    if file.split('/').any(|p| p == ".." || p.is_empty()) {
        return (StatusCode::BAD_REQUEST, "bad path").into_response();
    }
    let body: Option<Bytes> = match dir {
        Some(d) => tokio::fs::read(d.join(file)).await.ok().map(Bytes::from),
        None => PLAYER
            .get_file(file)
            .map(|f| Bytes::from_static(f.contents())),
    };
    match body {
        Some(b) => {
            let mut r = b.into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(file)),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => (StatusCode::NOT_FOUND, format!("no player file {file:?}")).into_response(),
    }
}
