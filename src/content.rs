//! A publish on its way through a session: its frames are held until the
//! message is whole, so a message reaches a shared upstream connection
//! whole or not at all (after a content header RabbitMQ accepts nothing but
//! the rest of the content on that channel: a client that vanished mid-message
//! would otherwise leave a frame error on a connection others share).
//!
//! Holding costs memory, so it is budgeted: per client connection and for
//! all clients together (`--max-held-publish-mib`). A client whose next
//! frame would go over either is closed with 506 RESOURCE_ERROR; nothing it
//! held reaches the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::frame::{Frame, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use crate::method::{self, Close};
use crate::reply::{self, PRECONDITION_FAILED, RESOURCE_ERROR, UNEXPECTED_FRAME};

/// RabbitMQ's default `max_message_size` (128 MiB): larger publishes are
/// refused with the same channel error the broker would give.
pub const MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;
/// What one client connection may hold: two messages of the largest size.
pub const CLIENT_HELD_LIMIT: u64 = 2 * MAX_MESSAGE_SIZE;
/// Bytes a channel holds without touching the budget: small messages (the
/// common case) complete within a read and never pay for the shared counter.
/// At most channel_max times this escapes the count per client.
const UNCOUNTED_PER_CHANNEL: u64 = 16 * 1024;

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
    held_bytes: u64,
    charge: Option<Charge>,
    expected: Option<u64>,
    received: u64,
}

impl ContentAssembler {
    pub fn is_idle(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds a frame of the message and releases the message if this frame
    /// completes it; otherwise bytes held beyond a small allowance are
    /// charged to `budget`, and on refusal the message is dropped.
    #[inline]
    fn hold(&mut self, frame: Frame, budget: &Arc<PublishBudget>) -> ContentVerdict {
        self.held_bytes += frame.len() as u64;
        self.held.push(frame);
        if self.expected == Some(self.received) {
            let frames = std::mem::take(&mut self.held);
            self.reset();
            return ContentVerdict::Complete(frames);
        }
        if self.held_bytes > UNCOUNTED_PER_CHANNEL {
            if let Err(close) = self.charge(budget) {
                self.reset();
                return ContentVerdict::ConnectionError(close);
            }
        }
        ContentVerdict::Held
    }

    #[cold]
    fn charge(&mut self, budget: &Arc<PublishBudget>) -> Result<(), Close> {
        let due = self.held_bytes - UNCOUNTED_PER_CHANNEL;
        let charged = self.charge.as_ref().map_or(0, |c| c.bytes);
        if due > charged {
            budget.take(due - charged)?;
            self.charge
                .get_or_insert_with(|| Charge {
                    budget: budget.clone(),
                    bytes: 0,
                })
                .bytes = due;
        }
        Ok(())
    }

    /// Takes the client's next frame on this channel.
    pub fn accept(&mut self, frame: Frame, budget: &Arc<PublishBudget>) -> ContentVerdict {
        match frame.kind() {
            FRAME_METHOD => {
                let id = frame.method_id().unwrap_or((0, 0));
                if !self.is_idle() {
                    return self.unexpected(format!(
                        "expected content {}, got {}",
                        self.next_part(),
                        method::name(id)
                    ));
                }
                if method::carries_content(id) {
                    self.hold(frame, budget)
                } else {
                    ContentVerdict::Forward(frame)
                }
            }
            FRAME_HEADER => {
                if self.is_idle() || self.expected.is_some() {
                    return self.unexpected("unexpected content header".into());
                }
                let Some(size) = frame.content_body_size() else {
                    return self.unexpected("truncated content header".into());
                };
                let class = u16::from_be_bytes([frame.payload()[0], frame.payload()[1]]);
                if class != 60 {
                    return self.unexpected(format!(
                        "expected content header for class 60, got one for class {class} instead"
                    ));
                }
                if size > MAX_MESSAGE_SIZE {
                    self.reset();
                    return ContentVerdict::ChannelError(reply::close(
                        PRECONDITION_FAILED,
                        format!("message size {size} is larger than configured max size {MAX_MESSAGE_SIZE}"),
                    ));
                }
                self.expected = Some(size);
                self.hold(frame, budget)
            }
            FRAME_BODY => {
                let Some(expected) = self.expected else {
                    return self.unexpected("unexpected content body".into());
                };
                self.received += frame.payload().len() as u64;
                if self.received > expected {
                    return self.unexpected(format!(
                        "content body of {} bytes exceeds the announced {expected}",
                        self.received
                    ));
                }
                self.hold(frame, budget)
            }
            other => self.unexpected(format!("unexpected frame type {other} on a channel")),
        }
    }

    fn next_part(&self) -> &'static str {
        if self.expected.is_none() {
            "header"
        } else {
            "body"
        }
    }

