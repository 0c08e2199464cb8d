//! One client connection from accept to close.
//!
//! The session task owns the socket's read half and the client's channel
//! table (client channel id → upstream channel). For each frame the client
//! sends it looks up the channel, rewrites two bytes and pushes the frame to
//! the pinned upstream connection. Frames from the broker do not pass
//! through here: the upstream router writes them to this client's write
//! queue directly; only channel lifecycle events come back to the session.

use crate::protocol::ids::{self, MethodId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::frame_check;
use super::handshake::{self, HandshakeError, Hello};
use super::pending::PendingHandshake;
use super::{Admission, Context};
use crate::channel::{ChannelState, Delivered, Step, UpstreamChannel, Usage};
use crate::content::{ContentAssembler, ContentVerdict, PublishBudget};
use crate::exclusive::{Access, Declared};
use crate::link::{ClientEvent, ClientId, ClientLink};
use crate::logging::RateLimit;
use crate::net::{Accepted, Peer, ReadHalf, WriteHalf};
use crate::outbox::{outbox, Outbox};
use crate::pool::PoolRef;
use crate::protocol::frame::{self, Frame, FrameError, FrameReader, FRAME_HEARTBEAT, FRAME_METHOD};
use crate::protocol::limits::{self, RABBITMQ_FRAME_MAX};
use crate::protocol::method::{self, Close, Tune};
use crate::protocol::reply::{
    self, CHANNEL_ERROR, CONNECTION_FORCED, FRAME_ERROR, NOT_ALLOWED, RESOURCE_LOCKED,
    UNEXPECTED_FRAME,
};
use crate::protocol::spec::MethodSpec;
use crate::stats::{
    ClientRecord, CloseScope, DisconnectReason, Events, HandshakeOutcome, Listed, PoolLabel,
};
use crate::untrusted::cut;
use crate::upstream::{ConnectError, Grant, Upstream};
use crate::writer;

/// Bytes queued for one client before it counts as too slow.
const CLIENT_QUEUE_BYTES: usize = 16 << 20;
/// Publishes up to this size (all frames) are copied into one buffer with
/// the other small publishes read in the same go: copying 16 KiB costs less
/// than the hand-offs it saves.
const SMALL_MESSAGE: usize = 16 * 1024;
/// Allocation size for small messages' copies (see `Session::small_messages`).
const SMALL_MESSAGES_CHUNK: usize = 64 * 1024;
/// Errors many clients can hit at once (the broker is down) are logged at
/// most this often, with a count of those held back.
const REPEATED_ERRORS_EVERY: Duration = Duration::from_secs(1);
/// How long a write to a client without heartbeats may make no progress
/// before the client counts as gone.
const WRITE_STALL_WITHOUT_HEARTBEATS: Duration = Duration::from_secs(60);
/// How long warren waits for a client's Close-Ok after closing it.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(3);

/// Hashes channel ids with one multiplication (Fibonacci hashing): the map
/// is looked up for every frame, and SipHash's DoS resistance buys nothing
/// for keys a client can only pick from 1..=channel_max of its own table.
#[derive(Default, Clone, Copy)]
struct ChannelIds;

impl std::hash::BuildHasher for ChannelIds {
    type Hasher = ChannelIdHasher;
    fn build_hasher(&self) -> ChannelIdHasher {
        ChannelIdHasher(0)
    }
}

struct ChannelIdHasher(u64);

impl std::hash::Hasher for ChannelIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// How the main loop ended.
enum Exit {
    /// The client sent Connection.Close.
    ClientClosed,
    /// warren closes the client with this.
    Close(Close),
    /// The connection is already gone or unusable; nothing to say.
    Gone(String),
    /// The client did not read what was queued for it in time.
    TooSlow,
}

impl Exit {
    fn reason(&self) -> DisconnectReason {
        match self {
            Exit::ClientClosed => DisconnectReason::client_closed,
            Exit::Close(_) => DisconnectReason::closed_by_warren,
            Exit::Gone(_) => DisconnectReason::connection_lost,
            Exit::TooSlow => DisconnectReason::slow_client,
        }
    }
}

/// A client past the handshake, pinned to an upstream connection.
struct Admitted<'a> {
    hello: Hello,
    tune: Tune,
    vhost: String,
    upstream: Upstream,
    pool: PoolRef,
    /// Held for the whole session.
    place: Admission<'a>,
}

/// How a handshake step failed.
enum Refusal {
    /// Tell the client this, then close.
    Close(Close),
    /// Nothing useful can be said: just drop the connection.
    Drop,
}

