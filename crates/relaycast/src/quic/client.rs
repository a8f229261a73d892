//! The client side of `relaycast/1`: publish a byte stream, or watch a
//! stream as a sequence of [`WatchEvent`]s. Used by `relaycast publish` /
//! `relaycast watch` and by cascade edges pulling from their origins.

use super::{
    MediaFrame, Op, QuicError, QuicUrl, Request, Response, client_config, code, read_control,
    read_media, write_control,
};
use crate::proto::control::{Control, PublisherState};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long connecting and the request/response exchange may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client endpoint (one UDP socket per address family), shared by the
/// sessions of one process.
#[derive(Clone, Debug)]
pub struct Client {
    v4: quinn::Endpoint,
    v6: Option<quinn::Endpoint>,
}

impl Client {
    /// Bind the client sockets.
    pub fn new() -> Result<Client, QuicError> {
        let v4 = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        let v6 = quinn::Endpoint::client(SocketAddr::from(([0u16; 8], 0))).ok();
        Ok(Client { v4, v6 })
    }

    /// Connect to the relay of `url`.
    pub async fn connect(&self, url: &QuicUrl) -> Result<quinn::Connection, QuicError> {
        self.connect_with(url, super::tls::RECEIVE_WINDOW).await
    }

    /// Connect with a flow-control window of `receive_window` bytes.
    pub async fn connect_with(
        &self,
        url: &QuicUrl,
        receive_window: u32,
    ) -> Result<quinn::Connection, QuicError> {
        let where_ = format!("{}:{}", url.host, url.port);
        let connect_err = |why: String| QuicError::Connect {
            addr: where_.clone(),
            why,
        };
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| connect_err(e.to_string()))?
            .next()
            .ok_or_else(|| connect_err("the name has no address".into()))?;
        let endpoint = match (addr, &self.v6) {
            (SocketAddr::V6(_), Some(v6)) => v6,
            (SocketAddr::V6(_), None) => return Err(connect_err("IPv6 is not available".into())),
            (SocketAddr::V4(_), _) => &self.v4,
        };
        let connecting = endpoint
            .connect_with(
                client_config(url.fingerprint, receive_window)?,
                addr,
                &url.host,
            )
            .map_err(|e| connect_err(e.to_string()))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(connect_err(e.to_string())),
            Err(_) => Err(connect_err(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }

    async fn request(
        &self,
        url: &QuicUrl,
        req: &Request,
        receive_window: u32,
    ) -> Result<
        (
            quinn::Connection,
            quinn::SendStream,
            quinn::RecvStream,
            Response,
        ),
        QuicError,
    > {
        let conn = self.connect_with(url, receive_window).await?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(QuicError::from_connection)?;
            write_control(&mut send, req).await?;
            let resp: Option<Response> = read_control(&mut recv).await?;
            Ok::<_, QuicError>((send, recv, resp))
        };
        let (send, recv, resp) = match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                conn.close(quinn::VarInt::from_u32(code::DONE), b"no answer");
                return Err(QuicError::Protocol(format!(
                    "no answer to the request within {CONNECT_TIMEOUT:?}"
                )));
            }
        };
        match resp {
            Some(r) if r.ok => Ok((conn, send, recv, r)),
            Some(r) => Err(QuicError::Closed {
                code: r.code,
                reason: r.error.unwrap_or_else(|| "refused".into()),
            }),
            None => Err(match conn.close_reason() {
                Some(e) => QuicError::from_connection(e),
                None => QuicError::Protocol("the relay sent no answer".into()),
            }),
        }
    }

    /// Start publishing `name` (the URL's path when `None`).
    pub async fn publish(
        &self,
        url: &QuicUrl,
        key: Option<&str>,
    ) -> Result<PublishSession, QuicError> {
        let name = url.name.clone().ok_or_else(|| QuicError::Url {
            url: url.base.clone(),
            why: "no stream name: use quic://HOST:PORT/NAME".into(),
        })?;
        let req = Request {
            op: Op::Publish,
            name,
            key: key.map(str::to_string),
            after: None,
            wait: None,
            role: None,
            exp: None,
            sig: None,
        };
        let (conn, send, recv, _) = self.request(url, &req, super::tls::RECEIVE_WINDOW).await?;
        Ok(PublishSession { conn, send, recv })
    }

    /// Start watching `name`.
    pub async fn watch(
        &self,
        url: &QuicUrl,
        opts: WatchOptions,
    ) -> Result<WatchSession, QuicError> {
        let name = match opts.name.clone().or_else(|| url.name.clone()) {
            Some(n) => n,
            None => {
                return Err(QuicError::Url {
                    url: url.base.clone(),
                    why: "no stream name: use quic://HOST:PORT/NAME".into(),
                });
            }
        };
        let req = Request {
            op: Op::Watch,
            name,
            key: None,
            after: opts.after,
            wait: opts.wait.or(url.wait),
            role: opts.edge.then(|| "edge".to_string()),
            exp: url.signed.as_ref().map(|s| s.0),
            sig: url.signed.as_ref().map(|s| s.1.clone()),
        };
        let window = opts.receive_window.unwrap_or(super::tls::RECEIVE_WINDOW);
        let (conn, _send, mut recv, hello) = self.request(url, &req, window).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match read_control::<serde_json::Value>(&mut recv).await {
                    Ok(Some(v)) => {
                        // A message type this client does not know is skipped.
                        let Ok(c) = serde_json::from_value::<Control>(v) else {
                            continue;
                        };
                        if tx.send(c).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
        let reader = Reader {
            conn: conn.clone(),
            _send,
            ctrl: rx,
            ctrl_open: true,
            group: None,
            groups_done: 0,
            end: None,
            last_init: None,
        };
        // Frames are read by a task of their own, so that `next` is
        // cancel-safe: a caller may race it against timers without ever
        // losing half a frame.
        let (events_tx, events) = mpsc::channel(16);
        tokio::spawn(reader.run(events_tx));
        Ok(WatchSession {
            conn,
            hello,
            events,
            finished: None,
        })
    }
}

/// What to watch and how.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// The stream (else the URL's path).
    pub name: Option<String>,
    /// Resume after this seq.
    pub after: Option<u64>,
    /// Wait this many seconds for a stream that has not started.
    pub wait: Option<f64>,
    /// This is a relay pulling the stream (cascade).
    pub edge: bool,
    /// Flow-control window in bytes (default 8 MiB): how far the relay may
    /// send ahead of what has been read.
    pub receive_window: Option<u32>,
}

