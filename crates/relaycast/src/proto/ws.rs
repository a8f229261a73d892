//! The WebSocket frame format (RFC 6455 §5.2), sans-IO: read a frame header
//! out of bytes, write one into a buffer, mask a payload. One codec for the
//! relay's hand-framed viewer egress (which writes server frames and reads
//! masked client frames) and for the load generator's client (the reverse).
//!
//! Why not tungstenite's: the viewer egress writes a batch of frames as one
//! vectored write whose payloads are the stored `Bytes` (no copy into a
//! message), and reads client frames out of a fixed 256-byte buffer per
//! viewer; tungstenite owns its buffers and copies every message.

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
