//! One live stream: its init segment, its ring of recent fragments, the
//! publisher handle that appends and the viewer cursors that read.

use super::registry::RegistryInner;
use super::{FanoutConfig, unix_ms};
use crate::Error;
use crate::media::hls::{PartInfo, SegmentIndex};
use crate::media::{Fragment, Init};
use crate::proto::control::Control;
use bytes::Bytes;
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio::sync::watch;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// One version of a stream's init segment.
#[derive(Debug)]
pub struct InitEntry {
    /// Starts at 1 and grows by one each time the publisher's init bytes change.
    pub version: u64,
    /// The parsed init segment (its `bytes` are what a viewer appends).
    pub init: Init,
    /// The JSON control message announcing it (`{"type":"init",…}`), built once.
    pub meta: Bytes,
}

/// One stored fragment, shared by every viewer (`Arc<Chunk>`).
#[derive(Debug)]
pub struct Chunk {
    /// Stream-wide sequence number.
    pub seq: u64,
    /// Opens a group: a viewer may start here.
    pub keyframe: bool,
    /// Relay wall clock (Unix ms) when the fragment arrived.
    pub t_ms: u64,
    /// Relay monotonic clock when the fragment arrived (delivery latency).
    pub arrived: Instant,
    /// Decode time of the fragment, µs.
    pub dts_us: u64,
    /// Duration of the fragment, µs.
    pub dur_us: u64,
    /// The fragment bytes (moof + mdat, with any styp/prft before).
    pub bytes: Bytes,
    /// The init segment this fragment belongs to.
    pub init: Arc<InitEntry>,
    /// The JSON control message announcing it (`{"type":"fragment",…}`), built once.
    pub meta: Bytes,
    /// Bytes this chunk holds in the ring's budget: its own, plus its init
    /// segment's when it is the first chunk of the ring on that init (an
    /// init is held as long as a chunk refers to it).
    pub held: usize,
}

/// Why a viewer's session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The publisher left and did not return within the grace period.
    PublisherGone,
    /// The viewer kept falling out of the ring.
    Lagging,
    /// The relay is shutting down.
    Shutdown,
}

impl EndReason {
    /// A human-readable reason, used as WebSocket close reason.
    pub fn message(self) -> &'static str {
        match self {
            EndReason::PublisherGone => "stream ended: the publisher left",
            EndReason::Lagging => "disconnected: too slow to keep up with the stream",
            EndReason::Shutdown => "relay shutting down",
        }
    }
}

/// What a viewer receives next, in order.
#[derive(Clone, Debug)]
pub enum Event {
    /// Append this init segment before the following fragments.
    Init(Arc<InitEntry>),
    /// The next fragment.
    Fragment(Arc<Chunk>),
    /// The viewer jumped forward: fragments `from..to` were not delivered.
    Skip {
        /// The seq the viewer expected next.
        from: u64,
        /// The seq it continues at (a keyframe).
        to: u64,
        /// Total skips of this viewer so far.
        total: u64,
    },
    /// The publisher left (`false`) or came back (`true`).
    Publisher(bool),
    /// The session is over.
    End(EndReason),
}

/// Whether a stream is published here or pulled from another relay.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A publisher connected to this relay.
    Local,
    /// Pulled from an origin relay.
    Pulled {
        /// The origin's URL (the one in use now).
        from: String,
        /// Health of the upstream subscription: `connecting`, `up` or `down`.
        upstream: String,
        /// Round-trip time to the origin in use, ms (0 when unknown).
        rtt_ms: u64,
        /// Upstream subscriptions made after the first (reconnects and failovers).
        failovers: u64,
        /// The sequence space the seqs belong to (the root stream's epoch,
        /// changed when a failover had to renumber).
        seq_space: u64,
    },
}

#[derive(Debug)]
enum PublisherState {
    Live(u64),
    Gone,
}

#[derive(Debug)]
struct State {
    init: Option<Arc<InitEntry>>,
    ring: VecDeque<Arc<Chunk>>,
    ring_bytes: usize,
    /// Seqs of the keyframes in the ring, ascending.
    keyframes: VecDeque<u64>,
    next_seq: u64,
    publisher: PublisherState,
    /// Bumped on every publisher gone/back transition.
    publisher_changes: u64,
    /// Takeovers so far (a new publisher replaced a live one): viewers hear
    /// them as "gone" then "back".
    takeovers: u64,
    /// `next_seq` at the last transition: viewers hear of it after the fragments before it.
    publisher_changed_at: u64,
    closed: Option<EndReason>,
    source: Source,
    /// The HLS/DASH view of the ring (segments = groups, parts = fragments),
    /// updated where the ring changes: never polled, never rebuilt.
    hls: SegmentIndex,
    /// An HLS/DASH manifest was asked for: the ring keeps three target durations.
    hls_watched: bool,
}

