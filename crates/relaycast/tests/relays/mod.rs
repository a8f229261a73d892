//! Harness for the QUIC and cascade tests: relays with a QUIC endpoint on
//! 127.0.0.1:0, edges pointed at them, a looping live publisher, a recorder
//! of what the origin stored, and a lossy UDP proxy.
#![allow(dead_code)]

use bytes::Bytes;
use parking_lot::Mutex;
use relaycast::config::Config;
use relaycast::egress::Transport;
use relaycast::fanout::{Event, ViewerStart};
use relaycast::server::Running;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A test config with QUIC on 127.0.0.1:0 (and logs when `RUST_LOG` is set).
pub fn quic_config() -> Config {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let mut c = super::common::config();
    c.quic.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.server.shutdown_timeout = Duration::from_secs(1);
    c.cascade.linger = Duration::from_millis(500);
    c
}

/// The `quic://` URL of a relay (with its fingerprint pinned), optionally through `via`.
pub fn quic_url(relay: &Running, via: Option<SocketAddr>) -> String {
    let q = relay.quic.as_ref().expect("relay has QUIC");
    let addr = via.unwrap_or(q.addr);
    format!("quic://{addr}?fingerprint={}", q.fingerprint)
}

/// The `quic://…/NAME` URL of a stream.
pub fn stream_url(relay: &Running, name: &str) -> String {
    let q = relay.quic.as_ref().expect("relay has QUIC");
    format!("quic://{}/{name}?fingerprint={}", q.addr, q.fingerprint)
}

/// Start a relay that pulls from `origins`.
pub async fn edge(origins: &[&Running]) -> Running {
    let mut c = quic_config();
    c.cascade.origins = origins.iter().map(|o| quic_url(o, None)).collect();
    super::common::relay(c).await
}

/// Publish the built-in demo clip, looped at real time, to `to` until aborted.
pub fn publish_demo(to: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let demo = format!(
            "{}/crates/relaycast-media/src/demo/demo.mp4",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
        );
        let opts = relaycast::client::PublishOptions {
            re: true,
            looped: true,
            ..Default::default()
        };
        let r = relaycast::client::publish(&to, relaycast::client::Input::File(demo.into()), opts)
            .await;
        panic!("the looping publisher stopped: {r:?}");
    })
}

