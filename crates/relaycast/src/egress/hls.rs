//! LL-HLS, HLS and DASH viewers: `GET /live/{name}/index.m3u8`,
//! `master.m3u8`, `manifest.mpd`, and the files they name, answered from the
//! stream's ring and its [`SegmentIndex`](crate::media::hls::SegmentIndex)
//! (kept by the fan-out core; the manifests are rendered by the sans-IO
//! `relaycast_media::hls`).
//!
//! Files, relative to the manifests (`{epoch}` is the stream's epoch, so a
//! URL never names other bytes after a restart; any HTTP cache may keep them):
//!
//! - `{epoch}/part/{seq}.m4s`: one stored fragment (an LL-HLS part), the
//!   stored `Bytes` as they are;
//! - `{epoch}/seg/{msn}.m4s`: a segment (a group), its fragments' `Bytes`
//!   one after another (no copy); the open segment (DASH's low-latency
//!   request) streams each fragment as it arrives;
//! - `{epoch}/init/{version}.mp4`: the init segment.
//!
//! Blocking requests (a playlist reload with `_HLS_msn`/`_HLS_part`, the
//! preload-hinted part, the next segment) wait on the stream's own change
//! notification, the one viewers wait on: no polling loop, no extra task.
//! They give up with 503 after three target durations (RFC 8216bis
//! §6.2.5.2); a request too far ahead is a 400 (playlists) or 404 (files).
//!
//! Admission is [`super::authorize`], as on every watch path; a signed
//! URL's `exp`/`sig` are repeated on every URI the manifests write, so the
//! files a player fetches carry the same signature.

use super::WatchQuery;
use crate::Error;
use crate::app::{AppState, error_response};
use crate::fanout::{Chunk, HlsRequest, Stream};
use crate::media::hls::{self, Blocking, Links, PlaylistError, PlaylistRequest, SegmentIndex};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Segments, parts and init segments never change under their URL.
const IMMUTABLE: &str = "public, max-age=86400, immutable";
/// A playlist without blocking directives changes with every part.
const SHORT: &str = "public, max-age=1";
/// How long a request waits for the first segment of a stream, whose
/// target duration (and so the RFC's bound) is not known yet.
const FIRST_SEGMENT_WAIT: Duration = Duration::from_secs(10);

/// Which manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manifest {
    /// `index.m3u8`: the LL-HLS media playlist.
    Media,
    /// `master.m3u8`: the multivariant playlist.
    Multivariant,
    /// `manifest.mpd`: the dynamic DASH MPD.
    Mpd,
}

/// Admission, then the stream (waiting `?wait=` for one not yet started)
/// and the guard that marks the request in progress (keep it until answered:
/// a cascade edge keeps pulling while HLS requests are in flight).
async fn open(
    app: &AppState,
    name: &str,
    q: &WatchQuery,
    peer: Option<SocketAddr>,
) -> Result<(Stream, HlsRequest), Error> {
    super::authorize(app, name, q.exp, q.sig.as_deref(), peer).await?;
    let stream = tokio::select! {
        s = app.registry.find(name, app.wait_for(q.wait)) => s?,
        _ = app.shutdown.cancelled() => return Err(Error::Shutdown),
    };
    let request = stream.hls_request();
    Ok((stream, request))
}

/// How this stream's manifests write URIs: the epoch before, a signed URL's
/// query after.
fn links(stream: &Stream, q: &WatchQuery) -> Links {
    let query = match (q.exp, q.sig.as_deref()) {
        (Some(exp), Some(sig)) => {
            let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
            format!("?exp={exp}&sig={sig}")
        }
        _ => String::new(),
    };
    Links {
        prefix: format!("{}/", stream.epoch()),
        query,
    }
}

