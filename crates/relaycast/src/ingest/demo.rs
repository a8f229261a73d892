//! The built-in `demo` stream: the embedded clip looped forever at real
//! time (see [`media::demo`](crate::media::demo)), published like any other
//! stream so every transport and the player work out of the box.

use crate::fanout::Registry;
use crate::media::demo::Demo;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Publish the demo clip as `name` until `shutdown`.
pub async fn run(registry: Registry, name: String, shutdown: CancellationToken) {
    let demo = match Demo::load() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the embedded demo clip does not parse");
            return;
        }
    };
    let publisher = loop {
        match registry.publish(&name) {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(error = %e, "demo stream: cannot publish yet");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    if let Err(e) = publisher.push_init(demo.init().clone()) {
        tracing::error!(error = %e, "demo stream init");
        return;
    }
    let start = Instant::now();
    for n in 0u64.. {
        let (frag, due_us) = demo.fragment(n);
        // A live encoder finishes a fragment at its end: send it then.
        let due = start + Duration::from_micros(due_us + frag.duration_us());
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = publisher.push_fragment(frag) {
            tracing::warn!(error = %e, "demo stream stopped");
            return;
        }
    }
}
