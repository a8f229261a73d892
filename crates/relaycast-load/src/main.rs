//! `relaycast-load` (also run as `relaycast load`): the load generator. It publishes synthetic fMP4 streams
//! (or raw timestamped messages, for byte-pipe peers) at a chosen bitrate and
//! fragment rate, opens N viewers over one transport, verifies what each
//! receives (seq continuity, skips), and reports delivered throughput,
//! delivery latency (publisher send → viewer has the whole fragment), join
//! time, and the relay's memory and CPU read from `/proc/PID`.
//!
//! Stages, in order: [`synth`] makes the fragments, a publisher task per
//! stream sends them, a viewer task per viewer reads through a transport
//! ([`Transport`]) into a [`verify::Parser`], and [`run`] samples `/proc`
//! around a measured window and builds the [`Report`].
//!
//! Everything is bounded: viewer count, seconds, and it only talks to the
//! URLs given (the compare script gives loopback ones). It raises its own
//! `RLIMIT_NOFILE` (a spawned relay inherits it).
//!
//! Adding a transport: add a [`Transport`] variant and a `view_*`
//! function that feeds received bytes to [`ViewerCheck::bytes`]; everything
//! else (verification, figures) is shared. QUIC viewers live in [`quic`].

#![forbid(unsafe_code)]

use relaycast::{Error, media};

pub mod flv;
pub mod hls;
pub mod quic;
pub mod synth;
pub mod verify;
pub mod wsclient;

use bytes::Bytes;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use synth::{Synth, now_ns};
use verify::{Continuity, Parser, Received};

/// How viewers connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket (`ws://…`): binary payloads are the stream, text is skipped.
    Ws,
    /// One endless HTTP response (`http://…`), chunked or not.
    Http,
    /// relaycast long polling (`http://…/poll`, follows `x-relaycast-next`).
    Longpoll,
    /// Socket.IO over its WebSocket transport (`ws://…/socket.io/?EIO=4&transport=websocket`):
    /// binary attachments are the stream.
    Socketio,
    /// HTTP-FLV (`http://…/NAME.flv`, SRS): raw messages inside FLV video tags
    /// ([`flv`]); the publisher POSTs FLV to `--publish`. Implies `--raw`.
    Flv,
    /// relaycast/1 over QUIC (`quic://HOST:PORT/{stream}?fingerprint=HEX`), one
    /// connection per viewer; default URL from the relay's `/api/quic` (see [`quic`]).
    Quic,
    /// LL-HLS (`http://…/index.m3u8`): blocking playlist reloads that follow
    /// `_HLS_msn`/`_HLS_part`, and a GET per part (see [`hls`]).
    Hls,
}

/// The Socket.IO event a publisher emits per fragment (one binary attachment follows).
const SIO_CHUNK: &[u8] = br#"451-["chunk",{"_placeholder":true,"num":0}]"#;

