//! MPEG-TS (what SRT carries) to CMAF through [`crate::remux::cmaf::Muxer`].
//!
//! `mpeg2ts-reader` does the transport layer: PAT/PMT, continuity counters,
//! PES headers with 33-bit PTS/DTS. On top of it this module reassembles PES
//! payloads, turns H.264/HEVC Annex-B access units into length-prefixed
//! samples with `avcC`/`hvcC` built from the in-band parameter sets, and ADTS
//! into raw AAC frames plus an `AudioSpecificConfig`. Input comes in any
//! split; a partial 188-byte packet is kept for the next call.
//!
//! Latency note: a PES of unbounded length (video) ends only when the next
//! one starts, so an access unit is muxed one PES late; `mpeg2ts-reader`
//! also waits for the next start for bounded (audio) PES.

use crate::remux::cmaf::{
    AAC_RATES, Codec, Muxer, MuxerConfig, Output, Sample, TrackConfig, TrackKind,
};
use crate::remux::nal::ParamSets;
use bytes::Bytes;

/// Timescale of video tracks made from MPEG-TS (the 90 kHz system clock).
pub const VIDEO_TIMESCALE: u32 = 90_000;
const TS_PACKET: usize = 188;
/// Bound on one PES being reassembled (a 4K intra frame fits easily).
const MAX_PES: usize = 16 << 20;

/// What the PMT said an elementary stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Es {
    H264,
    H265,
    Adts,
}

/// A PES being reassembled or complete.
#[derive(Debug, Default)]
struct Pes {
    pts: Option<u64>,
    dts: Option<u64>,
    data: Vec<u8>,
    broken: bool,
}

mod demux {
    //! The `mpeg2ts-reader` plumbing: a context that collects PES payloads.
    use super::{Es, MAX_PES, Pes};
    use mpeg2ts_reader::demultiplex::{
        self, DemuxContext, FilterChangeset, FilterRequest, NullPacketFilter, PatPacketFilter,
        PmtPacketFilter,
    };
    use mpeg2ts_reader::{StreamType, packet, pes, psi};
    use std::collections::HashMap;

    mpeg2ts_reader::packet_filter_switch! {
        Filter<Ctx> {
            Pes: pes::PesPacketFilter<Ctx, Consumer>,
            Pat: PatPacketFilter<Ctx>,
            Pmt: PmtPacketFilter<Ctx>,
            Null: NullPacketFilter<Ctx>,
        }
    }

    pub struct Ctx {
        changeset: FilterChangeset<Filter>,
        /// The first video and the first audio stream of the PMT: (pid, kind).
        pub video: Option<(u16, Es)>,
        pub audio: Option<(u16, Es)>,
        /// Whether the PMT listed any video / audio stream at all.
        pub has_video: bool,
        pub has_audio: bool,
        pub partial: HashMap<u16, Pes>,
        pub done: Vec<(u16, Pes)>,
    }

    impl Ctx {
        pub fn new() -> Self {
            Ctx {
                changeset: FilterChangeset::default(),
                video: None,
                audio: None,
                has_video: false,
                has_audio: false,
                partial: HashMap::new(),
                done: Vec::new(),
            }
        }
    }

    impl DemuxContext for Ctx {
        type F = Filter;
        fn filter_changeset(&mut self) -> &mut FilterChangeset<Filter> {
            &mut self.changeset
        }
        fn construct(&mut self, req: FilterRequest<'_, '_>) -> Filter {
            match req {
                FilterRequest::ByPid(psi::pat::PAT_PID) => Filter::Pat(PatPacketFilter::default()),
                FilterRequest::ByPid(_) | FilterRequest::Nit { .. } => {
                    Filter::Null(NullPacketFilter::default())
                }
                FilterRequest::Pmt {
                    pid,
                    program_number,
                } => Filter::Pmt(PmtPacketFilter::new(pid, program_number)),
                FilterRequest::ByStream {
                    stream_type,
                    stream_info,
                    ..
                } => {
                    let pid = u16::from(stream_info.elementary_pid());
                    let kind = match stream_type {
                        StreamType::H264 => Some(Es::H264),
                        StreamType::H265 => Some(Es::H265),
                        StreamType::ADTS => Some(Es::Adts),
                        _ => None,
                    };
                    let slot = match kind {
                        Some(Es::Adts) => {
                            self.has_audio = true;
                            &mut self.audio
                        }
                        Some(_) => {
                            self.has_video = true;
                            &mut self.video
                        }
                        None => return Filter::Null(NullPacketFilter::default()),
                    };
                    match (slot.as_ref(), kind) {
                        (None, Some(k)) => *slot = Some((pid, k)),
                        (Some((p, _)), _) if *p == pid => {}
                        _ => return Filter::Null(NullPacketFilter::default()),
                    }
                    Filter::Pes(pes::PesPacketFilter::new(Consumer { pid }))
                }
            }
        }
    }

