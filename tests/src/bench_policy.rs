//! `apiary-lab bench-policy` (issue 7): what NetworkPolicy costs a connection, and how soon a
//! new policy is enforced on every node. One two-node [`ClusterLab`] of real agents (release
//! binaries when run from a release `apiary-lab`), policies created through the API:
//!
//! - *convergence*: with [`PRESENT`] policies selecting a pod on each node, one more policy at
//!   a time is created (an HTTP POST, the admin's token) and both nodes' pinned maps are polled
//!   until each allows what it adds; create → enforced on all nodes, p50/p99;
//! - *request rate*: a client pod connects to two server pods on the other node, one selected
//!   by no policy and one selected by [`POLICIES`] policies whose rules are unrelated to the
//!   client (other ports, other addresses) plus one allowing it. A request is a new TCP
//!   connection (connect, 32 bytes each way), so every request is a new flow whose first
//!   packet is judged. Rounds alternate the two servers, so load from other processes hits
//!   both alike; the client and the echo servers run in the pods' network namespaces. The
//!   server closes first, so TIME_WAIT is on its side and the client's ports never run out.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apiary_ebpf_common::{POLICY_INGRESS, PROTO_TCP};
use apiary_node_agent::{
    api_client::ApiClient,
    dataplane::{EndpointMap, PolicyMaps},
    kubeconfig::Endpoint,
    netns,
};
use serde_json::{Value, json};

use crate::{
    bench_report::verdict,
    cluster::{ClusterLab, wait},
    lab,
};

/// Policies selecting the guarded server.
pub const POLICIES: usize = 1_000;
/// Policies present while convergence is measured.
pub const PRESENT: usize = 250;
/// Request-rate overhead target: the guarded server's rate may be this much below the plain's.
pub const OVERHEAD_TARGET: f64 = 0.05;
/// Convergence p99 target.
pub const CONVERGENCE_P99_TARGET: Duration = Duration::from_millis(100);

const NAMESPACE: &str = "bench";
const POLICIES_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/bench/networkpolicies";
const ECHO_PORT: u16 = 9000;
const MESSAGE: usize = 32;
/// How often the maps are polled for a new policy.
const POLL: Duration = Duration::from_micros(200);
const TIMEOUT: Duration = Duration::from_secs(60);
/// Port ranges of the generated policies' rules (none of them the echo port).
const FILLER_PORT: u16 = 30_000;
const MEASURED_PORT: u16 = 20_000;
const UNRELATED_PORT: u16 = 10_000;

#[derive(Clone, Debug)]
pub struct PolicyFigures {
    pub rounds: usize,
    pub seconds_per_round: f64,
    /// Requests/s of each round, to the server no policy selects.
    pub plain: Vec<f64>,
    /// Requests/s of each round, to the server [`POLICIES`] policies select.
    pub guarded: Vec<f64>,
    /// One policy at a time with [`PRESENT`] present: create → enforced on both nodes; sorted.
    pub convergence: Vec<Duration>,
    /// The same policies' create calls alone (the API server's commit included); sorted.
    pub create: Vec<Duration>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

impl PolicyFigures {
    pub fn plain_rate(&self) -> f64 {
        median(&self.plain)
    }

    pub fn guarded_rate(&self) -> f64 {
        median(&self.guarded)
    }

    /// The guarded server's rate below the plain's, as a fraction (negative: above).
    pub fn overhead(&self) -> f64 {
        1.0 - self.guarded_rate() / self.plain_rate()
    }

    pub fn convergence_percentile(&self, p: f64) -> Duration {
        crate::bench_pods::percentile(&self.convergence, p)
    }

