//! Helpers shared by the operations tests (ops.rs, shutdown.rs, faults.rs).
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;

/// PUT to `url` with a chunked body fed from `rx` until it closes; returns
/// (status, response body). The request stays open as long as `rx` does.
pub async fn put_stream(url: &str, mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> (u16, String) {
    let u = url::Url::parse(url).expect("url");
    let host = u.host_str().expect("host").to_string();
    let port = u.port().expect("port");
    let tcp = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
        Ok(t) => t,
        Err(e) => return (0, e.to_string()),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await {
            Ok(x) => x,
            Err(e) => return (0, e.to_string()),
        };
    tokio::spawn(conn);
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)));
    let req = hyper::Request::put(&u[url::Position::BeforePath..])
        .header("host", format!("{host}:{port}"))
        .body(http_body_util::StreamBody::new(body))
        .expect("request");
    match sender.send_request(req).await {
        Ok(r) => {
            let status = r.status().as_u16();
            let b = r
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&b).into_owned())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Walk top-level MP4 boxes: `Some(types)` when `data` is a whole number of
/// boxes, `None` when it ends inside one.
pub fn whole_boxes(data: &[u8]) -> Option<Vec<[u8; 4]>> {
    let mut off = 0usize;
    let mut types = Vec::new();
    while off < data.len() {
        if data.len() - off < 8 {
            return None;
        }
        let mut size = u32::from_be_bytes(data[off..off + 4].try_into().ok()?) as u64;
        let typ: [u8; 4] = data[off + 4..off + 8].try_into().ok()?;
        if size == 1 {
            if data.len() - off < 16 {
                return None;
            }
            size = u64::from_be_bytes(data[off + 8..off + 16].try_into().ok()?);
        }
        if size < 8 || off as u64 + size > data.len() as u64 {
            return None;
        }
        off += size as usize;
        types.push(typ);
    }
    Some(types)
}

/// RSS of a process in bytes (Linux /proc).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
