//! RTMP and RTMPS ingest: what OBS, ffmpeg, GStreamer and hardware encoders
//! publish by default (`rtmp://HOST:PORT/live` + stream key). The FLV audio
//! and video messages are remuxed to CMAF by the sans-IO
//! [`crate::media::remux::flv`] and the resulting fMP4 bytes go through the
//! one ingest loop, [`IngestSession::run`](super::IngestSession::run), like
//! every other transport: same admission, limits, metrics
//! (`transport="rtmp"`), logs and grace period.
//!
//! The RTMP protocol itself (handshake, chunk stream, AMF0 commands,
//! acknowledgements, window sizes) is `rml_rtmp`'s sans-IO `ServerSession`;
//! this adapter owns the socket, answers its events, and adds what the crate
//! leaves to the server: the application check, the stream key → name/key
//! mapping, a cap on the chunk size a client may announce, and `onStatus`
//! refusals. The crate answers a rejected request with an `_error` command;
//! encoders built on librtmp (OBS) only stop on an `onStatus` with level
//! `error`, so a refusal sends both (see `docs/protocol.md`, "RTMP").
//!
//! Stream key: `NAME`, `NAME?key=KEY`, or — where `[ingest.keys]` gives one
//! exact stream name that key — the key alone.

use super::IngestSession;
use crate::Error;
use crate::app::AppState;
use crate::config::IngestConfig;
use crate::fanout::Ingest;
use crate::limits::Reason;
use crate::media::remux::cmaf::MuxerConfig;
use crate::media::remux::flv::{FlvRemuxer, TAG_AUDIO, TAG_VIDEO};
use crate::proto::code::rtmp as code;
use bytes::Bytes;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use rml_rtmp::time::RtmpTimestamp;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::Instrument;

/// The chunk size the relay sends with (it announces it at connect).
const OUT_CHUNK_SIZE: u32 = 4096;
/// Bytes read from the socket at once.
const READ_BUF: usize = 64 << 10;
/// The message stream id `rml_rtmp` gives the first `createStream` (the one
/// a publisher publishes on); a refusal's `onStatus` goes there.
const PUBLISH_STREAM_ID: u32 = 1;