/// Counters of one stream (monotonic).
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Fragment payload bytes received.
    pub bytes_in: AtomicU64,
    /// Fragments received.
    pub fragments_in: AtomicU64,
    /// Fragment bytes handed to viewers.
    pub bytes_out: AtomicU64,
    /// Fragments handed to viewers.
    pub fragments_out: AtomicU64,
    /// Viewer skips.
    pub skips: AtomicU64,
    /// Viewers disconnected for lagging.
    pub lag_disconnects: AtomicU64,
    /// Viewers now, by transport (index: [`Transport`](super::Transport)).
    pub viewers: [AtomicU64; super::Transport::COUNT],
    /// Publisher (re)connections.
    pub publishes: AtomicU64,
    /// Viewer join time: cursor opened to first fragment written.
    pub join: super::stats::Histogram,
    /// Fragment arrival to written to a viewer.
    pub delivery: super::stats::Histogram,
    /// Upstream (cascade) state, for `/metrics`.
    pub upstream: super::stats::UpstreamCell,
    /// Polling clients seen lately (see [`StreamStats::note_poller`]).
    pub pollers: super::stats::Pollers,
}

impl StreamStats {
    /// Viewers now on transport `t`. A polling viewer holds a cursor only
    /// while one request lasts, so for the two polling transports this is
    /// the larger of the open cursors and the clients that polled lately.
    pub fn viewers_of(&self, t: super::Transport) -> u64 {
        let open = self.viewers[t as usize].load(Relaxed);
        match t {
            super::Transport::Poll | super::Transport::LongPoll => {
                open.max(self.pollers.recent(t, Instant::now()))
            }
            _ => open,
        }
    }

    /// A polling client (identified by `key`, e.g. its connection) polled
    /// now over `t`: it counts as a viewer for a while after.
    pub fn note_poller(&self, key: u64, t: super::Transport) {
        self.pollers.note(key, t, Instant::now());
    }

    /// Record the stream's upstream (cascade) state.
    pub fn set_upstream(&self, state: super::stats::UpstreamState) {
        self.upstream.set(state);
    }
}

pub(super) struct Inner {
    name: String,
    epoch: u64,
    created: Instant,
    config: FanoutConfig,
    state: RwLock<State>,
    tx: watch::Sender<u64>,
    stats: Arc<StreamStats>,
    registry: Weak<RegistryInner>,
    next_publisher_id: AtomicU64,
    /// Wall clock (Unix ms) of the last HLS/DASH request (0: none).
    hls_request_ms: AtomicU64,
    /// When the publisher last pushed anything or was attached: ms since
    /// `created` (see [`FanoutConfig::stale_publisher`]).
    active_ms: AtomicU64,
    /// HLS/DASH requests being answered now ([`HlsRequest`]s alive).
    hls_in_flight: AtomicU64,
}

/// An HLS/DASH request in progress on a stream ([`Stream::hls_request`]).
/// While it lives the stream counts as watched (a blocking playlist reload
/// can wait three target durations: longer than a cascade edge's linger);
/// when it ends, the request counts as the latest one.
pub struct HlsRequest(Stream);

impl Drop for HlsRequest {
    fn drop(&mut self) {
        let inner = &self.0.0;
        inner.hls_request_ms.store(unix_ms(), Relaxed);
        inner.hls_in_flight.fetch_sub(1, Relaxed);
    }
}

/// A handle on one stream (cheap to clone).
#[derive(Clone)]
pub struct Stream(pub(super) Arc<Inner>);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.0.name)
            .field("epoch", &self.0.epoch)
            .finish()
    }
}

/// JSON description of a stream, for `/live/{name}/info` and `/api/streams`.
#[derive(Debug, Serialize)]
pub struct StreamInfo {
    /// Stream name.
    pub name: String,
    /// A publisher is connected now.
    pub live: bool,
    /// MSE type, `video/mp4; codecs="…"` (null before the first init segment).
    pub mime: Option<String>,
    /// RFC 6381 codecs.
    pub codecs: Option<String>,
    /// Newest fragment's seq.
    pub seq: Option<u64>,
    /// Newest keyframe's seq.
    pub keyframe_seq: Option<u64>,
    /// Current init version (0 before the first).
    pub init_version: u64,
    /// Identifies this life of the stream in this relay process.
    pub epoch: u64,
    /// Viewers now.
    pub viewers: u64,
    /// Viewers now by transport.
    pub viewers_by_transport: std::collections::BTreeMap<&'static str, u64>,
    /// Seconds since the stream was created.
    pub uptime_s: f64,
    /// Bitrate over the ring, bits per second.
    pub bitrate_bps: u64,
    /// Relay wall clock, Unix ms.
    pub server_time: u64,
    /// Fragments and bytes in the ring now.
    pub ring_fragments: usize,
    /// Bytes in the ring now.
    pub ring_bytes: usize,
    /// Total bytes received.
    pub bytes_in: u64,
    /// Total fragments received.
    pub fragments_in: u64,
    /// Total bytes sent to viewers.
    pub bytes_out: u64,
    /// Total fragments sent to viewers.
    pub fragments_out: u64,
    /// Publisher (re)connections.
    pub publishes: u64,
    /// Viewer join time (cursor opened → first fragment written).
    pub join: super::stats::LatencySummary,
    /// Fragment arrival → written to a viewer.
    pub delivery: super::stats::LatencySummary,
    /// Total viewer skips.
    pub skips: u64,
    /// Total viewers disconnected for lagging.
    pub lag_disconnects: u64,
    /// Local or pulled.
    pub source: Source,
}

