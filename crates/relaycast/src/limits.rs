//! `limits`: what the relay refuses to protect itself and everyone else on it.
//!
//! Every limit is configurable ([`LimitsConfig`], plus `max_box_size`,
//! `max_ws_message` and `idle_timeout` in the ingest config) and every refusal
//! is counted by [`Reason`] in [`Refused`], which the metrics export. A
//! refused client gets a clear answer — HTTP 429 (this client asks too much)
//! or 503 (the relay is full) with `Retry-After`, WebSocket close 1013 — and
//! nothing else on the relay is disturbed.
//!
//! The limits enforced here:
//! - connections per client IP ([`Limits::connection`], held by the
//!   connection's I/O through [`Counted`], so an upgraded WebSocket keeps
//!   counting until it closes; a QUIC connection holds its guard for its
//!   whole life);
//! - streams, viewers per stream and viewers in total ([`Limits::check_stream`],
//!   [`Limits::check_viewer`]);
//! - ingest bitrate per publisher ([`Bucket`], a token bucket with a burst);
//! - HTTP request headers must arrive within `header_read_timeout` (slowloris;
//!   enforced by hyper in the server's accept loop).

use crate::Error;
use crate::fanout::{Registry, Stream, serde_secs};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Configured limits. `0` turns a count or rate limit off.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most streams at once (a new name beyond it → 503).
    pub max_streams: usize,
    /// Most viewers of one stream (→ 503, WebSocket close 1013).
    pub max_viewers_per_stream: u64,
    /// Most viewers of all streams together (→ 503, close 1013).
    pub max_viewers: u64,
    /// Most open connections from one client IP, HTTP, raw TCP ingest and
    /// QUIC together (→ 429 and the connection closed; QUIC: closed with
    /// [`crate::quic::code::LIMIT`]).
    pub max_connections_per_ip: usize,
    /// Most Socket.IO (Engine.IO) sessions from one client IP (→ 429 at the
    /// handshake). A session outlives its connections: a polling client's
    /// lives until its ping timeout, so connections alone do not bound them.
    /// The relay as a whole holds at most `max_viewers` sessions (→ 503).
    pub max_sessions_per_ip: usize,
    /// Most ingest bits per second per publisher, averaged over `ingest_burst`
    /// (over it → the publisher is disconnected, 429 / close 1013).
    pub max_ingest_bitrate: u64,
    /// The burst a publisher may send above `max_ingest_bitrate`, in seconds
    /// of that rate (a publisher starting with a backlog sends it at once).
    #[serde(with = "serde_secs")]
    pub ingest_burst: Duration,
    /// An HTTP request's headers must arrive within this time, and a TLS
    /// handshake must finish within it (slowloris).
    #[serde(with = "serde_secs")]
    pub header_read_timeout: Duration,
    /// A connection whose peer reads nothing for this long while the relay
    /// has bytes to write is closed (a viewer whose socket stays full: the
    /// lag policy's last resort, counted as `write_stalled`). 0 = never.
    #[serde(with = "serde_secs")]
    pub write_stall_timeout: Duration,
    /// Most bytes all streams may hold together (rings, init segments):
    /// past it new publishers and viewers are refused (503,
    /// `memory_budget`) instead of the process growing. Default: half of
    /// the machine's memory (`/proc/meminfo`), 4 GiB where unknown. 0 = off.
    pub memory_budget: u64,
}

/// Half of the machine's physical memory (Linux), else 4 GiB.
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024 / 2)
        })
        .unwrap_or(4 << 30)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_streams: 1000,
            max_viewers_per_stream: 10_000,
            max_viewers: 50_000,
            max_connections_per_ip: 200,
            max_sessions_per_ip: 200,
            max_ingest_bitrate: 50_000_000,
            ingest_burst: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(20),
            memory_budget: default_memory_budget(),
        }
    }
}

pub use crate::error::Reason;

/// Refusals counted by reason (monotonic; the metrics export them).
#[derive(Debug, Default)]
pub struct Refused {
    counts: [AtomicU64; Reason::COUNT],
}

impl Refused {
    /// Count one refusal.
    pub fn count(&self, reason: Reason) {
        self.counts[reason as usize].fetch_add(1, Relaxed);
    }

