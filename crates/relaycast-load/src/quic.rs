//! QUIC viewers for `relaycast load --transport quic`: each viewer is one
//! `relaycast/1` session on its own QUIC connection (as a player would open),
//! read with [`crate::quic::client`] exactly like `relaycast watch quic://…`.
//! Init and fragment payloads go to the shared [`ViewerCheck`], so seq
//! continuity, skips, delivery latency (from the embedded `prft` send time),
//! join time and Gbit/s are the same figures as for the other transports.
//!
//! Certificate pinning: the default watch URL is built from the relay's
//! `GET /api/quic` (`{"addr","fingerprint"}`), i.e.
//! `quic://ADDR/{stream}?fingerprint=HEX&wait=10`; a `--watch` URL is used as
//! given (add `?fingerprint=HEX` for a self-signed relay).
//!
//! Connections share client UDP sockets ([`Client`] endpoints), one per
//! [`VIEWERS_PER_ENDPOINT`] viewers, so that 10,000 viewers do not need 10,000
//! sockets and endpoint driver tasks; the relay sees one QUIC connection per
//! viewer either way.

use super::{ViewerCheck, http_get, request};
use parking_lot::Mutex;
use relaycast::quic::QuicUrl;
use relaycast::quic::client::{Client, WatchEvent, WatchOptions};
use relaycast::quic::code::DONE;
use std::net::SocketAddr;

/// Viewers whose connections share one client UDP socket.
pub const VIEWERS_PER_ENDPOINT: usize = 64;

/// The client endpoints, created as viewers need them.
static ENDPOINTS: Mutex<Vec<Client>> = Mutex::new(Vec::new());

/// The endpoint for viewer `id`.
fn endpoint(id: usize) -> std::io::Result<Client> {
    let want = id / VIEWERS_PER_ENDPOINT;
    let mut eps = ENDPOINTS.lock();
    while eps.len() <= want {
        eps.push(Client::new().map_err(std::io::Error::other)?);
    }
    Ok(eps[want].clone())
}

/// `relaycast serve` flag that turns QUIC on; added to a spawned relay's
/// flags when they do not have it.
pub const SPAWN_FLAG: &str = "--quic 127.0.0.1:0";

/// The default watch URL of a relaycast at `http_addr` (HOST:PORT): its QUIC
/// address and certificate fingerprint, from `GET /api/quic`.
pub async fn watch_url(http_addr: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let url = format!("http://{http_addr}/api/quic");
    let mut send = http_get(&url).await?;
    let resp = send.send_request(request(&url)?).await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "{url}: status {} (is QUIC on? serve --quic ADDR)",
        resp.status()
    );
    let body = resp.into_body().collect().await?.to_bytes();
    let info: serde_json::Value = serde_json::from_slice(&body)?;
    let addr: SocketAddr = info["addr"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{url}: no addr"))?
        .parse()?;
    let fp = info["fingerprint"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{url}: no fingerprint"))?;
    // A relay bound to 0.0.0.0 / [::] is reached at the HTTP host.
    let host = if addr.ip().is_unspecified() {
        let h = http_addr.rsplit_once(':').map_or(http_addr, |(h, _)| h);
        format!("{h}:{}", addr.port())
    } else {
        addr.to_string()
    };
    Ok(format!("quic://{host}/{{stream}}?wait=10&fingerprint={fp}"))
}

/// One viewer: connect, watch, feed every init and fragment to `check`
/// until the session ends or the task is aborted.
pub async fn view(
    id: usize,
    url: &str,
    check: &mut ViewerCheck,
    joined: &mut impl FnMut(bool),
) -> std::io::Result<()> {
    let opened = async {
        let client = endpoint(id)?;
        let url = QuicUrl::parse(url).map_err(std::io::Error::other)?;
        client
            .watch(&url, WatchOptions::default())
            .await
            .map_err(std::io::Error::other)
    };
    let mut session = match opened.await {
        Ok(s) => s,
        Err(e) => {
            joined(false);
            return Err(e);
        }
    };
    joined(true);
    loop {
        match session.next().await.map_err(std::io::Error::other)? {
            WatchEvent::Init { bytes, .. } | WatchEvent::Fragment { bytes, .. } => {
                check.bytes(&bytes)
            }
            // Skips show up as seq gaps in the fragments (counted by `check`).
            WatchEvent::Skip { .. } | WatchEvent::Publisher(_) => {}
            WatchEvent::End { code, reason } => {
                return if code == DONE {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!(
                        "relay ended the session: {reason} (code {code})"
                    )))
                };
            }
        }
    }
}
