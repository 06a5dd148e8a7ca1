//! Request latency to a service on one node, three ways, on one lab:
//!
//! - *direct*: a client pod connects to the server pod's IP (the agent's `PodNetwork`, socket LB
//!   attached, so the hooks run and find no frontend);
//! - *ClusterIP*: the same client and server, through a service address that the socket LB
//!   translates at `connect()`, with 1, 1,000 or 10,000 frontends in the maps (written with
//!   [`ServiceMaps`] as the agent would, each filler with its own Maglev table);
//! - *iptables*: kube-proxy's way, in namespaces of its own: a client namespace routed through a
//!   namespace acting as the node, whose `nat` table (see [`kube_proxy`]) DNATs the service
//!   address to a server namespace, with the measured service last in `KUBE-SERVICES`.
//!
//! A request is a new TCP connection: connect, send 32 bytes, read 32 bytes back (the server
//! then closes, so TIME_WAIT stays on its side). For each size, many short rounds interleave
//! the paths (starting with a different one each round) so that bursts of load from other
//! processes hit every path alike; every request's time is kept.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apiary_ebpf_common::{Backend, MaglevTable, PROTO_TCP, SCOPE_SOCKET, ServiceKey, ServiceValue};
use apiary_node_agent::{
    dataplane::{self, ServiceMaps},
    network::{Ipv4Net, NetworkConfig, PodNetwork, PodRequest},
};

use super::kube_proxy::{self, ChainService};
use crate::lab::{self, Lab, nsenter};

const SERVER_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const MESSAGE: usize = 32;
const TIMEOUT: Duration = Duration::from_secs(5);
/// The measured service's address, in both data planes; fillers follow it.
const MEASURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The iptables side: client and server subnets on the iptables node.
const IPT_CLIENT_NET: [u8; 3] = [10, 123, 251];
const IPT_SERVER_NET: [u8; 3] = [10, 123, 252];
/// Pods of the iptables side are not masqueraded (kube-proxy's `--cluster-cidr`).
const IPT_CLUSTER_CIDR: &str = "10.123.0.0/16";

/// Latencies of one path at one size, sorted.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    /// Nearest-rank percentile `p` (0 < p ≤ 1).
    pub fn percentile(&self, p: f64) -> Duration {
        crate::bench_pods::percentile(&self.0, p)
    }

    pub fn median(&self) -> Duration {
        self.percentile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(0.99)
    }
}

/// The three paths with `services` services present.
#[derive(Clone, Debug)]
pub struct SizeFigures {
    pub services: usize,
    pub direct: Samples,
    pub cluster_ip: Samples,
    pub iptables: Samples,
    /// How long `iptables-restore` of the whole `nat` table took.
    pub iptables_restore: Duration,
    /// How long writing the socket LB's frontends (from the previous size) took.
    pub maps_write: Duration,
}

#[derive(Clone, Debug)]
pub struct LatencyFigures {
    pub rounds: usize,
    pub requests_per_round: usize,
    /// `iptables -V`, which names the backend (`nf_tables` or `legacy`).
    pub iptables_version: String,
    pub sizes: Vec<SizeFigures>,
}

/// What the paths connect to.
struct Paths {
    client_netns: String,
    server_ip: Ipv4Addr,
    ipt_client_netns: String,
    ipt_node_netns: String,
}

pub fn run(sizes: &[usize], rounds: usize, requests: usize) -> anyhow::Result<LatencyFigures> {
    if let Some(reason) = crate::privileges::missing() {
        bail!("the benchmark {reason}");
    }
    let iptables_version = iptables_version()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut lab = Lab::new()?;
    let (paths, pin_dir) = runtime.block_on(build(&mut lab))?;
    let mut maps = ServiceMaps::open(&pin_dir)?;
    program_measured(&mut maps, paths.server_ip)?;
    let mut frontends = 1;
    let mut figures = Vec::new();
    for &size in sizes {
        eprintln!("  {size} services: programming the maps and the iptables chain …");
        let started = Instant::now();
        program_frontends(&mut maps, frontends, size)?;
        let maps_write = started.elapsed();
        frontends = frontends.max(size);
        let started = Instant::now();
        load_chain(&paths.ipt_node_netns, size)?;
        let iptables_restore = started.elapsed();
        let mut all = [Vec::new(), Vec::new(), Vec::new()];
        // An untimed round first: ARP, caches, the first conntrack entries.
        for path in 0..3 {
            measure(&paths, path, 200)?;
        }
        for round in 0..rounds {
            for i in 0..3 {
                let path = (round + i) % 3;
                all[path].extend(measure(&paths, path, requests)?);
            }
        }
        let [direct, cluster_ip, iptables] = all.map(|mut v| {
            v.sort();
            Samples(v)
        });
        eprintln!(
            "  {size} services: direct {:?}, ClusterIP {:?}, iptables {:?} (medians)",
            direct.median(),
            cluster_ip.median(),
            iptables.median()
        );
        figures.push(SizeFigures {
            services: size,
            direct,
            cluster_ip,
            iptables,
            iptables_restore,
            maps_write,
        });
    }
    drop(maps);
    drop(runtime);
    drop(lab);
    Ok(LatencyFigures {
        rounds,
        requests_per_round: requests,
        iptables_version,
        sizes: figures,
    })
}

