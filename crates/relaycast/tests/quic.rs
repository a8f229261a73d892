//! QUIC (`relaycast/1`) end to end on real UDP sockets: publish and watch
//! over QUIC, QUIC publishers seen by WebSocket and HTTP-stream viewers,
//! resume with `after`, refusals as application error codes, the CLI.

mod common;
mod relays;

use bytes::Bytes;
use common::*;
use relaycast::client::{Input, PublishOptions};
use relaycast::quic::client::{Client, WatchEvent, WatchOptions};
use relaycast::quic::{QuicUrl, code};
use relays::*;
use std::time::Duration;

/// init + fragments[from..] of a split file.
fn expected_from(
    init: &relaycast::media::Init,
    frags: &[relaycast::media::Fragment],
    from: usize,
) -> Vec<u8> {
    let mut v = init.bytes.to_vec();
    for f in &frags[from..] {
        v.extend_from_slice(&f.bytes);
    }
    v
}

/// Read a QUIC watch session to its end (bounded): (bytes, seqs, end code).
async fn read_quic(
    session: &mut relaycast::quic::client::WatchSession,
    limit: Duration,
) -> (Vec<u8>, Vec<(u64, bool)>, Option<u32>) {
    let mut bytes = Vec::new();
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ev = match tokio::time::timeout_at(deadline, session.next()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => panic!("watch failed: {e}"),
            Err(_) => return (bytes, seqs, None),
        };
        match ev {
            WatchEvent::Init { bytes: b, .. } => bytes.extend_from_slice(&b),
            WatchEvent::Fragment {
                seq,
                keyframe,
                bytes: b,
                ..
            } => {
                bytes.extend_from_slice(&b);
                seqs.push((seq, keyframe));
            }
            WatchEvent::End { code, .. } => return (bytes, seqs, Some(code)),
            _ => {}
        }
    }
}

