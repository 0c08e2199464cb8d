//! From the client's first byte to Connection.Open-Ok: the handshake run in
//! the broker's order, and what the client hears when it fails.
//!
//! The login is checked (by the broker) right after Start-Ok, the vhost
//! after Connection.Open, and Open-Ok is sent only once an upstream
//! connection for this client exists, so every refusal reaches the client
//! at the step where RabbitMQ would give it.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::handshake::{self, HandshakeError, Hello};
use super::{Admission, Context};
use crate::link::ClientId;
use crate::logging::RateLimit;
use crate::net::{Peer, ReadHalf, WriteHalf};
use crate::pool::{Admission as PoolAdmission, PoolRef};
use crate::quota::QuotaPlace;
use crate::protocol::frame::{FrameError, FrameReader};
use crate::protocol::ids;
use crate::protocol::limits::RABBITMQ_FRAME_MAX;
use crate::protocol::method::{self, Close, Tune};
use crate::protocol::reply::{self, ACCESS_REFUSED, CONNECTION_FORCED, NOT_ALLOWED};
use crate::stats::{Events, HandshakeOutcome};
use crate::untrusted::cut;
use crate::upstream::{ConnectError, Upstream};

/// Errors many clients can hit at once (the broker is down) are logged at
/// most this often, with a count of those held back.
pub const REPEATED_ERRORS_EVERY: Duration = Duration::from_secs(1);
/// How long warren waits for a client's Close-Ok after closing it.
pub const CLOSE_OK_WAIT: Duration = Duration::from_secs(3);

/// A client past the handshake, pinned to an upstream connection.
pub struct Admitted<'a> {
    pub hello: Hello,
    pub tune: Tune,
    pub vhost: String,
    pub upstream: Upstream,
    pub pool: PoolRef,
    /// Held for the whole session.
    pub place: Admission<'a>,
    /// Its share of its user's and vhost's quotas.
    pub quota: QuotaPlace,
}

/// How a handshake step failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Tell the client this, then close.
    Close(Close),
    /// Nothing useful can be said: just drop the connection.
    Drop,
}

/// The client being admitted, for log lines.
#[derive(Clone, Copy)]
pub struct Who {
    pub id: ClientId,
    pub peer: Peer,
}

