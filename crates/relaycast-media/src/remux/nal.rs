//! H.264 / HEVC NAL unit helpers: Annex-B splitting, emulation-prevention
//! removal, an exp-Golomb bit reader, the few SPS fields a sample entry needs
//! (size, profile, chroma format, bit depth), and `avcC` / `hvcC` records built
//! from in-band parameter sets (MPEG-TS carries no decoder configuration).
//!
//! `mp4-atom` 0.17 has the `avcC`/`hvcC` types (used here to encode) but its
//! SPS parser is compiled out, so the SPS walk is hand-written. Every read is
//! bounds-checked and returns `None` on short or odd input.

use crate::remux::cmaf::{Codec, Muxer, TrackConfig};
use bytes::{BufMut, Bytes, BytesMut};
use mp4_atom::{Atom, Avcc, AvccExt, HvcCArray, Hvcc};

/// H.264/HEVC parameter sets seen in band, for the remuxers whose input
/// carries no decoder configuration (MPEG-TS, RTP): each access unit's
/// VPS/SPS/PPS are kept here and a new `avcC`/`hvcC` is built when they change.
#[derive(Debug, Default)]
pub(crate) struct ParamSets {
    vps: Option<Vec<u8>>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// The configuration record last given to the muxer.
    config: Option<Bytes>,
}

impl ParamSets {
    /// Splits an Annex-B access unit: parameter sets are taken in band (a
    /// changed set becomes a new video track configuration on `muxer`, at
    /// `timescale`), the other NAL units become the sample: `(sample,
    /// keyframe)`, length-prefixed (4 bytes), with an IDR (H.264) or IRAP
    /// (HEVC) picture making it a keyframe. `None` when no track is
    /// configured yet or only parameter sets or delimiters came.
    pub(crate) fn access_unit(
        &mut self,
        hevc: bool,
        annexb: &[u8],
        muxer: &mut Muxer,
        timescale: u32,
    ) -> Option<(Bytes, bool)> {
        let mut sample = BytesMut::with_capacity(annexb.len() + 16);
        let mut keyframe = false;
        let mut params_changed = false;
        for unit in split_annexb(annexb) {
            let t = if hevc {
                (unit[0] >> 1) & 0x3f
            } else {
                unit[0] & 0x1f
            };
            let slot = match (hevc, t) {
                (false, 7) | (true, 33) => Some(&mut self.sps),
                (false, 8) | (true, 34) => Some(&mut self.pps),
                (true, 32) => Some(&mut self.vps),
                _ => None,
            };
            if let Some(slot) = slot {
                if slot.as_deref() != Some(unit) {
                    *slot = Some(unit.to_vec());
                    params_changed = true;
                }
                continue;
            }
            if (!hevc && t == 9) || (hevc && t == 35) {
                continue; // access unit delimiter
            }
            keyframe |= if hevc { (16..=23).contains(&t) } else { t == 5 };
            sample.put_u32(unit.len() as u32);
            sample.put_slice(unit);
        }
        let config = match (params_changed, hevc, &self.vps, &self.sps, &self.pps) {
            (true, false, _, Some(sps), Some(pps)) => build_avcc(sps, pps).map(Codec::H264),
            (true, true, Some(vps), Some(sps), Some(pps)) => {
                build_hvcc(vps, sps, pps).map(Codec::H265)
            }
            _ => None,
        };
        if let Some(codec) = config {
            let record = codec.record();
            if self.config.as_ref() != Some(&record)
                && muxer.set_track(TrackConfig::new(codec, timescale)).is_ok()
            {
                self.config = Some(record);
            }
        }
        if sample.is_empty() || self.config.is_none() {
            return None;
        }
        Some((sample.freeze(), keyframe))
    }
}

/// Splits an Annex-B byte stream into NAL units (start codes removed, trailing
/// zero bytes of each unit trimmed; empty units skipped).
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i + 2 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                push_trimmed(&mut out, &data[s..i]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        push_trimmed(&mut out, data.get(s..).unwrap_or_default());
    }
    out
}

fn push_trimmed<'a>(out: &mut Vec<&'a [u8]>, nal: &'a [u8]) {
    let end = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if end > 0 {
        out.push(&nal[..end]);
    }
}

