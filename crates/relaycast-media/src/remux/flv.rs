//! FLV tag bodies (what an RTMP server hands out per audio/video message) to
//! CMAF through [`crate::remux::cmaf::Muxer`]: legacy AVC/HEVC(codec id 12)/AAC/MP3
//! and Enhanced RTMP v1/v2 (`ExVideoTagHeader` with FourCC `avc1`, `hvc1`,
//! `av01`, `vp09`; `ExAudioTagHeader` with `Opus`, `mp4a`, `.mp3`).
//!
//! Why hand-written: `scuffle-flv` parses the same headers but pulls in its
//! AMF0/H.264/H.265/AV1 crates, allocates parsed structs per tag and gives no
//! CMAF output; the tag headers are a few bytes, and the relay needs only
//! "which codec, which configuration record, which frame with which times".
//! The input is `(tag type, timestamp ms, body)`, so this does not depend on
//! any RTMP crate. Timestamps are unwrapped from 32-bit milliseconds.

use crate::remux::cmaf::{
    Codec, MuxError, Muxer, MuxerConfig, Output, Sample, TrackConfig, TrackKind,
};
use bytes::Bytes;

/// FLV tag type of an audio tag.
pub const TAG_AUDIO: u8 = 8;
/// FLV tag type of a video tag.
pub const TAG_VIDEO: u8 = 9;
/// FLV tag type of a script data (AMF0 metadata) tag.
pub const TAG_SCRIPT: u8 = 18;

/// Timescale of video tracks made from FLV (milliseconds × 90).
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Why a tag was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FlvError {
    /// The body is shorter than its header says.
    #[error("FLV {0} tag truncated")]
    Truncated(&'static str),
    /// A codec the relay cannot put in CMAF.
    #[error("unsupported FLV {kind} codec {codec}")]
    UnsupportedCodec {
        /// "audio" or "video"
        kind: &'static str,
        /// codec id or FourCC, as text
        codec: String,
    },
    /// A sequence header the muxer could not use.
    #[error(transparent)]
    Config(#[from] MuxError),
}

/// What one video tag body says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VideoTag {
    /// A decoder configuration (AVC sequence header / `SequenceStart`).
    Config(Codec),
    /// A coded frame.
    Frame {
        /// Key frame (frame type 1).
        keyframe: bool,
        /// Composition time offset in ms (0 for `CodedFramesX`, AV1, VP9).
        cts_ms: i32,
        /// The frame in MP4 sample form.
        data: Bytes,
    },
    /// End of sequence, metadata, command frames, unknown packet types: nothing to mux.
    Ignored,
}

/// What one audio tag body says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudioTag {
    /// A decoder configuration (AAC sequence header, Opus `OpusHead`, or the
    /// format of the first MP3 frame).
    Config(Codec),
    /// A coded frame.
    Frame(Bytes),
    /// Nothing to mux.
    Ignored,
}

fn si24(b: &[u8]) -> i32 {
    (i32::from(b[0]) << 24 | i32::from(b[1]) << 16 | i32::from(b[2]) << 8) >> 8
}

/// The FourCC of an Enhanced RTMP tag header (bytes 1..5 of a `what` tag).
fn fourcc(body: &Bytes, what: &'static str) -> Result<[u8; 4], FlvError> {
    body.get(1..5)
        .and_then(|f| f.try_into().ok())
        .ok_or(FlvError::Truncated(what))
}

