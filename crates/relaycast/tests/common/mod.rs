//! Shared harness for the integration tests: a real relay on 127.0.0.1:0,
//! fixtures, WebSocket viewers, and ffmpeg checks.
#![allow(dead_code)]

pub mod rtmp;

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

/// `loops` passes over the built-in demo clip as one continuous fMP4 stream
/// (about 460 KB per loop), and its fragment count.
pub fn demo_stream(loops: u64) -> (Bytes, usize) {
    let demo = relaycast::media::demo::Demo::load().expect("demo clip");
    let mut v = demo.init().bytes.to_vec();
    let n = demo.len() as u64 * loops;
    for i in 0..n {
        v.extend_from_slice(&demo.fragment(i).0.bytes);
    }
    (Bytes::from(v), n as usize)
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
pub async fn ws_read<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    fragments: usize,
    limit: Duration,
) -> Received
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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

/// An HTTP/2 client connection (h2c, prior knowledge) to `addr` with the
/// connection's driver: it ends when the relay closes the connection.
pub async fn http2<B>(
    addr: impl tokio::net::ToSocketAddrs,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    (sender, tokio::spawn(conn))
}

/// One HTTP/1.1 request on a new connection: (status, headers, body).
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, hyper::HeaderMap, Bytes) {
    use http_body_util::BodyExt;
    let mut sender = http1(addr).await;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Full::new(body)).expect("request");
    let r = sender.send_request(req).await.expect("send");
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let b = r
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, h, b)
}

/// GET a URL, returning (status, headers, body).
pub async fn get(url: &str) -> (u16, hyper::HeaderMap, Bytes) {
    get_with(url, &[]).await
}

