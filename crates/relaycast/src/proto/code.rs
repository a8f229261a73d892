//! Every code a client reads, in one table per wire: WebSocket close codes
//! (RFC 6455 §7.4 and relaycast's 4xxx) and QUIC application error codes
//! (`relaycast/1`), RTMP `onStatus` codes and SRT rejection codes. Which error gets which code is decided once, in
//! [`crate::Error`] and [`crate::fanout::EndReason`]; clients use these
//! names to read them.

/// WebSocket close codes.
pub mod ws {
    /// Normal closure (the publish finished).
    pub const NORMAL: u16 = 1000;
    /// Going away: the relay is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (text where binary is expected).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (not fMP4).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (name, key, signature).
    pub const POLICY: u16 = 1008;
    /// Message or box too big.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: a limit refused the session.
    pub const TRY_AGAIN: u16 = 1013;
    /// No such stream.
    pub const NOT_FOUND: u16 = 4004;
    /// The viewer kept falling behind.
    pub const LAGGING: u16 = 4008;
    /// Another publisher is live on that name, or took it over.
    pub const CONFLICT: u16 = 4009;
}

/// QUIC application error codes (connection close and stream reset codes).
pub mod quic {
    /// Normal end of a session.
    pub const DONE: u32 = 0;
    /// Malformed request or frame (HTTP 400).
    pub const BAD_REQUEST: u32 = 1;
    /// A publish key is required (401).
    pub const UNAUTHORIZED: u32 = 2;
    /// Wrong key, or not allowed (403).
    pub const FORBIDDEN: u32 = 3;
    /// No such stream (404).
    pub const NOT_FOUND: u32 = 4;
    /// Another publisher is live on that name, or took it over (409).
    pub const CONFLICT: u32 = 5;
    /// The publisher's bytes are not acceptable fMP4.
    pub const BAD_MEDIA: u32 = 6;
    /// A box or frame over the size limit (413).
    pub const TOO_BIG: u32 = 7;
    /// The viewer kept falling behind and was disconnected.
    pub const LAGGING: u32 = 8;
    /// The stream ended: its publisher left.
    pub const PUBLISHER_GONE: u32 = 9;
    /// The relay is shutting down.
    pub const SHUTDOWN: u32 = 10;
    /// A configured limit refused the session (503).
    pub const LIMIT: u32 = 11;
    /// A bug or unexpected state on the relay.
    pub const INTERNAL: u32 = 12;
    /// Stream reset code: the server abandoned this group (the viewer skipped).
    pub const SKIPPED: u32 = 13;
}

/// RTMP status codes (the `code` of an `onStatus` / `_error` info object)
/// that an encoder shows its user.
pub mod rtmp {
    /// Publishing started.
    pub const PUBLISH_START: &str = "NetStream.Publish.Start";
    /// The stream name is not acceptable, or is already being published.
    pub const PUBLISH_BAD_NAME: &str = "NetStream.Publish.BadName";
    /// Publishing refused: key, limits, callback, shutdown.
    pub const PUBLISH_DENIED: &str = "NetStream.Publish.Denied";
    /// The publish failed after it started (bad media, idle, I/O).
    pub const PUBLISH_FAILED: &str = "NetStream.Failed";
    /// A connect to an application this relay does not serve.
    pub const CONNECT_REJECTED: &str = "NetConnection.Connect.Rejected";
    /// A play request: this relay takes publishers only over RTMP.
    pub const PLAY_FAILED: &str = "NetStream.Play.Failed";
    /// The publish ended without fault: `FCUnpublish` answered, or the
    /// relay shuts down (level `status`, so encoders reconnect rather than
    /// stop).
    pub const UNPUBLISH_SUCCESS: &str = "NetStream.Unpublish.Success";
}

/// SRT rejection codes a listener answers a caller with: libsrt's
/// `SRT_REJX_*` codes, an HTTP status in its predefined range (2000 + the
/// status on the wire, e.g. 2403 = `SRT_REJX_FORBIDDEN`).
pub mod srt {
    /// Base of the predefined range on the wire: the code is 2000 + an HTTP status.
    pub const PREDEFINED: i32 = 2000;
}
