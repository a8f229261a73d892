//! Cascades on real sockets: origin → edge and origin → mid → edge deliver
//! the origin's bytes and seqs, many viewers share one upstream subscription
//! that goes away after the last viewer, an edge fails over between origins,
//! and a lossy, delayed link still yields a decodable stream.

mod common;
mod relays;

use common::*;
use relaycast::egress::Transport;
use relays::*;
use std::time::Duration;

fn ws_url(relay: &relaycast::server::Running, name: &str) -> String {
    format!("ws://127.0.0.1:{}/live/{name}", relay.addr.port())
}

#[tokio::test]
async fn origin_edge_viewer_gets_the_origins_bytes_and_seqs() {
    let origin = relay(quic_config()).await;
    let edge = edge(&[&origin]).await;
    let publisher = publish_demo(stream_url(&origin, "e1"));
    wait_live(&origin, "e1").await;
    let (rec, recorder) = record(&origin, "e1");

    let mut ws = ws_connect(&ws_url(&edge, "e1")).await;
    let got = ws_read(&mut ws, 15, Duration::from_secs(20)).await;
    assert_eq!(got.seqs.len(), 15, "15 fragments through the edge");
    let jumps = check_against_origin(&got, &rec.lock());
    assert_eq!(jumps, 0, "no skips on a healthy link");

    // The edge says where the stream comes from; the origin sees one edge.
    let (_, _, body) = get(&format!(
        "http://127.0.0.1:{}/api/streams",
        edge.addr.port()
    ))
    .await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let src = &v["streams"][0]["source"];
    assert_eq!(src["kind"], "pulled");
    assert_eq!(src["upstream"], "up");
    assert_eq!(
        src["from"],
        format!("quic://{}", origin.quic.as_ref().expect("quic").addr).as_str()
    );
    assert_eq!(viewers(&origin, "e1", Transport::Edge), 1);
    let (_, _, metrics) = get(&format!("http://127.0.0.1:{}/metrics", edge.addr.port())).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("relaycast_upstream_up{stream=\"e1\"") && metrics.contains("} 1\n"),
        "{metrics}"
    );
    recorder.abort();
    publisher.abort();
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test]
async fn three_tiers_origin_mid_edge_keep_the_origins_bytes_and_seqs() {
    let origin = relay(quic_config()).await;
    let mid = edge(&[&origin]).await;
    let edge = edge(&[&mid]).await;
    let publisher = publish_demo(format!(
        "http://127.0.0.1:{}/publish/t3",
        origin.addr.port()
    ));
    wait_live(&origin, "t3").await;
    let (rec, recorder) = record(&origin, "t3");

    let mut ws = ws_connect(&ws_url(&edge, "t3")).await;
    let got = ws_read(&mut ws, 12, Duration::from_secs(20)).await;
    assert_eq!(got.seqs.len(), 12);
    assert_eq!(check_against_origin(&got, &rec.lock()), 0);
    // Each tier pulls once: the origin sees the mid, the mid sees the edge.
    assert_eq!(viewers(&origin, "t3", Transport::Edge), 1);
    assert_eq!(viewers(&mid, "t3", Transport::Edge), 1);
    // A viewer resuming on the mid with the edge's last seq continues there.
    let last = *got.seqs.last().expect("seq");
    let mut ws2 = ws_connect(&format!("{}?after={last}", ws_url(&mid, "t3"))).await;
    let got2 = ws_read(&mut ws2, 2, Duration::from_secs(10)).await;
    assert_eq!(
        got2.of_type("hello")[0]["resumed"],
        true,
        "seqs are the origin's on every tier"
    );
    assert_eq!(got2.seqs[0], last + 1);
    recorder.abort();
    publisher.abort();
    edge.shutdown().await;
    mid.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test]
