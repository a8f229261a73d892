//! Cascade bench: publisher → origin → edge(s) → WebSocket viewers.
//!
//! The origin runs as its own process (the `relaycast` binary, so its CPU
//! can be read from /proc); the edges, the viewers and the publisher run in
//! this process. The publisher sends the built-in demo clip, looped at real
//! time, over HTTP to the origin and notes when each fragment (seq) left;
//! every viewer notes when that seq arrived. For 1, 4 and 16 edges and a few
//! viewers per edge it reports delivery latency p50/p99 and the origin's
//! egress (fragment bytes handed to its edges) and CPU, which should grow
//! with the number of edges and not with the number of viewers.
//!
//! `cargo bench --bench cascade` (env `CASCADE_SECS` = measured seconds per
//! run, default 6; `CASCADE_VIEWERS` = comma-separated viewers per edge,
//! default `1,20`; `CASCADE_SPEEDUP` = how many times faster than real time
//! the clip is sent, default 8, about 3.7 Mbit/s).

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use relaycast::config::Config;
use relaycast::media::demo::Demo;
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const STREAM: &str = "bench";

struct Origin {
    child: std::process::Child,
    http: String,
    quic: String,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_origin() -> Origin {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--no-demo",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the origin");
    let out = child.stdout.take().expect("stdout");
    let mut http = None;
    let mut quic = None;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.expect("origin output");
        if let Some(rest) = line.strip_prefix("relaycast: listening on http://") {
            http = Some(rest.trim_end_matches('/').to_string());
        }
        if let Some(rest) = line.strip_prefix("relaycast: QUIC on ") {
            let (addr, fp) = rest.split_once(" (certificate sha256 ").expect("QUIC line");
            quic = Some(format!(
                "quic://{addr}?fingerprint={}",
                fp.trim_end_matches(')')
            ));
        }
        if http.is_some() && quic.is_some() {
            break;
        }
    }
    Origin {
        child,
        http: http.expect("origin HTTP address"),
        quic: quic.expect("origin QUIC address"),
    }
}

/// CPU seconds (user + system) of a process.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// Publish the demo clip, looped at real time, recording when each seq left.
async fn publish(http: String, sent: Arc<Mutex<HashMap<u64, Instant>>>, speedup: u64) {
    let demo = Demo::load().expect("demo clip");
    let tcp = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let body = http_body_util::StreamBody::new(
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))),
    );
    let req = hyper::Request::put(format!("/publish/{STREAM}"))
        .header("host", &http)
        .body(body)
        .expect("request");
    tokio::spawn(async move {
        let _ = sender.send_request(req).await;
    });
    tx.send(demo.init().bytes.clone()).await.expect("send init");
    let start = tokio::time::Instant::now();
    for n in 0u64.. {
        let (frag, due) = demo.fragment(n);
        tokio::time::sleep_until(
            start + Duration::from_micros((due + frag.duration_us()) / speedup),
        )
        .await;
        sent.lock().insert(n, Instant::now());
        if tx.send(frag.bytes).await.is_err() {
            return;
        }
    }
}

struct Run {
    edges: usize,
    per_edge: usize,
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
    origin_out_kbps: f64,
    origin_cpu_pct: f64,
    viewers_in_kbps: f64,
    origin_edge_subs: u64,
}

async fn origin_info(http: &str) -> serde_json::Value {
    let url = format!("http://{http}/live/{STREAM}/info");
    let body = reqwest_like_get(&url).await;
    serde_json::from_slice(&body).unwrap_or_default()
}

async fn reqwest_like_get(url: &str) -> Bytes {
    use http_body_util::BodyExt;
    let u = url::Url::parse(url).expect("url");
    let host = format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(80)
    );
    let tcp = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(u.path())
        .header("host", &host)
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = sender.send_request(req).await.expect("send");
    r.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

