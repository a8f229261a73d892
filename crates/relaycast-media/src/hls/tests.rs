//! Playlist rules checked against RFC 8216bis, and the MPD against the playlist.

use super::*;

/// A fragment source: GOPs of `parts_per_gop` fragments of `part_us` each.
struct Src {
    seq: u64,
    dts_us: u64,
    t_ms: u64,
    init_gen: u64,
}

impl Src {
    fn new() -> Self {
        Src {
            seq: 100,
            dts_us: 0,
            t_ms: 1_796_251_146_000,
            init_gen: 1,
        }
    }
    fn part(&mut self, keyframe: bool, dur_us: u64) -> PartInfo {
        self.dts_us += dur_us;
        self.t_ms += dur_us / 1000;
        let p = PartInfo {
            seq: self.seq,
            keyframe,
            dts_us: self.dts_us - dur_us,
            dur_us,
            t_ms: self.t_ms,
            init_gen: self.init_gen,
            bytes_len: 1000,
        };
        self.seq += 1;
        p
    }
    fn gop(&mut self, ix: &mut SegmentIndex, parts: usize, part_us: u64) {
        for i in 0..parts {
            let p = self.part(i == 0, part_us);
            ix.push(p);
        }
    }
}

/// The parts of a parsed playlist that matter here.
#[derive(Debug, Default)]
struct Parsed {
    version: u64,
    target: u64,
    part_target_us: u64,
    media_seq: u64,
    disc_seq: u64,
    skipped: u64,
    /// (msn, extinf µs, uri, discontinuity before, map uri in force)
    segments: Vec<(u64, u64, String, bool, String)>,
    /// (msn of parent, part index, duration µs, uri, independent)
    parts: Vec<(u64, usize, u64, String, bool)>,
    preload: Option<String>,
    endlist: bool,
    maps: usize,
    discontinuities: usize,
    hold_back_us: u64,
    skip_until_s: u64,
}

fn us(s: &str) -> u64 {
    let (i, f) = s.split_once('.').unwrap_or((s, ""));
    let mut f = f.to_string();
    f.truncate(6);
    while f.len() < 6 {
        f.push('0');
    }
    i.parse::<u64>().unwrap() * 1_000_000 + f.parse::<u64>().unwrap()
}

fn attr<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(':')? + 1..];
    for kv in rest.split(',') {
        if let Some(v) = kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')) {
            return Some(v.trim_matches('"'));
        }
    }
    None
}

fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"));
    let mut msn = None;
    let mut part_ix = 0usize;
    let mut disc = false;
    let mut map = String::new();
    let mut extinf = None;
    for l in lines {
        assert!(!l.is_empty(), "blank line");
        if let Some(v) = l.strip_prefix("#EXT-X-VERSION:") {
            p.version = v.parse().unwrap();
        } else if let Some(v) = l.strip_prefix("#EXT-X-TARGETDURATION:") {
            p.target = v.parse().unwrap();
        } else if l.starts_with("#EXT-X-PART-INF:") {
            p.part_target_us = us(attr(l, "PART-TARGET").unwrap());
        } else if l.starts_with("#EXT-X-SERVER-CONTROL:") {
            assert_eq!(attr(l, "CAN-BLOCK-RELOAD"), Some("YES"));
            p.hold_back_us = us(attr(l, "PART-HOLD-BACK").unwrap());
            p.skip_until_s = us(attr(l, "CAN-SKIP-UNTIL").unwrap()) / 1_000_000;
        } else if let Some(v) = l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            p.media_seq = v.parse().unwrap();
        } else if let Some(v) = l.strip_prefix("#EXT-X-DISCONTINUITY-SEQUENCE:") {
            p.disc_seq = v.parse().unwrap();
        } else if l.starts_with("#EXT-X-SKIP:") {
            p.skipped = attr(l, "SKIPPED-SEGMENTS").unwrap().parse().unwrap();
        } else if l == "#EXT-X-DISCONTINUITY" {
            disc = true;
            p.discontinuities += 1;
        } else if l.starts_with("#EXT-X-MAP:") {
            map = attr(l, "URI").unwrap().to_string();
            p.maps += 1;
        } else if l.starts_with("#EXT-X-PROGRAM-DATE-TIME:") {
            assert!(l.ends_with('Z'));
        } else if l.starts_with("#EXT-X-PART:") {
            let m = *msn.get_or_insert(p.media_seq + p.skipped);
            p.parts.push((
                m,
                part_ix,
                us(attr(l, "DURATION").unwrap()),
                attr(l, "URI").unwrap().to_string(),
                attr(l, "INDEPENDENT") == Some("YES"),
            ));
            part_ix += 1;
        } else if let Some(v) = l.strip_prefix("#EXTINF:") {
            extinf = Some(us(v.trim_end_matches(',')));
        } else if l.starts_with("#EXT-X-PRELOAD-HINT:") {
            assert_eq!(attr(l, "TYPE"), Some("PART"));
            p.preload = Some(attr(l, "URI").unwrap().to_string());
        } else if l == "#EXT-X-ENDLIST" {
            p.endlist = true;
        } else if l.starts_with('#') {
            panic!("unexpected tag {l}");
        } else {
            let m = msn.unwrap_or(p.media_seq + p.skipped + p.segments.len() as u64);
            let m = if p.segments.is_empty() {
                p.media_seq + p.skipped
            } else {
                m.max(p.segments.last().unwrap().0 + 1)
            };
            p.segments.push((
                m,
                extinf.take().expect("EXTINF before URI"),
                l.to_string(),
                disc,
                map.clone(),
            ));
            disc = false;
            msn = Some(m + 1);
            part_ix = 0;
        }
    }
    p
}