fn iptables_version() -> anyhow::Result<String> {
    let out = std::process::Command::new("iptables")
        .arg("-V")
        .output()
        .context("running iptables -V (apt-get install iptables)")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn build(lab: &mut Lab) -> anyhow::Result<(Paths, std::path::PathBuf)> {
    // The socket LB side: one node of the agent's own pod network, a client and a server pod.
    let node = lab.add_bare_node(1500)?;
    let (addr, len) = node.pod_cidr;
    let cgroup = dataplane::cgroup2_root().context("no cgroup v2 mount for the socket LB")?;
    let pin_dir = lab.pin_dir(&node.netns);
    let net = PodNetwork::new(NetworkConfig {
        pod_cidr: Ipv4Net::new(addr, len)?,
        node_ip: node.underlay_ip,
        underlay_iface: None,
        state_dir: lab.state_dir(&node.netns),
        pin_dir: pin_dir.clone(),
        node_netns: Some(node.netns_path()),
        socket_lb_cgroup: Some(cgroup),
    })
    .await?;
    let mut pods = Vec::new();
    for name in ["server", "client"] {
        let netns = lab.add_pod_netns(name)?;
        let ip = net
            .setup(&PodRequest {
                uid: format!("uid-{}-{name}", lab.prefix()),
                namespace: "bench".into(),
                name: name.into(),
                netns: Path::new("/run/netns").join(&netns),
            })
            .await?
            .ip;
        pods.push((netns, ip));
    }
    // The pinned maps and attached programs keep working without the PodNetwork.
    drop(net);
    let (client_netns, _) = pods.pop().expect("client");
    let (server_netns, server_ip) = pods.pop().expect("server");
    serve(&server_netns)?;

    // The iptables side: client -- node -- server, routed by the node, no BPF.
    let ipt_node = lab.add_pod_netns("iptnode")?;
    let ipt_client = lab.add_pod_netns("iptclient")?;
    let ipt_server = lab.add_pod_netns("iptserver")?;
    let [a, b, c] = IPT_CLIENT_NET;
    let [d, e, f] = IPT_SERVER_NET;
    for (host_side, pod, net) in [
        ("c0", &ipt_client, [a, b, c]),
        ("s0", &ipt_server, [d, e, f]),
    ] {
        let [x, y, z] = net;
        lab::ip(&[
            "-n", &ipt_node, "link", "add", host_side, "type", "veth", "peer", "name", "eth0",
            "netns", pod,
        ])?;
        let gateway = format!("{x}.{y}.{z}.1");
        lab::ip(&[
            "-n",
            &ipt_node,
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            host_side,
        ])?;
        lab::ip(&["-n", &ipt_node, "link", "set", host_side, "up"])?;
        lab::ip(&[
            "-n",
            pod,
            "addr",
            "add",
            &format!("{x}.{y}.{z}.2/24"),
            "dev",
            "eth0",
        ])?;
        lab::ip(&["-n", pod, "link", "set", "eth0", "up"])?;
    }
    // No default routes: the client reaches service addresses and the server's subnet through
    // the node, the server answers the client's subnet through it; nothing else.
    lab::ip(&[
        "-n",
        &ipt_client,
        "route",
        "add",
        "10.96.0.0/12",
        "via",
        &format!("{a}.{b}.{c}.1"),
    ])?;
    lab::ip(&[
        "-n",
        &ipt_client,
        "route",
        "add",
        &format!("{d}.{e}.{f}.0/24"),
        "via",
        &format!("{a}.{b}.{c}.1"),
    ])?;
    lab::ip(&[
        "-n",
        &ipt_server,
        "route",
        "add",
        &format!("{a}.{b}.{c}.0/24"),
        "via",
        &format!("{d}.{e}.{f}.1"),
    ])?;
    lab::exec(
        &ipt_node,
        &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
    )?;
    serve(&ipt_server)?;
    Ok((
        Paths {
            client_netns,
            server_ip,
            ipt_client_netns: ipt_client,
            ipt_node_netns: ipt_node,
        },
        pin_dir,
    ))
}

/// A server in `netns` on [`SERVER_PORT`]: reads a request, answers, closes.
fn serve(netns: &str) -> anyhow::Result<()> {
    let listener = lab::run_in(netns, || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT))
    })?
    .with_context(|| format!("listening in {netns}"))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; MESSAGE];
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_nodelay(true);
            if conn.read_exact(&mut buf).is_ok() {
                let _ = conn.write_all(&buf);
            }
        }
    });
    Ok(())
}

