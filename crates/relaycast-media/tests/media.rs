//! The fMP4 splitter and the demo source on real clips made by ffmpeg
//! (`tests/fixtures/`, see its README): any split of the input gives the same
//! items, the items add up to the input, codec strings and keyframes are
//! right, bad input gets the right error, nothing panics, and the looped demo
//! is one continuous stream that ffprobe decodes.

use bytes::Bytes;
use proptest::prelude::*;
use relaycast_media::demo::Demo;
use relaycast_media::{Fragment, Init, Item, MediaError, Splitter, SplitterConfig, TrackKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const FIXTURES: [&str; 8] = [
    "h264_aac_keyframe.mp4",
    "h264_aac_every_frame.mp4",
    "h264_aac_cmaf_prft.mp4",
    "h264_aac_hls.mp4",
    "hevc_aac.mp4",
    "vp9_opus.mp4",
    "av1_opus.mp4",
    "aac_only.mp4",
];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn demo_clip() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/demo/demo.mp4");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Everything a stream gives: its items, then the error that stopped it (or
/// the result of `finish`).
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<Item>,
    end: Result<(), MediaError>,
}

fn drain(s: &mut Splitter, items: &mut Vec<Item>) -> Result<(), MediaError> {
    while let Some(item) = s.next_item()? {
        items.push(item);
    }
    Ok(())
}

/// Pushes `chunks` one after the other (as `&[u8]`, or as `Bytes` when
/// `shared`), draining after each.
fn split<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, shared: bool) -> Outcome {
    split_with(SplitterConfig::default(), chunks, shared)
}

fn split_with<'a>(
    config: SplitterConfig,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    shared: bool,
) -> Outcome {
    let mut s = Splitter::new(config);
    let mut items = Vec::new();
    for chunk in chunks {
        if shared {
            s.push_bytes(Bytes::copy_from_slice(chunk));
        } else {
            s.push(chunk);
        }
        if let Err(e) = drain(&mut s, &mut items) {
            return Outcome { items, end: Err(e) };
        }
    }
    let end = s.finish();
    Outcome { items, end }
}

fn whole(data: &[u8]) -> Outcome {
    split([data], false)
}

fn init_of(items: &[Item]) -> &Init {
    match items.first() {
        Some(Item::Init(init)) => init,
        other => panic!("first item is not an init segment: {other:?}"),
    }
}

fn fragments(items: &[Item]) -> Vec<&Fragment> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Fragment(f) => Some(f),
            Item::Init(_) => None,
        })
        .collect()
}

fn item_bytes(item: &Item) -> &Bytes {
    match item {
        Item::Init(i) => &i.bytes,
        Item::Fragment(f) => &f.bytes,
    }
}

/// A tiny independent box walker: `(type, start, size)` of each top-level box.
fn top_boxes(data: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let mut size = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = data[pos + 4..pos + 8].try_into().unwrap();
        if size == 1 {
            size = u64::from_be_bytes(data[pos + 8..pos + 16].try_into().unwrap()) as usize;
        }
        out.push((kind, pos, size));
        pos += size;
    }
    out
}

fn mk_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(kind);
    b.extend_from_slice(body);
    b
}

