//! A sans-IO CMAF fragmented-MP4 muxer: decoder configurations and samples in,
//! an init segment (`ftyp` + `moov` with `mvex`/`trex`) and `moof` + `mdat`
//! fragments out, laid out like ffmpeg's
//! `-movflags frag_keyframe+empty_moov+default_base_moof -frag_duration 100000`
//! (one `traf` per track in each `moof`, `tfdt` version 1, `trun` with
//! per-sample durations, sizes, flags and composition offsets).
//!
//! Why hand-written and not a crate: `mp4-atom` (already the relay's box
//! library) writes the init segment here, but no crate does the *muxing*
//! policy a live relay needs: holding one sample back per track to learn its
//! duration, cutting at video keyframes or at a duration bound, interleaving
//! audio and video in one `moof`, and keeping timestamps monotonic across
//! publisher wrap-arounds and jumps. The `moof` itself is written by hand:
//! it is the per-fragment hot path, its `trun` `data_offset`s depend on the
//! `moof`'s own size, and building it field by field avoids allocating one
//! `mp4-atom` entry struct per sample. `muxer_output_parses_with_mp4_atom`
//! checks it against `mp4-atom`'s decoder.

use bytes::{BufMut, Bytes, BytesMut};
use mp4_atom::{
    Atom, Audio, Av01, Av1c, Avc1, Avcc, Codec as StsdCodec, Decode, Dinf, Dops, Dref, Encode,
    Esds, Ftyp, Hdlr, Hvc1, Hvcc, Mdhd, Mdia, Minf, Moov, Mp4a, Mvex, Mvhd, Opus, Smhd, Stbl, Stco,
    Stsd, Tkhd, Trak, Trex, Url, Visual, Vmhd, Vp09, VpcC, esds,
};

/// Video or audio: the muxer has at most one track of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// The video track (track id 1 when present).
    Video,
    /// The audio track.
    Audio,
}

/// A decoder configuration, as the publisher's bitstream carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Codec {
    /// H.264: an `AVCDecoderConfigurationRecord` (the `avcC` body); samples are
    /// length-prefixed NAL units with the record's length size.
    H264(Bytes),
    /// HEVC: an `HEVCDecoderConfigurationRecord` (the `hvcC` body).
    H265(Bytes),
    /// AV1: an `AV1CodecConfigurationRecord` (the `av1C` body).
    Av1(Bytes),
    /// VP9: a `VPCodecConfigurationRecord`, with or without the 4-byte
    /// version/flags prefix of the `vpcC` box.
    Vp9(Bytes),
    /// AAC: an `AudioSpecificConfig`.
    Aac(Bytes),
    /// Opus: the `dOps` body (an `OpusHead` without its magic, big-endian),
    /// or a whole Ogg `OpusHead` (little-endian, starting with `OpusHead`).
    Opus(Bytes),
    /// MP3 (written as `mp4a` with object type 0x6B).
    Mp3 {
        /// Sampling rate in Hz.
        sample_rate: u32,
        /// Channel count.
        channels: u16,
    },
}

impl Codec {
    /// The configuration record's bytes (empty for MP3, which has none).
    pub fn record(&self) -> Bytes {
        match self {
            Codec::H264(b)
            | Codec::H265(b)
            | Codec::Av1(b)
            | Codec::Vp9(b)
            | Codec::Aac(b)
            | Codec::Opus(b) => b.clone(),
            Codec::Mp3 { .. } => Bytes::new(),
        }
    }

    /// Which kind of track this configuration is for.
    pub fn kind(&self) -> TrackKind {
        match self {
            Codec::H264(_) | Codec::H265(_) | Codec::Av1(_) | Codec::Vp9(_) => TrackKind::Video,
            _ => TrackKind::Audio,
        }
    }
}

/// One track's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackConfig {
    /// The decoder configuration.
    pub codec: Codec,
    /// Ticks per second of the sample timestamps given to [`Muxer::push`].
    pub timescale: u32,
    /// Display size for the video sample entry; 0 = take it from the SPS when
    /// the codec has one (H.264, HEVC).
    pub width: u16,
    /// See `width`.
    pub height: u16,
    /// Audio: sampling rate and channel count for the sample entry (0 = derive
    /// from the codec configuration where possible).
    pub sample_rate: u32,
    /// See `sample_rate`.
    pub channels: u16,
    /// Audio: the nominal duration of one frame in `timescale` ticks (1024 for
    /// AAC at its sampling rate). Timestamps within half a frame of the
    /// expected one are snapped to it, which removes the jitter of FLV's
    /// millisecond timestamps. 0 disables snapping.
    pub frame_duration: u32,
}

