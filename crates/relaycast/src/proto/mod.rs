//! `proto`: protocol facts, in one place and typed: the codes every wire
//! carries ([`code`]), the control messages viewers receive
//! ([`control`]) and the WebSocket frame format ([`ws`]). Below the fan-out core: it depends on nothing of the
//! crate but the media types.

pub mod code;
pub mod control;
pub mod ws;