/// The RFC's bound for a blocking request: three target durations, or
/// [`FIRST_SEGMENT_WAIT`] before the first segment completed.
fn blocking_deadline(stream: &Stream) -> Instant {
    let wait = stream
        .hls(|ix| ix.targets())
        .map_or(FIRST_SEGMENT_WAIT, |t| {
            Duration::from_millis(t.blocking_timeout_ms())
        });
    Instant::now() + wait
}

/// Wait until `check` decides (`Some`), on the stream's change notification;
/// 503 when `deadline` passes first.
async fn wait_until<T>(
    app: &AppState,
    stream: &Stream,
    deadline: Instant,
    what: &str,
    mut check: impl FnMut(&Stream) -> Option<Result<T, Error>>,
) -> Result<T, Error> {
    let mut rx = stream.changes();
    loop {
        rx.borrow_and_update();
        if let Some(r) = check(stream) {
            return r;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                return Err(Error::NotFound(format!("{} (stream ended)", stream.name())));
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::Unavailable(format!(
                    "{what} did not come within the blocking timeout"
                )));
            }
            _ = app.shutdown.cancelled() => return Err(Error::Shutdown),
        }
    }
}

fn playlist_error(e: PlaylistError) -> Option<Error> {
    match e {
        PlaylistError::BadDirective => Some(Error::BadRequest(
            "_HLS_msn and _HLS_part must be numbers, _HLS_part needs _HLS_msn, _HLS_skip is YES or v2"
                .into(),
        )),
        PlaylistError::TooFarAhead => Some(Error::BadRequest(
            "_HLS_msn/_HLS_part is too far ahead of the playlist (RFC 8216bis 6.2.5.2)".into(),
        )),
        // Not ready yet: hold the request (the caller's deadline answers 503).
        PlaylistError::NotReady => None,
    }
}

/// Peak and average bit rate of the window's complete segments, bits/s.
fn bandwidth(ix: &SegmentIndex) -> (u64, u64) {
    let (mut peak, mut bytes, mut us) = (0u64, 0u64, 0u64);
    for s in ix.segments().iter().filter(|s| s.complete) {
        let d = s.dur_us().max(1);
        let b = s.bytes_len() as u64;
        peak = peak.max(b.saturating_mul(8_000_000) / d);
        bytes = bytes.saturating_add(b);
        us = us.saturating_add(d);
    }
    (peak, bytes.saturating_mul(8_000_000) / us.max(1))
}

