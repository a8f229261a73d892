//! Depacketized RTP media (what a WebRTC stack hands out for WHIP ingest) to
//! CMAF through [`crate::remux::cmaf::Muxer`].
//!
//! The WebRTC stack (in the relay) reassembles RTP packets into whole
//! frames: H.264 access units in Annex-B form (single NAL, STAP-A and FU-A
//! already undone), VP9 frames (a superframe as it came) or AV1 temporal
//! units (OBUs with their sizes) on the 90 kHz RTP clock, and Opus packets
//! on the 48 kHz clock, all extended to 64 bits. This module takes the
//! parameter sets in band into an `avcC` (a new init segment when they
//! change, through the same helper as MPEG-TS), a VP9 key frame's header
//! into a `vpcC` (see [`crate::remux::vp9`]) or an AV1 sequence header
//! into an `av1C` (see [`crate::remux::av1`]), with the display size (a
//! new init when either changes), writes Opus as an `Opus` sample entry with a
//! `dOps`, and uses the RTP clocks themselves as decode times: continuous,
//! and without RTCP sender reports (OBS sends none). Each track's RTP clock
//! starts at a random value, so a track is placed on the common timeline by
//! the arrival time of its first frame (which the caller passes in, sans-IO)
//! and follows its own RTP clock from there: as close as RTP without sender
//! reports gets to lip sync.

use crate::remux::av1::{self, Av1Config};
use crate::remux::cmaf::{Codec, Muxer, MuxerConfig, Output, Sample, TrackConfig, TrackKind};
use crate::remux::nal::ParamSets;
use crate::remux::vp9::{self, Vp9Config};
use bytes::Bytes;

/// The RTP clock of video in WebRTC (and of the video track made from it).
pub const VIDEO_CLOCK: u32 = 90_000;
/// The RTP clock of Opus (and the timescale of its track).
pub const OPUS_CLOCK: u32 = 48_000;

/// Depacketized RTP frames in, CMAF out.
#[derive(Debug)]
pub struct RtpRemuxer {
    muxer: Muxer,
    params: ParamSets,
    /// The VP9 stream's configuration, from its last key frame.
    vp9: Option<Vp9Config>,
    /// The AV1 stream's configuration, from its last sequence header.
    av1: Option<Av1Config>,
    opus: bool,
    /// A video keyframe went into the muxer since the start or the last loss.
    have_keyframe: bool,
    /// Arrival (µs, the caller's clock) of the last video keyframe taken.
    last_keyframe_us: Option<u64>,
    /// Per track: (first RTP time, the timeline time it maps to), in track ticks.
    video_base: Option<(i64, i64)>,
    audio_base: Option<(i64, i64)>,
}

/// A track time: the first frame's arrival (µs, the caller's clock) plus
/// RTP ticks since that frame.
fn place(base: &mut Option<(i64, i64)>, rtp: i64, arrival_us: u64, clock: u32) -> i64 {
    let (first, at) = *base.get_or_insert_with(|| {
        let at = i128::from(arrival_us) * i128::from(clock) / 1_000_000;
        (rtp, i64::try_from(at).unwrap_or(i64::MAX))
    });
    at.saturating_add(rtp.saturating_sub(first))
}

impl RtpRemuxer {
    /// A remuxer with the given fragmenting policy; `video` and `audio` say
    /// which tracks the session negotiated (the first fragment waits, boundedly,
    /// for both).
    pub fn new(config: MuxerConfig, video: bool, audio: bool) -> Self {
        let mut muxer = Muxer::new(config);
        muxer.expect(video, audio);
        RtpRemuxer {
            muxer,
            params: ParamSets::default(),
            vp9: None,
            av1: None,
            opus: false,
            have_keyframe: false,
            last_keyframe_us: None,
            video_base: None,
            audio_base: None,
        }
    }

