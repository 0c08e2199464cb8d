//! The broker nodes upstream connections go to: which to try next, banning
//! one that failed so clients are not held up by it while another is up
//! (it is probed in the background, `hello::probe_banned`, and taken back
//! once it answers), the nodes an operator drained, and what the broker
//! last said about itself (its server properties).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamAddr;
use crate::net::{self, ReadHalf, WriteHalf};
use crate::protocol::wire::{table_get, FieldTable, FieldValue};
use crate::tls;
use crate::untrusted::shown;

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    /// Failures in a row; banned while there are any.
    failures: u32,
    /// When the ban may end: the next background probe after this.
    retry_at: Option<Instant>,
    /// Drained by an operator (`warren ctl drain-node`): tried only when
    /// no other node answers.
    drained: bool,
}

/// A node as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub addr: UpstreamAddr,
    pub failures: u32,
    /// Banned: tried only after the others, probed again in this long.
    pub banned: bool,
    pub retry_in: Option<Duration>,
    pub drained: bool,
}

/// The nodes, in the order given, and what is known of their health.
pub struct Nodes {
    addrs: Vec<UpstreamAddr>,
    health: Mutex<Vec<Health>>,
    /// Where the next round starts, so connections spread over the nodes.
    next: AtomicUsize,
    tls: Option<TlsConnector>,
    /// How long a failed node is left out before it is probed again.
    ban: Duration,
    /// The server properties of the node heard from last (one cluster's
    /// nodes differ at most in versions during an upgrade). Replaced only
    /// when they change, so their `Arc` names them.
    broker_properties: RwLock<Option<Arc<FieldTable>>>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes").field("addrs", &self.addrs).finish()
    }
}

impl Nodes {
    /// `tls` is needed when any address is amqps://.
    pub fn new(
        addrs: Vec<UpstreamAddr>,
        tls: Option<Arc<rustls::ClientConfig>>,
        ban: Duration,
    ) -> Arc<Self> {
        Arc::new(Nodes {
            health: Mutex::new(vec![Health::default(); addrs.len()]),
            addrs,
            next: AtomicUsize::new(0),
            tls: tls.map(TlsConnector::from),
            ban,
            broker_properties: RwLock::default(),
        })
    }

    /// After a reload: what is known of nodes that are still listed carries
    /// over (a node backing off keeps backing off), and what the broker
    /// said about itself.
    pub fn carry_health_from(&self, old: &Nodes) {
        *self.broker_properties.write().expect("properties lock") = old.broker_properties();
        let old_health = old.health.lock().expect("nodes lock");
        let mut health = self.health.lock().expect("nodes lock");
        for (i, addr) in self.addrs.iter().enumerate() {
            if let Some(j) = old.addrs.iter().position(|a| a == addr) {
                health[i] = old_health[j];
            }
        }
    }

    pub fn addrs(&self) -> &[UpstreamAddr] {
        &self.addrs
    }

