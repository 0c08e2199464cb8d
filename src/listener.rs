//! Accepting client connections (plain TCP or a Unix socket, and TLS), and
//! shutting down in order.
//!
//! Listeners are bound with SO_REUSEPORT (unless `--no-reuse-port`) and a
//! Unix socket is put in place by rename, so a new warren can take over the
//! same address while the old one drains: a rolling restart refuses nobody
//! (see [`Listeners::hand_over`]).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{self, Context};
use crate::config::{Config, ConfigError, Listen};
use crate::logging::RateLimit;
use crate::memory;
use crate::net::Accepted;
use crate::tls;

/// How often pools whose connections all closed are forgotten, and freed
/// memory is looked at.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// After this many clients left, freed heap is given back to the system
/// (see `memory::give_back_freed_memory`).
const DEPARTURES_BEFORE_TRIM: u64 = 256;
/// How long upstream connections get to close cleanly at exit.
const UPSTREAM_CLOSE_WAIT: Duration = Duration::from_secs(3);
/// After a drain starts, connections still arriving (handshakes the kernel
/// routed here before the hand-over) are accepted for this long before the
/// listeners close: closing a listener resets what waits in its backlog.
const HANDOVER: Duration = Duration::from_millis(500);
/// Pending connections per listener.
const BACKLOG: u32 = 1024;
/// Linux's SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h), missing from
/// the libc crate for Linux.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

enum Plain {
    Tcp(TcpListener),
    /// With the path it was renamed to and its inode, to remove it at exit
    /// only if no successor has put its own socket there.
    Unix(UnixListener, PathBuf, u64),
}

/// The bound listeners.
pub struct Listeners {
    plain: Option<Plain>,
    tls: Option<(TcpListener, RwLock<TlsAcceptor>)>,
}

