//! Over real sockets: a WebSocket viewer that stops reading (its TCP buffers
//! fill up) slows neither the publisher nor a fast viewer, which still gets
//! every fragment in order; when the stalled viewer reads again it is moved
//! to a keyframe with the skip reported, or closed for lagging (4008).

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_socket_slows_neither_the_publisher_nor_a_fast_viewer() {
    let mut c = config();
    c.fanout.ring.max_fragments = 120;
    c.fanout.lag.max_skips = 1000; // count skips here rather than disconnect
    let relay = relay(c).await;
    let base = format!("127.0.0.1:{}", relay.addr.port());
    let before = relaycast::egress::websocket::writer_counts();
    // 60 loops: 27 MB, more than the loopback socket buffers hold.
    let (body, fragments) = demo_stream(60);

    let mut stalled = ws_connect(&format!("ws://{base}/live/s?wait=10")).await;
    let mut fast = ws_connect(&format!("ws://{base}/live/s?wait=10")).await;
    let fast_reader = tokio::spawn(async move {
        let got = ws_read(&mut fast, fragments, Duration::from_secs(60)).await;
        (fast, got)
    });
    let (status, summary) = put_chunked(
        &format!("http://{base}/publish/s"),
        body.clone(),
        64 << 10,
        Duration::from_millis(1),
    )
    .await;
    assert_eq!(status, 200, "publisher: {summary}");
    let v: serde_json::Value = serde_json::from_str(&summary).expect("JSON summary");
    assert_eq!(v["fragments"].as_u64(), Some(fragments as u64), "{v}");

    let (_fast, got) = fast_reader.await.expect("fast viewer");
    assert_eq!(
        got.seqs.len(),
        fragments,
        "the fast viewer got every fragment"
    );
    assert!(
        got.seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gap"
    );
    assert!(
        got.of_type("skip").is_empty(),
        "the fast viewer never skipped"
    );
    assert!(
        got.bytes == body,
        "byte for byte: init, then every fragment"
    );

    // The stalled viewer now reads: it skipped ahead (or was closed for
    // lagging), and it never received everything.
    let late = ws_read(&mut stalled, usize::MAX, Duration::from_secs(20)).await;
    let skipped = !late.of_type("skip").is_empty();
    let lagged = late.close.as_ref().is_some_and(|c| c.0 == 4008);
    assert!(
        skipped || lagged,
        "stalled viewer: {} fragments, close {:?}",
        late.seqs.len(),
        late.close
    );
    assert!(late.seqs.len() < fragments);
    assert!(late.seqs.windows(2).all(|w| w[1] > w[0]), "never backwards");
    // The fan-out writer gave the stalled viewer back to its own task when
    // its socket was full (it never blocked on it: the fast viewer above).
    let after = relaycast::egress::websocket::writer_counts();
    assert!(
        after.handbacks[0] > before.handbacks[0],
        "given back when full: {before:?} → {after:?}"
    );
    relay.shutdown().await;
}
