//! Reads a `moof` by hand (it is small and on the hot path): the `mfhd`
//! sequence number and, per `traf`, the track, its `tfdt`, its total sample
//! duration and whether its first sample is a sync sample. Also records where
//! the sequence number and each `tfdt` sit, so the demo can rewrite them.
//!
//! Every count and offset is checked against the bytes present: a malformed
//! `moof` is [`MediaError::Invalid`] with the box and the numbers, never a
//! panic.

use super::MediaError;
use super::boxes::{Children, Reader, peek_header};
use super::init::TrackTable;

/// `tfhd` flags.
const TFHD_BASE_DATA_OFFSET: u32 = 0x00_0001;
const TFHD_SAMPLE_DESCRIPTION_INDEX: u32 = 0x00_0002;
const TFHD_DEFAULT_DURATION: u32 = 0x00_0008;
const TFHD_DEFAULT_SIZE: u32 = 0x00_0010;
const TFHD_DEFAULT_FLAGS: u32 = 0x00_0020;
const TFHD_DURATION_IS_EMPTY: u32 = 0x01_0000;

/// `trun` flags.
const TRUN_DATA_OFFSET: u32 = 0x00_0001;
const TRUN_FIRST_SAMPLE_FLAGS: u32 = 0x00_0004;
const TRUN_DURATION: u32 = 0x00_0100;
const TRUN_SIZE: u32 = 0x00_0200;
const TRUN_FLAGS: u32 = 0x00_0400;
const TRUN_CTO: u32 = 0x00_0800;

/// Sample flags: `sample_is_non_sync_sample`.
const NON_SYNC: u32 = 0x0001_0000;

/// True when sample flags describe a sync sample: the non-sync bit is clear,
/// or `sample_depends_on` is 2 ("does not depend on others", an I-frame).
pub(crate) fn is_sync(flags: u32) -> bool {
    flags & NON_SYNC == 0 || (flags >> 24) & 0x3 == 2
}

/// Where a `tfdt`'s time field is, for rewriting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TfdtField {
    /// Offset of the base media decode time within the `moof` box.
    pub at: usize,
    /// 0: a 32-bit field; 1: 64-bit.
    pub version: u8,
}

/// One `traf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TrafInfo {
    /// `tfhd` track id; present in the init's track table.
    pub track_id: u32,
    /// Position of the track in the track table.
    pub track_index: usize,
    /// `tfdt` base media decode time, if the `traf` has one.
    pub decode_time: Option<u64>,
    /// Where the `tfdt` time is.
    pub tfdt: Option<TfdtField>,
    /// Sum of the sample durations of all `trun`s, in the track's timescale.
    pub duration: u64,
    /// Number of samples in all `trun`s.
    pub samples: u64,
    /// Whether the first sample is a sync sample; `None` when there is no sample.
    pub first_sync: Option<bool>,
}

/// A parsed `moof`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MoofInfo {
    /// `mfhd` sequence number.
    pub seq: u32,
    /// Offset of the sequence number within the `moof` box.
    pub seq_at: usize,
    /// The `traf`s in order; at least one.
    pub trafs: Vec<TrafInfo>,
}

impl MoofInfo {
    /// Whether this fragment can open a group. With video in the stream: a
    /// `traf` of a video track starts with a sync sample (an audio-only
    /// `moof` never qualifies). Without: the first `traf` starts with one.
    pub fn keyframe(&self, table: &TrackTable) -> bool {
        if table.has_video {
            self.trafs.iter().any(|t| {
                t.first_sync == Some(true)
                    && table
                        .tracks
                        .get(t.track_index)
                        .is_some_and(|i| i.kind == super::TrackKind::Video)
            })
        } else {
            self.trafs.first().and_then(|t| t.first_sync) == Some(true)
        }
    }

    /// The reference `traf` for timing: the first of a video track, else the first.
    pub fn reference(&self, table: &TrackTable) -> Option<&TrafInfo> {
        self.trafs
            .iter()
            .find(|t| {
                table
                    .tracks
                    .get(t.track_index)
                    .is_some_and(|i| i.kind == super::TrackKind::Video)
            })
            .or_else(|| self.trafs.first())
    }
}

