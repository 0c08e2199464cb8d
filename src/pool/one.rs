//! One pool: the upstream connections opened with one password for one
//! route, vhost and user. Its connections come in two sets: shared ones,
//! where publishers share channels of one connection, and dedicated ones,
//! each serving one client at a time (a route's `consumer_mode =
//! "dedicated"`), reused by the next such client once it is free.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::connections::Connections;
use crate::auth::{Credentials, Fingerprint};
use crate::upstream::{ConnectError, Room, Upstream, UpstreamSettings};

/// Which of a pool's connection sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Shared,
    /// One client at a time.
    Dedicated,
}

/// A failed attempt to open a pool's connection answers the pool's other
/// clients for this long: held clients retry on timers of their own, and
/// a refused connection fails in microseconds.
const FAILURE_SHARED: Duration = Duration::from_millis(50);

pub struct Pool {
    /// Its route's settings when it was made (the route's name among
    /// them): what it opens connections with once retired.
    pub settings: Arc<UpstreamSettings>,
    /// Its route was removed or now goes elsewhere (a reload): no new
    /// clients; its connections close as their clients leave.
    pub retired: AtomicBool,
    pub fingerprint: Fingerprint,
    /// Kept to open more connections for this pool; zeroized on drop.
    pub credentials: Credentials,
    shared: Mutex<Connections<Upstream>>,
    dedicated: Mutex<Connections<Upstream>>,
    /// Serialises connection opening so a burst of new clients opens one
    /// upstream connection, not one each.
    pub opening: tokio::sync::Mutex<()>,
    /// The last attempt to open a connection that failed, and when it
    /// ended: clients that waited for it take its answer rather than try
    /// again each (a broker outage holds many clients of one pool).
    failed: Mutex<Option<(Instant, ConnectError)>>,
}

impl Pool {
    pub fn new(
        settings: Arc<UpstreamSettings>,
        fingerprint: Fingerprint,
        credentials: Credentials,
    ) -> Self {
        Pool {
            settings,
            retired: AtomicBool::new(false),
            fingerprint,
            credentials,
            shared: Mutex::default(),
            dedicated: Mutex::default(),
            opening: tokio::sync::Mutex::new(()),
            failed: Mutex::default(),
        }
    }

    fn set(&self, kind: Kind) -> MutexGuard<'_, Connections<Upstream>> {
        match kind {
            Kind::Shared => &self.shared,
            Kind::Dedicated => &self.dedicated,
        }
        .lock()
        .expect("pool lock")
    }

    /// Pins the client to a live connection of `kind` with `room` (see
    /// [`Connections::pin`]); a dedicated one only while it has no client.
    pub fn try_pin(&self, kind: Kind, room: Room) -> Option<Upstream> {
        let room = match kind {
            Kind::Shared => room,
            Kind::Dedicated => Room::Alone,
        };
        self.set(kind).pin(room)
    }

    pub fn is_empty(&self) -> bool {
        self.set(Kind::Shared).is_empty() && self.set(Kind::Dedicated).is_empty()
    }

    pub fn vouches_through_outage(&self, settings: &UpstreamSettings) -> bool {
        settings.hold.is_some_and(|hold| {
            let now = Instant::now();
            [Kind::Shared, Kind::Dedicated].into_iter().any(|kind| {
                self.set(kind)
                    .vouches_through_outage(settings.max_lifetime, hold, now)
            })
        })
    }

    /// Whether `limit` (0: none) allows one more connection, both sets
    /// together.
    pub fn may_open(&self, limit: usize) -> bool {
        let dedicated = self.set(Kind::Dedicated).current();
        self.set(Kind::Shared).may_open(limit, dedicated)
    }

    /// Adds a new connection, already pinned by its first client.
    pub fn adopt(&self, kind: Kind, upstream: Upstream) {
        self.set(kind).adopt(upstream, Instant::now());
    }

    /// Every connection not closed, both sets.
    pub fn live(&self) -> Vec<Upstream> {
        let mut live: Vec<Upstream> = self.set(Kind::Shared).live().cloned().collect();
        live.extend(self.set(Kind::Dedicated).live().cloned());
        live
    }

    /// The failure of an attempt that ended after `since`, or less than
    /// [`FAILURE_SHARED`] ago, if any.
    pub fn failed_after(&self, since: Instant) -> Option<ConnectError> {
        let recent = Instant::now().checked_sub(FAILURE_SHARED).unwrap_or(since);
        let since = since.min(recent);
        match &*self.failed.lock().expect("pool failure lock") {
            Some((at, error)) if *at > since => Some(error.clone()),
            _ => None,
        }
    }

    pub fn remember(&self, outcome: &Result<Upstream, ConnectError>) {
        let mut failed = self.failed.lock().expect("pool failure lock");
        *failed = outcome
            .as_ref()
            .err()
            .map(|error| (Instant::now(), error.clone()));
    }

    /// Has a connection that still takes clients: the broker accepted these
    /// credentials less than `--upstream-max-lifetime` ago.
    pub fn vouches(&self) -> bool {
        self.set(Kind::Shared).current() + self.set(Kind::Dedicated).current() > 0
    }
}
