//! LL-HLS viewers (`--transport hls`): each client does what a low-latency
//! HLS player does (hls.js in low-latency mode, AVPlayer) on one keep-alive
//! HTTP/1.1 connection: it loads `index.m3u8`, the init segment it maps and
//! the newest part, then loops on a blocking playlist reload for the next
//! part (`_HLS_msn` / `_HLS_part`, RFC 8216bis §6.2.5.2) and GETs every part
//! the answer lists that it does not have yet. The parts go through the same
//! [`ViewerCheck`] as every other transport (seq continuity, delivery
//! latency from the publisher's send time to the part received whole).
//!
//! One figure is its own: the *playlist answer* latency, from the
//! publisher's send time of the newest part a blocking reload lists to the
//! arrival of that playlist (what the blocking reload adds before a player
//! can even ask for the part), recorded by [`ViewerCheck::mark_playlist`].
//!
//! The playlist is read only as far as a player must: `EXT-X-MEDIA-SEQUENCE`,
//! segment lines, `EXT-X-PART` and `EXT-X-MAP` URIs (which name the relay's
//! seq: `{epoch}/part/{seq}.m4s`). A hand-written reader: the `m3u8-rs`
//! crate parses whole playlists into owned structures, more than a load
//! client needing a few numbers per answer should pay for 10,000 times.

use super::{ViewerCheck, http_get, request};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::io;

/// What a client needs from one media playlist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Playlist {
    /// `EXT-X-MAP` URI.
    pub map: Option<String>,
    /// Every `EXT-X-PART` URI with the seq it names, in order.
    pub parts: Vec<(u64, String)>,
    /// The segment still open (its MSN) and the parts it has: the next part
    /// is `_HLS_msn=open_msn&_HLS_part=open_parts`.
    pub open_msn: u64,
    /// Parts listed in the open segment.
    pub open_parts: u64,
}

/// The seq a part URI names (`…/part/{seq}.m4s[?query]`).
fn part_seq(uri: &str) -> Option<u64> {
    let path = uri.split('?').next()?;
    let (rest, file) = path.rsplit_once('/')?;
    if !rest.ends_with("part") {
        return None;
    }
    file.strip_suffix(".m4s")?.parse().ok()
}

fn uri_attr(line: &str) -> Option<String> {
    let v = line.split("URI=\"").nth(1)?;
    Some(v.split('"').next()?.to_string())
}

/// Read a media playlist (see the module docs). `None` when it has no
/// `EXT-X-MEDIA-SEQUENCE` (not a media playlist).
pub fn parse(text: &str) -> Option<Playlist> {
    let mut p = Playlist::default();
    let mut msn: Option<u64> = None;
    let mut done_segments = 0u64;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.trim().parse().ok();
        } else if line.starts_with("#EXT-X-MAP:") {
            p.map = uri_attr(line);
        } else if line.starts_with("#EXT-X-PART:") {
            if let Some(uri) = uri_attr(line)
                && let Some(seq) = part_seq(&uri)
            {
                p.parts.push((seq, uri));
            }
            p.open_parts += 1;
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            // A segment URI closes a segment: its parts were listed before it.
            done_segments += 1;
            p.open_parts = 0;
        }
    }
    p.open_msn = msn? + done_segments;
    Some(p)
}

/// The directory of a playlist URL (what its relative URIs resolve against).
fn base_of(url: &str) -> &str {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit_once('/').map_or(path, |(dir, _)| dir)
}

/// GET `url` on `send`; the body of a 2xx answer, or the status as an error.
async fn fetch(
    send: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    url: &str,
) -> io::Result<Result<Bytes, u16>> {
    send.ready().await.map_err(io::Error::other)?;
    let resp = send
        .send_request(request(url)?)
        .await
        .map_err(io::Error::other)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    Ok(if status.is_success() {
        Ok(body)
    } else {
        Err(status.as_u16())
    })
}

