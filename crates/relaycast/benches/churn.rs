//! Churn bench (issue #7): the real binary, 10,000 viewers connecting and
//! leaving over a minute (WebSocket and HTTP streaming, each staying 0.2–3 s),
//! a publisher that disconnects and reconnects 100 times, and 50 viewers that
//! stay throughout. After every round, and again after a settle period, it
//! reads the relay's heap from /metrics (`relaycast_heap_allocated_bytes`,
//! jemalloc's live bytes: a leak shows there) and its RSS from /proc (freed
//! memory the allocator still holds shows only there).
//!
//! Checks (exits non-zero with a FAIL line when one fails):
//! - no leak: allocated bytes besides the stream's ring (whose size varies
//!   with the publisher, not with churn) after the churn and the settle
//!   period are within 512 KiB of the baseline (publisher + stayers, before
//!   any churn), and grow by no more than that from the first round to the
//!   last;
//! - RSS back to baseline: after the settle period, RSS ≤ baseline +
//!   max(2 MiB, 10 %);
//! - every churning viewer was served (viewers × rounds, none failed), at
//!   the requested pace;
//! - every publisher session (reconnects + 1) was accepted and ended 200;
//! - every staying viewer is still connected, got every fragment in order
//!   across all reconnects (seq continuity), and resumed after the last one;
//! - no panic in the relay's stderr, clean exit on SIGTERM.
//!
//!   cargo bench --bench churn                      # 2 rounds of 10,000 viewers over 60 s, 100 reconnects
//!   CHURN_QUICK=1 cargo bench --bench churn        # ~25 s: 2 × 500 viewers over 3 s, 10 reconnects
//!   CHURN_QUICK=1 cargo test --bench churn         # the same on a debug build (.ci/run does this)
//!
//! Knobs: CHURN_VIEWERS (per round), CHURN_SECS (per round), CHURN_ROUNDS,
//! CHURN_RECONNECTS, CHURN_SETTLE (seconds after the last round, default 5),
//! CHURN_RELAY_BIN (another relaycast binary, for A/B), CHURN_WRAP (run the
//! relay under a tool, e.g. `heaptrack`); `_RJEM_MALLOC_CONF` is passed on to
//! the relay (jemalloc options).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/opsutil/mod.rs"]
mod opsutil;

use bytes::Bytes;
use futures_util::StreamExt;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const STAYERS: usize = 50;
/// Heap growth tolerated after the churn (allocator caches, tokio's slabs
/// sized to the peak): a leak of 40 B per connection over 2 × 10,000
/// viewers would be 0.8 MiB.
const LEAK_SLACK: u64 = 512 << 10;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic pseudo-random numbers (xorshift), no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Counters {
    churn_ok: AtomicUsize,
    churn_failed: AtomicUsize,
    churn_bytes: AtomicU64,
}

/// A viewer that stays: (fragments, publisher back events, close).
#[derive(Debug, Default, Clone)]
struct Stayer {
    fragments: u64,
    backs: u64,
    gones: u64,
    last_seq: u64,
    /// Fragments whose seq was not the previous one + 1 (0 = nothing missed).
    gaps: u64,
    closed: Option<String>,
}

async fn stayer(addr: String, out: Arc<parking_lot::Mutex<Stayer>>) {
    let Ok((mut ws, _)) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/live/churn?wait=10")).await
    else {
        out.lock().closed = Some("connect failed".into());
        return;
    };
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = match serde_json::from_str(&t) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let mut s = out.lock();
                match v["type"].as_str() {
                    Some("fragment") => {
                        let seq = v["seq"].as_u64().unwrap_or(0);
                        if s.fragments > 0 && seq != s.last_seq + 1 {
                            s.gaps += 1;
                        }
                        s.fragments += 1;
                        s.last_seq = seq;
                    }
                    Some("publisher") if v["state"] == "back" => s.backs += 1,
                    Some("publisher") => s.gones += 1,
                    _ => {}
                }
            }
            Ok(Message::Close(f)) => {
                out.lock().closed = Some(format!("{f:?}"));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                out.lock().closed = Some(e.to_string());
                return;
            }
        }
    }
    out.lock().closed = Some("ended".into());
}

