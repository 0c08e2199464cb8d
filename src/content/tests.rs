use super::*;
use crate::protocol::frame::{self, FRAME_HEARTBEAT};
use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

impl ContentAssembler {
    /// `accept` with the frame's spec looked up, as the session does.
    fn take(&mut self, frame: Frame) -> ContentVerdict {
        let method = frame.method_id().and_then(|(c, m)| spec::lookup(c, m));
        self.accept(frame, method)
    }
}

fn wrap(b: Bytes) -> Frame {
    Frame::from_bytes(BytesMut::from(&b[..]))
}

fn method_frame(id: (u16, u16)) -> Frame {
    wrap(frame::build(FRAME_METHOD, 1, |b| {
        b.put_u16(id.0);
        b.put_u16(id.1);
    }))
}

fn header(size: u64) -> Frame {
    wrap(frame::build(FRAME_HEADER, 1, |b| {
        b.put_u16(60);
        b.put_u16(0);
        b.put_u64(size);
        b.put_u16(0);
    }))
}

fn body(n: usize) -> Frame {
    wrap(frame::build(FRAME_BODY, 1, |b| b.put_slice(&vec![7u8; n])))
}

#[test]
fn publish_is_held_until_the_last_body_byte() {
    let mut a = ContentAssembler::default();
    assert!(matches!(
        a.take(method_frame(ids::BASIC_PUBLISH)),
        ContentVerdict::Held
    ));
    assert!(matches!(a.take(header(10)), ContentVerdict::Held));
    assert!(matches!(a.take(body(4)), ContentVerdict::Held));
    match a.take(body(6)) {
        ContentVerdict::Complete(frames) => assert_eq!(frames.len(), 4),
        other => panic!("{other:?}"),
    }
    assert!(a.is_idle());
}

#[test]
fn empty_body_completes_at_the_header() {
    let mut a = ContentAssembler::default();
    a.take(method_frame(ids::BASIC_PUBLISH));
    assert!(matches!(a.take(header(0)), ContentVerdict::Complete(f) if f.len() == 2));
}

#[test]
fn other_methods_pass_straight_through() {
    let mut a = ContentAssembler::default();
    assert!(matches!(
        a.take(method_frame(ids::QUEUE_DECLARE)),
        ContentVerdict::Forward(_)
    ));
}

#[test]
fn a_content_header_of_another_class_is_505() {
    let mut a = ContentAssembler::default();
    a.take(method_frame(ids::BASIC_PUBLISH));
    let header = wrap(frame::build(FRAME_HEADER, 1, |b| {
        b.put_u16(50);
        b.put_u16(0);
        b.put_u64(1);
        b.put_u16(0);
    }));
    let ContentVerdict::ConnectionError(close) = a.take(header) else {
        panic!("accepted");
    };
    assert_eq!(close.code, 505);
}

#[test]
fn a_weighted_header_or_broken_properties_never_pass() {
    let refused = |weight: u16, flags: u16, props: &[u8]| {
        let mut a = ContentAssembler::default();
        a.take(method_frame(ids::BASIC_PUBLISH));
        let header = wrap(frame::build(FRAME_HEADER, 1, |b| {
            b.put_u16(60);
            b.put_u16(weight);
            b.put_u64(1);
            b.put_u16(flags);
            b.put_slice(props);
        }));
        match a.take(header) {
            ContentVerdict::ConnectionError(close) => Some(close.code),
            _ => None,
        }
    };
    assert_eq!(refused(1, 0, &[]), Some(505));
    assert_eq!(refused(0, 0x8000, &[]), Some(541), "content-type missing");
    assert_eq!(refused(0, 0, &[1]), Some(541), "bytes after the properties");
    assert_eq!(refused(0, 0x8000, &[1, b'a']), None);
}

