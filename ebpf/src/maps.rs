//! Map definitions shared by the programs. Names and layouts come from `apiary-ebpf-common`.

use apiary_ebpf_common::{
    AFFINITY_MAX_ENTRIES, AffinityKey, AffinityValue, BACKENDS_MAX_ENTRIES, Backend,
    CT_MAX_ENTRIES, CtKey, CtValue, ENDPOINTS_MAX_ENTRIES, Endpoint, IPCACHE_MAX_ENTRIES,
    LOCAL_NETNS_MAX_ENTRIES, MAGLEV_MAX_ENTRIES, MaglevTable, NODE_ADDRS_MAX_ENTRIES, NodeConfig,
    POD_TRAFFIC_MAX_ENTRIES, POLICY_CIDR_MAX_ENTRIES, POLICY_DROPS_MAX_ENTRIES,
    POLICY_ENFORCED_MAX_ENTRIES, POLICY_EVENTS_BYTES, POLICY_FLOW_USE_MAX_ENTRIES,
    POLICY_FLOWS_MAX_ENTRIES, POLICY_MAX_ENTRIES, PodTraffic, PolicyCidrData, PolicyData,
    PolicyDropKey, PolicyFlow, PolicyFlowKey, PolicyValue, REMOTE_NODES_MAX_ENTRIES, RemoteNode,
    SERVICES_MAX_ENTRIES, SOCK_REVNAT_MAX_ENTRIES, ServiceKey, ServiceValue, SockRevNatKey,
    SockRevNatValue,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuHashMap, RingBuf},
    programs::TcContext,
};

/// Per-pod packet and byte counters, keyed by the host-side veth's ifindex. Pinned by name so that
/// every program instance on the node (one per agent start) shares one set of counters.
#[map(name = "POD_TRAFFIC")]
pub static POD_TRAFFIC: PerCpuHashMap<u32, PodTraffic> =
    PerCpuHashMap::pinned(POD_TRAFFIC_MAX_ENTRIES, 0);

/// The pods of this node by IPv4 address (network byte order). Pinned: forwarding goes on while
/// the agent restarts.
#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<[u8; 4], Endpoint> = HashMap::pinned(ENDPOINTS_MAX_ENTRIES, 0);

/// Other nodes' pod CIDRs (and their own addresses as /32s) to the node that owns them.
#[map(name = "REMOTE_NODES")]
pub static REMOTE_NODES: LpmTrie<[u8; 4], RemoteNode> =
    LpmTrie::pinned(REMOTE_NODES_MAX_ENTRIES, 0);

/// This node's settings, at index 0.
#[map(name = "NODE_CONFIG")]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

/// Service frontends (ClusterIPs, NodePorts, load-balancer addresses).
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(SERVICES_MAX_ENTRIES, 0);

/// Backends by id.
#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(BACKENDS_MAX_ENTRIES, 0);

/// Each frontend's Maglev table. Not preallocated: a table is 4 KiB and most of the capacity is
/// never used.
#[map(name = "MAGLEV")]
pub static MAGLEV: HashMap<u32, MaglevTable> =
    HashMap::pinned(MAGLEV_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `sessionAffinity: ClientIP`: the backend each client last used, per frontend.
#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(AFFINITY_MAX_ENTRIES, 0);

/// Translated sockets: backend back to frontend.
#[map(name = "SOCK_REVNAT")]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(SOCK_REVNAT_MAX_ENTRIES, 0);

/// The network namespaces (by cookie) whose sockets this node load-balances.
#[map(name = "LOCAL_NETNS")]
pub static LOCAL_NETNS: HashMap<u64, [u8; 4]> = HashMap::pinned(LOCAL_NETNS_MAX_ENTRIES, 0);

/// This node's own addresses.
#[map(name = "NODE_ADDRS")]
pub static NODE_ADDRS: HashMap<[u8; 4], u32> = HashMap::pinned(NODE_ADDRS_MAX_ENTRIES, 0);

/// Connection tracking of NodePort and load-balancer flows from outside the node.
#[map(name = "CT")]
pub static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CT_MAX_ENTRIES, 0);

