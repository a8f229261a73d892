//! The LL-HLS media playlist, blocking reload decisions, and the
//! multivariant playlist.

use super::fmt::{hls_quoted, iso8601, secs};
use super::{Links, Segment, SegmentIndex, Targets};
use std::fmt::Write as _;

/// The LL-HLS delivery directives of a playlist request (RFC 8216bis §6.2.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlaylistRequest {
    /// `_HLS_msn`: block until the playlist holds this Media Sequence Number.
    pub msn: Option<u64>,
    /// `_HLS_part`: … and this part of it (needs `_HLS_msn`).
    pub part: Option<u64>,
    /// `_HLS_skip=YES` (or `v2`): answer with a delta update.
    pub skip: bool,
}

/// Why a request is answered 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaylistError {
    /// A directive that does not parse, or `_HLS_part` without `_HLS_msn`.
    BadDirective,
    /// More than two segments (or the advance part limit) ahead of the
    /// playlist (§6.2.5.2).
    TooFarAhead,
    /// No segment has completed yet: the targets are not known, so no
    /// playlist can be published (answer 404 or hold the request).
    NotReady,
}

impl PlaylistError {
    /// The HTTP status for this error.
    pub fn http_status(self) -> u16 {
        match self {
            PlaylistError::BadDirective | PlaylistError::TooFarAhead => 400,
            PlaylistError::NotReady => 404,
        }
    }
}

impl PlaylistRequest {
    /// Parse the query string of `index.m3u8` (without the `?`). Unknown
    /// parameters are ignored; a malformed `_HLS_*` value is an error.
    pub fn from_query(query: &str) -> Result<Self, PlaylistError> {
        let mut r = PlaylistRequest::default();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "_HLS_msn" => r.msn = Some(v.parse().map_err(|_| PlaylistError::BadDirective)?),
                "_HLS_part" => r.part = Some(v.parse().map_err(|_| PlaylistError::BadDirective)?),
                "_HLS_skip" => match v {
                    "YES" | "v2" => r.skip = true,
                    _ => return Err(PlaylistError::BadDirective),
                },
                _ => {}
            }
        }
        if r.part.is_some() && r.msn.is_none() {
            return Err(PlaylistError::BadDirective);
        }
        Ok(r)
    }
}

/// How to answer a playlist request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocking {
    /// Render the playlist and answer now.
    Ready,
    /// Hold the request; check again on the ring's next notification. After
    /// `timeout_ms` (three target durations) without `Ready`, answer 503.
    Wait {
        /// When to give up with 503, ms after the request arrived.
        timeout_ms: u64,
    },
    /// Answer with this error's status now.
    Reject(PlaylistError),
}

/// The RFC's Advance Part Limit (§6.2.5.2): 3 parts when the part target
/// is ≥ 1 s, else as many parts as fit in 3 s.
fn advance_part_limit(t: &Targets) -> u64 {
    let pt = t.part_target_us.max(1);
    if pt >= 1_000_000 { 3 } else { 3_000_000 / pt }
}

/// Decide a blocking playlist reload (RFC 8216bis §6.2.5.2) for `req`.
///
/// A request for an MSN/part already in the playlist (or older) is `Ready`;
/// one for a part not yet there waits; an MSN more than two past the last
/// segment of the playlist (the open one counts), or a part beyond the
/// Advance Part Limit, is rejected with 400.
pub fn blocking_request(index: &SegmentIndex, req: &PlaylistRequest) -> Blocking {
    if req.part.is_some() && req.msn.is_none() {
        return Blocking::Reject(PlaylistError::BadDirective);
    }
    let Some(t) = index.targets() else {
        return match req.msn {
            None => Blocking::Reject(PlaylistError::NotReady),
            Some(msn) if msn > 2 => Blocking::Reject(PlaylistError::TooFarAhead),
            // Wait for the first segment; the timeout is a guess until known.
            Some(_) => Blocking::Wait { timeout_ms: 6_000 },
        };
    };
    let Some(msn) = req.msn else {
        return Blocking::Ready;
    };
    let Some(last) = index.segments().back() else {
        return Blocking::Ready;
    };
    let wait = Blocking::Wait {
        timeout_ms: t.blocking_timeout_ms(),
    };
    if msn > last.msn.saturating_add(2) {
        return Blocking::Reject(PlaylistError::TooFarAhead);
    }
    let apl = advance_part_limit(&t);
    if msn > last.msn {
        // A future segment: its parts must not be more than the Advance Part
        // Limit ahead of the newest part.
        if req.part.unwrap_or(0) > apl {
            return Blocking::Reject(PlaylistError::TooFarAhead);
        }
        return if index.ended() { Blocking::Ready } else { wait };
    }
    if msn < last.msn || last.complete {
        return Blocking::Ready;
    }
    // msn is the open segment.
    match req.part {
        None => {
            if index.ended() {
                Blocking::Ready
            } else {
                wait
            }
        }
        Some(p) => {
            let have = last.parts.len() as u64;
            if p < have || index.ended() {
                Blocking::Ready
            } else if p >= have.saturating_add(apl) {
                Blocking::Reject(PlaylistError::TooFarAhead)
            } else {
                wait
            }
        }
    }
}

