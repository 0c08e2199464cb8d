//! Client connections, from accept to close.
//!
//! - [`serve`] wires one connection's parts together;
//! - `admission` runs the handshake ([`handshake`]) in the broker's order
//!   and says what a refused client hears; `pending` bounds handshakes;
//!   [`server_properties`] is what clients are told about the server;
//! - `session` serves an admitted client: each frame is checked
//!   ([`frame_check`]), routed by its `channel_table`, judged by the
//!   channel's [`usage`] and forwarded, small publishes through a
//!   `publish_batch`.

mod admission;
mod channel_table;
/// Public for the fuzz targets (`fuzz/`).
pub mod frame_check;
/// Public for the fuzz targets (`fuzz/`).
pub mod handshake;
mod pending;
mod publish_batch;
mod serve;
/// Public for the fuzz targets (`fuzz/`).
pub mod server_properties;
mod session;
/// Public for the fuzz targets (`fuzz/`).
pub mod usage;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

pub use pending::{refused_over_source_limit, PendingHandshakes};
use server_properties::ClientStart;
pub use serve::serve;

use crate::config::Config;
use crate::held::HeldBytes;
use crate::link::ClientId;
use crate::pause::Pauses;
use crate::pool::Pools;
use crate::quota::Quotas;
use crate::stats::Stats;

/// What every client session shares.
pub struct Context {
    /// Replaced on reload; a session reads it when it needs a setting.
    config: RwLock<Arc<Config>>,
    pub pools: Pools,
    pub stats: Arc<Stats>,
    /// Cancelled when the shutdown grace period is over: sessions still open
    /// close their client with 320 CONNECTION_FORCED.
    pub force_close: CancellationToken,
    next_client_id: AtomicU64,
    /// Clients past Connection.Open, for `--max-clients`.
    admitted: AtomicUsize,
    /// Bytes held in partly received publishes, for `--max-held-publish-mib`.
    pub held_bytes: Arc<HeldBytes>,
    /// Bytes of large messages queued for consumers beyond their queue
    /// bound, for `--max-held-delivery-mib`.
    pub held_deliveries: Arc<HeldBytes>,
    /// Bytes of publishes the broker has not confirmed, kept to publish
    /// again after a lost connection, for `--hold-buffer-mib`.
    pub hold_buffer: Arc<HeldBytes>,
    /// Handshakes not finished yet, for `--max-pending-handshakes`.
    pub pending: Arc<PendingHandshakes>,
    /// Vhosts whose publishes and channel opens wait (`warren ctl pause`).
    pub pauses: Pauses,
    /// The Connection.Start clients get.
    pub client_start: ClientStart,
    /// `[[quota]]`s and what each user and vhost holds.
    pub quotas: Arc<Quotas>,
}

/// A place under `--max-clients`, given back on drop.
pub struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Context {
    pub fn new(config: Config, pools: Pools, stats: Arc<Stats>, quotas: Arc<Quotas>) -> Self {
        Context {
            quotas,
            held_bytes: HeldBytes::new(config.max_held_publish_bytes),
            held_deliveries: HeldBytes::new(config.max_held_delivery_bytes),
            hold_buffer: HeldBytes::new(config.hold_buffer_bytes),
            config: RwLock::new(Arc::new(config)),
            pools,
            stats,
            force_close: CancellationToken::new(),
            next_client_id: AtomicU64::new(1),
            admitted: AtomicUsize::new(0),
            pending: Arc::default(),
            pauses: Pauses::default(),
            client_start: ClientStart::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    pub fn set_config(&self, config: Config) {
        self.quotas.set_rules(config.quotas.clone());
        self.held_bytes.set_limit(config.max_held_publish_bytes);
        self.held_deliveries
            .set_limit(config.max_held_delivery_bytes);
        self.hold_buffer.set_limit(config.hold_buffer_bytes);
        *self.config.write().expect("config lock") = Arc::new(config);
    }

    pub fn next_client_id(&self) -> ClientId {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a place for one more client, unless `limit` (0: none) are in.
    pub fn admit_client(&self, limit: usize) -> Option<Admission<'_>> {
        self.admitted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Admission(&self.admitted))
    }
}