/// A deterministic pseudo-random sequence (xorshift), for sampled offsets.
fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Per-traf facts read by an independent walker: (track, tfdt, duration, version).
fn trafs(fragment: &[u8]) -> Vec<(u32, u64, u64, u8)> {
    fn children(b: &[u8]) -> Vec<([u8; 4], &[u8])> {
        top_boxes(b)
            .into_iter()
            .map(|(k, s, n)| (k, &b[s + 8..s + n]))
            .collect()
    }
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let mut out = Vec::new();
    for (kind, moof) in children(fragment) {
        if &kind != b"moof" {
            continue;
        }
        for (kind, traf) in children(moof) {
            if &kind != b"traf" {
                continue;
            }
            let (mut id, mut default, mut time, mut version, mut total) = (0, 0, 0, 0, 0u64);
            for (kind, b) in children(traf) {
                match &kind {
                    b"tfhd" => {
                        let flags = be32(b, 0) & 0xff_ffff;
                        id = be32(b, 4);
                        let mut p = 8;
                        if flags & 1 != 0 {
                            p += 8;
                        }
                        if flags & 2 != 0 {
                            p += 4;
                        }
                        if flags & 8 != 0 {
                            default = be32(b, p);
                        }
                    }
                    b"tfdt" => {
                        version = b[0];
                        time = if version == 1 {
                            u64::from_be_bytes(b[4..12].try_into().unwrap())
                        } else {
                            u64::from(be32(b, 4))
                        };
                    }
                    b"trun" => {
                        let flags = be32(b, 0) & 0xff_ffff;
                        let n = be32(b, 4) as usize;
                        let mut p = 8;
                        if flags & 1 != 0 {
                            p += 4;
                        }
                        if flags & 4 != 0 {
                            p += 4;
                        }
                        let rec = 4 * (flags >> 8 & 0xf).count_ones() as usize;
                        for i in 0..n {
                            total += u64::from(if flags & 0x100 != 0 {
                                be32(b, p + i * rec)
                            } else {
                                default
                            });
                        }
                    }
                    _ => {}
                }
            }
            out.push((id, time, total, version));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Splitting real clips
// ---------------------------------------------------------------------------

#[test]
fn every_fixture_splits_into_init_and_fragments() {
    for name in FIXTURES {
        let data = fixture(name);
        let out = whole(&data);
        assert_eq!(out.end, Ok(()), "{name}");
        let init = init_of(&out.items);
        let frags = fragments(&out.items);
        assert!(!frags.is_empty(), "{name}");
        assert_eq!(frags.len() + 1, out.items.len(), "{name}: one init only");
        for (i, f) in frags.iter().enumerate() {
            assert_eq!(f.index, i as u64, "{name}");
            assert_eq!(
                f.mfhd_seq,
                i as u32 + 1,
                "{name}: ffmpeg numbers moofs from 1"
            );
            assert!(f.timescale > 0, "{name}");
        }
        assert!(frags[0].keyframe, "{name}: starts with a keyframe");
        assert!(init.tracks.iter().all(|t| t.timescale > 0));
    }
}

#[test]
fn any_two_pushes_give_the_same_items_at_every_offset() {
    // Every offset of the smallest clip, as slices and as shared Bytes.
    let data = fixture("aac_only.mp4");
    let expected = whole(&data);
    for cut in 0..=data.len() {
        let (a, b) = data.split_at(cut);
        assert_eq!(split([a, b], cut % 2 == 0), expected, "cut at {cut}");
    }
}

#[test]
fn sampled_two_and_many_pushes_give_the_same_items() {
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for name in FIXTURES {
        let data = fixture(name);
        let expected = whole(&data);
        // Every box boundary and its neighbours, plus 150 random offsets.
        let mut cuts: Vec<usize> = top_boxes(&data)
            .iter()
            .flat_map(|&(_, s, _)| [s.saturating_sub(1), s, s + 1, s + 4, s + 8, s + 9])
            .collect();
        cuts.extend((0..150).map(|_| (xorshift(&mut seed) % data.len() as u64) as usize));
        for cut in cuts {
            let cut = cut.min(data.len());
            let (a, b) = data.split_at(cut);
            assert_eq!(split([a, b], false), expected, "{name}: cut at {cut}");
            assert_eq!(
                split([a, b], true),
                expected,
                "{name}: cut at {cut} (Bytes)"
            );
        }
        // Random chunk sizes, like a network delivers.
        let mut chunks = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let n = 1 + (xorshift(&mut seed) % 20_000) as usize;
            chunks.push(&data[pos..(pos + n).min(data.len())]);
            pos += n;
        }
        assert_eq!(
            split(chunks.iter().copied(), true),
            expected,
            "{name}: random chunks"
        );
    }
}

#[test]
fn one_byte_at_a_time_gives_the_same_items() {
    for name in FIXTURES {
        let data = fixture(name);
        assert_eq!(split(data.chunks(1), false), whole(&data), "{name}");
    }
    // The 461 KB demo clip a byte at a time: a quadratic re-scan would not
    // finish here.
    let data = demo_clip();
    assert_eq!(split(data.chunks(1), false), whole(&data), "demo clip");
    assert_eq!(
        split(data.chunks(7), true),
        whole(&data),
        "demo clip, 7-byte Bytes"
    );
}

#[test]
fn items_add_up_to_the_input_minus_dropped_boxes() {
    for name in FIXTURES {
        let data = fixture(name);
        let out = whole(&data);
        let mut expected = Vec::new();
        let mut dropped = Vec::new();
        for (kind, start, size) in top_boxes(&data) {
            if [b"free", b"skip", b"mfra"].contains(&&kind) {
                dropped.push(kind);
            } else {
                expected.extend_from_slice(&data[start..start + size]);
            }
        }
        let got: Vec<u8> = out
            .items
            .iter()
            .flat_map(|i| item_bytes(i).to_vec())
            .collect();
        assert!(got == expected, "{name}: items differ from the input");
        if name == "h264_aac_keyframe.mp4" {
            assert_eq!(dropped, vec![*b"mfra"], "this clip keeps ffmpeg's trailer");
        }
    }
}

#[test]
fn boxes_between_items_are_dropped_and_inside_items_kept() {
    // The HLS clip: ftyp moov (styp sidx sidx moof mdat)×3. Add padding
    // everywhere it may appear.
    let data = fixture("h264_aac_hls.mp4");
    let boxes = top_boxes(&data);
    let free = mk_box(b"free", &[0; 100]);
    let skip = mk_box(b"skip", b"hello");
    let uuid = mk_box(b"uuid", &[7; 16]);
    let mut input = Vec::new();
    let mut kept = Vec::new();
    input.extend_from_slice(&free); // before everything: dropped
    for (kind, start, size) in &boxes {
        let b = &data[*start..start + size];
        if kind == b"moov" {
            input.extend_from_slice(&skip); // between ftyp and moov: part of the init
            kept.extend_from_slice(&skip);
        }
        if kind == b"moof" {
            input.extend_from_slice(&uuid); // between sidx and moof: part of the fragment
            kept.extend_from_slice(&uuid);
        }
        if kind == b"styp" {
            input.extend_from_slice(&free); // between fragments: dropped
        }
        input.extend_from_slice(b);
        kept.extend_from_slice(b);
    }
    input.extend_from_slice(&mk_box(b"mfra", &[0; 40])); // trailer: dropped
    let out = whole(&input);
    assert_eq!(out.end, Ok(()));
    let got: Vec<u8> = out
        .items
        .iter()
        .flat_map(|i| item_bytes(i).to_vec())
        .collect();
    assert!(got == kept);
    assert_eq!(fragments(&out.items).len(), 3);
    assert_eq!(split(input.chunks(3), false), out);
}

#[test]
fn items_are_slices_of_a_pushed_chunk() {
    // One chunk given as Bytes: every item is a view into it, not a copy.
    let data = Bytes::from(fixture("h264_aac_keyframe.mp4"));
    let range = data.as_ptr_range();
    let mut s = Splitter::default();
    s.push_bytes(data.clone());
    let mut items = Vec::new();
    drain(&mut s, &mut items).expect("splits");
    assert_eq!(items.len(), 4);
    for item in &items {
        let b = item_bytes(item);
        assert!(range.contains(&b.as_ptr()), "item bytes were copied");
    }
}

#[test]
fn a_new_init_segment_mid_stream_restarts_the_count() {
    let a = fixture("h264_aac_keyframe.mp4");
    let b = fixture("vp9_opus.mp4");
    let mut input = a.clone();
    input.extend_from_slice(&b);
    let out = whole(&input);
    assert_eq!(out.end, Ok(()));
    let inits: Vec<&Init> = out
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Init(i) => Some(i),
            Item::Fragment(_) => None,
        })
        .collect();
    assert_eq!(inits.len(), 2);
    assert_eq!(inits[1].codecs, "vp09.00.11.08,opus");
    let last = fragments(&out.items);
    assert_eq!(
        last.last().map(|f| f.index),
        Some(1),
        "index restarts at a new init"
    );
    let mut s = Splitter::default();
    s.push(&input);
    drain(&mut s, &mut Vec::new()).expect("splits");
    assert_eq!(
        s.init().map(|i| i.codecs.as_str()),
        Some("vp09.00.11.08,opus")
    );
}

