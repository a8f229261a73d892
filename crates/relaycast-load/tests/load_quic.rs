//! `relaycast load --transport quic` against a relay it spawns on
//! 127.0.0.1:0: QUIC viewers (one connection each, pinned by the fingerprint
//! from `/api/quic`) receive the stream without gaps. No timing asserts.

use std::process::Command;

#[test]
fn load_over_quic_delivers_without_skips() {
    // The relay it spawns is the `relaycast` binary beside `relaycast-load`
    // (built by `cargo test --workspace`).
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_relaycast-load"));
    let relay = exe.with_file_name("relaycast");
    assert!(
        relay.is_file(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p relaycast` first)",
        relay.display()
    );
    let out = Command::new(exe)
        .args([
            "--transport",
            "quic",
            "--spawn-relay",
            "127.0.0.1:0",
            "--viewers",
            "4",
            "--bitrate",
            "500k",
            "--fps",
            "10",
            "--gop",
            "1",
            "--warmup",
            "0.5",
            "--duration",
            "1.5",
            "--max-seconds",
            "60",
            "--json",
        ])
        .output()
        .expect("run relaycast load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "load failed: {stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report; stdout {stdout:?} stderr {stderr:?}"));
    let r: serde_json::Value = serde_json::from_str(line).expect("JSON report");
    assert_eq!(r["transport"], "quic", "{r}");
    assert_eq!(r["connected"], 4, "{r} {stderr}");
    assert_eq!(r["connect_failed"], 0, "{r} {stderr}");
    assert_eq!(r["skips"], 0, "{r}");
    assert_eq!(r["repeats"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r} {stderr}");
    assert!(r["gbit_s"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["latency_ms"]["n"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["join_ms"]["n"].as_u64().unwrap_or(0) == 4, "{r}");
}
