//! Batched socket sends: the same bytes to many non-blocking sockets in one
//! io_uring submission (issue #15).
//!
//! A fan-out writer sends one pass's frames to every caught-up viewer: N
//! `sendmsg` calls of the same slices. [`Sender::send_to_all`] makes them N
//! `IORING_OP_SENDMSG` entries and one `io_uring_enter`. The sockets are
//! non-blocking, so every send completes inline (bytes written, or `EAGAIN`
//! when the socket is full), exactly as the `sendmsg` it replaces; the gain
//! is the system call entry and exit per socket. Measured in isolation
//! (`benches/uring`, 4,000 loopback sockets, 7.6 KB per send): 0.86–0.91 of
//! the CPU time per send of one `sendmsg` each.
//!
//! Why a crate of its own, and not a crate from crates.io: the ring is the
//! `io-uring` crate (tokio-rs); what it cannot make safe is that the kernel
//! reads the caller's buffers after the call that queued them. This crate
//! keeps that to one function that does not return before the kernel has
//! finished with every buffer it was given, so its interface is safe; the
//! relay itself keeps `forbid(unsafe_code)`. tokio-uring, glommio and monoio
//! are runtimes of their own, and the relay's writers live on tokio's.
//!
//! On other systems, or where io_uring is refused (a seccomp profile, as
//! Docker's default one; `kernel.io_uring_disabled`), [`Sender::new`] fails
//! and the caller keeps its `sendmsg` path.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

