//! SRT ingest (`serve --srt ADDR`, UDP, listener mode): encoders publish
//! MPEG-TS, which the sans-IO [`crate::media::remux::ts`] remuxes to CMAF;
//! the fMP4 bytes go through the one ingest loop like every other
//! transport (admission, limits, metrics `transport="srt"`, logs, grace).
//!
//! The SRT protocol is `srt-tokio` (pure Rust; it interoperates with
//! ffmpeg's libsrt, AES included). The caller names the stream in its
//! `streamid`: `#!::r=NAME,m=publish` (the access-control form; `m=request`
//! is refused: viewers watch over HTTP) or plain `NAME`. Where NAME needs a
//! publish key, that key is the SRT passphrase: the relay accepts the
//! caller with it, so only a caller with the same passphrase completes the
//! handshake. A refused caller gets an SRT rejection whose code is
//! [`Error::srt_reject_code`] (2000 + the HTTP status: `SRT_REJX_*`).

use super::IngestSession;
use crate::Error;
use crate::app::AppState;
use crate::fanout::Ingest;
use crate::media::remux::cmaf::MuxerConfig;
use crate::media::remux::ts::TsRemuxer;
use bytes::Bytes;
use futures_util::StreamExt;
use srt_protocol::packet::{RejectReason, ServerRejectReason};
use srt_protocol::settings::KeySettings;
use srt_tokio::options::{KeySize, Passphrase};
use srt_tokio::{SrtListener, SrtSocket};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Bind the SRT listener on `addr` (port 0: any free port) and start
/// accepting callers; returns the bound address and the accept task.
pub async fn start(
    addr: SocketAddr,
    app: AppState,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let udp = tokio::net::UdpSocket::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {addr} (SRT ingest): {e}"))?;
    let bound = udp.local_addr()?;
    let latency = Duration::from_millis(app.config.ingest.srt.latency_ms);
    let (mut listener, mut incoming) = SrtListener::builder()
        .latency(latency)
        .socket(udp)
        .bind(bound)
        .await
        .map_err(|e| anyhow::anyhow!("SRT listener on {bound}: {e}"))?;
    let task = tokio::spawn(async move {
        loop {
            let req = tokio::select! {
                r = incoming.incoming().next() => r,
                _ = app.shutdown.cancelled() => break,
            };
            let Some(req) = req else { break };
            let peer = req.remote();
            let app = app.clone();
            let span = tracing::info_span!("ingest", %peer, transport = "srt");
            tokio::spawn(caller(req, app).instrument(span));
        }
        listener.close().await;
    });
    Ok((bound, task))
}

/// What a caller's `streamid` asks for: the stream name to publish.
///
/// `#!::r=NAME,m=publish` (keys in any order; `u=` and other keys are
/// ignored; `m` defaults to publish) or a plain `NAME`.
pub fn parse_stream_id(sid: Option<&str>) -> Result<String, Error> {
    let sid = sid.unwrap_or_default();
    let Some(body) = sid.strip_prefix("#!::") else {
        if sid.is_empty() {
            return Err(Error::BadRequest(
                "SRT streamid missing: use #!::r=NAME,m=publish or NAME".into(),
            ));
        }
        return Ok(sid.to_string());
    };
    let mut name = None;
    for pair in body.split(',') {
        match pair.split_once('=') {
            Some(("r", v)) => name = Some(v.to_string()),
            Some(("m", "publish")) => {}
            Some(("m", m)) => {
                return Err(Error::BadRequest(format!(
                    "SRT mode m={m} is not served: this relay takes publishers (m=publish); watch over HTTP"
                )));
            }
            _ => {}
        }
    }
    name.ok_or_else(|| Error::BadRequest(format!("SRT streamid {sid:?} has no r=NAME")))
}

/// The SRT rejection for an error.
fn reject_reason(e: &Error) -> RejectReason {
    use ServerRejectReason as S;
    let r = match e.http_status() {
        400 | 413 => S::BadRequest,
        401 => S::Unauthorized,
        403 => S::Forbidden,
        404 => S::Notfound,
        409 => S::Conflict,
        429 => S::Overload,
        503 => S::Down,
        _ => return RejectReason::ServerUnrecognized(e.srt_reject_code()),
    };
    RejectReason::Server(r)
}

