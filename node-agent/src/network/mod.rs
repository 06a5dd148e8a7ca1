//! Pod networking: an address per pod ([`ipam`]), a veth pair into its namespace ([`netlink`]),
//! and the eBPF data plane forwarding between pods — same node with `bpf_redirect_peer`, other
//! nodes with `bpf_redirect_neigh` on the underlay, natively routed (no encapsulation, no
//! iptables).
//!
//! Inside a pod, `eth0` holds `IP/32` and a default route via a link-local gateway
//! ([`POD_GATEWAY`]) whose permanent neighbour entry is the host-side veth's MAC, as Cilium does:
//! every frame the pod sends lands on the host veth's TC ingress (`from_pod`).
//!
//! The node itself never forwards: `from_pod` and `from_netdev` move pod traffic between devices,
//! and what reaches the host stack is addressed to the node. So `net.ipv4.ip_forward` stays as it
//! is; traffic from pods to addresses outside the cluster (which would need forwarding and
//! masquerading) is not supported yet.

pub mod ipam;
pub mod netlink;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use apiary_ebpf_common::{Endpoint, PodTraffic};
pub use ipnet::Ipv4Net;
use sha2::{Digest as _, Sha256};

use crate::{
    dataplane::{self, Dataplane},
    netns,
};
use ipam::Ipam;
use netlink::{Link, Netlink};

/// The pods' default gateway: link-local, never on the wire (the pod's neighbour entry for it is
/// permanent), identical on every node.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The name of the pod's interface, inside its namespace.
pub const POD_IFACE: &str = "eth0";

/// The IPAM database file in [`NetworkConfig::state_dir`].
pub const IPAM_DB: &str = "ipam.redb";

/// Errors of the pod network. `InvalidInput` is the caller's bug; `Ipam(Exhausted)` clears when
/// pods go away; netlink and data-plane errors on a pod whose namespace vanished are worth a
/// retry after teardown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("{field}: {reason}")]
    InvalidRemoteNode { field: String, reason: String },
    #[error("no interface holds node_ip {0}; set underlay_iface")]
    NoUnderlay(Ipv4Addr),
    #[error("underlay_iface {0}: no such interface in the node's namespace")]
    UnderlayMissing(String),
    #[error("pod {uid}: {what}")]
    Pod { uid: String, what: String },
    #[error(transparent)]
    Ipam(#[from] ipam::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error(transparent)]
    Dataplane(#[from] dataplane::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("state_dir {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a blocking task of the pod network panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the pod network of one node needs to know.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// This node's pod CIDR: pod addresses come from it.
    pub pod_cidr: Ipv4Net,
    /// This node's address on the underlay: other nodes send its pods' traffic there.
    pub node_ip: Ipv4Addr,
    /// The underlay device; `None`: the interface holding `node_ip`.
    pub underlay_iface: Option<String>,
    /// Where the IPAM database lives.
    pub state_dir: PathBuf,
    /// The bpffs directory of the pinned maps.
    pub pin_dir: PathBuf,
    /// The node's network namespace; `None`: the agent's own. Labs run several nodes in one
    /// process.
    pub node_netns: Option<PathBuf>,
    /// The cgroup v2 directory the socket load-balancing programs attach to (the hierarchy's root
    /// serves every socket); `None`: no socket load balancing (pod plumbing only).
    pub socket_lb_cgroup: Option<PathBuf>,
}

/// A pod to wire up.
#[derive(Clone, Debug)]
pub struct PodRequest {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's (bind-mounted) network namespace, created by the runtime.
    pub netns: PathBuf,
}

/// What [`PodNetwork::setup`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    pub ip: Ipv4Addr,
    /// The node-side end of the pod's veth.
    pub host_veth: String,
    /// The MAC of the pod's `eth0`, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub mtu: u32,
}

/// Another node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub node_ip: Ipv4Addr,
}

/// The pod network of one node. Cheap to share (`Arc` inside); changes to one pod, and
/// node-wide changes, are serialised.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: NetworkConfig,
    underlay: Link,
    ipam: Ipam,
    dataplane: Mutex<Dataplane>,
    node: Netlink,
    /// Node-wide changes (remote nodes, resync) hold it for writing; pod setups and teardowns
    /// for reading, plus their own pod's lock in `pod_changes`. So pods are wired up side by side
    /// (each touches only its own veth, routes, lease and map entries; leases and maps have locks
    /// of their own) while one pod's steps, and anything node-wide, stay one at a time.
    changes: tokio::sync::RwLock<()>,
    /// A lock per pod uid with a setup or teardown under way or waiting.
    pod_changes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bounds the pod changes under way at once: a few overlap one pod's waits (the lease's
    /// fsync, netlink round trips) with another's work; many at once only contend for the
    /// kernel's RTNL lock and the CPUs.
    pod_slots: tokio::sync::Semaphore,
}

