//! `apiary-lab bench-storage`: persistent volumes on the built-in local-path driver.
//!
//! On a two-node [`ClusterLab`] (release binaries when run from a release `apiary-lab`):
//! - **Startup with claims.** One `kubectl apply` creates `claims` claims (no class: the
//!   default `local-path`, WaitForFirstConsumer) and as many pods, each using its claim; watches
//!   started beforehand timestamp, on the client side, each claim's creation (its first event),
//!   the steps of the chain (node selected, volume created, claim Bound, pod bound, pod Ready),
//!   and the figures are per claim from its creation: kubectl creates the objects one after the
//!   other, so the last claim is created about as long after the apply started as the apply
//!   takes, and that wait is the client's, not the cluster's. The same number of pods without
//!   volumes, started the same way just before (and deleted), timed from each pod's creation,
//!   is the baseline: the difference is what provisioning, binding and publishing cost.
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
use apiary_api::core_v1::ANN_SELECTED_NODE;
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
    /// Pods without volumes: created → Ready, sorted.
    pub baseline_ready: Vec<Duration>,
    /// Claim created → Bound, sorted.
    pub bound: Vec<Duration>,
    /// Claim created → its pod Ready, sorted.
    pub ready: Vec<Duration>,
    /// Where the time between a claim's creation and its pod Ready goes, one step of the chain
    /// after another (each the time from the step before, per claim, sorted).
    pub stages: Vec<(&'static str, Vec<Duration>)>,
    /// How long `kubectl apply` took to create the claims and pods.
    pub apply: Duration,
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
            "{} claims and pods created by one apply on 2 nodes (ms from each object's creation; the apply took {} ms)\n{:<52} {:>8} {:>8}\n",
            self.claims,
            ms(self.apply),
            "",
            "p50",
            "p99"
        );
        out += &row(
            "pods without volumes: Ready (baseline)",
            &self.baseline_ready,
        );
        out += &row("claims: Bound", &self.bound);
        out += &row(
            "pods with a claim: Ready (from the claim's creation)",
            &self.ready,
        );
        out += "where that time goes (ms from the step before)\n";
        for (stage, times) in &self.stages {
            out += &row(&format!("  {stage}"), times);
        }
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
            "apply_ms": self.apply.as_secs_f64() * 1000.0,
            "stages": self.stages.iter().map(|(stage, times)| json!({
                "stage": stage,
                "p50_ms": ms(times, 0.5),
                "p99_ms": ms(times, 0.99),
            })).collect::<Vec<_>>(),
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
    let baseline = timed(cluster, &manifest, "plain-", claims)?;
    cluster.kubectl_ok(&["delete", "pods", "--all", "--wait=true", "--timeout=120s"])?;

    let manifest: String = (0..claims)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data-{i}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 8Mi}}}}\n{}",
                pod_manifest(&format!("claim-{i}"), Some(&format!("data-{i}")))
            )
        })
        .collect();
    // Every watch starts before the apply; claims and volumes are read in their own threads.
    let claims_watch = Watch::start(cluster, "pvc")?;
    let volumes_watch = Watch::start(cluster, "pv")?;
    let pods_watch = Watch::start(cluster, "pods")?;
    let started = Instant::now();
    cluster.apply(&manifest)?;
    let apply = started.elapsed();
    let pods = pods_watch.record(&by_name("claim-"), Readiness::PodReady, claims, started)?;
    let claim_events =
        claims_watch.record(&by_name("data-"), Readiness::ClaimBound, claims, started)?;
    let volume_events =
        volumes_watch.record(&by_claim("data-"), Readiness::VolumeBound, claims, started)?;
    // The chain, in order: the claim is created (its pod just after it), the scheduler picks a
    // node for it, that node's provisioner creates the volume, the PV controller binds the
    // two, the scheduler binds the pod, the node's agent publishes the volume and starts the pod.
    let claim = by_name("data-");
    let pod = by_name("claim-");
    let steps: [(&str, HashMap<usize, Duration>); 6] = [
        (
            "claim created",
            first_by_key(&claim_events, &claim, &|_| true),
        ),
        (
            "node selected for the claim",
            first_by_key(&claim_events, &claim, &|c| {
                !c["metadata"]["annotations"][ANN_SELECTED_NODE].is_null()
            }),
        ),
        (
            "volume created",
            first_by_key(&volume_events, &by_claim("data-"), &|_| true),
        ),
        (
            "claim Bound",
            first_by_key(&claim_events, &claim, Readiness::ClaimBound.predicate()),
        ),
        (
            "pod bound to its node",
            first_by_key(&pods, &pod, &|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            }),
        ),
        (
            "pod Ready",
            first_by_key(&pods, &pod, Readiness::PodReady.predicate()),
        ),
    ];
    let bound = since(&steps[0].1, &steps[3].1);
    let ready = since(&steps[0].1, &steps[5].1);
    let stages = stage_gaps(&steps);
    cluster.kubectl_ok(&["delete", "pods", "--all", "--wait=true", "--timeout=120s"])?;

    let (volume_mib_s, direct_mib_s) = throughput(cluster, write_mib, rounds)?;
    Ok(StorageFigures {
        claims,
        baseline_ready: baseline,
        bound,
        ready,
        stages,
        apply,
        write_mib,
        volume_mib_s,
        direct_mib_s,
    })
}

