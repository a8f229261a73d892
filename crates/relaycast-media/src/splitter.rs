//! The sans-IO splitter: fMP4 bytes in, in any pieces; [`Item`]s out.
//!
//! Check, parse, advance (as mini-redis's `frame.rs`): look at the next box
//! header; if the box is not all there, remember how many bytes are needed
//! and say so in O(1) on every later call until they are; otherwise accept
//! it into the item being assembled. When an item is complete its bytes are
//! `split_to(len).freeze()`d off the buffer: the payload handed out is a
//! zero-copy slice of the buffer the input was gathered in.
//!
//! Top-level grammar (anything else is an error, see [`MediaError`]):
//!
//! ```text
//! stream   = { dropped } init { init | fragment | dropped }
//! init     = [ftyp { free | skip | wide | uuid | udta | pdin | meta }] moov
//! fragment = { styp | prft | emsg | sidx | free | skip | uuid } moof mdat
//! dropped  = free | skip | wide | uuid | mfra | meta | pdin | udta | any other
//!            printable type at an item boundary
//! ```

use super::boxes::{FourCC, Header, fourcc_str, is_printable, peek_header};
use super::init::{TrackTable, parse_init};
use super::moof::{MoofInfo, parse_moof};
use super::{Fragment, Init, Item, MediaError};
use bytes::{Buf, Bytes, BytesMut};

/// Limits of a [`Splitter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitterConfig {
    /// The largest box accepted, in bytes (an `mdat` is one box). Also the
    /// most the boxes of one item before its `mdat` (the `moov`, or the
    /// `styp`…`moof` of a fragment) may add up to.
    pub max_box_size: u64,
}

impl Default for SplitterConfig {
    /// 16 MiB: a one-second fragment of a 100 Mbit/s stream fits.
    fn default() -> Self {
        SplitterConfig {
            max_box_size: 16 << 20,
        }
    }
}

/// How much to reserve at once for a box still arriving: a declared size is
/// only a promise, so a header alone never makes us allocate more than this.
const RESERVE_CAP: usize = 1 << 20;

/// Box types allowed between `ftyp` and `moov`; they stay in the init bytes.
const INIT_EXTRA: [&FourCC; 7] = [
    b"free", b"skip", b"wide", b"uuid", b"udta", b"pdin", b"meta",
];
/// Box types that may open a fragment before its `moof`.
const PREFIX: [&FourCC; 4] = [b"styp", b"prft", b"emsg", b"sidx"];
/// Box types allowed between a fragment's prefix boxes and its `moof`.
const PREFIX_EXTRA: [&FourCC; 3] = [b"free", b"skip", b"uuid"];
/// Box types a stream may start with.
const FIRST: [&FourCC; 12] = [
    b"ftyp", b"moov", b"styp", b"free", b"skip", b"wide", b"uuid", b"pdin", b"sidx", b"prft",
    b"emsg", b"moof",
];

/// What the boxes accepted so far (the first `scan` bytes held) are part of.
#[derive(Debug)]
enum Unit {
    /// Nothing: the next box starts an item or is dropped.
    Idle,
    /// An init segment: `ftyp` (and extras) seen, `moov` expected.
    Init,
    /// A fragment: prefix boxes seen, `moof` expected.
    Prefix,
    /// A fragment whose `moof` (at stream offset `at`) is parsed; `mdat` expected.
    Moof {
        /// Stream offset of the `moof`.
        at: u64,
        /// What it says.
        info: MoofInfo,
    },
}

/// What to do with the box whose header was just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Pass over it.
    Drop,
    /// Part of the item being assembled; the item goes on.
    Accept(Unit2),
    /// The `moov` that completes an init segment.
    Moov,
    /// The `moof` of a fragment.
    Moof,
    /// The `mdat` that completes a fragment.
    Mdat,
}

/// The state an accepted box leads to (a `Copy` mirror of the simple [`Unit`]s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit2 {
    Init,
    Prefix,
}

