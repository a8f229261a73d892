//! WebSocket viewers: `GET /live/{name}` with `Upgrade: websocket`.
//!
//! Binary messages are exactly the stored init and fragment bytes; text
//! messages are JSON control (see `docs/protocol.md`; `?meta=0` leaves out
//! the per-fragment one). Events that are ready together are written as one
//! batch with one vectored write.
//!
//! Why this adapter frames WebSocket itself instead of using axum's
//! `WebSocket` (tungstenite): a viewer only ever *sends* whole messages whose
//! payloads are already shared `Bytes`, and tungstenite copies every payload
//! into a per-connection write buffer that keeps its largest size for the life
//! of the connection (a 1 s fragment at 2.5 Mbit/s left ~310 KiB behind on
//! every viewer; see `benches/RESULTS.md`). Here a frame is a header of at most
//! 10 bytes written next to the shared payload with `write_vectored`: no copy
//! in user space, nothing retained between batches. The client side of the
//! protocol a viewer needs is small: answer pings, honour close, drop anything
//! else (viewers have nothing to say; messages over 64 KiB close the
//! connection with 1009). What the client sends is read by the sans-IO
//! [`ws::Reader`], every rule of RFC 6455 §5 checked (1002, 1007, 1009 with a
//! reason; a valid close code echoed), out of a fixed buffer per viewer.

mod direct;

pub use direct::{WriterCounts, WriterMetrics, writer_counts};

use super::{Transport, WatchQuery, event_parts, hello, meta_box_header};
use crate::app::AppState;
use crate::fanout::{EndReason, Event, Viewer, ViewerStart};
use crate::limits::Counted;
use crate::proto::ws;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::io::IoSlice;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// Most events written in one batch.
const BATCH: usize = 64;
/// Largest client message accepted (viewers send nothing of use).
const MAX_CLIENT_MESSAGE: u64 = 64 << 10;
/// Smallest read buffer: a whole control frame (14 + 125 bytes) must fit.
const MIN_READ_BUFFER: usize = 256;

pub use crate::app::ws::{Upgrade, upgrade};

/// Answer the upgrade and serve one viewer on the upgraded connection.
pub async fn serve(
    app: AppState,
    name: String,
    q: WatchQuery,
    peer: Option<std::net::SocketAddr>,
    up: Upgrade,
) -> Response {
    let wait = app.wait_for(q.wait);
    let read_buffer = app.config.egress.ws_read_buffer.max(MIN_READ_BUFFER);
    up.spawn_in_span(move |io, span| async move {
        // Plain TCP (an HTTP/1.1 upgrade): the connection itself, which a
        // fan-out writer can write to; anything else stays behind hyper's
        // upgrade.
        match io.into_inner().downcast::<TokioIo<Counted<TcpStream>>>() {
            Ok(parts) => {
                let mut conn = Conn::new(parts.io.into_inner(), read_buffer);
                // What the client sent right after its request, copied: the
                // bytes share hyper's whole read buffer, which must not live
                // as long as the session.
                conn.client.preload(&parts.read_buf);
                drop(parts.read_buf);
                session(conn, app, name, q, wait, peer, span).await
            }
            Err(up) => {
                let conn = Conn::new(TokioIo::new(up), read_buffer);
                session(conn, app, name, q, wait, peer, span).await
            }
        }
    })
}

/// Admits the viewer and serves it, or closes with the reason it was refused.
async fn session<IO: Wire>(
    mut conn: Conn<IO>,
    app: AppState,
    name: String,
    q: WatchQuery,
    wait: Duration,
    peer: Option<std::net::SocketAddr>,
    span: tracing::Span,
) {
    use tracing::Instrument;
    let start = ViewerStart {
        after: q.resume_after(&app.registry, &name),
        transport: Transport::WebSocket,
    };
    // (`admit` is boxed: its state does not stay in the session's.)
    let admitted = super::admit(&app, &name, &q, start, wait, peer)
        .instrument(span.clone())
        .await;
    match admitted {
        Ok(viewer) => {
            let framing = Framing::ws(q.meta.unwrap_or(1) != 0);
            spawn_run(conn, Box::new(viewer), app, framing, None, span)
        }
        Err(e) => {
            let reason = e.to_string();
            let bye = conn.close(e.ws_close_code(), &reason);
            let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        }
    }
}

