//! Accepting client connections (plain TCP or a Unix socket, and TLS), and
//! shutting down in order.
//!
//! Listeners are bound with SO_REUSEPORT (unless `--no-reuse-port`) and a
//! Unix socket is put in place by rename, so a new warren can take over the
//! same address while the old one drains: a rolling restart refuses nobody
//! (see [`handover`]).

mod bind;
mod handover;

use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use bind::tcp as bind_tcp;
use bind::UnixSocket;
use handover::Probe;

use crate::client::{self, Context};
use crate::config::{Config, Listen};
use crate::logging::RateLimit;
use crate::net::Accepted;
use crate::proxy_protocol;

/// How long upstream connections get to close cleanly at exit.
const UPSTREAM_CLOSE_WAIT: Duration = Duration::from_secs(3);
/// After a drain starts, connections still arriving (handshakes the kernel
/// routed here before the hand-over) are accepted for this long before the
/// listeners close: closing a listener resets what waits in its backlog.
const HANDOVER: Duration = Duration::from_millis(500);

enum Plain {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

/// The bound listeners.
pub struct Listeners {
    plain: Option<Plain>,
    tls: Option<(TcpListener, RwLock<TlsAcceptor>)>,
}

/// Binds the listeners `config` asks for, the TLS one with `server_tls`
/// (built from `config.tls`); the error names the address. A Unix socket
/// is not reachable until [`Listeners::publish`].
pub async fn bind(
    config: &Config,
    server_tls: Option<Arc<ServerConfig>>,
) -> Result<Listeners, String> {
    let plain = match &config.listen {
        Listen::Tcp(_) if config.port == 0 => None,
        Listen::Tcp(host) => Some(Plain::Tcp(
            bind::tcp(host, config.port, config.reuse_port)
                .await
                .map_err(|e| format!("cannot listen on {host}:{}: {e}", config.port))?,
        )),
        Listen::Unix(path) => Some(Plain::Unix(
            UnixSocket::bind(path, config.socket_mode)
                .map_err(|e| format!("cannot listen on unix:{}: {e}", path.display()))?,
        )),
    };
    let tls = match (&config.tls, server_tls, &config.listen) {
        (Some(tls), Some(server_tls), Listen::Tcp(host)) => {
            let acceptor = TlsAcceptor::from(server_tls);
            let listener = bind::tcp(host, tls.port, config.reuse_port)
                .await
                .map_err(|e| format!("cannot listen for TLS on {host}:{}: {e}", tls.port))?;
            Some((listener, RwLock::new(acceptor)))
        }
        _ => None,
    };
    if plain.is_none() && tls.is_none() {
        return Err("no listener: --port is 0 and no TLS listener is configured".into());
    }
    Ok(Listeners { plain, tls })
}

impl Listeners {
    /// Puts a Unix socket at its path: the last step of starting, so a
    /// warren that fails earlier leaves a running one's socket alone.
    pub fn publish(&mut self) -> Result<(), String> {
        match &mut self.plain {
            Some(Plain::Unix(socket)) => socket
                .publish()
                .map_err(|e| format!("cannot listen on unix:{}: {e}", socket.path().display())),
            _ => Ok(()),
        }
    }

    /// Where clients can connect, plain listener first.
    pub fn describe(&self) -> Vec<String> {
        let mut parts = Vec::new();
        match &self.plain {
            Some(Plain::Tcp(l)) => parts.push(local(l)),
            Some(Plain::Unix(socket)) => parts.push(format!("unix:{}", socket.path().display())),
            None => {}
        }
        if let Some((l, _)) = &self.tls {
            parts.push(format!("{} (TLS)", local(l)));
        }
        parts
    }

    /// New certificates for the TLS listener (a reload); connections
    /// already open keep theirs.
    pub fn set_tls(&self, server_tls: Option<Arc<ServerConfig>>) {
        if let (Some((_, acceptor)), Some(server_tls)) = (&self.tls, server_tls) {
            *acceptor.write().expect("acceptor lock") = TlsAcceptor::from(server_tls);
        }
    }

