//! Every ingest and egress transport with a real client, end to end on
//! 127.0.0.1:0: ffmpeg over raw TCP and HTTP, WebSocket publish in
//! random-size messages and its close codes, long polling and plain polling
//! reassembling the stream, the `relaycast publish` / `watch` binaries over
//! http://, ws:// and tcp:// (and reconnecting after a relay restart), and
//! CORS. Wherever the issue asks for it, delivery is checked byte for byte.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use relaycast::config::TcpIngest;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A small deterministic PRNG (xorshift64*), so a failing split can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// `/live/{name}/info` once it satisfies `pred` (bounded: 400 tries, 25 ms apart).
async fn info_when(
    base: &str,
    name: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = format!("http://{base}/live/{name}/info");
    let mut last = serde_json::Value::Null;
    for _ in 0..400 {
        let (s, _, b) = get(&url).await;
        if s == 200 {
            last = serde_json::from_slice(&b).expect("info is JSON");
            if pred(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name}: info never matched; last {last}");
}

/// Read a WebSocket viewer up to and including its first binary message (the init).
async fn read_to_init(ws: &mut Ws) -> Received {
    let mut r = Received::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r.binaries.is_empty() {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => r
                .texts
                .push(serde_json::from_str(&t).expect("control is JSON")),
            Ok(Some(Ok(Message::Binary(b)))) => {
                r.bytes.extend_from_slice(&b);
                r.binaries.push(b);
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no init within 10 s: {other:?}; so far {r:?}"),
        }
    }
    r
}

/// Send `bytes` to a WebSocket publisher as binary messages of random sizes.
async fn send_random(ws: &mut Ws, bytes: &[u8], rng: &mut Rng, max: usize) -> usize {
    let mut off = 0;
    let mut n = 0;
    while off < bytes.len() {
        // Mostly small pieces (box headers get cut), sometimes large ones.
        let size = if rng.range(0, 9) == 0 {
            rng.range(1, max)
        } else {
            rng.range(1, 1500)
        };
        let end = (off + size).min(bytes.len());
        ws.send(Message::Binary(Bytes::copy_from_slice(&bytes[off..end])))
            .await
            .expect("ws publish send");
        off = end;
        n += 1;
    }
    n
}

/// Read a publisher's socket to its close: (close code, reason, text messages).
async fn publisher_close(ws: &mut Ws) -> (Option<u16>, String, Vec<String>) {
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => texts.push(t.to_string()),
            Ok(Some(Ok(Message::Close(f)))) => {
                return match f {
                    Some(f) => (Some(u16::from(f.code)), f.reason.to_string(), texts),
                    None => (None, String::new(), texts),
                };
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return (None, format!("error: {e}"), texts),
            Ok(None) => return (None, "closed without a close frame".into(), texts),
            Err(_) => panic!("publisher socket not closed within 10 s; texts {texts:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_publish_in_random_size_messages_reaches_a_websocket_viewer_byte_identical() {
    let relay = relay(config()).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    for (name, clip, seed) in [
        ("wsa", "h264_aac_every_frame.mp4", 0x5eed_0001_u64),
        ("wsb", "h264_aac_cmaf_prft.mp4", 0x5eed_0002),
        ("wsc", "vp9_opus.mp4", 0x5eed_0003),
    ] {
        let file = fixture(clip);
        let (init, frags) = split(&file);
        let mut rng = Rng(seed);
        let mut publisher = ws_connect(&format!("ws://{base}/publish/{name}")).await;
        // The init first, itself cut at random; then a viewer joins before
        // any fragment, so it must get every one of them.
        send_random(&mut publisher, &init.bytes, &mut rng, 300).await;
        info_when(&base, name, |i| i["init_version"] == 1).await;
        let mut viewer = ws_connect(&format!("ws://{base}/live/{name}")).await;
        let hello = read_to_init(&mut viewer).await;
        assert_eq!(hello.of_type("hello").len(), 1, "{name}: {hello:?}");
        assert_eq!(
            hello.binaries,
            vec![init.bytes.clone()],
            "{name}: the init first"
        );
        let rest = &file[init.bytes.len()..];
        let messages = send_random(&mut publisher, rest, &mut rng, 64 << 10).await;
        publisher.close(None).await.expect("close publisher");
        // The close handshake completes (the relay echoes our close frame).
        let (code, reason, _) = publisher_close(&mut publisher).await;
        assert!(
            matches!(code, None | Some(1000)),
            "{name}: publisher close {code:?} {reason}"
        );
        let info = info_when(&base, name, |i| i["live"] == false).await;
        assert_eq!(info["fragments_in"], frags.len() as u64, "{name}: {info}");
        let frag_bytes: usize = frags.iter().map(|f| f.bytes.len()).sum();
        assert_eq!(info["bytes_in"], frag_bytes as u64, "{name}: {info}");

        let got = ws_read(&mut viewer, frags.len(), Duration::from_secs(20)).await;
        let mut all = hello.bytes.clone();
        all.extend_from_slice(&got.bytes);
        let mut want = init.bytes.to_vec();
        for f in &frags {
            want.extend_from_slice(&f.bytes);
        }
        assert_eq!(got.seqs.len(), frags.len(), "{name}: every fragment");
        assert!(
            all == want,
            "{name}: {} bytes received, {} published in {messages} messages: not identical",
            all.len(),
            want.len()
        );
        // That is every byte the publisher sent, but a trailing mfra index.
        assert!(
            file.starts_with(&want),
            "{name}: init + fragments begin the clip"
        );
    }
    relay.shutdown().await;
}

/// `?meta=0` (#15): a WebSocket viewer that needs no per-fragment JSON gets
/// the same binary messages, byte for byte, and every control message but
/// the `fragment` ones (hello, init, publisher, end).
#[tokio::test]
async fn websocket_viewer_with_meta_0_gets_the_same_binaries_without_fragment_texts() {
    let relay = relay(config()).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);
    let mut publisher = ws_connect(&format!("ws://{base}/publish/nometa")).await;
    publisher
        .send(Message::Binary(init.bytes.clone()))
        .await
        .expect("send init");
    info_when(&base, "nometa", |i| i["init_version"] == 1).await;
    let mut full = ws_connect(&format!("ws://{base}/live/nometa")).await;
    let mut lean = ws_connect(&format!("ws://{base}/live/nometa?meta=0")).await;
    let full_start = read_to_init(&mut full).await;
    let lean_start = read_to_init(&mut lean).await;
    assert_eq!(lean_start.of_type("hello").len(), 1, "{lean_start:?}");
    assert_eq!(lean_start.of_type("init").len(), 1, "{lean_start:?}");
    assert_eq!(lean_start.binaries, vec![init.bytes.clone()]);
    for f in &frags {
        publisher
            .send(Message::Binary(f.bytes.clone()))
            .await
            .expect("send fragment");
    }
    publisher.close(None).await.expect("close publisher");
    // Both read until the relay closes them (the grace period ends).
    let full_rest = ws_read(&mut full, usize::MAX, Duration::from_secs(15)).await;
    let lean_rest = ws_read(&mut lean, usize::MAX, Duration::from_secs(15)).await;
    assert_eq!(full_start.binaries, lean_start.binaries);
    assert_eq!(full_rest.of_type("fragment").len(), frags.len());
    assert_eq!(lean_rest.binaries.len(), frags.len(), "every fragment");
    assert!(lean_rest.binaries == full_rest.binaries, "byte-identical");
    assert!(
        lean_rest.of_type("fragment").is_empty(),
        "{:?}",
        lean_rest.texts
    );
    assert_eq!(
        lean_rest.of_type("publisher").len(),
        1,
        "{:?}",
        lean_rest.texts
    );
    assert_eq!(lean_rest.of_type("end").len(), 1, "{:?}", lean_rest.texts);
    assert_eq!(lean_rest.close.as_ref().map(|c| c.0), Some(1000));
    relay.shutdown().await;
}

#[tokio::test]
async fn websocket_publish_errors_close_with_a_code_and_a_reason() {
    let mut cfg = config();
    cfg.ingest.keys.insert("locked".into(), "s3cret".into());
    cfg.ingest.max_ws_message = 64 << 10;
    cfg.ingest.max_box_size = 4096;
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, _) = split(&file);

    // 1008: a bad key (and no key) for a stream that has one.
    for q in ["?key=wrong", ""] {
        let mut ws = ws_connect(&format!("ws://{base}/publish/locked{q}")).await;
        let (code, reason, _) = publisher_close(&mut ws).await;
        assert_eq!(code, Some(1008), "key {q:?}: {reason}");
        assert!(!reason.is_empty(), "a reason");
    }
    // The right key publishes.
    let mut ok = ws_connect(&format!("ws://{base}/publish/locked?key=s3cret")).await;
    ok.send(Message::Binary(init.bytes.clone()))
        .await
        .expect("send");
    info_when(&base, "locked", |i| i["live"] == true).await;

    // 1009: a message over the limit.
    let mut ws = ws_connect(&format!("ws://{base}/publish/big")).await;
    let _ = ws
        .send(Message::Binary(Bytes::from(vec![0u8; 100 << 10])))
        .await;
    let (code, reason, _) = publisher_close(&mut ws).await;
    assert_eq!(code, Some(1009), "too big: {reason}");
    assert!(
        reason.contains("102400 bytes") && reason.contains("65536-byte limit"),
        "too big: {reason:?}"
    );

    // 1009 too: a box over the limit, even when it comes in small messages.
    let (big_init, big_frags) = split(&fixture("h264_aac_keyframe.mp4"));
    let big = big_frags
        .iter()
        .find(|f| f.bytes.len() > 8192)
        .expect("a fragment over 8 KB");
    let mut ws = ws_connect(&format!("ws://{base}/publish/bigbox")).await;
    let mut stream = big_init.bytes.to_vec();
    stream.extend_from_slice(&big.bytes);
    for piece in stream.chunks(1000) {
        if ws
            .send(Message::Binary(Bytes::copy_from_slice(piece)))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason, _) = publisher_close(&mut ws).await;
    assert_eq!(code, Some(1009), "box too big: {reason}");
    assert!(
        reason.contains("4096-byte limit"),
        "box too big: {reason:?}"
    );

    // 1007: binary that is not fMP4.
    let mut ws = ws_connect(&format!("ws://{base}/publish/junk")).await;
    ws.send(Message::Binary(Bytes::from_static(
        b"this is certainly not an ISO BMFF box stream, not even close",
    )))
    .await
    .expect("send");
    let (code, reason, _) = publisher_close(&mut ws).await;
    assert_eq!(code, Some(1007), "not fMP4: {reason}");
    assert!(!reason.is_empty());

    // 1003: text instead of binary.
    let mut ws = ws_connect(&format!("ws://{base}/publish/texty")).await;
    ws.send(Message::Text("hello".into())).await.expect("send");
    let (code, reason, _) = publisher_close(&mut ws).await;
    assert_eq!(code, Some(1003), "text: {reason}");
    assert!(reason.contains("binary"), "text: {reason:?}");

    // 4009: a second publisher on a live name.
    let mut second = ws_connect(&format!("ws://{base}/publish/locked?key=s3cret")).await;
    let (code, reason, _) = publisher_close(&mut second).await;
    assert_eq!(code, Some(4009), "already live: {reason}");
    assert!(reason.contains("already"), "already live: {reason:?}");

    // None of that disturbed the live publisher.
    let info = info_when(&base, "locked", |_| true).await;
    assert_eq!(info["live"], true);
    ok.close(None).await.expect("close");
    relay.shutdown().await;
}

/// What a poll client reassembled.
#[derive(Debug, Default)]
struct Polled {
    /// Init segments and fragments concatenated, as a file.
    bytes: Vec<u8>,
    seqs: Vec<u64>,
    /// Init versions seen, in order.
    versions: Vec<u64>,
    /// Answers with no fragment and no news (no end, no publisher change):
    /// plain polling gets many; a long poll must never answer so.
    empty: usize,
    answers: usize,
}

/// Follow `/live/{name}/poll` (long poll, or plain with `wait=0`) until the
/// stream ends, cutting each answer back into fragments with its headers.
async fn poll_client(base: String, name: &str, plain: bool) -> Polled {
    let mut out = Polled::default();
    let mut version = 0u64;
    let mut after: Option<u64> = None;
    let mut live = "1".to_string();
    for _ in 0..5000 {
        let mode = if plain { "wait=0" } else { "timeout=10" };
        let url = match after {
            Some(a) => format!("http://{base}/live/{name}/poll?{mode}&after={a}"),
            None => format!("http://{base}/live/{name}/poll?{mode}"),
        };
        let (status, h, body) = get(&url).await;
        if status == 404 && plain && !out.seqs.is_empty() {
            // A plain poller may miss the end: once closed, the stream is gone.
            assert!(
                String::from_utf8_lossy(&body).contains("no stream"),
                "{url}"
            );
            return out;
        }
        assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
        out.answers += 1;
        let hv = |k: &str| {
            h.get(k)
                .map(|v| v.to_str().expect("ascii header").to_string())
                .unwrap_or_default()
        };
        let list = |k: &str| -> Vec<u64> {
            hv(k)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().expect("number"))
                .collect()
        };
        let seqs = list("x-relaycast-seqs");
        let sizes = list("x-relaycast-sizes");
        let keys = list("x-relaycast-keyframes");
        let times = list("x-relaycast-times");
        assert_eq!(seqs.len(), sizes.len(), "{url}: seqs/sizes");
        assert_eq!(seqs.len(), times.len(), "{url}: seqs/times");
        assert_eq!(
            sizes.iter().sum::<u64>(),
            body.len() as u64,
            "{url}: sizes add up"
        );
        assert!(
            keys.iter().all(|k| seqs.contains(k)),
            "{url}: keyframes ⊆ seqs"
        );
        let skipped: u64 = hv("x-relaycast-skipped").parse().expect("skipped");
        let v: u64 = hv("x-relaycast-init-version")
            .parse()
            .expect("init version");
        if !seqs.is_empty() {
            if v != version {
                // A new init segment: fetch it again before these fragments.
                let (s, ih, init) = get(&format!("http://{base}/live/{name}/init.mp4")).await;
                assert_eq!(s, 200);
                assert_eq!(
                    ih.get("x-relaycast-init-version")
                        .and_then(|x| x.to_str().ok()),
                    Some(v.to_string().as_str()),
                    "init.mp4 is the version the poll announced"
                );
                out.bytes.extend_from_slice(&init);
                out.versions.push(v);
                version = v;
            }
            if let Some(&last) = out.seqs.last() {
                if skipped == 0 {
                    assert_eq!(seqs[0], last + 1, "{url}: contiguous without a skip");
                } else {
                    assert!(seqs[0] > last + 1, "{url}: a skip moves forward");
                    assert!(
                        keys.first() == Some(&seqs[0]),
                        "{url}: a skip lands on a keyframe"
                    );
                }
            } else {
                assert_eq!(keys.first(), Some(&seqs[0]), "{url}: starts at a keyframe");
            }
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "{url}: contiguous {seqs:?}"
            );
            out.bytes.extend_from_slice(&body);
            out.seqs.extend_from_slice(&seqs);
        } else if hv("x-relaycast-end") != "1" && hv("x-relaycast-live") == live {
            out.empty += 1;
        }
        live = hv("x-relaycast-live");
        if hv("x-relaycast-end") == "1" {
            return out;
        }
        let next = hv("x-relaycast-next");
        if !next.is_empty() {
            let n: u64 = next.parse().expect("next");
            if let Some(&last) = seqs.last() {
                assert_eq!(n, last, "{url}: next = the last seq of the answer");
            }
            after = Some(n);
        }
        if plain {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    panic!(
        "{name}: the stream did not end within 5000 polls; got {:?}",
        out.seqs.len()
    );
}

#[tokio::test]
async fn long_poll_and_plain_poll_reassemble_the_stream_byte_identical() {
    let mut cfg = config();
    cfg.fanout.grace = Duration::from_millis(1500);
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let a = fixture("h264_aac_every_frame.mp4");
    let b = fixture("vp9_opus.mp4");
    let (init_a, frags_a) = split(&a);
    let (init_b, frags_b) = split(&b);
    assert_ne!(init_a.bytes, init_b.bytes);

    // Publisher 1 sends its init; the pollers start before any fragment.
    let mut p1 = ws_connect(&format!("ws://{base}/publish/pl")).await;
    p1.send(Message::Binary(init_a.bytes.clone()))
        .await
        .expect("send");
    info_when(&base, "pl", |i| i["init_version"] == 1).await;
    let long = tokio::spawn(poll_client(base.clone(), "pl", false));
    let plain = tokio::spawn(poll_client(base.clone(), "pl", true));
    // The long poller is waiting (its request is held) before any fragment.
    info_when(&base, "pl", |i| i["viewers_by_transport"]["longpoll"] == 1).await;
    for f in &frags_a {
        p1.send(Message::Binary(f.bytes.clone()))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    p1.close(None).await.expect("close");
    publisher_close(&mut p1).await;
    // Publisher 2 comes back within the grace period with other codecs: a
    // new init version, the same stream and seqs that go on.
    let mut p2 = ws_connect(&format!("ws://{base}/publish/pl")).await;
    p2.send(Message::Binary(init_b.bytes.clone()))
        .await
        .expect("send");
    for f in &frags_b {
        p2.send(Message::Binary(f.bytes.clone()))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    p2.close(None).await.expect("close");
    publisher_close(&mut p2).await;

    let long = long.await.expect("long poll client");
    let plain = plain.await.expect("plain poll client");
    let total = (frags_a.len() + frags_b.len()) as u64;
    let mut whole = a.to_vec();
    whole.extend_from_slice(&b);

    // The long poller waited for every fragment from seq 0: the whole of both clips.
    assert_eq!(long.versions, vec![1, 2]);
    assert_eq!(long.seqs, (0..total).collect::<Vec<_>>());
    assert!(
        long.bytes == whole,
        "long poll: {} bytes, want {}",
        long.bytes.len(),
        whole.len()
    );
    // A long poll answers when there is something to say, never empty-handed.
    assert_eq!(long.empty, 0, "long poll answered with nothing new");
    assert!(
        plain.empty > 0,
        "plain polling answers at once, possibly empty"
    );

    // The plain poller joined at a keyframe (the newest when it first asked).
    let first = plain.seqs[0] as usize;
    assert!(frags_a[first].keyframe);
    assert_eq!(plain.versions, vec![1, 2]);
    assert_eq!(plain.seqs, (first as u64..total).collect::<Vec<_>>());
    let mut want = init_a.bytes.to_vec();
    for f in &frags_a[first..] {
        want.extend_from_slice(&f.bytes);
    }
    want.extend_from_slice(&b);
    assert!(
        plain.bytes == want,
        "plain poll: {} bytes, want {}",
        plain.bytes.len(),
        want.len()
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn polls_report_skips_and_a_missing_after_starts_at_the_newest_keyframe() {
    let mut cfg = config();
    // A small ring: the oldest group is evicted while the clip is published.
    cfg.fanout.ring.max_fragments = 20;
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let file = fixture("h264_aac_every_frame.mp4");
    let (_, frags) = split(&file);
    // The whole clip in one go, then a body that stays open: the stream stays live.
    let url = format!("http://{base}/publish/sk");
    let body = futures_util::stream::once(std::future::ready(file.clone()))
        .chain(futures_util::stream::pending());
    let publisher = tokio::spawn(async move { put_body(&url, body).await });
    let last = (frags.len() - 1) as u64;
    let info = info_when(&base, "sk", |i| i["seq"] == last).await;
    let newest_key = frags.iter().rposition(|f| f.keyframe).expect("keyframe") as u64;
    assert_eq!(info["keyframe_seq"], newest_key);

    // `after` missing: from the newest keyframe.
    let (s, h, _) = get(&format!("http://{base}/live/sk/poll?wait=0")).await;
    assert_eq!(s, 200);
    let seqs = h["x-relaycast-seqs"].to_str().expect("ascii").to_string();
    assert!(seqs.starts_with(&format!("{newest_key},")), "{seqs}");
    assert_eq!(h["x-relaycast-skipped"], "0");

    // `after` older than the ring: a skip to the newest keyframe, said so.
    let (s, h, body) = get(&format!("http://{base}/live/sk/poll?wait=0&after=0")).await;
    assert_eq!(s, 200);
    let seqs = h["x-relaycast-seqs"].to_str().expect("ascii");
    assert!(seqs.starts_with(&format!("{newest_key},")), "{seqs}");
    let skipped: u64 = h["x-relaycast-skipped"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("n");
    assert_eq!(
        skipped,
        newest_key - 1,
        "fragments 1..{newest_key} were skipped"
    );
    assert_eq!(
        body.slice(..frags[newest_key as usize].bytes.len()),
        frags[newest_key as usize].bytes
    );

    // Caught up, plain polling answers at once and empty, keeping `next`.
    let (s, h, body) = get(&format!("http://{base}/live/sk/poll?wait=0&after={last}")).await;
    assert_eq!(s, 200);
    assert!(body.is_empty());
    assert_eq!(h["x-relaycast-next"], last.to_string().as_str());
    assert_eq!(h["x-relaycast-live"], "1");

    // Caught up, a long poll holds the request until its `timeout` and then
    // answers empty, keeping `next`.
    let (s, h, body) = get(&format!(
        "http://{base}/live/sk/poll?timeout=0.3&after={last}"
    ))
    .await;
    assert_eq!(s, 200);
    assert!(body.is_empty());
    assert_eq!(h["x-relaycast-next"], last.to_string().as_str());
    assert!(!h.contains_key("x-relaycast-end"));

    // `after` names the epoch it came from: honoured in that epoch; from
    // another life of the stream (a relay restart) it is ignored, and the
    // viewer starts afresh at the newest keyframe, with no skip.
    let epoch = info["epoch"].as_u64().expect("epoch");
    let near = last - 2;
    let (_, h, _) = get(&format!(
        "http://{base}/live/sk/poll?wait=0&after={near}&epoch={epoch}"
    ))
    .await;
    assert_eq!(
        h["x-relaycast-seqs"],
        format!("{},{last}", near + 1).as_str()
    );
    let (_, h, _) = get(&format!(
        "http://{base}/live/sk/poll?wait=0&after={near}&epoch={}",
        epoch + 1
    ))
    .await;
    let seqs = h["x-relaycast-seqs"].to_str().expect("ascii");
    assert!(seqs.starts_with(&format!("{newest_key},")), "{seqs}");
    assert_eq!(h["x-relaycast-skipped"], "0");
    let mut ws = ws_connect(&format!(
        "ws://{base}/live/sk?after={near}&epoch={}",
        epoch + 1
    ))
    .await;
    let got = ws_read(&mut ws, 1, Duration::from_secs(5)).await;
    assert_eq!(got.of_type("hello")[0]["resumed"], false);
    assert!(got.of_type("skip").is_empty(), "{got:?}");
    assert_eq!(got.seqs.first(), Some(&newest_key));

    // A bad `after` is a clear 400.
    let (s, _, body) = get(&format!("http://{base}/live/sk/poll?after=-1")).await;
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&body));
    publisher.abort();
    relay.shutdown().await;
}

/// Decode `url` with ffprobe for 2 s of media: (codec names, video frames read).
async fn ffprobe_frames(url: &str) -> (Vec<String>, u64) {
    let (codecs, video, _) = ffprobe_live(url).await;
    (codecs, video)
}

#[tokio::test]
async fn ffmpeg_publishes_over_raw_tcp_and_http_put_and_ffprobe_decodes_both() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let mut cfg = config();
    cfg.ingest.tcp.push(TcpIngest {
        port: 0,
        name: "tcpcam".into(),
        key: None,
    });
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let (name, tcp_addr) = relay.tcp_ingest[0].clone();
    assert_eq!(name, "tcpcam");
    let mut over_tcp = ffmpeg_live(5, &format!("tcp://{tcp_addr}"), &[])
        .spawn()
        .expect("spawn ffmpeg (tcp)");
    let mut over_http = ffmpeg_live(
        5,
        &format!("http://{base}/publish/httpcam"),
        &["-method", "PUT", "-chunked_post", "1"],
    )
    .spawn()
    .expect("spawn ffmpeg (http)");
    let (tcp_url, http_url) = (
        format!("http://{base}/live/tcpcam.mp4?wait=15"),
        format!("http://{base}/live/httpcam.mp4?wait=15"),
    );
    let (tcp, http) = tokio::join!(ffprobe_frames(&tcp_url), ffprobe_frames(&http_url));
    for (what, (codecs, frames)) in [("tcp", tcp), ("http", http)] {
        assert_eq!(
            codecs,
            vec!["h264".to_string(), "aac".to_string()],
            "{what}"
        );
        assert!(frames >= 50, "{what}: decoded {frames} video frames");
    }
    for (what, p) in [("tcp", &mut over_tcp), ("http", &mut over_http)] {
        let out = tokio::time::timeout(Duration::from_secs(30), p.wait())
            .await
            .expect("ffmpeg finished")
            .expect("ffmpeg status");
        assert!(out.success(), "ffmpeg over {what} exited with {out}");
    }
    let m = relaycast::server::metrics_text(&relay.state.registry, &relay.state.limits.refused);
    assert!(
        m.contains("relaycast_stream_publishes_total{stream=\"tcpcam\"} 1"),
        "{m}"
    );
    relay.shutdown().await;
}

/// `relaycast` (the binary under test).
fn relaycast_bin() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_relaycast"));
    c.env("RUST_LOG", "warn").kill_on_drop(true);
    c
}

#[tokio::test]
async fn relaycast_publish_file_or_stdin_to_http_ws_and_tcp_reaches_relaycast_watch_byte_identical()
{
    let mut cfg = config();
    cfg.fanout.grace = Duration::from_millis(500);
    cfg.ingest.tcp.push(TcpIngest {
        port: 0,
        name: "clitcp".into(),
        key: None,
    });
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let tcp_addr = relay.tcp_ingest[0].1;
    let clip = format!(
        "{}/tests/fixtures/h264_aac_every_frame.mp4",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
    );
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "clihttp",
            format!("http://{base}/publish/clihttp"),
            format!("http://{base}/live/clihttp.mp4?wait=20"),
        ),
        (
            "cliws",
            format!("ws://{base}/publish/cliws"),
            format!("ws://{base}/live/cliws?wait=20"),
        ),
        (
            "clitcp",
            format!("tcp://{tcp_addr}"),
            format!("http://{base}/live/clitcp.mp4?wait=20"),
        ),
        // `-`: the clip on stdin.
        (
            "clistdin",
            format!("ws://{base}/publish/clistdin"),
            format!("ws://{base}/live/clistdin?wait=20"),
        ),
    ];
    // Viewers first (they wait for the stream), then the publishers, paced
    // at real time so that the viewers are in before the second keyframe.
    let mut watchers = Vec::new();
    for (name, _, from) in &cases {
        let out = dir.path().join(format!("{name}.mp4"));
        let child = relaycast_bin()
            .args(["watch", from, "-o"])
            .arg(&out)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn relaycast watch");
        watchers.push((name, out, child));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut publishers = Vec::new();
    for (name, to, _) in &cases {
        let stdin = *name == "clistdin";
        let mut child = relaycast_bin()
            .args([
                "publish",
                "--re",
                "--to",
                to,
                if stdin { "-" } else { &clip },
            ])
            .stdin(if stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn relaycast publish");
        if let Some(mut input) = child.stdin.take() {
            let bytes = file.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                // In uneven pieces, as a pipe from another program would.
                for piece in bytes.chunks(7001) {
                    input.write_all(piece).await.expect("write stdin");
                }
                // Dropping `input` closes stdin: the end of the broadcast.
            });
        }
        publishers.push((name, child));
    }
    for (name, child) in publishers {
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("publish finished")
            .expect("publish output");
        assert!(
            out.status.success(),
            "publish {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, path, child) in watchers {
        // The stream ends after the grace period; `watch` then exits.
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("watch finished")
            .expect("watch output");
        assert!(
            out.status.success(),
            "watch {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(&path).expect("watch output file");
        // The watcher joined before the publisher (almost surely at seq 0); on
        // a slow machine it may have joined at a later keyframe: either way it
        // got the init and every fragment from its join on, byte for byte.
        let k = join_keyframe(&got, &init, &frags).unwrap_or_else(|| {
            panic!(
                "{name}: watch wrote {} bytes that are not init + fragments from a keyframe",
                got.len()
            )
        });
        if k == 0 {
            assert!(got == file.to_vec(), "{name}: the whole clip");
        }
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn relaycast_publish_passes_its_key_and_stops_when_the_relay_refuses() {
    let mut cfg = config();
    cfg.ingest.keys.insert("keyed-http".into(), "k1".into());
    cfg.ingest.keys.insert("keyed-ws".into(), "k1".into());
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let clip = format!(
        "{}/tests/fixtures/h264_aac_keyframe.mp4",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
    );
    let (_, frags) = split(&fixture("h264_aac_keyframe.mp4"));
    let junk = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(junk.path(), vec![0x42u8; 4096]).expect("write junk");
    let run = |to: String, key: Option<&str>, file: &std::path::Path| {
        let mut c = relaycast_bin();
        c.args(["publish", "--to", &to]);
        if let Some(k) = key {
            c.args(["--key", k]);
        }
        c.arg(file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        async move {
            let out = tokio::time::timeout(Duration::from_secs(30), c.output())
                .await
                .expect("publish ended within 30 s (it must not retry a refusal forever)")
                .expect("run publish");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let clip = std::path::Path::new(&clip);
    for scheme in ["http", "ws"] {
        let name = format!("keyed-{scheme}");
        let to = format!("{scheme}://{base}/publish/{name}");
        // The right key publishes the whole clip.
        let (ok, log) = run(to.clone(), Some("k1"), clip).await;
        assert!(ok, "{scheme} with the key: {log}");
        let info = info_when(&base, &name, |i| i["fragments_in"] == frags.len() as u64).await;
        assert_eq!(info["init_version"], 1);
        // A wrong or missing key: refused at once, a clear message, no retrying.
        for key in [Some("wrong"), None] {
            let (ok, log) = run(to.clone(), key, clip).await;
            assert!(!ok, "{scheme} key {key:?} must fail");
            assert!(log.contains("refused"), "{scheme} key {key:?}: {log}");
            let why = if scheme == "http" {
                ["HTTP 403", "HTTP 401"]
            } else {
                ["close 1008", "close 1008"]
            };
            assert!(
                why.iter().any(|w| log.contains(w)),
                "{scheme} key {key:?}: {log}"
            );
            assert!(
                !log.contains("reconnecting"),
                "{scheme} key {key:?} retried: {log}"
            );
        }
        // Bytes that are not fMP4: refused too.
        let (ok, log) = run(
            format!("{scheme}://{base}/publish/junk-{scheme}"),
            None,
            junk.path(),
        )
        .await;
        assert!(!ok, "{scheme} junk must fail: {log}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn serve_tcp_ingest_flags_open_one_port_per_stream() {
    use tokio::io::AsyncBufReadExt;
    // The real command line: `serve --tcp-ingest PORT=NAME`, repeated.
    let mut serve = relaycast_bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--no-demo"])
        .args(["--tcp-ingest", "0=one", "--tcp-ingest", "0=two"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn relaycast serve");
    let mut lines = tokio::io::BufReader::new(serve.stdout.take().expect("stdout")).lines();
    let (mut http, mut ports) = (None, Vec::new());
    while http.is_none() || ports.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("serve printed its addresses")
            .expect("read stdout")
            .expect("a line");
        if let Some(a) = line.strip_prefix("relaycast: listening on http://") {
            http = Some(a.trim_end_matches('/').to_string());
        } else if let Some(rest) = line.strip_prefix("relaycast: tcp ingest ") {
            let (name, addr) = rest.split_once(" on ").expect("NAME on ADDR");
            ports.push((name.to_string(), addr.to_string()));
        }
    }
    let base = http.expect("http address");
    let clip = format!(
        "{}/tests/fixtures/h264_aac_keyframe.mp4",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
    );
    let (_, frags) = split(&fixture("h264_aac_keyframe.mp4"));
    for (name, addr) in &ports {
        let out = relaycast_bin()
            .args(["publish", "--to", &format!("tcp://{addr}"), &clip])
            .output()
            .await
            .expect("run publish");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = info_when(&base, name, |i| i["fragments_in"] == frags.len() as u64).await;
        assert_eq!(info["name"], name.as_str());
    }
    assert_eq!(
        ports.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        vec!["one", "two"]
    );
    serve.kill().await.expect("stop serve");
}

/// The keyframe `k` such that `got` = init + fragments k.. (None if no such k).
fn join_keyframe(
    got: &[u8],
    init: &relaycast::media::Init,
    frags: &[relaycast::media::Fragment],
) -> Option<usize> {
    let rest = got.strip_prefix(init.bytes.as_ref())?;
    (0..frags.len()).filter(|&k| frags[k].keyframe).find(|&k| {
        let tail: usize = frags[k..].iter().map(|f| f.bytes.len()).sum();
        tail == rest.len()
            && frags[k..]
                .iter()
                .scan(0usize, |off, f| {
                    let at = *off;
                    *off += f.bytes.len();
                    Some(rest[at..*off] == f.bytes[..])
                })
                .all(|same| same)
    })
}

#[tokio::test]
async fn relaycast_publish_reconnects_with_backoff_after_the_relay_restarts() {
    let mut cfg = config();
    cfg.server.shutdown_timeout = Duration::from_secs(2);
    cfg.ingest.tcp.push(TcpIngest {
        port: 0,
        name: "again-tcp".into(),
        key: None,
    });
    let first = relay(cfg.clone()).await;
    let addr = first.addr;
    let tcp_addr = first.tcp_ingest[0].1;
    let clip = format!(
        "{}/crates/relaycast-media/src/demo/demo.mp4",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
    );
    let cases = [
        ("again-http", format!("http://{addr}/publish/again-http")),
        ("again-ws", format!("ws://{addr}/publish/again-ws")),
        ("again-tcp", format!("tcp://{tcp_addr}")),
    ];
    let mut publishers = Vec::new();
    for (name, to) in &cases {
        let child = relaycast_bin()
            .env("RUST_LOG", "relaycast=info")
            .args(["publish", "--re", "--loop", "--to", to, &clip])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn relaycast publish");
        publishers.push((name, child));
    }
    let base = addr.to_string();
    let mut before = Vec::new();
    for (name, _) in &cases {
        before.push(
            info_when(&base, name, |i| {
                i["live"] == true && i["seq"].as_u64().is_some()
            })
            .await,
        );
    }
    // `relaycast watch` over WebSocket and HTTP streaming: they live through
    // the restart too, resuming by themselves (#12 item 21).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut watchers = Vec::new();
    for (what, from) in [
        ("ws", format!("ws://{base}/live/again-ws")),
        ("http", format!("http://{base}/live/again-http.mp4")),
    ] {
        let out = dir.path().join(format!("{what}.mp4"));
        let child = relaycast_bin()
            .env("RUST_LOG", "relaycast=info")
            .args(["watch", &from, "-o"])
            .arg(&out)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn relaycast watch");
        watchers.push((what, out, child));
    }
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    for (what, out, _) in &watchers {
        let start = std::time::Instant::now();
        while size(out) < 20_000 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "watch {what} got nothing"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Stop the relay; while it is down the publishers fail to connect and
    // back off; then a new relay starts on the same ports.
    first.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut listener = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    cfg.ingest.tcp[0].port = tcp_addr.port();
    let second = relaycast::server::start(cfg, Some(listener.expect("rebind the same port")))
        .await
        .expect("restart relay");
    let demo = std::fs::read(&clip).expect("demo clip");
    let (init, _) = split(&demo);
    for ((name, _), before) in cases.iter().zip(&before) {
        // Each publisher comes back by itself, starting with the init segment.
        let after = info_when(&base, name, |i| {
            i["live"] == true && i["seq"].as_u64().is_some_and(|s| s >= 1)
        })
        .await;
        assert_ne!(
            before["epoch"], after["epoch"],
            "{name}: a new relay process life"
        );
        assert_eq!(after["init_version"], 1, "{name}");
        let mut ws = ws_connect(&format!("ws://{base}/live/{name}")).await;
        let got = ws_read(&mut ws, 2, Duration::from_secs(10)).await;
        assert_eq!(
            got.binaries.first(),
            Some(&init.bytes),
            "{name}: the new relay got the same init"
        );
        assert!(got.seqs.len() >= 2, "{name}: {got:?}");
    }
    // The watchers are still there and write the new relay's fragments.
    let mut watched = Vec::new();
    for (what, out, mut child) in watchers {
        let at_restart = size(&out);
        let start = std::time::Instant::now();
        while size(&out) < at_restart + 20_000 {
            if let Ok(Some(st)) = child.try_wait() {
                let out = child.wait_with_output().await.expect("watch output");
                panic!(
                    "watch {what} exited ({st}) at the restart:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "watch {what} got nothing from the new relay"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.start_kill().expect("kill watch");
        let log = child.wait_with_output().await.expect("watch output");
        watched.push((what, out, String::from_utf8_lossy(&log.stderr).into_owned()));
    }
    for (what, out, log) in watched {
        assert!(log.contains("reconnecting"), "watch {what} log:\n{log}");
        // One valid fMP4 stream: the same init is not written twice, and
        // nothing but whole boxes (the last one may be cut by the kill).
        let bytes = std::fs::read(&out).expect("watch output file");
        let (mut off, mut moovs, mut boxes) = (0usize, 0, 0);
        while off + 8 <= bytes.len() {
            let size =
                u32::from_be_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
            assert!(size >= 8, "watch {what}: box of size {size} at {off}");
            moovs += usize::from(&bytes[off + 4..off + 8] == b"moov");
            boxes += 1;
            off += size;
        }
        assert_eq!(moovs, 1, "watch {what}: one init segment");
        assert!(boxes > 10, "watch {what}: {boxes} boxes");
    }
    second.shutdown().await;
    for (name, mut child) in publishers {
        assert!(
            child.try_wait().expect("publisher state").is_none(),
            "{name}: publish kept running through the restart"
        );
        child.start_kill().expect("kill publish");
        let out = child.wait_with_output().await.expect("publish output");
        let log = String::from_utf8_lossy(&out.stderr);
        // It failed to connect while the relay was down, backed off, and came back.
        assert!(
            log.contains("cannot connect"),
            "{name}: publish log:\n{log}"
        );
        assert!(log.contains("reconnected"), "{name}: publish log:\n{log}");
    }
}

#[tokio::test]
async fn cors_preflight_and_cross_origin_get_get_the_right_headers() {
    let any = relay(config()).await;
    let base = format!("127.0.0.1:{}", any.addr.port());
    let origin = "https://player.example";
    let mut sender = http1(any.addr).await;
    let pre = hyper::Request::builder()
        .method("OPTIONS")
        .uri("/live/x/poll?after=1")
        .header("host", &base)
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-custom")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = sender.send_request(pre).await.expect("preflight");
    assert!(r.status().is_success(), "preflight {}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"].to_str().expect("ascii");
    assert!(
        methods.contains("GET") && methods.contains("PUT"),
        "{methods}"
    );
    assert!(h.contains_key("access-control-allow-headers"));
    assert!(h.contains_key("access-control-max-age"));
    let get_req = hyper::Request::get("/api/streams")
        .header("host", &base)
        .header("origin", origin)
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = sender.send_request(get_req).await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // The poll headers a cross-origin player must read are exposed.
    assert!(r.headers().contains_key("access-control-expose-headers"));
    any.shutdown().await;

    // With a list of origins: only those are allowed.
    let mut cfg = config();
    cfg.server.cors_origins = vec![origin.to_string()];
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    for (o, allowed) in [(origin, true), ("https://evil.example", false)] {
        let mut sender = http1(relay.addr).await;
        let req = hyper::Request::get("/api/streams")
            .header("host", &base)
            .header("origin", o)
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let r = sender.send_request(req).await.expect("get");
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap_or("")),
            allowed.then_some(origin),
            "origin {o}"
        );
    }
    relay.shutdown().await;
}
