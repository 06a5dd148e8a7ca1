//! `apiary-lab faults` (`cargo xtask faults`): what the cluster loses, and for how long it
//! stops, when a part of it dies, with the data plane serving throughout.
//!
//! The cluster: an HA control plane ([`ha`]: three etcd members with TLS, three control planes
//! sharing one CA) in the lab's underlay namespace, and two lab nodes whose agents know all
//! three API servers. Each fault runs under a write load ([`load`]: 16 clients creating
//! ConfigMaps, failing over between servers, and a reader) and the [`data_plane`]'s request
//! loops on node1 (by ClusterIP, by DNS name, and one a NetworkPolicy denies):
//! 1. SIGKILL of the control plane leading the controllers, then its restart;
//! 2. the leading control plane cut off from etcd ([`link`]), then joined again;
//! 3. SIGKILL of one etcd member, then its restart;
//! 4. SIGKILL of two members (quorum lost), then their restart;
//! 5. SIGKILL of node1's agent (the loops' node), then its restart;
//! 6. node2 lost (agent killed, link down) until its web pod is replaced, then back;
//! 7. a full disk under the embedded store: in a second lab, whose single control plane keeps
//!    its data on a 48 MiB tmpfs ([`disk`]).
//!
//! Each reports writes acknowledged and lost, the longest write and read outage, requests
//! through the ClusterIP and by name (failed, longest outage), denied requests that passed,
//! the time until the controllers' Lease is renewed after the fault (a leader runs them) and
//! until the cluster is whole. It fails when an
//! acknowledged write is lost, a denied request passes, a request fails in any fault but the
//! lost node's (the data plane does not depend on the control plane or the agent), a
//! control-plane fault stops writes for more than 5 s, more than 5 % of writes fail with one
//! member dead, or the cluster is not whole within a minute.

pub mod data_plane;
mod disk;
mod etcd;
mod ha;
mod link;
mod load;
mod process;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cluster::{ClusterLab, ControlPlanes};
use data_plane::Requests;
use ha::Ha;
use load::{Load, WRITERS};

/// Longer than this without a write through a control-plane fault fails the run.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// A fault that leaves the cluster broken longer than this fails the run.
const WHOLE_BOUND: Duration = Duration::from_secs(60);
/// How long a node's lease may go unrenewed: short, so a lost node is noticed in the run, but
/// longer than a control-plane failover, which must not cost a node its readiness.
const NODE_GRACE_SECONDS: &str = "8";

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Load before the fault.
    before: Duration,
    /// How long the fault lasts before the part comes back.
    held: Duration,
    /// Load after the cluster is whole again.
    after: Duration,
}

pub const FULL: Timing = Timing {
    before: Duration::from_secs(5),
    held: Duration::from_secs(10),
    after: Duration::from_secs(5),
};

/// CI's bounded run.
pub const QUICK: Timing = Timing {
    before: Duration::from_secs(2),
    held: Duration::from_secs(3),
    after: Duration::from_secs(2),
};

/// One fault's figures.
#[derive(Debug)]
pub struct Outcome {
    fault: &'static str,
    acknowledged: usize,
    lost: usize,
    unanswered_but_applied: usize,
    write_outage: Duration,
    read_outage: Duration,
    /// Requests of the loops during the step: by ClusterIP, by name, and denied ones.
    by_ip: Requests,
    by_name: Requests,
    denied: Requests,
    /// From the fault to the first renewal of the controllers' Lease after it: a leader
    /// running the controllers (about a renew period when the fault did not touch them;
    /// `None`: not within [`WHOLE_BOUND`]).
    controllers: Option<Duration>,
    /// From the broken part's return to every part back and serving.
    whole: Duration,
    failures: std::collections::BTreeMap<String, usize>,
}

impl Outcome {
    fn json(&self) -> Value {
        let requests = |r: &Requests| {
            json!({"succeeded": r.succeeded, "failed": r.failed,
                "longest_outage_ms": r.outage.as_millis() as u64, "errors": r.errors})
        };
        json!({
            "fault": self.fault,
            "writes_acknowledged": self.acknowledged,
            "writes_lost": self.lost,
            "writes_applied_without_answer": self.unanswered_but_applied,
            "longest_write_outage_ms": self.write_outage.as_millis() as u64,
            "longest_read_outage_ms": self.read_outage.as_millis() as u64,
            "cluster_ip_requests": requests(&self.by_ip),
            "dns_name_requests": requests(&self.by_name),
            "denied_requests": requests(&self.denied),
            "controllers_renewed_after_ms": self.controllers.map(|d| d.as_millis() as u64),
            "whole_after_ms": self.whole.as_millis() as u64,
            "failed_writes": self.failures,
        })
    }
}

