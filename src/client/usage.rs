//! What a client does on one channel, as a pure state machine: each method
//! the client sends is turned into a [`Step`] for the session, and the
//! record decides whether the upstream channel can serve another client
//! once this one is done with it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::channel::Inherited;
use crate::protocol::ids::{self, MethodId};
use crate::protocol::method::{self, Close, Qos, QueueDeclare, QueueDelete};
use crate::protocol::reply::{self, NOT_ALLOWED, NOT_FOUND, NOT_IMPLEMENTED, SYNTAX_ERROR};

/// What the session does with a client method on an open channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Forward,
    /// Answer with Basic.Qos-Ok without asking the broker.
    AnswerQosOk,
    /// Answer with Confirm.Select-Ok without asking the broker.
    AnswerSelectOk,
    /// Nothing to do and nothing to answer (a no-wait request already in force).
    Swallow,
    /// Enter confirm mode: tell the router, then forward.
    ForwardSelect,
    /// Tell the router the client now wants confirms (after
    /// `published_before` publishes the broker numbered on its behalf), then
    /// answer locally (`reply`) or not at all.
    AdoptConfirms {
        reply: bool,
        published_before: u64,
    },
    /// Tx.Select on a channel warren put in confirm mode would fail
    /// (RabbitMQ refuses to switch from confirm to tx mode), where the
    /// client's own channel would accept it: move the client to a new
    /// upstream channel, not in confirm mode, first.
    SwitchToFreshChannel,
    /// Set the broker's qos to what the client believes it has (the reply
    /// is hidden), then forward.
    RestoreQosThenForward(Qos),
    /// The client broke a rule RabbitMQ enforces at channel level.
    ChannelError(Close),
    /// The client broke a rule RabbitMQ enforces at connection level.
    ConnectionError(Close),
}

/// What a client did on its channel: decides whether the upstream channel
/// can serve another client, and hides what the previous client left
/// behind (qos, confirm mode) from this one.
///
/// A channel is reusable when it is indistinguishable from a fresh one:
/// never had a consumer, never received a delivery (basic.get), never
/// entered tx mode or paused flow. qos and confirm mode differ, but warren
/// accounts for them: qos is answered locally when it matches and restored
/// before it matters (a consume), confirm tags are rebased by the router.
#[derive(Debug, Default)]
pub struct Usage {
    /// Why the channel cannot be reused, if it cannot.
    dirty: Option<&'static str>,
    /// The broker holds state for the client on this channel that a new
    /// channel would not have (a consumer, deliveries, tx, flow): the client
    /// cannot be carried to another upstream connection.
    tied: bool,
    /// What the broker has set for the channel.
    qos_broker: Qos,
    /// What this client asked for (the default until it sends Basic.Qos).
    qos_client: Qos,
    has_consumer: bool,
    /// Something of this client's went upstream on the channel.
    forwarded: bool,
    /// This client declared a queue on the channel (so an empty queue name
    /// names its own queue).
    declared_queue: bool,
    /// Consumer tags this client chose on the channel.
    consumer_tags: Vec<String>,
    /// Publishes this client asked to be confirmed (its tags 1..=n).
    pub confirm_tags: u64,
    confirm_broker: bool,
    confirm_client: bool,
    /// Requests sent upstream that the broker will answer.
    replies_owed: u64,
    /// Publishes this client made while the channel was in confirm mode:
    /// they advance the broker's confirm sequence.
    pub confirm_publishes: u64,
    /// One entry per Queue.Declare awaiting its Declare-Ok: the arguments
    /// of an exclusive one (see `crate::exclusive`). A refused declare is
    /// one still awaited when the broker closes the channel.
    declares: VecDeque<Option<Bytes>>,
    /// One entry per Queue.Delete awaiting its Delete-Ok: the queue of a
    /// conditional one (if-unused, if-empty), which only that reply shows
    /// is gone.
    deletes: VecDeque<Option<String>>,
}

impl Usage {
    pub fn new(inherited: Inherited) -> Self {
        Usage {
            qos_broker: inherited.qos,
            confirm_broker: inherited.confirm,
            ..Usage::default()
        }
    }

