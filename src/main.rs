//! The `relaycast` command: `serve` (the default), `publish`, `watch`.
//! Thin: parse flags, set up tracing and signals, call the library.

use clap::{Args, Parser, Subcommand};
use relaycast::config::{Config, TcpIngest};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Load generator: publish synthetic streams, open N viewers, report figures.
    Load(relaycast::load::LoadArgs),
}

#[derive(Args)]
struct PublishArgs {
    /// Where to publish: http://HOST:PORT/publish/NAME, ws://HOST:PORT/publish/NAME or tcp://HOST:PORT.
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
    /// The stream: http://HOST:PORT/live/NAME.mp4 or ws://HOST:PORT/live/NAME.
    url: String,
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
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
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
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "relaycast=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        None => rt.block_on(serve(cli.serve)),
        Some(Command::Serve(args)) => rt.block_on(serve(args)),
        Some(Command::Publish(args)) => rt.block_on(publish(args)),
        Some(Command::Watch(args)) => rt.block_on(watch(args)),
        Some(Command::Load(args)) => rt.block_on(relaycast::load::main(args)),
    }
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
        relaycast::client::watch(&args.url, &mut out, args.max_bytes).await?
    } else {
        let mut out = tokio::fs::File::create(&args.output).await?;
        relaycast::client::watch(&args.url, &mut out, args.max_bytes).await?
    };
    tracing::info!(bytes = written, "watch: stream ended");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let running = relaycast::server::start(config, None).await?;
    println!("relaycast: listening on http://{}/", running.addr);
    for (name, addr) in &running.tcp_ingest {
        println!("relaycast: tcp ingest {name} on {addr}");
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