impl Stream {
    pub(super) fn new(
        name: String,
        config: FanoutConfig,
        source: Source,
        registry: Weak<RegistryInner>,
    ) -> Stream {
        static EPOCH: AtomicU64 = AtomicU64::new(0);
        // Unique per process and increasing across restarts: ms clock, bumped on collision.
        let now = unix_ms();
        let epoch = EPOCH
            .fetch_update(Relaxed, Relaxed, |e| Some(now.max(e + 1)))
            .map(|prev| now.max(prev + 1))
            .unwrap_or(now);
        let stats = Arc::new(StreamStats::default());
        if let Some(reg) = registry.upgrade() {
            reg.totals.track(stats.clone());
        }
        Stream(Arc::new(Inner {
            name,
            epoch,
            created: Instant::now(),
            config,
            state: RwLock::new(State {
                init: None,
                ring: VecDeque::new(),
                ring_bytes: 0,
                keyframes: VecDeque::new(),
                next_seq: 0,
                publisher: PublisherState::Gone,
                publisher_changes: 0,
                takeovers: 0,
                publisher_changed_at: 0,
                closed: None,
                source,
                hls: SegmentIndex::default(),
                hls_watched: false,
            }),
            tx: watch::channel(0).0,
            stats,
            registry,
            next_publisher_id: AtomicU64::new(1),
            hls_request_ms: AtomicU64::new(0),
            active_ms: AtomicU64::new(0),
            hls_in_flight: AtomicU64::new(0),
        }))
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// This life of the stream.
    pub fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// Counters.
    pub fn stats(&self) -> &StreamStats {
        &self.0.stats
    }

    /// True once the stream is closed (no more events but `End`).
    pub fn is_closed(&self) -> bool {
        self.0.state.read().closed.is_some()
    }

    /// True while a publisher is attached.
    pub fn is_live(&self) -> bool {
        matches!(self.0.state.read().publisher, PublisherState::Live(_))
    }

    /// Viewers attached now (all transports).
    pub fn viewer_count(&self) -> u64 {
        super::Transport::ALL
            .iter()
            .map(|&t| self.0.stats.viewers_of(t))
            .sum()
    }

    /// The current init segment.
    pub fn init(&self) -> Option<Arc<InitEntry>> {
        self.0.state.read().init.clone()
    }

    /// Where the stream comes from.
    pub fn source(&self) -> Source {
        self.0.state.read().source.clone()
    }

    /// Replace where the stream comes from (a cascade edge reports its upstream's health).
    pub fn set_source(&self, source: Source) {
        self.0.state.write().source = source;
    }

    /// Seq of the newest fragment, if any.
    pub fn newest_seq(&self) -> Option<u64> {
        self.0.state.read().ring.back().map(|c| c.seq)
    }

    /// Read the stream's HLS/DASH segment index (under the stream's lock:
    /// keep `f` short).
    pub fn hls<R>(&self, f: impl FnOnce(&SegmentIndex) -> R) -> R {
        f(&self.0.state.read().hls)
    }

    /// Someone watches this stream over HLS/DASH: from now on the ring keeps
    /// at least three target durations of whole segments (more than its
    /// count and byte bounds when those are smaller; see [`RingConfig`](super::RingConfig)).
    pub fn watched_over_hls(&self) {
        self.0.hls_request_ms.store(unix_ms(), Relaxed);
        if !self.0.state.read().hls_watched {
            self.0.state.write().hls_watched = true;
        }
    }

    /// An HLS/DASH request on this stream starts ([`watched_over_hls`](Self::watched_over_hls));
    /// hold the guard until it is answered.
    pub fn hls_request(&self) -> HlsRequest {
        self.watched_over_hls();
        self.0.hls_in_flight.fetch_add(1, Relaxed);
        HlsRequest(self.clone())
    }

    /// Whether an HLS/DASH request is being answered or ended within
    /// `within` (such players hold no connection, so they are not in
    /// [`viewer_count`](Self::viewer_count)).
    pub fn hls_requested_within(&self, within: std::time::Duration) -> bool {
        if self.0.hls_in_flight.load(Relaxed) > 0 {
            return true;
        }
        let at = self.0.hls_request_ms.load(Relaxed);
        at > 0 && unix_ms().saturating_sub(at) <= within.as_millis() as u64
    }

    /// A receiver that changes whenever the stream does (a fragment, an
    /// init, publisher news, the end): what viewers wait on. Request handlers
    /// that wait for a part or segment (blocking playlist reloads) use it.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.0.tx.subscribe()
    }

    /// The fragments `from..to` (consecutive seqs), when all are still in the
    /// ring; `None` when any has left it (or never arrived).
    pub fn fragments(&self, from: u64, to: u64) -> Option<Vec<Arc<Chunk>>> {
        let st = self.0.state.read();
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        for seq in from..to {
            let c = find(&st.ring, seq).filter(|c| c.seq == seq)?;
            out.push(c.clone());
        }
        Some(out)
    }

