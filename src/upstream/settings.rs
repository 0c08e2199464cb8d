//! How upstream connections are opened and kept: one set per route.

use std::sync::Arc;
use std::time::Duration;

use super::Nodes;
use crate::config::{ConsumerMode, NameTemplate};
use crate::stats::Stats;

/// How upstream connections are opened and kept.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The route these settings are for (`[[route]]`, or the default).
    pub route: String,
    pub nodes: Arc<Nodes>,
    /// The vhost opened on the broker instead of the client's (a route's
    /// `upstream_vhost`).
    pub upstream_vhost: Option<String>,
    /// Per node tried.
    pub connect_timeout: Duration,
    /// After this a connection takes no new clients (see `is_retired`),
    /// and the broker's word on a password is no longer taken.
    pub max_lifetime: Option<Duration>,
    /// Whether a client that starts consuming gets a connection of its own.
    pub consumer_mode: ConsumerMode,
    /// `--hold-seconds`: how long clients are held through a lost
    /// connection, and how long after one a pool admits new clients
    /// while the broker is unreachable.
    pub hold: Option<Duration>,
    /// Per pool; 0: no limit.
    pub max_connections: usize,
    /// `--max-upstream-channels`; the broker's channel_max also applies.
    pub channel_limit: u16,
    pub idle_timeout: Duration,
    /// Clean channels kept open for the next client; 0 turns reuse off.
    pub kept_channels: usize,
    /// Clean channels opened in advance on each connection.
    pub prewarm_channels: usize,
    /// Channels each client is sure to get on a connection.
    pub guaranteed_channels: usize,
    /// How warren names its connections to the broker (shown in the
    /// management UI): which warren, listening where, for whom.
    pub connection_name: NameTemplate,
    /// Where warren listens for clients (the first listener).
    pub listening: String,
    pub stats: Arc<Stats>,
}

impl UpstreamSettings {
    /// The vhost opened on the broker for a client of `client_vhost`.
    pub fn broker_vhost<'a>(&'a self, client_vhost: &'a str) -> &'a str {
        self.upstream_vhost.as_deref().unwrap_or(client_vhost)
    }
}
