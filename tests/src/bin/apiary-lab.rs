//! `apiary-lab demo`: the README's quick start (`apiary up`, the demo app, `apiary down`) inside a
//! lab namespace standing in for the machine (see `apiary_tests::demo`).
//!
//! `apiary-lab bench-pods [--seconds S] [--pods N] [--json PATH]`: pod-to-pod TCP
//! request/response rates (`bench_net`), then startup latency of N pods on one node and the
//! agents' memory (`bench_pods`); one table, and the figures as JSON (`bench_report`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use apiary_tests::bench_report::Report;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("bench-pods") => bench_pods(&args[1..]),
        _ => bail!("usage: apiary-lab demo | apiary-lab bench-pods {BENCH_USAGE}"),
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
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    apiary_tests::demo::run()
}
