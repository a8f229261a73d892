//! Access control, TLS and limits end to end: https/wss with a generated
//! certificate and a client that trusts only it, reload on SIGHUP without
//! dropping a viewer, the redirect port, publish/play callbacks against a
//! tiny HTTP server, stream/viewer/bitrate/idle limits, and `relaycast sign`.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use relaycast::config::TcpIngest;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

/// A self-signed certificate for `localhost`, written to `dir`; its DER.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
    ck.cert.der().clone()
}

/// SHA-256 of a certificate's DER, lowercase hex (the QUIC pin).
fn fingerprint(cert: &CertificateDer<'static>) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(cert.as_ref()))
}

/// A TLS client that trusts `cert` and nothing else.
fn client(cert: &CertificateDer<'static>) -> TlsConnector {
    client_of(&[cert])
}

/// A TLS client that trusts `certs` and nothing else.
fn client_of(certs: &[&CertificateDer<'static>]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add((*cert).clone()).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    tls: &TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tls.connect(name, tcp).await
}

/// GET over https: the status, or the error.
async fn https_get(addr: SocketAddr, tls: &TlsConnector, path: &str) -> Result<u16, String> {
    https_get_body(addr, tls, path)
        .await
        .map(|(status, _)| status)
}

/// GET over https: the status and body, or the error.
async fn https_get_body(
    addr: SocketAddr,
    tls: &TlsConnector,
    path: &str,
) -> Result<(u16, Bytes), String> {
    use http_body_util::BodyExt;
    let io = tls_connect(addr, tls).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", format!("localhost:{}", addr.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let r = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

/// The fingerprint `GET /api/quic` reports (over https).
async fn api_quic_fingerprint(addr: SocketAddr, tls: &TlsConnector) -> Result<String, String> {
    let (status, body) = https_get_body(addr, tls, "/api/quic").await?;
    if status != 200 {
        return Err(format!("/api/quic: {status}"));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    v["fingerprint"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no fingerprint in {v}"))
}

#[tokio::test]
async fn api_quic_reports_the_new_fingerprint_after_sighup() {
    use relaycast::quic::QuicUrl;
    use relaycast::quic::client::Client;
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_a = write_cert(dir.path());
    let mut cfg = config();
    cfg.server.tls_cert = Some(dir.path().join("cert.pem"));
    cfg.server.tls_key = Some(dir.path().join("key.pem"));
    cfg.quic.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let relay = relay(cfg).await;
    let quic_addr = relay.quic.as_ref().expect("QUIC on").addr;
    let fp_a = fingerprint(&cert_a);
    assert_eq!(
        api_quic_fingerprint(relay.addr, &client(&cert_a)).await,
        Ok(fp_a.clone())
    );

    // A new certificate in the same files, and SIGHUP.
    let cert_b = write_cert(dir.path());
    let fp_b = fingerprint(&cert_b);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // (The https side reloads on its own: trust both certificates meanwhile.)
    let both = client_of(&[&cert_a, &cert_b]);
    let mut reported = None;
    for _ in 0..100 {
        match api_quic_fingerprint(relay.addr, &both).await {
            Ok(fp) if fp == fp_b => {
                reported = Some(fp);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(reported, Some(fp_b.clone()), "/api/quic follows the reload");
    assert_eq!(
        relay.quic_now().map(|q| q.fingerprint),
        Some(fp_b.clone()),
        "Running::quic_now too"
    );

    // A QUIC client pinned to what /api/quic reports gets in; the old pin does not.
    let quic = Client::new().expect("client");
    let pinned = |fp: &str| {
        QuicUrl::parse(&format!("quic://{quic_addr}/pinned?fingerprint={fp}")).expect("url")
    };
    let mut publisher = quic
        .publish(&pinned(&fp_b), None)
        .await
        .expect("pinned to the reported fingerprint");
    let init = split(&fixture("h264_aac_keyframe.mp4")).0;
    publisher.send(init.bytes.clone()).await.expect("send");
    let old = quic.publish(&pinned(&fp_a), None).await;
    assert!(old.is_err(), "the old certificate is no longer served");
    publisher.finish().await.expect("finish");
    relay.shutdown().await;
}

#[tokio::test]
async fn tls_serves_https_and_wss_and_reloads_on_sighup_without_dropping_viewers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_a = write_cert(dir.path());
    let mut cfg = config();
    cfg.server.tls_cert = Some(dir.path().join("cert.pem"));
    cfg.server.tls_key = Some(dir.path().join("key.pem"));
    cfg.server.http_redirect = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.ingest.tcp.push(TcpIngest {
        port: 0,
        name: "tlscam".into(),
        key: None,
    });
    cfg.limits.header_read_timeout = Duration::from_secs(1);
    cfg.quic.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let relay = relay(cfg).await;
    let quic = relay.quic.clone().expect("QUIC on");
    assert_eq!(
        quic.fingerprint,
        fingerprint(&cert_a),
        "QUIC uses the same certificate"
    );
    let addr = relay.addr;
    let trust_a = client(&cert_a);
    assert_eq!(https_get(addr, &trust_a, "/healthz").await, Ok(200));

    // A client that never finishes its TLS handshake is closed (slowloris on TLS).
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let mut sink = [0u8; 64];
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read(&mut idle, &mut sink),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed: {closed:?}"
    );

    // A wss viewer, fed through the raw TCP ingest port.
    let io = tls_connect(addr, &trust_a).await.expect("tls");
    let url = format!("wss://localhost:{}/live/tlscam?wait=10", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, io)
        .await
        .expect("wss handshake");
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);
    let half = frags.len() / 2;
    let cut = init.bytes.len() + frags[..half].iter().map(|f| f.bytes.len()).sum::<usize>();
    let mut publisher = TcpStream::connect(relay.tcp_ingest[0].1)
        .await
        .expect("tcp ingest");
    publisher
        .write_all(&init.bytes)
        .await
        .expect("publish the init");
    // The hello says the viewer is subscribed: it will get every fragment from the first.
    let hello = tokio::time::timeout(Duration::from_secs(20), ws.next()).await;
    assert!(
        matches!(&hello, Ok(Some(Ok(Message::Text(t)))) if t.contains("hello")),
        "{hello:?}"
    );
    publisher
        .write_all(&file[init.bytes.len()..cut])
        .await
        .expect("publish first half");
    let mut got = read_ws(&mut ws, half).await;
    assert_eq!(got, file[..cut], "first half over wss, byte for byte");

    // A new certificate in the same files, and SIGHUP.
    let cert_b = write_cert(dir.path());
    let trust_b = client(&cert_b);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut reloaded = false;
    for _ in 0..100 {
        if https_get(addr, &trust_b, "/healthz").await == Ok(200) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "new connections get the new certificate");
    assert!(
        https_get(addr, &trust_a, "/healthz").await.is_err(),
        "the old certificate is no longer served"
    );
    // The QUIC port reloaded too: a client pinning the new certificate gets in.
    let quic_watch = async |cert: &CertificateDer<'static>| {
        let url = format!(
            "quic://{}/tlscam?fingerprint={}",
            quic.addr,
            fingerprint(cert)
        );
        let mut out: Vec<u8> = Vec::new();
        relaycast::client::watch(&url, &mut out, Some(500))
            .await
            .map(|_| out.len())
    };
    let mut quic_reloaded = false;
    for _ in 0..100 {
        if quic_watch(&cert_b).await.is_ok_and(|n| n >= 500) {
            quic_reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(quic_reloaded, "QUIC serves the new certificate");
    assert!(quic_watch(&cert_a).await.is_err(), "not the old one");

    // The viewer that connected before the reload is still there.
    publisher
        .write_all(&file[cut..])
        .await
        .expect("publish second half");
    got.extend(read_ws(&mut ws, frags.len() - half).await);
    assert_eq!(got, file.to_vec(), "the whole stream, across the reload");

    // The command-line clients speak https and wss, trusting RELAYCAST_CA_FILE.
    let ca = dir.path().join("cert.pem");
    // (tokio's Command: the relay runs on this test's runtime meanwhile.)
    let cli = async |args: &[&str]| {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
            .env("RELAYCAST_CA_FILE", &ca)
            .args(args)
            .output()
            .await
            .expect("run relaycast");
        assert!(
            out.status.success(),
            "relaycast {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let clip = format!(
        "{}/tests/fixtures/h264_aac_keyframe.mp4",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
    );
    let port = addr.port();
    let summary = cli(&[
        "publish",
        "--to",
        &format!("https://localhost:{port}/publish/clicam"),
        "--max-retries",
        "1",
        &clip,
    ])
    .await;
    assert!(
        String::from_utf8_lossy(&summary).contains("fragments"),
        "{}",
        String::from_utf8_lossy(&summary)
    );
    let clip_init = split(&fixture("h264_aac_keyframe.mp4")).0.bytes;
    for url in [
        format!("https://localhost:{port}/live/clicam.mp4"),
        format!("wss://localhost:{port}/live/clicam"),
    ] {
        let out = cli(&["watch", &url, "--max-bytes", "2000", "-o", "-"]).await;
        assert!(out.starts_with(&clip_init), "{url}: starts with the init");
    }

    // A reload that fails keeps the current certificate.
    std::fs::write(dir.path().join("key.pem"), "not a key").expect("write");
    assert!(relay.tls.as_ref().expect("tls").reload().is_err());
    assert_eq!(https_get(addr, &trust_b, "/healthz").await, Ok(200));

    // The plain-HTTP port redirects to https on the TLS port.
    let redirect = relay.redirect_addr.expect("redirect port");
    let mut s = TcpStream::connect(redirect).await.expect("connect");
    s.write_all(
        b"GET /live/tlscam.mp4?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer)
        .await
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let want = format!(
        "location: https://localhost:{}/live/tlscam.mp4?x=1\r\n",
        addr.port()
    );
    assert!(answer.to_ascii_lowercase().contains(&want), "{answer}");
    drop(publisher);
    relay.shutdown().await;
}

/// Read `fragments` fragments (and whatever binary came before them) from a viewer.
async fn read_ws<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, fragments: usize) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut bytes = Vec::new();
    let mut seen = 0;
    let mut last_was_fragment = false;
    while seen < fragments || last_was_fragment {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("viewer receives in time")
            .expect("viewer open")
            .expect("viewer ok");
        match m {
            Message::Binary(b) => {
                bytes.extend_from_slice(&b);
                last_was_fragment = false;
            }
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                last_was_fragment = v["type"] == "fragment";
                if last_was_fragment {
                    seen += 1;
                }
            }
            Message::Close(f) => panic!("viewer closed: {f:?}"),
            _ => {}
        }
    }
    bytes
}

type Seen = Arc<parking_lot::Mutex<Vec<serde_json::Value>>>;

/// `POST /hook`: records every JSON body; allows names that start with "ok".
fn hook_routes() -> axum::Router<Seen> {
    use axum::Json;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    axum::Router::new().route(
        "/hook",
        post(
            |State(seen): State<Seen>, Json(v): Json<serde_json::Value>| async move {
                let ok = v["name"].as_str().is_some_and(|n| n.starts_with("ok"));
                seen.lock().push(v);
                if ok {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::FORBIDDEN
                }
            },
        ),
    )
}

/// A callback server: records every JSON body; `/hook` allows names that
/// start with "ok", `/slow` answers after 3 s.
async fn hook_server() -> (SocketAddr, Arc<parking_lot::Mutex<Vec<serde_json::Value>>>) {
    use axum::http::StatusCode;
    use axum::routing::post;
    let seen: Seen = Arc::default();
    let app = hook_routes()
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                StatusCode::OK
            }),
        )
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, seen)
}

