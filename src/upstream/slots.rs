//! The channel ids of one upstream connection, as pure state with no I/O:
//! which are free, which a client holds (and under which lease), which are
//! closing, and which are kept clean for the next client. The router feeds
//! it the clients' commands and the broker's channel methods, writes what
//! it asks to send ([`ToBroker`]), and delivers client-bound frames.
//!
//! The rule everything here serves: an id is free again only once the
//! broker has confirmed the channel closed (its Close-Ok, or our Close-Ok
//! to its Close). Reusing an id earlier makes RabbitMQ kill the whole
//! connection with 504. The property test (slots/tests.rs) runs random interleavings
//! of clients and a simulated broker against that rule.
//!
//! Lifecycle of an id:
//!
//! ```text
//!   Free ──take──▶ Open ──client Close──▶ Open(closing) ──CloseOk──▶ Free
//!    ▲  ╲            │ ╲──client gone──▶ Abandoned ──CloseOk──▶ Free
//!    │   ╲prewarm    │ ╲──broker Close──▶ BrokerClosed ──session's CloseOk──▶ Free
//!    │    ╲          └──keep──▶ Draining ──fence reply──▶ Kept ──take──▶ Open
//!    │     ╲──────────────────▶ Draining
//!    └── probe: Free ──▶ Probe ──answer──▶ Abandoned / Free
//! ```
//!
//! A kept channel is fenced before its next client: a Channel.Flow
//! active=true (which no reusable channel uses) is sent and everything up
//! to its reply dropped, so late returns and replies meant for the
//! previous client never reach the next.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::channel::{Delivered, Inherited, UpstreamChannel};
use crate::confirms::{ConfirmTags, Settlement};
use crate::protocol::ids::{self, MethodId};
use crate::protocol::method::Close;
use crate::protocol::reply::NOT_FOUND;

use super::ChannelCounts;

/// A channel a client holds.
#[derive(Debug)]
pub struct Lease<L> {
    /// The client's end, where its frames go.
    pub link: L,
    pub client_channel: u16,
    pub lease: u64,
    /// The client's Channel.Close went upstream.
    pub closing: bool,
    pub confirms: ConfirmTags,
    /// Publishes the broker had numbered when this client got the channel.
    pub numbered_at_grant: u64,
    /// How far the broker settled the channel's publishes.
    pub settlement: Settlement,
    /// Replies to methods warren sent on its own, in order.
    pub hidden: VecDeque<MethodId>,
    /// What was forwarded to the client (see `Grant::delivered`).
    pub delivered: Arc<Delivered>,
}

#[derive(Debug)]
enum Slot<L, P> {
    Free,
    Open(Lease<L>),
    /// Its client left and a Channel.Close went upstream.
    Abandoned,
    /// warren's own, asking whether a queue exists; the answer goes to `P`.
    Probe(Option<P>),
    /// The broker closed it; the client's session acknowledges and releases it.
    BrokerClosed {
        lease: u64,
    },
    /// Kept for reuse; waiting for the fence's reply, dropping what comes
    /// before it.
    Draining(Kept),
    /// Clean, open and unused: the next client's Channel.Open costs nothing.
    Kept(Kept),
}

/// What a kept channel carries over to its next client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub inherited: Inherited,
    /// Publishes the broker numbered on this channel in confirm mode.
    pub confirm_sequence: u64,
}

/// A frame the router must write to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToBroker {
    ChannelOpen(u16),
    /// Channel.Flow active=true: the fence of a kept channel.
    Fence(u16),
    ChannelClose(u16, &'static str),
    ChannelCloseOk(u16),
    /// A passive Queue.Declare on a probe's channel.
    Probe(u16, String),
}

/// An id taken for a client, not yet leased (see [`Slots::take`]).
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    pub channel: UpstreamChannel,
    /// `Some` when it is a kept channel, already open upstream.
    pub kept: Option<Kept>,
}

/// What a broker frame on a channel means.
pub enum FromBroker<'a, L, P> {
    /// For the client holding the channel.
    Deliver(&'a mut Lease<L>),
    /// The broker confirmed the client's Channel.Close; the id is free.
    CloseOk { link: L, client_channel: u16 },
    /// The broker closed a client's channel: the client must hear it. If it
    /// cannot, the router calls [`Slots::acknowledge_broker_close`].
    Closed {
        link: L,
        client_channel: u16,
        channel: UpstreamChannel,
    },
    /// A probe's answer: whether the queue exists.
    ProbeAnswer(P, bool),
    /// A kept channel's fence cleared, or a parked one went away: requests
    /// waiting for a kept channel may be served.
    KeptReady,
    /// Meant for a previous client of a kept channel: dropped and counted.
    Stale,
    /// Nothing to do.
    Dropped,
    /// An id beyond the connection's channel_max.
    Unknown,
}