    pub fn json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "request_rate": {
                "policies": POLICIES,
                "rounds": self.rounds,
                "seconds_per_round": self.seconds_per_round,
                "plain_rps": self.plain,
                "guarded_rps": self.guarded,
                "plain_median_rps": self.plain_rate(),
                "guarded_median_rps": self.guarded_rate(),
                "overhead": self.overhead(),
                "target_overhead": OVERHEAD_TARGET,
            },
            "convergence": {
                "present": PRESENT,
                "samples": self.convergence.len(),
                "p50_ms": ms(self.convergence_percentile(0.5)),
                "p99_ms": ms(self.convergence_percentile(0.99)),
                "max_ms": ms(self.convergence_percentile(1.0)),
                "target_p99_ms": ms(CONVERGENCE_P99_TARGET),
                "all_ms": self.convergence.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "create_p50_ms": ms(crate::bench_pods::percentile(&self.create, 0.5)),
                "create_p99_ms": ms(crate::bench_pods::percentile(&self.create, 0.99)),
            },
        })
    }

    pub fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let overhead = self.overhead();
        let p99 = self.convergence_percentile(0.99);
        let mut out = String::new();
        out.push_str(&format!(
            "request rate, new TCP connection per request, {} rounds × {:.1} s per server:\n",
            self.rounds, self.seconds_per_round
        ));
        out.push_str(&format!(
            "  {:<44} {:>10.0} req/s\n",
            "server selected by no policy (median)",
            self.plain_rate()
        ));
        out.push_str(&format!(
            "  {:<44} {:>10.0} req/s   ratio {:.3}\n",
            format!("server selected by {POLICIES} policies (median)"),
            self.guarded_rate(),
            self.guarded_rate() / self.plain_rate()
        ));
        out.push_str(&format!(
            "  {:<44} {:>9.1} %      target ≤ {:.0} %  {}\n",
            "overhead",
            overhead * 100.0,
            OVERHEAD_TARGET * 100.0,
            verdict(overhead <= OVERHEAD_TARGET)
        ));
        out.push_str(&format!(
            "convergence, create → enforced on both nodes, {PRESENT} policies present, {} samples:\n",
            self.convergence.len()
        ));
        out.push_str(&format!(
            "  p50 {}   p99 {}   max {}   target p99 ≤ {}  {}\n",
            ms(self.convergence_percentile(0.5)),
            ms(p99),
            ms(self.convergence_percentile(1.0)),
            ms(CONVERGENCE_P99_TARGET),
            verdict(p99 <= CONVERGENCE_P99_TARGET)
        ));
        out.push_str(&format!(
            "  of which the create call (API commit): p50 {}   p99 {}\n",
            ms(crate::bench_pods::percentile(&self.create, 0.5)),
            ms(crate::bench_pods::percentile(&self.create, 0.99)),
        ));
        out
    }
}

/// A pod's node's view of its policy: the maps, opened once, and its endpoint number.
struct Judge {
    maps: PolicyMaps,
    endpoint: u32,
}

impl Judge {
    fn of(pod: &BenchPod) -> anyhow::Result<Self> {
        let endpoint = wait("the pod's endpoint", TIMEOUT, || {
            EndpointMap::open(&pod.pin_dir).ok()?.get(pod.ip).ok()?
        })?;
        Ok(Self {
            maps: PolicyMaps::open(&pod.pin_dir)?,
            endpoint: endpoint.host_ifindex,
        })
    }

    /// Whether the maps let `peer` in to `port` (TCP), as the programs would judge it.
    fn allows(&self, peer: Ipv4Addr, port: u16) -> anyhow::Result<bool> {
        let verdict = self
            .maps
            .trace(self.endpoint, POLICY_INGRESS, peer, PROTO_TCP, port)?;
        Ok(verdict.enforced && verdict.rule_id.is_some())
    }
}

/// A pod of the benchmark: where it runs and how to get into it.
struct BenchPod {
    ip: Ipv4Addr,
    netns: PathBuf,
    /// Its node's pin directory.
    pin_dir: PathBuf,
}

pub fn run(rounds: usize, seconds_per_round: f64, samples: usize) -> anyhow::Result<PolicyFigures> {
    if let Some(reason) = crate::privileges::missing() {
        bail!("the benchmark {reason}");
    }
    let cluster = ClusterLab::start(2)?;
    let result = measure(&cluster, rounds, seconds_per_round, samples);
    result.map_err(|e| e.context(cluster.logs()))
}

fn measure(
    cluster: &ClusterLab,
    rounds: usize,
    seconds_per_round: f64,
    samples: usize,
) -> anyhow::Result<PolicyFigures> {
    let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.name.clone()).collect();
    let mut manifest =
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    for (name, node, labels) in [
        ("client", 0, "role: client"),
        ("plain", 1, "app: plain"),
        ("guarded", 1, "app: guarded"),
        ("target-0", 0, "bench: target"),
        ("target-1", 1, "bench: target"),
    ] {
        manifest.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{{labels}}}}}
spec:
  nodeName: {}
  terminationGracePeriodSeconds: 0
  containers:
  - {{name: c, image: localhost/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, "1000000"]}}
