//! How fast the real agent programs Services: a one-node [`ClusterLab`] (release binaries when
//! run from a release `apiary-lab`), `services` ClusterIP Services (no selector) created
//! concurrently with HTTP POSTs (the admin kubeconfig's token and CA, the agent's own
//! [`ApiClient`]) from the lab's underlay namespace, and the node's pinned `SERVICES` map
//! watched until it holds every one's frontend; then one more Service at a time, its create to
//! its frontend, polled every [`POLL`].
//!
//! Everything is measured from outside the agent: create → map includes the API server's
//! commit, the watch's delivery to the agent and its reconcile.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apiary_ebpf_common::{PROTO_TCP, SCOPE_SOCKET, SERVICES, ServiceKey, ServiceValue};
use apiary_node_agent::{api_client::ApiClient, dataplane::ServiceMaps, kubeconfig::Endpoint};
use aya::maps::{HashMap, Map, MapData};
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::{cluster::ClusterLab, lab};

/// How often the map is polled for one Service's frontend.
pub const POLL: Duration = Duration::from_micros(200);
/// How long the frontends may take before the benchmark gives up.
const TIMEOUT: Duration = Duration::from_secs(300);
const SERVICES_PATH: &str = "/api/v1/namespaces/default/services";

#[derive(Clone, Debug)]
pub struct ProgrammingFigures {
    pub services: usize,
    /// Requests in flight while creating.
    pub concurrency: usize,
    /// From the first create's start to the last create's return.
    pub create: Duration,
    /// From the last create's return until the map held every frontend.
    pub after_last_create: Duration,
    /// From the first create's start until the map held every frontend.
    pub after_first_create: Duration,
    /// One more Service at a time: its create's return to its frontend in the map; sorted.
    pub one_more: Vec<Duration>,
    /// The agent's "service maps updated" lines while the `services` were programmed.
    pub reconciles: Vec<Reconcile>,
    /// The agent's "service maps updated" lines while the one more Services were programmed.
    pub reconciles_one_more: Vec<Reconcile>,
    /// Where in the agent's log the one-more part began.
    pub(crate) log_split: u64,
}

/// One "service maps updated" line of the agent's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconcile {
    pub writes: u64,
    pub frontends: u64,
    pub took_us: u64,
}

/// The `SERVICES` map, for lookups of one key (`ServiceMaps` lists the whole map only).
struct Frontends(HashMap<MapData, ServiceKey, ServiceValue>);

impl Frontends {
    fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        // Opening the typed wrapper first checks that the maps are the agent's.
        ServiceMaps::open(pin_dir)?;
        let data = MapData::from_pin(pin_dir.join(SERVICES))?;
        Ok(Self(HashMap::try_from(Map::HashMap(data))?))
    }

    fn has(&self, key: &ServiceKey) -> bool {
        self.0.get(key, 0).is_ok()
    }
}

fn key_of(created: &Value) -> anyhow::Result<ServiceKey> {
    let ip: Ipv4Addr = created["spec"]["clusterIP"]
        .as_str()
        .context("the created Service has no clusterIP")?
        .parse()
        .context("the created Service's clusterIP")?;
    Ok(ServiceKey {
        addr: ip.octets(),
        port_be: 80u16.to_be(),
        protocol: PROTO_TCP,
        scope: SCOPE_SOCKET,
    })
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    })
}

pub fn run(
    services: usize,
    concurrency: usize,
    one_more: usize,
) -> anyhow::Result<ProgrammingFigures> {
    if let Some(reason) = crate::privileges::missing() {
        bail!("the benchmark {reason}");
    }
    let cluster = ClusterLab::start(1)?;
    let node = &cluster.nodes()[0];
    let frontends =
        crate::cluster::wait("the agent's service maps", Duration::from_secs(30), || {
            Frontends::open(&node.pin_dir).ok()
        })?;
    let client = ApiClient::new(&Endpoint::from_kubeconfig(&cluster.kubeconfig)?)?;
    let log_len = |log: &Path| std::fs::metadata(log).map_or(0, |m| m.len());
    let log_before = log_len(&node.log);
    let log = node.log.clone();
    // The client's sockets must be made in the underlay namespace, where the API server is:
    // a current-thread runtime on a thread inside it.
    let result = lab::run_in(
        &cluster.underlay,
        || -> anyhow::Result<ProgrammingFigures> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(measure(
                &client,
                &frontends,
                services,
                concurrency,
                one_more,
                || log_len(&log),
            ))
        },
    )?;
    let mut figures = result.map_err(|e| e.context(cluster.logs()))?;
    let log = std::fs::read(&node.log).unwrap_or_default();
    let part = |from: u64, to: u64| {
        let to = usize::try_from(to).unwrap_or(usize::MAX).min(log.len());
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(to);
        reconciles(&String::from_utf8_lossy(&log[from..to]))
    };
    figures.reconciles = part(log_before, figures.log_split);
    figures.reconciles_one_more = part(figures.log_split, u64::MAX);
    if let Some(dir) = std::env::var_os(crate::bench_pods::KEEP_LOGS_ENV) {
        let to = Path::new(&dir).join(format!("agent-services-{}.log", node.name));
        if let Err(e) = std::fs::copy(&node.log, &to) {
            eprintln!("keeping {}: {e}", to.display());
        }
    }
    Ok(figures)
}