/// One churning viewer: connect, read for `stay`, leave.
async fn churner(addr: String, ws: bool, stay: Duration, c: Arc<Counters>) {
    let r = tokio::time::timeout(stay + Duration::from_secs(10), async {
        if ws {
            let (mut s, _) =
                tokio_tungstenite::connect_async(format!("ws://{addr}/live/churn?wait=5"))
                    .await
                    .map_err(|e| e.to_string())?;
            let end = tokio::time::Instant::now() + stay;
            while let Ok(Some(m)) = tokio::time::timeout_at(end, s.next()).await {
                if let Ok(Message::Binary(b)) = m {
                    c.churn_bytes.fetch_add(b.len() as u64, Relaxed);
                }
            }
            // Leave like a closed tab: half the time politely, else just drop.
            if stay.subsec_millis() % 2 == 0 {
                let _ = s.close(None).await;
            }
        } else {
            use http_body_util::BodyExt;
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::get("/live/churn.mp4?wait=5")
                .header("host", &addr)
                .body(http_body_util::Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let mut body = resp.into_body();
            let end = tokio::time::Instant::now() + stay;
            while let Ok(Some(Ok(f))) = tokio::time::timeout_at(end, body.frame()).await {
                if let Some(d) = f.data_ref() {
                    c.churn_bytes.fetch_add(d.len() as u64, Relaxed);
                }
            }
        }
        Ok::<(), String>(())
    })
    .await;
    match r {
        Ok(Ok(())) => c.churn_ok.fetch_add(1, Relaxed),
        _ => c.churn_failed.fetch_add(1, Relaxed),
    };
}

/// The relay's /metrics text.
async fn scrape(addr: &str) -> Option<String> {
    get(addr, "/metrics").await
}

/// The sum of a family's samples (`name` or `name{…}`) in a scrape.
fn metric_sum(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) {
            *found.get_or_insert(0) += v;
        }
    }
    found
}

async fn scrape_viewers(addr: &str) -> Option<u64> {
    metric_sum(&scrape(addr).await?, "relaycast_viewers")
}

async fn settle(addr: &str, want: u64, pause: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if scrape_viewers(addr).await == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let freed memory settle.
    tokio::time::sleep(pause).await;
    t.elapsed()
}

/// The relay's memory at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss: u64,
    /// `relaycast_heap_allocated_bytes` (None: the relay does not export it).
    allocated: Option<u64>,
    /// `relaycast_heap_resident_bytes`.
    resident: Option<u64>,
    /// The stream's ring (`ring_bytes` of /live/churn/info): live heap that
    /// varies with the publisher's position in the clip, not with churn.
    ring: u64,
}

impl Mem {
    /// Allocated bytes besides the ring's fragments.
    fn net(&self) -> Option<u64> {
        Some(self.allocated?.saturating_sub(self.ring))
    }
}

async fn get(addr: &str, path: &str) -> Option<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr)
        .body(http_body_util::Empty::<Bytes>::new())
        .ok()?;
    use http_body_util::BodyExt;
    let body = sender
        .send_request(req)
        .await
        .ok()?
        .into_body()
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(String::from_utf8_lossy(&body).to_string())
}

async fn mem(addr: &str, pid: u32) -> Mem {
    let info = get(addr, "/live/churn/info").await.unwrap_or_default();
    let ring = serde_json::from_str::<serde_json::Value>(&info)
        .ok()
        .and_then(|v| v["ring_bytes"].as_u64())
        .unwrap_or(0);
    let text = scrape(addr).await.unwrap_or_default();
    Mem {
        rss: opsutil::rss_of(pid).unwrap_or(0),
        allocated: metric_sum(&text, "relaycast_heap_allocated_bytes"),
        resident: metric_sum(&text, "relaycast_heap_resident_bytes"),
        ring,
    }
}

