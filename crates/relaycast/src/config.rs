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
    /// Logging: format and filter.
    pub log: LogConfig,
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
    /// Signed viewer URLs and publish/play callbacks (see `docs/security.md`).
    pub auth: crate::auth::AuthConfig,
    /// Limits on streams, viewers, connections, bitrate and slow clients.
    pub limits: crate::limits::LimitsConfig,
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
    /// With TLS: a plain-HTTP address that redirects every request to https.
    pub http_redirect: Option<SocketAddr>,
    /// Serve the player from this directory instead of the embedded copy (development).
    pub player_dir: Option<PathBuf>,
    /// The operator endpoints (`/metrics`, and `/api/streams` in full) need
    /// `Authorization: Bearer <operator_token>` from clients other than
    /// loopback (see `operator_from_loopback`). Unset: only loopback
    /// clients read them; others get 403 (`/metrics`) or only the streams
    /// anyone may watch (`/api/streams`).
    pub operator_token: Option<String>,
    /// Loopback clients (a local Prometheus, an operator's curl) read the
    /// operator endpoints without the token. Turn off behind a reverse proxy
    /// on the same host, where every client is loopback.
    pub operator_from_loopback: bool,
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
            http_redirect: None,
            player_dir: None,
            operator_token: None,
            operator_from_loopback: true,
        }
    }
}

/// How the relay logs (to stderr).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human-readable) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// A `tracing` filter (`RUST_LOG` syntax); `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "relaycast=info,warn".into(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (stream, peer).
    Json,
}

/// A raw TCP ingest port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpIngest {
    /// Port on the listen address's IP (0 = any free port).
    pub port: u16,
    /// Stream name fed by this port.
    pub name: String,
    /// The key this port presents for its publishers (a port the operator
    /// trusts, e.g. firewalled); without it a publisher may send a first
    /// line `KEY <key>\n` before the fMP4 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
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
            key: None,
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
    /// Publish keys per stream name or glob pattern (`team-*`); an exact
    /// name wins over a pattern, a pattern over `publish_key`.
    pub keys: BTreeMap<String, String>,
    /// A publisher that sends nothing for this long is disconnected.
    #[serde(with = "serde_secs")]
    pub idle_timeout: Duration,
    /// RTMP and RTMPS ingest (`[ingest.rtmp]`).
    pub rtmp: RtmpConfig,
    /// SRT ingest (`[ingest.srt]`).
    pub srt: SrtConfig,
    /// WHIP (WebRTC) ingest (`[ingest.whip]`).
    pub whip: WhipConfig,
}

/// RTMP/RTMPS ingest: encoders (OBS, ffmpeg, GStreamer) publish FLV, which
/// the relay remuxes to CMAF (see `docs/protocol.md`, "RTMP").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    /// TCP address for plain RTMP, e.g. `0.0.0.0:1935` (off when unset).
    pub listen: Option<SocketAddr>,
    /// TCP address for RTMPS (RTMP in TLS with `server.tls_cert`/`tls_key`),
    /// e.g. `0.0.0.0:1936` (off when unset).
    pub tls_listen: Option<SocketAddr>,
    /// The RTMP application publishers connect to (`rtmp://HOST:PORT/live`);
    /// a connect to any other application is rejected.
    pub app: String,
    /// Largest chunk size a client may announce (bytes); a larger one ends
    /// the connection with an error.
    pub max_chunk_size: u32,
    /// Longest fragment the remux cuts, in milliseconds (fragments are also
    /// cut before every video keyframe).
    pub fragment_ms: u64,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_listen: None,
            app: "live".into(),
            max_chunk_size: 65536,
            fragment_ms: 100,
        }
    }
}

/// SRT ingest: encoders publish MPEG-TS in SRT (listener mode), which the
/// relay remuxes to CMAF (see `docs/protocol.md`, "SRT").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrtConfig {
    /// UDP address, e.g. `0.0.0.0:9710` (off when unset).
    pub listen: Option<SocketAddr>,
    /// SRT receive latency in milliseconds (the larger of this and the
    /// caller's is used).
    pub latency_ms: u64,
    /// Longest fragment the remux cuts, in milliseconds.
    pub fragment_ms: u64,
}

impl Default for SrtConfig {
    fn default() -> Self {
        Self {
            listen: None,
            latency_ms: 120,
            fragment_ms: 100,
        }
    }
}

