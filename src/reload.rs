//! The configuration as warren runs with it: loaded at start with what is
//! built from its files, and loaded again on SIGHUP.

use std::sync::{Arc, Weak};

use tokio::signal::unix::Signal;

use crate::client::Context;
use crate::config::{Cli, Config, ConfigError};
use crate::listener::Listeners;
use crate::logging::SetLevel;
use crate::stats::Stats;
use crate::upstream::{Nodes, UpstreamSettings};
use crate::{systemd, tls};

/// The configuration with what is built from its files: read at start and
/// at every reload, so a bad certificate is a configuration error like any
/// other, reported before anything changes.
pub struct Loaded {
    pub config: Config,
    /// The broker nodes, with the TLS client configuration if any is amqps://.
    pub nodes: Arc<Nodes>,
    /// The TLS listener's configuration, if it has one.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
}

impl Loaded {
    pub fn from(cli: &Cli) -> Result<Self, ConfigError> {
        let config = Config::load(cli)?;
        let client_tls = if config.upstreams.iter().any(|node| node.tls) {
            Some(tls::client_config(&config.upstream_tls)?)
        } else {
            None
        };
        let server_tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        Ok(Loaded {
            nodes: Nodes::new(config.upstreams.clone(), client_tls, config.node_ban),
            server_tls,
            config,
        })
    }
}

pub fn warn_if_insecure(config: &Config) {
    if config.upstream_tls.insecure {
        tracing::warn!("--upstream-insecure: broker certificates are NOT verified; anyone on the path can read and change the traffic, passwords included");
    }
}

/// What the pools take from the configuration.
pub fn upstream_settings(
    config: &Config,
    nodes: Arc<Nodes>,
    stats: &Arc<Stats>,
    listening: &str,
) -> UpstreamSettings {
    UpstreamSettings {
        nodes,
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
        connection_name: format!("warren {} on {listening}", env!("CARGO_PKG_VERSION")),
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
        nodes,
        server_tls,
    } = match Loaded::from(cli) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; the running configuration stays");
            return false;
        }
    };
    nodes.carry_health_from(&ctx.pools.settings().nodes);
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
        .reconfigure(upstream_settings(&config, nodes, &ctx.stats, listening));
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
