//! Churn bench: the real binary, 10,000 viewers connecting and leaving over
//! a minute (WebSocket and HTTP streaming, each staying 0.2–3 s), a
//! publisher that disconnects and reconnects 100 times, and 50 viewers that
//! stay throughout. Checks: no panic, the relay's RSS after the churn is back
//! near its baseline and does not grow from one round of churn to the next
//! (no leak), and every viewer that stayed is still connected, was told of
//! every publisher change it lived through, and receives the stream after
//! the last reconnect.
//!
//!   cargo bench --bench churn                      # 2 rounds of 10,000 viewers over 60 s
//!   CHURN_VIEWERS=2000 CHURN_SECS=15 cargo bench --bench churn   # quicker
//!
//! Prints the figures; exits non-zero when a check fails.

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
const RECONNECTS: usize = 100;

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

async fn scrape_viewers(addr: &str) -> Option<u64> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
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
    let text = String::from_utf8_lossy(&body).to_string();
    Some(
        text.lines()
            .filter(|l| l.starts_with("relaycast_viewers{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

async fn settle(addr: &str, want: u64) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if scrape_viewers(addr).await == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let freed memory settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    t.elapsed()
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
    let viewers = env_or("CHURN_VIEWERS", 10_000) as usize;
    let secs = env_or("CHURN_SECS", 60);
    let rounds = env_or("CHURN_ROUNDS", 2) as usize;
    // CHURN_WRAP runs the relay under a tool (e.g. `heaptrack`).
    let wrap = std::env::var("CHURN_WRAP").ok().filter(|w| !w.is_empty());
    let mut cmd = match &wrap {
        Some(w) => {
            let mut c = Command::new(w);
            c.arg(env!("CARGO_BIN_EXE_relaycast"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_relaycast")),
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
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let start_rss = rss();

    // The publisher: the 5 s every-frame clip at ~2x real time, then it
    // hangs up and comes back, RECONNECTS times over the whole run.
    let file = Bytes::from(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/h264_aac_every_frame.mp4"
        ))
        .expect("fixture"),
    );
    let total_secs = secs * rounds as u64 + 10;
    let per_session = Duration::from_millis(total_secs * 1000 / RECONNECTS as u64);
    let sessions_done = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let addr = addr.clone();
        let done = sessions_done.clone();
        let file = file.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..=RECONNECTS {
                let t = Instant::now();
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
                let url = format!("http://{addr}/publish/churn");
                let put = tokio::spawn(async move { common::put_stream(&url, rx).await });
                // Whole clips only, so each session ends on a box boundary.
                'session: while t.elapsed() < per_session {
                    for piece in file.chunks(4000) {
                        if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                            break 'session;
                        }
                        tokio::time::sleep(Duration::from_millis(8)).await;
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
    settle(&addr, STAYERS as u64).await;
    let baseline = rss();
    println!(
        "churn: relay RSS {:.1} MiB at start, {:.1} MiB baseline (publisher + {STAYERS} viewers)",
        mb(start_rss),
        mb(baseline)
    );

    let counters = Arc::new(Counters::default());
    let mut after = Vec::new();
    let mut peak = baseline;
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
        for t in tasks {
            let _ = t.await;
        }
        let connect_span = t0.elapsed();
        let settled = settle(&addr, STAYERS as u64).await;
        let r = rss();
        after.push(r);
        println!(
            "churn: round {round}: {viewers} viewers over {connect_span:.1?} (settled in {settled:.1?}); \
             relay RSS {:.1} MiB (peak {:.1} MiB); churners ok {} failed {}",
            mb(r),
            mb(peak),
            counters.churn_ok.load(Relaxed),
            counters.churn_failed.load(Relaxed)
        );
    }

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
        statuses.iter().all(|&s| s == 200),
        format!(
            "{publishes} publisher sessions ({} reconnects) all accepted and finished with 200",
            publishes.saturating_sub(1)
        ),
    );
    check(
        !log.contains("panicked"),
        "no panic in the relay's log".into(),
    );
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
    let last_round = *after.last().unwrap_or(&0);
    let first_round = *after.first().unwrap_or(&0);
    let growth = last_round as f64 - first_round as f64;
    check(
        rounds < 2 || growth < 0.1 * first_round as f64,
        format!(
            "no growth from round to round: {:.1} → {:.1} MiB ({:+.1} MiB)",
            mb(first_round),
            mb(last_round),
            growth / (1 << 20) as f64
        ),
    );
    // Freed memory the allocator keeps for reuse stays in RSS: after churn
    // RSS may sit at the churn's peak, but must not exceed it.
    check(
        last_round <= peak + (2 << 20),
        format!(
            "RSS after churn {:.1} MiB: baseline {:.1} MiB, peak during churn {:.1} MiB",
            mb(last_round),
            mb(baseline),
            mb(peak)
        ),
    );
    println!(
        "churn: delivered {:.1} MiB to churning viewers",
        mb(counters.churn_bytes.load(Relaxed))
    );
    failed
}
