//! The sans-IO fMP4 splitter on arbitrary bytes, cut into pieces of a size
//! chosen by the input's last byte: it must never panic, and whatever it
//! hands out must be bytes of the input, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaycast_media::{Item, Splitter, SplitterConfig};

fuzz_target!(|data: &[u8]| {
    let step = 1 + usize::from(data.last().copied().unwrap_or(0)) * 131 % 8192;
    // A small box limit so the limit paths are reached too.
    let mut s = Splitter::new(SplitterConfig {
        max_box_size: 1 << 20,
    });
    let mut out = 0usize;
    let mut failed = false;
    'feed: for piece in data.chunks(step) {
        s.push(piece);
        loop {
            match s.next_item() {
                Ok(Some(Item::Init(i))) => out += i.bytes.len(),
                Ok(Some(Item::Fragment(f))) => {
                    assert!(!f.bytes.is_empty());
                    out += f.bytes.len();
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    assert!(out <= data.len(), "handed out {out} bytes of {}", data.len());
    if !failed {
        let _ = s.finish();
    }
});
