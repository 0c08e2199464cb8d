//! A channel as both sides of the proxy see it: the upstream channel that
//! serves a client channel, and what the upstream router tells the session
//! about it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::protocol::method::Qos;

/// The upstream channel serving a client channel. The lease tells this use of
/// the id apart from earlier and later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamChannel {
    pub id: u16,
    pub lease: u64,
}

impl UpstreamChannel {
    /// Not bound yet: a channel a held client opened during an outage.
    pub const UNBOUND: UpstreamChannel = UpstreamChannel { id: 0, lease: 0 };
}

/// What reached a client on its channel, counted by the upstream router as
/// it forwards and read by the session when the client closes the channel:
/// a channel with a reply or confirm still on its way cannot be handed over.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Replies to the client's requests.
    pub replies: AtomicU64,
    /// The highest publisher-confirm tag acked or nacked to the client.
    pub confirmed: AtomicU64,
    /// Publishes of this lease the broker settled (acked or nacked), all up
    /// to this number (see [`crate::replay`]).
    pub settled: AtomicU64,
    /// Publishes beyond `settled` the broker settled out of order; written
    /// only while there are some, so the usual in-order ack takes no lock.
    pub settled_apart: Mutex<Vec<u64>>,
}

impl Delivered {
    /// `(replies, confirmed)` as of now.
    pub fn load(&self) -> (u64, u64) {
        (
            self.replies.load(Ordering::Acquire),
            self.confirmed.load(Ordering::Acquire),
        )
    }

    /// Publishes settled in order, as of now.
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Acquire)
    }

    /// `(settled, settled_apart)` as of now.
    pub fn settlement(&self) -> (u64, Vec<u64>) {
        let settled = self.settled.load(Ordering::Acquire);
        let apart = self.settled_apart.lock().expect("settled lock").clone();
        (settled, apart)
    }
}

/// The state of a kept upstream channel that a next client inherits, and
/// that warren hides from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inherited {
    /// The broker's qos for the channel.
    pub qos: Qos,
    /// The channel is in confirm mode (sticky in AMQP).
    pub confirm: bool,
}
