//! `ingest`: publisher transports. Each is a thin adapter that ends in
//! [`IngestSession::push`]: "push these bytes" into the splitter, whose
//! init segments and fragments go to the stream's [`Publisher`].
//!
//! - [`http`]: `PUT`/`POST /publish/{name}` with a chunked (or sized) body;
//! - [`websocket`]: `GET /publish/{name}` upgraded, binary messages;
//! - [`tcp`]: `--tcp-ingest PORT=NAME`, raw bytes;
//! - [`quic`]: `relaycast/1` publish sessions over QUIC;
//! - [`demo`]: the built-in looping `demo` stream.

pub mod demo;
pub mod http;
pub mod quic;
pub mod tcp;
pub mod websocket;

use crate::Error;
use crate::config::IngestConfig;
use crate::fanout::Publisher;
use crate::media::{Item, Splitter, SplitterConfig};
use bytes::Bytes;
use serde::Serialize;
use std::time::Instant;
use subtle::ConstantTimeEq;

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
        }
    }

    /// Push the next bytes of the stream; publishes every complete item.
    pub fn push(&mut self, data: Bytes) -> Result<(), Error> {
        self.bytes += data.len() as u64;
        self.splitter.push_bytes(data);
        while let Some(item) = self.splitter.next_item()? {
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

/// Check a publisher's key for `name`: 401 when one is required and none was
/// given, 403 when it is wrong. Constant-time comparison.
pub fn authorize(config: &IngestConfig, name: &str, given: Option<&str>) -> Result<(), Error> {
    let Some(want) = config.key_for(name) else {
        return Ok(());
    };
    match given {
        None => Err(Error::Unauthorized(format!(
            "publishing {name:?} needs a key (?key= or Authorization: Bearer)"
        ))),
        Some(k) if bool::from(k.as_bytes().ct_eq(want.as_bytes())) => Ok(()),
        Some(_) => Err(Error::Forbidden(format!("wrong publish key for {name:?}"))),
    }
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
