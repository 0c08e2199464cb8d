//! warren-bench: measures warren against a direct connection to the same
//! broker, in the same run, and reports warren ÷ direct (see
//! docs/benchmarks.md).
//!
//! It starts its own warren (the binary next to this one by default) in
//! front of the broker given, runs each scenario against the broker and
//! through warren alternately, repeats, and prints medians, spreads,
//! ratios and whether each target was met.

mod amqp;
mod client;
mod report;
mod scenarios;
mod target;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use client::Login;
use client::Result;
use report::{Compare, Goal, Row};
use target::Warren;

#[derive(Debug, Parser)]
#[command(
    name = "warren-bench",
    version,
    about = "warren vs a direct broker connection, as ratios"
)]
struct Args {
    /// The broker, with the credentials and vhost to use
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2F")]
    broker: String,
    /// The warren binary to start [default: the one next to warren-bench]
    #[arg(long)]
    warren: Option<PathBuf>,
    /// Seconds per timed run
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs per scenario and target; medians are reported
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Message sizes for the publish scenarios, bytes
    #[arg(long, value_delimiter = ',', default_values_t = [16, 1024, 4096, 65536])]
    sizes: Vec<usize>,
    /// Idle client counts for the memory scenario
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
    idle_clients: Vec<usize>,
    /// Seconds of the soak: idle clients held while 32 loops churn
    #[arg(long, default_value_t = 60.0)]
    soak_seconds: f64,
    /// Idle clients held during the soak
    #[arg(long, default_value_t = 1000)]
    soak_clients: usize,
    /// Scenario groups to run [default: all]: publish, parallel, consume,
    /// latency, churn, memory, soak
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A run of seconds, not minutes, for the test suite
    #[arg(long)]
    smoke: bool,
    /// Directory to write results.json and ratios.svg to
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit 1 when a target is missed
    #[arg(long)]
    require_targets: bool,
    /// Measure nothing: print the table and draw the plot again from a
    /// results.json of an earlier run (into --out, or next to it)
    #[arg(long, value_name = "RESULTS_JSON")]
    replot: Option<PathBuf>,
}

/// What every scenario group needs.
struct Bench {
    login: Login,
    broker: SocketAddr,
    warren_binary: PathBuf,
    duration: Duration,
    repeats: usize,
    smoke: bool,
    sizes: Vec<usize>,
    /// Queues declared so far.
    queues: Vec<String>,
    rows: Vec<Row>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("warren-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warren-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    if let Some(results) = &args.replot {
        let text =
            std::fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
        let rows: Vec<Row> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", results.display()))?;
        let next_to_results = results.parent().map_or_else(PathBuf::new, PathBuf::from);
        let dir = args.out.clone().unwrap_or(next_to_results);
        return report_results(&rows, Some(&dir), args.require_targets);
    }
    let (broker, login) = parse_broker(&args.broker)?;
    raise_open_files_limit();
    let warren_binary = match &args.warren {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("warren"),
    };
    let mut bench = Bench {
        login,
        broker,
        warren_binary,
        duration: Duration::from_secs_f64(if args.smoke { 0.2 } else { args.seconds }),
        repeats: if args.smoke { 1 } else { args.repeats.max(1) },
        smoke: args.smoke,
        sizes: args.sizes.clone(),
        queues: Vec::new(),
        rows: Vec::new(),
    };
    println!("{}", machine());
    let measured = measure(&mut bench, &args).await;
    bench.delete_queues().await;
    measured?;
    report_results(&bench.rows, args.out.as_deref(), args.require_targets)
}