/// Serves an admitted HTTP streaming viewer (`GET /live/{name}.mp4`) on a
/// plain HTTP/1.1 connection the server took before hyper saw it
/// (`server::stream_h1`): `head` is the response head, then the body is
/// chunked and written like a WebSocket viewer's messages, by the viewer's
/// task until it has caught up and by a fan-out writer after that.
pub(crate) fn spawn_http_stream(
    tcp: Counted<TcpStream>,
    viewer: Box<Viewer>,
    app: AppState,
    meta: bool,
    head: Bytes,
    span: tracing::Span,
) {
    let mut conn = Conn::new(tcp, MIN_READ_BUFFER);
    conn.client.discard = true;
    spawn_run(conn, viewer, app, Framing::chunked(meta), Some(head), span);
}

/// What the client's frames asked for.
#[derive(Debug, PartialEq, Eq)]
enum FromClient {
    /// Nothing to do yet.
    Nothing,
    /// Answer with a pong carrying this payload.
    Ping(Bytes),
    /// The client closed (the code to echo) or broke the protocol (the code
    /// and reason to close with; then linger).
    Close(u16, &'static str),
}

/// Reads client frames out of a small buffer with [`ws::Reader`]. The
/// buffer starts at [`MIN_READ_BUFFER`] (a whole control frame fits; data
/// frames are consumed piece by piece) and doubles, up to the configured
/// size, only when a read fills it (a client that sends a lot then needs
/// fewer reads): viewers send almost nothing, and a 4 KiB buffer per viewer
/// up front was memory per viewer for nothing (#15).
#[derive(Debug)]
struct ClientFrames {
    buf: Box<[u8]>,
    /// Largest size `buf` may grow to.
    max: usize,
    start: usize,
    end: usize,
    reader: ws::Reader,
    /// Not a WebSocket (an HTTP streaming viewer): what the client sends is
    /// read and dropped (it has nothing to say, and a request pipelined
    /// behind a never-ending response is never answered).
    discard: bool,
}

impl ClientFrames {
    fn new(len: usize) -> ClientFrames {
        let max = len.max(MIN_READ_BUFFER);
        ClientFrames {
            buf: vec![0; MIN_READ_BUFFER].into_boxed_slice(),
            max,
            start: 0,
            end: 0,
            reader: ws::Reader::new(MAX_CLIENT_MESSAGE),
            discard: false,
        }
    }

    /// Bytes the client sent before the session began (read with its
    /// request); the buffer grows to hold them.
    fn preload(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let len = self.buf.len().max(bytes.len().next_power_of_two());
        let mut buf = vec![0; len].into_boxed_slice();
        buf[..bytes.len()].copy_from_slice(bytes);
        self.buf = buf;
        self.start = 0;
        self.end = bytes.len();
    }

    /// The free space to read into (compacting first).
    fn space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`ClientFrames::space`]; a read that filled
    /// the buffer grows it.
    fn filled(&mut self, n: usize) {
        self.end += n;
        if self.end == self.buf.len() && self.buf.len() < self.max {
            let mut bigger = vec![0; (self.buf.len() * 2).min(self.max)].into_boxed_slice();
            bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
            self.buf = bigger;
        }
    }

    /// The bytes read but not consumed.
    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Takes one action out of the buffered bytes.
    fn next(&mut self) -> FromClient {
        if self.discard {
            self.start = self.end;
            return FromClient::Nothing;
        }
        loop {
            let s = self.reader.next(&mut self.buf[self.start..self.end]);
            let at = self.start;
            self.start += s.used;
            match s.event {
                None if s.used == 0 => return FromClient::Nothing,
                None | Some(ws::Event::Data { .. } | ws::Event::Pong) => {}
                Some(ws::Event::Ping(r)) => {
                    return FromClient::Ping(Bytes::copy_from_slice(
                        &self.buf[at + r.start..at + r.end],
                    ));
                }
                Some(ws::Event::Close(code)) => return FromClient::Close(code, ""),
                Some(ws::Event::Fail { code, reason }) => return FromClient::Close(code, reason),
            }
        }
    }
}