    pub struct Consumer {
        pid: u16,
    }

    impl pes::ElementaryStreamConsumer<Ctx> for Consumer {
        fn start_stream(&mut self, _ctx: &mut Ctx) {}
        fn begin_packet(&mut self, ctx: &mut Ctx, header: pes::PesHeader<'_>) {
            let mut p = Pes::default();
            match header.contents() {
                pes::PesContents::Parsed(Some(parsed)) => {
                    match parsed.pts_dts() {
                        Ok(pes::PtsDts::PtsOnly(Ok(pts))) => p.pts = Some(pts.value()),
                        Ok(pes::PtsDts::Both {
                            pts: Ok(pts),
                            dts: Ok(dts),
                        }) => {
                            p.pts = Some(pts.value());
                            p.dts = Some(dts.value());
                        }
                        _ => {}
                    }
                    p.data.extend_from_slice(parsed.payload());
                }
                pes::PesContents::Parsed(None) => p.broken = true,
                pes::PesContents::Payload(payload) => p.data.extend_from_slice(payload),
            }
            ctx.partial.insert(self.pid, p);
        }
        fn continue_packet(&mut self, ctx: &mut Ctx, data: &[u8]) {
            if let Some(p) = ctx.partial.get_mut(&self.pid) {
                if p.data.len() + data.len() > MAX_PES {
                    p.broken = true;
                } else {
                    p.data.extend_from_slice(data);
                }
            }
        }
        fn end_packet(&mut self, ctx: &mut Ctx) {
            if let Some(p) = ctx.partial.remove(&self.pid) {
                ctx.done.push((self.pid, p));
            }
        }
        fn continuity_error(&mut self, ctx: &mut Ctx) {
            if let Some(p) = ctx.partial.get_mut(&self.pid) {
                p.broken = true;
            }
        }
    }

    pub type Demux = demultiplex::Demultiplex<Ctx>;
    pub fn new_demux(ctx: &mut Ctx) -> Demux {
        demultiplex::Demultiplex::new(ctx)
    }
    #[allow(dead_code)]
    fn _pid(p: packet::Pid) -> u16 {
        u16::from(p)
    }
}

/// Extends 33-bit 90 kHz timestamps: each step is read as the signed
/// difference modulo 2^33, so the wrap every 26.5 hours continues.
#[derive(Clone, Copy, Debug, Default)]
struct Unwrap33 {
    last: Option<(u64, i64)>,
}

impl Unwrap33 {
    fn next(&mut self, raw: u64) -> i64 {
        const M: u64 = 1 << 33;
        let raw = raw & (M - 1);
        let ext = match self.last {
            None => raw as i64,
            Some((last, ext)) => {
                let d = raw.wrapping_sub(last) & (M - 1);
                let d = if d >= M / 2 {
                    d as i64 - M as i64
                } else {
                    d as i64
                };
                ext + d
            }
        };
        self.last = Some((raw, ext));
        ext
    }
}

/// MPEG-TS bytes in, CMAF out.
pub struct TsRemuxer {
    ctx: demux::Ctx,
    demux: demux::Demux,
    /// A partial TS packet from the previous call.
    carry: Vec<u8>,
    muxer: Muxer,
    video_ts: Unwrap33,
    audio_ts: Unwrap33,
    params: ParamSets,
    /// The current ADTS configuration: (AudioSpecificConfig, sampling rate).
    aac: Option<([u8; 2], u32)>,
    /// Bytes skipped while looking for a 0x47 sync byte.
    skipped: u64,
    /// Bytes pushed so far.
    bytes_in: u64,
}