/// Pod changes under way at once (see [`Inner::pod_slots`]).
const POD_CHANGES_AT_ONCE: usize = 4;

/// Holds the right to change one pod's network (see [`Inner::changes`]).
struct PodChange<'a> {
    inner: &'a Inner,
    uid: String,
    _slot: tokio::sync::SemaphorePermit<'a>,
    _pod: tokio::sync::OwnedMutexGuard<()>,
    _node: tokio::sync::RwLockReadGuard<'a, ()>,
}

impl Inner {
    async fn change_pod(&self, uid: &str) -> PodChange<'_> {
        let node = self.changes.read().await;
        let lock = Arc::clone(
            self.pod_changes
                .lock()
                .expect("pod locks")
                .entry(uid.to_owned())
                .or_default(),
        );
        let pod = lock.lock_owned().await;
        PodChange {
            inner: self,
            uid: uid.to_owned(),
            _slot: self.pod_slots.acquire().await.expect("never closed"),
            _pod: pod,
            _node: node,
        }
    }
}

impl Drop for PodChange<'_> {
    fn drop(&mut self) {
        let mut locks = self.inner.pod_changes.lock().expect("pod locks");
        // Held by the map and this guard only: nobody waits for it, so it can go.
        if locks
            .get(&self.uid)
            .is_some_and(|l| Arc::strong_count(l) == 2)
        {
            locks.remove(&self.uid);
        }
    }
}

/// The host-side veth of pod `uid`: `lxc` and 12 hex digits of the uid's SHA-256 (15 bytes,
/// `IFNAMSIZ - 1`).
pub fn host_veth_name(uid: &str) -> String {
    format!("lxc{}", &hash_of(uid)[..12])
}

/// The temporary name of the pod end while it is still in the node's namespace.
fn peer_temp_name(uid: &str) -> String {
    format!("tmp{}", &hash_of(uid)[..12])
}