/// Flags of `relaycast load`.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "relaycast-load",
    version,
    about = "Load generator for relaycast and its peers: publish synthetic streams, open N viewers, report figures"
)]
pub struct LoadArgs {
    /// Viewer transport.
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Viewers in total (spread over the streams).
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,
    /// Streams (each with its own publisher).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Measured seconds (after every viewer joined and the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds between the last join and the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Stream bitrate, bit/s (suffixes k, M, G).
    #[arg(long, default_value = "2.5M", value_parser = parse_rate)]
    pub bitrate: u64,
    /// Fragments per second (30 = a fragment per frame, 1 = a fragment per 1 s GOP).
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Seconds per group (keyframe interval).
    #[arg(long, default_value_t = 1.0)]
    pub gop: f64,
    /// Publish URL; `{stream}` is replaced by the stream name. Empty: publish nothing
    /// (another publisher feeds the streams).
    #[arg(long, default_value = "ws://127.0.0.1:8080/publish/{stream}")]
    pub publish: String,
    /// Watch URL; `{stream}` is replaced. Default by transport, on relaycast at 127.0.0.1:8080.
    #[arg(long)]
    pub watch: Option<String>,
    /// Stream names are PREFIX0, PREFIX1, …
    #[arg(long, default_value = "load")]
    pub prefix: String,
    /// Raw messages (32-byte header with seq and send time + filler) instead of
    /// fMP4, for relays that are byte pipes.
    #[arg(long)]
    pub raw: bool,
    /// PID of the relay to read RSS and CPU from.
    #[arg(long)]
    pub relay_pid: Option<u32>,
    /// Start the relay ourselves (`relaycast serve --no-demo --listen ADDR`; port 0 picks one)
    /// and measure it; `--publish`/`--watch` defaults then point at it.
    #[arg(long, value_name = "ADDR")]
    pub spawn_relay: Option<String>,
    /// The relaycast binary to spawn (default: this one), e.g. an older build for an A/B run.
    #[arg(long)]
    pub relay_bin: Option<std::path::PathBuf>,
    /// Extra flags for the spawned relay (`--config FILE` …), space-separated.
    #[arg(long, default_value = "")]
    pub spawn_args: String,
    /// relaycast stream info URL (`{stream}` replaced), to subtract ring growth from memory.
    #[arg(long)]
    pub info: Option<String>,
    /// Viewers started per second (0 = as fast as the connect limit allows).
    #[arg(long, default_value_t = 0.0)]
    pub join_rate: f64,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_parallel: usize,
    /// Seconds the viewers have to connect and be admitted, after the last
    /// one is due (`--join-rate`); a viewer not in by then counts as failed
    /// and the run goes on without it (a server that accepts slowly cannot
    /// hold the run up).
    #[arg(long, default_value_t = 60.0)]
    pub join_timeout: f64,
    /// Read buffer per WebSocket viewer, bytes.
    #[arg(long, default_value_t = 16 << 10)]
    pub read_buffer: usize,
    /// Hard cap on viewers (a guard against typos).
    #[arg(long, default_value_t = 20_000)]
    pub max_viewers: usize,
    /// Hard cap on seconds of the whole run.
    #[arg(long, default_value_t = 600.0)]
    pub max_seconds: f64,
    /// Print the report as one JSON line (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Socket.IO: text packet a viewer sends after connecting (`{stream}` replaced).
    /// Default for relaycast: `42["watch",{"name":"{stream}","wait":10}]`; give "" for a plain room relay.
    #[arg(long)]
    pub sio_emit: Option<String>,
    /// A label carried into the report.
    #[arg(long, default_value = "")]
    pub label: String,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|e| format!("{s}: {e}"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("{s}: must be positive"));
    }
    Ok((v * mul) as u64)
}

/// The figures of one run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `--label`.
    pub label: String,
    /// Viewer transport.
    pub transport: String,
    /// Raw messages instead of fMP4.
    pub raw: bool,
    /// Streams.
    pub streams: usize,
    /// Viewers asked for.
    pub viewers: usize,
    /// Viewers that connected.
    pub connected: u64,
    /// Viewers that failed to connect.
    pub connect_failed: u64,
    /// Viewers whose connection ended before the run did.
    pub dropped: u64,
    /// Stream bitrate, bit/s.
    pub bitrate: u64,
    /// Fragments per second.
    pub fps: f64,
    /// Bytes per fragment.
    pub fragment_bytes: usize,
    /// Measured window, s.
    pub window_s: f64,
    /// Fragment bytes delivered to viewers in the window, Gbit/s.
    pub gbit_s: f64,
    /// What the publishers sent times the viewers, Gbit/s (the target).
    pub expected_gbit_s: f64,
    /// Fragments delivered per second (all viewers).
    pub fragments_s: f64,
    /// Fragments delivered / fragments expected in the window (1.0 = all).
    pub delivered_ratio: f64,
    /// Delivery latency, ms.
    pub latency_ms: Percentiles,
    /// Join time (connect start → first keyframe fragment complete), ms.
    pub join_ms: Percentiles,
    /// Join time to the first fragment of any kind, ms.
    pub first_fragment_ms: Percentiles,
    /// LL-HLS only: publisher send time of the newest part a blocking
    /// playlist reload lists → that playlist answer received, ms.
    pub playlist_ms: Percentiles,
    /// Seq jumps seen by viewers (each a skip), whole run.
    pub skips: u64,
    /// Fragments jumped over.
    pub missed: u64,
    /// Fragments repeated or out of order.
    pub repeats: u64,
    /// Framing errors and unparsed bytes.
    pub errors: u64,
    /// Relay PID measured.
    pub relay_pid: Option<u32>,
    /// Relay RSS before viewers, KiB.
    pub relay_rss_base_kib: u64,
    /// Relay peak RSS in the window, KiB.
    pub relay_rss_peak_kib: u64,
    /// Ring growth between the two (relaycast only), KiB.
    pub ring_growth_kib: u64,
    /// (peak − base − ring growth) / connected viewers, bytes.
    pub mem_per_viewer_b: f64,
    /// Relay CPU seconds in the window.
    pub relay_cpu_s: f64,
    /// Relay CPU in the window, % of one core.
    pub relay_cpu_pct: f64,
    /// Relay CPU seconds per Gbit delivered.
    pub relay_cpu_s_per_gbit: f64,
    /// The load generator's own CPU in the window, % of one core.
    pub own_cpu_pct: f64,
    /// /proc/loadavg at the start and the end.
    pub loadavg: [String; 2],
}

