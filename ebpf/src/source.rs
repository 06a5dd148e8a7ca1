//! Source verification at a pod's veth: a pod sends as itself or not at all. Policy and the
//! flow log know a peer by its source address, so a pod (with `NET_RAW`, or `NET_ADMIN` to add an
//! address) claiming another pod's address would pass that pod's allowances; Cilium drops such
//! packets as "invalid source IP", and so does this.

use apiary_ebpf_common::{DROP_SPOOFED, Endpoint, IDENTITY_WORLD, POLICY_EGRESS, VERDICT_SPOOFED};
use aya_ebpf::programs::TcContext;

use crate::{
    forward::Ipv4Head,
    maps::ENDPOINTS,
    policy::{self, Tuple},
};

/// Whether the frame `head` came from the pod behind veth `ifindex` as that pod: its source
/// address is an endpoint of this node behind that same veth, and its source MAC is that pod's.
/// A spoofed frame is counted and reported (`apiary net observe` shows it) before the caller
/// drops it.
#[inline(always)]
pub fn is_own(ctx: &TcContext, head: &Ipv4Head, ifindex: u32) -> bool {
    // SAFETY: the value is copied out before anything else touches the map.
    let own = match unsafe { ENDPOINTS.get(head.source()) } {
        Some(endpoint) => {
            let endpoint: Endpoint = *endpoint;
            endpoint.host_ifindex == ifindex && endpoint.pod_mac == head.source_mac()
        }
        None => false,
    };
    if !own {
        policy::count_drop(ifindex, POLICY_EGRESS, DROP_SPOOFED);
        if let Some(tuple) = Tuple::of(ctx, head) {
            policy::report(
                ifindex,
                POLICY_EGRESS,
                &tuple,
                IDENTITY_WORLD,
                VERDICT_SPOOFED,
                None,
            );
        }
    }
    own
}
