//! Forwarding decisions shared by the programs: deliver to a local pod, send to another node, or
//! leave the packet to the host stack.
//!
//! Helper calls are what a forwarded packet pays for here, so the frame's head is read with one
//! `bpf_skb_load_bytes`, rewritten on the stack (MACs, TTL, header checksum computed in the
//! program) and written back with one `bpf_skb_store_bytes`.

use apiary_ebpf_common::{Endpoint, POLICY_INGRESS};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::generated::{bpf_redirect_neigh, bpf_redirect_peer},
    maps::lpm_trie::Key,
    programs::TcContext,
};

use crate::maps::{Direction, ENDPOINTS, NODE_CONFIG, REMOTE_NODES, count_for};

const ETH_P_IP: u16 = 0x0800;
const ETH_ALEN: usize = 6;
const ETH_PROTO_OFFSET: usize = 12;
const ETH_HLEN: usize = 14;
pub const IPV4_SRC_OFFSET: usize = ETH_HLEN + 12;
pub const IPV4_DST_OFFSET: usize = ETH_HLEN + 16;
/// TTL and protocol: the 16-bit header word the TTL lives in.
const IPV4_TTL_OFFSET: usize = ETH_HLEN + 8;
pub const IPV4_CSUM_OFFSET: usize = ETH_HLEN + 10;
/// The Ethernet header and an IPv4 header without options: where the transport header starts.
pub const HEAD_LEN: usize = ETH_HLEN + 20;
/// What forwarding rewrites: the Ethernet header up to the IPv4 header checksum included.
const REWRITE_LEN: usize = IPV4_CSUM_OFFSET + 2;
const AF_INET: u32 = 2;

/// The head of an IPv4 frame, copied out of the packet.
pub struct Ipv4Head([u8; HEAD_LEN]);

impl Ipv4Head {
    /// The head of the IPv4 frame in `ctx`, or `None` for anything else (ARP, IPv6 …).
    #[inline(always)]
    pub fn load(ctx: &TcContext) -> Option<Self> {
        let head: [u8; HEAD_LEN] = ctx.load(0).ok()?;
        let proto = u16::from_be_bytes([head[ETH_PROTO_OFFSET], head[ETH_PROTO_OFFSET + 1]]);
        (proto == ETH_P_IP).then_some(Self(head))
    }

    #[inline(always)]
    pub fn destination(&self) -> [u8; 4] {
        let h = &self.0;
        let d = IPV4_DST_OFFSET;
        [h[d], h[d + 1], h[d + 2], h[d + 3]]
    }

    /// The Ethernet source address.
    #[inline(always)]
    pub fn source_mac(&self) -> [u8; ETH_ALEN] {
        let h = &self.0;
        [h[6], h[7], h[8], h[9], h[10], h[11]]
    }

    #[inline(always)]
    pub fn source(&self) -> [u8; 4] {
        let h = &self.0;
        let s = IPV4_SRC_OFFSET;
        [h[s], h[s + 1], h[s + 2], h[s + 3]]
    }

    /// The IP protocol number of a packet whose transport header follows a 20-byte IP header
    /// and that is not a fragment; `None` otherwise (options, fragments: left to the stack).
    #[inline(always)]
    pub fn plain_protocol(&self) -> Option<u8> {
        let h = &self.0;
        let version_ihl = h[ETH_HLEN];
        let fragment = u16::from_be_bytes([h[ETH_HLEN + 6], h[ETH_HLEN + 7]]) & 0x3fff;
        (version_ihl == 0x45 && fragment == 0).then_some(h[ETH_HLEN + 9])
    }

