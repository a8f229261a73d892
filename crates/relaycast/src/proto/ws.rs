//! The WebSocket frame format (RFC 6455 §5), sans-IO: read a frame header
//! out of bytes, write one into a buffer, mask a payload, and [`Reader`]: the
//! server's side of reading what a client sends, every rule of §5 checked
//! (masking, RSV bits, opcodes, fragmentation, control frames, close codes,
//! UTF-8 of text messages across fragments, a message size limit), one
//! verdict per violation with the close code to answer. One codec for the
//! relay's hand-framed viewer egress and publisher ingest (which write
//! server frames and read masked client frames) and for the load generator's
//! client (the reverse).
//!
//! Why not tungstenite's: the viewer egress writes a batch of frames as one
//! vectored write whose payloads are the stored `Bytes` (no copy into a
//! message), and reads client frames out of a fixed 256-byte buffer per
//! viewer; the publisher ingest hands each payload piece to the splitter as
//! it arrives (a message is never assembled), answers a client's close after
//! its JSON summary, and drains a refused message before closing (a lingering
//! close, so the client reads the close code instead of a reset).
//! tungstenite owns its buffers, copies every message, and refuses to send
//! anything once the peer's close has arrived.

use bytes::BufMut;

/// Continuation frame.
pub const CONTINUATION: u8 = 0x0;
/// Text frame.
pub const TEXT: u8 = 0x1;
/// Binary frame.
pub const BINARY: u8 = 0x2;
/// Close frame.
pub const CLOSE: u8 = 0x8;
/// Ping frame.
pub const PING: u8 = 0x9;
/// Pong frame.
pub const PONG: u8 = 0xa;

/// Longest frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// One frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Final fragment of a message.
    pub fin: bool,
    /// The three RSV bits (bits 6..4 of the first byte); no extension is
    /// negotiated, so anything but 0 is a protocol error.
    pub rsv: u8,
    /// Opcode.
    pub opcode: u8,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Bytes of the header (the payload starts here).
    pub header_len: usize,
}

impl Header {
    /// A control frame (close, ping, pong, reserved 0xB–0xF).
    pub fn is_control(&self) -> bool {
        self.opcode >= 0x8
    }

    /// Read a header from the start of `b`; `None` until all of it is there.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let b0 = *b.first()?;
        let b1 = *b.get(1)?;
        let (len, mut hl) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
            127 => {
                let s = b.get(2..10)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                (u64::from_be_bytes(a), 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if b1 & 0x80 != 0 {
            let m = b.get(hl..hl + 4)?;
            hl += 4;
            Some([m[0], m[1], m[2], m[3]])
        } else {
            None
        };
        Some(Header {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0f,
            mask,
            len,
            header_len: hl,
        })
    }
}

/// Append the header of a final frame: `opcode`, `len` payload bytes,
/// masked with `mask` (clients) or not (servers).
pub fn put_header(out: &mut impl BufMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.put_u8(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(m | len as u8);
    } else if len <= 0xffff {
        out.put_u8(m | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(m | 127);
        out.put_u64(len as u64);
    }
    if let Some(k) = mask {
        out.put_slice(&k);
    }
}

/// Mask or unmask `data` in place with `key`; `offset` is the position of
/// `data[0]` in the payload (for payloads read in pieces).
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

/// Is `code` a close code a peer may send (RFC 6455 §7.4): 1000–1003,
/// 1007–1011 (and 1012–1014, registered since), 3000–4999. 1004–1006 and
/// 1015 are reserved for reporting, never sent.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What the client's bytes said, one event at a time (see [`Reader::next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A piece of a data message's payload, unmasked in place: `range` of
    /// the buffer given to [`Reader::next`] (may be empty). `text` for a text
    /// message (its UTF-8 is checked); `end` on the message's last piece.
    Data {
        /// Where the piece is in the buffer.
        range: std::ops::Range<usize>,
        /// A text message (else binary).
        text: bool,
        /// The last piece of the message.
        end: bool,
    },
    /// A ping: answer with a pong carrying `buf[range]` (unmasked).
    Ping(std::ops::Range<usize>),
    /// A pong (nothing to do).
    Pong,
    /// The client closed: answer with a close frame carrying `code` (its
    /// own code echoed, or 1000 when it sent none), then close the
    /// connection. Nothing more is read.
    Close(u16),
    /// The client broke the protocol or a limit: close with `code` and
    /// `reason`. Nothing more is read (but see [`Reader::drain`]).
    Fail {
        /// 1002 protocol error, 1007 invalid UTF-8, 1009 message too big.
        code: u16,
        /// What was wrong (fits a close frame).
        reason: &'static str,
    },
}

/// One step of [`Reader::next`]: `used` bytes of the buffer are consumed
/// (drop them before the next call), and maybe an event. `used == 0` with no
/// event: more bytes are needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes consumed from the front of the buffer.
    pub used: usize,
    /// What they said, if anything yet.
    pub event: Option<Event>,
}

