//! The session's upstream channels: taken when the client opens a channel,
//! kept for the next client when it closes a clean one, closed otherwise.

use std::sync::Arc;

use super::{Exit, Session};
use crate::channel::UpstreamChannel;
use crate::client::channel_table::{Leftover, OpenChannel};
use crate::client::usage::Usage;
use crate::protocol::frame::Frame;
use crate::protocol::ids;
use crate::protocol::method::{self, Close};
use crate::protocol::reply::{self, CONNECTION_FORCED, NOT_ALLOWED};
use crate::protocol::spec::MethodSpec;
use crate::stats::CloseScope;
use crate::untrusted::cut;
use crate::channel::Inherited;
use crate::held::Charges;
use crate::replay::ReplayLog;
use crate::upstream::{Grant, Upstream};

impl Session {
    pub(super) async fn open_channel(&mut self, channel: u16) -> Option<Exit> {
        let opened = match self.channels.may_open(channel) {
            Ok(opened) => opened,
            Err(close) => return Some(Exit::Close(close)),
        };
        if let Err(close) = self.quota.open_channel() {
            return Some(Exit::Close(close));
        }
        if self.outage.is_some() {
            self.open_channel_while_held(channel);
            return None;
        }
        if !self.opened_a_channel {
            self.move_if_crowded().await;
            self.opened_a_channel = true;
        }
        let beyond_guarantee = self.upstream.reservation(true, opened) == 0;
        let confirm = self.hold.is_some();
        let Some((grant, inherited)) = self
            .take_upstream_channel(channel, false, beyond_guarantee, confirm)
            .await
        else {
            return Some(self.no_free_channel(opened, beyond_guarantee));
        };
        let log = self.new_log();
        self.channels.insert_open(
            channel,
            grant.channel,
            Usage::new(inherited),
            grant.delivered,
            log,
        );
        // Open-Ok right away, for a kept channel and a new one alike: a
        // Channel.Open on a free id of a healthy connection cannot fail at
        // channel level, and the client's next frames follow it upstream.
        self.link.push(method::channel_open_ok(channel));
        None
    }

    /// A held client opens a channel: it is answered now and bound to an
    /// upstream channel, in confirm mode, when the client is carried.
    fn open_channel_while_held(&mut self, channel: u16) {
        self.opened_a_channel = true;
        let inherited = Inherited {
            confirm: true,
            ..Inherited::default()
        };
        let log = self.new_log();
        self.channels.insert_open(
            channel,
            UpstreamChannel::UNBOUND,
            Usage::new(inherited),
            Arc::default(),
            log,
        );
        self.link.push(method::channel_open_ok(channel));
    }

    /// Takes an upstream channel for `client_channel`: a kept one, or a new
    /// id whose Channel.Open goes upstream now, pipelined (the router hides
    /// the broker's Open-Ok). With `confirm`, the channel is put in confirm
    /// mode if it is not yet (no-wait: nothing to hide). What the broker
    /// holds for the channel comes back with it.
    pub(super) async fn take_upstream_channel(
        &mut self,
        client_channel: u16,
        fresh: bool,
        beyond_guarantee: bool,
        confirm: bool,
    ) -> Option<(Grant, Inherited)> {
        let grant = self
            .upstream
            .open_channel(&self.link, client_channel, fresh, beyond_guarantee)
            .await?;
        let mut inherited = grant.inherited.unwrap_or_default();
        if grant.inherited.is_none() {
            self.send_bytes(method::channel_open(grant.channel.id))
                .await;
        }
        if confirm && !inherited.confirm {
            self.send_bytes(method::confirm_select_nowait(grant.channel.id))
                .await;
            inherited.confirm = true;
        }
        Some((grant, inherited))
    }

    /// A replay log charged to this client's share and the shared buffer.
    pub(super) fn new_log(&self) -> ReplayLog {
        ReplayLog::new(
            Charges::new(self.ctx.hold_buffer.clone(), self.client_hold_share.clone()),
            self.ctx.stats.events.held_messages.clone(),
        )
    }

    /// Moves a client channel to a new upstream channel out of confirm mode
    /// (the old one is kept if clean), then forwards the Tx.Select that
    /// asked for it there. With a reply still on its way to the client the
    /// channel stays, and the broker answers the Tx.Select.
    pub(super) async fn switch_to_fresh_channel(
        &mut self,
        channel: u16,
        frame: Frame,
        spec: Option<&'static MethodSpec>,
    ) -> Option<Exit> {
        let (_, open) = self.channels.open_mut(channel)?;
        let (replies, confirmed) = open.delivered.load();
        if open.usage.dirty(replies, confirmed).is_some() {
            open.usage.tx_in_place();
            let upstream = open.upstream;
            return self.forward_content(channel, upstream, frame, spec).await;
        }
        let open = self.channels.take_open(channel)?;
        let mut moved = open.usage.moved();
        self.give_back(open);
        // A replacement, not one more: the client's count stays.
        let Some((grant, _)) = self.take_upstream_channel(channel, true, false, false).await else {
            return Some(self.no_free_channel(self.channels.len(), false));
        };
        if let Some(id) = frame.method_id() {
            moved.on_method(id, frame.method_args());
        }
        let upstream = grant.channel;
        let log = self.new_log();
        self.channels
            .insert_open(channel, upstream, moved, grant.delivered, log);
        self.forward_content(channel, upstream, frame, spec).await
    }

