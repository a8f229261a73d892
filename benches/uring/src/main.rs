//! The io_uring probe (#15): the fan-out writer's job, isolated.
//!
//! A relay with N WebSocket viewers of one stream writes every fragment N
//! times: the same bytes (a 2-byte text header, an 80-byte JSON message, a
//! 4-byte binary header, the fragment) to N sockets. relaycast does it with
//! one non-blocking `sendmsg` per socket from one writer task. The issue asks
//! whether io_uring (one submission for many sockets) beats that. This probe
//! measures only that: the sending thread's CPU time per send (the loopback
//! receive path runs in the sender's context, as it does in the relay), for
//!
//! - `sendmsg4`: one `sendmsg` of the four slices per socket (relaycast today);
//! - `sendmsg1`: one `send` of the same bytes flattened into one buffer;
//! - `uring4`:   one io_uring `SENDMSG` (four slices) per socket, all
//!   submitted at once (up to the ring's size) and reaped together;
//! - `uring1`:   io_uring `SEND` of the flat buffer per socket;
//! - `uring4f`:  the same with the sockets registered (no fd lookup per op);
//! - `uring1f`:  io_uring `SEND` of the flat buffer, registered sockets;
//! - `uring4fs`: `uring4f` on a ring set up single-issuer + defer-taskrun.
//!
//! Receivers: N client sockets drained by one other thread (epoll). Rounds
//! alternate the modes; after every mode's round the probe waits until the
//! receiver has every byte, so no send meets a full buffer (counted: `short`).
//! Not part of the relay (it needs `unsafe` for the ring, the relay forbids
//! it); its own workspace, so `cargo test` never builds it.

use io_uring::{IoUring, opcode, squeue, types};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MODES: [&str; 7] = [
    "sendmsg4", "sendmsg1", "uring4", "uring1", "uring4f", "uring1f", "uring4fs",
];