/// One batch of frames: headers in one buffer, payloads shared. It keeps
/// how far it has been written, so a batch a socket took only part of (the
/// fan-out writer's non-blocking write) is finished later by an awaiting one.
#[derive(Clone, Default)]
struct Frames {
    headers: BytesMut,
    /// (header range in `headers`, payload).
    parts: Vec<(usize, usize, Bytes)>,
    /// Pieces (header, payload, header, …) written whole.
    done: usize,
    /// Bytes written of the piece after them.
    offset: usize,
}

/// Slices per `writev` (a batch of one fragment needs 4).
const IOV: usize = 16;

/// How a viewer's events are framed on its connection: the writers build a
/// pass's frames once per framing in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Framing {
    /// WebSocket, without the JSON message per fragment (`?meta=0`).
    Ws = 0,
    /// WebSocket, a JSON text message before each binary one (the default).
    WsMeta = 1,
    /// An HTTP/1.1 chunked `video/mp4` body (HTTP streaming): the payloads.
    Chunked = 2,
    /// The same with every control message in a `free` box (`?meta=1`).
    ChunkedMeta = 3,
}

impl Framing {
    const ALL: [Framing; 4] = [
        Framing::Ws,
        Framing::WsMeta,
        Framing::Chunked,
        Framing::ChunkedMeta,
    ];

    /// A WebSocket (`meta`: the JSON message per fragment too).
    pub(crate) fn ws(meta: bool) -> Framing {
        if meta { Framing::WsMeta } else { Framing::Ws }
    }

    /// An HTTP streaming body (`meta`: control messages in `free` boxes).
    pub(crate) fn chunked(meta: bool) -> Framing {
        if meta {
            Framing::ChunkedMeta
        } else {
            Framing::Chunked
        }
    }

    fn is_ws(self) -> bool {
        matches!(self, Framing::Ws | Framing::WsMeta)
    }

    fn meta(self) -> bool {
        matches!(self, Framing::WsMeta | Framing::ChunkedMeta)
    }
}

impl Frames {
    fn push(&mut self, opcode: u8, payload: Bytes) {
        let a = self.headers.len();
        ws::put_header(&mut self.headers, opcode, payload.len(), None);
        self.parts.push((a, self.headers.len(), payload));
    }

    /// Bytes written as they are (an HTTP response head, the end of a
    /// chunk, the last chunk), shared, not copied.
    fn push_raw(&mut self, raw: Bytes) {
        let a = self.headers.len();
        self.parts.push((a, a, raw));
    }

    /// One HTTP/1.1 chunk (RFC 9112 §7.1) of `prefix` then `payload`; an
    /// empty one is left out (a chunk of size 0 ends the body).
    fn push_chunk(&mut self, prefix: &[u8], payload: Bytes) {
        let len = prefix.len() + payload.len();
        if len == 0 {
            return;
        }
        let a = self.headers.len();
        {
            use std::fmt::Write;
            let _ = write!(self.headers, "{len:x}\r\n");
        }
        self.headers.extend_from_slice(prefix);
        self.parts.push((a, self.headers.len(), payload));
        self.push_raw(Bytes::from_static(b"\r\n"));
    }

