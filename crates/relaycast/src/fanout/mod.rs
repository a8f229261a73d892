//! `fanout`: the core. One [`Stream`] per name holds the current init segment
//! and a bounded ring of recent fragments; a [`Publisher`] appends to it and
//! every [`Viewer`] reads it through its own cursor.
//!
//! A fragment is stored once, as a [`Chunk`] whose payload is a
//! `bytes::Bytes`; handing it to 10,000 viewers is 10,000 reference-count
//! bumps, never a copy of the payload.
//!
//! # Joining
//!
//! A new viewer starts at the newest keyframe (the first fragment of the
//! newest group) that is in the ring, and receives the init segment that
//! belongs to that fragment first. With `after=SEQ` it resumes at `SEQ + 1`
//! when that fragment is still in the ring (or is the next one to arrive);
//! otherwise it starts at the newest keyframe and is told so with a skip.
//!
//! # Lagging
//!
//! The publisher is never blocked by a viewer: appending takes a short lock
//! and wakes the waiting viewers, nothing more. The ring is bounded by a
//! fragment count **and** a byte budget ([`RingConfig`]), but it never drops
//! a fragment of the two newest groups (unless the hard byte cap, four times
//! the budget, is reached by a stream that sends no keyframes). A viewer
//! whose cursor falls behind the oldest fragment in the ring — because its
//! connection is too slow to take the stream — is moved forward to the newest
//! keyframe (never into the middle of a group); the skip is counted on the
//! viewer and the stream, and reported to the viewer as [`Event::Skip`]. A
//! viewer that skips more than [`LagPolicy::max_skips`] times within
//! [`LagPolicy::window`] gets [`Event::End`] with [`EndReason::Lagging`] and is
//! disconnected by its transport. A viewer's memory is its cursor and the
//! chunks it is writing right now: it does not grow with the stream's length
//! or with the viewer's slowness.
//!
//! # Closing
//!
//! When the publisher drops (its connection ends or fails), the stream stays
//! for a grace period ([`FanoutConfig::grace`]). Viewers get
//! [`Event::Publisher`]`(false)` and stay connected; when a publisher returns
//! under the same name within the grace period, they get
//! [`Event::Publisher`]`(true)`, then the new init segment if it differs, and
//! continue with the same cursor: sequence numbers keep counting. When the
//! grace period ends without a publisher, the stream is closed: viewers get
//! [`Event::End`] with [`EndReason::PublisherGone`] and the registry entry is
//! removed. A second publisher on a live name is refused with
//! [`Error::AlreadyLive`](crate::Error::AlreadyLive) (HTTP 409) unless
//! takeover is configured, or the current publisher is stale (has pushed
//! nothing for [`FanoutConfig::stale_publisher`]), in which case the old
//! publisher is cut off.

mod registry;
pub mod stats;
mod stream;

pub use registry::{OpenFuture, Registry, StreamSource};
pub use stream::{
    Chunk, EndReason, Event, HlsRequest, InitEntry, OutTally, Publisher, Run, Source, Stream,
    StreamInfo, StreamStats, Viewer, ViewerStart,
};

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bounds of a stream's ring of recent fragments.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RingConfig {
    /// Most fragments kept (soft: the two newest groups are always kept).
    pub max_fragments: usize,
    /// Most payload bytes kept (soft, as above; hard cap at 4×).
    pub max_bytes: usize,
    /// Fragments younger than this (by arrival) are kept too (soft, as
    /// above). Once a stream is watched over HLS or DASH its ring also keeps
    /// whole segments worth three target durations (soft, as above), so that
    /// `index.m3u8` always lists that much (RFC 8216 §6.2.2).
    #[serde(with = "serde_secs")]
    pub min_duration: Duration,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            max_fragments: 600,
            max_bytes: 32 << 20,
            min_duration: Duration::ZERO,
        }
    }
}

/// When a slow viewer is disconnected rather than skipped again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagPolicy {
    /// Skips tolerated within `window`; one more disconnects the viewer.
    pub max_skips: u32,
    /// The sliding window over which skips are counted.
    #[serde(with = "serde_secs")]
    pub window: Duration,
}

impl Default for LagPolicy {
    fn default() -> Self {
        Self {
            max_skips: 3,
            window: Duration::from_secs(60),
        }
    }
}

