//! What warren counts, and who is connected, for the admin endpoints.
//!
//! The data path must not pay for observability: a counter bumped per frame
//! by several cores would bounce one cache line between them. So every
//! per-frame counter belongs to one client or one upstream connection and
//! has a single writer (its session, router or writer task), which bumps it
//! with a plain load and store. A scrape sums the live records and adds what
//! departed ones left behind, under the lock that also guards their
//! departure, so totals never go backwards.
//!
//! Rare events (handshakes, closes, reuse decisions) go straight into
//! shared Prometheus metrics ([`events`]).

use crate::net::Peer;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::link::{ClientEvent, ClientId};
use crate::untrusted::shown;

/// A counter with exactly one writer. `add` is a load and a store, not a
/// locked read-modify-write: nobody else writes, readers only need a recent
/// value.
#[derive(Debug, Default)]
pub struct Tally(AtomicU64);

impl Tally {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Which pool a record's traffic is labelled with. Bounded: a pool exists
/// only for credentials the broker accepted. The names are the client's
/// text, so they are kept as shown (see [`crate::untrusted`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolLabel {
    pub vhost: String,
    pub user: String,
}

impl PoolLabel {
    pub fn new(vhost: &str, user: &str) -> Self {
        PoolLabel {
            vhost: shown(vhost),
            user: shown(user),
        }
    }
}

/// Traffic counts, per record and summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub frames_from_clients: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    pub published: u64,
    pub frames_from_broker: u64,
    pub bytes_from_broker: u64,
    pub bytes_to_broker: u64,
    pub delivered: u64,
    pub stale_dropped: u64,
    pub reuse_hits: u64,
    pub reuse_misses: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, other: Traffic) {
        self.frames_from_clients += other.frames_from_clients;
        self.bytes_from_clients += other.bytes_from_clients;
        self.bytes_to_clients += other.bytes_to_clients;
        self.published += other.published;
        self.frames_from_broker += other.frames_from_broker;
        self.bytes_from_broker += other.bytes_from_broker;
        self.bytes_to_broker += other.bytes_to_broker;
        self.delivered += other.delivered;
        self.stale_dropped += other.stale_dropped;
        self.reuse_hits += other.reuse_hits;
        self.reuse_misses += other.reuse_misses;
    }
}

/// A connected client, as the admin API shows it.
#[derive(Debug)]
pub struct ClientRecord {
    pub id: ClientId,
    pub peer: Peer,
    pub pool: PoolLabel,
    pub connection_name: Option<String>,
    pub since: Instant,
    /// Written by the session.
    pub frames_in: Tally,
    pub bytes_in: Tally,
    pub published: Tally,
    /// Entries in its channel table: open, or closing.
    pub channels: Tally,
    pub upstream: Tally,
    /// 1 while a publish or channel open waits for `warren ctl resume`.
    pub paused: Tally,
    /// 1 while it is held through a lost upstream connection.
    pub held: Tally,
    /// Written by the client's writer task.
    pub bytes_out: Arc<Tally>,
    /// To its session, for operator actions.
    pub session: mpsc::UnboundedSender<ClientEvent>,
}

impl ClientRecord {
    pub fn new(
        id: ClientId,
        peer: Peer,
        pool: PoolLabel,
        connection_name: Option<&str>,
        since: Instant,
        session: mpsc::UnboundedSender<ClientEvent>,
    ) -> Self {
        ClientRecord {
            id,
            session,
            peer,
            pool,
            connection_name: connection_name.map(shown),
            since,
            frames_in: Tally::default(),
            bytes_in: Tally::default(),
            published: Tally::default(),
            channels: Tally::default(),
            upstream: Tally::default(),
            paused: Tally::default(),
            held: Tally::default(),
            bytes_out: Arc::default(),
        }
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            frames_from_clients: self.frames_in.get(),
            bytes_from_clients: self.bytes_in.get(),
            bytes_to_clients: self.bytes_out.get(),
            published: self.published.get(),
            ..Traffic::default()
        }
    }
}

