use super::*;
use crate::protocol::reply::PRECONDITION_FAILED;
use proptest::prelude::*;
use std::collections::HashMap;

/// Links are client numbers, probe replies labels.
type Table = Slots<u32, &'static str>;

fn close_args(code: u16) -> Vec<u8> {
    let mut args = code.to_be_bytes().to_vec();
    args.extend_from_slice(&[0, 0, 0, 0, 0]);
    args
}

fn sent(table: &mut Table) -> Vec<ToBroker> {
    table.drain_to_broker().collect()
}

fn lease_new(table: &mut Table, client: u32) -> UpstreamChannel {
    let taken = table.take(false).expect("an id");
    table.lease(taken, client, 1, Arc::default());
    taken.channel
}

#[test]
fn ids_are_taken_lowest_first_and_a_new_ids_open_ok_is_hidden() {
    let mut table = Table::new(3, 0, 0);
    let taken = table.take(false).expect("free");
    assert_eq!(taken.channel.id, 1);
    assert!(taken.kept.is_none());
    table.untake(taken);
    let first = lease_new(&mut table, 7);
    assert_eq!(first.id, 1, "an id given back is taken again");
    assert!(matches!(
        table.on_broker_frame(1, Some(ids::CHANNEL_OPEN_OK), &[]),
        FromBroker::Dropped
    ));
    let FromBroker::Deliver(lease) = table.on_broker_frame(1, Some(ids::CHANNEL_OPEN_OK), &[])
    else {
        panic!("only the first Open-Ok is hidden");
    };
    assert_eq!(lease.link, 7);
    assert_eq!(table.in_use(), 1);
    lease_new(&mut table, 8);
    lease_new(&mut table, 9);
    assert!(table.take(false).is_none(), "all three ids are held");
    assert!(matches!(
        table.on_broker_frame(4, None, &[]),
        FromBroker::Unknown
    ));
}

#[test]
fn a_kept_channel_is_fenced_before_its_next_client() {
    let mut table = Table::new(4, 1, 0);
    let first = lease_new(&mut table, 1);
    let qos = Inherited {
        confirm: true,
        ..Inherited::default()
    };
    table.keep(first, qos, 5);
    assert_eq!(sent(&mut table), [ToBroker::Fence(1)]);
    assert_eq!(table.in_use(), 0, "a parked channel is free to take");
    assert!(
        table.all_fenced(),
        "the only parked channel is behind its fence"
    );
    assert!(matches!(
        table.on_broker_frame(1, Some(ids::BASIC_RETURN), &[]),
        FromBroker::Stale
    ));
    assert!(matches!(
        table.on_broker_frame(1, Some(ids::CHANNEL_FLOW_OK), &[]),
        FromBroker::KeptReady
    ));
    assert!(!table.all_fenced());
    let again = table.take(false).expect("kept");
    assert_eq!(again.channel.id, 1);
    assert_ne!(again.channel.lease, first.lease, "a new lease");
    assert_eq!(
        again.kept,
        Some(Kept {
            inherited: qos,
            confirm_sequence: 5
        })
    );
    table.lease(again, 2, 1, Arc::default());
    let lease = table.leased(again.channel).expect("leased");
    assert_eq!(
        lease.confirms.base, 5,
        "its confirm tags start after the previous client's"
    );
    assert!(lease.hidden.is_empty(), "a kept channel is open already");
    assert!(table.leased(first).is_none(), "the old lease is over");
}

#[test]
fn a_clean_channel_beyond_the_park_is_closed() {
    let mut table = Table::new(4, 1, 0);
    let a = lease_new(&mut table, 1);
    let b = lease_new(&mut table, 2);
    table.keep(a, Inherited::default(), 0);
    table.keep(b, Inherited::default(), 0);
    assert_eq!(
        sent(&mut table),
        [
            ToBroker::Fence(a.id),
            ToBroker::ChannelClose(b.id, "channel not needed")
        ]
    );
    assert_eq!(
        table.in_use(),
        1,
        "closing counts until the broker confirms"
    );
    table.on_broker_frame(b.id, Some(ids::CHANNEL_CLOSE_OK), &[]);
    assert_eq!(table.in_use(), 0);
}