/// Configuration of the fan-out core.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Ring bounds per stream.
    pub ring: RingConfig,
    /// Slow-viewer policy.
    pub lag: LagPolicy,
    /// How long viewers wait for a publisher that dropped.
    #[serde(with = "serde_secs")]
    pub grace: Duration,
    /// A second publisher on a live name takes over (instead of 409).
    pub takeover: bool,
    /// A publisher that has pushed nothing for this long is stale: a new
    /// publisher of the name takes over even without `takeover` (an encoder
    /// killed without a clean close, whose SRT or TCP connection is not
    /// yet known to be dead, must not lock its own reconnect out). Zero:
    /// never. Default 2 s.
    #[serde(with = "serde_secs")]
    pub stale_publisher: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            ring: RingConfig::default(),
            lag: LagPolicy::default(),
            grace: Duration::from_secs(10),
            takeover: false,
            stale_publisher: Duration::from_secs(2),
        }
    }
}

/// Durations in config files are given as seconds (a float).
pub mod serde_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Write a duration as seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Read a duration from seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// Milliseconds since the Unix epoch, the relay's wall clock for latency figures.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stream name that passed the one check, [`StreamName::parse`]: every
/// request's name is parsed once where the request enters (ingest and
/// egress admission), and what follows takes it as checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamName(String);

impl StreamName {
    /// The name, when it is `[A-Za-z0-9_-]{1,64}`; else 400
    /// [`Error::BadName`](crate::Error::BadName).
    pub fn parse(name: &str) -> Result<StreamName, crate::Error> {
        if valid_name(name) {
            Ok(StreamName(name.to_string()))
        } else {
            Err(crate::Error::BadName(name.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for StreamName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Stream names are `[A-Za-z0-9_-]{1,64}` (the rule [`StreamName::parse`]
/// applies; configuration checks use it to report every bad name at once).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests;

/// The viewer transports, for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Transport {
    /// WebSocket `/live/{name}`.
    WebSocket = 0,
    /// HTTP streaming `/live/{name}.mp4`.
    HttpStream = 1,
    /// Long polling.
    LongPoll = 2,
    /// Plain polling (`wait=0`).
    Poll = 3,
    /// Socket.IO.
    SocketIo = 4,
    /// QUIC.
    Quic = 5,
    /// An edge relay pulling the stream (cascade).
    Edge = 6,
}

impl Transport {
    /// Number of transports.
    pub const COUNT: usize = 7;
    /// Every transport.
    pub const ALL: [Transport; Self::COUNT] = [
        Transport::WebSocket,
        Transport::HttpStream,
        Transport::LongPoll,
        Transport::Poll,
        Transport::SocketIo,
        Transport::Quic,
        Transport::Edge,
    ];

    /// Label used in JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::HttpStream => "stream",
            Transport::LongPoll => "longpoll",
            Transport::Poll => "poll",
            Transport::SocketIo => "socketio",
            Transport::Quic => "quic",
            Transport::Edge => "edge",
        }
    }
}

/// The ingest (publisher) transports, for counters (`transport="…"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Ingest {
    /// HTTP `PUT`/`POST /publish/{name}`.
    Http = 0,
    /// WebSocket `/publish/{name}`.
    WebSocket = 1,
    /// Raw TCP (`--tcp-ingest`).
    Tcp = 2,
    /// QUIC (`relaycast/1`).
    Quic = 3,
    /// RTMP or RTMPS (FLV remuxed to CMAF).
    Rtmp = 4,
    /// SRT (MPEG-TS remuxed to CMAF).
    Srt = 5,
    /// WHIP (WebRTC: RTP H.264/Opus remuxed to CMAF).
    Whip = 6,
}

impl Ingest {
    /// Number of ingest transports.
    pub const COUNT: usize = 7;
    /// Every ingest transport.
    pub const ALL: [Ingest; Self::COUNT] = [
        Ingest::Http,
        Ingest::WebSocket,
        Ingest::Tcp,
        Ingest::Quic,
        Ingest::Rtmp,
        Ingest::Srt,
        Ingest::Whip,
    ];

    /// Label used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Ingest::Http => "http",
            Ingest::WebSocket => "ws",
            Ingest::Tcp => "tcp",
            Ingest::Quic => "quic",
            Ingest::Rtmp => "rtmp",
            Ingest::Srt => "srt",
            Ingest::Whip => "whip",
        }
    }
}