/// Incremental UTF-8 check: pieces may split a character anywhere.
#[derive(Clone, Debug, Default)]
struct Utf8 {
    /// The start of a character cut by the end of the previous piece.
    carry: [u8; 4],
    n: usize,
}

impl Utf8 {
    /// Feed a piece; false when it cannot be UTF-8 whatever follows.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        while self.n > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return true;
            };
            data = rest;
            self.carry[self.n] = b;
            self.n += 1;
            match std::str::from_utf8(&self.carry[..self.n]) {
                Ok(_) => self.n = 0,
                Err(e) if e.error_len().is_none() && self.n < 4 => {}
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                let rest = &data[e.valid_up_to()..];
                self.carry[..rest.len()].copy_from_slice(rest);
                self.n = rest.len();
                true
            }
            Err(_) => false,
        }
    }

    /// The message ended: no character may be left cut.
    fn finish(&mut self) -> bool {
        std::mem::take(&mut self.n) == 0
    }
}

/// The server side of reading a client's frames (RFC 6455 §5, §7), sans-IO:
/// the caller reads bytes from the socket into a buffer and calls
/// [`next`](Self::next) on what is buffered; payload is unmasked in place
/// and pointed at, never copied, so a data message of any size passes
/// through a buffer of a few hundred bytes (a control frame, at most 139
/// bytes, must fit whole).
///
/// Every violation ends reading with [`Event::Fail`] and its close code:
/// 1002 for an unmasked frame, RSV bits (no extension is negotiated), a
/// reserved opcode, a fragmented or oversized control frame, a continuation
/// with no message to continue or a new message inside a fragmented one, a
/// close payload of one byte or with a code no peer may send; 1007 for a
/// text message or close reason that is not UTF-8; 1009 for a message over
/// `max_message` bytes (checked at each frame's header, before its payload).
#[derive(Clone, Debug)]
pub struct Reader {
    max_message: u64,
    /// Payload bytes of the current data frame still to come.
    remaining: u64,
    /// Mask of the current data frame, and the payload offset reached.
    mask: [u8; 4],
    offset: u64,
    /// The current data frame is its message's last.
    frame_fin: bool,
    /// Inside a fragmented message (its first frame had no FIN), and of
    /// which kind.
    in_message: bool,
    text: bool,
    /// Bytes of the message so far.
    message: u64,
    utf8: Utf8,
    /// A close or failure was returned: nothing more is read.
    done: bool,
    /// After [`drain`](Self::drain): skip every payload, report only a close.
    draining: bool,
}

impl Reader {
    /// A reader that refuses data messages over `max_message` bytes.
    pub fn new(max_message: u64) -> Reader {
        Reader {
            max_message,
            remaining: 0,
            mask: [0; 4],
            offset: 0,
            frame_fin: true,
            in_message: false,
            text: false,
            message: 0,
            utf8: Utf8::default(),
            done: false,
            draining: false,
        }
    }

    /// The size limit of a data message.
    pub fn max_message(&self) -> u64 {
        self.max_message
    }

    /// Bytes of the current (or refused) data message announced so far.
    pub fn message_len(&self) -> u64 {
        self.message
    }

    /// Once the server sent its close (after [`Event::Fail`], or to end the
    /// session), keep reading only to find the client's close frame: the rest
    /// of a refused message and any other frame are skipped unchecked, and
    /// [`Event::Close`] reports the client's answer. (The caller bounds how
    /// long and how much it drains: after a protocol error the framing may be
    /// lost.)
    pub fn drain(&mut self) {
        self.draining = true;
        self.done = false;
    }