#[tokio::test]
async fn quic_publish_to_quic_watch_is_byte_identical() {
    let mut cfg = quic_config();
    cfg.fanout.grace = Duration::from_millis(300);
    let relay = relay(cfg).await;
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);

    let client = Client::new().expect("client");
    let url = QuicUrl::parse(&stream_url(&relay, "q")).expect("url");
    let opts = WatchOptions {
        wait: Some(10.0),
        ..Default::default()
    };
    let watch = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let mut s = client.watch(&url, opts).await.expect("watch");
            read_quic(&mut s, Duration::from_secs(30)).await
        })
    };
    // Let the watcher's request reach the relay before the stream starts.
    for _ in 0..100 {
        if relay.state.registry.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let summary = relaycast::client::publish(
        &stream_url(&relay, "q"),
        Input::Bytes(file.clone()),
        PublishOptions::default(),
    )
    .await
    .expect("publish over QUIC");
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON summary");
    assert_eq!(summary["fragments"], frags.len() as u64);
    assert_eq!(summary["bytes"], file.len() as u64);

    let (bytes, seqs, end) = watch.await.expect("join");
    assert_eq!(
        end,
        Some(code::PUBLISHER_GONE),
        "the session ends when the stream does"
    );
    let (first, key) = seqs[0];
    assert!(key, "the viewer starts at a keyframe");
    let want: Vec<u64> = (first..frags.len() as u64).collect();
    let got: Vec<u64> = seqs.iter().map(|s| s.0).collect();
    assert_eq!(
        got, want,
        "every fragment from the join keyframe to the end, in order"
    );
    assert_eq!(
        bytes,
        expected_from(&init, &frags, first as usize),
        "byte for byte"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn quic_publisher_reaches_websocket_and_http_stream_viewers() {
    let mut cfg = quic_config();
    cfg.fanout.grace = Duration::from_millis(300);
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_keyframe.mp4");
    let (init, frags) = split(&file);

    let mut ws = ws_connect(&format!("ws://{base}/live/mix?wait=10")).await;
    let http = {
        let url = format!("http://{base}/live/mix.mp4?wait=10");
        tokio::spawn(async move {
            let mut out = Vec::new();
            relaycast::client::watch(&url, &mut out, None)
                .await
                .expect("http stream");
            out
        })
    };
    for _ in 0..100 {
        if relay.state.registry.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Paced so that both viewers are in before the first fragment.
    let opts = PublishOptions {
        re: true,
        ..Default::default()
    };
    relaycast::client::publish(&stream_url(&relay, "mix"), Input::Bytes(file.clone()), opts)
        .await
        .expect("publish over QUIC");
    let got = ws_read(&mut ws, frags.len(), Duration::from_secs(20)).await;
    let first = *got.seqs.first().expect("fragments") as usize;
    assert_eq!(
        got.bytes,
        expected_from(&init, &frags, first),
        "WebSocket: byte for byte"
    );
    let http = tokio::time::timeout(Duration::from_secs(20), http)
        .await
        .expect("the HTTP stream ends with the stream")
        .expect("join");
    let from = (0..frags.len())
        .find(|&k| expected_from(&init, &frags, k).len() == http.len())
        .expect("the HTTP stream is init + the fragments from a keyframe on");
    assert!(frags[from].keyframe);
    assert_eq!(
        http,
        expected_from(&init, &frags, from),
        "HTTP stream: byte for byte"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn quic_watch_resumes_after_a_seq() {
    let relay = relay(quic_config()).await;
    let publisher = publish_demo(stream_url(&relay, "live"));
    wait_live(&relay, "live").await;
    let client = Client::new().expect("client");
    let url = QuicUrl::parse(&stream_url(&relay, "live")).expect("url");
    let mut a = client
        .watch(&url, WatchOptions::default())
        .await
        .expect("watch");
    let mut last = None;
    let mut n = 0;
    while n < 4 {
        match a.next().await.expect("event") {
            WatchEvent::Fragment { seq, .. } => {
                last = Some(seq);
                n += 1;
            }
            WatchEvent::End { reason, .. } => panic!("ended: {reason}"),
            _ => {}
        }
    }
    let last = last.expect("a seq");
    a.close(code::DONE, "bye");
    let opts = WatchOptions {
        after: Some(last),
        ..Default::default()
    };
    let mut b = client.watch(&url, opts).await.expect("watch again");
    assert!(b.hello().resumed, "after={last} is in the ring");
    assert_eq!(b.hello().next_seq, last + 1);
    loop {
        match b.next().await.expect("event") {
            WatchEvent::Fragment { seq, keyframe, .. } => {
                assert_eq!(seq, last + 1, "resumes right after {last}");
                // Mid-group resume is fine: the client already has the group's start.
                let _ = keyframe;
                break;
            }
            WatchEvent::End { reason, .. } => panic!("ended: {reason}"),
            _ => {}
        }
    }
    publisher.abort();
    relay.shutdown().await;
}

#[tokio::test]
async fn quic_refusals_carry_application_codes_and_reasons() {
    let mut cfg = quic_config();
    cfg.ingest.publish_key = Some("sekrit".into());
    let relay = relay(cfg).await;
    let client = Client::new().expect("client");
    let url = QuicUrl::parse(&stream_url(&relay, "k")).expect("url");

    let e = client
        .publish(&url, None)
        .await
        .err()
        .expect("no key is refused");
    assert_eq!(e.code(), Some(code::UNAUTHORIZED), "{e}");
    let e = client
        .publish(&url, Some("nope"))
        .await
        .err()
        .expect("a wrong key is refused");
    assert_eq!(e.code(), Some(code::FORBIDDEN), "{e}");
    assert!(e.to_string().contains("wrong publish key"), "{e}");
    let mut ok = client
        .publish(&url, Some("sekrit"))
        .await
        .expect("the right key");
    let init = split(&fixture("h264_aac_keyframe.mp4")).0;
    ok.send(init.bytes.clone()).await.expect("send");

    let e = client
        .watch(
            &QuicUrl::parse(&stream_url(&relay, "nothing")).expect("url"),
            WatchOptions::default(),
        )
        .await
        .err()
        .expect("an unknown stream is refused");
    assert_eq!(e.code(), Some(code::NOT_FOUND), "{e}");

    // Garbage instead of fMP4: the publisher's connection is closed with BAD_MEDIA.
    let garbage_url = QuicUrl::parse(&stream_url(&relay, "junk")).expect("url");
    let mut junk = client
        .publish(&garbage_url, Some("sekrit"))
        .await
        .expect("accepted at first");
    let mut refused = None;
    for _ in 0..50 {
        if let Err(e) = junk
            .send(Bytes::from_static(b"\0\0\0\x10junkjunkjunkjunk"))
            .await
        {
            refused = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = match refused {
        Some(e) => e,
        None => junk.finish().await.expect_err("garbage is refused"),
    };
    assert_eq!(refused.code(), Some(code::BAD_MEDIA), "{refused}");

    // Pinning: a wrong fingerprint fails the handshake.
    let wrong = QuicUrl::parse(&format!(
        "quic://{}/k?fingerprint={}",
        relay.quic.as_ref().expect("quic").addr,
        "00".repeat(32)
    ))
    .expect("url");
    let e = client
        .watch(&wrong, WatchOptions::default())
        .await
        .err()
        .expect("wrong pin");
    assert!(e.to_string().contains("fingerprint"), "{e}");

    // /api/quic tells clients what to pin.
    let (status, _, body) = get(&format!("http://127.0.0.1:{}/api/quic", relay.addr.port())).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let info = relay.quic.as_ref().expect("quic");
    assert_eq!(v["fingerprint"], info.fingerprint.as_str());
    assert_eq!(v["addr"], info.addr.to_string().as_str());
    drop(ok);
    relay.shutdown().await;
    // Without --quic, /api/quic says so.
    let plain = common::relay(common::config()).await;
    let (status, _, body) = get(&format!("http://127.0.0.1:{}/api/quic", plain.addr.port())).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("QUIC is not enabled"));
    plain.shutdown().await;
}

#[tokio::test]
async fn cli_watch_over_quic_writes_a_decodable_stream() {
    if !have("ffprobe") {
        return;
    }
    let relay = relay(quic_config()).await;
    let publisher = publish_demo(stream_url(&relay, "cli"));
    wait_live(&relay, "cli").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("cli.mp4");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .args([
            "watch",
            &stream_url(&relay, "cli"),
            "--max-bytes",
            "150000",
            "-o",
        ])
        .arg(&out)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(30), status)
        .await
        .expect("relaycast watch finishes")
        .expect("runs");
    assert!(status.success(), "relaycast watch quic:// failed: {status}");
    let probe = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "compact",
        ])
        .arg(&out)
        .output()
        .await
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success() && text.contains("codec_name=h264"),
        "ffprobe: {text} {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let frames: u64 = text
        .split("nb_read_frames=")
        .nth(1)
        .and_then(|s| s.trim().split('|').next())
        .and_then(|s| s.trim().parse().ok())
        .expect("a frame count");
    assert!(frames >= 30, "decoded {frames} frames");
    publisher.abort();
    relay.shutdown().await;
}

/// Push the demo clip into `name` in-process, `speedup` times faster than
/// real time, until aborted.
fn push_fast(
    relay: &relaycast::server::Running,
    name: &str,
    speedup: u64,
) -> tokio::task::JoinHandle<u64> {
    let publisher = relay.state.registry.publish(name).expect("publish");
    tokio::spawn(async move {
        let demo = relaycast::media::demo::Demo::load().expect("demo");
        publisher.push_init(demo.init().clone()).expect("init");
        let mut n = 0u64;
        loop {
            let (frag, _) = demo.fragment(n);
            let pause = Duration::from_micros(frag.duration_us() / speedup);
            publisher
                .push_fragment(frag)
                .expect("the publisher is never blocked");
            n += 1;
            tokio::time::sleep(pause).await;
        }
    })
}

#[tokio::test]
async fn a_quic_viewer_that_stops_reading_is_skipped_then_disconnected() {
    let mut cfg = quic_config();
    cfg.fanout.ring.max_fragments = 20;
    cfg.fanout.ring.max_bytes = 20 << 10;
    cfg.fanout.lag.max_skips = 2;
    let relay = relay(cfg).await;
    let pusher = push_fast(&relay, "slow", 20);
    wait_live(&relay, "slow").await;
    let client = Client::new().expect("client");
    let url = QuicUrl::parse(&stream_url(&relay, "slow")).expect("url");
    // A small window: the relay may send 64 KiB ahead of what we read.
    let small = WatchOptions {
        receive_window: Some(64 << 10),
        ..Default::default()
    };
    let mut stalled = client.watch(&url, small.clone()).await.expect("watch");
    let mut healthy = client
        .watch(&url, WatchOptions::default())
        .await
        .expect("watch");
    // The healthy viewer keeps up while the other one does not read at all.
    let mut healthy_seqs = Vec::new();
    let mut skipped = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), healthy.next()).await {
            Ok(Ok(WatchEvent::Fragment { seq, .. })) => healthy_seqs.push(seq),
            Ok(Ok(WatchEvent::Skip { .. })) => skipped = true,
            Ok(Ok(WatchEvent::End { reason, .. })) => panic!("healthy viewer ended: {reason}"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("healthy viewer failed: {e}"),
            Err(_) => panic!("healthy viewer starved"),
        }
        let stats = relay.state.registry.get("slow").expect("stream").info();
        if stats.lag_disconnects >= 1 && healthy_seqs.len() > 100 {
            break;
        }
    }
    let info = relay.state.registry.get("slow").expect("stream").info();
    assert!(
        info.skips >= 2,
        "the stalled viewer was skipped forward ({} skips)",
        info.skips
    );
    assert_eq!(info.lag_disconnects, 1, "and then disconnected for lagging");
    assert!(!skipped, "the healthy viewer never skipped");
    assert!(
        healthy_seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the healthy viewer got every fragment in order"
    );
    // The stalled viewer reads what it was sent: valid fragments, skips that
    // land on keyframes, then the lag disconnect.
    let mut prev: Option<u64> = None;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.next()).await {
            Ok(Ok(WatchEvent::Fragment { seq, keyframe, .. })) => {
                if let Some(p) = prev
                    && seq != p + 1
                {
                    assert!(
                        seq > p && keyframe,
                        "a jump {p} → {seq} lands on a keyframe"
                    );
                }
                prev = Some(seq);
            }
            Ok(Ok(WatchEvent::End { code, .. })) => break code,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("stalled viewer: {e}"),
            Err(_) => panic!("stalled viewer got no end"),
        }
    };
    assert_eq!(end, code::LAGGING, "disconnected with the LAGGING code");
    pusher.abort();
    relay.shutdown().await;
}