/// Accept RTMP (or, with `tls`, RTMPS) publishers on `listener` until shutdown.
pub async fn run(listener: TcpListener, tls: Option<Arc<crate::tls::Tls>>, app: AppState) {
    let scheme = if tls.is_some() { "rtmps" } else { "rtmp" };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = app.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "{scheme} ingest accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let span = tracing::info_span!("ingest", %peer, transport = scheme);
        tokio::spawn(
            async move {
                let guard = match app.limits.connection(peer.ip()) {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "RTMP connection refused");
                        return;
                    }
                };
                let Some(tls) = tls else {
                    return connection(tcp, peer, &app, guard).await;
                };
                let timeout = app.limits.config().header_read_timeout;
                match tokio::time::timeout(timeout, tls.acceptor().accept(tcp)).await {
                    Ok(Ok(io)) => connection(io, peer, &app, guard).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "RTMPS TLS handshake failed"),
                    Err(_) => {
                        app.limits.refused.count(Reason::HeaderTimeout);
                        tracing::debug!(%peer, "RTMPS TLS handshake timed out");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// One RTMP connection, from the handshake to the close.
async fn connection<IO>(io: IO, peer: SocketAddr, app: &AppState, _guard: crate::limits::ConnGuard)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let idle = app.config.ingest.idle_timeout;
    let start = async {
        let mut io = io;
        let leftover = handshake(&mut io).await?;
        let mut conn = Conn::new(io, peer, &app.config.ingest)?;
        conn.input(&leftover)?;
        Ok::<_, Error>(conn)
    };
    let mut conn = tokio::select! {
        c = tokio::time::timeout(idle, start) => match c {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "RTMP handshake failed");
                return;
            }
            Err(_) => {
                app.limits.refused.count(Reason::PublisherIdle);
                tracing::info!(%peer, "RTMP handshake not done within {idle:?}");
                return;
            }
        },
        _ = app.shutdown.cancelled() => return,
    };
    // Until a publish is admitted: answer connect/createStream/…, refuse
    // what this relay does not serve. Bounded by the idle timeout.
    let (name, mut session) = loop {
        let ev = tokio::select! {
            e = tokio::time::timeout(idle, conn.next_event()) => e,
            _ = app.shutdown.cancelled() => return,
        };
        let ev = match ev {
            Err(_) => {
                let e = app
                    .limits
                    .refused
                    .refuse(Reason::PublisherIdle, format!("no publish within {idle:?}"));
                tracing::info!(%peer, error = %e, "RTMP connection closed before publishing");
                return conn.close_with(None, &e).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "RTMP connection failed before publishing");
                return conn.close_with(None, &e).await;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(ev))) => ev,
        };
        match ev {
            Event::Publish {
                request_id,
                stream_key,
            } => {
                let (name, key) = stream_key_to_name(&app.config.ingest, &stream_key);
                match super::admit(app, Ingest::Rtmp, &name, key.as_deref(), Some(peer)).await {
                    Ok(session) => {
                        if let Err(e) = conn.accept(request_id) {
                            tracing::warn!(stream = %name, %peer, error = %e, "RTMP publish accept");
                            return;
                        }
                        break (name, session);
                    }
                    Err(e) => {
                        tracing::warn!(
                            stream = %name, %peer, error = %e, code = e.rtmp_code(),
                            "RTMP publish refused"
                        );
                        return conn.close_with(Some(request_id), &e).await;
                    }
                }
            }
            other => conn.refuse_other(other),
        }
    };
    tracing::info!(stream = %name, %peer, "RTMP publisher connected");
    let result = publish(&mut conn, &mut session, app).await;
    let summary = session.summary(result.as_ref().err());
    match &result {
        Ok(()) => tracing::info!(
            stream = %name, %peer, fragments = summary.fragments, "RTMP publisher finished"
        ),
        Err(Error::Shutdown) => {
            // Not the encoder's fault: a `status` (not `error`) onStatus, so
            // that encoders reconnect (OBS stops only on level `error`).
            tracing::info!(stream = %name, %peer, "RTMP publisher told: relay shutting down");
            let bye = command_packet(
                PUBLISH_STREAM_ID,
                "onStatus",
                "status",
                code::UNPUBLISH_SUCCESS,
                "the relay is shutting down; publish again to the restarted relay",
            );
            conn.close_after(bye.unwrap_or_default()).await;
        }
        Err(e) => {
            tracing::warn!(stream = %name, %peer, error = %e, code = e.rtmp_code(), "RTMP publisher failed");
            if !matches!(e, Error::Io(_)) {
                conn.close_with(None, e).await;
            }
        }
    }
}

/// The publish phase: the connection as a source of fMP4 bytes for the one
/// ingest loop.
async fn publish<IO>(
    conn: &mut Conn<IO>,
    session: &mut IngestSession,
    app: &AppState,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let source = futures_util::stream::unfold(conn, |c| async move {
        c.next_fmp4().await.map(|item| (item, c))
    });
    let mut source = Box::pin(source);
    session.run(&mut source, app).await
}

/// What the protocol session asks the adapter to decide or carry.
#[derive(Debug)]
enum Event {
    /// `publish(stream key)` on a created stream.
    Publish { request_id: u32, stream_key: String },
    /// `connect` to an application other than the configured one.
    WrongApp { request_id: u32, app_name: String },
    /// `play`: this relay does not serve viewers over RTMP.
    Play { request_id: u32 },
    /// An audio or video message: (FLV tag type, timestamp ms, body).
    Tag(u8, u32, Bytes),
    /// `FCUnpublish` / `deleteStream` / `closeStream`: the publish ended.
    Finished,
}

