//! `stats`: the figures the fan-out counts as it works, kept in atomics next
//! to what they count: per-stream counters and histograms ([`StreamStats`]
//! holds them), a viewer's local latency histogram folded in every
//! [`FLUSH_EVERY`] observations, the registry's relay-wide [`Totals`], and
//! the upstream (cascade) state of a stream. The core owns them; the
//! operator endpoint (`crate::metrics`) only reads them at scrape time.

use super::{Ingest, StreamStats, Transport};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Upper bounds of the histogram buckets, in microseconds (0.5 ms … 30 s).
/// One set serves both join time (tens of ms to seconds) and delivery
/// latency (sub-millisecond on a LAN to seconds behind a slow link).
pub const BUCKETS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];
const NB: usize = BUCKETS_US.len() + 1;

/// A viewer's local histogram is folded into the shared one after this many
/// observations (or after [`FLUSH_INTERVAL`]).
pub const FLUSH_EVERY: u32 = 32;
/// A viewer's local histogram is folded at least this often while it writes.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

fn bucket_of(us: u64) -> usize {
    BUCKETS_US.partition_point(|&b| b < us)
}

/// A shared histogram of durations: one atomic per bucket, plus sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; NB],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Record one duration (three relaxed atomic adds).
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Add a local histogram's counts.
    pub fn merge(&self, local: &LocalHistogram) {
        if local.count == 0 {
            return;
        }
        for (b, &n) in self.buckets.iter().zip(local.buckets.iter()) {
            if n > 0 {
                b.fetch_add(u64::from(n), Relaxed);
            }
        }
        self.sum_us.fetch_add(local.sum_us, Relaxed);
        self.count.fetch_add(u64::from(local.count), Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut s = HistogramSnapshot::default();
        for (d, b) in s.buckets.iter_mut().zip(self.buckets.iter()) {
            *d = b.load(Relaxed);
        }
        s.sum_us = self.sum_us.load(Relaxed);
        // The count is the sum of the buckets read, so the exposition is
        // consistent even when a scrape races an observation.
        s.count = s.buckets.iter().sum();
        s
    }
}

/// Observations gathered by one viewer before they are folded into its
/// stream's [`Histogram`] (plain integers: no atomics on the hot path).
#[derive(Debug, Default, Clone)]
pub struct LocalHistogram {
    buckets: [u32; NB],
    sum_us: u64,
    count: u32,
}

impl LocalHistogram {
    /// Record one duration.
    pub fn observe(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// Observations held.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Fold into `into` and start over.
    pub fn flush(&mut self, into: &Histogram) {
        into.merge(self);
        *self = LocalHistogram::default();
    }
}

/// A histogram's counts at one moment (buckets not cumulative).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Count per bucket; the last is above the largest bound.
    pub buckets: [u64; NB],
    /// Sum of the observations, µs.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

/// A histogram in brief, for JSON (`/api/streams`, `/live/{name}/info`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LatencySummary {
    /// Observations.
    pub count: u64,
    /// Mean, milliseconds.
    pub mean_ms: Option<f64>,
    /// Median, milliseconds (interpolated within its bucket, as Prometheus'
    /// `histogram_quantile` does).
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds (as above).
    pub p99_ms: Option<f64>,
}

impl HistogramSnapshot {
    /// The `q` quantile in seconds, interpolated linearly within the bucket
    /// it falls in; `None` without observations. Above the largest bound it
    /// is that bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BUCKETS_US.get(i) else {
                    return BUCKETS_US.last().map(|&b| b as f64 / 1e6);
                };
                let lower = if i == 0 { 0 } else { BUCKETS_US[i - 1] };
                let frac = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some((lower as f64 + (upper - lower) as f64 * frac) / 1e6);
            }
            below += n;
        }
        BUCKETS_US.last().map(|&b| b as f64 / 1e6)
    }

    /// Count, mean, p50 and p99 in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |s: f64| (s * 1e6).round() / 1e3;
        LatencySummary {
            count: self.count,
            mean_ms: (self.count > 0).then(|| ms(self.sum_us as f64 / 1e6 / self.count as f64)),
            p50_ms: self.quantile(0.5).map(ms),
            p99_ms: self.quantile(0.99).map(ms),
        }
    }

    fn add(&mut self, o: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.sum_us += o.sum_us;
        self.count += o.count;
    }
}

