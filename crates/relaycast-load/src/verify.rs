//! What one viewer checks: a sans-IO parser fed the bytes a viewer receives
//! (in any pieces: WebSocket payloads, HTTP body chunks, poll answers) that
//! finds each fragment's seq and send time, and a tally of continuity
//! (gaps = skips, repeats) per viewer.
//!
//! fMP4 mode walks top-level boxes: `prft` gives the send time, the `moof`'s
//! `mfhd` the seq and its `trun` whether it is a keyframe; the fragment is
//! complete at the end of its `mdat`, and that is when it counts as received.
//! Other boxes (`ftyp`, `moov`, `free`, …) are skipped. Raw mode reads
//! [`RawHeader`]s and skips anything between messages that is not one (nchan's
//! `http-raw-stream` puts a newline after each message).

use super::synth::{RAW_HEADER_LEN, RAW_MAGIC, RawHeader, unix_ns_from_ntp};

/// Largest box the parser keeps to read (a `moof` with many samples is larger
/// than ours; past this, its seq is not read and the fragment is not counted).
const CAPTURE_MAX: usize = 64 << 10;

/// One fragment fully received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The generator's seq.
    pub seq: u64,
    /// Opens a group.
    pub keyframe: bool,
    /// Send time, Unix ns (0 when the fragment carried none).
    pub send_ns: u64,
    /// Length in bytes of the fragment as parsed.
    pub len: u64,
}

#[derive(Debug)]
enum State {
    /// Reading a box / message header.
    Header,
    /// Keeping a small box whole to read it.
    Capture { kind: [u8; 4], size: usize },
    /// Passing over `left` bytes; `ends_fragment` when this is an `mdat` or a
    /// raw message body.
    Skip { left: u64, ends_fragment: bool },
}

/// The parser; see the module docs.
#[derive(Debug)]
pub struct Parser {
    raw: bool,
    state: State,
    buf: Vec<u8>,
    /// Fields of the fragment being read.
    send_ns: u64,
    seq: Option<u64>,
    keyframe: bool,
    len: u64,
    /// Bytes that were not part of any box or message.
    pub junk: u64,
    /// A fatal framing error (fMP4 mode: a box size below 8).
    pub error: Option<String>,
}

impl Parser {
    /// A parser for fMP4 (`raw = false`) or raw messages.
    pub fn new(raw: bool) -> Parser {
        Parser {
            raw,
            state: State::Header,
            buf: Vec::with_capacity(if raw { RAW_HEADER_LEN } else { 128 }),
            send_ns: 0,
            seq: None,
            keyframe: false,
            len: 0,
            junk: 0,
            error: None,
        }
    }

