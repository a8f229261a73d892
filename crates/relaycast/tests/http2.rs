//! HTTP/2 on the one listen port: h2c with prior knowledge and h2 over TLS
//! (ALPN) answer every kind of path (player, API, HLS playlist and parts, the
//! never-ending `.mp4` stream), and HTTP/1.1 still works beside them. The
//! client is curl (nghttp2), as a user would try it.

mod common;

use common::{config, relay};
use std::time::Duration;

fn have_curl() -> bool {
    let ok = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    if !ok {
        if std::env::var("RELAYCAST_REQUIRE_FFMPEG").as_deref() == Ok("1") {
            panic!("curl with HTTP/2 is required in CI");
        }
        eprintln!("skipping: no curl with HTTP/2");
    }
    ok
}

/// `curl ARGS URL` → (HTTP version, status, body bytes).
async fn curl(args: &[&str], url: &str) -> (String, u16, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("body");
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new("curl")
            .args(["-s", "--max-time", "10", "-o"])
            .arg(&body)
            .args(["-w", "%{http_version} %{http_code}"])
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl finished")
    .expect("curl runs");
    let w = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = w.split_whitespace();
    let version = it.next().unwrap_or_default().to_string();
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let len = std::fs::metadata(&body)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    (version, status, len)
}

/// The demo stream's playlist and its newest part URL.
async fn demo_paths(args: &[&str], base: &str) -> Vec<String> {
    let mut paths = vec![
        "/healthz".to_string(),
        "/".to_string(),
        "/api/streams".to_string(),
        "/live/demo/info".to_string(),
        "/live/demo/index.m3u8?wait=10".to_string(),
        "/live/demo/manifest.mpd".to_string(),
    ];
    // A part named by the playlist.
    let dir = tempfile::tempdir().expect("tempdir");
    let pl = dir.path().join("pl");
    let _ = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-o"])
        .arg(&pl)
        .args(args)
        .arg(format!("{base}/live/demo/index.m3u8?wait=10"))
        .status()
        .await;
    let text = std::fs::read_to_string(&pl).unwrap_or_default();
    let part = text
        .lines()
        .rfind(|l| l.starts_with("#EXT-X-PART:"))
        .and_then(|l| l.split("URI=\"").nth(1))
        .and_then(|u| u.split('"').next())
        .map(|u| format!("/live/demo/{u}"));
    paths.push(part.unwrap_or_else(|| panic!("no part in {text:?}")));
    paths
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http1_on_one_port() {
    if !have_curl() {
        return;
    }
    let mut c = config();
    c.server.demo = true;
    let relay = relay(c).await;
    let base = format!("http://{}", relay.addr);
    let h2c = ["--http2-prior-knowledge"];
    for path in demo_paths(&h2c, &base).await {
        let (v, status, len) = curl(&h2c, &format!("{base}{path}")).await;
        assert_eq!((v.as_str(), status), ("2", 200), "{path}");
        assert!(len > 0, "{path}");
        let (v, status, _) = curl(&["--http1.1"], &format!("{base}{path}")).await;
        assert_eq!((v.as_str(), status), ("1.1", 200), "{path}");
    }
    // The never-ending HTTP stream over h2: curl stops it after a while,
    // having received the init and fragments.
    let (v, _, len) = curl(
        &["--http2-prior-knowledge", "--max-time", "2"],
        &format!("{base}/live/demo.mp4"),
    )
    .await;
    assert_eq!(v, "2");
    assert!(len > 10_000, "{len} bytes of /live/demo.mp4 over h2c");
    relay.shutdown().await;
}

/// A test config serving TLS with a fresh self-signed certificate for
/// `localhost`, written (`cert.pem`, `key.pem`) into the returned folder.
fn tls_config() -> (tempfile::TempDir, relaycast::config::Config) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("key");
    let mut c = config();
    c.server.tls_cert = Some(dir.path().join("cert.pem"));
    c.server.tls_key = Some(dir.path().join("key.pem"));
    (dir, c)
}

