//! Just enough AMQP 0-9-1 for the scenarios: frames read off a socket,
//! the methods the load generator sends, and the few fields it reads back.
//!
//! Written here rather than taken from warren or a client library: the
//! benchmark must measure warren from outside, and the load generator must
//! spend as little CPU as possible on the machine it shares with warren and
//! the broker (a publish is encoded once and written as prepared bytes; a
//! delivery is read without copying its body).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub type MethodId = (u16, u16);

pub const CONNECTION_START: MethodId = (10, 10);
pub const CONNECTION_START_OK: MethodId = (10, 11);
pub const CONNECTION_TUNE: MethodId = (10, 30);
pub const CONNECTION_TUNE_OK: MethodId = (10, 31);
pub const CONNECTION_OPEN: MethodId = (10, 40);
pub const CONNECTION_OPEN_OK: MethodId = (10, 41);
pub const CONNECTION_CLOSE: MethodId = (10, 50);
pub const CONNECTION_CLOSE_OK: MethodId = (10, 51);
pub const CHANNEL_OPEN: MethodId = (20, 10);
pub const CHANNEL_OPEN_OK: MethodId = (20, 11);
pub const CHANNEL_CLOSE: MethodId = (20, 40);
pub const CHANNEL_CLOSE_OK: MethodId = (20, 41);
pub const QUEUE_DECLARE: MethodId = (50, 10);
pub const QUEUE_DECLARE_OK: MethodId = (50, 11);
pub const QUEUE_PURGE: MethodId = (50, 30);
pub const QUEUE_PURGE_OK: MethodId = (50, 31);
pub const QUEUE_DELETE: MethodId = (50, 40);
pub const QUEUE_DELETE_OK: MethodId = (50, 41);
pub const BASIC_QOS: MethodId = (60, 10);
pub const BASIC_QOS_OK: MethodId = (60, 11);
pub const BASIC_CONSUME: MethodId = (60, 20);
pub const BASIC_CONSUME_OK: MethodId = (60, 21);
pub const BASIC_PUBLISH: MethodId = (60, 40);
pub const BASIC_DELIVER: MethodId = (60, 60);
pub const BASIC_ACK: MethodId = (60, 80);
pub const BASIC_NACK: MethodId = (60, 120);
pub const CONFIRM_SELECT: MethodId = (85, 10);
pub const CONFIRM_SELECT_OK: MethodId = (85, 11);

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;
/// Type, channel, size and the end octet.
pub const FRAME_OVERHEAD: usize = 8;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// One frame as received.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

impl Frame {
    pub fn method_id(&self) -> Option<MethodId> {
        let p = &self.payload;
        (self.kind == FRAME_METHOD && p.len() >= 4).then(|| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        })
    }

    pub fn args(&self) -> Fields<'_> {
        Fields(self.payload.get(4..).unwrap_or_default())
    }
}

/// Reads whole frames off a stream, in large reads.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next frame; cancel-safe (what was read stays buffered).
    pub async fn read_frame(&mut self) -> std::io::Result<Frame> {
        loop {
            if self.buf.len() >= 7 {
                let size = (&self.buf[3..7]).get_u32() as usize;
                if self.buf.len() >= size + FRAME_OVERHEAD {
                    let mut bytes = self.buf.split_to(size + FRAME_OVERHEAD);
                    if bytes[size + 7] != FRAME_END {
                        return Err(invalid("bad frame end octet"));
                    }
                    let kind = bytes.get_u8();
                    let channel = bytes.get_u16();
                    bytes.advance(4);
                    bytes.truncate(size);
                    return Ok(Frame {
                        kind,
                        channel,
                        payload: bytes.freeze(),
                    });
                }
                self.buf.reserve(size + FRAME_OVERHEAD);
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// A frame of `kind` on `channel` with the payload `payload` writes.
pub fn frame(kind: u8, channel: u16, payload: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u8(kind);
    b.put_u16(channel);
    b.put_u32(0);
    payload(&mut b);
    let size = (b.len() - 7) as u32;
    b[3..7].copy_from_slice(&size.to_be_bytes());
    b.put_u8(FRAME_END);
    b.freeze()
}

/// A method frame with the arguments `args` writes.
pub fn method(channel: u16, id: MethodId, args: impl FnOnce(&mut BytesMut)) -> Bytes {
    frame(FRAME_METHOD, channel, |b| {
        b.put_u16(id.0);
        b.put_u16(id.1);
        args(b);
    })
}

pub fn put_short_str(b: &mut BytesMut, s: &str) {
    b.put_u8(s.len() as u8);
    b.put_slice(s.as_bytes());
}

pub fn put_long_str(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(s.len() as u32);
    b.put_slice(s);
}

/// A field table of long-long integers (all the scenarios need).
pub fn put_table(b: &mut BytesMut, entries: &[(&str, i64)]) {
    let mut table = BytesMut::new();
    for (key, value) in entries {
        put_short_str(&mut table, key);
        table.put_u8(b'l');
        table.put_i64(*value);
    }
    put_long_str(b, &table);
}

/// Channel.Close or Connection.Close with reply code 200.
pub fn close(channel: u16, text: &str) -> Bytes {
    let id = if channel == 0 {
        CONNECTION_CLOSE
    } else {
        CHANNEL_CLOSE
    };
    method(channel, id, |b| {
        b.put_u16(200);
        put_short_str(b, text);
        b.put_u32(0);
    })
}

/// Reads a method's arguments in order.
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn short_str(&mut self) -> Option<String> {
        let len = self.u8()?;
        Some(String::from_utf8_lossy(self.take(len.into())?).into_owned())
    }
}

/// A Close's reply code and text, for error messages.
pub fn describe_close(frame: &Frame) -> String {
    let mut f = frame.args();
    match (f.u16(), f.short_str()) {
        (Some(code), Some(text)) => format!("{code} {text}"),
        _ => "a malformed close".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_written_are_read_back_across_reads() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&method(3, QUEUE_DECLARE_OK, |b| {
            put_short_str(b, "q");
            b.put_u32(7);
            b.put_u32(1);
        }));
        stream.extend_from_slice(&frame(FRAME_BODY, 3, |b| b.put_slice(&[9; 100_000])));
        let mut reader = FrameReader::new(&stream[..]);
        let ok = reader.read_frame().await.expect("a frame");
        assert_eq!((ok.channel, ok.method_id()), (3, Some(QUEUE_DECLARE_OK)));
        let mut args = ok.args();
        assert_eq!(args.short_str().as_deref(), Some("q"));
        assert_eq!(args.u32(), Some(7));
        let body = reader.read_frame().await.expect("a frame");
        assert_eq!((body.kind, body.payload.len()), (FRAME_BODY, 100_000));
        assert!(reader.read_frame().await.is_err(), "end of stream");
    }

    #[test]
    fn a_close_says_why() {
        let bytes = close(1, "done");
        let frame = Frame {
            kind: bytes[0],
            channel: 1,
            payload: bytes.slice(7..bytes.len() - 1),
        };
        assert_eq!(frame.method_id(), Some(CHANNEL_CLOSE));
        assert_eq!(describe_close(&frame), "200 done");
    }
}
