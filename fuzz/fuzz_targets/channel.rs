//! Any frames a client sends on an open channel, through the checks the
//! session makes (`client::frame_check`) and the publish assembler: nothing
//! forwarded is a frame the broker would answer with a connection-level
//! exception (every method's arguments and every content header pass the
//! spec's checks, messages are whole and their bodies add up to the
//! announced size), and the channel's usage record never makes a channel
//! unfit for reuse fit again, whatever the method arguments.
#![no_main]

mod runtime;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use warren::channel::Inherited;
use warren::client::usage::{Step, Usage};
use warren::client::frame_check;
use warren::content::{ContentAssembler, ContentVerdict, PublishBudget};
use warren::held::HeldBytes;
use warren::protocol::frame::{Frame, FrameReader, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use warren::protocol::spec;

fuzz_target!(|data: &[u8]| {
    runtime::block_on(async {
        let budget = PublishBudget::new(HeldBytes::new(1 << 20));
        let mut assembler = ContentAssembler::default();
        let mut usage = Usage::new(Inherited::default());
        let mut unfit = false;
        let mut reader = FrameReader::new(data, 4096);
        for _ in 0..data.len() {
            let Ok(frame) = reader.read_frame().await else {
                break;
            };
            let Ok(method) = frame_check::check_frame(&frame) else {
                break;
            };
            if let (Some(spec), true) = (method, assembler.is_idle()) {
                if frame_check::check_method(spec, &frame, &[]).is_err() {
                    break;
                }
                match usage.on_method((spec.class, spec.method), frame.method_args()) {
                    Step::ConnectionError(_) | Step::ChannelError(_) => break,
                    Step::AnswerQosOk | Step::AnswerSelectOk | Step::Swallow => continue,
                    _ => {}
                }
                let now_unfit = usage.dirty(u64::MAX, u64::MAX).is_some();
                assert!(!unfit || now_unfit, "a channel unfit for reuse became fit");
                unfit = now_unfit;
            }
            let verdict = assembler.accept(frame, method);
            if reader.has_buffered_frame() && assembler.settle(&budget).is_err() {
                assembler = ContentAssembler::default();
            }
            if let ContentVerdict::Forward(frame) = &verdict {
                assert_forwardable(frame);
            }
            if let ContentVerdict::Complete(frames) = verdict {
                frames.iter().take(2).for_each(assert_forwardable);
                assert_eq!(
                    frames[0]
                        .method_id()
                        .and_then(|(c, m)| spec::lookup(c, m))
                        .map(|m| m.content),
                    Some(true)
                );
                let announced = frames[1].content_body_size().expect("a header");
                let bodies: u64 = frames[2..].iter().map(|f| f.payload().len() as u64).sum();
                assert_eq!(announced, bodies);
            }
        }
        drop(assembler);
        assert_eq!(
            Arc::strong_count(&budget),
            1,
            "a charge outlived its message"
        );
    });
});

/// A frame the broker takes without a connection-level exception.
fn assert_forwardable(frame: &Frame) {
    match frame.kind() {
        FRAME_METHOD => {
            let (class, id) = frame.method_id().expect("a method id");
            let spec = spec::lookup(class, id).expect("a known method");
            assert!(spec::check_arguments(spec, frame.method_args()).is_ok());
            assert!(frame_check::check_method(spec, frame, &[]).is_ok());
        }
        FRAME_HEADER => {
            let header = spec::check_content_header(frame.payload()).expect("a valid header");
            assert_eq!((header.class, header.weight), (60, 0));
        }
        kind => assert_eq!(kind, FRAME_BODY),
    }
}
