//! What the process tidies up now and then, away from the data path:
//! pools whose connections all closed are forgotten (and users and vhosts
//! that hold nothing under their quotas), and heap freed by
//! departed clients is given back to the system.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::Context;
use crate::memory;

/// How often pools are pruned and freed memory is looked at.
const EVERY: Duration = Duration::from_secs(5);
/// After this many clients left, freed heap is given back to the system
/// (see `memory::give_back_freed_memory`).
const DEPARTURES_BEFORE_TRIM: u64 = 256;

/// Tidies up every few seconds until `stop`.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    let mut departed_at_trim = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ctx.pools.prune();
                ctx.quotas.prune();
                let departed = ctx.stats.departed_clients();
                if departed >= departed_at_trim + DEPARTURES_BEFORE_TRIM {
                    memory::give_back_freed_memory();
                    departed_at_trim = departed;
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}
