//! The task that owns an upstream connection's read half and channel table.
//!
//! Every frame from the broker is routed here: looked up by channel id,
//! rewritten to the client's channel id and pushed onto that client's write
//! queue without waiting. The same task serves the clients' commands (open a
//! channel, give one back), so the table has one owner and no lock.
//!
//! An upstream channel id is free again only once the broker has confirmed
//! the channel closed (its Close-Ok, or our Close-Ok to its Close): reusing
//! an id earlier makes RabbitMQ kill the whole connection with 504.
//!
//! A clean channel whose client is done is not closed but kept for the next
//! client. Before it is handed out again the router sends a fence
//! (Channel.Flow active=true, which no reusable channel uses) and drops every
//! frame until the fence's reply: the broker answers a channel's methods in
//! order, so late returns and replies meant for the previous client all
//! arrive, and are dropped, before it. Confirm tags are rebased per client
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
use super::{ChannelCounts, Command, Grant, Inner, UpstreamSettings};
use crate::channel::{Delivered, Inherited, UpstreamChannel};
use crate::confirms::ConfirmTags;
use crate::link::{ClientEvent, ClientId, ClientLink};
use crate::net::ReadHalf;
use crate::protocol::frame::{self, Frame, FrameReader, FRAME_HEARTBEAT, FRAME_METHOD};
use crate::protocol::method::{self, Close};
use crate::protocol::reply::{self, CONNECTION_FORCED, NOT_FOUND, REPLY_SUCCESS};
use crate::stats::{Listed, UpstreamRecord};
use crate::untrusted::cut;

/// How often liveness and idleness are checked.
const TICK: Duration = Duration::from_millis(250);
/// How long a clean close waits for the broker's Close-Ok.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum Slot {
    Free,
    Open {
        link: Arc<ClientLink>,
        client_channel: u16,
        lease: u64,
        /// The client's Channel.Close went upstream.
        closing: bool,
        confirms: ConfirmTags,
        /// Publishes the broker had numbered when this client got the channel.
        numbered_at_grant: u64,
        /// Replies to methods warren sent on its own, in order.
        hidden: VecDeque<MethodId>,
        /// What was forwarded to the client (see `Grant::delivered`).
        delivered: Arc<Delivered>,
    },
    /// Its client left and a Channel.Close went upstream.
    Abandoned,
    /// warren's own, asking whether a queue exists (see
    /// `Upstream::queue_exists`); the answer goes to the sender.
    Probe(Option<oneshot::Sender<bool>>),
    /// The broker closed it; the client's session acknowledges and releases it.
    BrokerClosed {
        lease: u64,
    },
    /// Kept for reuse; waiting for the fence's reply, dropping what comes
    /// before it.
    Draining(Kept),
    /// Clean, open and unused: the next client's Channel.Open costs nothing.
    Kept(Kept),
}

