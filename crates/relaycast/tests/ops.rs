//! Operations: `/metrics` after real traffic, parsed as Prometheus text;
//! the documented example configuration; environment overrides.

mod common;
mod opsutil;

use bytes::Bytes;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A strict-enough parser of the Prometheus text format (0.0.4): every line
/// is a comment (`# HELP`/`# TYPE`) or `name{k="v",…} value`; every sample
/// belongs to the family declared last; no family is declared twice.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "kind {kind}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "family {name} declared twice"
            );
            current = name.to_string();
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (head, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let mut m = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
                    m.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (n.to_string(), m)
            }
            None => (head.to_string(), BTreeMap::new()),
        };
        let family_ok = name == current
            || (types.get(&current).map(String::as_str) == Some("histogram")
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{current}{s}")));
        assert!(family_ok, "sample {name} outside its family {current}");
        samples.push((name, labels, value));
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

/// Checks every histogram series: cumulative buckets, `+Inf` = `_count`.
fn check_histograms(types: &BTreeMap<String, String>, samples: &[Sample]) {
    for (fam, kind) in types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for (n, l, v) in samples {
            if *n == format!("{fam}_bucket") {
                let mut key = l.clone();
                let le = key.remove("le").expect("le label");
                series.entry(format!("{key:?}")).or_default().push((le, *v));
            }
        }
        for (key, buckets) in series {
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{fam}{key}: buckets cumulative"
            );
            let (le, inf) = buckets.last().expect("buckets").clone();
            assert_eq!(le, "+Inf");
            let count = samples
                .iter()
                .find(|(n, l, _)| *n == format!("{fam}_count") && format!("{l:?}") == key)
                .map(|s| s.2)
                .expect("count");
            assert_eq!(inf, count, "{fam}{key}: +Inf bucket = count");
        }
    }
}

async fn scrape(base: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let (status, headers, body) = get(&format!("http://{base}/metrics")).await;
    assert_eq!(status, 200);
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let (types, samples) = parse(&text);
    check_histograms(&types, &samples);
    (types, samples)
}