    /// Feeds received bytes; calls `done` for every fragment completed.
    pub fn feed(&mut self, mut data: &[u8], mut done: impl FnMut(Received)) {
        while !data.is_empty() && self.error.is_none() {
            match &mut self.state {
                State::Header => {
                    let want = if self.raw { RAW_HEADER_LEN } else { 8 };
                    let take = (want - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buf.len() < want {
                        continue;
                    }
                    if self.raw {
                        self.raw_header();
                    } else {
                        self.box_header();
                    }
                    if let State::Skip {
                        left: 0,
                        ends_fragment,
                    } = self.state
                    {
                        self.state = State::Header;
                        if ends_fragment {
                            self.complete(&mut done);
                        }
                    }
                }
                State::Capture { kind, size } => {
                    let take = (*size - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buf.len() == *size {
                        let kind = *kind;
                        self.captured(kind);
                        self.buf.clear();
                        self.state = State::Header;
                    }
                }
                State::Skip {
                    left,
                    ends_fragment,
                } => {
                    let take = (*left).min(data.len() as u64);
                    *left -= take;
                    data = &data[take as usize..];
                    if *left == 0 {
                        let ends = *ends_fragment;
                        self.state = State::Header;
                        if ends {
                            self.complete(&mut done);
                        }
                    }
                }
            }
        }
    }

    fn raw_header(&mut self) {
        match RawHeader::parse(&self.buf) {
            Some(h) if h.len as usize >= RAW_HEADER_LEN => {
                self.buf.clear();
                self.seq = Some(h.seq);
                self.send_ns = h.send_ns;
                self.keyframe = h.keyframe;
                self.len = u64::from(h.len);
                self.state = State::Skip {
                    left: u64::from(h.len) - RAW_HEADER_LEN as u64,
                    ends_fragment: true,
                };
            }
            _ => {
                // Resynchronise on the next magic.
                let at = self.buf[1..]
                    .windows(RAW_MAGIC.len())
                    .position(|w| w == RAW_MAGIC)
                    .map_or(self.buf.len(), |p| p + 1);
                let at = if at == self.buf.len() {
                    // Keep a possible partial magic at the end.
                    (1..RAW_MAGIC.len())
                        .rev()
                        .find(|&k| self.buf.ends_with(&RAW_MAGIC[..k]))
                        .map_or(self.buf.len(), |k| self.buf.len() - k)
                } else {
                    at
                };
                self.junk += at as u64;
                self.buf.drain(..at);
            }
        }
    }

    fn box_header(&mut self) {
        let size = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as u64;
        let kind = [self.buf[4], self.buf[5], self.buf[6], self.buf[7]];
        if size < 8 {
            // Size 1 (64-bit) and 0 (to the end) never occur in a live relay's output.
            self.error = Some(format!(
                "box '{}' with size {size}",
                String::from_utf8_lossy(&kind)
            ));
            return;
        }
        match &kind {
            b"prft" | b"moof" if size as usize <= CAPTURE_MAX => {
                if &kind == b"prft" {
                    // A new fragment starts.
                    self.seq = None;
                    self.send_ns = 0;
                    self.len = 0;
                }
                self.len += size;
                self.state = State::Capture {
                    kind,
                    size: size as usize,
                };
                return;
            }
            b"mdat" => {
                self.len += size;
                self.state = State::Skip {
                    left: size - 8,
                    ends_fragment: true,
                };
            }
            _ => {
                self.state = State::Skip {
                    left: size - 8,
                    ends_fragment: false,
                };
            }
        }
        self.buf.clear();
    }

    fn captured(&mut self, kind: [u8; 4]) {
        let b = &self.buf;
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        };
        if &kind == b"prft" {
            // version 1: 8 header + 4 version/flags + 4 track + 8 NTP.
            let ntp = if b.get(8) == Some(&1) || b.len() >= 32 {
                (u64::from(u32_at(16)) << 32) | u64::from(u32_at(20))
            } else {
                0
            };
            self.send_ns = unix_ns_from_ntp(ntp);
            return;
        }
        // moof: walk children for mfhd and the first traf's trun.
        let mut at = 8;
        while at + 8 <= b.len() {
            let size = u32_at(at) as usize;
            let kind = b.get(at + 4..at + 8).unwrap_or_default();
            if size < 8 {
                break;
            }
            match kind {
                b"mfhd" => self.seq = Some(u64::from(u32_at(at + 12))),
                b"traf" => {
                    let mut t = at + 8;
                    while t + 8 <= (at + size).min(b.len()) {
                        let tsize = u32_at(t) as usize;
                        if tsize < 8 {
                            break;
                        }
                        if b.get(t + 4..t + 8) == Some(b"trun") {
                            let flags = u32_at(t + 8) & 0xff_ffff;
                            let mut p = t + 16;
                            if flags & 1 != 0 {
                                p += 4;
                            }
                            if flags & 4 != 0 {
                                self.keyframe = u32_at(p) & 0x0001_0000 == 0;
                            }
                            break;
                        }
                        t += tsize;
                    }
                }
                _ => {}
            }
            at += size;
        }
    }

    fn complete(&mut self, done: &mut impl FnMut(Received)) {
        if let Some(seq) = self.seq.take() {
            done(Received {
                seq,
                keyframe: self.keyframe,
                send_ns: self.send_ns,
                len: self.len,
            });
        }
        self.send_ns = 0;
        self.len = 0;
        self.keyframe = false;
    }
}

/// Continuity of one viewer's fragments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Continuity {
    /// Seq of the last fragment.
    pub last: Option<u64>,
    /// Fragments received.
    pub fragments: u64,
    /// Times the seq jumped forward (a skip).
    pub skips: u64,
    /// Fragments jumped over.
    pub missed: u64,
    /// Fragments that repeated or went backwards.
    pub repeats: u64,
}