impl TrackConfig {
    /// A configuration with the given codec and timescale, everything else derived.
    pub fn new(codec: Codec, timescale: u32) -> Self {
        TrackConfig {
            codec,
            timescale,
            width: 0,
            height: 0,
            sample_rate: 0,
            channels: 0,
            frame_duration: 0,
        }
    }
}

/// One coded sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Decode time in the track's timescale. May wrap back or jump: the muxer
    /// keeps its output monotonic and continuous.
    pub dts: i64,
    /// Presentation time minus decode time, in the track's timescale.
    pub cts_offset: i32,
    /// True for a sync sample (IDR / key frame; every audio frame).
    pub keyframe: bool,
    /// The sample bytes in MP4 form (length-prefixed NAL units, raw AAC, …).
    pub data: Bytes,
}

impl Sample {
    /// An audio frame: every one is a sync sample, presented as decoded.
    pub fn audio(dts: i64, data: Bytes) -> Sample {
        Sample {
            dts,
            cts_offset: 0,
            keyframe: true,
            data,
        }
    }
}

/// Muxer tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MuxerConfig {
    /// Cut a fragment once it holds this much media (µs) of its reference
    /// track; fragments are also cut before every video keyframe. Default 100 ms.
    pub max_fragment_us: u64,
    /// A forward jump larger than this (µs) between two samples of a track is
    /// treated as a discontinuity and closed up. Default 10 s.
    pub max_gap_us: u64,
    /// While a track announced with [`Muxer::expect`] has no configuration, hold
    /// the first fragment back for up to this much media (µs). Default 2 s.
    pub wait_for_tracks_us: u64,
}

impl Default for MuxerConfig {
    fn default() -> Self {
        MuxerConfig {
            max_fragment_us: 100_000,
            max_gap_us: 10_000_000,
            wait_for_tracks_us: 2_000_000,
        }
    }
}

/// An initialization segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitSegment {
    /// `ftyp` + `moov`.
    pub bytes: Bytes,
    /// The tracks it declares, in order: (kind, track id, timescale).
    pub tracks: Vec<(TrackKind, u32, u32)>,
}

/// One `moof` + `mdat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// The bytes.
    pub bytes: Bytes,
    /// `mfhd` sequence number (1, 2, …; restarts after a new init segment).
    pub sequence: u32,
    /// True when the video track starts with a sync sample (or, without video,
    /// always: every audio frame is a sync sample).
    pub keyframe: bool,
    /// `tfdt` of the reference track (video if present, else audio).
    pub decode_time: u64,
    /// Total duration of the reference track's samples in this fragment.
    pub duration: u64,
    /// Timescale of the reference track.
    pub timescale: u32,
}

/// What the muxer hands out, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A new initialization segment: the first, or after a configuration change.
    Init(InitSegment),
    /// A media fragment for the latest init segment.
    Fragment(Fragment),
}

impl Output {
    /// The fMP4 bytes (`ftyp`+`moov`, or `moof`+`mdat`): what the relay's
    /// splitter reads.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Output::Init(i) => &i.bytes,
            Output::Fragment(f) => &f.bytes,
        }
    }
}

/// Why a configuration was refused (samples are never refused: bad timing is clamped).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MuxError {
    /// The decoder configuration record could not be parsed.
    #[error("invalid {codec} configuration: {reason}")]
    BadConfig {
        /// codec name
        codec: &'static str,
        /// what was wrong
        reason: String,
    },
    /// A timescale of 0.
    #[error("track timescale is 0")]
    ZeroTimescale,
}

/// A completed sample (duration known) waiting in the current fragment.
#[derive(Clone, Debug)]
struct Done {
    duration: u32,
    cts: i32,
    keyframe: bool,
    data: Bytes,
}

#[derive(Debug)]
struct TrackState {
    config: TrackConfig,
    /// The encoded sample entry, for change detection and the init segment.
    entry: StsdCodec,
    /// Output decode time of the first sample of `done`.
    frag_start: u64,
    /// Completed samples of the current fragment.
    done: Vec<Done>,
    /// The held-back sample: (output dts, sample).
    pending: Option<(u64, Sample)>,
    /// Added to input dts to get output dts (changes at discontinuities).
    offset: i64,
    /// Output dts of the last sample (pending or done); None before the first.
    last_dts: Option<u64>,
    /// Duration of the last completed sample (a guess for the next one).
    last_duration: u32,
}