    /// Refusals so far for `reason`.
    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason as usize].load(Relaxed)
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> Vec<(Reason, u64)> {
        Reason::ALL.iter().map(|&r| (r, self.get(r))).collect()
    }

    /// Count `reason` and build the error the client gets.
    pub fn refuse(&self, reason: Reason, detail: impl Into<String>) -> Error {
        self.count(reason);
        Error::Refused {
            reason,
            detail: detail.into(),
        }
    }

    /// Count the refusal an ingest error stands for, if it is one (box or
    /// message over the limit); other errors are not counted here.
    pub fn note_ingest_error(&self, e: &Error) {
        match e {
            Error::Media(crate::media::MediaError::BoxTooLarge { .. }) => {
                self.count(Reason::BoxSize)
            }
            Error::MessageTooBig { .. } => self.count(Reason::WsMessage),
            _ => {}
        }
    }
}

/// The relay's limits and refusal counters (one per relay, shared).
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    /// Refusals by reason.
    pub refused: Arc<Refused>,
    per_ip: Arc<DashMap<IpAddr, usize>>,
    sessions_per_ip: Arc<DashMap<IpAddr, usize>>,
    sessions: Arc<std::sync::atomic::AtomicUsize>,
}

impl Limits {
    /// Limits from configuration.
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            config,
            refused: Arc::new(Refused::default()),
            per_ip: Arc::new(DashMap::new()),
            sessions_per_ip: Arc::new(DashMap::new()),
            sessions: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Admit one more connection from `ip`: the guard counts it until dropped.
    /// Over `max_connections_per_ip` the refusal is counted and `Err` returned.
    pub fn connection(&self, ip: IpAddr) -> Result<ConnGuard, Error> {
        let max = self.config.max_connections_per_ip;
        self.admit_ip(
            &self.per_ip,
            ip,
            max,
            Reason::ConnectionsPerIp,
            "connections",
        )
    }

    /// Admit one more Engine.IO session from `ip` (at its handshake): the
    /// guard counts it until dropped, with the session. Refused over
    /// `max_sessions_per_ip` (429), or when the relay holds `max_viewers`
    /// sessions (503).
    pub fn session(&self, ip: IpAddr) -> Result<SessionGuard, Error> {
        let max = self.config.max_sessions_per_ip;
        let ip_guard = self.admit_ip(
            &self.sessions_per_ip,
            ip,
            max,
            Reason::SessionsPerIp,
            "Socket.IO sessions",
        )?;
        let total = self.config.max_viewers as usize;
        if self.sessions.fetch_add(1, Relaxed) >= total && total != 0 {
            self.sessions.fetch_sub(1, Relaxed);
            return Err(self.refused.refuse(
                Reason::Viewers,
                format!("the relay holds {total} Socket.IO sessions (max_viewers)"),
            ));
        }
        Ok(SessionGuard {
            _ip: ip_guard,
            total: self.sessions.clone(),
        })
    }

    /// Count one more in `table` for `ip` unless it holds `max` (0 = no limit).
    fn admit_ip(
        &self,
        table: &Arc<DashMap<IpAddr, usize>>,
        ip: IpAddr,
        max: usize,
        reason: Reason,
        what: &str,
    ) -> Result<ConnGuard, Error> {
        let mut n = table.entry(ip).or_insert(0);
        if max != 0 && *n >= max {
            drop(n);
            return Err(self
                .refused
                .refuse(reason, format!("more than {max} {what} from {ip}")));
        }
        *n += 1;
        Ok(ConnGuard {
            ip,
            table: table.clone(),
        })
    }

    /// Engine.IO sessions from `ip` now.
    pub fn sessions_from(&self, ip: IpAddr) -> usize {
        self.sessions_per_ip.get(&ip).map(|n| *n).unwrap_or(0)
    }

