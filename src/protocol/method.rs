//! The handful of AMQP methods whose arguments warren reads or writes itself.
//! Every other method crosses the proxy as opaque bytes.

use super::ids::*;
use bytes::{BufMut, Bytes};

use super::frame::{self, Frame, FRAME_METHOD};
use super::spec;
use super::wire::{put_long_bytes, put_short_str, put_table, DecodeError, Decoder, FieldTable};

/// Human name of a method for log lines and error texts.
pub fn name(id: MethodId) -> String {
    match spec::lookup(id.0, id.1) {
        Some(m) => m.name.to_string(),
        None => format!("method {}.{}", id.0, id.1),
    }
}

/// A method frame: class and method ids, then the arguments `args` writes.
pub fn encode(channel: u16, id: MethodId, args: impl FnOnce(&mut bytes::BytesMut)) -> Bytes {
    frame::build(FRAME_METHOD, channel, |b| {
        b.put_u16(id.0);
        b.put_u16(id.1);
        args(b);
    })
}

pub fn connection_start(server_properties: &FieldTable, mechanisms: &str) -> Bytes {
    encode(0, CONNECTION_START, |b| {
        b.put_u8(0);
        b.put_u8(9);
        put_table(b, server_properties);
        put_long_bytes(b, mechanisms.as_bytes());
        put_long_bytes(b, b"en_US");
    })
}

pub fn connection_start_ok(
    client_properties: &FieldTable,
    mechanism: &str,
    response: &[u8],
) -> Bytes {
    encode(0, CONNECTION_START_OK, |b| {
        put_table(b, client_properties);
        put_short_str(b, mechanism);
        put_long_bytes(b, response);
        put_short_str(b, "en_US");
    })
}

/// Connection.Tune and Tune-Ok share their arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tune {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

impl Tune {
    pub fn decode(args: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(args);
        Ok(Tune {
            channel_max: d.u16()?,
            frame_max: d.u32()?,
            heartbeat: d.u16()?,
        })
    }

    pub fn encode(&self, id: MethodId) -> Bytes {
        encode(0, id, |b| {
            b.put_u16(self.channel_max);
            b.put_u32(self.frame_max);
            b.put_u16(self.heartbeat);
        })
    }
}

pub fn connection_open(vhost: &str) -> Bytes {
    encode(0, CONNECTION_OPEN, |b| {
        put_short_str(b, vhost);
        put_short_str(b, "");
        b.put_u8(0);
    })
}

pub fn connection_open_ok() -> Bytes {
    encode(0, CONNECTION_OPEN_OK, |b| put_short_str(b, ""))
}

pub fn connection_update_secret_ok() -> Bytes {
    encode(0, CONNECTION_UPDATE_SECRET_OK, |_| {})
}

pub fn connection_close_ok() -> Bytes {
    encode(0, CONNECTION_CLOSE_OK, |_| {})
}

pub fn channel_close_ok(channel: u16) -> Bytes {
    encode(channel, CHANNEL_CLOSE_OK, |_| {})
}

pub fn channel_open(channel: u16) -> Bytes {
    encode(channel, CHANNEL_OPEN, |b| put_short_str(b, ""))
}

pub fn channel_open_ok(channel: u16) -> Bytes {
    encode(channel, CHANNEL_OPEN_OK, |b| put_long_bytes(b, b""))
}

pub fn channel_flow(channel: u16, active: bool) -> Bytes {
    encode(channel, CHANNEL_FLOW, |b| b.put_u8(active as u8))
}

pub fn basic_qos_ok(channel: u16) -> Bytes {
    encode(channel, BASIC_QOS_OK, |_| {})
}

pub fn confirm_select_ok(channel: u16) -> Bytes {
    encode(channel, CONFIRM_SELECT_OK, |_| {})
}

/// Confirm.Select with no-wait: the broker answers nothing.
pub fn confirm_select_nowait(channel: u16) -> Bytes {
    encode(channel, CONFIRM_SELECT, |b| b.put_u8(1))
}

/// Basic.Nack of one publish, as the broker nacks one it could not take.
pub fn basic_nack(channel: u16, tag: u64) -> Bytes {
    encode(channel, BASIC_NACK, |b| {
        b.put_u64(tag);
        b.put_u8(0);
    })
}

pub fn connection_blocked(reason: &str) -> Bytes {
    encode(0, CONNECTION_BLOCKED, |b| put_short_str(b, reason))
}

pub fn connection_unblocked() -> Bytes {
    encode(0, CONNECTION_UNBLOCKED, |_| {})
}