/// The CMAF muxer. Call [`Muxer::set_track`] for each track, then
/// [`Muxer::push`] samples, and drain [`Muxer::poll`] after each call.
#[derive(Debug)]
pub struct Muxer {
    config: MuxerConfig,
    video: Option<TrackState>,
    audio: Option<TrackState>,
    expect_video: bool,
    expect_audio: bool,
    /// The init segment must be (re)written before the next fragment.
    init_dirty: bool,
    sequence: u32,
    /// Start of the timeline in µs of input time, set by the first sample of any track.
    origin_us: Option<i64>,
    out: std::collections::VecDeque<Output>,
}

impl Muxer {
    /// A muxer with no tracks.
    pub fn new(config: MuxerConfig) -> Self {
        Muxer {
            config,
            video: None,
            audio: None,
            expect_video: false,
            expect_audio: false,
            init_dirty: true,
            sequence: 0,
            origin_us: None,
            out: Default::default(),
        }
    }

    /// Announces the tracks the source will carry (from an FLV header, RTMP
    /// metadata or a PMT): the first fragment waits for their configurations
    /// (bounded by [`MuxerConfig::wait_for_tracks_us`]).
    pub fn expect(&mut self, video: bool, audio: bool) {
        self.expect_video = video;
        self.expect_audio = audio;
    }

    /// Sets or replaces a track's configuration. An identical configuration is
    /// a no-op; a changed one ends the current fragment and makes the muxer
    /// write a new init segment before the next one.
    pub fn set_track(&mut self, config: TrackConfig) -> Result<(), MuxError> {
        if config.timescale == 0 {
            return Err(MuxError::ZeroTimescale);
        }
        let kind = config.codec.kind();
        let entry = sample_entry(&config)?;
        let slot = match kind {
            TrackKind::Video => &mut self.video,
            TrackKind::Audio => &mut self.audio,
        };
        if let Some(t) = slot
            && t.entry == entry
            && t.config.timescale == config.timescale
        {
            t.config = config;
            return Ok(());
        }
        // Samples gathered for an init segment not written yet can wait for a
        // track that is being added; otherwise they go out under the old one.
        if slot.is_some() || !self.init_dirty {
            self.flush_fragment(true);
        }
        let slot = match kind {
            TrackKind::Video => &mut self.video,
            TrackKind::Audio => &mut self.audio,
        };
        // Keep timing continuous across a configuration change of the same timescale.
        let (offset, last_dts, last_duration) = match slot.take() {
            Some(t) if t.config.timescale == config.timescale => {
                (t.offset, t.last_dts, t.last_duration)
            }
            _ => (0, None, 0),
        };
        *slot = Some(TrackState {
            config,
            entry,
            frag_start: 0,
            done: Vec::new(),
            pending: None,
            offset,
            last_dts,
            last_duration,
        });
        self.init_dirty = true;
        Ok(())
    }

    /// Removes a track (an encoder that stopped sending it); a new init follows.
    pub fn remove_track(&mut self, kind: TrackKind) {
        self.flush_fragment(true);
        let slot = match kind {
            TrackKind::Video => &mut self.video,
            TrackKind::Audio => &mut self.audio,
        };
        if slot.take().is_some() {
            self.init_dirty = true;
        }
    }

    /// True when the track has a configuration.
    pub fn has_track(&self, kind: TrackKind) -> bool {
        match kind {
            TrackKind::Video => self.video.is_some(),
            TrackKind::Audio => self.audio.is_some(),
        }
    }

