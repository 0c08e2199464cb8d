//! Moving a client to another upstream connection while it runs, without
//! an error: off a drained node, or onto a connection of its own.
//!
//! `warren ctl drain-node` takes a broker node out of service: its upstream
//! connections take no new clients, and the clients they have move to a
//! connection on another node. A route with `consumer_mode = "dedicated"`
//! gives a client that starts consuming, declares an exclusive queue or
//! selects a transaction a connection of its own, before that first method
//! reaches the broker, so its prefetch, flow control and heartbeats never
//! mix with other clients' (dedicated connections are pooled and reused).
//!
//! Either way: once no message is under way on any of the client's
//! channels, warren stops reading it, waits for the broker to confirm what
//! it published (so nothing is sent twice and nothing published later
//! overtakes it on the other connection), opens its channels on the new
//! connection (with their qos and confirm mode, see [`super::outage`]) and
//! reads on. A client tied to the broker's state (see `why_not_carriable`),
//! or whose publishes are not confirmed within [`MOVE_WAIT`], stays where
//! it is. Without `--hold-seconds` nothing is confirmed upstream and no
//! client moves.

use std::time::{Duration, Instant};

use super::channels::give_back_to;
use super::{Exit, Session};
use crate::client::channel_table::Route;
use crate::config::ConsumerMode;
use crate::pool::{Kind, PoolRef};
use crate::protocol::frame::Frame;
use crate::protocol::ids;
use crate::protocol::reply::{self, CONNECTION_FORCED};
use crate::upstream::Upstream;

/// How long a client may keep a move waiting for a message boundary and
/// the broker's confirms.
const MOVE_WAIT: Duration = Duration::from_secs(5);

/// A move the client is due for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Move {
    since: Instant,
    to: Destination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    /// Its node was drained.
    AnotherNode,
    /// It started consuming on a dedicated route.
    OwnConnection,
}

impl Destination {
    fn stays(self) -> &'static str {
        match self {
            Destination::AnotherNode => "client stays on the drained node until it leaves",
            Destination::OwnConnection => "client keeps sharing its upstream connection",
        }
    }
}

impl Session {
    /// The node of upstream connection `upstream` was drained.
    pub(super) fn on_node_drained(&mut self, upstream: u64) {
        if upstream != self.upstream.id() || self.hold.is_none() || self.outage.is_some() {
            return;
        }
        let elsewhere = self
            .ctx
            .pools
            .nodes_of(&self.pool)
            .undrained_besides(self.upstream.node());
        let why = match self.why_not_carriable() {
            None if elsewhere => {
                self.plan_move(Destination::AnotherNode);
                return;
            }
            None => "no other node is undrained",
            Some(why) => why,
        };
        tracing::info!(client = self.id, upstream, why, "{}", Destination::AnotherNode.stays());
    }

    /// Whether `frame` makes this client move to a connection of its own
    /// first (its route is dedicated, and the frame is its first
    /// Basic.Consume, exclusive Queue.Declare or Tx.Select); if so the move
    /// is planned, and the caller holds the frame until it is done.
    pub(super) fn moves_before(&mut self, frame: &Frame) -> bool {
        let dedicating = match frame.method_id() {
            Some(ids::BASIC_CONSUME | ids::TX_SELECT) => true,
            Some(ids::QUEUE_DECLARE) => declares_exclusive(frame.method_args()),
            _ => false,
        };
        // Cheap checks first: this runs for every frame the client sends.
        let movable = dedicating
            && self.kind == Kind::Shared
            && !self.dedication_declined
            && self.hold.is_some()
            && self.outage.is_none()
            && self.moving.is_none()
            && matches!(self.channels.route(frame.channel()), Route::Open { .. })
            && self.channels.at_message_boundary()
            && self.why_not_carriable().is_none()
            && self.ctx.pools.consumer_mode_of(&self.pool) == ConsumerMode::Dedicated;
        if movable {
            self.plan_move(Destination::OwnConnection);
        }
        movable
    }

