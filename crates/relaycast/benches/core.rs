//! Hot paths of the core, measured with criterion:
//!
//! - `splitter`: bytes per second of fMP4 cut into init + fragments, fed in
//!   network-sized pieces (1,500 and 16 KiB) and as one `Bytes` (zero copy).
//! - `fanout`: the cost of appending one fragment and letting every viewer's
//!   cursor read it, at 1, 100 and 10,000 viewers (reported per fragment; the
//!   per-viewer cost is that figure divided by the viewer count).
//!
//! Run: `cargo bench --bench core`.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use relaycast::egress::Transport;
use relaycast::fanout::{Event, FanoutConfig, Registry, ViewerStart};
use relaycast::media::{Fragment, Init, Item, Splitter, SplitterConfig};
use std::hint::black_box;

/// The demo clip: 8 s of H.264 + AAC in 100 ms fragments.
const CLIP: &[u8] = include_bytes!("../../relaycast-media/src/demo/demo.mp4");

fn split_all(chunks: impl Iterator<Item = Bytes>) -> usize {
    let mut s = Splitter::new(SplitterConfig::default());
    let mut n = 0;
    for c in chunks {
        s.push_bytes(c);
        while let Ok(Some(item)) = s.next_item() {
            n += match item {
                Item::Init(i) => i.bytes.len(),
                Item::Fragment(f) => f.bytes.len(),
            };
        }
    }
    n
}

fn splitter(c: &mut Criterion) {
    let clip = Bytes::from_static(CLIP);
    let mut g = c.benchmark_group("splitter");
    g.throughput(Throughput::Bytes(CLIP.len() as u64));
    for piece in [1500usize, 16 * 1024] {
        g.bench_with_input(BenchmarkId::new("pieces", piece), &piece, |b, &piece| {
            b.iter(|| {
                let chunks = (0..clip.len())
                    .step_by(piece)
                    .map(|i| clip.slice(i..(i + piece).min(clip.len())));
                black_box(split_all(chunks))
            })
        });
    }
    g.bench_function("whole", |b| {
        b.iter(|| black_box(split_all(std::iter::once(clip.clone()))))
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let payload = Bytes::from(vec![7u8; 6250]); // 100 ms at 500 kbit/s
    for viewers in [1usize, 100, 10_000] {
        g.throughput(Throughput::Elements(viewers as u64));
        g.bench_with_input(
            BenchmarkId::new("append+read", viewers),
            &viewers,
            |b, &viewers| {
                let reg = Registry::new(FanoutConfig::default());
                let publisher = reg.publish("bench").expect("publish");
                publisher
                    .push_init(Init {
                        bytes: Bytes::from_static(b"init"),
                        codecs: "avc1.64001f".into(),
                        mime: "video/mp4; codecs=\"avc1.64001f\"".into(),
                        tracks: Vec::new(),
                    })
                    .expect("init");
                let mut n = 0u64;
                let frag = |n: u64| Fragment {
                    index: n,
                    keyframe: n % 10 == 0,
                    decode_time: n * 100,
                    duration: 100,
                    timescale: 1000,
                    mfhd_seq: n as u32 + 1,
                    bytes: payload.clone(),
                };
                publisher.push_fragment(frag(n)).expect("push");
                n += 1;
                let mut vs: Vec<_> = (0..viewers)
                    .map(|_| {
                        reg.get("bench").expect("stream").subscribe(ViewerStart {
                            after: None,
                            transport: Transport::WebSocket,
                        })
                    })
                    .collect();
                // Drain the join events (init, first fragment).
                for v in &mut vs {
                    while v.try_next().is_some() {}
                }
                b.iter(|| {
                    publisher.push_fragment(frag(n)).expect("push");
                    n += 1;
                    let mut got = 0usize;
                    for v in &mut vs {
                        while let Some(ev) = v.try_next() {
                            if let Event::Fragment(c) = ev {
                                got += c.bytes.len();
                            }
                        }
                    }
                    black_box(got)
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, splitter, fanout);
criterion_main!(benches);
