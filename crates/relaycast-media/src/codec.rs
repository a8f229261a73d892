//! RFC 6381 codec strings (what `MediaSource.isTypeSupported` and the
//! `codecs=` MIME parameter want) from a track's sample entry, as decoded by
//! `mp4-atom`.
//!
//! Sources: ISO/IEC 14496-15 (AVC: `avc1.PPCCLL`; HEVC: Annex E), the VP9
//! ISO-BMFF binding (`vp09.PP.LL.DD[.CC.cp.tc.mc.FF]`), AV1-ISOBMFF §5
//! (`av01.P.LLT.DD[.M.CCC.cp.tc.mc.F]`), RFC 6381 §3.3 (`mp4a.OO[.A]`).

use mp4_atom::esds::DecoderConfig;
use mp4_atom::{Av1c, Codec, Colr, Hvcc, VpcC};

/// The codec string of one sample entry; empty when the entry is not one a
/// browser could play (unknown sample entry type, missing configuration).
pub(crate) fn codec_string(entry: &Codec) -> String {
    match entry {
        Codec::Avc1(e) => avc(
            "avc1",
            e.avcc.avc_profile_indication,
            e.avcc.profile_compatibility,
            e.avcc.avc_level_indication,
        ),
        Codec::Avc3(e) => avc(
            "avc3",
            e.avcc.avc_profile_indication,
            e.avcc.profile_compatibility,
            e.avcc.avc_level_indication,
        ),
        Codec::Hev1(e) => hevc("hev1", &e.hvcc),
        Codec::Hvc1(e) => hevc("hvc1", &e.hvcc),
        Codec::Vp08(_) => "vp8".to_string(),
        Codec::Vp09(e) => vp9(&e.vpcc),
        Codec::Av01(e) => av1(&e.av1c, e.colr.as_ref()),
        Codec::Mp4a(e) => mp4a(&e.esds.es_desc.dec_config),
        Codec::Mp3(_) => "mp3".to_string(),
        Codec::Opus(_) => "opus".to_string(),
        Codec::Flac(_) => "flac".to_string(),
        Codec::Ac3(_) => "ac-3".to_string(),
        Codec::Eac3(_) => "ec-3".to_string(),
        Codec::Wvtt(_) => "wvtt".to_string(),
        Codec::Tx3g(_) => "tx3g".to_string(),
        _ => String::new(),
    }
}

/// `avc1.PPCCLL`: profile_idc, constraint flags, level_idc as two hex digits each.
pub(crate) fn avc(fourcc: &str, profile: u8, compat: u8, level: u8) -> String {
    format!("{fourcc}.{profile:02x}{compat:02x}{level:02x}")
}

/// `hvc1.[A-C]P.C.TL.B…` per ISO/IEC 14496-15 Annex E.
fn hevc(fourcc: &str, c: &Hvcc) -> String {
    let space = match c.general_profile_space {
        1 => "A",
        2 => "B",
        3 => "C",
        _ => "",
    };
    // The 32 compatibility flags, bit-reversed, in hex without leading zeros.
    let compat = u32::from_be_bytes(c.general_profile_compatibility_flags).reverse_bits();
    let tier = if c.general_tier_flag { 'H' } else { 'L' };
    let mut s = format!(
        "{fourcc}.{space}{}.{compat:X}.{tier}{}",
        c.general_profile_idc, c.general_level_idc
    );
    // The six constraint bytes, trailing zero bytes omitted.
    let flags = &c.general_constraint_indicator_flags;
    let used = flags.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    for b in flags.iter().take(used) {
        s.push_str(&format!(".{b:X}"));
    }
    s
}

/// `vp09.PP.LL.DD`, with the optional fields only when they say something
/// the short form's defaults do not.
///
/// Defaults per the binding: 4:2:0 chroma, BT.709 primaries, transfer and
/// matrix, limited range. "Unspecified" colour values (2) and the two 4:2:0
/// sitings (0 and 1) are treated as the default too: they do not change what
/// a browser needs to decode, and libvpx via ffmpeg writes them for plain
/// `yuv420p` input.
fn vp9(c: &VpcC) -> String {
    let short = format!("vp09.{:02}.{:02}.{:02}", c.profile, c.level, c.bit_depth);
    let colour_default = |v: u8| v == 1 || v == 2;
    let default = c.chroma_subsampling <= 1
        && colour_default(c.color_primaries)
        && colour_default(c.transfer_characteristics)
        && colour_default(c.matrix_coefficients)
        && !c.video_full_range_flag;
    if default {
        short
    } else {
        format!(
            "{short}.{:02}.{:02}.{:02}.{:02}.{:02}",
            c.chroma_subsampling,
            c.color_primaries,
            c.transfer_characteristics,
            c.matrix_coefficients,
            u8::from(c.video_full_range_flag)
        )
    }
}