/// Parses a video tag body (legacy or Enhanced RTMP).
pub fn parse_video(body: &Bytes) -> Result<VideoTag, FlvError> {
    let short = || FlvError::Truncated("video");
    let first = *body.first().ok_or_else(short)?;
    if first & 0x80 != 0 {
        // ExVideoTagHeader: IsExHeader | FrameType(3) | PacketType(4), FourCC.
        let frame_type = (first >> 4) & 7;
        let packet_type = first & 0x0f;
        let fourcc = fourcc(body, "video")?;
        if frame_type == 5 || matches!(packet_type, 2 | 4) {
            return Ok(VideoTag::Ignored); // command frame, SequenceEnd, Metadata
        }
        if packet_type > 4 {
            // MPEG2TSSequenceStart, Multitrack, ModEx: not produced by the encoders we target.
            return Ok(VideoTag::Ignored);
        }
        let payload_at = if packet_type == 1 && matches!(&fourcc, b"avc1" | b"hvc1") {
            8
        } else {
            5
        };
        let payload = body
            .get(payload_at..)
            .map(|_| body.slice(payload_at..))
            .ok_or_else(short)?;
        if packet_type == 0 {
            let codec = match &fourcc {
                b"avc1" => Codec::H264(payload),
                b"hvc1" => Codec::H265(payload),
                b"av01" => Codec::Av1(payload),
                b"vp09" => Codec::Vp9(payload),
                other => return Err(unsupported_video(&String::from_utf8_lossy(other))),
            };
            return Ok(VideoTag::Config(codec));
        }
        if !matches!(&fourcc, b"avc1" | b"hvc1" | b"av01" | b"vp09") {
            return Err(unsupported_video(&String::from_utf8_lossy(&fourcc)));
        }
        let cts_ms = if payload_at == 8 {
            si24(&body[5..8])
        } else {
            0
        };
        return Ok(VideoTag::Frame {
            keyframe: frame_type == 1,
            cts_ms,
            data: payload,
        });
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0f;
    if codec_id != 7 && codec_id != 12 {
        return Err(unsupported_video(&format!("id {codec_id}")));
    }
    if frame_type == 5 {
        return Ok(VideoTag::Ignored);
    }
    let head = body.get(1..5).ok_or_else(short)?;
    let payload = body.slice(5..);
    match head[0] {
        0 => Ok(VideoTag::Config(if codec_id == 7 {
            Codec::H264(payload)
        } else {
            Codec::H265(payload)
        })),
        1 => Ok(VideoTag::Frame {
            keyframe: frame_type == 1,
            cts_ms: si24(&head[1..4]),
            data: payload,
        }),
        _ => Ok(VideoTag::Ignored),
    }
}

fn unsupported_video(codec: &str) -> FlvError {
    FlvError::UnsupportedCodec {
        kind: "video",
        codec: codec.to_string(),
    }
}

fn unsupported_audio(codec: &str) -> FlvError {
    FlvError::UnsupportedCodec {
        kind: "audio",
        codec: codec.to_string(),
    }
}

/// Parses an audio tag body (legacy or Enhanced RTMP).
pub fn parse_audio(body: &Bytes) -> Result<AudioTag, FlvError> {
    let short = || FlvError::Truncated("audio");
    let first = *body.first().ok_or_else(short)?;
    let format = first >> 4;
    match format {
        10 => match body.get(1).ok_or_else(short)? {
            0 => Ok(AudioTag::Config(Codec::Aac(body.slice(2..)))),
            1 => Ok(AudioTag::Frame(body.slice(2..))),
            _ => Ok(AudioTag::Ignored),
        },
        2 => Ok(AudioTag::Frame(body.slice(1..))),
        9 => {
            // ExAudioTagHeader: SoundFormat 9 | AudioPacketType(4), FourCC.
            let packet_type = first & 0x0f;
            let fourcc = fourcc(body, "audio")?;
            let payload = body.slice(5..);
            match (packet_type, &fourcc) {
                (0, b"Opus") => Ok(AudioTag::Config(Codec::Opus(payload))),
                (0, b"mp4a") => Ok(AudioTag::Config(Codec::Aac(payload))),
                (0, b".mp3") => Ok(AudioTag::Ignored),
                (1, b"Opus" | b"mp4a" | b".mp3") => Ok(AudioTag::Frame(payload)),
                (0 | 1, other) => Err(unsupported_audio(&String::from_utf8_lossy(other))),
                _ => Ok(AudioTag::Ignored),
            }
        }
        other => Err(unsupported_audio(&format!("SoundFormat {other}"))),
    }
}

/// Sampling rate, channels and samples per frame of an MPEG audio (MP3) frame header.
pub(crate) fn mp3_header(b: &[u8]) -> Option<(u32, u16, u32)> {
    let h = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    if h >> 21 != 0x7ff {
        return None;
    }
    let version = (h >> 19) & 3; // 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
    let rate_idx = (h >> 10) & 3;
    let base = [44100, 48000, 32000].get(rate_idx as usize).copied()?;
    let (rate, samples) = match version {
        3 => (base, 1152),
        2 => (base / 2, 576),
        0 => (base / 4, 576),
        _ => return None,
    };
    let channels = if (h >> 6) & 3 == 3 { 1 } else { 2 };
    Some((rate, channels, samples))
}

/// Extends 32-bit millisecond timestamps to 64 bits: a step is read as the
/// signed 32-bit difference, so wrap-around (every 49.7 days) continues and a
/// small backward step stays a small backward step (the muxer clamps it).
#[derive(Clone, Copy, Debug, Default)]
struct Unwrap {
    last: Option<(u32, i64)>,
}

impl Unwrap {
    fn next(&mut self, ms: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(ms),
            Some((raw, ext)) => ext + i64::from(ms.wrapping_sub(raw) as i32),
        };
        self.last = Some((ms, ext));
        ext
    }
}