    /// Reads into `run` the fragments from `from` on (at most `max`,
    /// consecutive, on one init segment), once for many viewers: a fan-out
    /// writer's pass hands them to every viewer at `from` with
    /// [`Viewer::take_run`] instead of reading the stream per viewer.
    /// Empty when the stream has ended (the end goes viewer by viewer).
    pub fn read_run(&self, from: u64, max: usize, run: &mut Run) {
        run.chunks.clear();
        run.from = from;
        run.bytes = 0;
        run.more = false;
        let st = self.0.state.read();
        run.publisher_changes = st.publisher_changes;
        if st.closed.is_some() {
            return;
        }
        let start = st.ring.partition_point(|c| c.seq < from);
        let Some(first) = st.ring.get(start).filter(|c| c.seq == from) else {
            return;
        };
        run.init_version = first.init.version;
        for c in st.ring.range(start..) {
            if c.seq != from + run.chunks.len() as u64 || c.init.version != run.init_version {
                break;
            }
            if run.chunks.len() == max {
                run.more = true;
                break;
            }
            run.bytes += c.bytes.len() as u64;
            run.chunks.push(c.clone());
        }
    }

    /// The init segment of version `version`, when it is the current one or
    /// a fragment in the ring still uses it.
    pub fn init_version(&self, version: u64) -> Option<Arc<InitEntry>> {
        let st = self.0.state.read();
        if let Some(i) = st.init.as_ref().filter(|i| i.version == version) {
            return Some(i.clone());
        }
        st.ring
            .iter()
            .rev()
            .find(|c| c.init.version == version)
            .map(|c| c.init.clone())
    }

    /// Adds fragments handed out (see [`Viewer::try_next_tallied`]) to the
    /// stream's counters, and empties `out`.
    pub fn add_out(&self, out: &mut OutTally) {
        if out.fragments > 0 {
            let stats = &self.0.stats;
            stats.fragments_out.fetch_add(out.fragments, Relaxed);
            stats.bytes_out.fetch_add(out.bytes, Relaxed);
        }
        *out = OutTally::default();
    }

    /// An identity for this stream, unique among the streams alive (the
    /// address of its shared state).
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// Seq of the next fragment to arrive.
    pub fn next_seq(&self) -> u64 {
        self.0.state.read().next_seq
    }

