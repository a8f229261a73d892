//! A minimal WebSocket client for the load generator: the opening handshake,
//! then server frames read straight out of one small reusable buffer and
//! handed over as payload slices (messages are never reassembled, so a viewer
//! costs its buffer and nothing per message), and unfragmented client frames.
//!
//! Why not tungstenite: ten thousand viewers in the same process as the relay
//! they measure must be cheap; tungstenite's default 128 KiB read buffer and
//! a `Vec` per message would make the load generator the bottleneck.
//! Client frames use the all-zero masking key: legal on the wire, and the
//! publisher does not spend CPU masking payloads (a test client, not a browser).

use relaycast::proto::ws;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// WebSocket opcodes.
pub mod op {
    pub use relaycast::proto::ws::{BINARY, CLOSE, CONTINUATION as CONT, PING, PONG, TEXT};
}

/// Splits `ws://host:port/path?query` into (`host:port`, `/path?query`).
pub fn split_url(url: &str, scheme: &str) -> io::Result<(String, String)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad URL {url}"));
    let rest = url.strip_prefix(scheme).ok_or_else(bad)?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), path.to_string()))
}

/// An open WebSocket connection.
pub struct Ws {
    rd: OwnedReadHalf,
    /// The writing half (pongs), until taken.
    wr: Option<OwnedWriteHalf>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Answer Engine.IO pings (text `2`) with pongs (text `3`).
    pub engine_io: bool,
}

/// A piece of a server message.
pub enum Piece<'a> {
    /// Payload bytes of a text (`text = true`) or binary message.
    Data {
        /// From a text message.
        text: bool,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// The server closed.
    Close,
}

/// Opens `ws://host:port/path`, with a read buffer of `buf_len` bytes.
pub async fn connect(url: &str, buf_len: usize) -> io::Result<Ws> {
    let (host, path) = split_url(url, "ws://")?;
    let tcp = TcpStream::connect(&host).await?;
    tcp.set_nodelay(true)?;
    let (mut rd, mut wr) = tcp.into_split();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: cmVsYXljYXN0LWxvYWQtMQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    wr.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; buf_len.max(1024)].into_boxed_slice();
    let mut end = 0;
    let head_end = loop {
        if end == buf.len() {
            return Err(io::Error::other("handshake response too long"));
        }
        let n = rd.read(&mut buf[end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during handshake",
            ));
        }
        end += n;
        if let Some(i) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let status = String::from_utf8_lossy(&buf[..head_end.min(64)]).into_owned();
    if !status.starts_with("HTTP/1.1 101") {
        let line = status.lines().next().unwrap_or_default().to_string();
        return Err(io::Error::other(format!("upgrade refused: {line}")));
    }
    Ok(Ws {
        rd,
        wr: Some(wr),
        buf,
        start: head_end,
        end,
        engine_io: false,
    })
}

/// Frame header of a server frame: (fin, opcode, payload length, header length).
fn parse_header(b: &[u8]) -> Option<(bool, u8, u64, usize)> {
    let h = ws::Header::parse(b)?;
    Some((h.fin, h.opcode, h.len, h.header_len))
}

/// Writes one unfragmented client frame (zero masking key).
pub async fn write_frame(wr: &mut OwnedWriteHalf, opcode: u8, payload: &[u8]) -> io::Result<()> {
    // Masking key 0 0 0 0: the payload goes out as it is.
    let mut head = Vec::with_capacity(ws::MAX_HEADER);
    ws::put_header(&mut head, opcode, payload.len(), Some([0; 4]));
    if payload.len() <= 4096 {
        head.extend_from_slice(payload);
        wr.write_all(&head).await
    } else {
        wr.write_all(&head).await?;
        wr.write_all(payload).await
    }
}

impl Ws {
    /// Takes the writing half (to send from another task); pings are then
    /// no longer answered.
    pub fn take_writer(&mut self) -> Option<OwnedWriteHalf> {
        self.wr.take()
    }

