//! Remuxers from the encoders' own containers to CMAF fragmented MP4, for
//! the RTMP, SRT and WHIP ingests: FLV tag bodies (legacy and Enhanced RTMP),
//! MPEG-TS and depacketized RTP frames in, an init segment and `moof`+`mdat` fragments out. Sans-IO like
//! the splitter: no sockets, no clocks, bytes in, bytes out.
//!
//! Their output is plain fMP4 bytes that the relay feeds through the same
//! [`crate::Splitter`] as fMP4 ingest, so what reaches the fan-out is
//! indistinguishable from an fMP4 publisher's stream.
//!
//! - [`cmaf`]: the CMAF muxer (init segment + fragments of at most
//!   [`cmaf::MuxerConfig::max_fragment_us`], cut before video keyframes);
//! - [`flv`]: FLV audio/video tag bodies to the muxer;
//! - [`ts`]: MPEG-TS packets (in any split) to the muxer;
//! - [`rtp`]: H.264 access units, VP9 frames, AV1 temporal units and Opus packets on RTP clocks (WHIP) to the muxer;
//! - [`vp9`]: VP9 key frame headers to `vpcC` records;
//! - [`av1`]: AV1 sequence headers to `av1C` records, temporal units to samples;
//! - `nal`: H.264/HEVC bitstream helpers (Annex-B, SPS, `avcC`/`hvcC`).

pub mod av1;
pub mod cmaf;
pub mod flv;
mod nal;
pub mod rtp;
pub mod ts;
pub mod vp9;

/// Annex-B helpers for whoever builds FLV or CMAF input from raw H.264/HEVC
/// (encoders, test clients): NAL unit splitting and `avcC`/`hvcC` records.
pub use nal::{build_avcc, build_hvcc, split_annexb};
