//! A lean AMQP client: just what the scenarios need (see [`crate::amqp`]),
//! so the load generator spends as little CPU as possible (publishes are
//! encoded once and written as prepared bytes).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;

use crate::amqp::{self, Frame, FrameReader, MethodId, FRAME_BODY, FRAME_HEADER};

pub type Result<T> = std::result::Result<T, String>;

/// Kernel send buffer per connection. Loopback autotuning would let each
/// publisher queue megabytes the broker has not read yet; 64 of them then
/// leave the broker tens of seconds of backlog after a 2 s run. This keeps
/// the run close to what was sustained.
const SEND_BUFFER: u32 = 256 * 1024;

/// Where and as whom the scenarios connect (cheap to clone: one per
/// connection task).
#[derive(Clone)]
pub struct Login {
    pub user: Arc<str>,
    pub password: Arc<str>,
    pub vhost: Arc<str>,
}

pub struct Connection {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    frame_max: usize,
    next_channel: u16,
}

impl Connection {
    pub async fn open(addr: SocketAddr, login: &Login) -> Result<Self> {
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
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (read_half, write_half) = stream.into_split();
        let mut conn = Connection {
            reader: FrameReader::new(read_half),
            writer: write_half,
            frame_max: 4096,
            next_channel: 1,
        };
        conn.handshake(login).await?;
        Ok(conn)
    }