/// A Queue.Declare of `queue` as exclusive, not passive, waiting for its
/// reply, with the durability, auto-delete and arguments of `declared` (the
/// arguments of the declare that made it). Sent before deleting a departed
/// client's queue, it checks that the name is still that queue: it is
/// answered Declare-Ok only by an equivalent queue exclusive to this
/// connection (or by a new one, if the queue is gone), and any other queue
/// of the name gets the channel closed (405, 406), so the Queue.Delete
/// pipelined after it is discarded.
pub fn queue_redeclare_exclusive(channel: u16, queue: &str, declared: &[u8]) -> Bytes {
    let mut d = Decoder::new(declared);
    let (bits, arguments) = match (d.u16(), d.short_bytes(), d.u8()) {
        (Ok(_), Ok(_), Ok(bits)) => (bits, d.rest()),
        _ => (0, &[0u8; 4][..]),
    };
    const PASSIVE: u8 = 0b1;
    const EXCLUSIVE: u8 = 0b100;
    const NO_WAIT: u8 = 0b10000;
    encode(channel, QUEUE_DECLARE, |b| {
        b.put_u16(0);
        put_short_str(b, queue);
        b.put_u8((bits & !(PASSIVE | NO_WAIT)) | EXCLUSIVE);
        b.put_slice(arguments);
    })
}

/// A passive Queue.Declare: whether `queue` exists.
pub fn queue_declare_passive(channel: u16, queue: &str) -> Bytes {
    encode(channel, QUEUE_DECLARE, |b| {
        b.put_u16(0);
        put_short_str(b, queue);
        b.put_u8(0b1);
        b.put_u32(0);
    })
}

/// Queue.Delete without waiting for the reply.
pub fn queue_delete_nowait(channel: u16, queue: &str) -> Bytes {
    encode(channel, QUEUE_DELETE, |b| {
        b.put_u16(0);
        put_short_str(b, queue);
        b.put_u8(0b100);
    })
}

/// Basic.Qos arguments: the channel state warren must reproduce for
/// each client of a reused channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Qos {
    pub prefetch_size: u32,
    pub prefetch_count: u16,
    pub global: bool,
}

impl Qos {
    pub fn decode(args: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(args);
        Ok(Qos {
            prefetch_size: d.u32()?,
            prefetch_count: d.u16()?,
            global: d.u8()? & 1 == 1,
        })
    }

    pub fn frame(&self, channel: u16) -> Bytes {
        encode(channel, BASIC_QOS, |b| {
            b.put_u32(self.prefetch_size);
            b.put_u16(self.prefetch_count);
            b.put_u8(self.global as u8);
        })
    }
}

/// Exchange.Declare's type and passive flag.
pub fn decode_exchange_declare(args: &[u8]) -> Result<(String, bool), DecodeError> {
    let mut d = Decoder::new(args);
    d.u16()?;
    d.short_bytes()?;
    let kind = d.short_str()?;
    Ok((kind, d.u8()? & 1 == 1))
}

/// Whether the broker knows an exchange type: the four built in, or one of
/// the plugin types it was configured with. RabbitMQ refuses any other
/// with a connection-level 503.
pub fn exchange_type_known(kind: &str, plugin_types: &[String]) -> bool {
    matches!(kind, "direct" | "fanout" | "topic" | "headers")
        || plugin_types.iter().any(|t| t == kind)
}

/// The queue named by a method that needs exclusive access to it when the
/// queue is exclusive to another connection (RabbitMQ answers 405 for these:
/// declare, bind, purge, unbind, delete, consume, get).
pub fn queue_needing_access(id: MethodId, args: &[u8]) -> Option<String> {
    match id {
        QUEUE_DECLARE | QUEUE_BIND | QUEUE_PURGE | QUEUE_DELETE | QUEUE_UNBIND | BASIC_CONSUME
        | BASIC_GET => decode_queue_name(args).filter(|name| !name.is_empty()),
        _ => None,
    }
}

/// The queue name that these methods all carry first, after a reserved short.
fn decode_queue_name(args: &[u8]) -> Option<String> {
    let mut d = Decoder::new(args);
    d.u16().ok()?;
    d.short_str().ok()
}

/// Whether the broker will answer this client request on its channel
/// (exchange.*, queue.*, basic.qos, confirm.select without no-wait). When
/// the arguments cannot be read it says yes: a reply counted but never seen
/// only keeps a channel from being reused.
pub fn reply_expected(id: MethodId, args: &[u8]) -> bool {
    let (strings, nowait_bit) = match id {
        EXCHANGE_DECLARE => (2, 4),
        EXCHANGE_DELETE => (1, 1),
        EXCHANGE_BIND | EXCHANGE_UNBIND | QUEUE_BIND => (3, 0),
        QUEUE_DECLARE => (1, 4),
        QUEUE_PURGE => (1, 0),
        QUEUE_DELETE => (1, 2),
        QUEUE_UNBIND | BASIC_QOS => return true,
        CONFIRM_SELECT => return args.first().is_none_or(|bits| bits & 1 == 0),
        _ => return false,
    };
    let mut d = Decoder::new(args);
    let nowait = (|| {
        d.u16()?;
        for _ in 0..strings {
            d.short_bytes()?;
        }
        Ok::<_, DecodeError>(d.u8()? & (1 << nowait_bit) != 0)
    })();
    !nowait.unwrap_or(false)
}

