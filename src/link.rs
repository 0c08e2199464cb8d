//! How an upstream connection reaches a client session.
//!
//! Data frames (deliveries, method replies) go straight into the client's
//! write queue: the upstream reader rewrites the channel id and pushes, the
//! client session never sees them. Events that change the session's channel
//! table go through a separate queue to the session, which acts on them and
//! only then writes to the client, so the client cannot race ahead of the
//! session's bookkeeping (e.g. reopen a channel id before it was freed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::channel::UpstreamChannel;
use crate::content::CLIENT_HELD_LIMIT;
use crate::held::HeldBytes;
use crate::outbox::{Outbox, TrySendError};
use crate::protocol::method::Close;

pub type ClientId = u64;

/// A message this large may not fit in a client's write queue at all: it
/// is owed whole (see [`ClientLink::owe_whole`]).
pub const LARGE_MESSAGE: u64 = 1 << 20;
/// The smallest frame_max a peer may choose: body frames are at least this
/// large but for the last, which bounds how many frames a body becomes.
const SMALLEST_FRAME_MAX: u64 = 4096;

#[derive(Debug)]
pub enum ClientEvent {
    /// The broker confirmed the client's Channel.Close.
    ChannelCloseOk { channel: u16 },
    /// The broker closed a channel; `close` is its Channel.Close frame,
    /// already addressed to the client's channel id.
    ChannelClosedByBroker {
        channel: u16,
        upstream: UpstreamChannel,
        close: Bytes,
        /// Its reply code, for the metrics.
        code: u16,
    },
    /// A Queue.Declare-Ok went to the client on this channel (the session
    /// remembers exclusive queues to delete them when the client leaves).
    DeclareOk { channel: u16, queue: String },
    /// A Queue.Delete-Ok went to the client on this channel (a conditional
    /// delete of an exclusive queue ends the client's claim only then).
    DeleteOk { channel: u16 },
    /// The upstream connection with this id is gone; its clients must be
    /// closed with this.
    UpstreamClosed { upstream: u64, close: Close },
    /// An operator drained the node of the upstream connection with this
    /// id: its clients move to another at a message boundary.
    NodeDrained { upstream: u64 },
    /// The client did not drain its write queue in time and frames for it had
    /// to be dropped: it must be disconnected.
    Overflowed,
    /// An operator closed the client (`warren ctl kill`).
    Killed,
}

/// Notifications a client must have asked for in its Start-Ok
/// capabilities: the broker sends them to warren's upstream connection
/// (which asks for all), warren passes them on only to clients that asked,
/// as the broker itself would.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Connection.Blocked/Unblocked.
    pub blocked: bool,
    /// Basic.Cancel from the broker when a queue with consumers goes away.
    pub cancel_notify: bool,
}

/// The client end that an upstream connection holds on to.
#[derive(Debug)]
pub struct ClientLink {
    pub id: ClientId,
    pub frames: Outbox,
    pub events: mpsc::UnboundedSender<ClientEvent>,
    /// The client's negotiated frame_max: larger bodies are split for it.
    pub frame_max: usize,
    /// What the client said it understands in Start-Ok.
    pub capabilities: Capabilities,
    /// Its write queue overflowed or its connection is closed: nothing
    /// more is queued for it.
    stopped: AtomicBool,
    /// The budget for large messages queued beyond the queue's bound.
    held_deliveries: Arc<HeldBytes>,
    /// The session waits for the broker to confirm publishes before it
    /// reads more (its replay log is full, see `crate::replay`).
    awaits_settlement: AtomicBool,
    settled: Notify,
}

impl ClientLink {
    pub fn new(
        id: ClientId,
        frames: Outbox,
        events: mpsc::UnboundedSender<ClientEvent>,
        frame_max: usize,
        capabilities: Capabilities,
        held_deliveries: Arc<HeldBytes>,
    ) -> Self {
        ClientLink {
            id,
            frames,
            events,
            frame_max,
            capabilities,
            stopped: AtomicBool::new(false),
            held_deliveries,
            awaits_settlement: AtomicBool::new(false),
            settled: Notify::new(),
        }
    }