#[tokio::test]
async fn metrics_move_with_real_traffic_and_parse_as_prometheus_text() {
    let mut cfg = config();
    cfg.fanout.grace = Duration::from_millis(300);
    let relay = relay(cfg).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    relay
        .state
        .limits
        .refused
        .count(relaycast::limits::Reason::WrongKey);

    // Two viewers waiting for the stream: one WebSocket, one HTTP stream.
    let mut ws = ws_connect(&format!("ws://{base}/live/m1?wait=10")).await;
    let http_viewer = {
        let url = format!("http://{base}/live/m1.mp4?wait=10");
        tokio::spawn(async move { get(&url).await })
    };
    let file = fixture("h264_aac_every_frame.mp4");
    let (_, frags) = split(&file);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let publisher = {
        let url = format!("http://{base}/publish/m1");
        tokio::spawn(async move { common::put_stream(&url, rx).await })
    };
    tx.send(file.clone()).await.expect("send");
    let got = ws_read(&mut ws, 40, Duration::from_secs(20)).await;
    assert!(
        got.seqs.len() >= 40,
        "ws viewer got {} fragments",
        got.seqs.len()
    );

    let (types, s) = scrape(&base).await;
    assert_eq!(types["relaycast_join_seconds"], "histogram");
    assert_eq!(types["relaycast_bytes_out_total"], "counter");
    assert_eq!(value(&s, "relaycast_streams", &[]), Some(1.0));
    assert_eq!(value(&s, "relaycast_publishers", &[]), Some(1.0));
    assert_eq!(
        value(&s, "relaycast_viewers", &[("transport", "ws")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "relaycast_stream_viewers",
            &[("stream", "m1"), ("transport", "stream")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "relaycast_stream_fragments_in_total",
            &[("stream", "m1")]
        ),
        Some(frags.len() as f64)
    );
    assert_eq!(
        value(&s, "relaycast_bytes_in_total", &[]),
        value(&s, "relaycast_stream_bytes_in_total", &[("stream", "m1")])
    );
    assert!(value(&s, "relaycast_fragments_out_total", &[]).unwrap_or(0.0) >= 40.0);
    assert!(
        value(&s, "relaycast_stream_bytes_out_total", &[("stream", "m1")]).unwrap_or(0.0) > 0.0
    );
    assert_eq!(
        value(&s, "relaycast_refused_total", &[("reason", "wrong_key")]).map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(
        value(&s, "relaycast_upstream_streams", &[("state", "none")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "relaycast_stream_upstream_state",
            &[("stream", "m1"), ("state", "none")]
        ),
        Some(1.0)
    );
    // Both push viewers have joined (their first fragment was written).
    assert_eq!(value(&s, "relaycast_join_seconds_count", &[]), Some(2.0));
    assert_eq!(
        value(
            &s,
            "relaycast_stream_join_seconds_count",
            &[("stream", "m1")]
        ),
        Some(2.0)
    );
    assert!(value(&s, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0);
    // /api/streams says the same per stream, as JSON.
    let (status, _, body) = get(&format!("http://{base}/api/streams")).await;
    assert_eq!(status, 200);
    let api: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let m1 = &api["streams"][0];
    assert_eq!(m1["name"], "m1");
    assert_eq!(m1["join"]["count"], 2);
    assert!(m1["join"]["p50_ms"].as_f64().is_some_and(|v| v >= 0.0));
    assert!(m1["fragments_out"].as_u64().is_some_and(|v| v >= 40));
    assert_eq!(m1["publishes"], 1);
    assert_eq!(m1["viewers_by_transport"]["ws"], 1);

    // The publisher leaves and the stream ends: viewers go, their delivery
    // latencies are folded in, and relay-wide counters do not go backwards.
    drop(tx);
    let (status, _) = publisher.await.expect("join");
    assert_eq!(status, 200);
    let rest = ws_read(&mut ws, usize::MAX, Duration::from_secs(10)).await;
    assert_eq!(rest.close.map(|c| c.0), Some(1000), "stream ended");
    let (status, _, body) = http_viewer.await.expect("join");
    assert_eq!(status, 200);
    assert!(!body.is_empty());
    drop(ws);
    let mut s = Vec::new();
    for _ in 0..100 {
        s = scrape(&base).await.1;
        if value(&s, "relaycast_streams", &[]) == Some(0.0)
            && value(&s, "relaycast_viewers", &[("transport", "ws")]) == Some(0.0)
            && value(&s, "relaycast_viewers", &[("transport", "stream")]) == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        value(&s, "relaycast_streams", &[]),
        Some(0.0),
        "stream removed"
    );
    assert_eq!(
        value(&s, "relaycast_stream_live", &[("stream", "m1")]),
        None
    );
    assert_eq!(
        value(&s, "relaycast_fragments_in_total", &[]),
        Some(frags.len() as f64),
        "totals keep what ended streams counted"
    );
    let out = value(&s, "relaycast_fragments_out_total", &[]).unwrap_or(0.0);
    assert!(out >= 40.0 + rest.seqs.len() as f64);
    // Every fragment written to a viewer is one delivery-latency observation.
    let delivered = value(&s, "relaycast_delivery_seconds_count", &[]).unwrap_or(0.0);
    assert_eq!(delivered, out, "one latency per fragment written");
    assert!(value(&s, "relaycast_delivery_seconds_sum", &[]).unwrap_or(-1.0) >= 0.0);
    assert_eq!(value(&s, "relaycast_join_seconds_count", &[]), Some(2.0));
    relay.shutdown().await;
}

/// Every key of the default configuration, as dotted paths.
fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            keys(v, &p, out);
            out.push(p);
        }
    }
}

#[test]
fn the_documented_example_config_parses_and_names_every_key() {
    use relaycast::config::Config;
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("deploy/relaycast.toml");
    // deny_unknown_fields: a key that no longer exists fails here.
    let example = Config::from_file(&path).expect("deploy/relaycast.toml parses");
    let text = std::fs::read_to_string(&path).expect("read");
    let example_tree: toml::Value = toml::from_str(&text).expect("TOML");
    let mut documented = Vec::new();
    keys(&example_tree, "", &mut documented);
    // Keys that default to "unset" are documented as comments: `# key = …`.
    let commented: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# "))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_string()))
        .collect();
    let mut all = Vec::new();
    keys(
        &toml::Value::try_from(Config::default()).expect("serialize"),
        "",
        &mut all,
    );
    for k in &all {
        assert!(
            documented.contains(k),
            "deploy/relaycast.toml does not set {k}"
        );
    }
    for optional in [
        "server.tls_cert",
        "server.tls_key",
        "server.player_dir",
        "server.operator_token",
        "ingest.publish_key",
        "quic.listen",
        "ingest.rtmp.listen",
        "ingest.rtmp.tls_listen",
        "ingest.srt.listen",
        "ingest.whip.listen",
        "ingest.whip.public_ip",
    ] {
        let leaf = optional.rsplit('.').next().unwrap_or(optional);
        assert!(
            documented.iter().any(|k| k == optional) || commented.iter().any(|k| k == leaf),
            "deploy/relaycast.toml does not mention {optional}"
        );
    }
    assert_eq!(
        example.validate(),
        Vec::<String>::new(),
        "the example is valid"
    );
}

#[test]
fn environment_overrides_the_file_and_unknown_keys_fail() {
    use relaycast::config::{Config, LogFormat};
    let mut c: Config = toml::from_str("[server]\nshutdown_timeout = 2\n").expect("toml");
    let vars = [
        ("RELAYCAST_SERVER__SHUTDOWN_TIMEOUT", "7.5"),
        ("RELAYCAST_SERVER__LISTEN", "0.0.0.0:9000"),
        ("RELAYCAST_SERVER__CORS_ORIGINS", "[\"https://a.example\"]"),
        ("RELAYCAST_FANOUT__RING__MAX_BYTES", "1048576"),
        ("RELAYCAST_INGEST__KEYS__CAM", "s3cret"),
        ("RELAYCAST_LOG__FORMAT", "json"),
        ("RELAYCAST_LISTEN", "ignored: a flag's variable"),
        ("OTHER__THING", "ignored"),
    ];
    c.apply_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .expect("apply");
    assert_eq!(c.server.shutdown_timeout, Duration::from_millis(7500));
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(c.server.cors_origins, vec!["https://a.example".to_string()]);
    assert_eq!(c.fanout.ring.max_bytes, 1 << 20);
    assert_eq!(c.ingest.keys.get("cam").map(String::as_str), Some("s3cret"));
    assert_eq!(c.log.format, LogFormat::Json);
    let printed = c.to_toml_redacted();
    assert!(
        !printed.contains("s3cret"),
        "secrets are redacted:\n{printed}"
    );
    assert!(printed.contains("shutdown_timeout = 7.5"));

    let bad = [(
        "RELAYCAST_SERVER__SHUTDOWN_TIMEOUTT".to_string(),
        "1".to_string(),
    )];
    let err = Config::default().apply_env(bad).expect_err("unknown key");
    assert!(err.to_string().contains("SHUTDOWN_TIMEOUTT"), "{err}");
    let bad = [(
        "RELAYCAST_FANOUT__RING__MAX_BYTES".to_string(),
        "lots".to_string(),
    )];
    assert!(Config::default().apply_env(bad).is_err(), "wrong type");
}

/// A relay's figures set by hand, the same on every run: a live stream with
/// viewers of every transport and full histograms, one in its grace period
/// with empty ones, two pulled from origins (cascade edge), one that ended
/// (only in the relay-wide totals), and refusals. The handles keep the
/// streams alive while the caller scrapes.
fn fixed_relay() -> (
    relaycast::fanout::Registry,
    relaycast::limits::Refused,
    Vec<relaycast::fanout::Publisher>,
) {
    use relaycast::fanout::stats::UpstreamState;
    use relaycast::fanout::{EndReason, Registry, Source, Transport};
    use relaycast::limits::{Reason, Refused};
    use std::sync::atomic::Ordering::Relaxed;

    let registry = Registry::new(relaycast::fanout::FanoutConfig {
        grace: Duration::from_secs(600),
        ..Default::default()
    });
    let set = |s: &relaycast::fanout::Stream, c: [u64; 7]| {
        let st = s.stats();
        for (a, v) in [
            &st.bytes_in,
            &st.fragments_in,
            &st.bytes_out,
            &st.fragments_out,
            &st.skips,
            &st.lag_disconnects,
            &st.publishes,
        ]
        .into_iter()
        .zip(c)
        {
            a.store(v, Relaxed);
        }
    };
    let ms = Duration::from_millis;
    let us = Duration::from_micros;
    let mut keep = Vec::new();

    let a = registry.publish("cam-a").expect("publish");
    let s = registry.get("cam-a").expect("cam-a");
    set(&s, [123_456_789, 4_567, 987_654_321, 45_670, 3, 1, 2]);
    for (t, n) in Transport::ALL.into_iter().zip([3, 2, 1, 4, 1, 2, 0]) {
        s.stats().viewers[t as usize].store(n, Relaxed);
    }
    for d in [us(300), ms(3), ms(20), ms(20), us(24_999), ms(40_000)] {
        s.stats().delivery.observe(d);
    }
    for d in [ms(120), us(1_500_250)] {
        s.stats().join.observe(d);
    }
    keep.push(a);

    // In its grace period: not live, histograms empty.
    drop(registry.publish("cam-b").expect("publish"));
    let s = registry.get("cam-b").expect("cam-b in grace");
    set(&s, [1_000, 10, 0, 0, 0, 0, 1]);

    let pulled = |name: &str, from: &str, up: &str, rtt_ms, failovers, state| {
        let p = registry
            .publish_from(
                name,
                Source::Pulled {
                    from: from.into(),
                    upstream: up.into(),
                    rtt_ms,
                    failovers,
                    seq_space: 7,
                },
            )
            .expect("publish_from");
        let s = registry.get(name).expect("pulled stream");
        s.stats().set_upstream(state);
        (p, s)
    };
    let (p, s) = pulled(
        "edge-cam",
        "https://origin-1.example:4443",
        "up",
        12,
        2,
        UpstreamState::Connected,
    );
    set(&s, [55_555, 55, 111_110, 110, 0, 0, 3]);
    s.stats().viewers[Transport::Edge as usize].store(2, Relaxed);
    s.stats().viewers[Transport::WebSocket as usize].store(1, Relaxed);
    // A sum of whole seconds.
    for d in [ms(1_500), ms(500)] {
        s.stats().delivery.observe(d);
    }
    keep.push(p);
    let (p, _) = pulled(
        "edge-down",
        "https://origin-2.example:4443",
        "down",
        1_000,
        0,
        UpstreamState::Failed,
    );
    keep.push(p);

    // Ended: its counts live on in the relay-wide totals only. Off the
    // runtime, so no grace task holds it: its stats are retired.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let old = registry.publish("old").expect("publish");
            let s = registry.get("old").expect("old");
            set(&s, [9_000, 9, 18_000, 18, 1, 1, 1]);
            s.stats().delivery.observe(ms(7));
            s.close(EndReason::Shutdown);
            drop((old, s));
        });
    });

    let refused = Refused::default();
    for (r, n) in [
        (Reason::WrongKey, 2),
        (Reason::Viewers, 1),
        (Reason::MemoryBudget, 4),
    ] {
        for _ in 0..n {
            refused.count(r);
        }
    }
    (registry, refused, keep)
}