/// Removes emulation-prevention bytes (`00 00 03` → `00 00`).
pub(crate) fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// MSB-first bit reader with exp-Golomb codes.
pub(crate) struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Bits { data, pos: 0 }
    }
    pub(crate) fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }
    /// One bit as a flag.
    pub(crate) fn flag(&mut self) -> Option<bool> {
        Some(self.bit()? == 1)
    }
    pub(crate) fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }
    pub(crate) fn skip(&mut self, n: usize) -> Option<()> {
        self.pos = self.pos.checked_add(n)?;
        (self.pos <= self.data.len() * 8).then_some(())
    }
    pub(crate) fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }
    pub(crate) fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        let v = k.div_ceil(2) as i32;
        Some(if k % 2 == 1 { v } else { -v })
    }
}

/// What a sample entry needs from an H.264 SPS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AvcSps {
    pub width: u16,
    pub height: u16,
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
}

/// Parses an H.264 SPS NAL unit (header byte included).
pub(crate) fn avc_sps(nal: &[u8]) -> Option<AvcSps> {
    let rbsp = unescape(nal.get(1..)?);
    let mut r = Bits::new(&rbsp);
    let profile = r.bits(8)?;
    r.skip(16)?; // constraint flags, level
    r.ue()?; // sps id
    let mut chroma = 1;
    let (mut depth_l, mut depth_c) = (8, 8);
    let mut separate_planes = false;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma = r.ue()?;
        if chroma == 3 {
            separate_planes = r.bit()? == 1;
        }
        depth_l = 8 + r.ue()?;
        depth_c = 8 + r.ue()?;
        r.skip(1)?; // qpprime_y_zero_transform_bypass
        if r.bit()? == 1 {
            let lists = if chroma == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.skip(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.skip(1)?; // gaps_in_frame_num_allowed
    let w_mbs = u64::from(r.ue()?) + 1;
    let h_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.skip(1)?;
    }
    r.skip(1)?; // direct_8x8_inference
    let (mut cl, mut cr, mut ct, mut cb) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? == 1 {
        cl = r.ue()?.into();
        cr = r.ue()?.into();
        ct = r.ue()?.into();
        cb = r.ue()?.into();
    }
    let (sub_w, sub_h) = match (chroma, separate_planes) {
        (0, _) | (3, true) => (1, 1),
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let crop_y = sub_h * (2 - frame_mbs_only);
    let width = (w_mbs * 16).saturating_sub(sub_w * (cl + cr));
    let height = ((2 - frame_mbs_only) * h_units * 16).saturating_sub(crop_y * (ct + cb));
    Some(AvcSps {
        width: width.min(u64::from(u16::MAX)) as u16,
        height: height.min(u64::from(u16::MAX)) as u16,
        chroma_format_idc: chroma.min(3) as u8,
        bit_depth_luma: depth_l.min(16) as u8,
        bit_depth_chroma: depth_c.min(16) as u8,
    })
}

/// What an `hvcC` and a sample entry need from an HEVC SPS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HevcSps {
    pub profile_space: u8,
    pub tier: bool,
    pub profile_idc: u8,
    pub compat: [u8; 4],
    pub constraints: [u8; 6],
    pub level_idc: u8,
    pub max_sub_layers: u8,
    pub temporal_id_nested: bool,
    pub chroma_format_idc: u8,
    pub bit_depth_luma_minus8: u8,
    pub bit_depth_chroma_minus8: u8,
    pub width: u16,
    pub height: u16,
}

/// Parses an HEVC SPS NAL unit (2-byte header included).
pub(crate) fn hevc_sps(nal: &[u8]) -> Option<HevcSps> {
    let rbsp = unescape(nal.get(2..)?);
    let mut r = Bits::new(&rbsp);
    let mut s = HevcSps::default();
    r.skip(4)?; // vps id
    let msl = r.bits(3)? as usize;
    s.max_sub_layers = msl as u8 + 1;
    s.temporal_id_nested = r.bit()? == 1;
    s.profile_space = r.bits(2)? as u8;
    s.tier = r.bit()? == 1;
    s.profile_idc = r.bits(5)? as u8;
    for b in s.compat.iter_mut() {
        *b = r.bits(8)? as u8;
    }
    for b in s.constraints.iter_mut() {
        *b = r.bits(8)? as u8;
    }
    s.level_idc = r.bits(8)? as u8;
    let mut present = [(false, false); 8];
    for p in present.iter_mut().take(msl) {
        *p = (r.bit()? == 1, r.bit()? == 1);
    }
    if msl > 0 {
        r.skip(2 * (8 - msl))?;
    }
    for &(profile, level) in present.iter().take(msl) {
        if profile {
            r.skip(88)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps id
    let chroma = r.ue()?;
    if chroma == 3 {
        r.skip(1)?;
    }
    let w = u64::from(r.ue()?);
    let h = u64::from(r.ue()?);
    let (mut cl, mut cr, mut ct, mut cb) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? == 1 {
        cl = r.ue()?.into();
        cr = r.ue()?.into();
        ct = r.ue()?.into();
        cb = r.ue()?.into();
    }
    let (sub_w, sub_h) = match chroma {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    s.chroma_format_idc = chroma.min(3) as u8;
    s.bit_depth_luma_minus8 = r.ue()?.min(8) as u8;
    s.bit_depth_chroma_minus8 = r.ue()?.min(8) as u8;
    s.width = w.saturating_sub(sub_w * (cl + cr)).min(u64::from(u16::MAX)) as u16;
    s.height = h.saturating_sub(sub_h * (ct + cb)).min(u64::from(u16::MAX)) as u16;
    Some(s)
}

/// Encodes an `AVCDecoderConfigurationRecord` (the `avcC` box body) from one SPS and PPS.
pub fn build_avcc(sps: &[u8], pps: &[u8]) -> Option<Bytes> {
    let info = avc_sps(sps)?;
    let mut avcc = Avcc::new(sps, pps).ok()?;
    if matches!(sps.get(1), Some(100 | 110 | 122 | 144)) {
        avcc.ext = Some(AvccExt {
            chroma_format: info.chroma_format_idc,
            bit_depth_luma: info.bit_depth_luma,
            bit_depth_chroma: info.bit_depth_chroma,
            sequence_parameter_sets_ext: Vec::new(),
        });
    }
    let mut out = Vec::new();
    avcc.encode_body(&mut out).ok()?;
    Some(Bytes::from(out))
}

/// Encodes an `HEVCDecoderConfigurationRecord` (the `hvcC` box body) from VPS, SPS and PPS.
pub fn build_hvcc(vps: &[u8], sps: &[u8], pps: &[u8]) -> Option<Bytes> {
    let s = hevc_sps(sps)?;
    let array = |t: u8, n: &[u8]| HvcCArray {
        completeness: true,
        nal_unit_type: t,
        nalus: vec![n.to_vec()],
    };
    let hvcc = Hvcc {
        configuration_version: 1,
        general_profile_space: s.profile_space,
        general_tier_flag: s.tier,
        general_profile_idc: s.profile_idc,
        general_profile_compatibility_flags: s.compat,
        general_constraint_indicator_flags: s.constraints,
        general_level_idc: s.level_idc,
        min_spatial_segmentation_idc: 0,
        parallelism_type: 0,
        chroma_format_idc: s.chroma_format_idc,
        bit_depth_luma_minus8: s.bit_depth_luma_minus8,
        bit_depth_chroma_minus8: s.bit_depth_chroma_minus8,
        avg_frame_rate: 0,
        constant_frame_rate: 0,
        num_temporal_layers: s.max_sub_layers,
        temporal_id_nested: s.temporal_id_nested,
        length_size_minus_one: 3,
        arrays: vec![array(32, vps), array(33, sps), array(34, pps)],
    };
    let mut out = Vec::new();
    hvcc.encode_body(&mut out).ok()?;
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_split_and_unescape() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 0, 0, 3, 1,
        ];
        let nals = split_annexb(&data);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 0, 0, 3, 1][..]]
        );
        assert_eq!(unescape(nals[2]), vec![0x65, 0, 0, 1]);
    }

    #[test]
    fn sps_640x360_high() {
        // x264 High@3.1 640x360 SPS (from the relay's demo clip).
        let sps = b"\x67\x64\x00\x1f\xac\xd9\x40\xa0\x2f\xf9\x70\x11\x00\x00\x03\x00\x01\x00\x00\x03\x00\x3c\x0f\x18\x31\x96\x00";
        let s = avc_sps(sps);
        assert_eq!(s.map(|s| (s.width, s.height)), Some((640, 360)));
    }
}