    fn notify(&self) {
        self.0.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn since_created_ms(&self) -> u64 {
        u64::try_from(self.0.created.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The publisher is active now (it pushed something).
    fn touch(&self) {
        self.0.active_ms.store(self.since_created_ms(), Relaxed);
    }

    /// The attached publisher has pushed nothing for the configured
    /// [`FanoutConfig::stale_publisher`] (never, when that is zero).
    fn publisher_stale(&self) -> bool {
        let stale = self.0.config.stale_publisher;
        !stale.is_zero()
            && self
                .since_created_ms()
                .saturating_sub(self.0.active_ms.load(Relaxed))
                >= u64::try_from(stale.as_millis()).unwrap_or(u64::MAX)
    }

    /// Would a new publisher be attached now: none is live, takeover is
    /// configured, or the live one is stale? (What SRT checks before its
    /// handshake; [`Registry::publish`](super::Registry::publish) decides.)
    pub fn accepts_publisher(&self) -> bool {
        !self.is_live() || self.0.config.takeover || self.publisher_stale()
    }

    /// Attach a publisher. Fails with `AlreadyLive` when one is attached,
    /// takeover is off and that one is not stale.
    pub(super) fn attach_publisher(&self) -> Result<Publisher, Error> {
        let id = self.0.next_publisher_id.fetch_add(1, Relaxed);
        {
            let mut st = self.0.state.write();
            if st.closed.is_some() {
                return Err(Error::Internal("stream closed while attaching".into()));
            }
            match st.publisher {
                PublisherState::Live(_) if !self.0.config.takeover && !self.publisher_stale() => {
                    return Err(Error::AlreadyLive(self.0.name.clone()));
                }
                PublisherState::Live(old) => {
                    // Takeover (configured, or of a stale publisher): the old
                    // publisher's pushes now fail.
                    if !self.0.config.takeover {
                        tracing::info!(
                            stream = %self.0.name, old, new = id,
                            "a new publisher takes over from a stale one"
                        );
                    }
                    st.publisher = PublisherState::Live(id);
                    // Viewers hear "gone" then "back" (a new publisher's
                    // timeline follows), as after a reconnect.
                    st.publisher_changes += 1;
                    st.takeovers += 1;
                    st.publisher_changed_at = st.next_seq;
                }
                PublisherState::Gone => {
                    st.publisher = PublisherState::Live(id);
                    st.publisher_changes += 1;
                    st.publisher_changed_at = st.next_seq;
                    st.hls.set_live(true);
                }
            }
        }
        self.touch();
        self.0.stats.publishes.fetch_add(1, Relaxed);
        self.notify();
        Ok(Publisher {
            stream: self.clone(),
            id,
            _session: self.session_token(),
        })
    }

    fn detach_publisher(&self, id: u64) {
        let changes = {
            let mut st = self.0.state.write();
            match st.publisher {
                PublisherState::Live(cur) if cur == id => {
                    st.publisher = PublisherState::Gone;
                    st.publisher_changes += 1;
                    st.publisher_changed_at = st.next_seq;
                    st.hls.set_live(false);
                    st.publisher_changes
                }
                _ => return,
            }
        };
        self.notify();
        let grace = self.0.config.grace;
        let stream = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep(grace).await;
                    stream.close_if_abandoned(changes);
                });
            }
            Err(_) => stream.close_if_abandoned(changes),
        }
    }

    /// Close the stream if no publisher returned since transition `changes`.
    fn close_if_abandoned(&self, changes: u64) {
        {
            let st = self.0.state.read();
            if st.publisher_changes != changes || st.closed.is_some() {
                return;
            }
        }
        self.close(EndReason::PublisherGone);
    }

    /// Close the stream now: viewers get `End(reason)` after what they have
    /// not read yet; the registry entry is removed.
    pub fn close(&self, reason: EndReason) {
        {
            let mut st = self.0.state.write();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(reason);
            st.hls.end();
        }
        self.notify();
        if let Some(reg) = self.0.registry.upgrade() {
            reg.remove_stream(self);
        }
    }

    fn check_publisher(st: &State, id: u64, name: &str) -> Result<(), Error> {
        match st.publisher {
            PublisherState::Live(cur) if cur == id => Ok(()),
            _ => Err(Error::TakenOver(name.to_string())),
        }
    }

    fn push_init(&self, id: u64, init: Init) -> Result<u64, Error> {
        let version = {
            let mut st = self.0.state.write();
            Self::check_publisher(&st, id, &self.0.name)?;
            if let Some(cur) = &st.init
                && cur.init.bytes == init.bytes
            {
                return Ok(cur.version);
            }
            let version = st.init.as_ref().map_or(1, |c| c.version + 1);
            let meta = Control::Init {
                version,
                mime: init.mime.clone(),
                codecs: init.codecs.clone(),
                size: init.bytes.len(),
            };
            st.init = Some(Arc::new(InitEntry {
                version,
                meta: meta.to_bytes(),
                init,
            }));
            version
        };
        self.notify();
        Ok(version)
    }

    fn push_fragment(&self, id: u64, frag: Fragment, seq: Option<u64>) -> Result<u64, Error> {
        let t_ms = unix_ms();
        let arrived = Instant::now();
        let len = frag.bytes.len();
        let seq = {
            let mut st = self.0.state.write();
            Self::check_publisher(&st, id, &self.0.name)?;
            let Some(init) = st.init.clone() else {
                return Err(Error::Internal("fragment before init segment".into()));
            };
            let seq = match seq {
                Some(s) if s >= st.next_seq => s,
                Some(s) => {
                    return Err(Error::Internal(format!(
                        "upstream seq {s} went backwards (expected ≥ {})",
                        st.next_seq
                    )));
                }
                None => st.next_seq,
            };
            st.next_seq = seq + 1;
            let dts_us = frag.decode_time_us();
            let meta = Control::Fragment {
                seq,
                key: frag.keyframe,
                t: t_ms,
                size: len,
                dts: Some(dts_us as f64 / 1e6),
            }
            .to_bytes();
            let new_init = st.ring.back().is_none_or(|b| !Arc::ptr_eq(&b.init, &init));
            let held = len + if new_init { init.init.bytes.len() } else { 0 };
            let chunk = Arc::new(Chunk {
                held,
                seq,
                keyframe: frag.keyframe,
                t_ms,
                arrived,
                dts_us,
                dur_us: frag.duration_us(),
                bytes: frag.bytes,
                init,
                meta,
            });
            if chunk.keyframe {
                st.keyframes.push_back(seq);
            }
            st.hls.push(PartInfo {
                seq,
                keyframe: chunk.keyframe,
                dts_us: chunk.dts_us,
                dur_us: chunk.dur_us,
                t_ms,
                init_gen: chunk.init.version,
                bytes_len: len,
            });
            st.ring_bytes += held;
            st.ring.push_back(chunk);
            self.evict(&mut st);
            seq
        };
        self.0.stats.bytes_in.fetch_add(len as u64, Relaxed);
        self.0.stats.fragments_in.fetch_add(1, Relaxed);
        self.notify();
        Ok(seq)
    }

    fn evict(&self, st: &mut State) {
        let ring = &self.0.config.ring;
        // Never drop a fragment of the two newest groups (soft bounds)...
        let groups_from = match st.keyframes.len() {
            0 => 0,
            1 => st.keyframes[0],
            n => st.keyframes[n - 2],
        };
        // ... nor one younger than `min_duration` (by arrival) ...
        let window_ms = ring.min_duration.as_millis() as u64;
        let time_from = if window_ms == 0 {
            st.next_seq
        } else {
            let newest_ms = st.ring.back().map_or(0, |c| c.t_ms);
            let keep_after_ms = newest_ms.saturating_sub(window_ms);
            let i = st.ring.partition_point(|c| c.t_ms < keep_after_ms);
            st.ring.get(i).map_or(st.next_seq, |c| c.seq)
        };
        // ... nor, once the stream is watched over HLS/DASH, one of the
        // segments that make three target durations (RFC 8216 §6.2.2: a
        // live playlist lists at least that much).
        let hls_from = match st.hls_watched {
            true => st.hls.keep_from_seq().unwrap_or(st.next_seq),
            false => st.next_seq,
        };
        let protect_from = groups_from.min(time_from).min(hls_from);
        let hard_bytes = ring.max_bytes.saturating_mul(4);
        while let Some(front) = st.ring.front() {
            let over = st.ring.len() > ring.max_fragments.max(1) || st.ring_bytes > ring.max_bytes;
            let hard = st.ring_bytes > hard_bytes && st.ring.len() > 1;
            if !(hard || over && front.seq < protect_from) {
                break;
            }
            st.ring_bytes -= front.held;
            st.ring.pop_front();
        }
        let front_seq = st.ring.front().map_or(st.next_seq, |c| c.seq);
        while st.keyframes.front().is_some_and(|&k| k < front_seq) {
            st.keyframes.pop_front();
        }
        st.hls.evict_before(front_seq);
    }

    /// Bytes this stream holds: its ring (fragments and the init segments
    /// they refer to) and its current init segment when no fragment refers
    /// to it yet. What the relay-wide memory budget adds up.
    pub fn held_bytes(&self) -> usize {
        let st = self.0.state.read();
        let init = match (&st.init, st.ring.back()) {
            (Some(i), Some(b)) if Arc::ptr_eq(i, &b.init) => 0,
            (Some(i), _) => i.init.bytes.len(),
            (None, _) => 0,
        };
        st.ring_bytes + init
    }

    /// Info for `/live/{name}/info`.
    pub fn info(&self) -> StreamInfo {
        let st = self.0.state.read();
        let bitrate_bps = match (st.ring.front(), st.ring.back()) {
            (Some(f), Some(b)) => {
                let span_us = (b.dts_us + b.dur_us).saturating_sub(f.dts_us);
                let span_ms = b.t_ms.saturating_sub(f.t_ms).max(1);
                // Prefer the media span when the ring holds one timeline.
                let us = if span_us > 0 && Arc::ptr_eq(&f.init, &b.init) {
                    span_us
                } else {
                    span_ms * 1000
                };
                (st.ring_bytes as u128 * 8 * 1_000_000 / us.max(1) as u128) as u64
            }
            _ => 0,
        };
        let mut by_transport = std::collections::BTreeMap::new();
        for t in super::Transport::ALL {
            let n = self.0.stats.viewers_of(t);
            if n > 0 {
                by_transport.insert(t.name(), n);
            }
        }
        StreamInfo {
            name: self.0.name.clone(),
            live: matches!(st.publisher, PublisherState::Live(_)),
            mime: st.init.as_ref().map(|i| i.init.mime.clone()),
            codecs: st.init.as_ref().map(|i| i.init.codecs.clone()),
            seq: st.ring.back().map(|c| c.seq),
            keyframe_seq: st.keyframes.back().copied(),
            init_version: st.init.as_ref().map_or(0, |i| i.version),
            epoch: self.0.epoch,
            viewers: self.viewer_count(),
            viewers_by_transport: by_transport,
            uptime_s: self.0.created.elapsed().as_secs_f64(),
            bitrate_bps,
            server_time: unix_ms(),
            ring_fragments: st.ring.len(),
            ring_bytes: st.ring_bytes,
            bytes_in: self.0.stats.bytes_in.load(Relaxed),
            fragments_in: self.0.stats.fragments_in.load(Relaxed),
            bytes_out: self.0.stats.bytes_out.load(Relaxed),
            fragments_out: self.0.stats.fragments_out.load(Relaxed),
            publishes: self.0.stats.publishes.load(Relaxed),
            join: self.0.stats.join.snapshot().summary(),
            delivery: self.0.stats.delivery.snapshot().summary(),
            skips: self.0.stats.skips.load(Relaxed),
            lag_disconnects: self.0.stats.lag_disconnects.load(Relaxed),
            source: st.source.clone(),
        }
    }

    /// A token of the registry's session tracker, for a new publisher or viewer.
    fn session_token(&self) -> Option<TaskTrackerToken> {
        self.0.registry.upgrade().map(|r| r.sessions.token())
    }

    /// Open a cursor on this stream.
    pub fn subscribe(&self, start: ViewerStart) -> Viewer {
        let st = self.0.state.read();
        let newest_key = st.keyframes.back().copied();
        let (cursor, need_key) = match newest_key {
            Some(k) => (k, false),
            None => (st.next_seq, true),
        };
        let mut viewer = Viewer {
            _session: self.session_token(),
            stream: self.clone(),
            rx: self.0.tx.subscribe(),
            cursor,
            need_key,
            init_version: 0,
            publisher_changes: st.publisher_changes,
            takeovers: st.takeovers,
            publisher_live: matches!(st.publisher, PublisherState::Live(_)),
            total_skips: 0,
            recent_skips: VecDeque::new(),
            pending: None,
            ended: false,
            resumed: false,
            transport: start.transport,
            metrics: super::stats::ViewerMetrics::new(!matches!(
                start.transport,
                super::Transport::Poll | super::Transport::LongPoll
            )),
        };
        if let Some(after) = start.after {
            let front = st.ring.front().map_or(st.next_seq, |c| c.seq);
            let want = after.saturating_add(1);
            if want >= front && want <= st.next_seq {
                viewer.cursor = want;
                viewer.need_key = false;
                viewer.resumed = true;
            } else {
                viewer.pending = Some(Event::Skip {
                    from: want,
                    to: viewer.cursor,
                    total: 0,
                });
            }
        }
        drop(st);
        self.0.stats.viewers[start.transport as usize].fetch_add(1, Relaxed);
        viewer
    }
}

