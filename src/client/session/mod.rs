//! An admitted client, from its first channel to its last frame.
//!
//! The session task owns the socket's read half and the client's
//! [`ChannelTable`]. For each frame the client sends it asks the table
//! where the frame goes, rewrites two bytes and pushes the frame to the
//! pinned upstream connection. Frames from the broker do not pass through
//! here: the upstream router writes them to this client's write queue
//! directly; only channel lifecycle events come back to the session.
//!
//! The work is split by concern: [`frames`] decides what a client frame
//! does, [`channels`] opens, closes and gives back upstream channels,
//! [`forward`] sends frames upstream, [`exclusive`] keeps the client's
//! exclusive queues its own, [`outage`] holds a publisher while its
//! upstream connection is re-established, and [`settling`] keeps what a
//! client published until the broker confirmed it, after the client closed
//! its channel or left.

mod channels;
mod exclusive;
mod forward;
mod frames;
mod moving;
mod outage;
mod secret;
mod settling;
mod throttle;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::admission::{wait_for_close_ok, CLOSE_OK_WAIT};
use super::channel_table::{BrokerClose, ChannelTable};
use super::publish_batch::PublishBatch;
use super::serve::CLIENT_QUEUE_BYTES;
use super::Context;
use outage::Outage;
use settling::Settling;
use crate::channel::UpstreamChannel;
use crate::content::PublishBudget;
use crate::exclusive::Declared;
use crate::held::HeldBytes;
use crate::link::{ClientEvent, ClientId, ClientLink};
use crate::net::ReadHalf;
use crate::outbox::Outbox;
use crate::pool::{Kind, PoolRef};
use crate::quota::QuotaPlace;
use crate::protocol::frame::{Frame, FrameError, FrameReader};
use crate::protocol::ids;
use crate::protocol::method::{self, Close};
use crate::protocol::reply::{self, CONNECTION_FORCED, FRAME_ERROR};
use crate::stats::{ClientRecord, CloseScope, DisconnectReason, Listed};
use crate::untrusted::cut;
use crate::upstream::Upstream;

/// How the main loop ended.
pub enum Exit {
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
    pub fn reason(&self) -> DisconnectReason {
        match self {
            Exit::ClientClosed => DisconnectReason::client_closed,
            Exit::Close(_) => DisconnectReason::closed_by_warren,
            Exit::Gone(_) => DisconnectReason::connection_lost,
            Exit::TooSlow => DisconnectReason::slow_client,
        }
    }

    /// For the log line that says why the client left.
    pub fn describe(&self) -> String {
        match self {
            Exit::ClientClosed => "client closed the connection".to_string(),
            Exit::Close(close) => format!("closed by warren: {} {}", close.code, close.text),
            Exit::Gone(why) => why.clone(),
            Exit::TooSlow => format!(
                "client too slow: more than {} MiB waiting for it",
                CLIENT_QUEUE_BYTES >> 20
            ),
        }
    }
}

/// The most a client's unconfirmed publishes may pin (within the shared
/// `--hold-buffer-mib`); beyond it the client is not read until the broker
/// confirms some.
const CLIENT_HOLD_SHARE: u64 = 16 << 20;
/// How soon confirmed publishes leave the replay logs of a client that
/// publishes no more (a publish drops them at once).
const TRIM_AFTER: Duration = Duration::from_millis(250);
/// How often a client waiting for room in the shared hold buffer looks
/// again (other clients' confirms free it, and they do not wake it).
const ROOM_POLL: Duration = Duration::from_millis(20);

/// What a paused vhost holds: new messages and new channels. The content
/// of a publish already under way goes on; what the client sends after a
/// held frame waits behind it.
fn waits_for_resume(frame: &Frame) -> bool {
    matches!(
        frame.method_id(),
        Some(ids::BASIC_PUBLISH | ids::CHANNEL_OPEN)
    )
}

/// A client is gone once more than eight quarters of its heartbeat
/// interval, two intervals, passed without a frame from it.
fn missed_heartbeats(heartbeat: Option<Duration>, quiet_quarters: u32) -> Option<Exit> {
    match heartbeat {
        Some(hb) if quiet_quarters > 8 => Some(Exit::Gone(format!(
            "missed heartbeats from client, timeout: {}s",
            hb.as_secs()
        ))),
        _ => None,
    }
}

/// Confirmed publishes leave the replay logs at the next publish, or when
/// this fires, armed while the logs hold something.
struct TrimTimer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl TrimTimer {
    fn new() -> Self {
        TrimTimer {
            sleep: Box::pin(tokio::time::sleep(TRIM_AFTER)),
            armed: false,
        }
    }

