//! Inputs the fuzz targets (fuzz/) found problems with, replayed through the
//! same paths: the splitter alone, and an ingest session feeding a stream
//! with a viewer. Each must be refused or accepted quickly, in bounded memory.

use bytes::Bytes;
use relaycast::config::IngestConfig;
use relaycast::egress::Transport;
use relaycast::fanout::{FanoutConfig, Registry, ViewerStart};
use relaycast::ingest::IngestSession;
use relaycast::media::{Splitter, SplitterConfig};

fn inputs() -> Vec<(String, Bytes)> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/fixtures/fuzz");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/fuzz")
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, Bytes::from(std::fs::read(e.path()).expect("read")))
        })
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn splitter_survives_every_fuzz_finding() {
    for (name, data) in inputs() {
        let mut s = Splitter::new(SplitterConfig {
            max_box_size: 1 << 20,
        });
        s.push(&data);
        let mut items = 0;
        while let Ok(Some(_)) = s.next_item() {
            items += 1;
        }
        eprintln!("{name}: {items} items");
    }
}

#[test]
fn ingest_session_survives_every_fuzz_finding() {
    for (name, data) in inputs() {
        let registry = Registry::new(FanoutConfig::default());
        let publisher = registry.publish("fuzz").expect("publish");
        let stream = publisher.stream().clone();
        let mut viewer = stream.subscribe(ViewerStart {
            after: None,
            transport: Transport::WebSocket,
        });
        let mut session = IngestSession::new(publisher, &IngestConfig::default());
        let r = session.push(data);
        while viewer.try_next().is_some() {}
        eprintln!("{name}: {r:?}");
    }
}