/// Percentiles of a histogram, ms.
#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub n: u64,
    /// Median.
    pub p50: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            n: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

const SHARDS: usize = 16;

fn histogram() -> Histogram<u64> {
    // 1 µs … 120 s at 3 significant figures.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant, valid histogram bounds")
}

/// Shared counters and histograms of all viewers.
pub struct Tally {
    measuring: AtomicBool,
    latency: Vec<Mutex<Histogram<u64>>>,
    join: Mutex<Histogram<u64>>,
    first: Mutex<Histogram<u64>>,
    playlist: Vec<Mutex<Histogram<u64>>>,
    bytes: AtomicU64,
    fragments: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    skips: AtomicU64,
    missed: AtomicU64,
    repeats: AtomicU64,
    errors: AtomicU64,
    /// Fragments published per stream (for the expected count).
    published: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            measuring: AtomicBool::new(false),
            latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
            join: Mutex::new(histogram()),
            first: Mutex::new(histogram()),
            playlist: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
            bytes: AtomicU64::new(0),
            fragments: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            skips: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            published: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock() = Some(e);
    }
}

/// One viewer's state: parser, continuity, join.
pub struct ViewerCheck {
    id: usize,
    parser: Parser,
    cont: Continuity,
    started: Instant,
    joined: bool,
    first: bool,
    tally: Arc<Tally>,
    /// LL-HLS: (seq, when the playlist listing it arrived, Unix ns).
    playlist: Option<(u64, u64)>,
}

impl ViewerCheck {
    fn new(id: usize, raw: bool, tally: Arc<Tally>, started: Instant) -> ViewerCheck {
        ViewerCheck {
            id,
            parser: Parser::new(raw),
            cont: Continuity::default(),
            started,
            joined: false,
            first: false,
            tally,
            playlist: None,
        }
    }

    /// LL-HLS: the playlist that first listed fragment `seq` arrived at
    /// `at_ns` (Unix ns); recorded as the playlist answer latency once the
    /// fragment (and its send time) is read.
    pub fn mark_playlist(&mut self, seq: u64, at_ns: u64) {
        self.playlist = Some((seq, at_ns));
    }