fn render(ix: &SegmentIndex) -> Parsed {
    parse(&media_playlist(ix, &PlaylistRequest::default(), &Links::default()).unwrap())
}

/// RFC 8216bis rules every playlist must satisfy.
fn check_rules(p: &Parsed) {
    for (msn, d, uri, _, _) in &p.segments {
        assert!(
            (d + 500_000) / 1_000_000 <= p.target,
            "EXTINF {d} > TARGETDURATION {}",
            p.target
        );
        assert_eq!(uri, &format!("seg/{msn}.m4s"));
    }
    for (_, _, d, _, _) in &p.parts {
        assert!(
            *d <= p.part_target_us,
            "part {d} > PART-TARGET {}",
            p.part_target_us
        );
    }
    assert!(p.hold_back_us >= 3 * p.part_target_us);
    assert!(p.skip_until_s >= 6 * p.target);
}

#[test]
fn not_ready_until_first_segment_completes() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    assert_eq!(
        media_playlist(&ix, &PlaylistRequest::default(), &Links::default()),
        Err(PlaylistError::NotReady)
    );
    s.gop(&mut ix, 10, 100_000);
    assert!(ix.targets().is_none());
    s.gop(&mut ix, 10, 100_000);
    let t = ix.targets().unwrap();
    assert_eq!(
        t,
        Targets {
            target_duration_s: 1,
            part_target_us: 100_000
        }
    );
    let p = render(&ix);
    check_rules(&p);
    assert_eq!(p.segments.len(), 1);
    assert_eq!(p.parts.len(), 20); // 10 of segment 0 and 10 of the open one
    assert_eq!(p.preload.as_deref(), Some("part/120.m4s"));
    assert!(p.parts[0].4 && !p.parts[1].4 && p.parts[10].4);
}

#[test]
fn joined_mid_gop_starts_at_the_first_keyframe() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    assert_eq!(ix.push(s.part(false, 100_000)), Pushed::Ignored);
    assert_eq!(
        ix.push(s.part(true, 100_000)),
        Pushed::NewSegment {
            msn: 0,
            discontinuity: false
        }
    );
}

#[test]
fn part_durations_never_exceed_part_target() {
    // Uneven fragments (an encoder cutting at 100 ms and at GOP ends), then a
    // fragment longer than the announced target arrives later.
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    for _ in 0..3 {
        for i in 0..12 {
            ix.push(s.part(i == 0, if i % 3 == 0 { 33_367 } else { 90_000 }));
        }
    }
    assert_eq!(ix.targets().unwrap().part_target_us, 90_000);
    ix.push(s.part(true, 90_000));
    ix.push(s.part(false, 250_000)); // oversize: too late to raise PART-TARGET
    ix.push(s.part(false, 90_000));
    let p = render(&ix);
    check_rules(&p);
    assert_eq!(p.part_target_us, 90_000);
    assert_eq!(ix.stats().oversize_parts, 1);
    // The segment with the oversize fragment is listed without parts.
    let open_msn = ix.segments().back().unwrap().msn;
    assert!(p.parts.iter().all(|x| x.0 != open_msn));
}