/// A publish session: send the byte stream, then [`finish`](Self::finish).
pub struct PublishSession {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl PublishSession {
    /// Send the next bytes of the stream.
    pub async fn send(&mut self, bytes: Bytes) -> Result<(), QuicError> {
        match self.send.write_chunk(bytes).await {
            Ok(()) => Ok(()),
            Err(e) => Err(match self.conn.close_reason() {
                Some(c) => QuicError::from_connection(c),
                None => e.into(),
            }),
        }
    }

    /// End the stream; returns the relay's summary (JSON).
    pub async fn finish(mut self) -> Result<String, QuicError> {
        self.send
            .finish()
            .map_err(|e| QuicError::Protocol(format!("finishing the stream: {e}")))?;
        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            read_control::<serde_json::Value>(&mut self.recv),
        )
        .await;
        let result = match summary {
            Ok(Ok(Some(v))) if v.get("ok").and_then(|o| o.as_bool()) == Some(false) => {
                Err(QuicError::Closed {
                    code: v["code"].as_u64().unwrap_or(0) as u32,
                    reason: v["error"].as_str().unwrap_or("refused").to_string(),
                })
            }
            Ok(Ok(Some(v))) => Ok(v.to_string()),
            Ok(Ok(None)) => Ok(String::new()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(QuicError::Protocol("no summary from the relay".into())),
        };
        self.conn
            .close(quinn::VarInt::from_u32(code::DONE), b"published");
        result
    }
}

/// What a watch session yields, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// An init segment (only when it differs from the previous one).
    Init {
        /// The init version on the relay.
        version: u64,
        /// ftyp + moov.
        bytes: Bytes,
    },
    /// A fragment.
    Fragment {
        /// Stream-wide seq.
        seq: u64,
        /// Opens a group.
        keyframe: bool,
        /// Arrival time at the sending relay, Unix ms.
        t_ms: u64,
        /// The fragment bytes.
        bytes: Bytes,
    },
    /// The relay skipped this viewer forward (it fell behind).
    Skip {
        /// Seq expected next.
        from: u64,
        /// Seq it continues at.
        to: u64,
    },
    /// The publisher left (`false`) or came back (`true`).
    Publisher(bool),
    /// The session is over: `code` is one of [`code`], `reason` says why.
    End {
        /// Application code.
        code: u32,
        /// Reason.
        reason: String,
    },
}

/// A watch session. Dropping it leaves (closes the connection).
pub struct WatchSession {
    conn: quinn::Connection,
    hello: Response,
    events: mpsc::Receiver<Result<WatchEvent, QuicError>>,
    finished: Option<(u32, String)>,
}

