//! The fan-out writer: WebSocket viewers (and HTTP streaming viewers over
//! plain HTTP/1.1, chunked) that have caught up are written to from the
//! fan-out point, not from one task per viewer.
//!
//! Each stream gets a writer task per `egress.ws_viewers_per_writer`
//! viewers, up to one per runtime worker (made when the first viewer comes
//! and gone a while after the last one leaves); a viewer's session hands its
//! connection's write half and its cursor to one of them ([`hand_over`]). On
//! every change of the stream the writer reads what is new once
//! ([`Stream::read_run`]), builds its frames once, and goes through its
//! viewers: each one that was caught up takes the run
//! ([`Viewer::take_run`]) and gets the same frames with one non-blocking
//! vectored write (`sendmsg`; on Linux all of them in one io_uring
//! submission per 256 viewers, [`Batch`], unless `egress.ws_uring = false`
//! or the system refuses io_uring); any other (behind, told of a new publisher or
//! init) takes its own events with `try_next`. One task woken per writer per
//! fragment instead of one per viewer, and no waker, timer, span, lock or
//! shared counter per viewer per fragment. A viewer goes back to its own task
//! (the awaiting path in `super::run`, with its write deadline, lag skips
//! and lingering close) when its socket is full (the rest of the batch goes
//! with it), when its session ends, when the client sends something (a
//! ping to answer, a close) and at shutdown. So no publisher ever waits on
//! a viewer and no viewer waits on another: a writer only ever does
//! non-blocking writes.
//!
//! Why by hand: this is the product's fan-out itself; a crate would be a
//! runtime (an io_uring executor, a reactor) rather than this loop.

use super::{BATCH, Frames, Framing};
use crate::fanout::{EndReason, Event, OutTally, Run, Stream, Viewer};
use crate::limits::Counted;
use dashmap::DashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

/// How long a writer with no viewers stays for the next one.
const IDLE: Duration = Duration::from_secs(5);
/// Every this many passes a writer drops the viewers whose session is gone.
const SWEEP: u64 = 64;

/// The write side of a viewer's connection (its guard and write deadline
/// travel with it).
pub(super) type WriteHalf = Counted<OwnedWriteHalf>;

/// Why a writer gave a viewer back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(super) enum Why {
    /// Its socket did not take the whole batch: the rest is in `frames`.
    Full,
    /// Its session ended (`end`): the frames before the end are in `frames`.
    Ended,
    /// The session asked for it back (the client sent something, or the
    /// relay is shutting down).
    Asked,
    /// The writer was leaving (idle) as the viewer came: join again.
    Closing,
    /// No writer could take it.
    Refused,
}

impl Why {
    const ALL: [Why; 5] = [
        Why::Full,
        Why::Ended,
        Why::Asked,
        Why::Closing,
        Why::Refused,
    ];

    fn name(self) -> &'static str {
        match self {
            Why::Full => "full",
            Why::Ended => "ended",
            Why::Asked => "asked",
            Why::Closing => "closing",
            Why::Refused => "refused",
        }
    }
}

/// What the writers did, process-wide (counters per pass, not per write).
#[derive(Debug, Default)]
struct Stats {
    writers: AtomicU64,
    viewers: AtomicU64,
    wakeups: AtomicU64,
    writes: AtomicU64,
    shared: AtomicU64,
    uring: AtomicU64,
    handbacks: [AtomicU64; 5],
}

static STATS: LazyLock<Stats> = LazyLock::new(Stats::default);

/// A snapshot of the writers' counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterCounts {
    /// Writer tasks alive.
    pub writers: u64,
    /// Viewers in writers' hands now.
    pub viewers: u64,
    /// Passes over a writer's viewers (one per change of its stream).
    pub wakeups: u64,
    /// Non-blocking writes that wrote a whole batch.
    pub writes: u64,
    /// Of those, batches that were a pass's shared frames (the viewer was
    /// caught up and took the pass's run).
    pub shared: u64,
    /// Sends of a pass's shared frames that went in an io_uring batch
    /// (`egress.ws_uring`), whole or not.
    pub uring: u64,
    /// Viewers given back to their task: full, ended, asked, closing, refused.
    pub handbacks: [u64; 5],
}