/// A scrape without what differs from run to run: the version label and
/// the process's own figures.
fn normalized(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("process_") {
                let name = l.split(' ').next().unwrap_or(l);
                format!("{name} <process>\n")
            } else if l.starts_with("relaycast_build_info{") {
                "relaycast_build_info{version=\"<version>\"} 1\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Compare with a golden file under tests/fixtures; RELAYCAST_BLESS=1
/// writes it instead.
fn golden(file: &str, got: &str) {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var("RELAYCAST_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    if got != want {
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            if g != w {
                panic!(
                    "{file}:{}: got\n{g}\nwant\n{w}\n(RELAYCAST_BLESS=1 rewrites it)",
                    i + 1
                );
            }
        }
        panic!(
            "{file}: {} lines, golden has {} (RELAYCAST_BLESS=1 rewrites it)",
            got.lines().count(),
            want.lines().count()
        );
    }
}

/// `promtool check metrics` on a scrape, when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("skipping promtool check: promtool not found");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_text_of_a_fixed_relay_matches_the_golden_file() {
    use relaycast::metrics::Format;
    let (registry, refused, _keep) = fixed_relay();
    let text = relaycast::server::scrape(&registry, &refused, Format::Prometheus).expect("metrics");
    let (types, samples) = parse(&text);
    check_histograms(&types, &samples);
    // 2 + 1 + 3 set by hand, 1 by edge-down's publisher, 1 by the ended
    // stream, which still counts in the relay-wide totals.
    assert_eq!(value(&samples, "relaycast_publishes_total", &[]), Some(8.0));
    promtool_check(&text);
    golden("metrics.txt", &normalized(&text));

    // OpenMetrics: the same series and values, its own golden file.
    let om =
        relaycast::server::scrape(&registry, &refused, Format::OpenMetrics).expect("openmetrics");
    assert!(om.ends_with("\n# EOF\n"), "{om}");
    assert!(om.contains("# TYPE relaycast_bytes_in counter\n"));
    let (a, b) = (series(&om), series(&text));
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .chain(b.iter().filter(|(k, _)| !a.contains_key(*k)))
        .collect();
    assert!(
        differ.is_empty(),
        "OpenMetrics and 0.0.4 differ in {differ:?}"
    );
    golden("metrics.openmetrics.txt", &normalized(&om));
}

