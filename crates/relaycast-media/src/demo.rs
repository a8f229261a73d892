//! The built-in demo source: an embedded 8-second clip, looped forever as one
//! continuous live stream. Sans-IO: [`Demo::fragment`] says *when* fragment
//! `n` is due, the caller owns the clock.
//!
//! The clip (`src/media/demo/demo.mp4`, 461 KB) is H.264 High@3.1 640x360 at
//! 30 fps with 1-second GOPs, and AAC-LC 48 kHz stereo; 80 fragments of
//! 100 ms (3 video frames and 4-5 AAC frames each, every 10th a keyframe).
//! Both tracks last exactly 8.000 s (240 × 512 ticks at 15360 Hz, 375 × 1024
//! at 48 kHz) and start at 0, so the loop has no gap and no overlap. It was
//! made with ffmpeg 5.1 by:
//!
//! ```sh
//! ffmpeg -f lavfi -i testsrc2=size=640x360:rate=30 \
//!   -f lavfi -i sine=frequency=440:beep_factor=4:sample_rate=48000 \
//!   -c:v libx264 -preset veryfast -tune zerolatency -profile:v high -level 3.1 -pix_fmt yuv420p \
//!   -g 30 -keyint_min 30 -sc_threshold 0 -b:v 350k -maxrate 400k -bufsize 400k \
//!   -c:a aac -b:a 64k -ac 2 -bsf:a setts=ts=PTS+1024 \
//!   -t 8 -frames:a 375 \
//!   -f mp4 -movflags frag_keyframe+empty_moov+default_base_moof+skip_trailer \
//!   -frag_duration 100000 demo.mp4
//! ```
//!
//! Why those options (see `src/media/demo/README.md`): `-tune zerolatency`
//! turns B-frames off, so video decode times start at 0; the AAC encoder's
//! first packet has pts −1024 (priming), which would make ffmpeg shift the
//! whole file and stretch the first video sample, so `setts` moves audio to
//! start at 0 instead; `-frames:a 375` keeps exactly 8 s of audio.
//!
//! A clip whose tracks differ in length (an ordinary ffmpeg file often has a
//! few AAC frames more than video) loops with the longest track's length as
//! its period: each track's pass `k` starts `k` periods after its pass 0
//! (exactly, in the track's own ticks, rounded down), so the tracks stay
//! aligned at every loop point and never drift, and a shorter track has a
//! gap of (period − its length) at the loop point rather than an overlap.
//!
//! Each looped fragment is a copy of the clip's fragment (a few KB) with its
//! `mfhd` sequence number and every `tfdt` rewritten. The clip's `tfdt`s are
//! 64-bit (ffmpeg always writes version 1); a clip with 32-bit `tfdt`s is
//! accepted only if they cannot overflow within a year of looping.

use super::boxes::Children;
use super::init::TrackTable;
use super::moof::parse_moof;
use super::{Fragment, Init, Item, MediaError, Splitter, SplitterConfig, scale_us};
use bytes::{Bytes, BytesMut};

/// The embedded clip.
static CLIP: &[u8] = include_bytes!("demo/demo.mp4");

/// A year of looping, in µs: how long 32-bit `tfdt`s must last.
const YEAR_US: u64 = 365 * 24 * 3600 * 1_000_000;

/// A parsed clip, ready to be looped.
#[derive(Clone, Debug)]
pub struct Demo {
    init: Init,
    /// The clip's fragments, in order; never empty, the first is a keyframe.
    clip: Vec<ClipFragment>,
    /// The loop period as (ticks, timescale): the length of the longest
    /// track (end of its last sample minus its first decode time). Pass `k`
    /// of every track starts `k` periods after pass 0, rounded down to the
    /// track's own ticks, so no track drifts and none overlaps itself.
    period: (u64, u32),
    /// Per track: its first decode time in the clip.
    start_ticks: Vec<u64>,
    /// Per track: its timescale.
    timescales: Vec<u32>,
    /// The loop length in µs.
    loop_us: u64,
}

/// One fragment of the clip and where to patch it.
#[derive(Clone, Debug)]
struct ClipFragment {
    /// The fragment as split from the clip.
    fragment: Fragment,
    /// Offset of the `mfhd` sequence number within `fragment.bytes`.
    seq_at: usize,
    /// Every `traf`'s `tfdt`, in order.
    tfdts: Vec<Tfdt>,
    /// Track position of the reference `traf` (whose time `fragment.decode_time` is).
    ref_track: usize,
}

impl Demo {
    /// Parses the embedded clip.
    pub fn load() -> Result<Demo, MediaError> {
        Demo::from_shared(Bytes::from_static(CLIP), "demo clip")
    }

    /// Parses a clip to loop (a user's file): one init segment, then
    /// fragments whose tracks are each continuous, the first one a keyframe.
    /// Tracks may differ in length: the loop lasts as long as the longest.
    /// Errors say what is wrong with the file, not naming it (the caller
    /// knows its name).
    pub fn from_bytes(bytes: &[u8]) -> Result<Demo, MediaError> {
        Demo::from_shared(Bytes::copy_from_slice(bytes), "cannot loop it")
    }

