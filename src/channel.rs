//! What a client session knows about each of its channels, as pure state
//! with no I/O: which upstream channel serves it, where it is in its life,
//! and the publish it is assembling.
//!
//! Lifecycle of a client channel (the upstream id stays reserved by the
//! upstream connection until the broker confirms it is closed):
//!
//! ```text
//!   Channel.Open ──▶ Open ──client Close──▶ ClosingByClient ──broker CloseOk──▶ (gone)
//!                     │
//!                     ├──broker Close──▶ ClosedByBroker ──client CloseOk──▶ (gone)
//!                     └──warren refuses──▶ ClosedByProxy ──client CloseOk──▶ (gone)
//! ```

use crate::frame::{Frame, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use crate::method::{self, Close};
use crate::reply::{self, PRECONDITION_FAILED, UNEXPECTED_FRAME};

/// RabbitMQ's default `max_message_size` (128 MiB): larger publishes are
/// refused with the same channel error the broker would give.
pub const MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;

/// The upstream channel serving a client channel. The lease tells this use of
/// the id apart from earlier and later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamChannel {
    pub id: u16,
    pub lease: u64,
}

#[derive(Debug)]
pub enum ChannelState {
    Open {
        upstream: UpstreamChannel,
        content: ContentAssembler,
    },
    /// The client's Close went upstream; waiting for the broker's CloseOk.
    ClosingByClient { upstream: UpstreamChannel },
    /// The broker closed the channel (already acknowledged upstream); waiting
    /// for the client's CloseOk, which is swallowed.
    ClosedByBroker,
    /// warren closed the channel on its own; waiting for the client's CloseOk.
    ClosedByProxy,
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
    expected: Option<u64>,
    received: u64,
}

impl ContentAssembler {
    pub fn is_idle(&self) -> bool {
        self.held.is_empty()
    }

    pub fn accept(&mut self, frame: Frame) -> ContentVerdict {
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
                    self.held.push(frame);
                    ContentVerdict::Held
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
                if size > MAX_MESSAGE_SIZE {
                    self.reset();
                    return ContentVerdict::ChannelError(reply::close(
                        PRECONDITION_FAILED,
                        format!("message size {size} is larger than configured max size {MAX_MESSAGE_SIZE}"),
                    ));
                }
                self.expected = Some(size);
                self.held.push(frame);
                self.complete_if_done()
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
                self.held.push(frame);
                self.complete_if_done()
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

    fn complete_if_done(&mut self) -> ContentVerdict {
        if self.expected == Some(self.received) {
            let frames = std::mem::take(&mut self.held);
            self.reset();
            ContentVerdict::Complete(frames)
        } else {
            ContentVerdict::Held
        }
    }

    fn unexpected(&mut self, detail: String) -> ContentVerdict {
        self.reset();
        ContentVerdict::ConnectionError(reply::close(UNEXPECTED_FRAME, detail))
    }

    fn reset(&mut self) {
        self.held.clear();
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
            a.accept(method_frame(method::BASIC_PUBLISH)),
            ContentVerdict::Held
        ));
        assert!(matches!(a.accept(header(10)), ContentVerdict::Held));
        assert!(matches!(a.accept(body(4)), ContentVerdict::Held));
        match a.accept(body(6)) {
            ContentVerdict::Complete(frames) => assert_eq!(frames.len(), 4),
            other => panic!("{other:?}"),
        }
        assert!(a.is_idle());
    }

    #[test]
    fn empty_body_completes_at_the_header() {
        let mut a = ContentAssembler::default();
        a.accept(method_frame(method::BASIC_PUBLISH));
        assert!(matches!(a.accept(header(0)), ContentVerdict::Complete(f) if f.len() == 2));
    }

    #[test]
    fn other_methods_pass_straight_through() {
        let mut a = ContentAssembler::default();
        assert!(matches!(
            a.accept(method_frame((50, 10))),
            ContentVerdict::Forward(_)
        ));
    }

    #[test]
    fn out_of_order_content_is_a_connection_error() {
        let mut a = ContentAssembler::default();
        assert!(matches!(
            a.accept(header(1)),
            ContentVerdict::ConnectionError(Close { code: 505, .. })
        ));
        assert!(matches!(
            a.accept(body(1)),
            ContentVerdict::ConnectionError(_)
        ));
        a.accept(method_frame(method::BASIC_PUBLISH));
        assert!(matches!(
            a.accept(method_frame((50, 10))),
            ContentVerdict::ConnectionError(_)
        ));
        a.accept(method_frame(method::BASIC_PUBLISH));
        a.accept(header(2));
        assert!(matches!(
            a.accept(body(3)),
            ContentVerdict::ConnectionError(_)
        ));
        let heartbeat = wrap(frame::heartbeat());
        assert_eq!(heartbeat.kind(), FRAME_HEARTBEAT);
        assert!(matches!(
            a.accept(heartbeat),
            ContentVerdict::ConnectionError(_)
        ));
    }

    #[test]
    fn oversized_message_is_refused_on_the_channel() {
        let mut a = ContentAssembler::default();
        a.accept(method_frame(method::BASIC_PUBLISH));
        assert!(matches!(
            a.accept(header(MAX_MESSAGE_SIZE + 1)),
            ContentVerdict::ChannelError(Close { code: 406, .. })
        ));
        assert!(a.is_idle());
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
                if let ContentVerdict::Complete(frames) = a.accept(frame) {
                    prop_assert_eq!(frames[0].method_id(), Some(method::BASIC_PUBLISH));
                    let size = frames[1].content_body_size().unwrap();
                    let bodies: u64 = frames[2..].iter().map(|f| f.payload().len() as u64).sum();
                    prop_assert_eq!(size, bodies);
                }
            }
        }
    }
}
