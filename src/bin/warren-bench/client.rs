//! A lean AMQP client: just what the scenarios need, built on warren's own
//! handshake and frame code, so the load generator spends as little CPU as
//! possible (publishes are encoded once and written as prepared bytes).

use std::net::SocketAddr;
use warren::protocol::ids::{self, MethodId};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use warren::auth::Credentials;
use warren::net::{split_tcp, ReadHalf, WriteHalf};
use warren::protocol::frame::{self, Frame, FrameReader, FRAME_BODY, FRAME_HEADER};
use warren::protocol::method::{self, Close};
use warren::protocol::wire::{put_short_str, put_table, Decoder, FieldTable, FieldValue};
use warren::upstream::handshake;

pub type Result<T> = std::result::Result<T, String>;

/// Kernel send buffer per connection. Loopback autotuning would let each
/// publisher queue megabytes the broker has not read yet; 64 of them then
/// leave the broker tens of seconds of backlog after a 2 s run. This keeps
/// the run close to what was sustained.
const SEND_BUFFER: u32 = 256 * 1024;

const QUEUE_PURGE: MethodId = (50, 30);
const QUEUE_PURGE_OK: MethodId = (50, 31);
const QUEUE_DELETE_OK: MethodId = (50, 41);
const CONSUME_OK: MethodId = (60, 21);

pub struct Connection {
    pub reader: FrameReader<ReadHalf>,
    pub writer: WriteHalf,
    frame_max: usize,
    next_channel: u16,
}

impl Connection {
    pub async fn open(addr: SocketAddr, credentials: &Credentials, vhost: &str) -> Result<Self> {
        let connect = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_send_buffer_size(SEND_BUFFER)?;
            socket.connect(addr).await
        };
        let stream = connect
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let start_ok =
            handshake::start_ok(credentials, "warren-bench").map_err(|e| e.to_string())?;
        let (reader, writer, negotiated) =
            handshake::authenticate(split_tcp(stream), &start_ok, 2047)
                .await
                .map_err(|e| e.to_string())?
                .open(vhost)
                .await
                .map_err(|e| e.to_string())?;
        Ok(Connection {
            reader,
            writer,
            frame_max: negotiated.frame_max as usize,
            next_channel: 1,
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| format!("write failed: {e}"))
    }

    /// Reads until the method `wanted` arrives on `channel`; other frames
    /// (stray acks, deliveries) are skipped, a Close is an error.
    pub async fn expect(&mut self, channel: u16, wanted: MethodId) -> Result<Frame> {
        loop {
            let frame = self.read().await?;
            match frame.method_id() {
                Some(id) if id == wanted && frame.channel() == channel => return Ok(frame),
                Some(ids::CHANNEL_CLOSE | ids::CONNECTION_CLOSE) => {
                    let close = Close::decode(frame.method_args()).map_err(|e| e.to_string())?;
                    return Err(format!(
                        "closed while waiting for {}: {} {}",
                        method::name(wanted),
                        close.code,
                        close.text
                    ));
                }
                _ => {}
            }
        }
    }

    pub async fn read(&mut self) -> Result<Frame> {
        self.reader
            .read_frame()
            .await
            .map_err(|e| format!("read failed: {e}"))
    }

    pub async fn open_channel(&mut self) -> Result<u16> {
        let channel = self.next_channel;
        self.next_channel += 1;
        self.send(&method::channel_open(channel)).await?;
        self.expect(channel, ids::CHANNEL_OPEN_OK).await?;
        Ok(channel)
    }

    /// Declares a non-durable queue; with `max_length`, the oldest messages
    /// are dropped beyond it, so a long publish run holds no memory.
    /// Returns its message count.
    pub async fn declare_queue(
        &mut self,
        channel: u16,
        queue: &str,
        max_length: Option<i64>,
    ) -> Result<u32> {
        let mut arguments = FieldTable::new();
        if let Some(max) = max_length {
            arguments.push(("x-max-length".into(), FieldValue::I64(max)));
        }
        self.send(&method::encode(channel, ids::QUEUE_DECLARE, |b| {
            b.put_u16(0);
            put_short_str(b, queue);
            b.put_u8(0);
            put_table(b, &arguments);
        }))
        .await?;
        self.declare_ok(channel).await
    }

    /// A passive declare: a round trip that also says how many messages
    /// the queue holds. The broker answers it after every earlier publish
    /// on the channel, so it marks when those are all in.
    pub async fn message_count(&mut self, channel: u16, queue: &str) -> Result<u32> {
        self.send(&method::encode(channel, ids::QUEUE_DECLARE, |b| {
            b.put_u16(0);
            put_short_str(b, queue);
            b.put_u8(1);
            put_table(b, &FieldTable::new());
        }))
        .await?;
        self.declare_ok(channel).await
    }