#[tokio::test]
async fn a_configured_pem_certificate_is_served_and_pinned() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let mut cfg = quic_config();
    cfg.server.tls_cert = Some(cert);
    cfg.server.tls_key = Some(key);
    let relay = relay(cfg).await;
    let want = relaycast::quic::fingerprint_hex(ck.cert.der());
    assert_eq!(
        relay.quic.as_ref().expect("quic").fingerprint,
        want,
        "the configured certificate is used"
    );
    // A client pinning it can use the relay.
    let client = Client::new().expect("client");
    let url = QuicUrl::parse(&stream_url(&relay, "pem")).expect("url");
    let e = client
        .watch(&url, WatchOptions::default())
        .await
        .err()
        .expect("no such stream yet");
    assert_eq!(
        e.code(),
        Some(code::NOT_FOUND),
        "handshake passed, request answered: {e}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_quic_publisher_on_a_lossy_delayed_link_is_served_intact() {
    let relay = relay(quic_config()).await;
    let q = relay.quic.as_ref().expect("quic").clone();
    let (proxy, stats) = lossy_proxy(q.addr, Duration::from_millis(50), 2).await;
    let publisher = publish_demo(format!(
        "quic://{proxy}/lossy-pub?fingerprint={}",
        q.fingerprint
    ));
    wait_live(&relay, "lossy-pub").await;
    // Every fragment the relay got is a complete, in-order fragment of the clip.
    let mut ws = ws_connect(&format!(
        "ws://127.0.0.1:{}/live/lossy-pub",
        relay.addr.port()
    ))
    .await;
    let got = ws_read(&mut ws, 15, Duration::from_secs(30)).await;
    assert_eq!(got.seqs.len(), 15);
    assert!(
        got.seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no fragment lost: {:?}",
        got.seqs
    );
    let demo = relaycast::media::demo::Demo::load().expect("demo");
    let clip = demo.len() as u64;
    let mut bins = got.binaries.iter().skip(1); // the init first
    assert_eq!(got.binaries[0], demo.init().bytes);
    for &seq in &got.seqs {
        let (frag, _) = demo.fragment(seq);
        assert_eq!(
            bins.next(),
            Some(&frag.bytes),
            "fragment {seq} (clip fragment {})",
            seq % clip
        );
    }
    assert!(
        stats.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the proxy dropped datagrams"
    );
    publisher.abort();
    relay.shutdown().await;
}

