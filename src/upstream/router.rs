//! The task that owns an upstream connection's read half and channel ids.
//!
//! Every frame from the broker is routed here: looked up by channel id
//! ([`super::slots`]), rewritten to the client's channel id and pushed onto
//! that client's write queue without waiting. The same task serves the
//! clients' commands (open a channel, give one back), so the ids have one
//! owner and no lock. Confirm tags are rebased per client
//! ([`crate::confirms`]).

use crate::protocol::ids::{self, MethodId};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::handshake::Negotiated;
use super::slots::{FromBroker, Lease, Slots, ToBroker};
use super::{Command, Grant, Inner, Occupancy, UpstreamSettings};
use crate::channel::Delivered;
use crate::confirms::ConfirmTags;
use crate::link::{ClientEvent, ClientId, ClientLink, LARGE_MESSAGE};
use crate::net::ReadHalf;
use crate::protocol::frame::{
    self, Frame, FrameReader, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
};
use crate::protocol::method::{self, Close};
use crate::protocol::reply::{self, CONNECTION_FORCED, REPLY_SUCCESS};
use crate::stats::{Listed, UpstreamRecord};
use crate::untrusted::cut;

/// How often liveness and idleness are checked.
const TICK: Duration = Duration::from_millis(250);
/// How long a clean close waits for the broker's Close-Ok.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(2);

/// Why the loop ended.
enum End {
    /// Tell the clients this and stop.
    Lost(Close),
    /// Close the connection cleanly with this reason.
    Graceful(&'static str),
}

pub(super) struct Router {
    inner: Arc<Inner>,
    reader: FrameReader<ReadHalf>,
    commands: mpsc::UnboundedReceiver<Command>,
    writer_task: JoinHandle<std::io::Result<()>>,
    slots: Slots<Arc<ClientLink>, oneshot::Sender<bool>>,
    /// `slots.in_use()` as last written to the occupancy the pool reads.
    in_use_shown: usize,
    /// Traffic counts, with frames dropped because their client had left
    /// (late returns, acks, replies: never shown to the next client).
    record: Listed<UpstreamRecord>,
    clients: HashMap<ClientId, Arc<ClientLink>>,
    /// The broker's Connection.Blocked frame while it is in force.
    blocked: Option<Bytes>,
    heartbeat: Option<Duration>,
    settings: UpstreamSettings,
    scratch: Vec<Bytes>,
    /// Channel requests waiting for a parked channel's fence to clear (see
    /// `grant`).
    waiting_for_kept: VecDeque<ChannelRequest>,
}

/// A client's request for an upstream channel.
struct ChannelRequest {
    link: Arc<ClientLink>,
    client_channel: u16,
    fresh: bool,
    beyond_guarantee: bool,
    reply: oneshot::Sender<Grant>,
}

impl Router {
    pub(super) fn new(
        inner: Arc<Inner>,
        reader: FrameReader<ReadHalf>,
        commands: mpsc::UnboundedReceiver<Command>,
        writer_task: JoinHandle<std::io::Result<()>>,
        negotiated: Negotiated,
        settings: UpstreamSettings,
        record: Listed<UpstreamRecord>,
    ) -> Self {
        let capacity = negotiated.channel_max;
        Router {
            inner,
            reader,
            commands,
            writer_task,
            slots: Slots::new(capacity, settings.kept_channels, settings.prewarm_channels),
            in_use_shown: 0,
            record,
            clients: HashMap::new(),
            blocked: None,
            heartbeat: (negotiated.heartbeat > 0)
                .then(|| Duration::from_secs(negotiated.heartbeat.into())),
            settings,
            scratch: Vec::new(),
            waiting_for_kept: VecDeque::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let end = self.serve().await;
        let id = self.inner.id;
        if matches!(end, End::Lost(_)) {
            self.inner.lost.store(true, Ordering::Relaxed);
        }
        self.occupancy().closed = true;
        let close = match end {
            End::Graceful(reason) => {
                self.close_cleanly(reason).await;
                tracing::info!(
                    upstream = id,
                    reason,
                    stale_frames_dropped = self.record.stale_dropped.get(),
                    "upstream connection closed"
                );
                reply::close(CONNECTION_FORCED, reason)
            }
            End::Lost(close) => {
                tracing::warn!(
                    upstream = id,
                    code = close.code,
                    text = cut(&close.text),
                    clients = self.clients.len(),
                    "upstream connection lost"
                );
                // CONNECTION_FORCED, from the broker (shutting down, closed
                // by an operator) or for a lost socket: the node is in
                // trouble, so new clients go elsewhere until it answers.
                if close.code == CONNECTION_FORCED {
                    let node = &self.inner.node;
                    if let Some(ban) = self.settings.nodes.failed_at(node, Instant::now()) {
                        tracing::warn!(%node, banned_for = ?ban, "broker node banned: it closed or lost a connection");
                    }
                }
                close
            }
        };
        // Clients that attached while the connection was ending hear it too;
        // after `close`, `Upstream::attach` tells late ones itself.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Attach(link) = command {
                self.clients.insert(link.id, link);
            }
        }
        for link in self.clients.values() {
            link.notify(ClientEvent::UpstreamClosed {
                upstream: id,
                close: close.clone(),
            });
        }
        if !self.writer_task.is_finished() {
            self.writer_task.abort();
            // Waited for so the bytes it wrote are counted before the record goes.
            let _ = (&mut self.writer_task).await;
        }
        self.inner.ended.cancel();
    }