    fn unexpected(&mut self, detail: String) -> ContentVerdict {
        self.reset();
        ContentVerdict::ConnectionError(reply::close(UNEXPECTED_FRAME, detail))
    }

    fn reset(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
        self.charge = None;
        self.expected = None;
        self.received = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, FRAME_HEARTBEAT};
    use bytes::{BufMut, Bytes, BytesMut};
    use proptest::prelude::*;

    impl ContentAssembler {
        /// With a budget of its own, large enough for any test message.
        fn accept_test(&mut self, frame: Frame) -> ContentVerdict {
            let budget = PublishBudget::new(HeldBytes::new(u64::MAX));
            self.accept(frame, &budget)
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
            a.accept_test(method_frame(method::BASIC_PUBLISH)),
            ContentVerdict::Held
        ));
        assert!(matches!(a.accept_test(header(10)), ContentVerdict::Held));
        assert!(matches!(a.accept_test(body(4)), ContentVerdict::Held));
        match a.accept_test(body(6)) {
            ContentVerdict::Complete(frames) => assert_eq!(frames.len(), 4),
            other => panic!("{other:?}"),
        }
        assert!(a.is_idle());
    }

    #[test]
    fn empty_body_completes_at_the_header() {
        let mut a = ContentAssembler::default();
        a.accept_test(method_frame(method::BASIC_PUBLISH));
        assert!(matches!(a.accept_test(header(0)), ContentVerdict::Complete(f) if f.len() == 2));
    }

    #[test]
    fn other_methods_pass_straight_through() {
        let mut a = ContentAssembler::default();
        assert!(matches!(
            a.accept_test(method_frame((50, 10))),
            ContentVerdict::Forward(_)
        ));
    }

    #[test]
    fn a_content_header_of_another_class_is_505() {
        let mut a = ContentAssembler::default();
        a.accept_test(method_frame(method::BASIC_PUBLISH));
        let header = wrap(frame::build(FRAME_HEADER, 1, |b| {
            b.put_u16(50);
            b.put_u16(0);
            b.put_u64(1);
            b.put_u16(0);
        }));
        let ContentVerdict::ConnectionError(close) = a.accept_test(header) else {
            panic!("accepted");
        };
        assert_eq!(close.code, 505);
    }

    #[test]
    fn out_of_order_content_is_a_connection_error() {
        let mut a = ContentAssembler::default();
        assert!(matches!(
            a.accept_test(header(1)),
            ContentVerdict::ConnectionError(Close { code: 505, .. })
        ));
        assert!(matches!(
            a.accept_test(body(1)),
            ContentVerdict::ConnectionError(_)
        ));
        a.accept_test(method_frame(method::BASIC_PUBLISH));
        assert!(matches!(
            a.accept_test(method_frame((50, 10))),
            ContentVerdict::ConnectionError(_)
        ));
        a.accept_test(method_frame(method::BASIC_PUBLISH));
        a.accept_test(header(2));
        assert!(matches!(
            a.accept_test(body(3)),
            ContentVerdict::ConnectionError(_)
        ));
        let heartbeat = wrap(frame::heartbeat());
        assert_eq!(heartbeat.kind(), FRAME_HEARTBEAT);
        assert!(matches!(
            a.accept_test(heartbeat),
            ContentVerdict::ConnectionError(_)
        ));
    }

    #[test]
    fn oversized_message_is_refused_on_the_channel() {
        let mut a = ContentAssembler::default();
        a.accept_test(method_frame(method::BASIC_PUBLISH));
        assert!(matches!(
            a.accept_test(header(MAX_MESSAGE_SIZE + 1)),
            ContentVerdict::ChannelError(Close { code: 406, .. })
        ));
        assert!(a.is_idle());
    }

    /// A publish announcing `announced` bytes, then `bodies` bodies of `size`.
    fn publish_with_bodies(
        a: &mut ContentAssembler,
        budget: &Arc<PublishBudget>,
        announced: usize,
        bodies: usize,
        size: usize,
    ) -> ContentVerdict {
        a.accept(method_frame(method::BASIC_PUBLISH), budget);
        a.accept(header(announced as u64), budget);
        let mut last = ContentVerdict::Held;
        for _ in 0..bodies {
            last = a.accept(body(size), budget);
            if !matches!(last, ContentVerdict::Held) {
                break;
            }
        }
        last
    }

    #[test]
    fn held_bytes_are_charged_and_given_back_whatever_the_end() {
        let shared = HeldBytes::new(u64::MAX);
        let budget = PublishBudget::new(shared.clone());
        let mut a = ContentAssembler::default();
        // Small messages never touch the shared counter.
        assert!(matches!(
            publish_with_bodies(&mut a, &budget, 100, 1, 100),
            ContentVerdict::Complete(_)
        ));
        assert_eq!(shared.used(), 0);
        // A large one is counted while held, and given back when complete.
        a.accept(method_frame(method::BASIC_PUBLISH), &budget);
        a.accept(header(3 * 65536), &budget);
        a.accept(body(65536), &budget);
        a.accept(body(65536), &budget);
        assert!(shared.used() > 65536);
        assert!(matches!(
            a.accept(body(65536), &budget),
            ContentVerdict::Complete(_)
        ));
        assert_eq!(shared.used(), 0);
        // A channel (or client) gone mid-message gives its bytes back too.
        let mut b = ContentAssembler::default();
        assert!(matches!(
            publish_with_bodies(&mut b, &budget, 1 << 20, 2, 65536),
            ContentVerdict::Held
        ));
        publish_with_bodies(&mut a, &budget, 1 << 20, 1, 65536);
        assert!(shared.used() > 0);
        drop((a, b));
        assert_eq!(shared.used(), 0);
    }

    #[test]
    fn going_over_the_shared_budget_is_506_for_that_client_alone() {
        let shared = HeldBytes::new(256 * 1024);
        let (first, second) = (
            PublishBudget::new(shared.clone()),
            PublishBudget::new(shared.clone()),
        );
        let mut within = ContentAssembler::default();
        within.accept(method_frame(method::BASIC_PUBLISH), &first);
        within.accept(header(1 << 20), &first);
        for _ in 0..3 {
            assert!(matches!(
                within.accept(body(65536), &first),
                ContentVerdict::Held
            ));
        }
        let mut over = ContentAssembler::default();
        let ContentVerdict::ConnectionError(close) =
            publish_with_bodies(&mut over, &second, 1 << 20, 8, 65536)
        else {
            panic!("the budget was not enforced");
        };
        assert_eq!(close.code, 506);
        assert!(close.text.contains("its 262144 bytes"), "{}", close.text);
        assert!(over.is_idle());
        // The first client keeps its share and can finish.
        assert!(matches!(
            within.accept(body(65536), &first),
            ContentVerdict::Held
        ));
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
                    0 => method_frame(method::BASIC_PUBLISH),
                    1 => method_frame((50, 10)),
                    2 => header(n as u64),
                    _ => body(n),
                };
                if let ContentVerdict::Complete(frames) = a.accept_test(frame) {
                    prop_assert_eq!(frames[0].method_id(), Some(method::BASIC_PUBLISH));
                    let size = frames[1].content_body_size().unwrap();
                    let bodies: u64 = frames[2..].iter().map(|f| f.payload().len() as u64).sum();
                    prop_assert_eq!(size, bodies);
                }
            }
        }
    }
}