    fn plan_move(&mut self, to: Destination) {
        self.moving = Some(Move {
            since: Instant::now(),
            to,
        });
    }

    /// Reading pauses for a move once no message is under way.
    pub(super) fn pauses_reads_to_move(&self) -> bool {
        self.moving.is_some() && self.channels.at_message_boundary()
    }

    /// Moves the client once it is at a message boundary with everything
    /// confirmed; gives the move up after [`MOVE_WAIT`].
    pub(super) async fn move_when_ready(&mut self) -> Option<Exit> {
        let Move { since, to } = self.moving?;
        self.trim_logs();
        let ready = self.channels.at_message_boundary()
            && self.client_hold_share.used() == 0
            && self.settling.is_empty()
            && self.why_not_carriable().is_none();
        if !ready {
            if since.elapsed() > MOVE_WAIT {
                self.give_up_move(to);
                tracing::info!(
                    client = self.id,
                    upstream = self.upstream.id(),
                    why = self.why_not_carriable().unwrap_or("its publishes were not confirmed in time"),
                    "{}", to.stays()
                );
            }
            return None;
        }
        self.moving = None;
        let kind = match to {
            Destination::AnotherNode => self.kind,
            Destination::OwnConnection => Kind::Dedicated,
        };
        let (upstream, pool) = match self.ctx.pools.reconnect(&self.pool, &self.vhost, kind).await {
            Ok(pinned) => pinned,
            Err(error) => {
                self.give_up_move(to);
                tracing::info!(client = self.id, %error, "{}: no other connection", to.stays());
                return None;
            }
        };
        if to == Destination::AnotherNode && upstream.node() == self.upstream.node() {
            // No other node answered: the drained one is the last resort.
            upstream.unpin(self.id, 1);
            return None;
        }
        let from = self.upstream.id();
        let exit = self.carry_to(upstream, pool).await;
        self.kind = kind;
        let to_upstream = self.upstream.id();
        match to {
            Destination::AnotherNode => tracing::info!(client = self.id, from, to = to_upstream, "client moved off a drained node"),
            Destination::OwnConnection => tracing::info!(client = self.id, from, to = to_upstream, "client has an upstream connection of its own (consumer_mode dedicated)"),
        }
        exit
    }

    /// The client stays where it is; one that was to get a connection of
    /// its own is not held up for that again.
    fn give_up_move(&mut self, to: Destination) {
        self.moving = None;
        self.dedication_declined |= to == Destination::OwnConnection;
    }

    /// Gives the client's channels back to its connection and opens them on
    /// `upstream` instead.
    async fn carry_to(&mut self, upstream: Upstream, pool: PoolRef) -> Option<Exit> {
        let reuse = self.ctx.config().channel_reuse;
        for (_, open) in self.channels.each_open() {
            give_back_to(&self.upstream, reuse, self.id, open);
        }
        self.switch_upstream(upstream, pool);
        match self.carry_channels().await {
            Some(_) => None,
            None => Some(Exit::Close(reply::close(
                CONNECTION_FORCED,
                "warren: the new upstream connection has no free channel for this client",
            ))),
        }
    }
}

/// Whether Queue.Declare arguments ask for an exclusive queue: after the
/// reserved short and the queue name, the third flag bit.
fn declares_exclusive(args: &[u8]) -> bool {
    let Some(&name_len) = args.get(2) else {
        return false;
    };
    args.get(3 + usize::from(name_len))
        .is_some_and(|flags| flags & 0b100 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exclusive_flag_is_read_after_the_queue_name() {
        let declare = |name: &str, flags: u8| {
            let mut args = vec![0, 0, name.len() as u8];
            args.extend_from_slice(name.as_bytes());
            args.push(flags);
            args
        };
        assert!(declares_exclusive(&declare("reply", 0b100)));
        assert!(declares_exclusive(&declare("", 0b110)));
        assert!(!declares_exclusive(&declare("q", 0b011)));
        assert!(!declares_exclusive(&[0, 0, 9, b'x']));
    }
}