/// Index of the first segment whose parts are listed: parts are kept for
/// the segments that end within three target durations of the playlist's
/// end (RFC 8216bis §4.4.4.9: older parts SHOULD be removed).
fn first_with_parts(segs: &[&Segment], t: &Targets) -> usize {
    let horizon = t.target_duration_s.saturating_mul(3_000_000);
    let mut from_end = 0u64;
    let mut first = segs.len();
    for (i, s) in segs.iter().enumerate().rev() {
        if from_end >= horizon {
            break;
        }
        first = i;
        from_end = from_end.saturating_add(s.dur_us());
    }
    first
}

/// Render `index.m3u8` for `req` (the caller decided with
/// [`blocking_request`] that it is time to answer).
///
/// Version 6 (`EXT-X-MAP` with fMP4), or 9 when the answer is a delta
/// update (`EXT-X-SKIP`). Segments are `seg/{msn}.m4s`, parts
/// `part/{seq}.m4s`, init segments `init/{gen}.mp4`, all relative to the
/// playlist's URL and dressed by `links`. `EXT-X-RENDITION-REPORT` is not emitted: there is one
/// rendition (audio muxed into the same CMAF fragments), and the tag only
/// reports *other* renditions' last MSN/part.
pub fn media_playlist(
    index: &SegmentIndex,
    req: &PlaylistRequest,
    links: &Links,
) -> Result<String, PlaylistError> {
    let t = index.targets().ok_or(PlaylistError::NotReady)?;
    let segs: Vec<&Segment> = index.segments().iter().collect();
    let first = segs.first().ok_or(PlaylistError::NotReady)?;

    // Delta update: skip the segments that start more than CAN-SKIP-UNTIL
    // before the end of the playlist (§6.2.5.1).
    let mut skipped = 0usize;
    if req.skip {
        let until = t.can_skip_until_s().saturating_mul(1_000_000);
        let total: u64 = segs.iter().fold(0, |a, s| a.saturating_add(s.dur_us()));
        let mut start = 0u64;
        for s in &segs {
            if !s.complete || total.saturating_sub(start) <= until {
                break;
            }
            skipped += 1;
            start = start.saturating_add(s.dur_us());
        }
    }

    let mut o = String::with_capacity(256 + segs.len() * 400);
    let _ = writeln!(o, "#EXTM3U");
    let _ = writeln!(o, "#EXT-X-VERSION:{}", if skipped > 0 { 9 } else { 6 });
    let _ = writeln!(o, "#EXT-X-TARGETDURATION:{}", t.target_duration_s);
    let _ = writeln!(
        o,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={},CAN-SKIP-UNTIL={}.0",
        secs(t.part_hold_back_us()),
        t.can_skip_until_s()
    );
    let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET={}", secs(t.part_target_us));
    let _ = writeln!(o, "#EXT-X-MEDIA-SEQUENCE:{}", first.msn);
    let _ = writeln!(o, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", first.disc_seq);
    if skipped > 0 {
        let _ = writeln!(o, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }
    let parts_from = first_with_parts(&segs, &t);
    let mut map: Option<u64> = None;
    for (i, s) in segs.iter().enumerate().skip(skipped) {
        if s.discontinuity && i > 0 {
            let _ = writeln!(o, "#EXT-X-DISCONTINUITY");
        }
        if map != Some(s.init_gen) {
            let _ = writeln!(o, "#EXT-X-MAP:URI=\"{}\"", links.init(s.init_gen));
            map = Some(s.init_gen);
        }
        let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{}", iso8601(s.start_ms()));
        if i >= parts_from && !s.oversize_part {
            for p in &s.parts {
                let _ = write!(
                    o,
                    "#EXT-X-PART:DURATION={},URI=\"{}\"",
                    secs(p.dur_us),
                    links.part(p.seq)
                );
                if p.keyframe {
                    let _ = write!(o, ",INDEPENDENT=YES");
                }
                o.push('\n');
            }
        }
        if s.complete {
            let _ = writeln!(o, "#EXTINF:{},", secs(s.dur_us()));
            let _ = writeln!(o, "{}", links.segment(s.msn));
        }
    }
    if index.ended() {
        let _ = writeln!(o, "#EXT-X-ENDLIST");
    } else if let Some(next) = index.next_seq() {
        let _ = writeln!(
            o,
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"",
            links.part(next)
        );
    }
    Ok(o)
}

/// One variant of the multivariant playlist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant<'a> {
    /// RFC 6381 codecs of the stream, e.g. `avc1.64001f,mp4a.40.2`.
    pub codecs: &'a str,
    /// Peak bit rate, bits/s (measured by the relay).
    pub bandwidth: u64,
    /// Picture size, if known.
    pub resolution: Option<(u32, u32)>,
    /// The media playlist's URI, relative to the multivariant playlist.
    pub uri: &'a str,
}

/// Render `master.m3u8`: one `EXT-X-STREAM-INF` per variant (today one).
pub fn multivariant(variants: &[Variant<'_>]) -> String {
    let mut o = String::from("#EXTM3U\n#EXT-X-VERSION:6\n");
    for v in variants {
        let _ = write!(
            o,
            "#EXT-X-STREAM-INF:BANDWIDTH={},CODECS=\"{}\"",
            v.bandwidth.max(1),
            hls_quoted(v.codecs)
        );
        if let Some((w, h)) = v.resolution {
            let _ = write!(o, ",RESOLUTION={w}x{h}");
        }
        let uri: String = v.uri.chars().filter(|c| !c.is_control()).collect();
        let _ = writeln!(o, "\n{uri}");
    }
    o
}
