//! AV1 temporal units as WebRTC delivers them (RTP depacketized into
//! low-overhead OBUs, each with its `obu_size`) to what the CMAF muxer
//! needs (AV1 Codec ISO Media File Format Binding v1.2): the sample (the
//! temporal unit without temporal delimiter, padding and tile list OBUs,
//! §2.4), whether it is a sync sample (its first frame a shown key
//! frame), and the `av1C` record built from the sequence header OBU (AV1
//! Bitstream & Decoding Process Specification §5.5) with the size.
//!
//! Sans-IO and total: any byte string is either understood or refused
//! (`None`), never a panic.

use super::nal::Bits;
use bytes::Bytes;

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_FRAME_HEADER: u8 = 3;
const OBU_FRAME: u8 = 6;
const OBU_TILE_LIST: u8 = 8;
const OBU_PADDING: u8 = 15;

/// What a sequence header says: the `av1C` fields and the largest frame size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Av1Config {
    pub profile: u8,
    pub level: u8,
    pub tier: bool,
    pub high_bitdepth: bool,
    pub twelve_bit: bool,
    pub monochrome: bool,
    pub subsampling_x: bool,
    pub subsampling_y: bool,
    pub chroma_sample_position: u8,
    /// `reduced_still_picture_header`: frame headers are read with it.
    pub reduced_still_picture_header: bool,
    pub width: u16,
    pub height: u16,
    /// The sequence header OBU as it came (with its size field): `av1C`'s configOBUs.
    pub sequence_header: Bytes,
}

/// One temporal unit, inspected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Av1Unit {
    /// The MP4 sample: the OBUs less temporal delimiters, padding and tile lists.
    pub sample: Bytes,
    /// The first frame is a shown key frame.
    pub keyframe: bool,
    /// From the sequence header OBU in it, if any.
    pub config: Option<Av1Config>,
}

/// Inspect one temporal unit: low-overhead OBUs, each with `obu_size` (as
/// str0m writes them). `reduced_still` is the last sequence header's
/// `reduced_still_picture_header` (frame headers depend on it), when this
/// unit has none. `None` when it is not such a stream of OBUs.
pub fn inspect(tu: &[u8], reduced_still: bool) -> Option<Av1Unit> {
    let mut sample = Vec::with_capacity(tu.len());
    let mut config: Option<Av1Config> = None;
    let mut first_frame: Option<bool> = None;
    let mut at = 0;
    while at < tu.len() {
        let start = at;
        let header = tu[at];
        if header & 0x80 != 0 {
            return None; // obu_forbidden_bit
        }
        let kind = (header >> 3) & 0x0f;
        let extension = header & 0x04 != 0;
        if header & 0x02 == 0 {
            return None; // no obu_has_size_field: not the low-overhead format
        }
        at += 1 + usize::from(extension);
        let (size, n) = leb128(tu.get(at..)?)?;
        at += n;
        let payload = tu.get(at..at.checked_add(size)?)?;
        at += size;
        match kind {
            OBU_TEMPORAL_DELIMITER | OBU_PADDING | OBU_TILE_LIST => continue,
            OBU_SEQUENCE_HEADER if config.is_none() => {
                let obu = Bytes::copy_from_slice(&tu[start..at]);
                config = Some(sequence_header(payload, obu)?);
            }
            OBU_FRAME_HEADER | OBU_FRAME if first_frame.is_none() => {
                let reduced = config
                    .as_ref()
                    .map_or(reduced_still, |c| c.reduced_still_picture_header);
                first_frame = Some(shown_key_frame(payload, reduced)?);
            }
            _ => {}
        }
        sample.extend_from_slice(&tu[start..at]);
    }
    if sample.is_empty() {
        return None;
    }
    Some(Av1Unit {
        sample: Bytes::from(sample),
        keyframe: first_frame == Some(true),
        config,
    })
}

/// `leb128()`: (value, bytes read); at most 8 bytes, fits in usize.
fn leb128(b: &[u8]) -> Option<(usize, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().take(8).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((usize::try_from(v).ok()?, i + 1));
        }
    }
    None
}