fn hash_of(uid: &str) -> String {
    hex::encode(Sha256::digest(uid.as_bytes()))
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl PodNetwork {
    /// This node's pod CIDR.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.inner.config.pod_cidr
    }

    /// Loads the data plane (reusing pinned maps), attaches the underlay program, opens the IPAM
    /// database and re-syncs what pods it knows, without flushing anything.
    pub async fn new(config: NetworkConfig) -> Result<Self> {
        validate(&config)?;
        std::fs::create_dir_all(&config.state_dir).map_err(|source| Error::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let node = Netlink::connect(config.node_netns.as_deref())?;
        let underlay = match &config.underlay_iface {
            Some(name) => node
                .link(name)
                .await?
                .ok_or_else(|| Error::UnderlayMissing(name.clone()))?,
            None => node
                .link_with_address(config.node_ip)
                .await?
                .ok_or(Error::NoUnderlay(config.node_ip))?,
        };
        let (ipam, dataplane) = {
            let config = config.clone();
            let underlay = underlay.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let ipam = Ipam::open(&config.state_dir.join(IPAM_DB), config.pod_cidr)?;
                let dataplane = netns::run_in_optional(config.node_netns.as_deref(), || {
                    let mut dataplane = Dataplane::load(&config.pin_dir)?;
                    dataplane
                        .node_config()?
                        .set(apiary_ebpf_common::NodeConfig {
                            underlay_ifindex: underlay.index,
                            node_ip: config.node_ip.octets(),
                        })?;
                    dataplane.attach_underlay(&underlay.name)?;
                    // The node's own sockets load-balance too (kube-proxy serves the host).
                    let cookie = dataplane::netns_cookie()?;
                    dataplane.local_netns()?.register(cookie, None)?;
                    dataplane.node_addrs()?.set(&[config.node_ip])?;
                    dataplane
                        .remote_nodes()?
                        .upsert(config.pod_cidr.trunc(), config.node_ip)?;
                    if let Some(cgroup) = &config.socket_lb_cgroup {
                        dataplane.attach_socket_lb(cgroup)?;
                    }
                    Ok::<_, dataplane::Error>(dataplane)
                })??;
                Ok((ipam, dataplane))
            })
            .await??
        };
        let network = Self {
            inner: Arc::new(Inner {
                config,
                underlay,
                ipam,
                dataplane: Mutex::new(dataplane),
                node,
                changes: tokio::sync::RwLock::new(()),
                pod_changes: Mutex::new(HashMap::new()),
                pod_slots: tokio::sync::Semaphore::new(POD_CHANGES_AT_ONCE),
            }),
        };
        network.resync().await?;
        Ok(network)
    }

    /// The underlay device's name, ifindex and MTU (the pods' MTU).
    pub fn underlay(&self) -> (&str, u32, u32) {
        let link = &self.inner.underlay;
        (&link.name, link.index, link.mtu)
    }

    /// Wires up pod `pod.uid`: its address, its veth pair, routes and neighbour entries on both
    /// sides, and its data-plane entries. Calling it again for the same uid repairs and returns the
    /// same interface.
    pub async fn setup(&self, pod: &PodRequest) -> Result<PodInterface> {
        if pod.uid.is_empty() {
            return Err(invalid("uid", "must not be empty"));
        }
        if !pod.netns.exists() {
            return Err(invalid(
                "netns",
                format!("{} does not exist", pod.netns.display()),
            ));
        }
        let _change = self.inner.change_pod(&pod.uid).await;
        let ip = self
            .blocking({
                let uid = pod.uid.clone();
                move |inner| Ok(inner.ipam.allocate(&uid)?)
            })
            .await?;
        let mtu = self.inner.underlay.mtu;
        let host_name = host_veth_name(&pod.uid);
        let temp_name = peer_temp_name(&pod.uid);
        let node = &self.inner.node;
        let pod_err = |what: String| Error::Pod {
            uid: pod.uid.clone(),
            what,
        };

        // The veth pair, its pod end created as eth0 right in the pod's namespace. An older
        // agent created it here and moved it: if it stopped before the move, the temporary end
        // is still here.
        let netns = File::open(&pod.netns)
            .map_err(|e| invalid("netns", format!("cannot open {}: {e}", pod.netns.display())))?;
        if node.link(&host_name).await?.is_none() {
            node.add_veth_into(&host_name, POD_IFACE, netns.as_raw_fd(), mtu)
                .await?;
        } else if node.link(&temp_name).await?.is_some() {
            node.move_to_netns(&temp_name, netns.as_raw_fd()).await?;
        }
        drop(netns);
        let host = node
            .link(&host_name)
            .await?
            .ok_or_else(|| pod_err(format!("{host_name} vanished during setup")))?;

        // Inside the pod: eth0 with IP/32, the gateway's permanent neighbour, the default route.
        let in_pod = Netlink::connect(Some(&pod.netns))?;
        let eth0 = match in_pod.link(&temp_name).await? {
            Some(link) => {
                in_pod.rename(link.index, POD_IFACE).await?;
                link
            }
            None => in_pod.link(POD_IFACE).await?.ok_or_else(|| {
                pod_err(format!(
                    "{host_name} exists but {} has no {POD_IFACE}",
                    pod.netns.display()
                ))
            })?,
        };
        in_pod.set_up(eth0.index, Some(mtu)).await?;
        if let Some(lo) = in_pod.link("lo").await? {
            in_pod.set_up(lo.index, None).await?;
        }
        in_pod.add_address(eth0.index, ip, 32).await?;
        in_pod
            .set_permanent_neighbour(eth0.index, POD_GATEWAY, host.mac)
            .await?;
        in_pod
            .replace_route(POD_GATEWAY, 32, eth0.index, None, false)
            .await?;
        in_pod
            .replace_route(
                Ipv4Addr::UNSPECIFIED,
                0,
                eth0.index,
                Some(POD_GATEWAY),
                true,
            )
            .await?;
        drop(in_pod);

        // On the node: the host end up, the pod's /32 through it, its neighbour entry pinned so
        // that node → pod traffic needs no ARP.
        node.set_up(host.index, Some(mtu)).await?;
        node.replace_route(ip, 32, host.index, None, false).await?;
        node.set_permanent_neighbour(host.index, ip, eth0.mac)
            .await?;

        self.blocking({
            let host_name = host_name.clone();
            let endpoint = Endpoint {
                host_ifindex: host.index,
                flags: 0,
                pod_mac: eth0.mac,
                host_mac: host.mac,
            };
            let netns = pod.netns.clone();
            move |inner| {
                inner.program_endpoint(&host_name, ip, endpoint)?;
                inner.serve_sockets_of(&netns, ip)
            }
        })
        .await?;
        Ok(PodInterface {
            ip,
            host_veth: host_name,
            mac: mac_string(eth0.mac),
            mtu,
        })
    }

    /// Removes pod `pod_uid`'s veth pair (and with it its routes and neighbour entries), its
    /// data-plane entries and its address lease. Unknown pods are not an error.
    pub async fn teardown(&self, pod_uid: &str) -> Result<()> {
        if pod_uid.is_empty() {
            return Err(invalid("pod_uid", "must not be empty"));
        }
        let _change = self.inner.change_pod(pod_uid).await;
        let host_name = host_veth_name(pod_uid);
        let node = &self.inner.node;
        let host = node.link(&host_name).await?;
        let temp = node.link(&peer_temp_name(pod_uid)).await?;
        let ifindex = host.as_ref().map(|h| h.index);
        self.blocking({
            let uid = pod_uid.to_owned();
            move |inner| {
                let ip = inner.ipam.get(&uid)?;
                let dataplane = inner.dataplane.lock().expect("dataplane lock");
                let mut counted = ifindex;
                if let Some(ip) = ip {
                    let mut endpoints = dataplane.endpoints()?;
                    // The pod still holds the lease, so the entry for its address is its own
                    // unless a veth exists with another ifindex.
                    let own = endpoints
                        .get(ip)?
                        .filter(|e| ifindex.is_none_or(|i| e.host_ifindex == i));
                    if let Some(endpoint) = own {
                        endpoints.remove(ip)?;
                        // The veth may be gone already (its namespace was deleted): the entry
                        // still says which counters were the pod's.
                        counted = Some(endpoint.host_ifindex);
                    }
                }
                if let Some(ifindex) = counted {
                    dataplane.pod_traffic()?.unregister(ifindex)?;
                }
                if let Some(ip) = ip {
                    dataplane.local_netns()?.unregister_pod(ip)?;
                }
                Ok(())
            }
        })
        .await?;
        for link in [host, temp].into_iter().flatten() {
            node.delete_link(link.index).await?;
        }
        self.blocking({
            let uid = pod_uid.to_owned();
            move |inner| {
                inner.ipam.release(&uid)?;
                Ok(())
            }
        })
        .await
    }

    /// Makes the routes to other nodes' pods equal to `nodes` (every other node of the cluster):
    /// their pod CIDRs and addresses in `REMOTE_NODES` for the programs, and kernel routes for the
    /// node's own traffic to remote pods. Adds and removes only what changed.
    pub async fn set_remote_nodes(&self, nodes: &[RemoteNode]) -> Result<()> {
        let (desired, node_routes) = remote_routes(&self.inner.config, nodes)?;
        let _change = self.inner.changes.write().await;
        self.blocking(move |inner| {
            let dataplane = inner.dataplane.lock().expect("dataplane lock");
            let mut map = dataplane.remote_nodes()?;
            for (prefix, node_ip) in map.all()? {
                if desired.get(&prefix) != Some(&node_ip) {
                    map.remove(prefix)?;
                }
            }
            for (prefix, node_ip) in &desired {
                map.upsert(*prefix, *node_ip)?;
            }
            Ok(())
        })
        .await?;
        let node = &self.inner.node;
        let underlay = self.inner.underlay.index;
        for route in node.agent_routes().await? {
            let Some(gateway) = route.gateway else {
                continue;
            };
            let prefix = Ipv4Net::new(route.dst, route.prefix_len).ok();
            let wanted = prefix.and_then(|p| node_routes.get(&p)) == Some(&gateway)
                && route.oif == Some(underlay);
            if !wanted {
                node.delete_route(route).await?;
            }
        }
        for (cidr, node_ip) in &node_routes {
            node.replace_route(
                cidr.network(),
                cidr.prefix_len(),
                underlay,
                Some(*node_ip),
                false,
            )
            .await?;
        }
        Ok(())
    }

    /// Removes everything the pod network of a node made, with no agent running: every leased
    /// pod's veth pair, the routes to other nodes, the underlay program, the pinned maps and
    /// the IPAM database (`apiary down`). Runs in the calling process's network namespace.
    pub async fn reset(state_dir: &Path, pin_dir: &Path) -> Result<()> {
        let node = Netlink::connect(None)?;
        let db = state_dir.join(IPAM_DB);
        if db.exists() {
            let uids: Vec<String> = {
                let db = db.clone();
                tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                    // The lease table does not depend on the CIDR it was opened with.
                    let ipam = Ipam::open(&db, Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"))
                        .or_else(|_| Ipam::open(&db, "10.0.0.0/8".parse().expect("CIDR")))?;
                    Ok(ipam.leases()?.into_iter().map(|(uid, _)| uid).collect())
                })
                .await??
            };
            for uid in uids {
                for name in [host_veth_name(&uid), peer_temp_name(&uid)] {
                    if let Some(link) = node.link(&name).await? {
                        node.delete_link(link.index).await?;
                    }
                }
            }
            std::fs::remove_file(&db).map_err(|source| Error::StateDir {
                path: db.clone(),
                source,
            })?;
        }
        for route in node.agent_routes().await? {
            node.delete_route(route).await?;
        }
        if let Ok(config) = dataplane::NodeConfigMap::open(pin_dir).and_then(|m| m.get())
            && let Some(link) = node.link_by_index(config.underlay_ifindex).await?
        {
            dataplane::detach_underlay(&link.name)?;
        }
        dataplane::unpin(pin_dir)?;
        let _ = std::fs::remove_dir(pin_dir);
        Ok(())
    }

    /// Every pod uid with its address, for the agent's garbage collection.
    pub fn allocations(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        Ok(self.inner.ipam.leases()?)
    }

    /// The traffic counters of pod `pod_uid`, if it is wired up.
    pub async fn traffic(&self, pod_uid: &str) -> Result<Option<PodTraffic>> {
        let Some(host) = self.inner.node.link(&host_veth_name(pod_uid)).await? else {
            return Ok(None);
        };
        self.blocking(move |inner| {
            let dataplane = inner.dataplane.lock().expect("dataplane lock");
            Ok(dataplane.pod_traffic()?.get(host.index)?)
        })
        .await
    }

    /// The `ENDPOINTS` map: every local pod address the programs deliver to.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>> {
        let dataplane = self.inner.dataplane.lock().expect("dataplane lock");
        Ok(dataplane.endpoints()?.all()?)
    }

    /// The `POD_TRAFFIC` map: counters by host veth ifindex.
    pub fn pod_counters(&self) -> Result<Vec<(u32, PodTraffic)>> {
        let dataplane = self.inner.dataplane.lock().expect("dataplane lock");
        Ok(dataplane.pod_traffic()?.all()?)
    }

    /// Re-attaches the programs of every leased pod whose veth still exists (replacing the
    /// previous agent's programs in place) and fixes its endpoint entry; removes endpoint entries
    /// of pods that no longer exist. Pinned entries that are right stay untouched.
    async fn resync(&self) -> Result<()> {
        let _change = self.inner.changes.write().await;
        let node = &self.inner.node;
        let mut live = Vec::new();
        for (uid, ip) in self.inner.ipam.leases()? {
            let host_name = host_veth_name(&uid);
            let Some(host) = node.link(&host_name).await? else {
                continue;
            };
            let known = self
                .inner
                .dataplane
                .lock()
                .expect("dataplane lock")
                .endpoints()?
                .get(ip)?;
            let pod_mac = match known {
                Some(e) if e.host_ifindex == host.index => Some(e.pod_mac),
                _ => node.neighbour_mac(host.index, ip).await?,
            };
            let Some(pod_mac) = pod_mac else {
                tracing::warn!(%uid, %ip, "pod veth without a neighbour entry; skipping until its next setup");
                continue;
            };
            live.push((
                host_name,
                ip,
                Endpoint {
                    host_ifindex: host.index,
                    flags: 0,
                    pod_mac,
                    host_mac: host.mac,
                },
            ));
        }
        self.blocking(move |inner| {
            let keep: BTreeSet<Ipv4Addr> = live.iter().map(|(_, ip, _)| *ip).collect();
            for (host_name, ip, endpoint) in live {
                inner.program_endpoint(&host_name, ip, endpoint)?;
            }
            let dataplane = inner.dataplane.lock().expect("dataplane lock");
            let mut endpoints = dataplane.endpoints()?;
            let mut live_ifindexes = BTreeSet::new();
            for (ip, endpoint) in endpoints.all()? {
                if keep.contains(&ip) {
                    live_ifindexes.insert(endpoint.host_ifindex);
                } else {
                    endpoints.remove(ip)?;
                }
            }
            // Namespaces of pods that are gone; the node's own entry stays.
            dataplane
                .local_netns()?
                .unregister_where(|owner| owner.is_some_and(|ip| !keep.contains(&ip)))?;
            // Counters of veths that are gone (their pods vanished while the agent was down).
            let mut counters = dataplane.pod_traffic()?;
            for (ifindex, _) in counters.all()? {
                if !live_ifindexes.contains(&ifindex) {
                    counters.unregister(ifindex)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Runs blocking work (redb, BPF syscalls, setns) off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner)).await?
    }
}

impl Inner {
    /// Lets the socket programs load-balance for the pod at `ip`, whose namespace is `netns`.
    fn serve_sockets_of(&self, netns: &Path, ip: Ipv4Addr) -> Result<()> {
        let cookie = netns::run_in(netns, dataplane::netns_cookie)??;
        let dataplane = self.dataplane.lock().expect("dataplane lock");
        let mut served = dataplane.local_netns()?;
        // A namespace re-created for the same address (the pod's sandbox was replaced) leaves
        // its predecessor's cookie behind.
        served.unregister_where(|owner| owner == Some(ip))?;
        served.register(cookie, Some(ip))?;
        Ok(())
    }

    /// Attaches the pod programs to `host_name` and points the endpoint of `ip` at it.
    fn program_endpoint(&self, host_name: &str, ip: Ipv4Addr, endpoint: Endpoint) -> Result<()> {
        let mut guard = self.dataplane.lock().expect("dataplane lock");
        let dataplane: &mut Dataplane = &mut guard;
        netns::run_in_optional(self.config.node_netns.as_deref(), || {
            dataplane.attach_pod(host_name).map(drop)
        })??;
        dataplane.endpoints()?.upsert(ip, endpoint)?;
        Ok(())
    }
}

/// Prefixes to the node that owns them.
type Prefixes = BTreeMap<Ipv4Net, Ipv4Addr>;

/// What `nodes` asks for: the `REMOTE_NODES` entries (pod CIDRs and node addresses as /32s) and the
/// node's kernel routes (pod CIDR via node address), after checking every field.
fn remote_routes(config: &NetworkConfig, nodes: &[RemoteNode]) -> Result<(Prefixes, Prefixes)> {
    let mut desired: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    let mut node_routes: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let field = |f: &str| format!("nodes[{i}].{f}");
        if node.name.is_empty() {
            return Err(invalid_owned(field("name"), "must not be empty"));
        }
        if node.node_ip == config.node_ip {
            return Err(invalid_owned(field("node_ip"), "is this node's address"));
        }
        let cidr = node.pod_cidr.trunc();
        if cidr.contains(&config.pod_cidr.network()) || config.pod_cidr.contains(&cidr.network()) {
            return Err(invalid_owned(
                field("pod_cidr"),
                format!("{cidr} overlaps this node's pod CIDR {}", config.pod_cidr),
            ));
        }
        if let Some(other) = desired.insert(cidr, node.node_ip)
            && other != node.node_ip
        {
            return Err(invalid_owned(
                field("pod_cidr"),
                format!("{cidr} is claimed by two nodes"),
            ));
        }
        node_routes.insert(cidr, node.node_ip);
        // The node's own address: pod → remote node traffic leaves through the same path.
        desired.insert(Ipv4Net::from(node.node_ip), node.node_ip);
    }
    // This node's own pod CIDR, "to itself": an address of it without a pod goes up the host
    // stack rather than being masqueraded out.
    desired.insert(config.pod_cidr.trunc(), config.node_ip);
    Ok((desired, node_routes))
}

