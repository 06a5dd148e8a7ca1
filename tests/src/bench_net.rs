//! `apiary-lab bench-pods`: TCP request/response rate (one connection, one byte each way, like
//! netperf's TCP_RR) between pods on one node and on two nodes wired by `PodNetwork`, against a
//! baseline of two namespaces joined by a plain veth pair without BPF, in the same run; and node
//! to node over the lab's underlay, the wire under cross-node pod traffic, for comparison.
//!
//! Rounds are interleaved (baseline, same node, cross node, baseline, …) and the median per path
//! is reported, so that load from other processes on the machine hits every path alike.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use crate::lab::{self, Lab, Node};
use anyhow::Context as _;
use apiary_node_agent::network::{Ipv4Net, NetworkConfig, PodNetwork, PodRequest, RemoteNode};

const MTU: u32 = 1500;

/// Two endpoints to measure between: (netns, address) of client and server.
struct Path2 {
    name: &'static str,
    client: (String, Ipv4Addr),
    server: (String, Ipv4Addr),
}

/// Request/response rates, transactions per second (median of the rounds).
#[derive(Debug, Clone, Copy)]
pub struct NetFigures {
    pub rounds: usize,
    pub seconds_per_round: f64,
    pub baseline: f64,
    pub same_node: f64,
    pub cross_node: f64,
    /// Node to node over the lab's underlay (two veths and a bridge), through the host stacks:
    /// the wire that cross-node pod traffic crosses too, which a plain veth pair lacks.
    pub underlay: f64,
}

pub fn run(seconds_per_round: f64, rounds: usize) -> anyhow::Result<NetFigures> {
    if let Some(reason) = crate::privileges::missing() {
        anyhow::bail!("the benchmark {reason}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut lab = Lab::new()?;
    let paths = runtime.block_on(build(&mut lab))?;
    let round = Duration::from_secs_f64(seconds_per_round);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..rounds {
        for (path, rates) in paths.iter().zip(&mut rates) {
            rates.push(request_response_rate(path, round)?);
        }
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    drop(runtime);
    drop(lab);
    Ok(NetFigures {
        rounds,
        seconds_per_round,
        baseline: medians[0],
        same_node: medians[1],
        cross_node: medians[2],
        underlay: medians[3],
    })
}

async fn build(lab: &mut Lab) -> anyhow::Result<Vec<Path2>> {
    // Baseline: two namespaces on a plain veth pair, no BPF, no node in between.
    let base_a = lab.add_pod_netns("base-a")?;
    let base_b = lab.add_pod_netns("base-b")?;
    lab::ip(&[
        "-n", &base_a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
        &base_b,
    ])?;
    let (ip_a, ip_b) = (
        Ipv4Addr::new(10, 123, 250, 1),
        Ipv4Addr::new(10, 123, 250, 2),
    );
    for (netns, ip) in [(&base_a, ip_a), (&base_b, ip_b)] {
        lab::ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        lab::ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    }

    let nodes = [lab.add_bare_node(MTU)?, lab.add_bare_node(MTU)?];
    let mut nets = Vec::new();
    for node in &nodes {
        nets.push(PodNetwork::new(config(lab, node)?).await?);
    }
    nets[0].set_remote_nodes(&[remote(&nodes[1])?]).await?;
    nets[1].set_remote_nodes(&[remote(&nodes[0])?]).await?;
    let mut pods = Vec::new();
    for (node, name) in [(0, "a1"), (0, "b1"), (1, "a2")] {
        let netns = lab.add_pod_netns(name)?;
        let iface = nets[node]
            .setup(&PodRequest {
                uid: format!("bench-{name}"),
                namespace: "bench".into(),
                name: name.into(),
                netns: Path::new("/run/netns").join(&netns),
            })
            .await?;
        pods.push((netns, iface.ip));
    }
    // The PodNetworks may go: the pinned maps and attached programs keep forwarding.
    drop(nets);
    Ok(vec![
        Path2 {
            name: "baseline: plain veth pair",
            client: (base_a, ip_a),
            server: (base_b, ip_b),
        },
        Path2 {
            name: "pod -> pod, same node (BPF)",
            client: pods[0].clone(),
            server: pods[1].clone(),
        },
        Path2 {
            name: "pod -> pod, cross node (BPF)",
            client: pods[0].clone(),
            server: pods[2].clone(),
        },
        Path2 {
            name: "node -> node over the underlay",
            client: (nodes[0].netns.clone(), nodes[0].underlay_ip),
            server: (nodes[1].netns.clone(), nodes[1].underlay_ip),
        },
    ])
}

fn config(lab: &Lab, node: &Node) -> anyhow::Result<NetworkConfig> {
    Ok(NetworkConfig {
        pod_cidr: Ipv4Net::new(node.pod_cidr.0, node.pod_cidr.1)?,
        node_ip: node.underlay_ip,
        underlay_iface: None,
        state_dir: lab.state_dir(&node.netns),
        pin_dir: lab.pin_dir(&node.netns),
        node_netns: Some(node.netns_path()),
        socket_lb_cgroup: None,
    })
}

fn remote(node: &Node) -> anyhow::Result<RemoteNode> {
    Ok(RemoteNode {
        name: node.netns.clone(),
        pod_cidr: Ipv4Net::new(node.pod_cidr.0, node.pod_cidr.1)?,
        node_ip: node.underlay_ip,
    })
}

/// Transactions per second over one TCP connection for `duration`.
fn request_response_rate(path: &Path2, duration: Duration) -> anyhow::Result<f64> {
    let (server_netns, server_ip) = &path.server;
    let listener = lab::run_in(server_netns, || {
        TcpListener::bind(SocketAddrV4::new(*server_ip, 0))
    })??;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        while conn.read(&mut byte)? == 1 {
            conn.write_all(&byte)?;
        }
        Ok(())
    });
    let mut conn = lab::run_in(&path.client.0, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })??;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let start = Instant::now();
    let mut transactions = 0u64;
    let mut byte = [0u8; 1];
    while start.elapsed() < duration {
        conn.write_all(&byte)?;
        conn.read_exact(&mut byte)
            .with_context(|| format!("{}: no response", path.name))?;
        transactions += 1;
    }
    let rate = transactions as f64 / start.elapsed().as_secs_f64();
    drop(conn);
    server.join().expect("echo server panicked")?;
    Ok(rate)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
