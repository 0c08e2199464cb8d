//! The channel ids of one upstream connection, as pure state with no I/O:
//! which are free, which a client holds (and under which lease), which are
//! closing, and which are kept clean for the next client. The router feeds
//! it the clients' commands and the broker's channel methods, writes what
//! it asks to send ([`ToBroker`]), and delivers client-bound frames.
//!
//! The rule everything here serves: an id is free again only once the
//! broker has confirmed the channel closed (its Close-Ok, or our Close-Ok
//! to its Close). Reusing an id earlier makes RabbitMQ kill the whole
//! connection with 504. The property tests below run random interleavings
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
use crate::confirms::ConfirmTags;
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
                wanted: false,
            },
            numbered_at_grant: sequence,
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
                let Slot::Open(lease) = std::mem::replace(&mut self.slots[id as usize], Slot::Free)
                else {
                    unreachable!("matched above");
                };
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
                let channel = UpstreamChannel {
                    id,
                    lease: lease.lease,
                };
                let closed = Slot::BrokerClosed { lease: lease.lease };
                let Slot::Open(lease) = std::mem::replace(&mut self.slots[id as usize], closed)
                else {
                    unreachable!("matched above");
                };
                FromBroker::Closed {
                    link: lease.link,
                    client_channel: lease.client_channel,
                    channel,
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
mod tests {
    use super::*;
    use crate::protocol::reply::PRECONDITION_FAILED;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Links are client numbers, probe replies labels.
    type Table = Slots<u32, &'static str>;

    fn close_args(code: u16) -> Vec<u8> {
        let mut args = code.to_be_bytes().to_vec();
        args.extend_from_slice(&[0, 0, 0, 0, 0]);
        args
    }

    fn sent(table: &mut Table) -> Vec<ToBroker> {
        table.drain_to_broker().collect()
    }

    fn lease_new(table: &mut Table, client: u32) -> UpstreamChannel {
        let taken = table.take(false).expect("an id");
        table.lease(taken, client, 1, Arc::default());
        taken.channel
    }

    #[test]
    fn ids_are_taken_lowest_first_and_a_new_ids_open_ok_is_hidden() {
        let mut table = Table::new(3, 0, 0);
        let taken = table.take(false).expect("free");
        assert_eq!(taken.channel.id, 1);
        assert!(taken.kept.is_none());
        table.untake(taken);
        let first = lease_new(&mut table, 7);
        assert_eq!(first.id, 1, "an id given back is taken again");
        assert!(matches!(
            table.on_broker_frame(1, Some(ids::CHANNEL_OPEN_OK), &[]),
            FromBroker::Dropped
        ));
        let FromBroker::Deliver(lease) = table.on_broker_frame(1, Some(ids::CHANNEL_OPEN_OK), &[])
        else {
            panic!("only the first Open-Ok is hidden");
        };
        assert_eq!(lease.link, 7);
        assert_eq!(table.in_use(), 1);
        lease_new(&mut table, 8);
        lease_new(&mut table, 9);
        assert!(table.take(false).is_none(), "all three ids are held");
        assert!(matches!(
            table.on_broker_frame(4, None, &[]),
            FromBroker::Unknown
        ));
    }

    #[test]
    fn a_kept_channel_is_fenced_before_its_next_client() {
        let mut table = Table::new(4, 1, 0);
        let first = lease_new(&mut table, 1);
        let qos = Inherited {
            confirm: true,
            ..Inherited::default()
        };
        table.keep(first, qos, 5);
        assert_eq!(sent(&mut table), [ToBroker::Fence(1)]);
        assert_eq!(table.in_use(), 0, "a parked channel is free to take");
        assert!(
            table.all_fenced(),
            "the only parked channel is behind its fence"
        );
        assert!(matches!(
            table.on_broker_frame(1, Some(ids::BASIC_RETURN), &[]),
            FromBroker::Stale
        ));
        assert!(matches!(
            table.on_broker_frame(1, Some(ids::CHANNEL_FLOW_OK), &[]),
            FromBroker::KeptReady
        ));
        assert!(!table.all_fenced());
        let again = table.take(false).expect("kept");
        assert_eq!(again.channel.id, 1);
        assert_ne!(again.channel.lease, first.lease, "a new lease");
        assert_eq!(
            again.kept,
            Some(Kept {
                inherited: qos,
                confirm_sequence: 5
            })
        );
        table.lease(again, 2, 1, Arc::default());
        let lease = table.leased(again.channel).expect("leased");
        assert_eq!(
            lease.confirms.base, 5,
            "its confirm tags start after the previous client's"
        );
        assert!(lease.hidden.is_empty(), "a kept channel is open already");
        assert!(table.leased(first).is_none(), "the old lease is over");
    }

    #[test]
    fn a_clean_channel_beyond_the_park_is_closed() {
        let mut table = Table::new(4, 1, 0);
        let a = lease_new(&mut table, 1);
        let b = lease_new(&mut table, 2);
        table.keep(a, Inherited::default(), 0);
        table.keep(b, Inherited::default(), 0);
        assert_eq!(
            sent(&mut table),
            [
                ToBroker::Fence(a.id),
                ToBroker::ChannelClose(b.id, "channel not needed")
            ]
        );
        assert_eq!(
            table.in_use(),
            1,
            "closing counts until the broker confirms"
        );
        table.on_broker_frame(b.id, Some(ids::CHANNEL_CLOSE_OK), &[]);
        assert_eq!(table.in_use(), 0);
    }

    #[test]
    fn a_clients_close_frees_the_id_only_with_the_brokers_close_ok() {
        let mut table = Table::new(1, 0, 0);
        let ch = lease_new(&mut table, 3);
        table.closing(ch);
        table.closing(ch);
        assert_eq!(
            sent(&mut table),
            [ToBroker::ChannelClose(1, "closed by the client")],
            "one Close"
        );
        assert!(table.take(false).is_none());
        let FromBroker::CloseOk {
            link,
            client_channel,
        } = table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE_OK), &[])
        else {
            panic!("the client hears its Close-Ok");
        };
        assert_eq!((link, client_channel), (3, 1));
        assert_eq!(table.take(false).expect("free again").channel.id, 1);
    }

    #[test]
    fn a_broker_close_waits_for_the_session() {
        let mut table = Table::new(1, 0, 0);
        let ch = lease_new(&mut table, 3);
        let FromBroker::Closed { link, channel, .. } =
            table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE), &close_args(406))
        else {
            panic!("the client hears the broker's Close");
        };
        assert_eq!((link, channel), (3, ch));
        table.release(UpstreamChannel { id: 1, lease: 99 });
        assert!(table.take(false).is_none(), "a stale release is ignored");
        table.release(ch);
        assert!(sent(&mut table).is_empty(), "the session sent the Close-Ok");
        assert!(table.take(false).is_some());

        let mut table = Table::new(1, 0, 0);
        let ch = lease_new(&mut table, 3);
        table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE), &close_args(406));
        table.acknowledge_broker_close(ch.id);
        assert_eq!(sent(&mut table), [ToBroker::ChannelCloseOk(1)]);
        assert_eq!(table.in_use(), 0);
    }

    #[test]
    fn crossing_closes_are_answered() {
        let mut table = Table::new(2, 0, 0);
        let ch = lease_new(&mut table, 3);
        table.closing(ch);
        sent(&mut table);
        assert!(matches!(
            table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE), &close_args(406)),
            FromBroker::Dropped
        ));
        assert_eq!(sent(&mut table), [ToBroker::ChannelCloseOk(1)]);
        assert!(matches!(
            table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE_OK), &[]),
            FromBroker::CloseOk { .. }
        ));

        let gone = lease_new(&mut table, 4);
        table.abandon(gone);
        assert_eq!(
            sent(&mut table),
            [ToBroker::ChannelClose(gone.id, "client gone")]
        );
        table.on_broker_frame(gone.id, Some(ids::CHANNEL_CLOSE), &close_args(406));
        assert_eq!(sent(&mut table), [ToBroker::ChannelCloseOk(gone.id)]);
        assert_eq!(table.in_use(), 1, "still waiting for the Close-Ok to ours");
    }

    #[test]
    fn probes_ask_on_a_channel_of_their_own() {
        let mut table = Table::new(2, 0, 0);
        table.probe("q".into(), "first").expect("a free id");
        assert_eq!(
            sent(&mut table),
            [ToBroker::ChannelOpen(1), ToBroker::Probe(1, "q".into())]
        );
        table.on_broker_frame(1, Some(ids::CHANNEL_OPEN_OK), &[]);
        let FromBroker::ProbeAnswer(reply, exists) =
            table.on_broker_frame(1, Some(ids::QUEUE_DECLARE_OK), &[])
        else {
            panic!("answered");
        };
        assert_eq!((reply, exists), ("first", true));
        assert_eq!(sent(&mut table), [ToBroker::ChannelClose(1, "probe done")]);

        table.probe("gone".into(), "second").expect("a free id");
        let FromBroker::ProbeAnswer(_, exists) =
            table.on_broker_frame(2, Some(ids::CHANNEL_CLOSE), &close_args(NOT_FOUND))
        else {
            panic!("answered");
        };
        assert!(!exists);
        assert_eq!(
            sent(&mut table),
            [
                ToBroker::ChannelOpen(2),
                ToBroker::Probe(2, "gone".into()),
                ToBroker::ChannelCloseOk(2)
            ]
        );
        table
            .probe("q".into(), "third")
            .expect("id 2 is free again");
        assert_eq!(
            table.probe("q".into(), "fourth"),
            Err("fourth"),
            "no free id (1 waits for its Close-Ok): the caller answers"
        );
        table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE_OK), &[]);
        sent(&mut table);
        table.probe("locked".into(), "fifth").expect("a free id");
        let FromBroker::ProbeAnswer(_, exists) =
            table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE), &close_args(405))
        else {
            panic!("answered");
        };
        assert!(exists, "only 404 means the queue is gone");
    }

    #[test]
    fn prewarmed_channels_are_opened_and_fenced_up_front() {
        let mut table = Table::new(8, 2, 5);
        assert_eq!(
            sent(&mut table),
            [
                ToBroker::ChannelOpen(1),
                ToBroker::Fence(1),
                ToBroker::ChannelOpen(2),
                ToBroker::Fence(2)
            ],
            "no more than the park holds"
        );
        assert_eq!(table.counts().kept, 2);
        assert_eq!(table.in_use(), 0);
    }

    /// The broker's view of a channel id.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum AtBroker {
        Closed,
        Open,
        /// It sent Close; it waits for our Close-Ok.
        ClosingByBroker,
    }

    /// A broker that applies RabbitMQ's channel rules to what warren sends
    /// and answers in order.
    struct Broker {
        state: HashMap<u16, AtBroker>,
        /// Frames from warren not yet read.
        inbound: VecDeque<ToBroker>,
        /// Frames to warren not yet delivered: id, method, close code.
        outbound: VecDeque<(u16, MethodId, u16)>,
    }

    impl Broker {
        fn at(&self, id: u16) -> AtBroker {
            *self.state.get(&id).unwrap_or(&AtBroker::Closed)
        }

        /// Reads one frame from warren. Err: RabbitMQ would close the
        /// whole connection.
        fn read(&mut self) -> Result<(), String> {
            let Some(frame) = self.inbound.pop_front() else {
                return Ok(());
            };
            let (id, at) = match &frame {
                ToBroker::ChannelOpen(id)
                | ToBroker::Fence(id)
                | ToBroker::ChannelClose(id, _)
                | ToBroker::ChannelCloseOk(id)
                | ToBroker::Probe(id, _) => (*id, self.at(*id)),
            };
            let next = match (&frame, at) {
                (ToBroker::ChannelOpen(_), AtBroker::Closed) => {
                    self.outbound.push_back((id, ids::CHANNEL_OPEN_OK, 0));
                    AtBroker::Open
                }
                (ToBroker::ChannelOpen(_), _) => return Err(format!("504: {id} opened twice")),
                (_, AtBroker::Closed) => return Err(format!("504: {frame:?} on closed {id}")),
                // Waiting for a Close-Ok, the broker discards the rest.
                (ToBroker::ChannelCloseOk(_), AtBroker::ClosingByBroker) => AtBroker::Closed,
                (ToBroker::ChannelCloseOk(_), _) => {
                    return Err(format!("504: unexpected close-ok on {id}"))
                }
                (ToBroker::ChannelClose(..), AtBroker::ClosingByBroker) => {
                    self.outbound.push_back((id, ids::CHANNEL_CLOSE_OK, 0));
                    AtBroker::ClosingByBroker
                }
                (_, AtBroker::ClosingByBroker) => at,
                // Closed once its Close-Ok is sent: from then on only a new
                // Channel.Open may use the id.
                (ToBroker::ChannelClose(..), AtBroker::Open) => {
                    self.outbound.push_back((id, ids::CHANNEL_CLOSE_OK, 0));
                    AtBroker::Closed
                }
                (ToBroker::Fence(_), AtBroker::Open) => {
                    self.outbound.push_back((id, ids::CHANNEL_FLOW_OK, 0));
                    AtBroker::Open
                }
                (ToBroker::Probe(_, queue), AtBroker::Open) if queue == "gone" => {
                    self.outbound.push_back((id, ids::CHANNEL_CLOSE, NOT_FOUND));
                    AtBroker::ClosingByBroker
                }
                (ToBroker::Probe(..), AtBroker::Open) => {
                    self.outbound.push_back((id, ids::QUEUE_DECLARE_OK, 0));
                    AtBroker::Open
                }
            };
            self.state.insert(id, next);
            Ok(())
        }

        /// The broker closes an open channel on its own (a channel error).
        fn close(&mut self, pick: usize) {
            let open: Vec<u16> = self
                .state
                .iter()
                .filter(|(_, at)| **at == AtBroker::Open)
                .map(|(id, _)| *id)
                .collect();
            if let Some(&id) = open.get(pick % open.len().max(1)) {
                self.state.insert(id, AtBroker::ClosingByBroker);
                self.outbound
                    .push_back((id, ids::CHANNEL_CLOSE, PRECONDITION_FAILED));
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take { fresh: bool, give_up: bool },
        ClientCloses(usize),
        Abandon(usize),
        Keep(usize),
        Probe { gone: bool },
        BrokerReads,
        BrokerAnswers,
        BrokerCloses(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (any::<bool>(), any::<bool>())
                .prop_map(|(fresh, give_up)| Op::Take { fresh, give_up }),
            1 => any::<usize>().prop_map(Op::ClientCloses),
            1 => any::<usize>().prop_map(Op::Abandon),
            1 => any::<usize>().prop_map(Op::Keep),
            1 => any::<bool>().prop_map(|gone| Op::Probe { gone }),
            3 => Just(Op::BrokerReads),
            3 => Just(Op::BrokerAnswers),
            1 => any::<usize>().prop_map(Op::BrokerCloses),
        ]
    }

    /// Counts the table's own bookkeeping against its slots.
    fn check_bookkeeping(table: &Table) {
        let mut in_use = 0;
        let mut parked = 0;
        for (id, slot) in table.slots.iter().enumerate().skip(1) {
            let id = id as u16;
            match slot {
                Slot::Free => assert!(table.free.contains(&id), "free {id} not listed"),
                Slot::Kept(_) => {
                    parked += 1;
                    assert!(table.kept.contains(&id));
                }
                Slot::Draining(_) => parked += 1,
                Slot::Open(_) | Slot::Abandoned | Slot::Probe(_) | Slot::BrokerClosed { .. } => {
                    in_use += 1
                }
            }
            if !matches!(slot, Slot::Free) {
                assert!(!table.free.contains(&id), "{id} listed free but used");
            }
        }
        let mut free = table.free.clone();
        free.sort_unstable();
        free.dedup();
        assert_eq!(free.len(), table.free.len(), "an id listed free twice");
        assert_eq!(table.in_use, in_use);
        assert_eq!(table.parked, parked);
        assert!(table.parked <= table.kept_channels);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn no_interleaving_makes_the_broker_close_the_connection(
            capacity in 1u16..6,
            kept_channels in 0usize..3,
            prewarm in 0usize..3,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut table = Table::new(capacity, kept_channels, prewarm);
            let mut broker = Broker {
                state: HashMap::new(),
                inbound: VecDeque::new(),
                outbound: VecDeque::new(),
            };
            // Channels clients hold, as the sessions know them.
            let mut held: Vec<UpstreamChannel> = Vec::new();
            let mut next_client = 0u32;
            let mut probes_answered = 0;
            let mut probes_asked = 0;
            for op in ops {
                match op {
                    Op::Take { fresh, give_up } => {
                        if let Some(taken) = table.take(fresh) {
                            if give_up {
                                table.untake(taken);
                            } else {
                                next_client += 1;
                                table.lease(taken, next_client, 1, Arc::default());
                                // The session opens a new id itself.
                                if taken.kept.is_none() {
                                    broker.inbound.extend(table.drain_to_broker());
                                    broker.inbound.push_back(ToBroker::ChannelOpen(taken.channel.id));
                                }
                                held.push(taken.channel);
                            }
                        }
                    }
                    Op::ClientCloses(i) if !held.is_empty() => {
                        table.closing(held[i % held.len()]);
                    }
                    Op::Abandon(i) if !held.is_empty() => {
                        table.abandon(held.swap_remove(i % held.len()));
                    }
                    Op::Keep(i) if !held.is_empty() => {
                        let ch = held.swap_remove(i % held.len());
                        table.keep(ch, Inherited::default(), 0);
                    }
                    Op::Probe { gone } => {
                        let queue = if gone { "gone" } else { "there" };
                        match table.probe(queue.into(), "probe") {
                            Ok(()) => probes_asked += 1,
                            Err(reply) => prop_assert_eq!(reply, "probe"),
                        }
                    }
                    Op::BrokerReads => {
                        broker.inbound.extend(table.drain_to_broker());
                        broker.read().map_err(TestCaseError::fail)?;
                    }
                    Op::BrokerAnswers => {
                        if let Some((id, method, code)) = broker.outbound.pop_front() {
                            let args = close_args(code);
                            match table.on_broker_frame(id, Some(method), &args) {
                                FromBroker::CloseOk { .. } => {
                                    held.retain(|ch| ch.id != id);
                                }
                                FromBroker::Closed { channel, .. } => {
                                    // The session acknowledges, then releases.
                                    broker.inbound.extend(table.drain_to_broker());
                                    broker.inbound.push_back(ToBroker::ChannelCloseOk(id));
                                    held.retain(|ch| *ch != channel);
                                    table.release(channel);
                                }
                                FromBroker::ProbeAnswer(_, exists) => {
                                    probes_answered += 1;
                                    prop_assert_eq!(exists, code != NOT_FOUND);
                                }
                                FromBroker::Deliver(lease) => {
                                    prop_assert!(held.iter().any(|ch| ch.id == id && ch.lease == lease.lease));
                                }
                                FromBroker::KeptReady
                                | FromBroker::Stale
                                | FromBroker::Dropped => {}
                                FromBroker::Unknown => prop_assert!(false, "the broker used {id}"),
                            }
                        }
                    }
                    Op::BrokerCloses(pick) => {
                        broker.inbound.extend(table.drain_to_broker());
                        broker.close(pick);
                    }
                    _ => {}
                }
                check_bookkeeping(&table);
                let leases: Vec<u64> = held.iter().map(|ch| ch.lease).collect();
                prop_assert!(
                    leases.iter().all(|l| leases.iter().filter(|m| *m == l).count() == 1),
                    "a lease held twice"
                );
            }
            // Everything in flight settles without a connection error, and
            // then the table and the broker agree on every id.
            for _ in 0..1000 {
                broker.inbound.extend(table.drain_to_broker());
                if broker.inbound.is_empty() && broker.outbound.is_empty() {
                    break;
                }
                broker.read().map_err(TestCaseError::fail)?;
                if let Some((id, method, code)) = broker.outbound.pop_front() {
                    if let FromBroker::Closed { channel, .. } =
                        table.on_broker_frame(id, Some(method), &close_args(code))
                    {
                        broker.inbound.extend(table.drain_to_broker());
                        broker.inbound.push_back(ToBroker::ChannelCloseOk(id));
                        table.release(channel);
                    }
                }
            }
            for (id, slot) in table.slots.iter().enumerate().skip(1) {
                let at = broker.at(id as u16);
                match slot {
                    Slot::Free => prop_assert_eq!(at, AtBroker::Closed, "free {}", id),
                    Slot::Kept(_) | Slot::Open(Lease { closing: false, .. }) => {
                        prop_assert_eq!(at, AtBroker::Open, "open {}", id)
                    }
                    _ => prop_assert!(false, "{} still in transit: {:?}", id, at),
                }
            }
            prop_assert!(probes_answered <= probes_asked);
            check_bookkeeping(&table);
        }
    }
}