/// Wait (bounded) until `relay` has a live stream `name` with a fragment.
pub async fn wait_live(relay: &Running, name: &str) {
    for _ in 0..200 {
        if let Some(s) = relay.state.registry.get(name)
            && s.is_live()
            && s.newest_seq().is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {name} never went live");
}

/// What a relay stored: the init segments and every fragment by seq.
#[derive(Default)]
pub struct Recorded {
    pub inits: Vec<Bytes>,
    pub fragments: BTreeMap<u64, (bool, Bytes)>,
}

/// Record stream `name` of `relay` from its newest keyframe on, in-process.
pub fn record(relay: &Running, name: &str) -> (Arc<Mutex<Recorded>>, JoinHandle<()>) {
    let stream = relay.state.registry.get(name).expect("stream exists");
    let mut viewer = stream.subscribe(ViewerStart {
        after: None,
        transport: Transport::Poll,
    });
    let rec = Arc::new(Mutex::new(Recorded::default()));
    let r = rec.clone();
    let task = tokio::spawn(async move {
        loop {
            match viewer.next().await {
                Event::Init(i) => r.lock().inits.push(i.init.bytes.clone()),
                Event::Fragment(c) => {
                    r.lock()
                        .fragments
                        .insert(c.seq, (c.keyframe, c.bytes.clone()));
                }
                Event::End(_) => return,
                _ => {}
            }
        }
    });
    (rec, task)
}

/// Check a WebSocket viewer's messages against what the origin stored: the
/// init first, then fragments with the origin's seqs and bytes, starting at a
/// keyframe, consecutive except for jumps that land on a keyframe.
/// Returns the number of jumps.
pub fn check_against_origin(got: &super::common::Received, rec: &Recorded) -> usize {
    let mut binaries = got.binaries.iter();
    let mut jumps = 0;
    let mut prev: Option<u64> = None;
    let mut metas = got
        .texts
        .iter()
        .filter(|t| t["type"] == "init" || t["type"] == "fragment");
    for meta in metas.by_ref() {
        let bin = binaries
            .next()
            .expect("a binary after each init/fragment message");
        if meta["type"] == "init" {
            assert!(rec.inits.contains(bin), "init bytes are the origin's");
            continue;
        }
        let seq = meta["seq"].as_u64().expect("seq");
        let (key, bytes) = rec
            .fragments
            .get(&seq)
            .unwrap_or_else(|| panic!("origin never stored seq {seq}"));
        assert_eq!(
            bin, bytes,
            "fragment {seq} is byte-identical to the origin's"
        );
        assert_eq!(meta["key"].as_bool(), Some(*key), "keyframe flag of {seq}");
        match prev {
            None => assert!(*key, "the viewer starts at a keyframe (seq {seq})"),
            Some(p) if seq == p + 1 => {}
            Some(p) => {
                assert!(seq > p, "seqs grow: {p} then {seq}");
                assert!(*key, "a jump ({p} → {seq}) lands on a keyframe");
                jumps += 1;
            }
        }
        prev = Some(seq);
    }
    assert!(prev.is_some(), "the viewer got fragments");
    jumps
}

/// Counters of the lossy proxy.
#[derive(Default)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// A UDP proxy to `target` that delays every datagram by `delay` and drops
/// `loss_pct` percent of them (deterministic pseudo-random), both ways. One
/// client (the first address that sends to it).
pub async fn lossy_proxy(
    target: SocketAddr,
    delay: Duration,
    loss_pct: u64,
) -> (SocketAddr, Arc<ProxyStats>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind front"));
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind back"));
    back.connect(target).await.expect("connect back");
    let addr = front.local_addr().expect("addr");
    let stats = Arc::new(ProxyStats::default());
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (to_target, mut to_target_rx) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let (to_client, mut to_client_rx) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let drop_it = {
        let state = Arc::new(AtomicU64::new(0x9e37_79b9_7f4a_7c15));
        move || {
            // xorshift64
            let mut x = state.load(Relaxed);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.store(x, Relaxed);
            x % 100 < loss_pct
        }
    };
    {
        let (front, client, stats, drop_it) = (
            front.clone(),
            client.clone(),
            stats.clone(),
            drop_it.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock() = Some(from);
                if drop_it() {
                    stats.dropped.fetch_add(1, Relaxed);
                    continue;
                }
                let _ = to_target.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
            }
        });
    }
    {
        let (back, stats) = (back.clone(), stats.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                if drop_it() {
                    stats.dropped.fetch_add(1, Relaxed);
                    continue;
                }
                let _ = to_client.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
            }
        });
    }
    {
        let (back, stats) = (back.clone(), stats.clone());
        tokio::spawn(async move {
            while let Some((at, d)) = to_target_rx.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = back.send(&d).await;
                stats.forwarded.fetch_add(1, Relaxed);
            }
        });
    }
    {
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some((at, d)) = to_client_rx.recv().await {
                tokio::time::sleep_until(at).await;
                let to = *client.lock();
                if let Some(to) = to {
                    let _ = front.send_to(&d, to).await;
                    stats.forwarded.fetch_add(1, Relaxed);
                }
            }
        });
    }
    (addr, stats)
}

/// Viewers of `name` on `relay` by transport, read from its registry.
pub fn viewers(relay: &Running, name: &str, t: Transport) -> u64 {
    relay
        .state
        .registry
        .get(name)
        .map_or(0, |s| s.stats().viewers[t as usize].load(Relaxed))
}
