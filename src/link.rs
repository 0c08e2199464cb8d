//! How an upstream connection reaches a client session.
//!
//! Data frames (deliveries, method replies) go straight into the client's
//! write queue: the upstream reader rewrites the channel id and pushes, the
//! client session never sees them. Events that change the session's channel
//! table go through a separate queue to the session, which acts on them and
//! only then writes to the client, so the client cannot race ahead of the
//! session's bookkeeping (e.g. reopen a channel id before it was freed).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::channel::UpstreamChannel;
use crate::outbox::{Outbox, TrySendError};
use crate::protocol::method::Close;

pub type ClientId = u64;

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
    overflowed: AtomicBool,
}

impl ClientLink {
    pub fn new(
        id: ClientId,
        frames: Outbox,
        events: mpsc::UnboundedSender<ClientEvent>,
        frame_max: usize,
        capabilities: Capabilities,
    ) -> Self {
        ClientLink {
            id,
            frames,
            events,
            frame_max,
            capabilities,
            overflowed: AtomicBool::new(false),
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
        if self.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let frame = if self.frames.is_backlogged() {
            Bytes::copy_from_slice(&frame)
        } else {
            frame
        };
        if let Err(TrySendError::Full) = self.frames.try_send(frame) {
            self.overflowed.store(true, Ordering::Relaxed);
            let _ = self.events.send(ClientEvent::Overflowed);
        }
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
        let link = ClientLink::new(1, frames, events, 131072, Capabilities::default());
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
