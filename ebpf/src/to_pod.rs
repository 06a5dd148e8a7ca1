//! TC egress on a pod's host-side veth: everything delivered to the pod passes here last.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

use crate::maps::{Direction, count_pod_traffic};

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    match try_to_pod(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_to_pod(ctx: &TcContext) -> Result<i32, i32> {
    count_pod_traffic(ctx, Direction::ToPod);
    Ok(TC_ACT_OK)
}
