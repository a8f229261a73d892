//! Number, date and string formatting shared by the playlist and the MPD.

/// Seconds with up to 6 decimals, at least 3: `1.000`, `0.033367`.
pub(crate) fn secs(us: u64) -> String {
    let mut s = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    while s.ends_with('0') && s.len() - s.find('.').map_or(0, |d| d + 1) > 3 {
        s.pop();
    }
    s
}

/// An xs:duration in seconds: `PT1.5S`.
pub(crate) fn xs_duration(us: u64) -> String {
    format!("PT{}S", secs(us))
}

/// ISO 8601 / RFC 3339 UTC time with milliseconds, from Unix ms:
/// `2026-12-01T22:39:06.123Z` (also the body of the relay's clock URL).
pub fn iso8601(unix_ms: u64) -> String {
    let secs_total = unix_ms / 1000;
    let ms = unix_ms % 1000;
    let days = secs_total / 86_400;
    let rem = secs_total % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// An HTTP date (RFC 9110 §5.6.7, IMF-fixdate) from Unix ms:
/// `Tue, 01 Dec 2026 22:39:06 GMT` (for `Last-Modified`).
pub fn http_date(unix_ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs_total = unix_ms / 1000;
    let days = secs_total / 86_400;
    let rem = secs_total % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(m.clamp(1, 12) - 1) as usize],
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil for days since 1970-01-01 (non-negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Escape text for an XML attribute value.
pub(crate) fn xml_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

/// Make text fit an HLS quoted-string (no `"`, no CR/LF, no control chars).
pub(crate) fn hls_quoted(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(secs(1_000_000), "1.000");
        assert_eq!(secs(33_367), "0.033367");
        assert_eq!(secs(100_000), "0.100");
        assert!(!secs(u64::MAX).is_empty());
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_796_164_746_123), "2026-12-01T22:39:06.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(http_date(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            http_date(1_796_164_746_123),
            "Tue, 01 Dec 2026 22:39:06 GMT"
        );
        let _ = http_date(u64::MAX);
        let _ = iso8601(u64::MAX);
        assert_eq!(xml_attr("a\"<&"), "a&quot;&lt;&amp;");
        assert_eq!(hls_quoted("av\"c1\n"), "avc1");
    }
}
