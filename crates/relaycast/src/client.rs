//! The command-line clients: `relaycast publish` (a file or stdin to a relay
//! over HTTP, WebSocket or TCP, paced at real time with `--re`, looped with
//! `--loop`, reconnecting with backoff) and `relaycast watch` (a stream to a
//! file or stdout).
//!
//! The publisher works on whole items (init, fragments), not raw bytes, so
//! that after a reconnect it starts the new connection with the init segment
//! and continues at a fragment boundary.

use crate::media::demo::Demo;
use crate::media::{Item, Splitter, SplitterConfig};
use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How to publish.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Pace fragments at real time by their decode times.
    pub re: bool,
    /// Loop the file forever (timestamps keep increasing).
    pub looped: bool,
    /// Publish key (`?key=` / `Authorization: Bearer`).
    pub key: Option<String>,
    /// Give up after this many failed connection attempts in a row (0 = never).
    pub max_retries: u32,
}

/// Where the input comes from.
pub enum Input {
    /// A file.
    File(std::path::PathBuf),
    /// Standard input.
    Stdin,
    /// Bytes already in memory (tests, load).
    Bytes(Bytes),
}

/// A source of items to publish, with the time each is due (µs since start).
enum Source {
    /// Read and split as it comes.
    Reader {
        reader: Box<dyn AsyncRead + Unpin + Send>,
        splitter: Splitter,
        eof: bool,
    },
    /// A whole file looped with rewritten timestamps.
    Looped { demo: Demo, n: u64 },
}

struct Due {
    item: Item,
    due_us: Option<u64>,
}

impl Source {
    async fn open(input: Input, looped: bool) -> anyhow::Result<Source> {
        if looped {
            let bytes = match input {
                Input::File(p) => Bytes::from(
                    tokio::fs::read(&p)
                        .await
                        .with_context(|| format!("reading {}", p.display()))?,
                ),
                Input::Bytes(b) => b,
                Input::Stdin => bail!("--loop needs a file, not stdin"),
            };
            let demo = Demo::from_bytes(&bytes).context("parsing the input for --loop")?;
            return Ok(Source::Looped { demo, n: 0 });
        }
        let reader: Box<dyn AsyncRead + Unpin + Send> = match input {
            Input::File(p) => Box::new(
                tokio::fs::File::open(&p)
                    .await
                    .with_context(|| format!("opening {}", p.display()))?,
            ),
            Input::Stdin => Box::new(tokio::io::stdin()),
            Input::Bytes(b) => Box::new(std::io::Cursor::new(b)),
        };
        Ok(Source::Reader {
            reader,
            splitter: Splitter::new(SplitterConfig::default()),
            eof: false,
        })
    }

    /// The current init segment (for reconnects).
    fn init(&self) -> Option<crate::media::Init> {
        match self {
            Source::Reader { splitter, .. } => splitter.init().cloned(),
            Source::Looped { demo, .. } => Some(demo.init().clone()),
        }
    }

    async fn next(&mut self) -> anyhow::Result<Option<Due>> {
        match self {
            Source::Looped { demo, n } => {
                if *n == 0 {
                    *n = 1;
                    return Ok(Some(Due {
                        item: Item::Init(demo.init().clone()),
                        due_us: Some(0),
                    }));
                }
                let (frag, due) = demo.fragment(*n - 1);
                *n += 1;
                let due = due + frag.duration_us();
                Ok(Some(Due {
                    item: Item::Fragment(frag),
                    due_us: Some(due),
                }))
            }
            Source::Reader {
                reader,
                splitter,
                eof,
            } => loop {
                if let Some(item) = splitter.next_item()? {
                    let due_us = match &item {
                        Item::Fragment(f) => Some(f.decode_time_us() + f.duration_us()),
                        Item::Init(_) => None,
                    };
                    return Ok(Some(Due { item, due_us }));
                }
                if *eof {
                    splitter.finish()?;
                    return Ok(None);
                }
                let mut buf = vec![0u8; 64 << 10];
                let n = reader.read(&mut buf).await.context("reading input")?;
                if n == 0 {
                    *eof = true;
                } else {
                    buf.truncate(n);
                    splitter.push_bytes(Bytes::from(buf));
                }
            },
        }
    }
}