#[test]
fn target_duration_never_changes_and_long_gops_are_split() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    s.gop(&mut ix, 20, 100_000); // 2 s GOPs
    s.gop(&mut ix, 20, 100_000);
    assert_eq!(ix.targets().unwrap().target_duration_s, 2);
    s.gop(&mut ix, 50, 100_000); // the encoder now sends a 5 s GOP
    s.gop(&mut ix, 20, 100_000);
    let p = render(&ix);
    check_rules(&p);
    assert_eq!(p.target, 2);
    assert!(ix.stats().forced_splits >= 2);
    // Forced segments do not start independent; parts still say where the keyframes are.
    assert!(ix.segments().iter().any(|s| !s.independent()));
}

#[test]
fn short_gops_are_merged() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    for _ in 0..8 {
        s.gop(&mut ix, 2, 100_000); // 0.2 s GOPs, min segment 0.5 s
    }
    let first = &ix.segments()[0];
    assert_eq!(first.parts.len(), 6);
    assert!(first.parts.iter().filter(|p| p.keyframe).count() == 3);
}

#[test]
fn msn_and_parts_are_stable_across_window_slides() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    for _ in 0..6 {
        s.gop(&mut ix, 10, 100_000);
    }
    let a = render(&ix);
    // The ring evicts the first two GOPs while two more arrive.
    let evict_to = ix.segment(a.media_seq + 2).unwrap().first_seq();
    ix.evict_before(evict_to);
    s.gop(&mut ix, 10, 100_000);
    s.gop(&mut ix, 10, 100_000);
    let b = render(&ix);
    check_rules(&b);
    assert_eq!(b.media_seq, a.media_seq + 2);
    for (msn, d, uri, _, _) in &a.segments {
        if let Some(bs) = b.segments.iter().find(|x| x.0 == *msn) {
            assert_eq!((bs.1, &bs.2), (*d, uri));
        }
    }
    // Consecutive MSNs, consecutive part seqs, part indexes from 0 per segment.
    for w in b.segments.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1);
    }
    for w in b.parts.windows(2) {
        let seq = |u: &str| u[5..u.len() - 4].parse::<u64>().unwrap();
        assert_eq!(seq(&w[1].3), seq(&w[0].3) + 1);
        if w[1].0 == w[0].0 {
            assert_eq!(w[1].1, w[0].1 + 1);
        } else {
            assert_eq!((w[1].0, w[1].1), (w[0].0 + 1, 0));
        }
    }
    // Parts of the same segment/part index point to the same fragment in both versions.
    for pa in &a.parts {
        if let Some(pb) = b.parts.iter().find(|x| x.0 == pa.0 && x.1 == pa.1) {
            assert_eq!(pa.3, pb.3);
        }
    }
    // Only the segments within 3 target durations of the end list their parts.
    let with_parts: std::collections::BTreeSet<u64> = b.parts.iter().map(|x| x.0).collect();
    assert!(with_parts.len() <= 4, "{with_parts:?}");
    assert!(!with_parts.contains(&b.media_seq));
    let seq = ix.segments().back().unwrap().end_seq();
    assert_eq!(b.preload, Some(format!("part/{seq}.m4s")));
}

