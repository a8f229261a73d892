//! `relaycast/1` framing.
//!
//! - Control frames (request stream): `u32` big-endian length, then that
//!   many bytes of JSON.
//! - Media frames (group streams), big-endian:
//!   - init: `0x01`, version `u64`, length `u32`, the init segment bytes;
//!   - fragment: `0x02`, seq `u64`, flags `u8` (bit 0: keyframe), arrival
//!     time at the first relay `u64` (Unix ms), length `u32`, the fragment bytes.

use super::{MAX_CONTROL, MAX_PAYLOAD, QuicError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

const INIT: u8 = 1;
const FRAGMENT: u8 = 2;

/// One frame of a group stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaFrame {
    /// An init segment (every group stream starts with one).
    Init {
        /// The init version on the sending relay.
        version: u64,
        /// ftyp + moov.
        bytes: Bytes,
    },
    /// One fragment.
    Fragment {
        /// Stream-wide seq.
        seq: u64,
        /// Opens a group.
        keyframe: bool,
        /// Arrival time at the relay that sent it, Unix ms.
        t_ms: u64,
        /// moof + mdat (and any boxes before them).
        bytes: Bytes,
    },
}

impl MediaFrame {
    /// The frame header (the payload follows it, sent as its own `Bytes`).
    pub fn header(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(22);
        match self {
            MediaFrame::Init { version, bytes } => {
                b.put_u8(INIT);
                b.put_u64(*version);
                b.put_u32(bytes.len() as u32);
            }
            MediaFrame::Fragment {
                seq,
                keyframe,
                t_ms,
                bytes,
            } => {
                b.put_u8(FRAGMENT);
                b.put_u64(*seq);
                b.put_u8(u8::from(*keyframe));
                b.put_u64(*t_ms);
                b.put_u32(bytes.len() as u32);
            }
        }
        b.freeze()
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        match self {
            MediaFrame::Init { bytes, .. } | MediaFrame::Fragment { bytes, .. } => bytes,
        }
    }
}

/// Read one control frame; `None` when the stream finished cleanly before it.
pub async fn read_control<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, QuicError> {
    let mut len = [0u8; 4];
    if !read_exact_or_end(recv, &mut len).await? {
        return Ok(None);
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL {
        return Err(QuicError::Protocol(format!(
            "control frame of {len} bytes is over the {MAX_CONTROL}-byte limit"
        )));
    }
    let mut buf = vec![0u8; len];
    if !read_exact_or_end(recv, &mut buf).await? {
        return Err(QuicError::Protocol("control frame cut short".into()));
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| QuicError::Protocol(format!("control frame is not the expected JSON: {e}")))
}

/// Write one control frame.
pub async fn write_control<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), QuicError> {
    let json = serde_json::to_vec(msg)
        .map_err(|e| QuicError::Protocol(format!("encoding a control frame: {e}")))?;
    write_control_raw(send, &json).await
}

/// Write one control frame whose JSON is already encoded.
pub async fn write_control_raw(send: &mut quinn::SendStream, json: &[u8]) -> Result<(), QuicError> {
    let mut buf = Vec::with_capacity(4 + json.len());
    buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    buf.extend_from_slice(json);
    send.write_all(&buf).await?;
    Ok(())
}

/// Read one media frame; `None` at the clean end of the group stream. A
/// reset stream is an error (`ReadError::Reset`), and a partial frame is
/// never returned.
pub async fn read_media(recv: &mut quinn::RecvStream) -> Result<Option<MediaFrame>, QuicError> {
    let mut kind = [0u8; 1];
    if !read_exact_or_end(recv, &mut kind).await? {
        return Ok(None);
    }
    match kind[0] {
        INIT => {
            let mut h = [0u8; 12];
            need(read_exact_or_end(recv, &mut h).await?)?;
            let mut h = &h[..];
            let version = h.get_u64();
            let len = h.get_u32() as usize;
            let bytes = read_payload(recv, len).await?;
            Ok(Some(MediaFrame::Init { version, bytes }))
        }
        FRAGMENT => {
            let mut h = [0u8; 21];
            need(read_exact_or_end(recv, &mut h).await?)?;
            let mut h = &h[..];
            let seq = h.get_u64();
            let keyframe = h.get_u8() & 1 == 1;
            let t_ms = h.get_u64();
            let len = h.get_u32() as usize;
            let bytes = read_payload(recv, len).await?;
            Ok(Some(MediaFrame::Fragment {
                seq,
                keyframe,
                t_ms,
                bytes,
            }))
        }
        k => Err(QuicError::Protocol(format!("unknown media frame type {k}"))),
    }
}

fn need(complete: bool) -> Result<(), QuicError> {
    if complete {
        Ok(())
    } else {
        Err(QuicError::Protocol("media frame cut short".into()))
    }
}

async fn read_payload(recv: &mut quinn::RecvStream, len: usize) -> Result<Bytes, QuicError> {
    if len > MAX_PAYLOAD {
        return Err(QuicError::Protocol(format!(
            "media frame of {len} bytes is over the {MAX_PAYLOAD}-byte limit"
        )));
    }
    // Gather the chunks quinn already holds rather than copying byte by byte.
    let mut out = BytesMut::with_capacity(len);
    while out.len() < len {
        match recv.read_chunk(len - out.len(), true).await? {
            Some(chunk) => out.extend_from_slice(&chunk.bytes),
            None => return Err(QuicError::Protocol("media frame cut short".into())),
        }
    }
    Ok(out.freeze())
}

/// Fill `buf`; false when the stream ended before the first byte.
async fn read_exact_or_end(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
) -> Result<bool, QuicError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(true),
        Err(quinn::ReadExactError::FinishedEarly(0)) => Ok(false),
        Err(quinn::ReadExactError::FinishedEarly(n)) => Err(QuicError::Protocol(format!(
            "stream ended inside a frame ({n} of {} bytes)",
            buf.len()
        ))),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_have_the_documented_sizes() {
        let init = MediaFrame::Init {
            version: 3,
            bytes: Bytes::from_static(b"abc"),
        };
        let h = init.header();
        assert_eq!(h.len(), 13);
        assert_eq!(h[0], INIT);
        assert_eq!(&h[9..13], &3u32.to_be_bytes());
        let frag = MediaFrame::Fragment {
            seq: 7,
            keyframe: true,
            t_ms: 99,
            bytes: Bytes::from_static(b"xyzw"),
        };
        let h = frag.header();
        assert_eq!(h.len(), 22);
        assert_eq!(h[0], FRAGMENT);
        assert_eq!(&h[1..9], &7u64.to_be_bytes());
        assert_eq!(h[9], 1);
        assert_eq!(&h[18..22], &4u32.to_be_bytes());
    }
}
