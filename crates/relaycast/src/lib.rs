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
//!    WebSocket, raw TCP, QUIC, RTMP/RTMPS, SRT and WHIP — the last three
//!    remuxed to CMAF by [`media::remux`]), each ending in the one loop
//!    [`ingest::IngestSession::run`] that pushes bytes into a splitter and
//!    the splitter's output into a [`fanout::Publisher`].
//! 2. [`media`] (the `relaycast-media` crate): the sans-IO fMP4 splitter:
//!    bytes in, [`media::Init`] and [`media::Fragment`] out, zero-copy.
//! 3. [`fanout`]: the core. A [`fanout::Registry`] of [`fanout::Stream`]s,
//!    each a bounded ring of recent fragments; publishers append, every
//!    viewer reads through its own cursor ([`fanout::Viewer`]); slow viewers
//!    skip to the newest keyframe, never slowing anyone else. It owns the
//!    [`fanout::Transport`] labels and the figures it counts
//!    ([`fanout::stats`]).
//! 4. [`egress`]: one adapter per viewer transport (WebSocket, HTTP
//!    streaming, long poll / poll, Socket.IO, QUIC), each starting from "a
//!    cursor on a stream"; and LL-HLS/DASH, a request per part or segment
//!    answered from the ring and the stream's segment index
//!    ([`media::hls`]).
//! 5. [`cascade`]: relays in a tree. An edge is a viewer of its origin over
//!    QUIC and a publisher into its own registry.
//!
//! The layers, lowest first (a module uses only layers below it; the test
//! `tests/layers.rs` checks it): [`proto`] (codes, control messages, the
//! WebSocket frame codec) → [`Error`] → [`fanout`] → [`tls`], [`limits`] →
//! [`auth`], [`quic`] (the `relaycast/1` protocol and client), [`metrics`]
//! (the exposition) → [`config`] → [`app`] (shared state, peer, error
//! responses, the WebSocket handshakes), [`logging`] → [`ingest`], [`egress`] → [`cascade`],
//! [`player`] → [`server`] (routes, listeners, the QUIC endpoint, SIGHUP,
//! `/metrics`, shutdown) → [`client`] (`relaycast publish` / `watch`). The
//! load generator is its own crate, `relaycast-load`.
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