/// The writers' counters now.
pub fn writer_counts() -> WriterCounts {
    let s = &*STATS;
    WriterCounts {
        writers: s.writers.load(Relaxed),
        viewers: s.viewers.load(Relaxed),
        wakeups: s.wakeups.load(Relaxed),
        writes: s.writes.load(Relaxed),
        shared: s.shared.load(Relaxed),
        uring: s.uring.load(Relaxed),
        handbacks: std::array::from_fn(|i| s.handbacks[i].load(Relaxed)),
    }
}

/// The writers' families on /metrics (register with
/// [`crate::metrics::add_collector`]; they are process-wide).
#[derive(Debug)]
pub struct WriterMetrics;

impl crate::metrics::Collector for WriterMetrics {
    fn encode(&self, mut e: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{Kind, counter, family, single};
        let c = writer_counts();
        single(
            &mut e,
            "relaycast_ws_writers",
            Kind::Gauge,
            "Fan-out writer tasks (one per egress.ws_viewers_per_writer WebSocket and HTTP streaming viewers of a stream, up to one per worker).",
            c.writers,
        )?;
        single(
            &mut e,
            "relaycast_ws_writer_viewers",
            Kind::Gauge,
            "WebSocket and HTTP streaming viewers a fan-out writer writes to now (the others are served by their own task).",
            c.viewers,
        )?;
        single(
            &mut e,
            "relaycast_ws_writer_wakeups_total",
            Kind::Counter,
            "Passes of a fan-out writer over its viewers (one per change of the stream).",
            c.wakeups,
        )?;
        single(
            &mut e,
            "relaycast_ws_writer_writes_total",
            Kind::Counter,
            "Batches a fan-out writer wrote whole with one non-blocking write.",
            c.writes,
        )?;
        single(
            &mut e,
            "relaycast_ws_writer_shared_writes_total",
            Kind::Counter,
            "Of those, batches built once per pass and written to every caught-up viewer of the writer.",
            c.shared,
        )?;
        single(
            &mut e,
            "relaycast_ws_writer_uring_sends_total",
            Kind::Counter,
            "Sends of a pass's shared frames submitted in an io_uring batch (egress.ws_uring), one per viewer.",
            c.uring,
        )?;
        let mut m = family(
            &mut e,
            "relaycast_ws_writer_handbacks_total",
            Kind::Counter,
            "Viewers a fan-out writer gave back to their own task, by why: full (socket full), ended, asked (the client sent something, or shutdown), closing (idle writer), refused.",
        )?;
        for w in Why::ALL {
            counter(&mut m, &[("why", w.name())], c.handbacks[w as usize])?;
        }
        Ok(())
    }
}

/// A viewer given back to its session.
pub(super) struct Back {
    pub viewer: Box<Viewer>,
    pub wr: WriteHalf,
    /// Frames not (or not wholly) written yet.
    pub frames: Frames,
    /// The `End` event the writer took, if it did.
    pub end: Option<EndReason>,
    pub why: Why,
}

/// A viewer in a writer's hands.
struct Slot {
    id: u64,
    viewer: Box<Viewer>,
    wr: WriteHalf,
    framing: Framing,
    back: oneshot::Sender<Back>,
}

impl Slot {
    /// Gives the viewer back with the frames it still has to write.
    fn give_back(self, why: Why, end: Option<EndReason>, frames: Frames) {
        STATS.handbacks[why as usize].fetch_add(1, Relaxed);
        let _ = self.back.send(Back {
            viewer: self.viewer,
            wr: self.wr,
            frames,
            end,
            why,
        });
    }
}

// A slot moves through the inbox whole: boxing it would be an allocation
// per hand-over for a message that lives microseconds.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Join(Slot),
    /// Give this viewer back (if it is still here).
    Reclaim(u64),
}

/// (stream, writer index) → the writer's inbox. A stream is known by its
/// allocation's address: a writer holds the stream, so the address is not
/// reused while the writer's entry is open.
type Key = (usize, usize);

static WRITERS: LazyLock<DashMap<Key, mpsc::UnboundedSender<Msg>>> = LazyLock::new(DashMap::new);
static IDS: AtomicU64 = AtomicU64::new(0);

/// Writers a stream may have: one per runtime worker (at most 16).
fn writers() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
        .clamp(1, 16)
}

