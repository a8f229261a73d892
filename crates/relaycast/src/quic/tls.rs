//! TLS for QUIC: the server's certificate (from PEM files, or self-signed at
//! start with its SHA-256 fingerprint logged), and the client's trust (the
//! system roots, or a pinned fingerprint).

use super::{ALPN, QuicError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// The server's certificate chain and key.
pub struct QuicTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of the end-entity certificate's DER, lowercase hex.
    pub fingerprint: String,
    /// True when generated at start (clients must pin `fingerprint`).
    pub self_signed: bool,
}

impl std::fmt::Debug for QuicTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTls")
            .field("fingerprint", &self.fingerprint)
            .field("self_signed", &self.self_signed)
            .finish()
    }
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl QuicTls {
    /// Load a PEM certificate chain and key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<QuicTls, QuicError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| QuicError::Tls(format!("reading {}: {e}", cert.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| QuicError::Tls(format!("parsing {}: {e}", cert.display())))?;
        let first = certs
            .first()
            .ok_or_else(|| QuicError::Tls(format!("no certificate in {}", cert.display())))?;
        let fingerprint = fingerprint_hex(first);
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| QuicError::Tls(format!("reading the key {}: {e}", key.display())))?;
        Ok(QuicTls {
            certs,
            key,
            fingerprint,
            self_signed: false,
        })
    }

    /// Generate a self-signed certificate for `names` (host names or IPs).
    pub fn self_signed(names: Vec<String>) -> Result<QuicTls, QuicError> {
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| QuicError::Tls(format!("generating a certificate: {e}")))?;
        let der: CertificateDer<'static> = ck.cert.der().clone();
        let fingerprint = fingerprint_hex(&der);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        Ok(QuicTls {
            certs: vec![der],
            key,
            fingerprint,
            self_signed: true,
        })
    }

    /// The configured certificate when both paths are set, else a generated one.
    pub fn from_config(
        cert: Option<&Path>,
        key: Option<&Path>,
        listen: std::net::SocketAddr,
    ) -> Result<QuicTls, QuicError> {
        match (cert, key) {
            (Some(c), Some(k)) => Self::from_pem_files(c, k),
            (None, None) => {
                let mut names = vec!["localhost".to_string()];
                if !listen.ip().is_unspecified() {
                    names.push(listen.ip().to_string());
                }
                Self::self_signed(names)
            }
            _ => Err(QuicError::Tls(
                "server.tls_cert and server.tls_key must be given together".into(),
            )),
        }
    }

    /// The rustls server configuration for quinn.
    pub fn server_crypto(&self) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, QuicError> {
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| QuicError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| QuicError::Tls(format!("certificate and key do not fit: {e}")))?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        Ok(Arc::new(quic))
    }
}

/// Default bytes a client lets the relay send ahead of what it has read.
pub const RECEIVE_WINDOW: u32 = 8 << 20;

/// A client configuration: trust `pin` (SHA-256 of the server certificate)
/// when given, else the system roots. `receive_window` bounds the bytes the
/// relay may send ahead of what the application has read (the connection's
/// flow-control window), so a client that stops reading makes the relay's
/// writes wait, and the relay's lag policy applies.
pub fn client_config(
    pin: Option<[u8; 32]>,
    receive_window: u32,
) -> Result<quinn::ClientConfig, QuicError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut crypto = match pin {
        Some(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { sha256, provider }))
            .with_no_client_auth(),
        None => {
            let roots = crate::tls::roots(None, "").map_err(QuicError::Tls)?;
            if roots.is_empty() {
                return Err(QuicError::Tls(
                    "no system root certificates found; pin the relay's certificate with ?fingerprint=HEX".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // Notice a dead relay quickly (edges fail over), keep idle sessions open.
    transport
        .keep_alive_interval(Some(std::time::Duration::from_secs(1)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            5_000,
        ))))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(256))
        // The relay never opens bidirectional streams.
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(0))
        .receive_window(quinn::VarInt::from_u32(receive_window))
        .stream_receive_window(quinn::VarInt::from_u32(receive_window));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts exactly one certificate, by its SHA-256; signatures are still verified.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {} is not the pinned {}",
                hex::encode(got),
                hex::encode(self.sha256)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
