//! Upstream connections grouped by the credentials and vhost they were
//! opened with. The only structure shared by all client sessions; touched
//! when a client connects, never per frame.
//!
//! A pool is keyed by (route, vhost, user) and then matched on the salted
//! password fingerprint in constant time: a client is let in only next to an
//! upstream connection that the broker accepted with exactly its
//! credentials, on the nodes of its route ([`routes`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

mod connections;
mod one;
mod routes;

pub use one::Kind;
use one::Pool;
pub use routes::{RouteEntry, Routes};

use zeroize::Zeroizing;

use crate::auth::{Credentials, Fingerprint, Salt};
use crate::config::{ConsumerMode, Scope};
use crate::protocol::limits::RABBITMQ_FRAME_MAX;
use crate::protocol::reply::{self, NOT_ALLOWED};
use crate::quota::Quotas;
use crate::upstream::{ConnectError, PendingUpstream, Room, Upstream, UpstreamSettings};

/// Route, vhost, user.
type PoolKey = (String, String, String);

fn key(route: &str, vhost: &str, user: &str) -> PoolKey {
    (route.to_string(), vhost.to_string(), user.to_string())
}

/// The pool among one key's that was opened with this password and still
/// takes clients.
fn matching<'a>(candidates: &'a [Arc<Pool>], fingerprint: &Fingerprint) -> Option<&'a Arc<Pool>> {
    candidates
        .iter()
        .find(|p| !p.retired.load(Ordering::Relaxed) && p.fingerprint.matches(fingerprint))
}

/// A pool as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSummary {
    pub route: String,
    pub vhost: String,
    pub user: String,
    pub upstreams: usize,
    pub clients: usize,
}

/// The pool a client belongs to, kept by its session for `Pools::rebalance`
/// and `Pools::reconnect`.
#[derive(Clone)]
pub struct PoolRef(Arc<Pool>);

/// The outcome of a successful login check.
pub enum Admission {
    /// A live pool was opened with these credentials.
    Known,
    /// The client's route depends on its vhost: the broker of that route
    /// checks the credentials when the client names it (Connection.Open).
    AtOpen,
    /// The broker accepted them on this new connection, not yet bound to a
    /// vhost. Holds the user's login turn until the connection is in a pool.
    Fresh {
        pending: PendingUpstream,
        _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    },
    /// The broker could not be asked (this is why), but a pool vouches for
    /// the credentials through the outage (`Connections::vouches_through_outage`):
    /// the client is admitted if its vhost's pool does too, and held.
    Held(ConnectError),
}

/// How long a client waits for another client's login with the same user
/// to finish before it logs in on its own.
/// A local client's Tune and Open take a millisecond or two; a client that
/// takes longer does not hold the others up beyond this.
const LOGIN_WAIT: Duration = Duration::from_millis(250);

pub struct Pools {
    /// Replaced on reload; connections keep the settings they opened with.
    routes: RwLock<Arc<Routes>>,
    salt: Salt,
    pools: Mutex<HashMap<PoolKey, Vec<Arc<Pool>>>>,
    next_upstream_id: AtomicU64,
    /// The broker's frame_max as last negotiated (RabbitMQ's default until
    /// a connection says otherwise).
    broker_frame_max: AtomicU32,
    /// Per user: held while a login of that user is under way.
    login_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// For `max_upstream_connections` per user and per vhost.
    quotas: Arc<Quotas>,
}

impl Pools {
    pub fn new(routes: Routes, quotas: Arc<Quotas>) -> Self {
        Pools {
            quotas,
            routes: RwLock::new(Arc::new(routes)),
            salt: Salt::random(),
            pools: Mutex::new(HashMap::new()),
            next_upstream_id: AtomicU64::new(1),
            broker_frame_max: AtomicU32::new(RABBITMQ_FRAME_MAX),
            login_locks: Mutex::new(HashMap::new()),
        }
    }