    /// Feeds received stream bytes.
    pub fn bytes(&mut self, data: &[u8]) {
        let now = now_ns();
        let Self {
            parser,
            cont,
            tally,
            id,
            started,
            joined,
            first,
            playlist,
        } = self;
        parser.feed(data, |r: Received| {
            let before = (cont.skips, cont.missed, cont.repeats);
            cont.see(r.seq);
            let measuring = tally.measuring.load(Relaxed);
            if cont.skips != before.0 {
                tally.skips.fetch_add(1, Relaxed);
                tally.missed.fetch_add(cont.missed - before.1, Relaxed);
            }
            if cont.repeats != before.2 {
                tally.repeats.fetch_add(1, Relaxed);
            }
            if !*first {
                *first = true;
                let _ = tally
                    .first
                    .lock()
                    .record((started.elapsed().as_micros() as u64).max(1));
            }
            if !*joined && r.keyframe {
                *joined = true;
                let _ = tally
                    .join
                    .lock()
                    .record((started.elapsed().as_micros() as u64).max(1));
            }
            if measuring {
                tally.bytes.fetch_add(r.len, Relaxed);
                tally.fragments.fetch_add(1, Relaxed);
                if r.send_ns > 0 {
                    let us = (now.saturating_sub(r.send_ns) / 1000).max(1);
                    let _ = tally.latency[*id % SHARDS].lock().record(us);
                    if let Some((seq, at)) = *playlist
                        && seq == r.seq
                    {
                        let us = (at.saturating_sub(r.send_ns) / 1000).max(1);
                        let _ = tally.playlist[*id % SHARDS].lock().record(us);
                        *playlist = None;
                    }
                }
            }
        });
        if let Some(e) = self.parser.error.take() {
            self.tally.error(e);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = <LoadArgs as clap::Parser>::parse();
    relaycast::logging::init(&relaycast::config::LogConfig::default())?;
    tokio::runtime::Runtime::new()?.block_on(load(args))
}

/// Runs the load test and prints the report.
async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let report = run(args.clone()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "load: {} {} viewers ({} connected, {} failed, {} dropped) on {} stream(s), {:.2} Mbit/s @ {} frag/s ({} B)",
        r.transport,
        r.viewers,
        r.connected,
        r.connect_failed,
        r.dropped,
        r.streams,
        r.bitrate as f64 / 1e6,
        r.fps,
        r.fragment_bytes
    );
    println!(
        "  delivered {:.3} Gbit/s of {:.3} expected ({:.1}%), {:.0} fragments/s over {:.1} s",
        r.gbit_s,
        r.expected_gbit_s,
        r.delivered_ratio * 100.0,
        r.fragments_s,
        r.window_s
    );
    let p = &r.latency_ms;
    println!(
        "  latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} (n={})",
        p.p50, p.p99, p.p999, p.max, p.n
    );
    let p = &r.playlist_ms;
    if p.n > 0 {
        println!(
            "  playlist answer ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} (n={})",
            p.p50, p.p99, p.p999, p.max, p.n
        );
    }
    println!(
        "  join ms p50 {:.1} p99 {:.1} (first fragment p50 {:.1} p99 {:.1})",
        r.join_ms.p50, r.join_ms.p99, r.first_fragment_ms.p50, r.first_fragment_ms.p99
    );
    println!(
        "  skips {} (missed {}), repeats {}, errors {}",
        r.skips, r.missed, r.repeats, r.errors
    );
    if r.relay_pid.is_some() {
        println!(
            "  relay: RSS {} → {} KiB (ring +{} KiB), {:.0} B/viewer; CPU {:.2} s = {:.1}% of a core, {:.3} CPU s/Gbit",
            r.relay_rss_base_kib,
            r.relay_rss_peak_kib,
            r.ring_growth_kib,
            r.mem_per_viewer_b,
            r.relay_cpu_s,
            r.relay_cpu_pct,
            r.relay_cpu_s_per_gbit
        );
    }
    println!(
        "  load generator CPU {:.1}% of a core; loadavg {} → {}",
        r.own_cpu_pct, r.loadavg[0], r.loadavg[1]
    );
}

/// A spawned relay, killed on drop.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The whole run.
pub async fn run(mut args: LoadArgs) -> anyhow::Result<Report> {
    // FLV tags carry raw messages.
    args.raw |= args.transport == Transport::Flv;
    anyhow::ensure!(
        args.viewers <= args.max_viewers,
        "{} viewers is over --max-viewers {}",
        args.viewers,
        args.max_viewers
    );
    anyhow::ensure!(args.streams >= 1, "--streams must be at least 1");
    anyhow::ensure!(
        args.duration > 0.0 && args.duration + args.warmup <= args.max_seconds,
        "--duration must be positive and the run within --max-seconds"
    );
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_seconds);
    raise_nofile((args.viewers as u64) * 2 + 1024);

