//! FLV for `relaycast load`: publishing to and viewing from relays that speak
//! FLV (SRS: FLV in by HTTP POST to its `stream_caster flv`, HTTP-FLV out).
//!
//! The publisher sends an FLV file header, an AVC sequence header (the demo
//! clip's `avcC`, so the relay knows the codec), then one video tag per raw
//! message: the 5 bytes of an AVC NALU packet (frame type: keyframe on group
//! starts, so the relay's GOP cache works), a 4-byte NALU length, a 1-byte
//! NALU header (IDR or non-IDR slice), then the raw message itself (its
//! 32-byte [`RawHeader`](super::synth::RawHeader) with seq and send time,
//! then filler). The relay parses the NALUs (length-prefixed, well formed)
//! and passes the bytes through.
//!
//! A viewer runs an [`FlvDemux`] over the HTTP-FLV body: it skips the file
//! header, script and audio tags and sequence headers, and hands the bytes
//! after the 10-byte prefix of every AVC NALU tag (the raw message) to the
//! viewer's raw-mode parser, which checks seq continuity and send times.

use super::synth::{Synth, now_ns};
use super::{Tally, ViewerCheck};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// FLV tag type: video.
pub const TAG_VIDEO: u8 = 9;
/// Bytes of a tag header.
pub const TAG_HEADER_LEN: usize = 11;
/// Bytes before the raw message in a video tag body: frame type + codec,
/// AVC packet type, composition time (3), NALU length (4), NALU header (1).
pub const VIDEO_PREFIX_LEN: usize = 10;
/// Largest tag a viewer accepts (a guard against garbage sizes).
const TAG_MAX: usize = 64 << 20;

