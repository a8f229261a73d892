//! Shared helpers: make inputs with ffmpeg, remux them, check with ffprobe.
#![allow(dead_code)]

use bytes::Bytes;
use relaycast_media::remux::cmaf::{MuxerConfig, Output};
use relaycast_media::remux::flv::{FlvRemuxer, file_tags};
use relaycast_media::remux::ts::TsRemuxer;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory for this test binary.
pub fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("remux-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).ok();
    d
}

/// True when ffmpeg runs; with RELAYCAST_REQUIRE_FFMPEG=1 (CI) a missing
/// ffmpeg fails the test instead of skipping it.
pub fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("RELAYCAST_REQUIRE_FFMPEG").as_deref() == Ok("1") {
        panic!("ffmpeg is required (RELAYCAST_REQUIRE_FFMPEG=1) but does not run");
    }
    ok
}

/// Runs ffmpeg with lavfi test sources (`seconds` long) and `codec_args`, writing `name`.
pub fn make(name: &str, seconds: u32, codec_args: &[&str]) -> PathBuf {
    let out = dir().join(name);
    if out.exists() {
        return out;
    }
    let t = seconds.to_string();
    let mut args: Vec<&str> = vec![
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &t,
    ];
    args.extend_from_slice(codec_args);
    let o = out.to_string_lossy().to_string();
    args.push(&o);
    let st = Command::new("ffmpeg")
        .args(&args)
        .status()
        .expect("ffmpeg runs");
    assert!(st.success(), "ffmpeg {args:?}");
    out
}

/// Init + fragments, concatenated, and the fragments' keyframe flags.
pub struct Remuxed {
    pub bytes: Vec<u8>,
    pub inits: usize,
    pub keyframes: Vec<bool>,
    pub durations_us: Vec<u64>,
}

/// Every output must go through the relay's own fMP4 splitter unchanged:
/// one `Init` per init segment, one `Fragment` per fragment, the same bytes
/// and keyframe flags (what enters the fan-out is what fMP4 ingest produces).
fn check_splitter(outs: &[Output]) {
    use relaycast_media::{Item, Splitter, SplitterConfig};
    let mut s = Splitter::new(SplitterConfig::default());
    for o in outs {
        let bytes = match o {
            Output::Init(i) => &i.bytes,
            Output::Fragment(f) => &f.bytes,
        };
        s.push(bytes);
        let item = s.next_item().expect("splitter accepts the remux output");
        match (o, item) {
            (Output::Init(i), Some(Item::Init(got))) => {
                assert_eq!(got.bytes, i.bytes);
                assert!(!got.codecs.is_empty(), "codecs string");
            }
            (Output::Fragment(f), Some(Item::Fragment(got))) => {
                assert_eq!(got.bytes, f.bytes);
                assert_eq!(
                    got.keyframe, f.keyframe,
                    "keyframe flag of fragment {}",
                    f.sequence
                );
                assert_eq!(got.decode_time, f.decode_time);
            }
            (o, got) => panic!("splitter gave {got:?} for {o:?}"),
        }
        assert!(s.next_item().expect("no error").is_none());
    }
    s.finish().expect("output ends on a box boundary");
}

fn collect(outs: impl Iterator<Item = Output>) -> Remuxed {
    let outs: Vec<Output> = outs.collect();
    check_splitter(&outs);
    let mut r = Remuxed {
        bytes: Vec::new(),
        inits: 0,
        keyframes: Vec::new(),
        durations_us: Vec::new(),
    };
    for o in outs {
        match o {
            Output::Init(i) => {
                r.inits += 1;
                r.bytes.extend_from_slice(&i.bytes);
            }
            Output::Fragment(f) => {
                r.keyframes.push(f.keyframe);
                r.durations_us
                    .push(f.duration * 1_000_000 / u64::from(f.timescale));
                r.bytes.extend_from_slice(&f.bytes);
            }
        }
    }
    r
}

pub fn remux_flv(file: &Bytes) -> Remuxed {
    let (audio, video, tags) = file_tags(file);
    let mut m = FlvRemuxer::new(MuxerConfig::default());
    m.muxer().expect(video, audio);
    let mut outs = Vec::new();
    for (t, ts, body) in tags {
        m.push_tag(t, ts, body).expect("tag accepted");
        outs.extend(std::iter::from_fn(|| m.poll()));
    }
    m.finish();
    outs.extend(std::iter::from_fn(|| m.poll()));
    collect(outs.into_iter())
}

/// Remuxes a TS file fed in pieces of `chunk` bytes.
pub fn remux_ts(file: &[u8], chunk: usize) -> Remuxed {
    let mut m = TsRemuxer::new(MuxerConfig::default());
    let mut outs = Vec::new();
    for piece in file.chunks(chunk) {
        m.push(piece);
        outs.extend(std::iter::from_fn(|| m.poll()));
    }
    m.finish();
    outs.extend(std::iter::from_fn(|| m.poll()));
    collect(outs.into_iter())
}

/// (codec_type, codec_name, frames decoded, width, height) per stream, and ffprobe's stderr.
/// One row per stream: (codec_type, codec_name, frames, width, height).
pub type Probed = Vec<(String, String, u64, String, String)>;

pub fn probe(path: &Path) -> (Probed, String) {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let mut v = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        // csv order follows the show_entries order within ffprobe's struct: codec_name, codec_type, width, height, nb_read_frames
        if f.len() >= 3 {
            let name = f[0].to_string();
            let kind = f[1].to_string();
            let frames = f.last().and_then(|x| x.parse().ok()).unwrap_or(0);
            let (w, h) = if kind == "video" && f.len() >= 5 {
                (f[2].to_string(), f[3].to_string())
            } else {
                (String::new(), String::new())
            };
            v.push((kind, name, frames, w, h));
        }
    }
    (v, String::from_utf8_lossy(&o.stderr).to_string())
}

pub fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, bytes).expect("write output");
    p
}