    fn from_shared(bytes: Bytes, what: &str) -> Result<Demo, MediaError> {
        let bad = |m: String| MediaError::Invalid(format!("{what}: {m}"));
        let mut splitter = Splitter::new(SplitterConfig::default());
        splitter.push_bytes(bytes);
        let mut init = None;
        let mut fragments = Vec::new();
        while let Some(item) = splitter.next_item()? {
            match item {
                Item::Init(i) if init.is_none() => init = Some(i),
                Item::Init(_) => return Err(bad("more than one init segment".into())),
                Item::Fragment(f) => fragments.push(f),
            }
        }
        splitter.finish()?;
        let (Some(init), Some(table)) = (init, splitter.track_table().cloned()) else {
            return Err(bad("no init segment".into()));
        };
        if fragments.first().is_none_or(|f| !f.keyframe) {
            return Err(bad("it must start with a keyframe fragment".into()));
        }

        let tracks = table.tracks.len();
        let mut start: Vec<Option<u64>> = vec![None; tracks];
        let mut next: Vec<Option<u64>> = vec![None; tracks];
        let mut clip = Vec::with_capacity(fragments.len());
        for (k, fragment) in fragments.into_iter().enumerate() {
            let c = locate(fragment, &table).map_err(|e| bad(format!("fragment {k}: {e}")))?;
            for tfdt in &c.tfdts {
                let (Some(s), Some(n)) = (start.get_mut(tfdt.track), next.get_mut(tfdt.track))
                else {
                    continue;
                };
                if let Some(expected) = *n
                    && expected != tfdt.time
                {
                    return Err(bad(format!(
                        "fragment {k}: track {} starts at {}, but its previous \
                         fragment ended at {expected}",
                        table.tracks.get(tfdt.track).map_or(0, |i| i.id),
                        tfdt.time
                    )));
                }
                s.get_or_insert(tfdt.time);
                *n = Some(tfdt.time.saturating_add(tfdt.duration));
            }
            clip.push(c);
        }

        let timescales: Vec<u32> = table.tracks.iter().map(|t| t.timescale).collect();
        let start_ticks: Vec<u64> = start.iter().map(|s| s.unwrap_or(0)).collect();
        let loop_ticks: Vec<u64> = start
            .iter()
            .zip(&next)
            .map(|(s, n)| match (s, n) {
                (Some(s), Some(n)) => n.saturating_sub(*s),
                _ => 0,
            })
            .collect();
        let timed: Vec<usize> = (0..tracks).filter(|&t| loop_ticks[t] > 0).collect();
        if timed.is_empty() {
            return Err(bad("no track has a duration".into()));
        }
        // The loop period is the longest track (compared exactly, as
        // rationals). Every track's next pass starts one period later, so
        // the tracks stay aligned at each loop point; a shorter track has a
        // small gap there instead of drifting a little more every loop.
        let longest = timed
            .iter()
            .copied()
            .max_by(|&a, &b| {
                let x = u128::from(loop_ticks[a]) * u128::from(timescales[b]);
                let y = u128::from(loop_ticks[b]) * u128::from(timescales[a]);
                x.cmp(&y)
            })
            .unwrap_or(timed[0]);
        let period = (loop_ticks[longest], timescales[longest]);
        let loop_us = scale_us(period.0, period.1);
        if loop_us == 0 {
            return Err(bad("it lasts less than a microsecond".into()));
        }
        // Per track, the worst gap a loop point can leave (its period in its
        // own ticks minus its length), for the check below.
        let period_ticks: Vec<u64> = (0..tracks)
            .map(|t| advance_ticks(1, period, timescales[t]))
            .collect();
        let loops_per_year = YEAR_US.div_ceil(loop_us);
        for c in &clip {
            for &Tfdt {
                version,
                track: t,
                time,
                ..
            } in &c.tfdts
            {
                let per_loop = period_ticks.get(t).copied().unwrap_or(0);
                let last = u128::from(time) + u128::from(loops_per_year) * u128::from(per_loop);
                if version == 0 && last > u128::from(u32::MAX) {
                    return Err(bad(format!(
                        "its 32-bit tfdt for track {} would overflow within a year of \
                         looping: re-mux it with 64-bit tfdt (ffmpeg writes those)",
                        table.tracks.get(t).map_or(0, |i| i.id)
                    )));
                }
            }
        }
        Ok(Demo {
            init,
            clip,
            period,
            start_ticks,
            timescales,
            loop_us,
        })
    }

    /// The init segment of the clip.
    pub fn init(&self) -> &Init {
        &self.init
    }

    /// How long one pass over the clip lasts, in µs.
    pub fn loop_duration_us(&self) -> u64 {
        self.loop_us
    }

    /// Fragments per loop.
    pub fn len(&self) -> usize {
        self.clip.len()
    }

    /// Always false: a clip has at least one fragment.
    pub fn is_empty(&self) -> bool {
        self.clip.is_empty()
    }