    /// Adds a sample to a track. Samples of a track without a configuration,
    /// and video samples before the first keyframe, are dropped (returns false).
    pub fn push(&mut self, kind: TrackKind, sample: Sample) -> bool {
        let origin_us = self.origin_us;
        let max_gap_us = self.config.max_gap_us;
        let Some(track) = self.track_mut(kind) else {
            return false;
        };
        let ts = u64::from(track.config.timescale);
        if kind == TrackKind::Video && track.last_dts.is_none() && !sample.keyframe {
            return false;
        }
        // Place the first sample of each track on the common timeline.
        let dts_us = ticks_to_us(sample.dts, ts);
        let origin = origin_us.unwrap_or(dts_us);
        if track.last_dts.is_none() {
            let start = us_to_ticks(dts_us.saturating_sub(origin).max(0), ts);
            track.offset = start.saturating_sub(sample.dts);
        }
        let mut dts = sample.dts.saturating_add(track.offset);
        if let Some(last) = track.last_dts {
            let last = last as i64;
            let guess = i64::from(track.last_duration.max(1));
            let max_gap = us_to_ticks(max_gap_us as i64, ts);
            let fd = i64::from(track.config.frame_duration);
            if dts <= last || dts - last > max_gap {
                // Backwards, a repeat, or a jump: continue where the track was.
                track.offset = track
                    .offset
                    .saturating_add((last + guess).saturating_sub(dts));
                dts = last + guess;
            } else if fd > 0 && (dts - (last + fd)).abs() * 2 < fd {
                track.offset = track.offset.saturating_add(last + fd - dts);
                dts = last + fd;
            }
        }
        let dts = dts.max(0) as u64;
        track.last_dts = Some(dts);
        let previous = track.pending.replace((dts, sample));
        if self.origin_us.is_none() {
            self.origin_us = Some(origin);
        }
        if let Some((pdts, prev)) = previous {
            let duration = (dts - pdts).min(u64::from(u32::MAX)) as u32;
            self.complete(kind, pdts, prev, duration);
        }
        // A video keyframe opens a new fragment: close the current one now.
        let keyframe_next = kind == TrackKind::Video
            && self
                .video
                .as_ref()
                .and_then(|t| t.pending.as_ref())
                .is_some_and(|(_, s)| s.keyframe);
        if keyframe_next || self.reference_duration_us() >= self.config.max_fragment_us {
            self.flush_fragment(false);
        }
        true
    }

