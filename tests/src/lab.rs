//! A lab of network namespaces acting as nodes and pods on one machine.
//!
//! Addresses come from one range, [`LAB_RANGE`] (`10.123.0.0/16`):
//! - the underlay: `10.123.0.0/24`, node *k* at `10.123.0.k`, all nodes' `eth0` on one bridge
//!   (`ul0`) in a namespace of its own;
//! - node *k*'s pods: `10.123.k.0/24`, the node's pod bridge `pods0` at `10.123.k.1`, its *j*-th
//!   pod at `10.123.k.(j+1)`, whose `eth0` pairs with `lxcNNNN` on the node.
//!
//! - *bare* nodes ([`Lab::add_bare_node`]) have no pod bridge: their pods are wired by the agent's
//!   `PodNetwork`, from the pod CIDR `10.123.(128+k).0/24`, into empty namespaces made with
//!   [`Lab::add_pod_netns`].
//!
//! No lab namespace has a route beyond the lab: the underlay namespace has no uplink, and no
//! namespace gets a default route. Names are unique per lab (`ap<pid>x<n>-…`); dropping the [`Lab`]
//! deletes every namespace and pinned map it made, also while unwinding from a panic, and a new lab
//! sweeps up after labs whose process died without dropping theirs.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// The one address range every lab uses.
pub const LAB_RANGE: &str = "10.123.0.0/16";

/// Where labs pin their BPF maps.
const LAB_BPFFS: &str = "/sys/fs/bpf/apiary-lab";
const NETNS_DIR: &str = "/run/netns";
/// The MAC of the underlay bridge `ul0` (locally administered, after its 10.123.0.254), set at
/// creation so that it never follows the ports' addresses. Node *k*'s `pods0` gets
/// `02:00:0a:7b:k:01` the same way.
const UNDERLAY_BRIDGE_MAC: &str = "02:00:0a:7b:00:fe";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces torn down together on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// In creation order; deleted in reverse.
    namespaces: Vec<String>,
    underlay: Option<String>,
    nodes: u8,
    pods: u16,
}

/// A namespace acting as a node.
#[derive(Clone, Debug)]
pub struct Node {
    pub netns: String,
    /// 1-based; the third octet of the node's pod CIDR.
    pub index: u8,
    pub underlay_ip: Ipv4Addr,
    /// The node's pod bridge address, the first of its pod CIDR.
    pub pod_gateway: Ipv4Addr,
    /// The node's pod CIDR (address, prefix length).
    pub pod_cidr: (Ipv4Addr, u8),
    pods: u8,
}

impl Node {
    /// The node's network namespace as a path, as `PodNetwork` takes it.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
}

/// A namespace acting as a pod, wired to its node by a veth pair.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The node-side end of the pod's veth, in the node's namespace.
    pub host_veth: String,
    pub node_netns: String,
}