/// NetworkPolicy allow entries, by endpoint, peer identity, direction, protocol and port prefix.
#[map(name = "POLICY")]
pub static POLICY: LpmTrie<PolicyData, PolicyValue> =
    LpmTrie::pinned(POLICY_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `ipBlock` classes by endpoint, direction and address prefix.
#[map(name = "POLICY_CIDR")]
pub static POLICY_CIDR: LpmTrie<PolicyCidrData, u32> =
    LpmTrie::pinned(POLICY_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Which directions each endpoint enforces.
#[map(name = "POLICY_ENFORCED")]
pub static POLICY_ENFORCED: HashMap<u32, u32> = HashMap::pinned(POLICY_ENFORCED_MAX_ENTRIES, 0);

/// The identity of every known address.
#[map(name = "IPCACHE")]
pub static IPCACHE: HashMap<[u8; 4], u32> = HashMap::pinned(IPCACHE_MAX_ENTRIES, 0);

/// Flows the enforcing endpoints let through. Not preallocated: most nodes hold a few thousand.
#[map(name = "POLICY_FLOWS")]
pub static POLICY_FLOWS: HashMap<PolicyFlowKey, PolicyFlow> =
    HashMap::pinned(POLICY_FLOWS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// How many entries of `POLICY_FLOWS` each endpoint holds.
#[map(name = "POLICY_FLOW_USE")]
pub static POLICY_FLOW_USE: HashMap<u32, u32> = HashMap::pinned(POLICY_FLOW_USE_MAX_ENTRIES, 0);

/// Packets NetworkPolicy and source verification dropped, by endpoint, direction and reason.
#[map(name = "POLICY_DROPS")]
pub static POLICY_DROPS: PerCpuHashMap<PolicyDropKey, u64> =
    PerCpuHashMap::pinned(POLICY_DROPS_MAX_ENTRIES, 0);

/// Verdicts of new flows, for `apiary net observe`.
#[map(name = "POLICY_EVENTS")]
pub static POLICY_EVENTS: RingBuf = RingBuf::pinned(POLICY_EVENTS_BYTES, 0);

/// Which side of the pod's veth a packet crosses.
#[derive(Clone, Copy)]
pub enum Direction {
    /// Sent by the pod: TC ingress on the host-side veth.
    FromPod,
    /// Delivered to the pod: TC egress on the host-side veth, or redirected into the pod.
    ToPod,
}

/// Counts the packet in `ctx` for the pod behind the veth it crosses, if the agent registered it.
#[inline(always)]
pub fn count_pod_traffic(ctx: &TcContext, direction: Direction) {
    // SAFETY: `ctx.skb.skb` is the `__sk_buff` the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    count_for(ctx, ifindex, direction);
}

/// Counts the packet in `ctx` for the pod whose host-side veth is `ifindex`. Frames redirected
/// into a pod with `bpf_redirect_peer` skip the host veth's egress hook, so the redirecting
/// program counts them here.
#[inline(always)]
pub fn count_for(ctx: &TcContext, ifindex: u32, direction: Direction) {
    let Some(counters) = POD_TRAFFIC.get_ptr_mut(ifindex) else {
        return;
    };
    let len = u64::from(ctx.len());
    // SAFETY: the pointer comes from a successful lookup in a per-CPU map, so it points at this
    // CPU's slot, which nothing else writes while this program runs (BPF programs do not migrate
    // between CPUs mid-run).
    let counters = unsafe { &mut *counters };
    match direction {
        Direction::FromPod => {
            counters.from_pod_packets += 1;
            counters.from_pod_bytes += len;
        }
        Direction::ToPod => {
            counters.to_pod_packets += 1;
            counters.to_pod_bytes += len;
        }
    }
}