/// Fragments (and their bytes) handed to viewers, not yet added to the
/// stream's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutTally {
    /// Fragments handed out.
    pub fragments: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// Fragments read once for many viewers ([`Stream::read_run`],
/// [`Viewer::take_run`]).
#[derive(Debug, Default)]
pub struct Run {
    /// The seq of the first chunk.
    pub from: u64,
    /// Consecutive chunks from `from`, all on one init segment.
    pub chunks: Vec<Arc<Chunk>>,
    /// More followed (the run stopped at its `max`).
    pub more: bool,
    bytes: u64,
    init_version: u64,
    publisher_changes: u64,
}

impl Run {
    /// The seq after the run.
    pub fn end(&self) -> u64 {
        self.from + self.chunks.len() as u64
    }
}

/// Where a new viewer starts, and over what.
#[derive(Clone, Copy, Debug)]
pub struct ViewerStart {
    /// Resume after this seq when it is still in the ring.
    pub after: Option<u64>,
    /// The transport the viewer uses (for counters).
    pub transport: super::Transport,
}

/// The publisher's handle: appends to the stream. Dropping it starts the
/// grace period.
pub struct Publisher {
    stream: Stream,
    id: u64,
    /// Held while the publisher lives (see `Registry::sessions_ended`).
    _session: Option<TaskTrackerToken>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.stream)
            .field("id", &self.id)
            .finish()
    }
}