    /// Open connections from `ip` now.
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).map(|n| *n).unwrap_or(0)
    }

    /// Is the relay under its memory budget? (What every stream holds,
    /// added up at admission: a publisher or viewer more is refused past it.)
    pub fn check_memory(&self, registry: &Registry) -> Result<(), Error> {
        let budget = self.config.memory_budget;
        if budget == 0 {
            return Ok(());
        }
        let held = registry.held_bytes() as u64;
        if held >= budget {
            return Err(self.refused.refuse(
                Reason::MemoryBudget,
                format!("streams hold {held} bytes, the relay's budget is {budget}"),
            ));
        }
        Ok(())
    }

    /// May a publisher start `name`? Refused when it would be a new stream
    /// beyond `max_streams`.
    pub fn check_stream(&self, registry: &Registry, name: &str) -> Result<(), Error> {
        self.check_memory(registry)?;
        let max = self.config.max_streams;
        if max != 0 && registry.get(name).is_none() && registry.len() >= max {
            return Err(self
                .refused
                .refuse(Reason::Streams, format!("the relay has {max} streams")));
        }
        Ok(())
    }

    /// May a viewer that just subscribed to `stream` stay? (Its own
    /// subscription is already counted, so the check is exact under races:
    /// never more than the limit.)
    pub fn check_viewer(&self, registry: &Registry, stream: &Stream) -> Result<(), Error> {
        self.check_memory(registry)?;
        let per = self.config.max_viewers_per_stream;
        if per != 0 && stream.viewer_count() > per {
            return Err(self.refused.refuse(
                Reason::ViewersPerStream,
                format!("{:?} has {per} viewers", stream.name()),
            ));
        }
        let max = self.config.max_viewers;
        if max != 0 {
            let total: u64 = registry.list().iter().map(|s| s.viewer_count()).sum();
            if total > max {
                return Err(self
                    .refused
                    .refuse(Reason::Viewers, format!("the relay has {max} viewers")));
            }
        }
        Ok(())
    }

    /// A token bucket for one publisher, or `None` when bitrate is unlimited.
    pub fn ingest_bucket(&self) -> Option<Bucket> {
        let bits = self.config.max_ingest_bitrate;
        if bits == 0 {
            return None;
        }
        let rate = bits as f64 / 8.0;
        let burst = (rate * self.config.ingest_burst.as_secs_f64()).max(rate);
        Some(Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
            refused: self.refused.clone(),
        })
    }
}

/// Counts one connection from an IP until dropped.
#[derive(Debug)]
pub struct ConnGuard {
    ip: IpAddr,
    table: Arc<DashMap<IpAddr, usize>>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.table.entry(self.ip) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Counts one Engine.IO session, for its IP and for the relay, until dropped
/// (it rides in the handshake request's extensions, which the session keeps
/// for its whole life).
#[derive(Debug)]
pub struct SessionGuard {
    _ip: ConnGuard,
    total: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Relaxed);
    }
}

/// A connection's I/O with its [`ConnGuard`]: the connection counts for its
/// IP for as long as the socket lives, also after a WebSocket upgrade. It
/// also holds the write deadline: when the peer stops reading and a write
/// makes no progress for `write_stall` (the socket buffer stays full), the
/// write fails with `TimedOut`, counted as [`Reason::WriteStalled`]: the lag
/// policy reaches a viewer whose socket is full (its session ends: end of
/// body for HTTP, the connection closed for WebSocket) instead of holding it
/// forever. Any progress re-arms the deadline.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _guard: ConnGuard,
    stall: Option<Stall>,
}

#[derive(Debug)]
struct Stall {
    limit: Duration,
    refused: Arc<Refused>,
    /// Armed while a write waits (pending), cleared on progress.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stall {
    /// The inner write returned `r`: re-arm on progress, and when it is
    /// pending, fail once the deadline passed.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.timer = None;
                    self.refused.count(Reason::WriteStalled);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the peer read nothing for {limit:?}: write deadline"),
                    )));
                }
                Poll::Pending
            }
            r => {
                self.timer = None;
                r
            }
        }
    }
}

impl<IO> Counted<IO> {
    /// Wrap `io`.
    pub fn new(io: IO, guard: ConnGuard) -> Self {
        Counted {
            io,
            _guard: guard,
            stall: None,
        }
    }

    /// Give writes a deadline: `limit` without progress fails them
    /// (counted in `refused`). A zero `limit` leaves writes without one.
    pub fn with_write_deadline(mut self, limit: Duration, refused: Arc<Refused>) -> Self {
        self.stall = (!limit.is_zero()).then(|| Stall {
            limit,
            refused,
            timer: None,
        });
        self
    }

    /// The wrapped I/O (for its non-blocking `try_*` calls).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl Counted<tokio::net::TcpStream> {
    /// The read half, and the write half that keeps the guard and the
    /// write deadline (a fan-out writer writes to it while the viewer's
    /// task waits on the read half).
    pub fn into_split(
        self,
    ) -> (
        tokio::net::tcp::OwnedReadHalf,
        Counted<tokio::net::tcp::OwnedWriteHalf>,
    ) {
        let (rd, wr) = self.io.into_split();
        let wr = Counted {
            io: wr,
            _guard: self._guard,
            stall: self.stall,
        };
        (rd, wr)
    }
}

