//! A client's channels, as pure state with no I/O: which upstream channel
//! serves each, where it is in its life, and the publish it is assembling.
//! The session asks the table what a frame or an event means for a channel
//! and carries out the answer; every rule about channel ids and states the
//! broker enforces lives here, where it is unit-tested.
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

use std::collections::HashMap;
use std::sync::Arc;

use crate::channel::{Delivered, UpstreamChannel};
use crate::client::usage::Usage;
use crate::content::ContentAssembler;
use crate::protocol::ids::{self, MethodId};
use crate::protocol::method::Close;
use crate::protocol::reply::{self, CHANNEL_ERROR, NOT_ALLOWED};
use crate::replay::ReplayLog;

enum ChannelState {
    Open {
        open: OpenChannel,
        content: ContentAssembler,
    },
    /// The client's Close went upstream; waiting for the broker's CloseOk
    /// (a Declare-Ok still on its way is matched against `usage`).
    ClosingByClient {
        upstream: UpstreamChannel,
        usage: Usage,
    },
    /// The broker closed the channel (already acknowledged upstream); waiting
    /// for the client's CloseOk, which is swallowed.
    ClosedByBroker,
    /// warren closed the channel on its own; waiting for the client's CloseOk.
    ClosedByProxy,
}

/// Where a client frame on a channel goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// The client never opened the channel (or it is gone).
    Unopened,
    /// Served by `upstream`; `expects_method` is false while a publish is
    /// under way (its header and bodies are due).
    Open {
        upstream: UpstreamChannel,
        expects_method: bool,
    },
    /// The client closed it: the spec discards everything until Close-Ok.
    Closing,
    /// Closed by the broker or by warren, waiting for the client's Close-Ok.
    Closed,
}

/// An open channel's upstream side, as given back by
/// [`ChannelTable::take_open`].
pub struct OpenChannel {
    pub upstream: UpstreamChannel,
    pub usage: Usage,
    /// What the broker sent the client on this channel (counted by the
    /// upstream router).
    pub delivered: Arc<Delivered>,
    /// Publishes the broker has not confirmed yet.
    pub log: ReplayLog,
}

/// A channel that leaves the table at the end of the session.
pub enum Leftover {
    Open(Box<OpenChannel>),
    /// Closing at the client's request: its upstream channel is still
    /// reserved until the broker's Close-Ok.
    Closing(UpstreamChannel),
}

/// The broker closed an upstream channel serving this client.
pub enum BrokerClose {
    /// The client's channel no longer uses that upstream channel (it was
    /// given back): the router acknowledged the Close itself.
    NotOurs,
    /// The client had closed the channel too: it is gone, and the client
    /// gets its Close-Ok. `usage` says what the client did on it.
    CrossedClientClose { usage: Usage },
    /// The channel waits for the client's Close-Ok; the client gets the
    /// broker's Close.
    Closed { usage: Usage },
}

/// The channel table of one client connection.
pub struct ChannelTable {
    channels: HashMap<u16, ChannelState, ChannelIds>,
    /// The channel_max negotiated with the client.
    channel_max: u16,
}

impl ChannelTable {
    pub fn new(channel_max: u16) -> Self {
        ChannelTable {
            channels: HashMap::default(),
            channel_max,
        }
    }

    /// Channels in the table, in any state (RabbitMQ counts those too).
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn route(&self, channel: u16) -> Route {
        match self.channels.get(&channel) {
            None => Route::Unopened,
            Some(ChannelState::Open { open, content }) => Route::Open {
                upstream: open.upstream,
                expects_method: content.is_idle(),
            },
            Some(ChannelState::ClosingByClient { .. }) => Route::Closing,
            Some(ChannelState::ClosedByBroker | ChannelState::ClosedByProxy) => Route::Closed,
        }
    }

    /// Whether the client may open `channel`, as RabbitMQ decides it: it
    /// limits how many channels are open, not their numbers, and an open
    /// one cannot be opened again. Ok: how many others are open.
    pub fn may_open(&self, channel: u16) -> Result<usize, Close> {
        let opened = self.channels.len() - usize::from(self.channels.contains_key(&channel));
        if opened >= usize::from(self.channel_max) {
            return Err(reply::close(
                NOT_ALLOWED,
                format!(
                    "number of channels opened ({opened}) has reached the negotiated \
                     channel_max ({})",
                    self.channel_max
                ),
            )
            .caused_by(ids::CHANNEL_OPEN));
        }
        if matches!(self.route(channel), Route::Open { .. } | Route::Closing) {
            return Err(reply::close(CHANNEL_ERROR, "second 'channel.open' seen")
                .caused_by(ids::CHANNEL_OPEN));
        }
        Ok(opened)
    }