    /// The client closes a channel: a clean one settles (see
    /// [`super::settling`]) or is kept for the next client, and its
    /// Close-Ok is answered at once; any other is closed upstream and the
    /// broker's Close-Ok relayed.
    pub(super) fn client_closes_channel(&mut self, channel: u16) -> Option<Exit> {
        let open = self.channels.take_open(channel)?;
        let Some(open) = self.settle(channel, open) else {
            self.link.push(method::channel_close_ok(channel));
            return None;
        };
        if !self.upstream_alive || self.try_keep(&open) {
            self.link.push(method::channel_close_ok(channel));
        } else {
            self.upstream.closing(open.upstream);
            self.channels
                .closing_by_client(channel, open.upstream, open.usage);
        }
        None
    }

    /// warren closes a channel on its own (e.g. an oversized message): the
    /// client gets Channel.Close, the upstream channel is closed and freed.
    pub(super) async fn close_channel(
        &mut self,
        channel: u16,
        upstream: UpstreamChannel,
        close: Close,
    ) {
        tracing::warn!(
            client = self.id,
            channel,
            code = close.code,
            text = cut(&close.text),
            "closing client channel"
        );
        // The channel's earlier publishes go before the router's Close.
        self.flush_batch().await;
        self.ctx.stats.events.close(CloseScope::channel, close.code);
        self.upstream.abandon(upstream);
        self.channels.closed_by_proxy(channel);
        self.link.push(close.channel_frame(channel));
    }

    /// Gives every upstream channel back at the end of the session: clean
    /// ones are kept for the next client, the others closed (the broker
    /// requeues their unacknowledged deliveries); one with publishes to
    /// carry or have confirmed settles instead.
    pub(super) fn release_channels(&mut self) {
        let leftovers: Vec<(u16, Leftover)> = self.channels.drain().collect();
        for (channel, leftover) in leftovers {
            match leftover {
                Leftover::Open(open) => {
                    if let Some(open) = self.settle(channel, *open) {
                        if self.upstream_alive {
                            self.give_back(open);
                        }
                    }
                }
                Leftover::Closing(upstream) if self.upstream_alive => self.upstream.abandon(upstream),
                Leftover::Closing(_) => {}
            }
        }
    }

    /// Keeps a clean upstream channel for reuse, or closes it.
    pub(super) fn give_back(&mut self, open: OpenChannel) {
        give_back_to(&self.upstream, self.ctx.config().channel_reuse, self.id, &open);
    }

    /// Hands a clean channel back for reuse; false if it must be closed.
    fn try_keep(&self, open: &OpenChannel) -> bool {
        try_keep_on(&self.upstream, self.ctx.config().channel_reuse, self.id, open)
    }

    /// Why a channel could not be had: the upstream connection is gone, or
    /// full, or what is free is kept for the other clients on it.
    fn no_free_channel(&self, opened: usize, beyond_guarantee: bool) -> Exit {
        if self.upstream.is_closed() {
            return Exit::Close(reply::close(
                CONNECTION_FORCED,
                "the upstream connection to the broker was lost",
            ));
        }
        let text = if beyond_guarantee {
            format!(
                "warren: this client has {opened} channels open; the free channels of its \
                 upstream connection are kept for the other clients on it (guaranteed-channels)"
            )
        } else {
            "the upstream connection has no free channel (max-upstream-channels)".to_string()
        };
        Exit::Close(reply::close(NOT_ALLOWED, text).caused_by(ids::CHANNEL_OPEN))
    }

    /// Tells the upstream connection what this client keeps reserved now.
    pub(super) fn update_reservation(&mut self) {
        let wanted = self
            .upstream
            .reservation(self.opened_a_channel, self.channels.len());
        if wanted != self.reservation {
            self.upstream.reserve(self.reservation, wanted);
            self.reservation = wanted;
        }
    }

    /// Before its first channel, the client may still move to a quieter
    /// upstream connection (see `Pools::rebalance`).
    async fn move_if_crowded(&mut self) {
        let Some(quieter) = self
            .ctx
            .pools
            .rebalance(&self.pool, &self.vhost, &self.upstream)
            .await
        else {
            return;
        };
        tracing::debug!(
            client = self.id,
            from = self.upstream.id(),
            to = quieter.id(),
            "client moved to a quieter upstream"
        );
        self.upstream.unpin(self.id, self.reservation);
        quieter.attach(self.link.clone());
        self.record.upstream.set(quieter.id());
        self.upstream = quieter;
    }
}

/// Keeps a clean upstream channel of `upstream`'s for reuse, or closes it.
pub(super) fn give_back_to(upstream: &Upstream, reuse: bool, client: u64, open: &OpenChannel) {
    if !try_keep_on(upstream, reuse, client, open) {
        upstream.abandon(open.upstream);
    }
}

/// Hands a clean channel back to `upstream` for reuse (if `reuse` is on);
/// false if it must be closed.
fn try_keep_on(upstream: &Upstream, reuse: bool, client: u64, open: &OpenChannel) -> bool {
    let (replies, confirmed) = open.delivered.load();
    let why_not = match open.usage.dirty(replies, confirmed) {
        None if reuse => {
            upstream.keep(
                open.upstream,
                open.usage.inherited(),
                open.usage.confirm_publishes,
            );
            return true;
        }
        None => "reuse is off",
        Some(dirty) => dirty,
    };
    tracing::debug!(
        client,
        upstream_channel = open.upstream.id,
        why_not,
        "upstream channel not reused"
    );
    false
}