impl Counted<tokio::net::tcp::OwnedWriteHalf> {
    /// The whole connection again (`None` if `rd` is another stream's).
    pub fn reunite(
        self,
        rd: tokio::net::tcp::OwnedReadHalf,
    ) -> Option<Counted<tokio::net::TcpStream>> {
        let io = rd.reunite(self.io).ok()?;
        Some(Counted {
            io,
            _guard: self._guard,
            stall: self.stall,
        })
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        match &mut this.stall {
            Some(s) => s.check(cx, r),
            None => r,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_flush(cx);
        match &mut this.stall {
            Some(s) => s.check(cx, r),
            None => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        match &mut this.stall {
            Some(s) => s.check(cx, r),
            None => r,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A publisher's ingest budget: `rate` bytes per second with a `burst`.
/// The caller passes nothing but byte counts; time is read from the clock
/// (this is I/O-side code, not the sans-IO splitter).
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused: Arc<Refused>,
}

impl Bucket {
    /// Spend `bytes`; `Err` (counted) when the publisher is over its bitrate.
    pub fn take(&mut self, bytes: usize) -> Result<(), Error> {
        self.take_at(bytes, Instant::now())
    }

    /// [`take`](Self::take) at a given instant (for tests).
    pub fn take_at(&mut self, bytes: usize, now: Instant) -> Result<(), Error> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst) - bytes as f64;
        if self.tokens < 0.0 {
            return Err(self.refused.refuse(
                Reason::IngestBitrate,
                format!("ingest over {} bit/s", (self.rate * 8.0).round() as u64),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_guard_counts_and_releases() {
        let limits = Limits::new(LimitsConfig {
            max_connections_per_ip: 2,
            ..LimitsConfig::default()
        });
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let a = limits.connection(ip);
        let b = limits.connection(ip);
        assert!(a.is_ok() && b.is_ok());
        let c = limits.connection(ip);
        assert!(matches!(
            c,
            Err(Error::Refused {
                reason: Reason::ConnectionsPerIp,
                ..
            })
        ));
        assert!(limits.connection(other).is_ok(), "other IPs unaffected");
        drop(a);
        assert_eq!(limits.connections_from(ip), 1);
        assert!(limits.connection(ip).is_ok());
        assert_eq!(limits.refused.get(Reason::ConnectionsPerIp), 1);
    }

    #[test]
    fn session_guards_count_per_ip_and_relay_wide() {
        let limits = Limits::new(LimitsConfig {
            max_sessions_per_ip: 2,
            max_viewers: 3,
            ..LimitsConfig::default()
        });
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let a = limits.session(ip);
        let b = limits.session(ip);
        assert!(a.is_ok() && b.is_ok());
        assert!(matches!(
            limits.session(ip),
            Err(Error::Refused {
                reason: Reason::SessionsPerIp,
                ..
            })
        ));
        assert_eq!(
            limits.connections_from(ip),
            0,
            "sessions are not connections"
        );
        let c = limits.session(other);
        assert!(c.is_ok());
        assert!(matches!(
            limits.session(other),
            Err(Error::Refused {
                reason: Reason::Viewers,
                ..
            })
        ));
        assert_eq!(
            limits.sessions_from(other),
            1,
            "a relay-wide refusal holds nothing"
        );
        drop(a);
        assert_eq!(limits.sessions_from(ip), 1);
        assert!(limits.session(other).is_ok());
        assert_eq!(limits.refused.get(Reason::SessionsPerIp), 1);
    }

    #[test]
    fn bucket_allows_the_burst_and_the_rate_but_not_more() {
        let limits = Limits::new(LimitsConfig {
            max_ingest_bitrate: 8_000, // 1000 bytes/s
            ingest_burst: Duration::from_secs(2),
            ..LimitsConfig::default()
        });
        let mut b = limits.ingest_bucket().expect("a bucket");
        let t0 = b.last;
        assert!(b.take_at(2000, t0).is_ok(), "the burst");
        assert!(b.take_at(1000, t0 + Duration::from_secs(1)).is_ok());
        assert!(b.take_at(10, t0 + Duration::from_secs(1)).is_err());
        assert_eq!(limits.refused.get(Reason::IngestBitrate), 1);
        let unlimited = Limits::new(LimitsConfig {
            max_ingest_bitrate: 0,
            ..LimitsConfig::default()
        });
        assert!(unlimited.ingest_bucket().is_none());
    }
}