/// Serves one accepted connection until it ends.
pub async fn serve(accepted: Accepted, pending: PendingHandshake, ctx: Arc<Context>) {
    let id = ctx.next_client_id();
    let started = Instant::now();
    let peer = accepted.peer();
    let events = &ctx.stats.events;
    events.accepted.inc();
    tracing::debug!(client = id, %peer, "client accepted");
    // One deadline for the whole handshake, TLS included: a client gets
    // the limit once, not once per step.
    let limit = ctx.config().client_handshake_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let (read_half, mut write_half) = match tokio::time::timeout_at(deadline, accepted.open()).await
    {
        Ok(Ok(halves)) => halves,
        Ok(Err(e)) => {
            events.handshake(HandshakeOutcome::tls_failed);
            static TLS_FAILED: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
            if let Some(suppressed) = TLS_FAILED.check() {
                tracing::warn!(client = id, %peer, error = %e, suppressed, "client TLS handshake failed");
            }
            return;
        }
        Err(_) => {
            handshake_timed_out(id, peer, limit, events);
            return;
        }
    };
    // Until Tune-Ok, frames are held to what RabbitMQ reads before tuning,
    // which bounds Start-Ok (user, password, client properties) too.
    let mut reader = FrameReader::new(read_half, limits::PRE_TUNE_FRAME_MAX);
    let admitted = match admit(id, peer, deadline, &mut reader, &mut write_half, &ctx).await {
        Ok(admitted) => admitted,
        Err(Refusal::Close(close)) => {
            events.close(CloseScope::connection, close.code);
            close_during_handshake(&mut reader, &mut write_half, &close).await;
            return;
        }
        Err(Refusal::Drop) => return,
    };
    drop(pending);
    events.handshake(HandshakeOutcome::ok);
    events
        .handshake_seconds
        .observe(started.elapsed().as_secs_f64());
    let Admitted {
        hello,
        tune,
        vhost,
        upstream,
        pool,
        place,
    } = admitted;
    let user = &hello.credentials.user;
    let (shown_user, shown_vhost) = (cut(user), cut(&vhost));
    tracing::info!(
        client = id,
        %peer,
        user = shown_user,
        vhost = shown_vhost,
        connection_name = cut(hello.connection_name.as_deref().unwrap_or("")),
        upstream = upstream.id(),
        "client connected"
    );

    let pool_label = PoolLabel::new(&vhost, user);
    let record = ctx.stats.client_connected(ClientRecord::new(
        id,
        peer,
        pool_label,
        hello.connection_name.as_deref(),
        started,
    ));
    record.upstream.set(upstream.id());
    let (outbox, queue) = outbox(CLIENT_QUEUE_BYTES);
    let heartbeat = (tune.heartbeat > 0).then(|| Duration::from_secs(tune.heartbeat.into()));
    // A client whose socket takes nothing for two heartbeat intervals (or a
    // minute without heartbeats) is gone, whether or not it still sends.
    let stall_limit = heartbeat.map_or(WRITE_STALL_WITHOUT_HEARTBEATS, |hb| hb * 2);
    let writer_task = tokio::spawn(writer::run(
        write_half,
        queue,
        heartbeat.map(|hb| hb / 2),
        Some(stall_limit),
        record.bytes_out.clone(),
    ));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let link = Arc::new(ClientLink::new(
        id,
        outbox.clone(),
        events_tx,
        tune.frame_max as usize,
        hello.capabilities,
    ));
    upstream.attach(link.clone());

    let mut session = Session {
        id,
        ctx: ctx.clone(),
        pool,
        vhost: vhost.clone(),
        upstream,
        upstream_alive: true,
        link,
        outbox,
        channels: HashMap::default(),
        channel_max: tune.channel_max,
        opened_a_channel: false,
        declared_without_wait: Vec::new(),
        reservation: 1,
        scratch: Vec::new(),
        small_messages: BytesMut::new(),
        publish_budget: PublishBudget::new(ctx.held_bytes.clone()),
        holding: Vec::new(),
        exchange_types: ctx.config().exchange_types.clone(),
        record,
    };
    let exit = session.run(&mut reader, &mut events, heartbeat, &ctx).await;
    // Given back before the client hears its Close-Ok, so a client that
    // reconnects at once finds its place free.
    drop(place);
    let reason = match &exit {
        Exit::ClientClosed => "client closed the connection".to_string(),
        Exit::Close(close) => format!("closed by warren: {} {}", close.code, close.text),
        Exit::Gone(why) => why.clone(),
        Exit::TooSlow => format!(
            "client too slow: more than {} MiB waiting for it",
            CLIENT_QUEUE_BYTES >> 20
        ),
    };
    let too_slow = matches!(exit, Exit::TooSlow);
    ctx.stats.events.disconnect(exit.reason());
    session.finish(exit, &mut reader, &mut events, &ctx).await;
    if too_slow {
        // warren's decision, not the client's: worth an operator's look.
        tracing::warn!(client = id, %peer, user = shown_user, vhost = shown_vhost, reason = cut(&reason), "client disconnected");
    } else {
        tracing::info!(client = id, %peer, user = shown_user, vhost = shown_vhost, reason = cut(&reason), "client disconnected");
    }
    let Session {
        upstream,
        link,
        outbox,
        record,
        reservation,
        ..
    } = session;
    upstream.unpin(id, reservation);
    drop((link, outbox));
    let mut writer_task = writer_task;
    if tokio::time::timeout(CLOSE_OK_WAIT, &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
        let _ = writer_task.await;
    }
    // Unlisted only now, with every byte the writer sent counted.
    drop(record);
}

