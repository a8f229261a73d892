//! Raw TCP ingest: `serve --tcp-ingest PORT=NAME` opens a port whose bytes
//! are the stream NAME (e.g. `ffmpeg … -f mp4 tcp://HOST:PORT`). One
//! publisher at a time per port; a second one is refused (the connection is
//! closed) while the first is live.
//!
//! Keys: when NAME needs a publish key, the publisher either sends a first
//! line `KEY <key>\n` before the fMP4 bytes, or the port is configured with
//! a `key` (in the config file), which then stands for every publisher on
//! it. A refused publisher gets one line `ERROR <status> <reason>\n` and the
//! connection is closed. (An fMP4 stream cannot start with `KEY `: as a box
//! header that would be a 1.2 GB box.)

use crate::Error;
use crate::app::AppState;
use crate::config::TcpIngest;
use crate::limits::Reason;
use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::io::ReaderStream;
use tracing::Instrument;

/// Longest `KEY …` line accepted.
const MAX_KEY_LINE: usize = 1024;

/// Bind every configured TCP ingest port; returns the bound listeners.
pub async fn bind(
    ip: std::net::IpAddr,
    ports: &[TcpIngest],
) -> std::io::Result<Vec<(TcpListener, TcpIngest)>> {
    let mut out = Vec::new();
    for p in ports {
        let l = TcpListener::bind((ip, p.port)).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("tcp ingest port {}: {e}", p.port))
        })?;
        out.push((l, p.clone()));
    }
    Ok(out)
}

/// Accept publishers on `listener` for the port's stream until shutdown.
pub async fn run(listener: TcpListener, port: TcpIngest, app: AppState) {
    let name = port.name.clone();
    let mut accept_errors = crate::app::AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = app.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((sock, peer)) => {
                let app = app.clone();
                let name = name.clone();
                let span = tracing::info_span!("ingest", stream = %name, %peer, transport = "tcp");
                let port_key = port.key.clone();
                tokio::spawn(async move {
                    match session(sock, peer, &name, port_key.as_deref(), &app).await {
                        Ok(s) => {
                            tracing::info!(stream = %name, %peer, fragments = s.fragments, "TCP publisher finished")
                        }
                        Err(e) => {
                            tracing::warn!(stream = %name, %peer, error = %e, "TCP publisher failed")
                        }
                    }
                }.instrument(span));
            }
            Err(e) => accept_errors.failed("tcp ingest", &e).await,
        }
    }
}

async fn session(
    mut sock: TcpStream,
    peer: SocketAddr,
    name: &str,
    port_key: Option<&str>,
    app: &AppState,
) -> Result<super::Summary, Error> {
    let _ = sock.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 << 10);
    let admitted = async {
        let _guard = app.limits.connection(peer.ip())?;
        let line = read_key_line(&mut sock, &mut buf, app).await?;
        let key = line.as_deref().or(port_key);
        let session = super::admit(app, crate::fanout::Ingest::Tcp, name, key, Some(peer)).await?;
        Ok::<_, Error>((session, _guard))
    };
    let (mut session, _guard) = match admitted.await {
        Ok(s) => s,
        Err(e) => {
            refuse(&mut sock, &e).await;
            return Err(e);
        }
    };
    tracing::info!(stream = %name, %peer, "TCP publisher connected");
    // The bytes read after a KEY line are the stream's first.
    let first = if buf.is_empty() {
        Ok(())
    } else {
        session.push(buf.split().freeze())
    };
    let result = match first {
        Err(e) => Err(e),
        Ok(()) => {
            let mut source =
                ReaderStream::with_capacity(&mut sock, 64 << 10).map(|r| r.map_err(Error::Io));
            session.run(&mut source, app).await
        }
    };
    let summary = session.summary(result.as_ref().err());
    if let Err(e) = &result
        && !matches!(e, Error::Io(_) | Error::Shutdown)
    {
        refuse(&mut sock, e).await;
    }
    result.map(|_| summary)
}

/// Tell a raw TCP publisher why it is refused or cut off — one line
/// `ERROR <status> <reason>\n` — then close gracefully: read (and drop) what
/// it still sends for a moment, so that closing with unread data does not
/// reset the connection before the publisher reads the line.
async fn refuse(sock: &mut TcpStream, e: &Error) {
    let line = e.tcp_line();
    let bye = async {
        sock.write_all(line.as_bytes()).await?;
        sock.shutdown().await?;
        let mut sink = [0u8; 16 << 10];
        let mut left = 4usize << 20;
        while left > 0 {
            match sock.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), bye).await;
}

/// Read a first line `KEY <key>\n` if the stream starts with one; whatever
/// was read past it stays in `buf` (the first bytes of the fMP4 stream).
async fn read_key_line(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    app: &AppState,
) -> Result<Option<String>, Error> {
    const PREFIX: &[u8] = b"KEY ";
    let idle = app.config.ingest.idle_timeout;
    loop {
        let n = buf.len().min(PREFIX.len());
        if buf[..n] != PREFIX[..n] {
            return Ok(None); // fMP4 from the first byte
        }
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[PREFIX.len()..end])
                .trim()
                .to_string();
            buf.advance(end + 1);
            return Ok(Some(line));
        }
        if buf.len() > MAX_KEY_LINE {
            return Err(Error::BadRequest(format!(
                "KEY line longer than {MAX_KEY_LINE} bytes"
            )));
        }
        let read = tokio::select! {
            r = tokio::time::timeout(idle, sock.read_buf(buf)) => r,
            _ = app.shutdown.cancelled() => return Err(Error::Shutdown),
        };
        match read {
            Err(_) => {
                return Err(app
                    .limits
                    .refused
                    .refuse(Reason::PublisherIdle, format!("no data for {idle:?}")));
            }
            Ok(Err(e)) => return Err(Error::Io(e)),
            Ok(Ok(0)) if buf.is_empty() => return Ok(None), // empty stream: splitter decides
            Ok(Ok(0)) => return Err(Error::BadRequest("stream ended in the KEY line".into())),
            Ok(Ok(_)) => {}
        }
    }
}
