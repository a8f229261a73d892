//! Unit tests of the fan-out core's promises: the publisher is never blocked,
//! slow viewers skip to a keyframe and are disconnected when they keep
//! lagging, memory stays bounded, publishers come back within the grace period.

use super::Transport;
use super::*;
use crate::Error;
use crate::media::{Fragment, Init};
use bytes::Bytes;
use std::time::Duration;

fn init(tag: &str) -> Init {
    Init {
        bytes: Bytes::from(format!("init-{tag}")),
        codecs: "avc1.64001f".into(),
        mime: r#"video/mp4; codecs="avc1.64001f""#.into(),
        tracks: Vec::new(),
    }
}

fn frag(n: u64, keyframe: bool, size: usize) -> Fragment {
    Fragment {
        index: n,
        keyframe,
        decode_time: n * 100,
        duration: 100,
        timescale: 1000,
        mfhd_seq: n as u32 + 1,
        bytes: Bytes::from(vec![n as u8; size]),
    }
}

fn start() -> ViewerStart {
    ViewerStart {
        after: None,
        transport: Transport::WebSocket,
    }
}

fn config(max_fragments: usize) -> FanoutConfig {
    FanoutConfig {
        ring: RingConfig {
            max_fragments,
            max_bytes: 1 << 30,
            ..RingConfig::default()
        },
        lag: LagPolicy {
            max_skips: 2,
            window: Duration::from_secs(60),
        },
        grace: Duration::from_millis(200),
        takeover: false,
        stale_publisher: Duration::from_secs(1),
    }
}

/// Drain every ready event.
fn drain(v: &mut Viewer) -> Vec<Event> {
    std::iter::from_fn(|| v.try_next()).collect()
}

/// The viewer's `End`, skipping what comes before it (within 2 s: the
/// tests' grace period is 200 ms).
async fn end_within_grace(v: &mut Viewer) -> EndReason {
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Event::End(r) = v.next().await {
                break r;
            }
        }
    })
    .await
    .expect("end within the grace period")
}

fn seqs(evs: &[Event]) -> Vec<u64> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Fragment(c) => Some(c.seq),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_viewer_that_never_reads_does_not_block_the_publisher_or_a_fast_viewer() {
    let reg = Registry::new(config(30));
    let p = reg.publish("s").expect("publish");
    p.push_init(init("a")).expect("init");
    let stream = p.stream().clone();
    let _stalled = stream.subscribe(start());
    let mut fast = stream.subscribe(start());
    let mut got = Vec::new();
    // 10,000 fragments, GOPs of 10: the stalled viewer never reads.
    for n in 0..10_000u64 {
        p.push_fragment(frag(n, n % 10 == 0, 100)).expect("push");
        got.extend(seqs(&drain(&mut fast)));
    }
    assert_eq!(
        got,
        (0..10_000).collect::<Vec<_>>(),
        "the fast viewer got every fragment"
    );
    let info = stream.info();
    assert!(
        info.ring_fragments <= 30,
        "ring bounded: {}",
        info.ring_fragments
    );
}

#[tokio::test]
async fn a_lagging_viewer_skips_to_the_newest_keyframe_and_is_counted() {
    let reg = Registry::new(config(20));
    let p = reg.publish("s").expect("publish");
    p.push_init(init("a")).expect("init");
    let mut slow = p.stream().subscribe(start());
    for n in 0..5 {
        p.push_fragment(frag(n, n % 10 == 0, 10)).expect("push");
    }
    let first = drain(&mut slow);
    assert!(matches!(first[0], Event::Init(_)));
    assert_eq!(seqs(&first), vec![0, 1, 2, 3, 4]);
    // The viewer stops reading while 100 fragments go by.
    for n in 5..105 {
        p.push_fragment(frag(n, n % 10 == 0, 10)).expect("push");
    }
    let evs = drain(&mut slow);
    match &evs[0] {
        Event::Skip { from, to, total } => {
            assert_eq!(*from, 5);
            assert_eq!(*to, 100, "the newest keyframe");
            assert_eq!(*total, 1);
        }
        e => panic!("expected a skip, got {e:?}"),
    }
    assert_eq!(
        seqs(&evs),
        (100..105).collect::<Vec<_>>(),
        "resumes at a keyframe, never mid-GOP"
    );
    assert_eq!(p.stream().info().skips, 1);
}

#[tokio::test]
async fn a_viewer_that_keeps_lagging_is_disconnected() {
    let reg = Registry::new(config(20));
    let p = reg.publish("s").expect("publish");
    p.push_init(init("a")).expect("init");
    let mut slow = p.stream().subscribe(start());
    let mut n = 0;
    let mut ended = None;
    for _round in 0..5 {
        for _ in 0..50 {
            p.push_fragment(frag(n, n % 10 == 0, 10)).expect("push");
            n += 1;
        }
        // Read one event per round: far too slow.
        if let Some(Event::End(r)) = slow.try_next() {
            ended = Some(r);
            break;
        }
        let _ = slow.try_next();
    }
    assert_eq!(ended, Some(EndReason::Lagging));
    assert_eq!(p.stream().info().lag_disconnects, 1);
    assert!(slow.try_next().is_none(), "nothing after the end");
}