/// `av01.P.LLT.DD`, plus `.M.CCC.cp.tc.mc.F` when monochrome, not 4:2:0, or
/// when an `nclx` colour box says something other than BT.709 / unspecified
/// limited range.
fn av1(c: &Av1c, colr: Option<&Colr>) -> String {
    let depth = match (c.high_bitdepth, c.twelve_bit) {
        (false, _) => 8,
        (true, false) => 10,
        (true, true) => 12,
    };
    let tier = if c.seq_tier_0 { 'H' } else { 'M' };
    let short = format!(
        "av01.{}.{:02}{tier}.{depth:02}",
        c.seq_profile, c.seq_level_idx_0
    );
    let (cp, tc, mc, full) = match colr {
        Some(Colr::Nclx {
            colour_primaries,
            transfer_characteristics,
            matrix_coefficients,
            full_range_flag,
        }) => (
            *colour_primaries,
            *transfer_characteristics,
            *matrix_coefficients,
            *full_range_flag,
        ),
        _ => (1, 1, 1, false),
    };
    let colour_default = |v: u16| v == 1 || v == 2;
    let chroma_420 = c.chroma_subsampling_x && c.chroma_subsampling_y;
    let default = !c.monochrome
        && chroma_420
        && colour_default(cp)
        && colour_default(tc)
        && colour_default(mc)
        && !full;
    if default {
        short
    } else {
        format!(
            "{short}.{}.{}{}{}.{cp:02}.{tc:02}.{mc:02}.{}",
            u8::from(c.monochrome),
            u8::from(c.chroma_subsampling_x),
            u8::from(c.chroma_subsampling_y),
            c.chroma_sample_position,
            u8::from(full)
        )
    }
}

/// `mp4a.40.A` for MPEG-4 audio (A = the AudioSpecificConfig's audio object
/// type, 2 for AAC-LC), `mp4a.OO` (hex object type) otherwise, e.g. `mp4a.6B` for MP3.
fn mp4a(c: &DecoderConfig) -> String {
    let oti = c.object_type_indication;
    match (oti, &c.dec_specific) {
        (0x40, Some(ds)) if ds.profile != 0 => format!("mp4a.40.{}", ds.profile),
        _ => format!("mp4a.{oti:02X}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avc_strings() {
        assert_eq!(avc("avc1", 0x64, 0x00, 0x1f), "avc1.64001f");
        assert_eq!(avc("avc3", 0x42, 0xe0, 0x1e), "avc3.42e01e");
    }

    #[test]
    fn hevc_main_profile() {
        // Main profile, level 3.1, progressive source flag set (0x90): the
        // string Apple's HLS authoring spec gives as an example is hvc1.1.6.L93.90.
        let c = Hvcc {
            general_profile_idc: 1,
            general_profile_compatibility_flags: [0x60, 0, 0, 0],
            general_level_idc: 93,
            general_constraint_indicator_flags: [0x90, 0, 0, 0, 0, 0],
            ..Hvcc::new()
        };
        assert_eq!(hevc("hvc1", &c), "hvc1.1.6.L93.90");
        let c = Hvcc {
            general_profile_space: 1,
            general_tier_flag: true,
            general_profile_idc: 2,
            general_profile_compatibility_flags: [0x20, 0, 0, 0],
            general_level_idc: 120,
            general_constraint_indicator_flags: [0xb0, 0, 0, 0, 0, 0x01],
            ..Hvcc::new()
        };
        assert_eq!(hevc("hev1", &c), "hev1.A2.4.H120.B0.0.0.0.0.1");
    }

    #[test]
    fn vp9_short_and_long() {
        let c = VpcC {
            profile: 0,
            level: 10,
            bit_depth: 8,
            chroma_subsampling: 0,
            color_primaries: 2,
            transfer_characteristics: 2,
            matrix_coefficients: 2,
            ..VpcC::default()
        };
        assert_eq!(vp9(&c), "vp09.00.10.08");
        let c = VpcC {
            profile: 2,
            level: 41,
            bit_depth: 10,
            chroma_subsampling: 1,
            color_primaries: 9,
            transfer_characteristics: 16,
            matrix_coefficients: 9,
            video_full_range_flag: false,
            ..VpcC::default()
        };
        assert_eq!(vp9(&c), "vp09.02.41.10.01.09.16.09.00");
    }

    #[test]
    fn av1_short_and_long() {
        let c = Av1c {
            seq_profile: 0,
            seq_level_idx_0: 5,
            chroma_subsampling_x: true,
            chroma_subsampling_y: true,
            ..Av1c::default()
        };
        assert_eq!(av1(&c, None), "av01.0.05M.08");
        let hdr = Colr::Nclx {
            colour_primaries: 9,
            transfer_characteristics: 16,
            matrix_coefficients: 9,
            full_range_flag: false,
        };
        let c = Av1c {
            seq_level_idx_0: 13,
            high_bitdepth: true,
            ..c
        };
        assert_eq!(av1(&c, Some(&hdr)), "av01.0.13M.10.0.110.09.16.09.0");
    }

    #[test]
    fn mp4a_strings() {
        let mut c = DecoderConfig {
            object_type_indication: 0x40,
            dec_specific: Some(mp4_atom::esds::DecoderSpecific {
                profile: 2,
                freq_index: 3,
                chan_conf: 2,
                raw: vec![0x11, 0x90],
            }),
            ..DecoderConfig::default()
        };
        assert_eq!(mp4a(&c), "mp4a.40.2");
        c.object_type_indication = 0x6b;
        assert_eq!(mp4a(&c), "mp4a.6B");
        c.object_type_indication = 0x69;
        assert_eq!(mp4a(&c), "mp4a.69");
    }
}
