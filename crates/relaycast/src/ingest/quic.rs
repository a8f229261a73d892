//! QUIC ingest: a `relaycast/1` publish session (see [`crate::quic`]).
//!
//! After the request (name, key) is accepted, the client's bytes on the
//! request stream are the fMP4 stream, read in the order sent and pushed into
//! an [`IngestSession`] like every other ingest transport. When the client
//! finishes its side, the relay answers with the JSON summary.

use super::admit;
use crate::Error;
use crate::app::AppState;
use crate::quic::{Request, Response, write_control};
use std::time::Duration;

/// Most bytes read from the stream at once.
const READ_CHUNK: usize = 256 << 10;

/// Serve one publish session on `conn`; `send`/`recv` are the request stream.
pub async fn serve(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
    req: &Request,
    app: &AppState,
) -> Result<(), Error> {
    let name = req.name.as_str();
    let peer = conn.remote_address();
    let mut session = admit(
        app,
        crate::fanout::Ingest::Quic,
        name,
        req.key.as_deref(),
        Some(peer),
    )
    .await?;
    let stream = session.publisher.stream().clone();
    tracing::info!(stream = %name, %peer, "QUIC publisher connected");
    let ok = Response {
        ok: true,
        epoch: stream.epoch(),
        seq_space: stream.epoch(),
        live: true,
        next_seq: stream.newest_seq().map_or(0, |s| s + 1),
        ..Response::default()
    };
    write_control(send, &ok)
        .await
        .map_err(|e| Error::BadRequest(format!("answering the request: {e}")))?;
    let chunks = futures_util::stream::unfold(recv, |mut recv| async move {
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(c)) => Some((Ok(c.bytes), recv)),
            Ok(None) => None,
            Err(e) => Some((Err(Error::Io(std::io::Error::from(e))), recv)),
        }
    });
    let result = session.run(&mut Box::pin(chunks), app).await;
    let summary = session.summary(result.as_ref().err());
    match &result {
        Ok(()) => {
            tracing::info!(stream = %name, %peer, fragments = summary.fragments, "QUIC publisher finished")
        }
        Err(e) => tracing::warn!(stream = %name, %peer, error = %e, "QUIC publisher failed"),
    }
    result?;
    let _ = write_control(send, &summary).await;
    let _ = send.finish();
    // Let the client read the summary and close; do not hold the task forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    Ok(())
}