#[tokio::test]
async fn the_ring_keeps_the_two_newest_groups_and_respects_its_byte_budget() {
    let mut cfg = config(5);
    cfg.ring.max_bytes = 1000;
    let reg = Registry::new(cfg);
    let p = reg.publish("s").expect("publish");
    p.push_init(init("a")).expect("init");
    // GOPs of 8 fragments of 10 bytes: two GOPs exceed the count bound but are kept.
    for n in 0..40 {
        p.push_fragment(frag(n, n % 8 == 0, 10)).expect("push");
    }
    let info = p.stream().info();
    assert_eq!(info.ring_fragments, 16, "two whole groups");
    // Big fragments: the byte budget evicts, still keeping the two newest groups.
    for n in 40..48 {
        p.push_fragment(frag(n, n % 8 == 0, 100)).expect("push");
    }
    let info = p.stream().info();
    assert!(info.ring_bytes <= 4 * 1000);
    let mut v = p.stream().subscribe(start());
    assert_eq!(
        seqs(&drain(&mut v)).first(),
        Some(&40),
        "joins at the newest keyframe"
    );
}

#[tokio::test]
async fn second_publisher_gets_already_live_unless_takeover() {
    let reg = Registry::new(config(20));
    let p = reg.publish("s").expect("publish");
    assert!(matches!(reg.publish("s"), Err(Error::AlreadyLive(_))));
    assert!(matches!(reg.publish("bad name"), Err(Error::BadName(_))));
    drop(p);
    let mut cfg = config(20);
    cfg.takeover = true;
    let reg = Registry::new(cfg);
    let old = reg.publish("s").expect("publish");
    old.push_init(init("a")).expect("init");
    let new = reg.publish("s").expect("takeover");
    assert!(matches!(
        old.push_fragment(frag(0, true, 1)),
        Err(Error::TakenOver(_))
    ));
    new.push_fragment(frag(0, true, 1)).expect("new publisher");
}

/// A publisher that pushes fragments itself (the built-in demo, a cascade
/// edge's puller: no ingest session touches it) is not stale while it
/// pushes: a second publisher is refused (the browser broadcast test saw the
/// demo stream taken over).
#[test]
fn a_publisher_pushing_fragments_is_never_stale() {
    let reg = Registry::new(config(20));
    let p = reg.publish("s").expect("publish");
    p.push_init(init("a")).expect("init");
    for n in 0..14u64 {
        p.push_fragment(frag(n, n % 5 == 0, 1)).expect("push");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!p.stream().accepts_publisher());
    assert!(matches!(reg.publish("s"), Err(Error::AlreadyLive(_))));
}

#[tokio::test]
async fn a_stale_publisher_is_taken_over_and_viewers_hear_gone_and_back() {
    let reg = Registry::new(config(20));
    let old = reg.publish("s").expect("publish");
    old.push_init(init("a")).expect("init");
    old.push_fragment(frag(0, true, 1)).expect("push");
    let stream = old.stream().clone();
    let mut v = stream.subscribe(start());
    drain(&mut v);
    // Active: refused.
    assert!(matches!(reg.publish("s"), Err(Error::AlreadyLive(_))));
    assert!(!stream.accepts_publisher());
    // Silent for longer than stale_publisher (1 s): taken over.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(stream.accepts_publisher());
    let new = reg.publish("s").expect("takeover of a stale publisher");
    assert!(matches!(
        old.push_fragment(frag(1, false, 1)),
        Err(Error::TakenOver(_))
    ));
    new.push_init(init("a")).expect("init");
    new.push_fragment(frag(0, true, 1)).expect("new publisher");
    drop(old);
    let evs = drain(&mut v);
    let publisher: Vec<bool> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Publisher(live) => Some(*live),
            _ => None,
        })
        .collect();
    assert_eq!(publisher, [false, true], "{evs:?}");
    assert_eq!(seqs(&evs), [1]);
    // The new one is active: a third is refused.
    assert!(matches!(reg.publish("s"), Err(Error::AlreadyLive(_))));
}

