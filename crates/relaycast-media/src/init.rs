//! Reads an init segment's `moov`: the track table the fragment parser needs
//! (ids, kinds, timescales, `trex` defaults) and the public [`Init`] with its
//! codec strings.
//!
//! The track table is read by hand (a few fixed fields, bounds-checked), so a
//! `moov` that `mp4-atom` cannot decode (a box version it does not know, an
//! odd sample entry) still yields a usable [`Init`]: MSE may well play it.
//! `mp4-atom` supplies the codec configuration records from each track's
//! `stsd` alone; a track whose `stsd` it cannot read gets an empty codec
//! string.

use super::boxes::{Children, FourCC, Reader};
use super::codec::codec_string;
use super::{Init, MediaError, Track, TrackKind};
use bytes::Bytes;
use mp4_atom::Decode;

/// What fragment parsing needs to know about one track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TrackInfo {
    /// `tkhd` track id.
    pub id: u32,
    /// From the `hdlr` handler type.
    pub kind: TrackKind,
    /// `mdhd` timescale; never 0.
    pub timescale: u32,
    /// `trex` default sample duration (0 when the `moov` has no `trex` for it).
    pub default_duration: u32,
    /// `trex` default sample flags (0 when absent).
    pub default_flags: u32,
}

/// The tracks of the current init segment, in `moov` order; ids are unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrackTable {
    /// One entry per `trak`.
    pub tracks: Vec<TrackInfo>,
    /// True when any track is video.
    pub has_video: bool,
}

impl TrackTable {
    /// The position and info of track `id`.
    pub fn find(&self, id: u32) -> Option<(usize, &TrackInfo)> {
        self.tracks.iter().enumerate().find(|(_, t)| t.id == id)
    }
}

/// The hand-read facts of one `trak`.
struct RawTrak<'a> {
    /// The whole `trak` box, header included (its `stsd` goes to `mp4-atom`).
    bytes: &'a [u8],
    id: u32,
    kind: TrackKind,
    timescale: u32,
}

/// Parses an init segment. `bytes` is the whole segment (ftyp … moov), `moov`
/// the `moov` box within it, header included.
pub(crate) fn parse_init(bytes: Bytes, moov: &[u8]) -> Result<(Init, TrackTable), MediaError> {
    let header_len = match super::boxes::peek_header(moov) {
        Ok(h) if h.kind == *b"moov" => h.header_len as usize,
        _ => return Err(MediaError::Invalid("init segment without a 'moov'".into())),
    };
    let body = moov.get(header_len..).unwrap_or_default();

    let mut traks = Vec::new();
    let mut trex = Vec::new();
    let mut has_mvex = false;
    for child in Children::new(body, header_len, "moov") {
        let child = child?;
        match &child.kind {
            b"trak" => {
                traks.push(parse_trak(child.whole, child.body)?);
            }
            b"mvex" => {
                has_mvex = true;
                for c in Children::new(child.body, child.body_at, "mvex") {
                    let c = c?;
                    if &c.kind == b"trex" {
                        let mut r = Reader::new(c.body, "trex");
                        r.version_flags()?;
                        let id = r.u32()?;
                        r.skip(4)?; // default_sample_description_index
                        let duration = r.u32()?;
                        r.skip(4)?; // default_sample_size
                        let flags = r.u32()?;
                        trex.push((id, duration, flags));
                    }
                }
            }
            _ => {}
        }
    }
    if traks.is_empty() {
        return Err(MediaError::Invalid("'moov' declares no tracks".into()));
    }
    if !has_mvex {
        return Err(MediaError::Invalid(
            "'moov' has no 'mvex': this is a progressive MP4, not a fragmented one \
             (ffmpeg: -movflags frag_keyframe+empty_moov+default_base_moof)"
                .into(),
        ));
    }
    for (i, t) in traks.iter().enumerate() {
        if traks[..i].iter().any(|u| u.id == t.id) {
            return Err(MediaError::Invalid(format!(
                "'moov' declares track id {} twice",
                t.id
            )));
        }
    }

    let codecs = track_codecs(moov, &traks);

    let mut table = TrackTable::default();
    let mut tracks = Vec::with_capacity(traks.len());
    for (t, codec) in traks.iter().zip(codecs) {
        let (default_duration, default_flags) = trex
            .iter()
            .find(|(id, _, _)| *id == t.id)
            .map_or((0, 0), |&(_, d, f)| (d, f));
        table.tracks.push(TrackInfo {
            id: t.id,
            kind: t.kind,
            timescale: t.timescale,
            default_duration,
            default_flags,
        });
        tracks.push(Track {
            id: t.id,
            kind: t.kind,
            timescale: t.timescale,
            codec,
        });
    }
    table.has_video = tracks.iter().any(|t| t.kind == TrackKind::Video);

    let playable: Vec<&str> = tracks
        .iter()
        .filter(|t| t.kind != TrackKind::Other && !t.codec.is_empty())
        .map(|t| t.codec.as_str())
        .collect();
    let codecs = playable.join(",");
    let container = if table.has_video || !tracks.iter().any(|t| t.kind == TrackKind::Audio) {
        "video/mp4"
    } else {
        "audio/mp4"
    };
    let mime = if codecs.is_empty() {
        container.to_string()
    } else {
        format!("{container}; codecs=\"{codecs}\"")
    };
    Ok((
        Init {
            bytes,
            codecs,
            mime,
            tracks,
        },
        table,
    ))
}

