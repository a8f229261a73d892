//! The dynamic DASH MPD, from the same segments as the HLS playlist.
//!
//! Addressing is `SegmentTemplate` with `$Number$` (= the HLS MSN) **and a
//! `SegmentTimeline`**: a template without a timeline maps `$Number$` to time
//! as `(Number - startNumber) × @duration`, which holds only when every
//! segment has the same duration. Here a segment is a GOP of whatever length
//! the encoder chose (and a publisher that reconnects may change it), so the
//! timeline states each segment's real start (`t`, the media decode time in
//! µs) and duration (`d`). A discontinuity (new init, timestamps restarted)
//! opens a new `Period` with its own `presentationTimeOffset` and init.

use super::fmt::{iso8601, secs, xml_attr, xs_duration};
use super::{Links, Segment, SegmentIndex};
use std::fmt::Write as _;

/// What the MPD needs besides the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpdParams<'a> {
    /// Relay wall clock now, Unix ms (`publishTime`).
    pub now_ms: u64,
    /// `availabilityStartTime`, Unix ms: a fixed instant for the life of the
    /// stream (e.g. when the relay first saw it). Periods start relative to it.
    pub availability_start_ms: u64,
    /// RFC 6381 codecs, e.g. `avc1.64001f,mp4a.40.2`.
    pub codecs: &'a str,
    /// Bit rate, bits/s.
    pub bandwidth: u64,
    /// Picture size, if known.
    pub resolution: Option<(u32, u32)>,
    /// URL of the relay clock for `UTCTiming` (`urn:mpeg:dash:utc:http-iso:2014`:
    /// the body is an ISO 8601 time). Give it absolute or relative to the MPD
    /// as players resolve it (dash.js: relative to the page), e.g. `/api/time`.
    pub time_url: &'a str,
    /// How segment and init URIs are written.
    pub links: &'a Links,
}

fn period_of(s: &Segment) -> u64 {
    s.disc_seq
}

/// Render `manifest.mpd` (`type="dynamic"`). Only complete segments are
/// listed. Returns `None` before the first segment completed.
///
/// Low latency: `availabilityTimeOffset` (= segment target minus one part
/// target) with `availabilityTimeComplete="false"` says a segment may be
/// requested before it is complete; the caller then answers `seg/{n}.m4s`
/// of the open segment as a chunked response that sends each part as it
/// arrives. `ServiceDescription/Latency` gives dash.js its target latency.
pub fn mpd(index: &SegmentIndex, p: &MpdParams<'_>) -> Option<String> {
    let t = index.targets()?;
    let segs: Vec<&Segment> = index.segments().iter().filter(|s| s.complete).collect();
    segs.first()?;
    let td_us = t.target_duration_s.saturating_mul(1_000_000);
    let window_us = segs.iter().fold(0u64, |a, s| a.saturating_add(s.dur_us()));
    let max_seg_us = segs.iter().map(|s| s.dur_us()).max().unwrap_or(td_us);
    let latency_ms = (max_seg_us.saturating_add(t.part_hold_back_us())) / 1000;
    let mup_us = t
        .part_target_us
        .saturating_mul(2)
        .clamp(200_000, td_us.max(200_000));
    let ato_us = td_us.saturating_sub(t.part_target_us);

    let mut o = String::with_capacity(1024 + segs.len() * 40);
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="dynamic" availabilityStartTime="{}" publishTime="{}" minimumUpdatePeriod="{}" timeShiftBufferDepth="{}" suggestedPresentationDelay="{}" maxSegmentDuration="{}" minBufferTime="{}">"#,
        iso8601(p.availability_start_ms),
        iso8601(p.now_ms),
        xs_duration(mup_us),
        xs_duration(window_us),
        xs_duration(latency_ms.saturating_mul(1000)),
        xs_duration(max_seg_us),
        xs_duration(t.part_target_us.saturating_mul(2)),
    );
    let _ = writeln!(
        o,
        r#"  <ServiceDescription id="0"><Latency referenceId="0" target="{}" min="{}" max="{}"/><PlaybackRate min="0.96" max="1.04"/></ServiceDescription>"#,
        latency_ms,
        latency_ms / 2,
        latency_ms.saturating_mul(3),
    );
    let codecs = xml_attr(p.codecs);
    let size = p
        .resolution
        .map(|(w, h)| format!(r#" width="{w}" height="{h}""#))
        .unwrap_or_default();
    let mut i = 0;
    while i < segs.len() {
        let period = period_of(segs[i]);
        let mut j = i;
        while j < segs.len() && period_of(segs[j]) == period {
            j += 1;
        }
        let run = &segs[i..j];
        let first = run[0];
        let start_ms = first
            .period_start_ms
            .saturating_sub(p.availability_start_ms);
        let _ = writeln!(
            o,
            r#"  <Period id="p{}" start="{}">"#,
            period,
            xs_duration(start_ms.saturating_mul(1000))
        );
        let _ = writeln!(
            o,
            r#"    <AdaptationSet id="0" mimeType="video/mp4" segmentAlignment="true" startWithSAP="1">"#
        );
        let _ = writeln!(
            o,
            r#"      <Representation id="0" codecs="{codecs}" bandwidth="{}"{size}>"#,
            p.bandwidth.max(1)
        );
        let _ = writeln!(
            o,
            r#"        <SegmentTemplate timescale="1000000" presentationTimeOffset="{}" startNumber="{}" media="{}" initialization="{}" availabilityTimeOffset="{}" availabilityTimeComplete="false">"#,
            first.period_dts_us,
            first.msn,
            xml_attr(&p.links.segment_template()),
            xml_attr(&p.links.init(first.init_gen)),
            secs(ato_us)
        );
        let _ = writeln!(o, "          <SegmentTimeline>");
        for (k, s) in run.iter().enumerate() {
            // d reaches the next segment's t exactly when the decode times are
            // continuous, so no gap or overlap appears from rounding.
            let d = match run.get(k + 1) {
                Some(n) if n.dts_us() > s.dts_us() => n.dts_us() - s.dts_us(),
                _ => s.dur_us(),
            };
            let _ = writeln!(o, r#"            <S t="{}" d="{}"/>"#, s.dts_us(), d);
        }
        let _ = writeln!(o, "          </SegmentTimeline>");
        let _ = writeln!(o, "        </SegmentTemplate>");
        let _ = writeln!(o, "      </Representation>");
        let _ = writeln!(o, "    </AdaptationSet>");
        let _ = writeln!(o, "  </Period>");
        i = j;
    }
    let _ = writeln!(
        o,
        r#"  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="{}"/>"#,
        xml_attr(p.time_url)
    );
    let _ = writeln!(o, "</MPD>");
    Some(o)
}