    /// Reads and drops messages up to and including the first text message
    /// that starts with `prefix` (Engine.IO: `0` is the open packet, which must
    /// come before the client says anything; `40` acknowledges the namespace
    /// connect, which must come before the client emits).
    pub async fn wait_text(&mut self, prefix: &[u8]) -> io::Result<()> {
        loop {
            if let Some((_, opcode, len, hl)) = parse_header(&self.buf[self.start..self.end]) {
                let total = hl + len as usize;
                if total > self.buf.len() {
                    return Err(io::Error::other("message too long to wait for"));
                }
                if self.end - self.start >= total {
                    let body = self.buf.get(self.start + hl..self.start + total);
                    let found = opcode == op::TEXT && body.is_some_and(|b| b.starts_with(prefix));
                    self.start += total;
                    if found {
                        return Ok(());
                    }
                    continue;
                }
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let n = self.rd.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed while waiting for a message",
                ));
            }
            self.end += n;
        }
    }

    /// Sends one message (fails once the writer was taken).
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        match &mut self.wr {
            Some(wr) => write_frame(wr, opcode, payload).await,
            None => Err(io::Error::other("writer taken")),
        }
    }

    /// Reads until the connection ends, calling `on` for every payload piece.
    /// Answers pings. Returns when the server closes or the socket fails.
    pub async fn read_all(&mut self, mut on: impl FnMut(Piece<'_>)) -> io::Result<()> {
        // State of the frame being read.
        let mut left: u64 = 0;
        let mut cur_op = op::BINARY;
        let mut msg_text = false;
        let mut control: Vec<u8> = Vec::new();
        loop {
            // Consume what is buffered.
            loop {
                if left > 0 {
                    let avail = (self.end - self.start) as u64;
                    if avail == 0 {
                        break;
                    }
                    let take = left.min(avail) as usize;
                    let bytes = &self.buf[self.start..self.start + take];
                    self.start += take;
                    left -= take as u64;
                    match cur_op {
                        op::BINARY => on(Piece::Data { text: false, bytes }),
                        op::TEXT => {
                            if self.engine_io && control.len() < 8 {
                                control.extend_from_slice(&bytes[..bytes.len().min(8)]);
                            }
                            on(Piece::Data { text: true, bytes })
                        }
                        _ => control.extend_from_slice(bytes),
                    }
                    if left == 0 && self.end_frame(cur_op, &mut control, &mut on).await? {
                        return Ok(());
                    }
                    continue;
                }
                let Some((_fin, opcode, len, hl)) = parse_header(&self.buf[self.start..self.end])
                else {
                    break;
                };
                self.start += hl;
                cur_op = match opcode {
                    op::CONT => {
                        if msg_text {
                            op::TEXT
                        } else {
                            op::BINARY
                        }
                    }
                    op::TEXT => {
                        msg_text = true;
                        op::TEXT
                    }
                    op::BINARY => {
                        msg_text = false;
                        op::BINARY
                    }
                    o => o,
                };
                if cur_op >= op::CLOSE && len > 125 {
                    return Err(io::Error::other("control frame too long"));
                }
                left = len;
                control.clear();
                if left == 0 && self.end_frame(cur_op, &mut control, &mut on).await? {
                    return Ok(());
                }
            }
            // Need more bytes: compact, then read.
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 && self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.rd.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                on(Piece::Close);
                return Ok(());
            }
            self.end += n;
        }
    }

    /// End of a frame: answer a ping, report a close. True when closed.
    async fn end_frame(
        &mut self,
        opcode: u8,
        control: &mut Vec<u8>,
        on: &mut impl FnMut(Piece<'_>),
    ) -> io::Result<bool> {
        match opcode {
            op::PING => {
                if let Some(wr) = &mut self.wr {
                    write_frame(wr, op::PONG, control).await?;
                }
                Ok(false)
            }
            op::TEXT if self.engine_io && control.as_slice() == b"2" => {
                if let Some(wr) = &mut self.wr {
                    write_frame(wr, op::TEXT, b"3").await?;
                }
                Ok(false)
            }
            op::CLOSE => {
                on(Piece::Close);
                if let Some(wr) = &mut self.wr {
                    let _ = write_frame(wr, op::CLOSE, &[]).await;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(parse_header(&[0x82, 5]), Some((true, 2, 5, 2)));
        assert_eq!(parse_header(&[0x82, 126, 1, 0]), Some((true, 2, 256, 4)));
        assert_eq!(parse_header(&[0x82, 126, 1]), None);
        let mut b = vec![0x02, 127];
        b.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&b), Some((false, 2, 70_000, 10)));
    }

    #[test]
    fn urls() {
        let (h, p) = split_url("ws://127.0.0.1:8080/live/x?after=3", "ws://").expect("url");
        assert_eq!(
            (h.as_str(), p.as_str()),
            ("127.0.0.1:8080", "/live/x?after=3")
        );
        assert!(split_url("http://x/", "ws://").is_err());
    }
}
