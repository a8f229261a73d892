//! relaycast: a live-streaming broadcast relay for fragmented MP4.
//!
//! A broadcaster opens **one** long-lived ingest connection and keeps pushing
//! an fMP4 (CMAF) byte stream; the relay cuts it into an init segment and
//! fragments, keeps the last groups in memory, and **pushes** every fragment
//! to every viewer over the connection the viewer opened once.
//!
//! The parts, in the order data flows through them:
//!
//! 1. [`ingest`]: one adapter per ingest transport (HTTP PUT/POST chunked,
//!    WebSocket, raw TCP, QUIC). Each ends in an [`ingest::IngestSession`]
//!    that pushes bytes into a splitter and the splitter's output into a
//!    [`fanout::Publisher`].
//! 2. [`media`]: the sans-IO fMP4 splitter: bytes in, [`media::Init`] and
//!    [`media::Fragment`] out, zero-copy.
//! 3. [`fanout`]: the core. A [`fanout::Registry`] of [`fanout::Stream`]s,
//!    each a bounded ring of recent fragments; publishers append, every
//!    viewer reads through its own cursor ([`fanout::Viewer`]); slow viewers
//!    skip to the newest keyframe, never slowing anyone else.
//! 4. [`egress`]: one adapter per viewer transport (WebSocket, HTTP
//!    streaming, long poll / poll, Socket.IO, QUIC), each starting from "a
//!    cursor on a stream".
//! 5. [`cascade`]: relays in a tree. An edge is a viewer of its origin over
//!    QUIC and a publisher into its own registry.
//!
//! Around them: [`config`] (one `Config`), [`server`] (the axum router, the
//! listeners and graceful shutdown), [`quic`] (the QUIC endpoint, TLS and
//! the `relaycast/1` protocol that QUIC ingest, egress and the cascade
//! speak), [`auth`] (publish keys, signed viewer URLs, callbacks),
//! [`limits`] (what is refused, counted by reason), [`tls`] (https/wss and
//! certificate reload), [`metrics`] (`/metrics`), [`logging`], [`client`]
//! (the `publish` / `watch` command-line clients), [`load`] (the load
//! generator) and [`player`] (the embedded browser player).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod cascade;
pub mod client;
pub mod config;
pub mod egress;
mod error;
pub mod fanout;
pub mod ingest;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod player;
pub mod proto;
pub mod quic;
pub mod server;
pub mod tls;

pub use error::Error;
/// The sans-IO media layer (its own crate, `relaycast-media`).
pub use relaycast_media as media;
