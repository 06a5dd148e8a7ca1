//! Map definitions shared by the programs. Names and layouts come from `apiary-ebpf-common`.

use apiary_ebpf_common::{
    ENDPOINTS_MAX_ENTRIES, Endpoint, NodeConfig, POD_TRAFFIC_MAX_ENTRIES, PodTraffic,
    REMOTE_NODES_MAX_ENTRIES, RemoteNode,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuHashMap},
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