/// Filler `i` (≥ 1) of the maps and of the chain: addresses after the measured service's.
fn filler_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(MEASURED_VIP) + i as u32)
}

fn socket_key(vip: Ipv4Addr) -> ServiceKey {
    ServiceKey {
        addr: vip.octets(),
        port_be: SERVICE_PORT.to_be(),
        protocol: PROTO_TCP,
        scope: SCOPE_SOCKET,
    }
}

/// Makes the maps hold frontends `0..to` (0 the measured one, the others fillers), given that
/// `0..from` are there already. Every frontend has one backend, the server pod, and a table of
/// its own, as the agent writes them.
fn program_frontends(maps: &mut ServiceMaps, from: usize, to: usize) -> anyhow::Result<()> {
    // Backend 1, the server pod, is written with frontend 0.
    for i in from..to {
        if i == 0 {
            continue;
        }
        let id = i as u32 + 1;
        let value = ServiceValue {
            id,
            backend_count: 1,
            flags: 0,
            affinity_timeout_secs: 0,
        };
        maps.upsert_frontend(socket_key(filler_vip(i)), value, Some(&one_backend_table()))?;
    }
    Ok(())
}

fn one_backend_table() -> MaglevTable {
    MaglevTable {
        backend_ids: [1; apiary_ebpf_common::MAGLEV_TABLE_SIZE],
    }
}

/// Writes the measured frontend, pointing at `server`.
fn program_measured(maps: &mut ServiceMaps, server: Ipv4Addr) -> anyhow::Result<()> {
    maps.insert_backend(
        1,
        Backend {
            addr: server.octets(),
            port_be: SERVER_PORT.to_be(),
            protocol: PROTO_TCP,
            flags: 0,
        },
    )?;
    let value = ServiceValue {
        id: 1,
        backend_count: 1,
        flags: 0,
        affinity_timeout_secs: 0,
    };
    maps.upsert_frontend(socket_key(MEASURED_VIP), value, Some(&one_backend_table()))?;
    Ok(())
}

/// Replaces the iptables node's `nat` table with `size` services, the measured one last.
fn load_chain(netns: &str, size: usize) -> anyhow::Result<()> {
    let [d, e, f] = IPT_SERVER_NET;
    let mut services: Vec<ChainService> = (1..size)
        .map(|i| ChainService {
            name: format!("bench/filler-{i}:http"),
            vip: filler_vip(i),
            port: SERVICE_PORT,
            // Two endpoints each, as a small Deployment has; never reached.
            endpoints: (0..2)
                .map(|k| {
                    (
                        Ipv4Addr::new(d, e, f, 10 + ((2 * i + k) % 240) as u8),
                        SERVER_PORT,
                    )
                })
                .collect(),
        })
        .collect();
    services.push(ChainService {
        name: "bench/measured:http".into(),
        vip: MEASURED_VIP,
        port: SERVICE_PORT,
        endpoints: vec![(Ipv4Addr::new(d, e, f, 2), SERVER_PORT)],
    });
    let input = kube_proxy::restore_input(&services, IPT_CLUSTER_CIDR);
    let mut child = nsenter(netns, "iptables-restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore of {size} services failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `requests` requests on path 0 (direct), 1 (ClusterIP) or 2 (iptables); each one's time.
fn measure(paths: &Paths, path: usize, requests: usize) -> anyhow::Result<Vec<Duration>> {
    let (netns, target) = match path {
        0 => (
            &paths.client_netns,
            SocketAddr::from((paths.server_ip, SERVER_PORT)),
        ),
        1 => (
            &paths.client_netns,
            SocketAddr::from((MEASURED_VIP, SERVICE_PORT)),
        ),
        _ => (
            &paths.ipt_client_netns,
            SocketAddr::from((MEASURED_VIP, SERVICE_PORT)),
        ),
    };
    let what = ["direct", "ClusterIP", "iptables"][path.min(2)];
    lab::run_in(netns, || -> anyhow::Result<Vec<Duration>> {
        let request = [7u8; MESSAGE];
        let mut response = [0u8; MESSAGE];
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            let mut conn = TcpStream::connect_timeout(&target, TIMEOUT)
                .with_context(|| format!("{what}: connecting to {target}"))?;
            conn.set_read_timeout(Some(TIMEOUT))?;
            conn.write_all(&request)?;
            conn.read_exact(&mut response)
                .with_context(|| format!("{what}: no response from {target}"))?;
            times.push(started.elapsed());
            anyhow::ensure!(response == request, "{what}: wrong response");
        }
        Ok(times)
    })?
}
