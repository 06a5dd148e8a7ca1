//! `apiary-lab demo`: the README's quick start (`apiary up`, the demo app, `apiary down`) inside a
//! lab namespace standing in for the machine (see `apiary_tests::demo`).
//!
//! `apiary-lab bench-pods [--seconds S] [--pods N] [--json PATH]`: pod-to-pod TCP
//! request/response rates (`bench_net`), then startup latency of N pods on one node and the
//! agents' memory (`bench_pods`); one table, and the figures as JSON (`bench_report`).
//!
//! `apiary-lab bench-services [--sizes 1,1000,10000] [--rounds R] [--requests N] [--services N]
//! [--concurrency C] [--one-more N] [--json PATH]`: request latency direct, through a ClusterIP
//! and through a kube-proxy-shaped iptables chain at each size, then the real agent programming
//! N Services and one more at a time (`bench_services`).
//!
//! `apiary-lab faults [--quick] [--json PATH]`: the HA fault suite (`faults`).
//!
//! `apiary-lab bench-policy [--rounds R] [--seconds S] [--samples N] [--json PATH]`: request
//! rate to a pod selected by 1,000 NetworkPolicies against one selected by none, and create →
//! enforced on both nodes with 250 policies present (`bench_policy`).
//!
//! `apiary-lab bench-storage [--claims N] [--write-mib M] [--rounds R] [--json PATH]`: N claims
//! and their pods created at once (claim Bound and pod Ready p50/p99, against N pods without
//! volumes), then write throughput through a local-path volume against the same directory
//! written on the host (`bench_storage`).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use apiary_tests::bench_report::Report;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "apiary-lab",
    about = "The README's demo and the benchmarks, in a lab of network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// `apiary up`, the demo app and `apiary down` in a lab namespace standing in for the machine.
    Demo,
    /// Pod-to-pod TCP request/response rates, then the startup of N pods on one node and the
    /// agents' memory.
    BenchPods(BenchPods),
    /// Request latency direct, through a ClusterIP and through iptables at each size, then the
    /// real agent programming N Services.
    BenchServices(BenchServices),
    /// Request rate to a pod selected by 1,000 NetworkPolicies against one selected by none, and
    /// create → enforced on both nodes.
    BenchPolicy(BenchPolicy),
    /// Claims created at once → Bound → pod Ready against pods without volumes, and write
    /// throughput into a local-path volume against the same directory written directly.
    BenchStorage(BenchStorage),
    /// An HA control plane (3 etcd members, 3 control planes) and a two-node cluster on it
    /// losing parts under a write load and request loops; then the embedded store's disk
    /// filling up. Prints a table, fails when a promise is broken.
    Faults(Faults),
}

#[derive(Debug, clap::Args)]
struct Faults {
    /// CI's bounded run: each fault held 3 s instead of 10.
    #[arg(long)]
    quick: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BenchPods {
    /// Seconds per measuring round.
    #[arg(long, default_value_t = 2.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Pods started on one node.
    #[arg(long, default_value_t = 50, value_parser = at_least_one)]
    pods: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BenchStorage {
    /// Claims (each with its pod) created at once.
    #[arg(long, default_value_t = 50, value_parser = at_least_one)]
    claims: usize,
    /// MiB written per round (busybox's `time` counts in 10 ms: a fast disk needs a big write).
    #[arg(long, default_value_t = 1024, value_parser = at_least_one)]
    write_mib: usize,
    /// Write rounds, each through the volume and directly.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    rounds: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BenchServices {
    /// Numbers of Services to measure latency at (1 to 60000 each).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,1000,10000",
        value_parser = |v: &str| whole_number(v, 1..=60_000)
    )]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    rounds: usize,
    /// Requests per round.
    #[arg(long, default_value_t = 50, value_parser = at_least_one)]
    requests: usize,
    /// Services the agent programs.
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one)]
    services: usize,
    /// Services created at once.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    concurrency: usize,
    /// Services added one at a time after the others, each timed.
    #[arg(long, default_value_t = 20)]
    one_more: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BenchPolicy {
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    rounds: usize,
    /// Seconds per measuring round.
    #[arg(long, default_value_t = 0.5, value_parser = positive_seconds)]
    seconds: f64,
    /// Convergence samples (each takes a port).
    #[arg(long, default_value_t = 100, value_parser = |v: &str| whole_number(v, 1..=10_000))]
    samples: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn positive_seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(s),
        Ok(_) => Err("must be positive".to_owned()),
        Err(_) => Err(format!("{value:?} is not a number of seconds")),
    }
}