/// Entries per submission: a batch larger than this is sent in chunks.
pub const MAX_BATCH: u32 = 4096;

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use io_uring::{IoUring, opcode, types};
    use std::os::fd::AsRawFd;

    pub struct Sender {
        ring: IoUring,
    }

    impl Sender {
        pub fn new(entries: u32) -> io::Result<Sender> {
            let entries = entries.clamp(1, MAX_BATCH).next_power_of_two();
            let ring = IoUring::builder()
                .setup_cqsize(entries * 2)
                .build(entries)?;
            Ok(Sender { ring })
        }

        pub fn entries(&self) -> u32 {
            self.ring.params().sq_entries()
        }

        pub fn send_to_all(
            &mut self,
            socks: &[BorrowedFd<'_>],
            bufs: &[IoSlice<'_>],
            done: &mut dyn FnMut(usize, io::Result<usize>),
        ) {
            // One header for every entry: the kernel only reads it (and the
            // slices it points to), and copies it when the entry is issued.
            // SAFETY: a zeroed msghdr is valid (no name, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            let flags = (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32;
            let cap = self.ring.params().sq_entries() as usize;
            let mut base = 0;
            for chunk in socks.chunks(cap) {
                {
                    let mut sq = self.ring.submission();
                    for (j, s) in chunk.iter().enumerate() {
                        let e = opcode::SendMsg::new(types::Fd(s.as_raw_fd()), &msg)
                            .flags(flags)
                            .build()
                            .user_data((base + j) as u64);
                        // SAFETY: `msg` and the slices it points to (borrowed
                        // for this whole call) outlive the entry: this
                        // function returns only after every entry it queued
                        // has completed (below). The queue has room: it is
                        // empty here and the chunk is at most its size.
                        if unsafe { sq.push(&e) }.is_err() {
                            unreachable!("the submission queue is empty before a chunk");
                        }
                    }
                }
                let mut left = chunk.len();
                while left > 0 {
                    match self.ring.submit_and_wait(left) {
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                            ) => {}
                        Err(e) => {
                            // The kernel may still hold pointers into the
                            // caller's buffers: returning would let it read
                            // freed memory. A working ring never gets here.
                            eprintln!(
                                "relaycast-uring: io_uring_enter failed with entries in flight: {e}"
                            );
                            std::process::abort();
                        }
                    }
                    for c in self.ring.completion() {
                        left -= 1;
                        let r = c.result();
                        let i = c.user_data() as usize;
                        done(
                            i,
                            if r >= 0 {
                                Ok(r as usize)
                            } else {
                                Err(io::Error::from_raw_os_error(-r))
                            },
                        );
                    }
                }
                base += chunk.len();
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub struct Sender {
        _never: std::convert::Infallible,
    }

    impl Sender {
        pub fn new(_entries: u32) -> io::Result<Sender> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub fn entries(&self) -> u32 {
            match self._never {}
        }

        pub fn send_to_all(
            &mut self,
            _socks: &[BorrowedFd<'_>],
            _bufs: &[IoSlice<'_>],
            _done: &mut dyn FnMut(usize, io::Result<usize>),
        ) {
            match self._never {}
        }
    }
}

/// An io_uring for batched sends (one per writer: not shared between
/// threads).
pub struct Sender(imp::Sender);

impl Sender {
    /// A ring of `entries` (rounded up to a power of two, at most
    /// [`MAX_BATCH`]). Fails where io_uring is not available.
    pub fn new(entries: u32) -> io::Result<Sender> {
        imp::Sender::new(entries).map(Sender)
    }

    /// The ring's entries: the most sends of one submission.
    pub fn entries(&self) -> u32 {
        self.0.entries()
    }

    /// Sends `bufs` (in order, as one gathered write) to every socket in
    /// `socks`, without waiting for room: the same as one non-blocking
    /// `sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL)` per socket. Calls `done(i,
    /// result)` once for every `socks[i]`, in any order: `Ok(n)` bytes
    /// written (possibly fewer than all), `Err` with `WouldBlock` when the
    /// socket was full, or the socket's error. Returns when every send has
    /// completed. The sockets must be non-blocking, or a full one makes the
    /// call wait for it.
    pub fn send_to_all(
        &mut self,
        socks: &[BorrowedFd<'_>],
        bufs: &[IoSlice<'_>],
        mut done: impl FnMut(usize, io::Result<usize>),
    ) {
        self.0.send_to_all(socks, bufs, &mut done)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    /// `n` connected pairs: (the relay's non-blocking end, the client's end).
    fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        (0..n)
            .map(|_| {
                let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
                let (s, _) = l.accept().expect("accept");
                s.set_nonblocking(true).expect("nonblocking");
                (s, c)
            })
            .collect()
    }

    /// A ring, or `None` (said loudly) where the system refuses io_uring:
    /// the relay then keeps `sendmsg`, tested in `tests/ws_writer.rs`.
    fn ring(entries: u32) -> Option<Sender> {
        match Sender::new(entries) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("WARNING: io_uring is not available here ({e}): not tested");
                None
            }
        }
    }

    fn read_exact(c: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        c.read_exact(&mut got).expect("read");
        got
    }

    #[test]
    fn every_socket_gets_the_slices_in_order_in_chunks_of_the_ring_size() {
        // A ring of 2 entries and 5 sockets: three submissions.
        let Some(mut s) = ring(2) else { return };
        let mut p = pairs(5);
        let parts: [&[u8]; 3] = [b"\x82\x05", b"hello", b" world"];
        let io: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let socks: Vec<_> = p.iter().map(|(a, _)| a.as_fd()).collect();
        let mut seen = vec![0; 5];
        s.send_to_all(&socks, &io, |i, r| {
            assert_eq!(r.expect("send"), 13, "socket {i} took all 13 bytes");
            seen[i] += 1;
        });
        assert_eq!(seen, [1; 5], "one result per socket");
        for (_, c) in p.iter_mut() {
            assert_eq!(read_exact(c, 13), b"\x82\x05hello world");
        }
    }

    #[test]
    fn a_full_socket_answers_would_block_or_part_and_the_others_are_unaffected() {
        let Some(mut s) = ring(8) else { return };
        let mut p = pairs(2);
        let big = vec![7u8; 64 << 10];
        let io = [IoSlice::new(&big)];
        let mut short = None;
        // Client 0 never reads; client 1 reads everything after each round.
        for round in 0..10_000 {
            let socks: Vec<_> = p.iter().map(|(a, _)| a.as_fd()).collect();
            let mut results = [None, None];
            s.send_to_all(&socks, &io, |i, r| results[i] = Some(r));
            let [Some(r0), Some(r1)] = results else {
                panic!("a result for each socket")
            };
            assert_eq!(r1.expect("the reading client's socket"), big.len());
            assert_eq!(read_exact(&mut p[1].1, big.len()), big);
            match r0 {
                Ok(n) if n == big.len() => {}
                Ok(n) => {
                    short = Some(format!("part: {n} of {} in round {round}", big.len()));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    short = Some(format!("would block in round {round}"));
                    break;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert!(short.is_some(), "a socket nobody reads fills up");
    }

    #[test]
    fn a_reset_connection_is_an_error_not_a_signal() {
        let Some(mut s) = ring(8) else { return };
        let mut p = pairs(1);
        let (a, c) = p.remove(0);
        // Close with unread data pending: the peer answers with a reset.
        drop(c);
        let io = [IoSlice::new(b"after the peer left")];
        let mut err = None;
        for _ in 0..1_000 {
            s.send_to_all(&[a.as_fd()], &io, |_, r| {
                if let Err(e) = r {
                    err = Some(e)
                }
            });
            if err.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let e = err.expect("sends to a closed peer fail (MSG_NOSIGNAL: no SIGPIPE)");
        assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{e}"
        );
    }
}
