//! VP9 frames as WebRTC delivers them (RTP depacketized: one frame or one
//! superframe per picture) to what the CMAF muxer needs: whether a sample is
//! a keyframe, and the `vpcC` record (VP Codec ISO Media File Format
//! Binding §2.3) with the display size, from the uncompressed header of a
//! keyframe (VP9 Bitstream Specification v0.6 §6.2).
//!
//! Sans-IO and total: any byte string is either understood or refused
//! (`None`), never a panic.

use super::nal::Bits;
use bytes::Bytes;

/// What a VP9 keyframe says about its stream: the `vpcC` fields and the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp9Config {
    /// 0..=3.
    pub profile: u8,
    /// 8, 10 or 12.
    pub bit_depth: u8,
    /// The bitstream's `color_space` (0 unknown, 1 BT.601, 2 BT.709,
    /// 3 SMPTE 170, 4 SMPTE 240, 5 BT.2020, 6 reserved, 7 sRGB).
    pub color_space: u8,
    pub full_range: bool,
    pub subsampling_x: bool,
    pub subsampling_y: bool,
    pub width: u16,
    pub height: u16,
}

/// What one (super)frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp9Info {
    /// The first frame is a key frame (a sync sample).
    pub keyframe: bool,
    /// The stream configuration, from the first key frame in it.
    pub config: Option<Vp9Config>,
}

/// Inspect one sample: a VP9 frame or a superframe (Annex B: frames and a
/// trailing index). `None` when it is not VP9 (no frame marker, a broken
/// superframe index, a key frame without its sync code).
pub fn inspect(data: &[u8]) -> Option<Vp9Info> {
    let mut info = Vp9Info {
        keyframe: false,
        config: None,
    };
    for (i, frame) in frames(data)?.into_iter().enumerate() {
        let h = header(frame)?;
        if i == 0 {
            info.keyframe = h.keyframe;
        }
        if info.config.is_none() {
            info.config = h.config;
        }
    }
    Some(info)
}

/// The frames of a superframe, or the one frame. Up to 8 frames (Annex B).
fn frames(data: &[u8]) -> Option<Vec<&[u8]>> {
    let last = *data.last()?;
    if last & 0xe0 != 0xc0 {
        return Some(vec![data]);
    }
    let count = usize::from(last & 7) + 1;
    let mag = usize::from((last >> 3) & 3) + 1;
    let index_len = 2 + mag * count;
    if data.len() < index_len || data[data.len() - index_len] != last {
        // Not an index after all: the last byte of a plain frame.
        return Some(vec![data]);
    }
    let index = &data[data.len() - index_len + 1..data.len() - 1];
    let body = &data[..data.len() - index_len];
    let mut out = Vec::with_capacity(count);
    let mut at = 0usize;
    for size in index.chunks_exact(mag) {
        let size = size
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let end = at.checked_add(size)?;
        out.push(body.get(at..end)?);
        at = end;
    }
    (at == body.len()).then_some(out)
}

struct Header {
    keyframe: bool,
    config: Option<Vp9Config>,
}

