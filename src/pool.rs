//! Upstream connections grouped by the credentials and vhost they were
//! opened with. The only structure shared by all client sessions; touched
//! when a client connects, never per frame.
//!
//! A pool is keyed by (vhost, user) and then matched on the salted password
//! fingerprint in constant time: a client is let in only next to an upstream
//! connection that the broker accepted with exactly its credentials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::{Credentials, Fingerprint, Salt};
use crate::upstream::{ConnectError, Upstream, UpstreamSettings};

struct Pool {
    fingerprint: Fingerprint,
    /// Kept to open more connections for this pool; zeroized on drop.
    credentials: Credentials,
    upstreams: Mutex<Vec<Upstream>>,
    /// Serialises connection opening so a burst of new clients opens one
    /// upstream connection, not one each.
    opening: tokio::sync::Mutex<()>,
}

impl Pool {
    /// Pins the client to a live connection with room, dropping dead ones.
    fn try_pin_any(&self) -> Option<Upstream> {
        let mut upstreams = self.upstreams.lock().expect("pool lock");
        upstreams.retain(|u| !u.is_closed());
        upstreams.iter().find(|u| u.try_pin()).cloned()
    }

    fn is_empty(&self) -> bool {
        let mut upstreams = self.upstreams.lock().expect("pool lock");
        upstreams.retain(|u| !u.is_closed());
        upstreams.is_empty()
    }
}

type PoolKey = (String, String);

pub struct Pools {
    settings: UpstreamSettings,
    salt: Salt,
    pools: Mutex<HashMap<PoolKey, Vec<Arc<Pool>>>>,
    next_upstream_id: AtomicU64,
}

impl Pools {
    pub fn new(settings: UpstreamSettings) -> Self {
        Pools {
            settings,
            salt: Salt::random(),
            pools: Mutex::new(HashMap::new()),
            next_upstream_id: AtomicU64::new(1),
        }
    }

    /// Finds or opens an upstream connection for these credentials and pins
    /// the caller to it. The caller must `unpin` when it leaves.
    pub async fn checkout(
        &self,
        credentials: &Credentials,
        vhost: &str,
    ) -> Result<Upstream, ConnectError> {
        let pool = self.pool_for(credentials, vhost);
        if let Some(upstream) = pool.try_pin_any() {
            return Ok(upstream);
        }
        let _opening = pool.opening.lock().await;
        if let Some(upstream) = pool.try_pin_any() {
            return Ok(upstream);
        }
        let id = self.next_upstream_id.fetch_add(1, Ordering::Relaxed);
        match Upstream::connect(&self.settings, &pool.credentials, vhost, id).await {
            Ok(upstream) => {
                let pinned = upstream.try_pin();
                debug_assert!(pinned, "a new connection has room");
                pool.upstreams
                    .lock()
                    .expect("pool lock")
                    .push(upstream.clone());
                Ok(upstream)
            }
            Err(e) => {
                self.remove_if_empty(credentials, vhost, &pool);
                Err(e)
            }
        }
    }

    fn pool_for(&self, credentials: &Credentials, vhost: &str) -> Arc<Pool> {
        let fingerprint = Fingerprint::of(&self.salt, &credentials.password);
        let mut pools = self.pools.lock().expect("pools lock");
        let candidates = pools
            .entry((vhost.to_string(), credentials.user.clone()))
            .or_default();
        if let Some(pool) = candidates
            .iter()
            .find(|p| p.fingerprint.matches(&fingerprint))
        {
            return pool.clone();
        }
        let pool = Arc::new(Pool {
            fingerprint,
            credentials: credentials.clone(),
            upstreams: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
        });
        candidates.push(pool.clone());
        pool
    }

    fn remove_if_empty(&self, credentials: &Credentials, vhost: &str, pool: &Arc<Pool>) {
        let key = (vhost.to_string(), credentials.user.clone());
        let mut pools = self.pools.lock().expect("pools lock");
        if let Some(candidates) = pools.get_mut(&key) {
            candidates.retain(|p| !(Arc::ptr_eq(p, pool) && p.is_empty()));
            if candidates.is_empty() {
                pools.remove(&key);
            }
        }
    }

    /// Forgets pools whose connections have all closed, and with them the
    /// credentials they held.
    pub fn prune(&self) {
        let mut pools = self.pools.lock().expect("pools lock");
        for candidates in pools.values_mut() {
            candidates.retain(|p| !p.is_empty() || p.opening.try_lock().is_err());
        }
        pools.retain(|_, candidates| !candidates.is_empty());
    }

    /// Every live upstream connection.
    pub fn upstreams(&self) -> Vec<Upstream> {
        let pools = self.pools.lock().expect("pools lock");
        pools
            .values()
            .flatten()
            .flat_map(|p| p.upstreams.lock().expect("pool lock").clone())
            .filter(|u| !u.is_closed())
            .collect()
    }
}