async fn fifty_viewers_share_one_upstream_subscription_dropped_after_linger() {
    let origin = relay(quic_config()).await;
    let edge = edge(&[&origin]).await;
    let publisher = publish_demo(stream_url(&origin, "many"));
    wait_live(&origin, "many").await;

    // Fifty viewers ask the cold edge at once.
    let url = ws_url(&edge, "many");
    let conns = futures_util::future::join_all((0..50).map(|_| ws_connect(&url))).await;
    let mut viewers_on_edge = Vec::new();
    for mut ws in conns {
        let got = ws_read(&mut ws, 2, Duration::from_secs(20)).await;
        assert_eq!(got.seqs.len(), 2, "every viewer is served");
        viewers_on_edge.push(ws);
    }
    assert_eq!(viewers(&edge, "many", Transport::WebSocket), 50);
    for _ in 0..5 {
        assert_eq!(
            viewers(&origin, "many", Transport::Edge),
            1,
            "exactly one upstream subscription"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(viewers_on_edge);
    // Linger is 0.5 s: the subscription goes, bounded wait.
    let mut gone = false;
    for _ in 0..100 {
        if viewers(&origin, "many", Transport::Edge) == 0
            && edge.state.registry.get("many").is_none()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the edge dropped its upstream subscription after the last viewer left"
    );
    assert!(
        origin.state.registry.get("many").is_some(),
        "the origin's stream is untouched"
    );
    publisher.abort();
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test]
async fn killing_one_origin_moves_the_edge_to_the_other() {
    if !have("ffprobe") {
        return;
    }
    // root → (mid A, mid B) → edge [A, B]: A and B serve the root's seqs.
    let root = relay(quic_config()).await;
    let a = edge(&[&root]).await;
    let b = edge(&[&root]).await;
    let edge = edge(&[&a, &b]).await;
    let publisher = publish_demo(stream_url(&root, "fo"));
    wait_live(&root, "fo").await;
    let (rec, recorder) = record(&root, "fo");

    let mut ws = ws_connect(&ws_url(&edge, "fo")).await;
    let before = ws_read(&mut ws, 8, Duration::from_secs(20)).await;
    assert_eq!(before.seqs.len(), 8);
    assert_eq!(
        viewers(&a, "fo", Transport::Edge),
        1,
        "the edge pulls from A first"
    );
    assert_eq!(viewers(&b, "fo", Transport::Edge), 0);

    a.shutdown().await;
    let after = ws_read(&mut ws, 20, Duration::from_secs(30)).await;
    assert_eq!(after.seqs.len(), 20, "the viewers keep receiving fragments");
    assert_eq!(viewers(&b, "fo", Transport::Edge), 1, "now from B");
    let info = edge.state.registry.get("fo").expect("stream").info();
    let src = serde_json::to_value(&info.source).expect("json");
    assert_eq!(
        src["from"],
        format!("quic://{}", b.quic.as_ref().expect("quic").addr).as_str()
    );
    assert!(src["failovers"].as_u64().unwrap_or(0) >= 1);

    // Both halves are the root's bytes; together they are one valid fMP4 stream.
    let mut all = before;
    all.texts.extend(after.texts);
    all.binaries.extend(after.binaries);
    all.bytes.extend(after.bytes);
    all.seqs.extend(after.seqs);
    check_against_origin(&all, &rec.lock());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("failover.mp4");
    std::fs::write(&path, &all.bytes).expect("write");
    let frames = ffprobe_frames(path.to_str().expect("path")).await;
    assert!(
        frames >= 60,
        "ffprobe decoded {frames} frames across the failover"
    );
    recorder.abort();
    publisher.abort();
    edge.shutdown().await;
    b.shutdown().await;
    root.shutdown().await;
}

#[tokio::test]
async fn a_lossy_delayed_link_still_gives_a_decodable_stream() {
    if !have("ffprobe") {
        return;
    }
    let origin = relay(quic_config()).await;
    let (proxy, stats) = lossy_proxy(
        origin.quic.as_ref().expect("quic").addr,
        Duration::from_millis(50),
        2,
    )
    .await;
    let mut c = quic_config();
    c.cascade.origins = vec![quic_url(&origin, Some(proxy))];
    let edge = relay(c).await;
    let publisher = publish_demo(stream_url(&origin, "lossy"));
    wait_live(&origin, "lossy").await;
    let (rec, recorder) = record(&origin, "lossy");

    let mut ws = ws_connect(&ws_url(&edge, "lossy")).await;
    let got = ws_read(&mut ws, 10, Duration::from_secs(30)).await;
    assert_eq!(got.seqs.len(), 10);
    check_against_origin(&got, &rec.lock());
    let url = format!("http://127.0.0.1:{}/live/lossy.mp4", edge.addr.port());
    let frames = ffprobe_frames(&url).await;
    assert!(
        frames >= 45,
        "ffprobe decoded {frames} frames over the lossy link"
    );
    let dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the proxy dropped datagrams ({dropped})");
    recorder.abort();
    publisher.abort();
    drop(ws);
    edge.shutdown().await;
    origin.shutdown().await;
}

/// Video frames ffprobe decodes from `input` (the first 3 s of a live URL).
async fn ffprobe_frames(input: &str) -> u64 {
    let out = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-read_intervals",
            "%+3",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "compact",
            input,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("ffprobe finishes")
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ffprobe failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split("nb_read_frames=")
        .nth(1)
        .and_then(|s| s.trim().split('|').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no frame count in {text:?}"))
}

#[tokio::test]
async fn an_edge_signs_its_pull_of_a_signed_stream_and_checks_its_viewers() {
    // Origin and edge share the view secrets (one config); the publisher
    // goes to the origin, viewers to the edge.
    let signed = |mut c: relaycast::config::Config| {
        c.auth.view_secrets.insert("sig-*".into(), "shared".into());
        c
    };
    let origin = relay(signed(quic_config())).await;
    let mut ec = signed(quic_config());
    ec.cascade.origins = vec![quic_url(&origin, None)];
    let edge = relay(ec).await;
    let publisher = publish_demo(stream_url(&origin, "sig-1"));
    wait_live(&origin, "sig-1").await;

    // Unsigned at the edge: refused there.
    let mut ws = ws_connect(&ws_url(&edge, "sig-1")).await;
    let got = ws_read(&mut ws, 1, Duration::from_secs(10)).await;
    assert_eq!(got.close.map(|c| c.0), Some(1008));
    // Signed at the edge: the edge pulls with its own signature and plays.
    let exp = relaycast::auth::unix_now() + 600;
    let q = format!(
        "exp={exp}&sig={}",
        relaycast::auth::sign("shared", "sig-1", exp)
    );
    let mut ws = ws_connect(&format!("{}?{q}", ws_url(&edge, "sig-1"))).await;
    let got = ws_read(&mut ws, 3, Duration::from_secs(20)).await;
    assert_eq!(got.seqs.len(), 3, "{:?}", got.texts);
    assert_eq!(viewers(&origin, "sig-1", Transport::Edge), 1);
    publisher.abort();
    edge.shutdown().await;
    origin.shutdown().await;
}