impl Lab {
    /// Starts an empty lab, first removing what labs of dead processes left behind.
    pub fn new() -> anyhow::Result<Self> {
        sweep_stale_labs();
        let prefix = format!(
            "ap{}x{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Self {
            prefix,
            namespaces: Vec::new(),
            underlay: None,
            nodes: 0,
            pods: 0,
        })
    }

    /// The unique prefix of this lab's names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn add_netns(&mut self, suffix: &str) -> anyhow::Result<String> {
        let name = format!("{}-{suffix}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        // IPv6 off: no router solicitations or DAD probes, so tests can count packets exactly.
        sysctl(&name, "net.ipv6.conf.all.disable_ipv6", "1")?;
        sysctl(&name, "net.ipv6.conf.default.disable_ipv6", "1")?;
        Ok(name)
    }

    fn underlay(&mut self) -> anyhow::Result<String> {
        if let Some(ul) = &self.underlay {
            return Ok(ul.clone());
        }
        let ul = self.add_netns("ul")?;
        // A bridge without an address of its own takes its lowest port's MAC, so a machine
        // added later (`add_client`) could change it under the neighbour caches of the nodes
        // talking to an address on the bridge (the control plane's): tens of seconds of loss.
        ip(&[
            "-n",
            &ul,
            "link",
            "add",
            "ul0",
            "address",
            UNDERLAY_BRIDGE_MAC,
            "type",
            "bridge",
            // No multicast snooping: the bridge would join 224.0.0.106 and send IGMP reports
            // (see `add_node`).
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &ul, "link", "set", "ul0", "up"])?;
        self.underlay = Some(ul.clone());
        Ok(ul)
    }

    /// The underlay namespace (created on first use): its bridge `ul0` joins every node's
    /// `eth0`.
    pub fn underlay_netns(&mut self) -> anyhow::Result<String> {
        self.underlay()
    }

    /// Adds a node: its `eth0` on the underlay, and an empty pod bridge.
    pub fn add_node(&mut self) -> anyhow::Result<Node> {
        let node = self.add_underlay_node()?;
        // A MAC of its own, for the reason `ul0` has one: pods added later must not change it.
        let mac = format!("02:00:0a:7b:{:02x}:01", node.index);
        ip(&[
            "-n",
            &node.netns,
            "link",
            "add",
            "pods0",
            "address",
            &mac,
            "type",
            "bridge",
            // Without it the bridge joins 224.0.0.106 and its IGMPv3 reports (54-byte frames,
            // sent at once and again within a second) reach every pod: a stray packet in the
            // pod counters of a test that runs while the machine is busy.
            "mcast_snooping",
            "0",
        ])?;
        ip(&[
            "-n",
            &node.netns,
            "addr",
            "add",
            &format!("{}/24", node.pod_gateway),
            "dev",
            "pods0",
        ])?;
        ip(&["-n", &node.netns, "link", "set", "pods0", "up"])?;
        Ok(node)
    }

    /// Adds a node without a pod bridge, for the agent's `PodNetwork` to wire its pods: `eth0` on
    /// the underlay with `mtu`, pod CIDR `10.123.(128+k).0/24`, and `net.ipv4.ip_forward=0`
    /// (so that pod traffic that crosses the node does so in BPF or not at all).
    pub fn add_bare_node(&mut self, mtu: u32) -> anyhow::Result<Node> {
        let mut node = self.add_underlay_node()?;
        if node.index > 127 {
            bail!("a lab holds at most 127 bare nodes");
        }
        let third = 128 + node.index;
        node.pod_cidr = (Ipv4Addr::new(10, 123, third, 0), 24);
        node.pod_gateway = Ipv4Addr::new(10, 123, third, 1);
        ip(&[
            "-n",
            &node.netns,
            "link",
            "set",
            "eth0",
            "mtu",
            &mtu.to_string(),
        ])?;
        let ul = self.underlay()?;
        let port = format!("n{}", node.index);
        ip(&["-n", &ul, "link", "set", &port, "mtu", &mtu.to_string()])?;
        sysctl(&node.netns, "net.ipv4.ip_forward", "0")?;
        Ok(node)
    }

    /// An empty namespace for a pod (as the container runtime would make it), removed with the
    /// lab; returns its name.
    pub fn add_pod_netns(&mut self, name: &str) -> anyhow::Result<String> {
        self.add_netns(&format!("pod-{name}"))
    }

    /// A directory for state files (e.g. the IPAM database), removed with the lab.
    pub fn state_dir(&self, name: &str) -> PathBuf {
        std::env::temp_dir()
            .join("apiary-lab")
            .join(&self.prefix)
            .join(name)
    }

    /// Adds a machine on the underlay that is not a node (a client outside the cluster): `eth0`
    /// with the next underlay address, nothing else.
    pub fn add_client(&mut self) -> anyhow::Result<Node> {
        self.add_underlay_node()
    }

    fn add_underlay_node(&mut self) -> anyhow::Result<Node> {
        let ul = self.underlay()?;
        if self.nodes == 250 {
            bail!("a lab holds at most 250 nodes");
        }
        self.nodes += 1;
        let index = self.nodes;
        let netns = self.add_netns(&format!("node{index}"))?;
        let underlay_ip = Ipv4Addr::new(10, 123, 0, index);
        let pod_gateway = Ipv4Addr::new(10, 123, index, 1);
        let ul_port = format!("n{index}");
        ip(&[
            "-n", &netns, "link", "add", "eth0", "type", "veth", "peer", "name", &ul_port, "netns",
            &ul,
        ])?;
        ip(&["-n", &ul, "link", "set", &ul_port, "master", "ul0", "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{underlay_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        Ok(Node {
            netns,
            index,
            underlay_ip,
            pod_gateway,
            pod_cidr: (Ipv4Addr::new(10, 123, index, 0), 24),
            pods: 0,
        })
    }

    /// Adds a pod on `node`: its `eth0` paired with an `lxcNNNN` port of the node's pod bridge.
    pub fn add_pod(&mut self, node: &mut Node, name: &str) -> anyhow::Result<Pod> {
        if node.pods == 250 {
            bail!("a lab node holds at most 250 pods");
        }
        node.pods += 1;
        self.pods += 1;
        let netns = self.add_netns(&format!("pod-{name}"))?;
        let ip_addr = Ipv4Addr::new(10, 123, node.index, node.pods + 1);
        let host_veth = format!("lxc{:04}", self.pods);
        ip(&[
            "-n",
            &node.netns,
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ])?;
        ip(&[
            "-n",
            &node.netns,
            "link",
            "set",
            &host_veth,
            "master",
            "pods0",
            "up",
        ])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        let mac = link_mac(&netns, "eth0")?;
        Ok(Pod {
            name: name.to_owned(),
            netns,
            ip: ip_addr,
            mac,
            host_veth,
            node_netns: node.netns.clone(),
        })
    }

    /// Fills both pods' neighbour tables so that no ARP crosses their veths.
    pub fn pin_neighbors(&self, a: &Pod, b: &Pod) -> anyhow::Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            ip(&[
                "-n",
                &from.netns,
                "neigh",
                "replace",
                &to.ip.to_string(),
                "lladdr",
                &to.mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    /// A bpffs directory for this lab's pinned maps, removed with the lab.
    pub fn pin_dir(&self, name: &str) -> PathBuf {
        Path::new(LAB_BPFFS).join(&self.prefix).join(name)
    }

    /// Every namespace of the lab, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.namespaces.iter().rev() {
            // A test may have deleted one itself (as a container runtime would).
            if !Path::new(NETNS_DIR).join(name).exists() {
                continue;
            }
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("lab teardown: {e:#}");
            }
        }
        let state = std::env::temp_dir().join("apiary-lab").join(&self.prefix);
        if let Err(e) = std::fs::remove_dir_all(&state)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("lab teardown: removing {}: {e}", state.display());
        }
        let pins = Path::new(LAB_BPFFS).join(&self.prefix);
        if let Err(e) = std::fs::remove_dir_all(&pins)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("lab teardown: removing {}: {e}", pins.display());
        }
    }
}

