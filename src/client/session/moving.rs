//! Moving a client off a drained node.
//!
//! `warren ctl drain-node` takes a broker node out of service: its upstream
//! connections take no new clients, and the clients they have move to a
//! connection on another node at a message boundary, without an error.
//! Once no message is under way on any of the client's channels, warren
//! stops reading it, waits for the broker to confirm what it published (so
//! nothing is sent twice and nothing published later overtakes it on the
//! other connection), opens its channels on the new connection (with their
//! qos and confirm mode, see [`super::outage`]) and reads on. A client tied
//! to the broker's state (see `why_not_carriable`), or whose publishes are
//! not confirmed within [`MOVE_WAIT`], stays until it leaves. Without
//! `--hold-seconds` nothing is confirmed upstream and no client moves.

use std::time::{Duration, Instant};

use super::channels::give_back_to;
use super::{Exit, Session};
use crate::protocol::reply::{self, CONNECTION_FORCED};

/// How long a client may keep the move waiting for a message boundary and
/// the broker's confirms.
const MOVE_WAIT: Duration = Duration::from_secs(5);

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
                self.moving = Some(Instant::now());
                return;
            }
            None => "no other node is undrained",
            Some(why) => why,
        };
        tracing::info!(client = self.id, upstream, why, "client stays on the drained node until it leaves");
    }

    /// Reading pauses for a move once no message is under way.
    pub(super) fn pauses_reads_to_move(&self) -> bool {
        self.moving.is_some() && self.channels.at_message_boundary()
    }

    /// Moves the client once it is at a message boundary with everything
    /// confirmed; gives the move up after [`MOVE_WAIT`].
    pub(super) async fn move_when_ready(&mut self) -> Option<Exit> {
        let asked = self.moving?;
        self.trim_logs();
        let ready = self.channels.at_message_boundary()
            && self.client_hold_share.used() == 0
            && self.settling.is_empty()
            && self.why_not_carriable().is_none();
        if !ready {
            if asked.elapsed() > MOVE_WAIT {
                self.moving = None;
                tracing::info!(
                    client = self.id,
                    upstream = self.upstream.id(),
                    why = self.why_not_carriable().unwrap_or("its publishes were not confirmed in time"),
                    "client stays on the drained node until it leaves"
                );
            }
            return None;
        }
        self.moving = None;
        self.move_off_drained().await
    }

    async fn move_off_drained(&mut self) -> Option<Exit> {
        let (upstream, pool) = match self.ctx.pools.reconnect(&self.pool, &self.vhost).await {
            Ok(pinned) => pinned,
            Err(error) => {
                tracing::info!(client = self.id, %error, "client stays on the drained node: no other connection");
                return None;
            }
        };
        if upstream.node() == self.upstream.node() {
            // No other node answered: the drained one is the last resort.
            upstream.unpin(self.id, 1);
            return None;
        }
        let reuse = self.ctx.config().channel_reuse;
        for (_, open) in self.channels.each_open() {
            give_back_to(&self.upstream, reuse, self.id, open);
        }
        let from = self.upstream.id();
        self.switch_upstream(upstream, pool);
        if self.carry_channels().await.is_none() {
            return Some(Exit::Close(reply::close(
                CONNECTION_FORCED,
                "warren: the new upstream connection has no free channel for this client",
            )));
        }
        tracing::info!(client = self.id, from, to = self.upstream.id(), "client moved off a drained node");
        None
    }
}
