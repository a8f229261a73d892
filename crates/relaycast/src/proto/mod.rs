//! `proto`: protocol facts, in one place and typed: the codes every wire
//! carries ([`code`]) and the control messages viewers receive
//! ([`control`]). Below the fan-out core: it depends on nothing of the
//! crate but the media types.

pub mod code;
pub mod control;