    fn fail(&mut self, code: u16, reason: &'static str) -> Option<Event> {
        self.done = true;
        Some(Event::Fail { code, reason })
    }

    /// Read what `buf` (the bytes buffered so far) holds: at most one event.
    /// Payload is unmasked in place inside `buf`.
    pub fn next(&mut self, buf: &mut [u8]) -> Step {
        let nothing = Step {
            used: 0,
            event: None,
        };
        if self.done {
            return nothing;
        }
        if self.remaining > 0 {
            return self.payload(buf);
        }
        let Some(h) = Header::parse(buf) else {
            return nothing;
        };
        let hl = h.header_len;
        if self.draining {
            if h.opcode == CLOSE && h.len <= 125 {
                if buf.len() < hl + h.len as usize {
                    return nothing;
                }
                self.done = true;
                return Step {
                    used: hl + h.len as usize,
                    event: Some(Event::Close(NORMAL_CLOSE)),
                };
            }
            self.remaining = h.len;
            self.mask = h.mask.unwrap_or_default();
            self.offset = 0;
            return Step {
                used: hl,
                event: None,
            };
        }
        let fail = |r: &mut Reader, code, reason| Step {
            used: 0,
            event: r.fail(code, reason),
        };
        let Some(mask) = h.mask else {
            return fail(self, 1002, "client frames must be masked");
        };
        if h.rsv != 0 {
            return fail(self, 1002, "RSV bits set without an extension");
        }
        if h.is_control() {
            if !matches!(h.opcode, CLOSE | PING | PONG) {
                return fail(self, 1002, "reserved control opcode");
            }
            if h.len > 125 || !h.fin {
                return fail(self, 1002, "control frames are whole and at most 125 bytes");
            }
            let total = hl + h.len as usize;
            if buf.len() < total {
                return nothing;
            }
            let payload = &mut buf[hl..total];
            apply_mask(payload, mask, 0);
            let event = match h.opcode {
                PING => Event::Ping(hl..total),
                PONG => Event::Pong,
                _ => match close_payload(payload) {
                    Ok(code) => {
                        self.done = true;
                        Event::Close(code)
                    }
                    Err((code, reason)) => return fail(self, code, reason),
                },
            };
            return Step {
                used: total,
                event: Some(event),
            };
        }
        match h.opcode {
            CONTINUATION if !self.in_message => {
                return fail(self, 1002, "continuation frame with no message to continue");
            }
            CONTINUATION => {}
            TEXT | BINARY if self.in_message => {
                return fail(self, 1002, "new message inside a fragmented message");
            }
            TEXT | BINARY => {
                self.text = h.opcode == TEXT;
                self.message = 0;
            }
            _ => return fail(self, 1002, "reserved data opcode"),
        }
        self.message = self.message.saturating_add(h.len);
        if self.message > self.max_message {
            // Skip the rest of this frame if the caller drains.
            self.remaining = h.len;
            self.mask = mask;
            self.offset = 0;
            return Step {
                used: hl,
                event: self.fail(1009, "message over the size limit"),
            };
        }
        self.in_message = !h.fin;
        self.frame_fin = h.fin;
        self.mask = mask;
        self.offset = 0;
        self.remaining = h.len;
        if h.len == 0 {
            let end = h.fin;
            if end && self.text && !self.utf8.finish() {
                return fail(self, 1007, "text message is not UTF-8");
            }
            return Step {
                used: hl,
                event: Some(Event::Data {
                    range: hl..hl,
                    text: self.text,
                    end,
                }),
            };
        }
        Step {
            used: hl,
            event: None,
        }
    }

    /// The next piece of the current data frame's payload.
    fn payload(&mut self, buf: &mut [u8]) -> Step {
        let n = self.remaining.min(buf.len() as u64) as usize;
        if n == 0 {
            return Step {
                used: 0,
                event: None,
            };
        }
        let piece = &mut buf[..n];
        self.remaining -= n as u64;
        if self.draining {
            return Step {
                used: n,
                event: None,
            };
        }
        apply_mask(piece, self.mask, (self.offset % 4) as usize);
        self.offset += n as u64;
        let end = self.remaining == 0 && self.frame_fin;
        if self.text && (!self.utf8.feed(piece) || (end && !self.utf8.finish())) {
            return Step {
                used: n,
                event: self.fail(1007, "text message is not UTF-8"),
            };
        }
        Step {
            used: n,
            event: Some(Event::Data {
                range: 0..n,
                text: self.text,
                end,
            }),
        }
    }
}