/// The FLV file header (video only) and the first PreviousTagSize.
pub fn file_header() -> [u8; 13] {
    [b'F', b'L', b'V', 1, 0x01, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// A whole tag (header, `body`, trailing PreviousTagSize) appended to `out`.
pub fn put_tag(out: &mut BytesMut, kind: u8, ts_ms: u32, body: &[&[u8]]) {
    let len: usize = body.iter().map(|b| b.len()).sum();
    out.reserve(TAG_HEADER_LEN + len + 4);
    out.put_u8(kind);
    out.put_uint(len as u64, 3);
    out.put_uint(u64::from(ts_ms & 0x00ff_ffff), 3);
    out.put_u8((ts_ms >> 24) as u8);
    out.put_uint(0, 3);
    for b in body {
        out.put_slice(b);
    }
    out.put_u32((TAG_HEADER_LEN + len) as u32);
}

/// The body of an AVC sequence header tag for an `avcC` record.
pub fn sequence_header(avcc: &[u8]) -> Vec<u8> {
    let mut b = vec![0x17, 0, 0, 0, 0];
    b.extend_from_slice(avcc);
    b
}

/// The prefix of a video tag body carrying `payload_len` bytes of raw message.
pub fn video_prefix(keyframe: bool, payload_len: usize) -> [u8; VIDEO_PREFIX_LEN] {
    let n = (payload_len as u32 + 1).to_be_bytes();
    let (frame, nal) = if keyframe { (0x17, 0x65) } else { (0x27, 0x41) };
    [frame, 1, 0, 0, 0, n[0], n[1], n[2], n[3], nal]
}

/// The `avcC` record (the box's payload) inside an init segment.
pub fn avcc_from_init(init: &[u8]) -> Option<&[u8]> {
    let at = init.windows(4).position(|w| w == b"avcC")?;
    let size = u32::from_be_bytes(init.get(at.checked_sub(4)?..at)?.try_into().ok()?) as usize;
    init.get(at + 4..(at - 4).checked_add(size)?)
}

/// The demo clip's init segment (empty if it cannot be loaded).
fn demo_init() -> Bytes {
    crate::media::demo::Demo::load()
        .map(|d| d.init().bytes.clone())
        .unwrap_or_default()
}

/// A minimal `avcC` (baseline, 16x16) for when the demo clip has none.
const FALLBACK_AVCC: &[u8] = &[
    0x01, 0x42, 0xc0, 0x0a, 0xff, 0xe1, 0x00, 0x0b, 0x67, 0x42, 0xc0, 0x0a, 0xda, 0x0f, 0x88, 0x8c,
    0x04, 0x40, 0x00, 0x01, 0x00, 0x04, 0x68, 0xce, 0x3c, 0x80,
];

#[derive(Debug)]
enum State {
    /// Reading the 9-byte file header.
    File,
    /// Reading an 11-byte tag header.
    Tag,
    /// Reading the prefix of a video tag of `size` body bytes.
    Prefix { size: usize },
    /// Passing `left` bytes of a raw message on.
    Pass { left: usize },
    /// Skipping `left` bytes.
    Skip { left: usize },
}

/// A sans-IO FLV demuxer that hands on the raw-message bytes of video tags.
#[derive(Debug)]
pub struct FlvDemux {
    state: State,
    buf: Vec<u8>,
    /// Video tags whose payload was handed on.
    pub tags: u64,
    /// A fatal framing error.
    pub error: Option<String>,
}

impl Default for FlvDemux {
    fn default() -> Self {
        FlvDemux {
            state: State::File,
            buf: Vec::with_capacity(TAG_HEADER_LEN),
            tags: 0,
            error: None,
        }
    }
}

impl FlvDemux {
    /// Feeds received bytes; calls `out` with every piece of raw message.
    pub fn feed(&mut self, mut data: &[u8], mut out: impl FnMut(&[u8])) {
        while !data.is_empty() && self.error.is_none() {
            match self.state {
                State::File | State::Tag | State::Prefix { .. } => {
                    let want = match self.state {
                        State::File => 9,
                        State::Tag => TAG_HEADER_LEN,
                        _ => VIDEO_PREFIX_LEN,
                    };
                    let take = (want - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buf.len() == want {
                        self.header();
                        self.buf.clear();
                    }
                }
                State::Pass { left } => {
                    let take = left.min(data.len());
                    out(&data[..take]);
                    data = &data[take..];
                    self.state = if left == take {
                        self.tags += 1;
                        State::Skip { left: 4 }
                    } else {
                        State::Pass { left: left - take }
                    };
                }
                State::Skip { left } => {
                    let take = left.min(data.len());
                    data = &data[take..];
                    self.state = if left == take {
                        State::Tag
                    } else {
                        State::Skip { left: left - take }
                    };
                }
            }
        }
    }

    /// A complete header in `buf` (file, tag or video prefix).
    fn header(&mut self) {
        let b = &self.buf;
        self.state = match self.state {
            State::File => {
                let offset = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) as usize;
                if &b[..3] != b"FLV" || !(9..=1024).contains(&offset) {
                    self.error = Some("not an FLV header".into());
                    return;
                }
                // The rest of the header and PreviousTagSize0.
                State::Skip {
                    left: offset - 9 + 4,
                }
            }
            State::Tag => {
                let size = (usize::from(b[1]) << 16) | (usize::from(b[2]) << 8) | usize::from(b[3]);
                if b[0] & 0xc0 != 0 || size > TAG_MAX {
                    self.error = Some(format!("bad FLV tag: type {:#x} size {size}", b[0]));
                    return;
                }
                if b[0] & 0x1f == TAG_VIDEO && size >= VIDEO_PREFIX_LEN {
                    State::Prefix { size }
                } else {
                    State::Skip { left: size + 4 }
                }
            }
            State::Prefix { size } => {
                let left = size - VIDEO_PREFIX_LEN;
                // An AVC (codec 7) NALU packet (type 1) with a payload; others
                // (sequence headers, end of sequence) are skipped.
                if b[0] & 0x0f == 7 && b[1] == 1 && left > 0 {
                    State::Pass { left }
                } else {
                    State::Skip { left: left + 4 }
                }
            }
            State::Pass { .. } | State::Skip { .. } => return,
        };
    }
}

/// Publishes FLV by HTTP POST (chunked) to `url` (`http://HOST/APP/NAME.flv`)
/// at `fps` tags per second until aborted.
pub(super) async fn publish(
    url: &str,
    synth: &Synth,
    fps: f64,
    tally: &Tally,
) -> std::io::Result<()> {
    let (host, path) = super::wsclient::split_url(url, "http://")?;
    let mut tcp = tokio::net::TcpStream::connect(&host).await?;
    tcp.set_nodelay(true)?;
    let mut out = BytesMut::with_capacity(synth.fragment_len() + 64);
    out.put_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: video/x-flv\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    );
    let init = demo_init();
    let avcc = avcc_from_init(&init).unwrap_or(FALLBACK_AVCC);
    let mut first = BytesMut::new();
    first.put_slice(&file_header());
    put_tag(&mut first, TAG_VIDEO, 0, &[&sequence_header(avcc)]);
    put_chunk(&mut out, &first);
    tcp.write_all(&out).await?;
    let period = Duration::from_secs_f64(1.0 / fps);
    let start = tokio::time::Instant::now();
    let mut seq = 0u64;
    let mut tag = BytesMut::new();
    loop {
        let msg: Bytes = synth.fragment(seq, now_ns());
        tag.clear();
        let ts = (seq as f64 * 1000.0 / fps) as u32;
        let prefix = video_prefix(synth.is_keyframe(seq), msg.len());
        put_tag(&mut tag, TAG_VIDEO, ts, &[&prefix, &msg]);
        out.clear();
        put_chunk(&mut out, &tag);
        tcp.write_all(&out).await?;
        if tally.measuring.load(Relaxed) {
            tally.published.fetch_add(1, Relaxed);
        }
        seq += 1;
        tokio::time::sleep_until(start + period * seq as u32).await;
    }
}

/// One HTTP/1.1 chunk.
fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// A viewer of an HTTP-FLV stream.
pub(super) async fn view(
    url: &str,
    check: &mut ViewerCheck,
    joined: &mut impl FnMut(bool),
) -> std::io::Result<()> {
    use http_body_util::BodyExt;
    let mut body = super::http_body(url, joined).await?;
    let mut demux = FlvDemux::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            demux.feed(data, |raw| check.bytes(raw));
            if let Some(e) = demux.error.take() {
                return Err(std::io::Error::other(e));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::synth::RawHeader;
    use super::*;

    /// What a publisher writes for seqs `seqs` (without the HTTP chunking).
    fn stream(synth: &Synth, seqs: std::ops::Range<u64>) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_slice(&file_header());
        // A script tag and an audio tag, as a relay may send: skipped.
        put_tag(&mut out, 18, 0, &[b"\x02\x00\x0aonMetaData"]);
        put_tag(&mut out, 8, 0, &[&[0xaf, 0x00, 0x12, 0x10]]);
        let init = demo_init();
        let avcc = avcc_from_init(&init).unwrap_or(FALLBACK_AVCC);
        put_tag(&mut out, TAG_VIDEO, 0, &[&sequence_header(avcc)]);
        for seq in seqs {
            let msg = synth.fragment(seq, 1000 + seq);
            let prefix = video_prefix(synth.is_keyframe(seq), msg.len());
            put_tag(&mut out, TAG_VIDEO, seq as u32 * 100, &[&prefix, &msg]);
        }
        out
    }

    #[test]
    fn the_demo_init_has_an_avcc() {
        let init = demo_init();
        let avcc = avcc_from_init(&init).expect("avcC");
        assert_eq!(avcc[0], 1, "configurationVersion");
        assert_eq!(avcc[4] | 0xfc, 0xff, "lengthSizeMinusOne = 3");
    }

    #[test]
    fn round_trip_in_any_pieces() {
        let synth = Synth::new(200_000, 10.0, 3, true).expect("synth");
        let bytes = stream(&synth, 0..7);
        for piece in [1, 7, 13, 4096, bytes.len()] {
            let mut demux = FlvDemux::default();
            let mut raw = Vec::new();
            for c in bytes.chunks(piece) {
                demux.feed(c, |b| raw.extend_from_slice(b));
            }
            assert!(demux.error.is_none(), "{:?}", demux.error);
            assert_eq!(demux.tags, 7);
            let len = synth.fragment_len();
            assert_eq!(raw.len(), 7 * len);
            for (i, m) in raw.chunks(len).enumerate() {
                let h = RawHeader::parse(m).expect("raw header");
                assert_eq!(
                    (h.seq, h.send_ns, h.keyframe),
                    (i as u64, 1000 + i as u64, i % 3 == 0)
                );
            }
        }
    }

    #[test]
    fn tags_carry_lengths_a_relay_can_check() {
        let synth = Synth::new(80_000, 10.0, 1, true).expect("synth");
        let msg = synth.fragment(0, 1);
        let mut out = BytesMut::new();
        put_tag(
            &mut out,
            TAG_VIDEO,
            0x0100_0002,
            &[&video_prefix(true, msg.len()), &msg],
        );
        let body = TAG_HEADER_LEN..out.len() - 4;
        assert_eq!(out[0], TAG_VIDEO);
        assert_eq!(&out[4..8], &[0, 0, 2, 1], "timestamp + extension");
        // NALU length = the rest of the body after it.
        let nalu = u32::from_be_bytes([out[16], out[17], out[18], out[19]]) as usize;
        assert_eq!(nalu, body.end - (body.start + 9));
        let prev = u32::from_be_bytes(out[out.len() - 4..].try_into().expect("4 bytes"));
        assert_eq!(prev as usize, out.len() - 4);
    }

    #[test]
    fn a_viewer_behind_the_demux_counts_skips() {
        let synth = Synth::new(100_000, 10.0, 2, true).expect("synth");
        let mut bytes = stream(&synth, 0..3);
        let tail = stream(&synth, 5..7);
        // Another stream's tags without its file header and leading tags: seqs 5 and 6.
        let skip = file_header().len() + (bytes.len() - file_header().len())
            - 3 * (TAG_HEADER_LEN + VIDEO_PREFIX_LEN + synth.fragment_len() + 4);
        bytes.extend_from_slice(&tail[skip..]);
        let tally = std::sync::Arc::new(Tally::new());
        tally.measuring.store(true, Relaxed);
        let mut check = ViewerCheck::new(0, true, tally.clone(), std::time::Instant::now());
        let mut demux = FlvDemux::default();
        for c in bytes.chunks(1000) {
            demux.feed(c, |raw| check.bytes(raw));
        }
        assert!(demux.error.is_none(), "{:?}", demux.error);
        assert_eq!(tally.fragments.load(Relaxed), 5);
        assert_eq!(tally.skips.load(Relaxed), 1);
        assert_eq!(tally.missed.load(Relaxed), 2);
        assert_eq!(tally.join.lock().len(), 1);
        assert_eq!(tally.errors.load(Relaxed), 0);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut demux = FlvDemux::default();
        demux.feed(b"HTTP/1.1 200 OK\r\n\r\n", |_| {});
        assert!(demux.error.is_some());
        let mut demux = FlvDemux::default();
        let mut b = file_header().to_vec();
        b.extend_from_slice(&[0xff; 32]);
        demux.feed(&b, |_| panic!("no payload"));
        assert!(demux.error.is_some());
        // Truncated tags just wait for more.
        let mut demux = FlvDemux::default();
        let mut b = file_header().to_vec();
        b.extend_from_slice(&[9, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0x27, 1]);
        demux.feed(&b, |_| {});
        assert!(demux.error.is_none());
    }
}
