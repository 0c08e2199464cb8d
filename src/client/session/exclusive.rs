//! Keeps exclusive queues to their client on a shared upstream connection
//! (the claims themselves are `crate::exclusive`): requests naming another
//! client's queue are refused as RabbitMQ refuses them, and the client's
//! own are deleted when it leaves, as the broker deletes a connection's.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedMutexGuard};

use super::Session;
use crate::client::channel_table::Route;
use crate::client::usage::Usage;
use crate::exclusive::{Access, Declared};
use crate::link::ClientEvent;
use crate::protocol::ids::{self, MethodId};
use crate::protocol::method::{self, Close};
use crate::protocol::reply::{self, RESOURCE_LOCKED};
use crate::untrusted::cut;

impl Session {
    /// A request naming another client's exclusive queue is refused with
    /// 405 before it reaches the broker, an exclusive declare claims its
    /// name as it goes upstream, and an unconditional delete ends the claim
    /// (a conditional one only with its Delete-Ok). Another client's claim
    /// can outlive its queue (`x-expires`): before refusing, warren asks
    /// the broker whether the queue is still there.
    ///
    /// Ok with a guard for a request that may go: it is to be queued
    /// upstream before the guard is dropped (see
    /// `Upstream::order_queue_methods`). `None`: the method names no queue.
    pub(super) async fn check_queue_access(
        &mut self,
        channel: u16,
        id: MethodId,
        args: &[u8],
    ) -> Result<Option<OwnedMutexGuard<()>>, Close> {
        let Some(queue) = method::queue_needing_access(id, args) else {
            return Ok(None);
        };
        let declare = (id == ids::QUEUE_DECLARE)
            .then(|| method::QueueDeclare::decode(args).ok())
            .flatten()
            .filter(|declare| declare.exclusive && !declare.passive);
        let mut access = self.request_access(channel, &queue, args, declare.as_ref());
        if access == Access::Locked
            && self.upstream.exclusive_is_confirmed(&queue)
            && !self.upstream.queue_exists(&queue).await
        {
            self.upstream.forget_exclusive(&queue);
            access = self.request_access(channel, &queue, args, declare.as_ref());
        }
        if access == Access::Locked {
            return Err(self.locked_queue(&queue));
        }
        let order = self.upstream.order_queue_methods().await;
        // Another client may have claimed the queue while this one waited:
        // its declare went upstream first, so this request is refused.
        if declare.is_none() && self.upstream.queue_access(&queue, self.id) == Access::Locked {
            return Err(self.locked_queue(&queue));
        }
        let unconditional_delete = (id == ids::QUEUE_DELETE)
            .then(|| method::QueueDelete::decode(args).ok())
            .flatten()
            .is_some_and(|delete| !delete.conditional);
        if unconditional_delete {
            self.upstream.release_exclusive(&queue, self.id);
            self.declared_without_wait.retain(|(q, _)| *q != queue);
        }
        Ok(Some(order))
    }

    /// RabbitMQ's refusal of another connection's exclusive queue.
    fn locked_queue(&self, queue: &str) -> Close {
        reply::close(
            RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{queue}' in vhost '{}'. \
                 It could be originally declared on another connection or the exclusive \
                 property value does not match that of the original declaration.",
                self.vhost
            ),
        )
    }

    /// Claims `queue` for an exclusive `declare` (its arguments `args`, on
    /// `channel`), or asks whether the client may use it.
    fn request_access(
        &mut self,
        channel: u16,
        queue: &str,
        args: &[u8],
        declare: Option<&method::QueueDeclare>,
    ) -> Access {
        let Some(declare) = declare else {
            return self.upstream.queue_access(queue, self.id);
        };
        let access = self.upstream.claim_exclusive(
            queue,
            self.id,
            Bytes::copy_from_slice(args),
            if declare.nowait {
                Declared::NoWait
            } else {
                Declared::Awaiting
            },
        );
        if access == Access::Granted && declare.nowait {
            self.declared_without_wait
                .push((queue.to_string(), channel));
        }
        access
    }

    /// The broker closed a channel the client used this way: exclusive
    /// declares still awaiting their Declare-Ok were refused (or never
    /// ran), so the claims they made end.
    pub(super) fn withdraw_refused_declares(&self, usage: &Usage) {
        for declare in usage.awaited_exclusive_declares() {
            if let Ok(declare) = method::QueueDeclare::decode(declare) {
                self.upstream.withdraw_exclusive(&declare.queue, self.id);
            }
        }
    }

    /// Before cleaning up, lets exclusive declares the client sent but did
    /// not see answered come back (for at most `limit`): a server-named
    /// queue's name comes only with its Declare-Ok, and it must be deleted.
    pub(super) async fn await_exclusive_declares(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<ClientEvent>,
        limit: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.upstream_alive
            && self.channels.awaits_exclusive_declare(|channel| {
                self.declared_without_wait
                    .iter()
                    .any(|(_, c)| *c == channel)
            })
        {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => {
                    let _ = self.on_event(event).await;
                }
                _ => return,
            }
        }
    }

    /// Deletes the exclusive queues the client still owns, as the broker
    /// deletes a connection's when it closes. Each on a channel of its own,
    /// behind a check that the name is still that queue
    /// (`method::queue_redeclare_exclusive`): a queue that expired or was
    /// deleted and has been made again by someone else is left alone.
    ///
    /// The broker runs each channel's methods in order but different
    /// channels' side by side, so a queue declared with no-wait is deleted
    /// on the channel that declared it, if still open, after the declare.
    pub(super) async fn delete_exclusive_queues(&mut self) {
        for (queue, declared) in self.upstream.leave_exclusive(self.id) {
            tracing::debug!(
                client = self.id,
                queue = cut(&queue),
                "deleting the client's exclusive queue"
            );
            let declaring = self
                .declared_without_wait
                .iter()
                .find(|(q, _)| *q == queue)
                .and_then(|(_, channel)| match self.channels.route(*channel) {
                    Route::Open { upstream, .. } => Some(upstream),
                    _ => None,
                });
            let (channel, borrowed) = match declaring {
                Some(upstream) => (upstream, false),
                None => match self.take_upstream_channel(0, true, false, false).await {
                    Some((grant, _)) => (grant.channel, true),
                    None => return,
                },
            };
            // A server-named queue needs no check, and RabbitMQ would refuse
            // one (403, reserved name): no client can make an amq.* queue,
            // so none can have replaced it.
            if !queue.starts_with("amq.") {
                self.upstream.hide_reply(channel, ids::QUEUE_DECLARE_OK);
                self.send_bytes(method::queue_redeclare_exclusive(
                    channel.id, &queue, &declared,
                ))
                .await;
            }
            self.send_bytes(method::queue_delete_nowait(channel.id, &queue))
                .await;
            if borrowed {
                self.upstream.abandon(channel);
            }
        }
    }
}
