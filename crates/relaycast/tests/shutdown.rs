//! SIGTERM with 1,000 viewers open: the real binary drains within its
//! shutdown deadline, every HTTP-stream body ends at a fragment boundary
//! (a whole number of MP4 boxes, the last one an `mdat`), every WebSocket
//! viewer is told `end` and closed with 1001. The binary runs with
//! `--log-format json`, so its log is checked too: every line is JSON and the
//! publisher's lines carry the session span (stream, peer).

mod common;
mod opsutil;

use bytes::Bytes;
use common::fixture;
use futures_util::StreamExt;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const VIEWERS_HTTP: usize = 500;
const VIEWERS_WS: usize = 500;
/// The relay's shutdown deadline. What is under test is that every session
/// ends cleanly (a whole fragment, then the end) and the relay exits as soon
/// as they have, not how fast a debug build drains 1,000 viewers on a loaded
/// 2-core machine: with a 3 s deadline it was cut short once in CI at load 10
/// (exit 5.9 s after SIGTERM, one HTTP body reset). Timing lives in benches.
const DEADLINE: Duration = Duration::from_secs(20);
/// Allowance on top of the deadline for process exit on a loaded machine.
const MARGIN: Duration = Duration::from_secs(5);

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// What an HTTP-stream viewer saw.
struct HttpEnd {
    bytes: u64,
    clean: bool,
    boxes: Option<Vec<[u8; 4]>>,
}

/// Incremental top-level box walker: keeps only where the current box ends.
#[derive(Default)]
struct BoxWalker {
    head: Vec<u8>,
    remaining: u64,
    last: Option<[u8; 4]>,
    count: usize,
    types: Vec<[u8; 4]>,
}

impl BoxWalker {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let need = 8 - self.head.len().min(8);
            let n = need.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() == 8 {
                let size =
                    u32::from_be_bytes([self.head[0], self.head[1], self.head[2], self.head[3]]);
                let typ = [self.head[4], self.head[5], self.head[6], self.head[7]];
                assert!(size >= 8, "the relay writes 32-bit box sizes: {size}");
                self.remaining = u64::from(size) - 8;
                self.last = Some(typ);
                self.count += 1;
                if self.types.len() < 4 {
                    self.types.push(typ);
                }
                self.head.clear();
            }
        }
    }

    /// `Some(first types… , last)` when the data ended on a box boundary.
    fn finish(&self) -> Option<Vec<[u8; 4]>> {
        if self.remaining != 0 || !self.head.is_empty() {
            return None;
        }
        let mut v = self.types.clone();
        v.extend(self.last);
        Some(v)
    }
}

async fn http_viewer(addr: String, ready: Arc<AtomicUsize>) -> HttpEnd {
    use http_body_util::BodyExt;
    let mut sender = common::http1(&addr).await;
    let req = hyper::Request::get("/live/sig.mp4?wait=10")
        .header("host", &addr)
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut walker = BoxWalker::default();
    let mut bytes = 0u64;
    let mut counted = false;
    let clean = loop {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    bytes += d.len() as u64;
                    walker.feed(d);
                    if !counted && walker.count >= 3 {
                        counted = true;
                        ready.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            Some(Err(_)) => break false,
            None => break true,
        }
    };
    HttpEnd {
        bytes,
        clean,
        boxes: walker.finish(),
    }
}

