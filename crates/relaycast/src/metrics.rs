//! `metrics`: what `GET /metrics` says, in the Prometheus text format
//! (version 0.0.4), written by hand from atomics at scrape time.
//!
//! Why by hand: every number already lives in an atomic next to the thing it
//! counts ([`StreamStats`] per stream), so a scrape is a walk over the
//! streams, and the hot path stays what it was: no lock, no allocation, no
//! map lookup per fragment per viewer. Histograms are real cumulative
//! Prometheus histograms (`_bucket{le=…}`, `_sum`, `_count`); a viewer
//! gathers its delivery latencies in a local [`LocalHistogram`] and folds
//! them into its stream's shared [`Histogram`] every [`FLUSH_EVERY`]
//! observations, every second, and when it goes away.
//!
//! # Families
//!
//! Relay-wide (`relaycast_*`): streams, publishers, viewers by transport,
//! bytes and fragments in and out, skips, lag disconnects, publishes,
//! refused clients by reason, join time and delivery latency histograms,
//! streams by upstream (cascade) state, build info, process memory and file
//! descriptors. The relay-wide counters never go backwards: when a stream
//! ends, its counts are folded into the registry's [`Totals`].
//!
//! Per stream (`relaycast_stream_*{stream="…"}`): the same counters,
//! histograms and gauges for each stream that exists now. They restart from
//! zero when a stream ends and a new one starts under the same name (a
//! counter reset, which `rate()` handles).
//!
//! # Adding a family
//!
//! A counter that belongs to a stream goes into [`StreamStats`] and gets a
//! line in [`write_streams`]. A relay-wide family that has its own state
//! registers a [`Collector`] with [`add_collector`]; it is called on every
//! scrape with an [`Exposition`] to write to. Refusals go through
//! [`refused`].

use crate::fanout::stats::*;
use crate::fanout::{Registry, Transport};
use parking_lot::Mutex;
use std::fmt::Write as _;

/// Writes extra families into a scrape; see [`add_collector`].
pub type Collector = Box<dyn Fn(&Registry, &mut Exposition) + Send + Sync>;

static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new());

/// Register a function called on every scrape (process-wide) to write more
/// families, e.g. a QUIC endpoint's connection gauge.
pub fn add_collector(c: Collector) {
    COLLECTORS.lock().push(c);
}

/// Metric kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic (the name should end in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// `_bucket`/`_sum`/`_count`.
    Histogram,
}

