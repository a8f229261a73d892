//! The RTP → CMAF remux (what WHIP ingest runs) on arbitrary frames: the
//! input is cut into records `[kind, len_hi, len_lo, time_step, payload…]`,
//! each an H.264 access unit, a VP9 frame, an AV1 temporal unit or an Opus
//! packet as str0m would hand them over, with a loss now and then. It must
//! never panic, and every output must pass the relay's own fMP4 splitter.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relaycast_media::remux::cmaf::MuxerConfig;
use relaycast_media::remux::rtp::RtpRemuxer;
use relaycast_media::{Splitter, SplitterConfig};

fuzz_target!(|data: &[u8]| {
    let mut m = RtpRemuxer::new(MuxerConfig::default(), true, true);
    let mut split = Splitter::new(SplitterConfig::default());
    let (mut rest, mut time, mut arrival) = (data, 0i64, 0u64);
    while let [kind, hi, lo, step, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        time = time.wrapping_add(i64::from(*step) * 300);
        arrival = arrival.saturating_add(u64::from(*step) * 3333);
        match kind % 5 {
            0 => drop(m.push_h264(time, arrival, payload)),
            1 => drop(m.push_vp9(time, arrival, Bytes::copy_from_slice(payload))),
            2 => drop(m.push_av1(time, arrival, payload)),
            3 => drop(m.push_opus(time / 2, arrival, Bytes::copy_from_slice(payload))),
            _ => m.lost(),
        }
        let _ = m.wants_keyframe(arrival, 2_000_000);
        while let Some(o) = m.poll() {
            split.push(o.bytes());
            while let Some(_item) = split.next_item().expect("remux output splits") {}
        }
    }
    m.finish();
    while let Some(o) = m.poll() {
        split.push(o.bytes());
        while let Some(_item) = split.next_item().expect("remux output splits") {}
    }
    split.finish().expect("remux output ends on a box boundary");
});
