//! One `Config` for the whole relay: a sub-struct per part, read from a TOML
//! file (`--config`), then overridden by `RELAYCAST_*` environment variables
//! and command-line flags (see `main.rs`). Every field has a default that
//! runs out of the box.

use crate::fanout::{FanoutConfig, serde_secs};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The relay's configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener, demo, shutdown, CORS, TLS.
    pub server: ServerConfig,
    /// Ingest limits, keys and raw TCP ports.
    pub ingest: IngestConfig,
    /// The fan-out core: ring bounds, lag policy, grace period.
    pub fanout: FanoutConfig,
    /// Viewer-side transports.
    pub egress: EgressConfig,
    /// QUIC endpoint.
    pub quic: QuicConfig,
    /// Cascade: origins this relay pulls from.
    pub cascade: CascadeConfig,
}

/// The HTTP side.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the one HTTP port (publish, watch, player, API).
    pub listen: SocketAddr,
    /// Run the built-in `demo` stream.
    pub demo: bool,
    /// Deadline for draining connections on SIGINT/SIGTERM.
    #[serde(with = "serde_secs")]
    pub shutdown_timeout: Duration,
    /// Origins allowed by CORS (`*` for any).
    pub cors_origins: Vec<String>,
    /// PEM certificate chain: serve https/wss (and QUIC) with it.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve the player from this directory instead of the embedded copy (development).
    pub player_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            demo: true,
            shutdown_timeout: Duration::from_secs(5),
            cors_origins: vec!["*".into()],
            tls_cert: None,
            tls_key: None,
            player_dir: None,
        }
    }
}

/// A raw TCP ingest port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpIngest {
    /// Port on the listen address's IP (0 = any free port).
    pub port: u16,
    /// Stream name fed by this port.
    pub name: String,
}

impl std::str::FromStr for TcpIngest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, name) = s
            .split_once('=')
            .ok_or_else(|| format!("expected PORT=NAME, got {s:?}"))?;
        let port = port
            .parse()
            .map_err(|e| format!("bad port in {s:?}: {e}"))?;
        if !crate::fanout::valid_name(name) {
            return Err(format!("bad stream name in {s:?}"));
        }
        Ok(TcpIngest {
            port,
            name: name.to_string(),
        })
    }
}

/// The publisher side.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest MP4 box accepted (bigger → 413 / close 1009).
    pub max_box_size: u64,
    /// Largest WebSocket message accepted from a publisher.
    pub max_ws_message: usize,
    /// Raw TCP ingest ports.
    pub tcp: Vec<TcpIngest>,
    /// One publish key for every stream.
    pub publish_key: Option<String>,
    /// Publish keys per stream name.
    pub keys: BTreeMap<String, String>,
    /// A publisher that sends nothing for this long is disconnected.
    #[serde(with = "serde_secs")]
    pub idle_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_box_size: 16 << 20,
            max_ws_message: 16 << 20,
            tcp: Vec::new(),
            publish_key: None,
            keys: BTreeMap::new(),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl IngestConfig {
    /// The key required to publish `name`, if any.
    pub fn key_for(&self, name: &str) -> Option<&str> {
        self.keys
            .get(name)
            .or(self.publish_key.as_ref())
            .map(String::as_str)
    }
}

/// The viewer side.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Default long-poll wait.
    #[serde(with = "serde_secs")]
    pub long_poll_timeout: Duration,
    /// Longest long-poll wait a client may ask for.
    #[serde(with = "serde_secs")]
    pub long_poll_max: Duration,
    /// Longest `wait=` for a stream that has not started.
    #[serde(with = "serde_secs")]
    pub max_wait: Duration,
    /// WebSocket read buffer per viewer, bytes (at least 256; viewers only
    /// send pings and close, so small is enough; tungstenite's default is 128 KiB).
    pub ws_read_buffer: usize,
    /// Kept for config compatibility; unused: the WebSocket egress writes
    /// each batch with one vectored write and buffers nothing.
    pub ws_write_buffer: usize,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            long_poll_timeout: Duration::from_secs(20),
            long_poll_max: Duration::from_secs(60),
            max_wait: Duration::from_secs(60),
            ws_read_buffer: 4096,
            ws_write_buffer: 0,
        }
    }
}

/// The QUIC endpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// UDP address to listen on (off when unset).
    pub listen: Option<SocketAddr>,
}

/// Cascade: this relay as an edge.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CascadeConfig {
    /// Origins to pull streams from (`quic://HOST:PORT[?fingerprint=HEX]`), in order of preference.
    pub origins: Vec<String>,
    /// How long a pulled stream is kept after its last viewer left.
    #[serde(with = "serde_secs")]
    pub linger: Duration,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        Self {
            origins: Vec::new(),
            linger: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}"))
    }
}