#[test]
fn a_clients_close_frees_the_id_only_with_the_brokers_close_ok() {
    let mut table = Table::new(1, 0, 0);
    let ch = lease_new(&mut table, 3);
    table.closing(ch);
    table.closing(ch);
    assert_eq!(
        sent(&mut table),
        [ToBroker::ChannelClose(1, "closed by the client")],
        "one Close"
    );
    assert!(table.take(false).is_none());
    let FromBroker::CloseOk {
        link,
        client_channel,
    } = table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE_OK), &[])
    else {
        panic!("the client hears its Close-Ok");
    };
    assert_eq!((link, client_channel), (3, 1));
    assert_eq!(table.take(false).expect("free again").channel.id, 1);
}

#[test]
fn a_broker_close_waits_for_the_session() {
    let mut table = Table::new(1, 0, 0);
    let ch = lease_new(&mut table, 3);
    let FromBroker::Closed { link, channel, .. } =
        table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE), &close_args(406))
    else {
        panic!("the client hears the broker's Close");
    };
    assert_eq!((link, channel), (3, ch));
    table.release(UpstreamChannel { id: 1, lease: 99 });
    assert!(table.take(false).is_none(), "a stale release is ignored");
    table.release(ch);
    assert!(sent(&mut table).is_empty(), "the session sent the Close-Ok");
    assert!(table.take(false).is_some());

    let mut table = Table::new(1, 0, 0);
    let ch = lease_new(&mut table, 3);
    table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE), &close_args(406));
    table.acknowledge_broker_close(ch.id);
    assert_eq!(sent(&mut table), [ToBroker::ChannelCloseOk(1)]);
    assert_eq!(table.in_use(), 0);
}

#[test]
fn crossing_closes_are_answered() {
    let mut table = Table::new(2, 0, 0);
    let ch = lease_new(&mut table, 3);
    table.closing(ch);
    sent(&mut table);
    assert!(matches!(
        table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE), &close_args(406)),
        FromBroker::Dropped
    ));
    assert_eq!(sent(&mut table), [ToBroker::ChannelCloseOk(1)]);
    assert!(matches!(
        table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE_OK), &[]),
        FromBroker::CloseOk { .. }
    ));

    let gone = lease_new(&mut table, 4);
    table.abandon(gone);
    assert_eq!(
        sent(&mut table),
        [ToBroker::ChannelClose(gone.id, "client gone")]
    );
    table.on_broker_frame(gone.id, Some(ids::CHANNEL_CLOSE), &close_args(406));
    assert_eq!(sent(&mut table), [ToBroker::ChannelCloseOk(gone.id)]);
    assert_eq!(table.in_use(), 1, "still waiting for the Close-Ok to ours");
}

#[test]
fn probes_ask_on_a_channel_of_their_own() {
    let mut table = Table::new(2, 0, 0);
    table.probe("q".into(), "first").expect("a free id");
    assert_eq!(
        sent(&mut table),
        [ToBroker::ChannelOpen(1), ToBroker::Probe(1, "q".into())]
    );
    table.on_broker_frame(1, Some(ids::CHANNEL_OPEN_OK), &[]);
    let FromBroker::ProbeAnswer(reply, exists) =
        table.on_broker_frame(1, Some(ids::QUEUE_DECLARE_OK), &[])
    else {
        panic!("answered");
    };
    assert_eq!((reply, exists), ("first", true));
    assert_eq!(sent(&mut table), [ToBroker::ChannelClose(1, "probe done")]);

    table.probe("gone".into(), "second").expect("a free id");
    let FromBroker::ProbeAnswer(_, exists) =
        table.on_broker_frame(2, Some(ids::CHANNEL_CLOSE), &close_args(NOT_FOUND))
    else {
        panic!("answered");
    };
    assert!(!exists);
    assert_eq!(
        sent(&mut table),
        [
            ToBroker::ChannelOpen(2),
            ToBroker::Probe(2, "gone".into()),
            ToBroker::ChannelCloseOk(2)
        ]
    );
    table
        .probe("q".into(), "third")
        .expect("id 2 is free again");
    assert_eq!(
        table.probe("q".into(), "fourth"),
        Err("fourth"),
        "no free id (1 waits for its Close-Ok): the caller answers"
    );
    table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE_OK), &[]);
    sent(&mut table);
    table.probe("locked".into(), "fifth").expect("a free id");
    let FromBroker::ProbeAnswer(_, exists) =
        table.on_broker_frame(1, Some(ids::CHANNEL_CLOSE), &close_args(405))
    else {
        panic!("answered");
    };
    assert!(exists, "only 404 means the queue is gone");
}

