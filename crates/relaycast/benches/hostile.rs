//! Hostile soak (issue #12): the real binary, one live stream, 100 healthy
//! WebSocket viewers, and for 60 s 200 hostile clients of each kind, each
//! kind from its own loopback address (so the per-IP limit applies per
//! kind, as it would to separate attackers):
//!
//! - stalled long polls from the oldest `after` (a tiny receive buffer,
//!   never read);
//! - stalled WebSocket viewers and stalled HTTP-stream viewers;
//! - incomplete Socket.IO polling POSTs (a 60 MiB `Content-Length`, 256 KiB
//!   sent, then nothing);
//! - half-open connections over the per-IP limit (connect, send nothing,
//!   reconnect when closed).
//!
//! A hostile client whose connection the relay closes comes back at once
//! (bounded by the run's end). Every second the relay's RSS (/proc) and
//! heap (`relaycast_heap_allocated_bytes`) are sampled. Checks (FAIL lines
//! and a non-zero exit when one fails): peak RSS and heap less than 256 MiB
//! above the idle baseline (publisher and healthy viewers running); back
//! within max(8 MiB, 10 %) of the baseline within 50 s of the attack's end
//! (Engine.IO sessions live until their ping timeout, 45 s; RSS waits for
//! jemalloc's 10 s dirty-page decay); every
//! healthy viewer received every fragment, byte-identical to what the
//! publisher sent, in order. It reports the healthy viewers' p99 delay
//! (relay arrival → viewer) during the attack.
//!
//!   cargo bench -p relaycast --bench hostile                 # 60 s, 200 per kind
//!   HOSTILE_QUICK=1 cargo test -p relaycast --bench hostile  # ~20 s, 20 per kind (debug build; CI)
//!
//! Knobs: HOSTILE_SECS, HOSTILE_PER_KIND, HOSTILE_HEALTHY, HOSTILE_RELAY_BIN,
//! HOSTILE_KINDS (a comma-separated subset of longpoll,ws,stream,socketio,halfopen).

#[path = "../tests/opsutil/mod.rs"]
mod opsutil;