    /// Ends the stream: completes the held-back samples (with their
    /// predecessor's duration) and emits the last fragment.
    pub fn finish(&mut self) {
        for kind in [TrackKind::Video, TrackKind::Audio] {
            if let Some(t) = self.track_mut(kind)
                && let Some((dts, s)) = t.pending.take()
            {
                let d = t.last_duration.max(1);
                self.complete(kind, dts, s, d);
            }
        }
        self.flush_fragment(true);
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn track_mut(&mut self, kind: TrackKind) -> Option<&mut TrackState> {
        match kind {
            TrackKind::Video => self.video.as_mut(),
            TrackKind::Audio => self.audio.as_mut(),
        }
    }

    fn complete(&mut self, kind: TrackKind, dts: u64, s: Sample, duration: u32) {
        let Some(t) = self.track_mut(kind) else {
            return;
        };
        if t.done.is_empty() {
            t.frag_start = dts;
        }
        t.last_duration = duration;
        t.done.push(Done {
            duration,
            cts: s.cts_offset,
            keyframe: s.keyframe,
            data: s.data,
        });
    }

    fn reference(&self) -> Option<&TrackState> {
        self.video.as_ref().or(self.audio.as_ref())
    }

    fn reference_duration_us(&self) -> u64 {
        self.reference().map_or(0, |t| {
            let d: u64 = t.done.iter().map(|s| u64::from(s.duration)).sum();
            ticks_to_us(d as i64, u64::from(t.config.timescale)).max(0) as u64
        })
    }

    /// Emits the completed samples as one fragment (preceded by an init
    /// segment when needed). `force` skips the wait for expected tracks.
    fn flush_fragment(&mut self, force: bool) {
        let empty = |t: &Option<TrackState>| t.as_ref().is_none_or(|t| t.done.is_empty());
        if empty(&self.video) && empty(&self.audio) {
            return;
        }
        if self.init_dirty && !force {
            let missing = (self.expect_video && self.video.is_none())
                || (self.expect_audio && self.audio.is_none());
            if missing && self.reference_duration_us() < self.config.wait_for_tracks_us {
                return;
            }
        }
        if self.init_dirty {
            let init = self.init_segment();
            self.out.push_back(Output::Init(init));
            self.init_dirty = false;
            self.sequence = 0;
        }
        self.sequence = self.sequence.wrapping_add(1);
        let frag = self.write_fragment();
        self.out.push_back(Output::Fragment(frag));
    }

    fn tracks(&self) -> Vec<(u32, &TrackState)> {
        (1..)
            .zip([&self.video, &self.audio].into_iter().flatten())
            .collect()
    }

    fn init_segment(&self) -> InitSegment {
        let tracks = self.tracks();
        let ftyp = Ftyp {
            major_brand: b"iso6".into(),
            minor_version: 0,
            compatible_brands: vec![
                b"iso6".into(),
                b"cmfc".into(),
                b"iso5".into(),
                b"mp41".into(),
            ],
        };
        let moov = Moov {
            mvhd: Mvhd {
                timescale: 1000,
                rate: 1.into(),
                volume: 1.into(),
                next_track_id: tracks.len() as u32 + 1,
                ..Default::default()
            },
            mvex: Some(Mvex {
                trex: tracks
                    .iter()
                    .map(|(id, _)| Trex {
                        track_id: *id,
                        default_sample_description_index: 1,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            trak: tracks.iter().map(|(id, t)| trak(*id, t)).collect(),
            ..Default::default()
        };
        let mut buf = Vec::new();
        // Encoding plain structs into a Vec cannot fail for the sizes involved;
        // an error would leave a short buffer, which the player rejects.
        let _ = ftyp.encode(&mut buf);
        let _ = moov.encode(&mut buf);
        InitSegment {
            bytes: Bytes::from(buf),
            tracks: tracks
                .iter()
                .map(|(id, t)| (t.config.codec.kind(), *id, t.config.timescale))
                .collect(),
        }
    }

    /// Writes `moof` + `mdat` from every track's completed samples and clears them.
    fn write_fragment(&mut self) -> Fragment {
        let mut trafs: Vec<(u32, bool, u64, Vec<Done>)> = Vec::new();
        let mut id = 1;
        for (kind, slot) in [
            (TrackKind::Video, &mut self.video),
            (TrackKind::Audio, &mut self.audio),
        ] {
            if let Some(t) = slot {
                if !t.done.is_empty() {
                    trafs.push((
                        id,
                        kind == TrackKind::Video,
                        t.frag_start,
                        std::mem::take(&mut t.done),
                    ));
                }
                id += 1;
            }
        }
        let has_video = self.video.is_some();
        let reference = self.reference();
        let timescale = reference.map_or(1000, |t| t.config.timescale);
        // Reference track = first traf when it is the video track, or audio without video.
        let ref_traf = trafs.iter().find(|(_, v, _, _)| *v == has_video);
        let (decode_time, duration) = ref_traf.map_or((0, 0), |(_, _, start, s)| {
            (*start, s.iter().map(|d| u64::from(d.duration)).sum())
        });
        let keyframe = if has_video {
            ref_traf
                .and_then(|(_, _, _, s)| s.first())
                .is_some_and(|s| s.keyframe)
        } else {
            true
        };
        let bytes = encode_fragment(self.sequence, &trafs);
        Fragment {
            bytes,
            sequence: self.sequence,
            keyframe,
            decode_time,
            duration,
            timescale,
        }
    }
}

const SYNC: u32 = 0x0200_0000;
const NON_SYNC: u32 = 0x0101_0000;

/// Encodes one `moof` + `mdat`: per traf (track id, is video, base decode time, samples).
fn encode_fragment(sequence: u32, trafs: &[(u32, bool, u64, Vec<Done>)]) -> Bytes {
    // Sizes first: every trun's data_offset depends on the whole moof size.
    let trun_fields = |video: bool, s: &[Done]| -> (u32, bool, usize) {
        let cto = video && s.iter().any(|d| d.cts != 0);
        let mut flags = 0x0001 | 0x0100 | 0x0200; // data offset, duration, size
        let mut per = 8;
        if video {
            flags |= 0x0400;
            per += 4;
        }
        if cto {
            flags |= 0x0800;
            per += 4;
        }
        (flags, s.iter().any(|d| d.cts < 0), per)
    };
    let mut moof_size = 8 + 16; // moof header + mfhd
    let mut traf_sizes = Vec::with_capacity(trafs.len());
    for (_, video, _, s) in trafs {
        let (_, _, per) = trun_fields(*video, s);
        let tfhd = if *video { 16 } else { 20 }; // audio carries default_sample_flags
        let traf = 8 + tfhd + 20 + 20 + per * s.len();
        traf_sizes.push(traf);
        moof_size += traf;
    }
    let mdat_len: usize = trafs
        .iter()
        .flat_map(|t| t.3.iter())
        .map(|d| d.data.len())
        .sum();
    let mut b = BytesMut::with_capacity(moof_size + 8 + mdat_len);
    b.put_u32(moof_size as u32);
    b.put_slice(b"moof");
    b.put_u32(16);
    b.put_slice(b"mfhd");
    b.put_u32(0);
    b.put_u32(sequence);
    let mut data_at = moof_size + 8;
    for ((id, video, start, s), size) in trafs.iter().zip(traf_sizes) {
        let (flags, negative, _) = trun_fields(*video, s);
        b.put_u32(size as u32);
        b.put_slice(b"traf");
        if *video {
            b.put_u32(16);
            b.put_slice(b"tfhd");
            b.put_u32(0x02_0000); // default-base-is-moof
            b.put_u32(*id);
        } else {
            b.put_u32(20);
            b.put_slice(b"tfhd");
            b.put_u32(0x02_0020); // default-base-is-moof, default sample flags
            b.put_u32(*id);
            b.put_u32(SYNC);
        }
        b.put_u32(20);
        b.put_slice(b"tfdt");
        b.put_u32(0x0100_0000);
        b.put_u64(*start);
        let per = (size - 8 - if *video { 16 } else { 20 } - 20 - 20) / s.len().max(1);
        b.put_u32((20 + per * s.len()) as u32);
        b.put_slice(b"trun");
        b.put_u32((u32::from(negative) << 24) | flags);
        b.put_u32(s.len() as u32);
        b.put_i32(data_at as i32);
        for d in s {
            b.put_u32(d.duration);
            b.put_u32(d.data.len() as u32);
            if *video {
                b.put_u32(if d.keyframe { SYNC } else { NON_SYNC });
            }
            if flags & 0x0800 != 0 {
                b.put_i32(d.cts);
            }
        }
        data_at += s.iter().map(|d| d.data.len()).sum::<usize>();
    }
    b.put_u32((8 + mdat_len) as u32);
    b.put_slice(b"mdat");
    for (_, _, _, s) in trafs {
        for d in s {
            b.put_slice(&d.data);
        }
    }
    b.freeze()
}

fn ticks_to_us(ticks: i64, timescale: u64) -> i64 {
    (i128::from(ticks) * 1_000_000 / i128::from(timescale.max(1))) as i64
}

fn us_to_ticks(us: i64, timescale: u64) -> i64 {
    (i128::from(us) * i128::from(timescale) / 1_000_000) as i64
}

fn trak(id: u32, t: &TrackState) -> Trak {
    let video = t.config.codec.kind() == TrackKind::Video;
    let (w, h) = match &t.entry {
        StsdCodec::Avc1(e) => (e.visual.width, e.visual.height),
        StsdCodec::Hvc1(e) => (e.visual.width, e.visual.height),
        StsdCodec::Av01(e) => (e.visual.width, e.visual.height),
        StsdCodec::Vp09(e) => (e.visual.width, e.visual.height),
        _ => (0, 0),
    };
    Trak {
        tkhd: Tkhd {
            track_id: id,
            enabled: true,
            in_movie: true,
            volume: if video { 0.into() } else { 1.into() },
            width: w.into(),
            height: h.into(),
            ..Default::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale: t.config.timescale,
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: if video {
                    b"vide".into()
                } else {
                    b"soun".into()
                },
                name: if video {
                    "VideoHandler".into()
                } else {
                    "SoundHandler".into()
                },
            },
            minf: Minf {
                vmhd: video.then(Vmhd::default),
                smhd: (!video).then(Smhd::default),
                dinf: Dinf {
                    dref: Dref {
                        entries: vec![
                            Url {
                                location: "".into(),
                            }
                            .into(),
                        ],
                    },
                },
                stbl: Stbl {
                    stsd: Stsd {
                        codecs: vec![t.entry.clone()],
                    },
                    stco: Some(Stco::default()),
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

fn visual(width: u16, height: u16) -> Visual {
    Visual {
        data_reference_index: 1,
        width,
        height,
        horizresolution: 72.into(),
        vertresolution: 72.into(),
        frame_count: 1,
        compressor: "".into(),
        depth: 24,
    }
}

fn audio(channels: u16, sample_rate: u32) -> Audio {
    Audio {
        data_reference_index: 1,
        channel_count: channels,
        sample_size: 16,
        sample_rate: (sample_rate.min(65535) as u16).into(),
    }
}

fn bad(codec: &'static str, reason: impl Into<String>) -> MuxError {
    MuxError::BadConfig {
        codec,
        reason: reason.into(),
    }
}

/// The AAC sampling rates by `samplingFrequencyIndex`.
pub(crate) const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// The `stsd` entry for a configuration.
fn sample_entry(c: &TrackConfig) -> Result<StsdCodec, MuxError> {
    let (w, h) = (c.width, c.height);
    Ok(match &c.codec {
        Codec::H264(rec) => {
            let avcc =
                Avcc::decode_body(&mut rec.as_ref()).map_err(|e| bad("H.264", e.to_string()))?;
            let (mut w, mut h) = (w, h);
            if (w == 0 || h == 0)
                && let Some(s) = avcc
                    .sequence_parameter_sets
                    .first()
                    .and_then(|s| crate::remux::nal::avc_sps(s))
            {
                (w, h) = (s.width, s.height);
            }
            Avc1 {
                visual: visual(w, h),
                avcc,
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: None,
            }
            .into()
        }
        Codec::H265(rec) => {
            let hvcc =
                Hvcc::decode_body(&mut rec.as_ref()).map_err(|e| bad("HEVC", e.to_string()))?;
            let (mut w, mut h) = (w, h);
            if w == 0 || h == 0 {
                let sps = hvcc
                    .arrays
                    .iter()
                    .filter(|a| a.nal_unit_type == 33)
                    .flat_map(|a| a.nalus.first());
                if let Some(s) = sps.filter_map(|s| crate::remux::nal::hevc_sps(s)).next() {
                    (w, h) = (s.width, s.height);
                }
            }
            Hvc1 {
                visual: visual(w, h),
                hvcc,
                lhvc: None,
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                ccst: None,
                spatial: None,
            }
            .into()
        }
        Codec::Av1(rec) => {
            let av1c =
                Av1c::decode_body(&mut rec.as_ref()).map_err(|e| bad("AV1", e.to_string()))?;
            Av01 {
                visual: visual(w, h),
                av1c,
                btrt: None,
                ccst: None,
                colr: None,
                pasp: None,
                taic: None,
                spatial: None,
            }
            .into()
        }
        Codec::Vp9(rec) => {
            // With the box's version/flags (version 1) or without.
            let with_header = rec.first() == Some(&1) && rec.len() >= 12;
            let body: Vec<u8> = if with_header {
                rec.to_vec()
            } else {
                [&[1, 0, 0, 0][..], rec].concat()
            };
            let mut boxed = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            boxed.extend_from_slice(b"vpcC");
            boxed.extend_from_slice(&body);
            let vpcc = VpcC::decode(&mut &boxed[..]).map_err(|e| bad("VP9", e.to_string()))?;
            Vp09 {
                visual: visual(w, h),
                vpcc,
                btrt: None,
                colr: None,
                pasp: None,
                spatial: None,
            }
            .into()
        }
        Codec::Aac(asc) => {
            let (rate, ch) = aac_rate_channels(asc)
                .ok_or_else(|| bad("AAC", "AudioSpecificConfig too short"))?;
            let rate = if c.sample_rate > 0 {
                c.sample_rate
            } else {
                rate
            };
            let ch = if c.channels > 0 {
                c.channels
            } else {
                ch.max(1)
            };
            mp4a(ch, rate, 0x40, Some(asc.to_vec()))
        }
        Codec::Mp3 {
            sample_rate,
            channels,
        } => mp4a((*channels).max(1), *sample_rate, 0x6B, None),
        Codec::Opus(head) => {
            let dops = parse_dops(head).ok_or_else(|| bad("Opus", "OpusHead/dOps too short"))?;
            Opus {
                audio: audio(u16::from(dops.output_channel_count), 48000),
                dops,
                btrt: None,
            }
            .into()
        }
    })
}

fn mp4a(channels: u16, rate: u32, oti: u8, asc: Option<Vec<u8>>) -> StsdCodec {
    let dec_specific = asc.map(|raw| esds::DecoderSpecific {
        profile: raw.first().map_or(0, |b| b >> 3),
        freq_index: 0,
        chan_conf: 0,
        raw,
    });
    Mp4a {
        audio: audio(channels, rate),
        esds: Esds {
            es_desc: esds::EsDescriptor {
                es_id: 2,
                dec_config: esds::DecoderConfig {
                    object_type_indication: oti,
                    stream_type: 5,
                    dec_specific,
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        btrt: None,
        taic: None,
    }
    .into()
}

/// Sampling rate and channel count from an `AudioSpecificConfig`.
pub(crate) fn aac_rate_channels(asc: &[u8]) -> Option<(u32, u16)> {
    let mut r = crate::remux::nal::Bits::new(asc);
    let mut aot = r.bits(5)?;
    if aot == 31 {
        aot = 32 + r.bits(6)?;
    }
    let _ = aot;
    let idx = r.bits(4)?;
    let rate = if idx == 15 {
        r.bits(24)?
    } else {
        *AAC_RATES.get(idx as usize)?
    };
    let ch = r.bits(4)? as u16;
    Some((rate, ch))
}

/// A `dOps` from either its box body (big-endian, version 0) or an Ogg `OpusHead`.
fn parse_dops(b: &[u8]) -> Option<Dops> {
    let (body, le) = match b.strip_prefix(b"OpusHead") {
        Some(rest) => (rest, true),
        None => (b, false),
    };
    let u16_at = |i: usize| -> Option<u16> {
        let x: [u8; 2] = body.get(i..i + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(x)
        } else {
            u16::from_be_bytes(x)
        })
    };
    let u32_at = |i: usize| -> Option<u32> {
        let x: [u8; 4] = body.get(i..i + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(x)
        } else {
            u32::from_be_bytes(x)
        })
    };
    let channels = *body.get(1)?;
    let family = *body.get(10)?;
    let channel_mapping = if family != 0 {
        let streams = *body.get(11)?;
        let coupled = *body.get(12)?;
        let map = body.get(13..13 + usize::from(channels))?.to_vec();
        Some(mp4_atom::OpusChannelMapping {
            family,
            stream_count: streams,
            coupled_count: coupled,
            channel_mapping: map,
        })
    } else {
        None
    };
    Some(Dops {
        output_channel_count: channels,
        pre_skip: u16_at(2)?,
        input_sample_rate: u32_at(4)?,
        output_gain: u16_at(8)? as i16,
        channel_mapping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp4_atom::{Decode, Moof};

    fn sample(dts: i64, key: bool, len: usize) -> Sample {
        Sample {
            dts,
            cts_offset: if key { 0 } else { -1 },
            keyframe: key,
            data: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn muxer_output_parses_with_mp4_atom() {
        let mut m = Muxer::new(MuxerConfig::default());
        let mut cfg = TrackConfig::new(Codec::Aac(Bytes::from_static(&[0x11, 0x90])), 48000);
        cfg.frame_duration = 1024;
        m.set_track(cfg).unwrap();
        for i in 0..20 {
            m.push(TrackKind::Audio, sample(i * 1024, true, 10));
        }
        m.finish();
        let mut frags = 0;
        while let Some(o) = m.poll() {
            match o {
                Output::Init(i) => {
                    let mut b = &i.bytes[..];
                    Ftyp::decode(&mut b).unwrap();
                    let moov = Moov::decode(&mut b).unwrap();
                    assert_eq!(moov.trak.len(), 1);
                }
                Output::Fragment(f) => {
                    frags += 1;
                    let mut b = &f.bytes[..];
                    let moof = Moof::decode(&mut b).unwrap();
                    assert_eq!(moof.traf.len(), 1);
                    assert!(f.keyframe);
                }
            }
        }
        // 20 frames of 21.3 ms in fragments of >= 100 ms: 5 per fragment.
        assert_eq!(frags, 4);
    }

    #[test]
    fn timestamps_clamped_monotonic() {
        let mut m = Muxer::new(MuxerConfig::default());
        m.set_track(TrackConfig::new(
            Codec::Aac(Bytes::from_static(&[0x11, 0x90])),
            1000,
        ))
        .unwrap();
        for dts in [0, 20, 40, 10, 10, 5_000_000, 60, i64::MIN, i64::MAX, 80] {
            m.push(TrackKind::Audio, sample(dts, true, 1));
        }
        m.finish();
        let mut last_end = 0;
        while let Some(o) = m.poll() {
            if let Output::Fragment(f) = o {
                assert!(f.decode_time >= last_end);
                last_end = f.decode_time + f.duration;
            }
        }
        assert!(last_end < 1000, "{last_end}");
    }
}
