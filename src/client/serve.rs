//! One client connection from accept to close: the wiring of the parts.
//!
//! TLS (if any) and the handshake run under one deadline
//! ([`super::admission`]); an admitted client gets a writer task for its
//! socket, a link the upstream router writes to, and a [`Session`] that
//! reads its frames until it leaves; then everything it held is given back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::admission::{
    self, close_during_handshake, Admitted, Refusal, Who, CLOSE_OK_WAIT, REPEATED_ERRORS_EVERY,
};
use super::handshake::Hello;
use super::pending::{refused_over_source_limit, PendingHandshake};
use super::session::{ClientSide, Exit, Seat, Session};
use super::Context;
use crate::link::ClientLink;
use crate::logging::RateLimit;
use crate::net::{Accepted, Peer, ReadHalf, WriteHalf};
use crate::outbox::outbox;
use crate::protocol::frame::FrameReader;
use crate::protocol::limits;
use crate::protocol::method::Tune;
use crate::proxy_protocol;
use crate::stats::{ClientRecord, CloseScope, HandshakeOutcome, Listed, PoolLabel};
use crate::untrusted::cut;
use crate::writer;

/// Bytes queued for one client before it counts as too slow.
pub const CLIENT_QUEUE_BYTES: usize = 16 << 20;
/// How long a write to a client without heartbeats may make no progress
/// before the client counts as gone.
const WRITE_STALL_WITHOUT_HEARTBEATS: Duration = Duration::from_secs(60);

/// Serves one accepted connection until it ends.
pub async fn serve(mut accepted: Accepted, mut pending: PendingHandshake, ctx: Arc<Context>) {
    let who = Who {
        id: ctx.next_client_id(),
        peer: accepted.peer(),
    };
    let started = Instant::now();
    let events = &ctx.stats.events;
    events.accepted.inc();
    tracing::debug!(client = who.id, peer = %who.peer, "client accepted");
    // One deadline for the whole handshake, TLS included: a client gets
    // the limit once, not once per step.
    let config = ctx.config();
    let limit = config.client_handshake_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let who = match pending.awaits_header() {
        true => match through_balancer(&mut accepted, who, &mut pending, deadline, &ctx).await {
            Some(client) => client,
            None => return,
        },
        false => who,
    };
    drop(config);
    let Some((read_half, mut write_half)) = open_socket(accepted, who, deadline, limit, &ctx).await
    else {
        return;
    };
    // Until Tune-Ok, frames are held to what RabbitMQ reads before tuning,
    // which bounds Start-Ok (user, password, client properties) too.
    let mut reader = FrameReader::new(read_half, limits::PRE_TUNE_FRAME_MAX);
    let admitted = match admission::admit(who, deadline, &mut reader, &mut write_half, &ctx).await {
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
    run_admitted(who, started, admitted, reader, write_half, &ctx).await;
}

/// The client a load balancer's PROXY header names (the balancer itself
/// for its own health checks), counted under that address for the
/// per-source cap; `None` when the header is missing, invalid or late, or
/// the address is over its cap.
async fn through_balancer(
    accepted: &mut Accepted,
    balancer: Who,
    pending: &mut PendingHandshake,
    deadline: tokio::time::Instant,
    ctx: &Context,
) -> Option<Who> {
    let stream = accepted.tcp_mut()?;
    let events = &ctx.stats.events;
    let client = match tokio::time::timeout_at(deadline, proxy_protocol::read_header(stream)).await
    {
        Ok(Ok(client)) => client,
        // A balancer's own health check that sends nothing and leaves.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            events.handshake(HandshakeOutcome::abandoned);
            tracing::debug!(client = balancer.id, balancer = %balancer.peer, "connection from a load balancer closed before its PROXY header");
            return None;
        }
        Ok(Err(e)) => {
            events.handshake(HandshakeOutcome::proxy_header);
            static BAD_HEADER: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
            if let Some(suppressed) = BAD_HEADER.check() {
                tracing::warn!(client = balancer.id, balancer = %balancer.peer, error = %e, suppressed, "connection from a --proxy-protocol-from balancer without a valid PROXY header");
            }
            return None;
        }
        Err(_) => {
            admission::handshake_timed_out(balancer, ctx.config().client_handshake_timeout, events);
            return None;
        }
    };
    let who = Who {
        peer: client.map_or(balancer.peer, Peer::Tcp),
        ..balancer
    };
    let per_source = ctx.config().max_pending_handshakes_per_source;
    if !pending.attribute(who.peer, per_source) {
        refused_over_source_limit(who.peer, per_source, events);
        return None;
    }
    tracing::debug!(client = who.id, peer = %who.peer, balancer = %balancer.peer, "client behind a load balancer");
    Some(who)
}

