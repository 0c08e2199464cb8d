//! What each frame the client sends does: checked (`frame_check`), routed
//! by the channel table, turned into a [`Step`] by the channel's usage,
//! and carried out.

use super::{Exit, Session};
use crate::channel::UpstreamChannel;
use crate::client::channel_table::Route;
use crate::client::frame_check;
use crate::client::usage::Step;
use crate::confirms::ConfirmTags;
use crate::protocol::frame::{Frame, FRAME_HEARTBEAT, FRAME_METHOD};
use crate::protocol::ids::{self, MethodId};
use crate::protocol::method;
use crate::protocol::reply::{self, CHANNEL_ERROR, UNEXPECTED_FRAME};
use crate::protocol::spec::MethodSpec;

impl Session {
    /// One frame read from the client; `more_buffered`: the read that
    /// brought it holds more.
    pub(super) async fn on_read(&mut self, frame: Frame, more_buffered: bool) -> Option<Exit> {
        self.record.frames_in.add(1);
        self.record.bytes_in.add(frame.len() as u64);
        if !frame.is_publish_part() {
            self.flush_batch().await;
        }
        let step = self.on_client_frame(frame).await;
        // Small publishes read in one go leave as one buffer; what stays
        // held waits for the next read.
        if step.is_none() && !more_buffered {
            self.flush_batch().await;
            self.settle_held()
        } else {
            step
        }
    }

    async fn on_client_frame(&mut self, frame: Frame) -> Option<Exit> {
        let channel = frame.channel();
        if channel == 0 {
            if frame.method_id() == Some(ids::CONNECTION_UPDATE_SECRET) {
                return self.update_secret(frame).await;
            }
            return self.on_connection_frame(frame);
        }
        let spec = match frame_check::check_frame(&frame) {
            Ok(spec) => spec,
            Err(close) => return Some(Exit::Close(close)),
        };
        let route = self.channels.route(channel);
        // While a message is under way a method is an unexpected frame
        // (content.rs), whatever its arguments: RabbitMQ decodes them only
        // when the channel expects a method.
        let expects_method = match route {
            Route::Open { expects_method, .. } => expects_method,
            _ => true,
        };
        if let (Some(spec), true) = (spec, expects_method) {
            if let Err(close) = frame_check::check_method(spec, &frame, &self.exchange_types) {
                return Some(Exit::Close(close));
            }
        }
        let method_id = spec.map(|m| (m.class, m.method));
        if method_id == Some(ids::CHANNEL_OPEN) && expects_method {
            return self.open_channel(channel).await;
        }
        match route {
            Route::Unopened => Some(Exit::Close(match method_id {
                Some(id) => reply::close(CHANNEL_ERROR, "expected 'channel.open'").caused_by(id),
                None => reply::close(
                    UNEXPECTED_FRAME,
                    "expected method frame, got non method frame instead",
                ),
            })),
            Route::Open {
                upstream,
                expects_method,
            } => match method_id.filter(|_| expects_method) {
                Some(id) => self.on_method(channel, upstream, id, frame, spec).await,
                None => self.forward_content(channel, upstream, frame, spec).await,
            },
            // The spec: after Close, everything but Close and Close-Ok is discarded.
            Route::Closing => None,
            Route::Closed => {
                if self.channels.on_method_while_closed(channel, method_id) {
                    self.link.push(method::channel_close_ok(channel));
                }
                None
            }
        }
    }

    /// A method on an open channel with no publish under way.
    async fn on_method(
        &mut self,
        channel: u16,
        upstream: UpstreamChannel,
        id: MethodId,
        frame: Frame,
        spec: Option<&'static MethodSpec>,
    ) -> Option<Exit> {
        match id {
            ids::CHANNEL_CLOSE => return self.client_closes_channel(channel),
            ids::CHANNEL_CLOSE_OK => {
                return Some(Exit::Close(reply::unimplemented_method(id)));
            }
            _ => {}
        }
        // Held until the method is queued upstream (or dropped).
        let _queue_order = match self
            .check_queue_access(channel, id, frame.method_args())
            .await
        {
            Ok(order) => order,
            Err(close) => {
                self.close_channel(channel, upstream, close.caused_by(id))
                    .await;
                return None;
            }
        };
        let (_, open) = self.channels.open_mut(channel)?;
        match open.usage.on_method(id, frame.method_args()) {
            Step::Forward => {}
            Step::ForwardSelect => self.upstream.want_confirms(upstream, ConfirmTags::after(0)),
            Step::RestoreQosThenForward(qos) => {
                self.upstream.hide_reply(upstream, ids::BASIC_QOS_OK);
                self.send_bytes(qos.frame(upstream.id)).await;
            }
            Step::SwitchToFreshChannel => {
                return self.switch_to_fresh_channel(channel, frame, spec).await;
            }
            Step::AnswerQosOk => {
                self.link.push(method::basic_qos_ok(channel));
                return None;
            }
            Step::AnswerSelectOk => {
                self.link.push(method::confirm_select_ok(channel));
                return None;
            }
            Step::Swallow => return None,
            Step::AdoptConfirms {
                reply,
                published_before,
            } => {
                self.upstream
                    .want_confirms(upstream, ConfirmTags::after(published_before));
                if reply {
                    self.link.push(method::confirm_select_ok(channel));
                }
                return None;
            }
            Step::ChannelError(close) => {
                self.close_channel(channel, upstream, close).await;
                return None;
            }
            Step::ConnectionError(close) => return Some(Exit::Close(close)),
        }
        self.forward_content(channel, upstream, frame, spec).await
    }

    /// Frames on channel 0 after the handshake: heartbeats, and the
    /// client's Connection.Close.
    fn on_connection_frame(&mut self, frame: Frame) -> Option<Exit> {
        match frame.kind() {
            FRAME_HEARTBEAT => return None,
            FRAME_METHOD => {}
            kind => {
                return Some(Exit::Close(reply::close(
                    UNEXPECTED_FRAME,
                    reply::octets(kind, frame.payload()),
                )))
            }
        }
        let spec = match frame_check::check_frame(&frame) {
            Ok(spec) => spec?,
            Err(close) => return Some(Exit::Close(close)),
        };
        match (spec.class, spec.method) {
            ids::CONNECTION_CLOSE => Some(Exit::ClientClosed),
            ids::CONNECTION_CLOSE_OK => Some(Exit::Gone(
                "client sent an unexpected connection.close-ok".into(),
            )),
            id => Some(Exit::Close(
                reply::close(
                    CHANNEL_ERROR,
                    "unexpected method in connection state running",
                )
                .caused_by(id),
            )),
        }
    }
}
