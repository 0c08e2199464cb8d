//! A client over a rate quota (`max_publish_rate`, `max_publish_bytes_rate`
//! of its user or vhost): what it published is forwarded, and then it is
//! not read until it is back within the rate. Nothing is refused or
//! dropped for a rate; the client's own writes wait in its socket.

use std::time::Duration;

use super::{Exit, Session};
use crate::protocol::frame::{Frame, FRAME_BODY};
use crate::protocol::ids;

/// A pause at least this long is told (Connection.Blocked, to clients that
/// announced the capability): shorter ones, many a second for a steady
/// publisher just over its rate, would make some libraries refuse the next
/// publish (php-amqplib throws while blocked) for a stall that is over
/// before it matters.
const TELL_BLOCKED_FROM: Duration = Duration::from_secs(1);

impl Session {
    /// Charges a frame to the client's rate quotas: a Basic.Publish counts
    /// one message, a body frame its bytes (what the client really sent,
    /// not what its content header claims).
    pub(super) fn charge_rate(&mut self, frame: &Frame) {
        if !self.quota.limits_rate() {
            return;
        }
        let (messages, bytes) = match frame.kind() {
            FRAME_BODY => (0, frame.payload().len() as u64),
            _ if frame.method_id() == Some(ids::BASIC_PUBLISH) => (1, 0),
            _ => return,
        };
        let Some(wait) = self.quota.charge(messages, bytes) else {
            return;
        };
        let until = tokio::time::Instant::now() + wait;
        self.throttled_until = Some(self.throttled_until.map_or(until, |t| t.max(until)));
        if wait >= TELL_BLOCKED_FROM {
            // Told now, before the publish that caused it goes upstream.
            self.throttle_told = true;
            self.tell_blocked(true);
        }
    }

    /// Waits until the client may be read again (for ever if it may now).
    pub(super) async fn throttle_ends(until: Option<tokio::time::Instant>) {
        match until {
            Some(until) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
    }

    /// The client is back within its rate: it is read again (and told so
    /// by the next turn, if it was told it was not).
    pub(super) fn end_throttle(&mut self) -> Option<Exit> {
        self.throttled_until = None;
        self.throttle_told = false;
        None
    }
}