#[test]
fn blocking_reload_ready_wait_and_400() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    s.gop(&mut ix, 10, 100_000);
    s.gop(&mut ix, 10, 100_000);
    s.gop(&mut ix, 3, 100_000); // open segment 2 has parts 0..=2
    let req = |msn, part| PlaylistRequest {
        msn: Some(msn),
        part,
        skip: false,
    };
    let wait = Blocking::Wait { timeout_ms: 3_000 };
    assert_eq!(blocking_request(&ix, &req(0, None)), Blocking::Ready);
    assert_eq!(blocking_request(&ix, &req(1, Some(9))), Blocking::Ready);
    assert_eq!(blocking_request(&ix, &req(2, Some(2))), Blocking::Ready);
    assert_eq!(blocking_request(&ix, &req(2, Some(3))), wait); // the preload-hinted part
    assert_eq!(blocking_request(&ix, &req(2, None)), wait); // the whole open segment
    assert_eq!(blocking_request(&ix, &req(3, Some(0))), wait);
    assert_eq!(blocking_request(&ix, &req(4, Some(0))), wait); // last + 2: still allowed
    assert_eq!(
        blocking_request(&ix, &req(5, Some(0))),
        Blocking::Reject(PlaylistError::TooFarAhead)
    );
    assert_eq!(
        blocking_request(&ix, &req(5, None)).clone(),
        Blocking::Reject(PlaylistError::TooFarAhead)
    );
    assert_eq!(
        blocking_request(&ix, &req(2, Some(3 + 30))),
        Blocking::Reject(PlaylistError::TooFarAhead)
    );
    assert_eq!(PlaylistError::TooFarAhead.http_status(), 400);
    // The part arrives: the same request is now answered.
    ix.push(s.part(false, 100_000));
    assert_eq!(blocking_request(&ix, &req(2, Some(3))), Blocking::Ready);
    // Directives.
    assert_eq!(
        PlaylistRequest::from_query("_HLS_part=1"),
        Err(PlaylistError::BadDirective)
    );
    assert_eq!(
        PlaylistRequest::from_query("_HLS_msn=x"),
        Err(PlaylistError::BadDirective)
    );
    assert_eq!(
        PlaylistRequest::from_query("_HLS_msn=7&_HLS_part=2&_HLS_skip=YES&x=1"),
        Ok(PlaylistRequest {
            msn: Some(7),
            part: Some(2),
            skip: true
        })
    );
    assert_eq!(ix.targets().unwrap().blocking_timeout_ms(), 3_000);
}

#[test]
fn delta_update_skips_old_segments() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    for _ in 0..10 {
        s.gop(&mut ix, 10, 100_000); // 1 s segments, TD 1, CAN-SKIP-UNTIL 6
    }
    s.gop(&mut ix, 4, 100_000);
    let full = render(&ix);
    let delta = parse(
        &media_playlist(
            &ix,
            &PlaylistRequest {
                skip: true,
                ..Default::default()
            },
            &Links::default(),
        )
        .unwrap(),
    );
    check_rules(&delta);
    assert_eq!(full.segments.len(), 10);
    // 10 s of complete segments + 0.4 s open: segments starting more than 6 s
    // before the end are skipped: those starting at 0..=4 s (end is 10.4 s).
    assert_eq!(delta.skipped, 5);
    assert_eq!(delta.version, 9);
    assert_eq!(full.version, 6);
    assert_eq!(delta.media_seq, full.media_seq);
    assert_eq!(delta.segments.len(), full.segments.len() - 5);
    assert_eq!(delta.segments[0].0, full.segments[5].0);
    assert_eq!(
        delta.segments,
        full.segments[5..]
            .iter()
            .map(|x| (x.0, x.1, x.2.clone(), x.3, x.4.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(delta.parts, full.parts);
    assert_eq!(delta.maps, 1); // the MAP is repeated for the first segment that remains
    // A short window has nothing to skip.
    let mut small = SegmentIndex::default();
    let mut s2 = Src::new();
    for _ in 0..4 {
        s2.gop(&mut small, 10, 100_000);
    }
    let d = parse(
        &media_playlist(
            &small,
            &PlaylistRequest {
                skip: true,
                ..Default::default()
            },
            &Links::default(),
        )
        .unwrap(),
    );
    assert_eq!((d.skipped, d.version), (0, 6));
}

#[test]
fn init_change_is_a_discontinuity_with_a_new_map() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    s.gop(&mut ix, 10, 100_000);
    s.gop(&mut ix, 10, 100_000);
    // The publisher reconnects with other codecs: new init, timestamps from 0.
    ix.set_live(false);
    let gone = render(&ix);
    assert_eq!(
        gone.segments.len(),
        2,
        "publisher gone closes the open segment"
    );
    ix.set_live(true);
    s.init_gen = 2;
    s.dts_us = 0;
    s.gop(&mut ix, 10, 100_000);
    s.gop(&mut ix, 10, 100_000);
    let p = render(&ix);
    check_rules(&p);
    assert_eq!(p.maps, 2);
    assert_eq!(p.discontinuities, 1);
    let third = &p.segments[2];
    assert!(
        third.3,
        "EXT-X-DISCONTINUITY before the first segment of the new init"
    );
    assert_eq!(third.4, "init/2.mp4");
    assert_eq!(p.segments[1].4, "init/1.mp4");
    assert_eq!(p.disc_seq, 0);
    // Once the old segments leave the window, the counter carries the discontinuity.
    let to = ix.segment(2).unwrap().first_seq();
    ix.evict_before(to);
    let q = render(&ix);
    assert_eq!((q.disc_seq, q.discontinuities, q.maps), (1, 0, 1));
    // Same init, timestamps restarted (publisher back with identical codecs).
    ix.set_live(false);
    ix.set_live(true);
    s.dts_us = 0;
    s.gop(&mut ix, 10, 100_000);
    let r = render(&ix);
    assert_eq!((r.disc_seq, r.discontinuities, r.maps), (1, 1, 1));
}

#[test]
fn ended_stream_has_endlist_and_no_hint() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    s.gop(&mut ix, 10, 100_000);
    s.gop(&mut ix, 5, 100_000);
    ix.end();
    let p = render(&ix);
    assert!(p.endlist && p.preload.is_none());
    assert_eq!(p.segments.len(), 2);
    let req = PlaylistRequest {
        msn: Some(3),
        part: Some(0),
        skip: false,
    };
    assert_eq!(blocking_request(&ix, &req), Blocking::Ready);
}

