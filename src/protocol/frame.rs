//! AMQP 0-9-1 frame layer: reading whole frames off a byte stream without
//! copying them, and the few in-place edits the proxy makes (the channel id,
//! splitting oversized bodies).
//!
//! A frame is `type:u8 channel:u16 size:u32 payload[size] 0xCE`. The proxy keeps
//! every frame as the exact bytes it arrived as, so forwarding one costs a
//! two-byte rewrite and a queue push.

use super::ids;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type, channel, size and the end octet.
pub const FRAME_OVERHEAD: usize = 8;
const HEADER_LEN: usize = 7;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Why a byte stream stopped being a valid frame sequence. Each maps to
/// reply code 501 FRAME_ERROR when told to the peer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    TooLarge { size: usize, max: usize },
    #[error("frame end octet is {0:#04x}, expected 0xce")]
    BadEnd(u8),
    #[error("unknown frame type {0}")]
    BadType(u8),
}

/// One frame exactly as received, header and end octet included.
#[derive(Debug)]
pub struct Frame {
    bytes: BytesMut,
}

impl Frame {
    /// Wraps bytes that the caller guarantees hold exactly one well-formed frame.
    pub fn from_bytes(bytes: BytesMut) -> Self {
        debug_assert!(bytes.len() >= FRAME_OVERHEAD);
        Frame { bytes }
    }

    pub fn kind(&self) -> u8 {
        self.bytes[0]
    }

    pub fn channel(&self) -> u16 {
        u16::from_be_bytes([self.bytes[1], self.bytes[2]])
    }

    pub fn set_channel(&mut self, channel: u16) {
        self.bytes[1..3].copy_from_slice(&channel.to_be_bytes());
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - 1]
    }

    /// `(class_id, method_id)` of a method frame.
    pub fn method_id(&self) -> Option<(u16, u16)> {
        let p = self.payload();
        (self.kind() == FRAME_METHOD && p.len() >= 4).then(|| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        })
    }

    /// Part of a publish: Basic.Publish, or a content header or body.
    pub fn is_publish_part(&self) -> bool {
        match self.kind() {
            FRAME_HEADER | FRAME_BODY => true,
            _ => self.method_id() == Some(ids::BASIC_PUBLISH),
        }
    }

    /// Arguments of a method frame (payload after the class and method ids).
    pub fn method_args(&self) -> &[u8] {
        self.payload().get(4..).unwrap_or(&[])
    }

    /// Body size announced by a content header frame, unchecked: a client's
    /// header is read with its checks (`spec::check_content_header`); this
    /// is for the broker's.
    pub fn content_body_size(&self) -> Option<u64> {
        let p = self.payload();
        (self.kind() == FRAME_HEADER && p.len() >= 12)
            .then(|| u64::from_be_bytes(p[4..12].try_into().expect("8 bytes")))
    }

    /// Arguments of a method frame, for the in-place edits of
    /// [`super::method`].
    pub fn method_args_mut(&mut self) -> &mut [u8] {
        let end = self.bytes.len() - 1;
        self.bytes.get_mut(HEADER_LEN + 4..end).unwrap_or_default()
    }

    /// Moves the frame into an allocation of its own, so that keeping it
    /// no longer keeps the read buffer it was cut from.
    pub fn detach(&mut self) {
        self.bytes = BytesMut::from(&self.bytes[..]);
    }

    /// The whole frame, header and end octet included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Never 0: a frame is at least its header and end octet.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The frame addressed to `channel`, as bytes.
    pub fn into_bytes_for(mut self, channel: u16) -> Bytes {
        self.set_channel(channel);
        self.into_bytes()
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes.freeze()
    }
}

/// Builds a frame around `payload` written by `fill`.
pub fn build(kind: u8, channel: u16, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(kind);
    buf.put_u16(channel);
    buf.put_u32(0);
    fill(&mut buf);
    let size = (buf.len() - HEADER_LEN) as u32;
    buf[3..7].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
    buf.freeze()
}

const HEARTBEAT: [u8; 8] = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];
pub const HEARTBEAT_LEN: u64 = HEARTBEAT.len() as u64;