// ---------------------------------------------------------------------------
// What the items say
// ---------------------------------------------------------------------------

#[test]
fn codec_strings_of_each_clip() {
    let cases = [
        // x264 picks level 1.3 for 320x180.
        (
            "h264_aac_keyframe.mp4",
            "video/mp4; codecs=\"avc1.64000d,mp4a.40.2\"",
        ),
        (
            "h264_aac_every_frame.mp4",
            "video/mp4; codecs=\"avc1.64000d,mp4a.40.2\"",
        ),
        (
            "h264_aac_cmaf_prft.mp4",
            "video/mp4; codecs=\"avc1.64000d,mp4a.40.2\"",
        ),
        (
            "h264_aac_hls.mp4",
            "video/mp4; codecs=\"avc1.64000d,mp4a.40.2\"",
        ),
        // x265 Main, level 2 (level_idc 60), progressive-source constraint flag.
        (
            "hevc_aac.mp4",
            "video/mp4; codecs=\"hvc1.1.6.L60.90,mp4a.40.2\"",
        ),
        // libvpx via ffmpeg: profile 0, level 1.1, 8 bits, unspecified colours.
        ("vp9_opus.mp4", "video/mp4; codecs=\"vp09.00.11.08,opus\""),
        // SVT-AV1: main profile, level 2.0 (seq_level_idx 0) at 320x184.
        ("av1_opus.mp4", "video/mp4; codecs=\"av01.0.00M.08,opus\""),
        ("aac_only.mp4", "audio/mp4; codecs=\"mp4a.40.2\""),
    ];
    for (name, mime) in cases {
        let out = whole(&fixture(name));
        let init = init_of(&out.items);
        assert_eq!(init.mime, mime, "{name}");
        let codecs: Vec<&str> = init.tracks.iter().map(|t| t.codec.as_str()).collect();
        assert_eq!(init.codecs, codecs.join(","), "{name}");
    }
    // The demo clip: x264 High@3.1 (ffmpeg -level 3.1) and AAC-LC.
    let demo = Demo::load().expect("demo clip");
    assert_eq!(
        demo.init().mime,
        "video/mp4; codecs=\"avc1.64001f,mp4a.40.2\""
    );
    let kinds: Vec<(u32, TrackKind, u32)> = demo
        .init()
        .tracks
        .iter()
        .map(|t| (t.id, t.kind, t.timescale))
        .collect();
    assert_eq!(
        kinds,
        [(1, TrackKind::Video, 15360), (2, TrackKind::Audio, 48000)]
    );
}