    let mut spawned = None;
    let mut relay_pid = args.relay_pid;
    let mut base_url = "127.0.0.1:8080".to_string();
    if let Some(addr) = &args.spawn_relay {
        let exe = match &args.relay_bin {
            Some(p) => p.clone(),
            // The relay binary installed beside this one.
            None => std::env::current_exe()?.with_file_name("relaycast"),
        };
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["serve", "--no-demo", "--listen", addr]);
        cmd.args(args.spawn_args.split_whitespace());
        // Limits meant for the public internet, lifted for a load test
        // (unless the environment sets them): every viewer comes from
        // 127.0.0.1, which the per-IP connection and Socket.IO session
        // limits (200) would refuse after the first few, and the saturation
        // ramps publish above the ingest bitrate cap (50 Mbit/s).
        for var in [
            "RELAYCAST_LIMITS__MAX_CONNECTIONS_PER_IP",
            "RELAYCAST_LIMITS__MAX_SESSIONS_PER_IP",
            "RELAYCAST_LIMITS__MAX_INGEST_BITRATE",
        ] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, "0");
            }
        }
        if args.transport == Transport::Quic && !args.spawn_args.contains("--quic") {
            cmd.args(quic::SPAWN_FLAG.split_whitespace());
        }
        cmd.stdout(std::process::Stdio::piped());
        let mut child = Spawned(cmd.spawn()?);
        relay_pid = Some(child.0.id());
        base_url = spawned_addr(&mut child.0).await?;
        spawned = Some(child);
    }
    let publish_url = if args.spawn_relay.is_some() {
        args.publish.replace("127.0.0.1:8080", &base_url)
    } else {
        args.publish.clone()
    };
    let quic_url = match (&args.watch, args.transport) {
        (None, Transport::Quic) => quic::watch_url(&base_url).await?,
        _ => String::new(),
    };
    let watch_url = args.watch.clone().unwrap_or_else(|| match args.transport {
        Transport::Quic => quic_url,
        Transport::Ws => format!("ws://{base_url}/live/{{stream}}?wait=10"),
        Transport::Http => format!("http://{base_url}/live/{{stream}}.mp4?wait=10"),
        Transport::Longpoll => format!("http://{base_url}/live/{{stream}}/poll"),
        Transport::Socketio => format!("ws://{base_url}/socket.io/?EIO=4&transport=websocket"),
        Transport::Flv => format!("http://{base_url}/live/{{stream}}.flv"),
        Transport::Hls => format!("http://{base_url}/live/{{stream}}/index.m3u8"),
    });
    let sio_emit = args
        .sio_emit
        .clone()
        .unwrap_or_else(|| r#"42["watch",{"name":"{stream}","wait":10}]"#.to_string());
    let info_url = args.info.clone().or_else(|| {
        args.spawn_relay
            .as_ref()
            .map(|_| format!("http://{base_url}/live/{{stream}}/info"))
    });

    let gop_frags = (args.gop * args.fps).round().max(1.0) as u64;
    let synth = Arc::new(Synth::new(args.bitrate, args.fps, gop_frags, args.raw)?);
    let tally = Arc::new(Tally::new());
    let names: Vec<String> = (0..args.streams)
        .map(|i| format!("{}{i}", args.prefix))
        .collect();
    let loadavg0 = loadavg();

    // Publishers.
    let mut tasks = tokio::task::JoinSet::new();
    if !publish_url.is_empty() {
        for name in &names {
            let url = publish_url.replace("{stream}", name);
            let synth = synth.clone();
            let tally = tally.clone();
            let fps = args.fps;
            let flv = args.transport == Transport::Flv;
            tasks.spawn(async move {
                let done = if flv {
                    flv::publish(&url, &synth, fps, &tally).await
                } else {
                    publish(&url, &synth, fps, &tally).await
                };
                if let Err(e) = done {
                    tally.error(format!("publisher {url}: {e}"));
                }
            });
        }
        // Let every stream reach its first keyframe and settle.
        tokio::time::sleep(Duration::from_secs_f64(0.5 + 1.0 / args.fps)).await;
    }
    let rss_base = relay_pid.map_or(0, |p| proc_rss_kib(p).unwrap_or(0));
    let ring_base = ring_bytes(info_url.as_deref(), &names).await;

    // Viewers.
    let connect = Arc::new(tokio::sync::Semaphore::new(args.connect_parallel.max(1)));
    let join_gap = if args.join_rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.join_rate)
    } else {
        Duration::ZERO
    };
    let join_start = Instant::now();
    let join_deadline =
        (join_start + join_gap * args.viewers as u32 + Duration::from_secs_f64(args.join_timeout))
            .min(deadline);
    let pending = Arc::new(AtomicU64::new(args.viewers as u64));
    for id in 0..args.viewers {
        if !join_gap.is_zero() {
            tokio::time::sleep_until((join_start + join_gap * id as u32).into()).await;
        }
        let name = &names[id % names.len()];
        let url = watch_url.replace("{stream}", name);
        let emit = sio_emit.replace("{stream}", name);
        let tally = tally.clone();
        // Waiting for a connection slot is bounded by the join deadline:
        // viewers never tried count as failed.
        let permit =
            match tokio::time::timeout_at(join_deadline.into(), connect.clone().acquire_owned())
                .await
            {
                Ok(p) => p?,
                Err(_) => {
                    let never = (args.viewers - id) as u64;
                    tally.failed.fetch_add(never, Relaxed);
                    pending.fetch_sub(never, Relaxed);
                    tally.error(format!(
                        "{never} viewers not tried: no connection slot within the join timeout"
                    ));
                    break;
                }
            };
        let pending = pending.clone();
        let (raw, transport, buf) = (args.raw, args.transport, args.read_buffer);
        tasks.spawn(async move {
            let viewer = View {
                id,
                url,
                sio_emit: emit,
                transport,
                raw,
                buf,
                join_deadline,
            };
            view(viewer, tally, permit, pending).await;
        });
    }
    // Wait for every viewer to connect or fail (bounded: each gives up at
    // the join deadline).
    while pending.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;

    // The measured window.
    let cpu0 = relay_pid.and_then(proc_cpu_s);
    let own0 = proc_cpu_s(std::process::id());
    let published0 = tally.published.load(Relaxed);
    tally.measuring.store(true, Relaxed);
    let t0 = Instant::now();
    let mut rss_peak = rss_base;
    let end = t0 + Duration::from_secs_f64(args.duration);
    while Instant::now() < end {
        let step = (end - Instant::now()).min(Duration::from_millis(500));
        tokio::time::sleep(step).await;
        if let Some(p) = relay_pid {
            rss_peak = rss_peak.max(proc_rss_kib(p).unwrap_or(0));
        }
    }
    tally.measuring.store(false, Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = relay_pid.and_then(proc_cpu_s);
    let own1 = proc_cpu_s(std::process::id());
    let published = tally.published.load(Relaxed) - published0;
    let ring_end = ring_bytes(info_url.as_deref(), &names).await;
    let loadavg1 = loadavg();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(spawned);

    let t = &tally;
    let mut lat = histogram();
    for h in &t.latency {
        let _ = lat.add(&*h.lock());
    }
    let mut playlist = histogram();
    for h in &t.playlist {
        let _ = playlist.add(&*h.lock());
    }
    let connected = t.connected.load(Relaxed);
    let bytes = t.bytes.load(Relaxed) as f64;
    let fragments = t.fragments.load(Relaxed) as f64;
    let gbit = bytes * 8.0 / 1e9;
    let relay_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let own_cpu = match (own0, own1) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let ring_growth = ring_end.saturating_sub(ring_base) / 1024;
    let expected_frags = published as f64 / args.streams as f64 * connected as f64;
    if let Some(e) = t.last_error.lock().take() {
        eprintln!("load: last error: {e}");
    }
    Ok(Report {
        label: args.label.clone(),
        transport: format!("{:?}", args.transport).to_lowercase(),
        raw: args.raw,
        streams: args.streams,
        viewers: args.viewers,
        connected,
        connect_failed: t.failed.load(Relaxed),
        dropped: t.dropped.load(Relaxed),
        bitrate: args.bitrate,
        fps: args.fps,
        fragment_bytes: synth.fragment_len(),
        window_s: window,
        gbit_s: gbit / window,
        expected_gbit_s: args.bitrate as f64 * connected as f64 / 1e9,
        fragments_s: fragments / window,
        delivered_ratio: if expected_frags > 0.0 {
            fragments / expected_frags
        } else {
            0.0
        },
        latency_ms: Percentiles::of(&lat),
        join_ms: Percentiles::of(&t.join.lock()),
        first_fragment_ms: Percentiles::of(&t.first.lock()),
        playlist_ms: Percentiles::of(&playlist),
        skips: t.skips.load(Relaxed),
        missed: t.missed.load(Relaxed),
        repeats: t.repeats.load(Relaxed),
        errors: t.errors.load(Relaxed),
        relay_pid,
        relay_rss_base_kib: rss_base,
        relay_rss_peak_kib: rss_peak,
        ring_growth_kib: ring_growth,
        mem_per_viewer_b: if connected > 0 && relay_pid.is_some() {
            (rss_peak
                .saturating_sub(rss_base)
                .saturating_sub(ring_growth) as f64
                * 1024.0)
                / connected as f64
        } else {
            0.0
        },
        relay_cpu_s: relay_cpu,
        relay_cpu_pct: relay_cpu / window * 100.0,
        relay_cpu_s_per_gbit: if gbit > 0.0 { relay_cpu / gbit } else { 0.0 },
        own_cpu_pct: own_cpu / window * 100.0,
        loadavg: [loadavg0, loadavg1],
    })
}