/// The broker's answers to the requests of [`reply_expected`].
pub fn is_reply(id: MethodId) -> bool {
    matches!(
        id,
        EXCHANGE_DECLARE_OK
            | EXCHANGE_DELETE_OK
            | EXCHANGE_BIND_OK
            | EXCHANGE_UNBIND_OK
            | QUEUE_DECLARE_OK
            | QUEUE_BIND_OK
            | QUEUE_PURGE_OK
            | QUEUE_DELETE_OK
            | QUEUE_UNBIND_OK
    ) || id == BASIC_QOS_OK
        || id == CONFIRM_SELECT_OK
}

/// The delivery tag of Basic.Ack, Nack or Reject (their first argument).
pub fn ack_tag(frame: &Frame) -> Option<u64> {
    let args = frame.method_args();
    (args.len() >= 8).then(|| u64::from_be_bytes(args[..8].try_into().expect("8 bytes")))
}

/// The delivery tag and `multiple` flag of a Basic.Ack or Nack.
pub fn ack_fields(frame: &Frame) -> Option<(u64, bool)> {
    let args = frame.method_args();
    let tag = ack_tag(frame)?;
    Some((tag, args.get(8).is_some_and(|bits| bits & 1 == 1)))
}

/// Rewrites the delivery tag of a Basic.Ack, Nack or Reject in place.
pub fn set_ack_tag(frame: &mut Frame, tag: u64) {
    if let Some(at) = frame.method_args_mut().get_mut(..8) {
        at.copy_from_slice(&tag.to_be_bytes());
    }
}

/// Basic.Publish's mandatory and immediate flags.
pub fn decode_publish_flags(args: &[u8]) -> Result<(bool, bool), DecodeError> {
    let mut d = Decoder::new(args);
    d.u16()?;
    d.short_bytes()?;
    d.short_bytes()?;
    let bits = d.u8()?;
    Ok((bits & 1 != 0, bits & 2 != 0))
}

/// The queue name argument of a method that takes one (possibly empty:
/// RabbitMQ then uses the queue last declared on the channel).
pub fn queue_argument(id: MethodId, args: &[u8]) -> Option<String> {
    match id {
        BASIC_CONSUME | BASIC_GET | QUEUE_BIND | QUEUE_PURGE | QUEUE_DELETE | QUEUE_UNBIND => {
            decode_queue_name(args)
        }
        _ => None,
    }
}

/// Basic.Consume's consumer tag (empty: the broker picks one).
pub fn decode_consume_tag(args: &[u8]) -> Result<String, DecodeError> {
    let mut d = Decoder::new(args);
    d.u16()?;
    d.short_bytes()?;
    d.short_str()
}

/// Basic.Cancel's consumer tag.
pub fn decode_cancel_tag(args: &[u8]) -> Result<String, DecodeError> {
    Decoder::new(args).short_str()
}

/// What Queue.Delete asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDelete {
    pub queue: String,
    /// if-unused or if-empty: the broker may refuse it.
    pub conditional: bool,
    pub nowait: bool,
}

/// The queue name and the flag octet that Queue.Declare and Queue.Delete
/// start with, after a reserved short.
fn queue_and_flags(args: &[u8]) -> Result<(String, u8), DecodeError> {
    let mut d = Decoder::new(args);
    d.u16()?;
    Ok((d.short_str()?, d.u8()?))
}

impl QueueDelete {
    pub fn decode(args: &[u8]) -> Result<Self, DecodeError> {
        let (queue, bits) = queue_and_flags(args)?;
        Ok(QueueDelete {
            queue,
            conditional: bits & 0b11 != 0,
            nowait: bits & 0b100 != 0,
        })
    }
}

/// Confirm.Select's no-wait flag.
pub fn decode_confirm_nowait(args: &[u8]) -> Result<bool, DecodeError> {
    Ok(Decoder::new(args).u8()? & 1 == 1)
}

/// The parts of Queue.Declare that decide the queue's lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclare {
    pub queue: String,
    pub passive: bool,
    pub exclusive: bool,
    pub nowait: bool,
}

impl QueueDeclare {
    pub fn decode(args: &[u8]) -> Result<Self, DecodeError> {
        let (queue, bits) = queue_and_flags(args)?;
        Ok(QueueDeclare {
            queue,
            passive: bits & 0b1 != 0,
            exclusive: bits & 0b100 != 0,
            nowait: bits & 0b10000 != 0,
        })
    }
}