impl Publisher {
    /// The stream this publisher feeds.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The publisher is alive (it received bytes, even if no fragment is
    /// complete yet): it is not [stale](FanoutConfig::stale_publisher).
    /// Pushing an init or a fragment counts as this too.
    pub fn touch(&self) {
        self.stream.touch();
    }

    /// Set the init segment; returns its version (unchanged when the bytes are equal).
    pub fn push_init(&self, init: Init) -> Result<u64, Error> {
        self.stream.touch();
        self.stream.push_init(self.id, init)
    }

    /// Append a fragment; returns the seq it was given.
    pub fn push_fragment(&self, frag: Fragment) -> Result<u64, Error> {
        self.stream.touch();
        self.stream.push_fragment(self.id, frag, None)
    }

    /// Append a fragment under a seq chosen upstream (cascade: seqs are the origin's).
    pub fn push_fragment_with_seq(&self, frag: Fragment, seq: u64) -> Result<u64, Error> {
        self.stream.touch();
        self.stream.push_fragment(self.id, frag, Some(seq))
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stream.detach_publisher(self.id);
    }
}

/// A viewer's cursor on a stream. Obtain events with [`Viewer::next`]
/// (waits) or [`Viewer::try_next`] (does not).
pub struct Viewer {
    /// Held while the viewer lives (see `Registry::sessions_ended`).
    _session: Option<TaskTrackerToken>,
    stream: Stream,
    rx: watch::Receiver<u64>,
    /// The seq of the next fragment to deliver.
    cursor: u64,
    /// Skip fragments until a keyframe (after a jump with no keyframe in the ring).
    need_key: bool,
    /// Init version delivered (0 = none yet).
    init_version: u64,
    publisher_changes: u64,
    /// Takeovers of the stream this viewer has reported.
    takeovers: u64,
    /// The publisher state this viewer was last told.
    publisher_live: bool,
    total_skips: u64,
    /// Times of recent skips, at most `max_skips + 1` entries.
    recent_skips: VecDeque<Instant>,
    pending: Option<Event>,
    ended: bool,
    resumed: bool,
    transport: super::Transport,
    metrics: super::stats::ViewerMetrics,
}

impl Viewer {
    /// The stream this viewer reads.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// True when the viewer's `after` was honoured.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The seq of the next fragment this viewer will get.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// True when the cursor has fallen out of the ring: the next event is a
    /// skip (or the lag disconnect). Transports that may block on a slow peer
    /// check this to abandon a write that is already stale.
    pub fn fell_behind(&self) -> bool {
        let st = self.stream.0.state.read();
        let front = st.ring.front().map_or(st.next_seq, |c| c.seq);
        self.cursor < front
    }

    /// Skips so far.
    pub fn total_skips(&self) -> u64 {
        self.total_skips
    }

    /// Takes `run` as this viewer's next events when nothing else is due
    /// first (it is at `run.from`, has no event waiting, no publisher news,
    /// no keyframe to wait for and the run's init segment): the cursor moves
    /// past the run and its fragments are counted in `out`. `false` leaves
    /// the viewer as it was, for [`Viewer::try_next`]. What the viewer is
    /// sent is what `try_next` would have given: one `Fragment` per chunk.
    pub fn take_run(&mut self, run: &Run, out: &mut OutTally) -> bool {
        if run.chunks.is_empty()
            || self.ended
            || self.pending.is_some()
            || self.need_key
            || self.cursor != run.from
            || self.publisher_changes != run.publisher_changes
            || self.init_version != run.init_version
        {
            return false;
        }
        self.cursor = run.from + run.chunks.len() as u64;
        out.fragments += run.chunks.len() as u64;
        out.bytes += run.bytes;
        true
    }

    /// The next event, waiting for one.
    pub async fn next(&mut self) -> Event {
        loop {
            self.rx.borrow_and_update();
            if let Some(ev) = self.try_next() {
                return ev;
            }
            if self.rx.changed().await.is_err() {
                self.ended = true;
                return Event::End(EndReason::Shutdown);
            }
        }
    }

    /// The next event if one is ready.
    pub fn try_next(&mut self) -> Option<Event> {
        let mut out = OutTally::default();
        let ev = self.try_next_tallied(&mut out);
        self.stream.add_out(&mut out);
        ev
    }

