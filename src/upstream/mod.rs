//! One authenticated connection to the broker, shared by many clients.
//!
//! An [`Upstream`] is a cheap handle. Behind it run two tasks: the writer
//! (see [`crate::writer`]), which owns the socket's write half, and the
//! [`router`], which owns the read half and the channel table (upstream
//! channel id → client). Clients talk to the router through a command queue
//! to open and give back channels, and push their frames straight into the
//! writer's queue, already rewritten to the upstream channel id.

mod command;
mod exclusive_queues;
pub mod handshake;
mod hello;
mod nodes;
mod occupancy;
mod router;
mod settings;
mod slots;

pub use occupancy::{Occupancy, Room};
pub use settings::UpstreamSettings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::exclusive::ExclusiveQueues;
use crate::untrusted::{cut, shown};
use command::Command;
pub use handshake::ConnectError;
use handshake::Negotiated;
pub use hello::{hello, learn_broker_properties, probe_banned, HELLO_TIMEOUT};
pub use nodes::Nodes;

use crate::auth::Credentials;
use crate::channel::{Delivered, Inherited, UpstreamChannel};
use crate::config::{NameValues, UpstreamAddr};
use crate::confirms::ConfirmTags;
use crate::link::{ClientEvent, ClientId, ClientLink};
use crate::net::{ReadHalf, WriteHalf};
use crate::outbox::{outbox, Outbox};
use crate::protocol::frame::FrameReader;
use crate::protocol::ids::MethodId;
use crate::protocol::limits::RABBITMQ_FRAME_MAX;
use crate::protocol::reply::{self, CONNECTION_FORCED};
use crate::stats::{LoginOutcome, PoolLabel, UpstreamRecord};
use crate::writer;

/// Bytes queued for one upstream socket before clients wait.
const WRITE_QUEUE_BYTES: usize = 4 << 20;

/// An upstream connection's channels by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChannelCounts {
    /// In use by a client.
    pub open: usize,
    /// Clean, kept for the next client (or being fenced for it).
    pub kept: usize,
    /// Closing, or closed by the broker and not yet acknowledged.
    pub closing: usize,
}

impl ChannelCounts {
    pub fn sum<'a>(counts: impl Iterator<Item = &'a ChannelCounts>) -> ChannelCounts {
        counts.fold(ChannelCounts::default(), |total, c| ChannelCounts {
            open: total.open + c.open,
            kept: total.kept + c.kept,
            closing: total.closing + c.closing,
        })
    }
}

/// An upstream channel handed to a client.
#[derive(Debug, Clone)]
pub struct Grant {
    pub channel: UpstreamChannel,
    /// `Some` when the channel is already open (a kept one). `None` for a
    /// new id: the caller sends Channel.Open upstream, and the router hides
    /// the broker's Open-Ok (the client was answered without waiting).
    pub inherited: Option<Inherited>,
    /// What the router forwarded to this client on the channel.
    pub delivered: Arc<Delivered>,
}

#[derive(Debug)]
struct Inner {
    id: u64,
    frames: Outbox,
    commands: mpsc::UnboundedSender<Command>,
    frame_max: u32,
    /// `Occupancy::guaranteed`, unchanging: read without the lock.
    guaranteed: usize,
    occupancy: Mutex<Occupancy>,
    /// The broker node it is connected to.
    node: UpstreamAddr,
    /// The route it serves.
    route: String,
    /// When it stops taking new clients.
    retire_at: Option<Instant>,
    /// Its node was drained by an operator: no new clients either.
    drained: AtomicBool,
    /// Serves one client at a time (`consumer_mode = "dedicated"`).
    dedicated: AtomicBool,
    /// Exclusive queues by the client that declared them. The broker scopes
    /// exclusivity to this connection, which many clients share; warren
    /// scopes it to the client, as a direct connection would.
    exclusive: Mutex<ExclusiveQueues>,
    /// Held from a client's check of a queue-naming method to the moment
    /// the method is queued upstream (see [`Upstream::order_queue_methods`]).
    queue_order: Arc<tokio::sync::Mutex<()>>,
    /// Ended because the broker went away or the network failed.
    lost: AtomicBool,
    ended: CancellationToken,
}