    pub fn insert_open(
        &mut self,
        channel: u16,
        upstream: UpstreamChannel,
        usage: Usage,
        delivered: Arc<Delivered>,
        log: ReplayLog,
    ) {
        self.channels.insert(
            channel,
            ChannelState::Open {
                open: OpenChannel {
                    upstream,
                    usage,
                    delivered,
                    log,
                },
                content: ContentAssembler::default(),
            },
        );
    }

    /// Removes an open channel, with what giving it back needs; a channel
    /// in any other state stays.
    pub fn take_open(&mut self, channel: u16) -> Option<OpenChannel> {
        match self.channels.remove(&channel)? {
            ChannelState::Open { open, .. } => Some(open),
            other => {
                self.channels.insert(channel, other);
                None
            }
        }
    }

    /// The client closed `channel` and its Close went upstream.
    pub fn closing_by_client(&mut self, channel: u16, upstream: UpstreamChannel, usage: Usage) {
        self.channels
            .insert(channel, ChannelState::ClosingByClient { upstream, usage });
    }

    /// warren closed `channel` on its own.
    pub fn closed_by_proxy(&mut self, channel: u16) {
        self.channels.insert(channel, ChannelState::ClosedByProxy);
    }

    /// The broker's Close-Ok for a channel the client closed: true if the
    /// channel was waiting for it (it is gone now, and the client gets its
    /// Close-Ok).
    pub fn on_broker_close_ok(&mut self, channel: u16) -> bool {
        let closing = matches!(
            self.channels.get(&channel),
            Some(ChannelState::ClosingByClient { .. })
        );
        if closing {
            self.channels.remove(&channel);
        }
        closing
    }

    /// The broker closed `upstream`, which served `channel` when the
    /// router last knew.
    pub fn on_broker_close(&mut self, channel: u16, upstream: UpstreamChannel) -> BrokerClose {
        let ours = match self.channels.get(&channel) {
            Some(ChannelState::Open { open, .. }) => open.upstream == upstream,
            Some(ChannelState::ClosingByClient { upstream: u, .. }) => *u == upstream,
            _ => false,
        };
        if !ours {
            return BrokerClose::NotOurs;
        }
        match self.channels.insert(channel, ChannelState::ClosedByBroker) {
            Some(ChannelState::ClosingByClient { usage, .. }) => {
                self.channels.remove(&channel);
                BrokerClose::CrossedClientClose { usage }
            }
            Some(ChannelState::Open { open, .. }) => BrokerClose::Closed { usage: open.usage },
            _ => unreachable!("checked to be open or closing above"),
        }
    }

    /// A method on a closed channel: Close-Ok ends it; a Close (both sides
    /// closed at once) ends it too and is answered (true); anything else
    /// is discarded.
    pub fn on_method_while_closed(&mut self, channel: u16, id: Option<MethodId>) -> bool {
        match id {
            Some(ids::CHANNEL_CLOSE_OK) => {
                self.channels.remove(&channel);
                false
            }
            Some(ids::CHANNEL_CLOSE) => {
                self.channels.remove(&channel);
                true
            }
            _ => false,
        }
    }

    /// The assembler and upstream side of an open channel.
    pub fn open_mut(&mut self, channel: u16) -> Option<(&mut ContentAssembler, &mut OpenChannel)> {
        match self.channels.get_mut(&channel)? {
            ChannelState::Open { open, content } => Some((content, open)),
            _ => None,
        }
    }