    /// [`Viewer::try_next`], counting a fragment handed out in `out`
    /// instead of the stream's counters: a writer that serves many viewers
    /// of one stream adds them up and calls [`Stream::add_out`] once per
    /// pass (two shared atomics per viewer per fragment otherwise).
    pub fn try_next_tallied(&mut self, out: &mut OutTally) -> Option<Event> {
        if self.ended {
            return None;
        }
        if let Some(ev) = self.pending.take() {
            return Some(ev);
        }
        let inner = &self.stream.0;
        let st = inner.state.read();
        // Publisher news comes after the fragments sent before it.
        if st.publisher_changes != self.publisher_changes && self.cursor >= st.publisher_changed_at
        {
            self.publisher_changes = st.publisher_changes;
            let live = matches!(st.publisher, PublisherState::Live(_));
            let took_over = st.takeovers != self.takeovers;
            self.takeovers = st.takeovers;
            if live != self.publisher_live {
                self.publisher_live = live;
                return Some(Event::Publisher(live));
            }
            if live && took_over {
                // A new publisher replaced the live one: "gone", then "back".
                self.pending = Some(Event::Publisher(true));
                return Some(Event::Publisher(false));
            }
        }
        let front = st.ring.front().map_or(st.next_seq, |c| c.seq);
        if self.cursor < front {
            // Fell out of the ring: jump to the newest keyframe.
            let from = self.cursor;
            match st.keyframes.back() {
                Some(&k) => {
                    self.cursor = k;
                    self.need_key = false;
                }
                None => {
                    self.cursor = st.next_seq;
                    self.need_key = true;
                }
            }
            drop(st);
            return Some(self.record_skip(from));
        }
        loop {
            let Some(chunk) = find(&st.ring, self.cursor) else {
                // Caught up.
                if let Some(reason) = st.closed {
                    self.ended = true;
                    return Some(Event::End(reason));
                }
                // Hand out the init early so a player can set up its decoder.
                if let Some(init) = &st.init
                    && self.init_version == 0
                {
                    self.init_version = init.version;
                    return Some(Event::Init(init.clone()));
                }
                return None;
            };
            if self.need_key && !chunk.keyframe {
                self.cursor = chunk.seq + 1;
                continue;
            }
            self.need_key = false;
            if chunk.init.version != self.init_version {
                self.init_version = chunk.init.version;
                return Some(Event::Init(chunk.init.clone()));
            }
            if chunk.seq != self.cursor {
                // A hole upstream (cascade): say so, continue at the chunk.
                let from = self.cursor;
                self.cursor = chunk.seq;
                return Some(Event::Skip {
                    from,
                    to: chunk.seq,
                    total: self.total_skips,
                });
            }
            self.cursor = chunk.seq + 1;
            let chunk = chunk.clone();
            drop(st);
            out.fragments += 1;
            out.bytes += chunk.bytes.len() as u64;
            return Some(Event::Fragment(chunk));
        }
    }

    fn record_skip(&mut self, from: u64) -> Event {
        let policy = &self.stream.0.config.lag;
        let stats = &self.stream.0.stats;
        stats.skips.fetch_add(1, Relaxed);
        self.total_skips += 1;
        let now = Instant::now();
        self.recent_skips.push_back(now);
        while self
            .recent_skips
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.recent_skips.pop_front();
        }
        while self.recent_skips.len() > policy.max_skips as usize + 1 {
            self.recent_skips.pop_front();
        }
        if self.recent_skips.len() > policy.max_skips as usize {
            stats.lag_disconnects.fetch_add(1, Relaxed);
            self.ended = true;
            return Event::End(EndReason::Lagging);
        }
        Event::Skip {
            from,
            to: self.cursor,
            total: self.total_skips,
        }
    }

    /// Wait until the viewer has something to read, without taking it.
    pub async fn ready(&mut self) {
        if self.pending.is_some() {
            return;
        }
        if let Some(ev) = self.try_next() {
            self.pending = Some(ev);
            return;
        }
        let _ = self.rx.changed().await;
    }

    /// The transport wrote a fragment that arrived at `arrived` to the
    /// viewer's connection at `now`: feeds the join-time (first fragment)
    /// and delivery-latency histograms. Plain arithmetic on the viewer; the
    /// stream's atomics are touched once per [`super::stats::FLUSH_EVERY`].
    pub fn wrote(&mut self, arrived: Instant, now: Instant) {
        self.metrics.wrote(&self.stream.0.stats, arrived, now);
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.stream.0.stats.viewers[self.transport as usize].fetch_sub(1, Relaxed);
        self.metrics.flush(&self.stream.0.stats);
    }
}

/// The chunk with the smallest seq ≥ `seq` (ring seqs are ascending, usually
/// contiguous, so the direct index is checked first).
fn find(ring: &VecDeque<Arc<Chunk>>, seq: u64) -> Option<&Arc<Chunk>> {
    let front = ring.front()?.seq;
    if seq < front {
        return ring.front();
    }
    let idx = (seq - front) as usize;
    if let Some(c) = ring.get(idx)
        && c.seq == seq
    {
        return Some(c);
    }
    let i = ring.partition_point(|c| c.seq < seq);
    ring.get(i)
}