impl Inner {
    /// Why it takes no new clients, if it does not.
    fn retirement(&self) -> Option<&'static str> {
        if self.drained.load(Ordering::Relaxed) {
            Some("its node is drained")
        } else if self.retire_at.is_some_and(|at| Instant::now() >= at) {
            Some("past its max lifetime")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream(Arc<Inner>);

/// A logged-in broker connection waiting for its vhost.
pub struct PendingUpstream {
    authenticated: handshake::Authenticated,
    node: UpstreamAddr,
}

impl PendingUpstream {
    pub fn frame_max(&self) -> u32 {
        self.authenticated.frame_max()
    }

    /// Closes it cleanly in the background: the pool filled while it was
    /// logging in.
    pub fn discard(self, settings: &UpstreamSettings, vhost: &str) {
        let (limit, vhost) = (
            settings.connect_timeout,
            settings.broker_vhost(vhost).to_string(),
        );
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limit, self.authenticated.discard(&vhost)).await;
        });
    }

    pub async fn open(
        self,
        settings: &UpstreamSettings,
        user: &str,
        vhost: &str,
        id: u64,
    ) -> Result<Upstream, ConnectError> {
        let opened = tokio::time::timeout(
            settings.connect_timeout,
            self.authenticated.open(settings.broker_vhost(vhost)),
        )
        .await
        .map_err(|_| ConnectError::Timeout)??;
        Ok(Upstream::start(
            settings, self.node, opened, user, vhost, id,
        ))
    }
}

