//! The relay's QUIC endpoint: bind it, accept connections, read each
//! session's [`Request`] and hand it to the publish
//! ([`crate::ingest::quic`]) or watch ([`crate::egress::quic`]) session; and
//! the `GET /api/quic` route. The protocol itself is [`crate::quic`].

use crate::Error;
use crate::app::AppState;
use crate::quic::code;
use crate::quic::{
    Op, QuicError, QuicTls, REQUEST_TIMEOUT, Request, Response, SEND_WINDOW, close, read_control,
    write_control,
};
use quinn::VarInt;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where the QUIC endpoint listens and how clients pin its certificate
/// (`GET /api/quic`).
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    /// UDP address.
    pub addr: SocketAddr,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fingerprint: String,
}

/// The QUIC endpoint's [`Info`] as it is now: the fingerprint follows the
/// certificate when a SIGHUP reloads it (what `GET /api/quic` serves).
#[derive(Debug)]
pub struct LiveInfo {
    addr: SocketAddr,
    fingerprint: parking_lot::RwLock<String>,
}

impl LiveInfo {
    /// Start from `info`.
    pub fn new(info: Info) -> LiveInfo {
        LiveInfo {
            addr: info.addr,
            fingerprint: parking_lot::RwLock::new(info.fingerprint),
        }
    }

    /// Address and the fingerprint of the certificate served now.
    pub fn get(&self) -> Info {
        Info {
            addr: self.addr,
            fingerprint: self.fingerprint.read().clone(),
        }
    }

    /// The endpoint now serves a certificate with this fingerprint.
    pub fn set_fingerprint(&self, fingerprint: String) {
        *self.fingerprint.write() = fingerprint;
    }
}

/// The relay's QUIC endpoint, bound and ready to accept.
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    info: Info,
}

impl QuicServer {
    /// Bind `addr` with the certificate of `tls`.
    pub fn bind(addr: SocketAddr, tls: &QuicTls) -> Result<QuicServer, QuicError> {
        let endpoint = quinn::Endpoint::server(Self::server_config(tls)?, addr)?;
        let info = Info {
            addr: endpoint.local_addr()?,
            fingerprint: tls.fingerprint.clone(),
        };
        Ok(QuicServer { endpoint, info })
    }

