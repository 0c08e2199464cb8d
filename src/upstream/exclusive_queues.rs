//! The exclusive queues of one upstream connection, scoped to its clients.
//!
//! The broker scopes exclusivity to the connection, which many clients
//! share; warren scopes it to the client that declared the queue, as a
//! direct connection would (see [`crate::exclusive`]). These are the
//! session's ways in, on the shared handle.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::command::Command;
use super::Upstream;
use crate::exclusive::{Access, Declared, ExclusiveQueues};
use crate::link::ClientId;

impl Upstream {
    fn exclusive(&self) -> std::sync::MutexGuard<'_, ExclusiveQueues> {
        self.0.exclusive.lock().expect("exclusive queues lock")
    }

    /// Whether `client` may name `queue` (see [`ExclusiveQueues::access`]).
    pub fn queue_access(&self, queue: &str, client: ClientId) -> Access {
        self.exclusive().access(queue, client)
    }

    /// `client` declares `queue` exclusive (see [`ExclusiveQueues::claim`]).
    pub fn claim_exclusive(
        &self,
        queue: &str,
        client: ClientId,
        declare: Bytes,
        declared: Declared,
    ) -> Access {
        self.exclusive().claim(queue, client, declare, declared)
    }

    /// Whether the broker confirmed the claim on `queue` (see
    /// [`ExclusiveQueues::is_confirmed`]).
    pub fn exclusive_is_confirmed(&self, queue: &str) -> bool {
        self.exclusive().is_confirmed(queue)
    }

    /// The broker refused `client`'s declare of `queue`.
    pub fn withdraw_exclusive(&self, queue: &str, client: ClientId) {
        self.exclusive().withdraw(queue, client)
    }

    /// `client`'s exclusive `queue` is gone.
    pub fn release_exclusive(&self, queue: &str, client: ClientId) {
        self.exclusive().release(queue, client)
    }

    /// Another client's claim on `queue` is stale: the queue is gone.
    pub fn forget_exclusive(&self, queue: &str) {
        self.exclusive().forget(queue)
    }

    /// Whether the broker still has `queue` (a passive declare on a channel
    /// of warren's own). When it cannot tell (no free channel, connection
    /// lost), the queue is taken to exist.
    pub async fn queue_exists(&self, queue: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        let probe = Command::ProbeQueue {
            queue: queue.to_string(),
            reply,
        };
        if self.0.commands.send(probe).is_err() {
            return true;
        }
        answer.await.unwrap_or(true)
    }

    /// Puts queue-naming methods in one order for the claims and for the
    /// broker. Without it, a client could find no claim on a queue, another
    /// client claim it and queue its declare, and only then the first
    /// client's request reach the broker, after the declare, on the same
    /// connection: the broker would let it in. Held while a request that
    /// was allowed is queued upstream, and while a claimed declare is, it
    /// makes every request reach the broker in the order it was checked.
    pub async fn order_queue_methods(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.0.queue_order.clone().lock_owned().await
    }

    /// Whether `client` has exclusive queues on this connection.
    pub fn owns_exclusive(&self, client: ClientId) -> bool {
        self.exclusive().owns_any(client)
    }

    /// `client` leaves: its exclusive queues, to delete.
    pub fn leave_exclusive(&self, client: ClientId) -> Vec<(String, Bytes)> {
        self.exclusive().leave(client)
    }
}