/// The connection: socket, `rml_rtmp` session, remux.
struct Conn<IO> {
    io: IO,
    peer: SocketAddr,
    session: ServerSession,
    /// Session results not processed yet, in order.
    queue: VecDeque<ServerSessionResult>,
    buf: Vec<u8>,
    app_name: String,
    max_chunk_size: u32,
    remux: FlvRemuxer,
    /// fMP4 pieces ready for the ingest loop.
    out: VecDeque<Bytes>,
    /// The publish ended (or the socket closed): the remux was flushed.
    finished: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    fn new(io: IO, peer: SocketAddr, config: &IngestConfig) -> Result<Self, Error> {
        let mut sc = ServerSessionConfig::new();
        sc.chunk_size = OUT_CHUNK_SIZE;
        let (session, initial) = ServerSession::new(sc).map_err(protocol)?;
        Ok(Conn {
            io,
            peer,
            session,
            queue: initial.into(),
            buf: vec![0; READ_BUF],
            app_name: config.rtmp.app.clone(),
            max_chunk_size: config.rtmp.max_chunk_size,
            remux: FlvRemuxer::new(MuxerConfig {
                max_fragment_us: config.rtmp.fragment_ms.saturating_mul(1000),
                ..MuxerConfig::default()
            }),
            out: VecDeque::new(),
            finished: false,
        })
    }

    /// Hand received bytes to the protocol session.
    fn input(&mut self, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let results = self.session.handle_input(data).map_err(protocol)?;
        self.queue.extend(results);
        Ok(())
    }

