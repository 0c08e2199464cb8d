//! The process: configuration, logging, the runtime and signals around
//! the listeners and the pools (reload: `reload.rs`).

use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin, Readiness};
use crate::client::Context;
use crate::config::Cli;
use crate::housekeeping;
use crate::listener;
use crate::logging::{self, SetLevel};
use crate::pool::Pools;
use crate::quota::Quotas;
use crate::reload::{reload_on_hangup, routes, warn_if_insecure, Loaded, Running};
use crate::stats::Stats;
use crate::{fd_limit, memory, systemd, upstream};

/// Runs warren as the command line says; the binary is only this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(request) = cli.ctl {
        return request.run();
    }
    if let Some(what) = cli.generate {
        return match Cli::generate(what, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            // A reader that stops early (`| head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("warren: cannot write: {e}");
                ExitCode::FAILURE
            }
        };
    }
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

async fn run(cli: Cli, loaded: Loaded, set_level: SetLevel) -> ExitCode {
    let Loaded {
        config,
        routes: configured_routes,
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
    let upstreams: Vec<String> = config.upstreams.iter().map(|u| u.to_string()).collect();
    let routes = routes(&config, configured_routes, &stats, &listening);
    let quotas = Quotas::new(config.quotas.clone());
    let pools = Pools::new(routes, quotas.clone());
    let ctx = Arc::new(Context::new(config, pools, stats, quotas));
    let stop = CancellationToken::new();
    let http_local = match http {
        Some(http) => serve_http(http, &ctx, &stop),
        None => "off".into(),
    };
    tracing::info!(listen = %addresses.join(", "), http = %http_local, upstream = %upstreams.join(","), "warren is ready");
    systemd::ready(&format!("listening on {}", addresses.join(", ")));
    tokio::spawn(systemd::keep_watchdog_fed());

    tokio::spawn(watch_signals(term, int, stop.clone()));
    let running = Running {
        ctx: ctx.clone(),
        listeners: Arc::downgrade(&listeners),
        set_level,
        listening,
    };
    tokio::spawn(reload_on_hangup(hangups, cli, running));
    spawn_background(&ctx, &stop);
    listener::run(listeners, ctx, stop).await;
    tracing::info!("warren stopped");
    ExitCode::SUCCESS
}

/// Serves the HTTP endpoint; returns where it listens.
fn serve_http(http: TcpListener, ctx: &Arc<Context>, stop: &CancellationToken) -> String {
    let bound = http.local_addr().ok();
    let admin = Arc::new(Admin {
        ctx: ctx.clone(),
        draining: stop.clone(),
        readiness: Readiness::default(),
        loopback: bound.is_some_and(|a| a.ip().is_loopback()),
    });
    tokio::spawn(admin::serve(http, admin));
    bound.map(|a| a.to_string()).unwrap_or_default()
}

/// The tasks beside the listeners: housekeeping, learning the broker's
/// server properties now rather than from the first client's login, and
/// probing banned nodes.
fn spawn_background(ctx: &Arc<Context>, stop: &CancellationToken) {
    tokio::spawn(housekeeping::run(ctx.clone(), stop.clone()));
    let learning = ctx.clone();
    tokio::spawn(async move {
        upstream::learn_broker_properties(|| learning.pools.settings().nodes.clone()).await
    });
    let probing = ctx.clone();
    tokio::spawn(
        async move { upstream::probe_banned(|| probing.pools.routes().all_nodes()).await },
    );
}

/// The first SIGTERM/SIGINT starts a graceful drain; a second one exits now.
async fn watch_signals(mut term: Signal, mut int: Signal, stop: CancellationToken) {
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested; send the signal again to exit at once");
    systemd::stopping();
    stop.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
