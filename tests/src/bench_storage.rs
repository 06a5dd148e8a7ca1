//! `apiary-lab bench-storage`: persistent volumes on the built-in local-path driver.
//!
//! On a two-node [`ClusterLab`] (release binaries when run from a release `apiary-lab`):
//! - **Startup with claims.** One `kubectl apply` creates `claims` claims (no class: the
//!   default `local-path`, WaitForFirstConsumer) and as many pods, each using its claim; watches
//!   started beforehand timestamp, on the client side, when each claim is first seen Bound and
//!   each pod first seen Ready, from the start of the apply. The same number of pods without
//!   volumes, started the same way just before (and deleted), is the baseline: the difference is
//!   what provisioning, binding and publishing cost.
//! - **Write throughput.** busybox `dd` writes `MiB` MiB with `conv=fsync`, alternately from a
//!   pod into its local-path volume (through the bind mount) and on the host straight into the
//!   same volume directory, `rounds` times each; the medians and their ratio are reported.

use std::{
    collections::HashMap,
    io::BufReader,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    bench_pods::percentile,
    cluster::{ClusterLab, is_ready},
};

const IMAGE: &str = "localhost/busybox:latest";
/// How long claims and pods may take before the benchmark gives up.
const TIMEOUT: Duration = Duration::from_secs(180);

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct StorageFigures {
    pub claims: usize,
    /// Pods without volumes: apply start → Ready, sorted.
    pub baseline_ready: Vec<Duration>,
    /// Apply start → claim Bound, sorted.
    pub bound: Vec<Duration>,
    /// Apply start → pod (with its claim) Ready, sorted.
    pub ready: Vec<Duration>,
    pub write_mib: usize,
    /// MiB/s written through the pod's volume mount, per round.
    pub volume_mib_s: Vec<f64>,
    /// MiB/s written on the host into the same directory, per round.
    pub direct_mib_s: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

impl StorageFigures {
    pub fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
        let row = |label: &str, sorted: &[Duration]| {
            format!(
                "{label:<52} {:>8} {:>8}\n",
                ms(percentile(sorted, 0.5)),
                ms(percentile(sorted, 0.99))
            )
        };
        let mut out = format!(
            "{} claims and pods created at once on 2 nodes (ms from the apply)\n{:<52} {:>8} {:>8}\n",
            self.claims, "", "p50", "p99"
        );
        out += &row(
            "pods without volumes: Ready (baseline)",
            &self.baseline_ready,
        );
        out += &row("claims: Bound", &self.bound);
        out += &row("pods with a claim: Ready", &self.ready);
        let volume = median(&self.volume_mib_s);
        let direct = median(&self.direct_mib_s);
        out += &format!(
            "\nwrite {} MiB with fsync (MiB/s, median of {})\n{:<52} {:>8.1}\n{:<52} {:>8.1}\n{:<52} {:>8.2}\n",
            self.write_mib,
            self.volume_mib_s.len(),
            "from a pod into its local-path volume",
            volume,
            "on the host into the same directory",
            direct,
            "ratio (volume / direct)",
            if direct > 0.0 { volume / direct } else { 0.0 },
        );
        out
    }

    pub fn json(&self) -> Value {
        let ms = |sorted: &[Duration], p: f64| percentile(sorted, p).as_secs_f64() * 1000.0;
        let volume = median(&self.volume_mib_s);
        let direct = median(&self.direct_mib_s);
        json!({
            "claims": self.claims,
            "baseline_ready_p50_ms": ms(&self.baseline_ready, 0.5),
            "baseline_ready_p99_ms": ms(&self.baseline_ready, 0.99),
            "bound_p50_ms": ms(&self.bound, 0.5),
            "bound_p99_ms": ms(&self.bound, 0.99),
            "ready_p50_ms": ms(&self.ready, 0.5),
            "ready_p99_ms": ms(&self.ready, 0.99),
            "write_mib": self.write_mib,
            "volume_mib_s": self.volume_mib_s,
            "direct_mib_s": self.direct_mib_s,
            "volume_mib_s_median": volume,
            "direct_mib_s_median": direct,
            "write_ratio": if direct > 0.0 { volume / direct } else { 0.0 },
        })
    }
}

