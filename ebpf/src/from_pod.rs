//! TC ingress on a pod's host-side veth: everything the pod sends passes here first.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

use crate::maps::{Direction, count_pod_traffic};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    match try_from_pod(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, i32> {
    count_pod_traffic(ctx, Direction::FromPod);
    Ok(TC_ACT_OK)
}