#[test]
fn prewarmed_channels_are_opened_and_fenced_up_front() {
    let mut table = Table::new(8, 2, 5);
    assert_eq!(
        sent(&mut table),
        [
            ToBroker::ChannelOpen(1),
            ToBroker::Fence(1),
            ToBroker::ChannelOpen(2),
            ToBroker::Fence(2)
        ],
        "no more than the park holds"
    );
    assert_eq!(table.counts().kept, 2);
    assert_eq!(table.in_use(), 0);
}

/// The broker's view of a channel id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtBroker {
    Closed,
    Open,
    /// It sent Close; it waits for our Close-Ok.
    ClosingByBroker,
}

/// A broker that applies RabbitMQ's channel rules to what warren sends
/// and answers in order.
struct Broker {
    state: HashMap<u16, AtBroker>,
    /// Frames from warren not yet read.
    inbound: VecDeque<ToBroker>,
    /// Frames to warren not yet delivered: id, method, close code.
    outbound: VecDeque<(u16, MethodId, u16)>,
}

impl Broker {
    fn at(&self, id: u16) -> AtBroker {
        *self.state.get(&id).unwrap_or(&AtBroker::Closed)
    }

    /// Reads one frame from warren. Err: RabbitMQ would close the
    /// whole connection.
    fn read(&mut self) -> Result<(), String> {
        let Some(frame) = self.inbound.pop_front() else {
            return Ok(());
        };
        let (id, at) = match &frame {
            ToBroker::ChannelOpen(id)
            | ToBroker::Fence(id)
            | ToBroker::ChannelClose(id, _)
            | ToBroker::ChannelCloseOk(id)
            | ToBroker::Probe(id, _) => (*id, self.at(*id)),
        };
        let next = match (&frame, at) {
            (ToBroker::ChannelOpen(_), AtBroker::Closed) => {
                self.outbound.push_back((id, ids::CHANNEL_OPEN_OK, 0));
                AtBroker::Open
            }
            (ToBroker::ChannelOpen(_), _) => return Err(format!("504: {id} opened twice")),
            (_, AtBroker::Closed) => return Err(format!("504: {frame:?} on closed {id}")),
            // Waiting for a Close-Ok, the broker discards the rest.
            (ToBroker::ChannelCloseOk(_), AtBroker::ClosingByBroker) => AtBroker::Closed,
            (ToBroker::ChannelCloseOk(_), _) => {
                return Err(format!("504: unexpected close-ok on {id}"))
            }
            (ToBroker::ChannelClose(..), AtBroker::ClosingByBroker) => {
                self.outbound.push_back((id, ids::CHANNEL_CLOSE_OK, 0));
                AtBroker::ClosingByBroker
            }
            (_, AtBroker::ClosingByBroker) => at,
            // Closed once its Close-Ok is sent: from then on only a new
            // Channel.Open may use the id.
            (ToBroker::ChannelClose(..), AtBroker::Open) => {
                self.outbound.push_back((id, ids::CHANNEL_CLOSE_OK, 0));
                AtBroker::Closed
            }
            (ToBroker::Fence(_), AtBroker::Open) => {
                self.outbound.push_back((id, ids::CHANNEL_FLOW_OK, 0));
                AtBroker::Open
            }
            (ToBroker::Probe(_, queue), AtBroker::Open) if queue == "gone" => {
                self.outbound.push_back((id, ids::CHANNEL_CLOSE, NOT_FOUND));
                AtBroker::ClosingByBroker
            }
            (ToBroker::Probe(..), AtBroker::Open) => {
                self.outbound.push_back((id, ids::QUEUE_DECLARE_OK, 0));
                AtBroker::Open
            }
        };
        self.state.insert(id, next);
        Ok(())
    }