    async fn accept(&self) -> io::Result<Accepted> {
        let plain = async {
            match &self.plain {
                Some(Plain::Tcp(l)) => l.accept().await.map(|(s, peer)| Accepted::Tcp(s, peer)),
                Some(Plain::Unix(socket)) => socket
                    .listener
                    .accept()
                    .await
                    .map(|(s, _)| Accepted::Unix(s)),
                None => std::future::pending().await,
            }
        };
        let tls = async {
            match &self.tls {
                Some((l, acceptor)) => {
                    let (stream, peer) = l.accept().await?;
                    let acceptor = acceptor.read().expect("acceptor lock").clone();
                    Ok(Accepted::Tls(stream, peer, acceptor))
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = plain => accepted,
            accepted = tls => accepted,
        }
    }

    fn tcp_listeners(&self) -> [Option<&TcpListener>; 2] {
        let plain = match &self.plain {
            Some(Plain::Tcp(l)) => Some(l),
            _ => None,
        };
        [plain, self.tls.as_ref().map(|(l, _)| l)]
    }

    /// Steers new TCP connections to a successor (see [`handover`]).
    async fn hand_over(&self) -> Vec<Probe> {
        let mut probes = Vec::new();
        for (index, listener) in self.tcp_listeners().into_iter().enumerate() {
            let Some(listener) = listener else { continue };
            if let Some(probe) = handover::steer_away(listener, index).await {
                probes.push(probe);
            }
        }
        probes
    }

    /// Whether `accepted` is one of our probes; if so, it came back to us.
    fn is_probe(&self, accepted: &Accepted, probes: &[Probe]) -> bool {
        let (Accepted::Tcp(_, peer) | Accepted::Tls(_, peer, _)) = accepted else {
            return false;
        };
        let Some(probe) = probes.iter().find(|p| p.from == *peer) else {
            return false;
        };
        if let Some(listener) = self.tcp_listeners()[probe.listener] {
            handover::probe_returned(listener);
        }
        true
    }
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Serves clients until `stop` is cancelled, then drains: hands new
/// connections over to a successor, closes the listeners (this must hold
/// the only strong reference), waits up to the term timeout for clients to
/// leave, closes the rest with 320, and closes the upstream connections
/// cleanly.
pub async fn run(listeners: Arc<Listeners>, ctx: Arc<Context>, stop: CancellationToken) {
    let sessions = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = accept_when_room(&listeners, &ctx) => spawn_or_back_off(accepted, &sessions, &ctx).await,
            _ = stop.cancelled() => break,
        }
    }
    let handover_ends = tokio::time::sleep(HANDOVER);
    let probes = listeners.hand_over().await;
    tokio::pin!(handover_ends);
    loop {
        tokio::select! {
            accepted = listeners.accept() => match accepted {
                Ok(accepted) if listeners.is_probe(&accepted, &probes) => {}
                other => spawn_or_back_off(other, &sessions, &ctx).await,
            },
            _ = &mut handover_ends => break,
        }
    }
    drop(probes);
    drop(listeners);
    sessions.close();
    tracing::info!(
        clients = sessions.len(),
        "stopped accepting; waiting for clients to leave"
    );
    let drained = match ctx.config().term_timeout {
        Some(limit) => tokio::time::timeout(limit, sessions.wait()).await.is_ok(),
        None => {
            sessions.wait().await;
            true
        }
    };
    if !drained {
        tracing::info!(clients = sessions.len(), "closing the remaining clients");
        ctx.force_close.cancel();
        sessions.wait().await;
    }
    let upstreams = ctx.pools.upstreams();
    for upstream in &upstreams {
        upstream.shutdown();
    }
    let all_closed = wait_all(upstreams.iter().map(|u| u.ended()));
    let _ = tokio::time::timeout(UPSTREAM_CLOSE_WAIT, all_closed).await;
}

/// Accepts the next connection once fewer than `--max-pending-handshakes`
/// are in progress; until then connections wait in the kernel's backlog.
async fn accept_when_room(listeners: &Listeners, ctx: &Context) -> io::Result<Accepted> {
    ctx.pending
        .wait_for_room(ctx.config().max_pending_handshakes)
        .await;
    listeners.accept().await
}

async fn spawn_or_back_off(
    accepted: io::Result<Accepted>,
    sessions: &TaskTracker,
    ctx: &Arc<Context>,
) {
    match accepted {
        Ok(accepted) => {
            let peer = accepted.peer();
            let config = ctx.config();
            let per_source = config.max_pending_handshakes_per_source;
            // A balancer's connections are counted under the client its
            // PROXY header names, once it is read.
            let pending = match proxy_protocol::expected_from(&config.proxy_protocol_from, peer) {
                true => Some(ctx.pending.enter_unattributed()),
                false => ctx.pending.enter(peer, per_source),
            };
            match pending {
                Some(pending) => {
                    sessions.spawn(client::serve(accepted, pending, ctx.clone()));
                }
                None => {
                    // Dropped unread: nothing it sent has been looked at.
                    drop(accepted);
                    ctx.stats.events.accepted.inc();
                    client::refused_over_source_limit(peer, per_source, &ctx.stats.events);
                }
            }
        }
        Err(e) => {
            // Out of descriptors and similar: back off instead of spinning.
            static ACCEPT_FAILED: RateLimit = RateLimit::new(Duration::from_secs(1));
            if let Some(suppressed) = ACCEPT_FAILED.check() {
                tracing::error!(error = %e, suppressed, "accept failed");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits for every future, one after the other.
async fn wait_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    for future in futures {
        future.await;
    }
}
