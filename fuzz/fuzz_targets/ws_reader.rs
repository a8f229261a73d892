//! The server's WebSocket frame reader (`relaycast::proto::ws::Reader`, used
//! by the viewer egress and the publisher ingest) on arbitrary client bytes,
//! fed in pieces whose sizes come from the input. Nothing may panic; every
//! step consumes only what it was given and points only inside it; nothing
//! is read after a close or a failure; and the verdict (the data, the pings,
//! the close or failure code) is the same whether the bytes come whole, in
//! the input's pieces, or one at a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaycast::proto::ws::{Event, Reader};

#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    data: Vec<u8>,
    pings: Vec<Vec<u8>>,
    end: Option<(bool, u16)>,
}

fn run(bytes: &[u8], piece: impl Fn(usize) -> usize, max: u64) -> Verdict {
    let mut r = Reader::new(max);
    let mut buf: Vec<u8> = Vec::new();
    let mut v = Verdict {
        data: Vec::new(),
        pings: Vec::new(),
        end: None,
    };
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = piece(i).clamp(1, bytes.len() - at);
        i += 1;
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        loop {
            let len = buf.len();
            let s = r.next(&mut buf);
            assert!(s.used <= len, "consumes only what it has");
            if v.end.is_some() {
                assert!(s.used == 0 && s.event.is_none(), "nothing after the end");
            }
            match &s.event {
                Some(Event::Data { range, .. }) => {
                    assert!(range.start <= range.end && range.end <= s.used);
                    v.data.extend_from_slice(&buf[range.clone()]);
                }
                Some(Event::Ping(range)) => {
                    assert!(range.end <= s.used && range.len() <= 125);
                    v.pings.push(buf[range.clone()].to_vec());
                }
                Some(Event::Close(code)) => v.end = Some((true, *code)),
                Some(Event::Fail { code, .. }) => {
                    assert!(matches!(code, 1002 | 1007 | 1009));
                    v.end = Some((false, *code));
                }
                Some(Event::Pong) | None => {}
            }
            buf.drain(..s.used);
            if s.used == 0 && s.event.is_none() {
                break;
            }
        }
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let max = 1 + u64::from(seed) * 64;
    let whole = run(bytes, |_| usize::MAX, max);
    let ones = run(bytes, |_| 1, max);
    let pieces = run(bytes, |i| 1 + (usize::from(seed) * 31 + i * 17) % 97, max);
    for (other, how) in [(ones, "one byte at a time"), (pieces, "in pieces")] {
        assert_eq!((&whole.end, &whole.pings), (&other.end, &other.pings), "{how}");
        // Bad UTF-8 is found in the piece that holds it: the data handed out
        // before it depends on the pieces.
        if whole.end != Some((false, 1007)) {
            assert_eq!(whole.data, other.data, "{how}");
        }
    }
});
