//! Client connections: the server-side handshake and the session that
//! serves a client until it leaves.

mod handshake;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use session::serve;

use crate::config::Config;
use crate::link::ClientId;
use crate::pool::Pools;
use crate::stats::Stats;

/// What every client session shares.
pub struct Context {
    pub config: Config,
    pub pools: Pools,
    pub stats: Arc<Stats>,
    /// Cancelled when the shutdown grace period is over: sessions still open
    /// close their client with 320 CONNECTION_FORCED.
    pub force_close: CancellationToken,
    next_client_id: AtomicU64,
}

impl Context {
    pub fn new(config: Config, pools: Pools, stats: Arc<Stats>) -> Self {
        Context {
            config,
            pools,
            stats,
            force_close: CancellationToken::new(),
            next_client_id: AtomicU64::new(1),
        }
    }

    pub fn next_client_id(&self) -> ClientId {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}
