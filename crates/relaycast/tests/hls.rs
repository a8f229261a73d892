//! LL-HLS, HLS and DASH over real sockets: the playlist and the files it
//! names against what was published, blocking reloads woken by a new part,
//! the RFC's 400 and 503, 404 after eviction, caching headers, signed URLs
//! carried to every URI, and ffprobe decoding `index.m3u8` and
//! `manifest.mpd` of a live ffmpeg publish.

mod common;

use bytes::Bytes;
use common::{
    config, ffmpeg_live, ffprobe_video_frames, fixture, get, get_with, have, relay, split,
};
use relaycast::fanout::Publisher;
use relaycast::media::Fragment;
use std::time::Duration;

/// A publisher fed by hand: the fixture's real init segment, then fragments
/// of `part_ms` with a keyframe every `gop` of them. The fragment bytes are
/// distinct per seq, so a body can be checked byte for byte.
struct Feed {
    publisher: Publisher,
    n: u64,
    gop: u64,
    part_ms: u64,
    sent: Vec<Bytes>,
}

impl Feed {
    fn new(relay: &relaycast::server::Running, name: &str, gop: u64, part_ms: u64) -> Feed {
        let publisher = relay.state.registry.publish(name).expect("publish");
        let (init, _) = split(&fixture("h264_aac_keyframe.mp4"));
        publisher.push_init(init).expect("init");
        Feed {
            publisher,
            n: 0,
            gop,
            part_ms,
            sent: Vec::new(),
        }
    }

    fn push(&mut self, count: u64) {
        for _ in 0..count {
            let n = self.n;
            let bytes = Bytes::from(format!("fragment {n} ").repeat(20));
            self.sent.push(bytes.clone());
            self.publisher
                .push_fragment(Fragment {
                    index: n,
                    keyframe: n % self.gop == 0,
                    decode_time: n * self.part_ms,
                    duration: self.part_ms,
                    timescale: 1000,
                    mfhd_seq: n as u32 + 1,
                    bytes,
                })
                .expect("push");
            self.n += 1;
        }
    }
}

fn tag<'a>(playlist: &'a str, name: &str) -> Option<&'a str> {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
}

/// Last `EXT-X-PART` URI of a playlist.
fn last_part(playlist: &str) -> String {
    playlist
        .lines()
        .rfind(|l| l.starts_with("#EXT-X-PART:"))
        .and_then(|l| l.split("URI=\"").nth(1))
        .and_then(|u| u.split('"').next())
        .expect("a part")
        .to_string()
}