    /// True while the video track waits for a keyframe (at the start, and
    /// after [`lost`](Self::lost)): the caller asks the sender for one (PLI).
    pub fn needs_keyframe(&self) -> bool {
        !self.have_keyframe
    }

    /// True when the video track waits for a keyframe, or its last one
    /// arrived more than `interval_us` before `now_us` (the caller's clock,
    /// as the arrivals): WebRTC encoders send keyframes only when asked, so
    /// the caller asks at this interval to keep groups bounded (a viewer's
    /// join point, an HLS segment, the ring's window are all whole groups).
    pub fn wants_keyframe(&self, now_us: u64, interval_us: u64) -> bool {
        !self.have_keyframe
            || self
                .last_keyframe_us
                .is_some_and(|at| now_us.saturating_sub(at) > interval_us)
    }

    /// Packets were lost before the next frame: what follows is not
    /// decodable until a keyframe, so video frames are dropped until one comes.
    pub fn lost(&mut self) {
        self.have_keyframe = false;
    }

    /// One H.264 access unit (Annex B) with RTP time `time` (90 kHz ticks,
    /// extended) that arrived at `arrival_us` (µs on the caller's clock, any
    /// origin). Returns true when it went into the muxer (false: waiting for
    /// a keyframe, or only parameter sets).
    pub fn push_h264(&mut self, time: i64, arrival_us: u64, annexb: &[u8]) -> bool {
        let Some((sample, keyframe)) =
            self.params
                .access_unit(false, annexb, &mut self.muxer, VIDEO_CLOCK)
        else {
            return false;
        };
        self.push_video(time, arrival_us, sample, keyframe)
    }

    /// One VP9 frame (or superframe, kept whole as the sample) with RTP
    /// time `time` (90 kHz ticks, extended) that arrived at `arrival_us`.
    /// A key frame's header sets the track (`vpcC`, size); a change of
    /// either makes a new init segment. Returns true when it went into the
    /// muxer (false: not VP9, or waiting for a key frame).
    pub fn push_vp9(&mut self, time: i64, arrival_us: u64, frame: Bytes) -> bool {
        let Some(info) = vp9::inspect(&frame) else {
            return false;
        };
        if let Some(config) = info.config
            && self.vp9 != Some(config)
        {
            let mut cfg = TrackConfig::new(Codec::Vp9(config.vpcc()), VIDEO_CLOCK);
            (cfg.width, cfg.height) = (config.width, config.height);
            if self.muxer.set_track(cfg).is_err() {
                return false;
            }
            self.vp9 = Some(config);
        }
        if self.vp9.is_none() {
            return false;
        }
        self.push_video(time, arrival_us, frame, info.keyframe)
    }

    /// One AV1 temporal unit (low-overhead OBUs with sizes, as str0m
    /// depacketizes them) with RTP time `time` (90 kHz ticks, extended)
    /// that arrived at `arrival_us`. A sequence header sets the track
    /// (`av1C` with it, size); a change makes a new init segment. Returns
    /// true when it went into the muxer (false: not AV1, no sequence header
    /// yet, or waiting for a key frame).
    pub fn push_av1(&mut self, time: i64, arrival_us: u64, tu: &[u8]) -> bool {
        let reduced = self
            .av1
            .as_ref()
            .is_some_and(|c| c.reduced_still_picture_header);
        let Some(unit) = av1::inspect(tu, reduced) else {
            return false;
        };
        if let Some(config) = unit.config
            && self.av1.as_ref() != Some(&config)
        {
            let mut cfg = TrackConfig::new(Codec::Av1(config.av1c()), VIDEO_CLOCK);
            (cfg.width, cfg.height) = (config.width, config.height);
            if self.muxer.set_track(cfg).is_err() {
                return false;
            }
            self.av1 = Some(config);
        }
        if self.av1.is_none() {
            return false;
        }
        self.push_video(time, arrival_us, unit.sample, unit.keyframe)
    }