/// The writer of viewer `id`: a stream gets one writer per `per_writer`
/// WebSocket viewers (counted as the viewer comes), up to one per worker.
/// One writer serves a stream of a few thousand viewers with one pass per
/// fragment; a second one on another core shares the stream's state and
/// its fragments' counters across cores and wakes another thread for every
/// fragment, which cost more than it saved below 10,000 viewers (measured,
/// benches/results/NOTES.md).
fn key(stream: &Stream, id: u64, per_writer: usize) -> Key {
    use crate::fanout::Transport;
    let stats = stream.stats();
    let viewers =
        (stats.viewers_of(Transport::WebSocket) + stats.viewers_of(Transport::HttpStream)) as usize;
    let shards = viewers.div_ceil(per_writer.max(1)).clamp(1, writers());
    (stream.key(), (id % shards as u64) as usize)
}

/// Gives `slot` to its writer (making the writer when there is none), or
/// gives it back (moved, not boxed: see [`Msg`]).
#[allow(clippy::result_large_err)]
fn join(slot: Slot, key: Key, uring: bool) -> Result<(), Slot> {
    let mut msg = Msg::Join(slot);
    for _ in 0..2 {
        WRITERS.remove_if(&key, |_, tx| tx.is_closed());
        let tx = WRITERS
            .entry(key)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let Msg::Join(s) = &msg else {
                    unreachable!("only joins are sent here")
                };
                tokio::spawn(writer(s.viewer.stream().clone(), key, uring, rx));
                tx
            })
            .clone();
        match tx.send(msg) {
            Ok(()) => return Ok(()),
            // The writer closed its inbox (it had no viewers): make another.
            Err(mpsc::error::SendError(m)) => msg = m,
        }
    }
    match msg {
        Msg::Join(s) => Err(s),
        Msg::Reclaim(_) => unreachable!("only joins are sent here"),
    }
}

fn reclaim(key: Key, id: u64) {
    if let Some(tx) = WRITERS.get(&key) {
        let _ = tx.send(Msg::Reclaim(id));
    }
}

/// A viewer in a writer's hands, seen from its session: what the session
/// keeps while it waits (the read half, the way back) and no more. This is
/// the state a viewer's task holds for most of its life, so it is small:
/// the viewer itself, its write half and its frames are the writer's.
pub(super) struct Handed {
    rd: OwnedReadHalf,
    back: oneshot::Receiver<Back>,
    key: Key,
    id: u64,
}

/// Hands the viewer to a writer (no waiting: the writer is told through its
/// inbox); then [`Handed::wait`] until it is given back. `Err`: no writer
/// could take it (refused), with the read half and the viewer as they were
/// (boxed: the result is held while the session waits, and that state
/// should be small).
pub(super) fn hand_over(
    rd: OwnedReadHalf,
    wr: WriteHalf,
    viewer: Box<Viewer>,
    framing: Framing,
    per_writer: usize,
    uring: bool,
) -> Result<Handed, Box<(OwnedReadHalf, Back)>> {
    let id = IDS.fetch_add(1, Relaxed);
    let key = key(viewer.stream(), id, per_writer);
    let (tx, back) = oneshot::channel();
    let slot = Slot {
        id,
        viewer,
        wr,
        framing,
        back: tx,
    };
    match join(slot, key, uring) {
        Ok(()) => Ok(Handed { rd, back, key, id }),
        Err(s) => {
            STATS.handbacks[Why::Refused as usize].fetch_add(1, Relaxed);
            let back = Back {
                viewer: s.viewer,
                wr: s.wr,
                frames: Frames::default(),
                end: None,
                why: Why::Refused,
            };
            Err(Box::new((rd, back)))
        }
    }
}

impl Handed {
    /// Waits until the writer gives the viewer back; asks for it back when
    /// the client sends something or `shutdown` completes. `None`: the
    /// connection failed in the writer (the viewer is gone with it).
    pub(super) async fn wait<S: Future<Output = ()>>(
        &mut self,
        mut shutdown: Pin<&mut S>,
    ) -> Option<Back> {
        let mut asked = false;
        loop {
            tokio::select! {
                back = &mut self.back => return back.ok(),
                _ = client_spoke(&mut self.rd), if !asked => {
                    asked = true;
                    reclaim(self.key, self.id);
                }
                _ = shutdown.as_mut(), if !asked => {
                    asked = true;
                    reclaim(self.key, self.id);
                }
            }
        }
    }

    /// The read half again (once the viewer is back).
    pub(super) fn into_read_half(self) -> OwnedReadHalf {
        self.rd
    }
}

