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

use crate::held::HeldBytes;
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
        if !self.shared.take(bytes) {
            self.client_used.fetch_sub(bytes, Ordering::Relaxed);
            let limit = self.shared.limit();
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
        self.shared.give(bytes);
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
mod tests;
