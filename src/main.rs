use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use warren::admin::{self, Admin, Readiness};
use warren::client::Context;
use warren::config::{Cli, Config};
use warren::pool::Pools;
use warren::stats::Stats;
use warren::upstream::UpstreamSettings;
use warren::{listener, logging, memory};

fn main() -> ExitCode {
    let config = match Config::from_cli(Cli::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&config.log_level, config.log_format);
    memory::tune_allocator();
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
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let stats = Arc::new(Stats::default());
    let settings = UpstreamSettings {
        addr: config.upstream.clone(),
        connect_timeout: config.upstream_connect_timeout,
        channel_limit: config.max_upstream_channels,
        idle_timeout: config.idle_connection_timeout,
        kept_channels: if config.channel_reuse {
            config.max_kept_channels.into()
        } else {
            0
        },
        prewarm_channels: config.prewarm_channels.into(),
        connection_name: format!(
            "warren {} on {}:{}",
            env!("CARGO_PKG_VERSION"),
            config.listen_address,
            config.port
        ),
        stats: stats.clone(),
    };
    let ctx = Arc::new(Context::new(config, Pools::new(settings), stats));
    let listener = match listener::bind(&ctx).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "warren: cannot listen on {}:{}: {e}",
                ctx.config.listen_address, ctx.config.port
            );
            return ExitCode::FAILURE;
        }
    };
    let http = match admin::bind(&ctx).await {
        Ok(http) => http,
        Err(e) => {
            eprintln!(
                "warren: cannot listen for HTTP on {}:{} (--http-port, 0 turns it off): {e}",
                ctx.config.http_address, ctx.config.http_port
            );
            return ExitCode::FAILURE;
        }
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let stop = CancellationToken::new();
    let http_local = match http {
        Some(http) => {
            let local = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let admin = Arc::new(Admin {
                ctx: ctx.clone(),
                draining: stop.clone(),
                readiness: Readiness::new(ctx.config.upstream.clone()),
            });
            tokio::spawn(admin::serve(http, admin));
            local
        }
        None => "off".into(),
    };
    tracing::info!(listen = %local, http = %http_local, upstream = %ctx.config.upstream, "warren is ready");

    tokio::spawn(watch_signals(stop.clone()));
    listener::run(listener, ctx, stop).await;
    tracing::info!("warren stopped");
    ExitCode::SUCCESS
}

/// The first SIGTERM/SIGINT starts a graceful drain; a second one exits now.
async fn watch_signals(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested; send the signal again to exit at once");
    stop.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