/// A tiny XML well-formedness check: balanced tags, quoted attributes, one root.
type Element = (String, Vec<(String, String)>);

fn well_formed(xml: &str) -> Result<Vec<Element>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut elems = Vec::new();
    let mut rest = xml.trim_start();
    if let Some(r) = rest.strip_prefix("<?xml") {
        rest = &r[r.find("?>").ok_or("unterminated prolog")? + 2..];
    }
    let mut roots = 0;
    loop {
        let Some(lt) = rest.find('<') else {
            if !rest.trim().is_empty() {
                return Err("text outside elements".into());
            }
            break;
        };
        if stack.is_empty() && !rest[..lt].trim().is_empty() {
            return Err("text outside root".into());
        }
        let gt = rest[lt..].find('>').ok_or("unterminated tag")? + lt;
        let tag = &rest[lt + 1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name.trim()) {
                return Err(format!("mismatched </{name}>"));
            }
            continue;
        }
        let empty = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let mut it = tag.splitn(2, char::is_whitespace);
        let name = it.next().unwrap_or("").to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
            return Err(format!("bad name {name:?}"));
        }
        let mut attrs = Vec::new();
        let mut a = it.next().unwrap_or("").trim();
        while !a.is_empty() {
            let eq = a.find("=\"").ok_or(format!("bad attribute in <{name}>"))?;
            let key = a[..eq].trim().to_string();
            let end = a[eq + 2..].find('"').ok_or("unterminated value")? + eq + 2;
            let val = a[eq + 2..end].to_string();
            let bad_amp = val.match_indices('&').any(|(i, _)| {
                !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| val[i..].starts_with(e))
            });
            if val.contains('<') || bad_amp {
                return Err("unescaped value".into());
            }
            attrs.push((key, val));
            a = a[end + 1..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        elems.push((name.clone(), attrs));
        if !empty {
            stack.push(name);
        }
    }
    if !stack.is_empty() || roots != 1 {
        return Err(format!("unclosed {stack:?} / roots {roots}"));
    }
    Ok(elems)
}

fn get<'a>(e: &'a Element, k: &str) -> &'a str {
    e.1.iter()
        .find(|x| x.0 == k)
        .map(|x| x.1.as_str())
        .unwrap_or_else(|| panic!("{} has no {k}", e.0))
}

