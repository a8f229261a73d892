//! `cascade`: relays in a tree. An **edge** (`serve --origin quic://…`)
//! pulls a stream from an origin the first time one of its viewers asks for
//! it, and drops it once the last viewer has been gone for
//! [`CascadeConfig::linger`]; the origin sends each stream once per edge, not
//! once per viewer.
//!
//! An edge is a viewer of its origin over QUIC (`relaycast/1`, role `edge`)
//! and a publisher into its own registry ([`Registry::publish_from`] with
//! [`Source::Pulled`]): every transport serves a pulled stream exactly like a
//! local one. Seqs are the origin's ([`Publisher::push_fragment_with_seq`]),
//! so a viewer resuming with `after=SEQ` may move between edges of one
//! origin; an edge may itself be the origin of further edges (its QUIC
//! egress passes the origin's sequence space on).
//!
//! # Choosing and changing origins
//!
//! The origins are tried in the configured order, or starting at a stable
//! hash of the stream name ([`OriginPick::Hash`]). When the origin in use
//! fails (connection lost, shut down, too slow), the edge moves on to the
//! next one and subscribes with `after` = the last seq it has. When that
//! origin serves the same sequence space the stream continues where it was;
//! otherwise the edge waits for a keyframe and, if needed, renumbers so its
//! seqs keep growing. Meanwhile the edge's viewers see the publisher gone and
//! back; they keep their cursors and get valid fMP4 (at worst they skip to a
//! keyframe). When no origin answers within the fan-out grace period, the
//! stream ends.

use crate::config::{CascadeConfig, OriginPick};
use crate::fanout::{EndReason, OpenFuture, Publisher, Registry, Source, Stream, StreamSource};
use crate::media::{Item, Splitter, SplitterConfig};
use crate::quic::client::{Client, WatchEvent, WatchOptions, WatchSession};
use crate::quic::{QuicError, QuicUrl, code};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a puller checks its viewers and reports its health.
const TICK: Duration = Duration::from_millis(250);

/// How long "no origin has this stream" is remembered: viewers asking an
/// edge for unknown names cost the origins one round per name per this long.
const MISS_TTL: Duration = Duration::from_millis(500);

/// Longest pause between two rounds over every origin.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// What can go wrong setting up the edge side.
#[derive(Debug, thiserror::Error)]
pub enum CascadeError {
    /// An origin URL that cannot be used.
    #[error("origin {url:?}: {source}")]
    Origin {
        /// As configured.
        url: String,
        /// Why not.
        source: QuicError,
    },
    /// The QUIC client could not start.
    #[error("QUIC client for the origins: {0}")]
    Client(QuicError),
}

/// Health of one pulled stream's upstream subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Up,
    Down,
}