#[test]
fn out_of_order_content_is_a_connection_error() {
    let mut a = ContentAssembler::default();
    assert!(matches!(
        a.take(header(1)),
        ContentVerdict::ConnectionError(Close { code: 505, .. })
    ));
    assert!(matches!(
        a.take(body(1)),
        ContentVerdict::ConnectionError(_)
    ));
    a.take(method_frame(ids::BASIC_PUBLISH));
    assert!(matches!(
        a.take(method_frame(ids::QUEUE_DECLARE)),
        ContentVerdict::ConnectionError(_)
    ));
    // A body past the announced size: like RabbitMQ, further bodies
    // are ignored and the next other frame is the error.
    a.take(method_frame(ids::BASIC_PUBLISH));
    a.take(header(2));
    assert!(matches!(a.take(body(3)), ContentVerdict::Ignored));
    assert!(matches!(a.take(body(3)), ContentVerdict::Ignored));
    assert!(!a.is_idle());
    let ContentVerdict::ConnectionError(close) = a.take(method_frame(ids::QUEUE_DECLARE))
    else {
        panic!("accepted");
    };
    assert_eq!(
        (close.code, close.text.as_str(), close.cause),
        (
            505,
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
            ids::BASIC_PUBLISH
        )
    );
    assert!(a.is_idle());
    let heartbeat = wrap(frame::heartbeat());
    assert_eq!(heartbeat.kind(), FRAME_HEARTBEAT);
    assert!(matches!(
        a.take(heartbeat),
        ContentVerdict::ConnectionError(_)
    ));
}

#[test]
fn a_servers_content_method_is_refused_once_whole() {
    let mut a = ContentAssembler::default();
    a.take(method_frame(ids::BASIC_DELIVER));
    a.take(header(1));
    let ContentVerdict::ConnectionError(close) = a.take(body(1)) else {
        panic!("accepted");
    };
    assert_eq!(close.code, 503);
    assert_eq!(close.cause, ids::BASIC_DELIVER);
}

#[test]
fn oversized_message_is_refused_on_the_channel() {
    let mut a = ContentAssembler::default();
    a.take(method_frame(ids::BASIC_PUBLISH));
    assert!(matches!(
        a.take(header(MAX_MESSAGE_SIZE + 1)),
        ContentVerdict::ChannelError(Close { code: 406, .. })
    ));
    assert!(a.is_idle());
}

/// A publish announcing `announced` bytes, then `bodies` bodies of
/// `size`, each read on its own (settled after each frame).
fn publish_with_bodies(
    a: &mut ContentAssembler,
    budget: &Arc<PublishBudget>,
    announced: usize,
    bodies: usize,
    size: usize,
) -> Result<ContentVerdict, Close> {
    a.take(method_frame(ids::BASIC_PUBLISH));
    a.settle(budget)?;
    a.take(header(announced as u64));
    a.settle(budget)?;
    let mut last = ContentVerdict::Held;
    for _ in 0..bodies {
        last = a.take(body(size));
        if !matches!(last, ContentVerdict::Held) {
            break;
        }
        a.settle(budget)?;
    }
    Ok(last)
}

#[test]
fn what_completes_within_a_read_is_never_charged() {
    let shared = HeldBytes::new(u64::MAX);
    let budget = PublishBudget::new(shared.clone());
    let mut a = ContentAssembler::default();
    a.take(method_frame(ids::BASIC_PUBLISH));
    a.take(header(3 * 65536));
    a.take(body(65536));
    a.take(body(65536));
    assert!(matches!(a.take(body(65536)), ContentVerdict::Complete(_)));
    a.settle(&budget).unwrap();
    assert_eq!(shared.used(), 0);
}

#[test]
fn held_bytes_are_charged_at_what_they_occupy_and_given_back_whatever_the_end() {
    let shared = HeldBytes::new(u64::MAX);
    let budget = PublishBudget::new(shared.clone());
    let mut a = ContentAssembler::default();
    // A 40-byte frame left waiting costs its bytes plus the overhead,
    // not the read buffer it came in.
    a.take(method_frame(ids::BASIC_PUBLISH));
    a.settle(&budget).unwrap();
    let one = shared.used();
    assert!(one > 0 && one <= 12 + HELD_FRAME_OVERHEAD, "{one}");
    a.settle(&budget).unwrap();
    assert_eq!(shared.used(), one, "settling twice charges once");
    a.take(header(2 * 65536));
    a.take(body(65536));
    a.settle(&budget).unwrap();
    assert!(shared.used() > 65536);
    assert!(matches!(a.take(body(65536)), ContentVerdict::Complete(_)));
    assert_eq!(shared.used(), 0);
    // A channel (or client) gone mid-message gives its bytes back too.
    let mut b = ContentAssembler::default();
    assert!(matches!(
        publish_with_bodies(&mut b, &budget, 1 << 20, 2, 65536),
        Ok(ContentVerdict::Held)
    ));
    publish_with_bodies(&mut a, &budget, 1 << 20, 1, 65536).unwrap();
    assert!(shared.used() > 0);
    drop((a, b));
    assert_eq!(shared.used(), 0);
}