fn mb(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

impl std::fmt::Display for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {:.2} MiB", mb(self.rss))?;
        match (self.allocated, self.resident) {
            (Some(a), Some(r)) => write!(
                f,
                ", heap allocated {:.2} MiB ({:.2} MiB besides the ring's {:.2} MiB), heap resident {:.2} MiB",
                mb(a),
                mb(a.saturating_sub(self.ring)),
                mb(self.ring),
                mb(r)
            ),
            _ => write!(f, ", heap allocated n/a"),
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let failed = rt.block_on(run());
    if failed {
        std::process::exit(1);
    }
}

async fn run() -> bool {
    let quick = std::env::var("CHURN_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let (dv, ds, dr) = if quick {
        (500, 3, 10)
    } else {
        (10_000, 60, 100)
    };
    let viewers = env_or("CHURN_VIEWERS", dv) as usize;
    let secs = env_or("CHURN_SECS", ds);
    let rounds = env_or("CHURN_ROUNDS", 2).max(1) as usize;
    let reconnects = env_or("CHURN_RECONNECTS", dr) as usize;
    let settle_secs = env_or("CHURN_SETTLE", if quick { 3 } else { 5 });
    println!(
        "churn: {rounds} round(s) of {viewers} viewers over {secs} s, {reconnects} publisher reconnects, \
         {STAYERS} staying viewers, {settle_secs} s settle{}",
        if quick { " (CHURN_QUICK)" } else { "" }
    );
    let bin = std::env::var("CHURN_RELAY_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_relaycast").to_string());
    // CHURN_WRAP runs the relay under a tool (e.g. `heaptrack`).
    let wrap = std::env::var("CHURN_WRAP").ok().filter(|w| !w.is_empty());
    let mut cmd = match &wrap {
        Some(w) => {
            let mut c = Command::new(w);
            c.arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let mut child = cmd
        .args(["serve", "--no-demo", "--listen", "127.0.0.1:0"])
        .env("RELAYCAST_FANOUT__GRACE", "10")
        // Every viewer comes from 127.0.0.1 here.
        .env("RELAYCAST_LIMITS__MAX_CONNECTIONS_PER_IP", "1000000")
        .env("RUST_LOG", "relaycast=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relaycast");
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    // A wrapper may print first: find the relay's line.
    while !line.starts_with("relaycast: listening") {
        line.clear();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("relay exited before listening");
        }
    }
    let addr = line
        .trim()
        .strip_prefix("relaycast: listening on http://")
        .and_then(|a| a.strip_suffix('/'))
        .expect("listening line")
        .to_string();
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let rss = || opsutil::rss_of(pid).unwrap_or(0);
    let start = mem(&addr, pid).await;

    // The publisher: the 5 s every-frame clip at ~2x real time, then it
    // hangs up and comes back, `reconnects` times over the whole run.
    let file = Bytes::from(
        std::fs::read(concat!(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../.."),
            "/tests/fixtures/h264_aac_every_frame.mp4"
        ))
        .expect("fixture"),
    );
    // Long enough to span every round (connect span + the longest stay +
    // the wait for the last to leave) and the settle period.
    let total_ms = ((secs + 5) * rounds as u64 + settle_secs) * 1000;
    let per_session = Duration::from_millis(total_ms / (reconnects as u64 + 1));
    let sessions_done = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let addr = addr.clone();
        let done = sessions_done.clone();
        let file = file.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..=reconnects {
                let t = Instant::now();
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
                let url = format!("http://{addr}/publish/churn");
                let put = tokio::spawn(async move { common::put_stream(&url, rx).await });
                // Whole clips only, so each session ends on a box boundary.
                'session: loop {
                    for piece in file.chunks(4000) {
                        if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                            break 'session;
                        }
                        tokio::time::sleep(Duration::from_millis(8)).await;
                    }
                    if t.elapsed() >= per_session {
                        break;
                    }
                }
                drop(tx);
                statuses.push(put.await.map(|r| r.0).unwrap_or(0));
                done.fetch_add(1, Relaxed);
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut stayers = Vec::new();
    for _ in 0..STAYERS {
        let s = Arc::new(parking_lot::Mutex::new(Stayer::default()));
        tokio::spawn(stayer(addr.clone(), s.clone()));
        stayers.push(s);
    }
    settle(&addr, STAYERS as u64, Duration::from_secs(settle_secs)).await;
    let baseline = mem(&addr, pid).await;
    println!("churn: at start:  {start}");
    println!("churn: baseline:  {baseline} (publisher + {STAYERS} viewers, before any churn)");

    let counters = Arc::new(Counters::default());
    let mut after: Vec<Mem> = Vec::new();
    let mut peak = baseline.rss;
    let mut spans = Vec::new();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for round in 1..=rounds {
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(viewers);
        for i in 0..viewers {
            let at = Duration::from_micros(secs * 1_000_000 * i as u64 / viewers as u64);
            if let Some(wait) = at.checked_sub(t0.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let stay = Duration::from_millis(200 + rng.next() % 2800);
            tasks.push(tokio::spawn(churner(
                addr.clone(),
                i % 2 == 0,
                stay,
                counters.clone(),
            )));
            if i % 500 == 0 {
                peak = peak.max(rss());
            }
        }
        let connect_span = t0.elapsed();
        spans.push(connect_span);
        for t in tasks {
            let _ = t.await;
        }
        let settled = settle(&addr, STAYERS as u64, Duration::from_secs(1)).await;
        let m = mem(&addr, pid).await;
        peak = peak.max(m.rss);
        after.push(m);
        println!(
            "churn: round {round}: {viewers} viewers connected over {connect_span:.1?}, gone {settled:.1?} \
             after the last left: {m} (RSS peak {:.1} MiB); churners ok {} failed {}",
            mb(peak),
            counters.churn_ok.load(Relaxed),
            counters.churn_failed.load(Relaxed)
        );
    }
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let settled = mem(&addr, pid).await;
    println!("churn: after {settle_secs} s settle: {settled}");

    // Let the publisher finish its sessions, then check the stayers resume.
    let statuses = publisher.await.expect("publisher");
    let before_last = stayers
        .iter()
        .map(|s| s.lock().fragments)
        .collect::<Vec<_>>();
    // One more session: every stayer must receive it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let url = format!("http://{addr}/publish/churn");
    let put = tokio::spawn(async move { common::put_stream(&url, rx).await });
    for piece in file.chunks(4000) {
        let _ = tx.send(Bytes::copy_from_slice(piece)).await;
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snapshot: Vec<Stayer> = stayers.iter().map(|s| s.lock().clone()).collect();
    drop(tx);
    let _ = put.await;

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().expect("wait");
    let log = log.join().unwrap_or_default();

    let mut failed = false;
    let mut check = |ok: bool, what: String| {
        println!("churn: {} {what}", if ok { "ok  " } else { "FAIL" });
        failed |= !ok;
    };
    let publishes = sessions_done.load(Relaxed);
    check(
        statuses.iter().all(|&s| s == 200) && publishes == reconnects + 1,
        format!(
            "{publishes} publisher sessions ({} reconnects) all accepted and finished with 200",
            publishes.saturating_sub(1)
        ),
    );
    let ok = counters.churn_ok.load(Relaxed);
    let bad = counters.churn_failed.load(Relaxed);
    // The pace: every round's connections spread over `secs`, not much longer.
    let slowest = spans.iter().max().copied().unwrap_or_default();
    check(
        ok == viewers * rounds
            && bad == 0
            && slowest <= Duration::from_secs(secs) * 11 / 10 + Duration::from_secs(1),
        format!(
            "{ok} of {} churning viewers served ({bad} failed), each round's connections over ≤ {slowest:.1?} (asked {secs} s)",
            viewers * rounds
        ),
    );
    let panicked = log.contains("panicked");
    if panicked {
        for l in log.lines().filter(|l| l.contains("panicked")).take(3) {
            println!("churn: relay: {l}");
        }
    }
    check(!panicked, "no panic in the relay's stderr".into());
    check(
        status.success(),
        format!("relay exited cleanly on SIGTERM ({status})"),
    );
    let min_backs = snapshot.iter().map(|s| s.backs).min().unwrap_or(0);
    let mut reasons: Vec<String> = snapshot.iter().filter_map(|s| s.closed.clone()).collect();
    reasons.dedup();
    if !reasons.is_empty() {
        println!(
            "churn: staying viewers closed: {:?}",
            &reasons[..reasons.len().min(3)]
        );
    }
    let mut codes = statuses.clone();
    codes.sort_unstable();
    codes.dedup();
    println!("churn: publisher statuses seen: {codes:?}");
    check(
        snapshot.iter().all(|s| s.closed.is_none()),
        format!("all {STAYERS} staying viewers still connected after the churn"),
    );
    // Seqs keep counting across reconnects: no gap means the viewer resumed
    // after every one of them and missed nothing. (A gone/back pair that
    // happens between two reads of a viewer is coalesced: it is told only
    // of states it can observe, so 'publisher back' messages may be fewer.)
    let gaps: u64 = snapshot.iter().map(|s| s.gaps).sum();
    let min_frags = snapshot.iter().map(|s| s.fragments).min().unwrap_or(0);
    check(
        gaps == 0,
        format!(
            "every staying viewer got every fragment across all reconnects, in order \
             (≥ {min_frags} fragments each, {gaps} gaps; 'publisher back' seen ≥ {min_backs} times)"
        ),
    );
    check(
        snapshot
            .iter()
            .zip(&before_last)
            .all(|(s, &b)| s.fragments > b),
        "every staying viewer resumed with the last publisher session".into(),
    );

    // Memory. A leak is live heap that grows with the connections served;
    // freed memory the allocator keeps shows in RSS only.
    let bound = |base: u64, min: u64| base + (base / 10).max(min);
    let churned = (viewers * rounds) as f64;
    match (baseline.net(), settled.net()) {
        (Some(base), Some(now)) => {
            let rounds_net: Vec<u64> = after.iter().filter_map(Mem::net).collect();
            let first = rounds_net.first().copied().unwrap_or(now);
            let last = rounds_net.last().copied().unwrap_or(now);
            let per_conn = (now as f64 - base as f64) / churned;
            check(
                now <= base + LEAK_SLACK && last <= first + LEAK_SLACK,
                format!(
                    "no leak: heap allocated besides the ring {:.2} MiB baseline → {} → {:.2} MiB settled \
                     (bound baseline + {:.2} MiB; {per_conn:+.1} B per churned connection)",
                    mb(base),
                    rounds_net
                        .iter()
                        .map(|&b| format!("{:.2}", mb(b)))
                        .collect::<Vec<_>>()
                        .join(" → "),
                    mb(now),
                    mb(LEAK_SLACK)
                ),
            );
        }
        _ => println!(
            "churn: skip the leak check: this relay exports no relaycast_heap_allocated_bytes"
        ),
    }
    check(
        settled.rss <= bound(baseline.rss, 2 << 20),
        format!(
            "RSS back to baseline: {:.1} MiB baseline → {} → {:.1} MiB settled (bound {:.1} MiB, peak {:.1} MiB)",
            mb(baseline.rss),
            after
                .iter()
                .map(|m| format!("{:.1}", mb(m.rss)))
                .collect::<Vec<_>>()
                .join(" → "),
            mb(settled.rss),
            mb(bound(baseline.rss, 2 << 20)),
            mb(peak)
        ),
    );
    println!(
        "churn: delivered {:.1} MiB to churning viewers",
        mb(counters.churn_bytes.load(Relaxed))
    );
    failed
}