/// Reads the `tkhd` track id, `mdhd` timescale and `hdlr` handler of one
/// `trak` (`whole` is the box, `body` its payload).
fn parse_trak<'a>(whole: &'a [u8], body: &'a [u8]) -> Result<RawTrak<'a>, MediaError> {
    let mut id = None;
    let mut timescale = None;
    let mut handler = None;
    for child in Children::new(body, 0, "trak") {
        let child = child?;
        match &child.kind {
            b"tkhd" => {
                let mut r = Reader::new(child.body, "tkhd");
                let (version, _) = r.version_flags()?;
                r.skip(if version == 1 { 16 } else { 8 })?;
                id = Some(r.u32()?);
            }
            b"mdia" => {
                for c in Children::new(child.body, 0, "mdia") {
                    let c = c?;
                    match &c.kind {
                        b"mdhd" => {
                            let mut r = Reader::new(c.body, "mdhd");
                            let (version, _) = r.version_flags()?;
                            r.skip(if version == 1 { 16 } else { 8 })?;
                            timescale = Some(r.u32()?);
                        }
                        b"hdlr" => {
                            let mut r = Reader::new(c.body, "hdlr");
                            r.version_flags()?;
                            r.skip(4)?; // pre_defined
                            handler = Some(r.fourcc()?);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let id = id.ok_or_else(|| MediaError::Invalid("'trak' without a 'tkhd'".into()))?;
    let timescale = timescale
        .ok_or_else(|| MediaError::Invalid(format!("track {id}: 'mdia' without an 'mdhd'")))?;
    if timescale == 0 {
        return Err(MediaError::Invalid(format!(
            "track {id}: 'mdhd' timescale is 0"
        )));
    }
    let kind = match handler.as_ref() {
        Some(b"vide") => TrackKind::Video,
        Some(b"soun") => TrackKind::Audio,
        _ => TrackKind::Other,
    };
    Ok(RawTrak {
        bytes: whole,
        id,
        kind,
        timescale,
    })
}

/// The codec string of each track, in `traks` order: each track's `stsd`
/// (found by hand: trak → mdia → minf → stbl → stsd) decoded by `mp4-atom`,
/// else empty.
///
/// Only the `stsd` goes to `mp4-atom`, not the whole `moov`: fuzzing found
/// that `mp4-atom` 0.17 decoding an `sgpd` whose entries take no bytes loops
/// up to its 32-bit `entry_count`, pushing empty entries until memory runs
/// out (tests/fixtures/fuzz/splitter-oom-moov.bin). The codec string needs
/// nothing outside the sample descriptions.
fn track_codecs(_moov: &[u8], traks: &[RawTrak<'_>]) -> Vec<String> {
    traks
        .iter()
        .map(|t| {
            find_stsd(t.bytes)
                .map(without_skipped_boxes)
                .and_then(|stsd| mp4_atom::Stsd::decode(&mut &stsd[..]).ok())
                .and_then(|stsd| stsd.codecs.first().map(codec_string))
                .unwrap_or_default()
        })
        .collect()
}

/// Boxes inside a video sample entry that carry nothing the codec string
/// needs and that `mp4-atom` 0.17 does not know inside every sample entry
/// (`fiel`, field order, which ffmpeg writes in `vp09` and `av01` entries:
/// `mp4-atom` logs each one as a WARN "unexpected box"). They are removed
/// before decoding, knowingly.
const SKIPPED_IN_VIDEO_ENTRIES: &[FourCC] = &[*b"fiel"];

/// Bytes of a visual sample entry before its child boxes (ISO/IEC 14496-12
/// 12.1.3: 6 reserved + 2 data reference index + 16 pre-defined/reserved +
/// width, height, resolutions, reserved, frame count, compressor name,
/// depth, pre-defined = 70).
const VISUAL_ENTRY_FIELDS: usize = 78;

/// The `stsd` box without the [`SKIPPED_IN_VIDEO_ENTRIES`] children of its
/// video sample entries (sizes rewritten). Anything it cannot walk cleanly
/// is returned as it was: `mp4-atom` then decides.
fn without_skipped_boxes(stsd: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    // stsd: header (8), version/flags (4), entry count (4), entries.
    let Some(entries) = stsd.get(16..) else {
        return Cow::Borrowed(stsd);
    };
    let mut out_entries = Vec::with_capacity(entries.len());
    let mut changed = false;
    for entry in Children::new(entries, 16, "stsd") {
        let Ok(entry) = entry else {
            return Cow::Borrowed(stsd);
        };
        let header_len = entry.whole.len() - entry.body.len();
        let visual = matches!(
            &entry.kind,
            b"avc1" | b"avc3" | b"hvc1" | b"hev1" | b"vp08" | b"vp09" | b"av01"
        );
        let children = entry.body.get(VISUAL_ENTRY_FIELDS..);
        let (true, Some(children), 8) = (visual, children, header_len) else {
            out_entries.extend_from_slice(entry.whole);
            continue;
        };
        let mut kept = Vec::with_capacity(entry.whole.len());
        kept.extend_from_slice(&entry.whole[..header_len + VISUAL_ENTRY_FIELDS]);
        let mut walked = true;
        for child in Children::new(children, 0, "sample entry") {
            match child {
                Ok(c) if SKIPPED_IN_VIDEO_ENTRIES.contains(&c.kind) => changed = true,
                Ok(c) => kept.extend_from_slice(c.whole),
                Err(_) => {
                    walked = false;
                    break;
                }
            }
        }
        if !walked {
            return Cow::Borrowed(stsd);
        }
        let Ok(size) = u32::try_from(kept.len()) else {
            return Cow::Borrowed(stsd);
        };
        kept[..4].copy_from_slice(&size.to_be_bytes());
        out_entries.extend_from_slice(&kept);
    }
    if !changed {
        return Cow::Borrowed(stsd);
    }
    let mut out = Vec::with_capacity(16 + out_entries.len());
    out.extend_from_slice(&stsd[..16]);
    out.extend_from_slice(&out_entries);
    let Ok(size) = u32::try_from(out.len()) else {
        return Cow::Borrowed(stsd);
    };
    out[..4].copy_from_slice(&size.to_be_bytes());
    Cow::Owned(out)
}

/// The whole `stsd` box of a whole `trak` box.
fn find_stsd(trak: &[u8]) -> Option<&[u8]> {
    let header = super::boxes::peek_header(trak).ok()?;
    let mut body = trak.get(header.header_len as usize..)?;
    for (kind, parent) in [(b"mdia", "trak"), (b"minf", "mdia"), (b"stbl", "minf")] {
        body = Children::new(body, 0, parent)
            .map_while(Result::ok)
            .find(|c| &c.kind == kind)?
            .body;
    }
    Children::new(body, 0, "stbl")
        .map_while(Result::ok)
        .find(|c| &c.kind == b"stsd")
        .map(|c| c.whole)
}

#[cfg(test)]
mod skipped_boxes {
    use super::*;

    fn stsds(file: &str) -> Vec<Vec<u8>> {
        let path = format!("{}/../../tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let moov = Children::new(&bytes, 0, "file")
            .map_while(Result::ok)
            .find(|c| &c.kind == b"moov")
            .expect("moov");
        Children::new(moov.body, 0, "moov")
            .map_while(Result::ok)
            .filter(|c| &c.kind == b"trak")
            .filter_map(|t| find_stsd(t.whole).map(<[u8]>::to_vec))
            .collect()
    }

    /// ffmpeg writes `fiel` in VP9 and AV1 sample entries, which `mp4-atom`
    /// logs as a WARN "unexpected box": it is removed first, and the codec
    /// string comes out the same.
    #[test]
    fn fiel_is_removed_from_vp9_and_av1_entries() {
        for (file, codec) in [("vp9_opus.mp4", "vp09."), ("av1_opus.mp4", "av01.")] {
            let all = stsds(file);
            let video = all
                .iter()
                .find(|s| s.windows(4).any(|w| w == b"fiel"))
                .unwrap_or_else(|| panic!("{file}: the fixture has a fiel box"));
            let stripped = without_skipped_boxes(video);
            assert!(!stripped.windows(4).any(|w| w == b"fiel"), "{file}");
            assert_eq!(stripped.len() + 10, video.len(), "{file}: fiel is 10 bytes");
            let decoded = mp4_atom::Stsd::decode(&mut &stripped[..]).expect("decodes");
            let s = decoded.codecs.first().map(codec_string).unwrap_or_default();
            assert!(s.starts_with(codec), "{file}: {s}");
            // Audio entries and entries without skipped boxes are untouched.
            for other in all.iter().filter(|s| !s.windows(4).any(|w| w == b"fiel")) {
                assert!(matches!(
                    without_skipped_boxes(other),
                    std::borrow::Cow::Borrowed(_)
                ));
            }
        }
    }
}
