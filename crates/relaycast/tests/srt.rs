//! SRT ingest with ffmpeg's libsrt as the caller: MPEG-TS remuxed to CMAF,
//! checked with ffprobe and WebSocket viewers; AES with the publish key as
//! the passphrase, and a wrong passphrase refused.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// ffmpeg publishing a live H.264/AAC test signal as MPEG-TS over SRT.
fn ffmpeg_srt(url: &str, seconds: Option<u32>) -> tokio::process::Command {
    ffmpeg_encoder(seconds, &["-f", "mpegts"], url)
}

async fn srt_relay(mut cfg: relaycast::config::Config) -> (relaycast::server::Running, SocketAddr) {
    cfg.ingest.srt.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let relay = relay(cfg).await;
    let srt = relay.srt.expect("SRT listener bound");
    assert_ne!(srt.port(), 0);
    (relay, srt)
}

/// An SRT relay whose publish key is the passphrase, and an ffmpeg URL of
/// stream `cam` with it. A killed caller sends no shutdown: SRT notices it
/// after its peer idle timeout (5 s), so the grace period outlasts that.
async fn keyed_srt_relay() -> (relaycast::server::Running, String) {
    let mut cfg = config();
    cfg.ingest.publish_key = Some("0123456789abcdef".into());
    cfg.fanout.grace = Duration::from_secs(10);
    let (relay, srt) = srt_relay(cfg).await;
    let url =
        format!("srt://{srt}?streamid=#!::r=cam,m=publish&passphrase=0123456789abcdef&pbkeylen=16");
    (relay, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_srt_with_passphrase_reaches_ffprobe_and_identical_viewers_and_survives_a_restart() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let (relay, url) = keyed_srt_relay().await;
    let http = relay.addr;
    let (mut a, _, enc) = identical_viewers(http, "cam", || {
        ffmpeg_srt(&url, None).spawn().expect("spawn ffmpeg")
    })
    .await;
    let (codecs, frames, _) = ffprobe_live(&format!("http://{http}/live/cam.mp4")).await;
    assert_eq!(codecs, vec!["h264".to_string(), "aac".to_string()]);
    assert!(frames >= 50, "decoded {frames} video frames");
    // Kill the encoder and restart it within the grace period, retrying
    // while the relay still holds the vanished caller (as OBS reconnects):
    // the viewer continues.
    let mut enc = restart_encoder(enc, || {
        ffmpeg_srt(&url, None).spawn().expect("respawn ffmpeg")
    })
    .await;
    fragments_after_publisher_gone(&mut a, 15).await;
    enc.start_kill().expect("kill");
    assert_srt_publishers(&relay, 2);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_wrong_or_missing_passphrase_is_refused_and_a_plain_streamid_publishes() {
    if !have("ffmpeg") {
        return;
    }
    let mut cfg = config();
    cfg.ingest
        .keys
        .insert("locked".into(), "0123456789abcdef".into());
    let (relay, srt) = srt_relay(cfg).await;
    let http = relay.addr;
    for (url, what) in [
        (
            format!(
                "srt://{srt}?streamid=#!::r=locked,m=publish&passphrase=wrongwrongwrong&pbkeylen=16"
            ),
            "wrong passphrase",
        ),
        (
            format!("srt://{srt}?streamid=#!::r=locked,m=publish"),
            "no passphrase",
        ),
        (
            format!("srt://{srt}?streamid=#!::r=open,m=request"),
            "m=request",
        ),
    ] {
        let out = tokio::time::timeout(Duration::from_secs(20), ffmpeg_srt(&url, Some(3)).output())
            .await
            .expect("ffmpeg ended")
            .expect("run ffmpeg");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: ffmpeg should fail; {stderr}"
        );
        eprintln!("{what}: {stderr}");
    }
    let info = relay.state.registry.list();
    assert!(info.is_empty(), "no stream was created by a refused caller");
    // A plain streamid (the name alone) publishes a stream without a key.
    let mut enc = ffmpeg_srt(&format!("srt://{srt}?streamid=open"), None)
        .spawn()
        .expect("spawn");
    let mut v = ws_connect(&format!("ws://{http}/live/open?wait=15")).await;
    let r = ws_read(&mut v, 5, Duration::from_secs(15)).await;
    assert!(
        r.seqs.len() >= 5,
        "plain streamid: {} fragments",
        r.seqs.len()
    );
    enc.start_kill().expect("kill");
    let m = relaycast::server::metrics_text(&relay.state.registry, &relay.state.limits.refused);
    assert!(m.contains("reason=\"missing_key\"} 1"), "{m}");
    relay.shutdown().await;
}

/// An SRT encoder killed without a clean close (SIGKILL: no SRT shutdown)
/// is noticed by SRT only after its 5 s peer idle timeout. A new publisher
/// with the valid passphrase does not have to wait for that: once the old
/// one has sent nothing for `fanout.stale_publisher` (2 s) it takes over,
/// and the viewer hears "gone", "back" and continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_srt_encoder_is_taken_over_before_srt_notices() {
    if !have("ffmpeg") {
        return;
    }
    let (relay, url) = keyed_srt_relay().await;
    let http = relay.addr;
    let mut enc = ffmpeg_srt(&url, None).spawn().expect("spawn ffmpeg");
    let mut viewer = ws_connect(&format!("ws://{http}/live/cam?wait=15")).await;
    let got = ws_read(&mut viewer, 5, Duration::from_secs(15)).await;
    assert_eq!(got.seqs.len(), 5, "the first encoder publishes");
    enc.start_kill().expect("kill");
    let _ = enc.wait().await;
    // Past the stale time, well before SRT's 5 s idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut enc = ffmpeg_srt(&url, None).spawn().expect("respawn ffmpeg");
    // Refused, ffmpeg would exit at once ("already live").
    let early_exit = tokio::time::timeout(Duration::from_millis(2000), enc.wait()).await;
    assert!(
        early_exit.is_err(),
        "the new encoder was refused while the killed one was stale: {early_exit:?}"
    );
    fragments_after_publisher_gone(&mut viewer, 10).await;
    enc.start_kill().expect("kill");
    assert_srt_publishers(&relay, 2);
    relay.shutdown().await;
}

/// The relay counted `n` SRT publishers in all (`/metrics`).
fn assert_srt_publishers(relay: &relaycast::server::Running, n: u64) {
    let m = relaycast::server::metrics_text(&relay.state.registry, &relay.state.limits.refused);
    let line = format!("relaycast_ingest_publishers_total{{transport=\"srt\"}} {n}");
    assert!(m.contains(&line), "{m}");
}
