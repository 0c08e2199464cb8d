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
    let mut declared = Usage::new(confirm);
    declared.on_method(ids::QUEUE_DECLARE, &[0, 0, 1, b'q', 0]);
    assert_eq!(
        declared.on_method(ids::TX_SELECT, &[]),
        Step::SwitchToFreshChannel,
        "a declared queue is the broker's, not the channel's"
    );
    let mut consuming = Usage::new(confirm);
    consuming.on_method(ids::BASIC_CONSUME, &CONSUME);
    assert_eq!(
        consuming.on_method(ids::TX_SELECT, &[]),
        Step::Forward,
        "too late to move: the consumer stays on its channel"
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
