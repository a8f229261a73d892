//! Hostile clients (issue #12): what one client can make the relay hold,
//! who may read the operator endpoints, and the process-level promises
//! (SIGHUP never kills, one validation for `serve` and `config check`,
//! empty secrets refused). Each test fails on the code before the fix.

mod common;
mod opsutil;

use bytes::{Bytes, BytesMut};
use common::*;
use relaycast::media::demo::Demo;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The demo clip as one fMP4 body: its init, then `n` fragments (continuous
/// timestamps), all at once (no pacing).
fn demo_body(n: u64) -> Bytes {
    let demo = Demo::load().expect("demo clip");
    let mut b = BytesMut::new();
    b.extend_from_slice(&demo.init().bytes);
    for i in 0..n {
        b.extend_from_slice(&demo.fragment(i).0.bytes);
    }
    b.freeze()
}

/// Publish `body` to `name` and keep the publisher open (the returned
/// sender; drop it to end the publish).
async fn publish_open(
    addr: std::net::SocketAddr,
    name: &str,
    body: Bytes,
) -> tokio::sync::mpsc::Sender<Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let url = format!("http://{addr}/publish/{name}");
    tokio::spawn(async move { put_stream(&url, rx).await });
    tx.send(body).await.expect("publish");
    tx
}

/// A TCP client with a tiny receive buffer that sends `request` and then
/// never reads.
async fn stalled(addr: std::net::SocketAddr, request: String) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut c = s.connect(addr).await.expect("connect");
    c.write_all(request.as_bytes()).await.expect("request");
    c
}