/// The address a spawned relay says it listens on (its first stdout line,
/// `relaycast: listening on http://ADDR/`), so `--spawn-relay 127.0.0.1:0` works.
async fn spawned_addr(child: &mut std::process::Child) -> anyhow::Result<String> {
    let Some(out) = child.stdout.take() else {
        anyhow::bail!("spawned relay has no stdout");
    };
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(out);
        let mut line = String::new();
        let n = r.read_line(&mut line);
        // Keep draining stdout so the relay never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
        n.map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line).await???;
    line.trim()
        .strip_prefix("relaycast: listening on http://")
        .map(|a| a.trim_end_matches('/').to_string())
        .ok_or_else(|| anyhow::anyhow!("spawned relay did not start: {line:?}"))
}

/// Publishes fragments at `fps` until aborted.
async fn publish(url: &str, synth: &Synth, fps: f64, tally: &Tally) -> std::io::Result<()> {
    let mut ws = wsclient::connect(url, 4096).await?;
    let socketio = url.contains("/socket.io/");
    if socketio {
        ws.wait_text(b"0").await?;
        ws.send(wsclient::op::TEXT, b"40").await?;
        ws.wait_text(b"40").await?;
    }
    let Some(mut wr) = ws.take_writer() else {
        return Err(std::io::Error::other("no writer"));
    };
    // Drain whatever the relay says (control messages, close); pass on
    // Engine.IO pings, to be answered from here.
    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let reader = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = ws
            .read_all(|p| {
                if let wsclient::Piece::Data { text: true, bytes } = p {
                    text.extend_from_slice(&bytes[..bytes.len().min(4)]);
                    if text.as_slice() == b"2" {
                        let _ = ping_tx.send(());
                    }
                    text.clear();
                }
            })
            .await;
    });
    let _abort = AbortOnDrop(reader);
    let init = synth.init();
    if !init.is_empty() {
        if socketio {
            wsclient::write_frame(&mut wr, wsclient::op::TEXT, SIO_CHUNK).await?;
        }
        wsclient::write_frame(&mut wr, wsclient::op::BINARY, &init).await?;
    }
    let period = Duration::from_secs_f64(1.0 / fps);
    let start = tokio::time::Instant::now();
    let mut seq = 0u64;
    loop {
        let frag: Bytes = synth.fragment(seq, now_ns());
        if socketio {
            wsclient::write_frame(&mut wr, wsclient::op::TEXT, SIO_CHUNK).await?;
        }
        wsclient::write_frame(&mut wr, wsclient::op::BINARY, &frag).await?;
        if tally.measuring.load(Relaxed) {
            tally.published.fetch_add(1, Relaxed);
        }
        seq += 1;
        let next = start + period * seq as u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                Some(()) = ping_rx.recv() => {
                    wsclient::write_frame(&mut wr, wsclient::op::TEXT, b"3").await?;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one viewer connects to, and how.
struct View {
    id: usize,
    url: String,
    sio_emit: String,
    transport: Transport,
    raw: bool,
    buf: usize,
    /// When a viewer not yet connected and admitted counts as failed.
    join_deadline: Instant,
}

async fn view(
    v: View,
    tally: Arc<Tally>,
    permit: tokio::sync::OwnedSemaphorePermit,
    pending: Arc<AtomicU64>,
) {
    let View {
        id,
        url,
        sio_emit,
        transport,
        raw,
        buf,
        join_deadline,
    } = v;
    let started = Instant::now();
    let mut check = ViewerCheck::new(id, raw, tally.clone(), started);
    let mut permit = Some(permit);
    let mut was_connected = false;
    let is_joined = std::sync::atomic::AtomicBool::new(false);
    let mut joined = |ok: bool| {
        is_joined.store(true, Relaxed);
        if permit.take().is_some() {
            pending.fetch_sub(1, Relaxed);
            if ok {
                was_connected = true;
                tally.connected.fetch_add(1, Relaxed);
            } else {
                tally.failed.fetch_add(1, Relaxed);
            }
        }
    };
    let result = {
        let work = async {
            match transport {
                Transport::Ws => view_ws(&url, buf, None, &mut check, &mut joined).await,
                Transport::Socketio => {
                    view_ws(&url, buf, Some(&sio_emit), &mut check, &mut joined).await
                }
                Transport::Http => view_http(&url, &mut check, &mut joined).await,
                Transport::Longpoll => view_longpoll(&url, &mut check, &mut joined).await,
                Transport::Flv => flv::view(&url, &mut check, &mut joined).await,
                Transport::Quic => quic::view(id, &url, &mut check, &mut joined).await,
                Transport::Hls => hls::view(&url, &mut check, &mut joined).await,
            }
        };
        // A viewer not connected and admitted by the join deadline gives up.
        let too_slow = async {
            tokio::time::sleep_until(join_deadline.into()).await;
            if is_joined.load(Relaxed) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = work => r,
            () = too_slow => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "not connected and admitted within the join timeout",
            )),
        }
    };
    if let Err(e) = &result {
        tally.error(format!("viewer {id}: {e}"));
    }
    // Never connected: counts as failed (no-op otherwise).
    joined(false);
    // A viewer whose connection ended before the run did counts as dropped.
    if was_connected {
        tally.dropped.fetch_add(1, Relaxed);
    }
}

