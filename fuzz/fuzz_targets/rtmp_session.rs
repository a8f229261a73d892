//! RTMP ingest's input path on arbitrary bytes after the handshake: the
//! `rml_rtmp` server session (chunk stream, chunk size changes, AMF0
//! commands and data), the relay's handling of its events (every connect and
//! publish accepted, the stream key mapped to a name, the chunk size cap)
//! and the FLV → CMAF remux of the audio/video messages. Nothing may panic;
//! a session error ends the connection as it does in the relay.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaycast::config::IngestConfig;
use relaycast::ingest::rtmp::stream_key_to_name;
use relaycast_media::remux::cmaf::MuxerConfig;
use relaycast_media::remux::flv::{FlvRemuxer, TAG_AUDIO, TAG_VIDEO};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};

fuzz_target!(|data: &[u8]| {
    let step = 1 + usize::from(data.last().copied().unwrap_or(0)) * 37 % 4096;
    let config = IngestConfig::default();
    let Ok((mut session, _)) = ServerSession::new(ServerSessionConfig::new()) else {
        return;
    };
    let mut remux = FlvRemuxer::new(MuxerConfig::default());
    for piece in data.chunks(step) {
        let Ok(results) = session.handle_input(piece) else {
            return;
        };
        let mut queue: std::collections::VecDeque<_> = results.into();
        while let Some(r) = queue.pop_front() {
            let ServerSessionResult::RaisedEvent(ev) = r else { continue };
            match ev {
                ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                    if let Ok(more) = session.accept_request(request_id) {
                        queue.extend(more);
                    }
                }
                ServerSessionEvent::PublishStreamRequested { request_id, stream_key, .. } => {
                    let _ = stream_key_to_name(&config, &stream_key);
                    if let Ok(more) = session.accept_request(request_id) {
                        queue.extend(more);
                    }
                }
                ServerSessionEvent::ClientChunkSizeChanged { new_chunk_size } => {
                    if new_chunk_size > config.rtmp.max_chunk_size {
                        return;
                    }
                }
                ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => {
                    if remux.push_tag(TAG_VIDEO, timestamp.value, data).is_err() {
                        return;
                    }
                }
                ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => {
                    if remux.push_tag(TAG_AUDIO, timestamp.value, data).is_err() {
                        return;
                    }
                }
                _ => {}
            }
            while remux.poll().is_some() {}
        }
    }
    remux.finish();
    while remux.poll().is_some() {}
});