pub fn heartbeat() -> Bytes {
    Bytes::from_static(&HEARTBEAT)
}

/// Emits `frame` with its channel set to `channel`, splitting a body frame
/// whose payload exceeds what a peer with `frame_max` accepts. Every piece
/// is one contiguous `Bytes`: a queue shared with other producers can never
/// get a foreign frame between a piece's header and its payload. (A frame
/// that fits, the common case, is passed on without a copy.)
pub fn push_for_peer(mut frame: Frame, channel: u16, frame_max: usize, out: &mut Vec<Bytes>) {
    frame.set_channel(channel);
    if frame.len() <= frame_max || frame.kind() != FRAME_BODY {
        out.push(frame.into_bytes());
        return;
    }
    let chunk = frame_max - FRAME_OVERHEAD;
    for piece in frame.payload().chunks(chunk) {
        let mut split = BytesMut::with_capacity(piece.len() + FRAME_OVERHEAD);
        split.put_u8(FRAME_BODY);
        split.put_u16(channel);
        split.put_u32(piece.len() as u32);
        split.put_slice(piece);
        split.put_u8(FRAME_END);
        out.push(split.freeze());
    }
}

/// Reads whole frames from a stream. Cancel-safe: bytes already read stay in
/// the buffer, so it can sit in a `select!` next to other events.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    frame_max: usize,
    /// Room offered to the next read: grows while reads fill it (a bulk
    /// stream then costs a syscall per 256 KiB, not per few KiB, and a
    /// large frame rarely straddles two buffers) and shrinks
    /// back when they do not (an idle connection holds a small buffer).
    read_size: usize,
}