#[derive(Clone, Copy)]
enum Readiness {
    PodReady,
    ClaimBound,
    VolumeBound,
}

impl Readiness {
    fn predicate(self) -> &'static dyn Fn(&Value) -> bool {
        match self {
            Self::PodReady => &is_ready,
            Self::ClaimBound | Self::VolumeBound => &|o: &Value| o["status"]["phase"] == "Bound",
        }
    }
}

/// Which of the run's objects an object is: the number after `prefix` in its name.
type Key = dyn Fn(&Value) -> Option<usize>;

fn numbered(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.parse().ok()
}

fn by_name(prefix: &'static str) -> impl Fn(&Value) -> Option<usize> {
    move |o: &Value| numbered(o["metadata"]["name"].as_str()?, prefix)
}

/// A volume is known by the claim it names.
fn by_claim(prefix: &'static str) -> impl Fn(&Value) -> Option<usize> {
    move |o: &Value| numbered(o["spec"]["claimRef"]["name"].as_str()?, prefix)
}

/// When each object first satisfied `holds`.
fn first_by_key(
    events: &[(Value, Duration)],
    key: &Key,
    holds: &dyn Fn(&Value) -> bool,
) -> HashMap<usize, Duration> {
    let mut first = HashMap::new();
    for (object, at) in events {
        if let Some(k) = key(object)
            && holds(object)
        {
            first.entry(k).or_insert(*at);
        }
    }
    first
}

/// `to` − `from` per object that has both, sorted.
fn since(from: &HashMap<usize, Duration>, to: &HashMap<usize, Duration>) -> Vec<Duration> {
    let mut times: Vec<Duration> = from
        .iter()
        .filter_map(|(key, start)| Some(to.get(key)?.saturating_sub(*start)))
        .collect();
    times.sort();
    times
}

/// Each step's time from the step before, for the objects that reached every step, sorted
/// (the first step is where the clock starts).
fn stage_gaps(
    steps: &[(&'static str, HashMap<usize, Duration>)],
) -> Vec<(&'static str, Vec<Duration>)> {
    let mut gaps: Vec<(&'static str, Vec<Duration>)> = steps
        .iter()
        .skip(1)
        .map(|(name, _)| (*name, Vec::new()))
        .collect();
    let Some((_, first)) = steps.first() else {
        return gaps;
    };
    for key in first.keys() {
        let Some(times) = steps
            .iter()
            .map(|(_, at)| at.get(key).copied())
            .collect::<Option<Vec<Duration>>>()
        else {
            continue;
        };
        for (gap, pair) in gaps.iter_mut().zip(times.windows(2)) {
            gap.1.push(pair[1].saturating_sub(pair[0]));
        }
    }
    for (_, times) in &mut gaps {
        times.sort();
    }
    gaps
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

    /// Every object delivered until `count` objects (told apart by `key`) were seen in
    /// `state`, with its arrival time from `started`.
    fn record(
        &self,
        key: &Key,
        state: Readiness,
        count: usize,
        started: Instant,
    ) -> anyhow::Result<Vec<(Value, Duration)>> {
        let holds = state.predicate();
        let mut done = std::collections::HashSet::new();
        let mut events = Vec::new();
        while done.len() < count {
            let left = TIMEOUT.saturating_sub(started.elapsed());
            let Ok((object, at)) = self.events.recv_timeout(left) else {
                bail!(
                    "{} of {count} ready after {}s",
                    done.len(),
                    TIMEOUT.as_secs()
                );
            };
            if let Some(k) = key(&object)
                && holds(&object)
            {
                done.insert(k);
            }
            events.push((object, at.saturating_duration_since(started)));
        }
        Ok(events)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Applies `manifest` and waits for `count` pods named `prefix…` to be Ready; each one's time
/// from its creation (its first event), sorted.
fn timed(
    cluster: &ClusterLab,
    manifest: &str,
    prefix: &'static str,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let watch = Watch::start(cluster, "pods")?;
    let started = Instant::now();
    cluster.apply(manifest)?;
    let pod = by_name(prefix);
    let events = watch.record(&pod, Readiness::PodReady, count, started)?;
    Ok(since(
        &first_by_key(&events, &pod, &|_| true),
        &first_by_key(&events, &pod, Readiness::PodReady.predicate()),
    ))
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
    fn each_step_is_timed_from_the_one_before_for_objects_that_reached_all() {
        let ms = Duration::from_millis;
        let step = |times: &[(usize, u64)]| -> HashMap<usize, Duration> {
            times.iter().map(|&(k, t)| (k, ms(t))).collect()
        };
        let steps = [
            ("created", step(&[(0, 100), (1, 200), (2, 300)])),
            ("bound", step(&[(0, 150), (1, 260)])),
            ("ready", step(&[(0, 400), (1, 300)])),
        ];
        // Object 2 never got bound: it is in no gap.
        assert_eq!(
            stage_gaps(&steps),
            vec![
                ("bound", vec![ms(50), ms(60)]),
                ("ready", vec![ms(40), ms(250)]),
            ]
        );
        assert_eq!(since(&steps[0].1, &steps[2].1), vec![ms(100), ms(300)]);
    }

    #[test]
    fn medians_are_of_sorted_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
