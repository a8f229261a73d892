//! `metrics`: what `GET /metrics` says, encoded by the `prometheus-client`
//! crate from the relay's own atomics at scrape time.
//!
//! The numbers live in atomics next to the thing they count ([`StreamStats`]
//! per stream, [`Totals`] relay-wide, [`Refused`](crate::limits::Refused)),
//! so the hot path stays what it was: no lock, no allocation, no map lookup
//! per fragment per viewer. A scrape walks the streams; the families are
//! `prometheus-client` [`Collector`]s that read those atomics and hand the
//! values to the crate's encoder, which owns the format: the Prometheus text
//! format 0.0.4 by default (`prometheus_text::encode`), OpenMetrics 1.0.0
//! when the scraper's `Accept` prefers it (`text::encode`, see [`Format`]).
//! The crate's own metric types (`Family`, `Counter`) are not used: they
//! would put a hash map lookup on the hot path. `tests/ops.rs` holds the
//! output of a fixed relay as a golden file, so a change in the crate's
//! formatting is seen.
//!
//! Histograms are real cumulative Prometheus histograms (`_bucket{le=…}`,
//! `_sum`, `_count`); a viewer gathers its delivery latencies in a local
//! [`LocalHistogram`] and folds them into its stream's shared [`Histogram`]
//! every [`FLUSH_EVERY`] observations, every second, and when it goes away.
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
//! line in `Core::streams`. A layer above this one (the cascade) passes a
//! [`Part`] to [`metrics_text`]: it makes a [`Collector`] for the scrape.
//! Process-wide state (the allocator's heap figures) registers a
//! [`Collector`] with [`add_collector`]. Write families with [`family`] and
//! samples with [`gauge`], [`counter`] and [`histogram`]. Refusals go
//! through [`refused`](crate::limits::Refused::refuse).

use crate::fanout::stats::*;
use crate::fanout::{Registry, Stream, Transport};
use crate::limits::{Reason, Refused};
use parking_lot::Mutex;
pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::encoding::{NoLabelSet, prometheus_text, text};
pub use prometheus_client::metrics::MetricType as Kind;
use std::fmt;
use std::sync::Arc;

/// A process-wide collector, shared by every scrape.
#[derive(Debug)]
struct Shared(Arc<dyn Collector>);

impl Collector for Shared {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        self.0.encode(encoder)
    }
}

static COLLECTORS: Mutex<Vec<Arc<dyn Collector>>> = Mutex::new(Vec::new());

/// Register a collector called on every scrape (process-wide), after the
/// relay's own families, e.g. the allocator's heap gauges.
pub fn add_collector(c: impl Collector) {
    COLLECTORS.lock().push(Arc::new(c));
}

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0.0 text (counter families without `_total`, `# EOF`).
    OpenMetrics,
}

