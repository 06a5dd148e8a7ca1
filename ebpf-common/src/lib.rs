//! The data-plane ABI: names and `#[repr(C)]` layouts of the maps that `ebpf/` programs and the
//! node agent share.
//!
//! Pinned maps outlive the agent that created them (the data plane keeps forwarding while the
//! agent restarts), so every layout here is append-only: never reorder or resize a field.
#![cfg_attr(not(test), no_std)]

/// Name of the per-pod traffic counters map (`PERCPU_HASH`, key: host-side veth ifindex as `u32`,
/// value: [`PodTraffic`]).
///
/// Entries are created by the node agent when it attaches to a pod's veth and removed when the pod
/// goes away; the programs only count for interfaces the agent registered, so a stray interface can
/// never fill the map.
pub const POD_TRAFFIC: &str = "POD_TRAFFIC";

/// Name of the local pod endpoints map (`HASH`, key: the pod's IPv4 address as a `u32` in network
/// byte order, value: [`Endpoint`]). Written by the agent's `PodNetwork::setup`, read by `from_pod`
/// and `from_netdev` to deliver to a pod on this node with `bpf_redirect_peer`.
pub const ENDPOINTS: &str = "ENDPOINTS";

/// Name of the remote nodes map (`LPM_TRIE`, key: `struct bpf_lpm_trie_key` with
/// 4 bytes of data, i.e. `{ prefix_len: u32, addr: [u8; 4] }` in network byte order — aya's
/// `lpm_trie::Key<[u8; 4]>` on both sides —, value: [`RemoteNode`]): other
/// nodes' pod CIDRs, and each other node's own address as a `/32`, to the node to send them to.
pub const REMOTE_NODES: &str = "REMOTE_NODES";

/// Name of the node configuration map (`ARRAY` of one [`NodeConfig`] at index 0).
pub const NODE_CONFIG: &str = "NODE_CONFIG";

/// Every map the programs pin by name: what `unpin` removes.
pub const PINNED_MAPS: &[&str] = &[POD_TRAFFIC, ENDPOINTS, REMOTE_NODES, NODE_CONFIG];

/// Capacity of [`ENDPOINTS`], like [`POD_TRAFFIC_MAX_ENTRIES`].
pub const ENDPOINTS_MAX_ENTRIES: u32 = 4096;

/// Capacity of [`REMOTE_NODES`]: two entries (pod CIDR and node address) per other node.
pub const REMOTE_NODES_MAX_ENTRIES: u32 = 16384;

/// A pod on this node, as the programs need it to deliver a frame straight into its namespace.
///
/// MACs are in wire order. Value of [`ENDPOINTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The host-side veth's ifindex: `bpf_redirect_peer` target and [`POD_TRAFFIC`] key.
    pub host_ifindex: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// The pod's `eth0` MAC: destination of delivered frames.
    pub pod_mac: [u8; 6],
    /// The host-side veth's MAC: source of delivered frames (the pod's gateway neighbour).
    pub host_mac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);

/// Value of [`REMOTE_NODES`]: where to send a packet for the matching prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteNode {
    /// The node's underlay address in network byte order (octets in memory order): the next hop
    /// given to `bpf_redirect_neigh`.
    pub node_ip_be: [u8; 4],
    /// Reserved, zero.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<RemoteNode>() == 8);

/// Value of [`NODE_CONFIG`] at index 0. All zero means "not configured": the programs then only
/// deliver to local pods and hand everything else to the host stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The underlay device's ifindex: where `bpf_redirect_neigh` sends packets for other nodes.
    pub underlay_ifindex: u32,
    /// Reserved, zero.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<NodeConfig>() == 8);

/// Capacity of [`POD_TRAFFIC`]: well above the 110 pods a node runs.
pub const POD_TRAFFIC_MAX_ENTRIES: u32 = 4096;

/// Packets and bytes seen on one pod's host-side veth, per CPU in the map.
///
/// "From pod" is what the pod sent (TC ingress on the host side), "to pod" what it was sent (TC
/// egress on the host side). Bytes are `skb->len`: the Ethernet frame without FCS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PodTraffic>() == 32);

impl PodTraffic {
    /// Adds another CPU's counters to these (user space sums the per-CPU values).
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            from_pod_packets: self.from_pod_packets + other.from_pod_packets,
            from_pod_bytes: self.from_pod_bytes + other.from_pod_bytes,
            to_pod_packets: self.to_pod_packets + other.to_pod_packets,
            to_pod_bytes: self.to_pod_bytes + other.to_pod_bytes,
        }
    }
}

// SAFETY: `PodTraffic` is `repr(C)`, made only of `u64`s, has no padding and is valid for any bit
// pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PodTraffic {}

// SAFETY: `repr(C)`, integers and byte arrays only, no implicit padding (checked sizes above), valid
// for any bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RemoteNode {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NodeConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_adds_every_counter() {
        let a = PodTraffic {
            from_pod_packets: 1,
            from_pod_bytes: 100,
            to_pod_packets: 2,
            to_pod_bytes: 200,
        };
        let b = PodTraffic {
            from_pod_packets: 10,
            from_pod_bytes: 1000,
            to_pod_packets: 20,
            to_pod_bytes: 2000,
        };
        assert_eq!(
            a.merged(b),
            PodTraffic {
                from_pod_packets: 11,
                from_pod_bytes: 1100,
                to_pod_packets: 22,
                to_pod_bytes: 2200,
            }
        );
    }
}