/// Every sample of a scrape (either format) by series: labels sorted (the
/// formats order `le` differently), `le` read as a number (`1` and `1.0` are
/// the same bucket); process figures left out.
fn series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
        .map(|l| {
            let (head, v) = l.rsplit_once(' ').expect("sample");
            let (name, labels) = head.split_once('{').unwrap_or((head, "}"));
            let mut set = BTreeMap::new();
            let body = labels.strip_suffix('}').expect("labels close");
            for pair in body.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
                let v = v.trim_end_matches('"').to_string();
                let v = match k {
                    "le" => format!("{}", v.parse::<f64>().expect("le is a number")),
                    _ => v,
                };
                set.insert(k.to_string(), v);
            }
            (format!("{name}{set:?}"), v.parse().expect("value"))
        })
        .collect()
}

#[tokio::test]
async fn metrics_speak_openmetrics_when_the_scraper_prefers_it() {
    let relay = relay(config()).await;
    let url = format!("http://127.0.0.1:{}/metrics", relay.addr.port());
    let ct = |h: &hyper::HeaderMap| {
        h.get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // What Prometheus sends.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (status, h, om) = get_with(&url, &[("accept", prometheus)]).await;
    assert_eq!(status, 200);
    assert_eq!(
        ct(&h),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(h.get("vary").and_then(|v| v.to_str().ok()), Some("accept"));
    let om = String::from_utf8(om.to_vec()).expect("utf-8");
    assert!(om.ends_with("\n# EOF\n"), "{om}");
    assert!(om.contains("# TYPE relaycast_publishes counter\nrelaycast_publishes_total 0\n"));
    // No Accept, or one that prefers the text format: 0.0.4 as always.
    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let (status, h, text) = match accept {
            None => get(&url).await,
            Some(a) => get_with(&url, &[("accept", a)]).await,
        };
        assert_eq!(status, 200);
        assert_eq!(
            ct(&h),
            "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        let text = String::from_utf8(text.to_vec()).expect("utf-8");
        assert!(!text.contains("# EOF"));
        parse(&text);
    }
    relay.shutdown().await;
}
