//! The configuration as warren runs with it: loaded at start with what is
//! built from its files, and loaded again on SIGHUP.

use std::sync::{Arc, Weak};

use tokio::signal::unix::Signal;

use crate::client::Context;
use crate::config::{Cli, Config, ConfigError, Route, UpstreamAddr, UpstreamTls, DEFAULT_ROUTE};
use crate::listener::Listeners;
use crate::logging::SetLevel;
use crate::pool::{RouteEntry, Routes};
use crate::stats::Stats;
use crate::upstream::{Nodes, UpstreamSettings};
use crate::{systemd, tls};

/// The configuration with what is built from its files: read at start and
/// at every reload, so a bad certificate is a configuration error like any
/// other, reported before anything changes.
pub struct Loaded {
    pub config: Config,
    /// Every route (the default first) with its broker nodes, and their TLS
    /// client configuration if any is amqps://.
    pub routes: Vec<(Route, Arc<Nodes>)>,
    /// The TLS listener's configuration, if it has one.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
}

impl Loaded {
    pub fn from(cli: &Cli) -> Result<Self, ConfigError> {
        let config = Config::load(cli)?;
        let default = Route {
            name: DEFAULT_ROUTE.into(),
            vhosts: Vec::new(),
            users: Vec::new(),
            upstreams: config.upstreams.clone(),
            upstream_vhost: None,
            tls: config.upstream_tls.clone(),
            consumer_mode: config.consumer_mode,
        };
        let routes = std::iter::once(default)
            .chain(config.routes.iter().cloned())
            .map(|route| {
                let nodes = nodes(&route.upstreams, &route.tls, &config)?;
                Ok((route, nodes))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let server_tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        Ok(Loaded {
            routes,
            server_tls,
            config,
        })
    }
}

/// A route's nodes, with a TLS client configuration if any is amqps://.
fn nodes(
    upstreams: &[UpstreamAddr],
    upstream_tls: &UpstreamTls,
    config: &Config,
) -> Result<Arc<Nodes>, ConfigError> {
    let client_tls = match upstreams.iter().any(|node| node.tls) {
        true => Some(tls::client_config(upstream_tls)?),
        false => None,
    };
    Ok(Nodes::new(upstreams.to_vec(), client_tls, config.node_ban))
}

pub fn warn_if_insecure(config: &Config) {
    if config.upstream_tls.insecure {
        tracing::warn!("--upstream-insecure: broker certificates are NOT verified; anyone on the path can read and change the traffic, passwords included");
    }
    for route in config.routes.iter().filter(|r| r.tls.insecure) {
        tracing::warn!(route = %route.name, "upstream_insecure: this route's broker certificates are NOT verified");
    }
}

/// What the pools take from the configuration: each route's settings.
pub fn routes(
    config: &Config,
    routes: Vec<(Route, Arc<Nodes>)>,
    stats: &Arc<Stats>,
    listening: &str,
) -> Routes {
    Routes::new(
        routes
            .into_iter()
            .map(|(route, nodes)| RouteEntry {
                settings: Arc::new(upstream_settings(config, &route, nodes, stats, listening)),
                route,
            })
            .collect(),
    )
}

fn upstream_settings(
    config: &Config,
    route: &Route,
    nodes: Arc<Nodes>,
    stats: &Arc<Stats>,
    listening: &str,
) -> UpstreamSettings {
    UpstreamSettings {
        route: route.name.clone(),
        nodes,
        upstream_vhost: route.upstream_vhost.clone(),
        consumer_mode: route.consumer_mode,
        connect_timeout: config.upstream_connect_timeout,
        max_lifetime: config.upstream_max_lifetime,
        hold: config.hold,
        max_connections: config.max_upstream_connections,
        channel_limit: config.max_upstream_channels,
        idle_timeout: config.idle_connection_timeout,
        kept_channels: if config.channel_reuse {
            config.max_kept_channels.into()
        } else {
            0
        },
        prewarm_channels: config.prewarm_channels.into(),
        guaranteed_channels: config.guaranteed_channels.into(),
        connection_name: config.upstream_connection_name.clone(),
        listening: listening.to_string(),
        stats: stats.clone(),
    }
}

/// Settings a reload cannot change: they shape sockets already bound.
const NEEDS_RESTART: &[&str] = &[
    "listen",
    "port",
    "tls_port",
    "socket_mode",
    "reuse_port",
    "http_port",
    "http_address",
    "log_format",
];

/// What a reload needs besides the command line.
pub struct Running {
    pub ctx: Arc<Context>,
    pub listeners: Weak<Listeners>,
    pub set_level: SetLevel,
    pub listening: String,
}

/// SIGHUP re-reads the configuration (file, with the command line and
/// environment still on top). Limits, timeouts, log level, upstream nodes
/// and TLS files apply to connections made from now on; a file that does
/// not load is logged and the running configuration stays. systemd hears
/// RELOADING=1 before and READY=1 after, whatever the outcome.
pub async fn reload_on_hangup(mut hangups: Signal, cli: Cli, running: Running) {
    while hangups.recv().await.is_some() {
        systemd::reloading();
        systemd::ready(match reload(&cli, &running) {
            true => "reloaded",
            false => "reload failed; the running configuration stays",
        });
    }
}

/// Whether the configuration loaded (and is now in force).
fn reload(cli: &Cli, running: &Running) -> bool {
    let Running {
        ctx,
        listeners,
        set_level,
        listening,
    } = running;
    let Loaded {
        config,
        routes: new_routes,
        server_tls,
    } = match Loaded::from(cli) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; the running configuration stays");
            return false;
        }
    };
    let old_routes = ctx.pools.routes();
    for (route, nodes) in &new_routes {
        if let Some(old) = old_routes.named(&route.name) {
            nodes.carry_health_from(&old.nodes);
        }
    }
    if let Some(listeners) = listeners.upgrade() {
        listeners.set_tls(server_tls);
    }
    let current = ctx.config();
    let changed = config.changed_from(&current);
    let mut ignored: Vec<&str> = changed
        .iter()
        .copied()
        .filter(|key| NEEDS_RESTART.contains(key))
        .collect();
    if config.tls.is_some() != current.tls.is_some() {
        ignored.push("tls_cert and tls_key (turning the TLS listener on or off)");
    }
    if !ignored.is_empty() {
        tracing::warn!(settings = %ignored.join(", "), "these settings change only at a restart");
    }
    ctx.pools
        .reconfigure(routes(&config, new_routes, &ctx.stats, listening));
    if !current.upstream_tls.insecure {
        warn_if_insecure(&config);
    }
    let level = config.log_level.clone();
    ctx.set_config(config);
    tracing::info!(changed = %changed.join(", "), "configuration reloaded");
    // Last, so the line above is written at the level it was asked under.
    if let Err(e) = set_level(&level) {
        tracing::error!(error = %e, "cannot change the log level");
    }
    true
}