#[tokio::test]
async fn playlist_files_and_blocking_reloads() {
    let relay = relay(config()).await;
    let base = format!("http://{}/live/cam", relay.addr);
    let mut feed = Feed::new(&relay, "cam", 10, 100);
    feed.push(25); // segments 0 and 1 complete (1 s each), segment 2 open with 5 parts
    let epoch = relay.state.registry.get("cam").expect("stream").epoch();

    let (status, h, body) = get(&format!("{base}/index.m3u8")).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(h["cache-control"], "public, max-age=1");
    assert!(h.contains_key("etag") && h.contains_key("last-modified"));
    let pl = String::from_utf8(body.to_vec()).expect("utf-8");
    assert_eq!(tag(&pl, "#EXT-X-TARGETDURATION"), Some("1"), "{pl}");
    assert_eq!(tag(&pl, "#EXT-X-MEDIA-SEQUENCE"), Some("0"), "{pl}");
    assert_eq!(
        tag(&pl, "#EXT-X-PART-INF"),
        Some("PART-TARGET=0.100"),
        "{pl}"
    );
    assert!(pl.contains("CAN-BLOCK-RELOAD=YES"), "{pl}");
    assert!(
        pl.contains(&format!("#EXT-X-MAP:URI=\"{epoch}/init/1.mp4\"")),
        "{pl}"
    );
    assert!(pl.contains(&format!("\n{epoch}/seg/1.m4s\n")), "{pl}");
    assert_eq!(last_part(&pl), format!("{epoch}/part/24.m4s"), "{pl}");
    assert!(
        pl.contains(&format!(
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{epoch}/part/25.m4s\""
        )),
        "{pl}"
    );

    // Files: a part is the stored fragment; a segment its fragments in order.
    let (status, h, part) = get(&format!("{base}/{epoch}/part/24.m4s")).await;
    assert_eq!(status, 200);
    assert_eq!(part, feed.sent[24]);
    assert_eq!(h["cache-control"], "public, max-age=86400, immutable");
    let etag = h["etag"].to_str().expect("etag").to_string();
    let (status, h, seg) = get(&format!("{base}/{epoch}/seg/1.m4s")).await;
    assert_eq!(status, 200);
    assert_eq!(seg, feed.sent[10..20].concat());
    assert_eq!(h["content-length"], seg.len().to_string().as_str());
    let (status, _, init) = get(&format!("{base}/{epoch}/init/1.mp4")).await;
    assert_eq!(status, 200);
    assert_eq!(init, split(&fixture("h264_aac_keyframe.mp4")).0.bytes);
    // Revalidation: the same entity is a 304 without a body.
    let r = get_with(
        &format!("{base}/{epoch}/part/24.m4s"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(r.0, 304);
    assert!(r.2.is_empty());
    // Another epoch, an unknown kind, a segment too far ahead: 404.
    for bad in [
        format!("{base}/{}/part/24.m4s", epoch + 1),
        format!("{base}/{epoch}/nope/1.m4s"),
        format!("{base}/{epoch}/seg/9.m4s"),
    ] {
        let (status, _, body) = get(&bad).await;
        assert_eq!(status, 404, "{bad}: {body:?}");
        assert!(body.starts_with(b"{\"error\""), "{bad}: {body:?}");
    }

    // A blocking reload for the next part is answered once that part exists,
    // and the answer holds it.
    let url = format!("{base}/index.m3u8?_HLS_msn=2&_HLS_part=5");
    let waiting = tokio::spawn(async move { get(&url).await });
    tokio::task::yield_now().await;
    let hinted = tokio::spawn({
        let url = format!("{base}/{epoch}/part/25.m4s");
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    feed.push(1);
    let (status, h, body) = waiting.await.expect("join");
    assert_eq!(status, 200);
    assert_eq!(h["cache-control"], "public, max-age=6");
    let pl = String::from_utf8(body.to_vec()).expect("utf-8");
    assert_eq!(last_part(&pl), format!("{epoch}/part/25.m4s"), "{pl}");
    // The preload-hinted part was requested before it existed.
    let (status, _, part) = hinted.await.expect("join");
    assert_eq!(status, 200);
    assert_eq!(part, feed.sent[25]);

    // Too far ahead: 400 at once (RFC 8216bis 6.2.5.2), and bad directives.
    for q in ["_HLS_msn=5", "_HLS_part=1", "_HLS_msn=x", "_HLS_skip=NO"] {
        let (status, _, body) = get(&format!("{base}/index.m3u8?{q}")).await;
        assert_eq!(status, 400, "{q}: {body:?}");
    }
    // Nothing comes: 503 after three target durations.
    let (status, h, body) = get(&format!("{base}/index.m3u8?_HLS_msn=2&_HLS_part=7")).await;
    assert_eq!(status, 503, "{body:?}");
    assert!(h.contains_key("retry-after"));

    // Eviction: a segment that left the ring is a 404, never other bytes.
    feed.push(800);
    let (status, _, _) = get(&format!("{base}/{epoch}/seg/0.m4s")).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(&format!("{base}/{epoch}/part/3.m4s")).await;
    assert_eq!(status, 404);
    let (status, _, body) = get(&format!("{base}/index.m3u8")).await;
    assert_eq!(status, 200);
    let pl = String::from_utf8(body.to_vec()).expect("utf-8");
    let first: u64 = tag(&pl, "#EXT-X-MEDIA-SEQUENCE")
        .and_then(|v| v.parse().ok())
        .expect("media sequence");
    assert!(first > 0, "{pl}");
    // The window still holds at least three target durations.
    let listed: f64 = pl
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|v| v.trim_end_matches(',').parse::<f64>().ok())
        .sum();
    assert!(listed >= 3.0, "{pl}");
    let (status, _, seg) = get(&format!("{base}/{epoch}/seg/{first}.m4s")).await;
    assert_eq!(status, 200);
    let from = (first * 10) as usize;
    assert_eq!(seg, feed.sent[from..from + 10].concat());
    relay.shutdown().await;
}

#[tokio::test]
async fn multivariant_and_mpd_describe_the_stream() {
    let relay = relay(config()).await;
    let base = format!("http://{}/live/cam", relay.addr);
    let mut feed = Feed::new(&relay, "cam", 10, 100);
    feed.push(35);
    let epoch = relay.state.registry.get("cam").expect("stream").epoch();
    let (status, _, body) = get(&format!("{base}/master.m3u8")).await;
    assert_eq!(status, 200);
    let m = String::from_utf8(body.to_vec()).expect("utf-8");
    // 20 × 20 bytes per 100 ms fragment ≈ 32 kbit/s.
    let inf = tag(&m, "#EXT-X-STREAM-INF").expect("stream-inf");
    assert!(inf.contains("CODECS=\"avc1.64000d,mp4a.40.2\""), "{m}");
    let bw: u64 = inf
        .split(',')
        .find_map(|kv| kv.strip_prefix("BANDWIDTH="))
        .and_then(|v| v.parse().ok())
        .expect("bandwidth");
    let per_frag = feed.sent[0].len() as u64 * 8 * 10;
    assert!(
        bw >= per_frag && bw <= per_frag * 2,
        "{bw} vs {per_frag}: {m}"
    );
    assert!(m.trim_end().ends_with("index.m3u8"), "{m}");

    let (status, h, body) = get(&format!("{base}/manifest.mpd")).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "application/dash+xml");
    let mpd = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(mpd.contains("type=\"dynamic\""), "{mpd}");
    assert!(
        mpd.contains(&format!("media=\"{epoch}/seg/$Number$.m4s\"")),
        "{mpd}"
    );
    assert!(mpd.contains("/api/time"), "{mpd}");
    let (status, _, t) = get(&format!("http://{}/api/time", relay.addr)).await;
    assert_eq!(status, 200);
    assert!(t.ends_with(b"Z") && t.len() == 24, "{t:?}");

    // DASH asks for the open segment early: it streams as parts arrive.
    let url = format!("{base}/{epoch}/seg/3.m4s");
    let open = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    feed.push(6); // completes segment 3 (seqs 30..40) and opens 4
    let (status, _, seg) = open.await.expect("join");
    assert_eq!(status, 200);
    assert_eq!(seg, feed.sent[30..40].concat());
    relay.shutdown().await;
}

#[tokio::test]
async fn signed_urls_carry_over_to_every_uri() {
    let mut c = config();
    c.auth.view_secret = Some("hush".into());
    let relay = relay(c).await;
    let mut feed = Feed::new(&relay, "cam", 10, 100);
    feed.push(25);
    let base = format!("http://{}/live/cam", relay.addr);
    let (status, _, _) = get(&format!("{base}/index.m3u8")).await;
    assert_eq!(status, 403);
    let q = format!(
        "?{}",
        relaycast::auth::signed_query("hush", "cam", Duration::from_secs(600))
    );
    let (status, _, body) = get(&format!("{base}/index.m3u8{q}")).await;
    assert_eq!(status, 200, "{body:?}");
    let pl = String::from_utf8(body.to_vec()).expect("utf-8");
    let uris: Vec<&str> = pl
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .chain(
            pl.split("URI=\"")
                .skip(1)
                .filter_map(|s| s.split('"').next()),
        )
        .collect();
    assert!(uris.len() > 10, "{pl}");
    for uri in uris {
        assert!(uri.ends_with(&q), "{uri}");
        // (The preload hint does not exist yet: not fetched.)
        if !pl.contains(&format!("PRELOAD-HINT:TYPE=PART,URI=\"{uri}\"")) {
            let (status, _, _) = get(&format!("{base}/{uri}")).await;
            assert_eq!(status, 200, "{uri}");
        }
        let unsigned = uri.split('?').next().expect("path");
        let (status, _, _) = get(&format!("{base}/{unsigned}")).await;
        assert_eq!(status, 403, "{unsigned}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn ffprobe_decodes_hls_and_dash_of_a_live_publish() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let relay = relay(config()).await;
    let base = format!("http://{}", relay.addr);
    // 100 ms fragments, 1 s GOPs: the LL-HLS shape.
    let mut ffmpeg = ffmpeg_live(
        12,
        &format!("{base}/publish/cam"),
        &[
            "-frag_duration",
            "100000",
            "-method",
            "PUT",
            "-chunked_post",
            "1",
        ],
    )
    .spawn()
    .expect("spawn ffmpeg");
    // ffmpeg 5.1's DASH demuxer reads a muxed audio+video Representation
    // with NAL-size complaints and fewer frames (the same segments decode
    // cleanly as HLS and as files): it must find both streams and decode.
    for (path, min_frames) in [("index.m3u8", 30), ("manifest.mpd", 10)] {
        let url = format!("{base}/live/cam/{path}?wait=10");
        let (codecs, frames) = ffprobe_video_frames(&url).await;
        assert_eq!(codecs, ["h264", "aac"], "{path}");
        assert!(frames >= min_frames, "{path}: {frames} video frames");
    }
    let _ = ffmpeg.kill().await;
    relay.shutdown().await;
}

/// cvlc on `url` for `secs` seconds (stopped with SIGINT, as a user would),
/// remuxing what it plays to a TS file; returns the video frames ffprobe
/// counts in it. VLC refuses to run as root: as root it runs as `nobody`.
async fn vlc_frames(url: &str, secs: u32, tag: &str) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let out = home.join(format!("{tag}.ts"));
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if is_root {
        let _ = std::process::Command::new("chmod")
            .args(["777", &home.display().to_string()])
            .status();
    }
    let sout = format!("#std{{access=file,mux=ts,dst={}}}", out.display());
    let mut cmd = tokio::process::Command::new("timeout");
    cmd.args(["-s", "INT", &secs.to_string()]);
    if is_root {
        cmd.args(["runuser", "-u", "nobody", "--"]);
    }
    cmd.arg("env")
        .arg(format!("HOME={}", home.display()))
        .args(["cvlc", "--no-video-title-show", url, "--sout", &sout])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let log = tokio::time::timeout(Duration::from_secs(secs as u64 + 10), cmd.output())
        .await
        .ok()
        .and_then(|o| o.ok())
        .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
        .unwrap_or_default();
    let probe = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&out)
        .output()
        .await
        .expect("ffprobe runs");
    // A TS file lists its streams twice (under the program and alone).
    let frames = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0);
    if frames == 0 {
        let files: Vec<_> = std::fs::read_dir(home)
            .map(|d| {
                d.flatten()
                    .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).ok()))
                    .collect()
            })
            .unwrap_or_default();
        eprintln!(
            "VLC on {url}:\n{log}\nfiles: {files:?}\nffprobe: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
    }
    frames
}

