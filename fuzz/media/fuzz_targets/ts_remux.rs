//! The MPEG-TS demux → CMAF remux (what SRT ingest runs) on arbitrary bytes,
//! cut into pieces of a size chosen by the input's last byte: it must never
//! panic, and every output must pass the relay's own fMP4 splitter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaycast_media::remux::cmaf::MuxerConfig;
use relaycast_media::remux::ts::TsRemuxer;
use relaycast_media::{Splitter, SplitterConfig};

fuzz_target!(|data: &[u8]| {
    let step = 1 + usize::from(data.last().copied().unwrap_or(0)) * 61 % 4096;
    let mut m = TsRemuxer::new(MuxerConfig::default());
    let mut split = Splitter::new(SplitterConfig::default());
    for piece in data.chunks(step) {
        m.push(piece);
        let _ = m.check_program();
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