    /// Write what the session queued and return the next event that needs
    /// the adapter; reads the socket when the queue is empty. `None`: the
    /// client closed the connection.
    async fn next_event(&mut self) -> Result<Option<Event>, Error> {
        loop {
            let mut wrote = false;
            while let Some(r) = self.queue.pop_front() {
                match r {
                    ServerSessionResult::OutboundResponse(p) => {
                        self.io.write_all(&p.bytes).await?;
                        wrote = true;
                    }
                    ServerSessionResult::UnhandleableMessageReceived(m) => {
                        tracing::debug!(type_id = m.type_id, "RTMP message ignored");
                    }
                    ServerSessionResult::RaisedEvent(ev) => {
                        if let Some(ev) = self.event(ev)? {
                            if wrote {
                                self.io.flush().await?;
                            }
                            return Ok(Some(ev));
                        }
                    }
                }
            }
            if wrote {
                self.io.flush().await?;
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            let results = self
                .session
                .handle_input(&self.buf[..n])
                .map_err(protocol)?;
            self.queue.extend(results);
        }
    }

    /// Handle one session event: answer what needs no decision, return the rest.
    fn event(&mut self, ev: ServerSessionEvent) -> Result<Option<Event>, Error> {
        Ok(match ev {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                // Some encoders append the query of the server URL to the app.
                let app = app_name.split('?').next().unwrap_or_default();
                if app.trim_end_matches('/') == self.app_name {
                    let r = self.session.accept_request(request_id).map_err(protocol)?;
                    self.queue.extend(r);
                    None
                } else {
                    Some(Event::WrongApp {
                        request_id,
                        app_name,
                    })
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => Some(Event::Publish {
                request_id,
                stream_key,
            }),
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                Some(Event::Play { request_id })
            }
            ServerSessionEvent::ClientChunkSizeChanged { new_chunk_size } => {
                if new_chunk_size > self.max_chunk_size {
                    return Err(Error::BadRequest(format!(
                        "RTMP chunk size {new_chunk_size} is over the {}-byte limit",
                        self.max_chunk_size
                    )));
                }
                None
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                // onMetaData says which tracks come: the first fragment waits
                // (bounded) for both sequence headers.
                let video = metadata.video_codec_id.is_some() || metadata.video_width.is_some();
                let audio = metadata.audio_codec_id.is_some()
                    || metadata.audio_sample_rate.is_some()
                    || metadata.audio_channels.is_some();
                if video || audio {
                    self.remux.muxer().expect(video, audio);
                }
                None
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => Some(Event::Tag(TAG_VIDEO, timestamp.value, data)),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => Some(Event::Tag(TAG_AUDIO, timestamp.value, data)),
            ServerSessionEvent::PublishStreamFinished { .. } => Some(Event::Finished),
            ServerSessionEvent::UnhandleableAmf0Command {
                command_name,
                transaction_id,
                additional_values,
                ..
            } => {
                // Not in rml_rtmp: answered as nginx-rtmp and SRS do —
                // `releaseStream` and `FCPublish` get a `_result`, `FCPublish`
                // also an `onFCPublish` status, `FCUnpublish` an
                // `onFCUnpublish`. Encoders do not wait for these, but some
                // (and their logs) look for them. Anything else
                // (getStreamLength…) gets no answer.
                let key = additional_values.iter().find_map(|v| match v {
                    Amf0Value::Utf8String(k) => Some(k.split('?').next().unwrap_or_default()),
                    _ => None,
                });
                let stream = key.unwrap_or_default();
                let answers = match command_name.as_str() {
                    "releaseStream" => vec![result_packet(transaction_id)],
                    "FCPublish" => vec![
                        result_packet(transaction_id),
                        command_packet(
                            0,
                            "onFCPublish",
                            "status",
                            code::PUBLISH_START,
                            &format!("FCPublish to stream {stream}"),
                        ),
                    ],
                    "FCUnpublish" => vec![command_packet(
                        0,
                        "onFCUnpublish",
                        "status",
                        code::UNPUBLISH_SUCCESS,
                        &format!("FCUnpublish of stream {stream}"),
                    )],
                    _ => {
                        tracing::debug!(command = %command_name, "RTMP command without an answer");
                        Vec::new()
                    }
                };
                for bytes in answers.into_iter().flatten() {
                    self.queue.push_back(ServerSessionResult::OutboundResponse(
                        rml_rtmp::chunk_io::Packet {
                            bytes,
                            can_be_dropped: false,
                        },
                    ));
                }
                (command_name == "FCUnpublish").then_some(Event::Finished)
            }
            _ => None,
        })
    }

    fn accept(&mut self, request_id: u32) -> Result<(), Error> {
        let r = self.session.accept_request(request_id).map_err(protocol)?;
        self.queue.extend(r);
        Ok(())
    }

    /// Refuse a request the relay does not serve (another application, a
    /// play, a second publish); the results go out with the next write.
    fn refuse_other(&mut self, ev: Event) {
        let peer = self.peer;
        let (request_id, status, why) = match ev {
            Event::WrongApp {
                request_id,
                app_name,
            } => (
                request_id,
                code::CONNECT_REJECTED,
                format!(
                    "unknown RTMP application {app_name:?}: publish to rtmp://HOST:PORT/{}",
                    self.app_name
                ),
            ),
            Event::Play { request_id } => (
                request_id,
                code::PLAY_FAILED,
                "this relay takes publishers over RTMP; watch at http(s)://HOST:PORT/live/NAME.mp4 or /watch/NAME".to_string(),
            ),
            Event::Publish { request_id, .. } => (
                request_id,
                code::PUBLISH_BAD_NAME,
                "already publishing on this connection".to_string(),
            ),
            Event::Tag(..) | Event::Finished => return,
        };
        tracing::warn!(%peer, code = status, reason = %why, "RTMP request refused");
        if let Ok(r) = self.session.reject_request(request_id, status, &why) {
            self.queue.extend(r);
        }
        if let Some(p) = status_packet(0, status, &why) {
            self.queue.push_back(ServerSessionResult::OutboundResponse(
                rml_rtmp::chunk_io::Packet {
                    bytes: p,
                    can_be_dropped: false,
                },
            ));
        }
    }

    /// The next fMP4 bytes for the ingest loop; `None` when the publish ended.
    async fn next_fmp4(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some(Ok(b));
            }
            if self.finished {
                return None;
            }
            let ev = match self.next_event().await {
                Err(e) => return Some(Err(e)),
                Ok(ev) => ev,
            };
            match ev {
                Some(Event::Tag(kind, ms, body)) => {
                    if let Err(e) = self.remux.push_tag(kind, ms, body) {
                        return Some(Err(Error::Media(e.into())));
                    }
                }
                None | Some(Event::Finished) => {
                    self.remux.finish();
                    self.finished = true;
                }
                Some(other) => self.refuse_other(other),
            }
            while let Some(o) = self.remux.poll() {
                self.out.push_back(o.bytes().clone());
            }
        }
    }

