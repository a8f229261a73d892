//! The WebSocket publish path below the socket: arbitrary binary messages
//! into an `IngestSession` (splitter → publisher → stream), with a viewer
//! reading after every message. Nothing may panic; the viewer must see
//! fragments in increasing seq order and never more than was published.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relaycast::config::IngestConfig;
use relaycast::egress::Transport;
use relaycast::fanout::{Event, FanoutConfig, Registry, ViewerStart};
use relaycast::ingest::IngestSession;

fuzz_target!(|data: &[u8]| {
    // Message sizes come from the input's last byte, as a client may split
    // the stream anywhere; a small ring so eviction and skips happen.
    let step = 1 + usize::from(data.last().copied().unwrap_or(0)) * 257 % 65536;
    let mut fanout = FanoutConfig::default();
    fanout.ring.max_fragments = 4;
    fanout.ring.max_bytes = 4096;
    let registry = Registry::new(fanout);
    let cfg = IngestConfig {
        max_box_size: 1 << 20,
        ..IngestConfig::default()
    };
    let Ok(publisher) = registry.publish("fuzz") else {
        panic!("a fresh registry accepts a publisher");
    };
    let stream = publisher.stream().clone();
    let mut viewer = stream.subscribe(ViewerStart {
        after: None,
        transport: Transport::WebSocket,
    });
    let mut session = IngestSession::new(publisher, &cfg);
    let data = Bytes::copy_from_slice(data);
    let mut last_seq = None;
    let mut delivered = 0usize;
    let mut drain = |viewer: &mut relaycast::fanout::Viewer| {
        while let Some(ev) = viewer.try_next() {
            match ev {
                Event::Fragment(c) => {
                    assert!(last_seq.is_none_or(|s| c.seq > s), "seqs go forward");
                    last_seq = Some(c.seq);
                    delivered += c.bytes.len();
                }
                Event::End(_) => break,
                _ => {}
            }
        }
    };
    let mut off = 0;
    while off < data.len() {
        let end = (off + step).min(data.len());
        let r = session.push(data.slice(off..end));
        drain(&mut viewer);
        if r.is_err() {
            break;
        }
        off = end;
    }
    let _ = session.finish();
    drop(session);
    drain(&mut viewer);
    assert!(delivered <= data.len());
    assert_eq!(
        stream.stats().bytes_out.load(std::sync::atomic::Ordering::Relaxed) as usize,
        delivered
    );
});
