//! The JSON admin API (documented in docs/observability.md). Never shows a
//! password: records hold none.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Admin;
use crate::config::{ConsumerMode, Pattern, Scope};
use crate::stats::Traffic;
use crate::untrusted::shown;
use crate::upstream::ChannelCounts;
use crate::version;

/// How long a router gets to report its channels before it is shown
/// without them (a router is never blocked for long; this bounds a page).
const REPORT_WAIT: Duration = Duration::from_secs(1);

#[derive(Serialize)]
pub struct Overview {
    version: &'static str,
    commit: &'static str,
    built: &'static str,
    uptime_seconds: f64,
    ready: bool,
    draining: bool,
    clients: usize,
    clients_total: u64,
    upstreams: usize,
    pools: usize,
    channels: ChannelTotals,
    published: u64,
    delivered: u64,
    bytes: ByteTotals,
    reuse: ReuseTotals,
    paused: PausedView,
    outages: OutageTotals,
}

/// What the broker has not confirmed, and what lost connections cost.
#[derive(Serialize)]
struct OutageTotals {
    holding_clients: i64,
    held_messages: i64,
    held_bytes: u64,
    republished: u64,
    dropped: u64,
}

/// What `warren ctl pause` holds.
#[derive(Serialize)]
struct PausedView {
    all: bool,
    vhosts: Vec<String>,
}

#[derive(Serialize)]
struct ChannelTotals {
    client: u64,
    upstream_open: usize,
    upstream_kept: usize,
    upstream_closing: usize,
}

#[derive(Serialize)]
struct ByteTotals {
    from_clients: u64,
    to_clients: u64,
    from_broker: u64,
    to_broker: u64,
}

#[derive(Serialize)]
struct ReuseTotals {
    hits: u64,
    misses: u64,
}

#[derive(Serialize)]
pub struct Pool {
    route: String,
    vhost: String,
    user: String,
    upstreams: usize,
    clients: usize,
}

#[derive(Serialize)]
pub struct Upstream {
    id: u64,
    node: String,
    route: String,
    vhost: String,
    user: String,
    /// "shared", or "dedicated" (one client at a time).
    kind: &'static str,
    age_seconds: f64,
    state: &'static str,
    clients: usize,
    /// The ids of the clients on it (as `/api/clients` lists them).
    client_ids: Vec<u64>,
    channels: ChannelCounts,
    delivered: u64,
    bytes_from_broker: u64,
    bytes_to_broker: u64,
}

#[derive(Serialize)]
pub struct Node {
    route: String,
    node: String,
    tls: bool,
    /// "up", "banned" (it failed: tried only after the others until a
    /// background probe finds it back) or "drained" (by an operator).
    state: &'static str,
    failures: u32,
    retry_in_seconds: Option<f64>,
    upstreams: usize,
}

/// A route: who it serves, where it goes, and what it holds now.
#[derive(Serialize)]
pub struct RouteView {
    name: String,
    vhosts: Vec<String>,
    users: Vec<String>,
    upstream: Vec<String>,
    upstream_vhost: Option<String>,
    consumer_mode: ConsumerMode,
    pools: usize,
    upstreams: usize,
    clients: usize,
}

/// One user's or vhost's usage under its quota.
#[derive(Serialize)]
pub struct QuotaView {
    quota: String,
    scope: Scope,
    key: String,
    mode: &'static str,
    clients: usize,
    max_clients: Option<u32>,
    channels: usize,
    max_channels: Option<u32>,
    upstreams: usize,
    max_upstream_connections: Option<u32>,
    max_publish_rate: Option<u32>,
    max_publish_bytes_rate: Option<u64>,
    throttled_seconds: f64,
}

#[derive(Serialize)]
pub struct Client {
    id: u64,
    peer: String,
    user: String,
    vhost: String,
    connection_name: Option<String>,
    upstream: u64,
    channels: u64,
    published: u64,
    bytes_in: u64,
    bytes_out: u64,
    age_seconds: f64,
    /// A publish or channel open of its waits for `warren ctl resume`.
    paused: bool,
    /// Held while its upstream connection is re-established.
    held: bool,
}