/// Completes when the client sent something (or closed), without taking it.
/// It waits through `poll_peek`, which keeps the socket's one read waker
/// (as a read does), not through `readable()`, which waits in a list: the
/// waker left there by the HTTP connection's task before the upgrade would
/// otherwise stay, and with it that finished task's memory (10 KB per
/// viewer, measured).
async fn client_spoke(rd: &mut OwnedReadHalf) {
    let mut byte = [0u8; 1];
    let _ =
        std::future::poll_fn(|cx| rd.poll_peek(cx, &mut tokio::io::ReadBuf::new(&mut byte))).await;
}

/// What a writer does with a viewer after a pass.
enum Next {
    Keep,
    Back(Why, Option<EndReason>),
    /// The connection failed: drop it (its session sees the writer's
    /// sender go and ends).
    Drop,
}

/// The writer's scratch space, shared by its viewers: a viewer's frames
/// live only while they are written (one that could not write them all
/// takes them along), so no viewer holds a batch of its own.
#[derive(Default)]
struct Scratch {
    frames: Frames,
    /// Arrival times of the fragments in `frames`.
    arrived: Vec<Instant>,
    /// Batches written whole in this pass.
    writes: u64,
    /// Of those, the pass's shared frames.
    shared: u64,
    /// Fragments handed out in this pass (added to the stream's counters
    /// once per pass).
    out: OutTally,
}

/// Writes what `slot`'s viewer has ready (up to [`BATCH`] events) with
/// non-blocking writes.
fn pass(slot: &mut Slot, scratch: &mut Scratch) -> Next {
    let Scratch {
        frames,
        arrived,
        writes,
        out,
        ..
    } = scratch;
    arrived.clear();
    let mut n = 0;
    while n < BATCH {
        match slot.viewer.try_next_tallied(out) {
            None => break,
            Some(Event::End(r)) => return Next::Back(Why::Ended, Some(r)),
            Some(e) => {
                if let Event::Fragment(c) = &e {
                    arrived.push(c.arrived);
                }
                frames.push_event(&e, slot.framing);
                n += 1;
            }
        }
    }
    if frames.is_empty() {
        return Next::Keep;
    }
    match frames.try_write(slot.wr.get_ref()) {
        Ok(true) => {
            *writes += 1;
            let now = Instant::now();
            for &a in arrived.iter() {
                slot.viewer.wrote(a, now);
            }
            if n == BATCH {
                // Far behind: its own task catches it up.
                Next::Back(Why::Full, None)
            } else {
                Next::Keep
            }
        }
        Ok(false) => Next::Back(Why::Full, None),
        Err(_) => Next::Drop,
    }
}

/// The events of one [`Run`] as frames, built once per pass for every
/// viewer at the run's start, once per [`Framing`] (WebSocket with and
/// without the JSON message per fragment, HTTP streaming with and without
/// `free` boxes), each when first needed.
#[derive(Default)]
struct Shared {
    frames: [Frames; Framing::ALL.len()],
    built: [bool; Framing::ALL.len()],
}

impl Shared {
    fn frames(&mut self, run: &Run, framing: Framing) -> &Frames {
        let i = framing as usize;
        if !self.built[i] {
            let f = &mut self.frames[i];
            f.clear();
            for c in &run.chunks {
                f.push_event(&Event::Fragment(c.clone()), framing);
            }
            self.built[i] = true;
        }
        &self.frames[i]
    }

    fn reset(&mut self) {
        self.built = [false; Framing::ALL.len()];
    }
}

/// Writes `run` (its frames `shared`) to a viewer that took it
/// ([`Viewer::take_run`]): the same bytes and the same outcomes as
/// [`pass`], without reading the stream or touching the fragments'
/// counters per viewer.
fn write_run(slot: &mut Slot, shared: &Frames, run: &Run, scratch: &mut Scratch) -> Next {
    let sent = shared.try_write_shared(slot.wr.get_ref());
    finish_run(slot, sent, run, scratch)
}