impl Drop for WatchSession {
    fn drop(&mut self) {
        self.conn
            .close(quinn::VarInt::from_u32(code::DONE), b"viewer left");
    }
}

impl WatchSession {
    /// The relay's answer (epoch, seq space, next seq, resumed).
    pub fn hello(&self) -> &Response {
        &self.hello
    }

    /// Round-trip time of the connection.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Leave.
    pub fn close(&self, code: u32, reason: &str) {
        super::close(&self.conn, code, reason);
    }

    /// The next event. After `End`, every call returns `End` again.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<WatchEvent, QuicError> {
        if let Some((code, reason)) = &self.finished {
            return Ok(WatchEvent::End {
                code: *code,
                reason: reason.clone(),
            });
        }
        match self.events.recv().await {
            Some(Ok(WatchEvent::End { code, reason })) => {
                self.finished = Some((code, reason.clone()));
                Ok(WatchEvent::End { code, reason })
            }
            Some(ev) => ev,
            None => Err(QuicError::Protocol(
                "the watch session's reader stopped".into(),
            )),
        }
    }
}

/// Reads a watch session's group streams in order and its control frames.
struct Reader {
    conn: quinn::Connection,
    /// Kept open: finishing it would tell the relay we are gone.
    _send: quinn::SendStream,
    ctrl: mpsc::Receiver<Control>,
    ctrl_open: bool,
    group: Option<quinn::RecvStream>,
    groups_done: u64,
    /// (code, reason, groups) from the relay's end message.
    end: Option<(u32, String, u64)>,
    last_init: Option<Bytes>,
}

impl Reader {
    async fn run(mut self, tx: mpsc::Sender<Result<WatchEvent, QuicError>>) {
        loop {
            let ev = self.next().await;
            let last = matches!(ev, Ok(WatchEvent::End { .. }) | Err(_));
            if tx.send(ev).await.is_err() || last {
                return;
            }
        }
    }

    fn on_control(&mut self, v: Control) -> Option<WatchEvent> {
        match v {
            Control::Skip { from, to, .. } => Some(WatchEvent::Skip { from, to }),
            Control::Publisher { state } => {
                Some(WatchEvent::Publisher(state == PublisherState::Back))
            }
            Control::End {
                reason,
                code,
                groups,
                ..
            } => {
                self.end = Some((code.unwrap_or(0), reason, groups.unwrap_or(0)));
                None
            }
            _ => None,
        }
    }

    fn on_error(&mut self, e: QuicError) -> Result<WatchEvent, QuicError> {
        match e {
            QuicError::Closed { code, reason } => Ok(WatchEvent::End { code, reason }),
            e => Err(e),
        }
    }

    async fn next(&mut self) -> Result<WatchEvent, QuicError> {
        loop {
            if let Ok(v) = self.ctrl.try_recv()
                && let Some(ev) = self.on_control(v)
            {
                return Ok(ev);
            }
            if let Some(group) = self.group.as_mut() {
                match read_media(group).await {
                    Ok(Some(MediaFrame::Init { version, bytes })) => {
                        if self.last_init.as_ref() != Some(&bytes) {
                            self.last_init = Some(bytes.clone());
                            return Ok(WatchEvent::Init { version, bytes });
                        }
                    }
                    Ok(Some(MediaFrame::Fragment {
                        seq,
                        keyframe,
                        t_ms,
                        bytes,
                    })) => {
                        return Ok(WatchEvent::Fragment {
                            seq,
                            keyframe,
                            t_ms,
                            bytes,
                        });
                    }
                    // The group ended, or the relay abandoned it (we skip): next group.
                    Ok(None) | Err(QuicError::Reset(_)) => {
                        self.group = None;
                        self.groups_done += 1;
                    }
                    Err(e) => return self.on_error(e),
                }
                continue;
            }
            if let Some((code, reason, groups)) = &self.end
                && self.groups_done >= *groups
            {
                let (code, reason) = (*code, reason.clone());
                super::close(&self.conn, code::DONE, "done");
                return Ok(WatchEvent::End { code, reason });
            }
            tokio::select! {
                uni = self.conn.accept_uni() => match uni {
                    Ok(s) => self.group = Some(s),
                    Err(e) => return self.on_error(QuicError::from_connection(e)),
                },
                v = self.ctrl.recv(), if self.ctrl_open => match v {
                    Some(v) => {
                        if let Some(ev) = self.on_control(v) {
                            return Ok(ev);
                        }
                    }
                    None => self.ctrl_open = false,
                },
            }
        }
    }
}