/// The TLS handshake, if the listener has one, within the deadline.
async fn open_socket(
    accepted: Accepted,
    who: Who,
    deadline: tokio::time::Instant,
    limit: Duration,
    ctx: &Context,
) -> Option<(ReadHalf, WriteHalf)> {
    match tokio::time::timeout_at(deadline, accepted.open()).await {
        Ok(Ok(halves)) => Some(halves),
        Ok(Err(e)) => {
            ctx.stats.events.handshake(HandshakeOutcome::tls_failed);
            static TLS_FAILED: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
            if let Some(suppressed) = TLS_FAILED.check() {
                tracing::warn!(client = who.id, peer = %who.peer, error = %e, suppressed, "client TLS handshake failed");
            }
            None
        }
        Err(_) => {
            admission::handshake_timed_out(who, limit, &ctx.stats.events);
            None
        }
    }
}

/// Serves an admitted client until it leaves, then gives back what it held.
async fn run_admitted(
    who: Who,
    started: Instant,
    admitted: Admitted<'_>,
    mut reader: FrameReader<ReadHalf>,
    write_half: WriteHalf,
    ctx: &Arc<Context>,
) {
    let Admitted {
        hello,
        tune,
        vhost,
        upstream,
        pool,
        place,
        quota,
    } = admitted;
    let user = &hello.credentials.user;
    let (shown_user, shown_vhost) = (cut(user), cut(&vhost));
    tracing::info!(
        client = who.id,
        peer = %who.peer,
        user = shown_user,
        vhost = shown_vhost,
        connection_name = cut(hello.connection_name.as_deref().unwrap_or("")),
        upstream = upstream.id(),
        "client connected"
    );
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let record = ctx.stats.client_connected(ClientRecord::new(
        who.id,
        who.peer,
        PoolLabel::new(&vhost, user),
        hello.connection_name.as_deref(),
        started,
        events_tx,
    ));
    record.upstream.set(upstream.id());
    let heartbeat = (tune.heartbeat > 0).then(|| Duration::from_secs(tune.heartbeat.into()));
    let (client, writer_task) =
        client_side(who, &tune, heartbeat, &hello, write_half, record, ctx);
    upstream.attach(client.link.clone());
    let seat = Seat {
        pool,
        vhost: vhost.clone(),
        upstream,
        quota,
    };
    let mut session = Session::new(who.id, ctx, seat, tune.channel_max, client);
    let exit = session.run(&mut reader, &mut events, heartbeat, ctx).await;
    // Given back before the client hears its Close-Ok, so a client that
    // reconnects at once finds its place free.
    drop(place);
    let reason = exit.describe();
    let too_slow = matches!(exit, Exit::TooSlow);
    ctx.stats.events.disconnect(exit.reason());
    session.finish(exit, &mut reader, &mut events, ctx).await;
    let reason = cut(&reason);
    if too_slow {
        // warren's decision, not the client's: worth an operator's look.
        tracing::warn!(client = who.id, peer = %who.peer, user = shown_user, vhost = shown_vhost, reason, "client disconnected");
    } else {
        tracing::info!(client = who.id, peer = %who.peer, user = shown_user, vhost = shown_vhost, reason, "client disconnected");
    }
    wait_for_writer(writer_task).await;
    drop(reader);
    session.linger(&mut events).await;
    let record = session.leave();
    // Unlisted only now, with every byte the writer sent counted and what
    // the client published confirmed.
    drop(record);
}

/// The client's write side: a writer task for its socket, the queue it
/// drains, and the link the upstream router writes to.
fn client_side(
    who: Who,
    tune: &Tune,
    heartbeat: Option<Duration>,
    hello: &Hello,
    write_half: WriteHalf,
    record: Listed<ClientRecord>,
    ctx: &Context,
) -> (ClientSide, JoinHandle<std::io::Result<()>>) {
    let (outbox, queue) = outbox(CLIENT_QUEUE_BYTES);
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
    let link = Arc::new(ClientLink::new(
        who.id,
        outbox.clone(),
        record.session.clone(),
        tune.frame_max as usize,
        hello.capabilities,
        ctx.held_deliveries.clone(),
    ));
    let client = ClientSide {
        link,
        outbox,
        record,
    };
    (client, writer_task)
}

/// Lets the writer send what is queued (the final Close or Close-Ok), for
/// a bounded time.
async fn wait_for_writer(mut writer_task: JoinHandle<std::io::Result<()>>) {
    if tokio::time::timeout(CLOSE_OK_WAIT, &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
        let _ = writer_task.await;
    }
}