    /// Logs in with PLAIN, takes the broker's tuning (no heartbeats: runs
    /// are short) and opens the vhost.
    async fn handshake(&mut self, login: &Login) -> Result<()> {
        self.send(amqp::PROTOCOL_HEADER).await?;
        self.expect(0, amqp::CONNECTION_START).await?;
        let response = format!("\0{}\0{}", login.user, login.password);
        self.send(&amqp::method(0, amqp::CONNECTION_START_OK, |b| {
            amqp::put_table(b, &[]);
            amqp::put_short_str(b, "PLAIN");
            amqp::put_long_str(b, response.as_bytes());
            amqp::put_short_str(b, "en_US");
        }))
        .await?;
        let tune = self.expect(0, amqp::CONNECTION_TUNE).await?;
        let mut args = tune.args();
        let (channel_max, frame_max) = (args.u16(), args.u32());
        let channel_max = channel_max.filter(|n| *n != 0).unwrap_or(2047).min(2047);
        let frame_max = frame_max.filter(|n| *n != 0).unwrap_or(131072);
        self.frame_max = frame_max as usize;
        self.send(&amqp::method(0, amqp::CONNECTION_TUNE_OK, |b| {
            b.put_u16(channel_max);
            b.put_u32(frame_max);
            b.put_u16(0);
        }))
        .await?;
        self.send(&amqp::method(0, amqp::CONNECTION_OPEN, |b| {
            amqp::put_short_str(b, &login.vhost);
            amqp::put_short_str(b, "");
            b.put_u8(0);
        }))
        .await?;
        self.expect(0, amqp::CONNECTION_OPEN_OK).await.map(drop)
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
                Some(id) if id == wanted && frame.channel == channel => return Ok(frame),
                Some(amqp::CHANNEL_CLOSE | amqp::CONNECTION_CLOSE) => {
                    return Err(format!(
                        "closed while waiting for method {}.{}: {}",
                        wanted.0,
                        wanted.1,
                        amqp::describe_close(&frame)
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
        self.send(&amqp::method(channel, amqp::CHANNEL_OPEN, |b| {
            amqp::put_short_str(b, "")
        }))
        .await?;
        self.expect(channel, amqp::CHANNEL_OPEN_OK).await?;
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
        let arguments: Vec<(&str, i64)> = max_length
            .map(|max| ("x-max-length", max))
            .into_iter()
            .collect();
        self.send(&amqp::method(channel, amqp::QUEUE_DECLARE, |b| {
            b.put_u16(0);
            amqp::put_short_str(b, queue);
            b.put_u8(0);
            amqp::put_table(b, &arguments);
        }))
        .await?;
        self.declare_ok(channel).await
    }

    /// A passive declare: a round trip that also says how many messages
    /// the queue holds. The broker answers it after every earlier publish
    /// on the channel, so it marks when those are all in.
    pub async fn message_count(&mut self, channel: u16, queue: &str) -> Result<u32> {
        self.send(&amqp::method(channel, amqp::QUEUE_DECLARE, |b| {
            b.put_u16(0);
            amqp::put_short_str(b, queue);
            b.put_u8(1);
            amqp::put_table(b, &[]);
        }))
        .await?;
        self.declare_ok(channel).await
    }

    async fn declare_ok(&mut self, channel: u16) -> Result<u32> {
        let ok = self.expect(channel, amqp::QUEUE_DECLARE_OK).await?;
        let mut args = ok.args();
        args.short_str()
            .and_then(|_| args.u32())
            .ok_or_else(|| "malformed queue.declare-ok".to_string())
    }

    pub async fn purge(&mut self, channel: u16, queue: &str) -> Result<()> {
        self.send(&amqp::method(channel, amqp::QUEUE_PURGE, |b| {
            b.put_u16(0);
            amqp::put_short_str(b, queue);
            b.put_u8(0);
        }))
        .await?;
        self.expect(channel, amqp::QUEUE_PURGE_OK).await.map(drop)
    }

    pub async fn delete_queue(&mut self, channel: u16, queue: &str) -> Result<()> {
        self.send(&amqp::method(channel, amqp::QUEUE_DELETE, |b| {
            b.put_u16(0);
            amqp::put_short_str(b, queue);
            b.put_u8(0);
        }))
        .await?;
        self.expect(channel, amqp::QUEUE_DELETE_OK).await.map(drop)
    }

    pub async fn confirm_select(&mut self, channel: u16) -> Result<()> {
        self.send(&amqp::method(channel, amqp::CONFIRM_SELECT, |b| {
            b.put_u8(0)
        }))
        .await?;
        self.expect(channel, amqp::CONFIRM_SELECT_OK)
            .await
            .map(drop)
    }

    pub async fn qos(&mut self, channel: u16, prefetch: u16) -> Result<()> {
        self.send(&amqp::method(channel, amqp::BASIC_QOS, |b| {
            b.put_u32(0);
            b.put_u16(prefetch);
            b.put_u8(0);
        }))
        .await?;
        self.expect(channel, amqp::BASIC_QOS_OK).await.map(drop)
    }

    pub async fn consume(&mut self, channel: u16, queue: &str, no_ack: bool) -> Result<()> {
        self.send(&amqp::method(channel, amqp::BASIC_CONSUME, |b| {
            b.put_u16(0);
            amqp::put_short_str(b, queue);
            amqp::put_short_str(b, "");
            b.put_u8(if no_ack { 0b10 } else { 0 });
            amqp::put_table(b, &[]);
        }))
        .await?;
        self.expect(channel, amqp::BASIC_CONSUME_OK).await.map(drop)
    }

    /// One publish (method, header and body frames) to the default
    /// exchange, routed to `queue`.
    pub fn publish(&self, channel: u16, queue: &str, body: &[u8]) -> Bytes {
        let mut message = BytesMut::new();
        self.put_publish(&mut message, channel, queue, body);
        message.freeze()
    }

    pub fn put_publish(&self, out: &mut BytesMut, channel: u16, queue: &str, body: &[u8]) {
        out.extend_from_slice(&amqp::method(channel, amqp::BASIC_PUBLISH, |b| {
            b.put_u16(0);
            amqp::put_short_str(b, "");
            amqp::put_short_str(b, queue);
            b.put_u8(0);
        }));
        out.extend_from_slice(&amqp::frame(FRAME_HEADER, channel, |b| {
            b.put_u16(60);
            b.put_u16(0);
            b.put_u64(body.len() as u64);
            b.put_u16(0);
        }));
        for piece in body.chunks(self.frame_max - amqp::FRAME_OVERHEAD) {
            out.extend_from_slice(&amqp::frame(FRAME_BODY, channel, |b| {
                b.extend_from_slice(piece)
            }));
        }
    }

    /// Closes the connection and waits for the Close-Ok.
    pub async fn close(mut self) -> Result<()> {
        self.send(&amqp::close(0, "bye")).await?;
        self.expect(0, amqp::CONNECTION_CLOSE_OK).await.map(drop)
    }
}

pub fn ack(channel: u16, tag: u64) -> Bytes {
    amqp::method(channel, amqp::BASIC_ACK, |b| {
        b.put_u64(tag);
        b.put_u8(0);
    })
}

/// The delivery tag of a Basic.Deliver.
pub fn deliver_tag(frame: &Frame) -> Option<u64> {
    let mut args = frame.args();
    args.short_str()?;
    args.u64()
}

/// How many publishes are confirmed once this Basic.Ack or Nack is in, with
/// `confirmed` before it (a "multiple" ack confirms everything up to its tag).
pub fn confirmed_through(frame: &Frame, confirmed: u64) -> Option<u64> {
    let mut args = frame.args();
    let tag = args.u64()?;
    let multiple = args.u8()? & 1 != 0;
    Some(if multiple { tag } else { confirmed + 1 })
}

/// The payload of a body frame.
pub fn body(frame: &Frame) -> Option<&[u8]> {
    (frame.kind == FRAME_BODY).then_some(&frame.payload[..])
}