/// Splits a fragmented MP4 byte stream into its init segment(s) and fragments.
///
/// Feed it with [`push`](Self::push) / [`push_bytes`](Self::push_bytes), then
/// call [`next_item`](Self::next_item) until it returns `Ok(None)`. After an
/// error the splitter is spent: every later call returns the same error.
#[derive(Debug)]
pub struct Splitter {
    config: SplitterConfig,
    /// Held bytes, when they were copied in (see `frozen`).
    buf: BytesMut,
    /// Held bytes, when they are one chunk given to `push_bytes` while
    /// nothing else was held. Invariant: `buf` and `frozen` are never both non-empty.
    frozen: Bytes,
    /// Stream offset of the first held byte.
    offset: u64,
    /// Held bytes already accepted into the item being assembled.
    scan: usize,
    /// Nothing can happen before this many bytes are held (`>= scan`).
    need: usize,
    /// Bytes of a dropped box still to arrive; nothing is held while non-zero.
    discard: u64,
    unit: Unit,
    /// True once the first box header has been checked.
    started: bool,
    /// The current init segment and its track table.
    init: Option<(Init, TrackTable)>,
    /// Per track (table order): where its next fragment should start, for
    /// `traf`s without a `tfdt`.
    next_decode: Vec<u64>,
    /// Fragments since the current init segment.
    index: u64,
    /// The error that ended the stream, if any.
    failed: Option<MediaError>,
}

impl Splitter {
    /// A splitter with the given limits, expecting the start of a stream.
    pub fn new(config: SplitterConfig) -> Self {
        Splitter {
            config,
            buf: BytesMut::new(),
            frozen: Bytes::new(),
            offset: 0,
            scan: 0,
            need: 0,
            discard: 0,
            unit: Unit::Idle,
            started: false,
            init: None,
            next_decode: Vec::new(),
            index: 0,
            failed: None,
        }
    }