/// Where a stream's data comes from, as far as the cascade is concerned
/// (stored in [`StreamStats::upstream`]; the cascade sets it with
/// [`StreamStats::set_upstream`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum UpstreamState {
    /// Published on this relay: no upstream.
    None = 0,
    /// Pulling from an origin: connecting.
    Connecting = 1,
    /// Pulling from an origin: receiving.
    Connected = 2,
    /// Pulling from an origin: the connection failed; retrying or given up.
    Failed = 3,
}

impl UpstreamState {
    /// Every state.
    pub const ALL: [UpstreamState; 4] = [
        UpstreamState::None,
        UpstreamState::Connecting,
        UpstreamState::Connected,
        UpstreamState::Failed,
    ];

    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamState::None => "none",
            UpstreamState::Connecting => "connecting",
            UpstreamState::Connected => "connected",
            UpstreamState::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> UpstreamState {
        match v {
            1 => UpstreamState::Connecting,
            2 => UpstreamState::Connected,
            3 => UpstreamState::Failed,
            _ => UpstreamState::None,
        }
    }
}

/// The upstream state cell of a stream (an `AtomicU8` that reads as an
/// [`UpstreamState`]).
#[derive(Debug, Default)]
pub struct UpstreamCell(AtomicU8);

impl UpstreamCell {
    /// Set the state.
    pub fn set(&self, s: UpstreamState) {
        self.0.store(s as u8, Relaxed);
    }

    /// The state now.
    pub fn get(&self) -> UpstreamState {
        UpstreamState::from_u8(self.0.load(Relaxed))
    }
}

/// The counters of one stream at one moment.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// `bytes_in` of the stream.
    pub bytes_in: u64,
    /// `fragments_in` of the stream.
    pub fragments_in: u64,
    /// `bytes_out` of the stream.
    pub bytes_out: u64,
    /// `fragments_out` of the stream.
    pub fragments_out: u64,
    /// `skips` of the stream.
    pub skips: u64,
    /// `lag_disconnects` of the stream.
    pub lag_disconnects: u64,
    /// `publishes` of the stream.
    pub publishes: u64,
    /// `join` of the stream.
    pub join: HistogramSnapshot,
    /// `delivery` of the stream.
    pub delivery: HistogramSnapshot,
}

impl Counts {
    /// Read a stream's counters now.
    pub fn of(s: &StreamStats) -> Counts {
        Counts {
            bytes_in: s.bytes_in.load(Relaxed),
            fragments_in: s.fragments_in.load(Relaxed),
            bytes_out: s.bytes_out.load(Relaxed),
            fragments_out: s.fragments_out.load(Relaxed),
            skips: s.skips.load(Relaxed),
            lag_disconnects: s.lag_disconnects.load(Relaxed),
            publishes: s.publishes.load(Relaxed),
            join: s.join.snapshot(),
            delivery: s.delivery.snapshot(),
        }
    }

    fn add(&mut self, o: &Counts) {
        self.bytes_in += o.bytes_in;
        self.fragments_in += o.fragments_in;
        self.bytes_out += o.bytes_out;
        self.fragments_out += o.fragments_out;
        self.skips += o.skips;
        self.lag_disconnects += o.lag_disconnects;
        self.publishes += o.publishes;
        self.join.add(&o.join);
        self.delivery.add(&o.delivery);
    }
}

/// Relay-wide totals of one registry: the stats of every stream that is
/// still referenced, plus what the ended ones counted. Streams are tracked
/// when created; an entry whose stream is gone (only this list holds its
/// stats) is folded into `retired` on the next creation or scrape, so
/// relay-wide counters never go backwards.
#[derive(Debug, Default)]
pub struct Totals {
    inner: Mutex<TotalsInner>,
    /// Publishers admitted, by ingest transport.
    ingest: [AtomicU64; Ingest::COUNT],
}

#[derive(Debug, Default)]
struct TotalsInner {
    live: Vec<Arc<StreamStats>>,
    retired: Counts,
}

impl TotalsInner {
    fn sweep(&mut self) {
        let retired = &mut self.retired;
        self.live.retain(|s| {
            if Arc::strong_count(s) == 1 {
                retired.add(&Counts::of(s));
                false
            } else {
                true
            }
        });
    }
}

