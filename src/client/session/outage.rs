//! Holding a publisher through a lost upstream connection.
//!
//! When the client's upstream connection goes (a broker restart, a node
//! crash, a cut network) and everything the client did can be redone on
//! another connection (it only published: no consumer, delivery,
//! transaction or exclusive queue ties it to the broker's state), the
//! client keeps its connection to warren. Its publishes go on into the
//! replay logs, anything else it sends waits, and warren connects again for
//! its pool. On a new connection every channel is opened again, in confirm
//! mode, and what the broker had not confirmed is published again in order
//! (`crate::replay`); acks keep the tags the client knows. If no node
//! answers within `--hold-seconds`, the client gets a nack for each held
//! publish it wanted confirmed, then 320 as it would without warren.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Exit, Session};
use crate::channel::Inherited;
use crate::client::channel_table::OpenChannel;
use crate::client::Context;
use crate::confirms::ConfirmTags;
use crate::pool::{Kind, PoolRef};
use crate::protocol::frame::{Frame, FRAME_HEARTBEAT};
use crate::protocol::ids;
use crate::protocol::method::{self, Close};
use crate::protocol::reply::{self, CONNECTION_FORCED};
use crate::replay::Frames;
use crate::untrusted::cut;
use crate::upstream::{ConnectError, Grant, Upstream};

/// The first pause between attempts to connect again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

type Reconnect = Pin<Box<dyn Future<Output = Result<(Upstream, PoolRef), ConnectError>> + Send>>;

/// A client held while its upstream connection is re-established.
pub struct Outage {
    since: Instant,
    /// Connects again within the hold time (see [`reconnect`]).
    reconnect: Reconnect,
}