"#,
            nodes[node]
        ));
    }
    cluster.apply(&manifest)?;
    let pod = |name: &str| -> anyhow::Result<BenchPod> {
        let pod = cluster.wait_ready(NAMESPACE, name, Duration::from_secs(90))?;
        let node = cluster
            .nodes()
            .iter()
            .find(|n| pod["spec"]["nodeName"] == n.name.as_str())
            .context("pod on an unknown node")?;
        let uid = pod["metadata"]["uid"].as_str().context("pod without uid")?;
        Ok(BenchPod {
            ip: pod["status"]["podIP"]
                .as_str()
                .context("pod without IP")?
                .parse()?,
            // The agent's sandbox namespaces: `<run dir>/pods/<uid>/net`.
            netns: node.run_dir.join("pods").join(uid).join("net"),
            pin_dir: node.pin_dir.clone(),
        })
    };
    let (client, plain, guarded) = (pod("client")?, pod("plain")?, pod("guarded")?);
    let targets = [Judge::of(&pod("target-0")?)?, Judge::of(&pod("target-1")?)?];
    let guarded_judge = Judge::of(&guarded)?;
    for server in [&plain, &guarded] {
        serve_echo(&server.netns, server.ip)?;
    }
    let api = ApiClient::new(&Endpoint::from_kubeconfig(&cluster.node_kubeconfig)?)?;
    let post_all = |policies: Vec<Value>| -> anyhow::Result<()> {
        lab::run_in(&cluster.underlay, || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use futures::StreamExt as _;
                let results: Vec<anyhow::Result<Value>> = futures::stream::iter(policies)
                    .map(|p| {
                        let api = &api;
                        async move { api.post(POLICIES_PATH, &p).await }
                    })
                    .buffer_unordered(32)
                    .collect()
                    .await;
                results.into_iter().try_for_each(|r| r.map(drop))
            })
        })?
    };

    // Convergence, with PRESENT policies selecting the targets.
    eprintln!("  creating {PRESENT} policies selecting a pod on each node …");
    post_all(
        (0..PRESENT)
            .map(|i| target_policy(&format!("present-{i}"), FILLER_PORT + i as u16))
            .collect(),
    )?;
    let enforced = |port: u16| -> anyhow::Result<bool> {
        for target in &targets {
            if !target.allows(client.ip, port)? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let last_filler = FILLER_PORT + PRESENT as u16 - 1;
    wait("the present policies on both nodes", TIMEOUT, || {
        enforced(last_filler).ok()?.then_some(())
    })?;
    eprintln!("  {samples} more, one at a time …");
    let mut convergence = Vec::with_capacity(samples);
    let mut create = Vec::with_capacity(samples);
    for i in 0..samples {
        let port = MEASURED_PORT + i as u16;
        let policy = target_policy(&format!("measured-{i}"), port);
        let started = Instant::now();
        post_all(vec![policy])?;
        create.push(started.elapsed());
        while !enforced(port)? {
            if started.elapsed() > TIMEOUT {
                bail!("policy measured-{i} not enforced on both nodes after {TIMEOUT:?}");
            }
            std::thread::sleep(POLL);
        }
        convergence.push(started.elapsed());
    }
    convergence.sort();
    create.sort();

    // Request rate: POLICIES policies select the guarded server; one of them allows the client.
    eprintln!("  creating {POLICIES} policies selecting the guarded server …");
    let mut guarding: Vec<Value> = (0..POLICIES - 1).map(unrelated_policy).collect();
    guarding.push(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "guarded-from-client", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": "guarded"}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [{"port": ECHO_PORT}],
            }],
        },
    }));
    post_all(guarding)?;
    let last_unrelated = UNRELATED_PORT + (POLICIES - 2) as u16;
    wait("the guarded server's policies", TIMEOUT, || {
        let all = guarded_judge.allows(client.ip, ECHO_PORT).ok()?
            && guarded_judge.allows(client.ip, last_unrelated).ok()?;
        all.then_some(())
    })?;
    let (mut plain_rates, mut guarded_rates) = (Vec::new(), Vec::new());
    let round = Duration::from_secs_f64(seconds_per_round);
    // One unmeasured round each, to warm caches and fill the flow table alike.
    requests_per_second(&client.netns, plain.ip, round)?;
    requests_per_second(&client.netns, guarded.ip, round)?;
    eprintln!("  {rounds} rounds of {seconds_per_round} s per server …");
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [(&plain, true), (&guarded, false)]
        } else {
            [(&guarded, false), (&plain, true)]
        };
        for (server, is_plain) in order {
            let rate = requests_per_second(&client.netns, server.ip, round)?;
            if is_plain {
                plain_rates.push(rate);
            } else {
                guarded_rates.push(rate);
            }
        }
    }
    Ok(PolicyFigures {
        rounds,
        seconds_per_round,
        plain: plain_rates,
        guarded: guarded_rates,
        convergence,
        create,
    })
}