#[test]
fn mpd_is_well_formed_and_matches_the_playlist() {
    // An operator who knows the encoder's GOPs vary up to 2 s says so.
    let mut ix = SegmentIndex::new(IndexConfig {
        min_target_duration_s: 2,
        ..Default::default()
    });
    let mut s = Src::new();
    let ast = s.t_ms;
    for _ in 0..5 {
        s.gop(&mut ix, 10, 100_000);
    }
    s.gop(&mut ix, 15, 100_000); // a longer GOP: durations vary
    s.gop(&mut ix, 10, 100_000);
    ix.set_live(false);
    ix.set_live(true);
    s.init_gen = 2;
    s.dts_us = 5_000_000;
    s.gop(&mut ix, 10, 100_000);
    s.gop(&mut ix, 10, 100_000);
    s.gop(&mut ix, 3, 100_000);
    let params = MpdParams {
        now_ms: s.t_ms,
        availability_start_ms: ast,
        codecs: "avc1.64001f,mp4a.40.2",
        bandwidth: 2_000_000,
        resolution: Some((640, 360)),
        time_url: "/api/time?x=1&y=<2>",
        links: &Links::default(),
    };
    let xml = mpd(&ix, &params).unwrap();
    let elems = well_formed(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let pl = render(&ix);
    check_rules(&pl);
    // Walk periods: startNumber + S index = MSN; d = EXTINF; t continuous.
    let mut listed = Vec::new();
    let mut number = 0u64;
    let mut periods = Vec::new();
    for e in &elems {
        match e.0.as_str() {
            "MPD" => {
                assert_eq!(get(e, "type"), "dynamic");
                assert_eq!(get(e, "availabilityStartTime"), fmt::iso8601(ast));
            }
            "Period" => periods.push((get(e, "id").to_string(), get(e, "start").to_string())),
            "SegmentTemplate" => {
                number = get(e, "startNumber").parse().unwrap();
                assert_eq!(get(e, "media"), "seg/$Number$.m4s");
                assert!(get(e, "initialization").starts_with("init/"));
                assert!(get(e, "availabilityTimeOffset").parse::<f64>().unwrap() > 0.0);
            }
            "S" => {
                let d: u64 = get(e, "d").parse().unwrap();
                listed.push((number, d, get(e, "t").parse::<u64>().unwrap()));
                number += 1;
            }
            "UTCTiming" => assert_eq!(get(e, "schemeIdUri"), "urn:mpeg:dash:utc:http-iso:2014"),
            _ => {}
        }
    }
    assert_eq!(periods.len(), 2, "{xml}");
    assert_eq!(periods[0].1, "PT0.000S");
    let seg_list: Vec<(u64, u64)> = pl.segments.iter().map(|x| (x.0, x.1)).collect();
    assert_eq!(
        listed.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
        seg_list
    );
    assert_eq!(listed[5].1, 1_500_000);
    for w in listed.windows(2) {
        if w[1].2 > w[0].2 {
            assert_eq!(
                w[0].2 + w[0].1,
                w[1].2,
                "timeline continuous within a period"
            );
        }
    }
    // The Period stays put while the window slides.
    let to = ix.segment(3).unwrap().first_seq();
    ix.evict_before(to);
    let later = mpd(&ix, &params).unwrap();
    assert!(
        later.contains(r#"<Period id="p0" start="PT0.000S">"#),
        "{later}"
    );
    assert!(later.contains(r#"startNumber="3""#));
}

#[test]
fn multivariant_lists_the_stream() {
    let m = multivariant(&[Variant {
        codecs: "avc1.64001f,mp4a.40.2",
        bandwidth: 2_500_000,
        resolution: Some((640, 360)),
        uri: "index.m3u8",
    }]);
    assert_eq!(
        m,
        "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-STREAM-INF:BANDWIDTH=2500000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=640x360\nindex.m3u8\n"
    );
}

/// No input makes the index or the renderers panic (a small deterministic fuzz).
#[test]
fn arbitrary_input_never_panics() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let cfg = IndexConfig {
            max_segments: (rnd() % 10) as usize,
            min_segment_us: rnd() % 3_000_000,
            ..Default::default()
        };
        let mut ix = SegmentIndex::new(cfg);
        let mut seq = rnd() % 1000;
        for _ in 0..300 {
            let big = rnd() % 50 == 0;
            let p = PartInfo {
                seq,
                keyframe: rnd() % 5 == 0,
                dts_us: if big {
                    u64::MAX - rnd() % 10
                } else {
                    rnd() % 100_000_000
                },
                dur_us: if big { u64::MAX } else { rnd() % 3_000_000 },
                t_ms: if big {
                    u64::MAX
                } else {
                    rnd() % 10_000_000_000_000
                },
                init_gen: rnd() % 3,
                bytes_len: usize::MAX,
            };
            seq = match rnd() % 20 {
                0 => seq.wrapping_sub(3),
                1 => seq.saturating_add(5),
                2 if round % 2 == 0 => u64::MAX,
                _ => seq.saturating_add(1),
            };
            ix.push(p);
            match rnd() % 40 {
                0 => ix.set_live(false),
                1 => ix.set_live(true),
                2 => ix.evict_before(rnd() % 2000),
                3 => ix.end(),
                _ => {}
            }
            let req = PlaylistRequest {
                msn: (rnd() % 2 == 0).then(|| if big { u64::MAX } else { rnd() % 100 }),
                part: (rnd() % 2 == 0).then(|| if big { u64::MAX } else { rnd() % 100 }),
                skip: rnd() % 2 == 0,
            };
            let _ = blocking_request(&ix, &req);
            let _ = media_playlist(&ix, &req, &Links::default());
            let _ = ix.segment(rnd());
            let _ = ix.part(rnd() % 2000);
            for s in ix.segments() {
                let _ = (s.bytes_len(), s.start_ms());
            }
            if let Some(x) = mpd(
                &ix,
                &MpdParams {
                    now_ms: u64::MAX,
                    availability_start_ms: rnd(),
                    codecs: "a\"<",
                    bandwidth: 0,
                    resolution: None,
                    time_url: "",
                    links: &Links::default(),
                },
            ) {
                assert!(well_formed(&x).is_ok(), "{x}");
            }
        }
    }
    for q in [
        "",
        "&&",
        "_HLS_msn=18446744073709551616",
        "_HLS_skip=no",
        "=",
        "_HLS_msn",
        "_HLS_msn=1&_HLS_part=-1",
    ] {
        let _ = PlaylistRequest::from_query(q);
    }
}

#[test]
fn links_dress_every_uri() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    for _ in 0..3 {
        s.gop(&mut ix, 10, 100_000);
    }
    let links = Links {
        prefix: "77/".into(),
        query: "?exp=1&sig=ab".into(),
    };
    let text = media_playlist(&ix, &PlaylistRequest::default(), &links).unwrap();
    for line in text.lines() {
        for uri in line
            .split('"')
            .skip(1)
            .step_by(2)
            .chain(Some(line).filter(|l| !l.starts_with('#') && !l.is_empty()))
        {
            assert!(uri.starts_with("77/"), "{uri} in {line}");
            assert!(uri.ends_with("?exp=1&sig=ab"), "{uri} in {line}");
        }
    }
    assert!(text.contains("77/seg/0.m4s?exp=1&sig=ab"));
    assert!(text.contains("#EXT-X-MAP:URI=\"77/init/1.mp4?exp=1&sig=ab\""));
}

#[test]
fn keep_from_seq_covers_three_target_durations() {
    let mut ix = SegmentIndex::default();
    let mut s = Src::new();
    assert_eq!(ix.keep_from_seq(), None);
    for _ in 0..10 {
        s.gop(&mut ix, 10, 100_000);
    }
    s.gop(&mut ix, 4, 100_000);
    // Target 1 s: the three newest complete segments (and the open one).
    let keep = ix.keep_from_seq().unwrap();
    let segs = ix.segments();
    let n = segs.len();
    assert_eq!(keep, segs[n - 4].first_seq());
    ix.evict_before(keep);
    let p = render(&ix);
    check_rules(&p);
    let listed: u64 = p.segments.iter().map(|s| s.1).sum();
    assert!(listed >= 3_000_000, "{listed}");
}
