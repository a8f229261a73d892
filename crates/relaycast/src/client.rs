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

/// QUIC application codes that retrying cannot fix (CONFLICT, LIMIT and
/// SHUTDOWN can).
fn refused_quic(code: u32) -> bool {
    use crate::quic::code as c;
    matches!(
        code,
        c::BAD_REQUEST | c::UNAUTHORIZED | c::FORBIDDEN | c::BAD_MEDIA | c::TOO_BIG
    )
}

/// A QUIC publish error as [`Refused`] when its code says retrying cannot fix it.
fn quic_error(e: crate::quic::QuicError) -> anyhow::Error {
    match &e {
        crate::quic::QuicError::Closed { code, reason } if refused_quic(*code) => {
            Refused(format!("QUIC code {code}: {reason}")).into()
        }
        _ => e.into(),
    }
}

/// What the relay said on a raw TCP publish connection: its `ERROR <status>
/// <reason>` line (see `ingest::tcp`) as an error, [`Refused`] when retrying
/// cannot fix it; `None` when it said nothing.
fn tcp_said(line: &str) -> Option<anyhow::Error> {
    let rest = line.trim().strip_prefix("ERROR ")?;
    let (status, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let status: u16 = status.parse().unwrap_or(0);
    Some(if refused_status(status) {
        Refused(format!("TCP ERROR {status}: {reason}")).into()
    } else {
        anyhow::anyhow!("relay answered ERROR {status}: {reason}")
    })
}

/// Read what the relay says on a raw TCP publish connection (at most a
/// line; nothing unless it refuses or cuts the publisher off) until it
/// closes.
fn tcp_listen(mut r: tokio::net::tcp::OwnedReadHalf) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut said = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if said.len() < 4096 {
                said.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&said).into_owned()
    })
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
    Tcp {
        w: tokio::net::tcp::OwnedWriteHalf,
        /// Reads the relay's side: ends with what it said (an `ERROR` line).
        reader: tokio::task::JoinHandle<String>,
    },
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
                let (r, w) = tcp.into_split();
                Ok(Conn::Tcp {
                    w,
                    reader: tcp_listen(r),
                })
            }
            "quic" => {
                let url = crate::quic::QuicUrl::parse(to.as_str())?;
                let client = crate::quic::client::Client::new()?;
                Ok(Conn::Quic(
                    client.publish(&url, key).await.map_err(quic_error)?,
                ))
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
            Conn::Tcp { w, reader } => {
                let sent = if reader.is_finished() {
                    Err(anyhow::anyhow!("the relay closed the connection"))
                } else {
                    w.write_all(&bytes).await.map_err(Into::into)
                };
                let Err(e) = sent else { return Ok(()) };
                // Why: the relay's ERROR line, if it sent one.
                match tokio::time::timeout(Duration::from_secs(1), reader).await {
                    Ok(Ok(line)) => Err(tcp_said(&line).unwrap_or(e)),
                    _ => Err(e),
                }
            }
            Conn::Quic(q) => q.send(bytes).await.map_err(quic_error),
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
            Conn::Tcp { mut w, reader } => {
                w.shutdown().await.ok();
                // The relay closes when it has taken the end of the stream;
                // an ERROR line before that says why it did not.
                match tokio::time::timeout(Duration::from_secs(5), reader).await {
                    Ok(Ok(line)) => match tcp_said(&line) {
                        Some(e) => Err(e),
                        None => Ok(String::new()),
                    },
                    _ => Ok(String::new()),
                }
            }
            Conn::Quic(q) => q.finish().await.map_err(quic_error),
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
                Err(e) if e.downcast_ref::<Refused>().is_some() => {
                    return Err(e.context(format!("publishing to {to}")));
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
        Some(c) => c
            .finish()
            .await
            .map_err(|e| e.context(format!("publishing to {to}"))),
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

/// The relay refused the viewer for a reason that reconnecting cannot fix
/// (bad name or signature, no such stream at the first try): `watch` stops
/// instead of reconnecting.
#[derive(Debug, thiserror::Error)]
#[error("the relay refused the viewer: {0}")]
pub struct ViewerRefused(pub String);

/// Where a watch is, across reconnections: the last whole fragment written
/// (to resume `after`), the stream life it belongs to, the init segment
/// written last (a reconnection writes it again only when it changed).
#[derive(Debug, Default)]
struct Resume {
    after: Option<u64>,
    epoch: Option<u64>,
    init: Option<Bytes>,
    written: u64,
    /// A session was joined at least once: a failure to connect is then a
    /// relay restarting (reconnect), not a wrong URL (exit).
    joined: bool,
}

impl Resume {
    /// Write one whole item: an init segment (skipped when it is the one
    /// written last) or fragment `seq`.
    async fn write(
        &mut self,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        bytes: &[u8],
        fragment: Option<u64>,
    ) -> anyhow::Result<()> {
        match fragment {
            None if self.init.as_deref() == Some(bytes) => return Ok(()),
            None => self.init = Some(Bytes::copy_from_slice(bytes)),
            Some(seq) => self.after = Some(seq),
        }
        out.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn full(&self, max_bytes: Option<u64>) -> bool {
        max_bytes.is_some_and(|m| self.written >= m)
    }
}

/// Like [`watch`], resuming after seq `after` when given; also takes
/// `quic://HOST:PORT/NAME[?fingerprint=HEX]`.
///
/// It ends when the stream ends (its publisher left for good), after
/// `max_bytes`, or with an error when the relay refuses the viewer
/// ([`ViewerRefused`]: a wrong name or signature, a stream that does not
/// exist at the first try) or the first connection fails. Anything else —
/// the relay restarting or shutting down, a connection cut, a lagging
/// viewer disconnected — reconnects with backoff and resumes after the last
/// whole fragment written (`after` and `epoch`, like the player), writing
/// the init segment again only when it changed.
pub async fn watch_after(
    from: &str,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    max_bytes: Option<u64>,
    after: Option<u64>,
) -> anyhow::Result<u64> {
    let url = url::Url::parse(from).with_context(|| format!("bad URL {from:?}"))?;
    let mut r = Resume {
        after,
        ..Resume::default()
    };
    let mut failures = 0u32;
    loop {
        let before = r.written;
        let leg = match url.scheme() {
            "quic" => watch_quic(from, out, max_bytes, &mut r).await,
            "ws" | "wss" => watch_ws(&url, out, max_bytes, &mut r).await,
            "http" | "https" => watch_http(&url, out, max_bytes, &mut r).await,
            s => bail!("unsupported scheme {s:?}: use http(s)://, ws(s):// or quic://"),
        };
        let e = match leg {
            Ok(()) => break,
            Err(e) if e.downcast_ref::<ViewerRefused>().is_some() => return Err(e),
            Err(e) if !r.joined => return Err(e),
            Err(e) => e,
        };
        failures = if r.written > before { 1 } else { failures + 1 };
        let backoff =
            Duration::from_millis(250 * 2u64.pow(failures.min(5))).min(Duration::from_secs(5));
        tracing::warn!(error = %format!("{e:#}"), after = ?r.after, ?backoff, "watch: connection lost; reconnecting");
        tokio::time::sleep(backoff).await;
    }
    out.flush().await?;
    Ok(r.written)
}

/// The URL of one leg of a watch: `after` and `epoch` to resume, and on a
/// reconnection a `wait` for a restarted relay whose publisher is not back yet.
fn leg_url(url: &url::Url, r: &Resume, extra: &[(&str, &str)]) -> url::Url {
    let mut url = url.clone();
    {
        let mut q = url.query_pairs_mut();
        if let Some(a) = r.after {
            q.append_pair("after", &a.to_string());
            if let Some(e) = r.epoch {
                q.append_pair("epoch", &e.to_string());
            }
        }
        if r.joined {
            q.append_pair("wait", "10");
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    url
}

/// WebSocket close codes and HTTP statuses a viewer cannot fix by
/// reconnecting (404 only before it ever joined: afterwards it is a
/// restarted relay whose publisher is not back yet).
fn viewer_refused_close(code: u16) -> bool {
    use crate::proto::code::ws;
    matches!(
        code,
        ws::PROTOCOL | ws::UNSUPPORTED | ws::INVALID_DATA | ws::POLICY
    )
}

fn viewer_refused_status(status: u16, joined: bool) -> bool {
    matches!(status, 400 | 401 | 403 | 410) || (status == 404 && !joined)
}

/// One control message's type and seq/epoch, as the relay sends them.
#[derive(Debug, serde::Deserialize)]
struct Heard {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    epoch: Option<u64>,
    /// `init`, `fragment`: the length of the binary item that follows.
    size: Option<u64>,
    /// `end`: the `relaycast/1` code of the reason.
    code: Option<u32>,
    /// `end`: the reason, for people.
    reason: Option<String>,
}

impl Heard {
    /// An `end` that says the stream is over (its publisher left), not
    /// "come back" (the viewer lagged, the relay is shutting down).
    fn stream_over(&self) -> bool {
        self.kind == "end"
            && self
                .code
                .is_none_or(|c| c == crate::quic::code::PUBLISHER_GONE)
    }
}

impl Heard {
    /// Parse a control message, taking in what a hello says (the epoch;
    /// the session was joined).
    fn parse(json: &[u8], r: &mut Resume) -> Option<Heard> {
        let h: Heard = serde_json::from_slice(json).ok()?;
        if h.kind == "hello" {
            if h.epoch.is_some() && h.epoch != r.epoch && r.epoch.is_some() {
                // A new life of the stream: its seqs mean nothing to the old one.
                tracing::info!(epoch = ?h.epoch, "watch: the stream restarted");
            }
            r.epoch = h.epoch;
            r.joined = true;
        }
        Some(h)
    }
}

async fn watch_ws(
    url: &url::Url,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    max_bytes: Option<u64>,
    r: &mut Resume,
) -> anyhow::Result<()> {
    let url = leg_url(url, r, &[]);
    let (mut ws, _) = match tokio_tungstenite::client_async(url.as_str(), dial(&url).await?).await {
        Ok(ws) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            if viewer_refused_status(status, r.joined) {
                return Err(ViewerRefused(format!("HTTP {status}: {}", body.trim())).into());
            }
            bail!("relay answered {status}: {}", body.trim());
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("connecting to {url}"))),
    };
    // The kind of the binary message that comes next (after its control).
    let mut next: Option<Heard> = None;
    while let Some(m) = ws.next().await {
        match m? {
            Message::Text(t) => {
                // `end` is followed by the close frame, whose code decides.
                let h = Heard::parse(t.as_bytes(), r);
                if h.as_ref()
                    .is_some_and(|h| h.kind == "init" || h.kind == "fragment")
                {
                    next = h;
                }
            }
            Message::Binary(b) => {
                let fragment = match next.take() {
                    Some(h) if h.kind == "fragment" => h.seq,
                    _ => None,
                };
                r.write(out, &b, fragment).await?;
                if r.full(max_bytes) {
                    return Ok(());
                }
            }
            Message::Close(f) => {
                let (code, reason) = f.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                if code == 1000 {
                    return Ok(());
                }
                if viewer_refused_close(code)
                    || (code == crate::proto::code::ws::NOT_FOUND && !r.joined)
                {
                    return Err(ViewerRefused(format!("close {code}: {reason}")).into());
                }
                bail!("relay closed the stream: {code} {reason}");
            }
            _ => {}
        }
    }
    bail!("the connection ended without a close frame")
}

/// Over HTTP the stream is asked for with `meta=1`: the relay's control
/// messages arrive in top-level `free` boxes between the items, which tell
/// where each item ends, its seq, and whether the stream ended (a body that
/// ends without an `end` message is a relay shutting down or a cut
/// connection: reconnect). The `free` boxes are not written out: the output
/// is the same bytes as without `meta`.
async fn watch_http(
    url: &url::Url,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    max_bytes: Option<u64>,
    r: &mut Resume,
) -> anyhow::Result<()> {
    let url = leg_url(url, r, &[("meta", "1")]);
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
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body);
        if viewer_refused_status(status, r.joined) {
            return Err(ViewerRefused(format!("HTTP {status}: {}", body.trim())).into());
        }
        bail!("relay answered {status}: {}", body.trim());
    }
    let mut body = resp.into_body();
    let mut acc = bytes::BytesMut::new();
    // The item being received (its control message) and its bytes so far.
    let mut item: Option<Heard> = None;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let data = match body.frame().await {
            None => break,
            Some(frame) => match frame?.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        acc.extend_from_slice(&data);
        while let Some(len) = whole_box(&acc)? {
            let b = acc.split_to(len);
            let json = meta_payload(&b);
            if json.is_none() && item.is_some() {
                pending.extend_from_slice(&b);
            }
            // An item ends when its `size` bytes are in (the control message
            // says), or at the next control message.
            let complete = match (&item, json) {
                (Some(_), Some(_)) => true,
                (Some(h), None) => h.size.is_some_and(|n| pending.len() as u64 >= n),
                (None, _) => false,
            };
            if complete && let Some(h) = item.take() {
                let seq = if h.kind == "fragment" { h.seq } else { None };
                r.write(out, &pending, seq).await?;
                pending.clear();
                if r.full(max_bytes) {
                    return Ok(());
                }
            }
            let Some(json) = json else { continue };
            let h = Heard::parse(json, r);
            if let Some(end) = h.as_ref().filter(|h| h.kind == "end") {
                if end.stream_over() {
                    return Ok(());
                }
                bail!(
                    "the relay ended the session: {}",
                    end.reason.as_deref().unwrap_or("")
                );
            }
            item = h.filter(|h| h.kind == "init" || h.kind == "fragment");
        }
    }
    // A clean end of the body between items: the relay is shutting down.
    if let Some(h) = item.take()
        && acc.is_empty()
    {
        let seq = if h.kind == "fragment" { h.seq } else { None };
        r.write(out, &pending, seq).await?;
    }
    bail!("the stream was cut off (no end message)")
}

/// The length of the whole box at the start of `buf`, when all of it is there.
fn whole_box(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let Some(h) = buf.get(..8) else {
        return Ok(None);
    };
    let size = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
    let size = match size {
        1 => match buf.get(8..16) {
            Some(l) => u64::from_be_bytes(l.try_into().unwrap_or_default()),
            None => return Ok(None),
        },
        0 => bail!("a box of unbounded size in a live stream"),
        s => s,
    };
    if !(8..=1 << 30).contains(&size) {
        bail!("a box of {size} bytes in the stream");
    }
    let size = usize::try_from(size)?;
    Ok((buf.len() >= size).then_some(size))
}

/// The JSON of a relay `free` box (`free` + `relaycast` + JSON), if `b` is one.
fn meta_payload(b: &[u8]) -> Option<&[u8]> {
    if b.get(4..8)? != b"free" {
        return None;
    }
    b.get(8..)?.strip_prefix(b"relaycast")
}

/// `relaycast watch quic://…`: write init and fragment bytes in order; a skip
/// continues at a keyframe, so the output stays a valid fMP4 stream.
async fn watch_quic(
    from: &str,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    max_bytes: Option<u64>,
    r: &mut Resume,
) -> anyhow::Result<()> {
    use crate::quic::client::{Client, WatchEvent, WatchOptions};
    use crate::quic::code;
    let url = crate::quic::QuicUrl::parse(from)?;
    let client = Client::new()?;
    let opts = WatchOptions {
        after: r.after,
        wait: r.joined.then_some(10.0),
        ..WatchOptions::default()
    };
    let mut session = match client.watch(&url, opts).await {
        Ok(s) => s,
        Err(crate::quic::QuicError::Closed { code: c, reason })
            if matches!(c, code::BAD_REQUEST | code::UNAUTHORIZED | code::FORBIDDEN)
                || (c == code::NOT_FOUND && !r.joined) =>
        {
            return Err(ViewerRefused(format!("QUIC code {c}: {reason}")).into());
        }
        Err(e) => return Err(e.into()),
    };
    r.joined = true;
    tracing::info!(
        next_seq = session.hello().next_seq,
        resumed = session.hello().resumed,
        "watch: joined"
    );
    loop {
        match session.next().await? {
            WatchEvent::Init { bytes, .. } => r.write(out, &bytes, None).await?,
            WatchEvent::Fragment { bytes, seq, .. } => r.write(out, &bytes, Some(seq)).await?,
            WatchEvent::Skip { from, to } => {
                tracing::warn!(from, to, "watch: skipped forward (too slow)")
            }
            WatchEvent::Publisher(live) => tracing::info!(live, "watch: publisher"),
            WatchEvent::End { code: c, reason } => {
                if c != code::DONE && c != code::PUBLISHER_GONE {
                    out.flush().await?;
                    bail!("relay ended the stream: {reason} (code {c})");
                }
                return Ok(());
            }
        }
        if r.full(max_bytes) {
            session.close(code::DONE, "enough");
            return Ok(());
        }
    }
}
