//! Real inputs made by ffmpeg, remuxed, checked with ffprobe (skipped without ffmpeg).
#[path = "remux_common/mod.rs"]
mod common;
use bytes::Bytes;
use common::*;

fn check(src: &std::path::Path, out: &std::path::Path, video: &str, audio: &str) {
    let (want, _) = probe(src);
    let (got, err) = probe(out);
    println!("source {want:?}\nremuxed {got:?}");
    assert!(err.trim().is_empty(), "ffprobe errors on {out:?}: {err}");
    let find =
        |v: &[(String, String, u64, String, String)], k: &str| v.iter().find(|s| s.0 == k).cloned();
    let (gv, wv) = (
        find(&got, "video").expect("video stream"),
        find(&want, "video").expect("src video"),
    );
    assert_eq!(gv.1, video);
    assert_eq!((gv.3.as_str(), gv.4.as_str()), ("320", "240"));
    assert_eq!(gv.2, wv.2, "video frames");
    let (ga, wa) = (
        find(&got, "audio").expect("audio stream"),
        find(&want, "audio").expect("src audio"),
    );
    assert_eq!(ga.1, audio);
    assert!(
        ga.2 + 1 >= wa.2 && ga.2 <= wa.2,
        "audio frames {} vs {}",
        ga.2,
        wa.2
    );
}

fn check_fragments(r: &Remuxed) {
    assert_eq!(r.inits, 1);
    assert!(r.keyframes[0], "first fragment starts with a keyframe");
    // 30 fps, 1-second GOP: every 100 ms fragment holds 3 frames; 1 in 10 is a keyframe.
    let keys = r.keyframes.iter().filter(|k| **k).count();
    assert!(keys >= 2, "{keys} keyframe fragments");
    // The first fragment may be longer: it waits (up to 2 s) for the track the PMT
    // announced but whose first PES has not arrived yet (ffmpeg's TS muxer sends audio late).
    assert!(
        r.durations_us.iter().skip(1).all(|d| *d <= 134_000),
        "{:?}",
        r.durations_us
    );
}

#[test]
fn flv_h264_aac() {
    if !have_ffmpeg() {
        eprintln!("ffmpeg missing: skipped");
        return;
    }
    let src = make(
        "h264.flv",
        4,
        &["-c:v", "libx264", "-g", "30", "-c:a", "aac", "-f", "flv"],
    );
    let file = Bytes::from(std::fs::read(&src).unwrap());
    let r = remux_flv(&file);
    check_fragments(&r);
    let out = write("flv_h264.mp4", &r.bytes);
    check(&src, &out, "h264", "aac");
}

#[test]
fn flv_h264_mp3() {
    if !have_ffmpeg() {
        return;
    }
    let src = make(
        "mp3.flv",
        3,
        &[
            "-c:v",
            "libx264",
            "-g",
            "30",
            "-c:a",
            "libmp3lame",
            "-ar",
            "44100",
            "-f",
            "flv",
        ],
    );
    let file = Bytes::from(std::fs::read(&src).unwrap());
    let r = remux_flv(&file);
    let out = write("flv_mp3.mp4", &r.bytes);
    check(&src, &out, "h264", "mp3");
}

#[test]
fn ts_h264_aac_any_split() {
    if !have_ffmpeg() {
        return;
    }
    let src = make(
        "h264.ts",
        4,
        &["-c:v", "libx264", "-g", "30", "-c:a", "aac", "-f", "mpegts"],
    );
    let file = std::fs::read(&src).unwrap();
    let whole = remux_ts(&file, file.len());
    for chunk in [1316, 1000, 7] {
        let r = remux_ts(&file, chunk);
        assert_eq!(r.bytes, whole.bytes, "split {chunk} changes the output");
    }
    check_fragments(&whole);
    let out = write("ts_h264.mp4", &whole.bytes);
    check(&src, &out, "h264", "aac");
}

#[test]
fn ts_hevc_aac() {
    if !have_ffmpeg() {
        return;
    }
    let src = make(
        "hevc.ts",
        3,
        &[
            "-c:v",
            "libx265",
            "-x265-params",
            "keyint=30:min-keyint=30:log-level=error",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ],
    );
    let file = std::fs::read(&src).unwrap();
    let r = remux_ts(&file, 1316);
    check_fragments(&r);
    let out = write("ts_hevc.mp4", &r.bytes);
    check(&src, &out, "hevc", "aac");
}