/// GET a URL with extra request headers, returning (status, headers, body).
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, hyper::HeaderMap, Bytes) {
    use http_body_util::BodyExt;
    let u = url::Url::parse(url).expect("url");
    let host = u.host_str().expect("host").to_string();
    let port = u.port().expect("port");
    let mut sender = http1((host.as_str(), port)).await;
    let mut req = hyper::Request::get(&u[url::Position::BeforePath..])
        .header("host", format!("{host}:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = sender.send_request(req).await.expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let b = r.into_body().collect().await.expect("body").to_bytes();
    (status, headers, b)
}

/// ffmpeg's fastest low-delay H.264 encoder settings (the tests' encoders).
pub const X264_LIVE: [&str; 6] = [
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-tune",
    "zerolatency",
];

/// ffmpeg's live test source (320x180 H.264 + AAC, real time) muxed as fMP4 to `out`.
pub fn ffmpeg_live(seconds: u32, out: &str, extra: &[&str]) -> tokio::process::Command {
    let mp4 = [
        "-f",
        "mp4",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
    ];
    ffmpeg_encoder(Some(seconds), &[&mp4[..], extra].concat(), out)
}

/// ffmpeg's live test source (320x180 H.264 at 30 fps, 1 s GOPs, + AAC;
/// real time), for `seconds` (None: until killed), with `output_args`
/// (the muxer: `-f flv`, `-f mpegts`, …) and `out`. stderr is piped (for
/// the refusals an encoder prints).
pub fn ffmpeg_encoder(
    seconds: Option<u32>,
    output_args: &[&str],
    out: &str,
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-re", "-f", "lavfi"])
        .args(["-i", "sine=frequency=440:sample_rate=48000"])
        .args(X264_LIVE)
        .args(["-pix_fmt", "yuv420p", "-g", "30", "-keyint_min", "30"])
        .args(["-sc_threshold", "0", "-c:a", "aac", "-b:a", "64k"]);
    if let Some(s) = seconds {
        c.args(["-t", &s.to_string()]);
    }
    c.args(output_args)
        .arg(out)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

/// Engine.IO v4 polling handshake at `base` (`host:port`): the sid.
pub async fn eio_handshake(base: &str) -> String {
    let (status, _, body) = get(&format!("http://{base}/socket.io/?EIO=4&transport=polling")).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    let open: serde_json::Value =
        serde_json::from_str(text.strip_prefix('0').expect("an OPEN packet"))
            .expect("OPEN is JSON");
    open["sid"].as_str().expect("sid").to_string()
}

/// One Engine.IO polling GET: (status, packets).
pub async fn eio_poll(base: &str, sid: &str) -> (u16, Vec<String>) {
    let url = format!("http://{base}/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(15), get(&url))
        .await
        .expect("poll answers");
    let text = String::from_utf8_lossy(&body);
    let packets = if text.is_empty() {
        vec![]
    } else {
        text.split('\x1e').map(str::to_string).collect()
    };
    (status, packets)
}

/// A raw Engine.IO polling POST with `head_extra` headers and `body`; the response
/// head (empty if none came within LIMIT).
pub async fn eio_post(
    addr: std::net::SocketAddr,
    sid: &str,
    head_extra: &str,
    body: &[u8],
) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: text/plain;charset=UTF-8\r\n{head_extra}\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(head.as_bytes()).await.expect("head");
    // The relay may refuse (and close) before it all is sent.
    let _ = s.write_all(body).await;
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut b)).await {
            Ok(Ok(1)) => got.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
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

/// Decode `url` with ffprobe for 2 s of media: (codec names in stream
/// order, video frames read, audio frames read). Fails the test on any
/// ffprobe error.
pub async fn ffprobe_live(url: &str) -> (Vec<String>, u64, u64) {
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-read_intervals", "%+2"])
        .args([
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames",
        ])
        .args(["-of", "json"])
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("ffprobe finished within 30 s")
        .expect("run ffprobe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffprobe {url}: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "ffprobe {url} reported errors: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let frames = |kind: &str| {
        streams
            .iter()
            .find(|s| s["codec_type"] == kind)
            .and_then(|s| s["nb_read_frames"].as_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let codecs = streams
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap_or("?").to_string())
        .collect();
    (codecs, frames("video"), frames("audio"))
}

/// Two WebSocket viewers of `name` on the relay at `http` that join before
/// the publisher `start`s (so both begin at its first fragment); reads 20
/// fragments from both and checks they received identical bytes. Returns
/// viewer a, what it read, and what `start` returned.
pub async fn identical_viewers<T>(
    http: std::net::SocketAddr,
    name: &str,
    start: impl FnOnce() -> T,
) -> (Ws, Received, T) {
    let mut a = ws_connect(&format!("ws://{http}/live/{name}?wait=15")).await;
    let mut b = ws_connect(&format!("ws://{http}/live/{name}?wait=15")).await;
    let started = start();
    let (ra, rb) = tokio::join!(
        ws_read(&mut a, 20, Duration::from_secs(20)),
        ws_read(&mut b, 20, Duration::from_secs(20))
    );
    assert!(
        ra.seqs.len() >= 20,
        "viewer a got {} fragments",
        ra.seqs.len()
    );
    let n = ra.binaries.len().min(rb.binaries.len());
    assert!(n > 20, "{n} binary messages in common");
    assert_eq!(
        ra.binaries[..n],
        rb.binaries[..n],
        "two viewers, identical bytes"
    );
    (a, ra, started)
}

/// Kill `encoder` and start a new one with `spawn`, as an encoder that
/// reconnects does: a new one that exits within 1.5 s was refused (the
/// relay may still hold the vanished one) and is retried for up to 12 s.
pub async fn restart_encoder(
    mut encoder: tokio::process::Child,
    spawn: impl Fn() -> tokio::process::Child,
) -> tokio::process::Child {
    encoder.start_kill().expect("kill the encoder");
    let _ = encoder.wait().await;
    let retry_until = tokio::time::Instant::now() + Duration::from_secs(12);
    loop {
        let mut e = spawn();
        match tokio::time::timeout(Duration::from_millis(1500), e.wait()).await {
            Err(_) => return e, // still running: publishing
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < retry_until,
                    "the restarted encoder was never admitted"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Read `viewer` on until `n` fragments came after its "publisher gone"
/// message (the publisher left and a new one came back within the grace
/// period); fails if the viewer is closed. Returns those fragments' seqs.
pub async fn fragments_after_publisher_gone(viewer: &mut Ws, n: usize) -> Vec<u64> {
    let mut texts: Vec<serde_json::Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let later = |texts: &[serde_json::Value]| -> Vec<u64> {
        texts
            .iter()
            .skip_while(|t| !(t["type"] == "publisher" && t["state"] == "gone"))
            .filter(|t| t["type"] == "fragment")
            .filter_map(|t| t["seq"].as_u64())
            .collect()
    };
    while tokio::time::Instant::now() < deadline && later(&texts).len() < n {
        let r = ws_read(viewer, 1, Duration::from_secs(2)).await;
        texts.extend(r.texts);
        assert!(r.close.is_none(), "viewer closed: {:?}", r.close);
    }
    let seqs = later(&texts);
    assert!(
        seqs.len() >= n,
        "fragments after the restart: {}",
        seqs.len()
    );
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "seqs increase: {seqs:?}"
    );
    seqs
}

/// ffprobe on a live URL (HLS, DASH, …) for 2 s: the codecs it finds, once
/// each, and the H.264 frames it decoded.
pub async fn ffprobe_video_frames(url: &str) -> (Vec<String>, u64) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-read_intervals", "%+2"])
            .args(["-show_entries", "stream=codec_name,nb_read_frames"])
            .args(["-of", "csv=p=0", url])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ffprobe finished")
    .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // HLS lists its streams twice (under the program and alone): once each.
    let mut codecs: Vec<String> = Vec::new();
    let mut frames = 0;
    for line in text.lines() {
        let mut f = line.split(',');
        let Some(c) = f.next().filter(|c| !c.is_empty()) else {
            continue;
        };
        let n: u64 = f.next().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
        if c == "h264" {
            frames = frames.max(n);
        }
        if !codecs.iter().any(|k| k == c) {
            codecs.push(c.to_string());
        }
    }
    (codecs, frames)
}