/// The rest of [`write_run`] once the shared frames were sent (here, or in
/// a batch, [`Batch::send`]): `sent` is what is left for this viewer alone.
fn finish_run(
    slot: &mut Slot,
    sent: std::io::Result<Option<Frames>>,
    run: &Run,
    scratch: &mut Scratch,
) -> Next {
    match sent {
        Ok(None) => {}
        Ok(Some(rest)) => {
            // Part of it: this viewer finishes its own copy.
            scratch.frames = rest;
            match scratch.frames.try_write(slot.wr.get_ref()) {
                Ok(true) => {}
                Ok(false) => return Next::Back(Why::Full, None),
                Err(_) => return Next::Drop,
            }
        }
        Err(_) => return Next::Drop,
    }
    scratch.writes += 1;
    scratch.shared += 1;
    let now = Instant::now();
    for c in &run.chunks {
        slot.viewer.wrote(c.arrived, now);
    }
    if run.more {
        // Far behind: its own task catches it up.
        Next::Back(Why::Full, None)
    } else {
        Next::Keep
    }
}

/// Notes what a pass did with the viewer at `i`: where it is now if it
/// stays, else its `next` (and the frames it did not write) for after the
/// pass.
fn settle_one(
    settle: &mut Vec<(usize, Next, Frames)>,
    newest: &mut Option<u64>,
    slot: &Slot,
    i: usize,
    next: Next,
    scratch: &mut Scratch,
) {
    if matches!(next, Next::Keep) {
        *newest = (*newest).max(Some(slot.viewer.cursor()));
    } else {
        settle.push((i, next, std::mem::take(&mut scratch.frames)));
    }
}

/// A writer's io_uring for batched sends: made when first needed, if
/// `egress.ws_uring` asks for it and the system gives one (else the
/// writer keeps one `sendmsg` per viewer; said once per process).
struct Ring {
    wanted: bool,
    sender: Option<relaycast_uring::Sender>,
}

/// Entries per submission at most: a pass over more viewers submits in
/// chunks of this many (a system call per 256 sends instead of one per
/// send). A writer of fewer viewers gets a ring of as many entries as it
/// has viewers (rounded up to a power of two), made again larger as
/// viewers come: a ring of 256 is about 24 KB, and a relay of many small
/// streams has a writer (and a ring) per stream.
const RING_ENTRIES: u32 = 256;

static RING_REFUSED: std::sync::Once = std::sync::Once::new();

impl Ring {
    fn new(wanted: bool) -> Ring {
        Ring {
            wanted,
            sender: None,
        }
    }

    /// The ring, for a pass over `viewers` viewers.
    fn get(&mut self, viewers: usize) -> Option<&mut relaycast_uring::Sender> {
        let want = u32::try_from(viewers)
            .unwrap_or(RING_ENTRIES)
            .clamp(1, RING_ENTRIES)
            .next_power_of_two();
        if self.sender.as_ref().is_some_and(|s| s.entries() < want) {
            // Grown: a larger ring (the old one is idle between passes).
            self.sender = None;
            self.wanted = true;
        }
        if self.sender.is_none() && self.wanted {
            self.wanted = false;
            match relaycast_uring::Sender::new(want) {
                Ok(s) => self.sender = Some(s),
                Err(e) => RING_REFUSED.call_once(|| {
                    tracing::warn!(
                        error = %e,
                        "io_uring is not available: the WebSocket fan-out writers send with one sendmsg per viewer (egress.ws_uring = false says so without trying)"
                    )
                }),
            }
        }
        self.sender.as_mut()
    }
}

/// The batched send of a pass: which viewers took the run, and what
/// became of them.
#[derive(Default)]
struct Batch {
    /// Per slot index: it took the run (and was sent it in the batch).
    taken: Vec<bool>,
    /// Slot indices of one send (viewers with the same framing).
    idx: Vec<usize>,
    /// (slot index, bytes written or error) as the sends complete.
    sent: Vec<(usize, std::io::Result<usize>)>,
}

impl Batch {
    /// Which viewers take `run` (all that were caught up).
    fn take(&mut self, slots: &mut [Slot], run: &Run, out: &mut OutTally) {
        self.taken.clear();
        self.taken.resize(slots.len(), false);
        for (i, slot) in slots.iter_mut().enumerate() {
            self.taken[i] = slot.viewer.take_run(run, out);
        }
    }