    /// Appends the next bytes of the stream (copied into the buffer).
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let data = self.skip_discarded(data);
        if data.is_empty() {
            return;
        }
        self.thaw(data.len());
        self.buf.extend_from_slice(data);
    }

    /// Appends the next bytes of the stream; when nothing is held, keeps the
    /// chunk as it is, so items inside it are handed out without any copy.
    pub fn push_bytes(&mut self, mut data: Bytes) {
        if self.failed.is_some() {
            return;
        }
        let skip = self.skip_discarded(&data).len();
        data.advance(data.len() - skip);
        if data.is_empty() {
            return;
        }
        if self.buf.is_empty() && self.frozen.is_empty() {
            self.frozen = data;
        } else {
            self.push(&data);
        }
    }

    /// The next complete item: `Ok(None)` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<Item>, MediaError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step() {
            Ok(item) => Ok(item),
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = BytesMut::new();
                self.frozen = Bytes::new();
                Err(e)
            }
        }
    }

    /// The input has ended: `Err(Truncated)` if it stopped inside a box or
    /// inside an item (a `moof` without its `mdat`). Call it after
    /// [`next_item`](Self::next_item) returned `Ok(None)`.
    pub fn finish(&mut self) -> Result<(), MediaError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let held = self.held() as u64;
        if held > 0 || self.discard > 0 {
            let e = MediaError::Truncated {
                offset: self.offset,
                pending: held,
            };
            self.failed = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// The current init segment, once one was complete.
    pub fn init(&self) -> Option<&Init> {
        self.init.as_ref().map(|(init, _)| init)
    }

    /// Bytes held waiting for the rest of an item.
    pub fn buffered(&self) -> usize {
        self.held()
    }

    /// Bytes consumed so far (handed out or dropped), i.e. the stream offset
    /// of the first byte still held.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// The current track table (crate-internal: the demo uses it).
    pub(crate) fn track_table(&self) -> Option<&TrackTable> {
        self.init.as_ref().map(|(_, table)| table)
    }

    fn held(&self) -> usize {
        self.buf.len() + self.frozen.len()
    }

    fn view(&self) -> &[u8] {
        if self.frozen.is_empty() {
            &self.buf
        } else {
            &self.frozen
        }
    }

    /// Drops the part of `data` that belongs to a box being passed over.
    fn skip_discarded<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        if self.discard == 0 {
            return data;
        }
        let n = usize::try_from(self.discard).map_or(data.len(), |d| d.min(data.len()));
        self.discard -= n as u64;
        self.offset += n as u64;
        data.get(n..).unwrap_or_default()
    }

    /// Moves a held frozen chunk into `buf` before appending `more` bytes.
    fn thaw(&mut self, more: usize) {
        if !self.frozen.is_empty() {
            let wanted = self.need.max(self.frozen.len() + more);
            self.buf
                .reserve(wanted.min(self.frozen.len() + more + RESERVE_CAP));
            self.buf.extend_from_slice(&self.frozen);
            self.frozen = Bytes::new();
        }
    }

    /// Hands out the first `n` held bytes and starts the next item.
    fn take(&mut self, n: usize) -> Bytes {
        let bytes = if self.frozen.is_empty() {
            self.buf.split_to(n).freeze()
        } else {
            self.frozen.split_to(n)
        };
        self.offset += n as u64;
        self.scan = 0;
        self.need = 0;
        self.unit = Unit::Idle;
        bytes
    }

    /// Passes over the first `n` held bytes.
    fn drop_front(&mut self, n: usize) {
        if self.frozen.is_empty() {
            self.buf.advance(n);
        } else {
            self.frozen.advance(n);
        }
        self.offset += n as u64;
        self.need = 0;
    }

    fn step(&mut self) -> Result<Option<Item>, MediaError> {
        loop {
            if self.held() < self.need {
                return Ok(None);
            }
            let at = self.scan;
            let offset = self.offset + at as u64;
            let rest = self.view().get(at..).unwrap_or_default();
            let header = match peek_header(rest) {
                Ok(h) => h,
                Err(n) => {
                    self.need = at + n;
                    return Ok(None);
                }
            };
            let available = rest.len();
            let size = self.check_header(&header, offset)?;
            let role = self.classify(&header.kind, offset)?;

            if role == Role::Drop {
                // Only at an item boundary (at == 0): nothing else is held before it.
                if available >= size {
                    self.drop_front(size);
                } else {
                    self.drop_front(available);
                    self.discard = (size - available) as u64;
                }
                continue;
            }
            if role != Role::Mdat && at as u64 + size as u64 > self.config.max_box_size {
                return Err(MediaError::Invalid(format!(
                    "{} bytes of boxes before the 'mdat' of the item at byte {}, over the \
                     {}-byte limit",
                    at + size,
                    self.offset,
                    self.config.max_box_size
                )));
            }
            if available < size {
                self.need = at + size;
                if self.frozen.is_empty() {
                    let want = self.need - self.buf.len();
                    self.buf.reserve(want.min(RESERVE_CAP));
                }
                return Ok(None);
            }
            self.scan = at + size;
            self.need = self.scan;
            match role {
                Role::Drop => {}
                Role::Accept(next) => {
                    self.unit = match next {
                        Unit2::Init => Unit::Init,
                        Unit2::Prefix => Unit::Prefix,
                    };
                }
                Role::Moov => return self.finish_init(at).map(Some),
                Role::Moof => {
                    let table = self.init.as_ref().map(|(_, t)| t);
                    let moof = self.view().get(at..at + size).unwrap_or_default();
                    let info = match table {
                        Some(table) => parse_moof(moof, table),
                        None => Err(MediaError::MoofBeforeMoov { offset }),
                    }
                    .map_err(|e| match e {
                        MediaError::Invalid(m) => {
                            MediaError::Invalid(format!("'moof' at byte {offset}: {m}"))
                        }
                        other => other,
                    })?;
                    self.unit = Unit::Moof { at: offset, info };
                }
                Role::Mdat => return Ok(Some(self.finish_fragment())),
            }
        }
    }

    /// Validates a header at stream offset `offset`; returns the box size.
    fn check_header(&mut self, h: &Header, offset: u64) -> Result<usize, MediaError> {
        let kind = fourcc_str(&h.kind);
        if !self.started {
            if !FIRST.contains(&&h.kind) {
                let head: Vec<String> = self
                    .view()
                    .iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect();
                return Err(MediaError::Invalid(format!(
                    "the stream starts with bytes {} (box type '{kind}'), not an MP4 box \
                     such as 'ftyp' or 'moov'",
                    head.join(" ")
                )));
            }
            self.started = true;
        }
        if !is_printable(&h.kind) {
            return Err(MediaError::Invalid(format!(
                "box type '{kind}' at byte {offset} is not printable: the stream is not \
                 MP4, or lost its place"
            )));
        }
        if h.size == 0 {
            return Err(MediaError::Invalid(format!(
                "box '{kind}' at byte {offset} has size 0 (\"to the end of the file\"), \
                 which a live stream cannot use"
            )));
        }
        if h.size < h.header_len {
            return Err(MediaError::BoxTooSmall {
                kind,
                offset,
                size: h.size,
                header: h.header_len,
            });
        }
        let limit = self.config.max_box_size;
        match usize::try_from(h.size) {
            Ok(size) if h.size <= limit => Ok(size),
            _ => Err(MediaError::BoxTooLarge {
                kind,
                offset,
                size: h.size,
                limit,
            }),
        }
    }

    /// What the box `kind` at `offset` is, given what came before.
    fn classify(&self, kind: &FourCC, offset: u64) -> Result<Role, MediaError> {
        let name = || fourcc_str(kind);
        let moof = || {
            if self.init.is_none() {
                Err(MediaError::MoofBeforeMoov { offset })
            } else {
                Ok(Role::Moof)
            }
        };
        match &self.unit {
            Unit::Idle => match kind {
                b"ftyp" => Ok(Role::Accept(Unit2::Init)),
                b"moov" => Ok(Role::Moov),
                b"moof" => moof(),
                b"mdat" => Err(MediaError::Invalid(format!(
                    "'mdat' at byte {offset} without a 'moof' before it: is this a \
                     progressive MP4? Publish fragmented MP4 (ffmpeg: -movflags \
                     frag_keyframe+empty_moov+default_base_moof)"
                ))),
                k if PREFIX.contains(&k) => Ok(Role::Accept(Unit2::Prefix)),
                _ => Ok(Role::Drop),
            },
            Unit::Init => match kind {
                b"moov" => Ok(Role::Moov),
                k if INIT_EXTRA.contains(&k) => Ok(Role::Accept(Unit2::Init)),
                b"moof" if self.init.is_none() => Err(MediaError::MoofBeforeMoov { offset }),
                _ => Err(MediaError::Invalid(format!(
                    "'{}' at byte {offset} after an 'ftyp': expected its 'moov'",
                    name()
                ))),
            },
            Unit::Prefix => match kind {
                b"moof" => moof(),
                k if PREFIX.contains(&k) || PREFIX_EXTRA.contains(&k) => {
                    Ok(Role::Accept(Unit2::Prefix))
                }
                _ => Err(MediaError::Invalid(format!(
                    "'{}' at byte {offset} after a fragment's 'styp'/'sidx'/'prft'/'emsg': \
                     expected its 'moof'",
                    name()
                ))),
            },
            Unit::Moof { at, .. } => match kind {
                b"mdat" => Ok(Role::Mdat),
                _ => Err(MediaError::MoofWithoutMdat {
                    offset: *at,
                    next: name(),
                }),
            },
        }
    }

    /// The `moov` at held position `at` is complete: the init segment is
    /// everything accepted so far.
    fn finish_init(&mut self, at: usize) -> Result<Item, MediaError> {
        let offset = self.offset + at as u64;
        let bytes = self.take(self.scan);
        let moov = bytes.get(at..).unwrap_or_default();
        let (init, table) = parse_init(bytes.clone(), moov).map_err(|e| match e {
            MediaError::Invalid(m) => MediaError::Invalid(format!("'moov' at byte {offset}: {m}")),
            other => other,
        })?;
        self.next_decode = vec![0; table.tracks.len()];
        self.index = 0;
        self.init = Some((init.clone(), table));
        Ok(Item::Init(init))
    }

    /// The `mdat` is complete: hand out prefix + `moof` + `mdat` as one fragment.
    fn finish_fragment(&mut self) -> Item {
        let info = match std::mem::replace(&mut self.unit, Unit::Idle) {
            Unit::Moof { info, .. } => Some(info),
            _ => None,
        };
        let bytes = self.take(self.scan);
        let index = self.index;
        self.index += 1;
        let (keyframe, decode_time, duration, timescale, mfhd_seq) =
            match (info, self.init.as_ref()) {
                (Some(info), Some((_, table))) => {
                    // Carry each track's decode time forward for trafs without a tfdt.
                    let mut reference = None;
                    let ref_index = info.reference(table).map(|t| t.track_index);
                    for traf in &info.trafs {
                        let next = self.next_decode.get(traf.track_index).copied().unwrap_or(0);
                        let start = traf.decode_time.unwrap_or(next);
                        if let Some(slot) = self.next_decode.get_mut(traf.track_index) {
                            *slot = start.saturating_add(traf.duration);
                        }
                        if reference.is_none() && Some(traf.track_index) == ref_index {
                            let ts = table
                                .tracks
                                .get(traf.track_index)
                                .map_or(0, |t| t.timescale);
                            reference = Some((start, traf.duration, ts));
                        }
                    }
                    let (start, duration, ts) = reference.unwrap_or((0, 0, 0));
                    (info.keyframe(table), start, duration, ts, info.seq)
                }
                _ => (false, 0, 0, 0, 0),
            };
        Item::Fragment(Fragment {
            index,
            keyframe,
            decode_time,
            duration,
            timescale,
            mfhd_seq,
            bytes,
        })
    }
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new(SplitterConfig::default())
    }
}