pub fn run(claims: usize, write_mib: usize, rounds: usize) -> anyhow::Result<StorageFigures> {
    if let Some(reason) = crate::privileges::missing() {
        bail!("the benchmark {reason}");
    }
    let cluster = ClusterLab::start(2)?;
    let result = measure(&cluster, claims, write_mib, rounds);
    result.map_err(|e| e.context(cluster.logs()))
}

fn measure(
    cluster: &ClusterLab,
    claims: usize,
    write_mib: usize,
    rounds: usize,
) -> anyhow::Result<StorageFigures> {
    // Baseline: the same pods without volumes.
    let manifest: String = (0..claims)
        .map(|i| pod_manifest(&format!("plain-{i}"), None))
        .collect();
    let baseline = timed(
        cluster,
        &manifest,
        "pods",
        "plain-",
        Readiness::PodReady,
        claims,
    )?;
    cluster.kubectl_ok(&["delete", "pods", "--all", "--wait=true", "--timeout=120s"])?;

    let manifest: String = (0..claims)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data-{i}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 8Mi}}}}\n{}",
                pod_manifest(&format!("claim-{i}"), Some(&format!("data-{i}")))
            )
        })
        .collect();
    // Both watches start before the apply; the claims' is read in its own thread.
    let claims_watch = Watch::start(cluster, "pvc")?;
    let (ready, bound) = {
        let ready = timed(
            cluster,
            &manifest,
            "pods",
            "claim-",
            Readiness::PodReady,
            claims,
        )?;
        let bound = claims_watch.collect("data-", Readiness::ClaimBound, claims, ready.0)?;
        (ready.1, bound)
    };
    cluster.kubectl_ok(&["delete", "pods", "--all", "--wait=true", "--timeout=120s"])?;

    let (volume_mib_s, direct_mib_s) = throughput(cluster, write_mib, rounds)?;
    Ok(StorageFigures {
        claims,
        baseline_ready: baseline.1,
        bound,
        ready,
        write_mib,
        volume_mib_s,
        direct_mib_s,
    })
}

#[derive(Clone, Copy)]
enum Readiness {
    PodReady,
    ClaimBound,
}

impl Readiness {
    fn holds(self, object: &Value) -> bool {
        match self {
            Self::PodReady => is_ready(object),
            Self::ClaimBound => object["status"]["phase"] == "Bound",
        }
    }
}

/// `kubectl get <kind> -w -o json`, its objects timestamped as they arrive.
struct Watch {
    child: std::process::Child,
    events: mpsc::Receiver<(Value, Instant)>,
}

impl Watch {
    fn start(cluster: &ClusterLab, kind: &str) -> anyhow::Result<Self> {
        let mut child = cluster
            .kubectl_command(&["get", kind, "-w", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting kubectl get {kind} -w"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let objects =
                serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
            for object in objects {
                let Ok(object) = object else { break };
                if tx.send((object, Instant::now())).is_err() {
                    break;
                }
            }
        });
        // The watch is empty until the apply, so its start only has to precede it.
        std::thread::sleep(Duration::from_secs(1));
        Ok(Self { child, events })
    }

