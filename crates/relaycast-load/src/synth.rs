//! The synthetic stream the load generator publishes: the demo clip's init
//! segment, then fragments of a chosen size and rate, each led by a `prft`
//! box (CMAF producer reference time) carrying its send time, with the `mfhd`
//! sequence number = the generator's own seq. Structurally valid fMP4 (the
//! relay's splitter accepts it), not decodable video: the `mdat` is filler.
//!
//! In `raw` mode a message is instead a 32-byte [`RawHeader`] plus filler,
//! for peers that are byte pipes and never look at the payload.

use bytes::{BufMut, Bytes, BytesMut};

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Size of the `prft` box written before every `moof`.
pub const PRFT_LEN: usize = 32;
/// Size of the `moof` box written by [`Synth::fragment`].
pub const MOOF_LEN: usize = 100;
/// Raw mode: the magic that starts every message.
pub const RAW_MAGIC: [u8; 4] = *b"RCL1";
/// Raw mode: header length.
pub const RAW_HEADER_LEN: usize = 32;
/// The video track id of the demo init segment.
const TRACK_ID: u32 = 1;
/// The video timescale of the demo init segment.
const TIMESCALE: u64 = 15_360;

/// Unix time in ns from the wall clock (the same clock in every process
/// on the machine, so a publisher and viewers in different processes agree).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Unix ns → 64-bit NTP timestamp (32.32 fixed point).
pub fn ntp_from_unix_ns(ns: u64) -> u64 {
    let secs = ns / 1_000_000_000 + NTP_UNIX_OFFSET;
    let frac = ((ns % 1_000_000_000) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// 64-bit NTP timestamp → Unix ns (0 before 1970).
pub fn unix_ns_from_ntp(ntp: u64) -> u64 {
    let secs = (ntp >> 32).saturating_sub(NTP_UNIX_OFFSET);
    let frac = ((ntp & 0xffff_ffff) * 1_000_000_000) >> 32;
    secs * 1_000_000_000 + frac
}

/// The header of a raw-mode message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHeader {
    /// Total message length, header included.
    pub len: u32,
    /// The generator's seq.
    pub seq: u64,
    /// Send time, Unix ns.
    pub send_ns: u64,
    /// The message opens a group.
    pub keyframe: bool,
}

impl RawHeader {
    /// Parses the 32 bytes at the start of `b` (None when the magic is wrong).
    pub fn parse(b: &[u8]) -> Option<RawHeader> {
        let b = b.get(..RAW_HEADER_LEN)?;
        if b[..4] != RAW_MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Some(RawHeader {
            len: u32_at(4),
            seq: u64_at(8),
            send_ns: u64_at(16),
            keyframe: u32_at(24) & 1 != 0,
        })
    }
}

/// The generator of one synthetic stream.
#[derive(Clone, Debug)]
pub struct Synth {
    init: Bytes,
    frag_bytes: usize,
    frag_ticks: u64,
    gop: u64,
    raw: bool,
}

impl Synth {
    /// `bitrate` bit/s at `fps` fragments per second, a keyframe every
    /// `gop` fragments (≥ 1).
    pub fn new(bitrate: u64, fps: f64, gop: u64, raw: bool) -> Result<Synth, crate::Error> {
        if !(fps > 0.0 && fps <= 1000.0) {
            return Err(crate::Error::Internal(format!(
                "fragment rate {fps}/s out of range"
            )));
        }
        let demo = crate::media::demo::Demo::load()
            .map_err(|e| crate::Error::Internal(format!("demo clip: {e}")))?;
        let min = if raw {
            RAW_HEADER_LEN
        } else {
            PRFT_LEN + MOOF_LEN + 8
        };
        let frag_bytes = ((bitrate as f64 / 8.0 / fps) as usize).max(min);
        Ok(Synth {
            init: demo.init().bytes.clone(),
            frag_bytes,
            frag_ticks: (TIMESCALE as f64 / fps).round() as u64,
            gop: gop.max(1),
            raw,
        })
    }

    /// The init segment (empty in raw mode).
    pub fn init(&self) -> Bytes {
        if self.raw {
            Bytes::new()
        } else {
            self.init.clone()
        }
    }

    /// Bytes per fragment.
    pub fn fragment_len(&self) -> usize {
        self.frag_bytes
    }

    /// Whether fragment `seq` opens a group.
    pub fn is_keyframe(&self, seq: u64) -> bool {
        seq % self.gop == 0
    }

    /// Fragment `seq`, stamped with `send_ns`.
    pub fn fragment(&self, seq: u64, send_ns: u64) -> Bytes {
        let key = self.is_keyframe(seq);
        let mut b = BytesMut::with_capacity(self.frag_bytes);
        if self.raw {
            b.put_slice(&RAW_MAGIC);
            b.put_u32(self.frag_bytes as u32);
            b.put_u64(seq);
            b.put_u64(send_ns);
            b.put_u32(u32::from(key));
            b.put_u32(0);
        } else {
            let mdat_payload = self.frag_bytes - PRFT_LEN - MOOF_LEN - 8;
            // prft v1: reference track, NTP time, media time.
            b.put_u32(PRFT_LEN as u32);
            b.put_slice(b"prft");
            b.put_u32(1 << 24);
            b.put_u32(TRACK_ID);
            b.put_u64(ntp_from_unix_ns(send_ns));
            b.put_u64(seq * self.frag_ticks);
            // moof = mfhd + traf(tfhd, tfdt, trun with one sample).
            b.put_u32(MOOF_LEN as u32);
            b.put_slice(b"moof");
            b.put_u32(16);
            b.put_slice(b"mfhd");
            b.put_u32(0);
            b.put_u32(seq as u32);
            b.put_u32(76);
            b.put_slice(b"traf");
            b.put_u32(16);
            b.put_slice(b"tfhd");
            b.put_u32(0x02_0000); // default-base-is-moof
            b.put_u32(TRACK_ID);
            b.put_u32(20);
            b.put_slice(b"tfdt");
            b.put_u32(1 << 24);
            b.put_u64(seq * self.frag_ticks);
            b.put_u32(32);
            b.put_slice(b"trun");
            b.put_u32(0x00_0305); // data offset, first-sample flags, duration, size
            b.put_u32(1);
            b.put_u32((MOOF_LEN + 8) as u32);
            b.put_u32(if key { 0x0200_0000 } else { 0x0101_0000 });
            b.put_u32(self.frag_ticks as u32);
            b.put_u32(mdat_payload as u32);
            b.put_u32((mdat_payload + 8) as u32);
            b.put_slice(b"mdat");
        }
        b.resize(self.frag_bytes, 0);
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Item, Splitter, SplitterConfig};

    #[test]
    fn ntp_round_trip() {
        let ns = 1_764_000_000_123_456_789u64;
        let back = unix_ns_from_ntp(ntp_from_unix_ns(ns));
        assert!(back.abs_diff(ns) < 2, "{back} vs {ns}");
    }

    #[test]
    fn the_splitter_accepts_synthetic_fragments() {
        let s = Synth::new(2_500_000, 30.0, 30, false).expect("synth");
        let mut sp = Splitter::new(SplitterConfig::default());
        sp.push_bytes(s.init());
        for seq in 0..3 {
            sp.push_bytes(s.fragment(seq, now_ns()));
        }
        let mut frags = Vec::new();
        while let Some(item) = sp.next_item().expect("valid fMP4") {
            if let Item::Fragment(f) = item {
                frags.push(f);
            }
        }
        assert_eq!(frags.len(), 3);
        assert!(frags[0].keyframe);
        assert!(!frags[1].keyframe);
        assert_eq!(frags[2].mfhd_seq, 2);
        assert_eq!(frags[1].bytes.len(), s.fragment_len());
    }

    #[test]
    fn raw_header_round_trip() {
        let s = Synth::new(1_000_000, 10.0, 10, true).expect("synth");
        let m = s.fragment(20, 42);
        let h = RawHeader::parse(&m).expect("header");
        assert_eq!(
            h,
            RawHeader {
                len: m.len() as u32,
                seq: 20,
                send_ns: 42,
                keyframe: true
            }
        );
    }
}