/// The start of `uncompressed_header()` (§6.2): frame type, and for a key
/// frame `color_config()` and `frame_size()`.
fn header(frame: &[u8]) -> Option<Header> {
    let mut r = Bits::new(frame);
    if r.bits(2)? != 2 {
        return None; // frame_marker
    }
    let low = r.bits(1)?;
    let high = r.bits(1)?;
    let profile = (high << 1 | low) as u8;
    if profile == 3 && r.flag()? {
        return None; // reserved_zero
    }
    if r.flag()? {
        // show_existing_frame: shows a decoded frame again, codes nothing.
        return Some(Header {
            keyframe: false,
            config: None,
        });
    }
    let non_key = r.flag()?;
    let _show_frame = r.flag()?;
    let _error_resilient = r.flag()?;
    if non_key {
        return Some(Header {
            keyframe: false,
            config: None,
        });
    }
    if r.bits(24)? != 0x49_83_42 {
        return None; // frame_sync_code
    }
    let bit_depth = if profile >= 2 {
        if r.flag()? { 12 } else { 10 }
    } else {
        8
    };
    let color_space = r.bits(3)? as u8;
    let (full_range, subsampling_x, subsampling_y);
    if color_space != 7 {
        full_range = r.flag()?;
        if profile == 1 || profile == 3 {
            subsampling_x = r.flag()?;
            subsampling_y = r.flag()?;
            r.flag()?; // reserved_zero
        } else {
            (subsampling_x, subsampling_y) = (true, true);
        }
    } else {
        full_range = true;
        (subsampling_x, subsampling_y) = (false, false);
        if profile == 1 || profile == 3 {
            r.flag()?; // reserved_zero
        } else {
            return None; // RGB needs 4:4:4, profile 1 or 3
        }
    }
    let width = r.bits(16)? + 1;
    let height = r.bits(16)? + 1;
    Some(Header {
        keyframe: true,
        config: Some(Vp9Config {
            profile,
            bit_depth,
            color_space,
            full_range,
            subsampling_x,
            subsampling_y,
            width: u16::try_from(width).unwrap_or(u16::MAX),
            height: u16::try_from(height).unwrap_or(u16::MAX),
        }),
    })
}

impl Vp9Config {
    /// The `VPCodecConfigurationRecord` (the `vpcC` body after its
    /// version/flags): profile, level, bitDepth, chromaSubsampling,
    /// videoFullRangeFlag, colour primaries, transfer, matrix, no
    /// initialization data.
    ///
    /// VP9 carries only a matrix (`color_space`) in band: primaries and
    /// transfer are "unspecified" (2), as are the matrix of `CS_UNKNOWN`
    /// and the reserved value. 4:2:0 is written as "co-located with luma"
    /// (1), what ffmpeg writes for libvpx's output (the bitstream has no
    /// chroma siting).
    pub fn vpcc(&self) -> Bytes {
        let chroma = match (self.subsampling_x, self.subsampling_y) {
            (true, true) => 1,   // 4:2:0
            (true, false) => 2,  // 4:2:2
            (false, false) => 3, // 4:4:4
            (false, true) => 1,  // 4:4:0 has no code: nearest is 4:2:0
        };
        // ISO/IEC 23091-2 MatrixCoefficients.
        let matrix = match self.color_space {
            1 => 5, // BT.601 (BT.470 BG)
            2 => 1, // BT.709
            3 => 6, // SMPTE 170M
            4 => 7, // SMPTE 240M
            5 => 9, // BT.2020 non-constant luminance
            7 => 0, // RGB (identity)
            _ => 2, // unspecified
        };
        let mut b = Vec::with_capacity(8);
        b.push(self.profile);
        b.push(self.level());
        b.push(self.bit_depth << 4 | chroma << 1 | u8::from(self.full_range));
        b.extend_from_slice(&[2, 2, matrix]);
        b.extend_from_slice(&0u16.to_be_bytes());
        Bytes::from(b)
    }

    /// The lowest VP9 level (Annex A) whose picture size and luma sample
    /// rate fit the picture at 30 frames a second: the frame rate is not in
    /// the bitstream, and the level only informs players (the codecs
    /// string), it changes nothing in decoding.
    pub fn level(&self) -> u8 {
        // (level, max luma picture size, max luma sample rate).
        const LEVELS: &[(u8, u64, u64)] = &[
            (10, 36_864, 829_440),
            (11, 73_728, 2_764_800),
            (20, 122_880, 4_608_000),
            (21, 245_760, 9_216_000),
            (30, 552_960, 20_736_000),
            (31, 983_040, 36_864_000),
            (40, 2_228_224, 83_558_400),
            (41, 2_228_224, 160_432_128),
            (50, 8_912_896, 311_951_360),
            (51, 8_912_896, 588_251_136),
            (52, 8_912_896, 1_176_502_272),
            (60, 35_651_584, 1_176_502_272),
            (61, 35_651_584, 2_353_004_544),
            (62, 35_651_584, 4_706_009_088),
        ];
        let size = u64::from(self.width) * u64::from(self.height);
        LEVELS
            .iter()
            .find(|&&(_, max_size, max_rate)| size <= max_size && size * 30 <= max_rate)
            .map_or(62, |l| l.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes of a libvpx profile-0 key frame, 320x180: marker,
    /// profile 0, key frame, shown; sync code; BT.601, limited range;
    /// 319 x 179.
    const KEY_320X180: &[u8] = &[0x82, 0x49, 0x83, 0x42, 0x20, 0x13, 0xf0, 0x0b, 0x30, 0x00];

    /// A profile-2 (10-bit) key frame header, 1920x1080, BT.2020, full range.
    fn key_profile2() -> Vec<u8> {
        // 10 | low 0 | high 1 | show_existing 0 | frame_type 0 | show 1 | er 0
        let mut bits = String::from("10010010");
        bits += "010010011000001101000010"; // sync code
        bits += "0"; // ten (not twelve) bit
        bits += "101"; // BT.2020
        bits += "1"; // full range
        bits += &format!("{:016b}{:016b}", 1919, 1079);
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        bits.as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap_or("0"), 2).unwrap_or(0))
            .collect()
    }