/// Resolves when the held client has a new upstream connection, or the
/// hold time ran out; never without an outage.
pub(super) async fn reconnected(
    outage: &mut Option<Outage>,
) -> Result<(Upstream, PoolRef), ConnectError> {
    match outage {
        Some(outage) => outage.reconnect.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Pins the client to a connection of its pool, opening one on a node that
/// answers, retrying until `hold` has passed. A node that refuses the
/// credentials or the vhost is final: waiting would not change it.
async fn reconnect(
    ctx: Arc<Context>,
    (pool, kind): (PoolRef, Kind),
    vhost: String,
    hold: Duration,
) -> Result<(Upstream, PoolRef), ConnectError> {
    let deadline = tokio::time::Instant::now() + hold;
    let mut pause = RETRY_FIRST;
    loop {
        let error = match tokio::time::timeout_at(deadline, ctx.pools.reconnect(&pool, &vhost, kind)).await
        {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Ok(pinned)) => return Ok(pinned),
            Ok(Err(error)) if error.is_final() => return Err(error),
            Ok(Err(error)) => error,
        };
        if tokio::time::Instant::now() + pause >= deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// What a held client is answered without waiting for the broker, so a
/// publisher's whole cycle (open a channel, set its qos, ask for confirms,
/// publish, close) goes on through an outage (a held client has no
/// consumer, so its qos waits for one, as it always does): a channel opened now is opened
/// upstream, in confirm mode, when the client is carried; a closed one
/// settles and the session lingers after a Connection.Close until what
/// was published is confirmed (see `super::settling`).
fn answered_while_held(frame: &Frame) -> bool {
    matches!(
        frame.method_id(),
        Some(
            ids::CHANNEL_OPEN
                | ids::CHANNEL_CLOSE
                | ids::CONFIRM_SELECT
                | ids::BASIC_QOS
                | ids::CONNECTION_CLOSE
        )
    )
}

impl Session {
    /// While held, the client's publishes go on (into the replay logs) and
    /// what warren can answer for the broker is answered (see
    /// [`answered_while_held`]), and everything else waits: it needs the
    /// broker.
    pub(super) fn outage_holds(&self, frame: &Frame) -> bool {
        self.outage.is_some()
            && !frame.is_publish_part()
            && frame.kind() != FRAME_HEARTBEAT
            && !answered_while_held(frame)
    }

    /// Tells the client it is not read for a while (Connection.Blocked, if
    /// it announced the capability), and when it is read again: a held
    /// client whose share of the hold buffer is full, until it is carried,
    /// or a long pause for its rate quota (see [`super::throttle`]). A held
    /// client with room is not told: some libraries refuse to publish while
    /// blocked (php-amqplib throws), and its publishes are safe with warren.
    pub(super) fn tell_blocked(&mut self, blocked: bool) {
        if blocked == self.told_blocked || !self.link.capabilities.blocked {
            return;
        }
        self.told_blocked = blocked;
        self.link.push(match (blocked, self.outage.is_some()) {
            (false, _) => method::connection_unblocked(),
            (true, true) => method::connection_blocked(
                "warren: the broker is unreachable and this client's held publishes fill its share",
            ),
            (true, false) => method::connection_blocked(&format!(
                "warren: publishing faster than quota '{}' allows",
                self.quota.rate_quota_name().unwrap_or_default()
            )),
        });
    }

    /// The client's upstream connection is gone: the client is held if what
    /// it did can be carried to another connection, or closed with `close`.
    /// A client admitted while the broker was unreachable (its pool
    /// vouched for it) hears of its stand-in upstream this way first, and
    /// starts held.
    pub(super) fn on_upstream_lost(&mut self, close: Close) -> Option<Exit> {
        self.upstream_alive = false;
        let Some(hold) = self.hold.filter(|_| !self.ctx.force_close.is_cancelled()) else {
            return Some(Exit::Close(close));
        };
        if let Some(why) = self.why_not_carriable() {
            tracing::info!(client = self.id, why, "client not held through the lost upstream connection");
            return Some(Exit::Close(close));
        }
        // Nothing is left upstream to close: the client's own closes are done.
        for channel in self.channels.forget_closing() {
            self.link.push(method::channel_close_ok(channel));
        }
        self.trim_logs();
        tracing::warn!(
            client = self.id,
            upstream = self.upstream.id(),
            reason = cut(&close.text),
            held_bytes = self.client_hold_share.used(),
            hold_seconds = hold.as_secs(),
            "upstream connection lost; client held until a broker node answers"
        );
        self.ctx.stats.events.holding_clients.inc();
        self.record.held.set(1);
        self.outage = Some(Outage {
            since: Instant::now(),
            reconnect: Box::pin(reconnect(
                self.ctx.clone(),
                (self.pool.clone(), self.kind),
                self.vhost.clone(),
                hold,
            )),
        });
        None
    }

    pub(super) fn why_not_carriable(&self) -> Option<&'static str> {
        if !self.channels.carriable() {
            Some("a channel has a consumer, deliveries, a transaction or an unanswered request")
        } else if !self.declared_without_wait.is_empty() || self.upstream.owns_exclusive(self.id) {
            Some("it has exclusive queues")
        } else {
            None
        }
    }

    /// The outage ended: with a new upstream connection, the client goes
    /// on with the frame it was held at (unless its vhost is paused now);
    /// without, it is closed.
    pub(super) async fn on_reconnected(
        &mut self,
        reconnected: Result<(Upstream, PoolRef), ConnectError>,
        held: &mut Option<Frame>,
        more_buffered: bool,
        ctx: &Context,
    ) -> Option<Exit> {
        let (upstream, pool) = match reconnected {
            Ok(pinned) => pinned,
            Err(error) => return Some(self.outage_expired(&error)),
        };
        if let Some(exit) = self.resume(upstream, pool).await {
            return Some(exit);
        }
        if held.is_some() && ctx.pauses.holds(&self.vhost) {
            self.record.paused.set(1);
            return None;
        }
        self.release_held(held, more_buffered).await
    }

    /// The held client has a new upstream connection: its channels are
    /// opened there and what the broker had not confirmed is published
    /// again.
    pub(super) async fn resume(&mut self, upstream: Upstream, pool: PoolRef) -> Option<Exit> {
        let outage = self.outage.take()?;
        self.ctx.stats.events.holding_clients.dec();
        self.record.held.set(0);
        self.switch_upstream(upstream, pool);
        let Some(republished) = self.carry_channels().await else {
            return Some(Exit::Close(reply::close(
                CONNECTION_FORCED,
                "warren: the new upstream connection has no free channel for this client",
            )));
        };
        self.ctx.stats.events.republished.inc_by(republished);
        self.tell_blocked(false);
        tracing::info!(
            client = self.id,
            upstream = self.upstream.id(),
            republished,
            held_ms = outage.since.elapsed().as_millis() as u64,
            "held client carried to a new upstream connection"
        );
        None
    }

    /// Pins the client to `upstream` instead of its current connection; its
    /// channels are still to be carried there.
    pub(super) fn switch_upstream(&mut self, upstream: Upstream, pool: PoolRef) {
        let previous = std::mem::replace(&mut self.upstream, upstream);
        previous.unpin(self.id, self.reservation);
        // What a client's first pin reserves (see `Occupancy::try_pin`).
        self.reservation = 1;
        self.pool = pool;
        self.upstream.attach(self.link.clone());
        self.record.upstream.set(self.upstream.id());
        self.upstream_alive = true;
    }

    /// Opens every channel, open or settling, again on the new connection
    /// and publishes its unsettled messages there; how many. `None`: no
    /// channel to be had.
    pub(super) async fn carry_channels(&mut self) -> Option<u64> {
        let mut republished = 0;
        for channel in self.channels.open_channels() {
            let (grant, inherited) = self
                .take_upstream_channel(channel, false, false, true)
                .await?;
            let (_, open) = self.channels.open_mut(channel)?;
            republished += replay(open, grant, inherited, &self.upstream, &mut self.scratch).await;
        }
        let mut settling = std::mem::take(&mut self.settling);
        for settles in &mut settling {
            let Some((grant, inherited)) = self
                .take_upstream_channel(settles.channel, false, false, true)
                .await
            else {
                self.settling = settling;
                return None;
            };
            republished +=
                replay(&mut settles.open, grant, inherited, &self.upstream, &mut self.scratch).await;
        }
        self.settling = settling;
        Some(republished)
    }

    /// No node answered within the hold time: the client hears of each
    /// held publish it wanted confirmed (a nack), then gets 320.
    pub(super) fn outage_expired(&mut self, error: &ConnectError) -> Exit {
        let hold = self.hold.unwrap_or_default();
        tracing::warn!(client = self.id, %error, hold_seconds = hold.as_secs(), "no broker node answered within the hold time");
        self.give_up_held("the hold time ran out");
        Exit::Close(reply::close(
            CONNECTION_FORCED,
            format!(
                "the upstream connection to the broker was lost and warren could not \
                 connect again within {}s: {error}",
                hold.as_secs()
            ),
        ))
    }

    /// Ends the outage without the broker: held publishes are dropped,
    /// counted and logged; those the client wanted confirmed are nacked.
    pub(super) fn give_up_held(&mut self, why: &'static str) {
        if self.outage.take().is_none() {
            return;
        }
        self.ctx.stats.events.holding_clients.dec();
        self.record.held.set(0);
        self.drop_unsettled(why);
    }

    /// Drops every publish the broker has not settled, counted and logged;
    /// those the client wanted confirmed are nacked.
    pub(super) fn drop_unsettled(&mut self, why: &'static str) {
        let mut dropped = 0;
        let mut settling = std::mem::take(&mut self.settling);
        let channels = self.channels.each_open();
        let every = channels.chain(settling.iter_mut().map(|s| (s.channel, &mut s.open)));
        for (channel, open) in every {
            let (settled, apart) = open.delivered.settlement();
            let (unsettled, _) = open.log.take_unsettled(settled, &apart);
            for entry in unsettled {
                dropped += 1;
                if entry.client_tag > 0 {
                    self.link.push(method::basic_nack(channel, entry.client_tag));
                }
            }
        }
        self.settling = settling;
        self.ctx.stats.events.dropped_held.inc_by(dropped);
        if dropped > 0 {
            tracing::warn!(client = self.id, dropped, why, "held publishes dropped");
        }
    }
}

/// Moves `open` to the upstream channel `grant` and publishes its unsettled
/// messages there, in order; how many. Acks keep the tags the client knows.
async fn replay(
    open: &mut OpenChannel,
    grant: Grant,
    inherited: Inherited,
    upstream: &Upstream,
    scratch: &mut Vec<Bytes>,
) -> u64 {
    let (settled, apart) = open.delivered.settlement();
    let (unsettled, _) = open.log.take_unsettled(settled, &apart);
    let mut usage = open.usage.carried(inherited);
    open.upstream = grant.channel;
    open.delivered = grant.delivered;
    if usage.wants_confirms() {
        upstream.want_confirms(
            grant.channel,
            ConfirmTags {
                base: 0,
                wanted: true,
                replayed: unsettled.iter().map(|entry| entry.client_tag).collect(),
                tags_before: usage.confirm_tags,
            },
        );
    }
    let frame_max = upstream.frame_max();
    for entry in &unsettled {
        entry.frames.reframe(grant.channel.id, frame_max, scratch);
        let pieces = std::mem::take(scratch);
        open.log.push(entry.client_tag, Frames::Pieces(pieces.clone()));
        usage.on_republish();
        for piece in pieces {
            upstream.send(piece).await;
        }
    }
    open.usage = usage;
    unsettled.len() as u64
}