fn at_least_one(value: &str) -> Result<usize, String> {
    whole_number(value, 1..=usize::MAX)
}

fn whole_number(value: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        Ok(_) if *range.end() == usize::MAX => Err(format!("must be at least {}", range.start())),
        Ok(_) => Err(format!("must be {} to {}", range.start(), range.end())),
        Err(_) => Err(format!("{value:?} is not a whole number")),
    }
}

/// Usage errors are clap's (one line, the usage, a pointer to `--help`); a failure is one line,
/// `error:` and its causes, exit code 1, never `anyhow`'s backtrace.
fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Demo => apiary_tests::demo::run(),
        Command::BenchPods(args) => bench_pods(args),
        Command::BenchServices(args) => bench_services(args),
        Command::BenchPolicy(args) => bench_policy(args),
        Command::BenchStorage(args) => bench_storage(args),
        Command::Faults(args) => apiary_tests::faults::run(
            if args.quick {
                apiary_tests::faults::QUICK
            } else {
                apiary_tests::faults::FULL
            },
            args.json,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Both halves of the benchmark in one run: the pod network, then the cluster.
fn bench_pods(args: BenchPods) -> anyhow::Result<()> {
    eprintln!("measuring pod-to-pod TCP request/response rates …");
    let net = apiary_tests::bench_net::run(args.seconds, 3)?;
    eprintln!(
        "measuring the startup of {} pods on one node and the agents' memory …",
        args.pods
    );
    let pods = apiary_tests::bench_pods::run(args.pods)?;
    let report = Report { net, pods };
    print!("{}", report.table());
    if let Some(path) = args.json {
        write_json(&path, &report.json())?;
    }
    Ok(())
}

fn write_json(path: &std::path::Path, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Latency on a lab of namespaces, then programming time through a real agent.
fn bench_services(args: BenchServices) -> anyhow::Result<()> {
    let mut sizes = args.sizes;
    sizes.sort_unstable();
    eprintln!("measuring request latency: direct, ClusterIP, iptables at {sizes:?} services …");
    let latency = apiary_tests::bench_services::latency::run(&sizes, args.rounds, args.requests)?;
    eprintln!(
        "measuring how fast the agent programs {} Services …",
        args.services
    );
    let programming = apiary_tests::bench_services::programming::run(
        args.services,
        args.concurrency,
        args.one_more,
    )?;
    let report = apiary_tests::bench_services::report::Report {
        latency,
        programming,
    };
    print!("{}", report.table());
    if let Some(path) = args.json {
        write_json(&path, &report.json())?;
    }
    Ok(())
}

/// NetworkPolicy's cost per connection and its convergence, on one two-node cluster.
fn bench_policy(args: BenchPolicy) -> anyhow::Result<()> {
    eprintln!("measuring NetworkPolicy: convergence, then request rates …");
    let figures = apiary_tests::bench_policy::run(args.rounds, args.seconds, args.samples)?;
    print!("{}", figures.table());
    if let Some(path) = args.json {
        write_json(&path, &figures.json())?;
    }
    Ok(())
}

/// Persistent volumes on the local-path driver, on one two-node cluster.
fn bench_storage(args: BenchStorage) -> anyhow::Result<()> {
    eprintln!(
        "measuring {} claims and pods at once, then {} MiB writes …",
        args.claims, args.write_mib
    );
    let figures = apiary_tests::bench_storage::run(args.claims, args.write_mib, args.rounds)?;
    print!("{}", figures.table());
    if let Some(path) = args.json {
        write_json(&path, &figures.json())?;
    }
    Ok(())
}