#[tokio::test]
async fn callbacks_allow_and_deny_publishers_and_viewers() {
    let (hooks, seen) = hook_server().await;
    let file = fixture("h264_aac_keyframe.mp4");

    // Decisions of a callback that answers.
    let mut cfg = config();
    cfg.ingest.publish_key = Some("pk".into());
    cfg.auth.on_publish = Some(format!("http://{hooks}/hook"));
    cfg.auth.on_play = Some(format!("http://{hooks}/hook"));
    cfg.auth.callback_cache = Duration::ZERO;
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/okcam?key=pk"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    {
        let seen = seen.lock();
        let v = &seen[0];
        assert_eq!(v["action"], "publish");
        assert_eq!(v["name"], "okcam");
        assert_eq!(v["key"], "pk");
        assert!(
            v["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{v}"
        );
    }
    let (s, _) = put_chunked(
        &format!("http://{base}/publish/badcam?key=pk"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 403, "the callback said no");
    // A wrong key is refused before the callback is asked.
    let before = seen.lock().len();
    let (s, _) = put_chunked(
        &format!("http://{base}/publish/okcam2?key=nope"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(seen.lock().len(), before);
    // Viewers: okcam is in its grace period, so it exists.
    assert_eq!(get(&format!("http://{base}/live/okcam/info")).await.0, 200);
    assert_eq!(get(&format!("http://{base}/live/nocam/info")).await.0, 403);
    let mut ws = ws_connect(&format!("ws://{base}/live/nocam")).await;
    let got = ws_read(&mut ws, 1, Duration::from_secs(10)).await;
    assert_eq!(got.close.map(|c| c.0), Some(1008));
    assert!(
        seen.lock()
            .iter()
            .any(|v| v["action"] == "play" && v["name"] == "okcam")
    );
    assert!(
        r.state
            .limits
            .refused
            .get(relaycast::limits::Reason::CallbackDenied)
            >= 3
    );
    r.shutdown().await;

    // A callback that times out, with deny as the default; answers are cached.
    let mut cfg = config();
    cfg.auth.on_publish = Some(format!("http://{hooks}/slow"));
    cfg.auth.on_play = Some(format!("http://{hooks}/hook"));
    cfg.auth.callback_timeout = Duration::from_millis(300);
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let (s, _) = put_chunked(
        &format!("http://{base}/publish/okslow"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 403, "timeout → the default, deny");
    seen.lock().clear();
    for _ in 0..3 {
        assert_eq!(
            get(&format!("http://{base}/live/okcached/info")).await.0,
            404
        );
    }
    assert_eq!(seen.lock().len(), 1, "one callback for three requests");
    r.shutdown().await;

    // A callback that cannot be reached, with allow as the default.
    let mut cfg = config();
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    cfg.auth.on_publish = Some(format!("http://{dead}/hook"));
    cfg.auth.callback_allow_on_error = true;
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/anycam"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 200, "unreachable → the default, allow: {body}");
    r.shutdown().await;
}

/// The callback server of [`hook_server`]'s `/hook` over https, with a
/// certificate for 127.0.0.1 written to `dir/name.pem`: its address, what
/// it saw.
async fn https_hook_server(
    dir: &Path,
    name: &str,
) -> (SocketAddr, Arc<parking_lot::Mutex<Vec<serde_json::Value>>>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("rcgen");
    std::fs::write(dir.join(format!("{name}.pem")), ck.cert.pem()).expect("write cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("cert");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let seen: Seen = Arc::default();
    let app = hook_routes().with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate ends here.
                let Ok(io) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct LogBuf(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, from a global subscriber installed
/// once. (A per-test `set_default` lost lines when other tests ran at the
/// same time: tracing caches a callsite's interest process-wide.) Tests look
/// for lines that name something only they use, such as their hook's port.
fn global_logs() -> LogBuf {
    static LOGS: std::sync::OnceLock<LogBuf> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuf::default();
        let writer = logs.clone();
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish(),
        );
        logs
    })
    .clone()
}

#[tokio::test]
async fn https_callbacks_trust_the_configured_ca_and_fall_back_when_untrusted() {
    let logs = global_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let (hooks, seen) = https_hook_server(dir.path(), "hooks").await;
    let (_other, _) = https_hook_server(dir.path(), "other").await;
    let file = fixture("h264_aac_keyframe.mp4");
    let hook = format!("https://{hooks}/hook");

    // Trusted through callback_ca: allow and deny, for publishers and viewers.
    let mut cfg = config();
    cfg.auth.on_publish = Some(hook.clone());
    cfg.auth.on_play = Some(hook.clone());
    cfg.auth.callback_ca = Some(dir.path().join("hooks.pem"));
    cfg.auth.callback_cache = Duration::ZERO;
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/okcam"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 200, "the https callback said yes: {body}");
    let (s, _) = put_chunked(
        &format!("http://{base}/publish/badcam"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 403, "the https callback said no");
    assert_eq!(get(&format!("http://{base}/live/okcam/info")).await.0, 200);
    assert_eq!(get(&format!("http://{base}/live/nocam/info")).await.0, 403);
    {
        let seen = seen.lock();
        let asked: Vec<(&str, &str)> = seen
            .iter()
            .map(|v| {
                (
                    v["action"].as_str().unwrap_or(""),
                    v["name"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            asked,
            [
                ("publish", "okcam"),
                ("publish", "badcam"),
                ("play", "okcam"),
                ("play", "nocam")
            ]
        );
    }
    use relaycast::limits::Reason;
    assert_eq!(r.state.limits.refused.get(Reason::CallbackDenied), 2);
    r.shutdown().await;

    // The same server with another certificate as the CA: not trusted, so
    // the callback fails and the configured default decides (allow here,
    // although the hook would have said no), and the failure is logged.
    let mut cfg = config();
    cfg.auth.on_publish = Some(hook.clone());
    cfg.auth.callback_ca = Some(dir.path().join("other.pem"));
    cfg.auth.callback_allow_on_error = true;
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    seen.lock().clear();
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/badcam2"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 200, "untrusted → the default, allow: {body}");
    assert!(seen.lock().is_empty(), "the untrusted hook was not asked");
    let text = String::from_utf8_lossy(&logs.0.lock()).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains("callback failed; using the default")
                && l.contains(&hook)
                && l.contains("certificate")),
        "{text}"
    );
    r.shutdown().await;

    // With deny as the default, the untrusted callback refuses.
    let mut cfg = config();
    cfg.auth.on_publish = Some(hook.clone());
    cfg.auth.callback_ca = Some(dir.path().join("other.pem"));
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let (s, _) = put_chunked(
        &format!("http://{base}/publish/okcam3"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 403, "untrusted → the default, deny");
    assert!(seen.lock().is_empty(), "the untrusted hook was not asked");
    r.shutdown().await;

    // A callback_ca that cannot be read is a configuration error.
    let mut cfg = config();
    cfg.auth.callback_ca = Some(dir.path().join("missing.pem"));
    assert_eq!(cfg.validate().len(), 1, "{:?}", cfg.validate());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let e = relaycast::server::start(cfg, Some(l))
        .await
        .err()
        .expect("the relay does not start with it");
    assert!(e.to_string().contains("callback_ca"), "{e}");
}

#[tokio::test]
async fn limits_on_streams_viewers_bitrate_and_silent_publishers() {
    let file = fixture("h264_aac_every_frame.mp4");
    let (init, frags) = split(&file);

    // One stream, one viewer in total.
    let mut cfg = config();
    cfg.limits.max_streams = 1;
    cfg.limits.max_viewers = 1;
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let url = format!("http://{base}/publish/one");
    let first = tokio::spawn(async move { put_stream(&url, rx).await });
    tx.send(file.slice(..init.bytes.len() + frags[0].bytes.len()))
        .await
        .expect("send");
    let mut viewer = ws_connect(&format!("ws://{base}/live/one?wait=10")).await;
    assert!(
        !ws_read(&mut viewer, 1, Duration::from_secs(10))
            .await
            .seqs
            .is_empty()
    );
    let (s, _) = put_chunked(
        &format!("http://{base}/publish/two"),
        file.clone(),
        8192,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 503, "a second stream is over max_streams");
    let (s, h, _) = get(&format!("http://{base}/live/one.mp4")).await;
    assert_eq!(s, 503, "a second viewer is over max_viewers");
    assert!(h.contains_key("retry-after"));
    let mut second = ws_connect(&format!("ws://{base}/live/one")).await;
    let got = ws_read(&mut second, 1, Duration::from_secs(10)).await;
    assert_eq!(got.close.map(|c| c.0), Some(1013));
    // The first viewer did not notice.
    tx.send(file.slice(init.bytes.len() + frags[0].bytes.len()..))
        .await
        .expect("send");
    let got = ws_read(&mut viewer, frags.len() - 1, Duration::from_secs(10)).await;
    assert_eq!(got.seqs.len(), frags.len() - 1);
    drop(tx);
    assert_eq!(first.await.expect("join").0, 200);
    let (_, _, metrics) = get(&format!("http://{base}/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("relaycast_refused_total{reason=\"max_streams\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relaycast_refused_total{reason=\"max_viewers\"} 2"),
        "{metrics}"
    );
    r.shutdown().await;

    // Ingest bitrate: 400 kbit/s with a 1 s burst (50 kB).
    let mut cfg = config();
    cfg.limits.max_ingest_bitrate = 400_000;
    cfg.limits.ingest_burst = Duration::from_secs(1);
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let small = fixture("aac_only.mp4");
    assert!(small.len() < 50_000 && file.len() > 100_000);
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/small"),
        small,
        4096,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 200, "within the burst: {body}");
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/fast"),
        file.clone(),
        4096,
        Duration::ZERO,
    )
    .await;
    assert_eq!(s, 429, "over the bitrate: {body}");
    assert!(body.contains("max_ingest_bitrate"), "{body}");
    r.shutdown().await;

    // A publisher that goes silent is closed.
    let mut cfg = config();
    cfg.ingest.idle_timeout = Duration::from_secs(1);
    let r = relay(cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let mut ws = ws_connect(&format!("ws://{base}/publish/quiet")).await;
    futures_util::SinkExt::send(&mut ws, Message::Binary(init.bytes.clone()))
        .await
        .expect("send init");
    let got = ws_read(&mut ws, usize::MAX, Duration::from_secs(20)).await;
    assert_eq!(got.close.map(|c| c.0), Some(1008), "{:?}", got.texts);
    let (s, body) = put_chunked(
        &format!("http://{base}/publish/quiet2"),
        init.bytes.clone(),
        init.bytes.len() / 2 + 1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(s, 408, "{body}");
    assert_eq!(
        r.state
            .limits
            .refused
            .get(relaycast::limits::Reason::PublisherIdle),
        2
    );
    r.shutdown().await;
}

#[tokio::test]
async fn sign_command_mints_urls_the_relay_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("relay.toml");
    std::fs::write(
        &conf,
        "[auth]\nview_secret = \"everyone\"\n[auth.view_secrets]\n\"vip-*\" = \"vips\"\n",
    )
    .expect("write");
    let cfg = relaycast::config::Config::from_file(&conf).expect("config parses");
    let mut test_cfg = config();
    test_cfg.auth = cfg.auth;
    let r = relay(test_cfg).await;
    let base = format!("127.0.0.1:{}", r.addr.port());
    let sign = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
            .arg("sign")
            .args(args)
            .output()
            .expect("run relaycast sign");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let conf = conf.to_str().expect("utf-8 path");
    let vip = sign(&["vip-1", "--ttl", "1h", "--config", conf]);
    let plain = sign(&["cam", "--ttl", "90s", "--secret", "everyone"]);
    // A valid signature gets past the check: the stream does not exist (404), not 403.
    assert_eq!(
        get(&format!("http://{base}/live/vip-1/info?{vip}")).await.0,
        404
    );
    assert_eq!(
        get(&format!("http://{base}/live/cam/poll?{plain}")).await.0,
        404
    );
    assert_eq!(get(&format!("http://{base}/live/cam/info")).await.0, 403);
    // The VIP secret is not the global one, and a signature is for one stream.
    assert_eq!(
        get(&format!("http://{base}/live/vip-2/info?{vip}")).await.0,
        403
    );
    let wrong = sign(&["vip-1", "--secret", "everyone"]);
    assert_eq!(
        get(&format!("http://{base}/live/vip-1/info?{wrong}"))
            .await
            .0,
        403
    );
    r.shutdown().await;
}

#[tokio::test]
async fn cors_origins_apply_to_every_path() {
    let mut cfg = config();
    cfg.server.cors_origins = vec!["https://app.example".into()];
    let r = relay(cfg).await;
    let ask = |req: String| async move {
        let mut s = TcpStream::connect(r.addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut answer = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer)
            .await
            .expect("read");
        answer.to_ascii_lowercase()
    };
    for path in ["/healthz", "/live/nope/info", "/api/streams", "/api/quic"] {
        let ok = ask(format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(
            ok.contains("access-control-allow-origin: https://app.example"),
            "{path}: {ok}"
        );
        let other = ask(format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(
            !other.contains("access-control-allow-origin"),
            "{path}: {other}"
        );
    }
    let preflight = ask("OPTIONS /publish/cam HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n".into()).await;
    assert!(preflight.starts_with("http/1.1 200"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-origin: https://app.example"),
        "{preflight}"
    );
    r.shutdown().await;
}
