//! `hls`: LL-HLS (RFC 8216bis) and DASH manifests built from the fan-out
//! ring, sans-IO (no sockets, no clocks: the caller passes "now"). This is
//! media packaging, so it lives in the media crate; the relay keeps one
//! [`SegmentIndex`] per stream and serves the bytes (`egress::hls`).
//!
//! The ring's fragments are the HLS *parts* and are served as they are stored
//! (`part/{seq}.m4s`). A *segment* is one GOP (or several short GOPs) and is
//! served as the concatenation of its parts (`seg/{msn}.m4s`); the init segment
//! is `init/{gen}.mp4`. [`Links`] puts a prefix before these (the relay uses
//! the stream's epoch, so that a URL never names other bytes after a restart)
//! and a query after them (a signed URL's `exp`/`sig`). No URL carries a
//! session id, so any HTTP cache can answer any request.
//!
//! The caller keeps one [`SegmentIndex`] per stream and updates it from the
//! ring's own notification: [`SegmentIndex::push`] for every new fragment,
//! [`SegmentIndex::evict_before`] when the ring drops fragments, and
//! [`SegmentIndex::set_live`] on publisher gone/back. Media Sequence Numbers are
//! a counter kept by the index, so a segment's MSN never changes while the
//! window slides. Manifests are rendered from the index:
//! [`media_playlist`], [`multivariant`], [`mpd`]; blocking playlist reloads
//! are decided by [`blocking_request`].

use std::collections::VecDeque;

mod dash;
mod fmt;
mod playlist;
#[cfg(test)]
mod tests;

pub use dash::{MpdParams, mpd};
pub use fmt::{http_date, iso8601};
pub use playlist::{
    Blocking, PlaylistError, PlaylistRequest, Variant, blocking_request, media_playlist,
    multivariant,
};

/// How the manifests name segments, parts and init segments: `{prefix}seg/{msn}.m4s{query}`
/// and so on, relative to the manifest's URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// Before every URI, e.g. `1796251146000/` (a path segment; empty for none).
    pub prefix: String,
    /// After every URI, e.g. `?exp=…&sig=…` (empty for none). Must be URL-safe.
    pub query: String,
}

impl Links {
    /// `{prefix}seg/{msn}.m4s{query}`.
    pub fn segment(&self, msn: u64) -> String {
        format!("{}seg/{msn}.m4s{}", self.prefix, self.query)
    }
    /// `{prefix}part/{seq}.m4s{query}`.
    pub fn part(&self, seq: u64) -> String {
        format!("{}part/{seq}.m4s{}", self.prefix, self.query)
    }
    /// `{prefix}init/{gen}.mp4{query}`.
    pub fn init(&self, init_gen: u64) -> String {
        format!("{}init/{init_gen}.mp4{}", self.prefix, self.query)
    }
    /// The DASH `SegmentTemplate@media`: `{prefix}seg/$Number$.m4s{query}`.
    pub fn segment_template(&self) -> String {
        format!("{}seg/$Number$.m4s{}", self.prefix, self.query)
    }
}

/// One stored fragment of the ring, as the index sees it (no payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// Stream-wide sequence number of the fragment (`part/{seq}.m4s`).
    pub seq: u64,
    /// The fragment starts with a sync sample: a player may start here.
    pub keyframe: bool,
    /// Decode time of the fragment, µs (the media timeline; used by DASH and
    /// to detect timestamp jumps).
    pub dts_us: u64,
    /// Duration of the fragment, µs.
    pub dur_us: u64,
    /// Relay wall clock (Unix ms) when the fragment arrived.
    pub t_ms: u64,
    /// Which init segment the fragment belongs to (`init/{gen}.mp4`).
    pub init_gen: u64,
    /// Payload length in bytes (for `BYTERANGE`-free accounting and metrics).
    pub bytes_len: usize,
}

/// Tuning of the segmenter. The defaults suit 0.1–1 s fragments and 1–2 s GOPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// A keyframe closes the open segment only when the segment is at least
    /// this long; shorter GOPs are merged. 0 = every GOP is a segment.
    pub min_segment_us: u64,
    /// Lower bound of `EXT-X-TARGETDURATION`, seconds.
    pub min_target_duration_s: u64,
    /// Lower bound of `PART-TARGET`, µs (0 = learn it from the fragments).
    pub min_part_target_us: u64,
    /// Most segments kept in the index (the ring usually evicts earlier).
    pub max_segments: usize,
    /// A decode-time jump larger than this between consecutive fragments is a
    /// discontinuity (a publisher that restarted its timestamps), µs.
    pub dts_jump_us: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            min_segment_us: 500_000,
            min_target_duration_s: 1,
            min_part_target_us: 0,
            max_segments: 64,
            dts_jump_us: 1_000_000,
        }
    }
}