/// Pacing by decode time: the first fragment after an init sets the origin.
struct Pacer {
    start: Instant,
    base_us: Option<u64>,
}

impl Pacer {
    async fn wait(&mut self, due: &Due) {
        let Some(due_us) = due.due_us else { return };
        let base = *self.base_us.get_or_insert(due_us);
        let target = self.start + Duration::from_micros(due_us.saturating_sub(base));
        // A jump of over 10 s (a new timeline) resets the clock rather than stalling.
        if target > Instant::now() + Duration::from_secs(10) {
            self.start = Instant::now();
            self.base_us = Some(due_us);
            return;
        }
        tokio::time::sleep_until(target).await;
    }
}

/// The relay refused the broadcast for a reason that retrying cannot fix
/// (a bad key, bytes that are not fMP4, a box or message over its limits):
/// `publish` stops instead of reconnecting.
#[derive(Debug, thiserror::Error)]
#[error("the relay refused the broadcast: {0}")]
pub struct Refused(pub String);

/// HTTP statuses that retrying cannot fix (409 "already live" can: the relay
/// may still hold our previous connection).
fn refused_status(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 413)
}

/// WebSocket close codes that retrying cannot fix (4009 "already live" and
/// 1001 "shutting down" can).
fn refused_close(code: u16) -> bool {
    matches!(code, 1003 | 1007 | 1008 | 1009)
}

type WsSink =
    futures_util::stream::SplitSink<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, Message>;

/// What a WebSocket publisher hears from the relay: its close frame and its
/// last text message (the summary).
#[derive(Debug, Default)]
struct WsHeard {
    close: Option<(u16, String)>,
    summary: String,
}

/// A connection to a relay that takes stream bytes.
enum Conn {
    Http {
        tx: mpsc::Sender<Bytes>,
        done: tokio::task::JoinHandle<anyhow::Result<(u16, String)>>,
    },
    Ws {
        sink: Box<WsSink>,
        /// Reads the relay's side of the socket; ends with what it heard.
        reader: tokio::task::JoinHandle<WsHeard>,
    },
    Tcp(TcpStream),
    Quic(crate::quic::client::PublishSession),
}

