//! Handshakes in progress, capped, so clients that connect and then say
//! nothing (or say it slowly) cannot take warren's memory or crowd out other
//! clients' logins.
//!
//! Two caps, with different answers:
//! - in total (`--max-pending-handshakes`): the listener stops accepting
//!   until a handshake ends. Connections wait in the kernel's backlog, where
//!   they cost warren nothing, and are served in turn; nobody is refused.
//! - per source address (`--max-pending-handshakes-per-source`): a further
//!   connection from that address is closed at once, so one host cannot fill
//!   the total. Loopback and Unix-socket peers are the sidecar's own clients
//!   and are held to the total only.
//!
//! A handshake is pending from accept (TLS included) until its Open-Ok is
//! sent or it is refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::logging::RateLimit;
use crate::net::Peer;
use crate::stats::{Events, HandshakeOutcome};

#[derive(Default)]
pub struct PendingHandshakes {
    counts: Mutex<Counts>,
    /// Woken when a handshake ends, for a listener waiting for room.
    ended: Notify,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A pending handshake's place, given back on drop.
pub struct PendingHandshake {
    owner: Arc<PendingHandshakes>,
    /// The address counted per source, if any.
    source: Option<IpAddr>,
    /// It came from a load balancer: its client is named by a PROXY header,
    /// and counted per source once that is read (decided once, at accept,
    /// so a reload in between cannot split the decision).
    awaits_header: bool,
}

/// The address a peer is counted under, if the per-source cap applies to it.
fn counted_source(peer: Peer) -> Option<IpAddr> {
    match peer {
        Peer::Tcp(addr) if !addr.ip().is_loopback() => Some(addr.ip().to_canonical()),
        _ => None,
    }
}

impl PendingHandshakes {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent whatever panicked while they were held:
        // every update is a single step.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn total(&self) -> usize {
        self.counts().total
    }

    /// Returns once fewer than `limit` (0: no limit) handshakes are pending.
    pub async fn wait_for_room(&self, limit: usize) {
        // `notify_one` keeps a wake-up for a listener that is not waiting
        // yet, so an end between the check and the wait is not lost.
        while limit != 0 && self.total() >= limit {
            self.ended.notified().await;
        }
    }

    /// Counts a handshake from `peer`, unless `per_source` (0: no limit)
    /// are pending from its address already.
    pub fn enter(self: &Arc<Self>, peer: Peer, per_source: usize) -> Option<PendingHandshake> {
        let mut pending = self.enter_unattributed();
        pending.attribute(peer, per_source).then_some(pending)
    }

    /// Counts a handshake in the total only: one from a load balancer,
    /// whose client is known once its PROXY header is read
    /// ([`PendingHandshake::attribute`]).
    pub fn enter_unattributed(self: &Arc<Self>) -> PendingHandshake {
        self.counts().total += 1;
        PendingHandshake {
            owner: self.clone(),
            source: None,
            awaits_header: true,
        }
    }
}

impl PendingHandshake {
    /// Whether the connection starts with a PROXY header (it was entered
    /// unattributed).
    pub fn awaits_header(&self) -> bool {
        self.awaits_header
    }

    /// Counts this handshake under `peer`'s address as well, unless
    /// `per_source` (0: no limit) are pending from it already. Once only.
    pub fn attribute(&mut self, peer: Peer, per_source: usize) -> bool {
        debug_assert!(self.source.is_none(), "attributed once");
        self.awaits_header = false;
        let Some(ip) = counted_source(peer) else {
            return true;
        };
        let mut counts = self.owner.counts();
        let from_source = counts.by_source.entry(ip).or_default();
        if per_source != 0 && *from_source >= per_source {
            if *from_source == 0 {
                counts.by_source.remove(&ip);
            }
            return false;
        }
        *from_source += 1;
        self.source = Some(ip);
        true
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        let mut counts = self.owner.counts();
        counts.total -= 1;
        if let Some(ip) = self.source {
            if let Some(n) = counts.by_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.by_source.remove(&ip);
                }
            }
        }
        drop(counts);
        self.owner.ended.notify_one();
    }
}

/// Counts and logs (at most every 10 s) a connection closed because
/// `limit` handshakes from its address were pending already.
pub fn refused_over_source_limit(peer: Peer, limit: usize, events: &Events) {
    events.handshake(HandshakeOutcome::source_limit);
    static OVER_SOURCE_LIMIT: RateLimit = RateLimit::new(std::time::Duration::from_secs(10));
    if let Some(suppressed) = OVER_SOURCE_LIMIT.check() {
        tracing::warn!(%peer, limit, suppressed, "client refused: --max-pending-handshakes-per-source reached");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn tcp(addr: &str) -> Peer {
        Peer::Tcp(addr.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn a_source_over_its_cap_is_refused_and_others_are_not() {
        let pending = Arc::new(PendingHandshakes::default());
        let first = pending.enter(tcp("10.0.0.1:1000"), 2).unwrap();
        let _second = pending.enter(tcp("10.0.0.1:1001"), 2).unwrap();
        assert!(pending.enter(tcp("10.0.0.1:1002"), 2).is_none());
        assert!(pending.enter(tcp("10.0.0.2:1000"), 2).is_some());
        drop(first);
        assert!(pending.enter(tcp("10.0.0.1:1003"), 2).is_some());
    }

    #[test]
    fn loopback_and_unix_peers_count_only_in_the_total() {
        let pending = Arc::new(PendingHandshakes::default());
        let held: Vec<_> = (0..5)
            .map(|port| pending.enter(tcp(&format!("127.0.0.1:{port}")), 1).unwrap())
            .chain([pending.enter(Peer::Unix, 1).unwrap()])
            .collect();
        assert_eq!(pending.total(), 6);
        drop(held);
        assert_eq!(pending.total(), 0);
        assert!(pending.counts().by_source.is_empty());
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_same_source() {
        let pending = Arc::new(PendingHandshakes::default());
        let _held = pending.enter(tcp("10.0.0.1:1000"), 1).unwrap();
        assert!(pending.enter(tcp("[::ffff:10.0.0.1]:1000"), 1).is_none());
    }

    #[test]
    fn a_proxied_handshake_counts_under_the_client_it_names() {
        let pending = Arc::new(PendingHandshakes::default());
        let _direct = pending.enter(tcp("10.0.0.1:1000"), 1).unwrap();
        let mut proxied = pending.enter_unattributed();
        assert!(proxied.awaits_header());
        assert_eq!(pending.total(), 2);
        assert!(!proxied.attribute(tcp("10.0.0.1:2000"), 1));
        let mut other = pending.enter_unattributed();
        assert!(other.attribute(tcp("10.0.0.2:2000"), 1));
        assert!(pending.enter(tcp("10.0.0.2:1000"), 1).is_none());
        drop((proxied, other));
        assert_eq!(pending.total(), 1);
        assert!(pending.enter(tcp("10.0.0.2:1000"), 1).is_some());
    }

    #[tokio::test]
    async fn the_listener_waits_until_a_handshake_ends() {
        let pending = Arc::new(PendingHandshakes::default());
        let held = pending.enter(tcp("10.0.0.1:1000"), 0).unwrap();
        let waiting = tokio::spawn({
            let pending = pending.clone();
            async move { pending.wait_for_room(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("room once the handshake ended")
            .unwrap();
    }
}
