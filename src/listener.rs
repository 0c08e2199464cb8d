//! Accepting client connections and shutting down in order.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{self, Context};
use crate::logging::RateLimit;
use crate::memory;

/// How often pools whose connections all closed are forgotten, and freed
/// memory is looked at.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// After this many clients left, freed heap is given back to the system
/// (see `memory::give_back_freed_memory`).
const DEPARTURES_BEFORE_TRIM: u64 = 256;
/// How long upstream connections get to close cleanly at exit.
const UPSTREAM_CLOSE_WAIT: Duration = Duration::from_secs(3);

pub async fn bind(ctx: &Context) -> io::Result<TcpListener> {
    let config = &ctx.config;
    TcpListener::bind((config.listen_address.as_str(), config.port)).await
}

/// Serves clients until `stop` is cancelled, then drains: waits up to the
/// term timeout for clients to leave, closes the rest with 320, and closes
/// the upstream connections cleanly.
pub async fn run(listener: TcpListener, ctx: Arc<Context>, stop: CancellationToken) {
    let sessions = TaskTracker::new();
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut departed_at_trim = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    sessions.spawn(client::serve(stream, peer, ctx.clone()));
                }
                Err(e) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    static ACCEPT_FAILED: RateLimit = RateLimit::new(Duration::from_secs(1));
                    if let Some(suppressed) = ACCEPT_FAILED.check() {
                        tracing::error!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
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
    drop(listener);
    sessions.close();
    tracing::info!(
        clients = sessions.len(),
        "stopped accepting; waiting for clients to leave"
    );
    let drained = match ctx.config.term_timeout {
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

async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    for future in futures {
        future.await;
    }
}