/// One `relaycast_refused_total{reason="…"}` value from /metrics.
async fn refused(addr: std::net::SocketAddr, reason: &str) -> u64 {
    let (_, _, body) = get(&format!("http://{addr}/metrics")).await;
    let text = String::from_utf8_lossy(&body);
    let key = format!("relaycast_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_viewer_whose_socket_stays_full_is_closed_at_the_write_deadline() {
    let mut cfg = config();
    cfg.limits.write_stall_timeout = Duration::from_secs(1);
    cfg.limits.max_connections_per_ip = 0;
    let r = relay(cfg).await;
    let addr = r.addr;
    // The viewer waits for the stream, then never reads.
    let mut viewer = stalled(
        addr,
        format!("GET /live/s.mp4?wait=10 HTTP/1.1\r\nhost: {addr}\r\n\r\n"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 8 MB at once: more than a stalled socket's buffers take (the ring
    // keeps all of it, so the lag policy alone never reaches this viewer).
    let _publisher = publish_open(addr, "s", demo_body(600)).await;
    // Wait past the deadline without reading (reading is progress), then
    // the connection must end: EOF or a reset after what was buffered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut sink = vec![0u8; 1 << 16];
        loop {
            match viewer.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled viewer is still connected");
    assert!(refused(addr, "write_stalled").await >= 1);
    // Everyone else is served.
    let (status, _, _) = get(&format!("http://{addr}/live/s/info")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_connection_over_the_per_ip_limit_gets_429_at_once() {
    let mut cfg = config();
    cfg.limits.max_connections_per_ip = 2;
    let r = relay(cfg).await;
    let _a = TcpStream::connect(r.addr).await.expect("connect");
    let _b = TcpStream::connect(r.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The third sends nothing: it is answered without waiting for a
    // request (the header timeout is 10 s).
    let mut c = TcpStream::connect(r.addr).await.expect("connect");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "not answered at once");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.contains("max_connections_per_ip"), "{text}");
}

/// An Engine.IO session outlives its connections (a polling one until its
/// ping timeout): a client that handshakes in a loop must not pile them up.
/// Over `max_sessions_per_ip` the handshake gets 429 at once; a session that
/// ends (the client's CLOSE packet) gives its place back.
#[tokio::test]
async fn socketio_handshakes_over_the_per_ip_session_limit_get_429() {
    let mut cfg = config();
    cfg.limits.max_sessions_per_ip = 2;
    let r = relay(cfg).await;
    let base = r.addr.to_string();
    let first = eio_handshake(&base).await;
    let _second = eio_handshake(&base).await;
    let url = format!("http://{base}/socket.io/?EIO=4&transport=polling");
    let (status, headers, body) = get(&url).await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key("retry-after"));
    assert!(String::from_utf8_lossy(&body).contains("max_sessions_per_ip"));
    assert_eq!(refused(r.addr, "max_sessions_per_ip").await, 1);
    // A session's own requests are not handshakes: still served (a
    // Socket.IO CONNECT to the main namespace).
    let head = eio_post(r.addr, &first, "Content-Length: 2\r\n", b"40").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Other requests from the same IP are not sessions.
    let (status, _, _) = get(&format!("http://{base}/healthz")).await;
    assert_eq!(status, 200);
    // The client closes its first session (Engine.IO CLOSE, "1"): the place
    // is given back once engineioxide drops the session.
    let head = eio_post(r.addr, &first, "Content-Length: 1\r\n", b"1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut again = 0;
    for _ in 0..50 {
        let (status, _, _) = get(&url).await;
        if status == 200 {
            again += 1;
            break;
        }
        assert_eq!(status, 429);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again, 1, "the closed session's place was not given back");
}

#[tokio::test]
async fn init_segments_count_in_the_ring_and_the_memory_budget_refuses() {
    let mut cfg = config();
    cfg.limits.memory_budget = 3 << 20;
    cfg.limits.max_connections_per_ip = 0;
    let r = relay(cfg).await;
    let addr = r.addr;
    // Every fragment comes with a distinct 256 KiB init segment (a large
    // `free` box inside the moov), as a hostile publisher would send.
    let demo = Demo::load().expect("demo");
    let init = &demo.init().bytes;
    let mut body = BytesMut::new();
    for i in 0..12u64 {
        body.extend_from_slice(&padded_init(init, 256 << 10, i as u8));
        body.extend_from_slice(&demo.fragment(i).0.bytes);
    }
    let _p = publish_open(addr, "big", body.freeze()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, info) = get(&format!("http://{addr}/live/big/info")).await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_slice(&info).expect("json");
    let held = info["ring_bytes"].as_u64().unwrap_or(0);
    assert!(
        held >= 3 * (256 << 10),
        "the ring's init segments are not counted: ring_bytes {held}"
    );
    // Past the budget, a new viewer (and publisher) is refused with 503.
    let (status, _, body) = get(&format!("http://{addr}/live/big/poll?wait=0")).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("memory_budget"));
    let (status, _) = put_chunked(
        &format!("http://{addr}/publish/another"),
        demo_body(2),
        1 << 20,
        Duration::ZERO,
    )
    .await;
    assert_eq!(status, 503);
}

/// `init` with a top-level `free` box of `pad` bytes (filled with `fill`)
/// between its `ftyp` and its `moov`: part of the init segment, distinct
/// for every `fill`.
fn padded_init(init: &[u8], pad: usize, fill: u8) -> Vec<u8> {
    let ftyp = u32::from_be_bytes([init[0], init[1], init[2], init[3]]) as usize;
    let mut out = init[..ftyp].to_vec();
    out.extend_from_slice(&((8 + pad) as u32).to_be_bytes());
    out.extend_from_slice(b"free");
    out.extend(std::iter::repeat_n(fill, pad));
    out.extend_from_slice(&init[ftyp..]);
    out
}

#[tokio::test]
async fn operator_endpoints_need_the_token_when_loopback_is_not_trusted() {
    let mut cfg = config();
    cfg.server.operator_from_loopback = false;
    cfg.server.operator_token = Some("operator-token-1".into());
    cfg.auth
        .view_secrets
        .insert("secret-*".into(), "a-view-secret".into());
    let r = relay(cfg).await;
    let addr = r.addr;
    let _a = publish_open(addr, "open-cam", demo_body(3)).await;
    let _b = publish_open(addr, "secret-cam", demo_body(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 403, "/metrics without the token");
    let (_, _, list) = get(&format!("http://{addr}/api/streams")).await;
    let list = String::from_utf8_lossy(&list);
    assert!(list.contains("open-cam"), "{list}");
    assert!(
        !list.contains("secret-cam"),
        "a signed-only stream is listed to anyone: {list}"
    );
    // With the token: everything.
    let with_token = |path: &str| {
        let url = format!("http://{addr}{path}");
        async move {
            use http_body_util::BodyExt;
            let mut s = http1(addr).await;
            let req = hyper::Request::get(url)
                .header("authorization", "Bearer operator-token-1")
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request");
            let resp = s.send_request(req).await.expect("send");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(with_token("/metrics").await.0, 200);
    assert!(with_token("/api/streams").await.1.contains("secret-cam"));
}

#[tokio::test]
async fn polling_viewers_are_counted_and_told_when_their_after_is_not_resumed() {
    let r = relay(config()).await;
    let addr = r.addr;
    let _p = publish_open(addr, "p", demo_body(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = http1::<http_body_util::Empty<Bytes>>(addr).await;
    let poll = |s: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
                q: &str| {
        let req = hyper::Request::get(format!("/live/p/poll?{q}"))
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        s.send_request(req)
    };
    use http_body_util::BodyExt;
    let resp = poll(&mut s, "wait=0&after=5").await.expect("poll");
    assert_eq!(resp.headers()["x-relaycast-resumed"], "1");
    let _ = resp.into_body().collect().await;
    // An `after` beyond the stream: not resumed, the client is told.
    let resp = poll(&mut s, "wait=0&after=100000").await.expect("poll");
    assert_eq!(resp.headers()["x-relaycast-resumed"], "0");
    let _ = resp.into_body().collect().await;
    // Between its polls the client still counts as a viewer.
    let (_, _, info) = get(&format!("http://{addr}/live/p/info")).await;
    let info: serde_json::Value = serde_json::from_slice(&info).expect("json");
    assert!(info["viewers"].as_u64().unwrap_or(0) >= 1, "{info}");
    assert!(
        info["viewers_by_transport"]["poll"].as_u64().unwrap_or(0) >= 1,
        "{info}"
    );
}

/// The relay binary with `args`, its stdout piped.
fn binary(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relaycast"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("run relaycast")
}

#[tokio::test]
async fn sighup_without_tls_keeps_the_relay_serving() {
    let mut child = binary(&["serve", "--listen", "127.0.0.1:0", "--no-demo"], &[]);
    let addr = opsutil::listening(&mut child);
    let pid = child.id().to_string();
    let hup = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "SIGHUP killed the relay"
    );
    let (status, _, _) = get(&format!("http://{addr}/healthz")).await;
    assert_eq!(status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_empty_or_short_publish_key_is_refused_at_start() {
    for key in ["", "short"] {
        let out = binary(
            &["serve", "--listen", "127.0.0.1:0", "--no-demo"],
            &[("RELAYCAST_PUBLISH_KEY", key)],
        )
        .wait_with_output()
        .expect("run");
        assert!(!out.status.success(), "started with publish key {key:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("publish_key"), "{err}");
    }
}

#[test]
fn config_check_and_serve_apply_one_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").expect("write");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[server]\ntls_cert = {cert:?}\ntls_key = {cert:?}\n[log]\nfilter = \"[[[\"\n"),
    )
    .expect("write");
    for args in [
        vec!["config", "check", "--config"],
        vec!["serve", "--listen", "127.0.0.1:0", "--no-demo", "--config"],
    ] {
        let mut a = args.clone();
        let path = bad.to_string_lossy().to_string();
        a.push(&path);
        let out = binary(&a, &[]).wait_with_output().expect("run");
        assert!(!out.status.success(), "{args:?} accepted a bad config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("tls_cert"), "{args:?}: {err}");
        assert!(err.contains("log.filter"), "{args:?}: {err}");
    }
    // Glob keys, as docs/security.md documents them, pass both.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[ingest.keys]\n\"cam-*\" = \"camera-key-1\"\n").expect("write");
    let out = binary(
        &["config", "check", "--config", &good.to_string_lossy()],
        &[],
    )
    .wait_with_output()
    .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One unlabelled value from /metrics (a gauge or a counter).
async fn gauge(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (_, _, body) = get(&format!("http://{addr}/metrics")).await;
    let key = format!("{name} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{name} on /metrics"))
}

/// Heap per viewer of a stream that has caught all its viewers up and
/// handed them to the fan-out writers, from jemalloc's figure on /metrics:
/// 300 WebSocket viewers, or 300 HTTP streaming viewers (`GET
/// /live/p.mp4` over plain HTTP/1.1, read by a socket that drops the bytes).
async fn heap_per_viewer_in_the_writers(http: bool) -> u64 {
    const VIEWERS: u64 = 300;
    let mut child = binary(
        &["serve", "--listen", "127.0.0.1:0", "--no-demo"],
        &[("RELAYCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "0")],
    );
    let addr: std::net::SocketAddr = opsutil::listening(&mut child).parse().expect("addr");
    let _p = publish_open(addr, "p", demo_body(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gauge(addr, "relaycast_heap_allocated_bytes").await;
    let mut readers = Vec::new();
    for _ in 0..VIEWERS {
        readers.push(if http {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let req = format!("GET /live/p.mp4 HTTP/1.1\r\nhost: {addr}\r\n\r\n");
            c.write_all(req.as_bytes()).await.expect("request");
            tokio::spawn(async move {
                let mut sink = vec![0u8; 64 << 10];
                while let Ok(1..) = c.read(&mut sink).await {}
            })
        } else {
            let mut ws = ws_connect(&format!("ws://{addr}/live/p")).await;
            tokio::spawn(async move {
                use futures_util::StreamExt;
                while let Some(Ok(_)) = ws.next().await {}
            })
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut in_writers = 0;
    while tokio::time::Instant::now() < deadline {
        in_writers = gauge(addr, "relaycast_ws_writer_viewers").await;
        if in_writers == VIEWERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        in_writers, VIEWERS,
        "every viewer caught up and in a writer (http: {http})"
    );
    let after = gauge(addr, "relaycast_heap_allocated_bytes").await;
    for r in &readers {
        r.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
    let each = after.saturating_sub(before) / VIEWERS;
    eprintln!("heap per viewer in the writers (http: {http}): {each} B");
    each
}

/// What a WebSocket viewer costs the relay while a fan-out writer has it
/// (most of its life) (#15). The bound is well under what a viewer cost
/// when its task held one unboxed future of the whole session (8.3–8.5 KiB
/// of heap per viewer in this test's build, against 1.5–1.9 KiB since the
/// session's long wait holds only its own state).
#[tokio::test]
async fn websocket_viewers_in_the_writers_cost_little_heap_each() {
    const BOUND: u64 = 4 << 10;
    let each = heap_per_viewer_in_the_writers(false).await;
    assert!(
        each < BOUND,
        "{each} bytes of heap per WebSocket viewer (bound {BOUND})"
    );
}

/// The same for HTTP streaming viewers over plain HTTP/1.1, which the
/// server takes before hyper and the writers serve like WebSocket viewers
/// (#15). Served by hyper (one connection task and body per viewer,
/// `egress.ws_direct_write = false`), none of them is ever in a writer.
#[tokio::test]
async fn http_streaming_viewers_in_the_writers_cost_little_heap_each() {
    const BOUND: u64 = 4 << 10;
    let each = heap_per_viewer_in_the_writers(true).await;
    assert!(
        each < BOUND,
        "{each} bytes of heap per HTTP streaming viewer (bound {BOUND})"
    );
}

/// Stalled long polls from the oldest `after` hold no copies: the relay's
/// heap (jemalloc's figure on /metrics) stays put while 40 of them wait on
/// sockets that never read.
#[tokio::test]
async fn stalled_long_polls_hold_no_copies_of_the_ring() {
    let mut child = binary(
        &["serve", "--listen", "127.0.0.1:0", "--no-demo"],
        &[("RELAYCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "0")],
    );
    let addr: std::net::SocketAddr = opsutil::listening(&mut child).parse().expect("addr");
    let _p = publish_open(addr, "p", demo_body(600)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heap = || async { gauge(addr, "relaycast_heap_allocated_bytes").await };
    let before = heap().await;
    let mut polls = Vec::new();
    for _ in 0..40 {
        polls.push(
            stalled(
                addr,
                format!("GET /live/p/poll?after=0 HTTP/1.1\r\nhost: {addr}\r\n\r\n"),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = heap().await;
    let grown = after.saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "40 stalled polls grew the heap by {} MiB",
        grown >> 20
    );
    drop(polls);
    let _ = child.kill();
    let _ = child.wait();
}