/// WHIP ingest: browsers and OBS publish over WebRTC (`POST /whip/{name}`
/// on the HTTP port, media on one UDP port), remuxed to CMAF (see
/// `docs/protocol.md`, "WHIP").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhipConfig {
    /// UDP address for WebRTC media, e.g. `0.0.0.0:8443` (WHIP is off when unset).
    pub listen: Option<SocketAddr>,
    /// The IP put in the host candidate (the address publishers reach);
    /// unset: the listen address's IP (which must then not be 0.0.0.0/::).
    pub public_ip: Option<std::net::IpAddr>,
    /// A session that has not completed ICE and DTLS this long after its
    /// offer is closed and its stream name released.
    #[serde(with = "serde_secs")]
    pub handshake_timeout: Duration,
    /// Longest fragment the remux cuts, in milliseconds.
    pub fragment_ms: u64,
    /// Longest group a publisher may send before the relay asks for a
    /// keyframe (PLI): WebRTC encoders send one only when asked, and a
    /// stream of one endless group makes viewers join far back and HLS
    /// segments never end. 0 = ask only at the start and after loss.
    #[serde(with = "serde_secs")]
    pub keyframe_interval: Duration,
}

impl Default for WhipConfig {
    fn default() -> Self {
        Self {
            listen: None,
            public_ip: None,
            handshake_timeout: Duration::from_secs(15),
            fragment_ms: 100,
            keyframe_interval: Duration::from_secs(2),
        }
    }
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
            rtmp: RtmpConfig::default(),
            srt: SrtConfig::default(),
            whip: WhipConfig::default(),
        }
    }
}

impl IngestConfig {
    /// The key required to publish `name`, if any.
    pub fn key_for(&self, name: &str) -> Option<&str> {
        crate::auth::lookup(&self.keys, name).or(self.publish_key.as_deref())
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
    /// Largest WebSocket read buffer per viewer, bytes (at least 256; viewers
    /// only send pings and close, so small is enough; tungstenite's default
    /// is 128 KiB). A viewer's buffer starts at 256 bytes and doubles up to
    /// this only when a read fills it.
    pub ws_read_buffer: usize,
    /// WebSocket viewers over plain TCP that have caught up are written to
    /// directly by fan-out writers (see `ws_viewers_per_writer`) instead
    /// of waking one task per viewer per fragment; a viewer whose
    /// socket is full, that sends something or whose session ends goes back
    /// to its own task. HTTP streaming viewers over plain HTTP/1.1 too: the
    /// server takes their request before hyper (`server::stream_h1`).
    /// `false` keeps one task per viewer throughout, and HTTP streaming
    /// with hyper.
    pub ws_direct_write: bool,
    /// A stream gets one fan-out writer per this many WebSocket and HTTP
    /// streaming viewers (counted as each comes), up to one per worker
    /// thread. One writer
    /// goes through a stream's viewers once per fragment on one core; more
    /// share the stream across cores, which pays only for big audiences.
    pub ws_viewers_per_writer: usize,
    /// On Linux, a fan-out writer sends a pass's frames to its caught-up
    /// viewers in one io_uring submission (per 256 viewers) instead of one
    /// `sendmsg` each; where io_uring is refused (a seccomp profile such as
    /// Docker's default, `kernel.io_uring_disabled`) it says so once and
    /// keeps `sendmsg`. `false`: `sendmsg` without trying.
    pub ws_uring: bool,
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
            ws_direct_write: true,
            ws_viewers_per_writer: 10_000,
            ws_uring: true,
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
    /// Which origin to ask first for a stream.
    pub pick: OriginPick,
    /// After a failover, try the stream's preferred origin again this often
    /// and move back when it answers (0 = stay on the origin in use).
    #[serde(with = "serde_secs")]
    pub return_after: Duration,
}

/// How an edge chooses among its origins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginPick {
    /// In the configured order (the first is the primary).
    #[default]
    Ordered,
    /// Starting at a stable hash of the stream name (spreads streams over origins).
    Hash,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        Self {
            origins: Vec::new(),
            linger: Duration::from_secs(5),
            pick: OriginPick::Ordered,
            return_after: Duration::from_secs(10),
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

    /// The effective configuration as TOML with secrets (publish keys,
    /// anything named like a secret, token or password) replaced by
    /// `"<redacted>"`: what `relaycast config check` prints.
    pub fn to_toml_redacted(&self) -> String {
        let mut v = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot print config: {e}"),
        };
        redact(&mut v, false);
        toml::to_string_pretty(&v).unwrap_or_else(|e| format!("# cannot print config: {e}"))
    }

