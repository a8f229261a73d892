//! `ingest`: publisher transports. Each is a thin adapter that ends in
//! [`IngestSession::push`]: "push these bytes" into the splitter, whose
//! init segments and fragments go to the stream's [`Publisher`].
//!
//! - [`http`]: `PUT`/`POST /publish/{name}` with a chunked (or sized) body;
//! - [`websocket`]: `GET /publish/{name}` upgraded, binary messages;
//! - [`tcp`]: `--tcp-ingest PORT=NAME`, raw bytes;
//! - [`quic`]: `relaycast/1` publish sessions over QUIC;
//! - [`rtmp`]: RTMP/RTMPS (`--rtmp`, `--rtmps`), FLV remuxed to CMAF;
//! - [`srt`]: SRT (`--srt`), MPEG-TS remuxed to CMAF;
//! - [`whip`]: WHIP (`POST /whip/{name}`, media on `--webrtc`), WebRTC
//!   H.264/Opus remuxed to CMAF;
//! - [`demo`]: the built-in looping `demo` stream.

pub mod demo;
pub mod http;
pub mod quic;
pub mod rtmp;
pub mod srt;
pub mod tcp;
pub mod websocket;
pub mod whip;

use crate::Error;
use crate::app::AppState;
use crate::config::IngestConfig;
use crate::fanout::{Ingest, Publisher, StreamName};
use crate::limits::{Bucket, Reason, Refused};
use crate::media::{Item, Splitter, SplitterConfig};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What a finished publish did (the HTTP publisher's response body).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Stream name.
    pub stream: String,
    /// Fragments published.
    pub fragments: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Init segments received.
    pub inits: u64,
    /// Seconds the publish lasted.
    pub duration_s: f64,
    /// Why it ended, when it was an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One publisher connection: splitter in front of a [`Publisher`].
#[derive(Debug)]
pub struct IngestSession {
    splitter: Splitter,
    publisher: Publisher,
    fragments: u64,
    bytes: u64,
    inits: u64,
    started: Instant,
    /// The bitrate budget, when limited.
    bucket: Option<Bucket>,
    /// Where box-size refusals are counted.
    refused: Option<Arc<Refused>>,
}

impl IngestSession {
    /// Start a session for `publisher`.
    pub fn new(publisher: Publisher, config: &IngestConfig) -> Self {
        IngestSession {
            splitter: Splitter::new(SplitterConfig {
                max_box_size: config.max_box_size,
            }),
            publisher,
            fragments: 0,
            bytes: 0,
            inits: 0,
            started: Instant::now(),
            bucket: None,
            refused: None,
        }
    }

    /// Push the next bytes of the stream; publishes every complete item.
    pub fn push(&mut self, data: Bytes) -> Result<(), Error> {
        self.bytes += data.len() as u64;
        self.publisher.touch();
        if let Some(b) = &mut self.bucket {
            b.take(data.len())?;
        }
        self.splitter.push_bytes(data);
        loop {
            let item = match self.splitter.next_item() {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    let e = Error::from(e);
                    if let Some(r) = &self.refused {
                        r.note_ingest_error(&e);
                    }
                    return Err(e);
                }
            };
            match item {
                Item::Init(init) => {
                    self.inits += 1;
                    self.publisher.push_init(init)?;
                }
                Item::Fragment(frag) => {
                    self.fragments += 1;
                    self.publisher.push_fragment(frag)?;
                }
            }
        }
        Ok(())
    }

    /// The stream ended: fail if it stopped inside a box.
    pub fn finish(&mut self) -> Result<(), Error> {
        self.splitter.finish()?;
        Ok(())
    }

    /// The one ingest loop every transport runs: push each piece `source`
    /// yields until it ends (then [`finish`](Self::finish)), fails, stays
    /// silent for the configured `idle_timeout` (refused as
    /// [`Reason::PublisherIdle`], counted), or the relay shuts down. The
    /// transport adapts its socket into `source` and keeps only what is its
    /// own: admission answers, summaries, close codes.
    pub async fn run<S>(&mut self, source: &mut S, app: &AppState) -> Result<(), Error>
    where
        S: Stream<Item = Result<Bytes, Error>> + Unpin,
    {
        let idle = app.config.ingest.idle_timeout;
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(idle, source.next()) => n,
                _ = app.shutdown.cancelled() => return Err(Error::Shutdown),
            };
            match next {
                Err(_) => {
                    return Err(app
                        .limits
                        .refused
                        .refuse(Reason::PublisherIdle, format!("no data for {idle:?}")));
                }
                Ok(None) => return self.finish(),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(data))) => self.push(data)?,
            }
        }
    }

    /// What the session did so far.
    pub fn summary(&self, error: Option<&Error>) -> Summary {
        Summary {
            stream: self.publisher.stream().name().to_string(),
            fragments: self.fragments,
            bytes: self.bytes,
            inits: self.inits,
            duration_s: self.started.elapsed().as_secs_f64(),
            error: error.map(|e| e.to_string()),
        }
    }
}

/// Admission of a publisher, the one check every ingest transport (HTTP,
/// WebSocket, raw TCP, QUIC) makes before it publishes `name`, in this
/// order: a valid name (400), the publish key (401 missing / 403 wrong,
/// constant-time), room for a new stream (`max_streams`, 503), and the
/// `on_publish` callback (403). `key` is what the client presented; `peer`
/// its address, for the callback. Refusals are counted by reason.
pub async fn authorize(
    app: &AppState,
    name: &str,
    key: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<(), Error> {
    let name = &*StreamName::parse(name)?;
    let refused = &app.limits.refused;
    crate::auth::check_key(app.config.ingest.key_for(name), refused, name, key)?;
    app.limits.check_stream(&app.registry, name)?;
    app.auth
        .callback(refused, crate::auth::Action::Publish, name, peer, key)
        .await
}

/// [`authorize`], then attach a publisher to `name` (counted under
/// `transport`) and start an
/// [`IngestSession`] for it with the relay's ingest limits (box size,
/// bitrate).
pub async fn admit(
    app: &AppState,
    transport: Ingest,
    name: &str,
    key: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<IngestSession, Error> {
    authorize(app, name, key, peer).await?;
    attach(app, transport, name)
}

/// Attach a publisher to `name` (already [`authorize`]d) and start an
/// [`IngestSession`] for it with the relay's ingest limits; counted under
/// `transport`. SRT authorizes, then completes its handshake (which proves
/// the passphrase), then attaches: a caller with a wrong passphrase never
/// touches the stream.
pub fn attach(app: &AppState, transport: Ingest, name: &str) -> Result<IngestSession, Error> {
    let publisher = app.registry.publish(name)?;
    app.registry.totals().publisher_admitted(transport);
    let mut session = IngestSession::new(publisher, &app.config.ingest);
    session.bucket = app.limits.ingest_bucket();
    session.refused = Some(app.limits.refused.clone());
    Ok(session)
}

/// The key from `?key=` or `Authorization: Bearer …`.
pub fn key_from(query_key: Option<&str>, headers: &axum::http::HeaderMap) -> Option<String> {
    query_key.map(str::to_string).or_else(|| {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().to_string())
    })
}