/// Runs `work` inside the namespace `netns` of a lab.
pub fn run_in<T: Send>(netns: &str, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    Ok(apiary_node_agent::netns::run_in(
        &Path::new(NETNS_DIR).join(netns),
        work,
    )?)
}

/// Moves the calling thread into `netns` for good (threads and processes it starts from then on
/// are born there): for a process whose whole work is inside the lab.
pub fn enter(netns: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let path = Path::new(NETNS_DIR).join(netns);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: `file` is an open namespace file; setns only changes this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering {}", path.display()));
    }
    Ok(())
}

/// A UDP socket bound to `addr` inside `netns`. A socket stays in the namespace it was made in, so
/// the caller can use it from any thread.
pub fn udp_socket(netns: &str, addr: SocketAddrV4) -> anyhow::Result<UdpSocket> {
    run_in(netns, || UdpSocket::bind(addr))?.with_context(|| format!("binding {addr} in {netns}"))
}

/// `program` to run inside network namespace `netns` only (`nsenter --net`): the machine's
/// mounts, cgroups and bpffs stay the host's, unlike `ip netns exec`, which remounts `/sys`.
pub fn nsenter(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={NETNS_DIR}/{netns}"))
        .arg(program);
    command
}

/// Runs a command inside `netns` and returns its stdout.
pub fn exec(netns: &str, argv: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["netns", "exec", netns];
    args.extend_from_slice(argv);
    ip(&args)
}