    /// Tell the client why it is refused or cut off — the session's
    /// `_error` answer to `request_id` when there is one, and an `onStatus`
    /// with level `error`, the [`Error::rtmp_code`] and the reason — then
    /// close gracefully: shut down our side and read (and drop) what the
    /// client still sends for a moment, so it reads the status before the
    /// connection goes.
    async fn close_with(&mut self, request_id: Option<u32>, e: &Error) {
        let why = e.to_string();
        let mut bytes = Vec::new();
        while let Some(r) = self.queue.pop_front() {
            if let ServerSessionResult::OutboundResponse(p) = r {
                bytes.extend_from_slice(&p.bytes);
            }
        }
        if let Some(id) = request_id
            && let Ok(results) = self.session.reject_request(id, e.rtmp_code(), &why)
        {
            for r in results {
                if let ServerSessionResult::OutboundResponse(p) = r {
                    bytes.extend_from_slice(&p.bytes);
                }
            }
        }
        if let Some(p) = status_packet(PUBLISH_STREAM_ID, e.rtmp_code(), &why) {
            bytes.extend_from_slice(&p);
        }
        self.close_after(bytes).await;
    }

    /// Write `bytes` (after what the session still queued), then close
    /// gracefully: shut down our side and read (and drop) what the client
    /// still sends for a moment, so it reads them before the connection goes.
    async fn close_after(&mut self, last: Vec<u8>) {
        let mut bytes = Vec::new();
        while let Some(r) = self.queue.pop_front() {
            if let ServerSessionResult::OutboundResponse(p) = r {
                bytes.extend_from_slice(&p.bytes);
            }
        }
        bytes.extend_from_slice(&last);
        let io = &mut self.io;
        let bye = async {
            io.write_all(&bytes).await?;
            io.flush().await?;
            io.shutdown().await?;
            let mut sink = [0u8; 16 << 10];
            let mut left = 4usize << 20;
            while left > 0 {
                match io.read(&mut sink).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
    }
}

/// The RTMP handshake (C0/C1/C2 ↔ S0/S1/S2); returns the bytes that came
/// after it (the first chunks).
async fn handshake<IO>(io: &mut IO) -> Result<Vec<u8>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = Handshake::new(PeerType::Server);
    let mut buf = vec![0u8; 4096];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(Error::BadRequest(
                "connection closed during the RTMP handshake".into(),
            ));
        }
        match hs
            .process_bytes(&buf[..n])
            .map_err(|e| Error::BadRequest(format!("RTMP handshake: {e}")))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                io.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                io.write_all(&response_bytes).await?;
                io.flush().await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

fn protocol(e: impl std::fmt::Display) -> Error {
    Error::BadRequest(format!("RTMP: {e}"))
}

/// An `onStatus` command with level `error` on message stream `stream_id`.
fn status_packet(stream_id: u32, status: &str, description: &str) -> Option<Vec<u8>> {
    command_packet(stream_id, "onStatus", "error", status, description)
}

/// A status command (`onStatus`, `onFCPublish`, …) with an info object of
/// `level`, `code` and `description` on message stream `stream_id`, as
/// chunk bytes with a full (type 0) header, so that it reads correctly
/// whatever the session sent before it on the same chunk stream.
fn command_packet(
    stream_id: u32,
    command: &str,
    level: &str,
    status: &str,
    description: &str,
) -> Option<Vec<u8>> {
    let info: HashMap<String, Amf0Value> = [
        ("level", level),
        ("code", status),
        ("description", description),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Amf0Value::Utf8String(v.to_string())))
    .collect();
    serialize(
        stream_id,
        RtmpMessage::Amf0Command {
            command_name: command.into(),
            transaction_id: 0.0,
            command_object: Amf0Value::Null,
            additional_arguments: vec![Amf0Value::Object(info)],
        },
    )
}

