//! HTTP streaming viewers: `GET /live/{name}.mp4`, one never-ending
//! `video/mp4` response (init, then fragments from the newest keyframe).
//! Plays as it is in ffplay, VLC, mpv and GStreamer. With `?meta=1` every
//! control message travels in-band in a top-level `free` box.

use super::{Transport, WatchQuery, event_parts, hello, meta_box, payload};
use crate::app::AppState;
use crate::fanout::{Event, Viewer, ViewerStart};
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Instant;

/// Serve one viewer.
pub async fn serve(
    app: AppState,
    name: String,
    q: WatchQuery,
    peer: Option<std::net::SocketAddr>,
) -> Response {
    let start = ViewerStart {
        after: q.resume_after(&app.registry, &name),
        transport: Transport::HttpStream,
    };
    let viewer = match super::admit(&app, &name, &q, start, app.wait_for(q.wait), peer).await {
        Ok(v) => v,
        Err(e) => return crate::app::error_response(&e),
    };
    let meta = q.meta.unwrap_or(0) != 0;
    let stream = viewer.stream().clone();
    let mut queue = VecDeque::new();
    if meta {
        queue.push_back((meta_box(hello(&viewer).to_json().as_bytes()), None));
    }
    let first_seq = viewer.cursor();
    // hyper polls the body outside the handler: the session span travels
    // with the body and is named where the body logs, rather than entered on
    // every poll (once per fragment per viewer, #15).
    let span = tracing::Span::current();
    let state = ViewerBody {
        viewer,
        app: app.clone(),
        meta,
        queue,
        done: false,
        _end: super::EndLog::in_span(span.clone()),
        span,
    };
    let body = futures_util::stream::unfold(state, move |mut s| async move {
        let next = s.next_bytes().await?;
        Some((Ok::<Bytes, std::io::Error>(next), s))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-relaycast-epoch", stream.epoch().into());
    h.insert("x-relaycast-seq", first_seq.into());
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

struct ViewerBody {
    viewer: Viewer,
    app: AppState,
    meta: bool,
    /// Bytes to write, with the arrival time of the fragment they are.
    queue: VecDeque<(Bytes, Option<Instant>)>,
    done: bool,
    /// Logs the end of the session when the body is dropped (ended, or the
    /// viewer went away).
    _end: super::EndLog,
    /// The session span, for what the body logs.
    span: tracing::Span,
}

impl ViewerBody {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        loop {
            if let Some((b, arrived)) = self.queue.pop_front() {
                // Handed to hyper, which pulls the body as the socket takes it.
                if let Some(arrived) = arrived {
                    self.viewer.wrote(arrived, Instant::now());
                }
                return Some(b);
            }
            if self.done {
                return None;
            }
            let ev = tokio::select! {
                ev = self.viewer.next() => ev,
                // End at a fragment boundary: we are between events here.
                _ = self.app.shutdown.cancelled() => return None,
            };
            self.push(&ev);
            while let Some(ev) = self.viewer.try_next() {
                self.push(&ev);
                if self.queue.len() >= 64 || self.done {
                    break;
                }
            }
        }
    }

    fn push(&mut self, ev: &Event) {
        if let Event::End(reason) = ev {
            self.done = true;
            if *reason == crate::fanout::EndReason::Lagging {
                tracing::info!(
                    parent: &self.span,
                    skips = self.viewer.total_skips(),
                    "viewer disconnected: lagging"
                );
            }
        }
        if self.meta {
            let (json, _) = event_parts(ev);
            self.queue.push_back((meta_box(&json), None));
        }
        if let Some(p) = payload(ev) {
            let arrived = match ev {
                Event::Fragment(c) => Some(c.arrived),
                _ => None,
            };
            self.queue.push_back((p.clone(), arrived));
        }
    }
}
