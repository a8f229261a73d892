//! The real binary, started the way a newcomer starts it (`relaycast`, demo
//! on), serves a `demo` stream that ffprobe decodes for 5 s over HTTP with no
//! error and no timestamp going backwards; SIGTERM then stops it.

mod common;

use common::have;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_serves_a_demo_stream_that_ffprobe_decodes() {
    if !have("ffprobe") {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_relaycast"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relaycast");
    let stdout = child.stdout.take().expect("stdout");
    let mut relay = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let base = line
        .trim()
        .strip_prefix("relaycast: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim_end_matches('/')
        .to_string();

    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-read_intervals",
            "%+5",
            "-show_entries",
            "packet=stream_index,dts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(format!("{base}/live/demo.mp4?wait=10"))
        .output()
        .expect("run ffprobe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffprobe failed: {stderr}");
    assert!(stderr.trim().is_empty(), "ffprobe reported: {stderr}");

    let mut last = [f64::NEG_INFINITY; 2];
    let mut count = [0u32; 2];
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = l.split(',');
        let stream: usize = f.next().and_then(|s| s.parse().ok()).expect(l);
        let dts: f64 = f.next().and_then(|s| s.parse().ok()).expect(l);
        assert!(stream < 2, "{l}");
        assert!(
            dts > last[stream],
            "stream {stream}: dts {dts} after {}",
            last[stream]
        );
        last[stream] = dts;
        count[stream] += 1;
    }
    // 5 s of 30 fps video and 48 kHz AAC (1024 samples per frame).
    assert!(count[0] >= 140, "{count:?} packets");
    assert!(count[1] >= 220, "{count:?} packets");

    // SIGTERM: the relay exits by itself within its 5 s deadline.
    let pid = relay.0.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(kill.is_ok_and(|s| s.success()));
    let mut exited = None;
    for _ in 0..100 {
        if let Ok(Some(status)) = relay.0.try_wait() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = exited.expect("relaycast exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}
