//! Publishes the client is done with but the broker has not confirmed.
//!
//! The product's usual client publishes a message, closes its channel and
//! its connection, and is gone well within one round trip to the broker:
//! it cannot wait for warren to learn that the broker took the message,
//! and warren must not make it (that wait is what warren saves it). So the
//! client gets its Close-Ok at once, and the session keeps what it
//! published until the broker confirms it:
//!
//! - a closed channel with unconfirmed publishes *settles*: its upstream
//!   channel stays the session's until the broker confirmed them, then goes
//!   back for the next client (warren's confirms arrive on it, nothing the
//!   client could see);
//! - a client that leaves with unconfirmed publishes *lingers*: the session
//!   task runs on without it, up to `--hold-seconds`, until the broker
//!   confirmed them.
//!
//! If the upstream connection is lost meanwhile, what is unconfirmed is
//! published again on a new one exactly as for a held client
//! ([`super::outage`]). Only channels whose client wanted no confirms
//! settle: one that wanted them waits for their acks, in the broker's
//! Close-Ok, as it would directly.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Session, ROOM_POLL};
use crate::channel::UpstreamChannel;
use crate::client::channel_table::OpenChannel;
use crate::link::ClientEvent;
use crate::protocol::method;

/// A closed client channel's upstream channel, kept until the broker
/// confirmed what the client published on it.
pub(super) struct Settling {
    /// The client's id for it, which the client may use again meanwhile.
    pub channel: u16,
    pub open: OpenChannel,
}

impl Session {
    /// The client closed `open`, or left: if it is clean and the broker
    /// has yet to confirm publishes on it, it settles; otherwise it is
    /// handed back. A held client's channels all settle: their publishes
    /// are to be carried.
    pub(super) fn settle(&mut self, channel: u16, mut open: OpenChannel) -> Option<OpenChannel> {
        open.log.trim(open.delivered.settled());
        let clean = || {
            let (replies, confirmed) = open.delivered.load();
            open.usage.dirty(replies, confirmed).is_none()
        };
        let settles = !open.log.is_empty()
            && (self.outage.is_some()
                || (self.upstream_alive && !open.usage.wants_confirms() && clean()));
        if !settles {
            return Some(open);
        }
        self.settling.push(Settling { channel, open });
        None
    }

    /// Drops what the broker confirmed from the settling channels' logs;
    /// a channel with nothing left goes back for the next client.
    pub(super) fn trim_settling(&mut self) {
        let mut index = 0;
        while index < self.settling.len() {
            let open = &mut self.settling[index].open;
            open.log.trim(open.delivered.settled());
            if open.log.is_empty() {
                let settled = self.settling.swap_remove(index);
                if self.upstream_alive {
                    self.give_back(settled.open);
                }
            } else {
                index += 1;
            }
        }
    }

    /// The broker closed a settling channel (a publish on it failed): what
    /// the client published after the failure was discarded by the broker,
    /// as on a direct connection. False if `upstream` is not settling.
    pub(super) async fn settling_closed_by_broker(&mut self, upstream: UpstreamChannel) -> bool {
        let Some(index) = self
            .settling
            .iter()
            .position(|settling| settling.open.upstream == upstream)
        else {
            return false;
        };
        self.settling.swap_remove(index);
        self.send_bytes(method::channel_close_ok(upstream.id)).await;
        self.upstream.release(upstream);
        true
    }

    /// The client is gone: the session stays until the broker confirmed
    /// what the client published, carrying it to a new upstream connection
    /// if this one is lost, for at most the hold time. Nothing is written
    /// to the client any more. When warren shuts down it does not linger:
    /// its Connection.Close follows every publish to the broker.
    pub async fn linger(&mut self, events: &mut mpsc::UnboundedReceiver<ClientEvent>) {
        if let Some(hold) = self.hold {
            let why = self.settle_or_give_up(hold, events).await;
            // A no-op unless held; then whatever is left is dropped.
            self.give_up_held(why);
        }
        for settles in std::mem::take(&mut self.settling) {
            if self.upstream_alive {
                self.give_back(settles.open);
            }
        }
    }

    /// Waits until the broker confirmed everything, or gives up; why it
    /// stopped, if it gave up.
    async fn settle_or_give_up(
        &mut self,
        hold: Duration,
        events: &mut mpsc::UnboundedReceiver<ClientEvent>,
    ) -> &'static str {
        if self.ctx.force_close.is_cancelled() {
            return "warren is shutting down";
        }
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            self.trim_logs();
            if self.client_hold_share.used() == 0 {
                return "nothing was left to confirm";
            }
            let in_outage = self.outage.is_some();
            let gave_up = tokio::select! {
                Some(event) = events.recv() => self.on_event(event).await.is_some(),
                reconnected = super::outage::reconnected(&mut self.outage) => match reconnected {
                    Ok((upstream, pool)) => self.resume(upstream, pool).await.is_some(),
                    Err(error) => {
                        self.outage_expired(&error);
                        return "the hold time ran out";
                    }
                },
                _ = self.link.settlement_or(ROOM_POLL), if !in_outage => false,
                _ = tokio::time::sleep_until(deadline), if !in_outage => {
                    tracing::info!(
                        client = self.id,
                        hold_seconds = hold.as_secs(),
                        "the broker confirmed nothing more within the hold time; \
                         the departed client's publishes are left to it"
                    );
                    return "the broker did not confirm within the hold time";
                }
            };
            if gave_up {
                self.drop_unsettled("the departed client's publishes could not be carried");
                return "the departed client's publishes could not be carried";
            }
        }
    }
}