impl Format {
    /// The format a scraper asks for with `accept` (an `Accept` header):
    /// OpenMetrics when `application/openmetrics-text` has a higher quality
    /// than `text/plain` (Prometheus' own scraper sends 1 and 0.5), the
    /// text format 0.0.4 otherwise, including when there is no header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut plain) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics > plain {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a scrape in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Makes the collector of a layer above this one (the cascade's) for one
/// scrape of a relay; see [`metrics_text`].
pub type Part = dyn Fn(&Registry) -> Box<dyn Collector>;

/// The whole `/metrics` text for a relay in `format`; `refused` are its
/// refusals by reason (counted by [`crate::limits`]); `parts` make the
/// collectors of the layers above this one (the cascade's), written after
/// the streams' families. Fails only when a collector does.
pub fn metrics_text(
    registry: &Registry,
    refused: &Refused,
    parts: &[&Part],
    format: Format,
) -> Result<String, crate::Error> {
    let mut collectors: Vec<Box<dyn Collector>> = vec![Box::new(Core {
        registry: registry.clone(),
        refused: refused.snapshot(),
    })];
    collectors.extend(parts.iter().map(|part| part(registry)));
    collectors.push(Box::new(Process));
    let shared = COLLECTORS.lock().clone();
    collectors.extend(
        shared
            .into_iter()
            .map(|c| Box::new(Shared(c)) as Box<dyn Collector>),
    );
    encode(collectors, format)
        .map_err(|_| crate::Error::Internal("a /metrics collector failed".into()))
}

/// Encode `collectors`, in order, in `format`.
fn encode(collectors: Vec<Box<dyn Collector>>, format: Format) -> Result<String, fmt::Error> {
    let mut r = prometheus_client::registry::Registry::default();
    for c in collectors {
        r.register_collector(c);
    }
    let mut out = String::new();
    match format {
        Format::Prometheus => prometheus_text::encode(&mut out, &r)?,
        Format::OpenMetrics => text::encode(&mut out, &r)?,
    }
    Ok(out)
}

/// Start a family: `# HELP`, `# TYPE`; its samples follow through the
/// returned encoder. A counter's `name` ends in `_total`, as it is exposed
/// (the encoder writes the suffix itself).
pub fn family<'s>(
    e: &'s mut DescriptorEncoder,
    name: &'s str,
    kind: Kind,
    help: &str,
) -> Result<MetricEncoder<'s>, fmt::Error> {
    let name = match kind {
        Kind::Counter => name.strip_suffix("_total").ok_or(fmt::Error)?,
        _ => name,
    };
    e.encode_descriptor(name, help, None, kind)
}

/// One gauge sample of the current family.
pub fn gauge(m: &mut MetricEncoder, labels: &[(&str, &str)], value: u64) -> fmt::Result {
    if labels.is_empty() {
        m.encode_gauge(&value)
    } else {
        m.encode_family(&labels)?.encode_gauge(&value)
    }
}

/// One gauge sample of the current family, a float (seconds, ratios).
pub fn gauge_f64(m: &mut MetricEncoder, labels: &[(&str, &str)], value: f64) -> fmt::Result {
    m.encode_family(&labels)?.encode_gauge(&value)
}

/// One counter sample of the current family.
pub fn counter(m: &mut MetricEncoder, labels: &[(&str, &str)], value: u64) -> fmt::Result {
    m.encode_family(&labels)?
        .encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

/// A family with a single unlabelled sample (gauge or counter).
pub fn single(
    e: &mut DescriptorEncoder,
    name: &str,
    kind: Kind,
    help: &str,
    value: u64,
) -> fmt::Result {
    let mut m = family(e, name, kind, help)?;
    match kind {
        Kind::Counter => counter(&mut m, &[], value),
        _ => gauge(&mut m, &[], value),
    }
}

/// The samples of one histogram (seconds) of the current family.
pub fn histogram(
    m: &mut MetricEncoder,
    labels: &[(&str, &str)],
    h: &HistogramSnapshot,
) -> fmt::Result {
    let mut buckets = [(f64::INFINITY, 0); BUCKETS_US.len() + 1];
    for (i, (b, &n)) in buckets.iter_mut().zip(h.buckets.iter()).enumerate() {
        *b = (
            BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |&us| us as f64 / 1e6),
            n,
        );
    }
    m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
        h.sum_us as f64 / 1e6,
        h.count,
        &buckets,
        None,
    )
}

/// The core's families of one relay: relay-wide, then per stream.
struct Core {
    registry: Registry,
    refused: Vec<(Reason, u64)>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("streams", &self.registry.len())
            .field("refused", &self.refused)
            .finish()
    }
}

impl Collector for Core {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let streams = self.registry.list();
        self.totals(&streams, &mut e)?;
        Core::streams(&streams, &mut e)
    }
}