    /// Arms the timer, if `holding` and it is not armed yet.
    fn arm_if(&mut self, holding: bool) {
        if holding && !self.armed {
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + TRIM_AFTER);
            self.armed = true;
        }
    }

    async fn fired(&mut self) {
        (&mut self.sleep).await;
        self.armed = false;
    }
}

/// What one turn of the session's loop waits for.
struct Turn {
    /// The client's hold share or the shared hold buffer is full: it is
    /// not read.
    full: bool,
    in_outage: bool,
    /// Not read while a drained node's move waits for the broker.
    pausing: bool,
    awaits_settlement: bool,
    /// Over its rate quota: not read until then.
    throttled: Option<tokio::time::Instant>,
}

impl Turn {
    /// The client is not read for warren's own reasons (a move, a rate).
    fn reads_paused(&self) -> bool {
        self.pausing || self.throttled.is_some()
    }
}

/// How the session reaches its client: the link the router writes to, the
/// write queue, and its entry in the client list.
pub struct ClientSide {
    pub link: Arc<ClientLink>,
    pub outbox: Outbox,
    pub record: Listed<ClientRecord>,
}

/// Where an admitted client sits: its pool and vhost, the upstream
/// connection it is pinned to, and its place under the quotas.
pub struct Seat {
    pub pool: PoolRef,
    pub vhost: String,
    pub upstream: Upstream,
    pub quota: QuotaPlace,
}

pub struct Session {
    id: ClientId,
    ctx: Arc<Context>,
    pool: PoolRef,
    vhost: String,
    upstream: Upstream,
    /// Whether its upstream connection is its own (see [`moving`]).
    kind: Kind,
    /// A move to a connection of its own was given up: it stays shared.
    dedication_declined: bool,
    upstream_alive: bool,
    link: Arc<ClientLink>,
    outbox: Outbox,
    channels: ChannelTable,
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
    /// Whole small publishes not yet queued upstream: anything else sent
    /// upstream, and every event, goes after them.
    batch: PublishBatch,
    /// This client's share of the bytes held in partly received publishes.
    publish_budget: Arc<PublishBudget>,
    /// Channels that held a frame since the last `settle_held`.
    holding: Vec<u16>,
    /// The broker's plugin exchange types, as configured when the client came.
    exchange_types: Vec<String>,
    /// `--hold-seconds` as the client came; `None`: publishes are not kept
    /// for replay (see `crate::replay`).
    hold: Option<Duration>,
    /// What this client's replay logs may pin ([`CLIENT_HOLD_SHARE`]).
    client_hold_share: Arc<HeldBytes>,
    /// Channels whose newest replay log entries point into `batch`.
    batched: Vec<u16>,
    /// The upstream connection is lost and the client is held.
    outage: Option<Outage>,
    /// Channels the client closed whose publishes the broker has yet to
    /// confirm.
    settling: Vec<Settling>,
    /// warren told the client Connection.Blocked (see `tell_blocked`).
    told_blocked: bool,
    /// A move to another upstream connection it is due for (its node was
    /// drained, or it gets one of its own), at a message boundary.
    moving: Option<moving::Move>,
    quota: QuotaPlace,
    /// Over its rate quota: not read until then.
    throttled_until: Option<tokio::time::Instant>,
    /// The rate pause is long enough to be told (Connection.Blocked).
    throttle_told: bool,
    record: Listed<ClientRecord>,
}

impl Session {
    pub fn new(
        id: ClientId,
        ctx: &Arc<Context>,
        seat: Seat,
        channel_max: u16,
        client: ClientSide,
    ) -> Self {
        let config = ctx.config();
        Session {
            id,
            ctx: ctx.clone(),
            pool: seat.pool,
            vhost: seat.vhost,
            upstream: seat.upstream,
            kind: Kind::Shared,
            dedication_declined: false,
            upstream_alive: true,
            link: client.link,
            outbox: client.outbox,
            channels: ChannelTable::new(channel_max),
            opened_a_channel: false,
            declared_without_wait: Vec::new(),
            reservation: 1,
            scratch: Vec::new(),
            batch: PublishBatch::default(),
            publish_budget: PublishBudget::new(ctx.held_bytes.clone()),
            holding: Vec::new(),
            exchange_types: config.exchange_types.clone(),
            hold: config.hold,
            client_hold_share: HeldBytes::new(CLIENT_HOLD_SHARE),
            batched: Vec::new(),
            outage: None,
            settling: Vec::new(),
            told_blocked: false,
            moving: None,
            quota: seat.quota,
            throttled_until: None,
            throttle_told: false,
            record: client.record,
        }
    }