/// Binds the listeners `config` asks for; the error names the address.
pub async fn bind(config: &Config) -> Result<Listeners, String> {
    let plain = match &config.listen {
        Listen::Tcp(_) if config.port == 0 => None,
        Listen::Tcp(host) => Some(Plain::Tcp(
            bind_tcp(host, config.port, config.reuse_port)
                .await
                .map_err(|e| format!("cannot listen on {host}:{}: {e}", config.port))?,
        )),
        Listen::Unix(path) => Some(
            bind_unix(path, config.socket_mode)
                .map_err(|e| format!("cannot listen on unix:{}: {e}", path.display()))?,
        ),
    };
    let tls = match (&config.tls, &config.listen) {
        (Some(tls), Listen::Tcp(host)) => {
            let acceptor = TlsAcceptor::from(tls::server_config(tls).map_err(|e| e.0)?);
            let listener = bind_tcp(host, tls.port, config.reuse_port)
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

/// Binds like `TcpListener::bind` (each address `host` resolves to, in
/// turn), with SO_REUSEPORT when `reuse_port`.
pub async fn bind_tcp(host: &str, port: u16, reuse_port: bool) -> io::Result<TcpListener> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(reuse_port)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// Binds next to `path` and renames into place: an old warren's socket is
/// replaced atomically, so clients never find the path missing.
fn bind_unix(path: &Path, mode: u32) -> io::Result<Plain> {
    let mut fresh = path.as_os_str().to_owned();
    fresh.push(format!(".{}.new", std::process::id()));
    let fresh = PathBuf::from(fresh);
    let _ = std::fs::remove_file(&fresh);
    let listener = UnixListener::bind(&fresh)?;
    let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&fresh, path))
        .and_then(|()| std::fs::metadata(path));
    match placed {
        Ok(meta) => Ok(Plain::Unix(listener, path.to_path_buf(), meta.ino())),
        Err(e) => {
            let _ = std::fs::remove_file(&fresh);
            Err(e)
        }
    }
}

impl Listeners {
    /// Where clients can connect, plain listener first.
    pub fn describe(&self) -> Vec<String> {
        let mut parts = Vec::new();
        match &self.plain {
            Some(Plain::Tcp(l)) => parts.push(local(l)),
            Some(Plain::Unix(_, path, _)) => parts.push(format!("unix:{}", path.display())),
            None => {}
        }
        if let Some((l, _)) = &self.tls {
            parts.push(format!("{} (TLS)", local(l)));
        }
        parts
    }

    /// New certificates for the TLS listener (a reload); connections
    /// already open keep theirs.
    pub fn reload_tls(&self, config: &Config) -> Result<(), ConfigError> {
        if let (Some((_, acceptor)), Some(tls)) = (&self.tls, &config.tls) {
            let fresh = TlsAcceptor::from(tls::server_config(tls)?);
            *acceptor.write().expect("acceptor lock") = fresh;
        }
        Ok(())
    }

    async fn accept(&self) -> io::Result<Accepted> {
        let plain = async {
            match &self.plain {
                Some(Plain::Tcp(l)) => l.accept().await.map(|(s, peer)| Accepted::Tcp(s, peer)),
                Some(Plain::Unix(l, _, _)) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
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

    /// Steers new TCP connections to the other listener of the port's
    /// SO_REUSEPORT group: a successor warren bound after this one. The
    /// group's sockets are numbered in the order they joined and a closing
    /// one's place is taken by the last, so with two sockets the old one is
    /// 0 and the successor 1; a filter that answers 1 sends every new
    /// connection there, and with no successor the kernel ignores the
    /// out-of-range answer and keeps choosing as before.
    fn hand_over(&self) {
        let tcp = [
            match &self.plain {
                Some(Plain::Tcp(l)) => Some(l),
                _ => None,
            },
            self.tls.as_ref().map(|(l, _)| l),
        ];
        for listener in tcp.into_iter().flatten() {
            let mut always_second = [libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: 1,
            }];
            let program = libc::sock_fprog {
                len: 1,
                filter: always_second.as_mut_ptr(),
            };
            // SAFETY: the fd is a live listening socket owned by `listener`;
            // the kernel copies the program during the call.
            let attached = unsafe {
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_ATTACH_REUSEPORT_CBPF,
                    &program as *const libc::sock_fprog as *const libc::c_void,
                    std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            };
            if attached != 0 {
                tracing::debug!(error = %io::Error::last_os_error(), "cannot steer connections to a successor");
            }
        }
    }

    /// Removes the Unix socket file unless a successor's socket replaced it.
    fn remove_socket_file(&self) {
        if let Some(Plain::Unix(_, path, inode)) = &self.plain {
            if std::fs::metadata(path).is_ok_and(|meta| meta.ino() == *inode) {
                let _ = std::fs::remove_file(path);
            }
        }
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
/// the only strong reference), waits up to the term timeout for
/// clients to leave, closes the rest with 320, and closes the upstream
/// connections cleanly.
pub async fn run(listeners: Arc<Listeners>, ctx: Arc<Context>, stop: CancellationToken) {
    let sessions = TaskTracker::new();
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut departed_at_trim = 0;
    loop {
        tokio::select! {
            accepted = listeners.accept() => spawn_or_back_off(accepted, &sessions, &ctx).await,
            _ = prune.tick() => {
                ctx.pools.prune();
                let departed = ctx.stats.departed_clients();
                if departed >= departed_at_trim + DEPARTURES_BEFORE_TRIM {
                    memory::give_back_freed_memory();
                    departed_at_trim = departed;
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    listeners.hand_over();
    let handover_ends = tokio::time::sleep(HANDOVER);
    tokio::pin!(handover_ends);
    loop {
        tokio::select! {
            accepted = listeners.accept() => spawn_or_back_off(accepted, &sessions, &ctx).await,
            _ = &mut handover_ends => break,
        }
    }
    listeners.remove_socket_file();
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
    let all_closed = futures_join_all(upstreams.iter().map(|u| u.ended()));
    let _ = tokio::time::timeout(UPSTREAM_CLOSE_WAIT, all_closed).await;
}

async fn spawn_or_back_off(
    accepted: io::Result<Accepted>,
    sessions: &TaskTracker,
    ctx: &Arc<Context>,
) {
    match accepted {
        Ok(accepted) => {
            sessions.spawn(client::serve(accepted, ctx.clone()));
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

async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    for future in futures {
        future.await;
    }
}