async fn run(
    origin: &Origin,
    sent: &Arc<Mutex<HashMap<u64, Instant>>>,
    edges: usize,
    per_edge: usize,
    secs: u64,
) -> Run {
    let mut relays = Vec::new();
    for _ in 0..edges {
        let mut c = Config::default();
        c.server.demo = false;
        c.cascade.origins = vec![origin.quic.clone()];
        c.cascade.linger = Duration::from_millis(300);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        relays.push(relaycast::server::start(c, Some(l)).await.expect("edge"));
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let bytes_in = Arc::new(AtomicU64::new(0));
    let mut viewers = Vec::new();
    for r in &relays {
        for _ in 0..per_edge {
            let url = format!("ws://127.0.0.1:{}/live/{STREAM}", r.addr.port());
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("viewer");
            let (measuring, latencies, bytes_in, sent) = (
                measuring.clone(),
                latencies.clone(),
                bytes_in.clone(),
                sent.clone(),
            );
            viewers.push(tokio::spawn(async move {
                let (_, mut rx) = ws.split();
                let mut seq = None;
                while let Some(Ok(m)) = rx.next().await {
                    match m {
                        Message::Text(t) => {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                            seq = (v["type"] == "fragment")
                                .then(|| v["seq"].as_u64())
                                .flatten();
                        }
                        Message::Binary(b) => {
                            if !measuring.load(Relaxed) {
                                continue;
                            }
                            bytes_in.fetch_add(b.len() as u64, Relaxed);
                            if let Some(s) = seq.take()
                                && let Some(at) = sent.lock().get(&s).copied()
                            {
                                latencies.lock().push(at.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                        _ => {}
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = origin.child.id();
    let info0 = origin_info(&origin.http).await;
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    measuring.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    measuring.store(false, Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_secs(pid);
    let info1 = origin_info(&origin.http).await;
    let out = info1["bytes_out"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(info0["bytes_out"].as_u64().unwrap_or(0));
    let subs = info1["viewers_by_transport"]["edge"].as_u64().unwrap_or(0);
    for v in viewers {
        v.abort();
    }
    for r in relays {
        r.shutdown().await;
    }
    let mut l = std::mem::take(&mut *latencies.lock());
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        l.get(((l.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Run {
        edges,
        per_edge,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        samples: l.len(),
        origin_out_kbps: out as f64 * 8.0 / 1000.0 / elapsed,
        origin_cpu_pct: (cpu1 - cpu0) / elapsed * 100.0,
        viewers_in_kbps: bytes_in.load(Relaxed) as f64 * 8.0 / 1000.0 / elapsed,
        origin_edge_subs: subs,
    }
}

fn main() {
    let secs: u64 = std::env::var("CASCADE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let per: Vec<usize> = std::env::var("CASCADE_VIEWERS")
        .unwrap_or_else(|_| "1,20".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let speedup: u64 = std::env::var("CASCADE_SPEEDUP")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(8);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let origin = start_origin();
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let publisher = tokio::spawn(publish(origin.http.clone(), sent.clone(), speedup));
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Baseline: the origin with its publisher and no edge.
        let pid = origin.child.id();
        let c0 = cpu_secs(pid);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let idle = (cpu_secs(pid) - c0) / secs as f64 * 100.0;
        println!(
            "cascade bench: demo clip looped at {speedup}x real time (~{} kbit/s); {secs} s per run; origin CPU with 0 edges: {idle:.1} %",
            460 * speedup
        );
        println!("| edges | viewers/edge | viewers | latency p50 ms | p99 ms | samples | origin egress kbit/s | origin CPU % | origin edge subs | viewers' ingress kbit/s |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for edges in [1usize, 4, 16] {
            for &n in &per {
                let r = run(&origin, &sent, edges, n, secs).await;
                println!(
                    "| {} | {} | {} | {:.1} | {:.1} | {} | {:.0} | {:.1} | {} | {:.0} |",
                    r.edges,
                    r.per_edge,
                    r.edges * r.per_edge,
                    r.p50_ms,
                    r.p99_ms,
                    r.samples,
                    r.origin_out_kbps,
                    r.origin_cpu_pct,
                    r.origin_edge_subs,
                    r.viewers_in_kbps
                );
                // Let the edges' subscriptions go before the next run.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        publisher.abort();
    });
}