    /// Reads the client's frames and the router's events until one ends
    /// the session.
    pub async fn run(
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
        // A publish or channel open read while the vhost is paused waits
        // here, and the client is not read meanwhile (it waits as it would
        // behind a slow broker; its heartbeats wait in the socket).
        let mut held: Option<Frame> = None;
        let mut trim = TrimTimer::new();
        loop {
            let turn = match self.next_turn().await {
                Ok(turn) => turn,
                Err(exit) => return exit,
            };
            let step = tokio::select! {
                biased;
                Some(event) = events.recv() => {
                    self.flush_batch().await;
                    self.on_event(event).await
                }
                read = reader.read_frame(), if held.is_none() && !turn.full && !turn.reads_paused() => {
                    if read.is_ok() {
                        quiet_quarters = 0;
                    }
                    self.on_client_read(read, &mut held, reader.has_buffered_frame(), ctx).await
                }
                _ = ctx.pauses.resumed(&self.vhost), if held.is_some() && !turn.in_outage && !turn.pausing => {
                    self.release_held(&mut held, reader.has_buffered_frame()).await
                }
                reconnected = outage::reconnected(&mut self.outage) => {
                    self.on_reconnected(reconnected, &mut held, reader.has_buffered_frame(), ctx).await
                }
                _ = self.link.settlement_or(ROOM_POLL), if turn.awaits_settlement && !turn.in_outage => {
                    self.trim_logs();
                    None
                }
                _ = Self::throttle_ends(turn.throttled), if turn.throttled.is_some() => self.end_throttle(),
                _ = trim.fired(), if trim.armed => {
                    self.trim_logs();
                    None
                }
                _ = liveness.tick() => {
                    // Nothing is read while a frame is held or a move waits: silence is ours.
                    quiet_quarters = if held.is_some() || turn.reads_paused() { 0 } else { quiet_quarters + 1 };
                    missed_heartbeats(heartbeat, quiet_quarters)
                }
                _ = &mut writer_stopped => {
                    Some(Exit::Gone("the client stopped reading (nothing written for too long) or its connection failed".into()))
                }
                _ = &mut force_close => {
                    Some(Exit::Close(reply::close(CONNECTION_FORCED, "warren is shutting down")))
                }
            };
            self.after_step(&mut trim);
            if let Some(exit) = step {
                return exit;
            }
        }
    }

    /// What this turn of the loop waits for (a drained node's move may
    /// happen first).
    async fn next_turn(&mut self) -> Result<Turn, Exit> {
        if let Some(exit) = self.move_when_ready().await {
            return Err(exit);
        }
        let full = self.hold_share_full();
        let in_outage = self.outage.is_some();
        let pausing = self.pauses_reads_to_move();
        let throttled = self.throttled_until;
        self.tell_blocked((full && in_outage) || self.throttle_told);
        Ok(Turn {
            full,
            in_outage,
            pausing,
            awaits_settlement: full || pausing || !self.settling.is_empty(),
            throttled,
        })
    }

    fn after_step(&mut self, trim: &mut TrimTimer) {
        self.record.channels.set(self.channels.len() as u64);
        self.quota.set_channels(self.channels.len());
        self.update_reservation();
        trim.arm_if(self.client_hold_share.used() > 0);
    }

    /// A read from the client: a frame is handled, or held while the vhost
    /// is paused or the client is held through an outage.
    async fn on_client_read(
        &mut self,
        read: Result<Frame, FrameError>,
        held: &mut Option<Frame>,
        more_buffered: bool,
        ctx: &Context,
    ) -> Option<Exit> {
        match read {
            Ok(frame) => {
                let paused = waits_for_resume(&frame) && ctx.pauses.holds(&self.vhost);
                if paused || self.outage_holds(&frame) || self.moves_before(&frame) {
                    self.flush_batch().await;
                    *held = Some(frame);
                    self.record.paused.set(u64::from(paused));
                    None
                } else {
                    self.charge_rate(&frame);
                    self.on_read(frame, more_buffered).await
                }
            }
            Err(FrameError::Closed) => Some(Exit::Gone("client dropped the connection".into())),
            Err(FrameError::Io(e)) => Some(Exit::Gone(format!("client connection failed: {e}"))),
            Err(e) => Some(Exit::Close(reply::close(FRAME_ERROR, e))),
        }
    }

    /// The frame held for a pause, an outage or a move goes on: unless it
    /// now makes the client move first, it is charged and handled.
    async fn release_held(&mut self, held: &mut Option<Frame>, more_buffered: bool) -> Option<Exit> {
        let frame = held.take()?;
        self.record.paused.set(0);
        if self.moves_before(&frame) {
            *held = Some(frame);
            return None;
        }
        self.charge_rate(&frame);
        self.on_read(frame, more_buffered).await
    }