    #[test]
    fn key_frame_config_and_vpcc() {
        let info = inspect(KEY_320X180).expect("VP9");
        assert!(info.keyframe);
        let c = info.config.expect("config");
        assert_eq!((c.profile, c.bit_depth, c.color_space), (0, 8, 1));
        assert_eq!((c.width, c.height), (320, 180));
        assert!(!c.full_range && c.subsampling_x && c.subsampling_y);
        assert_eq!(c.level(), 11);
        assert_eq!(&c.vpcc()[..], &[0, 11, 0x82, 2, 2, 5, 0, 0]);

        let c = inspect(&key_profile2())
            .and_then(|i| i.config)
            .expect("profile 2 config");
        assert_eq!((c.profile, c.bit_depth, c.color_space), (2, 10, 5));
        assert_eq!((c.width, c.height, c.full_range), (1920, 1080, true));
        assert_eq!(c.level(), 40);
        assert_eq!(&c.vpcc()[..], &[2, 40, 0xa3, 2, 2, 9, 0, 0]);
    }

    #[test]
    fn inter_frames_superframes_and_garbage() {
        // Profile 0 inter frame: 10 0 0 0 1 1 0.
        let inter = [0x86, 0x00, 0x11];
        assert_eq!(
            inspect(&inter),
            Some(Vp9Info {
                keyframe: false,
                config: None
            })
        );
        // show_existing_frame.
        assert_eq!(inspect(&[0x88]).map(|i| i.keyframe), Some(false));
        // A superframe: the key frame, then a hidden inter frame; index
        // with 1-byte sizes (marker 0b110_00_001).
        let mut sf = KEY_320X180.to_vec();
        sf.extend_from_slice(&inter);
        sf.extend_from_slice(&[0xc1, KEY_320X180.len() as u8, inter.len() as u8, 0xc1]);
        let info = inspect(&sf).expect("superframe");
        assert!(info.keyframe);
        assert_eq!(info.config.map(|c| c.width), Some(320));
        // Inter first, key second: not a sync sample, but the config is read.
        let mut sf2 = inter.to_vec();
        sf2.extend_from_slice(KEY_320X180);
        sf2.extend_from_slice(&[0xc1, inter.len() as u8, KEY_320X180.len() as u8, 0xc1]);
        let info = inspect(&sf2).expect("superframe");
        assert!(!info.keyframe && info.config.is_some());
        // Index sizes that overrun the data.
        let bad = [0x86, 0x00, 0xc1, 0x40, 0x40, 0xc1];
        assert_eq!(inspect(&bad), None);

        assert_eq!(inspect(&[]), None);
        assert_eq!(inspect(&[0x00, 0x01]), None, "no frame marker");
        assert_eq!(inspect(&[0x82, 0x49, 0x83, 0x43]), None, "bad sync code");
        assert_eq!(inspect(&KEY_320X180[..6]), None, "truncated");
        // Every prefix of every test input: no panic.
        for input in [KEY_320X180.to_vec(), key_profile2(), sf, sf2] {
            for n in 0..=input.len() {
                let _ = inspect(&input[..n]);
            }
        }
    }
}