/// Runs the handshake up to Open-Ok, all of it before `deadline`.
pub async fn admit<'a>(
    who: Who,
    deadline: tokio::time::Instant,
    reader: &mut FrameReader<ReadHalf>,
    writer: &mut WriteHalf,
    ctx: &'a Context,
) -> Result<Admitted<'a>, Refusal> {
    let config = ctx.config();
    let limit = config.client_handshake_timeout;
    let events = &ctx.stats.events;
    let start = ctx
        .client_start
        .frame(ctx.pools.settings().nodes.broker_properties());
    let greet = handshake::greet(reader, writer, &start);
    let hello = client_step(
        who,
        limit,
        events,
        tokio::time::timeout_at(deadline, greet).await,
    )?;
    // A client over --max-clients costs no login at the broker: it is
    // refused at Connection.Open, where RabbitMQ refuses its own limits.
    let place = ctx.admit_client(config.max_clients);
    let login = match place {
        Some(_) => Some(
            ctx.pools
                .authenticate(&hello.credentials)
                .await
                .map_err(|e| refusal(who, &hello, None, events, e))?,
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
    let open = handshake::tune_and_open(reader, writer, offer);
    let (tune, vhost) = client_step(
        who,
        limit,
        events,
        tokio::time::timeout_at(deadline, open).await,
    )?;
    let Some((place, login)) = place.zip(login) else {
        return Err(over_client_limit(who, &hello, &vhost, config.max_clients, events));
    };
    let (upstream, pool, quota) = seat(who, &hello, &vhost, login, ctx).await?;
    if writer
        .write_all(&method::connection_open_ok())
        .await
        .is_err()
    {
        upstream.unpin(who.id, 1);
        events.handshake(HandshakeOutcome::abandoned);
        tracing::info!(client = who.id, peer = %who.peer, user = cut(&hello.credentials.user), "client left before open-ok");
        return Err(Refusal::Drop);
    }
    Ok(Admitted {
        hello,
        tune,
        vhost,
        upstream,
        pool,
        place,
        quota,
    })
}

/// An upstream connection for the client, and its place under its user's
/// and vhost's quotas (taken only now, once the broker has vouched for the
/// credentials, so a stranger naming a user cannot take that user's
/// places), or the refusal RabbitMQ gives at Connection.Open.
async fn seat(
    who: Who,
    hello: &Hello,
    vhost: &str,
    login: PoolAdmission,
    ctx: &Context,
) -> Result<(Upstream, PoolRef, QuotaPlace), Refusal> {
    let events = &ctx.stats.events;
    let (upstream, pool) = ctx
        .pools
        .checkout(&hello.credentials, vhost, login)
        .await
        .map_err(|e| refusal(who, hello, Some(vhost), events, e))?;
    match ctx.quotas.admit(&hello.credentials.user, vhost) {
        Ok(quota) => Ok((upstream, pool, quota)),
        Err(close) => {
            upstream.unpin(who.id, 1);
            events.handshake(HandshakeOutcome::quota);
            tracing::info!(client = who.id, peer = %who.peer, user = cut(&hello.credentials.user), vhost = cut(vhost), text = cut(&close.text), "client refused by a quota");
            Err(Refusal::Close(close))
        }
    }
}

fn over_client_limit(
    who: Who,
    hello: &Hello,
    vhost: &str,
    max_clients: usize,
    events: &Events,
) -> Refusal {
    events.handshake(HandshakeOutcome::over_limit);
    static OVER_LIMIT: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
    if let Some(suppressed) = OVER_LIMIT.check() {
        tracing::warn!(client = who.id, peer = %who.peer, user = cut(&hello.credentials.user), vhost = cut(vhost), limit = max_clients, suppressed, "client refused: --max-clients reached");
    }
    Refusal::Close(reply::close(
        NOT_ALLOWED,
        format!("warren: client connection limit ({max_clients}) is reached"),
    ))
}

/// Turns a failed or timed-out client handshake step into a refusal,
/// counted and logged.
fn client_step<T>(
    who: Who,
    limit: Duration,
    events: &Events,
    result: Result<Result<T, HandshakeError>, tokio::time::error::Elapsed>,
) -> Result<T, Refusal> {
    let error = match result {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(error)) => error,
        Err(_) => {
            handshake_timed_out(who, limit, events);
            return Err(Refusal::Drop);
        }
    };
    let (outcome, refusal) = client_refusal(&error);
    events.handshake(outcome);
    match &refusal {
        Refusal::Close(close) => {
            tracing::warn!(client = who.id, peer = %who.peer, code = close.code, text = cut(&close.text), "client handshake refused");
        }
        Refusal::Drop if outcome == HandshakeOutcome::abandoned => {
            tracing::info!(client = who.id, peer = %who.peer, error = %error, "client left during the handshake");
        }
        Refusal::Drop => {
            tracing::warn!(client = who.id, peer = %who.peer, error = %error, "client handshake refused");
        }
    }
    Err(refusal)
}

/// What a client's own handshake error means: a refusal to tell it, a
/// client that went away, or an oversized or broken frame (RabbitMQ drops
/// such a socket without a word, and so does warren).
fn client_refusal(error: &HandshakeError) -> (HandshakeOutcome, Refusal) {
    match error {
        HandshakeError::Refused(close) => (HandshakeOutcome::invalid, Refusal::Close(close.clone())),
        HandshakeError::Frame(FrameError::Closed | FrameError::Io(_)) => {
            (HandshakeOutcome::abandoned, Refusal::Drop)
        }
        _ => (HandshakeOutcome::invalid, Refusal::Drop),
    }
}

pub fn handshake_timed_out(who: Who, limit: Duration, events: &Events) {
    events.handshake(HandshakeOutcome::timeout);
    static TIMED_OUT: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
    if let Some(suppressed) = TIMED_OUT.check() {
        tracing::warn!(client = who.id, peer = %who.peer, timeout = ?limit, suppressed, "client handshake timed out");
    }
}