    /// Node indices in the order to try them: healthy ones first, starting
    /// one further along each call, then the banned ones, soonest probe
    /// first (when every node failed, trying beats refusing), then the
    /// drained ones (a drain is maintenance: refusing clients because every
    /// other node is down would be worse than using it).
    pub fn order(&self) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let health = self.health.lock().expect("nodes lock");
        let count = self.addrs.len();
        let rotated = (0..count).map(|i| (start + i) % count);
        let (mut ready, mut waiting): (Vec<usize>, Vec<usize>) =
            rotated.partition(|&i| !health[i].drained && health[i].failures == 0);
        waiting.sort_by_key(|&i| (health[i].drained, health[i].retry_at));
        ready.append(&mut waiting);
        ready
    }

    /// Whether a node other than `node` is not drained: somewhere for a
    /// drained node's clients to move to.
    pub fn undrained_besides(&self, node: &UpstreamAddr) -> bool {
        let health = self.health.lock().expect("nodes lock");
        self.addrs
            .iter()
            .zip(health.iter())
            .any(|(addr, h)| addr != node && !h.drained)
    }

    /// Marks the node named `name` (`HOST:PORT` as listed) drained or not;
    /// `None` if no node has that name.
    pub fn set_drained(&self, name: &str, drained: bool) -> Option<UpstreamAddr> {
        let node = self
            .addrs
            .iter()
            .position(|addr| addr.to_string().eq_ignore_ascii_case(name))?;
        self.health.lock().expect("nodes lock")[node].drained = drained;
        Some(self.addrs[node].clone())
    }

    /// Every node and what is known of it.
    pub fn report(&self, now: Instant) -> Vec<NodeReport> {
        let health = self.health.lock().expect("nodes lock");
        self.addrs
            .iter()
            .zip(health.iter())
            .map(|(addr, h)| NodeReport {
                addr: addr.clone(),
                failures: h.failures,
                banned: h.failures > 0,
                retry_in: h.retry_at.and_then(|at| at.checked_duration_since(now)),
                drained: h.drained,
            })
            .collect()
    }

    /// The node could not be reached, did not answer in time, or closed or
    /// lost a connection: banned for the ban time. Returns it.
    pub fn failed(&self, node: usize, now: Instant) -> Duration {
        let mut health = self.health.lock().expect("nodes lock");
        let h = &mut health[node];
        h.failures = h.failures.saturating_add(1);
        h.retry_at = Some(now + self.ban);
        self.ban
    }

    /// [`Nodes::failed`] for the node at `addr`, if it is still listed.
    pub fn failed_at(&self, addr: &UpstreamAddr, now: Instant) -> Option<Duration> {
        let node = self.addrs.iter().position(|a| a == addr)?;
        Some(self.failed(node, now))
    }

    /// Banned nodes whose ban time is over: to probe now.
    pub fn due_for_probe(&self, now: Instant) -> Vec<usize> {
        let health = self.health.lock().expect("nodes lock");
        (0..self.addrs.len())
            .filter(|&i| health[i].failures > 0 && health[i].retry_at.is_none_or(|at| at <= now))
            .collect()
    }

    pub fn succeeded(&self, node: usize) {
        let mut health = self.health.lock().expect("nodes lock");
        health[node] = Health {
            drained: health[node].drained,
            ..Health::default()
        };
    }

    /// `node` sent these server properties in its Connection.Start.
    pub fn heard_from(&self, node: usize, properties: FieldTable) {
        let mut known = self.broker_properties.write().expect("properties lock");
        if known.as_deref() == Some(&properties) {
            return;
        }
        let text = |key: &str| match table_get(&properties, key) {
            Some(FieldValue::LongStr(value)) => shown(&String::from_utf8_lossy(value)),
            _ => "-".into(),
        };
        tracing::info!(
            node = %self.addrs[node],
            product = text("product"),
            version = text("version"),
            cluster_name = text("cluster_name"),
            "broker server properties learned; clients are shown them"
        );
        *known = Some(Arc::new(properties));
    }

    pub fn broker_properties(&self) -> Option<Arc<FieldTable>> {
        self.broker_properties
            .read()
            .expect("properties lock")
            .clone()
    }

    /// Opens a TCP (and for amqps://, TLS) connection to `node`.
    pub async fn dial(&self, node: usize) -> Result<(ReadHalf, WriteHalf), String> {
        let addr = &self.addrs[node];
        let stream = TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        if !addr.tls {
            return Ok(net::split_tcp(stream));
        }
        let connector = self
            .tls
            .as_ref()
            .ok_or_else(|| format!("{addr}: no TLS configuration"))?;
        net::no_delay(&stream);
        let name = tls::server_name(&addr.host)?;
        let stream = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("{addr}: TLS: {e}"))?;
        Ok(net::split(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAN: Duration = Duration::from_secs(10);

    fn nodes(count: u16) -> Arc<Nodes> {
        let addrs = (0..count)
            .map(|i| UpstreamAddr {
                host: "127.0.0.1".into(),
                port: 5000 + i,
                tls: false,
            })
            .collect();
        Nodes::new(addrs, None, BAN)
    }

    #[test]
    fn healthy_nodes_take_turns_first() {
        let nodes = nodes(3);
        let firsts: Vec<usize> = (0..6).map(|_| nodes.order()[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(nodes.order().len(), 3);
    }

    #[test]
    fn a_failed_node_goes_last_until_a_probe_finds_it_back() {
        let nodes = nodes(2);
        let now = Instant::now();
        assert_eq!(nodes.failed(0, now), BAN);
        assert!(nodes.due_for_probe(now).is_empty());
        // Its ban time over, it is probed, and still left out until it answers.
        let later = now + BAN;
        assert_eq!(nodes.due_for_probe(later), [0]);
        for _ in 0..4 {
            assert_eq!(nodes.order(), vec![1, 0]);
        }
        // A failed probe bans it again; an answer takes it back.
        nodes.failed(0, later);
        assert!(nodes.due_for_probe(later).is_empty());
        nodes.succeeded(0);
        let firsts: Vec<usize> = (0..2).map(|_| nodes.order()[0]).collect();
        assert!(firsts.contains(&0), "{firsts:?}");
        assert!(!nodes.report(later)[0].banned);
    }

    #[test]
    fn a_connection_lost_bans_its_node_if_it_is_still_listed() {
        let nodes = nodes(2);
        let now = Instant::now();
        assert_eq!(nodes.failed_at(&nodes.addrs()[1].clone(), now), Some(BAN));
        let gone = UpstreamAddr {
            host: "127.0.0.1".into(),
            port: 1,
            tls: false,
        };
        assert_eq!(nodes.failed_at(&gone, now), None);
        let report = nodes.report(now);
        assert!(report[1].banned && !report[0].banned);
        assert_eq!((report[1].failures, report[1].retry_in), (1, Some(BAN)));
    }

    #[test]
    fn a_reload_keeps_the_bans_of_nodes_still_listed() {
        let old = nodes(2);
        let now = Instant::now();
        old.failed(1, now);
        let fresh = nodes(3);
        fresh.carry_health_from(&old);
        assert_eq!(fresh.order().last(), Some(&1));
    }

    #[test]
    fn a_drained_nodes_clients_have_somewhere_to_go_while_another_is_undrained() {
        let nodes = nodes(2);
        let first = nodes.set_drained("127.0.0.1:5000", true).expect("a node");
        assert!(nodes.undrained_besides(&first));
        let second = nodes.set_drained("127.0.0.1:5001", true).expect("a node");
        assert!(!nodes.undrained_besides(&first) && !nodes.undrained_besides(&second));
        let only = self::nodes(1);
        assert!(
            !only.undrained_besides(&only.addrs()[0].clone()),
            "no other node at all"
        );
    }

    #[test]
    fn a_drained_node_comes_after_the_banned_ones_until_undrained() {
        let nodes = nodes(3);
        let now = Instant::now();
        assert_eq!(
            nodes.set_drained("127.0.0.1:5000", true).map(|a| a.port),
            Some(5000)
        );
        assert!(nodes.set_drained("127.0.0.1:4999", true).is_none());
        nodes.failed(1, now);
        for _ in 0..3 {
            assert_eq!(&nodes.order()[1..], [1, 0]);
        }
        // Reaching it (all others down) does not undrain it.
        nodes.succeeded(0);
        assert!(nodes.report(now)[0].drained);
        nodes.set_drained("127.0.0.1:5000", false);
        let firsts: Vec<usize> = (0..3).map(|_| nodes.order()[0]).collect();
        assert!(firsts.contains(&0), "{firsts:?}");
        // A reload keeps the drain.
        nodes.set_drained("127.0.0.1:5002", true);
        let fresh = self::nodes(3);
        fresh.carry_health_from(&nodes);
        assert!(fresh.report(now)[2].drained);
    }

    #[test]
    fn when_every_node_is_banned_the_soonest_probe_is_tried_first() {
        let nodes = nodes(2);
        let now = Instant::now();
        nodes.failed(0, now + Duration::from_secs(1));
        nodes.failed(1, now);
        assert_eq!(nodes.order(), vec![1, 0]);
    }
}