/// How much input may pass before a TS without a usable program (no PAT, or
/// a PMT without H.264/HEVC/AAC) is refused: ffmpeg repeats PAT/PMT every
/// 100 ms, so 1 MiB is seconds of any real stream.
pub const NO_PROGRAM_LIMIT: u64 = 1 << 20;

impl std::fmt::Debug for TsRemuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsRemuxer")
            .field("muxer", &self.muxer)
            .finish_non_exhaustive()
    }
}

impl TsRemuxer {
    /// A remuxer with the given fragmenting policy.
    pub fn new(config: MuxerConfig) -> Self {
        let mut ctx = demux::Ctx::new();
        let demux = demux::new_demux(&mut ctx);
        TsRemuxer {
            ctx,
            demux,
            carry: Vec::new(),
            muxer: Muxer::new(config),
            video_ts: Unwrap33::default(),
            audio_ts: Unwrap33::default(),
            params: ParamSets::default(),
            aac: None,
            skipped: 0,
            bytes_in: 0,
        }
    }

    /// Bytes dropped so far while resynchronising on the 0x47 sync byte.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// True once a PMT listed a stream this remuxer can use.
    pub fn has_program(&self) -> bool {
        self.ctx.video.is_some() || self.ctx.audio.is_some()
    }

    /// An error once [`NO_PROGRAM_LIMIT`] bytes went in without a PAT/PMT
    /// that lists an H.264, HEVC or AAC stream.
    pub fn check_program(&self) -> Result<(), crate::MediaError> {
        if self.has_program() || self.bytes_in <= NO_PROGRAM_LIMIT {
            return Ok(());
        }
        Err(crate::MediaError::Remux(format!(
            "no MPEG-TS program with H.264, HEVC or AAC in the first {} bytes (no PAT/PMT, or only other codecs); {} bytes skipped looking for 0x47 sync",
            self.bytes_in, self.skipped
        )))
    }

    /// Feeds bytes (any split). Outputs are queued for [`TsRemuxer::poll`].
    pub fn push(&mut self, data: &[u8]) {
        self.bytes_in += data.len() as u64;
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        // Feed runs of whole packets that start with the 0x47 sync byte; on a
        // lost sync, skip to the next 0x47. A partial packet waits for more input.
        let mut pos = 0;
        loop {
            let mut run = pos;
            while run + TS_PACKET <= buf.len() && buf[run] == 0x47 {
                run += TS_PACKET;
            }
            if run > pos {
                self.demux.push(&mut self.ctx, &buf[pos..run]);
                pos = run;
            }
            if pos + TS_PACKET > buf.len() {
                break;
            }
            pos += 1;
            self.skipped += 1;
            while pos < buf.len() && buf[pos] != 0x47 {
                pos += 1;
                self.skipped += 1;
            }
        }
        self.carry = buf.get(pos..).unwrap_or_default().to_vec();
        if self.carry.len() > TS_PACKET * 2 {
            self.carry.clear();
        }
        self.drain_pes();
    }

    /// Ends the stream: the PES still being reassembled are muxed, then the held-back samples.
    pub fn finish(&mut self) {
        let mut rest: Vec<(u16, Pes)> = self.ctx.partial.drain().collect();
        rest.sort_by_key(|(pid, p)| (p.dts.or(p.pts), *pid));
        self.ctx.done.extend(rest);
        self.drain_pes();
        self.muxer.finish();
    }

    /// The next init segment or fragment.
    pub fn poll(&mut self) -> Option<Output> {
        self.muxer.poll()
    }

    fn drain_pes(&mut self) {
        self.muxer.expect(self.ctx.has_video, self.ctx.has_audio);
        let done = std::mem::take(&mut self.ctx.done);
        for (pid, pes) in done {
            if pes.broken {
                continue;
            }
            if let Some((vpid, es)) = self.ctx.video
                && vpid == pid
            {
                self.video_pes(es, pes);
                continue;
            }
            if self.ctx.audio.is_some_and(|(apid, _)| apid == pid) {
                self.audio_pes(pes);
            }
        }
    }