fn validate(config: &NetworkConfig) -> Result<()> {
    if config.pod_cidr.prefix_len() > 30 {
        return Err(invalid("pod_cidr", "needs at least 4 addresses (/30)"));
    }
    if config.node_ip.is_unspecified() {
        return Err(invalid("node_ip", "must not be 0.0.0.0"));
    }
    if config.pod_cidr.contains(&config.node_ip) {
        return Err(invalid("node_ip", "must not be inside pod_cidr"));
    }
    if config.underlay_iface.as_deref() == Some("") {
        return Err(invalid("underlay_iface", "must not be empty"));
    }
    if config.state_dir.as_os_str().is_empty() {
        return Err(invalid("state_dir", "must not be empty"));
    }
    if config.pin_dir.as_os_str().is_empty() {
        return Err(invalid("pin_dir", "must not be empty"));
    }
    if let Some(netns) = &config.node_netns
        && !netns.exists()
    {
        return Err(invalid(
            "node_netns",
            format!("{} does not exist", netns.display()),
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        field,
        reason: reason.into(),
    }
}

fn invalid_owned(field: String, reason: impl Into<String>) -> Error {
    Error::InvalidRemoteNode {
        field,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_ifnamsiz_and_differ_per_uid() {
        let a = host_veth_name("7c9e6679-7425-40de-944b-e07fc1f90ae7");
        let b = host_veth_name("7c9e6679-7425-40de-944b-e07fc1f90ae8");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("lxc"));
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name("7c9e6679-7425-40de-944b-e07fc1f90ae7"));
    }

    #[test]
    fn invalid_config_names_the_field() {
        let config = NetworkConfig {
            pod_cidr: "10.1.0.0/24".parse().unwrap(),
            node_ip: Ipv4Addr::new(10, 1, 0, 9),
            underlay_iface: None,
            state_dir: "/tmp/x".into(),
            pin_dir: "/sys/fs/bpf/x".into(),
            node_netns: None,
            socket_lb_cgroup: None,
        };
        let err = validate(&config).unwrap_err();
        assert_eq!(err.to_string(), "node_ip: must not be inside pod_cidr");
        let err = validate(&NetworkConfig {
            pod_cidr: "10.1.0.0/31".parse().unwrap(),
            ..config
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("pod_cidr:"), "{err}");
    }

    #[test]
    fn remote_nodes_become_cidr_and_node_address_entries_and_bad_ones_name_the_field() {
        let config = NetworkConfig {
            pod_cidr: "10.1.1.0/24".parse().unwrap(),
            node_ip: Ipv4Addr::new(192, 0, 2, 1),
            underlay_iface: None,
            state_dir: "/tmp/x".into(),
            pin_dir: "/sys/fs/bpf/x".into(),
            node_netns: None,
            socket_lb_cgroup: None,
        };
        let node = |name: &str, cidr: &str, ip: [u8; 4]| RemoteNode {
            name: name.into(),
            pod_cidr: cidr.parse().unwrap(),
            node_ip: Ipv4Addr::from(ip),
        };
        let (entries, routes) =
            remote_routes(&config, &[node("n2", "10.1.2.7/24", [192, 0, 2, 2])]).unwrap();
        let n2 = Ipv4Addr::new(192, 0, 2, 2);
        assert_eq!(
            entries.into_iter().collect::<Vec<_>>(),
            vec![
                // This node's own CIDR, "to itself".
                ("10.1.1.0/24".parse().unwrap(), config.node_ip),
                ("10.1.2.0/24".parse().unwrap(), n2),
                ("192.0.2.2/32".parse().unwrap(), n2)
            ]
        );
        assert_eq!(routes.len(), 1);

        let cases = [
            (
                node("", "10.1.2.0/24", [192, 0, 2, 2]),
                "nodes[0].name: must not be empty",
            ),
            (
                node("n2", "10.1.2.0/24", [192, 0, 2, 1]),
                "nodes[0].node_ip: is this node's address",
            ),
            (
                node("n2", "10.1.0.0/16", [192, 0, 2, 2]),
                "nodes[0].pod_cidr: 10.1.0.0/16 overlaps this node's pod CIDR 10.1.1.0/24",
            ),
        ];
        for (bad, message) in cases {
            assert_eq!(
                remote_routes(&config, &[bad]).unwrap_err().to_string(),
                message
            );
        }
        let twice = [
            node("n2", "10.1.2.0/24", [192, 0, 2, 2]),
            node("n3", "10.1.2.0/24", [192, 0, 2, 3]),
        ];
        assert_eq!(
            remote_routes(&config, &twice).unwrap_err().to_string(),
            "nodes[1].pod_cidr: 10.1.2.0/24 is claimed by two nodes"
        );
    }

    #[test]
    fn pod_network_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<PodNetwork>();
    }

    #[test]
    fn macs_print_as_colon_separated_hex() {
        assert_eq!(mac_string([0x02, 0, 0xab, 1, 2, 0xff]), "02:00:ab:01:02:ff");
    }
}
