//! Any frames a client sends on an open channel: the publish assembler
//! releases only whole messages whose bodies add up to the announced size,
//! and the channel's usage record never makes a channel unfit for reuse fit
//! again, whatever the method arguments.
#![no_main]

mod runtime;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use warren::channel::{Inherited, Usage};
use warren::content::{ContentAssembler, ContentVerdict, HeldBytes, PublishBudget};
use warren::frame::{FrameReader, FRAME_METHOD};
use warren::spec;

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
            if frame.kind() == FRAME_METHOD {
                if let Some(id) = frame.method_id() {
                    usage.on_method(id, frame.method_args());
                }
            }
            let now_unfit = usage.dirty(u64::MAX, u64::MAX).is_some();
            assert!(!unfit || now_unfit, "a channel unfit for reuse became fit");
            unfit = now_unfit;
            let method = frame.method_id().and_then(|(c, m)| spec::lookup(c, m));
            let verdict = assembler.accept(frame, method);
            if reader.has_buffered_frame() && assembler.settle(&budget).is_err() {
                assembler = ContentAssembler::default();
            }
            if let ContentVerdict::Complete(frames) = verdict {
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