    /// The open channels' numbers, lowest first.
    pub fn open_channels(&self) -> Vec<u16> {
        let mut open: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, state)| matches!(state, ChannelState::Open { .. }))
            .map(|(number, _)| *number)
            .collect();
        open.sort_unstable();
        open
    }

    /// Every open channel's upstream side.
    pub fn each_open(&mut self) -> impl Iterator<Item = (u16, &mut OpenChannel)> {
        self.channels
            .iter_mut()
            .filter_map(|(number, state)| match state {
                ChannelState::Open { open, .. } => Some((*number, open)),
                _ => None,
            })
    }

    /// Whether every open channel could be carried to another upstream
    /// connection (see [`Usage::carriable`]).
    pub fn carriable(&self) -> bool {
        self.channels.values().all(|state| match state {
            ChannelState::Open { open, .. } => open
                .usage
                .carriable(open.delivered.load().0),
            _ => true,
        })
    }

    /// No message is under way on any channel and no close is waiting for
    /// the broker: the client could move to another upstream connection
    /// between this frame and its next.
    pub fn at_message_boundary(&self) -> bool {
        self.channels.values().all(|state| match state {
            ChannelState::Open { content, .. } => content.is_idle(),
            ChannelState::ClosingByClient { .. } => false,
            ChannelState::ClosedByBroker | ChannelState::ClosedByProxy => true,
        })
    }

    /// Channels the client closed whose upstream connection is gone: they
    /// are closed, and the client gets its Close-Ok from warren.
    pub fn forget_closing(&mut self) -> Vec<u16> {
        let closing: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, state)| matches!(state, ChannelState::ClosingByClient { .. }))
            .map(|(number, _)| *number)
            .collect();
        for number in &closing {
            self.channels.remove(number);
        }
        closing
    }

    /// What the client did on a channel whose upstream channel is still its
    /// own (open, or closing at its request).
    pub fn usage_mut(&mut self, channel: u16) -> Option<&mut Usage> {
        match self.channels.get_mut(&channel)? {
            ChannelState::Open { open, .. } => Some(&mut open.usage),
            ChannelState::ClosingByClient { usage, .. } => Some(usage),
            ChannelState::ClosedByBroker | ChannelState::ClosedByProxy => None,
        }
    }

    /// Whether a channel is waiting for an exclusive declare to come back:
    /// awaiting its Declare-Ok, or (`declared_without_wait`) closing after
    /// a no-wait one (its Close-Ok comes once the declare has run).
    pub fn awaits_exclusive_declare(&self, declared_without_wait: impl Fn(u16) -> bool) -> bool {
        self.channels.iter().any(|(number, state)| match state {
            ChannelState::Open { open, .. } => {
                open.usage.awaited_exclusive_declares().next().is_some()
            }
            ChannelState::ClosingByClient { usage, .. } => {
                usage.awaited_exclusive_declares().next().is_some()
                    || declared_without_wait(*number)
            }
            ChannelState::ClosedByBroker | ChannelState::ClosedByProxy => false,
        })
    }

    /// Empties the table at the end of the session.
    pub fn drain(&mut self) -> impl Iterator<Item = (u16, Leftover)> + '_ {
        self.channels.drain().filter_map(|(channel, state)| match state {
            ChannelState::Open { open, .. } => Some((channel, Leftover::Open(Box::new(open)))),
            ChannelState::ClosingByClient { upstream, .. } => {
                Some((channel, Leftover::Closing(upstream)))
            }
            ChannelState::ClosedByBroker | ChannelState::ClosedByProxy => None,
        })
    }
}

/// Hashes channel ids with one multiplication (Fibonacci hashing): the map
/// is looked up for every frame, and SipHash's DoS resistance buys nothing
/// for keys a client can only pick from 1..=channel_max of its own table.
#[derive(Default, Clone, Copy)]
struct ChannelIds;

impl std::hash::BuildHasher for ChannelIds {
    type Hasher = ChannelIdHasher;
    fn build_hasher(&self) -> ChannelIdHasher {
        ChannelIdHasher(0)
    }
}

struct ChannelIdHasher(u64);

