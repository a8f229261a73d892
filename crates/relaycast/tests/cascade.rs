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

#[tokio::test]
async fn failover_between_independent_origins_renumbers_and_stays_valid() {
    if !have("ffprobe") {
        return;
    }
    // The publisher sends to A and, a little later, separately to B: two
    // sequence spaces, B's seqs behind A's.
    let a = relay(quic_config()).await;
    let b = relay(quic_config()).await;
    let edge = edge(&[&a, &b]).await;
    let pub_a = publish_demo(stream_url(&a, "ind"));
    wait_live(&a, "ind").await;
    let (rec_a, recorder_a) = record(&a, "ind");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pub_b = publish_demo(stream_url(&b, "ind"));
    wait_live(&b, "ind").await;
    let (rec_b, recorder_b) = record(&b, "ind");

    let mut ws = ws_connect(&ws_url(&edge, "ind")).await;
    let mut all = ws_read(&mut ws, 8, Duration::from_secs(20)).await;
    assert_eq!(all.seqs.len(), 8);
    let last_from_a = *all.seqs.last().expect("seq");
    a.shutdown().await;
    let after = ws_read(&mut ws, 15, Duration::from_secs(30)).await;
    assert_eq!(
        after.seqs.len(),
        15,
        "the viewers keep receiving fragments from B"
    );
    all.texts.extend(after.texts);
    all.binaries.extend(after.binaries);
    all.bytes.extend(after.bytes);
    all.seqs.extend(after.seqs.iter().copied());

    // Seqs keep growing on the edge, and the first fragment from B is a keyframe.
    let metas: Vec<&serde_json::Value> = all.of_type("fragment");
    for w in metas.windows(2) {
        let (p, n) = (
            w[0]["seq"].as_u64().unwrap_or(0),
            w[1]["seq"].as_u64().unwrap_or(0),
        );
        assert!(n > p, "seqs grow across the failover: {p} then {n}");
        if n != p + 1 {
            assert_eq!(w[1]["key"], true, "a jump {p} → {n} lands on a keyframe");
        }
    }
    // B's fragments arrive unchanged, under renumbered seqs (B is behind A):
    // the edge's seq space is B's plus the offset it chose at the failover.
    let src = serde_json::to_value(edge.state.registry.get("ind").expect("stream").source())
        .expect("json");
    let b_stream = b.state.registry.get("ind").expect("stream");
    let b_epoch = b_stream.epoch();
    let edge_space = src["seq_space"].as_u64().expect("seq_space");
    assert_ne!(edge_space, b_epoch, "renumbered: a space of its own");
    let offset = edge_space.wrapping_sub(b_epoch);
    // The recorder of B is a viewer too: let it catch up with B's newest.
    let b_newest = b_stream.newest_seq().expect("B has fragments");
    for _ in 0..100 {
        if rec_b.lock().fragments.keys().next_back() >= Some(&b_newest) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // After A's shutdown the edge first gets what A drains to it (A's last
    // fragments, which may be ahead of anything B has yet: the two
    // publishers send the same clip 1.5 s apart), then B's from a keyframe.
    let mut metas = all
        .texts
        .iter()
        .filter(|t| t["type"] == "init" || t["type"] == "fragment");
    let (mut from_a, mut from_b) = (0, 0);
    {
        let (rec_a, rec_b) = (rec_a.lock(), rec_b.lock());
        for bin in &all.binaries {
            let t = metas.next().expect("a text before each binary");
            let seq = t["seq"].as_u64().unwrap_or(0);
            if t["type"] != "fragment" || seq <= last_from_a {
                continue;
            }
            let b_own = rec_b.fragments.get(&seq.wrapping_sub(offset));
            if b_own.is_some_and(|(_, b)| b == bin) {
                if from_b == 0 {
                    assert_eq!(t["key"], true, "B's first fragment is a keyframe");
                }
                from_b += 1;
            } else {
                assert_eq!(
                    from_b,
                    0,
                    "fragment {seq} after B's first is B's own (B seq {}), byte for byte",
                    seq.wrapping_sub(offset)
                );
                assert!(
                    rec_a.fragments.values().any(|(_, a)| a == bin),
                    "fragment {seq} before B's first is one A drained, byte for byte"
                );
                from_a += 1;
            }
        }
    }
    eprintln!("after the failover: {from_a} fragments drained from A, then {from_b} of B's");
    assert!(from_b >= 10, "the viewer gets B's fragments ({from_b})");
    // The viewer's whole byte stream still decodes.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("independent.mp4");
    std::fs::write(&path, &all.bytes).expect("write");
    let frames = ffprobe_count(path.to_str().expect("path"), &[]).await;
    assert!(
        frames >= 60,
        "ffprobe decoded {frames} frames across the failover"
    );
    recorder_a.abort();
    recorder_b.abort();
    pub_a.abort();
    pub_b.abort();
    edge.shutdown().await;
    b.shutdown().await;
}

/// Video frames ffprobe decodes from `input` (the first 3 s of a live URL).
async fn ffprobe_frames(input: &str) -> u64 {
    ffprobe_count(input, &["-read_intervals", "%+3"]).await
}

/// Video frames ffprobe decodes from `input`, with extra arguments.
async fn ffprobe_count(input: &str, extra: &[&str]) -> u64 {
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args(extra)
        .args([
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

#[tokio::test]
async fn ffmpeg_over_quic_through_three_tiers_decodes_at_the_edge() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let origin = relay(quic_config()).await;
    let mid = edge(&[&origin]).await;
    let edge = edge(&[&mid]).await;
    // ffmpeg → relaycast publish (QUIC) → origin → mid → edge → ffprobe (HTTP stream).
    let mut ffmpeg = ffmpeg_live(8, "-", &["-g", "15", "-keyint_min", "15"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ffmpeg");
    let pipe: std::process::Stdio = ffmpeg
        .stdout
        .take()
        .expect("ffmpeg stdout")
        .try_into()
        .expect("pipe");
    let mut publisher = tokio::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .args([
            "publish",
            "--max-retries",
            "2",
            "--to",
            &stream_url(&origin, "ff"),
            "-",
        ])
        .stdin(pipe)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("relaycast publish");
    wait_live(&origin, "ff").await;
    let url = format!("http://127.0.0.1:{}/live/ff.mp4", edge.addr.port());
    let frames = ffprobe_frames(&url).await;
    assert!(
        frames >= 45,
        "ffprobe decoded {frames} frames of ffmpeg's stream at the edge"
    );
    assert!(matches!(
        edge.state.registry.get("ff").map(|s| s.source()),
        Some(relaycast::fanout::Source::Pulled { .. })
    ));
    let _ = publisher.kill().await;
    let _ = ffmpeg.kill().await;
    edge.shutdown().await;
    mid.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test]
async fn the_edge_moves_back_to_its_preferred_origin_when_it_returns() {
    // root → (mid A with a fixed certificate and port, mid B) → edge [A, B].
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("a.pem"), dir.path().join("a.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("key");
    let root = relay(quic_config()).await;
    let a_config = |listen: std::net::SocketAddr| {
        let mut c = quic_config();
        c.quic.listen = Some(listen);
        c.server.tls_cert = Some(cert.clone());
        c.server.tls_key = Some(key.clone());
        c.cascade.origins = vec![quic_url(&root, None)];
        c
    };
    let a = relay(a_config("127.0.0.1:0".parse().expect("addr"))).await;
    let a_addr = a.quic.as_ref().expect("quic").addr;
    let b = edge(&[&root]).await;
    let mut c = quic_config();
    c.cascade.origins = vec![quic_url(&a, None), quic_url(&b, None)];
    c.cascade.return_after = Duration::from_millis(500);
    let edge = relay(c).await;
    let publisher = publish_demo(stream_url(&root, "back"));
    wait_live(&root, "back").await;
    let (rec, recorder) = record(&root, "back");

    let mut ws = ws_connect(&ws_url(&edge, "back")).await;
    let mut all = ws_read(&mut ws, 5, Duration::from_secs(20)).await;
    assert_eq!(viewers(&a, "back", Transport::Edge), 1);
    a.shutdown().await;
    let more = ws_read(&mut ws, 5, Duration::from_secs(20)).await;
    assert_eq!(more.seqs.len(), 5, "served from B meanwhile");
    assert_eq!(viewers(&b, "back", Transport::Edge), 1);
    // A comes back on the same address with the same certificate.
    let mut a2 = None;
    for _ in 0..50 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        match relaycast::server::start(a_config(a_addr), Some(l)).await {
            Ok(r) => {
                a2 = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let a2 = a2.expect("A restarts on its address");
    let mut back = false;
    let mut rest = Vec::new();
    for _ in 0..40 {
        rest.push(ws_read(&mut ws, 2, Duration::from_secs(10)).await);
        if viewers(&a2, "back", Transport::Edge) == 1 && viewers(&b, "back", Transport::Edge) == 0 {
            back = true;
            break;
        }
    }
    assert!(back, "the edge returned to A and left B");
    rest.push(ws_read(&mut ws, 5, Duration::from_secs(20)).await);
    for r in std::iter::once(more).chain(rest) {
        all.texts.extend(r.texts);
        all.binaries.extend(r.binaries);
        all.bytes.extend(r.bytes);
        all.seqs.extend(r.seqs);
    }
    // Every fragment is the root's, in order; any jump lands on a keyframe.
    check_against_origin(&all, &rec.lock());
    recorder.abort();
    publisher.abort();
    edge.shutdown().await;
    a2.shutdown().await;
    b.shutdown().await;
    root.shutdown().await;
}

#[tokio::test]
async fn an_edge_answers_404_for_unknown_streams_and_waits_for_late_ones() {
    let origin = relay(quic_config()).await;
    let edge = edge(&[&origin]).await;
    let (status, _, _) = get(&format!(
        "http://127.0.0.1:{}/live/nothing/info",
        edge.addr.port()
    ))
    .await;
    assert_eq!(status, 404, "no origin has it");
    assert_eq!(viewers(&origin, "nothing", Transport::Edge), 0);

    // A viewer that waits for a stream the origin only gets later.
    let mut ws = ws_connect(&format!("{}?wait=15", ws_url(&edge, "late"))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let publisher = publish_demo(stream_url(&origin, "late"));
    wait_live(&origin, "late").await;
    let got = ws_read(&mut ws, 3, Duration::from_secs(20)).await;
    assert_eq!(
        got.seqs.len(),
        3,
        "the waiting viewer got the stream once it started upstream"
    );
    assert_eq!(viewers(&origin, "late", Transport::Edge), 1);
    publisher.abort();
    edge.shutdown().await;
    origin.shutdown().await;
}

/// `#EXT-X-PART` URIs and the `EXT-X-MAP` URI of a media playlist.
fn hls_uris(playlist: &str) -> (Vec<String>, Option<String>) {
    let uri = |l: &str| {
        l.split("URI=\"")
            .nth(1)
            .and_then(|u| u.split('"').next())
            .map(str::to_string)
    };
    let parts = playlist
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .filter_map(uri)
        .collect();
    let map = playlist
        .lines()
        .find(|l| l.starts_with("#EXT-X-MAP:"))
        .and_then(uri);
    (parts, map)
}

/// An edge serves the same HLS/DASH paths as its origin, from the pulled
/// stream: the playlist's parts are the origin's fragments byte for byte
/// (same seqs), its init is the origin's, a blocking reload on the edge is
/// answered, the multivariant playlist and the MPD answer, and ffprobe
/// decodes the edge's `index.m3u8`.
#[tokio::test]
async fn an_edge_serves_hls_and_dash_of_the_origins_stream() {
    let origin = relay(quic_config()).await;
    let edge = edge(&[&origin]).await;
    let publisher = publish_demo(stream_url(&origin, "h1"));
    wait_live(&origin, "h1").await;
    let (rec, recorder) = record(&origin, "h1");
    let base = format!("http://127.0.0.1:{}/live/h1", edge.addr.port());

    // The first request reaches a cold edge: it pulls the stream and waits.
    let (status, _, body) = get(&format!("{base}/index.m3u8?wait=10")).await;
    assert_eq!(status, 200, "{body:?}");
    let pl = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(pl.contains("CAN-BLOCK-RELOAD=YES"), "{pl}");
    // Parts appear as the edge receives fragments: wait for a few.
    let mut pl = pl;
    for _ in 0..100 {
        if hls_uris(&pl).0.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, _, body) = get(&format!("{base}/index.m3u8")).await;
        pl = String::from_utf8(body.to_vec()).expect("utf-8");
    }
    let (parts, map) = hls_uris(&pl);
    assert!(parts.len() >= 3, "{pl}");
    let mut checked = 0;
    for uri in &parts {
        let seq: u64 = uri
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".m4s"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("part URI {uri}"));
        let (status, _, bytes) = get(&format!("{base}/{uri}")).await;
        assert_eq!(status, 200, "{uri}");
        let rec = rec.lock();
        // The recorder joined at a keyframe: parts before it are not known.
        if let Some((_, origin_bytes)) = rec.fragments.get(&seq) {
            assert_eq!(&bytes, origin_bytes, "part {seq} differs from the origin's");
            checked += 1;
        }
    }
    assert!(checked >= 1, "no part of {pl} checked against the origin");
    let map = map.unwrap_or_else(|| panic!("no EXT-X-MAP in {pl}"));
    let (status, _, init) = get(&format!("{base}/{map}")).await;
    assert_eq!(status, 200);
    assert!(
        rec.lock().inits.contains(&init),
        "the edge's init is the origin's"
    );

    // A blocking reload for the next part is answered when it arrives.
    let msn: u64 = pl
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.parse().ok())
        .expect("media sequence");
    let segments = pl.lines().filter(|l| l.starts_with("#EXTINF:")).count() as u64;
    let (status, _, body) = get(&format!("{base}/index.m3u8?_HLS_msn={}", msn + segments)).await;
    assert_eq!(status, 200, "{body:?}");

    // HLS players hold no connection: requests alone keep the edge's pull
    // (linger 500 ms here) and so the stream's epoch in every URI.
    let epoch = map.split('/').next().unwrap_or_default().to_string();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, _, body) = get(&format!("{base}/index.m3u8")).await;
        assert_eq!(status, 200);
        let pl = String::from_utf8_lossy(&body).to_string();
        let (_, m) = hls_uris(&pl);
        assert_eq!(
            m.as_deref().and_then(|m| m.split('/').next()),
            Some(epoch.as_str()),
            "the edge restarted the stream under an HLS audience (was {epoch}): {pl}"
        );
    }
    assert_eq!(viewers(&origin, "h1", Transport::Edge), 1);

    for path in ["master.m3u8", "manifest.mpd"] {
        let (status, _, body) = get(&format!("{base}/{path}")).await;
        assert_eq!(status, 200, "{path}: {body:?}");
        assert!(!body.is_empty());
    }
    if have("ffprobe") {
        let (codecs, frames) = ffprobe_video_frames(&format!("{base}/index.m3u8")).await;
        assert!(codecs.iter().any(|c| c == "h264"), "{codecs:?}");
        assert!(
            frames >= 10,
            "ffprobe decoded {frames} frames of the edge's playlist"
        );
    }
    recorder.abort();
    publisher.abort();
    edge.shutdown().await;
    origin.shutdown().await;
}