/// An upstream connection, as the admin API shows it.
#[derive(Debug)]
pub struct UpstreamRecord {
    pub id: u64,
    pub node: String,
    /// The route it serves (`[[route]]` name, or "default").
    pub route: String,
    pub pool: PoolLabel,
    pub since: Instant,
    /// Written by the router.
    pub frames_in: Tally,
    pub bytes_in: Tally,
    pub delivered: Tally,
    pub stale_dropped: Tally,
    pub reuse_hits: Tally,
    pub reuse_misses: Tally,
    pub blocked: AtomicBool,
    /// When the router last read a frame, in milliseconds after `since`
    /// (updated on its housekeeping tick, not per frame).
    pub last_read_ms: Tally,
    /// Written by the connection's writer task.
    pub bytes_out: Arc<Tally>,
}

impl UpstreamRecord {
    pub fn new(id: u64, node: String, route: String, pool: PoolLabel) -> Self {
        UpstreamRecord {
            id,
            node,
            route,
            pool,
            since: Instant::now(),
            frames_in: Tally::default(),
            bytes_in: Tally::default(),
            delivered: Tally::default(),
            stale_dropped: Tally::default(),
            reuse_hits: Tally::default(),
            reuse_misses: Tally::default(),
            blocked: AtomicBool::new(false),
            last_read_ms: Tally::default(),
            bytes_out: Arc::default(),
        }
    }

    /// How long ago the broker last sent anything on this connection.
    pub fn quiet_for(&self) -> std::time::Duration {
        self.since
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(self.last_read_ms.get()))
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            frames_from_broker: self.frames_in.get(),
            bytes_from_broker: self.bytes_in.get(),
            bytes_to_broker: self.bytes_out.get(),
            delivered: self.delivered.get(),
            stale_dropped: self.stale_dropped.get(),
            reuse_hits: self.reuse_hits.get(),
            reuse_misses: self.reuse_misses.get(),
            ..Traffic::default()
        }
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }
}

mod events;

pub use events::{CloseScope, DisconnectReason, Events, HandshakeOutcome, LoginOutcome};

/// The live records, behind `Stats`' lock.
#[derive(Debug, Default)]
pub struct Live {
    clients: BTreeMap<ClientId, Arc<ClientRecord>>,
    upstreams: BTreeMap<u64, Arc<UpstreamRecord>>,
    /// What records that are gone had counted, by pool.
    departed: HashMap<PoolLabel, Traffic>,
    clients_total: u64,
    upstreams_total: u64,
}

/// Everything warren counts; one per process.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub events: Events,
    live: Mutex<Live>,
}

/// A consistent view of the records, taken under one lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub clients: Vec<Arc<ClientRecord>>,
    pub upstreams: Vec<Arc<UpstreamRecord>>,
    /// Live and departed traffic, by pool.
    pub traffic: BTreeMap<PoolLabel, Traffic>,
    pub clients_total: u64,
    pub upstreams_total: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            events: Events::default(),
            live: Mutex::new(Live::default()),
        }
    }
}

impl Stats {
    /// Lists `record` until the returned guard is dropped.
    pub fn client_connected(self: &Arc<Self>, record: ClientRecord) -> Listed<ClientRecord> {
        let record = Arc::new(record);
        let mut live = self.live();
        live.clients.insert(record.id, record.clone());
        live.clients_total += 1;
        Listed {
            record,
            stats: self.clone(),
        }
    }

    pub fn upstream_opened(self: &Arc<Self>, record: UpstreamRecord) -> Listed<UpstreamRecord> {
        let record = Arc::new(record);
        let mut live = self.live();
        live.upstreams.insert(record.id, record.clone());
        live.upstreams_total += 1;
        Listed {
            record,
            stats: self.clone(),
        }
    }

    /// The live table. A panic elsewhere while it was held leaves counts
    /// that are at worst a little off: not worth failing every connect (or
    /// aborting in `Listed::drop`) for.
    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admitted clients that have left since warren started.
    pub fn departed_clients(&self) -> u64 {
        let live = self.live();
        live.clients_total - live.clients.len() as u64
    }

