//! TC egress on a pod's host-side veth: what the node's own stack delivers to the pod passes
//! here last (packets redirected into the pod skip it; `to_local_pod` judges those), so the
//! pod's ingress policy judges it here.

use apiary_ebpf_common::POLICY_INGRESS;
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};

use crate::{
    forward::Ipv4Head,
    maps::{Direction, count_pod_traffic},
    policy,
};

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    match try_to_pod(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_to_pod(ctx: &TcContext) -> Result<i32, i32> {
    count_pod_traffic(ctx, Direction::ToPod);
    if let Some(head) = Ipv4Head::load(ctx) {
        // SAFETY: `ctx.skb.skb` is the `__sk_buff` the kernel passed to this program.
        let endpoint = unsafe { (*ctx.skb.skb).ifindex };
        if !policy::allows(ctx, &head, endpoint, POLICY_INGRESS) {
            return Ok(TC_ACT_SHOT);
        }
    }
    Ok(TC_ACT_OK)
}