    /// A video sample into the muxer, or dropped while waiting for a keyframe.
    fn push_video(&mut self, time: i64, arrival_us: u64, data: Bytes, keyframe: bool) -> bool {
        if keyframe {
            self.have_keyframe = true;
            self.last_keyframe_us = Some(arrival_us);
        } else if !self.have_keyframe {
            return false;
        }
        let dts = place(&mut self.video_base, time, arrival_us, VIDEO_CLOCK);
        self.muxer.push(
            TrackKind::Video,
            Sample {
                dts,
                // WebRTC H.264 has no B-frames, VP9 no reordering out of a
                // (super)frame, AV1 none out of a temporal unit: decode
                // order is display order.
                cts_offset: 0,
                keyframe,
                data,
            },
        )
    }

    /// One Opus packet with RTP time `time` (48 kHz ticks, extended) that
    /// arrived at `arrival_us` (as for [`push_h264`](Self::push_h264)).
    pub fn push_opus(&mut self, time: i64, arrival_us: u64, packet: Bytes) -> bool {
        if packet.is_empty() {
            return false;
        }
        if !self.opus {
            let mut cfg = TrackConfig::new(Codec::Opus(opus_dops(2)), OPUS_CLOCK);
            cfg.frame_duration = opus_samples(packet[0]);
            if self.muxer.set_track(cfg).is_err() {
                return false;
            }
            self.opus = true;
        }
        let dts = place(&mut self.audio_base, time, arrival_us, OPUS_CLOCK);
        self.muxer
            .push(TrackKind::Audio, Sample::audio(dts, packet))
    }

    /// Ends the stream: the held-back samples go out in a last fragment.
    pub fn finish(&mut self) {
        self.muxer.finish();
    }

    /// The next init segment or fragment.
    pub fn poll(&mut self) -> Option<Output> {
        self.muxer.poll()
    }
}

/// A `dOps` body for WebRTC Opus: `channels` output channels (WebRTC
/// always negotiates `opus/48000/2`; a mono stream decodes to both), no
/// pre-skip (RTP carries none), 48 kHz, no gain, mapping family 0.
fn opus_dops(channels: u8) -> Bytes {
    let mut b = vec![0u8, channels];
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&48_000u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.push(0);
    Bytes::from(b)
}