    /// Decrements the TTL as a routing hop does and fixes the header checksum incrementally
    /// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')); `None` when the TTL is spent: the caller then
    /// leaves the packet to the host stack, which drops it.
    #[inline(always)]
    fn decrement_ttl(&mut self) -> Option<()> {
        let h = &mut self.0;
        let ttl = h[IPV4_TTL_OFFSET];
        if ttl <= 1 {
            return None;
        }
        let old = u16::from_be_bytes([ttl, h[IPV4_TTL_OFFSET + 1]]);
        let new = old - 0x0100;
        let csum = u16::from_be_bytes([h[IPV4_CSUM_OFFSET], h[IPV4_CSUM_OFFSET + 1]]);
        let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let [hi, lo] = (!(sum as u16)).to_be_bytes();
        h[IPV4_TTL_OFFSET] = ttl - 1;
        h[IPV4_CSUM_OFFSET] = hi;
        h[IPV4_CSUM_OFFSET + 1] = lo;
        Some(())
    }

    /// Writes the rewritten part of the head back into the packet, in one helper call.
    #[inline(always)]
    fn store(&self, ctx: &TcContext) -> Option<()> {
        let mut out = [0u8; REWRITE_LEN];
        out.copy_from_slice(&self.0[..REWRITE_LEN]);
        ctx.store(0, &out, 0).ok()
    }
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
pub fn to_local_pod(ctx: &TcContext, head: &mut Ipv4Head, hop: Hop) -> Option<i32> {
    // SAFETY: the value is copied out before anything else touches the map.
    let endpoint: Endpoint = *unsafe { ENDPOINTS.get(head.destination()) }?;
    if hop == Hop::Routed && head.decrement_ttl().is_none() {
        return Some(PASS);
    }
    // The pod's ingress policy judges the packet as it arrives (after any NAT).
    if !crate::policy::allows(ctx, head, endpoint.host_ifindex, POLICY_INGRESS) {
        return Some(TC_ACT_SHOT);
    }
    head.0[..ETH_ALEN].copy_from_slice(&endpoint.pod_mac);
    head.0[ETH_ALEN..2 * ETH_ALEN].copy_from_slice(&endpoint.host_mac);
    head.store(ctx)?;
    count_for(ctx, endpoint.host_ifindex, Direction::ToPod);
    // SAFETY: a plain helper call; it only records the target and returns TC_ACT_REDIRECT.
    Some(unsafe { bpf_redirect_peer(endpoint.host_ifindex, 0) } as i32)
}

/// Sends the frame to the node owning `dst` (another node's pod CIDR or that node's own address)
/// through the underlay (an address of this node's own CIDR, listed "to itself", is passed to
/// the host stack instead) with `bpf_redirect_neigh` (5.10): the kernel fills in the Ethernet header
/// from its neighbour table for the node as next hop, resolving it if needed. No encapsulation:
/// the underlay routes pod addresses natively.
#[inline(always)]
pub fn to_remote_node(ctx: &TcContext, head: &mut Ipv4Head) -> Option<i32> {
    let config = NODE_CONFIG.get(0)?;
    let underlay = config.underlay_ifindex;
    if underlay == 0 {
        return None;
    }
    let node = REMOTE_NODES.get(Key::new(32, head.destination()))?;
    let node_ip_be = node.node_ip_be;
    // This node's own pod CIDR (an address without a pod here): the host stack answers.
    if node_ip_be == config.node_ip {
        return Some(PASS);
    }
    if head.decrement_ttl().is_none() {
        return Some(PASS);
    }
    head.store(ctx)?;
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

/// Sends the frame out of the underlay toward its destination outside the cluster, as the
/// node's routing table says (`bpf_redirect_neigh` without a next hop does the FIB lookup and
/// fills in the Ethernet header): one routed hop.
#[inline(always)]
pub fn to_underlay(ctx: &TcContext, head: &mut Ipv4Head) -> Option<i32> {
    let underlay = NODE_CONFIG.get(0)?.underlay_ifindex;
    if underlay == 0 {
        return None;
    }
    if head.decrement_ttl().is_none() {
        return Some(PASS);
    }
    head.store(ctx)?;
    // SAFETY: a plain helper call; no parameters means "look the next hop up".
    Some(unsafe { bpf_redirect_neigh(underlay, core::ptr::null_mut(), 0, 0) } as i32)
}

/// `TC_ACT_OK` as the programs return it.
pub const PASS: i32 = TC_ACT_OK;
