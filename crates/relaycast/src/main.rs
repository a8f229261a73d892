//! The `relaycast` command: `serve` (the default), `publish`, `watch`.
//! Thin: parse flags, set up tracing and signals, call the library.

use clap::{Args, Parser, Subcommand};
use relaycast::config::{Config, LogConfig, LogFormat, TcpIngest};
use std::net::SocketAddr;
use std::path::PathBuf;

/// jemalloc, not the system allocator: glibc malloc keeps most of what many
/// short-lived connections freed (RSS stayed at the churn's peak, issue #7),
/// and jemalloc can say how much is really allocated. See "Memory" in
/// docs/operations.md.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's built-in options: a background thread returns freed ("dirty")
/// pages to the OS after about 1 s unused, so RSS falls back after churn even
/// while the relay is idle (without it, purging only happens as a side effect
/// of later allocations). `muzzy_decay_ms:0` skips the MADV_FREE stage, whose
/// pages stay in RSS until the kernel is short of memory. `_RJEM_MALLOC_CONF`
/// in the environment overrides these.
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// The fan-out writers' families on /metrics (process-wide, like the heap's).
fn writer_metrics() {
    relaycast::metrics::add_collector(relaycast::egress::websocket::WriterMetrics);
}

/// `relaycast_heap_allocated_bytes` / `relaycast_heap_resident_bytes` on
/// /metrics, from jemalloc's statistics.
#[cfg(not(target_env = "msvc"))]
fn heap_metrics() {
    relaycast::metrics::add_collector(HeapMetrics);
}

/// The collector of [`heap_metrics`].
#[cfg(not(target_env = "msvc"))]
#[derive(Debug)]
struct HeapMetrics;

#[cfg(not(target_env = "msvc"))]
impl relaycast::metrics::Collector for HeapMetrics {
    fn encode(&self, mut e: relaycast::metrics::DescriptorEncoder) -> std::fmt::Result {
        use relaycast::metrics::{Kind, single};
        use tikv_jemalloc_ctl::{epoch, stats};
        // The statistics are a snapshot refreshed by advancing the epoch.
        if epoch::advance().is_err() {
            return Ok(());
        }
        if let Ok(n) = stats::allocated::read() {
            single(
                &mut e,
                "relaycast_heap_allocated_bytes",
                Kind::Gauge,
                "Bytes of heap allocated by the relay and not yet freed (jemalloc stats.allocated).",
                n as u64,
            )?;
        }
        if let Ok(n) = stats::resident::read() {
            single(
                &mut e,
                "relaycast_heap_resident_bytes",
                Kind::Gauge,
                "Bytes of physical memory the allocator holds, including freed pages not yet returned (jemalloc stats.resident).",
                n as u64,
            )?;
        }
        Ok(())
    }
}

#[cfg(target_env = "msvc")]
fn heap_metrics() {}

#[derive(Parser)]
#[command(
    name = "relaycast",
    version,
    about = "Live fMP4 broadcast relay",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve(ServeArgs),
    /// Publish a fragmented MP4 file or stdin to a relay.
    Publish(PublishArgs),
    /// Write a live stream to a file or stdout.
    Watch(WatchArgs),
    /// Load generator: runs `relaycast-load` (its own binary, beside this
    /// one) with the arguments that follow; `relaycast load --help` lists them.
    #[command(disable_help_flag = true)]
    Load(LoadArgs),
    /// Print a signed viewer URL query (`exp=…&sig=…`) for a stream.
    Sign(SignArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// Everything after `relaycast load`, handed to `relaycast-load` untouched.
#[derive(Args)]
struct LoadArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

/// `relaycast load …`: the load generator is a tool and is not compiled into
/// the relay; run the `relaycast-load` binary installed beside this one (or
/// on `PATH`) and exit with its status.
fn load(args: LoadArgs) -> anyhow::Result<()> {
    let name = "relaycast-load";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    let exe = beside.unwrap_or_else(|| PathBuf::from(name));
    let status = std::process::Command::new(&exe)
        .args(&args.args)
        .status()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {} ({e}): build it with `cargo build --release -p relaycast-load`",
                exe.display()
            )
        })?;
    std::process::exit(status.code().unwrap_or(1));
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file, RELAYCAST_* environment, flags) and
    /// print the effective result as TOML, secrets redacted. Exit code 1
    /// when it is not valid.
    Check(ServeArgs),
}