const MIN_READ: usize = 2 * 1024;
const MAX_READ: usize = 256 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, frame_max: u32) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            frame_max: frame_max as usize,
            read_size: MIN_READ,
        }
    }

    /// Largest frame accepted from now on (after Tune negotiation).
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max as usize;
    }

    /// Reads exactly `n` bytes that precede framing (the protocol header).
    pub async fn read_preamble(&mut self, n: usize) -> Result<Bytes, FrameError> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Whether a whole frame is already buffered: the next `read_frame`
    /// will not wait for the socket.
    pub fn has_buffered_frame(&self) -> bool {
        self.buf.len() >= HEADER_LEN
            && self.buf.len() >= (&self.buf[3..7]).get_u32() as usize + FRAME_OVERHEAD
    }

    pub async fn read_frame(&mut self) -> Result<Frame, FrameError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    fn parse(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = self.buf[0];
        if !matches!(
            kind,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ) {
            return Err(FrameError::BadType(kind));
        }
        let size = (&self.buf[3..7]).get_u32() as usize;
        let total = size + FRAME_OVERHEAD;
        if total > self.frame_max {
            return Err(FrameError::TooLarge {
                size: total,
                max: self.frame_max,
            });
        }
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let end = self.buf[total - 1];
        if end != FRAME_END {
            return Err(FrameError::BadEnd(end));
        }
        Ok(Some(Frame::from_bytes(self.buf.split_to(total))))
    }

    async fn fill(&mut self) -> Result<(), FrameError> {
        let spare = self.buf.capacity() - self.buf.len();
        if spare < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let offered = self.buf.capacity() - self.buf.len();
        match self.inner.read_buf(&mut self.buf).await? {
            0 => Err(FrameError::Closed),
            n => {
                if n == offered {
                    self.read_size = (self.read_size * 2).min(MAX_READ);
                } else if n < self.read_size / 4 {
                    self.read_size = (self.read_size / 2).max(MIN_READ);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::arbitrary::any;

    fn body_frame(channel: u16, payload: &[u8]) -> Bytes {
        build(FRAME_BODY, channel, |b| b.put_slice(payload))
    }

    #[tokio::test]
    async fn reads_back_to_back_frames_and_partial_input() {
        let mut wire = body_frame(3, b"hello").to_vec();
        wire.extend_from_slice(&heartbeat());
        let (mut tx, rx) = tokio::io::duplex(4);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&wire).await.unwrap();
        });
        let mut reader = FrameReader::new(rx, 4096);
        let first = reader.read_frame().await.unwrap();
        assert_eq!((first.kind(), first.channel()), (FRAME_BODY, 3));
        assert_eq!(first.payload(), b"hello");
        let second = reader.read_frame().await.unwrap();
        assert_eq!(second.kind(), FRAME_HEARTBEAT);
        writer.await.unwrap();
        assert!(matches!(reader.read_frame().await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn rejects_bad_end_oversize_and_unknown_type() {
        let mut bad_end = body_frame(1, b"x").to_vec();
        *bad_end.last_mut().unwrap() = 0;
        let mut r = FrameReader::new(&bad_end[..], 4096);
        assert!(matches!(r.read_frame().await, Err(FrameError::BadEnd(0))));

        let big = body_frame(1, &[0u8; 100]);
        let mut r = FrameReader::new(&big[..], 64);
        assert!(matches!(
            r.read_frame().await,
            Err(FrameError::TooLarge { .. })
        ));

        let mut r = FrameReader::new(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..], 4096);
        assert!(matches!(r.read_frame().await, Err(FrameError::BadType(9))));
    }

    #[test]
    fn rewrites_channel_and_splits_bodies_for_small_peers() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let frame = Frame::from_bytes(BytesMut::from(&body_frame(7, &payload)[..]));
        let mut out = Vec::new();
        push_for_peer(frame, 42, 4096, &mut out);
        assert_eq!(out.len(), 3, "one queue item per piece");
        let wire: Vec<u8> = out.concat();
        let mut cursor = &wire[..];
        let mut rebuilt = Vec::new();
        while !cursor.is_empty() {
            let size = u32::from_be_bytes(cursor[3..7].try_into().unwrap()) as usize;
            assert_eq!(cursor[0], FRAME_BODY);
            assert_eq!(u16::from_be_bytes([cursor[1], cursor[2]]), 42);
            assert!(size + FRAME_OVERHEAD <= 4096);
            assert_eq!(cursor[7 + size], FRAME_END);
            rebuilt.extend_from_slice(&cursor[7..7 + size]);
            cursor = &cursor[size + FRAME_OVERHEAD..];
        }
        assert_eq!(rebuilt, payload);
    }

    /// A reader that hands out its input in the given pieces, one per read.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn cut(wire: &[u8], cuts: &[usize]) -> Pieces {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut pieces = std::collections::VecDeque::new();
        let mut start = 0;
        for point in points.into_iter().chain([wire.len()]) {
            if point > start {
                pieces.push_back(wire[start..point].to_vec());
                start = point;
            }
        }
        Pieces(pieces)
    }

    fn read_all(reader: Pieces, frame_max: u32) -> (Vec<Vec<u8>>, FrameError) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut r = FrameReader::new(reader, frame_max);
            let mut frames = Vec::new();
            loop {
                match r.read_frame().await {
                    Ok(frame) => frames.push(frame.as_bytes().to_vec()),
                    Err(e) => return (frames, e),
                }
            }
        })
    }

    proptest::proptest! {
        /// However the bytes of valid frames are cut into reads, the same
        /// frames come out, whole, and then the end of the stream.
        #[test]
        fn frames_survive_any_cutting(
            frames in proptest::collection::vec(
                (proptest::sample::select(vec![FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT]),
                 any::<u16>(),
                 proptest::collection::vec(any::<u8>(), 0..300)),
                0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let sent: Vec<Vec<u8>> = frames
                .iter()
                .map(|(kind, channel, payload)| build(*kind, *channel, |b| b.put_slice(payload)).to_vec())
                .collect();
            let (got, end) = read_all(cut(&sent.concat(), &cuts), 4096);
            proptest::prop_assert_eq!(got, sent);
            proptest::prop_assert!(matches!(end, FrameError::Closed));
        }

        /// Arbitrary bytes end in a frame error or the end of the stream,
        /// never a panic, and no frame returned is larger than frame_max.
        #[test]
        fn garbage_never_panics(
            wire in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let (got, _) = read_all(cut(&wire, &cuts), 4096);
            proptest::prop_assert!(got.iter().all(|f| f.len() <= 4096 && f[f.len() - 1] == FRAME_END));
        }
    }
}
