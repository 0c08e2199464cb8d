//! Sending upstream: a channel's frames, with publishes held until whole
//! (`crate::content`), small ones batched ([`crate::client::publish_batch`])
//! and each kept until the broker confirms it (`crate::replay`).

use bytes::Bytes;

use super::{Exit, Session};
use crate::channel::UpstreamChannel;
use crate::content::ContentVerdict;
use crate::protocol::frame::{self, Frame};
use crate::protocol::spec::MethodSpec;
use crate::replay::Frames;

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
        let (content, open) = self.channels.open_mut(channel)?;
        match content.accept(frame, spec) {
            ContentVerdict::Forward(frame) => self.send_upstream(frame, upstream.id).await,
            ContentVerdict::Held => {
                if self.holding.last() != Some(&channel) {
                    self.holding.push(channel);
                }
            }
            ContentVerdict::Ignored => {}
            ContentVerdict::Complete(frames) => {
                let client_tag = open.usage.on_publish_sent();
                let kept = self.hold.is_some() && open.usage.in_confirm_mode();
                self.record.published.add(1);
                self.publish(channel, upstream, frames, kept.then_some(client_tag))
                    .await;
            }
            ContentVerdict::ChannelError(close) => {
                self.close_channel(channel, upstream, close).await
            }
            ContentVerdict::ConnectionError(close) => return Some(Exit::Close(close)),
        }
        None
    }

    /// Sends a whole publish upstream (or, while the client is held, only
    /// keeps it); with `kept`, its copy stays in the channel's replay log
    /// under the client's confirm tag until the broker settles it.
    async fn publish(
        &mut self,
        channel: u16,
        upstream: UpstreamChannel,
        frames: Vec<Frame>,
        kept: Option<u64>,
    ) {
        if self.outage.is_some() {
            let whole: Vec<u8> = frames.iter().flat_map(|f| f.as_bytes()).copied().collect();
            self.keep(channel, kept.unwrap_or(0), Frames::Whole(whole.into()));
            return;
        }
        let frame_max = self.upstream.frame_max();
        match self.batch.add(frames, upstream.id, frame_max) {
            Ok(range) => {
                if let Some(client_tag) = kept {
                    self.keep(channel, client_tag, Frames::InBatch(range));
                    if self.batched.last() != Some(&channel) {
                        self.batched.push(channel);
                    }
                }
            }
            Err(frames) => {
                for frame in frames {
                    frame::push_for_peer(frame, upstream.id, frame_max, &mut self.scratch);
                }
                let pieces: Vec<Bytes> = self.scratch.drain(..).collect();
                if let Some(client_tag) = kept {
                    self.keep(channel, client_tag, Frames::Pieces(pieces.clone()));
                }
                self.flush_batch().await;
                for piece in pieces {
                    self.upstream.send(piece).await;
                }
            }
        }
    }

    /// Adds a publish to its channel's replay log, after dropping what the
    /// broker settled meanwhile.
    fn keep(&mut self, channel: u16, client_tag: u64, frames: Frames) {
        if let Some((_, open)) = self.channels.open_mut(channel) {
            open.log.trim(open.delivered.settled());
            open.log.push(client_tag, frames);
        }
    }

    /// Drops what the broker settled from every channel's replay log.
    pub(super) fn trim_logs(&mut self) {
        for (_, open) in self.channels.each_open() {
            open.log.trim(open.delivered.settled());
        }
        self.trim_settling();
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

    /// Sends the small publishes collected so far, as one buffer; the
    /// replay log entries copied into it now point into it.
    pub(super) async fn flush_batch(&mut self) {
        if let Some(messages) = self.batch.take() {
            for channel in self.batched.drain(..) {
                if let Some((_, open)) = self.channels.open_mut(channel) {
                    open.log.sent_batch(&messages);
                }
            }
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
