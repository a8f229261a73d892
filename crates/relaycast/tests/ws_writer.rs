//! The fan-out writers (#15): WebSocket viewers over plain TCP that have
//! caught up are written to by fan-out writer tasks, and go back to
//! their own task when the client speaks, the socket is full or the session
//! ends. Over real sockets: the writers do serve the viewers (their counters
//! on /metrics move), every viewer gets every fragment byte for byte (with
//! and without `?meta=0`, from a pass's shared frames), a ping
//! mid-stream is answered between whole messages with nothing lost, the
//! shared frames go in io_uring batches by default and one `sendmsg` each
//! with `egress.ws_uring = false`, and `egress.ws_direct_write = false`
//! keeps every viewer on its own task. HTTP streaming viewers over plain
//! HTTP/1.1 are served by the writers too (chunked), and by hyper with
//! `egress.ws_direct_write = false`.
//!
//! The counters are process-wide, so the tests of this file take turns.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use relaycast::egress::websocket::{WriterCounts, writer_counts};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Generous bound on any one wait (not a timing claim).
const LIMIT: Duration = Duration::from_secs(30);

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes `body` to `name` in pieces with pauses (a live-ish publisher).
async fn publish(base: &str, name: &str, body: Bytes) {
    let (status, summary) = put_chunked(
        &format!("http://{base}/publish/{name}"),
        body,
        16 << 10,
        Duration::from_millis(2),
    )
    .await;
    assert_eq!(status, 200, "publisher: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_viewers_are_written_by_the_writers_and_get_every_byte() {
    let _turn = TURN.lock().await;
    let relay = relay(config()).await;
    let base = relay.addr.to_string();
    let (body, fragments) = demo_stream(3);
    let before = writer_counts();
    let mut viewers = Vec::new();
    for _ in 0..40 {
        viewers.push(ws_connect(&format!("ws://{base}/live/w?wait=10")).await);
    }
    let readers: Vec<_> = viewers
        .into_iter()
        .map(|mut v| tokio::spawn(async move { ws_read(&mut v, fragments, LIMIT).await }))
        .collect();
    publish(&base, "w", body.clone()).await;
    for r in readers {
        let got = r.await.expect("viewer");
        assert_eq!(got.seqs.len(), fragments, "every fragment");
        assert!(
            got.bytes == body,
            "byte for byte: init, then every fragment"
        );
        assert!(got.of_type("skip").is_empty());
    }
    let after = writer_counts();
    // The writers wrote the batches (a batch holds what was ready, several
    // fragments when the publisher runs ahead; a viewer's task writes only
    // until it has caught up, and again after falling behind).
    let writes = after.writes - before.writes;
    assert!(
        writes >= fragments as u64,
        "batches written by the writers: {writes} for 40 viewers × {fragments} fragments"
    );
    assert!(after.wakeups > before.wakeups);
    relay.shutdown().await;
}

/// 20 viewers of a fresh stream, every other one with `?meta=0`, each
/// checked byte for byte; the writers' counters before and after, and the
/// fragment count.
async fn meta_mix(c: relaycast::config::Config, name: &str) -> (WriterCounts, WriterCounts, usize) {
    let relay = relay(c).await;
    let base = relay.addr.to_string();
    let (body, fragments) = demo_stream(3);
    let before = writer_counts();
    let mut readers = Vec::new();
    for i in 0..20 {
        let meta = i % 2 == 0;
        let q = if meta { "" } else { "&meta=0" };
        let mut v = ws_connect(&format!("ws://{base}/live/{name}?wait=10{q}")).await;
        let want = body.len();
        readers.push(tokio::spawn(async move {
            if meta {
                return (meta, ws_read(&mut v, fragments, LIMIT).await);
            }
            // No JSON per fragment: read until the bytes are all here.
            let mut got = common::Received::default();
            let deadline = tokio::time::Instant::now() + LIMIT;
            while got.bytes.len() < want {
                match tokio::time::timeout_at(deadline, v.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => got.bytes.extend_from_slice(&b),
                    Ok(Some(Ok(Message::Text(t)))) => {
                        got.texts.push(serde_json::from_str(&t).expect("JSON"))
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            (meta, got)
        }));
    }
    publish(&base, name, body.clone()).await;
    for r in readers {
        let (meta, got) = r.await.expect("viewer");
        assert!(got.bytes == body, "byte for byte (meta: {meta})");
        if meta {
            assert_eq!(got.seqs.len(), fragments, "a JSON message per fragment");
        } else {
            assert!(
                got.of_type("fragment").is_empty(),
                "no JSON per fragment with meta=0"
            );
        }
    }
    let after = writer_counts();
    relay.shutdown().await;
    (before, after, fragments)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_with_and_without_meta_share_a_pass_and_each_get_their_own_bytes() {
    let _turn = TURN.lock().await;
    let (before, after, fragments) = meta_mix(config(), "m").await;
    // Most batches are the pass's shared frames, written as they are to
    // every viewer that was caught up.
    let shared = after.shared - before.shared;
    assert!(
        shared >= fragments as u64,
        "shared batches: {shared} for 20 viewers × {fragments} fragments ({before:?} → {after:?})"
    );
    // With io_uring (the default, where the system gives it) they went in
    // batched submissions; where it is refused, the writers fell back to
    // one sendmsg each and still delivered every byte (above).
    let uring = after.uring - before.uring;
    if relaycast_uring::Sender::new(8).is_ok() {
        assert!(
            uring >= fragments as u64,
            "io_uring sends: {uring} for 20 viewers × {fragments} fragments ({before:?} → {after:?})"
        );
    } else {
        eprintln!("WARNING: io_uring is not available here: only the sendmsg fallback was tested");
        assert_eq!(uring, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_uring_off_the_writers_send_one_by_one_and_every_byte_arrives() {
    let _turn = TURN.lock().await;
    let mut c = config();
    c.egress.ws_uring = false;
    let (before, after, fragments) = meta_mix(c, "u").await;
    assert!(after.shared - before.shared >= fragments as u64);
    assert_eq!(
        after.uring, before.uring,
        "no io_uring send ({before:?} → {after:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_while_a_writer_has_the_viewer_is_answered_and_nothing_is_lost() {
    let _turn = TURN.lock().await;
    let mut c = config();
    c.server.demo = true;
    let relay = relay(c).await;
    let base = relay.addr.to_string();
    let mut ws = ws_connect(&format!("ws://{base}/live/demo?wait=10")).await;
    let before = writer_counts();
    let mut seqs = Vec::new();
    let mut pongs = Vec::new();
    let mut pinged = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while seqs.len() < 40 {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("messages keep coming")
            .expect("open")
            .expect("a message");
        match m {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                if v["type"] == "fragment" {
                    seqs.push(v["seq"].as_u64().expect("seq"));
                    // Pings at fragments 10, 20 and 30: by then the viewer
                    // has caught up and sits with a writer.
                    if seqs.len() % 10 == 0 && pinged < 3 {
                        pinged += 1;
                        let p = format!("ping {pinged}");
                        ws.send(Message::Ping(p.into_bytes().into()))
                            .await
                            .expect("ping");
                    }
                }
            }
            Message::Pong(p) => pongs.push(String::from_utf8_lossy(&p).into_owned()),
            _ => {}
        }
    }
    assert_eq!(
        pongs,
        ["ping 1", "ping 2", "ping 3"],
        "each ping answered once, in order"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no fragment lost around the pings: {seqs:?}"
    );
    let after = writer_counts();
    assert!(
        after.handbacks[2] >= before.handbacks[2] + 3,
        "the writer gave the viewer back for each ping: {before:?} → {after:?}"
    );
    ws.close(None).await.expect("close");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_writes_off_every_viewer_stays_on_its_own_task() {
    let _turn = TURN.lock().await;
    let mut c = config();
    c.server.demo = true;
    c.egress.ws_direct_write = false;
    let relay = relay(c).await;
    let base = relay.addr.to_string();
    let before = writer_counts();
    let mut a = ws_connect(&format!("ws://{base}/live/demo?wait=10")).await;
    let mut b = ws_connect(&format!("ws://{base}/live/demo?wait=10")).await;
    // And an HTTP streaming viewer, which hyper serves then (its head does
    // not say `connection: close`, which the server's own path always does).
    let http = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(&base)
            .await
            .expect("connect");
        let req = format!("GET /live/demo.mp4 HTTP/1.1\r\nhost: {base}\r\n\r\n");
        c.write_all(req.as_bytes()).await.expect("request");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        while got.len() < 200_000 {
            match tokio::time::timeout(LIMIT, c.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        got
    };
    let (ra, rb, rh) = tokio::join!(ws_read(&mut a, 15, LIMIT), ws_read(&mut b, 15, LIMIT), http);
    assert!(ra.seqs.len() >= 15 && rb.seqs.len() >= 15);
    assert!(rh.len() >= 200_000, "{} bytes of /live/demo.mp4", rh.len());
    let head = String::from_utf8_lossy(&rh[..rh.len().min(1024)]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "hyper's head: {head}");
    let after = writer_counts();
    assert_eq!(after.writes, before.writes, "no writer wrote");
    assert_eq!(after.viewers, 0, "no viewer reached a writer");
    relay.shutdown().await;
}

/// The top-level boxes of an fMP4 byte stream: (type, bytes).
fn boxes(mut b: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 8 {
        let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        assert!(size >= 8 && size <= b.len(), "a whole box of {size} bytes");
        out.push(([b[4], b[5], b[6], b[7]], &b[..size]));
        b = &b[size..];
    }
    assert!(b.is_empty(), "nothing after the last box");
    out
}

/// HTTP streaming viewers over plain HTTP/1.1 (`GET /live/{name}.mp4`)
/// are taken before hyper and served by the writers like WebSocket viewers
/// (#15). hyper's client (strict about chunked framing) reads each body to
/// its end: the stream byte for byte, without and with `?meta=1` (then
/// with a `free` box of JSON before the init, each fragment and the end),
/// and the last chunk once the stream is over. Most of it went out as the
/// writers' shared frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_streaming_viewers_are_written_by_the_writers_and_get_every_byte() {
    let _turn = TURN.lock().await;
    let relay = relay(config()).await;
    let base = relay.addr.to_string();
    let (body, fragments) = demo_stream(3);
    let before = writer_counts();
    let mut readers = Vec::new();
    for i in 0..20 {
        let meta = i % 2 == 1;
        let q = if meta { "&meta=1" } else { "" };
        let url = format!("http://{base}/live/h.mp4?wait=10{q}");
        readers.push(tokio::spawn(async move { (meta, get(&url).await) }));
    }
    // Every request is in (and waiting for the stream) before it starts.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while relay.state.limits.connections_from([127, 0, 0, 1].into()) < 20 {
        assert!(tokio::time::Instant::now() < deadline, "20 viewers connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&base, "h", body.clone()).await;
    for r in readers {
        let (meta, (status, headers, got)) = r.await.expect("viewer");
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "video/mp4");
        assert_eq!(headers["transfer-encoding"], "chunked");
        let mut media = Vec::new();
        let mut notes = Vec::new();
        for (kind, b) in boxes(&got) {
            if &kind == b"free" && b[8..].starts_with(b"relaycast") {
                let json: serde_json::Value = serde_json::from_slice(&b[17..]).expect("JSON");
                notes.push(json["type"].as_str().unwrap_or_default().to_string());
            } else {
                media.extend_from_slice(b);
            }
        }
        assert!(media == body, "byte for byte (meta: {meta})");
        if meta {
            assert_eq!(notes.first().map(String::as_str), Some("hello"));
            assert_eq!(notes.last().map(String::as_str), Some("end"));
            let n = notes.iter().filter(|t| *t == "fragment").count();
            assert_eq!(n, fragments, "a free box per fragment");
        } else {
            assert!(notes.is_empty(), "no free boxes without meta=1");
        }
    }
    let after = writer_counts();
    let shared = after.shared - before.shared;
    assert!(
        shared >= fragments as u64,
        "shared batches: {shared} for 20 viewers × {fragments} fragments ({before:?} → {after:?})"
    );
    relay.shutdown().await;
}
