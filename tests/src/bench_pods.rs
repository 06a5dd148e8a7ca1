//! `apiary-lab bench-pods`, the cluster half: pod startup latency and the node agent's memory.
//!
//! A two-node [`ClusterLab`] (release binaries when run from a release `apiary-lab`). After the
//! agents idled, their resident sets are read; then one `kubectl apply` creates `pods` busybox
//! pods bound to node 0, and a `kubectl get pods -w -o json` started beforehand timestamps, on
//! the client side, the moment each pod is first seen Ready (API timestamps have one-second
//! precision). Latency is measured from the moment the apply started, so it includes kubectl's
//! own round trips for the pods created after the first.

use std::{
    collections::HashMap,
    io::BufReader,
    path::Path,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cluster::{ClusterLab, is_ready};

const IMAGE: &str = "localhost/busybox:latest";
/// A directory to copy the agents' logs to before the lab goes.
pub const KEEP_LOGS_ENV: &str = "APIARY_BENCH_LOGS";
/// How long the agents idle before their memory is read.
const IDLE: Duration = Duration::from_secs(5);
/// How long the pods may take to become Ready before the benchmark gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the cluster half measured.
#[derive(Debug, Clone)]
pub struct PodFigures {
    pub pods: usize,
    /// How long `kubectl apply` of all pods took.
    pub apply: Duration,
    /// Per pod, from the start of the apply to Ready; sorted.
    pub ready: Vec<Duration>,
    /// VmRSS of the agent of a node without pods, after idling, in KiB.
    pub rss_idle_kib: u64,
    /// VmRSS of the agent running the pods, once they are all Ready, in KiB.
    pub rss_with_pods_kib: u64,
}

impl PodFigures {
    /// The nearest-rank percentile `p` (0 < p ≤ 1) of the startup latencies.
    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.ready, p)
    }
}

/// Nearest rank: the smallest value with at least `p` of the values at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn run(pods: usize) -> anyhow::Result<PodFigures> {
    if let Some(reason) = crate::privileges::missing() {
        bail!("the benchmark {reason}");
    }
    let cluster = ClusterLab::start(2)?;
    std::thread::sleep(IDLE);
    // Node 1 never gets a pod: its agent's memory is the idle figure.
    let rss_idle_kib = rss_kib(
        cluster
            .agent_pid(1)
            .context("node 1's agent is not running")?,
    )?;

    let mut watch = cluster
        .kubectl_command(&["get", "pods", "-w", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kubectl get pods -w")?;
    let stdout = watch.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel::<(String, bool, Instant)>();
    let reader = std::thread::spawn(move || {
        let events =
            serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
        for event in events {
            let Ok(pod) = event else { break };
            let at = Instant::now();
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if tx.send((name, is_ready(&pod), at)).is_err() {
                break;
            }
        }
    });
    // The watch is empty until the apply, so its start only has to precede it.
    std::thread::sleep(Duration::from_secs(1));

    let node = &cluster.nodes()[0].name;
    let manifest: String = (0..pods)
        .map(|i| pod_manifest(&format!("bench-{i}"), node))
        .collect();
    let started = Instant::now();
    let result = cluster
        .apply(&manifest)
        .map(|()| started.elapsed())
        .and_then(|apply| {
            let ready = collect_ready(&rx, pods, started).map_err(|e| e.context(cluster.logs()))?;
            Ok((apply, ready))
        });
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    // The agents' logs go with the lab; keep them where asked, to see where the time went.
    if let Some(dir) = std::env::var_os(KEEP_LOGS_ENV) {
        for node in cluster.nodes() {
            let to = Path::new(&dir).join(format!("agent-{}.log", node.name));
            if let Err(e) = std::fs::copy(&node.log, &to) {
                eprintln!("keeping {}: {e}", to.display());
            }
        }
    }
    let (apply, ready) = result?;
    let rss_with_pods_kib = rss_kib(
        cluster
            .agent_pid(0)
            .context("node 0's agent is not running")?,
    )?;
    Ok(PodFigures {
        pods,
        apply,
        ready,
        rss_idle_kib,
        rss_with_pods_kib,
    })
}

/// Waits until `pods` distinct pods were seen Ready; their latencies from `started`, sorted.
fn collect_ready(
    events: &mpsc::Receiver<(String, bool, Instant)>,
    pods: usize,
    started: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut ready: HashMap<String, Duration> = HashMap::new();
    while ready.len() < pods {
        let left = READY_TIMEOUT.saturating_sub(started.elapsed());
        let (name, is_ready, at) = match events.recv_timeout(left) {
            Ok(event) => event,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "{} of {pods} pods Ready after {}s",
                    ready.len(),
                    READY_TIMEOUT.as_secs()
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!(
                    "kubectl get pods -w ended with {} of {pods} pods Ready",
                    ready.len()
                )
            }
        };
        if is_ready && name.starts_with("bench-") {
            ready
                .entry(name)
                .or_insert_with(|| at.duration_since(started));
        }
    }
    let mut latencies: Vec<Duration> = ready.into_values().collect();
    latencies.sort();
    Ok(latencies)
}

fn pod_manifest(name: &str, node: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: sleep
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#
    )
}

/// VmRSS of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("/proc/{pid}/status has no VmRSS line"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<Duration> = (1..=50).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.5), Duration::from_millis(25));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(50));
        assert_eq!(percentile(&values[..1], 0.5), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tapiary\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
