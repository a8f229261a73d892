//! WebSocket frame write: what it costs to put one stored fragment on a
//! viewer's socket, per fragment size.
//!
//! - `tungstenite_send`: the path relaycast's WebSocket egress takes today
//!   (axum's WebSocket is tungstenite): a JSON control text then the binary
//!   fragment, fed and flushed; tungstenite copies each payload into its
//!   write buffer.
//! - `tungstenite_binary_only`: the binary message alone, fed and flushed.
//! - `vectored_header_plus_bytes`: a hand-built frame header and the shared
//!   `Bytes` written with one vectored write: no copy of the payload in user
//!   space, the lower bound for a frame writer.
//!
//! The socket is a sink that accepts everything (counts bytes), so the figures
//! are the user-space cost only; the kernel's copy into the socket buffer comes
//! on top for every variant alike.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::SinkExt;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A socket that takes every byte at once and never has anything to read.
#[derive(Default)]
struct Sink(u64);

impl AsyncRead for Sink {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        self.0 += n as u64;
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Server frame header for a binary message of `len` bytes (no mask).
fn header(len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x82;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= 0xffff {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let meta = Bytes::from_static(
        br#"{"type":"fragment","seq":1234,"key":false,"t":1764000000000,"size":10416,"dts":41.133333}"#,
    );
    let mut g = c.benchmark_group("ws_frame_write");
    for size in [1usize << 10, 16 << 10, 256 << 10] {
        let payload = Bytes::from(vec![7u8; size]);
        g.throughput(Throughput::Bytes(size as u64));
        let cfg = WebSocketConfig::default().write_buffer_size(0);
        g.bench_with_input(
            BenchmarkId::new("tungstenite_send", size),
            &payload,
            |b, p| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut ws = WebSocketStream::from_raw_socket(
                            Sink::default(),
                            Role::Server,
                            Some(cfg),
                        )
                        .await;
                        let t = Instant::now();
                        for _ in 0..iters {
                            let text = Message::Text(meta.clone().try_into().expect("utf-8"));
                            let _ = ws.feed(text).await;
                            let _ = ws.feed(Message::Binary(p.clone())).await;
                            let _ = ws.flush().await;
                        }
                        t.elapsed()
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("tungstenite_binary_only", size),
            &payload,
            |b, p| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut ws = WebSocketStream::from_raw_socket(
                            Sink::default(),
                            Role::Server,
                            Some(cfg),
                        )
                        .await;
                        let t = Instant::now();
                        for _ in 0..iters {
                            let _ = ws.send(Message::Binary(p.clone())).await;
                        }
                        t.elapsed()
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("vectored_header_plus_bytes", size),
            &payload,
            |b, p| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut sink = Sink::default();
                        let t = Instant::now();
                        for _ in 0..iters {
                            let mut h = [0u8; 10];
                            let hl = header(p.len(), &mut h);
                            let bufs = [IoSlice::new(&h[..hl]), IoSlice::new(p)];
                            let n = sink.write_vectored(&bufs).await.unwrap_or(0);
                            if n != hl + p.len() {
                                return Duration::ZERO;
                            }
                        }
                        std::hint::black_box(sink.0);
                        t.elapsed()
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