    /// The endpoint's configuration for the certificate of `tls`.
    fn server_config(tls: &QuicTls) -> Result<quinn::ServerConfig, QuicError> {
        let mut server = quinn::ServerConfig::with_crypto(tls.server_crypto()?);
        let mut transport = quinn::TransportConfig::default();
        transport
            .send_window(SEND_WINDOW)
            .max_concurrent_bidi_streams(VarInt::from_u32(4))
            // Clients never open unidirectional streams (media flows to them).
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(Duration::from_secs(2)));
        server.transport_config(Arc::new(transport));
        Ok(server)
    }

    /// Address and fingerprint.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// Accept sessions until shutdown.
    pub async fn run(self, app: AppState) {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => i,
                _ = app.shutdown.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let app = app.clone();
            tokio::spawn(async move {
                let peer = incoming.remote_address();
                // The client IP's connection limit, shared with HTTP and raw
                // TCP ingest: the guard counts this connection (from its
                // handshake on) for as long as it lives.
                let guard = app.limits.connection(peer.ip());
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "QUIC handshake failed");
                        return;
                    }
                };
                let _guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        // Counted by `connection`; the client gets the
                        // limit's code and why.
                        tracing::info!(%peer, error = %e, "QUIC connection refused");
                        close(&conn, e.quic_code(), &e.to_string());
                        return;
                    }
                };
                if let Err(e) = session(&conn, &app).await {
                    match conn.close_reason() {
                        // The client left (or the connection died) first: nothing to tell it.
                        Some(reason) => {
                            tracing::debug!(%peer, error = %e, %reason, "QUIC session ended by the client")
                        }
                        None => {
                            tracing::info!(%peer, error = %e, "QUIC session refused or failed");
                            close(&conn, e.quic_code(), &e.to_string());
                        }
                    }
                }
            });
        }
        self.endpoint
            .close(VarInt::from_u32(code::SHUTDOWN), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Bind the QUIC endpoint when `quic.listen` is set and spawn its accept
/// loop onto `tasks`. Uses `server.tls_cert`/`server.tls_key` when set, else
/// a self-signed certificate whose fingerprint is logged, and adds its
/// certificate reload to `reloads` (run on SIGHUP). The returned
/// [`LiveInfo`] follows certificate reloads.
pub fn start(
    state: &AppState,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    reloads: &mut Vec<super::Reload>,
) -> Result<Option<Arc<LiveInfo>>, QuicError> {
    let Some(listen) = state.config.quic.listen else {
        return Ok(None);
    };
    let server = &state.config.server;
    let tls = QuicTls::from_config(
        server.tls_cert.as_deref(),
        server.tls_key.as_deref(),
        listen,
    )?;
    let quic = QuicServer::bind(listen, &tls).map_err(|e| match e {
        QuicError::Io(io) => QuicError::Io(std::io::Error::new(
            io.kind(),
            format!("QUIC on {listen}: {io}"),
        )),
        e => e,
    })?;
    let info = quic.info().clone();
    let live = Arc::new(LiveInfo::new(info.clone()));
    tracing::info!(
        addr = %info.addr,
        fingerprint = %info.fingerprint,
        self_signed = tls.self_signed,
        "QUIC (relaycast/1) listening"
    );
    if let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) {
        // The same certificate as https, reloaded on SIGHUP like it: new
        // QUIC connections get the new one, established ones keep theirs,
        // and /api/quic reports the new fingerprint.
        let endpoint = quic.endpoint.clone();
        let (cert, key) = (cert.clone(), key.clone());
        let live = live.clone();
        reloads.push(Box::new(move || {
            let reloaded = QuicTls::from_pem_files(&cert, &key)
                .and_then(|tls| QuicServer::server_config(&tls).map(|c| (c, tls.fingerprint)));
            match reloaded {
                Ok((c, fingerprint)) => {
                    endpoint.set_server_config(Some(c));
                    tracing::info!(%fingerprint, "SIGHUP: QUIC certificate reloaded");
                    live.set_fingerprint(fingerprint);
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: QUIC reload failed; keeping the old certificate"
                ),
            }
        }));
    }
    tasks.push(tokio::spawn(quic.run(state.clone())));
    Ok(Some(live))
}

/// One connection: read the request, hand over to publish or watch.
async fn session(conn: &quinn::Connection, app: &AppState) -> Result<(), Error> {
    let accepted = tokio::select! {
        r = tokio::time::timeout(REQUEST_TIMEOUT, conn.accept_bi()) => r,
        _ = app.shutdown.cancelled() => return Err(Error::Shutdown),
    };
    let (mut send, mut recv) = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return Ok(()), // the client went away
        Err(_) => {
            return Err(Error::BadRequest(format!(
                "no request within {REQUEST_TIMEOUT:?}"
            )));
        }
    };
    let req: Request = match tokio::time::timeout(REQUEST_TIMEOUT, read_control(&mut recv)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Err(Error::BadRequest("no request".into())),
        Ok(Err(e)) => return Err(Error::BadRequest(format!("request: {e}"))),
        Err(_) => {
            return Err(Error::BadRequest(format!(
                "no request within {REQUEST_TIMEOUT:?}"
            )));
        }
    };
    let result = match req.op {
        Op::Publish => crate::ingest::quic::serve(conn, &mut send, recv, &req, app).await,
        Op::Watch => crate::egress::quic::serve(conn, &mut send, &req, app).await,
    };
    if let Err(e) = &result {
        // Say why on the request stream as well; the close carries the code.
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            write_control(&mut send, &Response::refusal(e)),
        )
        .await;
    }
    result
}

/// The `GET /api/quic` route: where the QUIC endpoint is and the
/// fingerprint of the certificate it serves now.
pub fn api_router(info: Option<Arc<LiveInfo>>) -> axum::Router {
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/api/quic",
        axum::routing::get(move || {
            let info = info.as_ref().map(|i| i.get());
            async move {
                match info {
                    Some(i) => axum::Json(i).into_response(),
                    None => (
                        axum::http::StatusCode::NOT_FOUND,
                        axum::Json(serde_json::json!({
                            "error": "QUIC is not enabled on this relay (serve --quic ADDR)"
                        })),
                    )
                        .into_response(),
                }
            }
        }),
    )
}