use bytes::Bytes;
use futures_util::StreamExt;
use relaycast::media::demo::Demo;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mb(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Connect from `from` (a loopback address of the kind's own) to `to`, with
/// a tiny receive buffer when `stall` (the client never reads).
async fn connect(from: IpAddr, to: SocketAddr, stall: bool) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    if stall {
        s.set_recv_buffer_size(4096)?;
    }
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// Hold `c` without ever reading it until the relay closes it or `until`.
async fn hold(c: &mut TcpStream, until: Instant) {
    // A stalled client never reads; it only notices the close when a write
    // fails. Probe with an empty-ish write every second.
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        if c.write_all(b"\r\n").await.is_err() {
            return;
        }
    }
}

/// One hostile client of `kind`, reconnecting until `until`.
async fn hostile(
    kind: &'static str,
    from: IpAddr,
    to: SocketAddr,
    until: Instant,
    stream: &'static str,
) {
    while Instant::now() < until {
        let Ok(mut c) = connect(from, to, true).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let req = match kind {
            "longpoll" => {
                format!("GET /live/{stream}/poll?after=0&timeout=60 HTTP/1.1\r\nhost: {to}\r\n\r\n")
            }
            "ws" => format!(
                "GET /live/{stream} HTTP/1.1\r\nhost: {to}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                 sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
            ),
            "stream" => format!("GET /live/{stream}.mp4 HTTP/1.1\r\nhost: {to}\r\n\r\n"),
            "socketio" => {
                // Engine.IO handshake on its own connection, then the POST.
                let sid = match engine_io_sid(from, to).await {
                    Some(s) => s,
                    None => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                format!(
                    "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nhost: {to}\r\n\
                     content-type: text/plain;charset=UTF-8\r\ncontent-length: {}\r\n\r\n",
                    60 << 20
                )
            }
            _ => String::new(), // half-open: nothing at all
        };
        if c.write_all(req.as_bytes()).await.is_err() {
            continue;
        }
        if kind == "socketio" {
            let chunk = vec![b'4'; 64 << 10];
            for _ in 0..4 {
                if c.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }
        if kind == "halfopen" {
            // Held as long as the relay lets it; a refused one is closed at
            // once and comes back after a pause.
            let mut one = [0u8; 1];
            let _ = tokio::time::timeout(
                until.saturating_duration_since(Instant::now()),
                c.read(&mut one),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        hold(&mut c, until).await;
    }
}

/// An Engine.IO v4 polling handshake: the session id.
async fn engine_io_sid(from: IpAddr, to: SocketAddr) -> Option<String> {
    let mut c = connect(from, to, false).await.ok()?;
    c.write_all(format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    let at = text.find("\"sid\":\"")? + 7;
    Some(text[at..].split('"').next()?.to_string())
}

/// What a healthy viewer saw.
#[derive(Default)]
struct Seen {
    fragments: u64,
    mismatched: u64,
    gaps: u64,
    delays_ms: Vec<u64>,
}

/// A healthy WebSocket viewer: every fragment checked against what the
/// publisher sent (by its seq) and its delay taken.
async fn healthy(
    to: SocketAddr,
    stream: &'static str,
    sent: Arc<parking_lot::Mutex<HashMap<u64, Bytes>>>,
    until: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let Ok((mut ws, _)) =
        tokio_tungstenite::connect_async(format!("ws://{to}/live/{stream}")).await
    else {
        seen.gaps += 1;
        return seen;
    };
    let mut pending: Option<(u64, u64)> = None; // (seq, t_ms) announced
    let mut last: Option<u64> = None;
    while Instant::now() < until {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await else {
            break;
        };
        match m {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                if v["type"] == "fragment" {
                    pending = Some((v["seq"].as_u64().unwrap_or(0), v["t"].as_u64().unwrap_or(0)));
                }
            }
            Message::Binary(b) => {
                let Some((seq, t)) = pending.take() else {
                    continue; // the init segment
                };
                seen.delays_ms.push(now_ms().saturating_sub(t));
                if last.is_some_and(|l| seq != l + 1) {
                    seen.gaps += 1;
                }
                last = Some(seq);
                seen.fragments += 1;
                // The publisher's fragment with that seq (seqs count from 0
                // in a fresh stream: the n-th fragment sent).
                if sent.lock().get(&seq).is_some_and(|s| *s != b) {
                    seen.mismatched += 1;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    seen
}

async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    Some(
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

async fn heap(addr: SocketAddr) -> u64 {
    get(addr, "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("relaycast_heap_allocated_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The bytes the healthy stream's ring holds (`ring_bytes` of its /info):
/// live heap that grows while the ring fills after the baseline, not the
/// attack's. Samples are taken besides it.
async fn ring(addr: SocketAddr, stream: &str) -> u64 {
    get(addr, &format!("/live/{stream}/info"))
        .await
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["ring_bytes"].as_u64())
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if rt.block_on(run()) {
        std::process::exit(1);
    }
}

async fn run() -> bool {
    let quick = std::env::var("HOSTILE_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let secs = env_or("HOSTILE_SECS", if quick { 10 } else { 60 });
    let per_kind = env_or("HOSTILE_PER_KIND", if quick { 20 } else { 200 }) as usize;
    let n_healthy = env_or("HOSTILE_HEALTHY", if quick { 10 } else { 100 }) as usize;
    let per_ip = per_kind + 50;
    println!(
        "hostile: {per_kind} clients of each kind for {secs} s, {n_healthy} healthy viewers, \
         max_connections_per_ip {per_ip}{}",
        if quick { " (HOSTILE_QUICK)" } else { "" }
    );
    let bin = std::env::var("HOSTILE_RELAY_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_relaycast").to_string());
    let mut child = Command::new(&bin)
        .args(["serve", "--no-demo", "--listen", "127.0.0.1:0"])
        .env(
            "RELAYCAST_LIMITS__MAX_CONNECTIONS_PER_IP",
            per_ip.to_string(),
        )
        .env("RUST_LOG", "relaycast=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relaycast");
    let pid = child.id();
    let addr: SocketAddr = opsutil::listening(&mut child)
        .parse()
        .expect("listening address");
    const STREAM: &str = "soak";

    // The publisher: the demo clip at real time, its fragments remembered by
    // seq (seqs count from 0 on a fresh stream) for the byte check.
    let demo = Demo::load().expect("demo clip");
    let sent: Arc<parking_lot::Mutex<HashMap<u64, Bytes>>> = Default::default();
    let total = Duration::from_secs(secs + 20);
    let publisher = {
        let sent = sent.clone();
        let init = demo.init().bytes.clone();
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
            let url = format!("http://{addr}/publish/{STREAM}");
            let put = tokio::spawn(async move {
                let body = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| {
                        (
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)),
                            rx,
                        )
                    })
                });
                let tcp = TcpStream::connect(addr).await.ok()?;
                let (mut s, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await
                        .ok()?;
                tokio::spawn(conn);
                let req = hyper::Request::put(url)
                    .header("host", addr.to_string())
                    .body(http_body_util::StreamBody::new(body))
                    .ok()?;
                s.send_request(req).await.ok().map(|r| r.status().as_u16())
            });
            let _ = tx.send(init).await;
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < total {
                let (frag, due_us) = demo.fragment(n);
                let due = start + Duration::from_micros(due_us);
                tokio::time::sleep_until(due.into()).await;
                sent.lock().insert(n, frag.bytes.clone());
                if tx.send(frag.bytes).await.is_err() {
                    break;
                }
                n += 1;
            }
            drop(tx);
            let _ = put.await;
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Healthy viewers from 127.0.0.1, for the whole run.
    let healthy_until = Instant::now() + Duration::from_secs(secs + 12);
    let viewers: Vec<_> = (0..n_healthy)
        .map(|_| tokio::spawn(healthy(addr, STREAM, sent.clone(), healthy_until)))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // RSS and heap besides the stream's ring (see `ring`).
    let sample = || async {
        let r = ring(addr, STREAM).await;
        (
            opsutil::rss_of(pid).unwrap_or(0).saturating_sub(r),
            heap(addr).await.saturating_sub(r),
        )
    };
    let base = sample().await;
    println!(
        "baseline (besides the ring): RSS {:.1} MiB, heap {:.1} MiB",
        mb(base.0),
        mb(base.1)
    );

    // The attack.
    let until = Instant::now() + Duration::from_secs(secs);
    let kinds = ["longpoll", "ws", "stream", "socketio", "halfopen"];
    let mut attackers = Vec::new();
    let only = std::env::var("HOSTILE_KINDS").unwrap_or_default();
    for (i, kind) in kinds.iter().enumerate() {
        if !only.is_empty() && !only.split(',').any(|k| k == *kind) {
            continue;
        }
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
        // The half-open kind brings more than its IP may open.
        let n = if *kind == "halfopen" {
            per_ip + per_kind
        } else {
            per_kind
        };
        for _ in 0..n {
            attackers.push(tokio::spawn(hostile(kind, from, addr, until, STREAM)));
        }
    }
    let mut peak = base;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sample().await;
        peak = (peak.0.max(now.0), peak.1.max(now.1));
    }
    for a in attackers {
        a.abort();
    }
    // Back to baseline: the heap once the attackers' connections and
    // sessions are gone (an Engine.IO session outlives its connections until
    // its ping timeout, 25 + 20 s), RSS once jemalloc has returned the freed
    // pages (its dirty-page decay is 10 s). Sampled every second for up to
    // 50 s; the first sample within bounds ends the wait.
    let slack = |b: u64| (b / 10).max(8 << 20);
    let settled =
        |now: (u64, u64)| now.0 <= base.0 + slack(base.0) && now.1 <= base.1 + slack(base.1);
    let attack_end = Instant::now();
    let mut after = sample().await;
    while !settled(after) && attack_end.elapsed() < Duration::from_secs(50) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = sample().await;
    }
    let settle_secs = attack_end.elapsed().as_secs();
    let mut seen = Seen::default();
    for v in viewers {
        if let Ok(s) = v.await {
            seen.fragments += s.fragments;
            seen.mismatched += s.mismatched;
            seen.gaps += s.gaps;
            seen.delays_ms.extend(s.delays_ms);
        }
    }
    publisher.abort();
    let _ = child.kill();
    let _ = child.wait();
    seen.delays_ms.sort_unstable();
    let p = |q: f64| {
        seen.delays_ms
            .get(((seen.delays_ms.len() as f64 - 1.0) * q).round().max(0.0) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "peak: RSS {:.1} MiB (+{:.1}), heap {:.1} MiB (+{:.1}); {} s after: RSS {:.1} MiB, heap {:.1} MiB",
        mb(peak.0),
        mb(peak.0.saturating_sub(base.0)),
        mb(peak.1),
        mb(peak.1.saturating_sub(base.1)),
        settle_secs,
        mb(after.0),
        mb(after.1)
    );
    println!(
        "healthy: {} fragments to {n_healthy} viewers, {} gaps, {} not byte-identical; delay p50 {} ms, p99 {} ms, max {} ms",
        seen.fragments,
        seen.gaps,
        seen.mismatched,
        p(0.5),
        p(0.99),
        p(1.0)
    );
    let mut failed = false;
    let mut check = |ok: bool, what: String| {
        if !ok {
            println!("FAIL {what}");
            failed = true;
        }
    };
    let bound = 256 << 20;
    check(
        peak.0.saturating_sub(base.0) < bound,
        "peak RSS 256 MiB or more above baseline".into(),
    );
    check(
        peak.1.saturating_sub(base.1) < bound,
        "peak heap 256 MiB or more above baseline".into(),
    );
    check(
        after.0 <= base.0 + slack(base.0),
        format!("RSS not back to baseline ({:.1} MiB)", mb(after.0)),
    );
    check(
        after.1 <= base.1 + slack(base.1),
        format!("heap not back to baseline ({:.1} MiB)", mb(after.1)),
    );
    let want = (secs + 5) * 10 * n_healthy as u64 / 2; // at least half the run's fragments each
    check(
        seen.fragments >= want,
        format!(
            "healthy viewers got {} fragments, want ≥ {want}",
            seen.fragments
        ),
    );
    check(
        seen.gaps == 0,
        format!("{} gaps in healthy viewers", seen.gaps),
    );
    check(
        seen.mismatched == 0,
        format!("{} fragments not byte-identical", seen.mismatched),
    );
    println!("hostile: {}", if failed { "FAILED" } else { "passed" });
    failed
}