    /// Waits until `count` objects named `prefix…` were seen in `state`; their times from
    /// `started`, sorted.
    fn collect(
        &self,
        prefix: &str,
        state: Readiness,
        count: usize,
        started: Instant,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut seen: HashMap<String, Duration> = HashMap::new();
        while seen.len() < count {
            let left = TIMEOUT.saturating_sub(started.elapsed());
            let Ok((object, at)) = self.events.recv_timeout(left) else {
                bail!(
                    "{} of {count} {prefix}… ready after {}s",
                    seen.len(),
                    TIMEOUT.as_secs()
                );
            };
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            if name.starts_with(prefix) && state.holds(&object) {
                seen.entry(name.to_owned())
                    .or_insert_with(|| at.duration_since(started));
            }
        }
        let mut times: Vec<Duration> = seen.into_values().collect();
        times.sort();
        Ok(times)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Applies `manifest` and waits for `count` objects named `prefix…` of `kind` to be ready;
/// returns when the apply started and each one's time from then, sorted.
fn timed(
    cluster: &ClusterLab,
    manifest: &str,
    kind: &str,
    prefix: &str,
    state: Readiness,
    count: usize,
) -> anyhow::Result<(Instant, Vec<Duration>)> {
    let watch = Watch::start(cluster, kind)?;
    let started = Instant::now();
    cluster.apply(manifest)?;
    let times = watch.collect(prefix, state, count, started)?;
    Ok((started, times))
}

fn pod_manifest(name: &str, claim: Option<&str>) -> String {
    let volume = claim
        .map(|claim| {
            format!(
                "    volumeMounts: [{{name: data, mountPath: /data}}]\n  volumes:\n  - name: data\n    persistentVolumeClaim: {{claimName: {claim}}}\n"
            )
        })
        .unwrap_or_default();
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, \"3600\"]\n{volume}"
    )
}

/// `dd` through a pod's volume mount and on the host into the same directory, alternately.
fn throughput(
    cluster: &ClusterLab,
    write_mib: usize,
    rounds: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let size = format!("{}Mi", write_mib * 2 + 16);
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: throughput}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n{}",
        pod_manifest("writer", Some("throughput"))
    ))?;
    cluster.wait_ready("default", "writer", TIMEOUT)?;
    let (_, dir) = volume_dir(cluster, "throughput")?;
    anyhow::ensure!(
        dir.is_dir(),
        "the volume's directory {} is not there",
        dir.display()
    );
    let mut volume = Vec::new();
    let mut direct = Vec::new();
    // busybox's dd prints no time: its `time` applet does (to 10 ms).
    let dd =
        |of: &str| format!("time dd if=/dev/zero of={of} bs=1M count={write_mib} conv=fsync 2>&1");
    for _ in 0..rounds {
        let out = cluster.kubectl_ok(&[
            "exec",
            "writer",
            "--",
            "sh",
            "-c",
            &format!("{} && rm /data/through-pod", dd("/data/through-pod")),
        ])?;
        volume.push(rate(&out, write_mib)?);
        let target = dir.join("direct");
        let out = Command::new("busybox")
            .args(["sh", "-c", &dd(&target.display().to_string())])
            .output()
            .context("running busybox dd on the host")?;
        let _ = std::fs::remove_file(&target);
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output += &String::from_utf8_lossy(&out.stderr);
        direct.push(rate(&output, write_mib)?);
    }
    Ok((volume, direct))
}

/// MiB/s from busybox `time`'s `real\t1m 2.34s` line.
fn rate(output: &str, mib: usize) -> anyhow::Result<f64> {
    let seconds = output
        .lines()
        .find_map(|line| {
            let real = line.strip_prefix("real")?.trim();
            let (minutes, seconds) = real.split_once('m')?;
            let seconds: f64 = seconds.trim().strip_suffix('s')?.parse().ok()?;
            Some(minutes.trim().parse::<f64>().ok()? * 60.0 + seconds)
        })
        .with_context(|| format!("no time in the output: {output:?}"))?;
    // `time` rounds to 10 ms.
    Ok(mib as f64 / seconds.max(0.01))
}

/// The PersistentVolume bound to `claim` and its local-path directory on the node it is on.
pub fn volume_dir(cluster: &ClusterLab, claim: &str) -> anyhow::Result<(String, PathBuf)> {
    let pvc = cluster.kubectl_json(&["get", "pvc", claim, "-o", "json"])?;
    let pv_name = pvc["spec"]["volumeName"]
        .as_str()
        .context("the claim is not bound")?
        .to_owned();
    let pv = cluster.kubectl_json(&["get", "pv", &pv_name, "-o", "json"])?;
    let node = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"]
        [0]["values"][0]
        .as_str()
        .context("the volume names no node")?;
    let at = cluster
        .nodes()
        .iter()
        .find(|n| n.name == node)
        .with_context(|| format!("no lab node {node}"))?;
    let handle = pv["spec"]["csi"]["volumeHandle"]
        .as_str()
        .context("not a CSI volume")?;
    let dir = at.data_dir.join("volumes").join(handle);
    Ok((pv_name, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_rates_are_read_from_busybox_time() {
        let out = "128+0 records in\n128+0 records out\nreal\t0m 0.50s\nuser\t0m 0.00s\n";
        assert!((rate(out, 128).unwrap() - 256.0).abs() < 1e-9);
        assert!((rate("real\t1m 4.00s\n", 128).unwrap() - 2.0).abs() < 1e-9);
        assert!(rate("dd: can't open '/x': No such file", 1).is_err());
    }

    #[test]
    fn medians_are_of_sorted_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