async fn view_ws(
    url: &str,
    buf: usize,
    socketio: Option<&str>,
    check: &mut ViewerCheck,
    joined: &mut impl FnMut(bool),
) -> std::io::Result<()> {
    let opened = async {
        let mut ws = wsclient::connect(url, buf).await?;
        if let Some(emit) = socketio {
            ws.engine_io = true;
            ws.wait_text(b"0").await?;
            ws.send(wsclient::op::TEXT, b"40").await?;
            ws.wait_text(b"40").await?;
            if !emit.is_empty() {
                ws.send(wsclient::op::TEXT, emit.as_bytes()).await?;
            }
        }
        Ok::<_, std::io::Error>(ws)
    };
    let mut ws = match opened.await {
        Ok(ws) => ws,
        Err(e) => {
            joined(false);
            return Err(e);
        }
    };
    joined(true);
    ws.read_all(|piece| {
        if let wsclient::Piece::Data { text: false, bytes } = piece {
            check.bytes(bytes);
        }
    })
    .await
}

async fn http_get(
    url: &str,
) -> std::io::Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>> {
    let (host, _) = wsclient::split_url(url, "http://")?;
    let tcp = tokio::net::TcpStream::connect(&host).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

fn request(url: &str) -> std::io::Result<hyper::Request<http_body_util::Empty<Bytes>>> {
    let (host, path) = wsclient::split_url(url, "http://")?;
    hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::new())
        .map_err(std::io::Error::other)
}