/// Runs the handshake in the broker's order: the login is checked (by the
/// broker) right after Start-Ok, the vhost after Connection.Open, and
/// Open-Ok is sent only once an upstream connection for this client exists.
async fn admit<'a>(
    id: ClientId,
    peer: Peer,
    deadline: tokio::time::Instant,
    reader: &mut FrameReader<ReadHalf>,
    writer: &mut WriteHalf,
    ctx: &'a Context,
) -> Result<Admitted<'a>, Refusal> {
    let config = ctx.config();
    let limit = config.client_handshake_timeout;
    let events = &ctx.stats.events;
    let hello = client_step(
        id,
        peer,
        limit,
        events,
        tokio::time::timeout_at(deadline, handshake::greet(reader, writer)).await,
    )?;
    let user = cut(&hello.credentials.user);
    // A client over --max-clients costs no login at the broker: it is
    // refused at Connection.Open, where RabbitMQ refuses its own limits.
    let place = ctx.admit_client(config.max_clients);
    let admission = match place {
        Some(_) => Some(
            ctx.pools
                .authenticate(&hello.credentials)
                .await
                .map_err(|e| refusal(id, peer, &hello, None, events, e))?,
        ),
        None => None,
    };

    let offer = Tune {
        channel_max: config.channel_max.min(config.max_upstream_channels),
        // RabbitMQ's default, or the broker's own if smaller, so every client
        // frame can be forwarded as it is (bodies for the client are split
        // to its size).
        frame_max: RABBITMQ_FRAME_MAX.min(ctx.pools.broker_frame_max()),
        heartbeat: config.heartbeat,
    };
    let (tune, vhost) = client_step(
        id,
        peer,
        limit,
        events,
        tokio::time::timeout_at(deadline, handshake::tune_and_open(reader, writer, offer)).await,
    )?;
    let (Some(place), Some(admission)) = (place, admission) else {
        events.handshake(HandshakeOutcome::over_limit);
        static OVER_LIMIT: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
        if let Some(suppressed) = OVER_LIMIT.check() {
            tracing::warn!(client = id, %peer, user, vhost = cut(&vhost), limit = config.max_clients, suppressed, "client refused: --max-clients reached");
        }
        return Err(Refusal::Close(reply::close(
            NOT_ALLOWED,
            format!(
                "warren: client connection limit ({}) is reached",
                config.max_clients
            ),
        )));
    };
    let (upstream, pool) = ctx
        .pools
        .checkout(&hello.credentials, &vhost, admission)
        .await
        .map_err(|e| refusal(id, peer, &hello, Some(&vhost), events, e))?;
    if writer
        .write_all(&method::connection_open_ok())
        .await
        .is_err()
    {
        upstream.unpin(id, 1);
        events.handshake(HandshakeOutcome::abandoned);
        tracing::info!(client = id, %peer, user, "client left before open-ok");
        return Err(Refusal::Drop);
    }
    Ok(Admitted {
        hello,
        tune,
        vhost,
        upstream,
        pool,
        place,
    })
}

/// Turns a failed or timed-out client handshake step into a refusal.
fn client_step<T>(
    id: ClientId,
    peer: Peer,
    limit: Duration,
    events: &Events,
    result: Result<Result<T, HandshakeError>, tokio::time::error::Elapsed>,
) -> Result<T, Refusal> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(HandshakeError::Refused(close))) => {
            events.handshake(HandshakeOutcome::invalid);
            tracing::warn!(client = id, %peer, code = close.code, text = cut(&close.text), "client handshake refused");
            Err(Refusal::Close(close))
        }
        Ok(Err(HandshakeError::Frame(e @ (FrameError::Closed | FrameError::Io(_))))) => {
            events.handshake(HandshakeOutcome::abandoned);
            tracing::info!(client = id, %peer, error = %e, "client left during the handshake");
            Err(Refusal::Drop)
        }
        Ok(Err(e)) => {
            // An oversized or broken frame: RabbitMQ drops such a socket
            // without a word, and so does warren.
            events.handshake(HandshakeOutcome::invalid);
            tracing::warn!(client = id, %peer, error = %e, "client handshake refused");
            Err(Refusal::Drop)
        }
        Err(_) => {
            handshake_timed_out(id, peer, limit, events);
            Err(Refusal::Drop)
        }
    }
}

fn handshake_timed_out(id: ClientId, peer: Peer, limit: Duration, events: &Events) {
    events.handshake(HandshakeOutcome::timeout);
    static TIMED_OUT: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
    if let Some(suppressed) = TIMED_OUT.check() {
        tracing::warn!(client = id, %peer, timeout = ?limit, suppressed, "client handshake timed out");
    }
}

/// Turns an upstream failure during the handshake into what the client
/// hears: the broker's own refusal (403, 530, ...), or 320 when the broker
/// cannot be reached.
fn refusal(
    id: ClientId,
    peer: Peer,
    hello: &Hello,
    vhost: Option<&str>,
    events: &Events,
    error: ConnectError,
) -> Refusal {
    let user = cut(&hello.credentials.user);
    let vhost = cut(vhost.unwrap_or(""));
    match error {
        ConnectError::Refused(close) => {
            events.handshake(if close.code == 403 {
                HandshakeOutcome::auth_failed
            } else {
                HandshakeOutcome::refused
            });
            tracing::warn!(client = id, %peer, user, vhost, code = close.code, text = cut(&close.text), "broker refused the client");
            if close.code == 403 && !hello.wants_auth_failure_close {
                Refusal::Drop
            } else {
                Refusal::Close(close)
            }
        }
        other => {
            events.handshake(HandshakeOutcome::broker_unreachable);
            static UNREACHABLE: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
            if let Some(suppressed) = UNREACHABLE.check() {
                let error = other.to_string();
                tracing::error!(client = id, %peer, user, vhost, error = cut(&error), suppressed, "no upstream connection for the client");
            }
            Refusal::Close(reply::close(
                CONNECTION_FORCED,
                format!("warren cannot reach the broker: {other}"),
            ))
        }
    }
}

async fn close_during_handshake(
    reader: &mut FrameReader<ReadHalf>,
    writer: &mut WriteHalf,
    close: &Close,
) {
    if writer.write_all(&close.connection_frame()).await.is_ok() {
        wait_for_close_ok(reader, CLOSE_OK_WAIT).await;
    }
    let _ = writer.shutdown().await;
}