    /// The broker settled publishes of this client's: a session waiting
    /// for that is woken (one flag read otherwise, on the router's path).
    pub fn settlement_advanced(&self) {
        if self.awaits_settlement.load(Ordering::Relaxed) {
            self.settled.notify_one();
        }
    }

    /// Resolves once the broker settled more of this client's publishes,
    /// or after `limit` (a stored wake-up may be stale too). For the
    /// session only.
    pub async fn settlement_or(&self, limit: Duration) {
        /// Clears the flag however the wait ends (a `select!` drops it).
        struct Waiting<'a>(&'a AtomicBool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        self.awaits_settlement.store(true, Ordering::Relaxed);
        let _waiting = Waiting(&self.awaits_settlement);
        let _ = tokio::time::timeout(limit, self.settled.notified()).await;
    }

    /// A message of `body_size` bytes starts with a content header of
    /// `header_len` bytes, about to be pushed. The client is owed it whole
    /// even if it is larger than its whole write queue, and the broker may
    /// send several at once (a consumer's prefetch): the queue's bound
    /// applies to what waits beside such messages, so a consumer reading at
    /// a normal pace gets whatever the broker delivers. What they pin is
    /// bounded per client ([`CLIENT_HELD_LIMIT`], two messages of
    /// RabbitMQ's default largest size) and for all clients together
    /// (`--max-held-delivery-mib`); beyond either, a message counts against
    /// the bound like any other. A client that reads nothing is dropped by
    /// its writer's stall limit, which gives all of it back.
    pub fn owe_whole(&self, header_len: usize, body_size: u64) {
        // At most, every body frame is the smallest a peer may choose.
        let frames = body_size.div_ceil(SMALLEST_FRAME_MAX - 8);
        let cost = Outbox::cost_of(header_len) + body_size + frames * Outbox::cost_of(8);
        if self.frames.exempted() + cost > CLIENT_HELD_LIMIT {
            return;
        }
        if let Some(share) = self.held_deliveries.share(cost) {
            self.frames.exempt_next(cost, share);
        }
    }

    /// Queues a frame without ever waiting: the upstream reader serves many
    /// clients and must not stall on one, and the session must keep reading,
    /// timing heartbeats and hearing shutdown whatever the client does. A
    /// client whose queue is full is told to leave, and nothing more is
    /// queued for it (a gap in its stream would be worse than a disconnect).
    ///
    /// A frame read from the broker shares its allocation with the rest of
    /// the read buffer (up to 256 KiB). One that will wait behind others is
    /// copied into its own, so a client that reads slowly holds what it is
    /// charged for, not one read buffer per waiting frame.
    pub fn push(&self, frame: Bytes) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let frame = if self.frames.is_backlogged() {
            Bytes::copy_from_slice(&frame)
        } else {
            frame
        };
        if let Err(TrySendError::Full) = self.frames.try_send(frame) {
            self.stopped.store(true, Ordering::Relaxed);
            let _ = self.events.send(ClientEvent::Overflowed);
        }
    }

    /// The client's connection is closed (its Close-Ok sent, or it is
    /// gone): nothing more is queued for it while the session finishes.
    pub fn close_to_frames(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn notify(&self, event: ClientEvent) -> bool {
        self.events.send(event).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::outbox;

    #[tokio::test]
    async fn a_frame_that_waits_holds_its_own_bytes_not_the_read_buffer() {
        let (frames, mut inbox) = outbox(1 << 20);
        let (events, _events) = mpsc::unbounded_channel();
        let link = ClientLink::new(
            1,
            frames,
            events,
            131072,
            Capabilities::default(),
            HeldBytes::new(0),
        );
        let read_buffer = Bytes::from(vec![7u8; 256 * 1024]);
        link.push(read_buffer.slice(0..100));
        link.push(read_buffer.slice(100..200));
        let mut queued = Vec::new();
        inbox.recv_many(&mut queued, 8).await;
        let within_buffer = |frame: &Bytes| {
            let start = read_buffer.as_ptr() as usize;
            (start..start + read_buffer.len()).contains(&(frame.as_ptr() as usize))
        };
        // Nothing waited for the first; the second waited behind it.
        assert!(within_buffer(&queued[0]));
        assert!(!within_buffer(&queued[1]));
        assert_eq!(queued[1], read_buffer.slice(100..200));
    }
}
