//! Resource usage of the node, its pods and their containers, sampled every
//! `--metrics-interval-seconds` into one [`Snapshot`] that `/metrics/resource` and
//! `/stats/summary` serve (the kubelet reads cAdvisor's cache the same way instead of the
//! cgroups on every scrape).
//!
//! Containers are the running ones of the pods the agent runs ([`Registry`]); a pod is the sum
//! of its containers, as the agent gives pods no cgroup of their own.

pub mod cgroup;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use apiary_ebpf_common::PodTraffic;
use chrono::{DateTime, Utc};

use self::cgroup::{Roots, Usage};
use crate::agent::{
    context::{Context, Registry},
    pods::containers::Labels,
};

/// CPU of one sample. `usage_nano_cores` is the rate since the previous sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuStats {
    pub time: DateTime<Utc>,
    pub usage_core_nano_seconds: u64,
    pub usage_nano_cores: Option<u64>,
}

/// Memory of one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    pub time: DateTime<Utc>,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    /// Only for the node: its memory less the working set.
    pub available_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

/// A pod's traffic through its veth, as the data plane counts it (`POD_TRAFFIC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkStats {
    pub time: DateTime<Utc>,
    /// To the pod.
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// From the pod.
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ContainerStats {
    pub name: String,
    pub start_time: DateTime<Utc>,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodStats {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub start_time: Option<DateTime<Utc>>,
    pub containers: Vec<ContainerStats>,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub network: Option<NetworkStats>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeStats {
    pub name: String,
    /// Boot time.
    pub start_time: Option<DateTime<Utc>>,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
}

/// One collection.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
    /// Something could not be read (`resource_scrape_error`).
    pub error: bool,
}

/// The latest snapshot, shared by the collector and the server.
#[derive(Clone, Debug, Default)]
pub struct Latest(Arc<RwLock<Option<Arc<Snapshot>>>>);

impl Latest {
    pub fn get(&self) -> Option<Arc<Snapshot>> {
        self.0.read().expect("stats lock").clone()
    }

    pub fn set(&self, snapshot: Snapshot) {
        *self.0.write().expect("stats lock") = Some(Arc::new(snapshot));
    }
}

/// What the collector is told of one pod.
#[derive(Clone, Debug)]
pub struct PodInput {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub start_time: Option<DateTime<Utc>>,
    pub containers: Vec<ContainerInput>,
    pub traffic: Option<PodTraffic>,
}

/// A running container: its name in the pod, runtime id and start.
#[derive(Clone, Debug)]
pub struct ContainerInput {
    pub name: String,
    pub id: String,
    pub start_time: DateTime<Utc>,
}

/// Samples cgroups into snapshots, remembering the previous CPU counters for the rates.
#[derive(Debug)]
pub struct Collector {
    roots: Roots,
    cgroup_parent: String,
    node_name: String,
    /// Key (`node`, `pod/<uid>`, `container/<id>`) → (time, cumulative CPU ns).
    previous: HashMap<String, (DateTime<Utc>, u64)>,
}

impl Collector {
    pub fn new(roots: Roots, cgroup_parent: &str, node_name: &str) -> Self {
        Self {
            roots,
            cgroup_parent: cgroup_parent.to_owned(),
            node_name: node_name.to_owned(),
            previous: HashMap::new(),
        }
    }

    /// One snapshot of the node and `pods` at `now`.
    pub fn sample(&mut self, pods: Vec<PodInput>, now: DateTime<Utc>) -> Snapshot {
        let mut seen = HashMap::new();
        let node_usage = self.roots.node();
        let node = NodeStats {
            name: self.node_name.clone(),
            start_time: self.roots.boot_time(),
            cpu: self.cpu(&mut seen, "node".to_owned(), node_usage, now),
            memory: memory(node_usage, now),
        };
        let error = node.cpu.is_none() || node.memory.is_none();
        let mut out = Vec::with_capacity(pods.len());
        for pod in pods {
            let mut containers = Vec::with_capacity(pod.containers.len());
            let (mut cpu_total, mut memory_total) = (None::<u64>, None::<Usage>);
            for c in pod.containers {
                let relative = apiary_runtime::cgroups::relative_path(&self.cgroup_parent, &c.id);
                // Gone since it was listed: no longer running, as the kubelet would skip it.
                let Some(usage) = self.roots.cgroup(&relative) else {
                    continue;
                };
                if let Some(ns) = usage.cpu_ns {
                    cpu_total = Some(cpu_total.unwrap_or(0) + ns);
                }
                if let Some(m) = usage.memory {
                    let total = memory_total.get_or_insert_with(Usage::default);
                    total.memory = Some(add(total.memory, m));
                }
                containers.push(ContainerStats {
                    cpu: self.cpu(&mut seen, format!("container/{}", c.id), usage, now),
                    memory: memory(usage, now),
                    name: c.name,
                    start_time: c.start_time,
                });
            }
            let pod_usage = Usage {
                cpu_ns: cpu_total,
                memory: memory_total.and_then(|u| u.memory),
            };
            out.push(PodStats {
                cpu: self.cpu(&mut seen, format!("pod/{}", pod.uid), pod_usage, now),
                memory: memory(pod_usage, now),
                network: pod.traffic.map(|t| NetworkStats {
                    time: now,
                    rx_bytes: t.to_pod_bytes,
                    rx_packets: t.to_pod_packets,
                    tx_bytes: t.from_pod_bytes,
                    tx_packets: t.from_pod_packets,
                }),
                namespace: pod.namespace,
                name: pod.name,
                uid: pod.uid,
                start_time: pod.start_time,
                containers,
            });
        }
        // Forget what is gone, so the map does not grow with every container ever run.
        self.previous = seen;
        Snapshot {
            node,
            pods: out,
            error,
        }
    }

    /// CPU of `key` now, with its rate since the previous sample (none after a counter reset,
    /// which a new container reusing a key would be).
    fn cpu(
        &self,
        seen: &mut HashMap<String, (DateTime<Utc>, u64)>,
        key: String,
        usage: Usage,
        now: DateTime<Utc>,
    ) -> Option<CpuStats> {
        let total = usage.cpu_ns?;
        let rate = self.previous.get(&key).and_then(|&(then, before)| {
            let elapsed = (now - then).num_nanoseconds()?;
            let used = total.checked_sub(before)?;
            (elapsed > 0).then(|| {
                u64::try_from(u128::from(used) * 1_000_000_000 / elapsed as u128)
                    .unwrap_or(u64::MAX)
            })
        });
        seen.insert(key, (now, total));
        Some(CpuStats {
            time: now,
            usage_core_nano_seconds: total,
            usage_nano_cores: rate,
        })
    }
}

fn memory(usage: Usage, now: DateTime<Utc>) -> Option<MemoryStats> {
    let m = usage.memory?;
    Some(MemoryStats {
        time: now,
        usage_bytes: m.usage_bytes,
        working_set_bytes: m.working_set_bytes,
        available_bytes: m.available_bytes,
        rss_bytes: m.rss_bytes,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
    })
}

fn add(total: Option<cgroup::Memory>, m: cgroup::Memory) -> cgroup::Memory {
    let t = total.unwrap_or_default();
    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    cgroup::Memory {
        usage_bytes: t.usage_bytes + m.usage_bytes,
        working_set_bytes: t.working_set_bytes + m.working_set_bytes,
        available_bytes: None,
        rss_bytes: sum(t.rss_bytes, m.rss_bytes),
        page_faults: sum(t.page_faults, m.page_faults),
        major_page_faults: sum(t.major_page_faults, m.major_page_faults),
    }
}

/// The pods the agent runs, with their running containers and traffic counters. `None` when the
/// runtime could not list its containers.
async fn pods(ctx: &Context, registry: &Registry) -> Option<Vec<PodInput>> {
    let runtime_states = {
        let ctx_runtime = ctx.runtime.clone();
        tokio::task::spawn_blocking(move || ctx_runtime.list())
            .await
            .ok()?
            .ok()?
    };
    let running: HashMap<&str, DateTime<Utc>> = runtime_states
        .iter()
        .filter(|s| matches!(s.status, apiary_runtime::ContainerStatus::Running))
        .filter(|s| Labels::pod_of(s).is_some())
        .filter_map(|s| Some((s.id.as_str(), s.started_at?)))
        .collect();
    let mut out = Vec::new();
    for ((namespace, name), entry) in registry.all() {
        let containers = entry
            .names
            .iter()
            .filter_map(|c| {
                let (id, _) = entry.containers.get(c)?;
                Some(ContainerInput {
                    name: c.clone(),
                    id: id.clone(),
                    start_time: *running.get(id.as_str())?,
                })
            })
            .collect();
        let traffic = ctx.network.traffic(&entry.uid).await.ok().flatten();
        out.push(PodInput {
            namespace,
            name,
            start_time: DateTime::parse_from_rfc3339(&entry.start_time)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            uid: entry.uid,
            containers,
            traffic,
        });
    }
    Some(out)
}

/// Collects every `every` into `latest`, for ever.
pub async fn run(ctx: Arc<Context>, cgroup_parent: String, latest: Latest, every: Duration) {
    let collector = Arc::new(std::sync::Mutex::new(Collector::new(
        Roots::host(),
        &cgroup_parent,
        &ctx.node.name,
    )));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let inputs = pods(&ctx, &ctx.registry).await;
        let listed = inputs.is_some();
        let collector = Arc::clone(&collector);
        let sampled = tokio::task::spawn_blocking(move || {
            let mut collector = collector.lock().expect("collector lock");
            collector.sample(inputs.unwrap_or_default(), Utc::now())
        })
        .await;
        match sampled {
            Ok(mut snapshot) => {
                snapshot.error |= !listed;
                tracing::debug!(
                    pods = snapshot.pods.len(),
                    took = ?started.elapsed(),
                    "resource usage collected"
                );
                latest.set(snapshot);
            }
            Err(e) => tracing::warn!(error = %e, "collecting resource usage"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// A node with one pod of two containers, under `root`.
    pub(crate) fn fixture(root: &Path) -> (Collector, Vec<PodInput>) {
        let cgroup = root.join("cgroup");
        let proc = root.join("proc");
        std::fs::create_dir_all(&proc).unwrap();
        cgroup::tests::write_v2(&cgroup, "", 0, 0, 0);
        std::fs::remove_file(cgroup.join("memory.current")).unwrap();
        std::fs::write(cgroup.join("cpu.stat"), "usage_usec 123456789\n").unwrap();
        std::fs::write(cgroup.join("memory.stat"), "inactive_file 1048576\n").unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal:     4194304 kB\nMemFree:      2097152 kB\n",
        )
        .unwrap();
        std::fs::write(proc.join("stat"), "cpu  1 1 1 1\nbtime 1700000000\n").unwrap();
        cgroup::tests::write_v2(&cgroup, "apiary/c-web", 2_000_000, 50 << 20, 10 << 20);
        cgroup::tests::write_v2(&cgroup, "apiary/c-side", 500_000, 8 << 20, 0);
        let collector = Collector::new(
            Roots {
                hierarchies: vec![cgroup],
                proc,
            },
            "apiary",
            "node-1",
        );
        let start: DateTime<Utc> = "2026-01-02T03:04:05Z".parse().unwrap();
        let pods = vec![PodInput {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "u-1".into(),
            start_time: Some(start),
            containers: vec![
                ContainerInput {
                    name: "web".into(),
                    id: "c-web".into(),
                    start_time: start + chrono::Duration::seconds(2),
                },
                ContainerInput {
                    name: "side".into(),
                    id: "c-side".into(),
                    start_time: start + chrono::Duration::seconds(3),
                },
            ],
            traffic: Some(PodTraffic {
                from_pod_packets: 3,
                from_pod_bytes: 300,
                to_pod_packets: 4,
                to_pod_bytes: 400,
            }),
        }];
        (collector, pods)
    }

    #[test]
    fn pods_sum_their_containers_and_rates_come_from_two_samples() {
        let root = tempfile::tempdir().unwrap();
        let (mut collector, pods) = fixture(root.path());
        let t0: DateTime<Utc> = "2026-01-02T03:05:00Z".parse().unwrap();
        let first = collector.sample(pods.clone(), t0);
        assert!(!first.error);
        let pod = &first.pods[0];
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.cpu.unwrap().usage_core_nano_seconds, 2_500_000_000);
        assert_eq!(pod.cpu.unwrap().usage_nano_cores, None);
        assert_eq!(pod.memory.unwrap().working_set_bytes, 48 << 20);
        assert_eq!(pod.network.unwrap().rx_bytes, 400);
        assert_eq!(
            first.node.cpu.unwrap().usage_core_nano_seconds,
            123_456_789_000
        );
        assert_eq!(
            first.node.memory.unwrap().working_set_bytes,
            (2048 - 1) << 20
        );
        assert_eq!(
            first.node.memory.unwrap().available_bytes,
            Some((2048 + 1) << 20)
        );
        assert_eq!(
            first.node.start_time,
            DateTime::from_timestamp(1_700_000_000, 0)
        );

        // 1 s of CPU over 10 s: a tenth of a core.
        cgroup::tests::write_v2(
            &root.path().join("cgroup"),
            "apiary/c-web",
            3_000_000,
            50 << 20,
            10 << 20,
        );
        let second = collector.sample(pods, t0 + chrono::Duration::seconds(10));
        let web = &second.pods[0].containers[0];
        assert_eq!(web.cpu.unwrap().usage_nano_cores, Some(100_000_000));
        assert_eq!(
            second.pods[0].cpu.unwrap().usage_nano_cores,
            Some(100_000_000)
        );
        assert_eq!(
            second.pods[0].containers[1].cpu.unwrap().usage_nano_cores,
            Some(0)
        );
    }

    #[test]
    fn containers_whose_cgroup_is_gone_are_left_out() {
        let root = tempfile::tempdir().unwrap();
        let (mut collector, pods) = fixture(root.path());
        std::fs::remove_dir_all(root.path().join("cgroup/apiary/c-side")).unwrap();
        let snapshot = collector.sample(pods, Utc::now());
        assert_eq!(snapshot.pods[0].containers.len(), 1);
        assert_eq!(snapshot.pods[0].containers[0].name, "web");
    }
}
