//! `media`: the sans-IO fragmented-MP4 splitter (no sockets, no clocks).
//!
//! Bytes go in, in whatever pieces they arrive ([`Splitter::push`]); out come an
//! [`Init`] (ftyp + moov, with the RFC 6381 codecs string for MSE) and a
//! sequence of [`Fragment`]s (optional `styp`/`prft`/`emsg`/`sidx`, then one
//! `moof` and its `mdat`). Payloads are `bytes::Bytes` slices of the buffer the
//! input was gathered in: an `mdat` is never copied after it arrived.
//!
//! [`hls`] is the packaging side: the LL-HLS/DASH segment index and the
//! playlists and MPD rendered from it (sans-IO too: the caller passes time).

use bytes::Bytes;

mod boxes;
mod codec;
pub mod demo;
pub mod hls;
mod init;
mod moof;
pub mod remux;
mod splitter;

pub use splitter::{Splitter, SplitterConfig};

/// The initialization segment of a stream: `ftyp` + `moov` (and anything
/// allowed between them), exactly as the publisher sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Init {
    /// The raw bytes: what a viewer must append first.
    pub bytes: Bytes,
    /// RFC 6381 codecs list, e.g. `avc1.64001f,mp4a.40.2`.
    pub codecs: String,
    /// The MSE type, e.g. `video/mp4; codecs="avc1.64001f,mp4a.40.2"`.
    pub mime: String,
    /// The tracks the `moov` declares, in order.
    pub tracks: Vec<Track>,
}

impl Init {
    /// True when at least one track is video: then only fragments whose video
    /// track starts with a sync sample open a group.
    pub fn has_video(&self) -> bool {
        self.tracks.iter().any(|t| t.kind == TrackKind::Video)
    }
}

/// What kind of media a track carries (from its `hdlr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackKind {
    /// `vide`
    Video,
    /// `soun`
    Audio,
    /// anything else (subtitles, metadata)
    Other,
}

/// One track of the `moov`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Track {
    /// `tkhd` track id.
    pub id: u32,
    /// Video, audio or other.
    pub kind: TrackKind,
    /// `mdhd` timescale (ticks per second).
    pub timescale: u32,
    /// RFC 6381 codec string of this track, e.g. `avc1.64001f`.
    pub codec: String,
}

/// One media fragment: optional leading `styp`/`prft`/`emsg`/`sidx` boxes,
/// one `moof`, and its `mdat`, as one contiguous zero-copy slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// The splitter's running count of fragments (0, 1, 2, … since the last
    /// init segment). The fan-out core assigns the stream-wide sequence number.
    pub index: u64,
    /// True when this fragment can open a group (GOP): its video track (or,
    /// in a stream without video, its first track) starts with a sync sample.
    pub keyframe: bool,
    /// `tfdt` base media decode time of the reference track (the video track
    /// if there is one, else the first track in the `moof`), in `timescale` units.
    pub decode_time: u64,
    /// Total sample duration of the reference track in this fragment, in `timescale` units.
    pub duration: u64,
    /// Timescale of the reference track.
    pub timescale: u32,
    /// The `mfhd` sequence number the publisher wrote.
    pub mfhd_seq: u32,
    /// The bytes: append these to a SourceBuffer after the init segment.
    pub bytes: Bytes,
}

impl Fragment {
    /// Decode time in microseconds (for pacing and latency figures).
    pub fn decode_time_us(&self) -> u64 {
        scale_us(self.decode_time, self.timescale)
    }

    /// Duration in microseconds.
    pub fn duration_us(&self) -> u64 {
        scale_us(self.duration, self.timescale)
    }
}

fn scale_us(ticks: u64, timescale: u32) -> u64 {
    if timescale == 0 {
        return 0;
    }
    ((ticks as u128 * 1_000_000) / timescale as u128) as u64
}

/// What the splitter hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A (new) initialization segment.
    Init(Init),
    /// A media fragment.
    Fragment(Fragment),
}

/// Why a byte stream is not an acceptable fragmented MP4. Every variant is the
/// publisher's fault; `http_status` maps it once.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MediaError {
    /// A box header declares a size smaller than the header itself.
    #[error(
        "box '{kind}' at byte {offset} declares size {size}, smaller than its {header}-byte header"
    )]
    BoxTooSmall {
        /// fourcc
        kind: String,
        /// offset in the stream
        offset: u64,
        /// declared size
        size: u64,
        /// header length
        header: u64,
    },
    /// A box is larger than the configured limit.
    #[error("box '{kind}' at byte {offset} is {size} bytes, over the {limit}-byte limit")]
    BoxTooLarge {
        /// fourcc
        kind: String,
        /// offset in the stream
        offset: u64,
        /// declared size
        size: u64,
        /// configured limit
        limit: u64,
    },
    /// A `moof` arrived before any `moov`.
    #[error(
        "'moof' at byte {offset} before any 'moov': the stream must start with an init segment (ftyp+moov)"
    )]
    MoofBeforeMoov {
        /// offset in the stream
        offset: u64,
    },
    /// A `moof` was followed by something other than its `mdat`.
    #[error("'moof' at byte {offset} is followed by '{next}', not 'mdat'")]
    MoofWithoutMdat {
        /// offset of the moof
        offset: u64,
        /// what came instead
        next: String,
    },
    /// The stream ended in the middle of a box.
    #[error("stream ended inside a box: {pending} bytes of an incomplete box at byte {offset}")]
    Truncated {
        /// offset of the incomplete box
        offset: u64,
        /// bytes held
        pending: u64,
    },
    /// The stream does not look like MP4 at all, or a box could not be parsed.
    #[error("not a fragmented MP4 stream: {0}")]
    Invalid(String),
    /// An FLV (RTMP) or MPEG-TS (SRT) input the remuxer refused: an unknown
    /// codec, a truncated tag, a bad sequence header, a TS without a program.
    #[error("{0}")]
    Remux(String),
}

impl From<remux::flv::FlvError> for MediaError {
    fn from(e: remux::flv::FlvError) -> Self {
        MediaError::Remux(e.to_string())
    }
}

impl MediaError {
    /// The HTTP status a publisher gets for this error (413 for oversized boxes, else 400... 422).
    pub fn http_status(&self) -> u16 {
        match self {
            MediaError::BoxTooLarge { .. } => 413,
            _ => 400,
        }
    }
}
