//! QUIC viewers: a `relaycast/1` watch session (see [`crate::quic`]).
//!
//! Media goes on one unidirectional stream per group: an init frame, then
//! the group's fragments in order. A new group stream opens at every
//! keyframe, init change and skip; the previous one is finished (delivered
//! in full) or, when the viewer fell behind, reset (dropped). Control
//! messages (skip, publisher, end) are JSON frames on the request stream.
//!
//! # Lagging
//!
//! Writes wait for QUIC flow and congestion control. While a write waits,
//! the session checks every [`LAG_CHECK`] whether the viewer's cursor fell
//! out of the ring; if it did, the write is abandoned, the group stream
//! reset, and the fan-out's lag policy applies as for every transport (skip
//! to the newest keyframe, counted; disconnect with [`code::LAGGING`] when it
//! keeps happening). Nothing a slow viewer does reaches the publisher or any
//! other viewer.
//!
//! # Closing
//!
//! At the end of the stream the last group stream is finished, an `end`
//! message says how many group streams were opened, and the relay waits
//! (up to [`END_LINGER`]) for the client to read them and close; then it
//! closes with the end's code.

use super::Transport;
use crate::Error;
use crate::app::AppState;
use crate::fanout::{Chunk, EndReason, Event, Source, Viewer, ViewerStart};
use crate::proto::control::Control;
use crate::quic::{
    MediaFrame, QuicError, Request, Response, code, write_control, write_control_raw,
};
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often a waiting write checks whether the viewer fell behind.
pub const LAG_CHECK: Duration = Duration::from_millis(100);

/// How long the relay waits for the client to drain and close after `end`.
pub const END_LINGER: Duration = Duration::from_secs(5);

/// How long a control message may wait for the client to read it.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The application code of an end reason.
pub fn end_code(reason: EndReason) -> u32 {
    match reason {
        EndReason::PublisherGone => code::PUBLISHER_GONE,
        EndReason::Lagging => code::LAGGING,
        EndReason::Shutdown => code::SHUTDOWN,
    }
}

/// Serve one watch session on `conn`; `ctrl` is the request stream's send side.
pub async fn serve(
    conn: &quinn::Connection,
    ctrl: &mut quinn::SendStream,
    req: &Request,
    app: &AppState,
) -> Result<(), Error> {
    let edge = req.role.as_deref() == Some("edge");
    let start = ViewerStart {
        after: req.after,
        transport: if edge {
            Transport::Edge
        } else {
            Transport::Quic
        },
    };
    let q = super::WatchQuery {
        after: req.after,
        wait: req.wait,
        exp: req.exp,
        sig: req.sig.clone(),
        ..super::WatchQuery::default()
    };
    let peer = Some(conn.remote_address());
    let wait = app.wait_for(req.wait);
    let viewer = tokio::select! {
        v = super::admit(app, &req.name, &q, start, wait, peer) => v?,
        _ = conn.closed() => return Ok(()),
    };
    let stream = viewer.stream().clone();
    let seq_space = match stream.source() {
        Source::Pulled { seq_space, .. } => seq_space,
        Source::Local => stream.epoch(),
    };
    let hello = Response {
        ok: true,
        epoch: stream.epoch(),
        seq_space,
        live: stream.is_live(),
        resumed: viewer.resumed(),
        next_seq: viewer.cursor(),
        ..Response::default()
    };
    control(ctrl, &hello).await?;
    tracing::debug!(stream = %req.name, peer = %conn.remote_address(), edge, "QUIC viewer joined");
    let _end = super::EndLog::in_span(tracing::info_span!(
        "viewer",
        stream = %req.name,
        peer = %conn.remote_address(),
        transport = "quic"
    ));
    Session {
        conn,
        ctrl,
        viewer,
        group: None,
        groups: 0,
    }
    .run(app)
    .await
}

async fn control<T: serde::Serialize>(ctrl: &mut quinn::SendStream, msg: &T) -> Result<(), Error> {
    match tokio::time::timeout(CONTROL_TIMEOUT, write_control(ctrl, msg)).await {
        Ok(r) => r.map_err(quic_err),
        Err(_) => Err(Error::BadRequest(
            "the viewer does not read its control stream".into(),
        )),
    }
}

async fn control_raw(ctrl: &mut quinn::SendStream, json: &[u8]) -> Result<(), Error> {
    match tokio::time::timeout(CONTROL_TIMEOUT, write_control_raw(ctrl, json)).await {
        Ok(r) => r.map_err(quic_err),
        Err(_) => Err(Error::BadRequest(
            "the viewer does not read its control stream".into(),
        )),
    }
}

fn quic_err(e: QuicError) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// What a write that races the lag check came to.
enum Raced<T> {
    Done(T),
    FellBehind,
}