/// Every live upstream connection's channels, by connection id. The
/// routers are asked all at once, so a page waits for the slowest, not
/// for their sum.
pub async fn channel_counts(admin: &Admin) -> HashMap<u64, ChannelCounts> {
    let mut reports = tokio::task::JoinSet::new();
    for upstream in admin.ctx.pools.upstreams() {
        reports.spawn(async move {
            let report = tokio::time::timeout(REPORT_WAIT, upstream.channel_counts()).await;
            (upstream.id(), report.ok().flatten())
        });
    }
    let mut counts = HashMap::new();
    while let Some(done) = reports.join_next().await {
        if let Ok((id, Some(report))) = done {
            counts.insert(id, report);
        }
    }
    counts
}

pub async fn overview(admin: &Admin) -> Overview {
    let ready = admin.readiness().await.is_ok();
    let channels = channel_counts(admin).await;
    let snapshot = admin.ctx.stats.snapshot();
    let mut traffic = Traffic::default();
    for pool_traffic in snapshot.traffic.values() {
        traffic += *pool_traffic;
    }
    let upstream_channels = ChannelCounts::sum(channels.values());
    Overview {
        version: version::VERSION,
        commit: version::COMMIT,
        built: version::BUILD_DATE,
        uptime_seconds: admin.ctx.stats.started.elapsed().as_secs_f64(),
        ready,
        draining: admin.draining.is_cancelled(),
        clients: snapshot.clients.len(),
        clients_total: snapshot.clients_total,
        upstreams: snapshot.upstreams.len(),
        pools: admin.ctx.pools.summary().len(),
        channels: ChannelTotals {
            client: snapshot.clients.iter().map(|c| c.channels.get()).sum(),
            upstream_open: upstream_channels.open,
            upstream_kept: upstream_channels.kept,
            upstream_closing: upstream_channels.closing,
        },
        published: traffic.published,
        delivered: traffic.delivered,
        bytes: ByteTotals {
            from_clients: traffic.bytes_from_clients,
            to_clients: traffic.bytes_to_clients,
            from_broker: traffic.bytes_from_broker,
            to_broker: traffic.bytes_to_broker,
        },
        reuse: ReuseTotals {
            hits: traffic.reuse_hits,
            misses: traffic.reuse_misses,
        },
        paused: {
            let paused = admin.ctx.pauses.current();
            PausedView {
                all: paused.all,
                vhosts: paused.vhosts.iter().map(|v| shown(v)).collect(),
            }
        },
        outages: {
            let events = &admin.ctx.stats.events;
            OutageTotals {
                holding_clients: events.holding_clients.get(),
                held_messages: events.held_messages.get(),
                held_bytes: admin.ctx.hold_buffer.used(),
                republished: events.republished.get(),
                dropped: events.dropped_held.get(),
            }
        },
    }
}

pub fn pools(admin: &Admin) -> Vec<Pool> {
    admin
        .ctx
        .pools
        .summary()
        .into_iter()
        .map(|p| Pool {
            route: p.route,
            vhost: shown(&p.vhost),
            user: shown(&p.user),
            upstreams: p.upstreams,
            clients: p.clients,
        })
        .collect()
}

pub async fn upstreams(admin: &Admin) -> Vec<Upstream> {
    let channels = channel_counts(admin).await;
    let live: HashMap<u64, (usize, bool)> = admin
        .ctx
        .pools
        .upstreams()
        .iter()
        .map(|u| (u.id(), (u.client_count(), u.is_dedicated())))
        .collect();
    let mut client_ids: HashMap<u64, Vec<u64>> = HashMap::new();
    for client in admin.ctx.stats.clients() {
        client_ids
            .entry(client.upstream.get())
            .or_default()
            .push(client.id);
    }
    admin
        .ctx
        .stats
        .upstreams()
        .iter()
        .map(|u| Upstream {
            id: u.id,
            node: u.node.clone(),
            route: u.route.clone(),
            vhost: u.pool.vhost.clone(),
            user: u.pool.user.clone(),
            kind: match live.get(&u.id) {
                Some((_, true)) => "dedicated",
                _ => "shared",
            },
            age_seconds: u.since.elapsed().as_secs_f64(),
            state: if u.is_blocked() { "blocked" } else { "open" },
            clients: live.get(&u.id).map_or(0, |(clients, _)| *clients),
            client_ids: client_ids.remove(&u.id).unwrap_or_default(),
            channels: channels.get(&u.id).copied().unwrap_or_default(),
            delivered: u.delivered.get(),
            bytes_from_broker: u.bytes_in.get(),
            bytes_to_broker: u.bytes_out.get(),
        })
        .collect()
}