async fn measure(
    client: &ApiClient,
    frontends: &Frontends,
    services: usize,
    concurrency: usize,
    one_more: usize,
    log_len: impl Fn() -> u64,
) -> anyhow::Result<ProgrammingFigures> {
    eprintln!("  creating {services} Services, {concurrency} at a time …");
    let started = Instant::now();
    let created: Vec<anyhow::Result<Value>> = futures::stream::iter(0..services)
        .map(|i| async move {
            client
                .post(SERVICES_PATH, &service(&format!("bench-{i}")))
                .await
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let last_created = Instant::now();
    let mut missing = BTreeSet::new();
    for response in created {
        missing.insert(key_of(&response?)?);
    }
    anyhow::ensure!(
        missing.len() == services,
        "{services} Services share {} addresses",
        missing.len()
    );
    eprintln!(
        "  created in {:.2} s; waiting for {services} frontends …",
        last_created.duration_since(started).as_secs_f64()
    );
    while !missing.is_empty() {
        missing.retain(|key| !frontends.has(key));
        if last_created.elapsed() > TIMEOUT {
            bail!(
                "{} of {services} frontends missing after {} s",
                missing.len(),
                TIMEOUT.as_secs()
            );
        }
        if !missing.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    let done = Instant::now();
    // The agent logs its reconcile after writing: give the last line a moment to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log_split = log_len();
    eprintln!(
        "  programmed {:.3} s after the last create; {one_more} more, one at a time …",
        done.duration_since(last_created).as_secs_f64()
    );
    let mut latencies = Vec::new();
    for i in 0..one_more {
        let created = client
            .post(SERVICES_PATH, &service(&format!("bench-more-{i}")))
            .await?;
        let returned = Instant::now();
        let key = key_of(&created)?;
        while !frontends.has(&key) {
            if returned.elapsed() > Duration::from_secs(30) {
                bail!("bench-more-{i}: no frontend after 30 s");
            }
            // A blocking sleep: the runtime's timer is coarser than the poll interval.
            std::thread::sleep(POLL);
        }
        latencies.push(returned.elapsed());
        // Apart, so that each create is its own watch event and reconcile.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    Ok(ProgrammingFigures {
        services,
        concurrency,
        create: last_created.duration_since(started),
        after_last_create: done.duration_since(last_created),
        after_first_create: done.duration_since(started),
        one_more: latencies,
        reconciles: Vec::new(),
        reconciles_one_more: Vec::new(),
        log_split,
    })
}

/// The "service maps updated" lines of an agent log (tracing's `key=value` fields).
pub fn reconciles(log: &str) -> Vec<Reconcile> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("service maps updated"))
        .filter_map(|l| {
            let l = l.as_str();
            Some(Reconcile {
                writes: field(l, "writes")?,
                frontends: field(l, "frontends")?,
                took_us: field(l, "took_us")?,
            })
        })
        .collect()
}

/// `line` without terminal colour sequences (`ESC [ … letter`), which tracing writes around
/// field names.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_reconcile_lines() {
        let log = "2026-11-24T01:00:00Z  INFO apiary_node_agent::agent::services: service maps \
                   updated writes=2 frontends=3 took_us=1\n\
                   2026-11-24T01:00:01Z  INFO something else took_us=9\n\
                   \x1b[2m2026\x1b[0m INFO service maps updated \x1b[3mwrites\x1b[0m\x1b[2m=\x1b[0m9000 \
                   frontends=9001 took_us=120\n";
        assert_eq!(
            reconciles(log),
            vec![
                Reconcile {
                    writes: 2,
                    frontends: 3,
                    took_us: 1
                },
                Reconcile {
                    writes: 9000,
                    frontends: 9001,
                    took_us: 120
                },
            ]
        );
    }
}
