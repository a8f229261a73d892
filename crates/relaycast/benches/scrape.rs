//! `/metrics` scrape time: the whole text for a relay with 100 and 1,000
//! streams, each with counters, viewers of every transport and both
//! histograms filled (what `GET /metrics` costs the relay, without HTTP).
//!
//! Run: `cargo bench --bench scrape`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use relaycast::fanout::{FanoutConfig, Publisher, Registry, Transport};
use relaycast::limits::Refused;
use std::hint::black_box;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A registry with `n` live streams and figures in every family.
fn relay(n: usize) -> (Registry, Vec<Publisher>) {
    let registry = Registry::new(FanoutConfig::default());
    let mut keep = Vec::new();
    for i in 0..n {
        let name = format!("channel-{i:04}");
        keep.push(registry.publish(&name).expect("publish"));
        let s = registry.get(&name).expect("stream");
        let st = s.stats();
        let i = i as u64;
        st.bytes_in.store(123_456_789 * (i + 1), Relaxed);
        st.fragments_in.store(45_678 * (i + 1), Relaxed);
        st.bytes_out.store(987_654_321 * (i + 1), Relaxed);
        st.fragments_out.store(456_780 * (i + 1), Relaxed);
        st.skips.store(i % 7, Relaxed);
        for t in Transport::ALL {
            st.viewers[t as usize].store(i % 5 + t as u64, Relaxed);
        }
        for j in 0..200u64 {
            st.delivery
                .observe(Duration::from_micros(300 + 1_700 * (j % 8) * (1 + j % 3)));
        }
        for j in 0..20u64 {
            st.join.observe(Duration::from_micros(40_000 + 37_000 * j));
        }
    }
    (registry, keep)
}

fn scrape(c: &mut Criterion) {
    let refused = Refused::default();
    let mut g = c.benchmark_group("scrape");
    for n in [100usize, 1_000] {
        let (registry, _keep) = relay(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(scrape_text(&registry, &refused)).len())
        });
    }
    g.finish();
}

fn scrape_text(registry: &Registry, refused: &Refused) -> String {
    relaycast::server::metrics_text(registry, refused)
}

criterion_group!(benches, scrape);
criterion_main!(benches);
