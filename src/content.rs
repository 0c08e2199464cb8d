//! A publish on its way through a session: its frames are held until the
//! message is whole, so a message reaches a shared upstream connection
//! whole or not at all (after a content header RabbitMQ accepts nothing but
//! the rest of the content on that channel: a client that vanished mid-message
//! would otherwise leave a frame error on a connection others share).
//!
//! Holding costs memory, so it is budgeted: per client connection and for
//! all clients together (`--max-held-publish-mib`). A message that completes
//! within the bytes read together costs nothing beyond the read buffer it
//! arrived in. Whatever is still held once those bytes are handled waits for
//! another read: it is copied out of the read buffer (a 40-byte frame would
//! otherwise pin the whole buffer, up to 384 KiB) and charged at what it then
//! occupies. A client whose charge would go over either bound is closed with
//! 506 RESOURCE_ERROR; nothing it held reaches the broker.

use crate::protocol::ids::{self, MethodId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::protocol::frame::{Frame, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use crate::protocol::method::Close;
use crate::protocol::reply::{
    self, INTERNAL_ERROR, PRECONDITION_FAILED, RESOURCE_ERROR, UNEXPECTED_FRAME,
};
use crate::protocol::spec::{self, BadHeader, MethodSpec};

/// RabbitMQ's default `max_message_size` (128 MiB): larger publishes are
/// refused with the same channel error the broker would give.
pub const MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;
/// What one client connection may hold: two messages of the largest size.
pub const CLIENT_HELD_LIMIT: u64 = 2 * MAX_MESSAGE_SIZE;
/// What holding one frame costs beyond its bytes: its own allocation's
/// bookkeeping and its slot in the channel's list of held frames.
const HELD_FRAME_OVERHEAD: u64 = 128;

fn in_mib(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Bytes of partly received messages held for all clients together.
#[derive(Debug)]
pub struct HeldBytes {
    used: AtomicU64,
    limit: AtomicU64,
}

impl HeldBytes {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(HeldBytes {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
        })
    }

    /// A reload: applies to the next bytes taken.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes counted now (small held messages excepted).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget, `--max-held-publish-mib` in bytes.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }
}

/// One client connection's share of the budget.
#[derive(Debug)]
pub struct PublishBudget {
    shared: Arc<HeldBytes>,
    client_used: AtomicU64,
}

impl PublishBudget {
    pub fn new(shared: Arc<HeldBytes>) -> Arc<Self> {
        Arc::new(PublishBudget {
            shared,
            client_used: AtomicU64::new(0),
        })
    }

    fn take(&self, bytes: u64) -> Result<(), Close> {
        let client = self.client_used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if client > CLIENT_HELD_LIMIT {
            self.client_used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(reply::close(
                RESOURCE_ERROR,
                format!(
                    "warren: more than {} of partly received messages held for this connection",
                    in_mib(CLIENT_HELD_LIMIT)
                ),
            ));
        }
        let limit = self.shared.limit.load(Ordering::Relaxed);
        let total = self.shared.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > limit {
            self.give(bytes);
            return Err(reply::close(
                RESOURCE_ERROR,
                format!(
                    "warren: its {} for partly received messages of all clients are used up",
                    in_mib(limit)
                ),
            ));
        }
        Ok(())
    }

    fn give(&self, bytes: u64) {
        self.client_used.fetch_sub(bytes, Ordering::Relaxed);
        self.shared.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes an assembler took from a budget; given back when dropped, however
/// the message ends (complete, refused, channel or client gone).
#[derive(Debug)]
struct Charge {
    budget: Arc<PublishBudget>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// What to do with a frame the client sent on an open channel.
#[derive(Debug)]
pub enum ContentVerdict {
    /// Not part of a publish: forward now.
    Forward(Frame),
    /// Held until the rest of its message arrives.
    Held,
    /// Nothing to do (a body past an overrun message's size).
    Ignored,
    /// The message is complete: forward these frames in order.
    Complete(Vec<Frame>),
    /// The channel must be closed with this error (the message is dropped).
    ChannelError(Close),
    /// The client broke framing rules: close its connection.
    ConnectionError(Close),
}

/// Collects a publish (method, header, bodies) so that a message reaches the
/// broker whole or not at all: a client that vanishes mid-message leaves
/// nothing half-written on a shared upstream connection.
#[derive(Debug, Default)]
pub struct ContentAssembler {
    held: Vec<Frame>,
    /// How many of `held` are copied out of the read buffer and charged.
    settled: usize,
    charge: Option<Charge>,
    expected: Option<u64>,
    received: u64,
    /// A body went past the announced size: like RabbitMQ, further bodies
    /// are ignored and the next other frame is an unexpected frame.
    overrun: Option<MethodId>,
}

impl ContentAssembler {
    /// Whether the channel expects a method (no message under way).
    pub fn is_idle(&self) -> bool {
        self.held.is_empty() && self.overrun.is_none()
    }

    /// The method of the message under way.
    fn content_method(&self) -> MethodId {
        self.overrun
            .or_else(|| self.held.first().and_then(Frame::method_id))
            .unwrap_or((0, 0))
    }

    /// Holds a frame of the message, and releases the message if this frame
    /// completes it.
    #[inline]
    fn hold(&mut self, frame: Frame) -> ContentVerdict {
        self.held.push(frame);
        if self.expected == Some(self.received) {
            let frames = std::mem::take(&mut self.held);
            self.reset();
            // RabbitMQ refuses a server's content method once it is whole.
            return match frames[0].method_id() {
                Some(id) if id != ids::BASIC_PUBLISH => {
                    ContentVerdict::ConnectionError(reply::unimplemented_method(id))
                }
                _ => ContentVerdict::Complete(frames),
            };
        }
        ContentVerdict::Held
    }

    /// Called when the bytes read together are handled and the message is
    /// still incomplete: frames held since the last call are copied into
    /// allocations of their own and charged to `budget`. On refusal the
    /// message is dropped and the client must be closed with the error.
    pub fn settle(&mut self, budget: &Arc<PublishBudget>) -> Result<(), Close> {
        let fresh = &mut self.held[self.settled..];
        if fresh.is_empty() {
            return Ok(());
        }
        let due: u64 = fresh
            .iter()
            .map(|f| f.len() as u64 + HELD_FRAME_OVERHEAD)
            .sum();
        if let Err(close) = budget.take(due) {
            self.reset();
            return Err(close);
        }
        for frame in fresh {
            frame.detach();
        }
        self.settled = self.held.len();
        self.charge
            .get_or_insert_with(|| Charge {
                budget: budget.clone(),
                bytes: 0,
            })
            .bytes += due;
        Ok(())
    }

    /// Takes the client's next frame on this channel, as RabbitMQ's
    /// command assembler does: a method when idle, then a content header,
    /// then bodies up to the announced size; anything else is 505 with its
    /// texts. `method`: a method frame's spec, as the caller looked it up.
    pub fn accept(&mut self, frame: Frame, method: Option<&MethodSpec>) -> ContentVerdict {
        if self.overrun.is_some() {
            return match frame.kind() {
                FRAME_BODY => ContentVerdict::Ignored,
                _ => self.expected_body(),
            };
        }
        match (frame.kind(), self.is_idle(), self.expected) {
            (FRAME_METHOD, true, _) if method.is_some_and(|m| m.content) => self.hold(frame),
            (FRAME_METHOD, true, _) => ContentVerdict::Forward(frame),
            (_, true, _) => self.connection_error(reply::close(
                UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
            )),
            (FRAME_HEADER, false, None) => self.header(frame),
            (_, false, None) => self.expected_header(),
            (FRAME_BODY, false, Some(expected)) => {
                self.received += frame.payload().len() as u64;
                if self.received > expected {
                    let id = self.content_method();
                    self.reset();
                    self.overrun = Some(id);
                    return ContentVerdict::Ignored;
                }
                self.hold(frame)
            }
            (_, false, Some(_)) => self.expected_body(),
        }
    }

    /// The content header of the message under way.
    fn header(&mut self, frame: Frame) -> ContentVerdict {
        let size = match spec::check_content_header(frame.payload()) {
            Ok(header) if header.weight != 0 => return self.expected_header(),
            Ok(header) if header.class != spec::BASIC_CLASS => {
                return self.unexpected(format!(
                    "expected content header for class 60, got one for class {} instead",
                    header.class
                ))
            }
            Ok(header) => header.body_size,
            Err(BadHeader::Short) => {
                return self.connection_error(reply::unknown_frame(FRAME_HEADER, frame.payload()))
            }
            // RabbitMQ decodes properties when it handles the publish, and
            // its channel crashes on ones that do not decode.
            Err(BadHeader::Properties) => {
                return self.connection_error(Close::new(INTERNAL_ERROR, "INTERNAL_ERROR"))
            }
        };
        if size > MAX_MESSAGE_SIZE {
            self.reset();
            return ContentVerdict::ChannelError(reply::close(
                PRECONDITION_FAILED,
                format!(
                    "message size {size} is larger than configured max size {MAX_MESSAGE_SIZE}"
                ),
            ));
        }
        self.expected = Some(size);
        self.hold(frame)
    }

    fn expected_header(&mut self) -> ContentVerdict {
        self.unexpected(
            "expected content header for class 60, got non content header frame instead".into(),
        )
    }

    fn expected_body(&mut self) -> ContentVerdict {
        self.unexpected("expected content body, got non content body frame instead".into())
    }

    /// 505 for a frame out of place in the message under way.
    fn unexpected(&mut self, detail: String) -> ContentVerdict {
        let id = self.content_method();
        self.connection_error(reply::close(UNEXPECTED_FRAME, detail).caused_by(id))
    }

    fn connection_error(&mut self, close: Close) -> ContentVerdict {
        self.reset();
        ContentVerdict::ConnectionError(close)
    }

    fn reset(&mut self) {
        self.held.clear();
        self.settled = 0;
        self.overrun = None;
        self.charge = None;
        self.expected = None;
        self.received = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{self, FRAME_HEARTBEAT};
    use bytes::{BufMut, Bytes, BytesMut};
    use proptest::prelude::*;

    impl ContentAssembler {
        /// `accept` with the frame's spec looked up, as the session does.
        fn take(&mut self, frame: Frame) -> ContentVerdict {
            let method = frame.method_id().and_then(|(c, m)| spec::lookup(c, m));
            self.accept(frame, method)
        }
    }

    fn wrap(b: Bytes) -> Frame {
        Frame::from_bytes(BytesMut::from(&b[..]))
    }

    fn method_frame(id: (u16, u16)) -> Frame {
        wrap(frame::build(FRAME_METHOD, 1, |b| {
            b.put_u16(id.0);
            b.put_u16(id.1);
        }))
    }

    fn header(size: u64) -> Frame {
        wrap(frame::build(FRAME_HEADER, 1, |b| {
            b.put_u16(60);
            b.put_u16(0);
            b.put_u64(size);
            b.put_u16(0);
        }))
    }

    fn body(n: usize) -> Frame {
        wrap(frame::build(FRAME_BODY, 1, |b| b.put_slice(&vec![7u8; n])))
    }

    #[test]
    fn publish_is_held_until_the_last_body_byte() {
        let mut a = ContentAssembler::default();
        assert!(matches!(
            a.take(method_frame(ids::BASIC_PUBLISH)),
            ContentVerdict::Held
        ));
        assert!(matches!(a.take(header(10)), ContentVerdict::Held));
        assert!(matches!(a.take(body(4)), ContentVerdict::Held));
        match a.take(body(6)) {
            ContentVerdict::Complete(frames) => assert_eq!(frames.len(), 4),
            other => panic!("{other:?}"),
        }
        assert!(a.is_idle());
    }

    #[test]
    fn empty_body_completes_at_the_header() {
        let mut a = ContentAssembler::default();
        a.take(method_frame(ids::BASIC_PUBLISH));
        assert!(matches!(a.take(header(0)), ContentVerdict::Complete(f) if f.len() == 2));
    }

    #[test]
    fn other_methods_pass_straight_through() {
        let mut a = ContentAssembler::default();
        assert!(matches!(
            a.take(method_frame(ids::QUEUE_DECLARE)),
            ContentVerdict::Forward(_)
        ));
    }

    #[test]
    fn a_content_header_of_another_class_is_505() {
        let mut a = ContentAssembler::default();
        a.take(method_frame(ids::BASIC_PUBLISH));
        let header = wrap(frame::build(FRAME_HEADER, 1, |b| {
            b.put_u16(50);
            b.put_u16(0);
            b.put_u64(1);
            b.put_u16(0);
        }));
        let ContentVerdict::ConnectionError(close) = a.take(header) else {
            panic!("accepted");
        };
        assert_eq!(close.code, 505);
    }

    #[test]
    fn a_weighted_header_or_broken_properties_never_pass() {
        let refused = |weight: u16, flags: u16, props: &[u8]| {
            let mut a = ContentAssembler::default();
            a.take(method_frame(ids::BASIC_PUBLISH));
            let header = wrap(frame::build(FRAME_HEADER, 1, |b| {
                b.put_u16(60);
                b.put_u16(weight);
                b.put_u64(1);
                b.put_u16(flags);
                b.put_slice(props);
            }));
            match a.take(header) {
                ContentVerdict::ConnectionError(close) => Some(close.code),
                _ => None,
            }
        };
        assert_eq!(refused(1, 0, &[]), Some(505));
        assert_eq!(refused(0, 0x8000, &[]), Some(541), "content-type missing");
        assert_eq!(refused(0, 0, &[1]), Some(541), "bytes after the properties");
        assert_eq!(refused(0, 0x8000, &[1, b'a']), None);
    }

    #[test]
    fn out_of_order_content_is_a_connection_error() {
        let mut a = ContentAssembler::default();
        assert!(matches!(
            a.take(header(1)),
            ContentVerdict::ConnectionError(Close { code: 505, .. })
        ));
        assert!(matches!(
            a.take(body(1)),
            ContentVerdict::ConnectionError(_)
        ));
        a.take(method_frame(ids::BASIC_PUBLISH));
        assert!(matches!(
            a.take(method_frame(ids::QUEUE_DECLARE)),
            ContentVerdict::ConnectionError(_)
        ));
        // A body past the announced size: like RabbitMQ, further bodies
        // are ignored and the next other frame is the error.
        a.take(method_frame(ids::BASIC_PUBLISH));
        a.take(header(2));
        assert!(matches!(a.take(body(3)), ContentVerdict::Ignored));
        assert!(matches!(a.take(body(3)), ContentVerdict::Ignored));
        assert!(!a.is_idle());
        let ContentVerdict::ConnectionError(close) = a.take(method_frame(ids::QUEUE_DECLARE))
        else {
            panic!("accepted");
        };
        assert_eq!(
            (close.code, close.text.as_str(), close.cause),
            (
                505,
                "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
                ids::BASIC_PUBLISH
            )
        );
        assert!(a.is_idle());
        let heartbeat = wrap(frame::heartbeat());
        assert_eq!(heartbeat.kind(), FRAME_HEARTBEAT);
        assert!(matches!(
            a.take(heartbeat),
            ContentVerdict::ConnectionError(_)
        ));
    }

    #[test]
    fn a_servers_content_method_is_refused_once_whole() {
        let mut a = ContentAssembler::default();
        a.take(method_frame(ids::BASIC_DELIVER));
        a.take(header(1));
        let ContentVerdict::ConnectionError(close) = a.take(body(1)) else {
            panic!("accepted");
        };
        assert_eq!(close.code, 503);
        assert_eq!(close.cause, ids::BASIC_DELIVER);
    }

    #[test]
    fn oversized_message_is_refused_on_the_channel() {
        let mut a = ContentAssembler::default();
        a.take(method_frame(ids::BASIC_PUBLISH));
        assert!(matches!(
            a.take(header(MAX_MESSAGE_SIZE + 1)),
            ContentVerdict::ChannelError(Close { code: 406, .. })
        ));
        assert!(a.is_idle());
    }

    /// A publish announcing `announced` bytes, then `bodies` bodies of
    /// `size`, each read on its own (settled after each frame).
    fn publish_with_bodies(
        a: &mut ContentAssembler,
        budget: &Arc<PublishBudget>,
        announced: usize,
        bodies: usize,
        size: usize,
    ) -> Result<ContentVerdict, Close> {
        a.take(method_frame(ids::BASIC_PUBLISH));
        a.settle(budget)?;
        a.take(header(announced as u64));
        a.settle(budget)?;
        let mut last = ContentVerdict::Held;
        for _ in 0..bodies {
            last = a.take(body(size));
            if !matches!(last, ContentVerdict::Held) {
                break;
            }
            a.settle(budget)?;
        }
        Ok(last)
    }

    #[test]
    fn what_completes_within_a_read_is_never_charged() {
        let shared = HeldBytes::new(u64::MAX);
        let budget = PublishBudget::new(shared.clone());
        let mut a = ContentAssembler::default();
        a.take(method_frame(ids::BASIC_PUBLISH));
        a.take(header(3 * 65536));
        a.take(body(65536));
        a.take(body(65536));
        assert!(matches!(a.take(body(65536)), ContentVerdict::Complete(_)));
        a.settle(&budget).unwrap();
        assert_eq!(shared.used(), 0);
    }

    #[test]
    fn held_bytes_are_charged_at_what_they_occupy_and_given_back_whatever_the_end() {
        let shared = HeldBytes::new(u64::MAX);
        let budget = PublishBudget::new(shared.clone());
        let mut a = ContentAssembler::default();
        // A 40-byte frame left waiting costs its bytes plus the overhead,
        // not the read buffer it came in.
        a.take(method_frame(ids::BASIC_PUBLISH));
        a.settle(&budget).unwrap();
        let one = shared.used();
        assert!(one > 0 && one <= 12 + HELD_FRAME_OVERHEAD, "{one}");
        a.settle(&budget).unwrap();
        assert_eq!(shared.used(), one, "settling twice charges once");
        a.take(header(2 * 65536));
        a.take(body(65536));
        a.settle(&budget).unwrap();
        assert!(shared.used() > 65536);
        assert!(matches!(a.take(body(65536)), ContentVerdict::Complete(_)));
        assert_eq!(shared.used(), 0);
        // A channel (or client) gone mid-message gives its bytes back too.
        let mut b = ContentAssembler::default();
        assert!(matches!(
            publish_with_bodies(&mut b, &budget, 1 << 20, 2, 65536),
            Ok(ContentVerdict::Held)
        ));
        publish_with_bodies(&mut a, &budget, 1 << 20, 1, 65536).unwrap();
        assert!(shared.used() > 0);
        drop((a, b));
        assert_eq!(shared.used(), 0);
    }

    #[test]
    fn many_channels_each_holding_a_little_are_charged_every_byte() {
        let shared = HeldBytes::new(64 * 1024);
        let budget = PublishBudget::new(shared.clone());
        let mut channels: Vec<ContentAssembler> = Vec::new();
        let refused = (0..10_000).find_map(|_| {
            let mut a = ContentAssembler::default();
            a.take(method_frame(ids::BASIC_PUBLISH));
            let settled = a.settle(&budget);
            channels.push(a);
            settled.err()
        });
        let close = refused.expect("2047 channels of held frames must hit the budget");
        assert_eq!(close.code, 506);
        assert!(
            channels.len() < 1000,
            "{} channels fit in 64 KiB",
            channels.len()
        );
        drop(channels);
        assert_eq!(shared.used(), 0);
    }

    #[test]
    fn settled_frames_no_longer_share_the_read_buffer() {
        let budget = PublishBudget::new(HeldBytes::new(u64::MAX));
        let read_buffer = BytesMut::from(
            &frame::build(FRAME_METHOD, 1, |b| {
                b.put_u16(60);
                b.put_u16(40);
                b.put_slice(&[0u8; 4096]);
            })[..],
        );
        let start = read_buffer.as_ptr();
        let mut a = ContentAssembler::default();
        a.take(Frame::from_bytes(read_buffer));
        a.settle(&budget).unwrap();
        assert_ne!(a.held[0].as_bytes().as_ptr(), start);
    }

    #[test]
    fn going_over_the_shared_budget_is_506_for_that_client_alone() {
        let shared = HeldBytes::new(256 * 1024);
        let (first, second) = (
            PublishBudget::new(shared.clone()),
            PublishBudget::new(shared.clone()),
        );
        let mut within = ContentAssembler::default();
        assert!(matches!(
            publish_with_bodies(&mut within, &first, 1 << 20, 3, 65536),
            Ok(ContentVerdict::Held)
        ));
        let mut over = ContentAssembler::default();
        let close = publish_with_bodies(&mut over, &second, 1 << 20, 8, 65536)
            .expect_err("the budget was not enforced");
        assert_eq!(close.code, 506);
        assert!(close.text.contains("its 262144 bytes"), "{}", close.text);
        assert!(over.is_idle());
        // The first client keeps its share and can finish.
        assert!(matches!(within.take(body(65536)), ContentVerdict::Held));
        drop(within);
        assert_eq!(shared.used(), 0);
    }

    proptest! {
        /// Whatever a client sends, a message is released only when complete,
        /// and the bodies released add up to exactly the announced size.
        #[test]
        fn only_complete_messages_are_released(steps in prop::collection::vec((0u8..4, 0usize..40), 0..60)) {
            let mut a = ContentAssembler::default();
            for (kind, n) in steps {
                let frame = match kind {
                    0 => method_frame(ids::BASIC_PUBLISH),
                    1 => method_frame(ids::QUEUE_DECLARE),
                    2 => header(n as u64),
                    _ => body(n),
                };
                if let ContentVerdict::Complete(frames) = a.take(frame) {
                    prop_assert_eq!(frames[0].method_id(), Some(ids::BASIC_PUBLISH));
                    let size = frames[1].content_body_size().unwrap();
                    let bodies: u64 = frames[2..].iter().map(|f| f.payload().len() as u64).sum();
                    prop_assert_eq!(size, bodies);
                }
            }
        }
    }
}
