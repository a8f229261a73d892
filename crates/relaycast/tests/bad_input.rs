//! Bad input on every endpoint, table-driven: each row is one bad (or, as a
//! control, good) client with the status or close code it must get; after
//! every row a healthy stream, published and watched throughout, still
//! delivers the next fragments byte for byte.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use relaycast::config::{Config, TcpIngest};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "view-secret";
/// Header timeout in this test (slowloris rows).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous bound for "the relay closed it" (no assert on wall time beyond this).
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

fn test_config() -> Config {
    let mut c = config();
    c.ingest.keys.insert("healthy".into(), "hk".into());
    c.ingest.keys.insert("locked".into(), "k1".into());
    c.ingest.keys.insert("team-*".into(), "tk".into());
    c.ingest.max_box_size = 1 << 20;
    c.ingest.max_ws_message = 64 << 10;
    c.ingest.tcp.push(TcpIngest {
        port: 0,
        name: "locked".into(),
        key: None,
    });
    c.auth.view_secrets.insert("secret-*".into(), SECRET.into());
    c.limits.max_connections_per_ip = 24;
    c.limits.max_viewers_per_stream = 2;
    c.limits.header_read_timeout = HEADER_TIMEOUT;
    c
}

/// One bad (or control) client.
enum Probe {
    /// An HTTP request: method, path, extra headers, body.
    Http(&'static str, String, Vec<(&'static str, String)>, Bytes),
    /// A WebSocket publisher: path, headers, messages to send.
    WsPublish(String, Vec<(&'static str, String)>, Vec<Message>),
    /// A WebSocket viewer: path.
    WsWatch(String),
    /// Bytes to the raw TCP ingest port, then end of stream.
    Tcp(Bytes),
    /// A connection that sends these bytes and then nothing (slowloris).
    Slowloris(&'static [u8]),
    /// Connections from one IP until refused.
    ConnectionFlood,
    /// Viewers of one stream until refused, over WebSocket then HTTP.
    ViewerFlood,
    /// A Socket.IO client (over its WebSocket transport) that emits `watch` with this JSON.
    SocketIo(serde_json::Value),
}

/// What it must get.
#[derive(Debug, PartialEq)]
enum Expect {
    /// This HTTP status (and `Retry-After` with 429/503).
    Status(u16),
    /// This WebSocket close code.
    Close(u16),
    /// This status on the raw TCP `ERROR` line; 0 = no error line.
    TcpError(u16),
    /// The relay closes the connection.
    Closed,
    /// A refusal with `Retry-After` (connection flood: 429; viewer flood: close 1013 then 503).
    Refused(u16),
    /// A Socket.IO `end` event with this status.
    SioEnd(u16),
}

fn sig_q(name: &str, exp: u64) -> String {
    format!("exp={exp}&sig={}", relaycast::auth::sign(SECRET, name, exp))
}

fn rows() -> Vec<(&'static str, Probe, Expect)> {
    let now = relaycast::auth::unix_now();
    let file = fixture("h264_aac_keyframe.mp4");
    let (init, _) = split(&file);
    let mut big = init.bytes.to_vec();
    big.extend_from_slice(&(8u32 << 20).to_be_bytes());
    big.extend_from_slice(b"mdat");
    big.extend_from_slice(&[0u8; 4096]);
    let put = |path: String, headers: Vec<(&'static str, String)>, body: Bytes| {
        Probe::Http("PUT", path, headers, body)
    };
    let get = |path: String| Probe::Http("GET", path, vec![], Bytes::new());
    let bearer = |k: &str| vec![("authorization", format!("Bearer {k}"))];
    use Expect::*;
    vec![
        // Names.
        (
            "publish bad name",
            put("/publish/bad.name".into(), vec![], file.clone()),
            Status(400),
        ),
        (
            "publish name too long",
            put(format!("/publish/{}", "n".repeat(65)), vec![], file.clone()),
            Status(400),
        ),
        (
            "watch bad name .mp4",
            get("/live/b%20d.mp4".into()),
            Status(400),
        ),
        (
            "watch bad name info",
            get(format!("/live/{}/info", "x".repeat(65))),
            Status(400),
        ),
        (
            "watch bad name ws",
            Probe::WsWatch("/live/a%24b".into()),
            Close(1008),
        ),
        // Publish keys on every ingest transport.
        (
            "http publish without key",
            put("/publish/locked".into(), vec![], file.clone()),
            Status(401),
        ),
        (
            "http publish wrong ?key=",
            put("/publish/locked?key=nope".into(), vec![], file.clone()),
            Status(403),
        ),
        (
            "http publish wrong bearer",
            put("/publish/locked".into(), bearer("nope"), file.clone()),
            Status(403),
        ),
        (
            "http publish pattern key used for other name",
            put("/publish/locked".into(), bearer("tk"), file.clone()),
            Status(403),
        ),
        (
            "ws publish without key",
            Probe::WsPublish("/publish/locked".into(), vec![], vec![]),
            Close(1008),
        ),
        (
            "ws publish wrong key",
            Probe::WsPublish("/publish/team-a?key=k1".into(), vec![], vec![]),
            Close(1008),
        ),
        (
            "tcp publish without key",
            Probe::Tcp(file.clone()),
            TcpError(401),
        ),
        (
            "tcp publish wrong key",
            Probe::Tcp(Bytes::from([b"KEY nope\n".as_slice(), &file].concat())),
            TcpError(403),
        ),
        (
            "tcp publish endless key line",
            Probe::Tcp(Bytes::from(
                vec![b'K', b'E', b'Y', b' ']
                    .into_iter()
                    .chain(std::iter::repeat_n(b'x', 4000))
                    .collect::<Vec<u8>>(),
            )),
            TcpError(400),
        ),
        (
            "tcp publish right key, box too big",
            Probe::Tcp(Bytes::from([b"KEY k1\n".as_slice(), &big].concat())),
            TcpError(413),
        ),
        (
            "control: tcp publish right key",
            Probe::Tcp(Bytes::from([b"KEY k1\n".as_slice(), &file].concat())),
            TcpError(0),
        ),
        (
            "control: http publish pattern key",
            put("/publish/team-ok".into(), bearer("tk"), file.clone()),
            Status(200),
        ),
        // Signed viewer URLs on every watch path.
        (
            "unsigned .mp4",
            get("/live/secret-cam.mp4".into()),
            Status(403),
        ),
        (
            "expired info",
            get(format!(
                "/live/secret-cam/info?{}",
                sig_q("secret-cam", now - 10)
            )),
            Status(403),
        ),
        (
            "bad sig poll",
            get(format!(
                "/live/secret-cam/poll?exp={}&sig={}",
                now + 60,
                "ab".repeat(32)
            )),
            Status(403),
        ),
        (
            "other stream's sig init",
            get(format!(
                "/live/secret-cam/init.mp4?{}",
                sig_q("secret-other", now + 60)
            )),
            Status(403),
        ),
        (
            "sig not hex",
            get(format!("/live/secret-cam/info?exp={}&sig=zz", now + 60)),
            Status(403),
        ),
        (
            "expired ws",
            Probe::WsWatch(format!("/live/secret-cam?{}", sig_q("secret-cam", now - 1))),
            Close(1008),
        ),
        (
            "socket.io watch unsigned",
            Probe::SocketIo(serde_json::json!({"name": "secret-cam"})),
            SioEnd(403),
        ),
        (
            "socket.io watch expired",
            Probe::SocketIo(
                serde_json::json!({"name": "secret-cam", "exp": now - 5, "sig": relaycast::auth::sign(SECRET, "secret-cam", now - 5)}),
            ),
            SioEnd(403),
        ),
        (
            "socket.io watch bad name",
            Probe::SocketIo(serde_json::json!({"name": "a b"})),
            SioEnd(400),
        ),
        (
            "control: socket.io good sig passes (no such stream yet)",
            Probe::SocketIo(
                serde_json::json!({"name": "secret-cam", "exp": now + 60, "sig": relaycast::auth::sign(SECRET, "secret-cam", now + 60)}),
            ),
            SioEnd(404),
        ),
        (
            "control: good sig passes (no such stream yet)",
            get(format!(
                "/live/secret-cam/info?{}",
                sig_q("secret-cam", now + 60)
            )),
            Status(404),
        ),
        // Garbage and oversized input.
        (
            "garbage body",
            put(
                "/publish/team-junk".into(),
                bearer("tk"),
                Bytes::from_static(b"\x00\x00\x00\x10ftypjunkjunk\x00\x00\x00\x02nope"),
            ),
            Status(400),
        ),
        (
            "fragment before moov",
            put(
                "/publish/team-nomoov".into(),
                bearer("tk"),
                split(&file).1[0].bytes.clone(),
            ),
            Status(400),
        ),
        (
            "box over max_box_size",
            put("/publish/team-big".into(), bearer("tk"), Bytes::from(big)),
            Status(413),
        ),
        (
            "ws message over max_ws_message",
            Probe::WsPublish(
                "/publish/team-wsbig".into(),
                bearer("tk"),
                vec![Message::Binary(Bytes::from(vec![0u8; 100 << 10]))],
            ),
            Close(1009),
        ),
        (
            "ws text instead of binary",
            Probe::WsPublish(
                "/publish/team-text".into(),
                bearer("tk"),
                vec![Message::Text("hello".into())],
            ),
            Close(1003),
        ),
        (
            "ws garbage binary",
            Probe::WsPublish(
                "/publish/team-wsjunk".into(),
                bearer("tk"),
                vec![Message::Binary(Bytes::from_static(
                    b"\x00\x00\x00\x09moovX\x00\x00\x00\x01",
                ))],
            ),
            Close(1007),
        ),
        ("unknown path", get("/nothing/here".into()), Status(404)),
        (
            "live without upgrade",
            get("/live/healthy".into()),
            Status(400),
        ),
        // Slow and greedy clients.
        (
            "slowloris: half a header",
            Probe::Slowloris(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
            Closed,
        ),
        ("slowloris: nothing at all", Probe::Slowloris(b""), Closed),
        (
            "too many connections from one IP",
            Probe::ConnectionFlood,
            Refused(429),
        ),
        (
            "too many viewers of one stream",
            Probe::ViewerFlood,
            Refused(503),
        ),
    ]
}

#[tokio::test]
async fn bad_input_table() {
    let relay = relay(test_config()).await;
    let addr = relay.addr;
    let base = format!("127.0.0.1:{}", addr.port());
    let tcp_port = relay.tcp_ingest[0].1;

    // The healthy stream: published with its key, watched over WebSocket,
    // fed one slice per row.
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);
    let table = rows();
    let mut ws = ws_connect(&format!("ws://{base}/live/healthy?wait=10")).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let url = format!("http://{base}/publish/healthy?key=hk");
    let healthy = tokio::spawn(async move { put_stream(&url, rx).await });
    let per_row = frags.len() / (table.len() + 1);
    assert!(per_row >= 1, "the fixture has enough fragments");
    let mut sent = 0usize; // fragments published
    let mut expected: Vec<u8> = Vec::new();
    let mut got: Vec<u8> = Vec::new();
    let mut feed = async |upto: usize, tx: &tokio::sync::mpsc::Sender<Bytes>, ws: &mut Ws| {
        let mut piece = Vec::new();
        if sent == 0 {
            expected.extend_from_slice(&init.bytes); // sent before the table
        }
        for f in &frags[sent..upto] {
            piece.extend_from_slice(&f.bytes);
            expected.extend_from_slice(&f.bytes);
        }
        if upto == sent {
            return (got == expected, None);
        }
        tx.send(Bytes::from(piece))
            .await
            .expect("healthy publisher open");
        let r = ws_read(ws, upto - sent, Duration::from_secs(20)).await;
        sent = upto;
        got.extend_from_slice(&r.bytes);
        (got == expected, r.close)
    };
    // The init first; the viewer's hello then says it is subscribed, so it
    // gets every fragment from the first one.
    tx.send(init.bytes.clone()).await.expect("send init");
    let hello = tokio::time::timeout(Duration::from_secs(20), ws.next()).await;
    assert!(
        matches!(&hello, Ok(Some(Ok(Message::Text(t)))) if t.contains("hello")),
        "{hello:?}"
    );
    let (ok, _) = feed(per_row, &tx, &mut ws).await;
    assert!(ok, "healthy stream plays before the table");

    let baseline = relay.state.limits.connections_from(addr.ip());
    assert!(
        baseline >= 2,
        "the healthy publisher and its upgraded WebSocket viewer count for their IP"
    );
    for (i, (what, probe, want)) in table.into_iter().enumerate() {
        let got_outcome = run_probe(probe, addr, tcp_port, &base).await;
        assert_eq!(got_outcome, want, "row {i} {what:?}");
        // Whatever the row opened is gone again (before the next row needs connections).
        for _ in 0..200 {
            if relay.state.limits.connections_from(addr.ip()) <= baseline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (ok, close) = feed(per_row * (i + 2), &tx, &mut ws).await;
        assert!(
            ok,
            "after row {i} {what:?}: the healthy viewer's bytes differ (close: {close:?})"
        );
    }
    // The rest of the stream, and the publisher ends cleanly.
    let (ok, _) = feed(frags.len(), &tx, &mut ws).await;
    assert!(ok);
    assert_eq!(got.len(), file.len(), "the whole file, byte for byte");
    drop(tx);
    let (status, body) = healthy.await.expect("join");
    assert_eq!(status, 200, "{body}");

    // Every refusal was counted by reason.
    use relaycast::limits::Reason;
    let refused = &relay.state.limits.refused;
    for r in [
        Reason::MissingKey,
        Reason::WrongKey,
        Reason::BadSignature,
        Reason::BoxSize,
        Reason::WsMessage,
        Reason::HeaderTimeout,
        Reason::ConnectionsPerIp,
        Reason::ViewersPerStream,
    ] {
        assert!(refused.get(r) > 0, "{r:?} counted");
    }
    let (_, _, metrics) = get(&format!("http://{base}/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("relaycast_refused_total{reason=\"max_connections_per_ip\"}"),
        "{metrics}"
    );
    // Slow clients do not hold up shutdown: it drains before its deadline.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    assert!(relay.shutdown().await, "drained with a slowloris open");
}

async fn run_probe(probe: Probe, addr: SocketAddr, tcp_port: SocketAddr, base: &str) -> Expect {
    match probe {
        Probe::Http(method, path, headers, body) => {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, h, _) = request(addr, method, &path, &hs, body).await;
            if status == 429 || status == 503 {
                assert!(h.contains_key("retry-after"), "{path}: Retry-After");
            }
            Expect::Status(status)
        }
        Probe::WsPublish(path, headers, messages) => {
            let mut req = format!("ws://{base}{path}")
                .into_client_request()
                .expect("request");
            for (k, v) in headers {
                req.headers_mut().insert(k, v.parse().expect("header"));
            }
            let (mut ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .expect("ws connect");
            for m in messages {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            Expect::Close(close_code(&mut ws).await)
        }
        Probe::WsWatch(path) => {
            let mut ws = ws_connect(&format!("ws://{base}{path}")).await;
            Expect::Close(close_code(&mut ws).await)
        }
        Probe::Tcp(bytes) => {
            let mut s = TcpStream::connect(tcp_port).await.expect("tcp connect");
            // The relay may refuse before reading everything: ignore write errors.
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(CLOSED_WITHIN, s.read_to_end(&mut answer)).await;
            let answer = String::from_utf8_lossy(&answer);
            let status = answer
                .strip_prefix("ERROR ")
                .and_then(|r| r.get(..3))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Expect::TcpError(status)
        }
        Probe::Slowloris(bytes) => {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(bytes).await.expect("write");
            let mut buf = [0u8; 1024];
            let closed = async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {} // e.g. a 408 before the close
                    }
                }
            };
            match tokio::time::timeout(CLOSED_WITHIN, closed).await {
                Ok(()) => Expect::Closed,
                Err(_) => Expect::Status(0),
            }
        }
        Probe::ConnectionFlood => {
            let mut open = Vec::new();
            for _ in 0..100 {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .expect("write");
                let head = read_head(&mut s).await;
                if head.starts_with("HTTP/1.1 429") {
                    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
                    return Expect::Refused(429);
                }
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                open.push(s); // keep it open: it counts
            }
            Expect::Status(0)
        }
        Probe::SocketIo(req) => Expect::SioEnd(socketio_watch(base, req).await),
        Probe::ViewerFlood => {
            // A stream to crowd, then viewers until the limit (2) refuses one.
            let file = fixture("h264_aac_keyframe.mp4");
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
            let url = format!("http://{base}/publish/team-crowd?key=tk");
            let publisher = tokio::spawn(async move { put_stream(&url, rx).await });
            tx.send(file).await.expect("send");
            let mut viewers = Vec::new();
            let mut outcome = Expect::Status(0);
            for _ in 0..5 {
                let mut ws = ws_connect(&format!("ws://{base}/live/team-crowd?wait=10")).await;
                let r = ws_read(&mut ws, 1, Duration::from_secs(10)).await;
                if let Some((code, _)) = r.close {
                    assert_eq!(code, 1013, "{r:?}");
                    assert_eq!(viewers.len(), 2, "refused only beyond the limit");
                    let (status, h, _) =
                        request(addr, "GET", "/live/team-crowd.mp4", &[], Bytes::new()).await;
                    assert!(h.contains_key("retry-after"));
                    outcome = Expect::Refused(status);
                    break;
                }
                assert!(!r.seqs.is_empty(), "viewer {} plays", viewers.len());
                viewers.push(ws);
            }
            drop(tx);
            let _ = publisher.await;
            outcome
        }
    }
}

/// Engine.IO v4 over WebSocket: open, connect to `/`, emit `watch`, and
/// return the status of the `end` event (0 if none came).
async fn socketio_watch(base: &str, req: serde_json::Value) -> u16 {
    let mut ws = ws_connect(&format!("ws://{base}/socket.io/?EIO=4&transport=websocket")).await;
    async fn next_text(ws: &mut Ws) -> Option<String> {
        loop {
            match tokio::time::timeout(CLOSED_WITHIN, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                    let _ = ws.send(Message::Text("3".into())).await; // pong
                }
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }
    let open = next_text(&mut ws).await.unwrap_or_default();
    assert!(open.starts_with('0'), "engine.io open: {open}");
    let _ = ws.send(Message::Text("40".into())).await;
    let connected = next_text(&mut ws).await.unwrap_or_default();
    assert!(
        connected.starts_with("40"),
        "socket.io connect: {connected}"
    );
    let emit = serde_json::json!(["watch", req]).to_string();
    let _ = ws.send(Message::Text(format!("42{emit}").into())).await;
    while let Some(t) = next_text(&mut ws).await {
        if let Some(json) = t.strip_prefix("42")
            && let Ok(serde_json::Value::Array(ev)) = serde_json::from_str(json)
            && ev.first().is_some_and(|n| n == "end")
        {
            return ev
                .get(1)
                .and_then(|v| v["status"].as_u64())
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0);
        }
    }
    0
}

/// The close code a WebSocket ends with (0 if it ends without one).
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(CLOSED_WITHIN, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)).unwrap_or(0),
            Ok(Some(Ok(_))) => continue,
            _ => return 0,
        }
    }
}

/// Read an HTTP response head from a raw socket.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(CLOSED_WITHIN, s.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}