/// Parses `moof` (the whole box, header included) against the tracks of the
/// current init segment.
pub(crate) fn parse_moof(moof: &[u8], table: &TrackTable) -> Result<MoofInfo, MediaError> {
    let header_len = match peek_header(moof) {
        Ok(h) if h.kind == *b"moof" && h.size == moof.len() as u64 => h.header_len as usize,
        _ => return Err(MediaError::Invalid("not a complete 'moof' box".into())),
    };
    let body = moof.get(header_len..).unwrap_or_default();
    let mut seq = None;
    let mut trafs = Vec::new();
    for child in Children::new(body, header_len, "moof") {
        let child = child?;
        match &child.kind {
            b"mfhd" => {
                let mut r = Reader::new(child.body, "mfhd");
                r.version_flags()?;
                let at = child.body_at + r.pos();
                seq = Some((r.u32()?, at));
            }
            b"traf" => trafs.push(parse_traf(child.body, child.body_at, table)?),
            _ => {}
        }
    }
    let (seq, seq_at) =
        seq.ok_or_else(|| MediaError::Invalid("'moof' without an 'mfhd'".into()))?;
    if trafs.is_empty() {
        return Err(MediaError::Invalid(format!(
            "'moof' (sequence number {seq}) without a 'traf'"
        )));
    }
    Ok(MoofInfo { seq, seq_at, trafs })
}

/// The defaults a `trun` falls back on.
struct Defaults {
    duration: u32,
    flags: u32,
}

fn parse_traf(body: &[u8], body_at: usize, table: &TrackTable) -> Result<TrafInfo, MediaError> {
    // Pass 1: tfhd (defaults) and tfdt, wherever they are.
    let mut tfhd = None;
    let mut tfdt = None;
    for child in Children::new(body, body_at, "traf") {
        let child = child?;
        match &child.kind {
            b"tfhd" => {
                if tfhd.is_some() {
                    return Err(MediaError::Invalid("'traf' with two 'tfhd' boxes".into()));
                }
                tfhd = Some(parse_tfhd(child.body)?);
            }
            b"tfdt" => {
                if tfdt.is_some() {
                    return Err(MediaError::Invalid("'traf' with two 'tfdt' boxes".into()));
                }
                let mut r = Reader::new(child.body, "tfdt");
                let (version, _) = r.version_flags()?;
                let at = child.body_at + r.pos();
                let time = match version {
                    0 => u64::from(r.u32()?),
                    1 => r.u64()?,
                    v => {
                        return Err(MediaError::Invalid(format!(
                            "'tfdt' version {v} is unknown"
                        )));
                    }
                };
                tfdt = Some((time, TfdtField { at, version }));
            }
            _ => {}
        }
    }
    let (track_id, flags, tfhd_duration, tfhd_flags) =
        tfhd.ok_or_else(|| MediaError::Invalid("'traf' without a 'tfhd'".into()))?;
    let Some((track_index, track)) = table.find(track_id) else {
        let ids: Vec<String> = table.tracks.iter().map(|t| t.id.to_string()).collect();
        return Err(MediaError::Invalid(format!(
            "'traf' for track {track_id}, which the 'moov' does not declare (tracks: {})",
            ids.join(", ")
        )));
    };
    let defaults = Defaults {
        duration: tfhd_duration.unwrap_or(track.default_duration),
        flags: tfhd_flags.unwrap_or(track.default_flags),
    };

    // Pass 2: the truns, in order.
    let mut duration = 0u64;
    let mut samples = 0u64;
    let mut first_sync = None;
    for child in Children::new(body, body_at, "traf") {
        let child = child?;
        if &child.kind != b"trun" {
            continue;
        }
        let run = parse_trun(child.body, &defaults, track_id)?;
        duration = duration.checked_add(run.duration).ok_or_else(|| {
            MediaError::Invalid(format!(
                "track {track_id}: sample durations overflow 64 bits"
            ))
        })?;
        samples += run.samples;
        if first_sync.is_none() {
            first_sync = run.first_flags.map(is_sync);
        }
    }
    if flags & TFHD_DURATION_IS_EMPTY != 0 {
        duration = 0;
    }
    Ok(TrafInfo {
        track_id,
        track_index,
        decode_time: tfdt.map(|(t, _)| t),
        tfdt: tfdt.map(|(_, f)| f),
        duration,
        samples,
        first_sync,
    })
}

