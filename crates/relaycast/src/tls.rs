//! `tls`: https and wss on the relay's one HTTP port (rustls with ring), a
//! certificate that can be reloaded without dropping anyone, and the
//! optional plain-HTTP port that redirects to https.
//!
//! A reload (SIGHUP, or [`Tls::reload`]) reads the PEM files again and swaps
//! the rustls configuration that *new* handshakes use; connections already
//! established keep their session, so viewers are not dropped. A reload that
//! fails (missing file, bad PEM, key not matching) keeps the old certificate
//! and says why.

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The relay's TLS side: where the PEM files are and the configuration in use.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Load `cert` (a PEM chain, leaf first) and `key` (a PEM private key).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Read the PEM files again; new connections use the new certificate.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }
}

/// A rustls server configuration from PEM files, speaking HTTP/1.1 (which
/// carries WebSocket upgrades).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in it", cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("certificate and key: {e}"))?;
    // HTTP/2 first (iOS's LL-HLS expects it; browsers multiplex long polls
    // and HLS requests over one connection), HTTP/1.1 for the rest and for
    // WebSocket upgrades.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificates a TLS client trusts: the system's roots (the odd
/// unparsable one skipped), plus every PEM certificate in `extra` when given
/// (`what` names it in errors: a file that cannot be read or holds none is
/// an error). Every TLS client of the relay starts here: `https://`
/// callbacks, `publish`/`watch` over https/wss, QUIC without a pin.
pub fn roots(extra: Option<&Path>, what: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra {
        let shown = || format!("{what} {}", path.display());
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", shown()))? {
            let cert = cert.map_err(|e| format!("{}: {e}", shown()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", shown()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no certificate in it", shown()));
        }
    }
    Ok(roots)
}

/// A TLS client for `https://` and `wss://` relays (`relaycast publish`,
/// `watch`): the system's root certificates, plus the PEM certificates in
/// the file named by `RELAYCAST_CA_FILE` (a relay with a self-signed or
/// private-CA certificate).
pub fn client_connector() -> anyhow::Result<tokio_rustls::TlsConnector> {
    let extra = std::env::var_os("RELAYCAST_CA_FILE").map(PathBuf::from);
    let roots = roots(extra.as_deref(), "RELAYCAST_CA_FILE").map_err(|e| anyhow::anyhow!(e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The router of the plain-HTTP redirect port: every request gets a 308 to
/// the same path and query on https, at `https_port` of the same host.
pub fn redirect_router(https_port: u16) -> axum::Router {
    use axum::http::{StatusCode, Uri, header};
    use axum::response::IntoResponse;
    axum::Router::new().fallback(move |headers: axum::http::HeaderMap, uri: Uri| async move {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.parse::<axum::http::uri::Authority>().ok())
            .and_then(|a| a.map(|a| a.host().to_string()));
        let Some(host) = host else {
            return (StatusCode::BAD_REQUEST, "a Host header is needed\n").into_response();
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]") // IPv6 literal
        } else {
            host
        };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        let to = format!("https://{host}{port}{path}");
        match axum::http::HeaderValue::from_str(&to) {
            Ok(v) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response(),
            Err(_) => (StatusCode::BAD_REQUEST, "bad Host header\n").into_response(),
        }
    })
}