impl Continuity {
    /// Accounts for fragment `seq`; returns true when it is the expected one
    /// (or the first).
    pub fn see(&mut self, seq: u64) -> bool {
        self.fragments += 1;
        let ok = match self.last {
            None => true,
            Some(l) if seq == l + 1 => true,
            Some(l) if seq > l + 1 => {
                self.skips += 1;
                self.missed += seq - l - 1;
                false
            }
            Some(_) => {
                self.repeats += 1;
                false
            }
        };
        if self.last.is_none_or(|l| seq > l) {
            self.last = Some(seq);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::super::synth::Synth;
    use super::*;

    fn parse_all(raw: bool, data: &[u8], piece: usize) -> (Vec<Received>, Parser) {
        let mut p = Parser::new(raw);
        let mut out = Vec::new();
        for chunk in data.chunks(piece) {
            p.feed(chunk, |r| out.push(r));
        }
        (out, p)
    }

    #[test]
    fn reads_seqs_and_times_in_any_pieces() {
        for raw in [false, true] {
            let s = Synth::new(800_000, 25.0, 5, raw).expect("synth");
            let mut all = s.init().to_vec();
            for seq in 7..12 {
                all.extend_from_slice(&s.fragment(seq, 1_000_000_000 * seq));
            }
            for piece in [1, 7, 100, 1 << 20] {
                let (got, p) = parse_all(raw, &all, piece);
                assert_eq!(p.error, None);
                assert_eq!(p.junk, 0);
                let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
                assert_eq!(seqs, vec![7, 8, 9, 10, 11], "raw={raw} piece={piece}");
                assert!(got[3].keyframe && !got[2].keyframe);
                assert!(got[0].send_ns.abs_diff(7_000_000_000) < 2);
                assert_eq!(got[0].len, s.fragment_len() as u64);
            }
        }
    }

    #[test]
    fn raw_mode_skips_separators() {
        let s = Synth::new(80_000, 10.0, 10, true).expect("synth");
        let mut all = Vec::new();
        for seq in 0..4 {
            all.extend_from_slice(&s.fragment(seq, 5));
            all.push(b'\n');
        }
        let (got, p) = parse_all(true, &all, 3);
        assert_eq!(got.len(), 4);
        // The last separator waits in the header buffer for more bytes.
        assert_eq!(p.junk, 3);
    }

    #[test]
    fn detects_a_gap_and_a_repeat() {
        let mut c = Continuity::default();
        for seq in [3, 4, 5, 9, 10, 10, 11] {
            c.see(seq);
        }
        assert_eq!(c.skips, 1);
        assert_eq!(c.missed, 3);
        assert_eq!(c.repeats, 1);
        assert_eq!(c.last, Some(11));
        assert_eq!(c.fragments, 7);
    }

    #[test]
    fn a_gap_in_the_byte_stream_is_seen() {
        let s = Synth::new(800_000, 25.0, 5, false).expect("synth");
        let mut all = Vec::new();
        for seq in [1, 2, 4] {
            all.extend_from_slice(&s.fragment(seq, 0));
        }
        let mut c = Continuity::default();
        let (got, _) = parse_all(false, &all, 64);
        for r in got {
            c.see(r.seq);
        }
        assert_eq!((c.skips, c.missed), (1, 1));
    }

    #[test]
    fn bad_box_is_an_error_not_a_panic() {
        let (_, p) = parse_all(false, &[0, 0, 0, 3, b'a', b'b', b'c', b'd', 1, 2], 4);
        assert!(p.error.is_some());
    }
}