/// Turns an upstream failure during the handshake into what the client
/// hears (see [`broker_refusal`]), counted and logged.
fn refusal(
    who: Who,
    hello: &Hello,
    vhost: Option<&str>,
    events: &Events,
    error: ConnectError,
) -> Refusal {
    let user = cut(&hello.credentials.user);
    let vhost = cut(vhost.unwrap_or(""));
    let (outcome, refusal) = broker_refusal(&error, hello.wants_auth_failure_close);
    events.handshake(outcome);
    match &error {
        ConnectError::Refused(close) => {
            tracing::warn!(client = who.id, peer = %who.peer, user, vhost, code = close.code, text = cut(&close.text), "broker refused the client");
        }
        other => {
            static UNREACHABLE: RateLimit = RateLimit::new(REPEATED_ERRORS_EVERY);
            if let Some(suppressed) = UNREACHABLE.check() {
                let error = other.to_string();
                tracing::error!(client = who.id, peer = %who.peer, user, vhost, error = cut(&error), suppressed, "no upstream connection for the client");
            }
        }
    }
    refusal
}

/// The broker's own refusal (403, 530, ...) relayed as it is, except a
/// failed login to a client that did not announce
/// `authentication_failure_close` (RabbitMQ drops those); 320 when the
/// broker cannot be reached.
fn broker_refusal(
    error: &ConnectError,
    wants_auth_failure_close: bool,
) -> (HandshakeOutcome, Refusal) {
    match error {
        ConnectError::Refused(close) if close.code == ACCESS_REFUSED => (
            HandshakeOutcome::auth_failed,
            if wants_auth_failure_close {
                Refusal::Close(close.clone())
            } else {
                Refusal::Drop
            },
        ),
        ConnectError::Refused(close) => (HandshakeOutcome::refused, Refusal::Close(close.clone())),
        other => (
            HandshakeOutcome::broker_unreachable,
            Refusal::Close(reply::close(
                CONNECTION_FORCED,
                format!("warren cannot reach the broker: {other}"),
            )),
        ),
    }
}

/// Tells a client being admitted why it is refused, and waits (briefly)
/// for its Close-Ok.
pub async fn close_during_handshake(
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
pub async fn wait_for_close_ok(reader: &mut FrameReader<ReadHalf>, limit: Duration) {
    let wait = async {
        while let Ok(frame) = reader.read_frame().await {
            if frame.method_id() == Some(ids::CONNECTION_CLOSE_OK) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(limit, wait).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16) -> ConnectError {
        ConnectError::Refused(reply::close(code, "refused by the broker"))
    }

    #[test]
    fn a_failed_login_is_dropped_unless_the_client_asked_to_be_told() {
        let (outcome, dropped) = broker_refusal(&refused(ACCESS_REFUSED), false);
        assert_eq!(outcome, HandshakeOutcome::auth_failed);
        assert_eq!(dropped, Refusal::Drop);
        let (_, told) = broker_refusal(&refused(ACCESS_REFUSED), true);
        assert_eq!(
            told,
            Refusal::Close(reply::close(403, "refused by the broker"))
        );
    }

    #[test]
    fn other_broker_refusals_are_relayed_as_they_are() {
        let (outcome, refusal) = broker_refusal(&refused(530), false);
        assert_eq!(outcome, HandshakeOutcome::refused);
        assert_eq!(
            refusal,
            Refusal::Close(reply::close(530, "refused by the broker"))
        );
    }

    #[test]
    fn an_unreachable_broker_is_connection_forced() {
        for error in [
            ConnectError::Timeout,
            ConnectError::Unreachable("connection refused".into()),
            ConnectError::Protocol("bad frame".into()),
        ] {
            let (outcome, refusal) = broker_refusal(&error, true);
            assert_eq!(outcome, HandshakeOutcome::broker_unreachable);
            let Refusal::Close(close) = refusal else {
                panic!("a 320 is told");
            };
            assert_eq!(close.code, CONNECTION_FORCED);
            assert!(
                close.text.contains("warren cannot reach the broker"),
                "{}",
                close.text
            );
        }
    }

    #[test]
    fn client_faults_are_told_only_when_there_is_something_to_say() {
        let close = reply::close(NOT_ALLOWED, "no");
        assert_eq!(
            client_refusal(&HandshakeError::Refused(close.clone())),
            (HandshakeOutcome::invalid, Refusal::Close(close))
        );
        assert_eq!(
            client_refusal(&HandshakeError::Frame(FrameError::Closed)),
            (HandshakeOutcome::abandoned, Refusal::Drop)
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            client_refusal(&HandshakeError::Frame(FrameError::Io(io))),
            (HandshakeOutcome::abandoned, Refusal::Drop)
        );
        assert_eq!(
            client_refusal(&HandshakeError::Frame(FrameError::BadEnd(0))),
            (HandshakeOutcome::invalid, Refusal::Drop)
        );
    }
}
