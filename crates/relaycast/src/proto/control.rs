//! The control messages a viewer receives beside the media bytes, typed and
//! serialised in one place: WebSocket text messages, Socket.IO events, the
//! `meta=1` boxes of HTTP streaming and QUIC control frames all carry these
//! JSON objects (`{"type": "hello" | "init" | "fragment" | "skip" |
//! "publisher" | "end", …}`, see `docs/protocol.md`), and the clients
//! (`relaycast watch`, the cascade, the load generator) read them back with
//! [`Control::parse`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One control message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Control {
    /// First message of a session: where the viewer starts.
    Hello {
        /// Stream name.
        stream: String,
        /// The life of the stream that seqs belong to.
        epoch: u64,
        /// A publisher is live now.
        live: bool,
        /// The viewer's `after` was honoured (no gap).
        resumed: bool,
        /// The seq of the next fragment this viewer receives.
        next_seq: u64,
        /// The relay's clock, Unix ms.
        server_time: u64,
    },
    /// An init segment follows (binary).
    Init {
        /// Init version within the stream (1, 2, …).
        version: u64,
        /// MSE type, e.g. `video/mp4; codecs="avc1.64001f,mp4a.40.2"`.
        mime: String,
        /// RFC 6381 codecs list.
        codecs: String,
        /// Bytes of the init segment.
        size: usize,
    },
    /// A fragment follows (binary).
    Fragment {
        /// Stream-wide sequence number.
        seq: u64,
        /// Opens a group (keyframe).
        key: bool,
        /// Relay wall clock at arrival, Unix ms.
        t: u64,
        /// Bytes of the fragment.
        size: usize,
        /// Decode time, seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dts: Option<f64>,
    },
    /// The viewer fell out of the ring and skipped to a newer keyframe.
    Skip {
        /// First seq not delivered.
        from: u64,
        /// Seq delivered next.
        to: u64,
        /// Fragments skipped (`to - from`).
        skipped: u64,
        /// Skips of this viewer so far.
        skips: u64,
    },
    /// The publisher left (grace period running) or came back.
    Publisher {
        /// `gone` or `back`.
        state: PublisherState,
    },
    /// The session ends.
    End {
        /// Why, for people.
        reason: String,
        /// HTTP status of a refusal (Socket.IO).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// QUIC application code (QUIC).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<u32>,
        /// Group streams sent (QUIC: the client reads them all before closing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        groups: Option<u64>,
    },
}

/// The publisher's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublisherState {
    /// Left; viewers wait for the grace period.
    Gone,
    /// Back.
    Back,
}

impl Control {
    /// `skip` from `from` to `to`, the viewer's `total`-th.
    pub fn skip(from: u64, to: u64, total: u64) -> Control {
        Control::Skip {
            from,
            to,
            skipped: to.saturating_sub(from),
            skips: total,
        }
    }

    /// `publisher` back (`true`) or gone.
    pub fn publisher(live: bool) -> Control {
        Control::Publisher {
            state: if live {
                PublisherState::Back
            } else {
                PublisherState::Gone
            },
        }
    }

    /// `end` with a reason only.
    pub fn end(reason: impl Into<String>) -> Control {
        Control::End {
            reason: reason.into(),
            status: None,
            code: None,
            groups: None,
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        // A derived Serialize of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The JSON text as `Bytes` (a WebSocket text message, a QUIC frame).
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.to_json())
    }

    /// Read a control message; `None` for JSON that is not one (a newer
    /// relay's message type: clients skip what they do not know).
    pub fn parse(json: &[u8]) -> Option<Control> {
        serde_json::from_slice(json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_is_stable() {
        assert_eq!(
            Control::skip(3, 9, 2).to_json(),
            r#"{"type":"skip","from":3,"to":9,"skipped":6,"skips":2}"#
        );
        assert_eq!(
            Control::publisher(false).to_json(),
            r#"{"type":"publisher","state":"gone"}"#
        );
        assert_eq!(
            Control::end("bye").to_json(),
            r#"{"type":"end","reason":"bye"}"#
        );
        let f = Control::Fragment {
            seq: 7,
            key: true,
            t: 1,
            size: 10,
            dts: Some(2.5),
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"fragment","seq":7,"key":true,"t":1,"size":10,"dts":2.5}"#
        );
        assert_eq!(Control::parse(f.to_json().as_bytes()), Some(f));
        assert_eq!(Control::parse(br#"{"type":"future"}"#), None);
    }
}
