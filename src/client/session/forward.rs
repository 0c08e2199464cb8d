//! Sending upstream: a channel's frames, with publishes held until whole
//! (`crate::content`) and small ones batched ([`crate::client::publish_batch`]).

use bytes::Bytes;

use super::{Exit, Session};
use crate::channel::UpstreamChannel;
use crate::content::ContentVerdict;
use crate::protocol::frame::{self, Frame};
use crate::protocol::spec::MethodSpec;

impl Session {
    /// Forwards a frame of an open channel, holding publishes until whole.
    /// `spec`: the frame's method, as the checks found it.
    pub(super) async fn forward_content(
        &mut self,
        channel: u16,
        upstream: UpstreamChannel,
        frame: Frame,
        spec: Option<&'static MethodSpec>,
    ) -> Option<Exit> {
        let (content, usage) = self.channels.open_mut(channel)?;
        match content.accept(frame, spec) {
            ContentVerdict::Forward(frame) => self.send_upstream(frame, upstream.id).await,
            ContentVerdict::Held => {
                if self.holding.last() != Some(&channel) {
                    self.holding.push(channel);
                }
            }
            ContentVerdict::Ignored => {}
            ContentVerdict::Complete(frames) => {
                usage.on_publish_sent();
                self.record.published.add(1);
                let frame_max = self.upstream.frame_max();
                if let Err(frames) = self.batch.add(frames, upstream.id, frame_max) {
                    for frame in frames {
                        self.send_upstream(frame, upstream.id).await;
                    }
                }
            }
            ContentVerdict::ChannelError(close) => {
                self.close_channel(channel, upstream, close).await
            }
            ContentVerdict::ConnectionError(close) => return Some(Exit::Close(close)),
        }
        None
    }

    /// The frames read together are handled: publishes still incomplete
    /// are moved out of the read buffer and charged to the budget.
    pub(super) fn settle_held(&mut self) -> Option<Exit> {
        for channel in self.holding.drain(..) {
            if let Some((content, _)) = self.channels.open_mut(channel) {
                if let Err(close) = content.settle(&self.publish_budget) {
                    return Some(Exit::Close(close));
                }
            }
        }
        None
    }

    /// Sends the small publishes collected so far, as one buffer.
    pub(super) async fn flush_batch(&mut self) {
        if let Some(messages) = self.batch.take() {
            self.upstream.send(messages).await;
        }
    }

    /// Queues a frame warren wrote for the broker, after the publishes
    /// collected before it.
    pub(super) async fn send_bytes(&mut self, frame: Bytes) {
        self.flush_batch().await;
        self.upstream.send(frame).await;
    }

    async fn send_upstream(&mut self, frame: Frame, upstream_channel: u16) {
        frame::push_for_peer(
            frame,
            upstream_channel,
            self.upstream.frame_max(),
            &mut self.scratch,
        );
        self.flush_batch().await;
        for piece in self.scratch.drain(..) {
            self.upstream.send(piece).await;
        }
    }
}
