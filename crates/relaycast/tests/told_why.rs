//! Publishers and users told why (#12 items 18, 19, 21): with the real
//! `relaycast` binary and real ffmpeg, a refused publish is printed by
//! ffmpeg and logged once by the relay with its reason and peer; ordinary
//! ends are not warnings; every session logs its end; `relaycast publish`
//! exits non-zero with the reason when the relay refuses it.

mod common;
mod relays;

use common::{fixture, have};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn repo(path: &str) -> String {
    format!("{}/{path}", concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `relaycast serve` on 127.0.0.1:0 with its stderr (the log) collected.
struct Relay {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Relay {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Relay {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relaycast"));
        cmd.args(["serve", "--no-demo", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn relaycast serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        let addr = common::listening_addr(&line);
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Relay { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Lines of the log that contain every one of `parts`.
    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect()
    }

    /// Wait until the log has a line with every one of `parts`.
    fn wait_for(&self, parts: &[&str], limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lines_with(parts).pop() {
                return l;
            }
            assert!(
                start.elapsed() < limit,
                "no log line with {parts:?} within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run ffmpeg with `args` to the end (at most 30 s): (success, stderr).
fn ffmpeg(args: &[&str]) -> (bool, String) {
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "warning"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg");
    let mut err = String::new();
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let start = Instant::now();
    let ok = loop {
        if let Some(st) = child.try_wait().expect("ffmpeg state") {
            break st.success();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ffmpeg {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (ok, reader.join().unwrap_or_default())
}

/// Start ffmpeg (quiet, no stdin) with `input` options, then fragmented MP4
/// over HTTP PUT to `url`; the caller stops it.
fn ffmpeg_spawn(input: &[&str], url: &str) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(input)
        .args([
            "-f",
            "mp4",
            "-movflags",
            "frag_keyframe+empty_moov+default_base_moof",
            "-frag_duration",
            "100000",
            "-method",
            "PUT",
            url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg")
}

/// ffmpeg copying a fixture as fragmented MP4 to `url` over HTTP PUT, asking
/// first (`-send_expect_100 1`, as the README says).
fn ffmpeg_put(file: &str, url: &str, extra: &[&str]) -> (bool, String) {
    let input = repo(&format!("tests/fixtures/{file}"));
    let mut args = vec!["-i", &input, "-c", "copy"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "-f",
        "mp4",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
        "-method",
        "PUT",
        url,
    ]);
    ffmpeg(&args)
}

/// True when `GET /live/NAME/info` says the stream is live.
fn live(addr: &str, name: &str) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let req =
        format!("GET /live/{name}/info HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.contains("\"live\":true")
}

/// Item 18: ffmpeg prints the status of a refused publish (409 name in use,
/// 400 bad name) and the relay logs each refusal once, at WARN, with the
/// reason and the peer; a publish that is not refused still works with
/// `-send_expect_100 1` (the relay answers `100 Continue` after admission).
#[test]
fn ffmpeg_prints_why_its_publish_was_refused_and_the_relay_logs_it() {
    if !have("ffmpeg") {
        return;
    }
    let relay = Relay::start(&[], &[]);
    let addr = relay.addr.clone();
    // A healthy publisher holds "taken".
    let mut holder = Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .args([
            "publish",
            "--re",
            "--loop",
            "--to",
            &format!("http://{addr}/publish/taken"),
            &repo("crates/relaycast-media/src/demo/demo.mp4"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relaycast publish");
    let start = Instant::now();
    while !live(&addr, "taken") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "taken never went live"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let expect = ["-send_expect_100", "1"];
    let (ok, err) = ffmpeg_put(
        "h264_aac_keyframe.mp4",
        &format!("http://{addr}/publish/taken"),
        &expect,
    );
    assert!(!ok, "a second publisher on a live name is refused");
    assert!(
        err.contains("409") && err.contains("already has a live publisher"),
        "ffmpeg prints the 409 and why:\n{err}"
    );
    let (ok, err) = ffmpeg_put(
        "h264_aac_keyframe.mp4",
        &format!("http://{addr}/publish/mystream.mp4"),
        &expect,
    );
    assert!(!ok);
    assert!(
        err.contains("400") && err.contains("invalid stream name"),
        "ffmpeg prints the 400 and why:\n{err}"
    );
    // Without `-send_expect_100` ffmpeg reads no answer before its upload
    // ends: it prints "Broken pipe" (a long upload) or even exits 0 (this
    // short file fits in what the relay drains). The relay still logs why.
    let _ = ffmpeg_put(
        "h264_aac_keyframe.mp4",
        &format!("http://{addr}/publish/taken"),
        &[],
    );
    // Admitted: ffmpeg gets its `100 Continue` and publishes the whole file.
    let (ok, err) = ffmpeg_put(
        "h264_aac_keyframe.mp4",
        &format!("http://{addr}/publish/fresh"),
        &expect,
    );
    assert!(ok, "an admitted publish with Expect: 100-continue:\n{err}");
    relay.wait_for(
        &["HTTP publisher finished", "fresh"],
        Duration::from_secs(10),
    );

    let _ = holder.kill();
    let _ = holder.wait();
    let log = relay.stop();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HTTP publish refused"))
        .collect();
    // One line per refusal: three from ffmpeg (the holder, retrying a
    // connection of its own that the relay still held, may add its own).
    assert!(refused.len() >= 3, "one line per refusal:\n{log}");
    for l in &refused {
        assert!(l.contains("WARN"), "{l}");
        assert!(l.contains("127.0.0.1:"), "the peer: {l}");
    }
    assert!(
        refused.iter().filter(|l| l.contains("status=409")).count() >= 2,
        "{log}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("status=400") && l.contains("mystream.mp4")),
        "{log}"
    );
}

/// Item 19: ordinary ends of a publish (ffmpeg reaching the end of its
/// input, ffmpeg stopped with SIGINT or killed) are not warnings; VP9 and
/// AV1 from ffmpeg log no "unexpected box"; every publisher and viewer
/// session logs its end exactly once.
#[test]
fn ordinary_ends_are_not_warnings_and_every_session_logs_its_end() {
    if !have("ffmpeg") {
        return;
    }
    let relay = Relay::start(&[], &[("RELAYCAST_FANOUT__GRACE", "1")]);
    let addr = relay.addr.clone();
    // Viewers of "live": one WebSocket (the bundled client), one HTTP stream.
    let viewers: Vec<Child> = [
        format!("ws://{addr}/live/live?wait=20"),
        format!("http://{addr}/live/live.mp4?wait=20"),
    ]
    .iter()
    .map(|from| {
        Command::new(env!("CARGO_BIN_EXE_relaycast"))
            .args(["watch", from, "-o", "/dev/null"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn relaycast watch")
    })
    .collect();
    // A live ffmpeg publisher stopped the ordinary way: SIGINT (Ctrl-C).
    let mut live_pub = ffmpeg_spawn(
        &[
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
        ],
        &format!("http://{addr}/publish/live"),
    );
    let start = Instant::now();
    while !live(&addr, "live") {
        assert!(start.elapsed() < Duration::from_secs(20), "never went live");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-INT", &live_pub.id().to_string()])
        .status();
    let _ = live_pub.wait();
    // VP9/Opus and AV1/Opus to the end of the file; H.264 killed mid-body.
    for (file, name) in [("vp9_opus.mp4", "vp9"), ("av1_opus.mp4", "av1")] {
        let (ok, err) = ffmpeg_put(file, &format!("http://{addr}/publish/{name}"), &[]);
        assert!(ok, "{file}: {err}");
    }
    let h264 = repo("tests/fixtures/h264_aac_keyframe.mp4");
    let mut killed = ffmpeg_spawn(
        &["-re", "-i", &h264, "-c", "copy"],
        &format!("http://{addr}/publish/killed"),
    );
    relay.wait_for(
        &["HTTP publisher connected", "killed"],
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(700));
    let _ = killed.kill();
    let _ = killed.wait();
    // The viewers of "live" end when its grace period (1 s here) is over.
    for mut v in viewers {
        let start = Instant::now();
        while v.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = v.kill();
                panic!(
                    "a viewer did not end with the stream; log:\n{}",
                    relay.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let log = relay.stop();
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warns.is_empty(),
        "ordinary ends and VP9/AV1 are not warnings:\n{}",
        warns.join("\n")
    );
    assert!(!log.contains("unexpected box"), "{log}");
    // Each publisher: one start, one end.
    for name in ["live", "vp9", "av1", "killed"] {
        let starts = log
            .lines()
            .filter(|l| l.contains("publisher connected") && l.contains(&format!("stream={name}")))
            .count();
        let ends = log
            .lines()
            .filter(|l| {
                (l.contains("publisher finished")
                    || l.contains("publisher ended")
                    || l.contains("publisher failed"))
                    && l.contains(&format!("stream={name}"))
            })
            .count();
        assert_eq!((starts, ends), (1, 1), "{name}:\n{log}");
    }
    // Each viewer: one end line, with its transport.
    for transport in ["transport=\"ws\"", "transport=\"stream\""] {
        let ends = log
            .lines()
            .filter(|l| l.contains("viewer ended") && l.contains(transport))
            .count();
        assert_eq!(ends, 1, "{transport}:\n{log}");
    }
}

/// Item 21: refusals end `relaycast publish` with a non-zero exit and the
/// reason on stderr, on every transport (raw TCP used to exit 0 after the
/// relay's `ERROR 403`; QUIC retried forever).
#[tokio::test]
async fn relaycast_publish_exits_non_zero_with_the_reason_when_refused() {
    let mut cfg = relays::quic_config();
    cfg.ingest.publish_key = Some("right-key-0123456789".into());
    cfg.ingest.tcp.push(relaycast::config::TcpIngest {
        port: 0,
        name: "tcpcam".into(),
        key: None,
    });
    let relay = common::relay(cfg).await;
    let addr = relay.addr;
    let tcp = relay.tcp_ingest[0].1;
    let clip = repo("tests/fixtures/h264_aac_keyframe.mp4");
    let _ = fixture("h264_aac_keyframe.mp4");
    let cases = [
        ("tcp", format!("tcp://{tcp}"), "403"),
        ("quic", relays::stream_url(&relay, "quiccam"), "code 3"),
        ("http", format!("http://{addr}/publish/httpcam"), "403"),
        ("ws", format!("ws://{addr}/publish/wscam"), "1008"),
    ];
    for (what, to, says) in cases {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
            .args(["publish", "--to", &to, "--key", "wrong-key", &clip])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| {
                panic!("{what}: publish still running after 20 s (retrying a refusal?)")
            })
            .expect("run relaycast publish");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: exit status {}", out.status);
        assert!(
            err.contains("refused") && err.contains(says),
            "{what}: the reason on stderr:\n{err}"
        );
    }
    relay.shutdown().await;
}

/// (track id, tfdt) of every `traf` of a fragment (`moof` first).
fn tfdts(fragment: &[u8]) -> Vec<(u32, u64)> {
    fn boxes(b: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + 8 <= b.len() {
            let size = u32::from_be_bytes(b[off..off + 4].try_into().expect("4")) as usize;
            if size < 8 || off + size > b.len() {
                break;
            }
            let kind: [u8; 4] = b[off + 4..off + 8].try_into().expect("4");
            out.push((kind, &b[off + 8..off + size]));
            off += size;
        }
        out
    }
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let mut out = Vec::new();
    for (kind, moof) in boxes(fragment) {
        if &kind != b"moof" {
            continue;
        }
        for (kind, traf) in boxes(moof) {
            if &kind != b"traf" {
                continue;
            }
            let (mut id, mut time) = (0, None);
            for (kind, b) in boxes(traf) {
                match &kind {
                    b"tfhd" => id = be32(b, 4),
                    b"tfdt" if b[0] == 1 => {
                        time = Some(u64::from_be_bytes(b[4..12].try_into().expect("8")))
                    }
                    b"tfdt" => time = Some(u64::from(be32(b, 4))),
                    _ => {}
                }
            }
            out.push((id, time.expect("every traf has a tfdt")));
        }
    }
    out
}

/// Item 20: `relaycast publish --loop` takes an ordinary ffmpeg A/V file
/// whose tracks differ in length (here 1 s of video, 1.3 s of audio): over
/// 3+ loops every track's timestamps keep increasing and the tracks do not
/// drift apart (at each loop point both start one period — the longest
/// track — after the previous loop).
#[tokio::test]
async fn publish_loop_takes_a_file_whose_tracks_differ_in_length() {
    if !have("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("uneven.mp4");
    let clip_s = clip.to_string_lossy().to_string();
    let (ok, err) = ffmpeg(&[
        "-f",
        "lavfi",
        "-t",
        "1",
        "-i",
        "testsrc2=size=160x120:rate=30",
        "-f",
        "lavfi",
        "-t",
        "1.3",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "15",
        "-c:a",
        "aac",
        "-f",
        "mp4",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
        "-frag_duration",
        "100000",
        &clip_s,
    ]);
    assert!(ok, "make the clip: {err}");
    let bytes = std::fs::read(&clip).expect("clip");
    let (init, frags) = common::split(&bytes);
    let per_loop = frags.len() as u64;
    let timescale = |id: u32| {
        init.tracks
            .iter()
            .find(|t| t.id == id)
            .map(|t| u64::from(t.timescale))
            .expect("track in the init")
    };

    let relay = common::relay(common::config()).await;
    let addr = relay.addr;
    let mut viewer = common::ws_connect(&format!("ws://{addr}/live/uneven?wait=10")).await;
    let mut publisher = tokio::process::Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .args([
            "publish",
            "--re",
            "--loop",
            "--to",
            &format!("http://{addr}/publish/uneven"),
            &clip_s,
        ])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relaycast publish");
    // 3.5 loops of 1.3 s.
    let want = (per_loop * 7 / 2) as usize;
    let got = common::ws_read(&mut viewer, want, Duration::from_secs(20)).await;
    if let Ok(Some(st)) = publisher.try_wait() {
        let out = publisher.wait_with_output().await.expect("output");
        panic!(
            "publish --loop exited ({st}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = publisher.start_kill();
    assert!(
        got.seqs.len() >= want,
        "{} of {want} fragments",
        got.seqs.len()
    );
    // The binaries after the init, each one fragment, with the publisher's
    // mfhd sequence numbers (fragment n of the endless stream is n + 1).
    let mut last: std::collections::HashMap<u32, u64> = Default::default();
    let mut loop_starts: std::collections::BTreeMap<u64, Vec<(u32, u64)>> = Default::default();
    let mut frames = 0;
    for b in got.binaries.iter().skip(1) {
        let mfhd = b.windows(4).position(|w| w == b"mfhd").expect("mfhd") + 8;
        let n = u64::from(u32::from_be_bytes(b[mfhd..mfhd + 4].try_into().expect("4"))) - 1;
        for (id, t) in tfdts(b) {
            if let Some(prev) = last.insert(id, t) {
                assert!(
                    t > prev,
                    "fragment {n}: track {id} went from {prev} back to {t}"
                );
            }
            if n % per_loop == 0 {
                loop_starts.entry(n / per_loop).or_default().push((id, t));
            }
        }
        frames += 1;
    }
    assert!(frames >= want - 1);
    // Loop points seen (the viewer joined at a keyframe of loop 0 or 1).
    assert!(loop_starts.len() >= 3, "{loop_starts:?}");
    // Per loop point, (video start − audio start) in µs: the same every loop.
    let skew: Vec<i128> = loop_starts
        .values()
        .map(|starts| {
            let at = |video: bool| {
                let id = init
                    .tracks
                    .iter()
                    .find(|t| matches!(t.kind, relaycast::media::TrackKind::Video) == video)
                    .map(|t| t.id)
                    .expect("track kind");
                let t = starts
                    .iter()
                    .find(|(i, _)| *i == id)
                    .expect("both tracks")
                    .1;
                i128::from(t) * 1_000_000 / i128::from(timescale(id))
            };
            at(true) - at(false)
        })
        .collect();
    let (lo, hi) = (
        skew.iter().min().copied().unwrap_or(0),
        skew.iter().max().copied().unwrap_or(0),
    );
    assert!(
        hi - lo <= 100,
        "the tracks drift apart: skew per loop (µs) {skew:?}"
    );
    eprintln!(
        "{} loops seen; skew per loop (µs) {skew:?}",
        loop_starts.len()
    );
    relay.shutdown().await;
}