/// What the suite breaks: the control planes and the lab cluster on them.
struct Suite {
    ha: Ha,
    cluster: ClusterLab,
}

/// What mends a fault.
type Mend = Box<dyn FnOnce(&mut Suite) -> anyhow::Result<()>>;

impl Suite {
    /// Every part back and serving: [`Ha::broken_part`], both nodes Ready, both web pods ready,
    /// and node1's agent answering (the loops' logs are read through it).
    async fn broken_part(&self) -> Option<String> {
        if let Some(broken) = self.ha.broken_part().await {
            return Some(broken);
        }
        let nodes = self.cluster.kubectl_ok(&["get", "nodes"]).ok()?;
        if nodes.lines().skip(1).any(|l| l.contains("NotReady")) {
            return Some(format!("a node is not Ready:\n{nodes}"));
        }
        let web = data_plane::web_pods(&self.cluster).unwrap_or_default();
        if web.len() != 2 || !web.iter().all(|p| p.ready) {
            return Some(format!("web pods not ready: {web:?}"));
        }
        if data_plane::log(&self.cluster, "by-ip").is_err() {
            return Some("node1's agent does not answer".into());
        }
        None
    }

    /// Runs a fault under load: `fault` breaks something (told who leads) and returns what
    /// mends it, which runs after [`Timing::held`].
    async fn run(
        &mut self,
        fault_name: &'static str,
        timing: Timing,
        fault: impl FnOnce(&mut Self, Option<&str>) -> anyhow::Result<Mend>,
    ) -> anyhow::Result<Outcome> {
        let bases = self.ha.bases();
        let slug: String = fault_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let from = data_plane::uptime();
        let load = Load::start(&self.ha.api, &bases, &slug, 64);
        tokio::time::sleep(timing.before).await;
        let leader_before = self.ha.api.leader(&bases).await;
        let broken = Instant::now();
        // Watched from the runtime's threads: a fault may hold this one (a lost node is held
        // until its pod is replaced).
        let controllers = tokio::spawn(first_renewal(
            self.ha.api.clone(),
            bases.clone(),
            broken,
            chrono::Utc::now(),
        ));
        let mend = fault(self, leader_before.as_deref()).with_context(|| fault_name)?;
        tokio::time::sleep(timing.held).await;
        let mended = Instant::now();
        mend(self).with_context(|| format!("mending {fault_name}"))?;
        let mut whole = None;
        let mut broken_part = None;
        while mended.elapsed() < WHOLE_BOUND {
            broken_part = self.broken_part().await;
            if broken_part.is_none() {
                whole = Some(mended.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let controllers = controllers.await.unwrap_or_default();
        tokio::time::sleep(timing.after).await;
        let (seen, write_outage, read_outage) = load.stop().await;
        let to = data_plane::uptime();
        let lost = self.ha.api.lost(&bases, &seen).await;
        let requests = |pod| data_plane::requests(&self.cluster, pod, from, to);
        let outcome = Outcome {
            fault: fault_name,
            acknowledged: seen.acknowledged.len(),
            lost,
            unanswered_but_applied: seen.unanswered_but_applied,
            write_outage,
            read_outage,
            by_ip: requests("by-ip"),
            by_name: requests("by-name"),
            denied: requests("denied"),
            controllers,
            whole: whole.unwrap_or(WHOLE_BOUND + Duration::from_secs(1)),
            failures: seen.failures,
        };
        println!(
            "{fault_name}: {} writes, lost {lost}, write outage {write_outage:.1?}, ClusterIP \
             {:?}, by name {:?}, whole after {whole:.1?}{}",
            outcome.acknowledged,
            outcome.by_ip,
            outcome.by_name,
            broken_part.map_or(String::new(), |b| format!(" (still broken: {b})")),
        );
        // The processes' own account of a failed step, while they still run.
        if !broken_promises(&outcome).is_empty() {
            println!("{}", self.cluster.logs());
        }
        Ok(outcome)
    }
}

/// How long after `broken` the controllers' Lease was first renewed after `broken_at` (the
/// same moment on the wall clock); `None` when not within [`WHOLE_BOUND`].
async fn first_renewal(
    api: load::Api,
    bases: Vec<String>,
    broken: Instant,
    broken_at: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    while broken.elapsed() < WHOLE_BOUND {
        let left = WHOLE_BOUND.saturating_sub(broken.elapsed());
        if let Ok(Some(lease)) = tokio::time::timeout(left, api.lease(&bases)).await
            && lease.renewed > broken_at
        {
            return Some(broken.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Runs the suite; fails (after printing the table and writing `json`) when a promise is
/// broken.
pub fn run(timing: Timing, json_path: Option<PathBuf>) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let grace = ["--node-monitor-grace-seconds", NODE_GRACE_SECONDS];
    let mut started: Option<(tokio::runtime::Runtime, Ha)> = None;
    let agent_flags: Vec<String> = ha::ADDRESSES[1..]
        .iter()
        .flat_map(|a| ["--server".to_owned(), format!("https://{a}:6443")])
        .collect();
    let agent_flags: Vec<&str> = agent_flags.iter().map(String::as_str).collect();
    let cluster = ClusterLab::start_on(
        2,
        ControlPlanes::Started(Box::new(|underlay, dir| {
            // This thread, and so the runtime's threads and every process started from here,
            // live in the underlay: the control planes' addresses and etcd's loopback are there.
            crate::lab::enter(underlay)?;
            crate::lab::ip(&["link", "set", "lo", "up"])?;
            for address in ha::ADDRESSES {
                crate::lab::ip(&["addr", "add", &format!("{address}/24"), "dev", "ul0"])?;
            }
            let runtime = tokio::runtime::Runtime::new()?;
            let ha = runtime.block_on(Ha::start(
                &dir.join("ha"),
                &grace,
                dir.join("control-plane.log"),
            ))?;
            let first = ha.first_data.clone();
            started = Some((runtime, ha));
            Ok(first)
        })),
        &agent_flags,
    )?;
    let (runtime, ha) = started.context("the control planes did not start")?;
    let mut suite = Suite { ha, cluster };
    data_plane::start(&suite.cluster, "node1").map_err(|e| e.context(suite.cluster.logs()))?;
    let mut outcomes = runtime.block_on(steps(&mut suite, timing))?;
    drop(suite);
    drop(runtime);
    outcomes.push(disk::full(timing).context("disk full")?);
    report(&outcomes, timing, json_path)
}

async fn steps(suite: &mut Suite, timing: Timing) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    outcomes.push(
        suite
            .run("control plane leader SIGKILL", timing, |s, leader| {
                let i = s.ha.leading(leader);
                s.ha.control_planes[i].process.kill();
                Ok(Box::new(move |s: &mut Suite| {
                    s.ha.control_planes[i].process.restart()
                }))
            })
            .await?,
    );
    outcomes.push(
        suite
            .run("leader partitioned from etcd", timing, |s, leader| {
                let i = s.ha.leading(leader);
                s.ha.links[i].set_cut(true);
                Ok(Box::new(move |s: &mut Suite| {
                    s.ha.links[i].set_cut(false);
                    Ok(())
                }))
            })
            .await?,
    );
    outcomes.push(
        suite
            .run("etcd member SIGKILL", timing, |s, _| {
                s.ha.etcd.members[0].process.kill();
                Ok(Box::new(|s: &mut Suite| {
                    s.ha.etcd.members[0].process.restart()
                }))
            })
            .await?,
    );
    outcomes.push(
        suite
            .run("etcd quorum lost (2 of 3)", timing, |s, _| {
                s.ha.etcd.members[1].process.kill();
                s.ha.etcd.members[2].process.kill();
                Ok(Box::new(|s: &mut Suite| {
                    s.ha.etcd.members[1].process.restart()?;
                    s.ha.etcd.members[2].process.restart()
                }))
            })
            .await?,
    );
    outcomes.push(
        suite
            .run("agent SIGKILL (node1)", timing, |s, _| {
                s.cluster.kill_agent(0);
                Ok(Box::new(|s: &mut Suite| s.cluster.restart_agent(0)))
            })
            .await?,
    );
    outcomes.push(
        suite
            .run("node lost (node2)", timing, |s, _| {
                s.cluster.lose_node(1)?;
                // Held until its web pod is replaced on node1.
                crate::cluster::wait("node2's web pod replaced on node1", WHOLE_BOUND, || {
                    let pods = data_plane::web_pods(&s.cluster).unwrap_or_default();
                    (pods.iter().filter(|p| p.node == "node1" && p.ready).count() == 2)
                        .then_some(())
                })?;
                Ok(Box::new(|s: &mut Suite| s.cluster.restore_node(1)))
            })
            .await?,
    );
    Ok(outcomes)
}

fn table(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<30} {:>6} {:>4} {:>8} {:>8} {:>12} {:>8} {:>12} {:>8} {:>6} {:>7} {:>7}\n",
        "fault",
        "acked",
        "lost",
        "write",
        "read",
        "ClusterIP",
        "outage",
        "by name",
        "outage",
        "denied",
        "ctrl",
        "whole"
    );
    out.push_str(&format!(
        "{:<30} {:>6} {:>4} {:>8} {:>8} {:>12} {:>8} {:>12} {:>8} {:>6} {:>7} {:>7}\n",
        "",
        "writes",
        "",
        "outage",
        "outage",
        "failed/all",
        "",
        "failed/all",
        "",
        "passed",
        "in",
        "in"
    ));
    let s = |d: Duration| format!("{:.2}s", d.as_secs_f64());
    let counts = |r: &Requests| format!("{}/{}", r.failed, r.failed + r.succeeded);
    for o in outcomes {
        out.push_str(&format!(
            "{:<30} {:>6} {:>4} {:>8} {:>8} {:>12} {:>8} {:>12} {:>8} {:>6} {:>7} {:>7}\n",
            o.fault,
            o.acknowledged,
            o.lost,
            s(o.write_outage),
            s(o.read_outage),
            counts(&o.by_ip),
            s(o.by_ip.outage),
            counts(&o.by_name),
            s(o.by_name.outage),
            o.denied.succeeded,
            o.controllers.map_or("-".to_owned(), s),
            s(o.whole),
        ));
    }
    out
}

/// The promises each outcome must keep.
fn broken_promises(o: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    if o.lost > 0 {
        failures.push(format!("{} acknowledged writes lost", o.lost));
    }
    if o.whole > WHOLE_BOUND {
        failures.push(format!("not whole within {WHOLE_BOUND:?}"));
    }
    if o.denied.succeeded > 0 {
        failures.push(format!("{} denied requests passed", o.denied.succeeded));
    }
    if o.denied.failed == 0 {
        failures.push("the denied loop made no request".to_owned());
    }
    // Only the lost node's own pod may fail requests, until the Service leaves it out.
    if !o.fault.starts_with("node lost") {
        if o.by_ip.failed > 0 || o.by_ip.succeeded == 0 {
            failures.push(format!("ClusterIP requests: {:?}", o.by_ip));
        }
        if o.by_name.failed > 0 || o.by_name.succeeded == 0 {
            failures.push(format!("requests by name: {:?}", o.by_name));
        }
    }
    // One member of three is no outage: its requests go to the others within a probe.
    let failed: usize = o.failures.values().sum();
    if o.fault == "etcd member SIGKILL" && failed * 20 > o.acknowledged {
        failures.push(format!(
            "{failed} writes failed of {} (a dead member keeps its share of requests)",
            o.acknowledged
        ));
    }
    let control_plane_fault =
        o.fault.starts_with("control plane") || o.fault.starts_with("leader partitioned");
    if control_plane_fault && o.write_outage > FAILOVER_BOUND {
        failures.push(format!(
            "writes stopped for {:.1?} (> {FAILOVER_BOUND:?})",
            o.write_outage
        ));
    }
    failures
}

fn report(outcomes: &[Outcome], timing: Timing, json_path: Option<PathBuf>) -> anyhow::Result<()> {
    let failures: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            broken_promises(o)
                .into_iter()
                .map(move |f| format!("{}: {f}", o.fault))
        })
        .collect();
    println!("\n{}", table(outcomes));
    if let Some(path) = json_path {
        let report = json!({
            "quick": timing.held == QUICK.held,
            "writers": WRITERS,
            "faults": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
            "failures": failures,
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    anyhow::ensure!(failures.is_empty(), "faults:\n{}", failures.join("\n"));
    Ok(())
}