/// One LL-HLS client on the playlist at `url` until the connection fails.
pub async fn view(
    url: &str,
    check: &mut ViewerCheck,
    joined: &mut impl FnMut(bool),
) -> io::Result<()> {
    let base = base_of(url).to_string();
    let sep = if url.contains('?') { '&' } else { '?' };
    // Join: the playlist (waiting for the stream), its init, the newest part.
    let start = async {
        let mut send = http_get(url).await?;
        let text = fetch(&mut send, &format!("{url}{sep}wait=10"))
            .await?
            .map_err(|s| io::Error::other(format!("playlist: status {s}")))?;
        let pl = parse(&String::from_utf8_lossy(&text))
            .ok_or_else(|| io::Error::other("not a media playlist"))?;
        let map = pl
            .map
            .as_ref()
            .ok_or_else(|| io::Error::other("playlist without EXT-X-MAP"))?;
        let init = fetch(&mut send, &format!("{base}/{map}"))
            .await?
            .map_err(|s| io::Error::other(format!("init: status {s}")))?;
        Ok::<_, io::Error>((send, pl, init))
    };
    let (mut send, mut pl, init) = match start.await {
        Ok(s) => s,
        Err(e) => {
            joined(false);
            return Err(e);
        }
    };
    joined(true);
    check.bytes(&init);
    let mut have = pl.parts.last().map(|(seq, _)| seq.saturating_sub(1));
    loop {
        let newest = pl.parts.last().map(|(seq, _)| *seq);
        for (seq, uri) in &pl.parts {
            if have.is_some_and(|h| *seq <= h) {
                continue;
            }
            match fetch(&mut send, &format!("{base}/{uri}")).await? {
                Ok(part) => check.bytes(&part),
                // Left the window before we got to it: the next one.
                Err(404) => {}
                Err(s) => return Err(io::Error::other(format!("part {seq}: status {s}"))),
            }
            have = Some(*seq);
        }
        if have.is_none() {
            have = newest;
        }
        let reload = format!(
            "{url}{sep}_HLS_msn={}&_HLS_part={}",
            pl.open_msn, pl.open_parts
        );
        let text = match fetch(&mut send, &reload).await? {
            Ok(t) => t,
            // 503: nothing came within three target durations; 400: asked
            // too far ahead (a new segment started): reload plainly.
            Err(503 | 400) => match fetch(&mut send, url).await? {
                Ok(t) => t,
                Err(s) => return Err(io::Error::other(format!("playlist: status {s}"))),
            },
            Err(s) => return Err(io::Error::other(format!("playlist: status {s}"))),
        };
        let answered = super::synth::now_ns();
        pl = parse(&String::from_utf8_lossy(&text))
            .ok_or_else(|| io::Error::other("not a media playlist"))?;
        // The newest part this answer lists: its send time against the
        // answer's arrival is the playlist answer latency.
        if let Some((seq, _)) = pl.parts.last()
            && have.is_none_or(|h| *seq > h)
        {
            check.mark_playlist(*seq, answered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_client_needs() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:4\n\
            #EXT-X-MAP:URI=\"7/init/1.mp4\"\n\
            #EXT-X-PART:DURATION=0.1,URI=\"7/part/40.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.1,URI=\"7/part/41.m4s\"\n#EXTINF:1.0,\n7/seg/4.m4s\n\
            #EXT-X-PART:DURATION=0.1,URI=\"7/part/50.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.1,URI=\"7/part/51.m4s?exp=1&sig=x\"\n\
            #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"7/part/52.m4s\"\n";
        let p = parse(text).expect("media playlist");
        assert_eq!(p.map.as_deref(), Some("7/init/1.mp4"));
        assert_eq!(
            p.parts.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [40, 41, 50, 51]
        );
        assert_eq!((p.open_msn, p.open_parts), (5, 2));
        assert_eq!(parse("#EXTM3U\n"), None);
        assert_eq!(
            base_of("http://h/live/x/index.m3u8?wait=1"),
            "http://h/live/x"
        );
    }
}