#[test]
fn keyframes_follow_the_video_track() {
    // frag_every_frame: one sample per moof, audio-only and video-only moofs.
    let data = fixture("h264_aac_every_frame.mp4");
    let out = whole(&data);
    let frags = fragments(&out.items);
    let mut video = 0;
    let mut audio = 0;
    let mut gops = 0;
    for f in &frags {
        let t = trafs(&f.bytes);
        assert_eq!(t.len(), 1, "one track per moof");
        let (track, tfdt, duration, _) = t[0];
        assert_eq!(f.decode_time, tfdt);
        assert_eq!(f.duration, duration);
        if track == 2 {
            audio += 1;
            assert!(!f.keyframe, "audio-only moofs never open a group");
            assert_eq!(f.timescale, 48000);
        } else {
            video += 1;
            assert_eq!(f.timescale, 15360);
            assert_eq!(f.duration, 512);
            // 30-frame GOPs: frames 0, 30, 60 are keyframes.
            let frame = f.decode_time / 512;
            assert_eq!(f.keyframe, frame % 30 == 0, "video frame {frame}");
            gops += u32::from(f.keyframe);
        }
    }
    assert_eq!(video, 90);
    assert!(audio > 130, "{audio} audio moofs");
    assert_eq!(gops, 3);
    assert_eq!(
        frags.iter().filter(|f| f.keyframe).count(),
        3,
        "keyframes == GOPs"
    );

    // 1-second fragments: every one starts a GOP, timed by the video track.
    let out = whole(&fixture("h264_aac_keyframe.mp4"));
    for (i, f) in fragments(&out.items).iter().enumerate() {
        assert!(f.keyframe);
        assert_eq!(
            (f.decode_time, f.duration, f.timescale),
            (i as u64 * 15360, 15360, 15360)
        );
        assert_eq!(f.decode_time_us(), i as u64 * 1_000_000);
    }
    // Audio only: every AAC frame is a sync sample.
    let out = whole(&fixture("aac_only.mp4"));
    assert!(
        fragments(&out.items)
            .iter()
            .all(|f| f.keyframe && f.timescale == 48000)
    );
    // The demo: 100 ms fragments, a keyframe every 10th.
    let out = whole(&demo_clip());
    let frags = fragments(&out.items);
    assert_eq!(frags.len(), 80);
    for (i, f) in frags.iter().enumerate() {
        assert_eq!(f.keyframe, i % 10 == 0, "fragment {i}");
        assert_eq!(f.duration_us(), 100_000);
    }
}

#[test]
fn decode_times_carry_over_a_missing_tfdt() {
    // Remove the tfdt of every traf (the moof shrinks: fix sizes and the
    // moof-relative data offsets) and the decode times must be the same.
    let data = fixture("h264_aac_keyframe.mp4");
    let expected: Vec<(u64, u64)> = fragments(&whole(&data).items)
        .iter()
        .map(|f| (f.decode_time, f.duration))
        .collect();
    let stripped = rewrite_moofs(&data, |_| None);
    let out = whole(&stripped);
    assert_eq!(out.end, Ok(()));
    let got: Vec<(u64, u64)> = fragments(&out.items)
        .iter()
        .map(|f| (f.decode_time, f.duration))
        .collect();
    assert_eq!(got, expected);
}