impl Health {
    fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// The edge side: a [`StreamSource`] that pulls streams from origins.
pub struct Edge(Arc<EdgeInner>);

struct EdgeInner {
    origins: Vec<QuicUrl>,
    pick: OriginPick,
    linger: Duration,
    return_after: Duration,
    client: Client,
    shutdown: CancellationToken,
    max_box_size: u64,
    /// Opens in progress, so concurrent first viewers share one subscription.
    opening: Mutex<HashMap<String, Arc<OnceCell<Option<Stream>>>>>,
    /// Names no origin had, and when that was found.
    misses: Mutex<HashMap<String, Instant>>,
    /// This relay's access control: signs upstream subscriptions of streams
    /// that need signed URLs (edges share their origin's view secrets).
    auth: std::sync::OnceLock<Arc<crate::auth::Auth>>,
}

impl Edge {
    /// The edge for `config`, or `None` when no origin is configured.
    pub fn new(
        config: &CascadeConfig,
        max_box_size: u64,
        shutdown: CancellationToken,
    ) -> Result<Option<Edge>, CascadeError> {
        if config.origins.is_empty() {
            return Ok(None);
        }
        let origins = config
            .origins
            .iter()
            .map(|u| {
                QuicUrl::parse(u).map_err(|source| CascadeError::Origin {
                    url: u.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = Client::new().map_err(CascadeError::Client)?;
        Ok(Some(Edge(Arc::new(EdgeInner {
            origins,
            pick: config.pick,
            linger: config.linger,
            return_after: config.return_after,
            client,
            shutdown,
            max_box_size,
            opening: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            auth: std::sync::OnceLock::new(),
        }))))
    }

    /// Sign upstream subscriptions with this relay's view secrets (see
    /// [`crate::auth::Auth::upstream_signature`]). Only the first call counts.
    pub fn set_auth(&self, auth: Arc<crate::auth::Auth>) {
        let _ = self.0.auth.set(auth);
    }
}

/// How long an edge's own signature for an upstream subscription is valid
/// (checked when the subscription starts, which it then outlives).
const UPSTREAM_SIGNATURE_TTL: Duration = Duration::from_secs(300);

impl StreamSource for Edge {
    fn open<'a>(&'a self, registry: &'a Registry, name: &'a str) -> OpenFuture<'a> {
        Box::pin(self.0.clone().open(registry.clone(), name.to_string()))
    }
}

/// FNV-1a: a stable hash of a stream name (the same on every edge and run).
fn stable_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The order in which to try `n` origins for `name`, starting after `after`
/// when given (failover).
fn origin_order(pick: OriginPick, n: usize, name: &str, after: Option<usize>) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let first = match (after, pick) {
        (Some(cur), _) => (cur + 1) % n,
        (None, OriginPick::Ordered) => 0,
        (None, OriginPick::Hash) => (stable_hash(name) % n as u64) as usize,
    };
    (0..n).map(|i| (first + i) % n).collect()
}

impl EdgeInner {
    async fn open(self: Arc<Self>, registry: Registry, name: String) -> Option<Stream> {
        if self
            .misses
            .lock()
            .get(&name)
            .is_some_and(|t| t.elapsed() < MISS_TTL)
        {
            return None;
        }
        let cell = self.opening.lock().entry(name.clone()).or_default().clone();
        let result = cell
            .get_or_init(|| self.clone().open_now(registry, name.clone()))
            .await
            .clone();
        {
            let mut opening = self.opening.lock();
            if opening.get(&name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                opening.remove(&name);
            }
        }
        let mut misses = self.misses.lock();
        if result.is_none() {
            if misses.len() >= 4096 {
                misses.retain(|_, t| t.elapsed() < MISS_TTL);
            }
            misses.insert(name, Instant::now());
        } else {
            misses.remove(&name);
        }
        result
    }

    async fn subscribe(
        &self,
        origin: usize,
        name: &str,
        after: Option<u64>,
    ) -> Result<WatchSession, QuicError> {
        let opts = WatchOptions {
            name: Some(name.to_string()),
            after,
            wait: None,
            edge: true,
            receive_window: None,
        };
        let mut url = std::borrow::Cow::Borrowed(&self.origins[origin]);
        if let Some(signed) = self
            .auth
            .get()
            .and_then(|a| a.upstream_signature(name, UPSTREAM_SIGNATURE_TTL))
        {
            url.to_mut().signed = Some(signed);
        }
        self.client.watch(&url, opts).await
    }

    async fn open_now(self: Arc<Self>, registry: Registry, name: String) -> Option<Stream> {
        if let Some(s) = registry.get(&name) {
            return Some(s);
        }
        for idx in origin_order(self.pick, self.origins.len(), &name, None) {
            let session = match self.subscribe(idx, &name, None).await {
                Ok(s) => s,
                Err(e) => {
                    if e.code() != Some(code::NOT_FOUND) {
                        tracing::warn!(stream = %name, origin = %self.origins[idx].base, error = %e, "origin failed");
                    }
                    continue;
                }
            };
            let mut map = SeqMap::default();
            map.start(session.hello().seq_space);
            let source = self.source(idx, Health::Up, &session, 0, map.space());
            let publisher = match registry.publish_from(&name, source) {
                Ok(p) => p,
                Err(e) => {
                    // A local publisher won the race: serve that.
                    tracing::info!(stream = %name, error = %e, "not pulling: stream exists");
                    session.close(code::DONE, "stream exists on the edge");
                    return registry.get(&name);
                }
            };
            let stream = publisher.stream().clone();
            tracing::info!(stream = %name, origin = %self.origins[idx].base, "pulling from origin");
            let live = session.hello().live;
            let preferred = origin_order(self.pick, self.origins.len(), &name, None)
                .first()
                .copied()
                .unwrap_or(idx);
            let puller = Puller {
                edge: self.clone(),
                registry,
                name,
                stream: stream.clone(),
                publisher: live.then_some(publisher),
                session: Some(session),
                origin: idx,
                map,
                splitter: self.splitter(),
                failovers: 0,
                preferred,
                probe: None,
                last_switch: Instant::now(),
            };
            tokio::spawn(puller.run());
            return Some(stream);
        }
        None
    }