    /// Every viewer in `range` that took `run` is sent its frames in one
    /// io_uring submission per framing; each one's outcome is then the
    /// same as [`write_run`]'s (what a socket did not take, the viewer
    /// writes itself or takes back to its task).
    fn send(
        &mut self,
        ring: &mut relaycast_uring::Sender,
        slots: &mut [Slot],
        range: std::ops::Range<usize>,
        (run, shared, scratch): (&Run, &mut Shared, &mut Scratch),
        settle: &mut Vec<(usize, Next, Frames)>,
        newest: &mut Option<u64>,
    ) {
        use std::os::fd::AsFd;
        for framing in Framing::ALL {
            self.idx.clear();
            self.idx.extend(
                range
                    .clone()
                    .filter(|&i| self.taken[i] && slots[i].framing == framing),
            );
            if self.idx.is_empty() {
                continue;
            }
            let frames = shared.frames(run, framing);
            let mut io = [std::io::IoSlice::new(&[]); super::IOV];
            let k = frames.gather(&mut io);
            let socks: Vec<_> = self
                .idx
                .iter()
                .map(|&i| slots[i].wr.get_ref().as_ref().as_fd())
                .collect();
            let (idx, sent) = (&self.idx, &mut self.sent);
            ring.send_to_all(&socks, &io[..k], |j, r| sent.push((idx[j], r)));
            STATS.uring.fetch_add(socks.len() as u64, Relaxed);
            drop(socks);
            for (i, r) in self.sent.drain(..) {
                let rest = match r {
                    Ok(n) => Ok(frames.rest_after(n)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        Ok(frames.rest_after(0))
                    }
                    Err(e) => Err(e),
                };
                let next = finish_run(&mut slots[i], rest, run, scratch);
                settle_one(settle, newest, &slots[i], i, next, scratch);
            }
        }
    }
}

/// Applies `next` to the viewer at `i` (the frames it did not write go
/// with it when it goes back).
fn apply(slots: &mut Vec<Slot>, i: usize, next: Next, scratch: &mut Scratch) {
    match next {
        Next::Keep => {}
        Next::Back(why, end) => {
            let frames = std::mem::take(&mut scratch.frames);
            slots.swap_remove(i).give_back(why, end, frames);
        }
        Next::Drop => {
            scratch.frames.clear();
            slots.swap_remove(i);
        }
    }
}