/// A policy selecting the two targets, admitting the client on `port` alone.
fn target_policy(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"bench": "target"}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [{"port": port}],
            }],
        },
    })
}

/// The `i`th policy selecting the guarded server with a rule the measured requests never
/// match: the client on another port (even `i`), or an address block on one (odd `i`).
fn unrelated_policy(i: usize) -> Value {
    let port = UNRELATED_PORT + i as u16;
    let peer = if i.is_multiple_of(2) {
        json!({"podSelector": {"matchLabels": {"role": "client"}}})
    } else {
        json!({"ipBlock": {"cidr": format!("172.16.{}.{}/32", i / 256, i % 256)}})
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("unrelated-{i}"), "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": "guarded"}},
            "ingress": [{"from": [peer], "ports": [{"port": port}]}],
        },
    })
}

/// An echo server on `ip:ECHO_PORT` inside `netns`, for the rest of the process: each
/// connection gets its 32 bytes back and is closed.
fn serve_echo(netns: &Path, ip: Ipv4Addr) -> anyhow::Result<()> {
    let netns = netns.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let served = netns::run_in(&netns, || -> anyhow::Result<()> {
            let listener = TcpListener::bind(SocketAddrV4::new(ip, ECHO_PORT))?;
            let _ = ready_tx.send(Ok(()));
            for stream in listener.incoming() {
                let mut stream = stream?;
                let mut message = [0u8; MESSAGE];
                if stream.read_exact(&mut message).is_ok() {
                    let _ = stream.write_all(&message);
                }
            }
            Ok(())
        });
        if let Err(e) = served.map_err(anyhow::Error::from).and_then(|r| r) {
            let _ = ready_tx.send(Err(e));
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("echo server did not start")?
}

/// Sequential requests from inside `netns` to `server` for `duration`: requests per second.
fn requests_per_second(netns: &Path, server: Ipv4Addr, duration: Duration) -> anyhow::Result<f64> {
    let addr = SocketAddr::V4(SocketAddrV4::new(server, ECHO_PORT));
    netns::run_in(netns, || -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut done = 0u64;
        let mut message = [7u8; MESSAGE];
        while started.elapsed() < duration {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            stream.write_all(&message)?;
            stream.read_exact(&mut message)?;
            // Wait for the server's close, so that TIME_WAIT stays on its side: client-side
            // TIME_WAITs would use up the ephemeral ports within a minute (28k ports / 60 s
            // = 470 connections/s).
            let _ = stream.read(&mut [0u8; 1])?;
            done += 1;
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(plain: &[f64], guarded: &[f64], convergence_ms: &[u64]) -> PolicyFigures {
        PolicyFigures {
            rounds: plain.len(),
            seconds_per_round: 0.5,
            plain: plain.to_vec(),
            guarded: guarded.to_vec(),
            convergence: convergence_ms
                .iter()
                .map(|&ms| Duration::from_millis(ms))
                .collect(),
            create: vec![Duration::from_millis(1)],
        }
    }

    #[test]
    fn overhead_compares_medians() {
        let f = figures(
            &[100.0, 1000.0, 1000.0],
            &[950.0, 950.0, 10.0],
            &[10, 20, 30],
        );
        assert!((f.overhead() - 0.05).abs() < 1e-9);
        let table = f.table();
        assert!(table.contains("5.0 %"), "{table}");
        assert!(table.contains("ok"), "{table}");
        assert_eq!(f.json()["convergence"]["p50_ms"], 20.0);
    }

    #[test]
    fn a_slow_convergence_misses_its_target() {
        let f = figures(&[1000.0], &[1000.0], &[10, 500]);
        assert!(f.table().contains("MISSED"), "{}", f.table());
    }

    #[test]
    fn unrelated_policies_never_name_the_echo_port() {
        for i in 0..POLICIES - 1 {
            let p = unrelated_policy(i);
            assert_ne!(p["spec"]["ingress"][0]["ports"][0]["port"], ECHO_PORT);
        }
        assert_eq!(
            unrelated_policy(3)["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"],
            "172.16.0.3/32"
        );
    }
}