    /// The node is drained: these clients move (`Session::move_when_ready`).
    fn tell_drained<'a>(&self, links: impl IntoIterator<Item = &'a Arc<ClientLink>>) {
        let upstream = self.inner.id;
        links.into_iter().for_each(|link| {
            link.notify(ClientEvent::NodeDrained { upstream });
        });
    }

    async fn serve(&mut self) -> End {
        self.flush_slots();
        let mut tick = tokio::time::interval(TICK);
        let mut last_read = Instant::now();
        let mut idle_since: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => return End::Graceful("warren is shutting down"),
                    Some(command) => {
                        self.on_command(command);
                        self.flush_slots();
                    }
                },
                read = self.reader.read_frame() => match read {
                    Ok(frame) => {
                        last_read = Instant::now();
                        let end = self.on_frame(frame);
                        self.flush_slots();
                        if let Some(end) = end {
                            return end;
                        }
                    }
                    Err(e) => return End::Lost(self.lost(format!("read failed: {e}"))),
                },
                written = &mut self.writer_task => {
                    let why = match written {
                        Ok(Err(e)) => format!("write failed: {e}"),
                        _ => "writer stopped".to_string(),
                    };
                    return End::Lost(self.lost(why));
                }
                _ = tick.tick() => {
                    let read_at = last_read.saturating_duration_since(self.record.since);
                    self.record.last_read_ms.set(read_at.as_millis() as u64);
                    if let Some(hb) = self.heartbeat {
                        if last_read.elapsed() > 2 * hb {
                            return End::Lost(self.lost(format!("missed heartbeats from the broker ({}s)", hb.as_secs())));
                        }
                    }
                    if self.occupancy().is_unused() {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        let retirement = self.inner.retirement();
                        let limit = if retirement.is_some() { Duration::ZERO } else { self.settings.idle_timeout };
                        if since.elapsed() >= limit && self.occupancy().close_if_unused() {
                            return End::Graceful(retirement.unwrap_or("idle"));
                        }
                    } else {
                        idle_since = None;
                    }
                }
            }
        }
    }

    fn lost(&self, why: String) -> Close {
        reply::close(
            CONNECTION_FORCED,
            format!("upstream connection to {} lost: {why}", self.inner.node),
        )
    }

    fn occupancy(&self) -> std::sync::MutexGuard<'_, Occupancy> {
        self.inner.occupancy.lock().expect("occupancy lock")
    }

    async fn close_cleanly(&mut self, reason: &str) {
        let close = Close::new(REPLY_SUCCESS, reason);
        self.send_upstream(close.connection_frame());
        let wait_close_ok = async {
            while let Ok(frame) = self.reader.read_frame().await {
                if frame.method_id() == Some(ids::CONNECTION_CLOSE_OK) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_OK_WAIT, wait_close_ok).await;
    }

    fn send_upstream(&self, frame: Bytes) {
        // Never waits: the router serves every client of the connection.
        let _ = self.inner.frames.send_now(frame);
    }

    /// Writes what the slots asked to send, and shows the pool how many
    /// channels are in use.
    fn flush_slots(&mut self) {
        for frame in self.slots.drain_to_broker() {
            let bytes = match frame {
                ToBroker::ChannelOpen(id) => method::channel_open(id),
                ToBroker::Fence(id) => method::channel_flow(id, true),
                ToBroker::ChannelClose(id, reason) => {
                    Close::new(REPLY_SUCCESS, reason).channel_frame(id)
                }
                ToBroker::ChannelCloseOk(id) => method::channel_close_ok(id),
                ToBroker::Probe(id, queue) => method::queue_declare_passive(id, &queue),
            };
            // Never waits, as `send_upstream`.
            let _ = self.inner.frames.send_now(bytes);
        }
        let in_use = self.slots.in_use();
        if in_use != self.in_use_shown {
            self.inner
                .occupancy
                .lock()
                .expect("occupancy lock")
                .channels = in_use;
            self.in_use_shown = in_use;
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Attach(link) => {
                if link.capabilities.blocked {
                    if let Some(blocked) = &self.blocked {
                        link.push(blocked.clone());
                    }
                }
                if self.inner.drained.load(Ordering::Relaxed) {
                    self.tell_drained([&link]);
                }
                self.clients.insert(link.id, link);
            }
            Command::Detach(id) => {
                self.clients.remove(&id);
            }
            Command::Drained => self.tell_drained(self.clients.values()),
            Command::Report(reply) => {
                let _ = reply.send(self.slots.counts());
            }
            Command::OpenChannel {
                link,
                client_channel,
                fresh,
                beyond_guarantee,
                reply,
            } => self.grant(ChannelRequest {
                link,
                client_channel,
                fresh,
                beyond_guarantee,
                reply,
            }),
            Command::Closing(ch) => self.slots.closing(ch),
            Command::Abandon(ch) => self.slots.abandon(ch),
            Command::Release(ch) => self.slots.release(ch),
            Command::Keep {
                channel,
                inherited,
                confirm_publishes,
            } => self.slots.keep(channel, inherited, confirm_publishes),
            Command::Hide(ch, reply) => {
                if let Some(lease) = self.slots.leased(ch) {
                    lease.hidden.push_back(reply);
                }
            }
            Command::WantConfirms { channel, tags } => {
                if let Some(lease) = self.slots.leased(channel) {
                    // The client's publishes before its Confirm.Select were
                    // numbered too (confirm mode is sticky); its own tags
                    // start after them.
                    lease.confirms = ConfirmTags {
                        base: lease.numbered_at_grant + tags.base,
                        ..tags
                    };
                }
            }
            Command::ProbeQueue { queue, reply } => {
                // No free id: the queue is taken to be there (the client
                // gets 405, as it would while the queue exists).
                if let Err(reply) = self.slots.probe(queue, reply) {
                    let _ = reply.send(true);
                }
            }
            Command::Shutdown => unreachable!("handled by the loop"),
        }
    }

    /// Hands a kept channel (or a new id) to a client channel.
    ///
    /// When every parked channel is still behind its fence (the broker is
    /// slower than the clients), the request waits for one to clear rather
    /// than take a new id: a new id costs the broker a channel open and,
    /// with the park full, a close, so under sustained churn a lagging
    /// broker would otherwise be handed ever more work and warren would
    /// open ever more connections to hold the channels still closing.
    fn grant(&mut self, request: ChannelRequest) {
        if request.beyond_guarantee && !self.occupancy().has_unreserved() {
            // Dropping the reply refuses: every free channel is promised to
            // another client.
            return;
        }
        if !request.fresh && self.slots.all_fenced() {
            self.waiting_for_kept.push_back(request);
            return;
        }
        // No id at all: dropping the reply refuses.
        let Some(taken) = self.slots.take(request.fresh) else {
            return;
        };
        let delivered = Arc::new(Delivered::default());
        let grant = Grant {
            channel: taken.channel,
            inherited: taken.kept.map(|k| k.inherited),
            delivered: delivered.clone(),
        };
        if request.reply.send(grant).is_err() {
            self.slots.untake(taken);
            return;
        }
        match taken.kept {
            Some(_) => self.record.reuse_hits.add(1),
            None => self.record.reuse_misses.add(1),
        }
        self.slots
            .lease(taken, request.link, request.client_channel, delivered);
    }

    /// Grants waiting requests while a kept channel (or room to park) is
    /// there for them.
    fn serve_waiting(&mut self) {
        while !self.slots.all_fenced() {
            let Some(request) = self.waiting_for_kept.pop_front() else {
                return;
            };
            self.grant(request);
        }
    }

    /// Routes one broker frame. Returns why the connection must end, if so.
    fn on_frame(&mut self, frame: Frame) -> Option<End> {
        self.record.frames_in.add(1);
        self.record.bytes_in.add(frame.len() as u64);
        let id = frame.channel();
        if id == 0 {
            return self.on_connection_frame(frame);
        }
        let method_id = frame.method_id();
        match self
            .slots
            .on_broker_frame(id, method_id, frame.method_args())
        {
            FromBroker::Deliver(lease) => {
                deliver(lease, frame, method_id, &self.record, &mut self.scratch)
            }
            FromBroker::CloseOk {
                link,
                client_channel,
            } => {
                link.notify(ClientEvent::ChannelCloseOk {
                    channel: client_channel,
                });
            }
            FromBroker::Closed {
                link,
                client_channel,
                channel,
            } => {
                let code = Close::decode(frame.method_args()).map_or(0, |c| c.code);
                let event = ClientEvent::ChannelClosedByBroker {
                    channel: client_channel,
                    upstream: channel,
                    close: frame.into_bytes_for(client_channel),
                    code,
                };
                if !link.notify(event) {
                    self.slots.acknowledge_broker_close(id);
                }
            }
            FromBroker::ProbeAnswer(reply, exists) => {
                let _ = reply.send(exists);
            }
            FromBroker::KeptReady => self.serve_waiting(),
            FromBroker::Stale => self.record.stale_dropped.add(1),
            FromBroker::Dropped => {}
            FromBroker::Unknown => {
                tracing::warn!(
                    upstream = self.inner.id,
                    channel = id,
                    "broker used a channel beyond channel_max"
                );
            }
        }
        None
    }

    fn on_connection_frame(&mut self, frame: Frame) -> Option<End> {
        if frame.kind() == FRAME_HEARTBEAT || frame.kind() != FRAME_METHOD {
            return None;
        }
        match frame.method_id() {
            Some(ids::CONNECTION_CLOSE) => {
                let close = Close::decode(frame.method_args()).unwrap_or_else(|_| {
                    reply::close(CONNECTION_FORCED, "broker closed the connection")
                });
                self.send_upstream(method::connection_close_ok());
                Some(End::Lost(close))
            }
            Some(ids::CONNECTION_BLOCKED) => {
                let blocked = frame.into_bytes();
                tracing::warn!(upstream = self.inner.id, "broker blocked the connection");
                self.broadcast_to_blocked_aware(&blocked);
                self.blocked = Some(blocked);
                self.record.blocked.store(true, Ordering::Relaxed);
                None
            }
            Some(ids::CONNECTION_UNBLOCKED) => {
                tracing::info!(upstream = self.inner.id, "broker unblocked the connection");
                self.broadcast_to_blocked_aware(&frame.into_bytes());
                self.blocked = None;
                self.record.blocked.store(false, Ordering::Relaxed);
                None
            }
            other => {
                tracing::debug!(upstream = self.inner.id, method = ?other, "ignored connection method from broker");
                None
            }
        }
    }

    fn broadcast_to_blocked_aware(&self, frame: &Bytes) {
        for link in self.clients.values().filter(|l| l.capabilities.blocked) {
            link.push(frame.clone());
        }
    }
}