/// VLC 3 joins `/live/NAME.mp4` mid-stream (the first fragment's `mfhd`
/// sequence number and decode time are far from zero) and plays the HLS URL.
#[tokio::test]
async fn vlc_joins_mid_stream_and_plays_hls() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    if std::process::Command::new("cvlc")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("RELAYCAST_REQUIRE_VLC").as_deref() == Ok("1") {
            panic!("cvlc is required (RELAYCAST_REQUIRE_VLC=1) but does not run");
        }
        eprintln!("skipping: cvlc not found");
        return;
    }
    let relay = relay(config()).await;
    let base = format!("http://{}", relay.addr);
    let mut ffmpeg = ffmpeg_live(
        20,
        &format!("{base}/publish/cam"),
        &["-frag_duration", "200000", "-method", "PUT"],
    )
    .spawn()
    .expect("spawn ffmpeg");
    // Join well after the start: the stream's timestamps and mfhd numbers
    // are far from zero by then.
    let _ = get(&format!("{base}/live/cam/info?wait=10")).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (mp4_url, hls_url) = (
        format!("{base}/live/cam.mp4"),
        format!("{base}/live/cam/index.m3u8"),
    );
    let (mp4, hls) = tokio::join!(
        vlc_frames(&mp4_url, 7, "mp4"),
        vlc_frames(&hls_url, 7, "hls"),
    );
    let _ = ffmpeg.kill().await;
    relay.shutdown().await;
    assert!(mp4 >= 60, "VLC remuxed {mp4} video frames of /live/cam.mp4");
    assert!(hls >= 30, "VLC remuxed {hls} video frames of index.m3u8");
}