impl std::hash::Hasher for ChannelIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Inherited;

    fn upstream(id: u16, lease: u64) -> UpstreamChannel {
        UpstreamChannel { id, lease }
    }

    fn open(table: &mut ChannelTable, channel: u16, on: UpstreamChannel) {
        table.may_open(channel).expect("may open");
        table.insert_open(
            channel,
            on,
            Usage::new(Inherited::default()),
            Arc::default(),
            ReplayLog::default(),
        );
    }

    #[test]
    fn channel_max_counts_open_channels_not_their_numbers() {
        let mut table = ChannelTable::new(2);
        open(&mut table, 7, upstream(1, 1));
        open(&mut table, 2047, upstream(2, 2));
        let refused = table.may_open(3).unwrap_err();
        assert_eq!(refused.code, NOT_ALLOWED);
        assert_eq!(
            refused.text,
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
        );
        assert_eq!(refused.cause, ids::CHANNEL_OPEN);
        // A closed channel still counts until the client acknowledges it.
        table.closed_by_proxy(7);
        assert!(table.may_open(3).is_err());
        assert!(!table.on_method_while_closed(7, Some(ids::CHANNEL_CLOSE_OK)));
        assert_eq!(table.may_open(3), Ok(1));
    }

    #[test]
    fn an_open_or_closing_channel_cannot_be_opened_again() {
        let mut table = ChannelTable::new(10);
        open(&mut table, 1, upstream(1, 1));
        let again = table.may_open(1).unwrap_err();
        assert_eq!(again.code, CHANNEL_ERROR);
        assert_eq!(again.text, "CHANNEL_ERROR - second 'channel.open' seen");
        let taken = table.take_open(1).expect("open");
        table.closing_by_client(1, taken.upstream, taken.usage);
        assert_eq!(table.route(1), Route::Closing);
        assert!(table.may_open(1).is_err());
        // A closed channel waiting for the client's Close-Ok is replaced
        // by a new Open.
        table.closed_by_proxy(1);
        assert_eq!(table.may_open(1), Ok(0));
    }

    #[test]
    fn routes_follow_the_lifecycle() {
        let mut table = ChannelTable::new(10);
        assert_eq!(table.route(1), Route::Unopened);
        open(&mut table, 1, upstream(5, 9));
        assert_eq!(
            table.route(1),
            Route::Open {
                upstream: upstream(5, 9),
                expects_method: true
            }
        );
        let taken = table.take_open(1).expect("open");
        assert_eq!(taken.upstream, upstream(5, 9));
        assert_eq!(table.route(1), Route::Unopened);
        table.closing_by_client(1, taken.upstream, taken.usage);
        assert!(
            table.take_open(1).is_none(),
            "only an open channel is taken"
        );
        assert_eq!(table.route(1), Route::Closing, "and the others stay");
        assert!(table.on_broker_close_ok(1));
        assert_eq!(table.route(1), Route::Unopened);
        assert!(!table.on_broker_close_ok(1), "a second Close-Ok is stale");
    }

    #[test]
    fn a_broker_close_of_an_open_channel_waits_for_the_clients_close_ok() {
        let mut table = ChannelTable::new(10);
        open(&mut table, 3, upstream(4, 1));
        assert!(matches!(
            table.on_broker_close(3, upstream(4, 1)),
            BrokerClose::Closed { .. }
        ));
        assert_eq!(table.route(3), Route::Closed);
        assert!(table.usage_mut(3).is_none());
        assert!(!table.on_method_while_closed(3, Some(ids::BASIC_PUBLISH)));
        assert_eq!(table.route(3), Route::Closed, "other methods are discarded");
        assert!(!table.on_method_while_closed(3, None));
        assert!(!table.on_method_while_closed(3, Some(ids::CHANNEL_CLOSE_OK)));
        assert_eq!(table.route(3), Route::Unopened);
    }

    #[test]
    fn closes_that_cross_end_the_channel_and_are_answered() {
        let mut table = ChannelTable::new(10);
        open(&mut table, 3, upstream(4, 1));
        let taken = table.take_open(3).expect("open");
        table.closing_by_client(3, taken.upstream, taken.usage);
        assert!(matches!(
            table.on_broker_close(3, upstream(4, 1)),
            BrokerClose::CrossedClientClose { .. }
        ));
        assert_eq!(table.route(3), Route::Unopened);

        open(&mut table, 4, upstream(6, 1));
        table.closed_by_proxy(4);
        assert!(
            table.on_method_while_closed(4, Some(ids::CHANNEL_CLOSE)),
            "the client's Close gets a Close-Ok"
        );
        assert_eq!(table.route(4), Route::Unopened);
    }

    #[test]
    fn a_close_for_an_upstream_channel_given_back_is_not_ours() {
        let mut table = ChannelTable::new(10);
        open(&mut table, 3, upstream(4, 2));
        assert!(matches!(
            table.on_broker_close(3, upstream(4, 1)),
            BrokerClose::NotOurs
        ));
        assert!(matches!(
            table.on_broker_close(9, upstream(4, 2)),
            BrokerClose::NotOurs
        ));
        assert!(matches!(table.route(3), Route::Open { .. }));
    }

    #[test]
    fn drain_returns_what_still_holds_an_upstream_channel() {
        let mut table = ChannelTable::new(10);
        open(&mut table, 1, upstream(1, 1));
        open(&mut table, 2, upstream(2, 1));
        open(&mut table, 3, upstream(3, 1));
        let taken = table.take_open(2).expect("open");
        table.closing_by_client(2, taken.upstream, taken.usage);
        table.closed_by_proxy(3);
        let mut left: Vec<_> = table
            .drain()
            .map(|(channel, leftover)| match leftover {
                Leftover::Open(open) => (channel, "open", open.upstream.id),
                Leftover::Closing(upstream) => (channel, "closing", upstream.id),
            })
            .collect();
        left.sort();
        assert_eq!(left, [(1, "open", 1), (2, "closing", 2)]);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn channel_ids_hash_apart() {
        use std::hash::BuildHasher;
        let hashes: std::collections::HashSet<u64> =
            (0..=u16::MAX).map(|id| ChannelIds.hash_one(id)).collect();
        assert_eq!(hashes.len(), 1 << 16);
    }
}