/// What a WebSocket viewer saw: (fragments, got `end`, close code).
async fn ws_viewer(addr: String, ready: Arc<AtomicUsize>) -> (usize, bool, Option<u16>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/live/sig?wait=10"))
        .await
        .expect("ws connect");
    let mut frags = 0;
    let mut end = false;
    let mut code = None;
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Binary(b)) => {
                assert!(
                    opsutil::whole_boxes(&b).is_some(),
                    "a binary message is whole boxes"
                );
                frags += 1;
                if frags == 2 {
                    ready.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(Message::Text(t)) => {
                if t.contains("\"type\":\"end\"") {
                    end = true;
                }
            }
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (frags, end, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_1000_viewers_drains_within_the_deadline() {
    let need = (VIEWERS_HTTP + VIEWERS_WS) as u64 * 2 + 200;
    assert!(
        open_files_limit() >= need,
        "this test needs `ulimit -n` ≥ {need} (it is {})",
        open_files_limit()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .args([
            "serve",
            "--no-demo",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env(
            "RELAYCAST_SERVER__SHUTDOWN_TIMEOUT",
            DEADLINE.as_secs_f64().to_string(),
        )
        // 1,000+ connections from one address: lift the per-IP limit.
        .env("RELAYCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "0")
        .env("RUST_LOG", "relaycast=debug,warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relaycast");
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("first line");
    let addr = common::listening_addr(&line);
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });

    // A publisher that keeps sending the clip in small pieces (~100 KB/s).
    let file = fixture("h264_aac_every_frame.mp4");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let publisher = {
        let url = format!("http://{addr}/publish/sig");
        tokio::spawn(async move { common::put_stream(&url, rx).await })
    };
    let feeder = tokio::spawn(async move {
        loop {
            for piece in file.chunks(2000) {
                if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let ready = Arc::new(AtomicUsize::new(0));
    let mut https = Vec::new();
    let mut wss = Vec::new();
    for i in 0..VIEWERS_HTTP.max(VIEWERS_WS) {
        if i < VIEWERS_HTTP {
            https.push(tokio::spawn(http_viewer(addr.clone(), ready.clone())));
        }
        if i < VIEWERS_WS {
            wss.push(tokio::spawn(ws_viewer(addr.clone(), ready.clone())));
        }
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let total = VIEWERS_HTTP + VIEWERS_WS;
    let wait_ready = Instant::now();
    while ready.load(Ordering::SeqCst) < total {
        assert!(
            wait_ready.elapsed() < Duration::from_secs(120),
            "only {} of {total} viewers receiving",
            ready.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{total} viewers receiving after {:?}", wait_ready.elapsed());

    let term = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let limit = DEADLINE + MARGIN;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return Ok((st, term.elapsed()));
            }
            if term.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Err(term.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .expect("join");
    let (st, took) = match status {
        Ok(x) => x,
        Err(t) => panic!("relaycast still running {t:?} after SIGTERM (deadline {DEADLINE:?})"),
    };
    eprintln!("exited {st} {took:?} after SIGTERM");
    assert!(
        took < DEADLINE,
        "the relay exited {took:?} after SIGTERM: its {DEADLINE:?} deadline cut the drain short"
    );
    assert!(st.success(), "exit status {st}");
    feeder.abort();

    let mut clean = 0;
    for h in https {
        let end = h.await.expect("http viewer");
        assert!(
            end.clean,
            "HTTP-stream body ended cleanly (chunked terminator)"
        );
        let boxes = end
            .boxes
            .unwrap_or_else(|| panic!("body of {} bytes ends inside a box", end.bytes));
        assert_eq!(&boxes[0], b"ftyp", "starts with the init segment");
        assert_eq!(boxes.last(), Some(b"mdat"), "ends after a whole fragment");
        clean += 1;
    }
    let mut closed = 0;
    for w in wss {
        let (frags, end, code) = w.await.expect("ws viewer");
        assert!(frags >= 2);
        assert!(end, "WebSocket viewer was told end");
        assert_eq!(code, Some(1001), "WebSocket closed with 1001 going away");
        closed += 1;
    }
    eprintln!(
        "{clean} HTTP bodies ended at a fragment boundary, {closed} WebSockets closed with 1001"
    );
    let (status, _) = publisher.await.expect("publisher");
    assert_eq!(
        status, 503,
        "the publisher is told the relay is shutting down"
    );

    // The log: JSON lines; the publisher's carry its span.
    let log = log.join().expect("log thread");
    let mut publisher_lines = 0;
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}"));
        if v["fields"]["message"] == "HTTP publisher connected" {
            assert_eq!(v["span"]["name"], "ingest", "{l}");
            assert_eq!(v["span"]["stream"], "sig", "{l}");
            assert_eq!(v["span"]["transport"], "http", "{l}");
            let peer = v["span"]["peer"].as_str().unwrap_or("");
            assert!(peer.starts_with("127.0.0.1:"), "peer in {l}");
            publisher_lines += 1;
        }
    }
    assert_eq!(publisher_lines, 1, "log:\n{log}");
}

/// The race behind the 1,000-viewer test's rare failure (#12 item 25): a
/// WebSocket viewer whose socket is full when the relay shuts down has a
/// frame half written; the relay used to abandon that write and send `end`
/// and the close frame after the half frame, so the viewer read garbage
/// (or, when it read too slowly for the 1 s goodbye, no close at all). Now
/// the frame is finished first, within the shutdown deadline: once the
/// viewer reads again, every frame is whole, then `end`, then close 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_never_cuts_a_websocket_frame_in_half() {
    let mut cfg = common::config();
    cfg.server.shutdown_timeout = Duration::from_secs(15);
    cfg.limits.max_ingest_bitrate = 0; // 12 MB as fast as it goes
    let relay = common::relay(cfg).await;
    let addr = relay.addr;
    let demo = relaycast::media::demo::Demo::load().expect("demo clip");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let publisher = {
        let url = format!("http://{addr}/publish/full");
        tokio::spawn(async move { common::put_stream(&url, rx).await })
    };
    tx.send(demo.init().bytes.clone())
        .await
        .expect("publish init");
    tx.send(demo.fragment(0).0.bytes).await.expect("publish");
    // A viewer with a tiny receive buffer, which then stops reading.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = sock.connect(addr).await.expect("connect");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/live/full?wait=10"), tcp)
            .await
            .expect("ws handshake");
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert!(t.contains("\"hello\""), "{t}"),
        m => panic!("expected the hello, got {m:?}"),
    }
    // ~12 MB of fragments: far more than the socket buffers hold, so the
    // relay's write to this viewer is stuck, partway through a frame.
    for n in 1..2_000 {
        tx.send(demo.fragment(n).0.bytes).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.state.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Read everything: whole frames, `end`, close 1001.
    let mut end = false;
    let mut binaries = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                assert!(!end, "nothing after end");
                assert!(opsutil::whole_boxes(&b).is_some(), "a whole fragment");
                binaries += 1;
            }
            Ok(Some(Ok(Message::Text(t)))) => end |= t.contains("\"type\":\"end\""),
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("the viewer read a broken frame after {binaries}: {e}"),
            Ok(None) => panic!("connection ended without a close frame"),
            Err(_) => panic!("no close within 20 s"),
        }
    };
    eprintln!("{binaries} binary messages after the shutdown; end: {end}; close {code:?}");
    assert!(binaries > 0);
    assert!(end, "told end");
    assert_eq!(code, Some(1001));
    drop(tx);
    let _ = publisher.await;
    assert!(relay.wait().await, "drained within the deadline");
}
