//! Long polling and plain polling: `GET /live/{name}/poll?after=SEQ`.
//!
//! Answers at once with every fragment after SEQ still in the ring, or waits
//! (up to `timeout`, capped by config) for the next one; `wait=0` never waits.
//! Headers index the body (seqs, sizes, keyframes, arrival times, next
//! `after`, skips, init version) so a client can cut it back into fragments.
//! `GET /live/{name}/init.mp4` serves the current init segment.

use super::{Transport, WatchQuery};
use crate::app::{AppState, error_response};
use crate::fanout::{Event, ViewerStart};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::fmt::Write;
use std::time::Duration;

/// Most body bytes in one answer (more stays for the next poll): an answer
/// is a list of the stored fragments (shared `Bytes`, never copied), so what
/// a client that never reads holds is at most this much of the ring.
const MAX_BODY: usize = 4 << 20;

/// Serve one poll.
pub async fn serve(
    app: AppState,
    name: String,
    q: WatchQuery,
    peer: Option<std::net::SocketAddr>,
) -> Response {
    let cfg = &app.config.egress;
    let plain = q.wait == Some(0.0);
    let wait_stream = if plain {
        Duration::ZERO
    } else {
        app.wait_for(q.wait)
    };
    let timeout = q
        .timeout
        .and_then(|t| Duration::try_from_secs_f64(t).ok())
        .unwrap_or(cfg.long_poll_timeout)
        .min(cfg.long_poll_max);
    let after = q.resume_after(&app.registry, &name);
    let transport = if plain {
        Transport::Poll
    } else {
        Transport::LongPoll
    };
    let start = ViewerStart { after, transport };
    let mut viewer = match super::admit(&app, &name, &q, start, wait_stream, peer).await {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let stream = viewer.stream().clone();
    if let Some(peer) = peer {
        // A polling client counts as a viewer between its polls too (by its
        // connection: browsers keep one alive across polls).
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        peer.hash(&mut h);
        stream.stats().note_poller(h.finish(), transport);
    }
    let asked = std::time::Instant::now();
    let resumed = viewer.resumed();
    let mut batch = Batch::default();
    // A fresh cursor hands out the init segment first, and maybe publisher
    // news: neither is an answer to a long poll, which waits for a fragment
    // (or the end, or a change of publisher) until its timeout.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        while !batch.full {
            match viewer.try_next() {
                Some(ev) => batch.add(ev),
                None => break,
            }
        }
        if plain || batch.answers() {
            break;
        }
        tokio::select! {
            ev = tokio::time::timeout_at(deadline, viewer.next()) => match ev {
                Ok(ev) => batch.add(ev),
                Err(_) => break,
            },
            _ = app.shutdown.cancelled() => break,
        }
    }
    let next = batch.last_seq.or(after.filter(|_| batch.skipped == 0));
    let init_version = batch
        .init_version
        .or_else(|| stream.init().map(|i| i.version))
        .unwrap_or(0);
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut put = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put("x-relaycast-seqs", batch.seqs);
    put("x-relaycast-sizes", batch.sizes);
    put("x-relaycast-keyframes", batch.keyframes);
    put("x-relaycast-times", batch.times);
    // The `after` for the next poll; absent when the stream has no fragment yet.
    if let Some(n) = next.or(viewer.cursor().checked_sub(1)) {
        put("x-relaycast-next", n.to_string());
    }
    put("x-relaycast-skipped", batch.skipped.to_string());
    if after.is_some() {
        // 0: the `after` asked for is not in this stream (beyond its newest
        // fragment, or of another life of it): the answer starts afresh at
        // the newest keyframe, not where the client left off.
        put("x-relaycast-resumed", u8::from(resumed).to_string());
    }
    put("x-relaycast-init-version", init_version.to_string());
    put("x-relaycast-epoch", stream.epoch().to_string());
    put(
        "x-relaycast-live",
        if stream.is_live() { "1" } else { "0" }.to_string(),
    );
    if batch.ended {
        put("x-relaycast-end", "1".to_string());
    }
    // Delivery latency is what a live fragment waited for its viewer: a
    // fragment that was already stored when the poll came (catching up
    // from an old `after`) is not measured.
    let now = std::time::Instant::now();
    for &arrived in batch.arrived.iter().filter(|&&a| a >= asked) {
        viewer.wrote(arrived, now);
    }
    (StatusCode::OK, h, super::chunks_body(batch.body)).into_response()
}

#[derive(Default)]
struct Batch {
    /// The stored fragments, in order (the body is their concatenation).
    body: Vec<Bytes>,
    /// Their total size.
    len: usize,
    seqs: String,
    sizes: String,
    keyframes: String,
    times: String,
    last_seq: Option<u64>,
    skipped: u64,
    init_version: Option<u64>,
    full: bool,
    ended: bool,
    /// Arrival times of the fragments in `body` (delivery latency).
    arrived: Vec<std::time::Instant>,
    publisher_changed: bool,
}

impl Batch {
    /// Something a long poll should answer with now.
    fn answers(&self) -> bool {
        self.last_seq.is_some() || self.ended || self.publisher_changed
    }

    fn add(&mut self, ev: Event) {
        match ev {
            Event::Fragment(c) => {
                // Never mix fragments of two init versions in one answer.
                if self.init_version.is_some_and(|v| v != c.init.version) {
                    self.full = true;
                    return;
                }
                self.init_version = Some(c.init.version);
                let sep = if self.seqs.is_empty() { "" } else { "," };
                let _ = write!(self.seqs, "{sep}{}", c.seq);
                let _ = write!(self.sizes, "{sep}{}", c.bytes.len());
                let _ = write!(self.times, "{sep}{}", c.t_ms);
                if c.keyframe {
                    let sep = if self.keyframes.is_empty() { "" } else { "," };
                    let _ = write!(self.keyframes, "{sep}{}", c.seq);
                }
                self.len += c.bytes.len();
                self.body.push(c.bytes.clone());
                self.arrived.push(c.arrived);
                self.last_seq = Some(c.seq);
                self.full = self.len >= MAX_BODY;
            }
            Event::Skip { from, to, .. } => {
                if self.last_seq.is_some() {
                    // Keep the answer contiguous; the next poll reports the skip.
                    self.full = true;
                    return;
                }
                self.skipped += to.saturating_sub(from);
            }
            Event::Init(i) => {
                if self.init_version.is_some_and(|v| v != i.version) {
                    self.full = true;
                }
            }
            Event::Publisher(_) => self.publisher_changed = true,
            Event::End(_) => {
                self.ended = true;
                self.full = true;
            }
        }
    }
}

/// `GET /live/{name}/init.mp4`.
pub async fn init(
    app: AppState,
    name: String,
    q: WatchQuery,
    peer: Option<std::net::SocketAddr>,
) -> Response {
    if let Err(e) = super::authorize(&app, &name, q.exp, q.sig.as_deref(), peer).await {
        return error_response(&e);
    }
    let stream = match app.registry.find(&name, app.wait_for(q.wait)).await {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let Some(init) = stream.init() else {
        return error_response(&crate::Error::NotFound(format!(
            "{name} (no init segment yet)"
        )));
    };
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-relaycast-init-version", init.version.into());
    h.insert("x-relaycast-epoch", stream.epoch().into());
    if let Ok(v) = HeaderValue::from_str(&init.init.codecs) {
        h.insert("x-relaycast-codecs", v);
    }
    if let Ok(v) = HeaderValue::from_str(&init.init.mime) {
        h.insert("x-relaycast-mime", v);
    }
    (StatusCode::OK, h, Bytes::clone(&init.init.bytes)).into_response()
}