#[tokio::test]
async fn a_publisher_returning_within_grace_continues_the_same_viewers() {
    let reg = Registry::new(config(20));
    let p = reg.publish("s").expect("publish");
    p.push_init(init("a")).expect("init");
    let stream = p.stream().clone();
    let mut v = stream.subscribe(start());
    p.push_fragment(frag(0, true, 1)).expect("push");
    drop(p);
    let p = reg.publish("s").expect("back within grace");
    assert_eq!(p.stream().epoch(), stream.epoch(), "the same stream");
    p.push_init(init("b")).expect("new codecs");
    p.push_fragment(frag(0, true, 1)).expect("push");
    let evs = drain(&mut v);
    let kinds: Vec<String> = evs
        .iter()
        .map(|e| match e {
            Event::Init(i) => format!("init{}", i.version),
            Event::Fragment(c) => format!("frag{}", c.seq),
            Event::Publisher(l) => format!("publisher:{l}"),
            e => format!("{e:?}"),
        })
        .collect();
    // The viewer may see gone+back coalesced into the latest state; what matters:
    // the new init before the new fragment, and seqs keep counting.
    assert_eq!(kinds.first().map(String::as_str), Some("init1"));
    assert!(
        kinds.ends_with(&["init2".to_string(), "frag1".to_string()]),
        "{kinds:?}"
    );
    drop(p);
    // Nobody returns: after the grace period the viewer is told the stream ended.
    let ev = end_within_grace(&mut v).await;
    assert_eq!(ev, EndReason::PublisherGone);
    assert!(reg.get("s").is_none(), "registry entry removed");
}

#[tokio::test]
async fn handing_a_fragment_to_many_viewers_shares_one_payload() {
    let reg = Registry::new(config(20));
    let p = reg.publish("s").expect("publish");
    p.push_init(init("a")).expect("init");
    let mut viewers: Vec<Viewer> = (0..1000).map(|_| p.stream().subscribe(start())).collect();
    p.push_fragment(frag(0, true, 4096)).expect("push");
    let mut ptrs = std::collections::HashSet::new();
    for v in &mut viewers {
        for e in drain(v) {
            if let Event::Fragment(c) = e {
                ptrs.insert(c.bytes.as_ptr() as usize);
            }
        }
    }
    assert_eq!(ptrs.len(), 1, "every viewer got the same bytes, not a copy");
    assert_eq!(p.stream().viewer_count(), 1000);
    drop(viewers);
    assert_eq!(p.stream().viewer_count(), 0);
}

#[tokio::test]
async fn a_run_read_once_gives_caught_up_viewers_what_try_next_would() {
    let reg = Registry::new(config(50));
    let p = reg.publish("s").expect("publish");
    p.push_init(init("a")).expect("init");
    let stream = p.stream().clone();
    let mut fast = stream.subscribe(start());
    let mut slow = stream.subscribe(start());
    // Subscribed but has taken nothing yet (not even the init).
    let mut fresh = stream.subscribe(start());
    p.push_fragment(frag(0, true, 10)).expect("push");
    drain(&mut fast);
    drain(&mut slow);
    for n in 1..4 {
        p.push_fragment(frag(n, false, 10)).expect("push");
    }
    let mut run = Run::default();
    stream.read_run(1, 10, &mut run);
    assert_eq!(
        run.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(!run.more);
    assert_eq!(run.end(), 4);
    let mut out = OutTally::default();
    assert!(fast.take_run(&run, &mut out), "a caught-up viewer takes it");
    assert_eq!((out.fragments, out.bytes), (3, 30));
    assert_eq!(fast.cursor(), 4);
    assert_eq!(seqs(&drain(&mut slow)), [1, 2, 3], "what try_next gives");
    assert!(drain(&mut fast).is_empty(), "nothing twice");
    assert!(!fresh.take_run(&run, &mut out), "not at the run's start");
    let evs = drain(&mut fresh);
    assert!(matches!(evs.first(), Some(Event::Init(_))), "{evs:?}");
    assert_eq!(seqs(&evs), [0, 1, 2, 3]);

    // At most `max`, saying more follow.
    stream.read_run(1, 2, &mut run);
    assert_eq!(run.chunks.len(), 2);
    assert!(run.more);

    // A new init: the run stops before it, and a viewer on the old one
    // goes by try_next (the init first).
    p.push_init(init("b")).expect("init b");
    p.push_fragment(frag(4, true, 10)).expect("push");
    stream.read_run(3, 10, &mut run);
    assert_eq!(run.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), [3]);
    stream.read_run(4, 10, &mut run);
    assert!(!fast.take_run(&run, &mut out), "its init is older");
    let evs = drain(&mut fast);
    assert!(
        matches!(evs.first(), Some(Event::Init(i)) if i.version == 2),
        "{evs:?}"
    );
    assert_eq!(seqs(&evs), [4]);
    drain(&mut slow);

    // Publisher news: every viewer takes it by try_next.
    p.push_fragment(frag(5, false, 10)).expect("push");
    drop(p);
    stream.read_run(5, 10, &mut run);
    assert_eq!(run.chunks.len(), 1);
    assert!(!fast.take_run(&run, &mut out), "news is due");
    let evs = drain(&mut fast);
    assert_eq!(seqs(&evs), [5]);
    assert!(
        evs.iter().any(|e| matches!(e, Event::Publisher(false))),
        "{evs:?}"
    );

    // Ended: an empty run; the end goes viewer by viewer.
    let end = end_within_grace(&mut slow).await;
    assert_eq!(end, EndReason::PublisherGone);
    stream.read_run(6, 10, &mut run);
    assert!(run.chunks.is_empty());
}
