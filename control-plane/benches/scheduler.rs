//! `cargo xtask bench scheduler`: scheduling throughput on hollow nodes, and where its time goes.
//!
//! For each node count (1,000 and 5,000): pods/s to schedule 10,000 pods, plain and with
//! required pod anti-affinity; on 1,000 nodes, seconds for a 1,000-replica Deployment to
//! become fully available; the control plane's RSS after each run. Around each figure: pod
//! creates/s at the API (the clients alone), bind latency p50/p99 (create sent → first watch
//! event with `spec.nodeName`), the scheduler's own milliseconds and attempts per pod (its
//! `scheduler_scheduling_attempt_duration_seconds` histogram, scraped from `/metrics` before
//! and after), and the CPU seconds of the control plane, of the hollow-node process and of
//! this bench's clients (`/proc/<pid>/stat`), with the hollow nodes' share of the first two:
//! on two cores the hollow nodes compete with the control plane they load.
//!
//! **How runs repeat.** Each figure is measured `--runs` times (3) and printed as
//! `min / median / max`; `target/bench/scheduler.json` keeps every run's value and the three.
//! Each node count gets one fresh control plane and hollow-node process (registering 5,000
//! nodes takes minutes, so it happens once, measured once); a run is a fresh namespace per
//! workload (`plain-r1`, `anti-r1`, `deploy-r1` …), deleted and awaited gone (unmeasured)
//! before the next, so every run starts on empty nodes rather than on the pods of the runs
//! before it. Anti-affinity group labels carry the namespace besides. The workloads of a run
//! interleave (plain, anti-affinity, Deployment, then the next run) so that drift over the
//! cluster's life spreads over all figures alike.
//!
//! `--runs N`, `--nodes 1000,5000` and `--pods 10000` (or `APIARY_BENCH_RUNS`,
//! `APIARY_BENCH_NODES`, `APIARY_BENCH_PODS`) size it: `cargo xtask bench scheduler -- --runs 5`.
//! The hollow-node binary comes from `$APIARY_NODE_AGENT` (xtask builds it).

#[path = "scheduler/cluster.rs"]
mod cluster;
mod common;
#[path = "scheduler/workload.rs"]
mod workload;

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Instant};

use clap::Parser as _;
use common::{start_server_with, stats::Summary};
use serde_json::{Value, json};

/// Anti-affinity groups: pods of one group repel each other per node, so 10 groups fit 10,000
/// pods on 1,000 nodes (more groups when pods outnumber 10 × nodes).
const GROUPS: usize = 10;

#[derive(Debug, clap::Parser)]
#[command(about = "Scheduling throughput on hollow nodes; see the module doc")]
struct Args {
    /// How many times each figure is measured.
    #[arg(long, env = "APIARY_BENCH_RUNS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Node counts, each a cluster of its own.
    #[arg(
        long,
        env = "APIARY_BENCH_NODES",
        value_delimiter = ',',
        default_value = "1000,5000"
    )]
    nodes: Vec<usize>,
    /// Pods per scheduling run.
    #[arg(long, env = "APIARY_BENCH_PODS", default_value_t = 10_000)]
    pods: usize,
    /// Only the plain workload (no anti-affinity run, no rollout): for sizes where those take
    /// too long, such as 150,000 pods.
    #[arg(long, env = "APIARY_BENCH_PLAIN_ONLY")]
    plain_only: bool,
    /// What `cargo bench` passes to every bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The table's rows: label, JSON key, decimals.