    /// Apply `RELAYCAST_<SECTION>__<KEY>[__<SUBKEY>…]=VALUE` overrides (the
    /// path of a key in the TOML file, upper-case, levels joined by `__`;
    /// e.g. `RELAYCAST_SERVER__SHUTDOWN_TIMEOUT=10`,
    /// `RELAYCAST_FANOUT__RING__MAX_BYTES=67108864`). A value is read as a
    /// TOML value (`true`, `10`, `["a","b"]`) unless the key currently holds
    /// a string or the value is not valid TOML; then it is a string. Variables
    /// without `__` (`RELAYCAST_LISTEN`, …) are command-line flags' and are
    /// ignored here. An unknown key is an error, like in the file.
    pub fn apply_env<I: IntoIterator<Item = (String, String)>>(
        &mut self,
        vars: I,
    ) -> anyhow::Result<()> {
        let mut root = toml::Value::try_from(&*self)?;
        let mut applied = Vec::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("RELAYCAST_") else {
                continue;
            };
            if !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            if path.iter().any(|p| p.is_empty()) {
                anyhow::bail!("{name}: empty key in the path");
            }
            set_path(&mut root, &path, &value).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            applied.push(name);
        }
        if applied.is_empty() {
            return Ok(());
        }
        *self = root
            .try_into()
            .map_err(|e| anyhow::anyhow!("environment ({}): {e}", applied.join(", ")))?;
        Ok(())
    }

    /// Check what serde cannot: returns every problem found (empty = valid).
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                errs.push("server.tls_cert and server.tls_key go together".to_string())
            }
            (Some(c), Some(k)) => {
                // What `serve` does with them: read and parse both (PEM) and
                // build the TLS configuration.
                if let Err(e) = crate::tls::Tls::load(c, k) {
                    errs.push(format!("server.tls_cert/tls_key: {e:#}"));
                }
            }
            (None, None) => {}
        }
        if let Some(d) = &self.server.player_dir
            && !d.is_dir()
        {
            errs.push(format!(
                "server.player_dir {} is not a directory",
                d.display()
            ));
        }
        if self.server.shutdown_timeout.is_zero() {
            errs.push("server.shutdown_timeout must be > 0".into());
        }
        let mut ports = std::collections::BTreeSet::new();
        for t in &self.ingest.tcp {
            if !crate::fanout::valid_name(&t.name) {
                errs.push(format!("ingest.tcp: bad stream name {:?}", t.name));
            }
            if t.port != 0 && !ports.insert(t.port) {
                errs.push(format!("ingest.tcp: port {} given twice", t.port));
            }
            if t.port != 0 && t.port == self.server.listen.port() {
                errs.push(format!("ingest.tcp: port {} is the HTTP port", t.port));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            errs.push(format!("log.filter {:?}: {e}", self.log.filter));
        }
        for (what, map) in [
            ("ingest.keys", &self.ingest.keys),
            ("auth.view_secrets", &self.auth.view_secrets),
        ] {
            for (pattern, secret) in map {
                if !crate::auth::valid_pattern(pattern) {
                    errs.push(format!(
                        "{what}: {pattern:?} is neither a stream name nor a pattern of [A-Za-z0-9_-*?]"
                    ));
                }
                check_secret(&mut errs, &format!("{what}.{pattern}"), secret);
            }
        }
        if let Some(k) = &self.ingest.publish_key {
            check_secret(
                &mut errs,
                "ingest.publish_key (--publish-key, RELAYCAST_PUBLISH_KEY)",
                k,
            );
        }
        for t in &self.ingest.tcp {
            if let Some(k) = &t.key {
                check_secret(&mut errs, &format!("ingest.tcp port {} key", t.port), k);
            }
        }
        if let Some(k) = &self.auth.view_secret {
            check_secret(&mut errs, "auth.view_secret", k);
        }
        if let Some(k) = &self.server.operator_token {
            check_secret(&mut errs, "server.operator_token", k);
        }
        if self.ingest.max_box_size < 1024 {
            errs.push("ingest.max_box_size must be at least 1024".into());
        }
        if self.ingest.idle_timeout.is_zero() {
            errs.push("ingest.idle_timeout must be > 0".into());
        }
        let rtmp = &self.ingest.rtmp;
        if rtmp.tls_listen.is_some() && self.server.tls_cert.is_none() {
            errs.push("ingest.rtmp.tls_listen (--rtmps) needs server.tls_cert and server.tls_key (--tls-cert/--tls-key)".into());
        }
        if rtmp.app.is_empty() || rtmp.app.contains(['/', '?']) {
            errs.push(format!(
                "ingest.rtmp.app {:?} must be one non-empty path segment (e.g. \"live\")",
                rtmp.app
            ));
        }
        if !(128..=0xff_ffff).contains(&rtmp.max_chunk_size) {
            errs.push("ingest.rtmp.max_chunk_size must be 128 to 16777215".into());
        }
        for (key, ms) in [
            ("ingest.rtmp.fragment_ms", rtmp.fragment_ms),
            ("ingest.srt.fragment_ms", self.ingest.srt.fragment_ms),
            ("ingest.whip.fragment_ms", self.ingest.whip.fragment_ms),
        ] {
            if !(10..=10_000).contains(&ms) {
                errs.push(format!("{key} must be 10 to 10000"));
            }
        }
        let whip = &self.ingest.whip;
        if let Some(a) = whip.listen
            && a.ip().is_unspecified()
            && whip.public_ip.is_none()
        {
            errs.push(format!(
                "ingest.whip.listen is {a}: set ingest.whip.public_ip (--public-ip) to the address publishers reach"
            ));
        }
        if whip.handshake_timeout.is_zero() {
            errs.push("ingest.whip.handshake_timeout must be > 0".into());
        }
        if self.ingest.srt.latency_ms > 10_000 {
            errs.push("ingest.srt.latency_ms must be at most 10000".into());
        }
        let tcp_addrs = [rtmp.listen, rtmp.tls_listen];
        if let [Some(a), Some(b)] = tcp_addrs
            && a == b
            && a.port() != 0
        {
            errs.push(format!("ingest.rtmp: listen and tls_listen are both {a}"));
        }
        for a in tcp_addrs.into_iter().flatten() {
            if a.port() != 0 && a == self.server.listen {
                errs.push(format!("ingest.rtmp: {a} is the HTTP address"));
            }
        }
        if self.fanout.ring.max_fragments == 0 || self.fanout.ring.max_bytes == 0 {
            errs.push("fanout.ring: max_fragments and max_bytes must be > 0".into());
        }
        if self.fanout.lag.window.is_zero() {
            errs.push("fanout.lag.window must be > 0".into());
        }
        if self.egress.long_poll_timeout > self.egress.long_poll_max {
            errs.push("egress.long_poll_timeout is above egress.long_poll_max".into());
        }
        for (key, hook) in [
            ("auth.on_publish", &self.auth.on_publish),
            ("auth.on_play", &self.auth.on_play),
        ] {
            if let Some(h) = hook
                && !matches!(url::Url::parse(h), Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some())
            {
                errs.push(format!("{key}: {h:?} is not an http:// or https:// URL"));
            }
        }
        if let Some(ca) = &self.auth.callback_ca
            && let Err(e) = crate::auth::callback_connector(Some(ca))
        {
            errs.push(e);
        }
        for o in &self.cascade.origins {
            match url::Url::parse(o) {
                Ok(u) if u.scheme() == "quic" && u.host_str().is_some() && u.port().is_some() => {}
                _ => errs.push(format!(
                    "cascade.origins: {o:?} is not quic://HOST:PORT[?fingerprint=HEX]"
                )),
            }
        }
        errs
    }
}