/// Rebuilds every moof, replacing each tfdt body with `f(body)` (None: drop
/// the tfdt) and fixing box sizes and moof-relative `trun` data offsets.
fn rewrite_moofs(data: &[u8], f: impl Fn(&[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, start, size) in top_boxes(data) {
        let b = &data[start..start + size];
        if &kind != b"moof" {
            out.extend_from_slice(b);
            continue;
        }
        let mut body = Vec::new();
        let mut truns = Vec::new(); // positions of data_offset fields in `body`
        for (k, s, n) in top_boxes(&b[8..]) {
            let child = &b[8 + s..8 + s + n];
            if &k != b"traf" {
                body.extend_from_slice(child);
                continue;
            }
            let mut traf = Vec::new();
            let mut offsets = Vec::new();
            for (k2, s2, n2) in top_boxes(&child[8..]) {
                let c = &child[8 + s2..8 + s2 + n2];
                match &k2 {
                    b"tfdt" => {
                        if let Some(new) = f(&c[8..]) {
                            traf.extend_from_slice(&mk_box(b"tfdt", &new));
                        }
                    }
                    b"trun" => {
                        if u32::from_be_bytes(c[8..12].try_into().unwrap()) & 1 != 0 {
                            offsets.push(traf.len() + 16);
                        }
                        traf.extend_from_slice(c);
                    }
                    _ => traf.extend_from_slice(c),
                }
            }
            let traf = mk_box(b"traf", &traf);
            truns.extend(offsets.iter().map(|o| body.len() + 8 + o));
            body.extend_from_slice(&traf);
        }
        let delta = (body.len() + 8) as i64 - size as i64;
        for at in truns {
            let v = i32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as i64 + delta;
            body[at..at + 4].copy_from_slice(&(v as i32).to_be_bytes());
        }
        out.extend_from_slice(&mk_box(b"moof", &body));
    }
    out
}

/// The clip with every 64-bit tfdt written as 32-bit.
fn with_v0_tfdt(data: &[u8]) -> Vec<u8> {
    rewrite_moofs(data, |b| {
        assert_eq!(b[0], 1, "ffmpeg writes tfdt version 1");
        let t = u64::from_be_bytes(b[4..12].try_into().unwrap());
        let mut v0 = vec![0, 0, 0, 0];
        v0.extend_from_slice(&u32::try_from(t).unwrap().to_be_bytes());
        Some(v0)
    })
}

#[test]
fn tfdt_version_0_reads_the_same() {
    let data = fixture("h264_aac_every_frame.mp4");
    let v1 = whole(&data);
    let v0 = whole(&with_v0_tfdt(&data));
    assert_eq!(v0.end, Ok(()));
    let times = |o: &Outcome| -> Vec<(u64, u64, bool)> {
        fragments(&o.items)
            .iter()
            .map(|f| (f.decode_time, f.duration, f.keyframe))
            .collect()
    };
    assert_eq!(times(&v0), times(&v1));
    assert!(
        trafs(&fragments(&v0.items)[5].bytes)
            .iter()
            .all(|t| t.3 == 0)
    );
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

fn init_bytes() -> Vec<u8> {
    let data = fixture("h264_aac_keyframe.mp4");
    let out = whole(&data);
    init_of(&out.items).bytes.to_vec()
}

fn first_fragment() -> Vec<u8> {
    let data = fixture("h264_aac_keyframe.mp4");
    let out = whole(&data);
    fragments(&out.items)[0].bytes.to_vec()
}

fn error_of(input: &[u8]) -> MediaError {
    match whole(input).end {
        Err(e) => e,
        Ok(()) => panic!("accepted"),
    }
}

#[test]
fn box_smaller_than_its_header() {
    let mut input = init_bytes();
    input.extend_from_slice(b"\0\0\0\x04moof");
    assert!(matches!(
        error_of(&input),
        MediaError::BoxTooSmall { ref kind, size: 4, header: 8, .. } if kind == "moof"
    ));
    let mut input = init_bytes();
    input.extend_from_slice(b"\0\0\0\x01mdat\0\0\0\0\0\0\0\x0c");
    assert!(matches!(
        error_of(&input),
        MediaError::BoxTooSmall {
            size: 12,
            header: 16,
            ..
        }
    ));
}

#[test]
fn box_over_the_limit_is_413() {
    let mut input = init_bytes();
    let init_len = input.len() as u64;
    let frag = first_fragment();
    input.extend_from_slice(&frag);
    let config = SplitterConfig {
        max_box_size: 10_000,
    };
    let out = split_with(config, [&input[..]], false);
    let e = out.end.expect_err("mdat over 10 kB");
    assert_eq!(e.http_status(), 413);
    let moof_len = top_boxes(&frag)[0].2 as u64;
    assert!(
        matches!(e, MediaError::BoxTooLarge { ref kind, offset, limit: 10_000, .. }
            if kind == "mdat" && offset == init_len + moof_len),
        "{e:?}"
    );
    assert_eq!(out.items.len(), 1, "the init still came out");
    // A declared size is enough: the box does not have to arrive.
    let mut s = Splitter::default();
    s.push(&init_bytes());
    s.push(b"\0\0\0\x01mdat\x7f\0\0\0\0\0\0\0");
    assert!(matches!(s.next_item(), Ok(Some(Item::Init(_)))));
    assert!(matches!(s.next_item(), Err(MediaError::BoxTooLarge { .. })));
}

#[test]
fn moof_before_moov() {
    let frag = first_fragment();
    assert_eq!(error_of(&frag), MediaError::MoofBeforeMoov { offset: 0 });
    let mut input = fixture("h264_aac_hls.mp4");
    input.drain(..top_boxes(&input)[2].1); // cut ftyp+moov: starts with styp
    assert_eq!(
        error_of(&input),
        MediaError::MoofBeforeMoov {
            offset: 24 + 52 + 52
        }
    );
}

#[test]
fn moof_followed_by_something_else() {
    let mut input = init_bytes();
    let frag = first_fragment();
    let moof_len = top_boxes(&frag)[0].2;
    input.extend_from_slice(&frag[..moof_len]);
    input.extend_from_slice(&mk_box(b"free", &[0; 8]));
    input.extend_from_slice(&frag[moof_len..]);
    let init_len = init_bytes().len() as u64;
    assert_eq!(
        error_of(&input),
        MediaError::MoofWithoutMdat {
            offset: init_len,
            next: "free".into()
        }
    );
}

#[test]
fn truncated_stream_fails_at_finish() {
    let data = fixture("h264_aac_keyframe.mp4");
    let boxes = top_boxes(&data);
    // Inside an mdat, after a complete moof, and inside an init.
    for cut in [boxes[3].1 + 100, boxes[3].1, 10, boxes[1].1 + 8] {
        let mut s = Splitter::default();
        s.push(&data[..cut]);
        drain(&mut s, &mut Vec::new()).expect("no error before the end");
        let e = s.finish().expect_err("truncated");
        assert!(
            matches!(e, MediaError::Truncated { .. }),
            "cut {cut}: {e:?}"
        );
    }
    // Cut exactly between items: fine.
    let mut s = Splitter::default();
    s.push(&data[..boxes[4].1]);
    drain(&mut s, &mut Vec::new()).expect("splits");
    assert_eq!(s.finish(), Ok(()));
}

#[test]
fn largesize_boxes_are_read() {
    // Rewrite every mdat with a 64-bit size (header 16 bytes).
    let data = fixture("h264_aac_keyframe.mp4");
    let mut input = Vec::new();
    let mut mdats = 0;
    for (kind, start, size) in top_boxes(&data) {
        if &kind == b"mdat" {
            input.extend_from_slice(&1u32.to_be_bytes());
            input.extend_from_slice(b"mdat");
            input.extend_from_slice(&(size as u64 + 8).to_be_bytes());
            input.extend_from_slice(&data[start + 8..start + size]);
            mdats += 1;
        } else if &kind != b"mfra" {
            input.extend_from_slice(&data[start..start + size]);
        }
    }
    let out = whole(&input);
    assert_eq!(out.end, Ok(()));
    let frags = fragments(&out.items);
    assert_eq!(frags.len(), mdats);
    let got: Vec<u8> = out
        .items
        .iter()
        .flat_map(|i| item_bytes(i).to_vec())
        .collect();
    assert!(got == input);
    assert_eq!(split(input.chunks(5), false), out);
}

#[test]
fn garbage_is_rejected_within_8_bytes() {
    let http = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    let mut s = Splitter::default();
    s.push(&http[..7]);
    assert_eq!(s.next_item(), Ok(None));
    s.push(&http[7..8]);
    let e = s.next_item().expect_err("garbage");
    assert!(
        matches!(e, MediaError::Invalid(ref m) if m.contains("47 45 54 20")),
        "{e}"
    );
    assert_eq!(e.http_status(), 400);
    // The splitter stays failed and holds nothing.
    s.push(&[0; 1000]);
    assert_eq!(s.next_item(), Err(e));
    assert_eq!(s.buffered(), 0);

    for bad in [
        &b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR"[..],
        b"{\"json\": true}",
        b"\0\0\0\0\0\0\0\0",
        b"\0\0\0\x18mdat",
    ] {
        let mut s = Splitter::default();
        s.push(&bad[..8]);
        assert!(
            matches!(s.next_item(), Err(MediaError::Invalid(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn size_zero_and_unprintable_types_are_invalid() {
    let mut input = init_bytes();
    input.extend_from_slice(b"\0\0\0\0mdat");
    assert!(matches!(error_of(&input), MediaError::Invalid(ref m) if m.contains("size 0")));
    let mut input = init_bytes();
    input.extend_from_slice(b"\0\0\0\x10mo\0f\0\0\0\0\0\0\0\0");
    assert!(matches!(error_of(&input), MediaError::Invalid(ref m) if m.contains("mo\\x00f")));
    let mut input = init_bytes();
    input.extend_from_slice(&mk_box(b"mdat", &[1, 2, 3]));
    assert!(matches!(error_of(&input), MediaError::Invalid(ref m) if m.contains("progressive")));
}

#[test]
fn malformed_moofs_are_invalid_not_panics() {
    let init = init_bytes();
    let frag = first_fragment();
    let find = |what: &[u8; 4]| {
        frag.windows(4)
            .position(|w| w == what)
            .unwrap_or_else(|| panic!("no {what:?}"))
    };
    let cases: [(usize, &[u8], &str); 4] = [
        // trun sample_count = 2^32-1.
        (find(b"trun") + 8, &[0xff; 4], "declares 4294967295 samples"),
        // tfhd track_id = 9.
        (
            find(b"tfhd") + 8,
            &[0, 0, 0, 9],
            "track 9, which the 'moov' does not declare",
        ),
        // traf size larger than the moof.
        (find(b"traf") - 4, &[0, 0, 0x7f, 0], "remain"),
        // tfdt version 7.
        (find(b"tfdt") + 4, &[7], "'tfdt' version 7"),
    ];
    for (at, patch, message) in cases {
        let mut bad = frag.clone();
        bad[at..at + patch.len()].copy_from_slice(patch);
        let mut input = init.clone();
        input.extend_from_slice(&bad);
        let e = error_of(&input);
        assert!(
            matches!(e, MediaError::Invalid(ref m) if m.contains(message) && m.contains("'moof' at byte")),
            "{message}: {e}"
        );
    }
}

#[test]
fn an_moov_mp4_atom_rejects_still_gives_an_init() {
    let data = fixture("h264_aac_keyframe.mp4");
    let moov = top_boxes(&data)[1];
    let at = |what: &[u8; 4]| {
        moov.1
            + data[moov.1..moov.1 + moov.2]
                .windows(4)
                .position(|w| w == what)
                .unwrap_or_else(|| panic!("no {what:?}"))
    };
    // mvhd version 5: mp4-atom rejects the whole moov, each trak alone is fine.
    let mut bad = data.clone();
    bad[at(b"mvhd") + 4] = 5;
    let out = whole(&bad);
    assert_eq!(out.end, Ok(()));
    assert_eq!(init_of(&out.items).codecs, "avc1.64000d,mp4a.40.2");
    // An avc1 entry without its avcC: that track's codec is unknown (empty),
    // the stream still goes through.
    let mut bad = data.clone();
    let avcc = at(b"avcC");
    bad[avcc..avcc + 4].copy_from_slice(b"avcX");
    let out = whole(&bad);
    assert_eq!(out.end, Ok(()));
    let init = init_of(&out.items);
    assert_eq!(init.tracks[0].codec, "");
    assert_eq!(init.mime, "video/mp4; codecs=\"mp4a.40.2\"");
    assert_eq!(fragments(&out.items).len(), 3);
    // No mvex: a progressive MP4.
    let mut bad = data.clone();
    let mvex = at(b"mvex");
    bad[mvex..mvex + 4].copy_from_slice(b"mvez");
    assert!(matches!(error_of(&bad), MediaError::Invalid(ref m) if m.contains("'mvex'")));
    // A moov whose children do not fit: unreadable.
    let mut bad = data.clone();
    let trak = at(b"trak");
    bad[trak - 4..trak].copy_from_slice(&[0, 1, 0, 0]);
    assert!(
        matches!(error_of(&bad), MediaError::Invalid(ref m) if m.contains("'moov' at byte 28"))
    );
}

// ---------------------------------------------------------------------------
// No panics on any input
// ---------------------------------------------------------------------------

/// Splits `data` at the given points (sorted, clamped), as `Bytes` or slices.
fn split_at_points(data: &[u8], points: &[usize], shared: bool) -> Outcome {
    let mut cuts: Vec<usize> = points.iter().map(|&p| p.min(data.len())).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for c in cuts.into_iter().chain([data.len()]) {
        chunks.push(&data[last..c]);
        last = c;
    }
    split(chunks, shared)
}

fn small_clip() -> &'static [u8] {
    static CLIP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CLIP.get_or_init(|| fixture("aac_only.mp4"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        points in proptest::collection::vec(0usize..2048, 0..8),
    ) {
        let one = whole(&data);
        prop_assert_eq!(&split_at_points(&data, &points, false), &one);
        prop_assert_eq!(&split_at_points(&data, &points, true), &one);
    }

    #[test]
    fn mutated_clips_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..12),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        points in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut data = small_clip().to_vec();
        for (at, byte) in &flips {
            let i = at.index(data.len());
            data[i] = *byte;
        }
        if truncate {
            data.truncate(cut.index(data.len()));
        }
        let points: Vec<usize> = points.iter().map(|p| p.index(data.len() + 1)).collect();
        let one = whole(&data);
        prop_assert_eq!(&split_at_points(&data, &points, true), &one);
    }

    #[test]
    fn mutated_headers_never_panic(
        // Mutations aimed at the moov/moof headers and counts, where parsers look.
        flips in proptest::collection::vec((0usize..2000, any::<u8>()), 1..6),
        points in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut data = small_clip().to_vec();
        for (at, byte) in &flips {
            if let Some(b) = data.get_mut(*at) {
                *b = *byte;
            }
        }
        let points: Vec<usize> = points.iter().map(|p| p.index(data.len() + 1)).collect();
        let one = whole(&data);
        prop_assert_eq!(&split_at_points(&data, &points, false), &one);
        let _ = Demo::from_bytes(&data);
    }
}

// ---------------------------------------------------------------------------
// The demo stream
// ---------------------------------------------------------------------------

#[test]
fn demo_clip_layout() {
    let demo = Demo::load().expect("the embedded clip parses");
    assert_eq!(demo.len(), 80);
    assert!(!demo.is_empty());
    assert_eq!(demo.loop_duration_us(), 8_000_000);
    let (first, due) = demo.fragment(0);
    assert_eq!(
        (due, first.keyframe, first.mfhd_seq, first.index),
        (0, true, 1, 0)
    );
    assert_eq!(first.bytes, fragments(&whole(&demo_clip()).items)[0].bytes);
}

#[test]
fn demo_loops_as_one_continuous_stream() {
    let demo = Demo::load().expect("demo");
    let len = demo.len() as u64;
    let mut next: std::collections::HashMap<u32, u64> = Default::default();
    let mut totals: std::collections::HashMap<u32, u64> = Default::default();
    for n in 0..3 * len {
        let (f, due) = demo.fragment(n);
        assert_eq!(f.index, n);
        assert_eq!(f.mfhd_seq, n as u32 + 1);
        assert_eq!(due, n * 100_000, "fragment {n} is due every 100 ms");
        assert_eq!(f.decode_time_us(), due);
        assert_eq!(f.keyframe, n % 10 == 0);
        let t = trafs(&f.bytes);
        assert_eq!(t.len(), 2, "both tracks in every fragment");
        for (track, tfdt, duration, version) in t {
            assert_eq!(version, 1);
            if let Some(&expected) = next.get(&track) {
                assert_eq!(
                    tfdt, expected,
                    "track {track} at fragment {n}: gap or overlap"
                );
            } else {
                assert_eq!(tfdt, 0);
            }
            next.insert(track, tfdt + duration);
            *totals.entry(track).or_default() += duration;
        }
        // mfhd sequence number is big-endian right after mfhd's version/flags.
        let mfhd = f.bytes.windows(4).position(|w| w == b"mfhd").expect("mfhd");
        assert_eq!(&f.bytes[mfhd + 8..mfhd + 12], &(n as u32 + 1).to_be_bytes());
    }
    // 3 loops of 8 s on each track.
    assert_eq!(totals[&1], 3 * 8 * 15360);
    assert_eq!(totals[&2], 3 * 8 * 48000);
    // Far in the future: still exact, still 64-bit.
    let (f, due) = demo.fragment(10_000_000 * len + 5);
    assert_eq!(due, 10_000_000 * 8_000_000 + 500_000);
    let t = trafs(&f.bytes);
    assert_eq!(t[0].1, 10_000_000 * 8 * 15360 + 5 * 1536);
    let audio_5 = trafs(&demo.fragment(5).0.bytes)[1].1;
    assert_eq!(t[1].1, 10_000_000 * 8 * 48000 + audio_5);
}

#[test]
fn demo_rejects_clips_that_cannot_loop() {
    // 32-bit tfdt at 48 kHz overflows after 24.8 hours of looping.
    let e = Demo::from_bytes(&with_v0_tfdt(&fixture("aac_only.mp4"))).expect_err("v0");
    assert!(e.to_string().contains("32-bit tfdt"), "{e}");
    // Not a stream at all.
    assert!(Demo::from_bytes(b"hello").is_err());
    // An audio-only clip loops (its first AAC frame is longer: ffmpeg's
    // priming shift; the loop is whatever the track adds up to).
    let demo = Demo::from_bytes(&fixture("aac_only.mp4")).expect("aac clip loops");
    assert_eq!(demo.len(), 4);
    assert_eq!(demo.loop_duration_us(), 97_024 * 1_000_000 / 48_000);
    assert_eq!(demo.fragment(4).1, demo.loop_duration_us());
    assert!(demo.fragment(4).0.keyframe);
}

/// An ordinary ffmpeg A/V file (h264_aac_keyframe.mp4: 3 s of video and
/// 3.029 s of AAC, made by tests/fixtures/make.sh) loops: the period is the
/// longest track, every track's timestamps keep increasing over many loops,
/// and the tracks stay aligned at every loop point (no drift).
#[test]
fn a_file_whose_tracks_differ_in_length_loops_without_drift() {
    let demo = Demo::from_bytes(&fixture("h264_aac_keyframe.mp4")).expect("it loops");
    let len = demo.len() as u64;
    // Per track: (timescale, length in ticks) from pass 0.
    let mut first: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for n in 0..len {
        for (id, tfdt, dur, _) in trafs(&demo.fragment(n).0.bytes) {
            let e = first.entry(id).or_insert((tfdt, tfdt));
            e.1 = tfdt + dur;
        }
    }
    assert_eq!(first.len(), 2, "video and audio");
    let timescale = |id: u32| if id == 1 { 15_360u64 } else { 48_000 };
    let length_us = |id: u32| (first[&id].1 - first[&id].0) * 1_000_000 / timescale(id);
    assert_ne!(
        length_us(1),
        length_us(2),
        "the fixture's tracks differ in length"
    );
    let period = length_us(1).max(length_us(2));
    assert!(demo.loop_duration_us().abs_diff(period) <= 1);
    let longest = if length_us(1) > length_us(2) { 1 } else { 2 };
    let period_ticks = |id: u32, k: u64| {
        let long = (first[&longest].1 - first[&longest].0) as u128;
        (k as u128 * long * timescale(id) as u128 / timescale(longest) as u128) as u64
    };
    // Loops 0-3 and 1,000-1,002: per track, no fragment starts before the
    // previous one ended (the longest track is seamless); at each loop point
    // every track starts exactly k periods after pass 0, in its own ticks
    // (no drift, however many loops).
    for loops in [0u64..4, 1_000..1_003] {
        let mut end: BTreeMap<u32, u64> = BTreeMap::new();
        for k in loops {
            for i in 0..len {
                let (f, due) = demo.fragment(k * len + i);
                for (id, tfdt, dur, version) in trafs(&f.bytes) {
                    assert_eq!(version, 1);
                    if let Some(&prev) = end.get(&id) {
                        assert!(tfdt >= prev, "loop {k} fragment {i}: track {id} went back");
                        if id == longest {
                            assert_eq!(tfdt, prev, "loop {k}: the longest track has no gap");
                        }
                    }
                    end.insert(id, tfdt + dur);
                    if i == 0 {
                        assert_eq!(
                            tfdt,
                            first[&id].0 + period_ticks(id, k),
                            "loop {k}, track {id}"
                        );
                    }
                }
                if i == 0 {
                    // Exactly k periods, to within one video tick (65 µs).
                    let long = (first[&longest].1 - first[&longest].0) as u128;
                    let exact = (k as u128 * long * 1_000_000 / timescale(longest) as u128) as u64;
                    assert!(
                        due.abs_diff(exact) <= 100,
                        "loop {k} due at {due}, not {exact}"
                    );
                }
            }
        }
    }
}

/// ffprobe reads init + 3 loops of the demo without an error, with strictly
/// increasing timestamps on both tracks, and decodes every frame.
#[test]
fn ffprobe_decodes_three_loops_of_the_demo() {
    let required = std::env::var("RELAYCAST_REQUIRE_FFMPEG").is_ok_and(|v| v == "1");
    if std::process::Command::new("ffprobe")
        .arg("-version")
        .output()
        .is_err()
    {
        assert!(
            !required,
            "RELAYCAST_REQUIRE_FFMPEG=1 but ffprobe is not on PATH"
        );
        println!(
            "skipped: ffprobe is not on PATH (set RELAYCAST_REQUIRE_FFMPEG=1 to make this fail)"
        );
        return;
    }
    let demo = Demo::load().expect("demo");
    let mut file = demo.init().bytes.to_vec();
    for n in 0..3 * demo.len() as u64 {
        file.extend_from_slice(&demo.fragment(n).0.bytes);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("three_loops.mp4");
    std::fs::write(&path, &file).expect("write");

    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=stream_index,pts,dts",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffprobe: {stderr}"
    );
    let mut last: [Option<(i64, i64)>; 2] = [None, None];
    let mut count = [0u32; 2];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<i64> = line.split(',').map(|x| x.parse().expect(line)).collect();
        let (stream, pts, dts) = (f[0] as usize, f[1], f[2]);
        if let Some((p, d)) = last[stream] {
            assert!(
                pts > p && dts > d,
                "stream {stream}: {pts}/{dts} after {p}/{d}"
            );
        }
        last[stream] = Some((pts, dts));
        count[stream] += 1;
    }
    assert_eq!(count, [3 * 240, 3 * 375]);
    // 24 s of timeline on both tracks.
    assert_eq!(last[0], Some((3 * 122880 - 512, 3 * 122880 - 512)));
    assert_eq!(last[1], Some((3 * 384000 - 1024, 3 * 384000 - 1024)));

    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffprobe decode: {stderr}"
    );
    let frames: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(frames, ["720", "1125"]);
}