/// One caller: admission, handshake, then the publish.
async fn caller(req: srt_tokio::ConnectionRequest, app: AppState) {
    let peer = req.remote();
    let sid = req.stream_id().map(|s| s.to_string());
    let caller_key_size = req.key_size();
    let admitted = async {
        let name = parse_stream_id(sid.as_deref())?;
        let key = app.config.ingest.key_for(&name).map(str::to_string);
        let keys = match &key {
            None => None,
            Some(k) => {
                if caller_key_size == KeySize::Unspecified {
                    // Counted and refused by the one key check: none was given.
                    super::authorize(&app, &name, None, Some(peer)).await?;
                }
                let passphrase = Passphrase::try_from(k.clone()).map_err(|_| {
                    Error::Internal(format!(
                        "the publish key of {name:?} cannot be an SRT passphrase (10 to 79 characters)"
                    ))
                })?;
                Some(KeySettings {
                    key_size: caller_key_size,
                    passphrase,
                })
            }
        };
        // The key is proved by the encrypted handshake, not presented in clear.
        super::authorize(&app, &name, key.as_deref(), Some(peer)).await?;
        // Refuse "already live" now, as an SRT rejection (2409) the caller
        // sees, rather than after the handshake.
        if app
            .registry
            .get(&name)
            .is_some_and(|s| !s.accepts_publisher())
        {
            return Err(Error::AlreadyLive(name));
        }
        Ok::<_, Error>((name, keys))
    };
    let (name, keys) = match admitted.await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%peer, streamid = ?sid, error = %e, code = e.srt_reject_code(), "SRT caller refused");
            let _ = req.reject(reject_reason(&e)).await;
            return;
        }
    };
    let encrypted = keys.is_some();
    let socket = match tokio::time::timeout(app.config.ingest.idle_timeout, req.accept(keys)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(stream = %name, %peer, error = %e, encrypted, "SRT handshake failed (wrong passphrase?)");
            return;
        }
        Err(_) => {
            tracing::warn!(stream = %name, %peer, encrypted, "SRT handshake timed out");
            return;
        }
    };
    let mut session = match super::attach(&app, Ingest::Srt, &name) {
        Ok(s) => s,
        Err(e) => {
            // Taken in the meantime (another caller won the race): close.
            tracing::warn!(stream = %name, %peer, error = %e, "SRT publisher refused");
            return;
        }
    };
    tracing::info!(stream = %name, %peer, encrypted, "SRT publisher connected");
    let result = publish(socket, &mut session, &app).await;
    let summary = session.summary(result.as_ref().err());
    match &result {
        Ok(()) => {
            tracing::info!(stream = %name, %peer, fragments = summary.fragments, "SRT publisher finished")
        }
        Err(e) => tracing::warn!(stream = %name, %peer, error = %e, "SRT publisher failed"),
    }
}

async fn publish(
    socket: SrtSocket,
    session: &mut IngestSession,
    app: &AppState,
) -> Result<(), Error> {
    let cfg = &app.config.ingest.srt;
    let mut source = Source {
        socket,
        remux: TsRemuxer::new(MuxerConfig {
            max_fragment_us: cfg.fragment_ms.saturating_mul(1000),
            ..MuxerConfig::default()
        }),
        out: VecDeque::new(),
        finished: false,
    };
    let stream = futures_util::stream::unfold(&mut source, |s| async move {
        s.next_fmp4().await.map(|item| (item, s))
    });
    let result = session.run(&mut Box::pin(stream), app).await;
    // Closing our side lets the caller's libsrt see a clean shutdown.
    let _ = futures_util::SinkExt::close(&mut source.socket).await;
    result
}

/// The SRT socket as a source of fMP4 bytes.
struct Source {
    socket: SrtSocket,
    remux: TsRemuxer,
    out: VecDeque<Bytes>,
    finished: bool,
}

impl Source {
    async fn next_fmp4(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some(Ok(b));
            }
            if self.finished {
                return None;
            }
            match self.socket.next().await {
                Some(Ok((_, data))) => {
                    self.remux.push(&data);
                    if let Err(e) = self.remux.check_program() {
                        return Some(Err(Error::Media(e)));
                    }
                }
                Some(Err(e)) => return Some(Err(Error::Io(e))),
                None => {
                    self.remux.finish();
                    self.finished = true;
                }
            }
            while let Some(o) = self.remux.poll() {
                self.out.push_back(o.bytes().clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        let p = |s: &str| parse_stream_id(Some(s)).map_err(|e| e.to_string());
        assert_eq!(p("#!::r=cam1,m=publish"), Ok("cam1".into()));
        assert_eq!(p("#!::m=publish,u=bob,r=cam1"), Ok("cam1".into()));
        assert_eq!(p("#!::r=cam1"), Ok("cam1".into()));
        assert_eq!(p("cam1"), Ok("cam1".into()));
        assert!(p("#!::r=cam1,m=request").is_err_and(|e| e.contains("m=request")));
        assert!(p("#!::m=publish").is_err());
        assert!(parse_stream_id(None).is_err());
    }
}
