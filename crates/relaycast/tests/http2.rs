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

#[tokio::test]
async fn h2_over_tls_by_alpn() {
    if !have_curl() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("key");
    let mut c = config();
    c.server.demo = true;
    c.server.tls_cert = Some(dir.path().join("cert.pem"));
    c.server.tls_key = Some(dir.path().join("key.pem"));
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