    /// The n-th fragment of the endless stream (n = 0, 1, 2, …): fragment
    /// `n % len` of the clip, with its `mfhd` sequence number rewritten to
    /// `n + 1` (mod 2³²) and every `traf`'s `tfdt` advanced by `n / len`
    /// times that track's loop duration; and the time, in µs since the stream
    /// started, at which it is due: its decode time (so the caller sleeps
    /// until then). `index` is `n`.
    pub fn fragment(&self, n: u64) -> (Fragment, u64) {
        let len = self.clip.len().max(1) as u64;
        let loops = n / len;
        let Some(c) = self.clip.get((n % len) as usize) else {
            return (empty_fragment(n), 0);
        };
        let advance = |t: usize| {
            advance_ticks(
                loops,
                self.period,
                self.timescales.get(t).copied().unwrap_or(0),
            )
        };
        let mut bytes = BytesMut::from(&c.fragment.bytes[..]);
        let seq = (n.wrapping_add(1)) as u32;
        put(&mut bytes, c.seq_at, &seq.to_be_bytes());
        for tfdt in &c.tfdts {
            let time = tfdt.time.saturating_add(advance(tfdt.track));
            if tfdt.version == 1 {
                put(&mut bytes, tfdt.at, &time.to_be_bytes());
            } else {
                // Checked at load not to overflow within a year; wraps after.
                put(&mut bytes, tfdt.at, &(time as u32).to_be_bytes());
            }
        }
        let decode_time = c.fragment.decode_time.saturating_add(advance(c.ref_track));
        let since_start =
            decode_time.saturating_sub(self.start_ticks.get(c.ref_track).copied().unwrap_or(0));
        let due_us = scale_us(
            since_start,
            self.timescales.get(c.ref_track).copied().unwrap_or(0),
        );
        let fragment = Fragment {
            index: n,
            keyframe: c.fragment.keyframe,
            decode_time,
            duration: c.fragment.duration,
            timescale: c.fragment.timescale,
            mfhd_seq: seq,
            bytes: bytes.freeze(),
        };
        (fragment, due_us)
    }
}

/// `loops` loop periods in ticks of `timescale`: ⌊loops × ticks × timescale /
/// period_timescale⌋, computed exactly (so the error never grows with the
/// number of loops, and each pass of a track starts at least its own length
/// after the previous one: timestamps never go backwards).
fn advance_ticks(loops: u64, period: (u64, u32), timescale: u32) -> u64 {
    let (ticks, of) = period;
    if of == 0 {
        return 0;
    }
    let v = u128::from(loops) * u128::from(ticks) * u128::from(timescale) / u128::from(of);
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn put(bytes: &mut BytesMut, at: usize, value: &[u8]) {
    if let Some(dst) = at
        .checked_add(value.len())
        .and_then(|end| bytes.get_mut(at..end))
    {
        dst.copy_from_slice(value);
    }
}

fn empty_fragment(n: u64) -> Fragment {
    Fragment {
        index: n,
        keyframe: false,
        decode_time: 0,
        duration: 0,
        timescale: 0,
        mfhd_seq: 0,
        bytes: Bytes::new(),
    }
}

/// One `traf` of a clip fragment.
#[derive(Clone, Copy, Debug)]
struct Tfdt {
    /// Offset of the `tfdt` time field within the fragment's bytes.
    at: usize,
    /// 0: 32-bit field; 1: 64-bit.
    version: u8,
    /// The track's position in the init.
    track: usize,
    /// The clip's decode time.
    time: u64,
    /// The `traf`'s total sample duration.
    duration: u64,
}

/// Finds the `moof` in a fragment and where its sequence number and `tfdt`s are.
fn locate(fragment: Fragment, table: &TrackTable) -> Result<ClipFragment, MediaError> {
    let mut found = None;
    for child in Children::new(&fragment.bytes, 0, "fragment") {
        let child = child?;
        if &child.kind == b"moof" {
            let moof_at = child.body_at - (child.whole.len() - child.body.len());
            found = Some((moof_at, parse_moof(child.whole, table)?));
            break;
        }
    }
    let Some((moof_at, info)) = found else {
        return Err(MediaError::Invalid("no 'moof'".into()));
    };
    let mut tfdts = Vec::with_capacity(info.trafs.len());
    for traf in &info.trafs {
        match (traf.tfdt, traf.decode_time) {
            (Some(field), Some(time)) => {
                tfdts.push(Tfdt {
                    at: moof_at + field.at,
                    version: field.version,
                    track: traf.track_index,
                    time,
                    duration: traf.duration,
                });
            }
            _ => {
                return Err(MediaError::Invalid(format!(
                    "the 'traf' of track {} has no 'tfdt' to rewrite",
                    traf.track_id
                )));
            }
        }
    }
    let ref_track = info.reference(table).map_or(0, |t| t.track_index);
    Ok(ClipFragment {
        seq_at: moof_at + info.seq_at,
        tfdts,
        ref_track,
        fragment,
    })
}