/// The start of `frame_header_obu()` (§5.9.2): a shown key frame? (`Some(false)`
/// for a frame that is not; `None` only when the bytes run out.)
fn shown_key_frame(payload: &[u8], reduced_still: bool) -> Option<bool> {
    if reduced_still {
        return Some(true); // key frame, shown
    }
    let mut r = Bits::new(payload);
    if r.flag()? {
        return Some(false); // show_existing_frame
    }
    let frame_type = r.bits(2)?;
    let show_frame = r.flag()?;
    Some(frame_type == 0 && show_frame)
}

/// `sequence_header_obu()` (§5.5) up to `color_config()`.
fn sequence_header(payload: &[u8], obu: Bytes) -> Option<Av1Config> {
    let mut r = Bits::new(payload);
    let profile = r.bits(3)? as u8;
    if profile > 2 {
        return None;
    }
    let _still_picture = r.flag()?;
    let reduced_still = r.flag()?;
    let (level, tier);
    if reduced_still {
        level = r.bits(5)? as u8;
        tier = false;
    } else {
        let timing_info = r.flag()?;
        let mut decoder_model_info = false;
        let mut buffer_delay_len = 0;
        if timing_info {
            r.skip(64)?; // num_units_in_display_tick, time_scale
            if r.flag()? {
                r.ue()?; // num_ticks_per_picture_minus_1 (uvlc: the same code as ue(v))
            }
            decoder_model_info = r.flag()?;
            if decoder_model_info {
                buffer_delay_len = r.bits(5)? as usize + 1;
                r.skip(32 + 5 + 5)?;
            }
        }
        let initial_display_delay = r.flag()?;
        let count = r.bits(5)? + 1;
        let (mut level0, mut tier0) = (0, false);
        for i in 0..count {
            r.skip(12)?; // operating_point_idc
            let l = r.bits(5)? as u8;
            let t = l > 7 && r.flag()?;
            if i == 0 {
                (level0, tier0) = (l, t);
            }
            if decoder_model_info && r.flag()? {
                r.skip(2 * buffer_delay_len + 1)?;
            }
            if initial_display_delay && r.flag()? {
                r.skip(4)?;
            }
        }
        (level, tier) = (level0, tier0);
    }
    let width_bits = r.bits(4)? + 1;
    let height_bits = r.bits(4)? + 1;
    let width = r.bits(width_bits)? + 1;
    let height = r.bits(height_bits)? + 1;
    if !reduced_still && r.flag()? {
        r.skip(4 + 3)?; // frame id lengths
    }
    r.skip(3)?; // 128x128 superblocks, filter intra, intra edge filter
    if !reduced_still {
        r.skip(4)?; // interintra, masked compound, warped motion, dual filter
        let enable_order_hint = r.flag()?;
        if enable_order_hint {
            r.skip(2)?; // jnt_comp, ref_frame_mvs
        }
        let force_screen_content_tools = if r.flag()? { 2 } else { r.bits(1)? };
        if force_screen_content_tools > 0 && !r.flag()? {
            r.skip(1)?; // seq_force_integer_mv
        }
        if enable_order_hint {
            r.skip(3)?; // order_hint_bits_minus_1
        }
    }
    r.skip(3)?; // superres, cdef, restoration
    // color_config() (§5.5.2).
    let high_bitdepth = r.flag()?;
    let twelve_bit = profile == 2 && high_bitdepth && r.flag()?;
    let monochrome = profile != 1 && r.flag()?;
    let (mut cp, mut tc, mut mc) = (2, 2, 2);
    if r.flag()? {
        (cp, tc, mc) = (r.bits(8)?, r.bits(8)?, r.bits(8)?);
    }
    let (subsampling_x, subsampling_y, mut chroma_sample_position) = if monochrome {
        (true, true, 0)
    } else if cp == 1 && tc == 13 && mc == 0 {
        (false, false, 0) // sRGB: 4:4:4, full range, nothing more coded
    } else {
        r.skip(1)?; // color_range
        match profile {
            0 => (true, true, 0),
            1 => (false, false, 0),
            _ if twelve_bit => {
                let x = r.flag()?;
                let y = x && r.flag()?;
                (x, y, 0)
            }
            _ => (true, false, 0),
        }
    };
    if !monochrome && subsampling_x && subsampling_y && !(cp == 1 && tc == 13 && mc == 0) {
        chroma_sample_position = r.bits(2)? as u8;
    }
    Some(Av1Config {
        profile,
        level,
        tier,
        high_bitdepth,
        twelve_bit,
        monochrome,
        subsampling_x,
        subsampling_y,
        chroma_sample_position,
        reduced_still_picture_header: reduced_still,
        width: u16::try_from(width).unwrap_or(u16::MAX),
        height: u16::try_from(height).unwrap_or(u16::MAX),
        sequence_header: obu,
    })
}