/// `(track_id, flags, default duration, default flags)`.
type Tfhd = (u32, u32, Option<u32>, Option<u32>);

fn parse_tfhd(body: &[u8]) -> Result<Tfhd, MediaError> {
    let mut r = Reader::new(body, "tfhd");
    let (_, flags) = r.version_flags()?;
    let track_id = r.u32()?;
    if flags & TFHD_BASE_DATA_OFFSET != 0 {
        r.skip(8)?;
    }
    if flags & TFHD_SAMPLE_DESCRIPTION_INDEX != 0 {
        r.skip(4)?;
    }
    let duration = if flags & TFHD_DEFAULT_DURATION != 0 {
        Some(r.u32()?)
    } else {
        None
    };
    if flags & TFHD_DEFAULT_SIZE != 0 {
        r.skip(4)?;
    }
    let sample_flags = if flags & TFHD_DEFAULT_FLAGS != 0 {
        Some(r.u32()?)
    } else {
        None
    };
    Ok((track_id, flags, duration, sample_flags))
}

/// What one `trun` adds up to.
struct Run {
    samples: u64,
    duration: u64,
    /// Flags of its first sample; `None` when it has no sample.
    first_flags: Option<u32>,
}

fn parse_trun(body: &[u8], defaults: &Defaults, track_id: u32) -> Result<Run, MediaError> {
    let mut r = Reader::new(body, "trun");
    let (_, flags) = r.version_flags()?;
    let count = r.u32()?;
    if flags & TRUN_DATA_OFFSET != 0 {
        r.skip(4)?;
    }
    let first_sample_flags = if flags & TRUN_FIRST_SAMPLE_FLAGS != 0 {
        Some(r.u32()?)
    } else {
        None
    };
    let fields = [TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_CTO]
        .iter()
        .filter(|&&f| flags & f != 0)
        .count();
    let record = 4 * fields;
    let table_len = u64::from(count) * record as u64;
    if table_len > r.remaining() as u64 {
        return Err(MediaError::Invalid(format!(
            "'trun' of track {track_id} declares {count} samples ({table_len} bytes of \
             sample records) but holds only {} bytes",
            r.remaining()
        )));
    }
    if count == 0 {
        return Ok(Run {
            samples: 0,
            duration: 0,
            first_flags: None,
        });
    }
    // Offset of the flags field within a record.
    let flags_at = 4 * [TRUN_DURATION, TRUN_SIZE]
        .iter()
        .filter(|&&f| flags & f != 0)
        .count();
    let table = r.bytes(table_len as usize)?;
    let word = |i: usize| -> u32 {
        table
            .get(i..i + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let duration = if flags & TRUN_DURATION != 0 {
        (0..count as usize)
            .map(|i| u64::from(word(i * record)))
            .sum::<u64>()
    } else {
        u64::from(count) * u64::from(defaults.duration)
    };
    let first_flags = first_sample_flags.unwrap_or(if flags & TRUN_FLAGS != 0 {
        word(flags_at)
    } else {
        defaults.flags
    });
    Ok(Run {
        samples: u64::from(count),
        duration,
        first_flags: Some(first_flags),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_flags() {
        assert!(is_sync(0x0200_0000)); // ffmpeg's keyframe flags
        assert!(!is_sync(0x0101_0000)); // ffmpeg's non-keyframe flags
        assert!(is_sync(0));
        assert!(is_sync(0x0201_0000)); // depends_on == 2 wins
    }

    #[test]
    fn trun_counts_are_checked() {
        // 2^32-1 samples with per-sample durations but 4 bytes of records.
        let body = [0, 0, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1];
        let d = Defaults {
            duration: 0,
            flags: 0,
        };
        let err = parse_trun(&body, &d, 1).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("declares 4294967295 samples")));
        // Defaults only: no records, a huge count is just arithmetic.
        let body = [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        let d = Defaults {
            duration: u32::MAX,
            flags: NON_SYNC,
        };
        let run = parse_trun(&body, &d, 1)
            .ok()
            .map(|r| (r.duration, r.first_flags));
        assert_eq!(
            run,
            Some((u64::from(u32::MAX) * u64::from(u32::MAX), Some(NON_SYNC)))
        );
    }
}
