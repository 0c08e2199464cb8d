//! Any bytes from a peer: the frame reader returns frames or an error, never
//! panics, never yields a frame larger than frame_max; every accessor on a
//! frame it yields is safe, and splitting a body for a smaller peer keeps
//! every byte.
#![no_main]

mod runtime;

use libfuzzer_sys::fuzz_target;
use warren::protocol::frame::{self, FrameReader};

const FRAME_MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    runtime::block_on(async {
        let mut reader = FrameReader::new(data, FRAME_MAX);
        for _ in 0..data.len() {
            let Ok(frame) = reader.read_frame().await else {
                return;
            };
            assert!(frame.len() <= FRAME_MAX as usize);
            let _ = (
                frame.method_id(),
                frame.content_body_size(),
                warren::protocol::method::ack_tag(&frame),
            );
            let _ = (
                frame.method_args(),
                frame.is_publish_part(),
                frame.channel(),
            );
            let payload = frame.payload().len();
            let kind = frame.kind();
            let mut pieces = Vec::new();
            frame::push_for_peer(frame, 7, 512, &mut pieces);
            assert!(pieces
                .iter()
                .all(|p| p.len() <= 512 || kind != frame::FRAME_BODY));
            if kind == frame::FRAME_BODY {
                let carried: usize = pieces.iter().map(|p| p.len() - 8).sum();
                assert_eq!(carried, payload);
            }
        }
    });
});
