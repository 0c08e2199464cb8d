//! What a client (through its [`super::Upstream`] handle) asks of the
//! router that owns an upstream connection's channel ids. One queue of
//! these per connection keeps every change to the channel table in the
//! router's task, without a lock.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{ChannelCounts, Grant};
use crate::channel::{Inherited, UpstreamChannel};
use crate::confirms::ConfirmTags;
use crate::link::{ClientId, ClientLink};
use crate::protocol::ids::MethodId;

#[derive(Debug)]
pub enum Command {
    Attach(Arc<ClientLink>),
    Detach(ClientId),
    /// Its node is drained: every client is told to move.
    Drained,
    Report(oneshot::Sender<ChannelCounts>),
    OpenChannel {
        link: Arc<ClientLink>,
        client_channel: u16,
        /// A new id even when kept channels are available.
        fresh: bool,
        /// The client holds its guaranteed channels already.
        beyond_guarantee: bool,
        reply: oneshot::Sender<Grant>,
    },
    /// The client closes the channel: the router sends Channel.Close and
    /// relays the broker's Close-Ok as an event.
    Closing(UpstreamChannel),
    /// The client is done with a channel that cannot be reused: the router
    /// closes it and frees the id on the broker's Close-Ok.
    Abandon(UpstreamChannel),
    /// A broker-closed channel was acknowledged upstream; the id is free.
    Release(UpstreamChannel),
    /// The client is done with a clean channel: keep it for the next one.
    Keep {
        channel: UpstreamChannel,
        inherited: Inherited,
        confirm_publishes: u64,
    },
    /// The next reply of this kind on the channel answers a method warren
    /// sent on its own: do not forward it.
    Hide(UpstreamChannel, MethodId),
    /// The client wants publisher confirms, numbered by `tags` (whose base
    /// counts from the lease's first publish): forward acks to it.
    WantConfirms {
        channel: UpstreamChannel,
        tags: ConfirmTags,
    },
    /// Asks the broker whether `queue` exists, on a channel of warren's own.
    ProbeQueue {
        queue: String,
        reply: oneshot::Sender<bool>,
    },
    Shutdown,
}