/// The targets announced in the playlist. Fixed when the first segment
/// completes and never changed afterwards (RFC 8216bis §6.2.1: "The
/// EXT-X-TARGETDURATION value in a Media Playlist MUST NOT change").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    /// `EXT-X-TARGETDURATION`, whole seconds: ceil of the longest segment
    /// seen before announcing (at least `min_target_duration_s`).
    pub target_duration_s: u64,
    /// `PART-TARGET`, µs: the longest fragment seen before announcing,
    /// rounded up to a millisecond (at least `min_part_target_us`).
    pub part_target_us: u64,
}

impl Targets {
    /// `PART-HOLD-BACK`: three part targets (the RFC's minimum), µs.
    pub fn part_hold_back_us(&self) -> u64 {
        self.part_target_us.saturating_mul(3)
    }
    /// `CAN-SKIP-UNTIL`: six target durations (the RFC's minimum), seconds.
    pub fn can_skip_until_s(&self) -> u64 {
        self.target_duration_s.saturating_mul(6)
    }
    /// How long a blocking playlist request may be held before the caller
    /// answers 503 (RFC 8216bis §6.2.5.2: three target durations), ms.
    pub fn blocking_timeout_ms(&self) -> u64 {
        self.target_duration_s.saturating_mul(3_000)
    }
}

/// One HLS media segment (= one DASH segment): consecutive parts that start
/// at a keyframe (unless it was force-split, see [`Segment::independent`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Media Sequence Number (= DASH `$Number$`). Never changes.
    pub msn: u64,
    /// Discontinuity sequence number: how many discontinuities precede or
    /// open this segment since the index started.
    pub disc_seq: u64,
    /// An `EXT-X-DISCONTINUITY` precedes this segment (new init or a
    /// timestamp jump). Also starts a new DASH Period.
    pub discontinuity: bool,
    /// The init segment of every part of this segment.
    pub init_gen: u64,
    /// Wall clock (Unix ms) of the first sample of the first segment since
    /// the last discontinuity: the DASH Period's anchor, stable while the
    /// window slides.
    pub period_start_ms: u64,
    /// Decode time (µs) of that same first segment: the Period's
    /// `presentationTimeOffset`.
    pub period_dts_us: u64,
    /// The parts, in seq order (consecutive seqs).
    pub parts: Vec<PartInfo>,
    /// No more parts will be added (the next segment started, or the
    /// publisher left).
    pub complete: bool,
    /// The parts are not all ≤ the announced part target: the playlist lists
    /// no `EXT-X-PART` for this segment (it stays a plain segment).
    pub oversize_part: bool,
}

impl Segment {
    /// Total duration, µs.
    pub fn dur_us(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |a, p| a.saturating_add(p.dur_us))
    }
    /// Seq of the first part.
    pub fn first_seq(&self) -> u64 {
        self.parts.first().map_or(0, |p| p.seq)
    }
    /// Seq one past the last part: the segment is the fragments
    /// `first_seq()..end_seq()` concatenated.
    pub fn end_seq(&self) -> u64 {
        self.parts.last().map_or(0, |p| p.seq.saturating_add(1))
    }
    /// Starts with a keyframe part (a player can start decoding here).
    pub fn independent(&self) -> bool {
        self.parts.first().is_some_and(|p| p.keyframe)
    }
    /// Decode time of the first part, µs.
    pub fn dts_us(&self) -> u64 {
        self.parts.first().map_or(0, |p| p.dts_us)
    }
    /// Wall clock (Unix ms) of the segment's first sample: arrival of its
    /// first fragment minus that fragment's duration (a fragment arrives when
    /// its last sample was written).
    pub fn start_ms(&self) -> u64 {
        self.parts
            .first()
            .map_or(0, |p| p.t_ms.saturating_sub(p.dur_us / 1000))
    }
    /// Payload bytes of the whole segment.
    pub fn bytes_len(&self) -> usize {
        self.parts
            .iter()
            .fold(0usize, |a, p| a.saturating_add(p.bytes_len))
    }
}