/// Prints the table and writes results.json and ratios.svg into `out`.
fn report_results(
    rows: &[Row],
    out: Option<&std::path::Path>,
    require_targets: bool,
) -> Result<ExitCode> {
    println!("\n{}", report::table(rows));
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let json = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("results.json"), json).map_err(|e| e.to_string())?;
        let svg = report::plot(rows, "warren-bench: throughput and churn");
        std::fs::write(dir.join("ratios.svg"), svg).map_err(|e| e.to_string())?;
        println!("wrote {}/results.json and ratios.svg", dir.display());
    }
    let missed = rows.iter().filter(|r| r.met() == Some(false)).count();
    if missed > 0 {
        println!("{missed} target(s) missed");
    }
    Ok(if require_targets && missed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs a scenario group; its errors name it.
async fn named(group: &str, run: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    run.await.map_err(|e| format!("{group}: {e}"))
}

/// Runs the scenario groups asked for, adding rows to `bench`.
async fn measure(bench: &mut Bench, args: &Args) -> Result<()> {
    let wanted = |group: &str| args.only.is_empty() || args.only.iter().any(|g| g == group);
    let warren = Warren::start(&bench.warren_binary, bench.broker).await?;
    if wanted("publish") {
        named("publish", bench.publish(&warren)).await?;
    }
    if wanted("parallel") {
        named("parallel", bench.parallel(&warren)).await?;
    }
    if wanted("consume") {
        named("consume", bench.consume(&warren)).await?;
    }
    if wanted("latency") {
        named("latency", bench.latency(&warren)).await?;
    }
    if wanted("churn") {
        named("churn", bench.churn(&warren)).await?;
    }
    drop(warren);
    if wanted("memory") {
        let counts = if args.smoke {
            vec![20]
        } else {
            args.idle_clients.clone()
        };
        for clients in counts {
            named("memory", bench.memory(clients)).await?;
        }
    }
    if wanted("soak") {
        let (clients, seconds) = if args.smoke {
            (20, 2.0)
        } else {
            (args.soak_clients, args.soak_seconds)
        };
        named(
            "soak",
            bench.soak(clients, Duration::from_secs_f64(seconds)),
        )
        .await?;
    }
    Ok(())
}

impl Bench {
    /// A queue name of this run; every one is deleted at the end, even
    /// after a failure.
    fn queue(&mut self, what: &str) -> String {
        let name = format!("warren-bench-{}-{what}", std::process::id());
        self.queues.push(name.clone());
        name
    }

    async fn delete_queues(&mut self) {
        for queue in std::mem::take(&mut self.queues) {
            let _ = scenarios::delete_queue(&self.login, self.broker, &queue).await;
        }
    }

    async fn publish(&mut self, warren: &Warren) -> Result<()> {
        let queues = vec![self.queue("publish")];
        scenarios::prepare_queue(&self.login, self.broker, &queues[0]).await?;
        for confirms in [false, true] {
            for size in self.sizes.clone() {
                let label = format!(
                    "publish {}{}",
                    size_name(size),
                    if confirms { ", confirms" } else { "" }
                );
                let mut rate = Row::new(&label, "msg/s", Compare::Ratio);
                if size == 16 || size == 4096 {
                    rate = rate.goal(Goal::AtLeast(0.97));
                }
                let mut cpu = Row::new(
                    format!("warren CPU per message, {label}"),
                    "µs",
                    Compare::Own,
                );
                match (size, confirms) {
                    (16, false) => cpu = cpu.goal(Goal::AtMost(0.6)),
                    (4096, false) => cpu = cpu.goal(Goal::AtMost(3.0)),
                    _ => {}
                }
                for _ in 0..self.repeats {
                    let direct = scenarios::publish(
                        &self.login,
                        self.broker,
                        &queues,
                        size,
                        confirms,
                        self.duration,
                    )
                    .await?;
                    let cpu_before = warren.cpu_ns();
                    let through = scenarios::publish(
                        &self.login,
                        warren.addr,
                        &queues,
                        size,
                        confirms,
                        self.duration,
                    )
                    .await?;
                    let cpu_ns = warren.cpu_ns() - cpu_before;
                    push(&mut rate, Side::Direct, direct.per_second);
                    push(&mut rate, Side::Warren, through.per_second);
                    cpu.warren
                        .push(cpu_ns as f64 / 1000.0 / through.messages.max(1) as f64);
                }
                self.rows.push(rate);
                self.rows.push(cpu);
            }
        }
        scenarios::delete_queue(&self.login, self.broker, &queues[0]).await
    }

    async fn parallel(&mut self, warren: &Warren) -> Result<()> {
        for publishers in [8, 64] {
            let queues: Vec<String> = (0..publishers)
                .map(|i| self.queue(&format!("parallel-{i}")))
                .collect();
            for queue in &queues {
                scenarios::prepare_queue(&self.login, self.broker, queue).await?;
            }
            let mut row = Row::new(
                format!("publish 16 B, {publishers} clients"),
                "msg/s",
                Compare::Ratio,
            );
            for _ in 0..self.repeats {
                for (addr, side) in [(self.broker, Side::Direct), (warren.addr, Side::Warren)] {
                    let rate =
                        scenarios::publish(&self.login, addr, &queues, 16, false, self.duration)
                            .await?
                            .per_second;
                    push(&mut row, side, rate);
                }
            }
            self.rows.push(row);
            for queue in &queues {
                scenarios::delete_queue(&self.login, self.broker, queue).await?;
            }
        }
        Ok(())
    }

    async fn consume(&mut self, warren: &Warren) -> Result<()> {
        let queue = self.queue("consume");
        let messages = if self.smoke { 500 } else { 20000 };
        let mut row = Row::new("consume 16 B, prefetch 200, acks", "msg/s", Compare::Ratio);
        for _ in 0..self.repeats {
            for (addr, side) in [(self.broker, Side::Direct), (warren.addr, Side::Warren)] {
                let rate =
                    scenarios::consume(&self.login, self.broker, addr, &queue, messages).await?;
                push(&mut row, side, rate);
            }
        }
        self.rows.push(row);
        scenarios::delete_queue(&self.login, self.broker, &queue).await
    }

    async fn latency(&mut self, warren: &Warren) -> Result<()> {
        let queue = self.queue("latency");
        scenarios::prepare_queue(&self.login, self.broker, &queue).await?;
        let rate = if self.smoke { 200 } else { 1000 };
        let mut rows = [
            Row::new("latency p50, publish to deliver", "µs", Compare::Added)
                .goal(Goal::AtMost(20.0)),
            Row::new("latency p99", "µs", Compare::Added).goal(Goal::AtMost(200.0)),
            Row::new("latency p99.9", "µs", Compare::Added),
        ];
        for _ in 0..self.repeats {
            for (addr, side) in [(self.broker, Side::Direct), (warren.addr, Side::Warren)] {
                let mut latencies =
                    scenarios::latency(&self.login, addr, &queue, rate, self.duration).await?;
                latencies.sort_unstable();
                for (row, quantile) in rows.iter_mut().zip([0.5, 0.99, 0.999]) {
                    let index = ((latencies.len() as f64 * quantile) as usize)
                        .min(latencies.len().saturating_sub(1));
                    let micros = latencies.get(index).copied().unwrap_or(0) as f64 / 1000.0;
                    push(row, side, micros);
                }
            }
        }
        self.rows.extend(rows);
        scenarios::delete_queue(&self.login, self.broker, &queue).await
    }

    async fn churn(&mut self, warren: &Warren) -> Result<()> {
        let queue = self.queue("churn");
        scenarios::prepare_queue(&self.login, self.broker, &queue).await?;
        for parallel in [1, 32] {
            let name = match parallel {
                1 => "churn, sequential".to_string(),
                n => format!("churn, {n} in parallel"),
            };
            let mut reuse = Row::new(
                format!("{name}: cycles that reused an upstream channel"),
                "%",
                Compare::Own,
            );
            let mut row = Row::new(name, "cycles/s", Compare::Ratio).goal(Goal::AtLeast(6.0));
            for _ in 0..self.repeats {
                let direct =
                    scenarios::churn(&self.login, self.broker, &queue, parallel, self.duration)
                        .await?;
                push(&mut row, Side::Direct, direct);
                let (hits_before, misses_before) = reuse_counts(warren).await?;
                let through_warren =
                    scenarios::churn(&self.login, warren.addr, &queue, parallel, self.duration)
                        .await?;
                push(&mut row, Side::Warren, through_warren);
                let (hits, misses) = reuse_counts(warren).await?;
                let (hits, misses) = (hits - hits_before, misses - misses_before);
                reuse
                    .warren
                    .push(100.0 * hits as f64 / (hits + misses).max(1) as f64);
            }
            self.rows.push(row);
            self.rows.push(reuse);
        }
        scenarios::delete_queue(&self.login, self.broker, &queue).await
    }

    /// RSS per idle client (connection and one channel), the upstream
    /// connections they need, and what RSS keeps after they leave; each
    /// repeat with a fresh warren.
    async fn memory(&mut self, clients: usize) -> Result<()> {
        let mut per_client = Row::new(
            format!("warren RSS per idle client, {clients} clients"),
            "KiB",
            Compare::Own,
        )
        .goal(Goal::AtMost(16.0));
        let mut upstreams = Row::new(
            format!("upstream connections for {clients} idle clients"),
            "conns",
            Compare::Own,
        );
        let mut kept = Row::new(
            format!("warren RSS kept per departed client, {clients} clients"),
            "KiB",
            Compare::Own,
        )
        .goal(Goal::AtMost(2.0));
        let wait = Duration::from_secs(60);
        for _ in 0..self.repeats {
            let warren = Warren::start(&self.warren_binary, self.broker).await?;
            // The first client opens the upstream connection and warms the
            // runtime: the baseline is taken after it left.
            scenarios::close_all(scenarios::open_idle(&self.login, warren.addr, 1).await?).await?;
            warren.wait_for_clients(0, wait).await?;
            let baseline = warren.rss_bytes();
            let idle = scenarios::open_idle(&self.login, warren.addr, clients).await?;
            warren.wait_for_clients(clients as u64, wait).await?;
            let loaded = warren.rss_bytes();
            let overview = warren.overview().await?;
            scenarios::close_all(idle).await?;
            warren.wait_for_clients(0, wait).await?;
            // warren hands freed memory back on its housekeeping tick (every
            // 5 s): give it two, then take what RSS is.
            let after = warren.rss_settled(baseline, Duration::from_secs(12)).await;
            let kib = |bytes: u64| bytes as f64 / 1024.0 / clients as f64;
            per_client.warren.push(kib(loaded.saturating_sub(baseline)));
            upstreams
                .warren
                .push(overview["upstreams"].as_f64().unwrap_or(f64::NAN));
            kept.warren.push(kib(after.saturating_sub(baseline)));
        }
        self.rows.extend([per_client, upstreams, kept]);
        Ok(())
    }
}

impl Bench {
    /// `clients` idle clients held while 32 loops connect, publish and
    /// close for `duration`, against a fresh warren: its RSS and open file
    /// descriptors before, and after everyone left, must be flat.
    async fn soak(&mut self, clients: usize, duration: Duration) -> Result<()> {
        let queue = self.queue("soak");
        scenarios::prepare_queue(&self.login, self.broker, &queue).await?;
        let warren = Warren::start(&self.warren_binary, self.broker).await?;
        let wait = Duration::from_secs(60);
        scenarios::close_all(scenarios::open_idle(&self.login, warren.addr, 1).await?).await?;
        warren.wait_for_clients(0, wait).await?;
        let (rss_before, fds_before) = (warren.rss_bytes(), warren.open_fds());
        let idle = scenarios::open_idle(&self.login, warren.addr, clients).await?;
        let rate = scenarios::churn(&self.login, warren.addr, &queue, 32, duration).await?;
        let upstreams = warren.overview().await?["upstreams"]
            .as_f64()
            .unwrap_or(f64::NAN);
        scenarios::close_all(idle).await?;
        warren.wait_for_clients(0, wait).await?;
        let rss_after = warren
            .rss_settled(rss_before, Duration::from_secs(12))
            .await;
        let fds_after = warren.open_fds();
        let label = format!(
            "soak, {clients} idle + 32 churning, {}s",
            duration.as_secs()
        );
        let mut cycles = Row::new(format!("{label}: cycles"), "cycles", Compare::Own);
        cycles.warren.push(rate * duration.as_secs_f64());
        let mut connections = Row::new(
            format!("{label}: upstream connections at the end"),
            "conns",
            Compare::Own,
        );
        connections.warren.push(upstreams);
        let mut rss = Row::new(format!("{label}: RSS after - before"), "KiB", Compare::Own)
            .goal(Goal::AtMost(4096.0));
        rss.warren
            .push((rss_after as f64 - rss_before as f64) / 1024.0);
        let mut fds = Row::new(
            format!("{label}: open fds after - before"),
            "fds",
            Compare::Own,
        )
        .goal(Goal::AtMost(0.0));
        fds.warren.push(fds_after as f64 - fds_before as f64);
        self.rows.extend([cycles, connections, rss, fds]);
        Ok(())
    }
}

/// Which way a run went.
#[derive(Clone, Copy)]
enum Side {
    Direct,
    Warren,
}

/// Adds a run's value to the `side` series of `row`.
fn push(row: &mut Row, side: Side, value: f64) {
    match side {
        Side::Direct => {
            if let Some(direct) = row.direct.as_mut() {
                direct.push(value);
            }
        }
        Side::Warren => row.warren.push(value),
    }
}

fn size_name(size: usize) -> String {
    match size {
        n if n >= 1024 => format!("{} KiB", n / 1024),
        n => format!("{n} B"),
    }
}

fn parse_broker(raw: &str) -> Result<(SocketAddr, Login)> {
    let url = url::Url::parse(raw).map_err(|e| format!("--broker {raw}: {e}"))?;
    if url.scheme() != "amqp" {
        return Err(format!("--broker {raw}: only amqp:// is supported"));
    }
    let host = url.host_str().ok_or("--broker: no host")?;
    let addr = (host, url.port().unwrap_or(5672))
        .to_socket_addrs()
        .map_err(|e| format!("--broker {host}: {e}"))?
        .next()
        .ok_or("--broker: no address")?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(s.as_bytes())
            .map(|(k, v)| format!("{k}{v}"))
            .collect::<String>()
    };
    let user = match url.username() {
        "" => "guest".to_string(),
        user => decode(user),
    };
    let password = decode(url.password().unwrap_or("guest"));
    let vhost = match url.path().trim_start_matches('/') {
        "" => "/".to_string(),
        path => decode(path),
    };
    Ok((
        addr,
        Login {
            user: user.into(),
            password: password.into(),
            vhost: vhost.into(),
        },
    ))
}

/// 10k idle clients need 10k descriptors here and in the warren started.
fn raise_open_files_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warren-bench: cannot raise the open files limit: {e}");
    }
}

/// The machine the numbers come from.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("machine: {cores} cores, {model}, Linux {}", kernel.trim())
}

/// warren's channel reuse counters so far: (hits, misses).
async fn reuse_counts(warren: &Warren) -> Result<(u64, u64)> {
    let overview = warren.overview().await?;
    let count = |key: &str| overview["reuse"][key].as_u64().unwrap_or(0);
    Ok((count("hits"), count("misses")))
}