    /// The client's unconfirmed publishes fill its share or the shared
    /// buffer (after dropping what the broker has confirmed): it is not read
    /// until there is room.
    fn hold_share_full(&mut self) -> bool {
        let full = |session: &Self| {
            session.client_hold_share.is_full() || session.ctx.hold_buffer.is_full()
        };
        if self.hold.is_none() || !full(self) {
            return false;
        }
        self.trim_logs();
        full(self)
    }

    /// Ends the client's side: its upstream channels go back (closed so
    /// the broker requeues unacknowledged deliveries; those with publishes
    /// the broker has yet to confirm settle, see [`settling`]), it hears
    /// why (or gets its Close-Ok), and its socket is closed. What settles
    /// is seen to by [`Session::linger`].
    pub async fn finish(
        &mut self,
        exit: Exit,
        reader: &mut FrameReader<ReadHalf>,
        events: &mut mpsc::UnboundedReceiver<ClientEvent>,
        ctx: &Context,
    ) {
        self.flush_batch().await;
        // Given back before the client hears it closed, so it can reconnect.
        self.quota.leave();
        if self.upstream_alive {
            // Gone before the client hears it closed, as the broker does.
            self.await_exclusive_declares(events, CLOSE_OK_WAIT).await;
            self.delete_exclusive_queues().await;
        }
        self.release_channels();
        self.record.channels.set(0);
        // Nothing from the broker follows the last frame.
        self.link.close_to_frames();
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
        self.outbox.finish();
    }

    /// Leaves the upstream connection; what remains is the client's entry
    /// in the list, to be dropped once its writer is done.
    pub fn leave(self) -> Listed<ClientRecord> {
        self.upstream.unpin(self.id, self.reservation);
        self.record
    }

    async fn on_event(&mut self, event: ClientEvent) -> Option<Exit> {
        match event {
            ClientEvent::ChannelCloseOk { channel } => {
                if self.channels.on_broker_close_ok(channel) {
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
                self.on_broker_close(channel, upstream, close, code).await;
                None
            }
            ClientEvent::DeclareOk { channel, queue } => {
                let usage = self.channels.usage_mut(channel)?;
                // Confirms a named claim; a server-named queue is claimed
                // here, the first moment its name exists.
                if let Some(declare) = usage.on_declare_ok() {
                    self.upstream
                        .claim_exclusive(&queue, self.id, declare, Declared::Confirmed);
                }
                None
            }
            ClientEvent::DeleteOk { channel } => {
                let usage = self.channels.usage_mut(channel)?;
                if let Some(queue) = usage.on_delete_ok() {
                    self.upstream.release_exclusive(&queue, self.id);
                }
                None
            }
            ClientEvent::UpstreamClosed { upstream, close } if upstream == self.upstream.id() => {
                self.on_upstream_lost(close)
            }
            ClientEvent::UpstreamClosed { .. } => None,
            ClientEvent::NodeDrained { upstream } => {
                self.on_node_drained(upstream);
                None
            }
            ClientEvent::Overflowed => Some(Exit::TooSlow),
            ClientEvent::Killed => Some(Exit::Close(reply::close(
                CONNECTION_FORCED,
                "closed by an operator of warren (warren ctl kill)",
            ))),
        }
    }

    /// The broker closed an upstream channel of this client's.
    async fn on_broker_close(
        &mut self,
        channel: u16,
        upstream: UpstreamChannel,
        close: Bytes,
        code: u16,
    ) {
        if self.settling_closed_by_broker(upstream).await {
            return;
        }
        let (usage, crossed) = match self.channels.on_broker_close(channel, upstream) {
            // Already given back (kept or abandoned): the router
            // acknowledged the broker's Close itself.
            BrokerClose::NotOurs => return,
            BrokerClose::CrossedClientClose { usage } => (usage, true),
            BrokerClose::Closed { usage } => (usage, false),
        };
        self.withdraw_refused_declares(&usage);
        // Acknowledge first, release second: the id must not be handed out
        // before our Close-Ok is queued ahead of any Channel.Open that could
        // reuse it.
        self.send_bytes(method::channel_close_ok(upstream.id)).await;
        self.upstream.release(upstream);
        if crossed {
            // The client's Close crossed the broker's: the channel is
            // closed either way, and the client gets its Close-Ok.
            self.link.push(method::channel_close_ok(channel));
        } else {
            self.ctx.stats.events.close(CloseScope::channel, code);
            self.link.push(close);
        }
    }
}