/// What [`SegmentIndex::push`] did with a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Appended to the open segment.
    Part,
    /// Opened a new segment (the previous one, if any, is now complete).
    NewSegment {
        /// Its MSN.
        msn: u64,
        /// It follows a discontinuity.
        discontinuity: bool,
    },
    /// Ignored: not a keyframe and no segment open yet (joined mid-GOP), or
    /// a seq that is not after the previous one.
    Ignored,
}

/// Counters worth exporting as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Segments closed without a keyframe because the GOP outgrew the
    /// announced target duration (encoder keyframe interval too long).
    pub forced_splits: u64,
    /// Fragments longer than the announced part target.
    pub oversize_parts: u64,
    /// Fragments ignored (before the first keyframe, or out of order).
    pub ignored: u64,
}

/// The HLS/DASH view of one stream's ring: segments with stable MSNs, the
/// announced targets, the discontinuity count. Updated incrementally by the
/// caller; never recomputed from scratch.
#[derive(Clone, Debug)]
pub struct SegmentIndex {
    cfg: IndexConfig,
    segments: VecDeque<Segment>,
    next_msn: u64,
    disc_seq: u64,
    targets: Option<Targets>,
    max_part_us: u64,
    max_segment_us: u64,
    pending_discontinuity: bool,
    live: bool,
    ended: bool,
    stats: IndexStats,
}

impl Default for SegmentIndex {
    fn default() -> Self {
        SegmentIndex::new(IndexConfig::default())
    }
}

impl SegmentIndex {
    /// An empty index; the first MSN will be 0.
    pub fn new(cfg: IndexConfig) -> Self {
        SegmentIndex {
            cfg,
            segments: VecDeque::new(),
            next_msn: 0,
            disc_seq: 0,
            targets: None,
            max_part_us: 0,
            max_segment_us: 0,
            pending_discontinuity: false,
            live: true,
            ended: false,
            stats: IndexStats::default(),
        }
    }

    /// Add the ring's newest fragment. Call in seq order; out-of-order or
    /// repeated seqs are ignored.
    pub fn push(&mut self, p: PartInfo) -> Pushed {
        let prev = self.segments.back().and_then(|s| s.parts.last()).copied();
        if let Some(prev) = prev {
            if p.seq <= prev.seq {
                self.stats.ignored += 1;
                return Pushed::Ignored;
            }
            let expected = prev.dts_us.saturating_add(prev.dur_us);
            if p.init_gen != prev.init_gen || p.dts_us.abs_diff(expected) > self.cfg.dts_jump_us {
                self.pending_discontinuity = true;
            }
            // A gap in seqs (the ring lost fragments) also breaks the timeline.
            if p.seq != prev.seq.saturating_add(1) {
                self.pending_discontinuity = true;
            }
        }
        self.ended = false;
        let open = self.segments.back().filter(|s| !s.complete);
        let new_segment = match open {
            None => true,
            Some(s) => {
                let dur = s.dur_us();
                let gop_boundary = p.keyframe && dur >= self.cfg.min_segment_us;
                let too_long = self.targets.is_some_and(|t| {
                    dur.saturating_add(p.dur_us) > t.target_duration_s.saturating_mul(1_000_000)
                });
                if too_long && !gop_boundary && !self.pending_discontinuity {
                    self.stats.forced_splits += 1;
                }
                gop_boundary || too_long || self.pending_discontinuity
            }
        };
        if new_segment && self.segments.is_empty() && !p.keyframe {
            // Never open the very first segment mid-GOP.
            self.stats.ignored += 1;
            return Pushed::Ignored;
        }
        if p.dur_us > self.max_part_us {
            self.max_part_us = p.dur_us;
        }
        let oversize = self.targets.is_some_and(|t| p.dur_us > t.part_target_us);
        if oversize {
            self.stats.oversize_parts += 1;
        }
        if !new_segment {
            if let Some(s) = self.segments.back_mut() {
                s.parts.push(p);
                s.oversize_part |= oversize;
            }
            return Pushed::Part;
        }
        self.close_open();
        let discontinuity = self.pending_discontinuity && !self.segments.is_empty();
        self.pending_discontinuity = false;
        if discontinuity {
            self.disc_seq += 1;
        }
        let msn = self.next_msn;
        self.next_msn += 1;
        let (period_start_ms, period_dts_us) = match self.segments.back() {
            Some(s) if !discontinuity => (s.period_start_ms, s.period_dts_us),
            _ => (p.t_ms.saturating_sub(p.dur_us / 1000), p.dts_us),
        };
        self.segments.push_back(Segment {
            msn,
            disc_seq: self.disc_seq,
            discontinuity,
            init_gen: p.init_gen,
            period_start_ms,
            period_dts_us,
            parts: vec![p],
            complete: false,
            oversize_part: oversize,
        });
        while self.segments.len() > self.cfg.max_segments.max(2) {
            self.segments.pop_front();
        }
        Pushed::NewSegment { msn, discontinuity }
    }