/// The channel ids of one upstream connection.
pub struct Slots<L, P> {
    slots: Vec<Slot<L, P>>,
    /// Free ids, lowest on top.
    free: Vec<u16>,
    /// Kept channels ready for a client, most recently kept on top.
    kept: Vec<u16>,
    /// Kept plus draining channels.
    parked: usize,
    /// Ids that count against the connection's capacity: held by clients
    /// or probes, or closing (not parked ones, which any client can take).
    in_use: usize,
    next_lease: u64,
    kept_channels: usize,
    prewarm_channels: usize,
    to_broker: Vec<ToBroker>,
}

impl<L, P> Slots<L, P> {
    /// Ids 1..=`capacity`; up to `kept_channels` clean channels parked,
    /// `prewarm_channels` of them opened ahead of the first client.
    pub fn new(capacity: u16, kept_channels: usize, prewarm_channels: usize) -> Self {
        let mut slots = Slots {
            slots: (0..=capacity).map(|_| Slot::Free).collect(),
            free: (1..=capacity).rev().collect(),
            kept: Vec::new(),
            parked: 0,
            in_use: 0,
            next_lease: 1,
            kept_channels,
            prewarm_channels: prewarm_channels.min(kept_channels),
            to_broker: Vec::new(),
        };
        slots.prewarm();
        slots
    }

    /// What to write to the broker, in order, since the last call.
    pub fn drain_to_broker(&mut self) -> std::vec::Drain<'_, ToBroker> {
        self.to_broker.drain(..)
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// No kept channel is ready and the park is full: every parked channel
    /// is behind its fence.
    pub fn all_fenced(&self) -> bool {
        self.kept.is_empty() && self.kept_channels > 0 && self.parked >= self.kept_channels
    }

    /// A kept channel (unless `fresh`), or a free id; `None` when there is
    /// neither. Undo with [`Slots::untake`] if the client cannot have it.
    pub fn take(&mut self, fresh: bool) -> Option<Taken> {
        let reusable = if fresh { None } else { self.kept.pop() };
        let (id, kept) = match reusable {
            Some(id) => match std::mem::replace(&mut self.slots[id as usize], Slot::Free) {
                Slot::Kept(kept) => {
                    self.parked -= 1;
                    (id, Some(kept))
                }
                _ => unreachable!("the kept list holds only kept slots"),
            },
            None => (self.free.pop()?, None),
        };
        let lease = self.next_lease;
        self.next_lease += 1;
        Some(Taken {
            channel: UpstreamChannel { id, lease },
            kept,
        })
    }

    /// Puts back an id whose client went away before it could have it.
    pub fn untake(&mut self, taken: Taken) {
        let id = taken.channel.id;
        match taken.kept {
            Some(kept) => {
                self.slots[id as usize] = Slot::Kept(kept);
                self.kept.push(id);
                self.parked += 1;
            }
            None => self.free.push(id),
        }
    }

    /// Gives a taken id to a client channel. A new id's Channel.Open goes
    /// upstream from the session, pipelined: the client already got its
    /// Open-Ok from warren, so the broker's is hidden.
    pub fn lease(&mut self, taken: Taken, link: L, client_channel: u16, delivered: Arc<Delivered>) {
        let sequence = taken.kept.map_or(0, |k| k.confirm_sequence);
        self.slots[taken.channel.id as usize] = Slot::Open(Lease {
            link,
            client_channel,
            lease: taken.channel.lease,
            closing: false,
            confirms: ConfirmTags {
                base: sequence,
                ..ConfirmTags::default()
            },
            numbered_at_grant: sequence,
            settlement: Settlement::starting_at(sequence),
            hidden: match taken.kept {
                Some(_) => VecDeque::new(),
                None => VecDeque::from([ids::CHANNEL_OPEN_OK]),
            },
            delivered,
        });
        self.in_use += 1;
        self.prewarm();
    }

    /// The lease of a channel, if that lease still holds it.
    pub fn leased(&mut self, ch: UpstreamChannel) -> Option<&mut Lease<L>> {
        match self.slots.get_mut(ch.id as usize)? {
            Slot::Open(lease) if lease.lease == ch.lease => Some(lease),
            _ => None,
        }
    }

    /// The client closes its channel: Channel.Close goes upstream and the
    /// broker's Close-Ok comes back as [`FromBroker::CloseOk`].
    pub fn closing(&mut self, ch: UpstreamChannel) {
        if let Some(lease) = self.leased(ch) {
            if !lease.closing {
                lease.closing = true;
                self.to_broker
                    .push(ToBroker::ChannelClose(ch.id, "closed by the client"));
            }
        }
        // On a BrokerClosed slot the session resolves the crossing when it
        // reads the broker's Close, and releases the id.
    }