/// Records the broker's ack or nack of `tag` on the lease, for the
/// session's replay log, and wakes a session waiting for its log to shrink.
fn settle(lease: &mut Lease<Arc<ClientLink>>, tag: u64, multiple: bool) {
    let settlement = &mut lease.settlement;
    let had_apart = !settlement.apart.is_empty();
    settlement.on_ack(tag, multiple);
    let base = lease.numbered_at_grant;
    let delivered = &lease.delivered;
    delivered
        .settled
        .store(settlement.upto.saturating_sub(base), Ordering::Release);
    if had_apart || !settlement.apart.is_empty() {
        *delivered.settled_apart.lock().expect("settled lock") =
            settlement.apart.iter().map(|t| t - base).collect();
    }
    lease.link.settlement_advanced();
}

/// Passes a broker frame on to the client holding the channel: acks are
/// renumbered for it (or dropped when not its own), notices it did not ask
/// for are held back, and replies are counted for the reuse check.
fn deliver(
    lease: &mut Lease<Arc<ClientLink>>,
    frame: Frame,
    method_id: Option<MethodId>,
    record: &UpstreamRecord,
    scratch: &mut Vec<Bytes>,
) {
    let link = &lease.link;
    let client_channel = lease.client_channel;
    let delivered = &lease.delivered;
    match method_id {
        Some(ids::BASIC_ACK | ids::BASIC_NACK) => {
            let Some((tag, multiple)) = method::ack_fields(&frame) else {
                return;
            };
            settle(lease, tag, multiple);
            match lease.confirms.to_client(tag) {
                Some(client_tag) => {
                    let mut ack = frame;
                    lease
                        .delivered
                        .confirmed
                        .fetch_max(client_tag, Ordering::Release);
                    if client_tag != tag {
                        method::set_ack_tag(&mut ack, client_tag);
                    }
                    lease.link.push(ack.into_bytes_for(lease.client_channel));
                }
                // A previous client's publish on a kept channel.
                None if tag <= lease.numbered_at_grant => record.stale_dropped.add(1),
                // warren's own confirm of a publish the client wanted none for.
                None => {}
            }
        }
        Some(ids::BASIC_CANCEL) if !link.capabilities.cancel_notify => {
            // The broker cancelled a consumer (its queue is gone); a client
            // without consumer_cancel_notify is not told.
        }
        Some(ids::QUEUE_DELETE_OK) => {
            delivered.replies.fetch_add(1, Ordering::Release);
            link.notify(ClientEvent::DeleteOk {
                channel: client_channel,
            });
            link.push(frame.into_bytes_for(client_channel));
        }
        Some(ids::QUEUE_DECLARE_OK) => {
            delivered.replies.fetch_add(1, Ordering::Release);
            if let Ok(queue) = method::decode_declare_ok_queue(frame.method_args()) {
                link.notify(ClientEvent::DeclareOk {
                    channel: client_channel,
                    queue,
                });
            }
            link.push(frame.into_bytes_for(client_channel));
        }
        _ => {
            if frame.kind() == FRAME_HEADER {
                if let Some(body_size) = frame.content_body_size().filter(|&n| n >= LARGE_MESSAGE) {
                    link.owe_whole(frame.len(), body_size);
                }
            }
            match method_id {
                Some(ids::BASIC_DELIVER | ids::BASIC_GET_OK) => record.delivered.add(1),
                Some(id) if method::is_reply(id) => {
                    delivered.replies.fetch_add(1, Ordering::Release);
                }
                _ => {}
            }
            frame::push_for_peer(frame, client_channel, link.frame_max, scratch);
            for piece in scratch.drain(..) {
                link.push(piece);
            }
        }
    }
}