/// nginx (`proxy_cache` + `proxy_cache_lock`) in front of the relay, as a
/// CDN would be: 100 LL-HLS clients (blocking reload for the next part, then
/// the part) through it cause about one origin request per part and per
/// playlist version, and every client gets every part.
#[tokio::test]
async fn nginx_cache_in_front_coalesces_100_llhls_clients() {
    let nginx = "/usr/sbin/nginx";
    if !std::path::Path::new(nginx).exists() {
        if std::env::var("RELAYCAST_REQUIRE_FFMPEG").as_deref() == Ok("1") {
            panic!("nginx is required in CI (apt nginx) but {nginx} is missing");
        }
        eprintln!("skipping: nginx not installed");
        return;
    }
    let relay = relay(config()).await;
    let mut feed = Feed::new(&relay, "cam", 10, 100);
    feed.push(25);
    let epoch = relay.state.registry.get("cam").expect("stream").epoch();

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let conf = format!(
        r#"
# One process (no workers), so that killing it leaves nothing behind.
master_process off;
daemon off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  log_format origin '$upstream_cache_status $request_uri';
  access_log {d}/access.log origin;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  proxy_cache_path {d}/cache levels=1:2 keys_zone=hls:10m max_size=100m inactive=1m;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://{relay};
      proxy_http_version 1.1;
      proxy_cache hls;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10s;
      proxy_cache_valid 200 1s;
    }}
  }}
}}
"#,
        relay = relay.addr
    );
    // Bind-then-release of nginx's port: nginx cannot take a listening socket.
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write conf");
    let mut proc = tokio::process::Command::new(nginx)
        .args(["-p", &d, "-c", &conf_path.display().to_string()])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn nginx");
    let edge = format!("http://127.0.0.1:{port}/live/cam");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up,
        "nginx did not start: {:?}",
        std::fs::read_to_string(dir.path().join("error.log"))
    );

    // The publisher: a part every 100 ms for 2 s.
    let publisher = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            feed.push(1);
        }
        feed
    });
    const CLIENTS: usize = 100;
    const PARTS: u64 = 12;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let edge = edge.clone();
        clients.push(tokio::spawn(async move {
            let mut got = Vec::new();
            // Segment 2 holds seqs 20..30; 3 holds 30..40; 4 holds 40..
            for seq in 25..25 + PARTS {
                let (msn, part) = (seq / 10, seq % 10);
                let (status, _, body) = get(&format!(
                    "{edge}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}"
                ))
                .await;
                assert_eq!(status, 200, "{body:?}");
                let pl = String::from_utf8_lossy(&body).to_string();
                let uri = format!("{epoch}/part/{seq}.m4s");
                assert!(pl.contains(&uri), "{uri} not in {pl}");
                let (status, _, part) = get(&format!("{edge}/{uri}")).await;
                assert_eq!(status, 200);
                got.push(part);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.expect("client"));
    }
    let feed = publisher.await.expect("publisher");
    for got in &all {
        assert_eq!(got, &feed.sent[25..25 + PARTS as usize]);
    }
    let _ = proc.kill().await;
    let log = std::fs::read_to_string(dir.path().join("access.log")).expect("access log");
    let origin = |f: &dyn Fn(&str) -> bool| {
        log.lines()
            .filter(|l| !l.starts_with("HIT") && f(l))
            .count()
    };
    let parts = origin(&|l| l.contains("/part/"));
    let playlists = origin(&|l| l.contains("index.m3u8"));
    let total = log.lines().count();
    println!(
        "{total} requests through nginx from {CLIENTS} clients; origin: {parts} part requests for {PARTS} parts, {playlists} playlist requests for {PARTS} blocking versions"
    );
    assert_eq!(total, CLIENTS * PARTS as usize * 2, "{log}");
    assert!(
        parts <= PARTS as usize * 3,
        "{parts} origin part requests:\n{log}"
    );
    assert!(
        playlists <= PARTS as usize * 3,
        "{playlists} origin playlist requests:\n{log}"
    );
    relay.shutdown().await;
}

/// mpv plays `index.m3u8` of a live publish: it decodes 60 video frames and
/// exits cleanly (rc 2 and "Errors when loading file" otherwise).
#[tokio::test]
async fn mpv_plays_hls() {
    if !have("ffmpeg") {
        return;
    }
    if std::process::Command::new("mpv")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("RELAYCAST_REQUIRE_VLC").as_deref() == Ok("1") {
            panic!("mpv is required (RELAYCAST_REQUIRE_VLC=1) but does not run");
        }
        eprintln!("skipping: mpv not found");
        return;
    }
    let relay = relay(config()).await;
    let base = format!("http://{}", relay.addr);
    let mut ffmpeg = ffmpeg_live(
        15,
        &format!("{base}/publish/cam"),
        &["-frag_duration", "100000", "-method", "PUT"],
    )
    .spawn()
    .expect("spawn ffmpeg");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("mpv")
            .args(["--no-config", "--vo=null", "--ao=null", "--frames=60"])
            .arg(format!("{base}/live/cam/index.m3u8?wait=10"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mpv finished")
    .expect("mpv runs");
    let _ = ffmpeg.kill().await;
    relay.shutdown().await;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mpv: {}\n{log}", out.status);
    assert!(!log.contains("Errors when loading file"), "{log}");
    assert!(log.contains("VO: [null]"), "no video decoded: {log}");
}