    fn splitter(&self) -> Splitter {
        Splitter::new(SplitterConfig {
            max_box_size: self.max_box_size,
        })
    }

    fn source(
        &self,
        origin: usize,
        health: Health,
        session: &WatchSession,
        failovers: u64,
        seq_space: u64,
    ) -> Source {
        Source::Pulled {
            from: self.origins[origin].base.clone(),
            upstream: health.name().to_string(),
            rtt_ms: session.rtt().as_millis() as u64,
            failovers,
            seq_space,
        }
    }
}

/// Keeps an edge's seqs equal to the origin's, and growing across failovers.
#[derive(Debug, Default, Clone)]
pub struct SeqMap {
    /// The sequence space of the upstream in use (None before the first fragment).
    upstream_space: Option<u64>,
    /// The space announced by the newest subscription.
    pending_space: u64,
    /// A new space: wait for a keyframe, then choose the offset.
    fresh: bool,
    /// Added to upstream seqs.
    offset: u64,
    /// The newest seq pushed.
    last: Option<u64>,
}

impl SeqMap {
    /// A subscription started; its upstream announced `space`.
    pub fn start(&mut self, space: u64) {
        self.pending_space = space;
        self.fresh = self.upstream_space != Some(space);
    }

    /// The sequence space of the seqs this edge hands out.
    pub fn space(&self) -> u64 {
        match self.upstream_space {
            Some(s) => s.wrapping_add(self.offset),
            None => self.pending_space,
        }
    }

    /// The `after` to ask the next upstream for, in its seqs.
    pub fn after(&self) -> Option<u64> {
        self.last.and_then(|l| l.checked_sub(self.offset))
    }