    /// What new upstream connections are opened with, by route.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().expect("routes lock").clone()
    }

    /// The default route's settings (and those every route shares).
    pub fn settings(&self) -> Arc<UpstreamSettings> {
        self.routes().default_route().clone()
    }

    /// Applies to connections opened from now on (a reload). Pools of a
    /// route that is gone or goes elsewhere now take no new clients.
    pub fn reconfigure(&self, routes: Routes) {
        let mut current = self.routes.write().expect("routes lock");
        let retargeted = routes.retargeted_since(&current);
        *current = Arc::new(routes);
        drop(current);
        if retargeted.is_empty() {
            return;
        }
        tracing::info!(routes = %retargeted.join(", "), "routes changed: their pools take no new clients and close as their clients leave");
        let pools = self.pools.lock().expect("pools lock");
        for pool in pools.values().flatten() {
            if retargeted.contains(&pool.settings.route) {
                pool.retired.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Whether clients of this pool's route that start consuming get a
    /// connection of their own.
    pub fn consumer_mode_of(&self, pool: &PoolRef) -> ConsumerMode {
        self.settings_of(&pool.0).consumer_mode
    }

    /// The nodes of the client's route.
    pub fn nodes_of(&self, pool: &PoolRef) -> Arc<crate::upstream::Nodes> {
        self.settings_of(&pool.0).nodes.clone()
    }

    /// The settings a pool opens connections with: its route's current ones.
    /// A retired pool keeps what it was made with: its clients stay on the
    /// brokers they came to.
    fn settings_of(&self, pool: &Pool) -> Arc<UpstreamSettings> {
        if pool.retired.load(Ordering::Relaxed) {
            return pool.settings.clone();
        }
        self.routes()
            .named(&pool.settings.route)
            .unwrap_or(&pool.settings)
            .clone()
    }

    /// The largest frame the broker accepts, so clients are never offered
    /// more than what can be forwarded unsplit.
    pub fn broker_frame_max(&self) -> u32 {
        self.broker_frame_max.load(Ordering::Relaxed)
    }

    /// Checks a client's credentials the way the broker would at
    /// Start-Ok, before any vhost is known: good if a live pool was opened
    /// with exactly them (for any vhost), otherwise the broker is asked with
    /// a new connection, which the client's vhost will then use.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Admission, ConnectError> {
        let Some(settings) = self.routes().for_login(&credentials.user).cloned() else {
            return Ok(Admission::AtOpen);
        };
        let fingerprint = Fingerprint::of(&self.salt, &credentials.password);
        if self.is_known(&settings.route, &credentials.user, &fingerprint) {
            return Ok(Admission::Known);
        }
        // A burst of new clients with the same login (a cold start) would
        // each open an upstream connection: the first logs in and holds the
        // user's login lock until its connection joins a pool, the others
        // wait for that (a little) and then find it.
        let lock = self.login_lock(&credentials.user);
        let turn = tokio::time::timeout(LOGIN_WAIT, lock.lock_owned())
            .await
            .ok();
        if self.is_known(&settings.route, &credentials.user, &fingerprint) {
            return Ok(Admission::Known);
        }
        let pending = match Upstream::login(&settings, credentials, None).await {
            Ok(pending) => pending,
            Err(error)
                if !error.is_final()
                    && self.vouched_through_outage(&settings, credentials, &fingerprint) =>
            {
                return Ok(Admission::Held(error));
            }
            Err(error) => return Err(error),
        };
        self.broker_frame_max
            .store(pending.frame_max(), Ordering::Relaxed);
        Ok(Admission::Fresh {
            pending,
            _turn: turn,
        })
    }

    fn is_known(&self, route: &str, user: &str, fingerprint: &Fingerprint) -> bool {
        self.any_pool_of(route, user, fingerprint, Pool::vouches)
    }

    /// Whether a pool of this route, user and password, for any vhost,
    /// passes `test`.
    fn any_pool_of(
        &self,
        route: &str,
        user: &str,
        fingerprint: &Fingerprint,
        test: impl Fn(&Pool) -> bool,
    ) -> bool {
        let pools = self.pools.lock().expect("pools lock");
        pools
            .iter()
            .filter(|((pool_route, _, pool_user), _)| pool_route == route && pool_user == user)
            .flat_map(|(_, candidates)| candidates)
            .any(|p| p.fingerprint.matches(fingerprint) && test(p))
    }

    /// A pool of this route, user and password, for any vhost, vouches for
    /// them while the broker is unreachable.
    fn vouched_through_outage(
        &self,
        settings: &UpstreamSettings,
        credentials: &Credentials,
        fingerprint: &Fingerprint,
    ) -> bool {
        self.any_pool_of(&settings.route, &credentials.user, fingerprint, |p| {
            p.vouches_through_outage(settings)
        })
    }

    fn login_lock(&self, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.login_locks.lock().expect("login locks");
        locks.entry(user.to_string()).or_default().clone()
    }

    /// Pins the client to an upstream connection for its vhost: the
    /// connection its login opened, a pooled one with room, or a new one.
    /// The caller must `unpin` when it leaves.
    pub async fn checkout(
        &self,
        credentials: &Credentials,
        vhost: &str,
        admission: Admission,
    ) -> Result<(Upstream, PoolRef), ConnectError> {
        let checked_out = match admission {
            Admission::Held(unreachable) => Err(unreachable),
            Admission::Known | Admission::AtOpen => {
                let pool = self.pool_for(credentials, vhost);
                self.pin_or_open(&pool, vhost, Kind::Shared, Room::Any)
                    .await
                    .map(|u| (u, PoolRef(pool)))
            }
            Admission::Fresh { pending, _turn } => {
                self.open_fresh(credentials, vhost, pending, _turn).await
            }
        };
        match checked_out {
            // The broker went away between the login and now, or is away.
            Err(error) if !error.is_final() => self.stand_in(credentials, vhost, error),
            checked_out => checked_out,
        }
    }

    /// Opens the connection a fresh login made for `vhost`, unless the pool
    /// filled meanwhile. `_turn`, the user's login turn, is given up only
    /// once the connection is in the pool.
    async fn open_fresh(
        &self,
        credentials: &Credentials,
        vhost: &str,
        pending: PendingUpstream,
        _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<(Upstream, PoolRef), ConnectError> {
        let pool = self.pool_for(credentials, vhost);
        let settings = self.settings_of(&pool);
        // Logins run in parallel (one waits for another only so long); the
        // pool may have filled meanwhile.
        let _opening = pool.opening.lock().await;
        if let Err(full) = self.has_room_for_another(&pool, &settings, vhost) {
            pending.discard(&settings, vhost);
            return match pool.try_pin(Kind::Shared, Room::Any) {
                Some(upstream) => Ok((upstream, PoolRef(pool.clone()))),
                None => Err(full),
            };
        }
        let id = self.next_upstream_id.fetch_add(1, Ordering::Relaxed);
        match pending.open(&settings, &credentials.user, vhost, id).await {
            Ok(upstream) => {
                adopt(&pool, Kind::Shared, &upstream);
                Ok((upstream, PoolRef(pool.clone())))
            }
            Err(e) => {
                self.remove_if_empty(credentials, vhost, &pool);
                Err(e)
            }
        }
    }

    /// No connection could be had (`unreachable` says why): if the pool of
    /// these credentials and vhost vouches for them through the outage, the
    /// client gets a stand-in that is already closed, and its session
    /// starts held; otherwise the error.
    fn stand_in(
        &self,
        credentials: &Credentials,
        vhost: &str,
        unreachable: ConnectError,
    ) -> Result<(Upstream, PoolRef), ConnectError> {
        let settings = self.routes().for_client(&credentials.user, vhost).clone();
        let fingerprint = Fingerprint::of(&self.salt, &credentials.password);
        let pools = self.pools.lock().expect("pools lock");
        let vouching = pools
            .get(&key(&settings.route, vhost, &credentials.user))
            .and_then(|candidates| matching(candidates, &fingerprint))
            .filter(|pool| pool.vouches_through_outage(&settings))
            .cloned();
        match vouching {
            Some(pool) => Ok((Upstream::unreachable(&settings), PoolRef(pool))),
            None => Err(unreachable),
        }
    }

    /// Offers a client that is about to open its first channel a quieter
    /// connection than `current`, if `current` is crowded. The client pins
    /// all its channels to one connection, so this is its last chance to move.
    pub async fn rebalance(
        &self,
        pool: &PoolRef,
        vhost: &str,
        current: &Upstream,
    ) -> Option<Upstream> {
        if !current.is_crowded() || pool.0.retired.load(Ordering::Relaxed) {
            return None;
        }
        match self
            .pin_or_open(&pool.0, vhost, Kind::Shared, Room::HalfFree)
            .await
        {
            Ok(upstream) => Some(upstream),
            Err(e) => {
                tracing::warn!(error = %e, "could not open a quieter upstream connection");
                None
            }
        }
    }

    /// A client asks to update its secret (Connection.Update-Secret, frame
    /// `update`): the broker answers for the client's route and vhost, and
    /// if it accepts, the client belongs from then on to the pool of its
    /// new credentials (its open channels stay where they are).
    pub async fn update_secret(
        &self,
        pool: &PoolRef,
        vhost: &str,
        secret: Zeroizing<String>,
        update: &[u8],
    ) -> Result<PoolRef, ConnectError> {
        let current = &pool.0.credentials;
        let settings = self.settings_of(&pool.0);
        Upstream::check_update_secret(&settings, current, vhost, update).await?;
        let renewed = Credentials {
            user: current.user.clone(),
            password: secret,
        };
        Ok(PoolRef(self.pool_for(&renewed, vhost)))
    }

    /// Pins a client to another connection of its pool, of `kind`, opening
    /// one if none has room: one whose upstream connection was lost, moves
    /// off a drained node, or is given one of its own. The pool is looked
    /// up again by its credentials: the client's may have been pruned with
    /// its last connection, or retired by a reload.
    pub async fn reconnect(
        &self,
        pool: &PoolRef,
        vhost: &str,
        kind: Kind,
    ) -> Result<(Upstream, PoolRef), ConnectError> {
        let pool = match pool.0.retired.load(Ordering::Relaxed) {
            true => pool.0.clone(),
            false => self.pool_for(&pool.0.credentials, vhost),
        };
        let upstream = self.pin_or_open(&pool, vhost, kind, Room::Any).await?;
        Ok((upstream, PoolRef(pool)))
    }

    async fn pin_or_open(
        &self,
        pool: &Arc<Pool>,
        vhost: &str,
        kind: Kind,
        room: Room,
    ) -> Result<Upstream, ConnectError> {
        if let Some(upstream) = pool.try_pin(kind, room) {
            return Ok(upstream);
        }
        let asked = Instant::now();
        let _opening = pool.opening.lock().await;
        if let Some(upstream) = pool.try_pin(kind, room) {
            return Ok(upstream);
        }
        if let Some(error) = pool.failed_after(asked) {
            return Err(error);
        }
        let settings = self.settings_of(pool);
        self.has_room_for_another(pool, &settings, vhost)?;
        let id = self.next_upstream_id.fetch_add(1, Ordering::Relaxed);
        let opened = Upstream::connect(&settings, &pool.credentials, vhost, id).await;
        pool.remember(&opened);
        let upstream = opened?;
        adopt(pool, kind, &upstream);
        Ok(upstream)
    }

    /// `--max-upstream-connections` allows one more connection in `pool`,
    /// and so do the quotas of its user and vhost.
    fn has_room_for_another(
        &self,
        pool: &Pool,
        settings: &UpstreamSettings,
        vhost: &str,
    ) -> Result<(), ConnectError> {
        let limit = settings.max_connections;
        if !pool.may_open(limit) {
            return Err(ConnectError::Refused(reply::close(
                NOT_ALLOWED,
                format!(
                    "warren: all {limit} upstream connections of user '{}' on vhost '{vhost}' are full",
                    pool.credentials.user
                ),
            )));
        }
        let user = &pool.credentials.user;
        self.quotas
            .upstream_room(user, vhost, |scope, key| self.live_connections(scope, key))
            .map_err(ConnectError::Refused)
    }

    /// Live upstream connections of every pool of this user (or vhost).
    fn live_connections(&self, scope: Scope, key: &str) -> usize {
        let pools = self.pools.lock().expect("pools lock");
        pools
            .iter()
            .filter(|((_, vhost, user), _)| match scope {
                Scope::User => user == key,
                Scope::Vhost => vhost == key,
            })
            .flat_map(|(_, candidates)| candidates)
            .map(|pool| pool.live().len())
            .sum()
    }

    /// The pool of the client's route, vhost, user and password; a new one
    /// if there is none.
    fn pool_for(&self, credentials: &Credentials, vhost: &str) -> Arc<Pool> {
        let fingerprint = Fingerprint::of(&self.salt, &credentials.password);
        let settings = self.routes().for_client(&credentials.user, vhost).clone();
        let mut pools = self.pools.lock().expect("pools lock");
        let candidates = pools
            .entry(key(&settings.route, vhost, &credentials.user))
            .or_default();
        if let Some(pool) = matching(candidates, &fingerprint) {
            return pool.clone();
        }
        let pool = Arc::new(Pool::new(settings, fingerprint, credentials.clone()));
        candidates.push(pool.clone());
        pool
    }

    fn remove_if_empty(&self, credentials: &Credentials, vhost: &str, pool: &Arc<Pool>) {
        let key = key(&pool.settings.route, vhost, &credentials.user);
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
        self.login_locks
            .lock()
            .expect("login locks")
            .retain(|_, lock| Arc::strong_count(lock) > 1);
        let settings = self.settings();
        let mut pools = self.pools.lock().expect("pools lock");
        for candidates in pools.values_mut() {
            candidates.retain(|p| {
                !p.is_empty()
                    || p.opening.try_lock().is_err()
                    || p.vouches_through_outage(&settings)
                    // Its clients reconnect within it (see `reconnect`).
                    || (p.retired.load(Ordering::Relaxed) && Arc::strong_count(p) > 1)
            });
        }
        pools.retain(|_, candidates| !candidates.is_empty());
    }

    /// Every pool, by vhost and user; one whose connections all closed is
    /// listed (with none) until the next `prune` forgets it.
    pub fn summary(&self) -> Vec<PoolSummary> {
        let pools = self.pools.lock().expect("pools lock");
        let mut summary: Vec<PoolSummary> = pools
            .iter()
            .flat_map(|((route, vhost, user), candidates)| {
                candidates.iter().map(move |pool| {
                    let live = pool.live();
                    PoolSummary {
                        route: route.clone(),
                        vhost: vhost.clone(),
                        user: user.clone(),
                        upstreams: live.len(),
                        clients: live.iter().map(|u| u.client_count()).sum(),
                    }
                })
            })
            .collect();
        summary.sort_by(|a, b| (&a.route, &a.vhost, &a.user).cmp(&(&b.route, &b.vhost, &b.user)));
        summary
    }

    /// Every live upstream connection.
    pub fn upstreams(&self) -> Vec<Upstream> {
        let pools = self.pools.lock().expect("pools lock");
        pools.values().flatten().flat_map(|p| p.live()).collect()
    }
}

/// Adds a new connection to `pool`, pinned by its first client.
fn adopt(pool: &Pool, kind: Kind, upstream: &Upstream) {
    if kind == Kind::Dedicated {
        upstream.set_dedicated();
    }
    let pinned = upstream.try_pin(Room::Any);
    debug_assert!(pinned, "a new connection has room");
    pool.adopt(kind, upstream.clone());
}