#[derive(Args)]
struct SignArgs {
    /// The stream name.
    name: String,
    /// How long the link is valid: 90s, 30m, 1h, 2d (plain numbers are seconds).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: std::time::Duration,
    /// The signing secret (default: the one the config file gives for NAME).
    #[arg(long, env = "RELAYCAST_SIGN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// TOML configuration file with `[auth] view_secret` / `view_secrets`.
    #[arg(long, env = "RELAYCAST_CONFIG")]
    config: Option<PathBuf>,
    /// Also print the watch URLs on this relay (e.g. https://relay.example.com).
    #[arg(long)]
    base: Option<String>,
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad unit in {s:?}: use s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(mul)))
}

#[derive(Args)]
struct PublishArgs {
    /// Where to publish: http(s)://HOST:PORT/publish/NAME, ws(s)://HOST:PORT/publish/NAME,
    /// tcp://HOST:PORT or quic://HOST:PORT/NAME[?fingerprint=HEX].
    #[arg(long)]
    to: String,
    /// Pace the input at real time by its fragments' decode times.
    #[arg(long)]
    re: bool,
    /// Loop the file forever (timestamps keep increasing across loops).
    #[arg(long = "loop")]
    looped: bool,
    /// Publish key.
    #[arg(long, env = "RELAYCAST_KEY")]
    key: Option<String>,
    /// Give up after this many failed connection attempts in a row (0 = retry forever).
    #[arg(long, default_value_t = 0)]
    max_retries: u32,
    /// The fMP4 file to publish, or `-` for stdin.
    input: PathBuf,
}

#[derive(Args)]
struct WatchArgs {
    /// The stream: http(s)://HOST:PORT/live/NAME.mp4, ws(s)://HOST:PORT/live/NAME
    /// or quic://HOST:PORT/NAME[?fingerprint=HEX].
    url: String,
    /// Resume after this seq.
    #[arg(long)]
    after: Option<u64>,
    /// Output file, or `-` for stdout.
    #[arg(short, long, default_value = "-")]
    output: PathBuf,
    /// Stop after this many bytes.
    #[arg(long)]
    max_bytes: Option<u64>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "RELAYCAST_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP address (publish, watch, player, API).
    #[arg(long, env = "RELAYCAST_LISTEN")]
    listen: Option<SocketAddr>,
    /// Do not run the built-in demo stream.
    #[arg(long, env = "RELAYCAST_NO_DEMO")]
    no_demo: bool,
    /// A raw TCP ingest port: PORT=NAME (repeatable).
    #[arg(long = "tcp-ingest", value_name = "PORT=NAME")]
    tcp_ingest: Vec<TcpIngest>,
    /// One publish key for every stream.
    #[arg(long, env = "RELAYCAST_PUBLISH_KEY")]
    publish_key: Option<String>,
    /// Serve the player from this directory instead of the embedded copy.
    #[arg(long, env = "RELAYCAST_PLAYER_DIR")]
    player_dir: Option<PathBuf>,
    /// Log format: text or json (log.format in the file).
    #[arg(long, env = "RELAYCAST_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// PEM certificate chain: serve https and wss on the listen port.
    #[arg(long, env = "RELAYCAST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "RELAYCAST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With TLS: a plain-HTTP address that redirects to https.
    #[arg(long, env = "RELAYCAST_HTTP_REDIRECT")]
    http_redirect: Option<SocketAddr>,
    /// QUIC (relaycast/1) UDP address, e.g. 0.0.0.0:4433.
    #[arg(long, env = "RELAYCAST_QUIC")]
    quic: Option<SocketAddr>,
    /// RTMP ingest TCP address, e.g. 0.0.0.0:1935 (ingest.rtmp.listen).
    #[arg(long, env = "RELAYCAST_RTMP")]
    rtmp: Option<SocketAddr>,
    /// RTMPS ingest TCP address, with --tls-cert/--tls-key (ingest.rtmp.tls_listen).
    #[arg(long, env = "RELAYCAST_RTMPS")]
    rtmps: Option<SocketAddr>,
    /// SRT ingest UDP address, e.g. 0.0.0.0:9710 (ingest.srt.listen).
    #[arg(long, env = "RELAYCAST_SRT")]
    srt: Option<SocketAddr>,
    /// WHIP (WebRTC) media UDP address, e.g. 0.0.0.0:8443; turns on
    /// POST /whip/{name} (ingest.whip.listen).
    #[arg(long, env = "RELAYCAST_WEBRTC")]
    webrtc: Option<SocketAddr>,
    /// The IP in WHIP's ICE host candidate, when --webrtc listens on
    /// 0.0.0.0 or behind NAT (ingest.whip.public_ip).
    #[arg(long, env = "RELAYCAST_PUBLIC_IP")]
    public_ip: Option<std::net::IpAddr>,
    /// Pull streams on demand from this origin: quic://HOST:PORT[?fingerprint=HEX] (repeatable).
    #[arg(long = "origin", value_name = "URL")]
    origins: Vec<String>,
}