    /// Why the channel cannot serve another client, or `None` if it can.
    /// `replies_seen` is how many replies the broker sent the client on it:
    /// with one still on its way, the client must get it before its
    /// Close-Ok, as it would directly, so the close goes to the broker.
    pub fn dirty(&self, replies_seen: u64, confirmed: u64) -> Option<&'static str> {
        match self.dirty {
            None if replies_seen < self.replies_owed => Some("a reply is still on its way"),
            None if confirmed < self.confirm_tags => Some("a confirm is still on its way"),
            dirty => dirty,
        }
    }

    /// The state for the same client on a new upstream channel: what the
    /// client believes (its qos) carries over, the broker's state is fresh.
    pub fn moved(&self) -> Usage {
        Usage {
            qos_client: self.qos_client,
            ..Usage::default()
        }
    }

    /// What the next client inherits from this channel.
    pub fn inherited(&self) -> Inherited {
        Inherited {
            qos: self.qos_broker,
            confirm: self.confirm_broker,
        }
    }

    pub fn on_method(&mut self, id: MethodId, args: &[u8]) -> Step {
        let step = self.step_for(id, args);
        if matches!(
            step,
            Step::Forward | Step::ForwardSelect | Step::RestoreQosThenForward(_)
        ) {
            self.forwarded = true;
            if method::reply_expected(id, args) {
                self.replies_owed += 1;
            }
        }
        step
    }

    fn step_for(&mut self, id: MethodId, args: &[u8]) -> Step {
        // An empty queue name means "the queue last declared on this
        // channel": on a kept channel that would be the previous client's.
        if method::queue_argument(id, args).is_some_and(|q| q.is_empty()) && !self.declared_queue {
            return Step::ChannelError(
                reply::close(NOT_FOUND, "no previously declared queue").caused_by(id),
            );
        }
        let step = match id {
            ids::BASIC_QOS => Qos::decode(args).map(|qos| self.on_qos(qos)),
            ids::BASIC_CONSUME => method::decode_consume_tag(args).map(|tag| self.on_consume(tag)),
            ids::BASIC_GET
            | ids::BASIC_ACK
            | ids::BASIC_NACK
            | ids::BASIC_REJECT
            | ids::BASIC_RECOVER
            | ids::BASIC_RECOVER_ASYNC => Ok(self.taint("received deliveries")),
            ids::TX_SELECT if self.confirm_broker && !self.confirm_client && self.dirty.is_none() => {
                Ok(Step::SwitchToFreshChannel)
            }
            ids::TX_SELECT => Ok(self.taint("in tx mode")),
            ids::CHANNEL_FLOW => Ok(self.taint("used channel.flow")),
            ids::CONFIRM_SELECT => {
                method::decode_confirm_nowait(args).map(|nowait| self.on_confirm_select(nowait))
            }
            ids::BASIC_PUBLISH => method::decode_publish_flags(args)
                .map(|(mandatory, immediate)| self.on_publish(mandatory, immediate)),
            ids::BASIC_CANCEL => {
                if let Ok(tag) = method::decode_cancel_tag(args) {
                    self.consumer_tags.retain(|t| *t != tag);
                }
                Ok(Step::Forward)
            }
            ids::QUEUE_DELETE => QueueDelete::decode(args).map(|delete| {
                if !delete.nowait {
                    self.deletes
                        .push_back(delete.conditional.then_some(delete.queue));
                }
                Step::Forward
            }),
            ids::QUEUE_DECLARE => QueueDeclare::decode(args).map(|declare| {
                if !declare.nowait {
                    let exclusive = declare.exclusive && !declare.passive;
                    self.declares
                        .push_back(exclusive.then(|| Bytes::copy_from_slice(args)));
                }
                self.declared_queue = true;
                Step::Forward
            }),
            _ => Ok(Step::Forward),
        };
        step.unwrap_or_else(|_| {
            Step::ConnectionError(
                reply::close(SYNTAX_ERROR, format!("malformed {}", method::name(id))).caused_by(id),
            )
        })
    }

    /// Marks the channel as one no other client may inherit.
    fn taint(&mut self, why: &'static str) -> Step {
        self.dirty = Some(why);
        self.tied = true;
        Step::Forward
    }

    fn on_qos(&mut self, qos: Qos) -> Step {
        self.qos_client = qos;
        // qos only matters to consumers: before the first one it is
        // answered here and applied right before that consume. With a
        // consumer in place a change must reach the broker now (a global
        // prefetch applies to existing consumers too).
        if !self.has_consumer || qos == self.qos_broker {
            Step::AnswerQosOk
        } else {
            self.qos_broker = qos;
            Step::Forward
        }
    }

    fn on_consume(&mut self, tag: String) -> Step {
        if !tag.is_empty() {
            if self.consumer_tags.contains(&tag) {
                return Step::ConnectionError(
                    reply::close(
                        NOT_ALLOWED,
                        format!("attempt to reuse consumer tag '{tag}'"),
                    )
                    .caused_by(ids::BASIC_CONSUME),
                );
            }
            self.consumer_tags.push(tag);
        }
        self.has_consumer = true;
        self.dirty = Some("had a consumer");
        self.tied = true;
        if self.qos_client != self.qos_broker {
            self.qos_broker = self.qos_client;
            Step::RestoreQosThenForward(self.qos_client)
        } else {
            Step::Forward
        }
    }

    fn on_confirm_select(&mut self, nowait: bool) -> Step {
        if self.confirm_client {
            // Selecting again changes nothing, numbering included.
            return if nowait {
                Step::Swallow
            } else {
                Step::AnswerSelectOk
            };
        }
        self.confirm_client = true;
        if self.confirm_broker {
            Step::AdoptConfirms {
                reply: !nowait,
                published_before: self.confirm_publishes,
            }
        } else {
            self.confirm_broker = true;
            Step::ForwardSelect
        }
    }

    /// Basic.Publish's flags, checked here where they are read anyway: a
    /// publish's arguments are read once on the way through.
    fn on_publish(&mut self, mandatory: bool, immediate: bool) -> Step {
        if immediate {
            return Step::ConnectionError(
                reply::close(NOT_IMPLEMENTED, "immediate=true").caused_by(ids::BASIC_PUBLISH),
            );
        }
        // A return for a mandatory publish can arrive after the client
        // closed its channel; directly it would still see it.
        if mandatory {
            self.dirty = Some("mandatory publish");
        }
        Step::Forward
    }

    /// A publish went upstream whole: the client's confirm tag for it, 0
    /// if it asked for none.
    pub fn on_publish_sent(&mut self) -> u64 {
        if self.confirm_broker {
            self.confirm_publishes += 1;
        }
        if self.confirm_client {
            self.confirm_tags += 1;
            self.confirm_tags
        } else {
            0
        }
    }

    /// Whether the client's use of the channel can be carried to a channel
    /// on another upstream connection: only publishing (and requests the
    /// broker has answered, `replies_seen` of them) leaves nothing there
    /// that a new channel would lack.
    pub fn carriable(&self, replies_seen: u64) -> bool {
        !self.tied && replies_seen >= self.replies_owed && self.confirm_broker
    }

    /// The state for the same client on a channel of another upstream
    /// connection, whose broker state is `inherited`: what the client
    /// believes (qos, confirm mode and its tags, its last queue) carries
    /// over, and the publishes sent again there count as the lease's first.
    pub fn carried(&self, inherited: Inherited) -> Usage {
        Usage {
            dirty: self.dirty,
            qos_client: self.qos_client,
            declared_queue: self.declared_queue,
            forwarded: self.forwarded,
            confirm_tags: self.confirm_tags,
            confirm_client: self.confirm_client,
            ..Usage::new(inherited)
        }
    }

    /// A Tx.Select that asked to switch channels stays on this one after
    /// all (a reply is still on its way here): the broker answers it.
    pub fn tx_in_place(&mut self) {
        self.taint("in tx mode");
        self.forwarded = true;
        self.replies_owed += 1;
    }

    /// Whether the broker numbers this channel's publishes for confirms.
    pub fn in_confirm_mode(&self) -> bool {
        self.confirm_broker
    }

    /// The client asked for confirms.
    pub fn wants_confirms(&self) -> bool {
        self.confirm_client
    }

    /// A publish sent again on the lease (not a new one of the client's).
    pub fn on_republish(&mut self) {
        self.confirm_publishes += 1;
    }

    /// A Queue.Declare-Ok for this channel reached the client: the
    /// arguments of the exclusive declare it answers, if it does (the
    /// queue is then the client's).
    pub fn on_declare_ok(&mut self) -> Option<Bytes> {
        self.declares.pop_front().flatten()
    }

    /// A Queue.Delete-Ok for this channel reached the client: the queue of
    /// the conditional delete it answers, if it does.
    pub fn on_delete_ok(&mut self) -> Option<String> {
        self.deletes.pop_front().flatten()
    }

    /// Exclusive declares still awaiting their Declare-Ok: when the broker
    /// closes the channel, it refused them (or never ran them).
    pub fn awaited_exclusive_declares(&self) -> impl Iterator<Item = &Bytes> {
        self.declares.iter().flatten()
    }
}

#[cfg(test)]
mod tests;
