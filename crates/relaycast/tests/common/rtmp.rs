//! A minimal RTMP publisher of our own (on `rml_rtmp`'s chunk codec) that
//! sends exactly what OBS sends: Set Chunk Size, connect, releaseStream,
//! FCPublish, createStream, publish, @setDataFrame/onMetaData, media,
//! FCUnpublish, deleteStream, acknowledgements. Shared by the RTMP tests and
//! `benches/ingest_latency.rs` (which includes this file by path).
#![allow(dead_code)]

use bytes::Bytes;
use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A minimal RTMP publisher speaking OBS's command sequence.
pub struct Obs {
    pub sock: TcpStream,
    pub ser: ChunkSerializer,
    pub de: ChunkDeserializer,
    pub pending: Vec<u8>,
    pub txn: f64,
    pub stream_id: u32,
}

pub fn s(v: &str) -> Amf0Value {
    Amf0Value::Utf8String(v.to_string())
}

impl Obs {
    pub async fn connect(addr: SocketAddr) -> Obs {
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let mut hs = Handshake::new(PeerType::Client);
        let c0c1 = hs.generate_outbound_p0_and_p1().expect("c0c1");
        sock.write_all(&c0c1).await.expect("write c0c1");
        let mut buf = vec![0u8; 8192];
        let leftover = loop {
            let n = sock.read(&mut buf).await.expect("read handshake");
            assert!(n > 0, "relay closed during the handshake");
            match hs.process_bytes(&buf[..n]).expect("handshake") {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    sock.write_all(&response_bytes).await.expect("write");
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    sock.write_all(&response_bytes).await.expect("write");
                    break remaining_bytes;
                }
            }
        };
        Obs {
            sock,
            ser: ChunkSerializer::new(),
            de: ChunkDeserializer::new(),
            pending: leftover,
            txn: 0.0,
            stream_id: 0,
        }
    }

    pub async fn send(&mut self, msg: RtmpMessage, stream_id: u32, ts: u32) {
        let payload = msg
            .into_message_payload(RtmpTimestamp::new(ts), stream_id)
            .expect("payload");
        let p = self
            .ser
            .serialize(&payload, false, false)
            .expect("serialize");
        self.sock.write_all(&p.bytes).await.expect("write");
    }

    pub async fn command(&mut self, name: &str, args: Vec<Amf0Value>, stream_id: u32) {
        self.txn += 1.0;
        let object = if name == "connect" {
            Amf0Value::Object(HashMap::from([
                ("app".to_string(), s("live")),
                ("type".to_string(), s("nonprivate")),
                ("flashVer".to_string(), s("FMLE/3.0 (compatible; FMSc/1.0)")),
                ("tcUrl".to_string(), s("rtmp://127.0.0.1/live")),
            ]))
        } else {
            Amf0Value::Null
        };
        let msg = RtmpMessage::Amf0Command {
            command_name: name.to_string(),
            transaction_id: self.txn,
            command_object: object,
            additional_arguments: args,
        };
        self.send(msg, stream_id, 0).await;
    }

    /// Read messages until a command named `want` arrives; returns its arguments.
    pub async fn until(&mut self, want: &str) -> Vec<Amf0Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 8192];
        let mut input = std::mem::take(&mut self.pending);
        loop {
            while let Some(p) = self.de.get_next_message(&input).expect("chunks") {
                input.clear();
                match p.to_rtmp_message().expect("message") {
                    RtmpMessage::SetChunkSize { size } => {
                        self.de.set_max_chunk_size(size as usize).expect("size")
                    }
                    RtmpMessage::Amf0Command {
                        command_name,
                        additional_arguments,
                        ..
                    } if command_name == want => return additional_arguments,
                    RtmpMessage::Amf0Command {
                        command_name,
                        additional_arguments,
                        ..
                    } => assert!(
                        command_name != "_error",
                        "relay refused: {additional_arguments:?}"
                    ),
                    _ => {}
                }
            }
            let n = tokio::time::timeout_at(deadline, self.sock.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {want} from the relay"))
                .expect("read");
            assert!(n > 0, "relay closed while waiting for {want}");
            input = buf[..n].to_vec();
        }
    }

    /// OBS's publish sequence up to NetStream.Publish.Start and onMetaData.
    pub async fn start(&mut self, key: &str, metadata: Vec<(&str, Amf0Value)>) {
        // OBS raises its chunk size first.
        let p = self
            .ser
            .set_max_chunk_size(4096, RtmpTimestamp::new(0))
            .expect("chunk size");
        self.sock.write_all(&p.bytes).await.expect("write");
        self.command("connect", vec![], 0).await;
        self.until("_result").await;
        self.send(RtmpMessage::WindowAcknowledgement { size: 2_500_000 }, 0, 0)
            .await;
        self.command("releaseStream", vec![s(key)], 0).await;
        self.command("FCPublish", vec![s(key)], 0).await;
        self.command("createStream", vec![], 0).await;
        let result = self.until("_result").await;
        self.stream_id = result
            .iter()
            .find_map(|v| match v {
                Amf0Value::Number(n) => Some(*n as u32),
                _ => None,
            })
            .expect("stream id");
        let sid = self.stream_id;
        self.command("publish", vec![s(key), s("live")], sid).await;
        let status = self.until("onStatus").await;
        assert!(
            format!("{status:?}").contains("NetStream.Publish.Start"),
            "{status:?}"
        );
        let meta: HashMap<String, Amf0Value> = metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let values = vec![s("@setDataFrame"), s("onMetaData"), Amf0Value::Object(meta)];
        self.send(RtmpMessage::Amf0Data { values }, sid, 0).await;
        self.send(
            RtmpMessage::Acknowledgement {
                sequence_number: 4096,
            },
            0,
            0,
        )
        .await;
    }

    pub async fn video(&mut self, ts: u32, body: Vec<u8>) {
        let sid = self.stream_id;
        self.send(
            RtmpMessage::VideoData {
                data: Bytes::from(body),
            },
            sid,
            ts,
        )
        .await;
    }

    /// An audio (`kind` 8) or video (9) message: an FLV tag body at `ts` ms.
    pub async fn tag(&mut self, kind: u8, ts: u32, body: Bytes) {
        let sid = self.stream_id;
        let msg = if kind == 8 {
            RtmpMessage::AudioData { data: body }
        } else {
            RtmpMessage::VideoData { data: body }
        };
        self.send(msg, sid, ts).await;
    }

    pub async fn stop(&mut self, key: &str) {
        let sid = self.stream_id;
        self.command("FCUnpublish", vec![s(key)], 0).await;
        self.command("deleteStream", vec![Amf0Value::Number(f64::from(sid))], 0)
            .await;
        let _ = self.sock.shutdown().await;
    }
}
