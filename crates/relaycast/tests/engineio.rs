//! Engine.IO v4's heartbeat against a raw polling client (issue #12 item
//! 17), with short timings: the first PING one `pingInterval` after the
//! handshake, a client that answers stays, one that stops is dropped
//! `pingInterval + pingTimeout` after the handshake. (Lower bounds only,
//! plus a generous bound on "eventually": no timing claims.) What a client
//! may send on `/socket.io/` is tested in `ws_exact.rs`.

mod common;

use axum::response::IntoResponse;
use common::*;
use relaycast::egress::socketio::Heartbeat;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test]
async fn engine_io_heartbeat_timings() {
    let relay = relay(config()).await;
    // The relay's Socket.IO layer with short heartbeat timings, on its own port.
    let layer = relaycast::egress::socketio::layer_with(
        relay.state.clone(),
        Heartbeat {
            ping_interval: INTERVAL,
            ping_timeout: TIMEOUT,
        },
    );
    // Layered once (each `layer()` call makes an engine of its own, with its
    // own sessions), as the relay's router does for every path it has no route for.
    let not_found = tower::service_fn(|_req: axum::extract::Request| async {
        Ok::<_, std::convert::Infallible>(axum::http::StatusCode::NOT_FOUND.into_response())
    });
    let app = axum::Router::new().fallback_service(tower::Layer::layer(&layer, not_found));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(l, app).await });

    // The OPEN packet advertises the timings.
    let (_, _, body) = get(&format!("http://{base}/socket.io/?EIO=4&transport=polling")).await;
    let open: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&body).trim_start_matches('0')).expect("OPEN");
    assert_eq!(open["pingInterval"], 1000);
    assert_eq!(open["pingTimeout"], 1000);

    /// Poll until the first PING; the time it took after the handshake.
    async fn first_ping(base: &str, sid: &str, t0: Instant) -> Duration {
        loop {
            let (status, packets) = eio_poll(base, sid).await;
            assert_eq!(status, 200, "alive until the first PING: {packets:?}");
            if packets.iter().any(|p| p == "2") {
                return t0.elapsed();
            }
        }
    }
    let answering = async {
        let t0 = Instant::now();
        let sid = eio_handshake(&base).await;
        let first = first_ping(&base, &sid, t0).await;
        // Answer every PING for 4 intervals + timeouts.
        let until = Instant::now() + 2 * (INTERVAL + TIMEOUT);
        assert!(raw_post_ok(&base, &sid, "3").await);
        while Instant::now() < until {
            let (status, packets) = eio_poll(&base, &sid).await;
            assert_eq!(status, 200, "a client that answers PINGs stays");
            assert!(!packets.iter().any(|p| p == "1"), "not closed");
            if packets.iter().any(|p| p == "2") {
                assert!(raw_post_ok(&base, &sid, "3").await);
            }
        }
        first
    };
    let quiet = async {
        let sid = eio_handshake(&base).await;
        let t0 = Instant::now();
        let first = first_ping(&base, &sid, t0).await;
        // Never answer: dropped at interval + timeout after the handshake.
        let dropped = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let (status, packets) = eio_poll(&base, &sid).await;
                if status != 200 || packets.is_empty() || packets.iter().any(|p| p == "1") {
                    return t0.elapsed();
                }
            }
        })
        .await
        .expect("a quiet client is dropped");
        (first, dropped)
    };
    let (first_a, (first_b, dropped)) = tokio::join!(answering, quiet);
    let slack = Duration::from_millis(150);
    assert!(
        first_a + slack >= INTERVAL,
        "first PING after pingInterval, got {first_a:?}"
    );
    assert!(
        first_b + slack >= INTERVAL,
        "first PING after pingInterval, got {first_b:?}"
    );
    assert!(
        dropped + slack >= INTERVAL + TIMEOUT,
        "a quiet client is kept pingInterval + pingTimeout, dropped after {dropped:?}"
    );
    relay.shutdown().await;
}

/// A polling POST of `body` through a fresh connection; true on 200.
async fn raw_post_ok(base: &str, sid: &str, body: &str) -> bool {
    let addr: std::net::SocketAddr = base.parse().expect("addr");
    let head = eio_post(
        addr,
        sid,
        &format!("Content-Length: {}\r\n", body.len()),
        body.as_bytes(),
    )
    .await;
    head.starts_with("HTTP/1.1 200")
}
