//! Raw TCP ingest: `serve --tcp-ingest PORT=NAME` opens a port whose bytes
//! are the stream NAME (e.g. `ffmpeg … -f mp4 tcp://HOST:PORT`). One
//! publisher at a time per port; a second one is refused (the connection is
//! closed) while the first is live.

use super::IngestSession;
use crate::Error;
use crate::config::TcpIngest;
use crate::server::AppState;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Bind every configured TCP ingest port; returns the bound listeners.
pub async fn bind(
    ip: std::net::IpAddr,
    ports: &[TcpIngest],
) -> std::io::Result<Vec<(TcpListener, String)>> {
    let mut out = Vec::new();
    for p in ports {
        let l = TcpListener::bind((ip, p.port)).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("tcp ingest port {}: {e}", p.port))
        })?;
        out.push((l, p.name.clone()));
    }
    Ok(out)
}

/// Accept publishers on `listener` for stream `name` until shutdown.
pub async fn run(listener: TcpListener, name: String, app: AppState) {
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
                tokio::spawn(async move {
                    match session(sock, &name, &app).await {
                        Ok(s) => {
                            tracing::info!(stream = %name, %peer, fragments = s.fragments, "TCP publisher finished")
                        }
                        Err(e) => {
                            tracing::warn!(stream = %name, %peer, error = %e, "TCP publisher failed")
                        }
                    }
                }.instrument(span));
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp ingest accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn session(mut sock: TcpStream, name: &str, app: &AppState) -> Result<super::Summary, Error> {
    let _ = sock.set_nodelay(true);
    let cfg = &app.config.ingest;
    // The port's stream is protected by the same keys as HTTP: a TCP
    // publisher cannot present one, so a keyed name refuses raw TCP.
    super::authorize(cfg, name, None)?;
    let publisher = app.registry.publish(name)?;
    tracing::info!(stream = %name, "TCP publisher connected");
    let mut session = IngestSession::new(publisher, cfg);
    let mut buf = BytesMut::with_capacity(64 << 10);
    let result = loop {
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        let n = tokio::select! {
            n = tokio::time::timeout(cfg.idle_timeout, sock.read_buf(&mut buf)) => n,
            _ = app.shutdown.cancelled() => break Err(Error::Shutdown),
        };
        match n {
            Err(_) => {
                break Err(Error::BadRequest(format!(
                    "no data for {:?}",
                    cfg.idle_timeout
                )));
            }
            Ok(Err(e)) => break Err(Error::Io(e)),
            Ok(Ok(0)) => break session.finish(),
            Ok(Ok(_)) => {
                if let Err(e) = session.push(buf.split().freeze()) {
                    break Err(e);
                }
            }
        }
    };
    let summary = session.summary(result.as_ref().err());
    result.map(|_| summary)
}