/// The code of a normal close (RFC 6455 §7.4.1).
const NORMAL_CLOSE: u16 = 1000;

/// The code to answer a client's close payload with (its own, or 1000 when it
/// gave none), or why the payload is wrong.
fn close_payload(p: &[u8]) -> Result<u16, (u16, &'static str)> {
    match p {
        [] => Ok(NORMAL_CLOSE),
        [_] => Err((1002, "close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err((1002, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err((1007, "close reason is not UTF-8"));
            }
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_at_every_length_form() {
        for (len, mask) in [
            (0, None),
            (125, Some([1, 2, 3, 4])),
            (126, None),
            (65535, Some([9, 9, 9, 9])),
            (65536, None),
        ] {
            let mut out = Vec::new();
            put_header(&mut out, BINARY, len, mask);
            let h = Header::parse(&out).expect("a whole header");
            assert_eq!(h.header_len, out.len());
            assert_eq!(
                (h.fin, h.rsv, h.opcode, h.len, h.mask),
                (true, 0, BINARY, len as u64, mask)
            );
            assert_eq!(Header::parse(&out[..out.len() - 1]), None, "incomplete");
        }
    }

    #[test]
    fn rsv_bits_and_masking() {
        let h = Header::parse(&[0xC1, 0x00]).expect("header");
        assert_eq!((h.rsv, h.opcode), (0x4, TEXT));
        let mut p = *b"hello";
        apply_mask(&mut p, [1, 2, 3, 4], 0);
        apply_mask(&mut p[..2], [1, 2, 3, 4], 0);
        apply_mask(&mut p[2..], [1, 2, 3, 4], 2);
        assert_eq!(&p, b"hello");
    }
}

#[cfg(test)]
mod reader_tests {
    use super::*;

    /// A masked client frame: first byte `b0` (FIN, RSV, opcode), `payload`.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut v = vec![b0];
        let mut h = Vec::new();
        put_header(&mut h, 0, payload.len(), Some(key));
        v.extend_from_slice(&h[1..]);
        let mut p = payload.to_vec();
        apply_mask(&mut p, key, 0);
        v.extend(p);
        v
    }

    /// Feed `bytes` `piece` at a time; the events, and the data's bytes.
    fn read(bytes: &[u8], piece: usize, max: u64) -> (Vec<Event>, Vec<u8>) {
        let mut r = Reader::new(max);
        let mut buf: Vec<u8> = Vec::new();
        let (mut events, mut data) = (Vec::new(), Vec::new());
        for chunk in bytes.chunks(piece) {
            buf.extend_from_slice(chunk);
            loop {
                let s = r.next(&mut buf);
                if let Some(e) = &s.event {
                    if let Event::Data { range, .. } = e {
                        data.extend_from_slice(&buf[range.clone()]);
                    }
                    events.push(match e {
                        Event::Data { text, end, .. } => Event::Data {
                            range: 0..0,
                            text: *text,
                            end: *end,
                        },
                        Event::Ping(r) => Event::Ping(0..r.len()),
                        e => e.clone(),
                    });
                }
                buf.drain(..s.used);
                if s.used == 0 && s.event.is_none() {
                    break;
                }
            }
        }
        (events, data)
    }

    fn last(bytes: &[u8]) -> Event {
        let mut out = None;
        for piece in [1, 3, 1000] {
            let (e, _) = read(bytes, piece, 1 << 16);
            let l = e.last().cloned().unwrap_or(Event::Pong);
            assert!(
                out.is_none_or(|o| o == l),
                "same verdict at every piece size"
            );
            out = Some(l);
        }
        out.unwrap_or(Event::Pong)
    }

    fn code(bytes: &[u8]) -> u16 {
        match last(bytes) {
            Event::Fail { code, .. } => code,
            Event::Close(c) => c,
            e => panic!("no close: {e:?}"),
        }
    }

    #[test]
    fn messages_in_any_pieces() {
        let mut b = frame(0x01, "héllo ".as_bytes());
        b.extend(frame(0x89, b"hi"));
        b.extend(frame(0x80, "wörld €".as_bytes()));
        b.extend(frame(0x82, &[7; 300]));
        b.extend(frame(0x88, &[0x03, 0xe8]));
        for piece in [1, 2, 5, 64, 4096] {
            let (e, data) = read(&b, piece, 1 << 16);
            let mut want = "héllo wörld €".as_bytes().to_vec();
            want.extend([7; 300]);
            assert_eq!(data, want, "piece {piece}");
            assert!(e.contains(&Event::Ping(0..2)));
            assert_eq!(e.last(), Some(&Event::Close(1000)));
        }
    }

    #[test]
    fn every_violation_gets_its_code() {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked", vec![0x81, 0x01, b'x'], 1002),
            ("rsv1", frame(0xC1, b"x"), 1002),
            ("rsv3", frame(0x92, b"x"), 1002),
            ("reserved opcode 3", frame(0x83, b"x"), 1002),
            ("reserved opcode 0xB", frame(0x8B, b""), 1002),
            ("stray continuation", frame(0x80, b"x"), 1002),
            (
                "new message inside one",
                [frame(0x02, b"a"), frame(0x82, b"b")].concat(),
                1002,
            ),
            ("fragmented ping", frame(0x09, b""), 1002),
            ("ping over 125", frame(0x89, &[0; 126]), 1002),
            ("bad utf-8", frame(0x81, &[0xff]), 1007),
            ("utf-8 cut at the end", frame(0x81, &[0xe2, 0x82]), 1007),
            (
                "utf-8 bad across fragments",
                [frame(0x01, &[0xe2]), frame(0x80, &[0x28, 0xa1])].concat(),
                1007,
            ),
            ("too big", frame(0x82, &[0; 70_000]), 1009),
            (
                "too big across fragments",
                [frame(0x02, &[0; 40_000]), frame(0x80, &[0; 40_000])].concat(),
                1009,
            ),
            ("close 1-byte payload", frame(0x88, &[3]), 1002),
            ("close 1005", frame(0x88, &1005u16.to_be_bytes()), 1002),
            ("close 999", frame(0x88, &999u16.to_be_bytes()), 1002),
            ("close 1015", frame(0x88, &1015u16.to_be_bytes()), 1002),
            ("close 5000", frame(0x88, &5000u16.to_be_bytes()), 1002),
            (
                "close reason not utf-8",
                frame(0x88, &[0x03, 0xe8, 0xff]),
                1007,
            ),
            ("close empty", frame(0x88, b""), 1000),
            (
                "close 1001 echoed",
                frame(0x88, &1001u16.to_be_bytes()),
                1001,
            ),
            (
                "close 4321 echoed",
                frame(0x88, &4321u16.to_be_bytes()),
                4321,
            ),
            (
                "utf-8 good across fragments",
                [
                    frame(0x01, &[0xe2]),
                    frame(0x80, &[0x82, 0xac]),
                    frame(0x88, b""),
                ]
                .concat(),
                1000,
            ),
        ];
        for (what, bytes, want) in cases {
            assert_eq!(code(&bytes), want, "{what}");
        }
    }

    #[test]
    fn draining_skips_a_refused_message_and_finds_the_close() {
        let mut b = frame(0x82, &[1; 100_000]);
        b.extend(frame(0x88, &1009u16.to_be_bytes()));
        let mut r = Reader::new(1000);
        let mut buf = b.clone();
        let s = r.next(&mut buf);
        assert!(matches!(s.event, Some(Event::Fail { code: 1009, .. })));
        buf.drain(..s.used);
        assert_eq!(r.next(&mut buf).event, None, "nothing read after a failure");
        r.drain();
        let mut closed = false;
        for _ in 0..10 {
            let s = r.next(&mut buf);
            buf.drain(..s.used);
            if s.event == Some(Event::Close(1000)) {
                closed = true;
                break;
            }
        }
        assert!(closed && buf.is_empty());
    }
}