/// A scrape being written: families with `# HELP` / `# TYPE`, then samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Start a family. Its samples must follow before the next family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample of the current family, a float (seconds, ratios).
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of one histogram (seconds) of the current family.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let mut cum = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cum += n;
            let le = match BUCKETS_US.get(i) {
                Some(&us) => secs(us),
                None => "+Inf".to_string(),
            };
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {cum}");
        }
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", secs(h.sum_us));
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            for ch in v.chars() {
                match ch {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Microseconds as seconds, exactly (`1500` → `0.0015`).
fn secs(us: u64) -> String {
    let s = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_string()
}

/// Writes the families of a layer above this one into a scrape.
pub type Part = dyn Fn(&Registry, &mut Exposition);

/// The whole `/metrics` text for a relay; `refused` are its refusals by
/// reason (counted by [`crate::limits`]); `parts` write the families of the
/// layers above this one (the cascade's), after the streams'.
pub fn metrics_text(
    registry: &Registry,
    refused: &crate::limits::Refused,
    parts: &[&Part],
) -> String {
    let mut e = Exposition::default();
    write_totals(registry, refused, &mut e);
    write_streams(registry, &mut e);
    for part in parts {
        part(registry, &mut e);
    }
    write_process(&mut e);
    for c in COLLECTORS.lock().iter() {
        c(registry, &mut e);
    }
    e.finish()
}

fn write_totals(registry: &Registry, refused: &crate::limits::Refused, e: &mut Exposition) {
    let streams = registry.list();
    let (c, viewers, upstream) = registry.totals().snapshot();
    e.family(
        "relaycast_build_info",
        Kind::Gauge,
        "Always 1; the version is a label.",
    );
    e.sample(
        "relaycast_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    e.single(
        "relaycast_streams",
        Kind::Gauge,
        "Streams that exist now (live or in their grace period).",
        streams.len() as u64,
    );
    e.single(
        "relaycast_publishers",
        Kind::Gauge,
        "Publishers connected now.",
        streams.iter().filter(|s| s.is_live()).count() as u64,
    );
    e.family(
        "relaycast_viewers",
        Kind::Gauge,
        "Viewers connected now, by transport.",
    );
    for t in Transport::ALL {
        e.sample(
            "relaycast_viewers",
            &[("transport", t.name())],
            viewers[t as usize],
        );
    }
    let counters: [(&str, &str, u64); 7] = [
        (
            "relaycast_bytes_in_total",
            "Fragment bytes received from publishers.",
            c.bytes_in,
        ),
        (
            "relaycast_fragments_in_total",
            "Fragments received from publishers.",
            c.fragments_in,
        ),
        (
            "relaycast_bytes_out_total",
            "Fragment bytes handed to viewers.",
            c.bytes_out,
        ),
        (
            "relaycast_fragments_out_total",
            "Fragments handed to viewers.",
            c.fragments_out,
        ),
        (
            "relaycast_skips_total",
            "Times a slow viewer was moved forward to the newest keyframe.",
            c.skips,
        ),
        (
            "relaycast_lag_disconnects_total",
            "Viewers disconnected for lagging.",
            c.lag_disconnects,
        ),
        (
            "relaycast_publishes_total",
            "Publisher connections accepted.",
            c.publishes,
        ),
    ];
    for (name, help, v) in counters {
        e.single(name, Kind::Counter, help, v);
    }
    e.family(
        "relaycast_ingest_publishers_total",
        Kind::Counter,
        "Publishers admitted, by ingest transport (http, ws, tcp, quic, rtmp, srt).",
    );
    let admitted = registry.totals().ingest_snapshot();
    for (t, n) in crate::fanout::Ingest::ALL.iter().zip(admitted) {
        e.sample(
            "relaycast_ingest_publishers_total",
            &[("transport", t.name())],
            n,
        );
    }
    e.family(
        "relaycast_refused_total",
        Kind::Counter,
        "Clients refused, by reason.",
    );
    for (reason, n) in refused.snapshot() {
        e.sample("relaycast_refused_total", &[("reason", reason.name())], n);
    }
    e.family(
        "relaycast_join_seconds",
        Kind::Histogram,
        "Viewer connected (cursor opened) to its first fragment written; push transports only.",
    );
    e.histogram("relaycast_join_seconds", &[], &c.join);
    e.family(
        "relaycast_delivery_seconds",
        Kind::Histogram,
        "Fragment arrival at the relay to written to a viewer.",
    );
    e.histogram("relaycast_delivery_seconds", &[], &c.delivery);
    e.family(
        "relaycast_upstream_streams",
        Kind::Gauge,
        "Streams by upstream (cascade) state; none = published here.",
    );
    for s in UpstreamState::ALL {
        e.sample(
            "relaycast_upstream_streams",
            &[("state", s.name())],
            upstream[s as usize],
        );
    }
}

/// The per-stream families.
fn write_streams(registry: &Registry, e: &mut Exposition) {
    let streams = registry.list();
    let counts: Vec<Counts> = streams.iter().map(|s| Counts::of(s.stats())).collect();
    e.family(
        "relaycast_stream_live",
        Kind::Gauge,
        "1 while the stream has a publisher.",
    );
    for s in &streams {
        e.sample(
            "relaycast_stream_live",
            &[("stream", s.name())],
            u64::from(s.is_live()),
        );
    }
    e.family(
        "relaycast_stream_viewers",
        Kind::Gauge,
        "Viewers of the stream now, by transport.",
    );
    for s in &streams {
        for t in Transport::ALL {
            e.sample(
                "relaycast_stream_viewers",
                &[("stream", s.name()), ("transport", t.name())],
                s.stats().viewers_of(t),
            );
        }
    }
    type Get = fn(&Counts) -> u64;
    let families: [(&str, &str, Get); 7] = [
        (
            "relaycast_stream_bytes_in_total",
            "Fragment bytes received.",
            |c| c.bytes_in,
        ),
        (
            "relaycast_stream_fragments_in_total",
            "Fragments received.",
            |c| c.fragments_in,
        ),
        (
            "relaycast_stream_bytes_out_total",
            "Fragment bytes handed to viewers.",
            |c| c.bytes_out,
        ),
        (
            "relaycast_stream_fragments_out_total",
            "Fragments handed to viewers.",
            |c| c.fragments_out,
        ),
        (
            "relaycast_stream_skips_total",
            "Viewer skips to the newest keyframe.",
            |c| c.skips,
        ),
        (
            "relaycast_stream_lag_disconnects_total",
            "Viewers disconnected for lagging.",
            |c| c.lag_disconnects,
        ),
        (
            "relaycast_stream_publishes_total",
            "Publisher connections.",
            |c| c.publishes,
        ),
    ];
    for (name, help, get) in families {
        e.family(name, Kind::Counter, help);
        for (s, c) in streams.iter().zip(&counts) {
            e.sample(name, &[("stream", s.name())], get(c));
        }
    }
    e.family(
        "relaycast_stream_join_seconds",
        Kind::Histogram,
        "Viewer join time (cursor opened to first fragment written).",
    );
    for (s, c) in streams.iter().zip(&counts) {
        e.histogram(
            "relaycast_stream_join_seconds",
            &[("stream", s.name())],
            &c.join,
        );
    }
    e.family(
        "relaycast_stream_delivery_seconds",
        Kind::Histogram,
        "Fragment arrival to written to a viewer.",
    );
    for (s, c) in streams.iter().zip(&counts) {
        e.histogram(
            "relaycast_stream_delivery_seconds",
            &[("stream", s.name())],
            &c.delivery,
        );
    }
    e.family(
        "relaycast_stream_upstream_state",
        Kind::Gauge,
        "1 for the stream's current upstream (cascade) state.",
    );
    for s in &streams {
        let cur = s.stats().upstream.get();
        for st in UpstreamState::ALL {
            e.sample(
                "relaycast_stream_upstream_state",
                &[("stream", s.name()), ("state", st.name())],
                u64::from(st == cur),
            );
        }
    }
}

/// `process_resident_memory_bytes` and `process_open_fds` (Linux /proc).
fn write_process(e: &mut Exposition) {
    if let Some(rss) = resident_memory_bytes() {
        e.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            rss,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        e.single(
            "process_open_fds",
            Kind::Gauge,
            "Open file descriptors.",
            dir.count() as u64,
        );
    }
}

/// This process's resident set size (Linux), in bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_exposition_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        let mut l = LocalHistogram::default();
        l.observe(Duration::from_secs(40));
        h.merge(&l);
        let mut e = Exposition::default();
        e.family("x_seconds", Kind::Histogram, "test");
        e.histogram("x_seconds", &[("stream", "a")], &h.snapshot());
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"0.005\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"30\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("x_seconds_sum{stream=\"a\"} 40.0033\n"));
        assert!(text.contains("x_seconds_count{stream=\"a\"} 3\n"));
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..10 {
            h.observe(Duration::from_millis(20)); // (10 ms, 25 ms]
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).expect("p50");
        assert!((p50 - 0.0175).abs() < 1e-9, "{p50}");
        assert_eq!(s.quantile(1.0), Some(0.025));
        let sum = s.summary();
        assert_eq!(sum.count, 10);
        assert_eq!(sum.mean_ms, Some(20.0));
        h.observe(Duration::from_secs(100));
        assert_eq!(h.snapshot().quantile(1.0), Some(30.0));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.sample("m", &[("k", "a\"b\\c\nd")], 1);
        assert_eq!(e.finish(), "m{k=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn seconds_are_exact() {
        assert_eq!(secs(500), "0.0005");
        assert_eq!(secs(1_000_000), "1");
        assert_eq!(secs(2_500_000), "2.5");
        assert_eq!(secs(0), "0");
    }
}
