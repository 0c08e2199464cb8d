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
    /// Tx.Select on a kept channel in confirm mode would fail (RabbitMQ
    /// refuses to switch from confirm to tx mode), where a fresh channel
    /// would accept it: move the client to a new upstream channel first.
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
            ids::TX_SELECT if self.confirm_broker && !self.confirm_client && !self.forwarded => {
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

    /// A publish went upstream whole.
    pub fn on_publish_sent(&mut self) {
        if self.confirm_broker {
            self.confirm_publishes += 1;
        }
        if self.confirm_client {
            self.confirm_tags += 1;
        }
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
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use proptest::prelude::*;

    /// Basic.Consume of queue "q", server-named tag, no flags, no arguments.
    const CONSUME: [u8; 10] = [0, 0, 1, b'q', 0, 0, 0, 0, 0, 0];

    fn qos_args(count: u16) -> Vec<u8> {
        let mut args = 0u32.to_be_bytes().to_vec();
        args.extend_from_slice(&count.to_be_bytes());
        args.push(0);
        args
    }

    #[test]
    fn qos_is_answered_locally_until_a_consumer_exists() {
        let mut usage = Usage::default();
        assert_eq!(
            usage.on_method(ids::BASIC_QOS, &qos_args(3)),
            Step::AnswerQosOk
        );
        let three = Qos {
            prefetch_count: 3,
            ..Qos::default()
        };
        assert_eq!(
            usage.on_method(ids::BASIC_CONSUME, &CONSUME),
            Step::RestoreQosThenForward(three)
        );
        assert_eq!(usage.on_method(ids::BASIC_QOS, &qos_args(5)), Step::Forward);
        assert_eq!(
            usage.on_method(ids::BASIC_QOS, &qos_args(5)),
            Step::AnswerQosOk
        );
        assert_eq!(usage.inherited().qos.prefetch_count, 5);
    }

    #[test]
    fn matching_qos_is_answered_locally_and_restored_before_a_consume() {
        let inherited = Inherited {
            qos: Qos {
                prefetch_count: 3,
                ..Qos::default()
            },
            confirm: false,
        };
        let mut usage = Usage::new(inherited);
        assert_eq!(
            usage.on_method(ids::BASIC_QOS, &qos_args(3)),
            Step::AnswerQosOk
        );
        assert_eq!(usage.dirty(0, 0), None);

        let mut unaware = Usage::new(inherited);
        assert_eq!(
            unaware.on_method(ids::BASIC_CONSUME, &CONSUME),
            Step::RestoreQosThenForward(Qos::default())
        );
        assert_eq!(unaware.dirty(0, 0), Some("had a consumer"));
        assert_eq!(unaware.inherited().qos, Qos::default());
    }

    #[test]
    fn confirm_mode_is_adopted_and_publishes_counted() {
        let publish = [0, 0, 0, 1, b'q', 0];
        let mut first = Usage::default();
        assert_eq!(first.on_method(ids::BASIC_PUBLISH, &publish), Step::Forward);
        first.on_publish_sent();
        assert_eq!(
            first.on_method(ids::CONFIRM_SELECT, &[0]),
            Step::ForwardSelect
        );
        first.on_publish_sent();
        assert_eq!(first.confirm_publishes, 1);

        let mut next = Usage::new(first.inherited());
        next.on_publish_sent();
        assert_eq!(
            next.on_method(ids::CONFIRM_SELECT, &[1]),
            Step::AdoptConfirms {
                reply: false,
                published_before: 1
            }
        );
        next.on_publish_sent();
        assert_eq!(
            next.confirm_publishes, 2,
            "the broker counts publishes made before select too"
        );
        assert_eq!(next.dirty(0, 1), None);
    }

    #[test]
    fn tx_on_an_inherited_confirm_channel_asks_for_a_fresh_one() {
        let confirm = Inherited {
            confirm: true,
            ..Inherited::default()
        };
        assert_eq!(
            Usage::new(confirm).on_method(ids::TX_SELECT, &[]),
            Step::SwitchToFreshChannel
        );
        let mut busy = Usage::new(confirm);
        busy.on_method(ids::QUEUE_DECLARE, &[0, 0, 1, b'q', 0]);
        assert_eq!(
            busy.on_method(ids::TX_SELECT, &[]),
            Step::Forward,
            "too late to move"
        );
    }

    #[test]
    fn an_empty_queue_name_needs_a_queue_declared_by_this_client() {
        use crate::protocol::wire::put_short_str;
        let get = {
            let mut b = BytesMut::new();
            b.put_u16(0);
            put_short_str(&mut b, "");
            b.put_u8(1);
            b.to_vec()
        };
        let Step::ChannelError(close) = Usage::default().on_method(ids::BASIC_GET, &get) else {
            panic!("the previous client's queue would be used");
        };
        assert_eq!(
            (close.code, close.text.as_str()),
            (404, "NOT_FOUND - no previously declared queue")
        );
        let mut declared = Usage::default();
        declared.on_method(ids::QUEUE_DECLARE, &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(declared.on_method(ids::BASIC_GET, &get), Step::Forward);
    }

    #[test]
    fn immediate_publishes_and_reused_consumer_tags_are_refused_like_rabbitmq() {
        let immediate = [0, 0, 0, 1, b'q', 2];
        let Step::ConnectionError(close) =
            Usage::default().on_method(ids::BASIC_PUBLISH, &immediate)
        else {
            panic!("immediate accepted");
        };
        assert_eq!(close.text, "NOT_IMPLEMENTED - immediate=true");
        let consume = [0, 0, 1, b'q', 1, b't', 0, 0, 0, 0, 0];
        let mut usage = Usage::default();
        assert_eq!(usage.on_method(ids::BASIC_CONSUME, &consume), Step::Forward);
        let Step::ConnectionError(close) = usage.on_method(ids::BASIC_CONSUME, &consume) else {
            panic!("tag reused");
        };
        assert_eq!(
            (close.code, close.text.as_str()),
            (530, "NOT_ALLOWED - attempt to reuse consumer tag 't'")
        );
        usage.on_method(ids::BASIC_CANCEL, &[1, b't', 0]);
        assert_eq!(usage.on_method(ids::BASIC_CONSUME, &consume), Step::Forward);
    }

    #[test]
    fn a_confirm_still_on_its_way_keeps_the_channel_from_reuse() {
        let mut usage = Usage::default();
        usage.on_method(ids::CONFIRM_SELECT, &[0]);
        usage.on_publish_sent();
        usage.on_publish_sent();
        assert_eq!(usage.dirty(1, 1), Some("a confirm is still on its way"));
        assert_eq!(usage.dirty(1, 2), None);
    }

    #[test]
    fn deliveries_tx_and_flow_make_a_channel_dirty() {
        let mandatory_publish = [0, 0, 0, 1, b'q', 1];
        let mut usage = Usage::default();
        usage.on_method(ids::BASIC_PUBLISH, &mandatory_publish);
        assert_eq!(usage.dirty(0, 0), Some("mandatory publish"));
        for id in [
            ids::BASIC_GET,
            ids::BASIC_ACK,
            ids::TX_SELECT,
            ids::CHANNEL_FLOW,
        ] {
            let mut usage = Usage::default();
            usage.on_method(id, &[1; 16]);
            assert!(usage.dirty(0, 0).is_some(), "{id:?}");
        }
    }

    #[test]
    fn only_answered_exclusive_declares_are_the_clients() {
        use crate::protocol::wire::put_short_str;
        let declare = |name: &str, bits: u8| {
            let mut b = BytesMut::new();
            b.put_u16(0);
            put_short_str(&mut b, name);
            b.put_u8(bits);
            b.put_u32(0);
            b.to_vec()
        };
        let mut usage = Usage::default();
        usage.on_method(ids::QUEUE_DECLARE, &declare("", 0b100));
        usage.on_method(ids::QUEUE_DECLARE, &declare("shared", 0b10));
        usage.on_method(ids::QUEUE_DECLARE, &declare("fire-and-forget", 0b10100));
        assert_eq!(usage.dirty(1, 0), Some("a reply is still on its way"));
        assert_eq!(usage.awaited_exclusive_declares().count(), 1);
        assert_eq!(
            usage.on_declare_ok().as_deref(),
            Some(&declare("", 0b100)[..]),
            "the server-named exclusive queue"
        );
        assert_eq!(usage.on_declare_ok(), None, "the shared queue");
        assert_eq!(
            usage.on_declare_ok(),
            None,
            "no-wait declares have no Declare-Ok"
        );
        assert_eq!(usage.awaited_exclusive_declares().count(), 0);
        assert_eq!(usage.dirty(2, 0), None);
    }

    #[test]
    fn selecting_confirms_twice_changes_nothing() {
        let mut usage = Usage::default();
        assert_eq!(
            usage.on_method(ids::CONFIRM_SELECT, &[0]),
            Step::ForwardSelect
        );
        usage.on_publish_sent();
        assert_eq!(
            usage.on_method(ids::CONFIRM_SELECT, &[0]),
            Step::AnswerSelectOk
        );
        assert_eq!(usage.on_method(ids::CONFIRM_SELECT, &[1]), Step::Swallow);
    }

    #[test]
    fn a_moved_channel_keeps_the_clients_qos() {
        let mut usage = Usage::new(Inherited {
            confirm: true,
            ..Inherited::default()
        });
        usage.on_method(ids::BASIC_QOS, &qos_args(10));
        let mut moved = usage.moved();
        let ten = Qos {
            prefetch_count: 10,
            ..Qos::default()
        };
        assert_eq!(
            moved.on_method(ids::BASIC_CONSUME, &CONSUME),
            Step::RestoreQosThenForward(ten)
        );
    }

    proptest! {
        /// Random client method sequences, with arguments that are valid or
        /// garbage: the state machine never panics, a channel once unfit for
        /// reuse never becomes fit again, and the methods that leave state
        /// in the broker (a consumer, a delivery, a transaction, paused flow)
        /// always make it unfit.
        #[test]
        fn a_channel_once_unfit_for_reuse_stays_unfit(
            steps in prop::collection::vec(
                (prop::sample::select(CLIENT_METHODS.to_vec()), any::<bool>(), prop::collection::vec(any::<u8>(), 0..24)),
                0..40,
            )
        ) {
            let mut usage = Usage::new(Inherited::default());
            let mut unfit = false;
            for (id, garbage, noise) in steps {
                let args = if garbage { noise } else { valid_args(id) };
                usage.on_method(id, &args);
                let now_unfit = usage.dirty(u64::MAX, u64::MAX).is_some();
                prop_assert!(!unfit || now_unfit, "{} made a dirty channel clean", method::name(id));
                let leaves_state = matches!(id, ids::BASIC_CONSUME | ids::BASIC_GET | ids::TX_SELECT);
                if leaves_state && !garbage {
                    prop_assert!(now_unfit, "{} left the channel fit for reuse", method::name(id));
                }
                unfit = now_unfit;
            }
        }
    }

    /// Methods a client sends on an open channel.
    const CLIENT_METHODS: [MethodId; 12] = [
        ids::BASIC_QOS,
        ids::BASIC_CONSUME,
        ids::BASIC_CANCEL,
        ids::BASIC_PUBLISH,
        ids::BASIC_GET,
        ids::BASIC_ACK,
        ids::BASIC_RECOVER,
        ids::CONFIRM_SELECT,
        ids::TX_SELECT,
        ids::CHANNEL_FLOW,
        ids::QUEUE_DECLARE,
        ids::EXCHANGE_DECLARE,
    ];

    /// Well-formed arguments for each of `CLIENT_METHODS`.
    fn valid_args(id: MethodId) -> Vec<u8> {
        let mut b = BytesMut::new();
        let short = |b: &mut BytesMut, s: &str| {
            b.put_u8(s.len() as u8);
            b.put_slice(s.as_bytes());
        };
        match id {
            ids::BASIC_QOS => {
                b.put_u32(0);
                b.put_u16(10);
                b.put_u8(0);
            }
            ids::BASIC_CONSUME => {
                b.put_u16(0);
                short(&mut b, "q");
                short(&mut b, "tag");
                b.put_u8(0);
                b.put_u32(0);
            }
            ids::BASIC_CANCEL => {
                short(&mut b, "tag");
                b.put_u8(0);
            }
            ids::BASIC_PUBLISH => {
                b.put_u16(0);
                short(&mut b, "");
                short(&mut b, "q");
                b.put_u8(0);
            }
            ids::BASIC_GET => {
                b.put_u16(0);
                short(&mut b, "q");
                b.put_u8(0);
            }
            ids::BASIC_ACK => {
                b.put_u64(1);
                b.put_u8(0);
            }
            ids::BASIC_RECOVER => b.put_u8(1),
            ids::CONFIRM_SELECT | ids::TX_SELECT => b.put_u8(0),
            ids::CHANNEL_FLOW => b.put_u8(0),
            ids::QUEUE_DECLARE => {
                b.put_u16(0);
                short(&mut b, "q");
                b.put_u8(0);
                b.put_u32(0);
            }
            _ => {
                b.put_u16(0);
                short(&mut b, "x");
                short(&mut b, "direct");
                b.put_u8(0);
                b.put_u32(0);
            }
        }
        b.to_vec()
    }
}