    /// Adds what a viewer is sent for `e`. A WebSocket: the JSON message (a
    /// fragment's only when `meta`, see `?meta=0`) and the binary payload,
    /// if any. An HTTP streaming body: the JSON in a `free` box when
    /// `meta`, and the payload, if any.
    fn push_event(&mut self, e: &Event, framing: Framing) {
        let (json, payload) = event_parts(e);
        if framing.is_ws() {
            if framing.meta() || !matches!(e, Event::Fragment(_)) {
                self.push(0x1, json);
            }
            if let Some(p) = payload {
                self.push(0x2, p);
            }
            return;
        }
        if framing.meta() && !json.is_empty() {
            self.push_chunk(&meta_box_header(json.len()), json);
        }
        if let Some(p) = payload {
            self.push_chunk(&[], p);
        }
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn piece(&self, i: usize) -> &[u8] {
        let (a, b, p) = &self.parts[i / 2];
        if i % 2 == 0 { &self.headers[*a..*b] } else { p }
    }

    /// The unwritten bytes as slices (at most [`IOV`], gathered on the
    /// stack: no allocation per write); returns how many.
    fn gather<'a>(&'a self, io: &mut [IoSlice<'a>; IOV]) -> usize {
        let mut k = 0;
        let mut i = self.done;
        while i < self.parts.len() * 2 && k < IOV {
            let p = self.piece(i);
            let p = if i == self.done { &p[self.offset..] } else { p };
            if !p.is_empty() {
                io[k] = IoSlice::new(p);
                k += 1;
            }
            i += 1;
        }
        k
    }

    /// `n` more bytes were written.
    fn advance(&mut self, mut n: usize) {
        while self.done < self.parts.len() * 2 {
            let left = self.piece(self.done).len() - self.offset;
            if n >= left {
                n -= left;
                self.done += 1;
                self.offset = 0;
            } else {
                self.offset += n;
                break;
            }
        }
    }

    /// Everything is written: empty the batch, keeping a small capacity.
    fn clear(&mut self) {
        self.parts.clear();
        self.parts.shrink_to(8);
        self.headers.clear();
        if self.headers.capacity() > 256 {
            self.headers = BytesMut::new();
        }
        self.done = 0;
        self.offset = 0;
    }

    /// Writes every frame with vectored writes, then clears the batch.
    /// Allocation-free in the steady state.
    async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        loop {
            let n = {
                let mut io = [IoSlice::new(&[]); IOV];
                let k = self.gather(&mut io);
                if k == 0 {
                    break;
                }
                w.write_vectored(&io[..k]).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        self.clear();
        w.flush().await
    }

    /// All its bytes, headers and payloads (of a batch not written from).
    fn len(&self) -> usize {
        self.headers.len() + self.parts.iter().map(|(_, _, p)| p.len()).sum::<usize>()
    }

    /// One non-blocking `sendmsg` of the unwritten pieces (at most [`IOV`]),
    /// retried when interrupted: the bytes written, `None` when the socket
    /// is full, `Some(0)` only when nothing is left to write.
    ///
    /// The socket is written directly, not through tokio's
    /// `try_write_vectored`, which first reads the socket's readiness in
    /// its own allocation: a cache miss per viewer per fragment for a
    /// socket that is writable nearly always. A full socket answers
    /// `WouldBlock` either way; tokio's readiness is then stale ("ready"),
    /// which costs the awaiting write that takes over one more try.
    fn send_once(&self, w: &tokio::net::tcp::OwnedWriteHalf) -> std::io::Result<Option<usize>> {
        let mut io = [IoSlice::new(&[]); IOV];
        let k = self.gather(&mut io);
        if k == 0 {
            return Ok(Some(0));
        }
        let sock = socket2::SockRef::from(w.as_ref());
        loop {
            match sock.send_vectored(&io[..k]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes a batch shared by many viewers without changing it (one
    /// [`Frames::send_once`]): `Ok(None)` when the socket took all of it,
    /// else `Ok(Some(rest))`, this viewer's own copy of what is left (finish
    /// it with `try_write` or `write_to`).
    fn try_write_shared(
        &self,
        w: &tokio::net::tcp::OwnedWriteHalf,
    ) -> std::io::Result<Option<Frames>> {
        Ok(self.rest_after(self.send_once(w)?.unwrap_or(0)))
    }

    /// What is left of a shared batch after `n` of its bytes were written
    /// (by [`Frames::send_once`] or a batched send): `None` when nothing.
    fn rest_after(&self, n: usize) -> Option<Frames> {
        if n == self.len() {
            return None;
        }
        let mut rest = self.clone();
        rest.advance(n);
        Some(rest)
    }

    /// Writes what the socket takes without waiting ([`Frames::send_once`]
    /// until done): `Ok(true)` when the whole batch is out (and cleared),
    /// `Ok(false)` when the socket is full (the rest stays for
    /// [`Frames::write_to`]).
    fn try_write(&mut self, w: &tokio::net::tcp::OwnedWriteHalf) -> std::io::Result<bool> {
        loop {
            match self.send_once(w)? {
                None => return Ok(false),
                Some(0) => break,
                Some(n) => self.advance(n),
            }
        }
        self.clear();
        Ok(true)
    }
}

/// The upgraded connection, with one owner: reads and writes never overlap
/// in a session (the loop below either waits for both, or writes), so it
/// needs no `tokio::io::split` halves (a lock and two handles per viewer).
struct Conn<IO> {
    io: IO,
    client: ClientFrames,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    fn new(io: IO, read_buffer: usize) -> Conn<IO> {
        Conn {
            io,
            client: ClientFrames::new(read_buffer),
        }
    }

    async fn send(&mut self, frames: &mut Frames) -> std::io::Result<()> {
        frames.write_to(&mut self.io).await
    }

    /// Sends a close frame and ends the connection.
    async fn close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        let mut f = Frames::default();
        f.push(ws::CLOSE, crate::app::ws::close_payload(code, reason));
        self.send(&mut f).await?;
        self.io.shutdown().await
    }

    /// Acts on the client frames read so far: pongs for pings go into
    /// `frames`; a close (or a protocol error) is answered here, and then
    /// the session is over (`false`).
    async fn answer_client(&mut self, frames: &mut Frames) -> bool {
        loop {
            match self.client.next() {
                FromClient::Nothing => return true,
                FromClient::Ping(p) => frames.push(0xA, p),
                FromClient::Close(code, reason) => {
                    // Boxed: the closing handshake happens once, at the
                    // end; its state need not be part of the session's.
                    Box::pin(self.answer_close(code, reason, reason.is_empty())).await;
                    return false;
                }
            }
        }
    }

    /// Answers the client's close (or its protocol error) with a close frame,
    /// then, after an error, reads and drops what it still sends for a while
    /// (a lingering close: closing with unread input resets the connection,
    /// and the reset discards the close frame the client has not read yet).
    async fn answer_close(&mut self, code: u16, reason: &str, client_closed: bool) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.close(code, reason)).await;
        if !client_closed {
            let buffered = self.client.buffered().to_vec();
            crate::app::ws::linger(&mut self.io, &mut self.client.reader, &buffered).await;
        }
    }
}

/// A viewer's connection. Over plain TCP it splits into halves a fan-out
/// writer can write to without waiting ([`direct`]); other connections
/// (TLS, a WebSocket over HTTP/2) are written by their own task throughout.
trait Wire: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Whether [`Wire::split`] can succeed.
    const DIRECT: bool;
    /// The read half and the writer's write half, or the connection as it was.
    fn split(self) -> Result<(OwnedReadHalf, direct::WriteHalf), Self>;
    /// The connection again, from its halves.
    fn join(rd: OwnedReadHalf, wr: direct::WriteHalf) -> Option<Self>;
}

impl Wire for TokioIo<Upgraded> {
    const DIRECT: bool = false;
    fn split(self) -> Result<(OwnedReadHalf, direct::WriteHalf), Self> {
        Err(self)
    }
    fn join(_: OwnedReadHalf, _: direct::WriteHalf) -> Option<Self> {
        None
    }
}

impl Wire for Counted<TcpStream> {
    const DIRECT: bool = true;
    fn split(self) -> Result<(OwnedReadHalf, direct::WriteHalf), Self> {
        Ok(self.into_split())
    }
    fn join(rd: OwnedReadHalf, wr: direct::WriteHalf) -> Option<Self> {
        wr.reunite(rd)
    }
}

/// A session's state between its stretches of writing.
struct State {
    /// Frames not (or not wholly) written yet.
    frames: Frames,
    /// The session's end, once an `End` event was taken (here or by the
    /// fan-out writer): the frames before it are written first.
    end: Option<EndReason>,
    /// Hand the viewer to a fan-out writer whenever it has caught up.
    direct: bool,
    /// The client sent something while a writer had the viewer: read it
    /// before handing the viewer over again.
    client_first: bool,
    /// How events are framed (WebSocket or HTTP streaming, with or
    /// without the control message per fragment).
    framing: Framing,
    /// Arrival times of the fragments in a batch, for the delivery-latency
    /// histogram (reused: no allocation per batch once it has grown to the
    /// largest batch; small at first, as most batches hold one fragment).
    arrived: Vec<std::time::Instant>,
}

/// How a stretch of writing ([`active`]) ended.
enum Step {
    /// Caught up, with nothing to write: a fan-out writer can take over.
    CaughtUp,
    /// The session ends for this reason (the frames before it are written).
    End(EndReason),
    /// The connection is gone (or closed): nothing more to send.
    Gone,
}

/// Serves an admitted viewer in a task of its own, so that what a viewer
/// costs for the length of its session is this task's state alone (#15):
/// the upgrade's task, with the request, the admission and the connection's
/// first bytes in its state, ends once it has spawned this one. The parts
/// of a session that run for a while only are boxed while they run: the
/// hello, each stretch this task writes itself ([`active`]) and the closing
/// frames. What stays is the block below; while a fan-out writer has the
/// viewer (most of its life) that is the read side of the connection and
/// [`direct::Handed`]. `-Zprint-type-sizes` measured the session's one
/// unboxed future at 4,768 bytes before (a 6 KiB allocation per viewer).
///
/// An HTTP streaming viewer ([`spawn_http_stream`]) is served the same way:
/// only the framing differs (`head`: its response head, written first).
fn spawn_run<IO: Wire>(
    mut conn: Conn<IO>,
    mut viewer: Box<Viewer>,
    app: AppState,
    framing: Framing,
    head: Option<Bytes>,
    span: tracing::Span,
) {
    tokio::spawn(async move {
        let end_log = super::EndLog::in_span(span);
        let mut st = State {
            frames: Frames::default(),
            end: None,
            direct: IO::DIRECT && app.config.egress.ws_direct_write,
            client_first: false,
            framing,
            arrived: Vec::with_capacity(4),
        };
        let started = Box::pin(async {
            if let Some(head) = head {
                st.frames.push_raw(head);
            }
            if framing.is_ws() {
                st.frames.push(0x1, hello(&viewer).to_bytes());
            } else if framing.meta() {
                let json = hello(&viewer).to_bytes();
                st.frames.push_chunk(&meta_box_header(json.len()), json);
            }
            // (Pongs for pings sent with the request go right after the hello.)
            conn.answer_client(&mut st.frames).await && conn.send(&mut st.frames).await.is_ok()
        })
        .await;
        if !started {
            return;
        }
        // One wait for the relay's shutdown for the whole session: a fresh
        // `cancelled()` per fragment registers in (and leaves) the token's one
        // waiter list, a lock shared by every viewer, twice per fragment.
        let shutdown = app.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let end = loop {
            let step = Box::pin(active(
                &mut conn,
                &mut viewer,
                &mut st,
                &app,
                shutdown.as_mut(),
            ))
            .await;
            match step {
                Step::End(r) => break r,
                Step::Gone => return,
                Step::CaughtUp => {}
            }
            // Caught up: the fan-out writer writes from here on, and gives
            // the viewer back when it needs this task.
            let Conn { io, client } = conn;
            let (rd, wr) = match io.split() {
                Ok(halves) => halves,
                Err(io) => {
                    conn = Conn { io, client };
                    st.direct = false;
                    continue;
                }
            };
            let per_writer = app.config.egress.ws_viewers_per_writer;
            let uring = app.config.egress.ws_uring;
            let (rd, back) = match direct::hand_over(rd, wr, viewer, st.framing, per_writer, uring)
            {
                Ok(mut handed) => {
                    let Some(back) = handed.wait(shutdown.as_mut()).await else {
                        return;
                    };
                    (handed.into_read_half(), back)
                }
                Err(refused) => *refused,
            };
            let direct::Back {
                viewer: v,
                wr,
                frames,
                end,
                why,
            } = back;
            let Some(io) = IO::join(rd, wr) else {
                return;
            };
            conn = Conn { io, client };
            viewer = v;
            st.frames = frames;
            st.end = end;
            match why {
                // Read what the client sent before going back.
                direct::Why::Asked => st.client_first = true,
                direct::Why::Refused => st.direct = false,
                _ => {}
            }
        };
        if end == EndReason::Lagging {
            tracing::info!(parent: &end_log.span, skips = viewer.total_skips(), "viewer disconnected: lagging");
        }
        let (meta, _) = event_parts(&Event::End(end));
        let code = match end {
            EndReason::PublisherGone => 1000,
            EndReason::Lagging => 4008,
            EndReason::Shutdown => 1001,
        };
        let bye = async {
            let mut f = Frames::default();
            if framing.is_ws() {
                f.push(0x1, meta);
                conn.send(&mut f).await?;
                return conn.close(code, end.message()).await;
            }
            // HTTP streaming: the end in a `free` box (with `?meta=1`), the
            // last chunk, and the connection closes (its head said so).
            if framing.meta() {
                f.push_chunk(&meta_box_header(meta.len()), meta);
            }
            f.push_raw(Bytes::from_static(b"0\r\n\r\n"));
            conn.send(&mut f).await?;
            conn.io.shutdown().await
        };
        // At shutdown a viewer may be slow to read (the whole relay is
        // draining): give it the shutdown deadline, not just a second.
        let bye_time = match end {
            EndReason::Shutdown => app.config.server.shutdown_timeout,
            _ => Duration::from_secs(1),
        };
        // Boxed, like the other stretches that run once (see above).
        let _ = Box::pin(tokio::time::timeout(bye_time, bye)).await;
    });
}

/// Writes the viewer's events from this task until it has caught up (when
/// a fan-out writer may take over), its session ends or its connection
/// goes. Boxed by its caller while it runs: its state (a write in
/// progress, the waits of `select!`) is not kept while a writer has the
/// viewer.
async fn active<IO: Wire, S: std::future::Future<Output = ()>>(
    conn: &mut Conn<IO>,
    viewer: &mut Viewer,
    st: &mut State,
    app: &AppState,
    mut shutdown: std::pin::Pin<&mut S>,
) -> Step {
    loop {
        st.arrived.clear();
        let mut ev = None;
        if st.frames.is_empty() && st.end.is_none() {
            ev = viewer.try_next();
            if ev.is_none() && st.direct && !st.client_first && !app.shutdown.is_cancelled() {
                return Step::CaughtUp;
            }
        }
        if ev.is_none() && st.frames.is_empty() && st.end.is_none() {
            ev = Some(tokio::select! {
                ev = viewer.next() => ev,
                n = conn.io.read(conn.client.space()) => {
                    st.client_first = false;
                    match n {
                        Ok(0) | Err(_) => return Step::Gone,
                        Ok(n) => conn.client.filled(n),
                    }
                    if !conn.answer_client(&mut st.frames).await {
                        return Step::Gone;
                    }
                    continue;
                },
                _ = shutdown.as_mut() => return Step::End(EndReason::Shutdown),
            });
        }
        let mut n = 0;
        while let Some(e) = ev.take() {
            if let Event::End(r) = e {
                st.end = Some(r);
                break;
            }
            if let Event::Fragment(c) = &e {
                st.arrived.push(c.arrived);
            }
            st.frames.push_event(&e, st.framing);
            n += 1;
            if n < BATCH {
                ev = viewer.try_next();
            }
        }
        if !st.frames.is_empty() {
            let send = conn.send(&mut st.frames);
            tokio::pin!(send);
            let ok = tokio::select! {
                r = &mut send => r.is_ok(),
                _ = shutdown.as_mut() => {
                    // Never cut a frame mid-write: the `end` and the close
                    // must start on a frame boundary, or the viewer reads
                    // garbage (#12 item 25). Finish the batch within the
                    // shutdown deadline; if the viewer cannot take it by
                    // then, drop the connection without another byte.
                    let deadline = app.config.server.shutdown_timeout;
                    return match tokio::time::timeout(deadline, send).await {
                        Ok(Ok(())) => Step::End(EndReason::Shutdown),
                        _ => Step::Gone,
                    };
                }
            };
            if !ok {
                return Step::Gone;
            }
        }
        let now = std::time::Instant::now();
        for &a in &st.arrived {
            viewer.wrote(a, now);
        }
        if let Some(r) = st.end {
            return Step::End(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![0x80 | opcode];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    fn feed(c: &mut ClientFrames, bytes: &[u8]) -> Vec<FromClient> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(5) {
            let space = c.space();
            space[..chunk.len()].copy_from_slice(chunk);
            c.end += chunk.len();
            loop {
                match c.next() {
                    FromClient::Nothing => break,
                    a => out.push(a),
                }
            }
        }
        out
    }

    #[test]
    fn client_frames_in_small_pieces() {
        let mut c = ClientFrames::new(MIN_READ_BUFFER);
        let mut bytes = client_frame(0x1, &[b'x'; 300]);
        bytes.extend(client_frame(0x9, b"hi"));
        bytes.extend(client_frame(0x2, b"ignored"));
        bytes.extend(client_frame(0x8, &[0x03, 0xe8]));
        assert_eq!(
            feed(&mut c, &bytes),
            vec![
                FromClient::Ping(Bytes::from_static(b"hi")),
                FromClient::Close(1000, "")
            ]
        );
    }

    #[test]
    fn client_buffer_starts_small_and_grows_when_a_read_fills_it() {
        let mut c = ClientFrames::new(1024);
        assert_eq!(c.buf.len(), MIN_READ_BUFFER, "no 4 KiB per viewer up front");
        let mut bytes = client_frame(0x2, &[b'x'; 900]);
        bytes.extend(client_frame(0x9, b"hi"));
        let mut at = 0;
        let mut sizes = Vec::new();
        let mut got = Vec::new();
        while at < bytes.len() {
            let space = c.space();
            let n = space.len().min(bytes.len() - at);
            space[..n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            c.filled(n);
            sizes.push(c.buf.len());
            loop {
                match c.next() {
                    FromClient::Nothing => break,
                    a => got.push(a),
                }
            }
        }
        assert_eq!(got, vec![FromClient::Ping(Bytes::from_static(b"hi"))]);
        assert_eq!(sizes[0], 2 * MIN_READ_BUFFER, "a full read doubles it");
        assert_eq!(*sizes.iter().max().unwrap_or(&0), 1024, "up to the limit");
    }

    #[test]
    fn unmasked_and_oversized_frames_close() {
        let mut c = ClientFrames::new(MIN_READ_BUFFER);
        assert_eq!(
            feed(&mut c, &[0x81, 0x01, b'x']),
            vec![FromClient::Close(1002, "client frames must be masked")]
        );
        let mut c = ClientFrames::new(MIN_READ_BUFFER);
        let mut big = vec![0x82, 0x80 | 127];
        big.extend_from_slice(&(1u64 << 20).to_be_bytes());
        big.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            feed(&mut c, &big),
            vec![FromClient::Close(1009, "message over the size limit")]
        );
    }

    #[test]
    fn frames_are_written_whole_through_partial_writes() {
        // A writer that takes at most 7 bytes per call.
        struct Slow(Vec<u8>);
        impl AsyncWrite for Slow {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let n = buf.len().min(7);
                self.0.extend_from_slice(&buf[..n]);
                std::task::Poll::Ready(Ok(n))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut f = Frames::default();
        f.push(0x1, Bytes::from_static(b"{}"));
        f.push(0x2, Bytes::from(vec![9u8; 300]));
        let mut w = Slow(Vec::new());
        rt.block_on(f.write_to(&mut w)).expect("written");
        let mut want = vec![0x81, 2, b'{', b'}', 0x82, 126, 1, 44];
        want.extend_from_slice(&[9u8; 300]);
        assert_eq!(w.0, want);
        assert!(f.is_empty());
    }
}