/// Reads and discards frames until Close-Ok, EOF or the deadline.
async fn wait_for_close_ok(reader: &mut FrameReader<ReadHalf>, limit: Duration) {
    let wait = async {
        while let Ok(frame) = reader.read_frame().await {
            if frame.method_id() == Some(ids::CONNECTION_CLOSE_OK) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(limit, wait).await;
}

struct Session {
    id: ClientId,
    ctx: Arc<Context>,
    pool: PoolRef,
    vhost: String,
    upstream: Upstream,
    upstream_alive: bool,
    link: Arc<ClientLink>,
    outbox: Outbox,
    channels: HashMap<u16, ChannelState, ChannelIds>,
    channel_max: u16,
    /// Once it has, the client stays on its upstream connection: it may own
    /// exclusive queues or consumers there even with no channel open.
    opened_a_channel: bool,
    /// Exclusive queues declared with no-wait, by the client channel that
    /// declared them: nothing says when the broker has made such a queue,
    /// so at exit it is deleted on that channel, after the declare.
    declared_without_wait: Vec<(String, u16)>,
    /// Channels its upstream connection keeps for this client (see
    /// `Upstream::reservation`), as last told to it.
    reservation: usize,
    scratch: Vec<Bytes>,
    /// Whole small publishes not yet queued upstream. Those read from the
    /// socket in one go are queued together (one hand-off to the writer
    /// instead of one each); anything else sent upstream, and every event,
    /// goes after them.
    small_messages: BytesMut,
    /// This client's share of the bytes held in partly received publishes.
    publish_budget: Arc<PublishBudget>,
    /// Channels that held a frame since the last `settle_held`.
    holding: Vec<u16>,
    /// The broker's plugin exchange types, as configured when the client came.
    exchange_types: Vec<String>,
    record: Listed<ClientRecord>,
}

impl Session {
    async fn run(
        &mut self,
        reader: &mut FrameReader<ReadHalf>,
        events: &mut mpsc::UnboundedReceiver<ClientEvent>,
        heartbeat: Option<Duration>,
        ctx: &Context,
    ) -> Exit {
        // Liveness is counted in quarter intervals rather than timed per
        // frame (a clock read per frame is measurable): a client is gone once
        // more than eight quarters, two intervals, pass without a frame.
        let mut liveness =
            tokio::time::interval(heartbeat.map_or(Duration::from_secs(3600), |hb| hb / 4));
        let mut quiet_quarters = 0u32;
        // Made once: polling a fresh `cancelled()` per frame would register
        // a waker with the token each time.
        let force_close = ctx.force_close.cancelled();
        tokio::pin!(force_close);
        // The client's writer stops when its socket fails or stalls.
        let outbox = self.outbox.clone();
        let writer_stopped = outbox.closed();
        tokio::pin!(writer_stopped);
        loop {
            let step = tokio::select! {
                biased;
                Some(event) = events.recv() => {
                    self.flush_small_messages().await;
                    self.on_event(event).await
                }
                read = reader.read_frame() => match read {
                    Ok(frame) => {
                        quiet_quarters = 0;
                        self.record.frames_in.add(1);
                        self.record.bytes_in.add(frame.len() as u64);
                        if !frame.is_publish_part() {
                            self.flush_small_messages().await;
                        }
                        let step = self.on_client_frame(frame).await;
                        // Small publishes read in one go leave as one buffer;
                        // what stays held waits for the next read.
                        if step.is_none() && !reader.has_buffered_frame() {
                            self.flush_small_messages().await;
                            self.settle_held()
                        } else {
                            step
                        }
                    }
                    Err(FrameError::Closed) => Some(Exit::Gone("client dropped the connection".into())),
                    Err(FrameError::Io(e)) => Some(Exit::Gone(format!("client connection failed: {e}"))),
                    Err(e) => Some(Exit::Close(reply::close(FRAME_ERROR, e))),
                },
                _ = liveness.tick() => {
                    quiet_quarters += 1;
                    match heartbeat {
                        Some(hb) if quiet_quarters > 8 => Some(Exit::Gone(format!(
                            "missed heartbeats from client, timeout: {}s",
                            hb.as_secs()
                        ))),
                        _ => None,
                    }
                }
                _ = &mut writer_stopped => {
                    Some(Exit::Gone("the client stopped reading (nothing written for too long) or its connection failed".into()))
                }
                _ = &mut force_close => {
                    Some(Exit::Close(reply::close(CONNECTION_FORCED, "warren is shutting down")))
                }
            };
            self.record.channels.set(self.channels.len() as u64);
            self.update_reservation();
            if let Some(exit) = step {
                return exit;
            }
        }
    }

    /// Closes what is left: upstream channels go back (closed so the broker
    /// requeues unacknowledged deliveries), the client hears why.
    async fn finish(
        &mut self,
        exit: Exit,
        reader: &mut FrameReader<ReadHalf>,
        events: &mut mpsc::UnboundedReceiver<ClientEvent>,
        ctx: &Context,
    ) {
        self.flush_small_messages().await;
        self.await_exclusive_declares(events, CLOSE_OK_WAIT).await;
        self.release_channels().await;
        self.record.channels.set(0);
        match exit {
            Exit::ClientClosed => {
                let _ = self.outbox.send_now(method::connection_close_ok());
            }
            Exit::Close(close) => {
                ctx.stats.events.close(CloseScope::connection, close.code);
                tracing::warn!(
                    client = self.id,
                    code = close.code,
                    text = cut(&close.text),
                    "closing client connection"
                );
                if self.outbox.send_now(close.connection_frame()).is_ok() {
                    let wait = if ctx.force_close.is_cancelled() {
                        ctx.config().term_client_close_timeout
                    } else {
                        CLOSE_OK_WAIT
                    };
                    wait_for_close_ok(reader, wait).await;
                }
            }
            Exit::Gone(_) | Exit::TooSlow => {}
        }
    }

    /// Gives every upstream channel back: clean ones are kept for the next
    /// client, the others closed (the broker requeues their unacknowledged
    /// deliveries). Exclusive queues the client declared are deleted first,
    /// as the broker would when its connection closed.
    async fn release_channels(&mut self) {
        if !self.upstream_alive {
            self.channels.clear();
            return;
        }
        self.delete_exclusive_queues().await;
        for (_, state) in std::mem::take(&mut self.channels) {
            match state {
                ChannelState::Open {
                    upstream,
                    usage,
                    delivered,
                    ..
                } => {
                    self.give_back(upstream, usage, delivered.load());
                }
                ChannelState::ClosingByClient { upstream, .. } => self.upstream.abandon(upstream),
                ChannelState::ClosedByBroker | ChannelState::ClosedByProxy => {}
            }
        }
    }

    /// Keeps a clean upstream channel for reuse, or closes it.
    fn give_back(&mut self, upstream: UpstreamChannel, usage: Usage, delivered: (u64, u64)) {
        if !self.try_keep(upstream, &usage, delivered) {
            self.upstream.abandon(upstream);
        }
    }

    /// Hands a clean channel back for reuse; false if it must be closed.
    fn try_keep(
        &self,
        upstream: UpstreamChannel,
        usage: &Usage,
        (replies, confirmed): (u64, u64),
    ) -> bool {
        let why_not = match usage.dirty(replies, confirmed) {
            None if self.ctx.config().channel_reuse => {
                self.upstream
                    .keep(upstream, usage.inherited(), usage.confirm_publishes);
                return true;
            }
            None => "reuse is off",
            Some(dirty) => dirty,
        };
        tracing::debug!(
            client = self.id,
            upstream_channel = upstream.id,
            why_not,
            "upstream channel not reused"
        );
        false
    }

    /// Deletes the exclusive queues the client still owns, as the broker
    /// deletes a connection's when it closes. Each on a channel of its own,
    /// behind a check that the name is still that queue
    /// (`method::queue_redeclare_exclusive`): a queue that expired or was
    /// deleted and has been made again by someone else is left alone.
    ///
    /// The broker runs each channel's methods in order but different
    /// channels' side by side, so a queue declared with no-wait is deleted
    /// on the channel that declared it, if still open, after the declare.
    async fn delete_exclusive_queues(&mut self) {
        for (queue, declared) in self.upstream.leave_exclusive(self.id) {
            tracing::debug!(
                client = self.id,
                queue = cut(&queue),
                "deleting the client's exclusive queue"
            );
            let declaring = self
                .declared_without_wait
                .iter()
                .find(|(q, _)| *q == queue)
                .and_then(|(_, channel)| match self.channels.get(channel) {
                    Some(ChannelState::Open { upstream, .. }) => Some(*upstream),
                    _ => None,
                });
            let (channel, borrowed) = match declaring {
                Some(upstream) => (upstream, false),
                None => match self.take_upstream_channel(0, true, false).await {
                    Some(grant) => (grant.channel, true),
                    None => return,
                },
            };
            // A server-named queue needs no check, and RabbitMQ would refuse
            // one (403, reserved name): no client can make an amq.* queue,
            // so none can have replaced it.
            if !queue.starts_with("amq.") {
                self.upstream.hide_reply(channel, ids::QUEUE_DECLARE_OK);
                self.send_bytes(method::queue_redeclare_exclusive(
                    channel.id, &queue, &declared,
                ))
                .await;
            }
            self.send_bytes(method::queue_delete_nowait(channel.id, &queue))
                .await;
            if borrowed {
                self.upstream.abandon(channel);
            }
        }
    }

    /// Before cleaning up, lets exclusive declares the client sent but did
    /// not see answered come back (for at most `limit`): a server-named
    /// queue's name comes only with its Declare-Ok, and it must be deleted.
    async fn await_exclusive_declares(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<ClientEvent>,
        limit: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.upstream_alive && self.awaits_exclusive_declare() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => {
                    let _ = self.on_event(event).await;
                }
                _ => return,
            }
        }
    }

    /// An exclusive declare is still on its way: awaiting its Declare-Ok,
    /// or sent with no-wait on a channel now closing (its Close-Ok comes
    /// once the declare has run).
    fn awaits_exclusive_declare(&self) -> bool {
        self.channels.iter().any(|(number, state)| {
            let awaiting = state
                .usage()
                .is_some_and(|usage| usage.awaited_exclusive_declares().next().is_some());
            let closing = matches!(state, ChannelState::ClosingByClient { .. });
            awaiting || closing && self.declared_without_wait.iter().any(|(_, c)| c == number)
        })
    }

    async fn on_event(&mut self, event: ClientEvent) -> Option<Exit> {
        match event {
            ClientEvent::ChannelCloseOk { channel } => {
                if matches!(
                    self.channels.get(&channel),
                    Some(ChannelState::ClosingByClient { .. })
                ) {
                    self.channels.remove(&channel);
                    self.link.push(method::channel_close_ok(channel));
                }
                None
            }
            ClientEvent::ChannelClosedByBroker {
                channel,
                upstream,
                close,
                code,
            } => {
                let ours = match self.channels.get(&channel) {
                    Some(ChannelState::Open { upstream: u, .. }) => *u == upstream,
                    Some(ChannelState::ClosingByClient { upstream: u, .. }) => *u == upstream,
                    _ => false,
                };
                if !ours {
                    // Already given back (kept or abandoned): the router
                    // acknowledged the broker's Close itself.
                    return None;
                }
                self.withdraw_refused_declares(channel);
                // Acknowledge first, release second: the id must not be
                // handed out before our Close-Ok is queued ahead of any
                // Channel.Open that could reuse it.
                self.send_bytes(method::channel_close_ok(upstream.id)).await;
                self.upstream.release(upstream);
                if let Some(ChannelState::ClosingByClient { .. }) = self.channels.get(&channel) {
                    // The client's Close crossed the broker's: the channel
                    // is closed either way, and the client gets its Close-Ok.
                    self.channels.remove(&channel);
                    self.link.push(method::channel_close_ok(channel));
                } else {
                    self.channels.insert(channel, ChannelState::ClosedByBroker);
                    self.ctx.stats.events.close(CloseScope::channel, code);
                    self.link.push(close);
                }
                None
            }
            ClientEvent::DeclareOk { channel, queue } => {
                let usage = self.channels.get_mut(&channel)?.usage_mut()?;
                // Confirms a named claim; a server-named queue is claimed
                // here, the first moment its name exists.
                if let Some(declare) = usage.on_declare_ok() {
                    self.upstream
                        .claim_exclusive(&queue, self.id, declare, Declared::Confirmed);
                }
                None
            }
            ClientEvent::DeleteOk { channel } => {
                let usage = self.channels.get_mut(&channel)?.usage_mut()?;
                if let Some(queue) = usage.on_delete_ok() {
                    self.upstream.release_exclusive(&queue, self.id);
                }
                None
            }
            ClientEvent::UpstreamClosed { upstream, close } if upstream == self.upstream.id() => {
                self.upstream_alive = false;
                Some(Exit::Close(close))
            }
            ClientEvent::UpstreamClosed { .. } => None,
            ClientEvent::Overflowed => Some(Exit::TooSlow),
        }
    }

    async fn on_client_frame(&mut self, frame: Frame) -> Option<Exit> {
        let channel = frame.channel();
        if channel == 0 {
            return self.on_connection_frame(frame);
        }
        let spec = match frame_check::check_frame(&frame) {
            Ok(spec) => spec,
            Err(close) => return Some(Exit::Close(close)),
        };
        // While a message is under way a method is an unexpected frame
        // (content.rs), whatever its arguments: RabbitMQ decodes them only
        // when the channel expects a method.
        let expects_method = match self.channels.get(&channel) {
            Some(ChannelState::Open { content, .. }) => content.is_idle(),
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
        let Some(state) = self.channels.get_mut(&channel) else {
            return Some(Exit::Close(match method_id {
                Some(id) => reply::close(CHANNEL_ERROR, "expected 'channel.open'").caused_by(id),
                None => reply::close(
                    UNEXPECTED_FRAME,
                    "expected method frame, got non method frame instead",
                ),
            }));
        };
        match state {
            ChannelState::Open {
                upstream, content, ..
            } => {
                let upstream = *upstream;
                let step = match method_id {
                    Some(ids::CHANNEL_CLOSE) if content.is_idle() => {
                        return self.client_closes_channel(channel).await;
                    }
                    Some(ids::CHANNEL_CLOSE_OK) if content.is_idle() => {
                        return Some(Exit::Close(reply::unimplemented_method(
                            ids::CHANNEL_CLOSE_OK,
                        )));
                    }
                    Some(id) if content.is_idle() => {
                        if let Some(close) = self
                            .check_queue_access(channel, id, frame.method_args())
                            .await
                        {
                            self.close_channel(channel, upstream, close.caused_by(id))
                                .await;
                            return None;
                        }
                        let Some(ChannelState::Open { usage, .. }) =
                            self.channels.get_mut(&channel)
                        else {
                            return None;
                        };
                        usage.on_method(id, frame.method_args())
                    }
                    _ => Step::Forward,
                };
                match step {
                    Step::Forward => {}
                    Step::AnswerQosOk => {
                        self.link.push(method::basic_qos_ok(channel));
                        return None;
                    }
                    Step::AnswerSelectOk => {
                        self.link.push(method::confirm_select_ok(channel));
                        return None;
                    }
                    Step::Swallow => return None,
                    Step::ForwardSelect => self.upstream.want_confirms(upstream, 0),
                    Step::SwitchToFreshChannel => {
                        return self.switch_to_fresh_channel(channel, frame, spec).await;
                    }
                    Step::AdoptConfirms {
                        reply,
                        published_before,
                    } => {
                        self.upstream.want_confirms(upstream, published_before);
                        if reply {
                            self.link.push(method::confirm_select_ok(channel));
                        }
                        return None;
                    }
                    Step::RestoreQosThenForward(qos) => {
                        self.upstream.hide_reply(upstream, ids::BASIC_QOS_OK);
                        self.send_bytes(qos.frame(upstream.id)).await;
                    }
                    Step::ChannelError(close) => {
                        self.close_channel(channel, upstream, close).await;
                        return None;
                    }
                    Step::ConnectionError(close) => return Some(Exit::Close(close)),
                }
                self.forward_content(channel, upstream, frame, spec).await
            }
            // The spec: after Close, everything but Close and Close-Ok is discarded.
            ChannelState::ClosingByClient { .. } => None,
            ChannelState::ClosedByBroker | ChannelState::ClosedByProxy => {
                match method_id {
                    Some(ids::CHANNEL_CLOSE_OK) => {
                        self.channels.remove(&channel);
                    }
                    Some(ids::CHANNEL_CLOSE) => {
                        // Both sides closed at once: the client's Close gets
                        // its Close-Ok, and the channel is done.
                        self.channels.remove(&channel);
                        self.link.push(method::channel_close_ok(channel));
                    }
                    _ => {}
                }
                None
            }
        }
    }

    /// Moves a client channel that has sent nothing upstream yet to a new
    /// upstream channel (the old one is clean and kept), then forwards the
    /// frame that asked for it there.
    async fn switch_to_fresh_channel(
        &mut self,
        channel: u16,
        frame: Frame,
        spec: Option<&'static MethodSpec>,
    ) -> Option<Exit> {
        let (upstream, usage, delivered) = self.take_open(channel)?;
        let mut moved = usage.moved();
        self.give_back(upstream, usage, delivered.load());
        // A replacement, not one more: the client's count stays.
        let Some(grant) = self.take_upstream_channel(channel, true, false).await else {
            return Some(self.no_free_channel(self.channels.len(), false));
        };
        if let Some(id) = frame.method_id() {
            moved.on_method(id, frame.method_args());
        }
        let upstream = grant.channel;
        self.insert_open(channel, grant, moved);
        self.forward_content(channel, upstream, frame, spec).await
    }

    /// Forwards a frame of an open channel, holding publishes until whole.
    /// `spec`: the frame's method, as the checks found it.
    async fn forward_content(
        &mut self,
        channel: u16,
        upstream: UpstreamChannel,
        frame: Frame,
        spec: Option<&'static MethodSpec>,
    ) -> Option<Exit> {
        let Some(ChannelState::Open { content, usage, .. }) = self.channels.get_mut(&channel)
        else {
            return None;
        };
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
                let size: usize = frames.iter().map(Frame::len).sum();
                let fits_upstream = frames.iter().all(|f| f.len() <= self.upstream.frame_max());
                if size <= SMALL_MESSAGE && fits_upstream {
                    if self.small_messages.capacity() - self.small_messages.len() < size {
                        self.small_messages.reserve(SMALL_MESSAGES_CHUNK);
                    }
                    for mut frame in frames {
                        frame.set_channel(upstream.id);
                        self.small_messages.extend_from_slice(frame.as_bytes());
                    }
                } else {
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

    /// The client closes a channel: a clean one is kept for the next client
    /// and its Close-Ok answered at once; any other is closed upstream and
    /// the broker's Close-Ok relayed.
    async fn client_closes_channel(&mut self, channel: u16) -> Option<Exit> {
        let (upstream, usage, delivered) = self.take_open(channel)?;
        if self.try_keep(upstream, &usage, delivered.load()) {
            self.link.push(method::channel_close_ok(channel));
        } else {
            self.upstream.closing(upstream);
            self.channels
                .insert(channel, ChannelState::ClosingByClient { upstream, usage });
        }
        None
    }

    /// RabbitMQ's refusal of another connection's exclusive queue.
    fn locked_queue(&self, queue: &str) -> Close {
        reply::close(
            RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{queue}' in vhost '{}'. \
                 It could be originally declared on another connection or the exclusive \
                 property value does not match that of the original declaration.",
                self.vhost
            ),
        )
    }

    /// Keeps exclusive queues to their client (see `crate::exclusive`): a
    /// request naming another client's is refused with 405 before it
    /// reaches the broker, an exclusive declare claims its name as it goes
    /// upstream, and an unconditional delete ends the claim (a conditional
    /// one only with its Delete-Ok). Another client's claim can outlive its
    /// queue (`x-expires`): before refusing, warren asks the broker whether
    /// the queue is still there.
    async fn check_queue_access(
        &mut self,
        channel: u16,
        id: MethodId,
        args: &[u8],
    ) -> Option<Close> {
        let queue = method::queue_needing_access(id, args)?;
        let declare = (id == ids::QUEUE_DECLARE)
            .then(|| method::QueueDeclare::decode(args).ok())
            .flatten()
            .filter(|declare| declare.exclusive && !declare.passive);
        let mut access = self.request_access(channel, &queue, args, declare.as_ref());
        if access == Access::Locked
            && self.upstream.exclusive_is_confirmed(&queue)
            && !self.upstream.queue_exists(&queue).await
        {
            self.upstream.forget_exclusive(&queue);
            access = self.request_access(channel, &queue, args, declare.as_ref());
        }
        if access == Access::Locked {
            return Some(self.locked_queue(&queue));
        }
        let unconditional_delete = (id == ids::QUEUE_DELETE)
            .then(|| method::QueueDelete::decode(args).ok())
            .flatten()
            .is_some_and(|delete| !delete.conditional);
        if unconditional_delete {
            self.upstream.release_exclusive(&queue, self.id);
            self.declared_without_wait.retain(|(q, _)| *q != queue);
        }
        None
    }

    /// Claims `queue` for an exclusive `declare` (its arguments `args`, on
    /// `channel`), or asks whether the client may use it.
    fn request_access(
        &mut self,
        channel: u16,
        queue: &str,
        args: &[u8],
        declare: Option<&method::QueueDeclare>,
    ) -> Access {
        let Some(declare) = declare else {
            return self.upstream.queue_access(queue, self.id);
        };
        let access = self.upstream.claim_exclusive(
            queue,
            self.id,
            Bytes::copy_from_slice(args),
            if declare.nowait {
                Declared::NoWait
            } else {
                Declared::Awaiting
            },
        );
        if access == Access::Granted && declare.nowait {
            self.declared_without_wait
                .push((queue.to_string(), channel));
        }
        access
    }

    /// The broker closed `channel`: exclusive declares still awaiting their
    /// Declare-Ok were refused (or never ran), so the claims they made end.
    fn withdraw_refused_declares(&self, channel: u16) {
        let Some(usage) = self.channels.get(&channel).and_then(ChannelState::usage) else {
            return;
        };
        for declare in usage.awaited_exclusive_declares() {
            if let Ok(declare) = method::QueueDeclare::decode(declare) {
                self.upstream.withdraw_exclusive(&declare.queue, self.id);
            }
        }
    }

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

    async fn open_channel(&mut self, channel: u16) -> Option<Exit> {
        // RabbitMQ limits how many channels are open, not their numbers.
        let opened = self.channels.len() - usize::from(self.channels.contains_key(&channel));
        if opened >= usize::from(self.channel_max) {
            return Some(Exit::Close(
                reply::close(
                    NOT_ALLOWED,
                    format!(
                        "number of channels opened ({opened}) has reached the negotiated \
                         channel_max ({})",
                        self.channel_max
                    ),
                )
                .caused_by(ids::CHANNEL_OPEN),
            ));
        }
        if matches!(
            self.channels.get(&channel),
            Some(ChannelState::Open { .. } | ChannelState::ClosingByClient { .. })
        ) {
            return Some(Exit::Close(
                reply::close(CHANNEL_ERROR, "second 'channel.open' seen")
                    .caused_by(ids::CHANNEL_OPEN),
            ));
        }
        if !self.opened_a_channel {
            self.move_if_crowded().await;
            self.opened_a_channel = true;
        }
        let beyond_guarantee = self.upstream.reservation(true, opened) == 0;
        let Some(grant) = self
            .take_upstream_channel(channel, false, beyond_guarantee)
            .await
        else {
            return Some(self.no_free_channel(opened, beyond_guarantee));
        };
        let usage = Usage::new(grant.inherited.unwrap_or_default());
        self.insert_open(channel, grant, usage);
        // Open-Ok right away, for a kept channel and a new one alike: a
        // Channel.Open on a free id of a healthy connection cannot fail at
        // channel level, and the client's next frames follow it upstream.
        self.link.push(method::channel_open_ok(channel));
        None
    }

    /// Takes an upstream channel for `client_channel`: a kept one, or a new
    /// id whose Channel.Open goes upstream now, pipelined (the router hides
    /// the broker's Open-Ok).
    async fn take_upstream_channel(
        &mut self,
        client_channel: u16,
        fresh: bool,
        beyond_guarantee: bool,
    ) -> Option<Grant> {
        let grant = self
            .upstream
            .open_channel(&self.link, client_channel, fresh, beyond_guarantee)
            .await?;
        if grant.inherited.is_none() {
            self.send_bytes(method::channel_open(grant.channel.id))
                .await;
        }
        Some(grant)
    }

    fn insert_open(&mut self, channel: u16, grant: Grant, usage: Usage) {
        self.channels.insert(
            channel,
            ChannelState::Open {
                upstream: grant.channel,
                content: ContentAssembler::default(),
                usage,
                delivered: grant.delivered,
            },
        );
    }

    /// Removes an open channel from the table, with what giving it back needs.
    fn take_open(&mut self, channel: u16) -> Option<(UpstreamChannel, Usage, Arc<Delivered>)> {
        match self.channels.remove(&channel)? {
            ChannelState::Open {
                upstream,
                usage,
                delivered,
                ..
            } => Some((upstream, usage, delivered)),
            other => {
                self.channels.insert(channel, other);
                None
            }
        }
    }

    /// Why a channel could not be had: the upstream connection is gone, or
    /// full, or what is free is kept for the other clients on it.
    fn no_free_channel(&self, opened: usize, beyond_guarantee: bool) -> Exit {
        if self.upstream.is_closed() {
            return Exit::Close(reply::close(
                CONNECTION_FORCED,
                "the upstream connection to the broker was lost",
            ));
        }
        let text = if beyond_guarantee {
            format!(
                "warren: this client has {opened} channels open; the free channels of its \
                 upstream connection are kept for the other clients on it (guaranteed-channels)"
            )
        } else {
            "the upstream connection has no free channel (max-upstream-channels)".to_string()
        };
        Exit::Close(reply::close(NOT_ALLOWED, text).caused_by(ids::CHANNEL_OPEN))
    }

    /// Tells the upstream connection what this client keeps reserved now.
    fn update_reservation(&mut self) {
        let wanted = self
            .upstream
            .reservation(self.opened_a_channel, self.channels.len());
        if wanted != self.reservation {
            self.upstream.reserve(self.reservation, wanted);
            self.reservation = wanted;
        }
    }

    /// Before its first channel, the client may still move to a quieter
    /// upstream connection (see `Pools::rebalance`).
    async fn move_if_crowded(&mut self) {
        let Some(quieter) = self
            .ctx
            .pools
            .rebalance(&self.pool, &self.vhost, &self.upstream)
            .await
        else {
            return;
        };
        tracing::debug!(
            client = self.id,
            from = self.upstream.id(),
            to = quieter.id(),
            "client moved to a quieter upstream"
        );
        self.upstream.unpin(self.id, self.reservation);
        quieter.attach(self.link.clone());
        self.record.upstream.set(quieter.id());
        self.upstream = quieter;
    }

    /// warren closes a channel on its own (e.g. an oversized message): the
    /// client gets Channel.Close, the upstream channel is closed and freed.
    async fn close_channel(&mut self, channel: u16, upstream: UpstreamChannel, close: Close) {
        tracing::warn!(
            client = self.id,
            channel,
            code = close.code,
            text = cut(&close.text),
            "closing client channel"
        );
        // The channel's earlier publishes go before the router's Close.
        self.flush_small_messages().await;
        self.ctx.stats.events.close(CloseScope::channel, close.code);
        self.upstream.abandon(upstream);
        self.channels.insert(channel, ChannelState::ClosedByProxy);
        self.link.push(close.channel_frame(channel));
    }

    /// The frames read together are handled: publishes still incomplete
    /// are moved out of the read buffer and charged to the budget.
    fn settle_held(&mut self) -> Option<Exit> {
        for channel in self.holding.drain(..) {
            if let Some(ChannelState::Open { content, .. }) = self.channels.get_mut(&channel) {
                if let Err(close) = content.settle(&self.publish_budget) {
                    return Some(Exit::Close(close));
                }
            }
        }
        None
    }

    /// Sends the small publishes collected so far, as one buffer.
    async fn flush_small_messages(&mut self) {
        if !self.small_messages.is_empty() {
            let messages = self.small_messages.split().freeze();
            self.upstream.send(messages).await;
        }
    }

    /// Queues a frame warren wrote for the broker, after the publishes
    /// collected before it.
    async fn send_bytes(&mut self, frame: Bytes) {
        self.flush_small_messages().await;
        self.upstream.send(frame).await;
    }

    async fn send_upstream(&mut self, frame: Frame, upstream_channel: u16) {
        frame::push_for_peer(
            frame,
            upstream_channel,
            self.upstream.frame_max(),
            &mut self.scratch,
        );
        self.flush_small_messages().await;
        for piece in self.scratch.drain(..) {
            self.upstream.send(piece).await;
        }
    }
}