/// What a kept channel carries over to its next client.
#[derive(Debug, Clone, Copy, Default)]
struct Kept {
    inherited: Inherited,
    /// Publishes the broker numbered on this channel in confirm mode.
    confirm_sequence: u64,
}

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
    slots: Vec<Slot>,
    /// Free ids, lowest on top.
    free: Vec<u16>,
    /// Kept channels ready for a client, most recently kept on top.
    kept: Vec<u16>,
    /// Kept plus draining channels.
    parked: usize,
    /// Traffic counts. Frames dropped because their client had left (late
    /// returns, acks, replies) are counted there, never shown to the next
    /// client.
    record: Listed<UpstreamRecord>,
    next_lease: u64,
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
        let capacity = inner.capacity as u16;
        Router {
            inner,
            reader,
            commands,
            writer_task,
            slots: (0..=capacity).map(|_| Slot::Free).collect(),
            free: (1..=capacity).rev().collect(),
            kept: Vec::new(),
            parked: 0,
            record,
            next_lease: 1,
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
        self.inner.occupancy.lock().expect("occupancy lock").closed = true;
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

    async fn serve(&mut self) -> End {
        self.prewarm();
        let mut tick = tokio::time::interval(TICK);
        let mut last_read = Instant::now();
        let mut idle_since: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => return End::Graceful("warren is shutting down"),
                    Some(command) => self.on_command(command),
                },
                read = self.reader.read_frame() => match read {
                    Ok(frame) => {
                        last_read = Instant::now();
                        if let Some(end) = self.on_frame(frame) {
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
                    if self.is_unused() {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        let retired = self.inner.is_retired();
                        let limit = if retired { Duration::ZERO } else { self.settings.idle_timeout };
                        if since.elapsed() >= limit && self.mark_closed_if_unused() {
                            return End::Graceful(if retired { "past its max lifetime" } else { "idle" });
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

    fn has_unreserved(&self) -> bool {
        let o = self.inner.occupancy.lock().expect("occupancy lock");
        o.has_unreserved(self.inner.capacity)
    }

    fn is_unused(&self) -> bool {
        let o = self.inner.occupancy.lock().expect("occupancy lock");
        o.clients == 0 && o.channels == 0
    }

    /// Checks and closes under one lock, so the pool cannot pin a client
    /// between the check and the close.
    fn mark_closed_if_unused(&self) -> bool {
        let mut o = self.inner.occupancy.lock().expect("occupancy lock");
        if o.clients == 0 && o.channels == 0 {
            o.closed = true;
        }
        o.closed
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

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Attach(link) => {
                if link.capabilities.blocked {
                    if let Some(blocked) = &self.blocked {
                        link.push(blocked.clone());
                    }
                }
                self.clients.insert(link.id, link);
            }
            Command::Detach(id) => {
                self.clients.remove(&id);
            }
            Command::Report(reply) => {
                let _ = reply.send(self.channel_counts());
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
            Command::Closing(ch) => {
                if let Some(Slot::Open { closing, .. }) = self.leased(ch) {
                    if !*closing {
                        *closing = true;
                        self.send_close(ch.id, "closed by the client");
                    }
                }
                // On a BrokerClosed slot the session resolves the crossing
                // when it reads the broker's Close, and releases the id.
            }
            Command::Abandon(ch) => match self.slots[ch.id as usize] {
                Slot::Open { lease, closing, .. } if lease == ch.lease => {
                    self.slots[ch.id as usize] = Slot::Abandoned;
                    if !closing {
                        self.send_close(ch.id, "client gone");
                    }
                }
                Slot::BrokerClosed { lease } if lease == ch.lease => {
                    self.acknowledge_broker_close(ch.id)
                }
                _ => {}
            },
            Command::Release(ch) => {
                if matches!(self.slots[ch.id as usize], Slot::BrokerClosed { lease } if lease == ch.lease)
                {
                    self.free_id(ch.id);
                }
            }
            Command::Keep {
                channel,
                inherited,
                confirm_publishes,
            } => match &self.slots[channel.id as usize] {
                Slot::Open {
                    lease,
                    closing: false,
                    numbered_at_grant,
                    ..
                } if *lease == channel.lease => {
                    let kept = Kept {
                        inherited,
                        confirm_sequence: numbered_at_grant + confirm_publishes,
                    };
                    self.park(channel.id, kept, false);
                }
                Slot::BrokerClosed { lease } if *lease == channel.lease => {
                    self.acknowledge_broker_close(channel.id)
                }
                _ => {}
            },
            Command::Hide(ch, reply) => {
                if let Some(Slot::Open { hidden, .. }) = self.leased(ch) {
                    hidden.push_back(reply);
                }
            }
            Command::WantConfirms {
                channel,
                published_before,
            } => {
                if let Some(Slot::Open {
                    confirms,
                    numbered_at_grant,
                    ..
                }) = self.leased(channel)
                {
                    // The client's publishes before its Confirm.Select were
                    // numbered too (confirm mode is sticky); its own tags
                    // start after them.
                    *confirms = ConfirmTags {
                        base: *numbered_at_grant + published_before,
                        wanted: true,
                    };
                }
            }
            Command::ProbeQueue { queue, reply } => {
                let Some(id) = self.free.pop() else {
                    let _ = reply.send(true);
                    return;
                };
                self.inner
                    .occupancy
                    .lock()
                    .expect("occupancy lock")
                    .channels += 1;
                self.slots[id as usize] = Slot::Probe(Some(reply));
                self.send_upstream(method::channel_open(id));
                self.send_upstream(method::queue_declare_passive(id, &queue));
            }
            Command::Shutdown => unreachable!("handled by the loop"),
        }
    }

    /// The open slot for this lease of the channel, if it still is one.
    fn leased(&mut self, ch: UpstreamChannel) -> Option<&mut Slot> {
        let slot = self.slots.get_mut(ch.id as usize)?;
        matches!(slot, Slot::Open { lease, .. } if *lease == ch.lease).then_some(slot)
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
        if request.beyond_guarantee && !self.has_unreserved() {
            // Dropping the reply refuses: every free channel is promised to
            // another client.
            return;
        }
        if !request.fresh && self.all_fenced() {
            self.waiting_for_kept.push_back(request);
            return;
        }
        let ChannelRequest {
            link,
            client_channel,
            fresh,
            reply,
            ..
        } = request;
        let reusable = if fresh { None } else { self.kept.pop() };
        let (id, kept) = match reusable {
            Some(id) => match std::mem::replace(&mut self.slots[id as usize], Slot::Free) {
                Slot::Kept(kept) => {
                    self.parked -= 1;
                    (id, Some(kept))
                }
                other => unreachable!("kept list holds a {other:?} slot"),
            },
            None => match self.free.pop() {
                Some(id) => (id, None),
                None => return,
            },
        };
        let lease = self.next_lease;
        self.next_lease += 1;
        let channel = UpstreamChannel { id, lease };
        let inherited = kept.map(|k| k.inherited);
        let delivered = Arc::new(Delivered::default());
        let grant = Grant {
            channel,
            inherited,
            delivered: delivered.clone(),
        };
        if reply.send(grant).is_err() {
            match kept {
                Some(kept) => {
                    self.slots[id as usize] = Slot::Kept(kept);
                    self.kept.push(id);
                    self.parked += 1;
                }
                None => self.free.push(id),
            }
            return;
        }
        match kept {
            Some(_) => self.record.reuse_hits.add(1),
            None => self.record.reuse_misses.add(1),
        }
        self.slots[id as usize] = Slot::Open {
            link,
            client_channel,
            lease,
            closing: false,
            confirms: ConfirmTags {
                base: kept.map_or(0, |k| k.confirm_sequence),
                wanted: false,
            },
            numbered_at_grant: kept.map_or(0, |k| k.confirm_sequence),
            // A new channel's Channel.Open is pipelined: the client already
            // got its Open-Ok from warren.
            hidden: match kept {
                Some(_) => VecDeque::new(),
                None => VecDeque::from([ids::CHANNEL_OPEN_OK]),
            },
            delivered,
        };
        self.inner
            .occupancy
            .lock()
            .expect("occupancy lock")
            .channels += 1;
        self.prewarm();
    }

    /// Parks a clean channel for reuse behind a fence, or closes it when
    /// enough are parked. `opening` means the channel is not open upstream
    /// yet (pre-warming): its Channel.Open goes first.
    fn park(&mut self, id: u16, kept: Kept, opening: bool) {
        if self.parked >= self.settings.kept_channels {
            self.slots[id as usize] = Slot::Abandoned;
            self.send_close(id, "channel not needed");
            return;
        }
        if !opening {
            let mut o = self.inner.occupancy.lock().expect("occupancy lock");
            o.channels = o.channels.saturating_sub(1);
        }
        self.slots[id as usize] = Slot::Draining(kept);
        self.parked += 1;
        if opening {
            self.send_upstream(method::channel_open(id));
        }
        self.send_upstream(method::channel_flow(id, true));
    }

    fn send_close(&self, id: u16, reason: &str) {
        let close = Close::new(REPLY_SUCCESS, reason);
        self.send_upstream(close.channel_frame(id));
    }

    /// The broker closed a channel whose client let go of it before reading
    /// the Close: answer for the client and free the id. The session sent
    /// all its frames for the channel before the command that led here, so
    /// this Close-Ok follows them upstream.
    fn acknowledge_broker_close(&mut self, id: u16) {
        self.send_upstream(method::channel_close_ok(id));
        self.free_id(id);
    }

    /// Opens clean channels until `--prewarm-channels` are parked.
    fn prewarm(&mut self) {
        while self.parked
            < self
                .settings
                .prewarm_channels
                .min(self.settings.kept_channels)
        {
            let Some(id) = self.free.pop() else { return };
            self.park(id, Kept::default(), true);
        }
    }

    fn free_id(&mut self, id: u16) {
        self.slots[id as usize] = Slot::Free;
        self.free.push(id);
        let mut o = self.inner.occupancy.lock().expect("occupancy lock");
        o.channels = o.channels.saturating_sub(1);
    }

    /// Frees a parked (kept or draining) channel the broker closed.
    fn unpark(&mut self, id: u16) {
        self.kept.retain(|k| *k != id);
        self.parked -= 1;
        self.slots[id as usize] = Slot::Free;
        self.free.push(id);
        self.serve_waiting();
    }

    /// Grants waiting requests while a kept channel (or room to park) is
    /// there for them.
    fn serve_waiting(&mut self) {
        while !self.all_fenced() {
            let Some(request) = self.waiting_for_kept.pop_front() else {
                return;
            };
            self.grant(request);
        }
    }

    /// No kept channel is ready and the park is full: every parked channel
    /// is behind its fence.
    fn all_fenced(&self) -> bool {
        self.kept.is_empty()
            && self.settings.kept_channels > 0
            && self.parked >= self.settings.kept_channels
    }

    /// Channels by state, for the admin API.
    fn channel_counts(&self) -> ChannelCounts {
        let mut counts = ChannelCounts::default();
        for slot in &self.slots {
            match slot {
                Slot::Free => {}
                Slot::Open { closing: false, .. } => counts.open += 1,
                Slot::Open { closing: true, .. }
                | Slot::Abandoned
                | Slot::BrokerClosed { .. }
                | Slot::Probe(_) => counts.closing += 1,
                Slot::Draining(_) | Slot::Kept(_) => counts.kept += 1,
            }
        }
        counts
    }

    /// Routes one broker frame. Returns why the connection must end, if so.
    fn on_frame(&mut self, frame: Frame) -> Option<End> {
        self.record.frames_in.add(1);
        self.record.bytes_in.add(frame.len() as u64);
        let id = frame.channel();
        if id == 0 {
            return self.on_connection_frame(frame);
        }
        let Some(slot) = self.slots.get_mut(id as usize) else {
            tracing::warn!(
                upstream = self.inner.id,
                channel = id,
                "broker used a channel beyond channel_max"
            );
            return None;
        };
        let method_id = frame.method_id();
        match slot {
            Slot::Open {
                link,
                client_channel,
                lease,
                closing,
                confirms,
                hidden,
                delivered,
                ..
            } => match method_id {
                Some(ids::CHANNEL_CLOSE_OK) if *closing => {
                    link.notify(ClientEvent::ChannelCloseOk {
                        channel: *client_channel,
                    });
                    self.free_id(id);
                }
                Some(ids::CHANNEL_CLOSE_OK) => {
                    tracing::debug!(
                        upstream = self.inner.id,
                        channel = id,
                        "unexpected channel.close-ok dropped"
                    );
                }
                Some(ids::CHANNEL_CLOSE) if *closing => {
                    self.send_upstream(method::channel_close_ok(id));
                }
                Some(ids::CHANNEL_CLOSE) => {
                    let code = Close::decode(frame.method_args()).map_or(0, |c| c.code);
                    let mut close = frame;
                    close.set_channel(*client_channel);
                    let event = ClientEvent::ChannelClosedByBroker {
                        channel: *client_channel,
                        upstream: UpstreamChannel { id, lease: *lease },
                        close: close.into_bytes(),
                        code,
                    };
                    if link.notify(event) {
                        *slot = Slot::BrokerClosed { lease: *lease };
                    } else {
                        self.send_upstream(method::channel_close_ok(id));
                        self.free_id(id);
                    }
                }
                Some(reply) if hidden.front() == Some(&reply) => {
                    hidden.pop_front();
                }
                Some(ids::BASIC_ACK | ids::BASIC_NACK) => {
                    let mut ack = frame;
                    match method::ack_tag(&ack).and_then(|tag| confirms.to_client(tag)) {
                        Some(tag) => {
                            delivered.confirmed.fetch_max(tag, Ordering::Release);
                            if confirms.base > 0 {
                                method::set_ack_tag(&mut ack, tag);
                            }
                            link.push(ack.into_bytes_for(*client_channel));
                        }
                        None => self.record.stale_dropped.add(1),
                    }
                }
                Some(ids::BASIC_CANCEL) if !link.capabilities.cancel_notify => {
                    // The broker cancelled a consumer (its queue is gone); a
                    // client without consumer_cancel_notify is not told.
                }
                Some(ids::QUEUE_DELETE_OK) => {
                    delivered.replies.fetch_add(1, Ordering::Release);
                    link.notify(ClientEvent::DeleteOk {
                        channel: *client_channel,
                    });
                    link.push(frame.into_bytes_for(*client_channel));
                }
                Some(ids::QUEUE_DECLARE_OK) => {
                    delivered.replies.fetch_add(1, Ordering::Release);
                    if let Ok(queue) = method::decode_declare_ok_queue(frame.method_args()) {
                        link.notify(ClientEvent::DeclareOk {
                            channel: *client_channel,
                            queue,
                        });
                    }
                    link.push(frame.into_bytes_for(*client_channel));
                }
                _ => {
                    match method_id {
                        Some(ids::BASIC_DELIVER | ids::BASIC_GET_OK) => {
                            self.record.delivered.add(1)
                        }
                        Some(id) if method::is_reply(id) => {
                            delivered.replies.fetch_add(1, Ordering::Release);
                        }
                        _ => {}
                    }
                    frame::push_for_peer(frame, *client_channel, link.frame_max, &mut self.scratch);
                    for piece in self.scratch.drain(..) {
                        link.push(piece);
                    }
                }
            },
            Slot::Abandoned => match method_id {
                Some(ids::CHANNEL_CLOSE_OK) => self.free_id(id),
                Some(ids::CHANNEL_CLOSE) => self.send_upstream(method::channel_close_ok(id)),
                _ => {}
            },
            Slot::Probe(reply) => match method_id {
                Some(ids::QUEUE_DECLARE_OK) => {
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(true);
                    }
                    *slot = Slot::Abandoned;
                    self.send_close(id, "probe done");
                }
                Some(ids::CHANNEL_CLOSE) => {
                    let code = Close::decode(frame.method_args()).map_or(0, |c| c.code);
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(code != NOT_FOUND);
                    }
                    self.send_upstream(method::channel_close_ok(id));
                    self.free_id(id);
                }
                _ => {}
            },
            Slot::BrokerClosed { .. } => {}
            Slot::Draining(kept) => match method_id {
                Some(ids::CHANNEL_FLOW_OK) => {
                    let kept = *kept;
                    *slot = Slot::Kept(kept);
                    self.kept.push(id);
                    self.serve_waiting();
                }
                Some(ids::CHANNEL_CLOSE) => {
                    self.send_upstream(method::channel_close_ok(id));
                    self.unpark(id);
                }
                Some(ids::CHANNEL_OPEN_OK) => {}
                _ => self.record.stale_dropped.add(1),
            },
            Slot::Kept(_) => match method_id {
                Some(ids::CHANNEL_CLOSE) => {
                    self.send_upstream(method::channel_close_ok(id));
                    self.unpark(id);
                }
                _ => self.record.stale_dropped.add(1),
            },
            Slot::Free => {
                tracing::debug!(
                    upstream = self.inner.id,
                    channel = id,
                    "frame for a free channel dropped"
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