#[test]
fn many_channels_each_holding_a_little_are_charged_every_byte() {
    let shared = HeldBytes::new(64 * 1024);
    let budget = PublishBudget::new(shared.clone());
    let mut channels: Vec<ContentAssembler> = Vec::new();
    let refused = (0..10_000).find_map(|_| {
        let mut a = ContentAssembler::default();
        a.take(method_frame(ids::BASIC_PUBLISH));
        let settled = a.settle(&budget);
        channels.push(a);
        settled.err()
    });
    let close = refused.expect("2047 channels of held frames must hit the budget");
    assert_eq!(close.code, 506);
    assert!(
        channels.len() < 1000,
        "{} channels fit in 64 KiB",
        channels.len()
    );
    drop(channels);
    assert_eq!(shared.used(), 0);
}

#[test]
fn settled_frames_no_longer_share_the_read_buffer() {
    let budget = PublishBudget::new(HeldBytes::new(u64::MAX));
    let read_buffer = BytesMut::from(
        &frame::build(FRAME_METHOD, 1, |b| {
            b.put_u16(60);
            b.put_u16(40);
            b.put_slice(&[0u8; 4096]);
        })[..],
    );
    let start = read_buffer.as_ptr();
    let mut a = ContentAssembler::default();
    a.take(Frame::from_bytes(read_buffer));
    a.settle(&budget).unwrap();
    assert_ne!(a.held[0].as_bytes().as_ptr(), start);
}

#[test]
fn going_over_the_shared_budget_is_506_for_that_client_alone() {
    let shared = HeldBytes::new(256 * 1024);
    let (first, second) = (
        PublishBudget::new(shared.clone()),
        PublishBudget::new(shared.clone()),
    );
    let mut within = ContentAssembler::default();
    assert!(matches!(
        publish_with_bodies(&mut within, &first, 1 << 20, 3, 65536),
        Ok(ContentVerdict::Held)
    ));
    let mut over = ContentAssembler::default();
    let close = publish_with_bodies(&mut over, &second, 1 << 20, 8, 65536)
        .expect_err("the budget was not enforced");
    assert_eq!(close.code, 506);
    assert!(close.text.contains("its 262144 bytes"), "{}", close.text);
    assert!(over.is_idle());
    // The first client keeps its share and can finish.
    assert!(matches!(within.take(body(65536)), ContentVerdict::Held));
    drop(within);
    assert_eq!(shared.used(), 0);
}

proptest! {
    /// Whatever a client sends, a message is released only when complete,
    /// and the bodies released add up to exactly the announced size.
    #[test]
    fn only_complete_messages_are_released(steps in prop::collection::vec((0u8..4, 0usize..40), 0..60)) {
        let mut a = ContentAssembler::default();
        for (kind, n) in steps {
            let frame = match kind {
                0 => method_frame(ids::BASIC_PUBLISH),
                1 => method_frame(ids::QUEUE_DECLARE),
                2 => header(n as u64),
                _ => body(n),
            };
            if let ContentVerdict::Complete(frames) = a.take(frame) {
                prop_assert_eq!(frames[0].method_id(), Some(ids::BASIC_PUBLISH));
                let size = frames[1].content_body_size().unwrap();
                let bodies: u64 = frames[2..].iter().map(|f| f.payload().len() as u64).sum();
                prop_assert_eq!(size, bodies);
            }
        }
    }
}