impl Core {
    fn totals(&self, streams: &[Stream], e: &mut DescriptorEncoder) -> fmt::Result {
        let (c, viewers, upstream) = self.registry.totals().snapshot();
        let mut m = family(
            e,
            "relaycast_build_info",
            Kind::Gauge,
            "Always 1; the version is a label.",
        )?;
        gauge(&mut m, &[("version", env!("CARGO_PKG_VERSION"))], 1)?;
        single(
            e,
            "relaycast_streams",
            Kind::Gauge,
            "Streams that exist now (live or in their grace period).",
            streams.len() as u64,
        )?;
        single(
            e,
            "relaycast_publishers",
            Kind::Gauge,
            "Publishers connected now.",
            streams.iter().filter(|s| s.is_live()).count() as u64,
        )?;
        let mut m = family(
            e,
            "relaycast_viewers",
            Kind::Gauge,
            "Viewers connected now, by transport.",
        )?;
        for t in Transport::ALL {
            gauge(&mut m, &[("transport", t.name())], viewers[t as usize])?;
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
            single(e, name, Kind::Counter, help, v)?;
        }
        let mut m = family(
            e,
            "relaycast_ingest_publishers_total",
            Kind::Counter,
            "Publishers admitted, by ingest transport (http, ws, tcp, quic, rtmp, srt, whip).",
        )?;
        let admitted = self.registry.totals().ingest_snapshot();
        for (t, n) in crate::fanout::Ingest::ALL.iter().zip(admitted) {
            counter(&mut m, &[("transport", t.name())], n)?;
        }
        let mut m = family(
            e,
            "relaycast_refused_total",
            Kind::Counter,
            "Clients refused, by reason.",
        )?;
        for &(reason, n) in &self.refused {
            counter(&mut m, &[("reason", reason.name())], n)?;
        }
        let mut m = family(
            e,
            "relaycast_join_seconds",
            Kind::Histogram,
            "Viewer connected (cursor opened) to its first fragment written; push transports only.",
        )?;
        histogram(&mut m, &[], &c.join)?;
        let mut m = family(
            e,
            "relaycast_delivery_seconds",
            Kind::Histogram,
            "Fragment arrival at the relay to written to a viewer.",
        )?;
        histogram(&mut m, &[], &c.delivery)?;
        let mut m = family(
            e,
            "relaycast_upstream_streams",
            Kind::Gauge,
            "Streams by upstream (cascade) state; none = published here.",
        )?;
        for s in UpstreamState::ALL {
            gauge(&mut m, &[("state", s.name())], upstream[s as usize])?;
        }
        Ok(())
    }

    /// The per-stream families.
    fn streams(streams: &[Stream], e: &mut DescriptorEncoder) -> fmt::Result {
        let counts: Vec<Counts> = streams.iter().map(|s| Counts::of(s.stats())).collect();
        let mut m = family(
            e,
            "relaycast_stream_live",
            Kind::Gauge,
            "1 while the stream has a publisher.",
        )?;
        for s in streams {
            gauge(&mut m, &[("stream", s.name())], u64::from(s.is_live()))?;
        }
        let mut m = family(
            e,
            "relaycast_stream_viewers",
            Kind::Gauge,
            "Viewers of the stream now, by transport.",
        )?;
        for s in streams {
            for t in Transport::ALL {
                gauge(
                    &mut m,
                    &[("stream", s.name()), ("transport", t.name())],
                    s.stats().viewers_of(t),
                )?;
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
            let mut m = family(e, name, Kind::Counter, help)?;
            for (s, c) in streams.iter().zip(&counts) {
                counter(&mut m, &[("stream", s.name())], get(c))?;
            }
        }
        type Pick = fn(&Counts) -> &HistogramSnapshot;
        let histograms: [(&str, &str, Pick); 2] = [
            (
                "relaycast_stream_join_seconds",
                "Viewer join time (cursor opened to first fragment written).",
                |c| &c.join,
            ),
            (
                "relaycast_stream_delivery_seconds",
                "Fragment arrival to written to a viewer.",
                |c| &c.delivery,
            ),
        ];
        for (name, help, pick) in histograms {
            let mut m = family(e, name, Kind::Histogram, help)?;
            for (s, c) in streams.iter().zip(&counts) {
                histogram(&mut m, &[("stream", s.name())], pick(c))?;
            }
        }
        let mut m = family(
            e,
            "relaycast_stream_upstream_state",
            Kind::Gauge,
            "1 for the stream's current upstream (cascade) state.",
        )?;
        for s in streams {
            let cur = s.stats().upstream.get();
            for st in UpstreamState::ALL {
                gauge(
                    &mut m,
                    &[("stream", s.name()), ("state", st.name())],
                    u64::from(st == cur),
                )?;
            }
        }
        Ok(())
    }
}

/// `process_resident_memory_bytes` and `process_open_fds` (Linux /proc).
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        if let Some(rss) = resident_memory_bytes() {
            single(
                &mut e,
                "process_resident_memory_bytes",
                Kind::Gauge,
                "Resident memory size in bytes.",
                rss,
            )?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            single(
                &mut e,
                "process_open_fds",
                Kind::Gauge,
                "Open file descriptors.",
                dir.count() as u64,
            )?;
        }
        Ok(())
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