    fn video_pes(&mut self, es: Es, pes: Pes) {
        let Some(pts) = pes.pts else {
            return;
        };
        let Some((sample, keyframe)) =
            self.params
                .access_unit(es == Es::H265, &pes.data, &mut self.muxer, VIDEO_TIMESCALE)
        else {
            return;
        };
        let dts_raw = pes.dts.unwrap_or(pts);
        let dts = self.video_ts.next(dts_raw);
        let cts = (pts.wrapping_sub(dts_raw) & ((1 << 33) - 1)) as i64;
        let cts = if cts >= 1 << 32 { cts - (1 << 33) } else { cts };
        self.muxer.push(
            TrackKind::Video,
            Sample {
                dts,
                cts_offset: cts.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
                keyframe,
                data: sample,
            },
        );
    }

    fn audio_pes(&mut self, pes: Pes) {
        let Some(pts) = pes.pts else {
            return;
        };
        let pts = self.audio_ts.next(pts);
        let data = Bytes::from(pes.data);
        let mut pos = 0;
        let mut index = 0i64;
        while let Some(h) = data.get(pos..pos + 7) {
            if h[0] != 0xff || h[1] & 0xf6 != 0xf0 {
                break; // not an ADTS sync word (layer must be 0)
            }
            let protection_absent = h[1] & 1 == 1;
            let profile = h[2] >> 6;
            let sf = (h[2] >> 2) & 0x0f;
            let channels = ((h[2] & 1) << 2) | (h[3] >> 6);
            let len =
                (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
            let header = if protection_absent { 7 } else { 9 };
            if len < header || pos + len > data.len() {
                break;
            }
            let Some(&rate) = AAC_RATES.get(usize::from(sf)) else {
                break;
            };
            let asc = [
                ((profile + 1) << 3) | (sf >> 1),
                ((sf & 1) << 7) | (channels << 3),
            ];
            if self.aac != Some((asc, rate)) {
                let mut cfg = TrackConfig::new(Codec::Aac(Bytes::copy_from_slice(&asc)), rate);
                cfg.frame_duration = 1024;
                if self.muxer.set_track(cfg).is_err() {
                    break;
                }
                self.aac = Some((asc, rate));
            }
            let dts = (i128::from(pts) * i128::from(rate) / 90_000) as i64 + index * 1024;
            self.muxer.push(
                TrackKind::Audio,
                Sample::audio(dts, data.slice(pos + header..pos + len)),
            );
            pos += len;
            index += 1;
        }
    }
}

impl Default for TsRemuxer {
    fn default() -> Self {
        TsRemuxer::new(MuxerConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap33_wraps() {
        let mut u = Unwrap33::default();
        let top = (1u64 << 33) - 100;
        assert_eq!(u.next(top), top as i64);
        assert_eq!(u.next(50), (1i64 << 33) + 50);
        assert_eq!(u.next(40), (1i64 << 33) + 40);
    }

    #[test]
    fn garbage_is_skipped() {
        let mut r = TsRemuxer::default();
        r.push(&[1, 2, 3, 0x47, 0, 0]);
        r.push(&[0u8; 500]);
        r.finish();
        assert!(r.poll().is_none());
        assert!(!r.has_program());
    }

    #[test]
    fn ts_without_pat_is_refused_after_the_limit() {
        let mut r = TsRemuxer::default();
        // Null packets (PID 0x1fff): valid TS, but never a PAT.
        let mut null = [0xffu8; TS_PACKET];
        null[..4].copy_from_slice(&[0x47, 0x1f, 0xff, 0x10]);
        let mut fed = 0u64;
        while fed <= NO_PROGRAM_LIMIT {
            assert!(r.check_program().is_ok(), "refused after only {fed} bytes");
            r.push(&null);
            fed += TS_PACKET as u64;
        }
        let e = r.check_program().expect_err("no PAT: refused");
        assert!(e.to_string().contains("no MPEG-TS program"), "{e}");
    }
}