    /// The client is done with a channel that cannot be reused.
    pub fn abandon(&mut self, ch: UpstreamChannel) {
        match self.slots[ch.id as usize] {
            Slot::Open(Lease { lease, closing, .. }) if lease == ch.lease => {
                self.slots[ch.id as usize] = Slot::Abandoned;
                if !closing {
                    self.to_broker
                        .push(ToBroker::ChannelClose(ch.id, "client gone"));
                }
            }
            Slot::BrokerClosed { lease } if lease == ch.lease => {
                self.acknowledge_broker_close(ch.id)
            }
            _ => {}
        }
    }

    /// The session acknowledged the broker's Close upstream: the id is free.
    pub fn release(&mut self, ch: UpstreamChannel) {
        if matches!(self.slots[ch.id as usize], Slot::BrokerClosed { lease } if lease == ch.lease) {
            self.free_id(ch.id);
        }
    }

    /// The client is done with a clean channel: park it for the next one.
    pub fn keep(&mut self, ch: UpstreamChannel, inherited: Inherited, confirm_publishes: u64) {
        match &self.slots[ch.id as usize] {
            Slot::Open(lease) if lease.lease == ch.lease && !lease.closing => {
                let kept = Kept {
                    inherited,
                    confirm_sequence: lease.numbered_at_grant + confirm_publishes,
                };
                if self.parked >= self.kept_channels {
                    self.slots[ch.id as usize] = Slot::Abandoned;
                    self.to_broker
                        .push(ToBroker::ChannelClose(ch.id, "channel not needed"));
                } else {
                    self.in_use -= 1;
                    self.park(ch.id, kept, false);
                }
            }
            Slot::BrokerClosed { lease } if *lease == ch.lease => {
                self.acknowledge_broker_close(ch.id)
            }
            _ => {}
        }
    }

    /// Asks the broker whether `queue` exists, on an id of warren's own;
    /// gives `reply` back if no id is free.
    pub fn probe(&mut self, queue: String, reply: P) -> Result<(), P> {
        let Some(id) = self.free.pop() else {
            return Err(reply);
        };
        self.in_use += 1;
        self.slots[id as usize] = Slot::Probe(Some(reply));
        self.to_broker.push(ToBroker::ChannelOpen(id));
        self.to_broker.push(ToBroker::Probe(id, queue));
        Ok(())
    }

    /// The broker closed a channel whose client could not take the news:
    /// answer for the client and free the id.
    pub fn acknowledge_broker_close(&mut self, id: u16) {
        self.to_broker.push(ToBroker::ChannelCloseOk(id));
        self.free_id(id);
    }