/// `_result` for transaction `txn` with no values (null, undefined), what
/// nginx-rtmp and SRS answer `releaseStream` and `FCPublish` with.
fn result_packet(txn: f64) -> Option<Vec<u8>> {
    serialize(
        0,
        RtmpMessage::Amf0Command {
            command_name: "_result".into(),
            transaction_id: txn,
            command_object: Amf0Value::Null,
            additional_arguments: vec![Amf0Value::Undefined],
        },
    )
}

/// One message as chunk bytes with a full (type 0) header.
fn serialize(stream_id: u32, msg: RtmpMessage) -> Option<Vec<u8>> {
    let mut ser = ChunkSerializer::new();
    ser.set_max_chunk_size(OUT_CHUNK_SIZE, RtmpTimestamp::new(0))
        .ok()?;
    let payload = msg
        .into_message_payload(RtmpTimestamp::new(0), stream_id)
        .ok()?;
    ser.serialize(&payload, true, false).ok().map(|p| p.bytes)
}

/// The stream name and publish key an RTMP stream key stands for:
///
/// - `NAME?key=KEY` (other query parameters are ignored): NAME with KEY;
/// - a stream key without `?` that is the key `[ingest.keys]` gives exactly
///   one stream name (an exact name, not a pattern): that name, with the
///   stream key as its key (OBS's single "Stream Key" field);
/// - anything else: the stream key is the name, without a key.
///
/// Keys are compared in constant time, every configured key each time.
pub fn stream_key_to_name(config: &IngestConfig, stream_key: &str) -> (String, Option<String>) {
    use subtle::ConstantTimeEq;
    if let Some((name, query)) = stream_key.split_once('?') {
        let key = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned());
        return (name.to_string(), key);
    }
    let mut found: Option<&str> = None;
    let mut matches = 0u32;
    for (name, key) in &config.keys {
        let hit: bool = key.as_bytes().ct_eq(stream_key.as_bytes()).into();
        if hit && !name.contains(['*', '?']) {
            matches += 1;
            found = Some(name);
        }
    }
    match found {
        Some(name) if matches == 1 => (name.to_string(), Some(stream_key.to_string())),
        _ => (stream_key.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_map_to_names() {
        let mut c = IngestConfig::default();
        c.keys.insert("studio".into(), "s3cret-studio".into());
        c.keys.insert("team-*".into(), "s3cret-team".into());
        c.keys.insert("a".into(), "shared".into());
        c.keys.insert("b".into(), "shared".into());
        let m = |k: &str| stream_key_to_name(&c, k);
        assert_eq!(m("cam1"), ("cam1".into(), None));
        assert_eq!(m("cam1?key=k%201&x=y"), ("cam1".into(), Some("k 1".into())));
        assert_eq!(m("cam1?x=y"), ("cam1".into(), None));
        assert_eq!(
            m("s3cret-studio"),
            ("studio".into(), Some("s3cret-studio".into()))
        );
        // A pattern's key names no one stream; a key shared by two names is ambiguous.
        assert_eq!(m("s3cret-team"), ("s3cret-team".into(), None));
        assert_eq!(m("shared"), ("shared".into(), None));
    }

    #[test]
    fn status_packet_is_a_full_header_chunk() {
        let p = status_packet(1, code::PUBLISH_DENIED, "wrong key").expect("packet");
        // fmt 0 (top two bits 00), message type 20 (AMF0 command) at byte 7.
        assert_eq!(p[0] >> 6, 0);
        assert_eq!(p[7], 20);
        let text = String::from_utf8_lossy(&p);
        assert!(text.contains("onStatus") && text.contains("NetStream.Publish.Denied"));
    }
}
