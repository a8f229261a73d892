//! The FLV → CMAF remux (what RTMP ingest runs) on arbitrary bytes read as
//! an FLV file (header, then tags): it must never panic, and every init
//! segment and fragment it writes must pass the relay's own fMP4 splitter
//! (what enters the fan-out is what fMP4 ingest produces).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use relaycast_media::remux::cmaf::{MuxerConfig, Output};
use relaycast_media::remux::flv::{FlvRemuxer, file_tags};
use relaycast_media::{Splitter, SplitterConfig};

fuzz_target!(|data: &[u8]| {
    let file = Bytes::copy_from_slice(data);
    let (audio, video, tags) = file_tags(&file);
    let mut m = FlvRemuxer::new(MuxerConfig::default());
    m.muxer().expect(video, audio);
    let mut split = Splitter::new(SplitterConfig::default());
    let mut check = |o: Output| {
        split.push(o.bytes());
        while let Some(_item) = split.next_item().expect("remux output splits") {}
    };
    for (kind, ms, body) in tags {
        if m.push_tag(kind, ms, body).is_err() {
            break; // the relay ends the publish at the first refused tag
        }
        while let Some(o) = m.poll() {
            check(o);
        }
    }
    m.finish();
    while let Some(o) = m.poll() {
        check(o);
    }
    split.finish().expect("remux output ends on a box boundary");
});
