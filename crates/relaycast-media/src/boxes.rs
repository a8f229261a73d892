//! ISO BMFF box plumbing shared by the splitter, the init and `moof` parsers and
//! the demo: header peeking, a bounds-checked child walker and a big-endian
//! reader. Nothing here can index out of bounds: every read is checked and a
//! short buffer becomes [`MediaError::Invalid`] naming the box.

use super::MediaError;

/// A four-character box type.
pub(crate) type FourCC = [u8; 4];

/// A box header as written, not yet validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The box type.
    pub kind: FourCC,
    /// The declared size including the header: the 32-bit size, or the 64-bit
    /// `largesize` when the 32-bit size is 1. 0 means "to the end of the file".
    pub size: u64,
    /// 8, or 16 when a `largesize` follows the type.
    pub header_len: u64,
}

/// Reads the header at the start of `buf`: `Err(n)` when fewer than the `n`
/// bytes the header needs are present.
pub(crate) fn peek_header(buf: &[u8]) -> Result<Header, usize> {
    let (Some(size), Some(kind)) = (be_u32(buf, 0), fourcc_at(buf, 4)) else {
        return Err(8);
    };
    if size == 1 {
        let large = be_u64(buf, 8).ok_or(16usize)?;
        return Ok(Header {
            kind,
            size: large,
            header_len: 16,
        });
    }
    Ok(Header {
        kind,
        size: u64::from(size),
        header_len: 8,
    })
}

/// The box type as text for messages: printable ASCII as is, other bytes as `\xNN`.
pub(crate) fn fourcc_str(kind: &FourCC) -> String {
    let mut s = String::with_capacity(4);
    for &b in kind {
        if (0x20..=0x7e).contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// True when all four bytes are printable ASCII, as every registered box type is.
pub(crate) fn is_printable(kind: &FourCC) -> bool {
    kind.iter().all(|b| (0x20..=0x7e).contains(b))
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn fourcc_at(buf: &[u8], at: usize) -> Option<FourCC> {
    buf.get(at..at.checked_add(4)?)?.try_into().ok()
}

/// One child box found by [`Children`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Child<'a> {
    /// The box type.
    pub kind: FourCC,
    /// The whole box, header included.
    pub whole: &'a [u8],
    /// The payload after the header.
    pub body: &'a [u8],
    /// Where the payload starts, relative to the buffer given to [`Children::new`]
    /// plus its `base`.
    pub body_at: usize,
}

/// Iterates over the boxes packed in a parent's payload, checking that each
/// fits. Yields an error (then stops) on a malformed child.
pub(crate) struct Children<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    parent: &'static str,
    failed: bool,
}

impl<'a> Children<'a> {
    /// Walks `buf` (the payload of a `parent` box that starts at `base` in
    /// whatever the caller counts positions in).
    pub fn new(buf: &'a [u8], base: usize, parent: &'static str) -> Self {
        Children {
            buf,
            pos: 0,
            base,
            parent,
            failed: false,
        }
    }

    fn fail(&mut self, msg: String) -> Option<Result<Child<'a>, MediaError>> {
        self.failed = true;
        Some(Err(MediaError::Invalid(msg)))
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<Child<'a>, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.buf.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let header = match peek_header(rest) {
            Ok(h) => h,
            Err(_) => {
                let msg = format!(
                    "'{}' ends with {} stray bytes, too few for a box header",
                    self.parent,
                    rest.len()
                );
                return self.fail(msg);
            }
        };
        let kind = fourcc_str(&header.kind);
        if header.size == 0 {
            let msg = format!(
                "'{kind}' inside '{}' has size 0, which is only allowed at the top level",
                self.parent
            );
            return self.fail(msg);
        }
        if header.size < header.header_len {
            let msg = format!(
                "'{kind}' inside '{}' declares size {}, smaller than its {}-byte header",
                self.parent, header.size, header.header_len
            );
            return self.fail(msg);
        }
        // Both fit in usize: size <= rest.len() is checked before the casts.
        if header.size > rest.len() as u64 {
            let msg = format!(
                "'{kind}' inside '{}' declares {} bytes but only {} remain",
                self.parent,
                header.size,
                rest.len()
            );
            return self.fail(msg);
        }
        let size = header.size as usize;
        let hl = header.header_len as usize;
        let whole = rest.get(..size).unwrap_or_default();
        let body = whole.get(hl..).unwrap_or_default();
        let body_at = self.base + self.pos + hl;
        self.pos += size;
        Some(Ok(Child {
            kind: header.kind,
            whole,
            body,
            body_at,
        }))
    }
}

/// A big-endian cursor over one box's payload; every read is bounds-checked
/// and a short payload is reported as `Invalid` naming the box.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, the payload of a `what` box.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], MediaError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end.and_then(|e| self.buf.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(MediaError::Invalid(format!(
                "'{}' is truncated: {n} more bytes needed at byte {} of its {}-byte payload",
                self.what,
                self.pos,
                self.buf.len()
            ))),
        }
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), MediaError> {
        self.bytes(n).map(|_| ())
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, MediaError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, MediaError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A four-character code.
    pub fn fourcc(&mut self) -> Result<FourCC, MediaError> {
        let b = self.bytes(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    /// A full box's version and flags.
    pub fn version_flags(&mut self) -> Result<(u8, u32), MediaError> {
        let vf = self.u32()?;
        Ok(((vf >> 24) as u8, vf & 0x00ff_ffff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes() {
        assert_eq!(peek_header(b"\0\0\0"), Err(8));
        assert_eq!(
            peek_header(b"\0\0\0\x10moof"),
            Ok(Header {
                kind: *b"moof",
                size: 16,
                header_len: 8
            })
        );
        assert_eq!(peek_header(b"\0\0\0\x01mdat\0\0\0"), Err(16));
        assert_eq!(
            peek_header(b"\0\0\0\x01mdat\0\0\0\x01\0\0\0\x10"),
            Ok(Header {
                kind: *b"mdat",
                size: (1 << 32) + 16,
                header_len: 16
            })
        );
    }

    #[test]
    fn children_are_bounds_checked() {
        let ok = b"\0\0\0\x09abcdX\0\0\0\x08efgh";
        let kids: Vec<_> = Children::new(ok, 100, "test").collect();
        assert_eq!(kids.len(), 2);
        let first = kids[0].as_ref().expect("first child");
        assert_eq!(
            (&first.kind, first.body, first.body_at),
            (b"abcd", &b"X"[..], 108)
        );
        for bad in [
            &b"\0\0\0\x20abcd"[..],
            b"\0\0\0\x04abcd",
            b"\0\0\0\0abcd",
            b"\0\0\0\x09abcdX\0\0",
            b"\0\0\0\x01abcd\0\0\0\0\0\0\0\x08",
        ] {
            let kids: Vec<_> = Children::new(bad, 0, "test").collect();
            assert!(kids.last().is_some_and(|k| k.is_err()), "{bad:?}");
        }
    }

    #[test]
    fn reader_reports_truncation() {
        let mut r = Reader::new(b"\x01\x00\x00\x02\x00\x00", "tfdt");
        assert_eq!(r.version_flags(), Ok((1, 2)));
        let err = r.u32().expect_err("short");
        assert!(err.to_string().contains("'tfdt' is truncated"), "{err}");
        assert_eq!(fourcc_str(b"mo\0v"), "mo\\x00v");
    }
}