impl ServeArgs {
    /// The effective configuration: defaults < file < `RELAYCAST_A__B`
    /// environment < flags (and their own `RELAYCAST_*` variables).
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        c.apply_env(std::env::vars())?;
        if let Some(f) = self.log_format {
            c.log.format = f;
        }
        if let Some(l) = self.listen {
            c.server.listen = l;
        }
        if self.no_demo {
            c.server.demo = false;
        }
        c.ingest.tcp.extend(self.tcp_ingest.iter().cloned());
        if let Some(k) = &self.publish_key {
            c.ingest.publish_key = Some(k.clone());
        }
        if let Some(d) = &self.player_dir {
            c.server.player_dir = Some(d.clone());
        }
        if let Some(p) = &self.tls_cert {
            c.server.tls_cert = Some(p.clone());
        }
        if let Some(p) = &self.tls_key {
            c.server.tls_key = Some(p.clone());
        }
        if let Some(a) = self.http_redirect {
            c.server.http_redirect = Some(a);
        }
        if let Some(q) = self.quic {
            c.quic.listen = Some(q);
        }
        if let Some(a) = self.rtmp {
            c.ingest.rtmp.listen = Some(a);
        }
        if let Some(a) = self.rtmps {
            c.ingest.rtmp.tls_listen = Some(a);
        }
        if let Some(a) = self.srt {
            c.ingest.srt.listen = Some(a);
        }
        if let Some(a) = self.webrtc {
            c.ingest.whip.listen = Some(a);
        }
        if let Some(ip) = self.public_ip {
            c.ingest.whip.public_ip = Some(ip);
        }
        c.cascade.origins.extend(self.origins.iter().cloned());
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let serve_args = match &cli.command {
        None => Some(&cli.serve),
        Some(Command::Serve(a)) => Some(a),
        _ => None,
    };
    let config = serve_args.map(ServeArgs::config).transpose()?;
    let checking = matches!(cli.command, Some(Command::Config(_)));
    if let (Some(c), false) = (&config, checking) {
        // `serve` applies the very validation `config check` reports, before
        // anything else (logging included) uses the configuration.
        let problems = c.validate();
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("relaycast: config error: {p}");
            }
            anyhow::bail!("invalid configuration: {}", problems.join("; "));
        }
    }
    match &config {
        Some(c) if !checking => relaycast::logging::init(&c.log)?,
        _ => relaycast::logging::init(&LogConfig::default())?,
    }
    let rt = tokio::runtime::Runtime::new()?;
    match (cli.command, config) {
        (Some(Command::Config(ConfigCommand::Check(args))), _) => config_check(&args),
        (None | Some(Command::Serve(_)), config) => {
            let config = config.ok_or_else(|| anyhow::anyhow!("no configuration"))?;
            rt.block_on(serve(config))
        }
        (Some(Command::Publish(args)), _) => rt.block_on(publish(args)),
        (Some(Command::Watch(args)), _) => rt.block_on(watch(args)),
        (Some(Command::Sign(args)), _) => sign(args),
        (Some(Command::Load(args)), _) => load(args),
    }
}