/// Shortest secret accepted (publish keys, view secrets).
pub const MIN_SECRET: usize = 8;

/// A configured secret must not be empty (which would accept `?key=`) nor
/// guessable by length alone.
fn check_secret(errs: &mut Vec<String>, what: &str, secret: &str) {
    if secret.is_empty() {
        errs.push(format!("{what} is empty: an empty key would accept anyone"));
    } else if secret.len() < MIN_SECRET {
        errs.push(format!(
            "{what} is {} bytes: use at least {MIN_SECRET} (e.g. `openssl rand -hex 16`)",
            secret.len()
        ));
    }
}

/// Set `path` in a TOML table tree to `raw` (see [`Config::apply_env`]).
fn set_path(root: &mut toml::Value, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty path")?;
    let mut cur = root;
    for p in parents {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| format!("{p}: not a section"))?;
        cur = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = cur
        .as_table_mut()
        .ok_or_else(|| format!("{last}: parent is not a section"))?;
    let as_string = matches!(table.get(last), Some(toml::Value::String(_)));
    let value = if as_string {
        toml::Value::String(raw.to_string())
    } else {
        match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t
                .remove("v")
                .unwrap_or_else(|| toml::Value::String(raw.into())),
            Err(_) => toml::Value::String(raw.to_string()),
        }
    };
    table.insert(last.clone(), value);
    Ok(())
}

/// Replace secret values in a TOML tree.
fn redact(v: &mut toml::Value, secret: bool) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let k = k.to_ascii_lowercase();
                let s = secret
                    || k == "keys"
                    || k == "key"
                    || k == "publish_key"
                    || k.contains("secret")
                    || k.contains("token")
                    || k.contains("password");
                redact(v, s);
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|v| redact(v, secret)),
        toml::Value::String(s) if secret => *s = "<redacted>".into(),
        _ => {}
    }
}
