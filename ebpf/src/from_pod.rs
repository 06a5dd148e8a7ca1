//! TC ingress on a pod's host-side veth: everything the pod sends passes here first. An IPv4
//! packet not sent from the pod's own address and MAC is dropped (`source`).
//!
//! To a pod on this node: straight into its namespace (`bpf_redirect_peer`). To another node's pod
//! CIDR or to another node: out of the underlay with that node as next hop (`bpf_redirect_neigh`).
//! A backend's reply to a NodePort client outside goes back out translated (`nodeport`). To
//! anywhere else but this node: masqueraded behind the node's address and out of the underlay
//! (`masquerade`). This node's own addresses (and protocols other than TCP and UDP) go up the
//! host stack. None of these paths needs `ip_forward` on the node.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{
    forward::{Hop, Ipv4Head, PASS, to_local_pod, to_remote_node},
    maps::{Direction, count_pod_traffic},
    masquerade,
    nodeport::{self, DROP},
    policy, source,
};
use apiary_ebpf_common::POLICY_EGRESS;

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    match try_from_pod(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, i32> {
    count_pod_traffic(ctx, Direction::FromPod);
    let Some(mut head) = Ipv4Head::load(ctx) else {
        return Ok(PASS);
    };
    // SAFETY: `ctx.skb.skb` is the `__sk_buff` the kernel passed to this program.
    let endpoint = unsafe { (*ctx.skb.skb).ifindex };
    if !source::is_own(ctx, &head, endpoint) {
        return Ok(DROP);
    }
    // The pod's egress policy judges what it sent, as it sent it.
    if !policy::allows(ctx, &head, endpoint, POLICY_EGRESS) {
        return Ok(DROP);
    }
    // A backend answering a NodePort client outside the cluster.
    if let Some(verdict) = nodeport::reply_from_pod(ctx, &head) {
        return Ok(verdict);
    }
    // The pod sent to its gateway: what the programs forward is a routed hop (TTL - 1).
    if let Some(verdict) = to_local_pod(ctx, &mut head, Hop::Routed) {
        return Ok(verdict);
    }
    if let Some(verdict) = to_remote_node(ctx, &mut head) {
        return Ok(verdict);
    }
    Ok(masquerade::to_outside(ctx))
}
