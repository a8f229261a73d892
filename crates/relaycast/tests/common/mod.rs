//! Shared harness for the integration tests: a real relay on 127.0.0.1:0,
//! fixtures, WebSocket viewers, and ffmpeg checks.
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::StreamExt;
use relaycast::config::Config;
use relaycast::server::Running;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A config for tests: no demo, short grace period.
pub fn config() -> Config {
    let mut c = Config::default();
    c.server.demo = false;
    c.fanout.grace = Duration::from_secs(3);
    c
}

/// Start a relay on an ephemeral port.
pub async fn relay(config: Config) -> Running {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    relaycast::server::start(config, Some(l))
        .await
        .expect("start relay")
}

/// A fixture clip from tests/fixtures.
pub fn fixture(name: &str) -> Bytes {
    let p = format!(
        "{}/tests/fixtures/{name}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
    );
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}")))
}

/// True when `tool` (ffmpeg, ffprobe) runs. With RELAYCAST_REQUIRE_FFMPEG=1
/// (CI) a missing tool fails the test instead of skipping it.
pub fn have(tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("RELAYCAST_REQUIRE_FFMPEG").as_deref() == Ok("1") {
            panic!("{tool} is required (RELAYCAST_REQUIRE_FFMPEG=1) but does not run");
        }
        eprintln!("skipping: {tool} not found");
    }
    ok
}

/// What a WebSocket viewer received.
#[derive(Debug, Default)]
pub struct Received {
    /// Binary messages concatenated.
    pub bytes: Vec<u8>,
    /// Each binary message.
    pub binaries: Vec<Bytes>,
    /// Text messages, parsed.
    pub texts: Vec<serde_json::Value>,
    /// Seqs of the fragments, in order.
    pub seqs: Vec<u64>,
    /// Close code, if closed.
    pub close: Option<(u16, String)>,
}

impl Received {
    pub fn of_type(&self, t: &str) -> Vec<&serde_json::Value> {
        self.texts.iter().filter(|v| v["type"] == t).collect()
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws_connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("ws connect {url}: {e}"))
        .0
}

/// Read a WebSocket viewer until it closes, `fragments` fragments arrived, or `limit` passed.
pub async fn ws_read(ws: &mut Ws, fragments: usize, limit: Duration) -> Received {
    let mut r = Received::default();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        match m {
            Message::Binary(b) => {
                r.bytes.extend_from_slice(&b);
                r.binaries.push(b);
                if r.seqs.len() >= fragments
                    && r.texts.last().is_some_and(|t| t["type"] == "fragment")
                {
                    break;
                }
            }
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("control is JSON");
                if v["type"] == "fragment" {
                    r.seqs.push(v["seq"].as_u64().expect("seq"));
                }
                r.texts.push(v);
            }
            Message::Close(f) => {
                r.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            _ => {}
        }
    }
    r
}

/// Split a whole fMP4 file into (init, fragments) with the relay's splitter.
pub fn split(bytes: &[u8]) -> (relaycast::media::Init, Vec<relaycast::media::Fragment>) {
    use relaycast::media::{Item, Splitter, SplitterConfig};
    let mut s = Splitter::new(SplitterConfig::default());
    s.push(bytes);
    let mut init = None;
    let mut frags = Vec::new();
    while let Some(item) = s.next_item().expect("fixture splits") {
        match item {
            Item::Init(i) => init = Some(i),
            Item::Fragment(f) => frags.push(f),
        }
    }
    s.finish().expect("fixture complete");
    (init.expect("fixture has an init"), frags)
}

/// PUT to `url` with a chunked body made of `chunks`, for as long as they
/// last; returns (status, response body), or (0, error) when the request fails.
pub async fn put_body(
    url: &str,
    chunks: impl futures_util::Stream<Item = Bytes> + Send + 'static,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let u = url::Url::parse(url).expect("url");
    let host = u.host_str().expect("host").to_string();
    let port = u.port().expect("port");
    let tcp = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
        Ok(t) => t,
        Err(e) => return (0, e.to_string()),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await {
            Ok(x) => x,
            Err(e) => return (0, e.to_string()),
        };
    tokio::spawn(conn);
    let body = chunks.map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)));
    let req = hyper::Request::put(&u[url::Position::BeforePath..])
        .header("host", format!("{host}:{port}"))
        .body(http_body_util::StreamBody::new(body))
        .expect("request");
    match sender.send_request(req).await {
        Ok(r) => {
            let status = r.status().as_u16();
            let b = r
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&b).into_owned())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// [`put_body`] fed from a channel: the publisher stays open as long as `rx` does.
pub async fn put_stream(url: &str, mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> (u16, String) {
    put_body(
        url,
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
    )
    .await
}

/// PUT `body` to `url` with a chunked body sent in pieces of `piece` bytes,
/// pausing `pause` between pieces. Returns (status, body).
pub async fn put_chunked(url: &str, body: Bytes, piece: usize, pause: Duration) -> (u16, String) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let resp = tokio::spawn({
        let url = url.to_string();
        async move { put_stream(&url, rx).await }
    });
    let mut off = 0;
    while off < body.len() {
        let end = (off + piece).min(body.len());
        if tx.send(body.slice(off..end)).await.is_err() {
            break;
        }
        off = end;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    drop(tx);
    resp.await.expect("join")
}

/// An HTTP/1.1 client connection to `addr`, its driver spawned.
pub async fn http1<B>(
    addr: impl tokio::net::ToSocketAddrs,
) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// GET a URL, returning (status, headers, body).
pub async fn get(url: &str) -> (u16, hyper::HeaderMap, Bytes) {
    use http_body_util::BodyExt;
    let u = url::Url::parse(url).expect("url");
    let host = u.host_str().expect("host").to_string();
    let port = u.port().expect("port");
    let mut sender = http1((host.as_str(), port)).await;
    let req = hyper::Request::get(&u[url::Position::BeforePath..])
        .header("host", format!("{host}:{port}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = sender.send_request(req).await.expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let b = r.into_body().collect().await.expect("body").to_bytes();
    (status, headers, b)
}

/// ffmpeg's live test source (320x180 H.264 + AAC, real time) muxed as fMP4 to `out`.
pub fn ffmpeg_live(seconds: u32, out: &str, extra: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args([
            "-re",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-t", &seconds.to_string()])
        .args([
            "-f",
            "mp4",
            "-movflags",
            "frag_keyframe+empty_moov+default_base_moof",
        ])
        .args(extra)
        .arg(out)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

/// The address in `relaycast serve`'s first stdout line
/// ("relaycast: listening on http://ADDR/").
pub fn listening_addr(line: &str) -> String {
    line.trim()
        .strip_prefix("relaycast: listening on http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string()
}
