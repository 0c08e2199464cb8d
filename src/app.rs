//! The process: configuration, logging, the runtime, signals and SIGHUP
//! reload around the listeners and the pools.

use std::process::ExitCode;
use std::sync::{Arc, Weak};

use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin, Readiness};
use crate::client::Context;
use crate::config::{Cli, Config, ConfigError};
use crate::listener::{self, Listeners};
use crate::logging::{self, SetLevel};
use crate::pool::Pools;
use crate::stats::Stats;
use crate::upstream::{Nodes, UpstreamSettings};
use crate::{fd_limit, memory, tls};

/// Runs warren as the command line says; the binary is only this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match Loaded::from(&cli) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config.is_some() {
        print!("{}", loaded.config.to_toml());
        return ExitCode::SUCCESS;
    }
    let config = &loaded.config;
    let set_level = logging::init(&config.log_level, config.log_format);
    memory::tune_allocator();
    fd_limit::check(fd_limit::raise(), config.max_clients);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, loaded, set_level))
}

/// The configuration with what is built from its files: read at start and
/// at every reload, so a bad certificate is a configuration error like any
/// other, reported before anything changes.
struct Loaded {
    config: Config,
    /// The broker nodes, with the TLS client configuration if any is amqps://.
    nodes: Arc<Nodes>,
    /// The TLS listener's configuration, if it has one.
    server_tls: Option<Arc<rustls::ServerConfig>>,
}

impl Loaded {
    fn from(cli: &Cli) -> Result<Self, ConfigError> {
        let config = Config::load(cli)?;
        let client_tls = if config.upstreams.iter().any(|node| node.tls) {
            Some(tls::client_config(&config.upstream_tls)?)
        } else {
            None
        };
        let server_tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        Ok(Loaded {
            nodes: Nodes::new(config.upstreams.clone(), client_tls),
            server_tls,
            config,
        })
    }
}

fn warn_if_insecure(config: &Config) {
    if config.upstream_tls.insecure {
        tracing::warn!("--upstream-insecure: broker certificates are NOT verified; anyone on the path can read and change the traffic, passwords included");
    }
}

fn upstream_settings(
    config: &Config,
    nodes: Arc<Nodes>,
    stats: &Arc<Stats>,
    listening: &str,
) -> UpstreamSettings {
    UpstreamSettings {
        nodes,
        connect_timeout: config.upstream_connect_timeout,
        max_lifetime: config.upstream_max_lifetime,
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

async fn run(cli: Cli, loaded: Loaded, set_level: SetLevel) -> ExitCode {
    let Loaded {
        config,
        nodes,
        server_tls,
    } = loaded;
    // Installed first: a SIGHUP or SIGTERM arriving while the listeners bind
    // must not kill the process with the default action.
    let (term, int, hangups) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(int), Ok(hangups)) => (term, int, hangups),
        _ => {
            eprintln!("warren: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    warn_if_insecure(&config);
    let mut listeners = match listener::bind(&config, server_tls).await {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::FAILURE;
        }
    };
    let http = match admin::bind(&config).await {
        Ok(http) => http,
        Err(e) => {
            eprintln!(
                "warren: cannot listen for HTTP on {}:{} (--http-port, 0 turns it off): {e}",
                config.http_address, config.http_port
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = listeners.publish() {
        eprintln!("warren: {e}");
        return ExitCode::FAILURE;
    }
    let listeners = Arc::new(listeners);
    let addresses = listeners.describe();
    let listening = addresses[0].clone();
    let stats = Arc::new(Stats::default());
    let settings = upstream_settings(&config, nodes, &stats, &listening);
    let upstreams: Vec<String> = config.upstreams.iter().map(|u| u.to_string()).collect();
    let ctx = Arc::new(Context::new(config, Pools::new(settings), stats));
    let stop = CancellationToken::new();
    let http_local = match http {
        Some(http) => {
            let local = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let admin = Arc::new(Admin {
                ctx: ctx.clone(),
                draining: stop.clone(),
                readiness: Readiness::default(),
            });
            tokio::spawn(admin::serve(http, admin));
            local
        }
        None => "off".into(),
    };
    tracing::info!(listen = %addresses.join(", "), http = %http_local, upstream = %upstreams.join(","), "warren is ready");

    tokio::spawn(watch_signals(term, int, stop.clone()));
    tokio::spawn(reload_on_hangup(
        hangups,
        cli,
        ctx.clone(),
        Arc::downgrade(&listeners),
        set_level,
        listening,
    ));
    listener::run(listeners, ctx, stop).await;
    tracing::info!("warren stopped");
    ExitCode::SUCCESS
}

/// The first SIGTERM/SIGINT starts a graceful drain; a second one exits now.
async fn watch_signals(mut term: Signal, mut int: Signal, stop: CancellationToken) {
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested; send the signal again to exit at once");
    stop.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
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

/// SIGHUP re-reads the configuration (file, with the command line and
/// environment still on top). Limits, timeouts, log level, upstream nodes
/// and TLS files apply to connections made from now on; a file that does
/// not load is logged and the running configuration stays.
async fn reload_on_hangup(
    mut hangups: Signal,
    cli: Cli,
    ctx: Arc<Context>,
    listeners: Weak<Listeners>,
    set_level: SetLevel,
    listening: String,
) {
    while hangups.recv().await.is_some() {
        let Loaded {
            config,
            nodes,
            server_tls,
        } = match Loaded::from(&cli) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the running configuration stays");
                continue;
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
            .reconfigure(upstream_settings(&config, nodes, &ctx.stats, &listening));
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
    }
}
