//! Forwarding decisions shared by the programs: deliver to a local pod, send to another node, or
//! leave the packet to the host stack.

use apiary_ebpf_common::Endpoint;
use aya_ebpf::{
    bindings::{TC_ACT_OK, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::generated::{bpf_redirect_neigh, bpf_redirect_peer},
    maps::lpm_trie::Key,
    programs::TcContext,
};

use crate::maps::{Direction, ENDPOINTS, NODE_CONFIG, REMOTE_NODES, count_for};

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const ETH_ALEN: usize = 6;
const ETH_PROTO_OFFSET: usize = 12;
const ETH_HLEN: usize = 14;
const IPV4_DST_OFFSET: usize = ETH_HLEN + 16;
/// TTL and protocol: the 16-bit header word the TTL lives in.
const IPV4_TTL_OFFSET: usize = ETH_HLEN + 8;
const IPV4_CSUM_OFFSET: usize = ETH_HLEN + 10;
const AF_INET: u32 = 2;

/// The IPv4 destination of the frame in `ctx`, or `None` for anything else (ARP, IPv6 …).
#[inline(always)]
pub fn ipv4_destination(ctx: &TcContext) -> Option<[u8; 4]> {
    let proto: u16 = ctx.load(ETH_PROTO_OFFSET).ok()?;
    if proto != ETH_P_IP_BE {
        return None;
    }
    ctx.load(IPV4_DST_OFFSET).ok()
}

/// Decrements the IPv4 TTL as a routing hop does and fixes the header checksum; `None` when the
/// TTL is spent (or the header unreadable): the caller then leaves the packet to the host stack,
/// which drops it.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> Option<()> {
    let old: [u8; 2] = ctx.load(IPV4_TTL_OFFSET).ok()?;
    if old[0] <= 1 {
        return None;
    }
    let new = [old[0] - 1, old[1]];
    ctx.store(IPV4_TTL_OFFSET, &new, 0).ok()?;
    // Both words in wire order, as the helper's incremental update expects.
    ctx.l3_csum_replace(
        IPV4_CSUM_OFFSET,
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
        2,
    )
    .ok()
}

/// Whether forwarding the frame counts as a routing hop (TTL - 1).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// From a pod through its gateway: one hop, like a router.
    Routed,
    /// The last leg of a hop already counted (from the underlay into the pod).
    Delivery,
}

/// Delivers the frame to the pod at `dst` if it lives on this node: the Ethernet addresses become
/// what the pod expects from its gateway, and `bpf_redirect_peer` (5.10) hands the frame to the
/// pod's `eth0` ingress without a trip through the host stack or a backlog queue.
#[inline(always)]
pub fn to_local_pod(ctx: &TcContext, dst: &[u8; 4], hop: Hop) -> Option<i32> {
    // SAFETY: the value is copied out before anything else touches the map.
    let endpoint: Endpoint = *unsafe { ENDPOINTS.get(dst) }?;
    if hop == Hop::Routed && decrement_ttl(ctx).is_none() {
        return Some(PASS);
    }
    if ctx.store(0, &endpoint.pod_mac, 0).is_err()
        || ctx.store(ETH_ALEN, &endpoint.host_mac, 0).is_err()
    {
        return None;
    }
    count_for(ctx, endpoint.host_ifindex, Direction::ToPod);
    // SAFETY: a plain helper call; it only records the target and returns TC_ACT_REDIRECT.
    Some(unsafe { bpf_redirect_peer(endpoint.host_ifindex, 0) } as i32)
}

/// Sends the frame to the node owning `dst` (another node's pod CIDR or that node's own address)
/// through the underlay with `bpf_redirect_neigh` (5.10): the kernel fills in the Ethernet header
/// from its neighbour table for the node as next hop, resolving it if needed. No encapsulation:
/// the underlay routes pod addresses natively.
#[inline(always)]
pub fn to_remote_node(ctx: &TcContext, dst: &[u8; 4]) -> Option<i32> {
    let underlay = NODE_CONFIG.get(0)?.underlay_ifindex;
    if underlay == 0 {
        return None;
    }
    let node = REMOTE_NODES.get(Key::new(32, *dst))?;
    let node_ip_be = node.node_ip_be;
    if decrement_ttl(ctx).is_none() {
        return Some(PASS);
    }
    let mut params = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: u32::from_ne_bytes(node_ip_be),
        },
    };
    // SAFETY: `params` is a valid `bpf_redir_neigh` whose size is passed along.
    let verdict = unsafe {
        bpf_redirect_neigh(
            underlay,
            &mut params,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    Some(verdict as i32)
}

/// `TC_ACT_OK` as the programs return it.
pub const PASS: i32 = TC_ACT_OK;