/// Runs `ip ARGS`; the error carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads a sysctl inside `netns`, e.g. `net.ipv4.ip_forward`.
pub fn read_sysctl(netns: &str, key: &str) -> anyhow::Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = run_in(netns, || std::fs::read_to_string(&path))?
        .with_context(|| format!("reading {path} in {netns}"))?;
    Ok(value.trim().to_owned())
}

fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    exec(netns, &["sh", "-c", &format!("echo {value} > {path}")]).map(drop)
}

/// The frames `dev` in `netns` has sent and received so far: `(tx_packets, rx_packets)`.
pub fn link_packets(netns: &str, dev: &str) -> anyhow::Result<(u64, u64)> {
    let json = ip(&["-n", netns, "-j", "-s", "link", "show", "dev", dev])?;
    let links: serde_json::Value = serde_json::from_str(&json).context("ip -j -s link show")?;
    let stats = &links[0]["stats64"];
    let count = |dir: &str| {
        stats[dir]["packets"]
            .as_u64()
            .with_context(|| format!("no {dir} packet count for {dev} in {netns}: {json}"))
    };
    Ok((count("tx")?, count("rx")?))
}

/// The IPv4 multicast groups `dev` in `netns` has joined (`ip maddr`).
pub fn ipv4_groups(netns: &str, dev: &str) -> anyhow::Result<Vec<String>> {
    let json = ip(&["-n", netns, "-j", "maddr", "show", "dev", dev])?;
    let links: serde_json::Value = serde_json::from_str(&json).context("ip -j maddr show")?;
    Ok(links[0]["maddr"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["family"] == "inet")
        .filter_map(|m| Some(m["address"].as_str()?.to_owned()))
        .collect())
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {text}: not 6 bytes"))
}

impl Pod {
    /// The pod as the data plane's `ENDPOINTS` holds it (what the agent's pod network writes):
    /// the programs only let a pod send as its own address and MAC from its own veth.
    pub fn endpoint(&self) -> anyhow::Result<apiary_ebpf_common::Endpoint> {
        let host_ifindex = run_in(&self.node_netns, || {
            apiary_node_agent::dataplane::ifindex(&self.host_veth)
        })??;
        Ok(apiary_ebpf_common::Endpoint {
            host_ifindex,
            flags: 0,
            pod_mac: parse_mac(&self.mac)?,
            host_mac: parse_mac(&link_mac(&self.node_netns, &self.host_veth)?)?,
        })
    }
}

fn link_mac(netns: &str, dev: &str) -> anyhow::Result<String> {
    let json = ip(&["-n", netns, "-j", "link", "show", "dev", dev])?;
    let links: serde_json::Value = serde_json::from_str(&json).context("ip -j link show")?;
    links[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no MAC address for {dev} in {netns}: {json}"))
}

/// Deletes namespaces and pins of labs whose process is gone (killed before its drop ran).
fn sweep_stale_labs() {
    let owner_is_dead = |name: &str| {
        name.strip_prefix("ap")
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_is_dead(&name) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir().join("apiary-lab")) {
        for entry in entries.flatten() {
            if owner_is_dead(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(LAB_BPFFS) {
        for entry in entries.flatten() {
            if owner_is_dead(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The TC programs on `dev` in `netns` as `bpftool net show` lists them: `(kind, name)`, e.g.
/// `("clsact/ingress", "from_pod")`.
pub fn tc_programs(netns: &str, dev: &str) -> anyhow::Result<Vec<(String, String)>> {
    let json = exec(netns, &["bpftool", "-j", "net", "show", "dev", dev])?;
    let shown: serde_json::Value = serde_json::from_str(&json).context("bpftool -j net show")?;
    let programs = shown[0]["tc"]
        .as_array()
        .with_context(|| format!("no tc section in {json}"))?
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap_or_default().to_owned(),
                p["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    Ok(programs)
}