    /// The live upstream records (cheaper than a snapshot).
    pub fn upstreams(&self) -> Vec<Arc<UpstreamRecord>> {
        self.live().upstreams.values().cloned().collect()
    }

    /// The live client records (cheaper than a snapshot).
    pub fn clients(&self) -> Vec<Arc<ClientRecord>> {
        self.live().clients.values().cloned().collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        let live = self.live();
        let mut traffic: BTreeMap<PoolLabel, Traffic> = live
            .departed
            .iter()
            .map(|(pool, t)| (pool.clone(), *t))
            .collect();
        for client in live.clients.values() {
            *traffic.entry(client.pool.clone()).or_default() += client.traffic();
        }
        for upstream in live.upstreams.values() {
            *traffic.entry(upstream.pool.clone()).or_default() += upstream.traffic();
        }
        Snapshot {
            clients: live.clients.values().cloned().collect(),
            upstreams: live.upstreams.values().cloned().collect(),
            traffic,
            clients_total: live.clients_total,
            upstreams_total: live.upstreams_total,
        }
    }
}

/// A record in the live table; what it counted moves to the departed
/// totals when it is dropped. Its owner holds it until its last writer is
/// done (the writer task included), so nothing is counted after.
#[derive(Debug)]
pub struct Listed<R: Record> {
    record: Arc<R>,
    stats: Arc<Stats>,
}

/// What `Listed` needs of a record.
pub trait Record: std::fmt::Debug {
    fn unlist(&self, live: &mut Live) -> Traffic;
    fn pool(&self) -> &PoolLabel;
}

impl Record for ClientRecord {
    fn unlist(&self, live: &mut Live) -> Traffic {
        live.clients.remove(&self.id);
        self.traffic()
    }
    fn pool(&self) -> &PoolLabel {
        &self.pool
    }
}

impl Record for UpstreamRecord {
    fn unlist(&self, live: &mut Live) -> Traffic {
        live.upstreams.remove(&self.id);
        self.traffic()
    }
    fn pool(&self) -> &PoolLabel {
        &self.pool
    }
}

impl<R: Record> std::ops::Deref for Listed<R> {
    type Target = R;
    fn deref(&self) -> &R {
        &self.record
    }
}

impl<R: Record> Drop for Listed<R> {
    fn drop(&mut self) {
        let mut live = self.stats.live();
        let traffic = self.record.unlist(&mut live);
        *live.departed.entry(self.record.pool().clone()).or_default() += traffic;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(stats: &Arc<Stats>, id: ClientId, vhost: &str) -> Listed<ClientRecord> {
        let pool = PoolLabel::new(vhost, "guest");
        let peer = Peer::Tcp("127.0.0.1:1".parse().unwrap());
        let (session, _) = mpsc::unbounded_channel();
        stats.client_connected(ClientRecord::new(
            id,
            peer,
            pool,
            None,
            Instant::now(),
            session,
        ))
    }

    #[test]
    fn totals_keep_what_departed_clients_counted() {
        let stats = Arc::new(Stats::default());
        let a = client(&stats, 1, "/");
        let b = client(&stats, 2, "/");
        let c = client(&stats, 3, "/other");
        a.published.add(3);
        b.published.add(4);
        c.published.add(5);
        b.bytes_out.add(100);
        drop(b);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.clients.len(), 2);
        assert_eq!(snapshot.clients_total, 3);
        let root = snapshot.traffic[&a.pool];
        assert_eq!((root.published, root.bytes_to_clients), (7, 100));
        assert_eq!(snapshot.traffic[&c.pool].published, 5);
    }

    #[test]
    fn tally_counts_from_its_single_writer() {
        let tally = Tally::default();
        tally.add(2);
        tally.add(3);
        assert_eq!(tally.get(), 5);
        tally.set(1);
        assert_eq!(tally.get(), 1);
    }
}
