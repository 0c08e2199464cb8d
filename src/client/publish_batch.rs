//! Small whole publishes, collected while the session works through one
//! read from the client, to go upstream as one buffer.
//!
//! Why: a publisher's stream arrives in large reads holding many small
//! messages; handing each to the upstream writer on its own costs a queue
//! push and a wake-up apiece, where copying a few KiB costs less. Anything
//! else the session sends upstream goes after what is collected here, so
//! the order on the wire stays the order the client sent.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::protocol::frame::Frame;

/// Publishes up to this size (all frames) are copied into the batch:
/// copying 16 KiB costs less than the hand-offs it saves.
const SMALL_MESSAGE: usize = 16 * 1024;
/// Allocation size for the batch's copies: one allocation holds several
/// messages, and a sent batch's memory is freed once the writer is done.
const CHUNK: usize = 64 * 1024;

#[derive(Default)]
pub struct PublishBatch {
    collected: BytesMut,
}

impl PublishBatch {
    /// Adds a whole publish for `upstream_channel`, if it is small and
    /// every frame fits the upstream's `frame_max` as it is: where it lies
    /// in the batch. Otherwise the frames come back, to be sent (and split)
    /// one by one after the batch.
    pub fn add(
        &mut self,
        frames: Vec<Frame>,
        upstream_channel: u16,
        frame_max: usize,
    ) -> Result<Range<usize>, Vec<Frame>> {
        let size: usize = frames.iter().map(Frame::len).sum();
        if size > SMALL_MESSAGE || frames.iter().any(|f| f.len() > frame_max) {
            return Err(frames);
        }
        if self.collected.capacity() - self.collected.len() < size {
            self.collected.reserve(CHUNK);
        }
        let start = self.collected.len();
        for mut frame in frames {
            frame.set_channel(upstream_channel);
            self.collected.extend_from_slice(frame.as_bytes());
        }
        Ok(start..self.collected.len())
    }

    /// What was collected, to be sent now.
    pub fn take(&mut self) -> Option<Bytes> {
        (!self.collected.is_empty()).then(|| self.collected.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{self, FrameReader, FRAME_BODY, FRAME_HEADER};

    async fn frame(kind: u8, channel: u16, payload: &[u8]) -> Frame {
        let bytes = frame::build(kind, channel, |b| b.extend_from_slice(payload));
        FrameReader::new(&bytes[..], 1 << 20)
            .read_frame()
            .await
            .expect("a frame")
    }

    async fn publish(channel: u16, body: usize) -> Vec<Frame> {
        vec![
            frame(FRAME_HEADER, channel, &[0; 14]).await,
            frame(FRAME_BODY, channel, &vec![7; body]).await,
        ]
    }

    #[tokio::test]
    async fn small_publishes_leave_together_on_the_upstream_channel() {
        let mut batch = PublishBatch::default();
        assert!(batch.take().is_none(), "nothing collected, nothing sent");
        batch.add(publish(3, 10).await, 42, 131072).expect("small");
        let second = batch.add(publish(4, 20).await, 43, 131072).expect("small");
        let sent = batch.take().expect("collected");
        assert_eq!(second, (8 + 14) + (8 + 10)..sent.len(), "after the first one");
        let mut reader = FrameReader::new(&sent[..], 1 << 20);
        let mut channels = Vec::new();
        while let Ok(frame) = reader.read_frame().await {
            channels.push((frame.channel(), frame.payload().len()));
        }
        assert_eq!(channels, [(42, 14), (42, 10), (43, 14), (43, 20)]);
        assert!(batch.take().is_none(), "a batch is sent once");
    }

    #[tokio::test]
    async fn large_publishes_and_frames_too_big_for_the_broker_come_back() {
        let mut batch = PublishBatch::default();
        let large = publish(1, SMALL_MESSAGE).await;
        let back = batch.add(large, 9, 131072).expect_err("too large to copy");
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].channel(), 1, "returned untouched");
        let over_frame_max = publish(1, 5000).await;
        assert!(batch.add(over_frame_max, 9, 4096).is_err());
        assert!(batch.take().is_none());
    }
}