/// Wait (bounded) until `relay` counts `n` open connections from 127.0.0.1.
async fn wait_connections(relay: &relaycast::server::Running, n: usize) {
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    for _ in 0..200 {
        if relay.state.limits.connections_from(ip) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "expected {n} connections from {ip}, the relay counts {}",
        relay.state.limits.connections_from(ip)
    );
}

#[tokio::test]
async fn quic_connections_count_toward_the_per_ip_limit_with_http() {
    use relaycast::limits::Reason;
    let mut cfg = quic_config();
    cfg.limits.max_connections_per_ip = 2;
    let relay = relay(cfg).await;
    let client = Client::new().expect("client");
    let url = QuicUrl::parse(&stream_url(&relay, "perip")).expect("url");

    // One QUIC publisher and one HTTP connection: the IP's two.
    let mut publisher = client.publish(&url, None).await.expect("first QUIC");
    let init = split(&fixture("h264_aac_keyframe.mp4")).0;
    publisher.send(init.bytes.clone()).await.expect("send");
    wait_connections(&relay, 1).await;
    let http = tokio::net::TcpStream::connect(relay.addr)
        .await
        .expect("connect");
    wait_connections(&relay, 2).await;

    // A third QUIC connection is refused with LIMIT and says why.
    let e = client
        .watch(&url, WatchOptions::default())
        .await
        .err()
        .expect("over the limit");
    assert_eq!(e.code(), Some(code::LIMIT), "{e}");
    assert!(e.to_string().contains("max_connections_per_ip"), "{e}");
    // A third HTTP connection is refused too: one count for both.
    let (status, _, _) = get(&format!("http://{}/healthz", relay.addr)).await;
    assert_eq!(status, 429);
    assert_eq!(relay.state.limits.refused.get(Reason::ConnectionsPerIp), 2);
    wait_connections(&relay, 2).await;

    // The QUIC connection stops counting when it closes.
    drop(http);
    publisher.finish().await.expect("finish");
    wait_connections(&relay, 0).await;
    let viewer = client
        .watch(&url, WatchOptions::default())
        .await
        .expect("under the limit again");
    wait_connections(&relay, 1).await;
    let (status, _, body) = get(&format!("http://{}/metrics", relay.addr)).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.lines()
            .any(|l| l == "relaycast_refused_total{reason=\"max_connections_per_ip\"} 2"),
        "{text}"
    );
    viewer.close(code::DONE, "bye");
    relay.shutdown().await;
}
