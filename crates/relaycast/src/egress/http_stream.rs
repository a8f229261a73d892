//! HTTP streaming viewers: `GET /live/{name}.mp4`, one never-ending
//! `video/mp4` response (init, then fragments from the newest keyframe).
//! Plays as it is in ffplay, VLC, mpv and GStreamer. With `?meta=1` every
//! control message travels in-band in a top-level `free` box.
//!
//! Over plain HTTP/1.1 the server takes such a request before hyper sees it
//! (`server::stream_h1`, with a [`TakeOver`]): the viewer is then served
//! like a WebSocket viewer, by a fan-out writer once it has caught up
//! (`egress::websocket::spawn_http_stream`), with the body chunked by hand.
//! Otherwise (TLS, HTTP/2, HTTP/1.0) hyper writes the body below, polled
//! by one task per viewer.

use super::{Transport, WatchQuery, event_parts, hello, meta_box, payload};
use crate::app::AppState;
use crate::fanout::{Event, Viewer, ViewerStart};
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The slot in which [`serve`] leaves an admitted viewer for the server's
/// own HTTP/1.1 path to serve (a request extension; see the module).
#[derive(Clone, Default)]
pub struct TakeOver(Arc<Mutex<Option<Taken>>>);

/// An admitted viewer left in a [`TakeOver`].
pub struct Taken {
    /// The viewer, at the start of its session.
    pub viewer: Box<Viewer>,
    /// `?meta=1`: control messages in `free` boxes.
    pub meta: bool,
    /// The session's span.
    pub span: tracing::Span,
}

impl TakeOver {
    /// The viewer the handler left here, if it admitted one.
    pub fn take(&self) -> Option<Taken> {
        self.0.lock().ok().and_then(|mut t| t.take())
    }

    fn put(&self, t: Taken) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(t);
        }
    }
}

/// Serve one viewer (`take_over`: leave it there, and answer with the
/// response's head only).
pub async fn serve(
    app: AppState,
    name: String,
    q: WatchQuery,
    peer: Option<std::net::SocketAddr>,
    take_over: Option<TakeOver>,
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
    let first_seq = viewer.cursor();
    let mut head = Response::new(Body::empty());
    *head.status_mut() = StatusCode::OK;
    let h = head.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-relaycast-epoch", stream.epoch().into());
    h.insert("x-relaycast-seq", first_seq.into());
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Some(t) = take_over {
        t.put(Taken {
            viewer: Box::new(viewer),
            meta,
            span: tracing::Span::current(),
        });
        return head;
    }
    let mut queue = VecDeque::new();
    if meta {
        queue.push_back((meta_box(hello(&viewer).to_json().as_bytes()), None));
    }
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
    *head.body_mut() = Body::from_stream(body);
    head
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