const ROWS: &[(&str, &str, usize)] = &[
    ("nodes registered+Ready (s, once)", "register_s", 1),
    ("plain: pods/s, create → all bound", "plain_pods_per_s", 1),
    ("plain: creates/s at the API", "plain_creates_per_s", 1),
    ("plain: bind latency p50 (ms)", "plain_bind_p50_ms", 0),
    ("plain: bind latency p99 (ms)", "plain_bind_p99_ms", 0),
    (
        "plain: scheduling attempt ms per pod",
        "plain_sched_ms_per_pod",
        3,
    ),
    (
        "plain: scheduling attempts per pod",
        "plain_attempts_per_pod",
        2,
    ),
    ("plain: control-plane CPU (s)", "plain_cp_cpu_s", 1),
    ("plain: hollow-node CPU (s)", "plain_hollow_cpu_s", 1),
    (
        "plain: hollow share of CP+hollow CPU (%)",
        "plain_hollow_cpu_share_pct",
        0,
    ),
    ("plain: bench client CPU (s)", "plain_bench_cpu_s", 1),
    ("plain: cores busy (all three)", "plain_cores_busy", 2),
    (
        "one node's pods listed, p50 (ms)",
        "plain_node_list_p50_ms",
        1,
    ),
    (
        "one node's pods listed, p99 (ms)",
        "plain_node_list_p99_ms",
        1,
    ),
    (
        "… the same by a scan of all pods, p99 (ms)",
        "plain_node_list_scan_p99_ms",
        1,
    ),
    (
        "plain: control-plane RSS, all pods bound (MiB)",
        "plain_rss_bound_mib",
        0,
    ),
    (
        "all hollow nodes restarted → all relisted (s)",
        "plain_reconnect_s",
        2,
    ),
    (
        "all pods listed in pages of 500 (s)",
        "plain_all_pods_chunked_s",
        2,
    ),
    (
        "anti-affinity: pods/s, create → all bound",
        "anti_affinity_pods_per_s",
        1,
    ),
    (
        "anti-affinity: creates/s at the API",
        "anti_affinity_creates_per_s",
        1,
    ),
    (
        "anti-affinity: bind latency p50 (ms)",
        "anti_affinity_bind_p50_ms",
        0,
    ),
    (
        "anti-affinity: bind latency p99 (ms)",
        "anti_affinity_bind_p99_ms",
        0,
    ),
    (
        "anti-affinity: scheduler ms per pod",
        "anti_affinity_sched_ms_per_pod",
        3,
    ),
    (
        "anti-affinity: scheduling attempts per pod",
        "anti_affinity_attempts_per_pod",
        2,
    ),
    (
        "anti-affinity: control-plane CPU (s)",
        "anti_affinity_cp_cpu_s",
        1,
    ),
    (
        "anti-affinity: hollow-node CPU (s)",
        "anti_affinity_hollow_cpu_s",
        1,
    ),
    (
        "anti-affinity: hollow share of CP+hollow CPU (%)",
        "anti_affinity_hollow_cpu_share_pct",
        0,
    ),
    (
        "anti-affinity: bench client CPU (s)",
        "anti_affinity_bench_cpu_s",
        1,
    ),
    (
        "anti-affinity: cores busy (all three)",
        "anti_affinity_cores_busy",
        2,
    ),
    (
        "1000-replica Deployment available (s)",
        "deployment_1000_available_s",
        1,
    ),
    (
        "Deployment: control-plane CPU (s)",
        "deployment_1000_cp_cpu_s",
        1,
    ),
    (
        "Deployment: hollow-node CPU (s)",
        "deployment_1000_hollow_cpu_s",
        1,
    ),
    (
        "Deployment: hollow share of CP+hollow CPU (%)",
        "deployment_1000_hollow_cpu_share_pct",
        0,
    ),
    ("control-plane RSS after the run (MiB)", "rss_end_mib", 1),
    (
        "plain: namespace deleted after (s, unmeasured)",
        "plain_namespace_deleted_s",
        1,
    ),
    (
        "anti-affinity: namespace deleted after (s, unmeasured)",
        "anti_affinity_namespace_deleted_s",
        1,
    ),
];

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut results = serde_json::Map::new();
    let mut summaries = BTreeMap::new();
    for &nodes in &args.nodes {
        // A generous grace: thousands of heartbeats on two cores must not mark nodes lost.
        let server = Arc::new(start_server_with(
            None,
            &[
                "--node-monitor-grace-seconds",
                "600",
                "--cluster-cidr",
                "10.128.0.0/9",
            ],
        ));
        let hollow = cluster::start_hollow(&server, nodes);
        let groups = GROUPS.max(args.pods.div_ceil(nodes));
        let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        runtime.block_on(async {
            let registering = Instant::now();
            cluster::wait_nodes(&server, nodes).await;
            runs.insert(
                "register_s".into(),
                vec![registering.elapsed().as_secs_f64()],
            );
            for run in 1..=args.runs {
                let mut figures = Vec::new();
                let plain = workload::schedule_pods(
                    &server,
                    &hollow,
                    &format!("plain-r{run}"),
                    args.pods,
                    None,
                )
                .await;
                figures.extend(plain.into_iter().map(|(k, v)| (format!("plain_{k}"), v)));
                if args.plain_only {
                    figures.push(("rss_end_mib".into(), server.rss_mib()));
                    println!("{nodes} nodes, run {run}/{}: {figures:?}", args.runs);
                    for (key, value) in figures {
                        runs.entry(key).or_default().push(value);
                    }
                    continue;
                }
                let anti = workload::schedule_pods(
                    &server,
                    &hollow,
                    &format!("anti-r{run}"),
                    args.pods,
                    Some(groups),
                )
                .await;
                figures.extend(
                    anti.into_iter()
                        .map(|(k, v)| (format!("anti_affinity_{k}"), v)),
                );
                if nodes == 1_000 {
                    let rollout =
                        workload::deployment_rollout(&server, &hollow, &format!("deploy-r{run}"))
                            .await;
                    figures.extend(
                        rollout
                            .into_iter()
                            .map(|(k, v)| (format!("deployment_1000_{k}"), v)),
                    );
                }
                figures.push(("rss_end_mib".into(), server.rss_mib()));
                // Printed as soon as known: the larger sizes take long on two cores.
                let line: serde_json::Map<_, _> =
                    figures.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                println!(
                    "{nodes} nodes, run {run}/{}: {}",
                    args.runs,
                    Value::Object(line)
                );
                for (key, value) in figures {
                    runs.entry(key).or_default().push(value);
                }
            }
        });
        drop(hollow);
        let summary: BTreeMap<String, Summary> = runs
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Summary::of(v)?)))
            .collect();
        let mut result = json!({ "nodes": nodes, "pods": args.pods, "runs": args.runs });
        for (key, s) in &summary {
            result[key] = s.to_json();
        }
        results.insert(format!("{nodes}_nodes"), result);
        summaries.insert(nodes, summary);
    }
    print_table(&args, &summaries);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scheduler.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&Value::Object(results)).unwrap(),
    )
    .unwrap();
    println!("\nwrote {}", path.display());
}

/// One row per figure, one column per node count, each cell `min / median / max` over runs.
fn print_table(args: &Args, summaries: &BTreeMap<usize, BTreeMap<String, Summary>>) {
    let cells: Vec<(&str, Vec<String>)> = ROWS
        .iter()
        .map(|&(label, key, precision)| {
            let row = args
                .nodes
                .iter()
                .map(|n| {
                    summaries[n]
                        .get(key)
                        .map_or("-".into(), |s| s.cell(precision))
                })
                .collect();
            (label, row)
        })
        .collect();
    let headers: Vec<String> = args.nodes.iter().map(|n| format!("{n} NODES")).collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            cells
                .iter()
                .map(|(_, row)| row[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    let label_width = ROWS.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    println!(
        "\n{} pods per scheduling run, {} runs; cells: min / median / max",
        args.pods, args.runs
    );
    print!("{:<label_width$}", "METRIC");
    for (header, width) in headers.iter().zip(&widths) {
        print!("  {header:>width$}");
    }
    println!();
    for (label, row) in cells {
        print!("{label:<label_width$}");
        for (cell, width) in row.iter().zip(&widths) {
            print!("  {cell:>width$}");
        }
        println!();
    }
}