/// One writer of one stream: serves the viewers it is given until it has
/// had none for [`IDLE`].
async fn writer(stream: Stream, key: Key, uring: bool, mut inbox: mpsc::UnboundedReceiver<Msg>) {
    let mut changes = stream.changes();
    let mut slots: Vec<Slot> = Vec::new();
    let mut scratch = Scratch::default();
    // The fragments new since the last pass, read once per pass for the
    // viewers that were caught up (most of them), and their frames.
    let mut run = Run::default();
    let mut shared = Shared::default();
    // Where the caught-up viewers are: the newest cursor after a pass.
    let mut seen: Option<u64> = None;
    // The batched sends (made when first needed) and their bookkeeping.
    let mut ring = Ring::new(uring);
    let mut batch = Batch::default();
    // The viewers a pass gives back or drops, removed after the pass (a
    // removal moves another viewer to the removed one's index).
    let mut settle: Vec<(usize, Next, Frames)> = Vec::new();
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    let mut was_empty = true;
    let mut passes: u64 = 0;
    STATS.writers.fetch_add(1, Relaxed);
    loop {
        let before = slots.len();
        scratch.writes = 0;
        scratch.shared = 0;
        let mut newest = None;
        tokio::select! {
            biased;
            m = inbox.recv() => match m {
                Some(Msg::Join(mut s)) => {
                    // Events may have come since the session looked.
                    let next = pass(&mut s, &mut scratch);
                    seen = seen.max(Some(s.viewer.cursor()));
                    slots.push(s);
                    let last = slots.len() - 1;
                    apply(&mut slots, last, next, &mut scratch);
                }
                Some(Msg::Reclaim(id)) => {
                    if let Some(i) = slots.iter().position(|s| s.id == id) {
                        slots.swap_remove(i).give_back(Why::Asked, None, Frames::default());
                    }
                }
                None => break,
            },
            r = changes.changed() => {
                if r.is_err() {
                    break;
                }
                changes.borrow_and_update();
                STATS.wakeups.fetch_add(1, Relaxed);
                // Sessions that went away while here (their task is gone:
                // nobody waits for the viewer back) are dropped now and then,
                // not checked per write: that check was a cache miss per
                // viewer per fragment (3 % of the relay's CPU at 4,000).
                passes += 1;
                if passes % SWEEP == 0 {
                    slots.retain(|s| !s.back.is_closed());
                }
                shared.reset();
                match seen {
                    Some(from) => stream.read_run(from, BATCH, &mut run),
                    None => run.chunks.clear(),
                }
                batch.taken.clear();
                if !run.chunks.is_empty() && slots.len() > 1 {
                    if let Some(r) = ring.get(slots.len()) {
                        batch.take(&mut slots, &run, &mut scratch.out);
                        // A submission per RING_ENTRIES viewers, and the
                        // worker's other tasks (a publisher, another writer)
                        // run in between, as they do between viewers below.
                        let mut from = 0;
                        while from < slots.len() {
                            let to = slots.len().min(from + RING_ENTRIES as usize);
                            let pass = (&run, &mut shared, &mut scratch);
                            batch.send(r, &mut slots, from..to, pass, &mut settle, &mut newest);
                            from = to;
                            if from < slots.len() {
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                }
                for i in (0..slots.len()).rev() {
                    if batch.taken.get(i) == Some(&true) {
                        continue;
                    }
                    let slot = &mut slots[i];
                    let next = if slot.viewer.take_run(&run, &mut scratch.out) {
                        let frames = shared.frames(&run, slot.framing);
                        write_run(slot, frames, &run, &mut scratch)
                    } else {
                        pass(slot, &mut scratch)
                    };
                    settle_one(&mut settle, &mut newest, slot, i, next, &mut scratch);
                    // Let the worker's other tasks (a publisher, another
                    // writer) run between viewers when the budget is spent.
                    tokio::task::consume_budget().await;
                }
                settle.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
                for (i, next, frames) in settle.drain(..) {
                    scratch.frames = frames;
                    apply(&mut slots, i, next, &mut scratch);
                }
            }
            _ = &mut idle, if slots.is_empty() => break,
        }
        if newest.is_some() {
            seen = newest;
        }
        STATS.writes.fetch_add(scratch.writes, Relaxed);
        STATS.shared.fetch_add(scratch.shared, Relaxed);
        stream.add_out(&mut scratch.out);
        let after = slots.len();
        if after >= before {
            STATS.viewers.fetch_add((after - before) as u64, Relaxed);
        } else {
            STATS.viewers.fetch_sub((before - after) as u64, Relaxed);
        }
        // The idle time counts from when the last viewer left.
        if slots.is_empty() && !was_empty {
            idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
        }
        was_empty = slots.is_empty();
    }
    // Leaving: no more joins; give back whatever is still here or came in.
    STATS.viewers.fetch_sub(slots.len() as u64, Relaxed);
    inbox.close();
    while let Ok(m) = inbox.try_recv() {
        if let Msg::Join(s) = m {
            slots.push(s);
        }
    }
    for s in slots {
        s.give_back(Why::Closing, None, Frames::default());
    }
    WRITERS.remove_if(&key, |_, tx| tx.is_closed());
    STATS.writers.fetch_sub(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::{FanoutConfig, Registry, Transport, ViewerStart};
    use std::collections::BTreeSet;

    /// The writers viewers 0..100 would go to.
    fn writers_used(stream: &Stream, per_writer: usize) -> BTreeSet<usize> {
        (0..100).map(|id| key(stream, id, per_writer).1).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_stream_gets_a_writer_per_so_many_viewers_up_to_one_per_worker() {
        let reg = Registry::new(FanoutConfig::default());
        let p = reg.publish("s").expect("publish");
        let stream = p.stream().clone();
        let start = ViewerStart {
            after: None,
            transport: Transport::WebSocket,
        };
        let mut viewers: Vec<Viewer> = (0..25).map(|_| stream.subscribe(start)).collect();
        // Other transports than WebSocket and HTTP streaming do not count.
        let _poll = stream.subscribe(ViewerStart {
            after: None,
            transport: Transport::LongPoll,
        });
        assert_eq!(writers_used(&stream, 10_000), BTreeSet::from([0]));
        assert_eq!(writers_used(&stream, 10), BTreeSet::from([0, 1, 2]));
        assert_eq!(writers_used(&stream, 25), BTreeSet::from([0]));
        assert_eq!(writers_used(&stream, 1), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(writers_used(&stream, 0), BTreeSet::from([0, 1, 2, 3]));
        viewers.truncate(5);
        assert_eq!(writers_used(&stream, 10), BTreeSet::from([0]));
    }
}