/// Samples (48 kHz) in one frame of an Opus packet, from its TOC byte
/// (RFC 6716 §3.1), for the muxer's timestamp snapping.
fn opus_samples(toc: u8) -> u32 {
    let config = toc >> 3;
    let per_frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)], // SILK 10/20/40/60 ms
        12..=15 => [480, 960][usize::from(config % 2)],            // hybrid 10/20 ms
        _ => [120, 240, 480, 960][usize::from(config % 4)],        // CELT 2.5/5/10/20 ms
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => return 0, // code 3: the count is in the next byte; no snapping
    };
    per_frame * frames
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the relay does with the output: the splitter, as for fMP4
    /// ingest. The init segments' codecs and the number of fragments.
    fn split(r: &mut RtpRemuxer) -> (Vec<String>, usize) {
        let mut splitter = crate::Splitter::default();
        while let Some(o) = r.poll() {
            splitter.push(o.bytes());
        }
        let (mut codecs, mut fragments) = (Vec::new(), 0);
        while let Some(item) = splitter.next_item().expect("the splitter takes it") {
            match item {
                crate::Item::Init(i) => codecs.push(i.codecs.clone()),
                crate::Item::Fragment(_) => fragments += 1,
            }
        }
        (codecs, fragments)
    }

    /// x264 High@3.1 640x360 SPS (as in `nal`'s test) and a PPS.
    const SPS: &[u8] = b"\x67\x64\x00\x1f\xac\xd9\x40\xa0\x2f\xf9\x70\x11\x00\x00\x03\x00\x01\x00\x00\x03\x00\x3c\x0f\x18\x31\x96\x00";
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

    fn annexb(units: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for u in units {
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(u);
        }
        v
    }

    #[test]
    fn opus_toc_durations() {
        assert_eq!(opus_samples(0xf8), 960); // CELT FB 20 ms, one frame
        assert_eq!(opus_samples(0x78), 960); // hybrid FB 20 ms (config 15)
        assert_eq!(opus_samples(0xf9), 1920); // two frames
        assert_eq!(opus_samples(0xfb), 0);
    }

    #[test]
    fn waits_for_keyframe_then_muxes_both_tracks() {
        let mut r = RtpRemuxer::new(MuxerConfig::default(), true, true);
        let idr: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x10];
        let p: &[u8] = &[0x41, 0x9a, 0x02, 0x03];
        assert!(r.needs_keyframe());
        // Random RTP bases, as WebRTC senders pick them; audio starts 20 ms later.
        let (v0, a0) = (3_000_000_000i64, 17i64);
        assert!(!r.push_h264(v0 - 3000, 0, &annexb(&[p])), "no SPS/PPS yet");
        assert!(r.push_h264(v0, 1_000, &annexb(&[SPS, PPS, idr])));
        assert!(!r.needs_keyframe());
        for i in 1..40i64 {
            let at = 1_000 + i as u64 * 33_333;
            assert!(r.push_h264(v0 + i * 3000, at, &annexb(&[p])));
            let opus = Bytes::from_static(&[0xf8, 0xff, 0xfe]);
            assert!(r.push_opus(a0 + (i - 1) * 960, 21_000 + at, opus));
        }
        r.lost();
        assert!(
            !r.push_h264(v0 + 40 * 3000, 2_000_000, &annexb(&[p])),
            "dropped after loss"
        );
        r.finish();
        let mut init = None;
        let mut frags = 0;
        let mut audio_tfdt = None;
        while let Some(o) = r.poll() {
            match o {
                Output::Init(i) => init = Some(i),
                Output::Fragment(f) => {
                    if frags == 0 {
                        audio_tfdt = first_audio_tfdt(&f.bytes);
                    }
                    frags += 1;
                    // At most 100 ms of video (3000 ticks a frame, 90 kHz).
                    assert!(f.duration <= 9000, "fragment of {} ticks", f.duration);
                }
            }
        }
        let init = init.expect("an init segment");
        assert_eq!(init.tracks.len(), 2, "video and audio: {:?}", init.tracks);
        let moov = &init.bytes[..];
        assert!(moov.windows(4).any(|w| w == b"avcC"));
        assert!(moov.windows(4).any(|w| w == b"dOps"));
        assert!(frags >= 10, "{frags} fragments");
        // Audio arrived 54.3 ms after video (2608 ticks at 48 kHz): placed
        // there, not at its RTP base.
        let t = audio_tfdt.expect("audio in the first fragment");
        assert!((2600..2616).contains(&t), "audio tfdt {t}");
    }

    /// The `tfdt` of the second `traf` (audio) of a `moof`.
    fn first_audio_tfdt(moof: &[u8]) -> Option<u64> {
        let at = moof
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == b"tfdt")
            .nth(1)?
            .0;
        let v = moof.get(at + 8..at + 16)?;
        Some(u64::from_be_bytes(v.try_into().ok()?))
    }

    #[test]
    fn new_parameter_sets_make_a_new_init() {
        let mut r = RtpRemuxer::new(MuxerConfig::default(), true, false);
        let idr: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x10];
        r.push_h264(0, 0, &annexb(&[SPS, PPS, idr]));
        r.push_h264(3000, 33_333, &annexb(&[SPS, PPS, idr]));
        let pps2: &[u8] = &[0x68, 0xee, 0x3c, 0x80];
        r.push_h264(6000, 66_666, &annexb(&[SPS, pps2, idr]));
        r.push_h264(9000, 99_999, &annexb(&[idr]));
        r.finish();
        let inits = std::iter::from_fn(|| r.poll())
            .filter(|o| matches!(o, Output::Init(_)))
            .count();
        assert_eq!(inits, 2);
    }

    #[test]
    fn vp9_waits_for_a_key_frame_and_a_new_size_makes_a_new_init() {
        // Key frame headers (profile 0, BT.601, 320x180 and 640x360) and an inter frame.
        let key = |w: u16, h: u16| {
            let (w, h) = (u32::from(w - 1), u32::from(h - 1));
            // color_space 001, range 0, then 16-bit width-1 and height-1.
            let bits: u64 = (0b0010 << 32) | (u64::from(w) << 16) | u64::from(h);
            let mut v = vec![0x82, 0x49, 0x83, 0x42];
            v.extend_from_slice(&(bits << 4).to_be_bytes()[3..]);
            v.extend_from_slice(&[0x55; 20]);
            Bytes::from(v)
        };
        let inter = Bytes::from_static(&[0x86, 0x00, 0x11, 0x22]);
        let mut r = RtpRemuxer::new(MuxerConfig::default(), true, false);
        assert!(!r.push_vp9(0, 0, inter.clone()), "no key frame yet");
        assert!(
            !r.push_vp9(0, 0, Bytes::from_static(b"\x00junk")),
            "not VP9"
        );
        assert!(r.needs_keyframe());
        assert!(r.push_vp9(3000, 33_333, key(320, 180)));
        for i in 2..10i64 {
            assert!(r.push_vp9(i * 3000, i as u64 * 33_333, inter.clone()));
        }
        r.lost();
        assert!(
            !r.push_vp9(30_000, 333_333, inter.clone()),
            "dropped after loss"
        );
        assert!(r.push_vp9(33_000, 366_666, key(320, 180)), "same config");
        assert!(r.push_vp9(36_000, 400_000, key(640, 360)), "new size");
        assert!(r.push_vp9(39_000, 433_333, inter));
        r.finish();
        // What the relay does with it: the splitter, as for fMP4 ingest.
        let (codecs, fragments) = split(&mut r);
        // BT.601 (matrix 5) is not the short form's BT.709: the long form.
        let want = [
            "vp09.00.11.08.01.02.02.05.00",
            "vp09.00.21.08.01.02.02.05.00",
        ];
        assert_eq!(codecs, want, "one init per configuration");
        assert!(fragments >= 2, "{fragments} fragments");
    }

    #[test]
    fn av1_needs_a_sequence_header_and_a_key_frame() {
        // libaom's 320x180 sequence header, a key frame OBU and an inter one
        // (as in `av1`'s tests), each unit led by a temporal delimiter.
        let seq: &[u8] = &[
            0x0a, 0x0b, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xfe, 0xcc, 0xda, 0xf9, 0x00, 0x40,
        ];
        let key = [
            &[0x12, 0x00][..],
            seq,
            &[0x32, 0x04, 0x10, 0x00, 0x80, 0x20],
        ]
        .concat();
        let inter: &[u8] = &[0x12, 0x00, 0x32, 0x03, 0x30, 0x00, 0x00];
        let mut r = RtpRemuxer::new(MuxerConfig::default(), true, false);
        assert!(!r.push_av1(0, 0, inter), "no sequence header yet");
        assert!(!r.push_av1(0, 0, b"\xff\xff"), "not AV1");
        assert!(r.push_av1(3000, 33_333, &key));
        for i in 2..10i64 {
            assert!(r.push_av1(i * 3000, i as u64 * 33_333, inter));
        }
        r.lost();
        assert!(!r.push_av1(30_000, 333_333, inter), "dropped after loss");
        assert!(r.push_av1(33_000, 366_666, &key), "same sequence header");
        r.finish();
        let (codecs, fragments) = split(&mut r);
        assert_eq!(codecs, ["av01.0.00M.08"], "one init");
        assert!(fragments >= 2, "{fragments} fragments");
    }
}