pub fn clients(admin: &Admin) -> Vec<Client> {
    admin
        .ctx
        .stats
        .clients()
        .iter()
        .map(|c| Client {
            id: c.id,
            peer: c.peer.to_string(),
            user: c.pool.user.clone(),
            vhost: c.pool.vhost.clone(),
            connection_name: c.connection_name.clone(),
            upstream: c.upstream.get(),
            channels: c.channels.get(),
            published: c.published.get(),
            bytes_in: c.bytes_in.get(),
            bytes_out: c.bytes_out.get(),
            age_seconds: c.since.elapsed().as_secs_f64(),
            paused: c.paused.get() == 1,
            held: c.held.get() == 1,
        })
        .collect()
}

pub fn quotas(admin: &Admin) -> Vec<QuotaView> {
    let pools = admin.ctx.pools.summary();
    admin
        .ctx
        .quotas
        .report()
        .into_iter()
        .map(|usage| {
            let quota = usage.quota;
            let upstreams = pools
                .iter()
                .filter(|p| match quota.scope {
                    Scope::User => p.user == usage.key,
                    Scope::Vhost => p.vhost == usage.key,
                })
                .map(|p| p.upstreams)
                .sum();
            QuotaView {
                scope: quota.scope,
                key: shown(&usage.key),
                mode: if quota.observe { "observe" } else { "enforce" },
                clients: usage.clients,
                max_clients: quota.max_clients,
                channels: usage.channels,
                max_channels: quota.max_channels,
                upstreams,
                max_upstream_connections: quota.max_upstream_connections,
                max_publish_rate: quota.max_publish_rate,
                max_publish_bytes_rate: quota.max_publish_bytes_rate,
                throttled_seconds: usage.throttled_seconds,
                quota: quota.name,
            }
        })
        .collect()
}

pub fn routes(admin: &Admin) -> Vec<RouteView> {
    let pools = admin.ctx.pools.summary();
    let patterns = |patterns: &[Pattern]| patterns.iter().map(|p| shown(p.as_str())).collect();
    admin
        .ctx
        .pools
        .routes()
        .entries()
        .iter()
        .map(|entry| {
            let route = &entry.route;
            let own = || pools.iter().filter(|p| p.route == route.name);
            RouteView {
                name: route.name.clone(),
                vhosts: patterns(&route.vhosts),
                users: patterns(&route.users),
                upstream: route.upstreams.iter().map(|u| u.to_string()).collect(),
                upstream_vhost: route.upstream_vhost.as_deref().map(shown),
                consumer_mode: route.consumer_mode,
                pools: own().count(),
                upstreams: own().map(|p| p.upstreams).sum(),
                clients: own().map(|p| p.clients).sum(),
            }
        })
        .collect()
}

pub fn nodes(admin: &Admin) -> Vec<Node> {
    let upstreams = admin.ctx.pools.upstreams();
    let now = Instant::now();
    let routes = admin.ctx.pools.routes();
    routes
        .entries()
        .iter()
        .flat_map(|entry| {
            let route = &entry.route.name;
            let upstreams = &upstreams;
            entry
                .settings
                .nodes
                .report(now)
                .into_iter()
                .map(move |report| Node {
                    route: route.clone(),
                    node: report.addr.to_string(),
                    tls: report.addr.tls,
                    state: if report.drained {
                        "drained"
                    } else if report.banned {
                        "banned"
                    } else {
                        "up"
                    },
                    failures: report.failures,
                    retry_in_seconds: report.retry_in.map(|d| d.as_secs_f64()),
                    upstreams: upstreams
                        .iter()
                        .filter(|u| *u.node() == report.addr && u.route() == route)
                        .count(),
                })
        })
        .collect()
}