struct Args {
    viewers: usize,
    size: usize,
    rounds: usize,
    modes: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        viewers: 4000,
        size: 7500,
        rounds: 40,
        modes: MODES.iter().map(|s| s.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let val = it.next().unwrap_or_default();
        let v = || val.clone();
        match k.as_str() {
            "--viewers" => a.viewers = v().parse().expect("--viewers N"),
            "--size" => a.size = v().parse().expect("--size BYTES"),
            "--rounds" => a.rounds = v().parse().expect("--rounds N"),
            "--modes" => a.modes = v().split(',').map(str::to_string).collect(),
            _ => {
                eprintln!(
                    "uring-probe [--viewers N=4000] [--size FRAGMENT_BYTES=7500] [--rounds N=40] \
                     [--modes {}]",
                    MODES.join(",")
                );
                std::process::exit(2);
            }
        }
    }
    a
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn thread_user_sys_us() -> (u64, u64) {
    // SAFETY: zeroed rusage is a valid value; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// Drains every client socket until `stop`; counts the bytes.
fn receiver(fds: Vec<RawFd>, got: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    // SAFETY: plain epoll calls on fds this process owns for its lifetime.
    unsafe {
        let ep = libc::epoll_create1(0);
        for (i, &fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
        }
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = vec![0u8; 256 << 10];
        while !stop.load(Ordering::Relaxed) {
            let n = libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, 50);
            for ev in evs.iter().take(n.max(0) as usize) {
                let fd = fds[ev.u64 as usize];
                loop {
                    let r = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
                    if r <= 0 {
                        break;
                    }
                    got.fetch_add(r as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

struct Frame {
    parts: Vec<Vec<u8>>,
    flat: Vec<u8>,
}

fn frame(size: usize) -> Frame {
    let json = format!(
        "{{\"type\":\"fragment\",\"seq\":123456,\"key\":false,\"t\":1764680000000,\"size\":{size:<8}}}"
    );
    let mut h1 = vec![0x81, json.len() as u8];
    h1.truncate(2);
    let mut h2 = vec![0x82u8];
    if size < 126 {
        h2.push(size as u8);
    } else if size < 65536 {
        h2.push(126);
        h2.extend_from_slice(&(size as u16).to_be_bytes());
    } else {
        h2.push(127);
        h2.extend_from_slice(&(size as u64).to_be_bytes());
    }
    let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
    let parts = vec![h1, json.into_bytes(), h2, payload];
    let flat = parts.concat();
    Frame { parts, flat }
}

struct Rings {
    plain: IoUring,
    fixed: IoUring,
    single: IoUring,
}

fn rings(fds: &[RawFd]) -> Rings {
    let entries = (fds.len().next_power_of_two() as u32).clamp(64, 4096);
    let plain = IoUring::builder()
        .setup_cqsize(entries * 2)
        .build(entries)
        .expect("io_uring");
    let fixed = IoUring::builder()
        .setup_cqsize(entries * 2)
        .build(entries)
        .expect("io_uring");
    fixed
        .submitter()
        .register_files(fds)
        .expect("register_files");
    let single = IoUring::builder()
        .setup_cqsize(entries * 2)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .expect("io_uring single issuer + defer taskrun (Linux ≥ 6.1)");
    single
        .submitter()
        .register_files(fds)
        .expect("register_files");
    Rings {
        plain,
        fixed,
        single,
    }
}

/// Sends the frame once to every socket; returns the sends that were short.
fn send_round(mode: &str, fds: &[RawFd], f: &Frame, iov: &[libc::iovec], rings: &mut Rings) -> u64 {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let whole = f.flat.len() as isize;
    let mut short = 0;
    match mode {
        "sendmsg4" | "sendmsg1" => {
            let flat = [libc::iovec {
                iov_base: f.flat.as_ptr() as *mut _,
                iov_len: f.flat.len(),
            }];
            let v: &[libc::iovec] = if mode == "sendmsg4" { iov } else { &flat };
            for &fd in fds {
                // SAFETY: msghdr points at iovecs that outlive the call.
                let r = unsafe {
                    let mut m: libc::msghdr = std::mem::zeroed();
                    m.msg_iov = v.as_ptr() as *mut _;
                    m.msg_iovlen = v.len();
                    libc::sendmsg(fd, &m, flags)
                };
                if r != whole {
                    short += 1;
                }
            }
        }
        _ => {
            let ring = match mode {
                "uring4" | "uring1" => &mut rings.plain,
                "uring4fs" => &mut rings.single,
                _ => &mut rings.fixed,
            };
            // One msghdr for every op: the kernel only reads it.
            // SAFETY: zeroed msghdr then filled; outlives the submission.
            let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
            m.msg_iov = iov.as_ptr() as *mut _;
            m.msg_iovlen = iov.len();
            let cap = ring.params().sq_entries() as usize;
            for (c, chunk) in fds.chunks(cap).enumerate() {
                for (j, &fd) in chunk.iter().enumerate() {
                    let i = (c * cap + j) as u32;
                    let e: squeue::Entry = match mode {
                        "uring4" => opcode::SendMsg::new(types::Fd(fd), &m)
                            .flags(flags as u32)
                            .build(),
                        "uring1" => {
                            opcode::Send::new(types::Fd(fd), f.flat.as_ptr(), f.flat.len() as u32)
                                .flags(flags)
                                .build()
                        }
                        "uring1f" => {
                            opcode::Send::new(types::Fixed(i), f.flat.as_ptr(), f.flat.len() as u32)
                                .flags(flags)
                                .build()
                        }
                        _ => opcode::SendMsg::new(types::Fixed(i), &m)
                            .flags(flags as u32)
                            .build(),
                    };
                    // SAFETY: the buffers and msghdr outlive the wait below.
                    unsafe {
                        ring.submission()
                            .push(&e.user_data(i as u64))
                            .expect("sq full")
                    };
                }
                ring.submit_and_wait(chunk.len()).expect("submit");
                let mut reaped = 0;
                while reaped < chunk.len() {
                    for cqe in ring.completion() {
                        reaped += 1;
                        if cqe.result() as isize != whole {
                            short += 1;
                        }
                    }
                    if reaped < chunk.len() {
                        ring.submit_and_wait(chunk.len() - reaped).expect("wait");
                    }
                }
            }
        }
    }
    short
}

fn main() {
    let a = args();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut clients = Vec::with_capacity(a.viewers);
    let mut servers = Vec::with_capacity(a.viewers);
    for _ in 0..a.viewers {
        let c = TcpStream::connect(addr).expect("connect (ulimit -n?)");
        let (s, _) = listener.accept().expect("accept");
        c.set_nonblocking(true).expect("nonblocking");
        s.set_nonblocking(true).expect("nonblocking");
        s.set_nodelay(true).expect("nodelay");
        clients.push(c);
        servers.push(s);
    }
    let fds: Vec<RawFd> = servers.iter().map(|s| s.as_raw_fd()).collect();
    let got = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rx = {
        let (fds, got, stop) = (
            clients.iter().map(|c| c.as_raw_fd()).collect(),
            got.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || receiver(fds, got, stop))
    };
    let f = frame(a.size);
    let iov: Vec<libc::iovec> = f
        .parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut _,
            iov_len: p.len(),
        })
        .collect();
    let mut rings = rings(&fds);
    let mut expect = 0u64;
    let per_round = (f.flat.len() * fds.len()) as u64;
    // [cpu ns per round], short sends, (user, sys) µs
    let mut stats: Vec<(Vec<u64>, u64, u64, u64)> =
        a.modes.iter().map(|_| (Vec::new(), 0, 0, 0)).collect();
    let warmup = 3;
    for r in 0..warmup + a.rounds {
        for (k, mode) in a.modes.iter().enumerate() {
            let (u0, s0) = thread_user_sys_us();
            let t0 = thread_cpu_ns();
            let short = send_round(mode, &fds, &f, &iov, &mut rings);
            let t1 = thread_cpu_ns();
            let (u1, s1) = thread_user_sys_us();
            expect += per_round;
            let deadline = Instant::now() + Duration::from_secs(10);
            while got.load(Ordering::Relaxed) < expect {
                if Instant::now() > deadline || short > 0 {
                    eprintln!(
                        "{mode}: {short} short sends; the probe needs every send whole, stopping"
                    );
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            if r >= warmup {
                let s = &mut stats[k];
                s.0.push(t1 - t0);
                s.1 += short;
                s.2 += u1 - u0;
                s.3 += s1 - s0;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = rx.join();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "# uring-probe: {} viewers, {} B fragments ({} B per send), {} rounds per mode (after {warmup} warm-up), kernel {}",
        a.viewers,
        a.size,
        f.flat.len(),
        a.rounds,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        out,
        "| mode | ns per send, median of rounds (min–max) | vs sendmsg4 | user share |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let mut base = None;
    for (mode, (mut ns, _short, u, s)) in a.modes.iter().zip(stats) {
        ns.sort_unstable();
        let per = |x: u64| x as f64 / fds.len() as f64;
        let med = per(ns[ns.len() / 2]);
        if mode == "sendmsg4" {
            base = Some(med);
        }
        let ratio = base.map_or("–".to_string(), |b| format!("{:.2}", med / b));
        let user = if u + s > 0 {
            format!("{:.0} %", 100.0 * u as f64 / (u + s) as f64)
        } else {
            "–".into()
        };
        let _ = writeln!(
            out,
            "| {mode} | {med:.0} ({:.0}–{:.0}) | {ratio} | {user} |",
            per(ns[0]),
            per(ns[ns.len() - 1])
        );
    }
}