fn config_check(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    print!("{}", config.to_toml_redacted());
    let problems = config.validate();
    if problems.is_empty() {
        eprintln!("relaycast: configuration OK");
        return Ok(());
    }
    for p in &problems {
        eprintln!("relaycast: config error: {p}");
    }
    anyhow::bail!("{} problem(s) in the configuration", problems.len())
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    if !relaycast::fanout::valid_name(&args.name) {
        anyhow::bail!("invalid stream name {:?}", args.name);
    }
    let secret = match (args.secret, &args.config) {
        (Some(s), _) => s,
        (None, Some(p)) => Config::from_file(p)?
            .auth
            .view_secret_for(&args.name)
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow::anyhow!("{} has no view secret for {:?}", p.display(), args.name)
            })?,
        (None, None) => anyhow::bail!("give --secret (or RELAYCAST_SIGN_SECRET) or --config"),
    };
    let q = relaycast::auth::signed_query(&secret, &args.name, args.ttl);
    println!("{q}");
    if let Some(base) = args.base {
        let base = base.trim_end_matches('/');
        let ws = base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        let n = &args.name;
        println!("{base}/watch/{n}?{q}");
        println!("{base}/live/{n}.mp4?{q}");
        println!("{ws}/live/{n}?{q}");
        println!("{base}/live/{n}/poll?{q}");
    }
    Ok(())
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    use relaycast::client::{Input, PublishOptions};
    let input = if args.input.as_os_str() == "-" {
        if args.looped {
            anyhow::bail!("--loop needs a file, not stdin");
        }
        Input::Stdin
    } else {
        Input::File(args.input)
    };
    let opts = PublishOptions {
        re: args.re,
        looped: args.looped,
        key: args.key,
        max_retries: args.max_retries,
    };
    let summary = relaycast::client::publish(&args.to, input, opts).await?;
    if !summary.is_empty() {
        println!("{summary}");
    }
    Ok(())
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let written = if args.output.as_os_str() == "-" {
        let mut out = tokio::io::stdout();
        relaycast::client::watch_after(&args.url, &mut out, args.max_bytes, args.after).await?
    } else {
        let mut out = tokio::fs::File::create(&args.output).await?;
        relaycast::client::watch_after(&args.url, &mut out, args.max_bytes, args.after).await?
    };
    tracing::info!(bytes = written, "watch: stream ended");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    heap_metrics();
    writer_metrics();
    let running = relaycast::server::start(config, None).await?;
    let scheme = if running.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("relaycast: listening on {scheme}://{}/", running.addr);
    if let Some(a) = running.redirect_addr {
        println!("relaycast: redirecting http://{a}/ to https");
    }
    for (name, addr) in &running.tcp_ingest {
        println!("relaycast: tcp ingest {name} on {addr}");
    }
    if let Some(a) = running.rtmp {
        println!("relaycast: RTMP ingest on rtmp://{a}/live");
    }
    if let Some(a) = running.rtmps {
        println!("relaycast: RTMPS ingest on rtmps://{a}/live");
    }
    if let Some(a) = running.srt {
        println!("relaycast: SRT ingest on srt://{a}");
    }
    if let Some(a) = running.webrtc {
        println!("relaycast: WHIP ingest on POST /whip/NAME, WebRTC media on udp://{a}");
    }
    if let Some(q) = &running.quic {
        println!(
            "relaycast: QUIC on {} (certificate sha256 {})",
            q.addr, q.fingerprint
        );
    }
    tracing::info!(addr = %running.addr, "relay started");
    let token = running.state.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    if !running.wait().await {
        tracing::warn!("shutdown deadline reached; exiting with connections still open");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
