//! `/metrics` in the Prometheus text format (metric list in
//! docs/observability.md).
//!
//! Each scrape builds its exposition from one snapshot of the records, so
//! the numbers on a page agree with each other. Traffic is labelled by the
//! pool's vhost and user: bounded, because a pool exists only for
//! credentials the broker accepted. Rare events are prometheus-client
//! metrics kept in [`crate::stats::Events`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Error;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::api::channel_counts;
use super::Admin;
use crate::quota::{Exceeded, QuotaUsage};
use crate::stats::{PoolLabel, Snapshot, Stats, Traffic};
use crate::untrusted::shown;
use crate::upstream::ChannelCounts;

pub async fn render(admin: &Admin) -> String {
    let exposition = Exposition {
        channels: channel_counts(admin).await,
        pools: admin.ctx.pools.summary().len(),
        dedicated_upstreams: admin
            .ctx
            .pools
            .upstreams()
            .iter()
            .filter(|u| u.is_dedicated())
            .count(),
        routes: admin
            .ctx
            .pools
            .routes()
            .entries()
            .iter()
            .map(|e| e.route.name.clone())
            .collect(),
        snapshot: admin.ctx.stats.snapshot(),
        quotas: admin.ctx.quotas.report(),
        quota_exceeded: admin.ctx.quotas.exceeded(),
        stats: admin.ctx.stats.clone(),
        held_publish_bytes: admin.ctx.held_bytes.used(),
        held_publish_limit: admin.ctx.held_bytes.limit(),
        held_delivery_bytes: admin.ctx.held_deliveries.used(),
        held_delivery_limit: admin.ctx.held_deliveries.limit(),
        hold_buffer_bytes: admin.ctx.hold_buffer.used(),
        hold_buffer_limit: admin.ctx.hold_buffer.limit(),
        upstream_connections_limit: admin.ctx.config().max_upstream_connections,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(exposition));
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        Ok(()) => text,
        Err(_) => "# warren could not encode its metrics\n".into(),
    }
}

/// Picks one count out of a pool's traffic.
type TrafficCount = fn(&Traffic) -> u64;
/// Picks one count out of a user's or vhost's usage under its quota.
type UsageCount = fn(&QuotaUsage) -> u64;

#[derive(Debug)]
struct Exposition {
    snapshot: Snapshot,
    channels: HashMap<u64, ChannelCounts>,
    pools: usize,
    dedicated_upstreams: usize,
    /// Every route's name, the default first.
    routes: Vec<String>,
    quotas: Vec<QuotaUsage>,
    quota_exceeded: BTreeMap<Exceeded, u64>,
    stats: Arc<Stats>,
    held_publish_bytes: u64,
    held_publish_limit: u64,
    held_delivery_bytes: u64,
    held_delivery_limit: u64,
    hold_buffer_bytes: u64,
    hold_buffer_limit: u64,
    upstream_connections_limit: usize,
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        self.encode_connections(&mut encoder)?;
        self.encode_routes(&mut encoder)?;
        self.encode_quotas(&mut encoder)?;
        self.encode_held(&mut encoder)?;
        self.encode_channels(&mut encoder)?;
        self.encode_traffic(&mut encoder)?;
        self.encode_events(&mut encoder)
    }
}

impl Exposition {
    fn encode_connections(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let snapshot = &self.snapshot;
        let clients_by_pool = count_by_pool(snapshot.clients.iter().map(|c| &c.pool));
        let upstreams_by_pool = count_by_pool(snapshot.upstreams.iter().map(|u| &u.pool));
        by_pool(
            encoder,
            "warren_client_connections",
            "Client connections open now",
            MetricType::Gauge,
            &clients_by_pool,
        )?;
        by_pool(
            encoder,
            "warren_upstream_connections",
            "Upstream connections open now",
            MetricType::Gauge,
            &upstreams_by_pool,
        )?;
        gauge(
            encoder,
            "amqproxy_client_connections",
            "Client connections open now (amqproxy's name)",
            snapshot.clients.len() as u64,
        )?;
        gauge(
            encoder,
            "amqproxy_upstream_connections",
            "Upstream connections open now (amqproxy's name)",
            snapshot.upstreams.len() as u64,
        )?;
        counter(
            encoder,
            "warren_client_connections_accepted",
            "TCP connections accepted on the AMQP port (handshakes by outcome: warren_client_handshakes_total)",
            self.stats.events.accepted.get(),
        )?;
        counter(
            encoder,
            "warren_upstream_connections_opened",
            "Upstream connections opened",
            snapshot.upstreams_total,
        )?;
        gauge(
            encoder,
            "warren_pools",
            "Pools (vhost, user and password) warren holds; one whose connections all closed is forgotten within 5 s",
            self.pools as u64,
        )?;
        gauge(
            encoder,
            "warren_dedicated_upstream_connections",
            "Upstream connections that serve one client at a time (consumer_mode dedicated)",
            self.dedicated_upstreams as u64,
        )?;
        gauge(
            encoder,
            "warren_upstream_connections_blocked",
            "Upstream connections the broker has blocked (resource alarm)",
            snapshot.upstreams.iter().filter(|u| u.is_blocked()).count() as u64,
        )?;
        gauge(
            encoder,
            "warren_upstream_connections_limit",
            "Most upstream connections per pool (--max-upstream-connections); 0: no limit",
            self.upstream_connections_limit as u64,
        )
    }