    /// A collector from a closure, for the tests.
    struct F(Box<dyn Fn(DescriptorEncoder) -> fmt::Result + Send + Sync>);

    impl fmt::Debug for F {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("F")
        }
    }

    impl Collector for F {
        fn encode(&self, e: DescriptorEncoder) -> fmt::Result {
            (self.0)(e)
        }
    }

    fn text_of(
        format: Format,
        f: impl Fn(DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
    ) -> String {
        encode(vec![Box::new(F(Box::new(f)))], format).expect("encode")
    }

    #[test]
    fn histogram_exposition_is_cumulative_with_exact_bounds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        let mut l = LocalHistogram::default();
        l.observe(Duration::from_secs(40));
        h.merge(&l);
        let snap = h.snapshot();
        let text = text_of(Format::Prometheus, move |mut e| {
            let mut m = family(&mut e, "x_seconds", Kind::Histogram, "test")?;
            histogram(&mut m, &[("stream", "a")], &snap)
        });
        assert!(text.starts_with("# HELP x_seconds test\n# TYPE x_seconds histogram\n"));
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"0.005\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"1\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"30\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{stream=\"a\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("x_seconds_sum{stream=\"a\"} 40.0033\n"));
        assert!(text.contains("x_seconds_count{stream=\"a\"} 3\n"));
        assert_eq!(text.matches("_bucket").count(), BUCKETS_US.len() + 1);
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
        let text = text_of(Format::Prometheus, |mut e| {
            let mut m = family(&mut e, "m", Kind::Gauge, "h")?;
            gauge(&mut m, &[("k", "a\"b\\c\nd")], 1)
        });
        assert!(text.ends_with("\nm{k=\"a\\\"b\\\\c\\nd\"} 1\n"), "{text}");
    }

    #[test]
    fn counters_are_written_with_total_and_openmetrics_names_the_family_without() {
        let f = |mut e: DescriptorEncoder| single(&mut e, "c_total", Kind::Counter, "h", 5);
        assert_eq!(
            text_of(Format::Prometheus, f),
            "# HELP c_total h\n# TYPE c_total counter\nc_total 5\n"
        );
        assert_eq!(
            text_of(Format::OpenMetrics, f),
            "# HELP c h\n# TYPE c counter\nc_total 5\n# EOF\n"
        );
        // A counter must be named as exposed, with `_total`.
        let bad = encode(
            vec![Box::new(F(Box::new(|mut e| {
                single(&mut e, "c", Kind::Counter, "h", 5)
            })))],
            Format::Prometheus,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn openmetrics_only_when_the_scraper_prefers_it() {
        use Format::*;
        for (accept, want) in [
            (None, Prometheus),
            (Some(""), Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                OpenMetrics,
            ),
            // Prometheus' scraper.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4,application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Prometheus),
            (Some("application/openmetrics-text;q=bad"), Prometheus),
            (
                Some("APPLICATION/OpenMetrics-Text ; Q=0.9, text/plain;q=0.8"),
                OpenMetrics,
            ),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }
}