    /// The broker closes an open channel on its own (a channel error).
    fn close(&mut self, pick: usize) {
        let open: Vec<u16> = self
            .state
            .iter()
            .filter(|(_, at)| **at == AtBroker::Open)
            .map(|(id, _)| *id)
            .collect();
        if let Some(&id) = open.get(pick % open.len().max(1)) {
            self.state.insert(id, AtBroker::ClosingByBroker);
            self.outbound
                .push_back((id, ids::CHANNEL_CLOSE, PRECONDITION_FAILED));
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Take { fresh: bool, give_up: bool },
    ClientCloses(usize),
    Abandon(usize),
    Keep(usize),
    Probe { gone: bool },
    BrokerReads,
    BrokerAnswers,
    BrokerCloses(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(fresh, give_up)| Op::Take { fresh, give_up }),
        1 => any::<usize>().prop_map(Op::ClientCloses),
        1 => any::<usize>().prop_map(Op::Abandon),
        1 => any::<usize>().prop_map(Op::Keep),
        1 => any::<bool>().prop_map(|gone| Op::Probe { gone }),
        3 => Just(Op::BrokerReads),
        3 => Just(Op::BrokerAnswers),
        1 => any::<usize>().prop_map(Op::BrokerCloses),
    ]
}

/// Counts the table's own bookkeeping against its slots.
fn check_bookkeeping(table: &Table) {
    let mut in_use = 0;
    let mut parked = 0;
    for (id, slot) in table.slots.iter().enumerate().skip(1) {
        let id = id as u16;
        match slot {
            Slot::Free => assert!(table.free.contains(&id), "free {id} not listed"),
            Slot::Kept(_) => {
                parked += 1;
                assert!(table.kept.contains(&id));
            }
            Slot::Draining(_) => parked += 1,
            Slot::Open(_) | Slot::Abandoned | Slot::Probe(_) | Slot::BrokerClosed { .. } => {
                in_use += 1
            }
        }
        if !matches!(slot, Slot::Free) {
            assert!(!table.free.contains(&id), "{id} listed free but used");
        }
    }
    let mut free = table.free.clone();
    free.sort_unstable();
    free.dedup();
    assert_eq!(free.len(), table.free.len(), "an id listed free twice");
    assert_eq!(table.in_use, in_use);
    assert_eq!(table.parked, parked);
    assert!(table.parked <= table.kept_channels);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn no_interleaving_makes_the_broker_close_the_connection(
        capacity in 1u16..6,
        kept_channels in 0usize..3,
        prewarm in 0usize..3,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut table = Table::new(capacity, kept_channels, prewarm);
        let mut broker = Broker {
            state: HashMap::new(),
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
        };
        // Channels clients hold, as the sessions know them.
        let mut held: Vec<UpstreamChannel> = Vec::new();
        let mut next_client = 0u32;
        let mut probes_answered = 0;
        let mut probes_asked = 0;
        for op in ops {
            match op {
                Op::Take { fresh, give_up } => {
                    if let Some(taken) = table.take(fresh) {
                        if give_up {
                            table.untake(taken);
                        } else {
                            next_client += 1;
                            table.lease(taken, next_client, 1, Arc::default());
                            // The session opens a new id itself.
                            if taken.kept.is_none() {
                                broker.inbound.extend(table.drain_to_broker());
                                broker.inbound.push_back(ToBroker::ChannelOpen(taken.channel.id));
                            }
                            held.push(taken.channel);
                        }
                    }
                }
                Op::ClientCloses(i) if !held.is_empty() => {
                    table.closing(held[i % held.len()]);
                }
                Op::Abandon(i) if !held.is_empty() => {
                    table.abandon(held.swap_remove(i % held.len()));
                }
                Op::Keep(i) if !held.is_empty() => {
                    let ch = held.swap_remove(i % held.len());
                    table.keep(ch, Inherited::default(), 0);
                }
                Op::Probe { gone } => {
                    let queue = if gone { "gone" } else { "there" };
                    match table.probe(queue.into(), "probe") {
                        Ok(()) => probes_asked += 1,
                        Err(reply) => prop_assert_eq!(reply, "probe"),
                    }
                }
                Op::BrokerReads => {
                    broker.inbound.extend(table.drain_to_broker());
                    broker.read().map_err(TestCaseError::fail)?;
                }
                Op::BrokerAnswers => {
                    if let Some((id, method, code)) = broker.outbound.pop_front() {
                        let args = close_args(code);
                        match table.on_broker_frame(id, Some(method), &args) {
                            FromBroker::CloseOk { .. } => {
                                held.retain(|ch| ch.id != id);
                            }
                            FromBroker::Closed { channel, .. } => {
                                // The session acknowledges, then releases.
                                broker.inbound.extend(table.drain_to_broker());
                                broker.inbound.push_back(ToBroker::ChannelCloseOk(id));
                                held.retain(|ch| *ch != channel);
                                table.release(channel);
                            }
                            FromBroker::ProbeAnswer(_, exists) => {
                                probes_answered += 1;
                                prop_assert_eq!(exists, code != NOT_FOUND);
                            }
                            FromBroker::Deliver(lease) => {
                                prop_assert!(held.iter().any(|ch| ch.id == id && ch.lease == lease.lease));
                            }
                            FromBroker::KeptReady
                            | FromBroker::Stale
                            | FromBroker::Dropped => {}
                            FromBroker::Unknown => prop_assert!(false, "the broker used {id}"),
                        }
                    }
                }
                Op::BrokerCloses(pick) => {
                    broker.inbound.extend(table.drain_to_broker());
                    broker.close(pick);
                }
                _ => {}
            }
            check_bookkeeping(&table);
            let leases: Vec<u64> = held.iter().map(|ch| ch.lease).collect();
            prop_assert!(
                leases.iter().all(|l| leases.iter().filter(|m| *m == l).count() == 1),
                "a lease held twice"
            );
        }
        // Everything in flight settles without a connection error, and
        // then the table and the broker agree on every id.
        for _ in 0..1000 {
            broker.inbound.extend(table.drain_to_broker());
            if broker.inbound.is_empty() && broker.outbound.is_empty() {
                break;
            }
            broker.read().map_err(TestCaseError::fail)?;
            if let Some((id, method, code)) = broker.outbound.pop_front() {
                if let FromBroker::Closed { channel, .. } =
                    table.on_broker_frame(id, Some(method), &close_args(code))
                {
                    broker.inbound.extend(table.drain_to_broker());
                    broker.inbound.push_back(ToBroker::ChannelCloseOk(id));
                    table.release(channel);
                }
            }
        }
        for (id, slot) in table.slots.iter().enumerate().skip(1) {
            let at = broker.at(id as u16);
            match slot {
                Slot::Free => prop_assert_eq!(at, AtBroker::Closed, "free {}", id),
                Slot::Kept(_) | Slot::Open(Lease { closing: false, .. }) => {
                    prop_assert_eq!(at, AtBroker::Open, "open {}", id)
                }
                _ => prop_assert!(false, "{} still in transit: {:?}", id, at),
            }
        }
        prop_assert!(probes_answered <= probes_asked);
        check_bookkeeping(&table);
    }
}