impl Upstream {
    /// Connects and logs in with the client's credentials; the broker
    /// decides whether they are good. Nodes are tried in turn (see
    /// [`Nodes::order`]) until one answers; a node's answer, even a refusal
    /// of the login, is final.
    /// `vhost` is the client's, if it named it already (it goes into the
    /// connection's name only).
    pub async fn login(
        settings: &UpstreamSettings,
        credentials: &Credentials,
        vhost: Option<&str>,
    ) -> Result<PendingUpstream, ConnectError> {
        let nodes = &settings.nodes;
        let mut last_error = ConnectError::Unreachable("no broker node configured".into());
        for node in nodes.order() {
            let name = settings.connection_name.render(&NameValues {
                listen: &settings.listening,
                route: &settings.route,
                node: &nodes.addrs()[node].to_string(),
                user: &shown(&credentials.user),
                vhost: vhost.map(shown).as_deref(),
            });
            let start_ok = handshake::start_ok(credentials, &name).inspect_err(|_| {
                tracing::warn!(
                    user = cut(&credentials.user),
                    "login refused without asking the broker: user name and password too long for its first frame"
                );
            })?;
            let started = Instant::now();
            let connecting = async {
                let socket = nodes.dial(node).await.map_err(ConnectError::Unreachable)?;
                handshake::authenticate(socket, &start_ok, settings.channel_limit).await
            };
            let authenticated = tokio::time::timeout(settings.connect_timeout, connecting)
                .await
                .map_err(|_| ConnectError::Timeout)
                .and_then(|login| login);
            let outcome = match &authenticated {
                Ok(_) => LoginOutcome::ok,
                Err(ConnectError::Refused(close)) if close.code == 403 => LoginOutcome::auth_failed,
                Err(ConnectError::Refused(_)) => LoginOutcome::refused,
                Err(ConnectError::Timeout) => LoginOutcome::timeout,
                Err(_) => LoginOutcome::unreachable,
            };
            settings.stats.events.upstream_login(outcome, started);
            let addr = nodes.addrs()[node].clone();
            match authenticated {
                Ok(mut authenticated) => {
                    nodes.succeeded(node);
                    nodes.heard_from(node, std::mem::take(&mut authenticated.server_properties));
                    return Ok(PendingUpstream {
                        authenticated,
                        node: addr,
                    });
                }
                Err(e) if e.is_final() => {
                    nodes.succeeded(node);
                    return Err(e);
                }
                Err(e) => {
                    let ban = nodes.failed(node, Instant::now());
                    tracing::warn!(node = %addr, error = %e, banned_for = ?ban, "broker node failed; trying the next");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    /// Asks the broker whether a client of `credentials` on `vhost` may
    /// update its secret with `update` (its Connection.Update-Secret frame),
    /// on a connection of the client's own opened for the question: the
    /// shared ones stay as they are.
    pub async fn check_update_secret(
        settings: &UpstreamSettings,
        credentials: &Credentials,
        vhost: &str,
        update: &[u8],
    ) -> Result<(), ConnectError> {
        let pending = Self::login(settings, credentials, Some(vhost)).await?;
        let asking = pending
            .authenticated
            .try_update_secret(settings.broker_vhost(vhost), update);
        tokio::time::timeout(settings.connect_timeout, asking)
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    /// `login` and `PendingUpstream::open` in one step.
    pub async fn connect(
        settings: &UpstreamSettings,
        credentials: &Credentials,
        vhost: &str,
        id: u64,
    ) -> Result<Upstream, ConnectError> {
        Self::login(settings, credentials, Some(vhost))
            .await?
            .open(settings, &credentials.user, vhost, id)
            .await
    }

    fn start(
        settings: &UpstreamSettings,
        node: UpstreamAddr,
        (reader, write_half, negotiated): (FrameReader<ReadHalf>, WriteHalf, Negotiated),
        user: &str,
        vhost: &str,
        id: u64,
    ) -> Upstream {
        let pool = PoolLabel::new(vhost, user);
        let record = settings.stats.upstream_opened(UpstreamRecord::new(
            id,
            node.to_string(),
            settings.route.clone(),
            pool,
        ));
        let (frames, queue) = outbox(WRITE_QUEUE_BYTES);
        let heartbeat = (negotiated.heartbeat > 0)
            .then(|| Duration::from_secs(negotiated.heartbeat.into()) / 2);
        // No stall limit: a broker under a memory alarm stops reading from
        // publishers for as long as the alarm lasts.
        let writer_task = tokio::spawn(writer::run(
            write_half,
            queue,
            heartbeat,
            None,
            record.bytes_out.clone(),
        ));
        let (commands, command_queue) = mpsc::unbounded_channel();
        let occupancy = Occupancy::new(negotiated.channel_max.into(), settings.guaranteed_channels);
        let inner = Arc::new(Inner {
            id,
            frames,
            commands,
            frame_max: negotiated.frame_max,
            guaranteed: occupancy.guaranteed(),
            occupancy: Mutex::new(occupancy),
            retire_at: settings
                .max_lifetime
                .map(|lifetime| Instant::now() + lifetime),
            // Never drained at birth: a connection is opened on a drained
            // node only when no other node answers (`Nodes::order`), and
            // then it serves.
            drained: AtomicBool::new(false),
            dedicated: AtomicBool::new(false),
            node,
            route: settings.route.clone(),
            exclusive: Mutex::default(),
            queue_order: Arc::default(),
            lost: AtomicBool::new(false),
            ended: CancellationToken::new(),
        });
        tracing::info!(
            upstream = id,
            broker = %inner.node,
            tls = inner.node.tls,
            user,
            vhost,
            channel_max = negotiated.channel_max,
            frame_max = negotiated.frame_max,
            heartbeat = negotiated.heartbeat,
            "upstream connection opened"
        );
        let router = router::Router::new(
            inner.clone(),
            reader,
            command_queue,
            writer_task,
            negotiated,
            settings.clone(),
            record,
        );
        tokio::spawn(router.run());
        Upstream(inner)
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn frame_max(&self) -> usize {
        self.0.frame_max as usize
    }

    pub fn is_closed(&self) -> bool {
        self.occupancy().closed
    }

    /// Closed because the broker went away or the network failed, not by
    /// warren (idle, retired, shutting down).
    pub fn was_lost(&self) -> bool {
        self.0.lost.load(Ordering::Relaxed)
    }

    /// A stand-in for a connection that could not be opened: already
    /// closed, so a client admitted with it starts held (see
    /// `Pools::checkout`). Nothing sent to it goes anywhere.
    pub fn unreachable(settings: &UpstreamSettings) -> Upstream {
        let (frames, _) = outbox(WRITE_QUEUE_BYTES);
        let (commands, _) = mpsc::unbounded_channel();
        let mut occupancy = Occupancy::new(0, 0);
        occupancy.closed = true;
        let ended = CancellationToken::new();
        ended.cancel();
        Upstream(Arc::new(Inner {
            id: 0,
            frames,
            commands,
            frame_max: RABBITMQ_FRAME_MAX,
            guaranteed: 0,
            occupancy: Mutex::new(occupancy),
            node: settings.nodes.addrs()[0].clone(),
            route: settings.route.clone(),
            retire_at: None,
            drained: AtomicBool::new(false),
            dedicated: AtomicBool::new(false),
            exclusive: Mutex::default(),
            queue_order: Arc::default(),
            lost: AtomicBool::new(true),
            ended,
        }))
    }

    /// Past `--upstream-max-lifetime`: it serves the clients it has, takes
    /// no new ones, and closes when they are gone. New clients log in
    /// afresh, so a password revoked at the broker stops working here too.
    pub fn is_retired(&self) -> bool {
        self.0.retirement().is_some()
    }

    /// Its node is drained (`true`): it takes no new clients, the ones it
    /// has move to another connection at a message boundary if they can
    /// (see `Session::move_off_drained`), and it closes when they are gone;
    /// or undrained (`false`).
    pub fn set_drained(&self, drained: bool) {
        self.0.drained.store(drained, Ordering::Relaxed);
        if drained {
            let _ = self.0.commands.send(Command::Drained);
        }
    }

    /// The broker node it is connected to.
    pub fn node(&self) -> &UpstreamAddr {
        &self.0.node
    }

    pub fn route(&self) -> &str {
        &self.0.route
    }

    /// It serves one client at a time, from a pool's dedicated set.
    pub fn set_dedicated(&self) {
        self.0.dedicated.store(true, Ordering::Relaxed);
    }

    pub fn is_dedicated(&self) -> bool {
        self.0.dedicated.load(Ordering::Relaxed)
    }

    /// Clients pinned to this connection.
    pub fn client_count(&self) -> usize {
        self.occupancy().clients()
    }

    fn occupancy(&self) -> std::sync::MutexGuard<'_, Occupancy> {
        self.0.occupancy.lock().expect("occupancy lock")
    }

    /// Reserves a place for one more client if the connection is alive,
    /// not retired, and has room for it by `room` (see [`Occupancy`]).
    pub fn try_pin(&self, room: Room) -> bool {
        let retired = self.is_retired();
        !retired && self.occupancy().try_pin(room)
    }

    /// What a client holding `held` channels keeps reserved (see
    /// [`occupancy::reservation`]); without the lock, as sessions ask after
    /// every frame.
    pub fn reservation(&self, opened_a_channel: bool, held: usize) -> usize {
        occupancy::reservation(self.0.guaranteed, opened_a_channel, held)
    }

    /// A client's reservation changed from `from` to `to`.
    pub fn reserve(&self, from: usize, to: usize) {
        self.occupancy().reserve(from, to);
    }

    /// See [`Occupancy::is_crowded`].
    pub fn is_crowded(&self) -> bool {
        self.occupancy().is_crowded()
    }

    /// Registers a pinned client so it hears about blocking and failures.
    pub fn attach(&self, link: Arc<ClientLink>) {
        if let Err(refused) = self.0.commands.send(Command::Attach(link)) {
            if let Command::Attach(link) = refused.0 {
                link.notify(ClientEvent::UpstreamClosed {
                    upstream: self.0.id,
                    close: reply::close(
                        CONNECTION_FORCED,
                        "the upstream connection to the broker was lost",
                    ),
                });
            }
        }
    }

    /// Its channels by state; `None` once the connection is gone.
    pub async fn channel_counts(&self) -> Option<ChannelCounts> {
        let (reply, answer) = oneshot::channel();
        self.0.commands.send(Command::Report(reply)).ok()?;
        answer.await.ok()
    }

    /// Undoes `try_pin` and `attach`, giving back the client's `reserved`
    /// channels (see [`Upstream::reservation`]).
    pub fn unpin(&self, client: ClientId, reserved: usize) {
        let _ = self.0.commands.send(Command::Detach(client));
        self.occupancy().unpin(reserved);
    }

    /// Reserves an upstream channel id routed to `client_channel` of `link`.
    /// `None` when the connection has no free id or is gone, or when the
    /// client is `beyond_guarantee` and every free id is reserved.
    pub async fn open_channel(
        &self,
        link: &Arc<ClientLink>,
        client_channel: u16,
        fresh: bool,
        beyond_guarantee: bool,
    ) -> Option<Grant> {
        let (reply, answer) = oneshot::channel();
        self.0
            .commands
            .send(Command::OpenChannel {
                link: link.clone(),
                client_channel,
                fresh,
                beyond_guarantee,
                reply,
            })
            .ok()?;
        answer.await.ok()
    }

    /// The client closes this channel; its Close-Ok comes back as
    /// `ClientEvent::ChannelCloseOk`. The router writes the Close itself, in
    /// order with its own frames, so a Close crossing the broker's is safe.
    pub fn closing(&self, channel: UpstreamChannel) {
        let _ = self.0.commands.send(Command::Closing(channel));
    }

    /// Closes a channel nobody will use again (the router writes the Close).
    pub fn abandon(&self, channel: UpstreamChannel) {
        let _ = self.0.commands.send(Command::Abandon(channel));
    }

    /// Call after sending Channel.Close-Ok upstream for a broker-closed channel.
    pub fn release(&self, channel: UpstreamChannel) {
        let _ = self.0.commands.send(Command::Release(channel));
    }

    /// Gives a clean channel back for the next client.
    pub fn keep(&self, channel: UpstreamChannel, inherited: Inherited, confirm_publishes: u64) {
        let _ = self.0.commands.send(Command::Keep {
            channel,
            inherited,
            confirm_publishes,
        });
    }

    /// Call before sending a method whose reply the client must not see.
    pub fn hide_reply(&self, channel: UpstreamChannel, reply: MethodId) {
        let _ = self.0.commands.send(Command::Hide(channel, reply));
    }

    /// Call before the client's publishes that it wants confirmed.
    pub fn want_confirms(&self, channel: UpstreamChannel, tags: ConfirmTags) {
        let _ = self
            .0
            .commands
            .send(Command::WantConfirms { channel, tags });
    }

    /// Queues one frame for the broker; waits while the queue is full. A
    /// dead connection drops it: its clients are being told already.
    pub async fn send(&self, frame: Bytes) {
        let _ = self.0.frames.send(frame).await;
    }

    /// Closes the connection cleanly (Connection.Close, wait for Close-Ok).
    pub fn shutdown(&self) {
        let _ = self.0.commands.send(Command::Shutdown);
    }

    /// Resolves when the connection is gone.
    pub async fn ended(&self) {
        self.0.ended.cancelled().await
    }
}