#[tokio::test]
async fn h2_over_tls_by_alpn() {
    if !have_curl() {
        return;
    }
    let (dir, mut c) = tls_config();
    c.server.demo = true;
    let relay = relay(c).await;
    let port = relay.addr.port();
    let base = format!("https://localhost:{port}");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let cacert = dir.path().join("cert.pem").display().to_string();
    let h2 = ["--http2", "--cacert", &cacert, "--resolve", &resolve];
    let h1 = ["--http1.1", "--cacert", &cacert, "--resolve", &resolve];
    for path in demo_paths(&h2, &base).await {
        let (v, status, len) = curl(&h2, &format!("{base}{path}")).await;
        assert_eq!((v.as_str(), status), ("2", 200), "{path}");
        assert!(len > 0, "{path}");
        let (v, status, _) = curl(&h1, &format!("{base}{path}")).await;
        assert_eq!((v.as_str(), status), ("1.1", 200), "{path}");
    }
    relay.shutdown().await;
}

/// Over the per-IP connection limit an h2c client is answered in HTTP/2
/// (429 with the reason) and the relay then closes the connection (GOAWAY
/// and close): a refused connection holds nothing. With hyper's h2 client.
#[tokio::test]
async fn a_refused_h2c_connection_is_answered_and_closed() {
    use http_body_util::BodyExt;
    let mut c = config();
    c.limits.max_connections_per_ip = 1;
    let relay = relay(c).await;
    let addr = relay.addr;
    // The one connection the limit allows, held open.
    let (mut held, _held_conn) = common::http2::<http_body_util::Empty<bytes::Bytes>>(addr).await;
    let req = hyper::Request::get(format!("http://{addr}/healthz"))
        .body(http_body_util::Empty::new())
        .expect("request");
    let r = held.send_request(req).await.expect("served");
    assert_eq!(r.status(), 200);
    // The second is refused, over HTTP/2.
    let (mut sender, conn) = common::http2::<http_body_util::Empty<bytes::Bytes>>(addr).await;
    let req = hyper::Request::get(format!("http://{addr}/healthz"))
        .body(http_body_util::Empty::new())
        .expect("request");
    let r = sender.send_request(req).await.expect("answered over h2");
    assert_eq!(r.status(), 429);
    assert_eq!(r.version(), hyper::Version::HTTP_2);
    assert!(r.headers().contains_key("retry-after"));
    let body = r.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("max_connections_per_ip"), "{text}");
    // ... and closed by the relay while this client still holds it open.
    let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(closed.is_ok(), "the refused h2 connection was left open");
    assert!(sender.is_closed() || sender.ready().await.is_err());
    // The held one still works.
    let req = hyper::Request::get(format!("http://{addr}/healthz"))
        .body(http_body_util::Empty::new())
        .expect("request");
    assert_eq!(held.send_request(req).await.expect("served").status(), 200);
    relay.shutdown().await;
}

/// Over TLS too: a connection over the per-IP limit is answered (after the
/// handshake, in the protocol ALPN chose) with 429 and the reason, not closed
/// before the handshake with no answer. curl, as a user would see it.
#[tokio::test]
async fn a_refused_tls_connection_is_answered_in_h2_and_http1() {
    if !have_curl() {
        return;
    }
    let (dir, mut c) = tls_config();
    c.limits.max_connections_per_ip = 1;
    let relay = relay(c).await;
    let port = relay.addr.port();
    // The one connection the limit allows, held open (no request: the
    // relay's TLS handshake wait is 10 s, longer than this test).
    let _held = tokio::net::TcpStream::connect(relay.addr)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("https://localhost:{port}/healthz");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let cacert = dir.path().join("cert.pem").display().to_string();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (v, status, len) =
            curl(&[flag, "--cacert", &cacert, "--resolve", &resolve], &url).await;
        assert_eq!((v.as_str(), status), (version, 429), "{flag}");
        assert!(len > 0, "{flag}: the reason in the body");
    }
    relay.shutdown().await;
}

