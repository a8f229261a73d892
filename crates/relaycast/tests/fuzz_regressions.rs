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

/// What `fuzz/fuzz_targets/rtmp_session.rs` found in `rml_rtmp` (patched
/// under vendor/rml_rtmp): a client's bytes after the handshake, fed to the
/// server session in the target's piece size, end in an error or nothing,
/// never a panic (an AMF0 command of one value panicked in `drain(..3)`).
#[test]
fn rtmp_session_survives_every_fuzz_finding() {
    use rml_rtmp::sessions::{
        ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
    };
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/fixtures/rtmp_fuzz");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("tests/fixtures/rtmp_fuzz") {
        let path = e.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        let step = 1 + usize::from(data.last().copied().unwrap_or(0)) * 37 % 4096;
        let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).expect("session");
        let mut outcome = Ok(());
        for piece in data.chunks(step) {
            match session.handle_input(piece) {
                Ok(results) => {
                    for r in results {
                        if let ServerSessionResult::RaisedEvent(
                            ServerSessionEvent::ConnectionRequested { request_id, .. },
                        ) = r
                        {
                            let _ = session.accept_request(request_id);
                        }
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        eprintln!("{}: {outcome:?}", path.display());
        n += 1;
    }
    assert!(n > 0);
}