    /// The seq to publish upstream fragment `seq` under; `None` to drop it
    /// (already delivered, or waiting for a keyframe in a new space).
    pub fn map(&mut self, seq: u64, keyframe: bool) -> Option<u64> {
        if self.fresh {
            if !keyframe {
                return None;
            }
            self.offset = match self.last {
                Some(l) if seq <= l => l + 1 - seq,
                _ => 0,
            };
            self.upstream_space = Some(self.pending_space);
            self.fresh = false;
        }
        let out = seq.checked_add(self.offset)?;
        if self.last.is_some_and(|l| out <= l) {
            return None;
        }
        self.last = Some(out);
        Some(out)
    }
}

/// What the puller does after an event.
enum Next {
    Continue,
    /// Lost the origin: move on to another.
    Failover(String),
    /// The stream is over (or no longer ours).
    Stop,
    /// The preferred origin answers again: move back to it.
    Return(Result<WatchSession, QuicError>),
}

/// One pulled stream: upstream session in, edge publisher out.
struct Puller {
    edge: Arc<EdgeInner>,
    registry: Registry,
    name: String,
    stream: Stream,
    /// None while the upstream has no publisher (or is lost).
    publisher: Option<Publisher>,
    session: Option<WatchSession>,
    origin: usize,
    map: SeqMap,
    splitter: Splitter,
    failovers: u64,
    /// The origin this stream is asked from first.
    preferred: usize,
    /// A subscription to the preferred origin being tried, after a failover.
    probe: Option<tokio::sync::oneshot::Receiver<Result<WatchSession, QuicError>>>,
    /// When the origin last changed (or the preferred one was last tried).
    last_switch: Instant,
}

impl Puller {
    async fn run(mut self) {
        let shutdown = self.edge.shutdown.clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(250);
        let mut retry_at = Instant::now();
        loop {
            if self.stream.is_closed() {
                break;
            }
            let probe = &mut self.probe;
            let next = match self.session.as_mut() {
                Some(session) => tokio::select! {
                    ev = session.next() => match ev {
                        Ok(ev) => self.on_event(ev),
                        Err(e) => Next::Failover(e.to_string()),
                    },
                    r = async {
                        match probe.as_mut() {
                            Some(rx) => rx.await,
                            None => std::future::pending().await,
                        }
                    } => {
                        self.probe = None;
                        match r {
                            Ok(r) => Next::Return(r),
                            Err(_) => Next::Continue,
                        }
                    }
                    _ = tick.tick() => {
                        if self.lingered(&mut idle_since) {
                            break;
                        }
                        self.report(Health::Up);
                        self.try_preferred();
                        Next::Continue
                    }
                    _ = shutdown.cancelled() => break,
                },
                None => tokio::select! {
                    _ = tokio::time::sleep_until(retry_at) => {
                        if self.reconnect().await {
                            backoff = Duration::from_millis(250);
                        } else {
                            retry_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        Next::Continue
                    }
                    _ = tick.tick() => {
                        if self.lingered(&mut idle_since) {
                            break;
                        }
                        Next::Continue
                    }
                    _ = shutdown.cancelled() => break,
                },
            };
            match next {
                Next::Continue => {}
                Next::Stop => break,
                Next::Return(Ok(session)) => {
                    if !self.switch_to(self.preferred, session) {
                        break;
                    }
                }
                Next::Return(Err(e)) => {
                    tracing::debug!(stream = %self.name, error = %e, "preferred origin still unavailable");
                }
                Next::Failover(why) => {
                    tracing::warn!(stream = %self.name, origin = %self.edge.origins[self.origin].base, %why, "lost the origin; failing over");
                    if let Some(s) = self.session.take() {
                        s.close(code::DONE, "failing over");
                    }
                    // Viewers hear "publisher gone" and wait out the grace period.
                    self.publisher = None;
                    self.probe = None;
                    self.report(Health::Down);
                    retry_at = Instant::now();
                }
            }
        }
        if let Some(s) = self.session.take() {
            s.close(code::DONE, "no more viewers");
        }
        self.publisher = None;
        self.stream.close(EndReason::PublisherGone);
        tracing::info!(stream = %self.name, "stopped pulling");
    }

    /// True once the stream has had no viewer for the linger time (HLS and
    /// DASH players hold no connection: a request within the linger time
    /// counts as a viewer).
    fn lingered(&self, idle_since: &mut Option<Instant>) -> bool {
        if self.stream.viewer_count() > 0 || self.stream.hls_requested_within(self.edge.linger) {
            *idle_since = None;
            return false;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.edge.linger
    }

    fn report(&self, health: Health) {
        let rtt_ms = self
            .session
            .as_ref()
            .map_or(0, |s| s.rtt().as_millis() as u64);
        self.stream.set_source(Source::Pulled {
            from: self.edge.origins[self.origin].base.clone(),
            upstream: health.name().to_string(),
            rtt_ms,
            failovers: self.failovers,
            seq_space: self.map.space(),
        });
        self.stream.stats().set_upstream(match health {
            Health::Up => crate::fanout::stats::UpstreamState::Connected,
            Health::Down => crate::fanout::stats::UpstreamState::Failed,
        });
    }

    /// Attach (again) as the edge stream's publisher; false when the stream
    /// is gone or was replaced.
    fn attach(&mut self) -> bool {
        if self.publisher.is_some() {
            return true;
        }
        if self.stream.is_closed() {
            return false;
        }
        match self.registry.publish_from(&self.name, self.stream.source()) {
            Ok(p) if p.stream().epoch() == self.stream.epoch() => {
                self.publisher = Some(p);
                true
            }
            Ok(_) | Err(_) => false,
        }
    }

    fn on_event(&mut self, ev: WatchEvent) -> Next {
        match ev {
            WatchEvent::Init { bytes, .. } => {
                if !self.attach() {
                    return Next::Stop;
                }
                self.splitter.push_bytes(bytes);
                self.drain(None)
            }
            WatchEvent::Fragment {
                seq,
                keyframe,
                bytes,
                ..
            } => {
                let Some(out) = self.map.map(seq, keyframe) else {
                    return Next::Continue;
                };
                if !self.attach() {
                    return Next::Stop;
                }
                self.splitter.push_bytes(bytes);
                self.drain(Some(out))
            }
            WatchEvent::Skip { .. } => Next::Continue,
            WatchEvent::Publisher(false) => {
                self.publisher = None;
                Next::Continue
            }
            WatchEvent::Publisher(true) => {
                if self.attach() {
                    Next::Continue
                } else {
                    Next::Stop
                }
            }
            WatchEvent::End { code, reason } => match code {
                code::PUBLISHER_GONE | code::DONE => Next::Stop,
                _ => Next::Failover(reason),
            },
        }
    }

    /// Publish what the splitter has (one item: the bytes of one frame).
    fn drain(&mut self, seq: Option<u64>) -> Next {
        let Some(publisher) = &self.publisher else {
            return Next::Continue;
        };
        loop {
            let item = match self.splitter.next_item() {
                Ok(Some(item)) => item,
                Ok(None) => return Next::Continue,
                Err(e) => {
                    self.splitter = self.edge.splitter();
                    return Next::Failover(format!("origin sent bad media: {e}"));
                }
            };
            let pushed = match (item, seq) {
                (Item::Init(init), _) => publisher.push_init(init).map(|_| ()),
                (Item::Fragment(f), Some(s)) => publisher.push_fragment_with_seq(f, s).map(|_| ()),
                (Item::Fragment(_), None) => Ok(()),
            };
            if let Err(e) = pushed {
                tracing::warn!(stream = %self.name, error = %e, "edge publish failed");
                return Next::Stop;
            }
        }
    }

    /// After a failover, now and then try the preferred origin in the
    /// background (the current subscription keeps flowing meanwhile).
    fn try_preferred(&mut self) {
        let wait = self.edge.return_after;
        if wait.is_zero()
            || self.origin == self.preferred
            || self.probe.is_some()
            || self.last_switch.elapsed() < wait
        {
            return;
        }
        self.last_switch = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (edge, name, after, idx) = (
            self.edge.clone(),
            self.name.clone(),
            self.map.after(),
            self.preferred,
        );
        tokio::spawn(async move {
            let _ = tx.send(edge.subscribe(idx, &name, after).await);
        });
        self.probe = Some(rx);
    }

    /// Continue from `session` (on origin `idx`); false when the stream is gone.
    fn switch_to(&mut self, idx: usize, session: WatchSession) -> bool {
        tracing::info!(stream = %self.name, origin = %self.edge.origins[idx].base, "back on the preferred origin");
        if let Some(old) = self.session.take() {
            old.close(code::DONE, "moving back to the preferred origin");
        }
        self.adopt(idx, session)
    }

    /// Pull from now on through `session` (on origin `idx`), counted as a
    /// failover; false when the stream is gone.
    fn adopt(&mut self, idx: usize, session: WatchSession) -> bool {
        self.failovers += 1;
        self.origin = idx;
        self.last_switch = Instant::now();
        self.map.start(session.hello().seq_space);
        let live = session.hello().live;
        self.session = Some(session);
        if live && !self.attach() {
            return false;
        }
        self.report(Health::Up);
        true
    }

    /// One round over the origins; true when subscribed again.
    async fn reconnect(&mut self) -> bool {
        let after = self.map.after();
        let n = self.edge.origins.len();
        for idx in origin_order(self.edge.pick, n, &self.name, Some(self.origin)) {
            if self.stream.is_closed() {
                return false;
            }
            match self.edge.subscribe(idx, &self.name, after).await {
                Ok(session) => {
                    tracing::info!(stream = %self.name, origin = %self.edge.origins[idx].base, ?after, "pulling again");
                    return self.adopt(idx, session);
                }
                Err(e) => {
                    tracing::debug!(stream = %self.name, origin = %self.edge.origins[idx].base, error = %e, "origin unavailable");
                }
            }
        }
        false
    }
}

/// `/metrics` families of pulled streams: where each comes from and its
/// upstream's health, round-trip time and failovers.
pub fn metrics(streams: &[Stream], e: &mut crate::metrics::Exposition) {
    use crate::metrics::Kind;
    let pulled: Vec<(&Stream, Source)> = streams.iter().map(|s| (s, s.source())).collect();
    e.family(
        "relaycast_stream_pulled",
        Kind::Gauge,
        "1 when the stream is pulled from an origin (label origin), 0 when published here.",
    );
    for (s, src) in &pulled {
        let (v, from) = match src {
            Source::Local => (0, ""),
            Source::Pulled { from, .. } => (1, from.as_str()),
        };
        e.sample(
            "relaycast_stream_pulled",
            &[("stream", s.name()), ("origin", from)],
            v,
        );
    }
    type Field = fn(&str, u64, u64) -> f64;
    let families: [(&str, Kind, &str, Field); 3] = [
        (
            "relaycast_upstream_up",
            Kind::Gauge,
            "1 while the upstream subscription of a pulled stream receives.",
            |up, _, _| f64::from(u8::from(up == "up")),
        ),
        (
            "relaycast_upstream_rtt_seconds",
            Kind::Gauge,
            "QUIC round-trip time to the origin of a pulled stream.",
            |_, rtt_ms, _| rtt_ms as f64 / 1000.0,
        ),
        (
            "relaycast_upstream_failovers_total",
            Kind::Counter,
            "Times a pulled stream moved to another origin.",
            |_, _, f| f as f64,
        ),
    ];
    for (metric, kind, help, value) in families {
        e.family(metric, kind, help);
        for (s, src) in &pulled {
            if let Source::Pulled {
                from,
                upstream,
                rtt_ms,
                failovers,
                ..
            } = src
            {
                e.sample_f64(
                    metric,
                    &[("stream", s.name()), ("origin", from)],
                    value(upstream, *rtt_ms, *failovers),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_the_origins_and_continue_in_the_same_space() {
        let mut m = SeqMap::default();
        m.start(42);
        assert_eq!(m.map(10, false), None, "a new space starts at a keyframe");
        assert_eq!(m.map(11, true), Some(11));
        assert_eq!(m.map(12, false), Some(12));
        assert_eq!(m.space(), 42);
        assert_eq!(m.after(), Some(12));
        // Failover to a relay of the same space that is a little behind.
        m.start(42);
        assert_eq!(m.map(11, true), None, "already delivered");
        assert_eq!(m.map(12, false), None);
        assert_eq!(
            m.map(13, false),
            Some(13),
            "continues mid-group: same space"
        );
    }

    #[test]
    fn a_new_space_waits_for_a_keyframe_and_renumbers_to_keep_growing() {
        let mut m = SeqMap::default();
        m.start(1);
        assert_eq!(m.map(100, true), Some(100));
        assert_eq!(m.map(101, false), Some(101));
        m.start(2);
        assert_eq!(m.map(5, false), None);
        assert_eq!(m.map(6, true), Some(102));
        assert_eq!(m.map(7, false), Some(103));
        assert_eq!(m.space(), 2 + 96);
        assert_eq!(m.after(), Some(7));
        // A space that is ahead keeps its seqs (viewers see a hole: a skip).
        m.start(3);
        assert_eq!(m.map(500, true), Some(500));
        assert_eq!(m.space(), 3);
    }

    #[test]
    fn origins_are_tried_in_order_or_by_a_stable_hash() {
        assert_eq!(origin_order(OriginPick::Ordered, 3, "x", None), [0, 1, 2]);
        assert_eq!(
            origin_order(OriginPick::Ordered, 3, "x", Some(0)),
            [1, 2, 0]
        );
        let a = origin_order(OriginPick::Hash, 4, "camera-7", None);
        assert_eq!(a, origin_order(OriginPick::Hash, 4, "camera-7", None));
        assert_eq!(a.len(), 4);
        let firsts: std::collections::HashSet<usize> = (0..50)
            .map(|i| origin_order(OriginPick::Hash, 4, &format!("s{i}"), None)[0])
            .collect();
        assert!(firsts.len() > 1, "names spread over origins");
        assert!(origin_order(OriginPick::Hash, 0, "x", None).is_empty());
    }
}