/// An h2c request on `sender`: (status, response).
fn h2_request(
    method: hyper::Method,
    url: &str,
    version: Option<&str>,
) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(v) = version {
        req = req.header("sec-websocket-version", v);
    }
    req.extension(hyper::ext::Protocol::from_static("websocket"))
        .body(http_body_util::Empty::new())
        .expect("request")
}

/// WebSocket over HTTP/2 (RFC 8441) on the viewer endpoint: hyper's h2
/// client sends an extended CONNECT with `:protocol websocket`, gets 200,
/// and the stream carries the same WebSocket viewer protocol, byte for byte
/// what an HTTP/1.1 WebSocket viewer gets from the same seq; a wrong
/// version is a 426, CONNECT elsewhere a 405.
#[tokio::test]
async fn websocket_over_h2_extended_connect() {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let mut c = config();
    c.server.demo = true;
    let relay = relay(c).await;
    let addr = relay.addr;
    // An HTTP/1.1 WebSocket viewer: the reference.
    let mut h1 = common::ws_connect(&format!("ws://{addr}/live/demo?wait=10")).await;
    let want = common::ws_read(&mut h1, 5, Duration::from_secs(15)).await;
    assert_eq!(want.seqs.len(), 5);
    let after = want.seqs[0];

    let (mut sender, _conn) = common::http2::<http_body_util::Empty<bytes::Bytes>>(addr).await;
    // One ordinary request first: the server's SETTINGS (with
    // ENABLE_CONNECT_PROTOCOL) are in by its answer.
    let r = sender
        .send_request(
            hyper::Request::get(format!("http://{addr}/healthz"))
                .body(http_body_util::Empty::new())
                .expect("request"),
        )
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    // Refusals: no version, CONNECT on a path that is no WebSocket endpoint.
    let r = sender
        .send_request(h2_request(
            hyper::Method::CONNECT,
            &format!("http://{addr}/live/demo"),
            None,
        ))
        .await
        .expect("answered");
    assert_eq!(r.status(), 426);
    let r = sender
        .send_request(h2_request(
            hyper::Method::CONNECT,
            &format!("http://{addr}/live/demo/info"),
            Some("13"),
        ))
        .await
        .expect("answered");
    assert_eq!(r.status(), 405);
    // The viewer, resuming right before the reference's first fragment.
    let r = sender
        .send_request(h2_request(
            hyper::Method::CONNECT,
            &format!("http://{addr}/live/demo?after={after}"),
            Some("13"),
        ))
        .await
        .expect("extended CONNECT answered");
    assert_eq!(r.status(), 200, "RFC 8441: a 2xx opens the WebSocket");
    assert!(!r.headers().contains_key("sec-websocket-accept"));
    let io = hyper::upgrade::on(r)
        .await
        .expect("the stream is the WebSocket");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(io),
        Role::Client,
        None,
    )
    .await;
    let got = common::ws_read(&mut ws, 4, Duration::from_secs(15)).await;
    assert_eq!(got.seqs, want.seqs[1..], "the same fragments");
    assert!(
        got.of_type("hello")[0]["resumed"] == true,
        "{:?}",
        got.texts
    );
    // Binary messages: the init, then the fragments; the fragments are the
    // reference's bytes.
    let n = want.binaries.len();
    assert!(got.binaries.len() >= 4 && n >= 4);
    assert_eq!(
        got.binaries[got.binaries.len() - 4..],
        want.binaries[n - 4..],
        "fragment bytes differ between h2 and HTTP/1.1 WebSocket viewers"
    );
    assert_eq!(&got.binaries[0][4..8], b"ftyp", "the init comes first");
    // A clean close over the h2 stream.
    let _ = ws.close(None).await;
    relay.shutdown().await;
}