impl Av1Config {
    /// The `AV1CodecConfigurationRecord` (the `av1C` body, §2.3.3): marker
    /// and version 1, the sequence header's profile, level, tier and colour
    /// format, no initial presentation delay, the sequence header OBU.
    pub fn av1c(&self) -> Bytes {
        let mut b = Vec::with_capacity(4 + self.sequence_header.len());
        b.push(0x81);
        b.push(self.profile << 5 | (self.level & 0x1f));
        b.push(
            u8::from(self.tier) << 7
                | u8::from(self.high_bitdepth) << 6
                | u8::from(self.twelve_bit) << 5
                | u8::from(self.monochrome) << 4
                | u8::from(self.subsampling_x) << 3
                | u8::from(self.subsampling_y) << 2
                | (self.chroma_sample_position & 3),
        );
        b.push(0);
        b.extend_from_slice(&self.sequence_header);
        Bytes::from(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libaom (`-usage realtime`, 320x180 yuv420p) key temporal unit's
    /// start: temporal delimiter, sequence header, then a frame OBU's
    /// first bytes (size cut to 4 here).
    const SEQ: &[u8] = &[
        0x0a, 0x0b, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xfe, 0xcc, 0xda, 0xf9, 0x00, 0x40,
    ];
    const KEY_FRAME: &[u8] = &[0x32, 0x04, 0x10, 0x00, 0x80, 0x20];
    /// An inter frame OBU: show_existing 0, frame_type 1 (inter), shown.
    const INTER: &[u8] = &[0x32, 0x03, 0x30, 0x00, 0x00];

    fn tu(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![0x12, 0x00];
        for p in parts {
            v.extend_from_slice(p);
        }
        v
    }

    #[test]
    fn key_unit_config_and_av1c_as_ffmpeg_writes_it() {
        let u = inspect(&tu(&[SEQ, KEY_FRAME]), false).expect("AV1");
        assert!(u.keyframe);
        assert_eq!(&u.sample[..2], &SEQ[..2], "temporal delimiter dropped");
        assert_eq!(u.sample.len(), SEQ.len() + KEY_FRAME.len());
        let c = u.config.expect("sequence header");
        assert_eq!((c.width, c.height), (320, 180));
        assert_eq!((c.profile, c.level, c.tier), (0, 0, false));
        assert!(!c.high_bitdepth && !c.monochrome && c.subsampling_x && c.subsampling_y);
        // ffmpeg's av1C for the same stream: 81 00 0c 00 + the sequence header.
        let mut want = vec![0x81, 0x00, 0x0c, 0x00];
        want.extend_from_slice(SEQ);
        assert_eq!(&c.av1c()[..], &want[..]);
    }

    #[test]
    fn inter_units_and_garbage() {
        let u = inspect(&tu(&[INTER]), false).expect("AV1");
        assert!(!u.keyframe && u.config.is_none());
        assert_eq!(&u.sample[..], INTER);
        // show_existing_frame: not a key frame.
        let existing = [0x32, 0x01, 0x80];
        assert_eq!(inspect(&existing, false).map(|u| u.keyframe), Some(false));
        // Only a temporal delimiter: nothing to mux.
        assert_eq!(inspect(&[0x12, 0x00], false), None);
        assert_eq!(inspect(&[], false), None);
        assert_eq!(inspect(&[0x80, 0x00], false), None, "forbidden bit");
        assert_eq!(inspect(&[0x30, 0x00], false), None, "no size field");
        assert_eq!(inspect(&[0x32, 0x09, 0x00], false), None, "size overruns");
        assert_eq!(
            inspect(&[0x32, 0xff, 0xff], false),
            None,
            "size unterminated"
        );
        // Every prefix: no panic.
        let whole = tu(&[SEQ, KEY_FRAME, INTER]);
        for n in 0..=whole.len() {
            let _ = inspect(&whole[..n], false);
        }
        for n in 0..SEQ.len() - 2 {
            let _ = sequence_header(&SEQ[2..2 + n], Bytes::new());
        }
        assert!(
            sequence_header(&SEQ[2..6], Bytes::new()).is_none(),
            "cut short"
        );
    }
}
