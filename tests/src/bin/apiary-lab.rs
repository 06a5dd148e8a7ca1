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
//! `apiary-lab bench-policy [--rounds R] [--seconds S] [--samples N] [--json PATH]`: request
//! rate to a pod selected by 1,000 NetworkPolicies against one selected by none, and create →
//! enforced on both nodes with 250 policies present (`bench_policy`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use apiary_tests::bench_report::Report;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("bench-pods") => bench_pods(&args[1..]),
        Some("bench-services") => bench_services(&args[1..]),
        Some("bench-policy") => bench_policy(&args[1..]),
        _ => bail!(
            "usage: apiary-lab demo | apiary-lab bench-pods {BENCH_USAGE} | \
             apiary-lab bench-services {SERVICES_USAGE} | apiary-lab bench-policy {POLICY_USAGE}"
        ),
    }
}

const BENCH_USAGE: &str = "[--seconds SECONDS_PER_ROUND] [--pods N] [--json PATH]";

/// Both halves of the benchmark in one run: the pod network, then the cluster.
fn bench_pods(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 2.0;
    let mut pods = 50;
    let mut json: Option<PathBuf> = None;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag}: missing value ({BENCH_USAGE})"))
        };
        match flag.as_str() {
            "--seconds" => {
                seconds = value()?
                    .parse()
                    .context("--seconds: expected a number of seconds per round")?;
            }
            "--pods" => {
                pods = value()?
                    .parse()
                    .context("--pods: expected a number of pods")?;
            }
            "--json" => json = Some(value()?.into()),
            other => bail!("unknown argument {other:?} ({BENCH_USAGE})"),
        }
    }
    anyhow::ensure!(pods > 0, "--pods: must be at least 1");
    anyhow::ensure!(seconds > 0.0, "--seconds: must be positive");
    eprintln!("measuring pod-to-pod TCP request/response rates …");
    let net = apiary_tests::bench_net::run(seconds, 3)?;
    eprintln!("measuring the startup of {pods} pods on one node and the agents' memory …");
    let pods = apiary_tests::bench_pods::run(pods)?;
    let report = Report { net, pods };
    print!("{}", report.table());
    if let Some(path) = json {
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

const SERVICES_USAGE: &str = "[--sizes 1,1000,10000] [--rounds R] [--requests N] [--services N] \
                              [--concurrency C] [--one-more N] [--json PATH]";

/// Latency on a lab of namespaces, then programming time through a real agent.
fn bench_services(args: &[String]) -> anyhow::Result<()> {
    let mut sizes = vec![1, 1000, 10_000];
    let mut rounds = 100;
    let mut requests = 50;
    let mut services = 10_000;
    let mut concurrency = 256;
    let mut one_more = 20;
    let mut json: Option<PathBuf> = None;
    let mut args = args.iter();
    let number = |flag: &str, value: &str| -> anyhow::Result<usize> {
        value
            .parse()
            .with_context(|| format!("{flag}: expected a whole number ({SERVICES_USAGE})"))
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag}: missing value ({SERVICES_USAGE})"))?;
        match flag.as_str() {
            "--sizes" => {
                sizes = value
                    .split(',')
                    .map(|s| number(flag, s))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--rounds" => rounds = number(flag, value)?,
            "--requests" => requests = number(flag, value)?,
            "--services" => services = number(flag, value)?,
            "--concurrency" => concurrency = number(flag, value)?,
            "--one-more" => one_more = number(flag, value)?,
            "--json" => json = Some(value.into()),
            other => bail!("unknown argument {other:?} ({SERVICES_USAGE})"),
        }
    }
    anyhow::ensure!(
        !sizes.is_empty() && sizes.iter().all(|&s| (1..=60_000).contains(&s)),
        "--sizes: between 1 and 60000 services each"
    );
    sizes.sort_unstable();
    anyhow::ensure!(
        rounds > 0 && requests > 0,
        "--rounds, --requests: at least 1"
    );
    anyhow::ensure!(
        services > 0 && concurrency > 0,
        "--services, --concurrency: at least 1"
    );
    eprintln!("measuring request latency: direct, ClusterIP, iptables at {sizes:?} services …");
    let latency = apiary_tests::bench_services::latency::run(&sizes, rounds, requests)?;
    eprintln!("measuring how fast the agent programs {services} Services …");
    let programming =
        apiary_tests::bench_services::programming::run(services, concurrency, one_more)?;
    let report = apiary_tests::bench_services::report::Report {
        latency,
        programming,
    };
    print!("{}", report.table());
    if let Some(path) = json {
        write_json(&path, &report.json())?;
    }
    Ok(())
}

const POLICY_USAGE: &str = "[--rounds R] [--seconds SECONDS_PER_ROUND] [--samples N] [--json PATH]";

/// NetworkPolicy's cost per connection and its convergence, on one two-node cluster.
fn bench_policy(args: &[String]) -> anyhow::Result<()> {
    let mut rounds = 20;
    let mut seconds = 0.5;
    let mut samples = 100;
    let mut json: Option<PathBuf> = None;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag}: missing value ({POLICY_USAGE})"))?;
        let whole = || -> anyhow::Result<usize> {
            value
                .parse()
                .with_context(|| format!("{flag}: expected a whole number ({POLICY_USAGE})"))
        };
        match flag.as_str() {
            "--rounds" => rounds = whole()?,
            "--samples" => samples = whole()?,
            "--seconds" => {
                seconds = value
                    .parse()
                    .context("--seconds: expected a number of seconds per round")?;
            }
            "--json" => json = Some(value.into()),
            other => bail!("unknown argument {other:?} ({POLICY_USAGE})"),
        }
    }
    anyhow::ensure!(rounds > 0 && samples > 0, "--rounds, --samples: at least 1");
    anyhow::ensure!(
        samples <= 10_000,
        "--samples: at most 10000 (each takes a port)"
    );
    anyhow::ensure!(seconds > 0.0, "--seconds: must be positive");
    eprintln!("measuring NetworkPolicy: convergence, then request rates …");
    let figures = apiary_tests::bench_policy::run(rounds, seconds, samples)?;
    print!("{}", figures.table());
    if let Some(path) = json {
        write_json(&path, &figures.json())?;
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    apiary_tests::demo::run()
}