    async fn declare_ok(&mut self, channel: u16) -> Result<u32> {
        let ok = self.expect(channel, ids::QUEUE_DECLARE_OK).await?;
        let mut d = Decoder::new(ok.method_args());
        d.short_str().map_err(|e| e.to_string())?;
        d.u32().map_err(|e| e.to_string())
    }

    pub async fn purge(&mut self, channel: u16, queue: &str) -> Result<()> {
        self.send(&method::encode(channel, QUEUE_PURGE, |b| {
            b.put_u16(0);
            put_short_str(b, queue);
            b.put_u8(0);
        }))
        .await?;
        self.expect(channel, QUEUE_PURGE_OK).await.map(drop)
    }

    pub async fn delete_queue(&mut self, channel: u16, queue: &str) -> Result<()> {
        self.send(&method::encode(channel, ids::QUEUE_DELETE, |b| {
            b.put_u16(0);
            put_short_str(b, queue);
            b.put_u8(0);
        }))
        .await?;
        self.expect(channel, QUEUE_DELETE_OK).await.map(drop)
    }

    pub async fn confirm_select(&mut self, channel: u16) -> Result<()> {
        self.send(&method::encode(channel, ids::CONFIRM_SELECT, |b| {
            b.put_u8(0)
        }))
        .await?;
        self.expect(channel, ids::CONFIRM_SELECT_OK).await.map(drop)
    }

    pub async fn qos(&mut self, channel: u16, prefetch: u16) -> Result<()> {
        self.send(&method::encode(channel, ids::BASIC_QOS, |b| {
            b.put_u32(0);
            b.put_u16(prefetch);
            b.put_u8(0);
        }))
        .await?;
        self.expect(channel, ids::BASIC_QOS_OK).await.map(drop)
    }

    pub async fn consume(&mut self, channel: u16, queue: &str, no_ack: bool) -> Result<()> {
        self.send(&method::encode(channel, ids::BASIC_CONSUME, |b| {
            b.put_u16(0);
            put_short_str(b, queue);
            put_short_str(b, "");
            b.put_u8(if no_ack { 0b10 } else { 0 });
            put_table(b, &FieldTable::new());
        }))
        .await?;
        self.expect(channel, CONSUME_OK).await.map(drop)
    }

    /// One publish (method, header and body frames) to the default
    /// exchange, routed to `queue`.
    pub fn publish(&self, channel: u16, queue: &str, body: &[u8]) -> Bytes {
        let mut message = BytesMut::new();
        self.put_publish(&mut message, channel, queue, body);
        message.freeze()
    }

    pub fn put_publish(&self, out: &mut BytesMut, channel: u16, queue: &str, body: &[u8]) {
        out.extend_from_slice(&method::encode(channel, ids::BASIC_PUBLISH, |b| {
            b.put_u16(0);
            put_short_str(b, "");
            put_short_str(b, queue);
            b.put_u8(0);
        }));
        out.extend_from_slice(&frame::build(FRAME_HEADER, channel, |b| {
            b.put_u16(60);
            b.put_u16(0);
            b.put_u64(body.len() as u64);
            b.put_u16(0);
        }));
        for piece in body.chunks(self.frame_max - frame::FRAME_OVERHEAD) {
            out.extend_from_slice(&frame::build(FRAME_BODY, channel, |b| {
                b.extend_from_slice(piece)
            }));
        }
    }

    /// Closes the connection and waits for the Close-Ok.
    pub async fn close(mut self) -> Result<()> {
        self.send(&Close::new(200, "bye").connection_frame())
            .await?;
        self.expect(0, ids::CONNECTION_CLOSE_OK).await.map(drop)
    }
}

pub fn ack(channel: u16, tag: u64) -> Bytes {
    method::encode(channel, ids::BASIC_ACK, |b| {
        b.put_u64(tag);
        b.put_u8(0);
    })
}

/// The delivery tag of a Basic.Deliver.
pub fn deliver_tag(frame: &Frame) -> Option<u64> {
    let mut d = Decoder::new(frame.method_args());
    d.short_str().ok()?;
    d.u64().ok()
}

/// How many publishes are confirmed once this Basic.Ack or Nack is in, with
/// `confirmed` before it (a "multiple" ack confirms everything up to its tag).
pub fn confirmed_through(frame: &Frame, confirmed: u64) -> Option<u64> {
    let tag = method::ack_tag(frame)?;
    let multiple = frame.method_args().get(8)? & 1 != 0;
    Some(if multiple { tag } else { confirmed + 1 })
}

/// The payload of a body frame.
pub fn body(frame: &Frame) -> Option<&[u8]> {
    (frame.kind() == FRAME_BODY).then(|| frame.payload())
}