/// Run `fut`, giving up when the viewer falls out of the ring meanwhile.
async fn unless_behind<F: Future>(fut: F, viewer: &Viewer) -> Raced<F::Output> {
    tokio::pin!(fut);
    // Most writes fit the send buffer at once: no timer for those.
    if let std::task::Poll::Ready(out) = futures_util::poll!(&mut fut) {
        return Raced::Done(out);
    }
    let mut tick = tokio::time::interval(LAG_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut fut => return Raced::Done(out),
            _ = tick.tick() => if viewer.fell_behind() {
                return Raced::FellBehind;
            },
        }
    }
}

struct Session<'a> {
    conn: &'a quinn::Connection,
    ctrl: &'a mut quinn::SendStream,
    viewer: Viewer,
    /// The group stream being written.
    group: Option<quinn::SendStream>,
    /// Group streams opened so far.
    groups: u64,
}

impl Session<'_> {
    async fn run(mut self, app: &AppState) -> Result<(), Error> {
        loop {
            let ev = tokio::select! {
                ev = self.viewer.next() => ev,
                _ = app.shutdown.cancelled() => Event::End(EndReason::Shutdown),
                _ = self.conn.closed() => return Ok(()),
            };
            match ev {
                Event::Init(_) => {
                    // The next fragment opens a group stream with the new init.
                    self.finish_group();
                }
                Event::Fragment(chunk) => self.fragment(&chunk).await?,
                Event::Skip { from, to, total } => {
                    self.reset_group();
                    control_raw(
                        self.ctrl,
                        Control::skip(from, to, total).to_json().as_bytes(),
                    )
                    .await?;
                }
                Event::Publisher(live) => {
                    control_raw(self.ctrl, Control::publisher(live).to_json().as_bytes()).await?;
                }
                Event::End(reason) => return self.end(reason, app).await,
            }
        }
    }

    fn finish_group(&mut self) {
        if let Some(mut g) = self.group.take() {
            let _ = g.finish();
        }
    }

    fn reset_group(&mut self) {
        if let Some(mut g) = self.group.take() {
            let _ = g.reset(quinn::VarInt::from_u32(code::SKIPPED));
        }
    }

    async fn fragment(&mut self, chunk: &Arc<Chunk>) -> Result<(), Error> {
        if chunk.keyframe || self.group.is_none() {
            self.finish_group();
            let opened = match unless_behind(self.conn.open_uni(), &self.viewer).await {
                Raced::Done(r) => r.map_err(|e| quic_err(QuicError::from_connection(e)))?,
                // Next comes the skip; this fragment is stale anyway.
                Raced::FellBehind => return Ok(()),
            };
            self.groups += 1;
            self.group = Some(opened);
            let init = MediaFrame::Init {
                version: chunk.init.version,
                bytes: chunk.init.init.bytes.clone(),
            };
            if !self.write(init).await? {
                return Ok(());
            }
        }
        let frame = MediaFrame::Fragment {
            seq: chunk.seq,
            keyframe: chunk.keyframe,
            t_ms: chunk.t_ms,
            bytes: chunk.bytes.clone(),
        };
        self.write(frame).await?;
        Ok(())
    }

    /// Write a frame on the current group stream; false when the viewer fell
    /// behind meanwhile (the group is reset).
    async fn write(&mut self, frame: MediaFrame) -> Result<bool, Error> {
        let Some(group) = self.group.as_mut() else {
            return Ok(false);
        };
        let mut bufs: [Bytes; 2] = [frame.header(), frame.payload().clone()];
        match unless_behind(group.write_all_chunks(&mut bufs), &self.viewer).await {
            Raced::Done(Ok(())) => Ok(true),
            Raced::Done(Err(e)) => Err(quic_err(e.into())),
            Raced::FellBehind => {
                self.reset_group();
                Ok(false)
            }
        }
    }

    async fn end(mut self, reason: EndReason, app: &AppState) -> Result<(), Error> {
        let code = end_code(reason);
        if reason == EndReason::Lagging {
            self.reset_group();
            crate::quic::close(self.conn, code, reason.message());
            return Ok(());
        }
        self.finish_group();
        let end = Control::End {
            reason: reason.message().to_string(),
            status: None,
            code: Some(code),
            groups: Some(self.groups),
        };
        let _ = control(self.ctrl, &end).await;
        let _ = self.ctrl.finish();
        // The client closes once it has read every group; do not wait forever.
        let wait = if reason == EndReason::Shutdown {
            Duration::from_millis(500).min(app.config.server.shutdown_timeout)
        } else {
            END_LINGER
        };
        let _ = tokio::time::timeout(wait, self.conn.closed()).await;
        crate::quic::close(self.conn, code, reason.message());
        Ok(())
    }
}