impl Totals {
    /// Count a publisher admitted over `transport`.
    pub fn publisher_admitted(&self, transport: Ingest) {
        self.ingest[transport as usize].fetch_add(1, Relaxed);
    }

    /// Publishers admitted so far, by ingest transport (in [`Ingest::ALL`] order).
    pub fn ingest_snapshot(&self) -> [u64; Ingest::COUNT] {
        std::array::from_fn(|i| self.ingest[i].load(Relaxed))
    }

    /// Track a new stream's stats.
    pub fn track(&self, stats: Arc<StreamStats>) {
        let mut t = self.inner.lock();
        t.sweep();
        t.live.push(stats);
    }

    /// Relay-wide counts, viewers by transport and streams by upstream state.
    pub fn snapshot(&self) -> (Counts, [u64; Transport::COUNT], [u64; 4]) {
        let mut t = self.inner.lock();
        t.sweep();
        let mut c = t.retired.clone();
        let mut viewers = [0; Transport::COUNT];
        let mut upstream = [0; 4];
        for s in &t.live {
            c.add(&Counts::of(s));
            for (v, t) in viewers.iter_mut().zip(Transport::ALL) {
                *v += s.viewers_of(t);
            }
            upstream[s.upstream.get() as usize] += 1;
        }
        (c, viewers, upstream)
    }
}

/// A viewer's metrics: join time once, delivery latency per fragment,
/// gathered locally and folded into the stream's histograms.
#[derive(Debug)]
pub struct ViewerMetrics {
    opened: Instant,
    /// Join time still to be recorded (push transports only).
    joining: bool,
    local: LocalHistogram,
    last_flush: Instant,
}

impl ViewerMetrics {
    /// A viewer opened now; `push` is false for the polling transports,
    /// whose every request opens a cursor (their join time is not recorded).
    pub fn new(push: bool) -> ViewerMetrics {
        let now = Instant::now();
        ViewerMetrics {
            opened: now,
            joining: push,
            local: LocalHistogram::default(),
            last_flush: now,
        }
    }

    /// A fragment that arrived at `arrived` was written at `now`.
    pub fn wrote(&mut self, stats: &StreamStats, arrived: Instant, now: Instant) {
        if self.joining {
            self.joining = false;
            stats
                .join
                .observe(now.saturating_duration_since(self.opened));
        }
        self.local.observe(now.saturating_duration_since(arrived));
        if self.local.len() >= FLUSH_EVERY
            || now.saturating_duration_since(self.last_flush) >= FLUSH_INTERVAL
        {
            self.local.flush(&stats.delivery);
            self.last_flush = now;
        }
    }

    /// Fold what is held (when the viewer goes away).
    pub fn flush(&mut self, stats: &StreamStats) {
        if !self.local.is_empty() {
            self.local.flush(&stats.delivery);
        }
    }
}

/// Polling clients seen lately, per stream: a polling viewer counts as a
/// viewer for [`Pollers::WINDOW`] after its last request. Bounded: at most
/// [`Pollers::MAX`] clients are remembered (more are not counted).
#[derive(Debug, Default)]
pub struct Pollers {
    seen: Mutex<std::collections::HashMap<u64, (Instant, Transport)>>,
}

impl Pollers {
    /// How long a poll keeps its client counted (longer than a long poll's
    /// longest wait plus the pause between two polls).
    pub const WINDOW: Duration = Duration::from_secs(40);
    /// Most clients remembered per stream.
    pub const MAX: usize = 100_000;

    /// Client `key` polled at `now` over `t`.
    pub fn note(&self, key: u64, t: Transport, now: Instant) {
        let mut seen = self.seen.lock();
        if seen.len() >= Self::MAX {
            seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < Self::WINDOW);
            if seen.len() >= Self::MAX {
                return;
            }
        }
        seen.insert(key, (now, t));
    }

    /// Clients that polled over `t` within the window before `now`.
    pub fn recent(&self, t: Transport, now: Instant) -> u64 {
        let mut seen = self.seen.lock();
        seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < Self::WINDOW);
        seen.values().filter(|(_, tt)| *tt == t).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(500), 0);
        assert_eq!(bucket_of(501), 1);
        assert_eq!(bucket_of(30_000_000), 14);
        assert_eq!(bucket_of(30_000_001), 15);
    }
}
