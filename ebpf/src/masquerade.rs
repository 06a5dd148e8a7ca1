//! A pod's connections to addresses outside the cluster (neither a pod, another node, nor this
//! node's own): their source becomes this node's address, as kube-proxy's MASQUERADE and
//! Cilium's BPF masquerading do, so that the outside answers the node; the replies are turned
//! back to the pod by [`nodeport::from_outside`](crate::nodeport::from_outside) and delivered.
//! The flow's two `CT` entries carry [`CT_MASQUERADE`]. TCP, UDP and ICMP echo (its identifier
//! translated like a port); other protocols go up the host stack unchanged.

use apiary_ebpf_common::{CT_MASQUERADE, CT_ORIGINAL, CT_REPLY, CT_SNAT, CtKey, CtValue};
use aya_ebpf::programs::TcContext;

use crate::{
    forward::{Ipv4Head, PASS, to_underlay},
    maps::{CT, NODE_ADDRS, NODE_CONFIG},
    nat::{Flow, snat_port},
    nodeport::DROP,
};

/// TC ingress on a pod's veth, for a packet no other path took: masquerades it out of the
/// underlay; [`PASS`] (up the host stack) when it is not to be masqueraded (not TCP, UDP or an
/// echo request, to this node, or the node's address or underlay is unknown).
///
/// A function of its own (a BPF-to-BPF call), not inlined: `from_pod`'s frame would otherwise
/// pass the verifier's 512-byte stack limit. It returns a plain verdict: an `Option` would come
/// back through the stack, which the verifier does not let a callee hand to its caller.
#[inline(never)]
pub fn to_outside(ctx: &TcContext) -> i32 {
    match NODE_CONFIG.get(0) {
        Some(config) if config.node_ip != [0; 4] && config.underlay_ifindex != 0 => {}
        _ => return PASS,
    }
    let Some(head) = Ipv4Head::load(ctx) else {
        return PASS;
    };
    let Some(flow) = Flow::of(ctx, &head) else {
        return PASS;
    };
    if NODE_ADDRS.get_ptr(flow.daddr).is_some() {
        return PASS;
    }
    // SAFETY: copied out at once.
    let tracked = match unsafe { CT.get(flow.key(CT_ORIGINAL)) }.copied() {
        Some(tracked) => tracked,
        None => match track(&flow) {
            Some(tracked) => tracked,
            None => return DROP,
        },
    };
    let sent = (|| {
        flow.rewrite_source(ctx, tracked.snat_addr, tracked.snat_port_be)?;
        let mut head = Ipv4Head::load(ctx)?;
        to_underlay(ctx, &mut head)
    })();
    sent.unwrap_or(DROP)
}

/// Records both directions of a new masqueraded flow; `None` when no source port is free or the
/// node's address is unknown.
#[inline(always)]
fn track(flow: &Flow) -> Option<CtValue> {
    let node_ip = NODE_CONFIG.get(0).map(|c| c.node_ip)?;
    if node_ip == [0; 4] {
        return None;
    }
    let port = snat_port(flow, flow.daddr, flow.dport_be, node_ip)?;
    let flags = CT_SNAT | CT_MASQUERADE;
    let original = CtValue {
        rewrite_addr: flow.daddr,
        rewrite_port_be: flow.dport_be,
        snat_addr: node_ip,
        snat_port_be: port,
        backend_id: 0,
        flags,
    };
    let reply_key = CtKey {
        saddr: flow.daddr,
        daddr: node_ip,
        sport_be: flow.dport_be,
        dport_be: port,
        protocol: flow.protocol,
        direction: CT_REPLY,
        pad: 0,
    };
    let reply = CtValue {
        rewrite_addr: flow.daddr,
        rewrite_port_be: flow.dport_be,
        snat_addr: flow.saddr,
        snat_port_be: flow.sport_be,
        backend_id: 0,
        flags,
    };
    // The reply entry first: the answer may come before this returns.
    CT.insert(reply_key, reply, 0).ok()?;
    CT.insert(flow.key(CT_ORIGINAL), original, 0).ok()?;
    Some(original)
}