    fn close_open(&mut self) {
        let Some(s) = self.segments.back_mut().filter(|s| !s.complete) else {
            return;
        };
        s.complete = true;
        let dur = s.dur_us();
        if dur > self.max_segment_us {
            self.max_segment_us = dur;
        }
        if self.targets.is_none() {
            let td = self.max_segment_us.div_ceil(1_000_000);
            let pt = self.max_part_us.div_ceil(1_000).saturating_mul(1_000);
            self.targets = Some(Targets {
                target_duration_s: td.max(self.cfg.min_target_duration_s).max(1),
                part_target_us: pt.max(self.cfg.min_part_target_us).max(1_000),
            });
        }
    }

    /// The ring dropped every fragment before `first_seq`: drop the segments
    /// that started before it (a segment is served whole or not at all).
    pub fn evict_before(&mut self, first_seq: u64) {
        while self
            .segments
            .front()
            .is_some_and(|s| s.first_seq() < first_seq)
        {
            self.segments.pop_front();
        }
    }

    /// Publisher gone (`false`) or back (`true`). Gone closes the open
    /// segment (no more parts will come for it); back makes the next
    /// fragment open a new segment after a discontinuity (its timestamps and
    /// init may have restarted).
    pub fn set_live(&mut self, live: bool) {
        if self.live && !live {
            self.close_open();
        }
        if !self.live && live {
            self.pending_discontinuity = true;
        }
        self.live = live;
    }

    /// The stream is over for good: the playlist gets `EXT-X-ENDLIST`.
    pub fn end(&mut self) {
        self.set_live(false);
        self.ended = true;
    }

    /// Whether a publisher is live.
    pub fn live(&self) -> bool {
        self.live
    }
    /// Whether [`end`](Self::end) was called (and no fragment came since).
    pub fn ended(&self) -> bool {
        self.ended
    }
    /// The announced targets; `None` until the first segment completed (the
    /// playlist is not available before: the targets can never change).
    pub fn targets(&self) -> Option<Targets> {
        self.targets
    }
    /// The segments in the window, oldest first.
    pub fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }
    /// The segment with this MSN (for `seg/{msn}.m4s`), if still in the window.
    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        let i = usize::try_from(msn.checked_sub(first)?).ok()?;
        self.segments.get(i).filter(|s| s.msn == msn)
    }
    /// The segment and part index holding fragment `seq` (for `part/{seq}.m4s`).
    pub fn part(&self, seq: u64) -> Option<(&Segment, usize)> {
        let s = self
            .segments
            .iter()
            .rev()
            .find(|s| s.first_seq() <= seq && seq < s.end_seq())?;
        let i = usize::try_from(seq - s.first_seq()).ok()?;
        Some((s, i))
    }
    /// Seq of the next fragment to come (the preload hint), if a segment exists.
    pub fn next_seq(&self) -> Option<u64> {
        Some(self.segments.back()?.end_seq())
    }
    /// Duration of the complete segments in the window, µs. RFC 8216 §6.2.2:
    /// a live playlist must keep at least three target durations, so the ring
    /// must hold at least that much.
    pub fn window_us(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.complete)
            .fold(0u64, |a, s| a.saturating_add(s.dur_us()))
    }
    /// The first seq a ring must keep so that the complete segments from
    /// there on last at least three target durations (RFC 8216 §6.2.2), or
    /// `None` when no targets are known yet. Keeping whole segments matters:
    /// [`evict_before`](Self::evict_before) drops a segment whose first part
    /// left.
    pub fn keep_from_seq(&self) -> Option<u64> {
        let need = self.targets?.target_duration_s.saturating_mul(3_000_000);
        let mut have = 0u64;
        for s in self.segments.iter().rev() {
            if s.complete {
                have = have.saturating_add(s.dur_us());
            }
            if have >= need {
                return Some(s.first_seq());
            }
        }
        self.segments.front().map(|s| s.first_seq())
    }

    /// Counters.
    pub fn stats(&self) -> IndexStats {
        self.stats
    }
}