/// `GET /live/{name}/index.m3u8`, `master.m3u8`, `manifest.mpd`.
pub async fn manifest(
    app: AppState,
    name: String,
    which: Manifest,
    q: WatchQuery,
    raw_query: Option<String>,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
) -> Response {
    match manifest_inner(&app, &name, which, &q, raw_query.as_deref(), &headers, peer).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn manifest_inner(
    app: &AppState,
    name: &str,
    which: Manifest,
    q: &WatchQuery,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Response, Error> {
    // Only the media playlist takes directives; the others ignore the query.
    let req = match which {
        Manifest::Media => PlaylistRequest::from_query(raw_query.unwrap_or(""))
            .map_err(|e| playlist_error(e).unwrap_or(Error::BadRequest(String::new())))?,
        _ => PlaylistRequest::default(),
    };
    let (stream, _request) = open(app, name, q, peer).await?;
    let links = links(&stream, q);
    let deadline = blocking_deadline(&stream);
    let (body, content_type) = match which {
        Manifest::Media => {
            let body = wait_until(app, &stream, deadline, "the playlist", |s| {
                s.hls(|ix| match hls::blocking_request(ix, &req) {
                    Blocking::Ready => match hls::media_playlist(ix, &req, &links) {
                        Ok(text) => Some(Ok(text)),
                        Err(e) => playlist_error(e).map(Err),
                    },
                    Blocking::Wait { .. } => None,
                    Blocking::Reject(e) => playlist_error(e).map(Err),
                })
            })
            .await?;
            (body, "application/vnd.apple.mpegurl")
        }
        Manifest::Multivariant => {
            let codecs = wait_until(app, &stream, deadline, "the first segment", |s| {
                let init = s.init()?;
                s.hls(|ix| ix.targets())?;
                Some(Ok(init.init.codecs.clone()))
            })
            .await?;
            let (peak, _) = stream.hls(bandwidth);
            let uri = format!("index.m3u8{}", links.query);
            let body = hls::multivariant(&[hls::Variant {
                codecs: &codecs,
                bandwidth: peak,
                resolution: None,
                uri: &uri,
            }]);
            (body, "application/vnd.apple.mpegurl")
        }
        Manifest::Mpd => {
            let body = wait_until(app, &stream, deadline, "the first segment", |s| {
                let init = s.init()?;
                s.hls(|ix| {
                    let (peak, _) = bandwidth(ix);
                    hls::mpd(
                        ix,
                        &hls::MpdParams {
                            now_ms: crate::fanout::unix_ms(),
                            availability_start_ms: s.epoch(),
                            codecs: &init.init.codecs,
                            bandwidth: peak,
                            resolution: None,
                            time_url: TIME_PATH,
                            links: &links,
                        },
                    )
                })
                .map(Ok)
            })
            .await?;
            (body, "application/dash+xml")
        }
    };
    // A blocking answer stays true for its URL (the playlist holds at least
    // what was asked for): caches may keep it for a while and answer every
    // player asking the same; a plain one changes with every part.
    let cache = match (which, req.msn, stream.hls(|ix| ix.targets())) {
        (Manifest::Media, Some(_), Some(t)) => {
            format!("public, max-age={}", t.target_duration_s.saturating_mul(6))
        }
        _ => SHORT.to_string(),
    };
    let modified = stream.hls(|ix| {
        ix.segments()
            .back()
            .and_then(|s| s.parts.last())
            .map(|p| p.t_ms)
    });
    Ok(respond(
        headers,
        Bytes::from(body),
        content_type,
        &cache,
        &etag_of_body,
        modified,
    ))
}

/// `GET /api/time`: the relay's clock (ISO 8601), DASH's `UTCTiming`
/// source and what tests measure the delay behind live against.
pub const TIME_PATH: &str = "/api/time";

/// The answer to [`TIME_PATH`].
pub fn clock() -> Response {
    let mut r = hls::iso8601(crate::fanout::unix_ms()).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn etag_of_body(body: &Bytes) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

/// A 200 (or 304 when `If-None-Match` names the same entity) with the
/// caching headers.
fn respond(
    req_headers: &HeaderMap,
    body: Bytes,
    content_type: &'static str,
    cache: &str,
    etag: &dyn Fn(&Bytes) -> String,
    modified_ms: Option<u64>,
) -> Response {
    let tag = etag(&body);
    let not_modified = req_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut r = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    file_headers(r.headers_mut(), content_type, cache, &tag, modified_ms);
    r
}

fn file_headers(
    h: &mut HeaderMap,
    content_type: &'static str,
    cache: &str,
    etag: &str,
    modified_ms: Option<u64>,
) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Some(ms) = modified_ms
        && let Ok(v) = HeaderValue::from_str(&hls::http_date(ms))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
}

/// What a file URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum File {
    Part(u64),
    Segment(u64),
    Init(u64),
}

fn parse_file(kind: &str, file: &str) -> Option<File> {
    let n = |ext: &str| file.strip_suffix(ext)?.parse::<u64>().ok();
    match kind {
        "part" => n(".m4s").map(File::Part),
        "seg" => n(".m4s").map(File::Segment),
        "init" => n(".mp4").map(File::Init),
        _ => None,
    }
}

/// `GET /live/{name}/{epoch}/{part|seg|init}/{n}.{m4s|mp4}`.
#[allow(clippy::too_many_arguments)]
pub async fn file(
    app: AppState,
    name: String,
    epoch: String,
    kind: String,
    file: String,
    q: WatchQuery,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
) -> Response {
    match file_inner(&app, &name, &epoch, &kind, &file, &q, &headers, peer).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

#[allow(clippy::too_many_arguments)]
async fn file_inner(
    app: &AppState,
    name: &str,
    epoch: &str,
    kind: &str,
    file: &str,
    q: &WatchQuery,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Response, Error> {
    let what = parse_file(kind, file).ok_or_else(|| {
        Error::NotFound(format!(
            "{name}/{epoch}/{kind}/{file} (files are part/N.m4s, seg/N.m4s, init/N.mp4)"
        ))
    })?;
    let (stream, _request) = open(app, name, q, peer).await?;
    if epoch.parse::<u64>().ok() != Some(stream.epoch()) {
        return Err(Error::NotFound(format!(
            "{name}/{epoch}/{kind}/{file}: the stream restarted (epoch now {}); reload the playlist",
            stream.epoch()
        )));
    }
    let tag = |n: &str| format!("\"{}-{kind}-{n}\"", stream.epoch());
    match what {
        File::Init(version) => {
            let init = stream.init_version(version).ok_or_else(|| {
                Error::NotFound(format!("{name}: init segment {version} is not in use"))
            })?;
            let tag = tag(&version.to_string());
            Ok(respond(
                headers,
                init.init.bytes.clone(),
                "video/mp4",
                IMMUTABLE,
                &|_| tag.clone(),
                None,
            ))
        }
        File::Part(seq) => {
            let chunk = part(app, &stream, seq).await?;
            let tag = tag(&seq.to_string());
            Ok(respond(
                headers,
                chunk.bytes.clone(),
                "video/mp4",
                IMMUTABLE,
                &|_| tag.clone(),
                Some(chunk.t_ms),
            ))
        }
        File::Segment(msn) => segment(app, &stream, msn, tag(&msn.to_string()), headers).await,
    }
}

/// The fragment `seq`, waiting for it when it is the next one or two (the
/// preload hint); 404 when it left the ring or is further ahead.
async fn part(app: &AppState, stream: &Stream, seq: u64) -> Result<Arc<Chunk>, Error> {
    let next = stream.next_seq();
    if seq > next.saturating_add(2) {
        return Err(Error::NotFound(format!(
            "{}: part {seq} is too far ahead (next is {next})",
            stream.name()
        )));
    }
    let deadline = blocking_deadline(stream);
    wait_until(app, stream, deadline, "the part", |s| {
        if seq < s.next_seq() {
            let c = s.fragments(seq, seq + 1).and_then(|mut v| v.pop());
            return Some(c.ok_or_else(|| {
                Error::NotFound(format!("{}: part {seq} left the window", s.name()))
            }));
        }
        if s.is_closed() {
            return Some(Err(Error::NotFound(format!(
                "{}: the stream ended before part {seq}",
                s.name()
            ))));
        }
        None
    })
    .await
}

/// Where a segment is: its fragments `first..end`, and whether more come.
#[derive(Clone, Copy, Debug)]
struct SegAt {
    first: u64,
    end: u64,
    complete: bool,
}

fn seg_at(ix: &SegmentIndex, msn: u64) -> Option<SegAt> {
    ix.segment(msn).map(|s| SegAt {
        first: s.first_seq(),
        end: s.end_seq(),
        complete: s.complete,
    })
}

/// Segment `msn`: whole (with a length) when complete; streamed part by part
/// while it is still open (DASH's `availabilityTimeOffset` asks for it
/// early); waited for when it is the next one.
async fn segment(
    app: &AppState,
    stream: &Stream,
    msn: u64,
    tag: String,
    headers: &HeaderMap,
) -> Result<Response, Error> {
    let newest = stream.hls(|ix| ix.segments().back().map(|s| s.msn));
    let ahead = match newest {
        Some(n) => msn > n.saturating_add(1),
        None => msn > 1,
    };
    if ahead {
        return Err(Error::NotFound(format!(
            "{}: segment {msn} is too far ahead",
            stream.name()
        )));
    }
    let deadline = blocking_deadline(stream);
    let at = wait_until(app, stream, deadline, "the segment", |s| {
        if let Some(at) = s.hls(|ix| seg_at(ix, msn)) {
            return Some(Ok(at));
        }
        let newest = s.hls(|ix| ix.segments().back().map(|s| s.msn));
        if newest.is_some_and(|n| n >= msn) || s.is_closed() {
            return Some(Err(Error::NotFound(format!(
                "{}: segment {msn} left the window",
                s.name()
            ))));
        }
        None
    })
    .await?;
    let modified = stream
        .fragments(at.end.saturating_sub(1), at.end)
        .and_then(|v| v.first().map(|c| c.t_ms));
    if at.complete {
        let chunks = stream.fragments(at.first, at.end).ok_or_else(|| {
            Error::NotFound(format!("{}: segment {msn} left the window", stream.name()))
        })?;
        let len: usize = chunks.iter().map(|c| c.bytes.len()).sum();
        let not_modified = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
        let mut r = if not_modified {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            // The stored Bytes, one after another: no copy.
            let parts = chunks
                .into_iter()
                .map(|c| Ok::<Bytes, std::io::Error>(c.bytes.clone()));
            let mut r = Body::from_stream(futures_util::stream::iter(parts)).into_response();
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            r
        };
        file_headers(r.headers_mut(), "video/mp4", IMMUTABLE, &tag, modified);
        return Ok(r);
    }
    // Open: stream each fragment as it arrives, until the segment completes.
    let state = OpenSegment {
        app: app.clone(),
        stream: stream.clone(),
        msn,
        next: at.first,
        rx: stream.changes(),
        queue: std::collections::VecDeque::new(),
        deadline,
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    });
    let mut r = Body::from_stream(body).into_response();
    file_headers(r.headers_mut(), "video/mp4", IMMUTABLE, &tag, None);
    Ok(r)
}

struct OpenSegment {
    app: AppState,
    stream: Stream,
    msn: u64,
    /// Seq of the next fragment to send.
    next: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    queue: std::collections::VecDeque<Bytes>,
    /// Pushed forward by each fragment: a publisher that stalls ends the body.
    deadline: Instant,
}

impl OpenSegment {
    /// The next piece of the body; `None` at its end; an error cuts the
    /// body short (the client sees an incomplete response, never a wrong one).
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Some(Ok(b));
            }
            self.rx.borrow_and_update();
            let Some(at) = self.stream.hls(|ix| seg_at(ix, self.msn)) else {
                return Some(Err(std::io::Error::other("segment left the window")));
            };
            if self.next < at.end {
                let Some(chunks) = self.stream.fragments(self.next, at.end) else {
                    return Some(Err(std::io::Error::other("segment left the window")));
                };
                self.queue.extend(chunks.iter().map(|c| c.bytes.clone()));
                self.next = at.end;
                self.deadline = blocking_deadline(&self.stream);
                continue;
            }
            if at.complete {
                return None;
            }
            tokio::select! {
                r = self.rx.changed() => if r.is_err() {
                    return Some(Err(std::io::Error::other("stream ended")));
                },
                _ = tokio::time::sleep_until(self.deadline) => {
                    return Some(Err(std::io::Error::other("publisher stalled")));
                }
                _ = self.app.shutdown.cancelled() => {
                    return Some(Err(std::io::Error::other("relay shutting down")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file("part", "12.m4s"), Some(File::Part(12)));
        assert_eq!(parse_file("seg", "0.m4s"), Some(File::Segment(0)));
        assert_eq!(parse_file("init", "3.mp4"), Some(File::Init(3)));
        assert_eq!(parse_file("init", "3.m4s"), None);
        assert_eq!(parse_file("seg", "-1.m4s"), None);
        assert_eq!(parse_file("x", "1.m4s"), None);
        assert_eq!(parse_file("part", "99999999999999999999999.m4s"), None);
    }
}