/// GET `url` and hand back the body of a 2xx answer; `joined` is told
/// whether the viewer got one.
async fn http_body(
    url: &str,
    joined: &mut impl FnMut(bool),
) -> std::io::Result<hyper::body::Incoming> {
    let resp = async {
        let mut send = http_get(url).await?;
        let resp = send
            .send_request(request(url)?)
            .await
            .map_err(std::io::Error::other)?;
        if !resp.status().is_success() {
            return Err(std::io::Error::other(format!("status {}", resp.status())));
        }
        Ok(resp)
    }
    .await;
    joined(resp.is_ok());
    resp.map(hyper::Response::into_body)
}

async fn view_http(
    url: &str,
    check: &mut ViewerCheck,
    joined: &mut impl FnMut(bool),
) -> std::io::Result<()> {
    use http_body_util::BodyExt;
    let mut body = http_body(url, joined).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            check.bytes(data);
        }
    }
    Ok(())
}

async fn view_longpoll(
    url: &str,
    check: &mut ViewerCheck,
    joined: &mut impl FnMut(bool),
) -> std::io::Result<()> {
    use http_body_util::BodyExt;
    let mut send = match http_get(url).await {
        Ok(s) => s,
        Err(e) => {
            joined(false);
            return Err(e);
        }
    };
    let mut after: Option<String> = None;
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut first = true;
    loop {
        let u = match &after {
            Some(a) => format!("{url}{sep}after={a}&wait=10"),
            None => format!("{url}{sep}wait=10"),
        };
        send.ready().await.map_err(std::io::Error::other)?;
        let resp = match send.send_request(request(&u)?).await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                joined(false);
                return Err(std::io::Error::other(format!("status {}", r.status())));
            }
            Err(e) => {
                joined(false);
                return Err(std::io::Error::other(e));
            }
        };
        if first {
            joined(true);
            first = false;
        }
        if let Some(n) = resp.headers().get("x-relaycast-next")
            && let Ok(n) = n.to_str()
        {
            after = Some(n.to_string());
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        check.bytes(&body);
    }
}

/// Raises the soft `RLIMIT_NOFILE` towards `want` (up to the hard limit).
pub fn raise_nofile(want: u64) {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < want
    {
        let _ = rlimit::Resource::NOFILE.set(want.min(hard), hard);
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Resident set size of `pid`, KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of `pid` (all its threads), seconds. Assumes USER_HZ = 100,
/// the value on every Linux architecture this runs on.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

async fn ring_bytes(info: Option<&str>, names: &[String]) -> u64 {
    use http_body_util::BodyExt;
    let Some(info) = info else { return 0 };
    let mut total = 0;
    for name in names {
        let url = info.replace("{stream}", name);
        let got = async {
            let mut send = http_get(&url).await.ok()?;
            let resp = send.send_request(request(&url).ok()?).await.ok()?;
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            v.get("ring_bytes")?.as_u64()
        }
        .await;
        total += got.unwrap_or(0);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2.5M"), Ok(2_500_000));
        assert_eq!(parse_rate("500k"), Ok(500_000));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("x").is_err());
    }

    #[test]
    fn proc_reads_itself() {
        let me = std::process::id();
        assert!(proc_rss_kib(me).is_some_and(|k| k > 0));
        assert!(proc_cpu_s(me).is_some());
    }

    #[test]
    fn a_viewer_counts_skips() {
        let tally = Arc::new(Tally::new());
        tally.measuring.store(true, Relaxed);
        let s = Synth::new(800_000, 25.0, 5, false).expect("synth");
        let mut v = ViewerCheck::new(0, false, tally.clone(), Instant::now());
        v.bytes(&s.init());
        for seq in [5, 6, 7, 10, 11] {
            v.bytes(&s.fragment(seq, now_ns()));
        }
        assert_eq!(tally.skips.load(Relaxed), 1);
        assert_eq!(tally.missed.load(Relaxed), 2);
        assert_eq!(tally.fragments.load(Relaxed), 5);
        assert_eq!(tally.join.lock().len(), 1);
        assert_eq!(tally.latency[0].lock().len(), 5);
    }
}