impl Conn {
    async fn connect(to: &url::Url, key: Option<&str>) -> anyhow::Result<Conn> {
        match to.scheme() {
            "http" | "https" => {
                let host = to.host_str().context("URL without host")?;
                let port = to.port_or_known_default().unwrap_or(80);
                let tcp = dial(to).await?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await?;
                tokio::spawn(conn);
                let (tx, rx) = mpsc::channel::<Bytes>(16);
                let body = http_body_util::StreamBody::new(
                    tokio_stream_from(rx)
                        .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))),
                );
                let mut req = hyper::Request::put(&to[url::Position::BeforePath..])
                    .header(hyper::header::HOST, format!("{host}:{port}"))
                    .header(hyper::header::CONTENT_TYPE, "video/mp4")
                    .header(hyper::header::USER_AGENT, "relaycast-publish");
                if let Some(k) = key {
                    req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {k}"));
                }
                let req = req.body(body)?;
                let done = tokio::spawn(async move {
                    let resp = sender.send_request(req).await?;
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await?.to_bytes();
                    Ok((status, String::from_utf8_lossy(&body).into_owned()))
                });
                Ok(Conn::Http { tx, done })
            }
            "ws" | "wss" => {
                let mut url = to.clone();
                if let Some(k) = key {
                    url.query_pairs_mut().append_pair("key", k);
                }
                let (ws, _) = tokio_tungstenite::client_async(url.as_str(), dial(&url).await?)
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                let (sink, mut stream) = ws.split();
                // The relay speaks only to refuse (a close frame with a code and
                // a reason) and to sum up at the end: listen all along.
                let reader = tokio::spawn(async move {
                    let mut heard = WsHeard::default();
                    while let Some(Ok(m)) = stream.next().await {
                        match m {
                            Message::Text(t) => heard.summary = t.to_string(),
                            Message::Close(f) => {
                                heard.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                                break;
                            }
                            _ => {}
                        }
                    }
                    heard
                });
                Ok(Conn::Ws {
                    sink: Box::new(sink),
                    reader,
                })
            }
            "tcp" => {
                let host = to.host_str().context("URL without host")?;
                let port = to.port().context("tcp:// URL without port")?;
                let mut tcp = TcpStream::connect((host, port))
                    .await
                    .with_context(|| format!("connecting to {host}:{port}"))?;
                tcp.set_nodelay(true)?;
                if let Some(k) = key {
                    // Raw TCP carries the key as a first line (see ingest::tcp).
                    use tokio::io::AsyncWriteExt;
                    tcp.write_all(format!("KEY {k}\n").as_bytes()).await?;
                }
                Ok(Conn::Tcp(tcp))
            }
            "quic" => {
                let url = crate::quic::QuicUrl::parse(to.as_str())?;
                let client = crate::quic::client::Client::new()?;
                Ok(Conn::Quic(client.publish(&url, key).await?))
            }
            s => bail!("unsupported scheme {s:?}: use http(s)://, ws(s)://, tcp:// or quic://"),
        }
    }

    async fn send(&mut self, bytes: Bytes) -> anyhow::Result<()> {
        match self {
            Conn::Http { tx, done } => {
                if tx.send(bytes).await.is_err() {
                    // The request ended: the relay answered (an error) or the connection broke.
                    return Err(match done.await {
                        Ok(Ok((status, body))) if refused_status(status) => {
                            Refused(format!("HTTP {status}: {}", body.trim())).into()
                        }
                        Ok(Ok((status, body))) => {
                            anyhow::anyhow!("relay answered {status}: {body}")
                        }
                        Ok(Err(e)) => e,
                        Err(e) => anyhow::anyhow!("{e}"),
                    });
                }
                Ok(())
            }
            Conn::Ws { sink, reader } => {
                let sent = if reader.is_finished() {
                    Err(anyhow::anyhow!("the relay closed the connection"))
                } else {
                    sink.send(Message::Binary(bytes)).await.map_err(Into::into)
                };
                let Err(e) = sent else { return Ok(()) };
                // Why: the relay's close frame, if it sent one.
                let heard = tokio::time::timeout(Duration::from_secs(1), reader).await;
                match heard {
                    Ok(Ok(WsHeard {
                        close: Some((code, reason)),
                        ..
                    })) => {
                        if refused_close(code) {
                            Err(Refused(format!("close {code}: {reason}")).into())
                        } else {
                            Err(anyhow::anyhow!(
                                "relay closed the connection: {code} {reason}"
                            ))
                        }
                    }
                    _ => Err(e),
                }
            }
            Conn::Tcp(t) => Ok(t.write_all(&bytes).await?),
            Conn::Quic(q) => Ok(q.send(bytes).await?),
        }
    }

    async fn finish(self) -> anyhow::Result<String> {
        match self {
            Conn::Http { tx, done } => {
                drop(tx);
                let (status, body) = done.await??;
                if refused_status(status) {
                    return Err(Refused(format!("HTTP {status}: {}", body.trim())).into());
                }
                if status != 200 {
                    bail!("relay answered {status}: {body}");
                }
                Ok(body)
            }
            Conn::Ws { mut sink, reader } => {
                sink.close().await.ok();
                let heard = tokio::time::timeout(Duration::from_secs(5), reader)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                match heard.close {
                    Some((code, reason)) if refused_close(code) => {
                        Err(Refused(format!("close {code}: {reason}")).into())
                    }
                    Some((code, reason)) if code != 1000 => {
                        bail!("relay closed the connection: {code} {reason}")
                    }
                    _ => Ok(heard.summary),
                }
            }
            Conn::Tcp(mut t) => {
                t.shutdown().await.ok();
                Ok(String::new())
            }
            Conn::Quic(q) => Ok(q.finish().await?),
        }
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Publish `input` to `to` until the input ends (never, with `--loop`).
/// Returns the relay's summary of the last connection.
pub async fn publish(to: &str, input: Input, opts: PublishOptions) -> anyhow::Result<String> {
    let url = url::Url::parse(to).with_context(|| format!("bad URL {to:?}"))?;
    let mut source = Source::open(input, opts.looped).await?;
    let mut pacer = Pacer {
        start: Instant::now(),
        base_us: None,
    };
    let mut conn: Option<Conn> = None;
    let mut failures = 0u32;
    let mut pending: Option<Due> = None;
    loop {
        let due = match pending.take() {
            Some(d) => d,
            None => match source.next().await? {
                Some(d) => d,
                None => break,
            },
        };
        if opts.re {
            pacer.wait(&due).await;
        }
        if conn.is_none() {
            match Conn::connect(&url, opts.key.as_deref()).await {
                Ok(mut c) => {
                    // A new connection starts with the init segment.
                    let init_first = match (&due.item, source.init()) {
                        (Item::Fragment(_), Some(init)) => c.send(init.bytes).await,
                        _ => Ok(()),
                    };
                    if let Err(e) = init_first {
                        if e.downcast_ref::<Refused>().is_some() {
                            return Err(e.context(format!("publishing to {to}")));
                        }
                        tracing::warn!(error = %e, "publish: connection failed");
                    } else {
                        if failures > 0 {
                            tracing::info!(to, "publish: reconnected");
                        }
                        failures = 0;
                        conn = Some(c);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "publish: cannot connect"),
            }
            if conn.is_none() {
                failures += 1;
                if opts.max_retries > 0 && failures >= opts.max_retries {
                    bail!("giving up after {failures} failed connection attempts to {to}");
                }
                let backoff = Duration::from_millis(250 * 2u64.pow(failures.min(5)));
                tokio::time::sleep(backoff.min(Duration::from_secs(5))).await;
                pending = Some(due);
                continue;
            }
        }
        let bytes = match &due.item {
            Item::Init(i) => i.bytes.clone(),
            Item::Fragment(f) => f.bytes.clone(),
        };
        if let Some(c) = conn.as_mut()
            && let Err(e) = c.send(bytes).await
        {
            if e.downcast_ref::<Refused>().is_some() {
                return Err(e.context(format!("publishing to {to}")));
            }
            tracing::warn!(error = %e, "publish: connection lost; reconnecting");
            conn = None;
            failures += 1;
            if opts.max_retries > 0 && failures >= opts.max_retries {
                return Err(e.context(format!("publishing to {to}")));
            }
            if matches!(due.item, Item::Fragment(_)) {
                // Resend this fragment on the next connection, after the init.
                pending = Some(due);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    match conn {
        Some(c) => c.finish().await,
        None => Ok(String::new()),
    }
}

/// A connection to a relay: plain TCP, or TLS for `https://` and `wss://`.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TCP to the URL's host and port, with TLS for `https://` and `wss://`
/// (trusting the system's roots and `RELAYCAST_CA_FILE`, see
/// [`crate::tls::client_connector`]).
async fn dial(url: &url::Url) -> anyhow::Result<Box<dyn Io>> {
    let host = url.host_str().context("URL without host")?;
    let port = url.port_or_known_default().context("URL without port")?;
    let tcp = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    tcp.set_nodelay(true)?;
    if !matches!(url.scheme(), "https" | "wss") {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .with_context(|| format!("bad TLS server name {host:?}"))?;
    let tls = crate::tls::client_connector()?
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {host}:{port}"))?;
    Ok(Box::new(tls))
}

/// Write a stream (`http(s)://…/live/NAME.mp4` or `ws(s)://…/live/NAME`) to `out`
/// until it ends.
pub async fn watch(
    from: &str,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    max_bytes: Option<u64>,
) -> anyhow::Result<u64> {
    watch_after(from, out, max_bytes, None).await
}

/// Like [`watch`], resuming after seq `after` when given; also takes
/// `quic://HOST:PORT/NAME[?fingerprint=HEX]`.
pub async fn watch_after(
    from: &str,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    max_bytes: Option<u64>,
    after: Option<u64>,
) -> anyhow::Result<u64> {
    let mut url = url::Url::parse(from).with_context(|| format!("bad URL {from:?}"))?;
    if url.scheme() == "quic" {
        return watch_quic(from, out, max_bytes, after).await;
    }
    if let Some(a) = after {
        url.query_pairs_mut().append_pair("after", &a.to_string());
    }
    let mut written = 0u64;
    match url.scheme() {
        "ws" | "wss" => {
            let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), dial(&url).await?)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            while let Some(m) = ws.next().await {
                match m? {
                    Message::Binary(b) => {
                        out.write_all(&b).await?;
                        written += b.len() as u64;
                    }
                    Message::Close(f) => {
                        if let Some(f) = f
                            && u16::from(f.code) != 1000
                        {
                            bail!(
                                "relay closed the stream: {} {}",
                                u16::from(f.code),
                                f.reason
                            );
                        }
                        break;
                    }
                    _ => {}
                }
                if max_bytes.is_some_and(|m| written >= m) {
                    break;
                }
            }
        }
        "http" | "https" => {
            let host = url.host_str().context("URL without host")?;
            let port = url.port_or_known_default().unwrap_or(80);
            let tcp = dial(&url).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let req = hyper::Request::get(&url[url::Position::BeforePath..])
                .header(hyper::header::HOST, format!("{host}:{port}"))
                .body(http_body_util::Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            if resp.status() != 200 {
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                bail!(
                    "relay answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    out.write_all(&data).await?;
                    written += data.len() as u64;
                }
                if max_bytes.is_some_and(|m| written >= m) {
                    break;
                }
            }
        }
        s => bail!("unsupported scheme {s:?}: use http(s)://, ws(s):// or quic://"),
    }
    out.flush().await?;
    Ok(written)
}

/// `relaycast watch quic://…`: write init and fragment bytes in order; a skip
/// continues at a keyframe, so the output stays a valid fMP4 stream.
async fn watch_quic(
    from: &str,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    max_bytes: Option<u64>,
    after: Option<u64>,
) -> anyhow::Result<u64> {
    use crate::quic::client::{Client, WatchEvent, WatchOptions};
    let url = crate::quic::QuicUrl::parse(from)?;
    let client = Client::new()?;
    let opts = WatchOptions {
        after,
        ..WatchOptions::default()
    };
    let mut session = client.watch(&url, opts).await?;
    tracing::info!(
        next_seq = session.hello().next_seq,
        resumed = session.hello().resumed,
        "watch: joined"
    );
    let mut written = 0u64;
    loop {
        match session.next().await? {
            WatchEvent::Init { bytes, .. } | WatchEvent::Fragment { bytes, .. } => {
                out.write_all(&bytes).await?;
                written += bytes.len() as u64;
            }
            WatchEvent::Skip { from, to } => {
                tracing::warn!(from, to, "watch: skipped forward (too slow)")
            }
            WatchEvent::Publisher(live) => tracing::info!(live, "watch: publisher"),
            WatchEvent::End { code, reason } => {
                use crate::quic::code::{DONE, PUBLISHER_GONE};
                if code != DONE && code != PUBLISHER_GONE {
                    out.flush().await?;
                    bail!("relay ended the stream: {reason} (code {code})");
                }
                break;
            }
        }
        if max_bytes.is_some_and(|m| written >= m) {
            session.close(crate::quic::code::DONE, "enough");
            break;
        }
    }
    out.flush().await?;
    Ok(written)
}
