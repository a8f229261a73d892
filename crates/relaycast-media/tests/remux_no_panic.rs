//! Arbitrary bytes never panic the FLV, TS or RTP (WHIP) paths (and the muxer behind them).
use bytes::Bytes;
use proptest::prelude::*;
use relaycast_media::remux::cmaf::MuxerConfig;
use relaycast_media::remux::flv::FlvRemuxer;
use relaycast_media::remux::rtp::RtpRemuxer;
use relaycast_media::remux::ts::TsRemuxer;

mod remux_common;

/// Plausible tag headers so the fuzzer reaches the codec paths, not only "unsupported".
fn tag_body() -> impl Strategy<Value = Vec<u8>> {
    let heads = prop::sample::select(vec![
        vec![0x17, 0],
        vec![0x17, 1],
        vec![0x27, 1],
        vec![0x1c, 0],
        vec![0x90, b'h', b'v', b'c', b'1'],
        vec![0x91, b'h', b'v', b'c', b'1'],
        vec![0x80, b'a', b'v', b'0', b'1'],
        vec![0x93, b'a', b'v', b'0', b'1'],
        vec![0x80, b'v', b'p', b'0', b'9'],
        vec![0xaf, 0],
        vec![0xaf, 1],
        vec![0x2f],
        vec![0x90, b'O', b'p', b'u', b's'],
        vec![0x91, b'O', b'p', b'u', b's'],
        vec![0x91, b'.', b'm', b'p', b'3'],
        vec![],
    ]);
    (heads, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(mut h, t)| {
        h.extend(t);
        h
    })
}

/// Plausible VP9 (key frame with its sync code, inter) and AV1 (temporal
/// delimiter, sequence header, frame OBU) starts, so the fuzzer reaches the
/// header parsers, then random bytes; sometimes a superframe-index-like end.
fn rtp_frame() -> impl Strategy<Value = Vec<u8>> {
    let heads = prop::sample::select(vec![
        vec![0x82, 0x49, 0x83, 0x42],
        vec![0x92, 0x49, 0x83, 0x42],
        vec![0xa2, 0x49, 0x83, 0x42],
        vec![0x86],
        vec![0x12, 0x00, 0x0a],
        vec![0x0a],
        vec![0x32],
        vec![0x12, 0x00, 0x32],
        vec![],
    ]);
    let tails = prop::sample::select(vec![vec![], vec![0xc1, 1, 2, 0xc1], vec![0xd9]]);
    (heads, prop::collection::vec(any::<u8>(), 0..64), tails).prop_map(|(mut h, t, e)| {
        h.extend(t);
        h.extend(e);
        h
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn rtp_vp9_and_av1_never_panic(frames in prop::collection::vec((any::<bool>(), any::<i64>(), rtp_frame()), 0..40)) {
        let mut m = RtpRemuxer::new(MuxerConfig::default(), true, false);
        for (av1, time, frame) in frames {
            if av1 {
                let _ = m.push_av1(time, 0, &frame);
            } else {
                let _ = m.push_vp9(time, 0, Bytes::from(frame));
            }
            while m.poll().is_some() {}
        }
        m.finish();
        while m.poll().is_some() {}
    }

    #[test]
    fn flv_never_panics(tags in prop::collection::vec((prop::sample::select(vec![8u8, 9, 18, 0]), any::<u32>(), tag_body()), 0..40)) {
        let mut m = FlvRemuxer::new(MuxerConfig::default());
        for (t, ts, body) in tags {
            let _ = m.push_tag(t, ts, Bytes::from(body));
            while m.poll().is_some() {}
        }
        m.finish();
        while m.poll().is_some() {}
    }

    #[test]
    fn ts_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 0..12), sync in any::<bool>()) {
        let mut m = TsRemuxer::default();
        for mut c in chunks {
            if sync && !c.is_empty() { c[0] = 0x47; }
            m.push(&c);
            while m.poll().is_some() {}
        }
        m.finish();
        while m.poll().is_some() {}
    }
}

/// Real streams with random bytes flipped: deeper coverage than random input.
#[test]
fn mutated_real_streams_never_panic() {
    if !remux_common::have_ffmpeg() {
        eprintln!("ffmpeg missing: skipped");
        return;
    }
    let codec = ["-c:v", "libx264", "-g", "10", "-c:a", "aac", "-f"];
    let read = |path: std::path::PathBuf| std::fs::read(path).expect("ffmpeg's output");
    let flv = read(remux_common::make(
        "np.flv",
        1,
        &[&codec[..], &["flv"]].concat(),
    ));
    let ts = read(remux_common::make(
        "np.ts",
        1,
        &[&codec[..], &["mpegts"]].concat(),
    ));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut f = flv.clone();
        let mut t = ts.clone();
        for _ in 0..(rnd() % 20 + 1) {
            let i = (rnd() as usize) % f.len();
            f[i] = rnd() as u8;
            let j = (rnd() as usize) % t.len();
            t[j] = rnd() as u8;
        }
        let file = Bytes::from(f);
        let (_, _, tags) = relaycast_media::remux::flv::file_tags(&file);
        let mut m = FlvRemuxer::new(MuxerConfig::default());
        for (ty, ts_ms, body) in tags {
            let _ = m.push_tag(ty, ts_ms, body);
        }
        m.finish();
        while m.poll().is_some() {}
        let mut m = TsRemuxer::default();
        for c in t.chunks((rnd() % 2000 + 1) as usize) {
            m.push(c);
        }
        m.finish();
        while m.poll().is_some() {}
    }
}
