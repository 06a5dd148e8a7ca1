//! TC ingress on the node's underlay device: NodePort and load-balancer traffic is translated to
//! its backend (`nodeport`), replies to pods' masqueraded connections back to the pod; packets
//! from other nodes for a pod of this node go straight into the pod's namespace
//! (`bpf_redirect_peer`); everything else, the node's own traffic included, goes up the host
//! stack untouched.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{
    forward::{Hop, Ipv4Head, PASS, to_local_pod},
    nodeport::{self, DROP, Outside},
};

#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    match try_from_netdev(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_from_netdev(ctx: &TcContext) -> Result<i32, i32> {
    let Some(mut head) = Ipv4Head::load(ctx) else {
        return Ok(PASS);
    };
    match nodeport::from_outside(ctx, &head) {
        Outside::Verdict(verdict) => Ok(verdict),
        // This node routes the reply to its pod: a hop.
        Outside::ToPod => {
            let mut head = Ipv4Head::load(ctx).ok_or(DROP)?;
            Ok(to_local_pod(ctx, &mut head, Hop::Routed).unwrap_or(DROP))
        }
        // The sending node's `from_pod` counted the hop already.
        Outside::NotOurs => Ok(to_local_pod(ctx, &mut head, Hop::Delivery).unwrap_or(PASS)),
    }
}