    /// Clients and upstream connections per route (configured routes are
    /// listed with 0, so a route's series exist before its first client).
    fn encode_routes(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let mut upstreams: BTreeMap<&str, u64> =
            self.routes.iter().map(|r| (r.as_str(), 0)).collect();
        let mut clients = upstreams.clone();
        let mut route_of = HashMap::new();
        for upstream in &self.snapshot.upstreams {
            *upstreams.entry(upstream.route.as_str()).or_default() += 1;
            route_of.insert(upstream.id, upstream.route.as_str());
        }
        for client in &self.snapshot.clients {
            if let Some(route) = route_of.get(&client.upstream.get()) {
                *clients.entry(route).or_default() += 1;
            }
        }
        for (name, help, counts) in [
            (
                "warren_route_client_connections",
                "Client connections open now, by route",
                &clients,
            ),
            (
                "warren_route_upstream_connections",
                "Upstream connections open now, by route",
                &upstreams,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (route, value) in counts {
                ConstGauge::new(*value).encode(metric.encode_family(&[("route", *route)])?)?;
            }
        }
        Ok(())
    }

    /// What each user and vhost a quota covers holds, and how often a
    /// limit was reached.
    fn encode_quotas(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let gauges: [(&str, &str, UsageCount); 2] = [
            (
                "warren_quota_clients",
                "Clients of a user or vhost a quota covers",
                |u| u.clients as u64,
            ),
            (
                "warren_quota_channels",
                "Channels of a user or vhost a quota covers",
                |u| u.channels as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for usage in &self.quotas {
                let key = shown(&usage.key);
                let labels = [("quota", usage.quota.name.as_str()), ("key", key.as_str())];
                ConstGauge::new(value(usage)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut throttled = encoder.encode_descriptor(
            "warren_quota_throttled_seconds",
            "Time clients of a user or vhost were not read for a publish rate quota",
            None,
            MetricType::Counter,
        )?;
        for usage in &self.quotas {
            let key = shown(&usage.key);
            let labels = [("quota", usage.quota.name.as_str()), ("key", key.as_str())];
            ConstCounter::new(usage.throttled_seconds).encode(throttled.encode_family(&labels)?)?;
        }
        let mut exceeded = encoder.encode_descriptor(
            "warren_quota_exceeded",
            "Times a quota limit was reached (enforced=false: observe mode, let through)",
            None,
            MetricType::Counter,
        )?;
        for (reached, count) in &self.quota_exceeded {
            let enforced = if reached.enforced { "true" } else { "false" };
            let labels = [
                ("quota", reached.quota.as_str()),
                ("limit", reached.limit),
                ("enforced", enforced),
            ];
            ConstCounter::new(*count).encode(exceeded.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Memory held for clients against the shared budgets, and the budgets
    /// (so alerts compare against what this warren runs with).
    fn encode_held(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        gauge(
            encoder,
            "warren_held_publish_bytes",
            "Bytes of partly received large messages held until whole (budget: --max-held-publish-mib)",
            self.held_publish_bytes,
        )?;
        gauge(
            encoder,
            "warren_held_publish_bytes_limit",
            "The budget for partly received messages, bytes (--max-held-publish-mib)",
            self.held_publish_limit,
        )?;
        gauge(
            encoder,
            "warren_held_delivery_bytes",
            "Bytes of large messages owed whole to consumers beyond their write queue bound (budget: --max-held-delivery-mib)",
            self.held_delivery_bytes,
        )?;
        gauge(
            encoder,
            "warren_held_delivery_bytes_limit",
            "The budget for large messages owed to consumers, bytes (--max-held-delivery-mib)",
            self.held_delivery_limit,
        )?;
        gauge(
            encoder,
            "warren_hold_buffer_bytes",
            "Bytes of publishes the broker has not confirmed yet, kept to publish again (budget: --hold-buffer-mib)",
            self.hold_buffer_bytes,
        )?;
        gauge(
            encoder,
            "warren_hold_buffer_bytes_limit",
            "The budget for unconfirmed publishes, bytes (--hold-buffer-mib)",
            self.hold_buffer_limit,
        )
    }

    fn encode_channels(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        gauge(
            encoder,
            "warren_client_channels",
            "Channels clients have open",
            self.snapshot.clients.iter().map(|c| c.channels.get()).sum(),
        )?;
        let mut metric = encoder.encode_descriptor(
            "warren_upstream_channels",
            "Upstream channels by state: open (a client's), kept (clean, for the next client), closing",
            None,
            MetricType::Gauge,
        )?;
        let total = ChannelCounts::sum(self.channels.values());
        for (state, value) in [
            ("open", total.open),
            ("kept", total.kept),
            ("closing", total.closing),
        ] {
            ConstGauge::new(value as u64).encode(metric.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }

    fn encode_traffic(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let traffic = &self.snapshot.traffic;
        labelled_by_pool(
            encoder,
            "warren_frames",
            "AMQP frames received, by where from",
            traffic,
            "direction",
            &[
                ("from_clients", |t| t.frames_from_clients),
                ("from_broker", |t| t.frames_from_broker),
            ],
        )?;
        labelled_by_pool(
            encoder,
            "warren_bytes",
            "Bytes through warren's sockets, by direction",
            traffic,
            "direction",
            &[
                ("from_clients", |t| t.bytes_from_clients),
                ("to_clients", |t| t.bytes_to_clients),
                ("from_broker", |t| t.bytes_from_broker),
                ("to_broker", |t| t.bytes_to_broker),
            ],
        )?;
        labelled_by_pool(
            encoder,
            "warren_channel_reuse",
            "Client channels served by a kept upstream channel (hit) or a new one (miss)",
            traffic,
            "result",
            &[("hit", |t| t.reuse_hits), ("miss", |t| t.reuse_misses)],
        )?;
        let per_pool: [(&str, &str, TrafficCount); 3] = [
            (
                "warren_messages_published",
                "Messages clients published (whole: method, header and body)",
                |t| t.published,
            ),
            (
                "warren_messages_delivered",
                "Deliveries and basic.get-ok messages sent to clients",
                |t| t.delivered,
            ),
            (
                "warren_stale_frames_dropped",
                "Broker frames for a client that had gone (late acks, returns, replies), dropped",
                |t| t.stale_dropped,
            ),
        ];
        for (name, help, pick) in per_pool {
            let counts: BTreeMap<PoolLabel, u64> =
                traffic.iter().map(|(p, t)| (p.clone(), pick(t))).collect();
            by_pool(encoder, name, help, MetricType::Counter, &counts)?;
        }
        Ok(())
    }

    fn encode_events(&self, encoder: &mut DescriptorEncoder) -> Result<(), Error> {
        let events = &self.stats.events;
        let families: [(&str, &str, &dyn EncodeMetric); 10] = [
            (
                "warren_client_handshakes",
                "Client handshakes, by outcome",
                &events.handshakes,
            ),
            (
                "warren_client_disconnects",
                "Admitted clients that left, by reason",
                &events.disconnects,
            ),
            (
                "warren_client_closes",
                "Connection and channel closes sent to clients (by warren or the broker), by reply code",
                &events.closes,
            ),
            (
                "warren_upstream_logins",
                "Logins to the broker, by outcome",
                &events.upstream_logins,
            ),
            (
                "warren_client_handshake_duration_seconds",
                "Time from accept to Connection.Open-Ok",
                &events.handshake_seconds,
            ),
            (
                "warren_upstream_login_duration_seconds",
                "Time to connect and log in to the broker",
                &events.upstream_login_seconds,
            ),
            (
                "warren_holding_clients",
                "Clients held while their upstream connection is re-established",
                &events.holding_clients,
            ),
            (
                "warren_held_messages",
                "Publishes the broker has not confirmed yet, kept to publish again (their bytes: warren_hold_buffer_bytes)",
                &events.held_messages,
            ),
            (
                "warren_republished_messages",
                "Publishes sent again on a new upstream connection after one was lost",
                &events.republished,
            ),
            (
                "warren_dropped_held_messages",
                "Held publishes given up on: the hold time ran out or the client left while held",
                &events.dropped_held,
            ),
        ];
        for (name, help, metric) in families {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

/// A counter family labelled by pool and by `label`, one value per pool
/// and label value.
fn labelled_by_pool(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    traffic: &BTreeMap<PoolLabel, Traffic>,
    label: &str,
    values: &[(&str, TrafficCount)],
) -> Result<(), Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (pool, t) in traffic {
        for (value_label, pick) in values {
            ConstCounter::new(pick(t))
                .encode(metric.encode_family(&labels(pool, (label, value_label)))?)?;
        }
    }
    Ok(())
}

fn labels<'a>(pool: &'a PoolLabel, extra: (&'a str, &'a str)) -> [(&'a str, &'a str); 3] {
    [
        ("vhost", pool.vhost.as_str()),
        ("user", pool.user.as_str()),
        extra,
    ]
}

fn count_by_pool<'a>(pools: impl Iterator<Item = &'a PoolLabel>) -> BTreeMap<PoolLabel, u64> {
    let mut counts = BTreeMap::new();
    for pool in pools {
        *counts.entry(pool.clone()).or_insert(0) += 1;
    }
    counts
}

fn by_pool(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    values: &BTreeMap<PoolLabel, u64>,
) -> Result<(), Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (pool, value) in values {
        let labels = [("vhost", pool.vhost.as_str()), ("user", pool.user.as_str())];
        let family = metric.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => ConstCounter::new(*value).encode(family)?,
            _ => ConstGauge::new(*value).encode(family)?,
        }
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}