    /// Routes a broker method (or, with `method` `None`, a content frame)
    /// on channel `id`; `args` are the method's arguments.
    pub fn on_broker_frame(
        &mut self,
        id: u16,
        method: Option<MethodId>,
        args: &[u8],
    ) -> FromBroker<'_, L, P> {
        let Some(slot) = self.slots.get_mut(id as usize) else {
            return FromBroker::Unknown;
        };
        match slot {
            Slot::Open(_) => self.on_open(id, method),
            Slot::Abandoned => {
                match method {
                    Some(ids::CHANNEL_CLOSE_OK) => self.free_id(id),
                    Some(ids::CHANNEL_CLOSE) => self.to_broker.push(ToBroker::ChannelCloseOk(id)),
                    _ => {}
                }
                FromBroker::Dropped
            }
            Slot::Probe(_) => self.on_probe(id, method, args),
            Slot::BrokerClosed { .. } | Slot::Free => FromBroker::Dropped,
            Slot::Draining(kept) => match method {
                Some(ids::CHANNEL_FLOW_OK) => {
                    let kept = *kept;
                    *slot = Slot::Kept(kept);
                    self.kept.push(id);
                    FromBroker::KeptReady
                }
                Some(ids::CHANNEL_CLOSE) => self.unpark(id),
                Some(ids::CHANNEL_OPEN_OK) => FromBroker::Dropped,
                _ => FromBroker::Stale,
            },
            Slot::Kept(_) => match method {
                Some(ids::CHANNEL_CLOSE) => self.unpark(id),
                _ => FromBroker::Stale,
            },
        }
    }

    fn on_open(&mut self, id: u16, method: Option<MethodId>) -> FromBroker<'_, L, P> {
        let Slot::Open(lease) = &mut self.slots[id as usize] else {
            unreachable!("called for open slots");
        };
        match method {
            Some(ids::CHANNEL_CLOSE_OK) if lease.closing => {
                let lease = self.end_lease(id, Slot::Free);
                self.free_id(id);
                FromBroker::CloseOk {
                    link: lease.link,
                    client_channel: lease.client_channel,
                }
            }
            // Not asked for: nothing to match it with.
            Some(ids::CHANNEL_CLOSE_OK) => FromBroker::Dropped,
            // Both sides closed at once: ours gets its Close-Ok, the
            // broker's comes as the answer to ours.
            Some(ids::CHANNEL_CLOSE) if lease.closing => {
                self.to_broker.push(ToBroker::ChannelCloseOk(id));
                FromBroker::Dropped
            }
            Some(ids::CHANNEL_CLOSE) => {
                let closed = Slot::BrokerClosed { lease: lease.lease };
                let lease = self.end_lease(id, closed);
                FromBroker::Closed {
                    channel: UpstreamChannel {
                        id,
                        lease: lease.lease,
                    },
                    link: lease.link,
                    client_channel: lease.client_channel,
                }
            }
            Some(reply) if lease.hidden.front() == Some(&reply) => {
                lease.hidden.pop_front();
                FromBroker::Dropped
            }
            _ => {
                let Slot::Open(lease) = &mut self.slots[id as usize] else {
                    unreachable!("matched above");
                };
                FromBroker::Deliver(lease)
            }
        }
    }

    /// Takes the lease out of an open slot, leaving `with` in its place.
    fn end_lease(&mut self, id: u16, with: Slot<L, P>) -> Lease<L> {
        match std::mem::replace(&mut self.slots[id as usize], with) {
            Slot::Open(lease) => lease,
            _ => unreachable!("only an open slot holds a lease"),
        }
    }

    fn on_probe(&mut self, id: u16, method: Option<MethodId>, args: &[u8]) -> FromBroker<'_, L, P> {
        let Slot::Probe(reply) = &mut self.slots[id as usize] else {
            unreachable!("called for probe slots");
        };
        match method {
            Some(ids::QUEUE_DECLARE_OK) => {
                let reply = reply.take();
                self.slots[id as usize] = Slot::Abandoned;
                self.to_broker
                    .push(ToBroker::ChannelClose(id, "probe done"));
                reply.map_or(FromBroker::Dropped, |r| FromBroker::ProbeAnswer(r, true))
            }
            Some(ids::CHANNEL_CLOSE) => {
                let reply = reply.take();
                let code = Close::decode(args).map_or(0, |c| c.code);
                self.to_broker.push(ToBroker::ChannelCloseOk(id));
                self.free_id(id);
                reply.map_or(FromBroker::Dropped, |r| {
                    FromBroker::ProbeAnswer(r, code != NOT_FOUND)
                })
            }
            _ => FromBroker::Dropped,
        }
    }

    /// Channels by state, for the admin API.
    pub fn counts(&self) -> ChannelCounts {
        let mut counts = ChannelCounts::default();
        for slot in &self.slots {
            match slot {
                Slot::Free => {}
                Slot::Open(Lease { closing: false, .. }) => counts.open += 1,
                Slot::Open(Lease { closing: true, .. })
                | Slot::Abandoned
                | Slot::BrokerClosed { .. }
                | Slot::Probe(_) => counts.closing += 1,
                Slot::Draining(_) | Slot::Kept(_) => counts.kept += 1,
            }
        }
        counts
    }

    /// Parks a clean channel for reuse behind a fence. `opening`: the
    /// channel is not open upstream yet (pre-warming), so its Channel.Open
    /// goes first.
    fn park(&mut self, id: u16, kept: Kept, opening: bool) {
        self.slots[id as usize] = Slot::Draining(kept);
        self.parked += 1;
        if opening {
            self.to_broker.push(ToBroker::ChannelOpen(id));
        }
        self.to_broker.push(ToBroker::Fence(id));
    }

    /// Opens clean channels until `prewarm_channels` are parked.
    fn prewarm(&mut self) {
        while self.parked < self.prewarm_channels {
            let Some(id) = self.free.pop() else { return };
            self.park(id, Kept::default(), true);
        }
    }

    fn free_id(&mut self, id: u16) {
        self.slots[id as usize] = Slot::Free;
        self.free.push(id);
        self.in_use -= 1;
    }

    /// The broker closed a parked (kept or draining) channel: acknowledge
    /// it and free the id.
    fn unpark(&mut self, id: u16) -> FromBroker<'_, L, P> {
        self.to_broker.push(ToBroker::ChannelCloseOk(id));
        self.kept.retain(|k| *k != id);
        self.parked -= 1;
        self.slots[id as usize] = Slot::Free;
        self.free.push(id);
        FromBroker::KeptReady
    }
}

#[cfg(test)]
mod tests;