/// FLV tags in, CMAF out.
#[derive(Debug)]
pub struct FlvRemuxer {
    muxer: Muxer,
    video_ts: Unwrap,
    audio_ts: Unwrap,
    /// Audio track timescale (the sampling rate).
    audio_rate: u32,
    /// An MP3 track is configured from its first frame.
    mp3: bool,
}

impl FlvRemuxer {
    /// A remuxer with the given fragmenting policy.
    pub fn new(config: MuxerConfig) -> Self {
        FlvRemuxer {
            muxer: Muxer::new(config),
            video_ts: Unwrap::default(),
            audio_ts: Unwrap::default(),
            audio_rate: 0,
            mp3: false,
        }
    }

    /// The muxer, e.g. to [`Muxer::expect`] the tracks an FLV header or
    /// `onMetaData` announces.
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Feeds one tag. Script tags are ignored (metadata is the caller's business).
    pub fn push_tag(
        &mut self,
        tag_type: u8,
        timestamp_ms: u32,
        body: Bytes,
    ) -> Result<(), FlvError> {
        match tag_type {
            TAG_VIDEO => self.push_video(timestamp_ms, &body),
            TAG_AUDIO => self.push_audio(timestamp_ms, &body),
            _ => Ok(()),
        }
    }

    fn push_video(&mut self, ms: u32, body: &Bytes) -> Result<(), FlvError> {
        match parse_video(body)? {
            VideoTag::Config(codec) => {
                self.muxer
                    .set_track(TrackConfig::new(codec, VIDEO_TIMESCALE))?;
            }
            VideoTag::Frame {
                keyframe,
                cts_ms,
                data,
            } => {
                let dts = self.video_ts.next(ms) * 90;
                self.muxer.push(
                    TrackKind::Video,
                    Sample {
                        dts,
                        cts_offset: cts_ms.saturating_mul(90),
                        keyframe,
                        data,
                    },
                );
            }
            VideoTag::Ignored => {}
        }
        Ok(())
    }

    fn push_audio(&mut self, ms: u32, body: &Bytes) -> Result<(), FlvError> {
        match parse_audio(body)? {
            AudioTag::Config(codec) => {
                let mut cfg = TrackConfig::new(codec, 48_000);
                match &cfg.codec {
                    Codec::Aac(asc) => {
                        let (rate, _) = crate::remux::cmaf::aac_rate_channels(asc)
                            .ok_or(FlvError::Truncated("AAC sequence header"))?;
                        cfg.timescale = rate.max(1);
                        cfg.frame_duration = 1024;
                    }
                    _ => cfg.timescale = 48_000, // Opus
                }
                self.audio_rate = cfg.timescale;
                self.mp3 = false;
                self.muxer.set_track(cfg)?;
            }
            AudioTag::Frame(data) => {
                let is_mp3 =
                    body.first().is_some_and(|b| b >> 4 == 2) || body.get(1..5) == Some(b".mp3");
                if is_mp3 && (!self.mp3 || !self.muxer.has_track(TrackKind::Audio)) {
                    let Some((rate, channels, samples)) = mp3_header(&data) else {
                        return Ok(());
                    };
                    let mut cfg = TrackConfig::new(
                        Codec::Mp3 {
                            sample_rate: rate,
                            channels,
                        },
                        rate,
                    );
                    cfg.frame_duration = samples;
                    self.muxer.set_track(cfg)?;
                    self.audio_rate = rate;
                    self.mp3 = true;
                }
                if self.audio_rate == 0 {
                    return Ok(());
                }
                let ms = self.audio_ts.next(ms);
                let dts = (i128::from(ms) * i128::from(self.audio_rate) / 1000) as i64;
                self.muxer.push(TrackKind::Audio, Sample::audio(dts, data));
            }
            AudioTag::Ignored => {}
        }
        Ok(())
    }

    /// Ends the stream: emits the held-back samples.
    pub fn finish(&mut self) {
        self.muxer.finish();
    }

    /// The next init segment or fragment.
    pub fn poll(&mut self) -> Option<Output> {
        self.muxer.poll()
    }
}

/// Splits a whole FLV file (9-byte header, then `PreviousTagSize` + tags) into
/// `(tag type, timestamp ms, body)`; stops at the first truncated tag. Also
/// returns the header's (has audio, has video) flags.
pub fn file_tags(file: &Bytes) -> (bool, bool, Vec<(u8, u32, Bytes)>) {
    let mut tags = Vec::new();
    if file.len() < 9 || &file[..3] != b"FLV" {
        return (false, false, tags);
    }
    let flags = file[4];
    let mut pos = u32::from_be_bytes([file[5], file[6], file[7], file[8]]) as usize + 4;
    while let Some(h) = file.get(pos..pos + 11) {
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let ts = (u32::from(h[7]) << 24)
            | (u32::from(h[4]) << 16)
            | (u32::from(h[5]) << 8)
            | u32::from(h[6]);
        let start = pos + 11;
        if file.len() < start + size {
            break;
        }
        tags.push((h[0] & 0x1f, ts, file.slice(start..start + size)));
        pos = start + size + 4;
    }
    (flags & 4 != 0, flags & 1 != 0, tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_wraps_and_steps_back() {
        let mut u = Unwrap::default();
        assert_eq!(u.next(u32::MAX - 10), i64::from(u32::MAX - 10));
        assert_eq!(u.next(5), i64::from(u32::MAX) + 6);
        assert_eq!(u.next(3), i64::from(u32::MAX) + 4);
    }

    #[test]
    fn enhanced_hevc_header() {
        let body = Bytes::from_static(&[0x90, b'h', b'v', b'c', b'1', 1, 2, 3]);
        assert_eq!(
            parse_video(&body),
            Ok(VideoTag::Config(Codec::H265(Bytes::from_static(&[
                1, 2, 3
            ]))))
        );
        let body = Bytes::from_static(&[0x91, b'h', b'v', b'c', b'1', 0, 0, 0x21, 9]);
        assert_eq!(
            parse_video(&body),
            Ok(VideoTag::Frame {
                keyframe: true,
                cts_ms: 0x21,
                data: Bytes::from_static(&[9])
            })
        );
        let body = Bytes::from_static(&[0xa3, b'a', b'v', b'0', b'1', 7]);
        assert_eq!(
            parse_video(&body),
            Ok(VideoTag::Frame {
                keyframe: false,
                cts_ms: 0,
                data: Bytes::from_static(&[7])
            })
        );
    }

    #[test]
    fn legacy_negative_cts() {
        let body = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xfe, 5]);
        assert_eq!(
            parse_video(&body),
            Ok(VideoTag::Frame {
                keyframe: false,
                cts_ms: -2,
                data: Bytes::from_static(&[5])
            })
        );
    }
}