/// The queue name in Queue.Declare-Ok (server-named queues get theirs here).
pub fn decode_declare_ok_queue(args: &[u8]) -> Result<String, DecodeError> {
    Decoder::new(args).short_str()
}

/// Arguments of Connection.Close and Channel.Close: a reply code and text,
/// and the method that caused it (0.0 when none did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub text: String,
    pub cause: MethodId,
}

impl Close {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Close {
            code,
            text: text.into(),
            cause: (0, 0),
        }
    }

    pub fn caused_by(mut self, cause: MethodId) -> Self {
        self.cause = cause;
        self
    }

    pub fn decode(args: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(args);
        Ok(Close {
            code: d.u16()?,
            text: d.short_str()?,
            cause: (d.u16()?, d.u16()?),
        })
    }

    fn encode(&self, channel: u16, id: MethodId) -> Bytes {
        encode(channel, id, |b| {
            b.put_u16(self.code);
            put_short_str(b, &self.text);
            b.put_u16(self.cause.0);
            b.put_u16(self.cause.1);
        })
    }

    pub fn connection_frame(&self) -> Bytes {
        self.encode(0, CONNECTION_CLOSE)
    }

    pub fn channel_frame(&self, channel: u16) -> Bytes {
        self.encode(channel, CHANNEL_CLOSE)
    }
}

/// Connection.Start-Ok as sent by a client.
#[derive(Debug)]
pub struct StartOk {
    pub client_properties: FieldTable,
    pub mechanism: String,
    pub response: Vec<u8>,
}

impl StartOk {
    pub fn decode(args: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(args);
        Ok(StartOk {
            client_properties: d.table()?,
            mechanism: d.short_str()?,
            response: d.long_bytes()?.to_vec(),
        })
    }
}

/// Connection.Start as sent by the broker.
#[derive(Debug)]
pub struct Start {
    pub server_properties: FieldTable,
    pub mechanisms: String,
}

impl Start {
    pub fn decode(args: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(args);
        d.u8()?;
        d.u8()?;
        Ok(Start {
            server_properties: d.table()?,
            mechanisms: String::from_utf8_lossy(d.long_bytes()?).into_owned(),
        })
    }
}

/// The virtual host named by Connection.Open.
pub fn decode_open_vhost(args: &[u8]) -> Result<String, DecodeError> {
    Decoder::new(args).short_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::FrameReader;
    use crate::protocol::wire::FieldValue;

    async fn parse(bytes: Bytes) -> Frame {
        FrameReader::new(&bytes[..], 1 << 20)
            .read_frame()
            .await
            .unwrap()
    }

    #[test]
    fn replies_are_expected_unless_nowait() {
        let declare = |bits: u8| {
            let mut b = bytes::BytesMut::new();
            b.put_u16(0);
            put_short_str(&mut b, "q");
            b.put_u8(bits);
            b.to_vec()
        };
        assert!(reply_expected(QUEUE_DECLARE, &declare(0b0010)));
        assert!(!reply_expected(QUEUE_DECLARE, &declare(0b1_0000)));
        assert!(
            reply_expected(QUEUE_DECLARE, &[]),
            "unreadable: assume a reply"
        );
        assert!(reply_expected(CONFIRM_SELECT, &[0]));
        assert!(!reply_expected(CONFIRM_SELECT, &[1]));
        assert!(!reply_expected(BASIC_PUBLISH, &[]));
        assert!(is_reply(QUEUE_DECLARE_OK) && is_reply(BASIC_QOS_OK) && !is_reply(BASIC_DELIVER));
    }

    #[tokio::test]
    async fn close_round_trips_with_cause() {
        let close = Close::new(404, "NOT_FOUND - no exchange 'x'").caused_by(BASIC_PUBLISH);
        let frame = parse(close.channel_frame(5)).await;
        assert_eq!(frame.channel(), 5);
        assert_eq!(frame.method_id(), Some(CHANNEL_CLOSE));
        assert_eq!(Close::decode(frame.method_args()).unwrap(), close);
    }

    #[tokio::test]
    async fn start_ok_and_tune_decode_what_encode_wrote() {
        let props = vec![("product".to_string(), FieldValue::LongStr(b"t".to_vec()))];
        let frame = parse(connection_start_ok(&props, "PLAIN", b"\0u\0p")).await;
        let start_ok = StartOk::decode(frame.method_args()).unwrap();
        assert_eq!(start_ok.client_properties, props);
        assert_eq!(start_ok.mechanism, "PLAIN");
        assert_eq!(start_ok.response, b"\0u\0p");

        let tune = Tune {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
        };
        let frame = parse(tune.encode(CONNECTION_TUNE)).await;
        assert_eq!(Tune::decode(frame.method_args()).unwrap(), tune);
    }
}
