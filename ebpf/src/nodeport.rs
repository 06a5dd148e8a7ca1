//! NodePorts and load-balancer addresses for clients outside the node: per-packet NAT with
//! connection tracking, in the TC programs (sockets of the node and its pods never get here:
//! their connections were translated at `connect`).
//!
//! A new flow picks a backend (Maglev, or the client's previous one under affinity) and gets two
//! `CT` entries: one for the client's packets (destination → backend) and one for the backend's
//! replies (source → frontend). A backend on another node also gets this node's address as
//! source (SNAT, `externalTrafficPolicy: Cluster`), so that its replies come back through here to
//! be translated; a local backend sees the client's own address.

use apiary_ebpf_common::{
    CT_MASQUERADE, CT_ORIGINAL, CT_REPLY, CT_SNAT, CtKey, CtValue, SCOPE_EXTERNAL, SERVICE_LOCAL,
    ServiceKey,
};
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};

use crate::{
    forward::{Hop, Ipv4Head, to_local_pod, to_remote_node, to_underlay},
    lb,
    maps::{CT, ENDPOINTS, NODE_ADDRS, NODE_CONFIG, SERVICES},
    nat::{Flow, snat_port},
};

/// `TC_ACT_SHOT` as the programs return it.
pub const DROP: i32 = TC_ACT_SHOT;

/// What a packet from outside is to this module.
enum Decision {
    /// No frontend: the caller forwards or passes it as before.
    NotOurs,
    /// A frontend that cannot serve it (no backend here for `Local`, no address to SNAT from).
    Drop,
    /// Translate with this original-direction entry.
    Track(CtValue),
}

/// What [`from_outside`] did with a packet.
pub enum Outside {
    /// Handled: return this verdict.
    Verdict(i32),
    /// A reply to a pod's masqueraded connection, its destination the pod again: the caller
    /// delivers it (after reloading the header).
    ToPod,
    /// Not NAT traffic: carry on.
    NotOurs,
}

/// TC ingress on the underlay: NodePort and load-balancer traffic from clients, replies of
/// backends on other nodes, and replies to pods' masqueraded connections.
#[inline(always)]
pub fn from_outside(ctx: &TcContext, head: &Ipv4Head) -> Outside {
    let Some(flow) = Flow::of(ctx, head) else {
        return Outside::NotOurs;
    };
    // SAFETY: values are copied out at once.
    if let Some(reply) = unsafe { CT.get(flow.key(CT_REPLY)) }.copied()
        && reply.flags & CT_SNAT != 0
    {
        if reply.flags & CT_MASQUERADE != 0 {
            return match flow.rewrite_destination(ctx, reply.snat_addr, reply.snat_port_be) {
                Some(()) => Outside::ToPod,
                None => Outside::Verdict(DROP),
            };
        }
        return Outside::Verdict(reply_to_client(ctx, &flow, &reply));
    }
    // SAFETY: as above.
    let tracked = match unsafe { CT.get(flow.key(CT_ORIGINAL)) }.copied() {
        Some(tracked) => tracked,
        None => match new_flow(&flow) {
            Decision::NotOurs => return Outside::NotOurs,
            Decision::Drop => return Outside::Verdict(DROP),
            Decision::Track(tracked) => tracked,
        },
    };
    Outside::Verdict(to_backend(ctx, &flow, &tracked).unwrap_or(DROP))
}

/// TC ingress on a pod's veth: a local backend's reply to a client outside (its source becomes
/// the frontend again). `None`: not such a reply.
#[inline(always)]
pub fn reply_from_pod(ctx: &TcContext, head: &Ipv4Head) -> Option<i32> {
    let flow = Flow::of(ctx, head)?;
    // SAFETY: copied out at once.
    let reply = unsafe { CT.get(flow.key(CT_REPLY)) }.copied()?;
    Some(reply_to_client(ctx, &flow, &reply))
}

#[inline(always)]
fn reply_to_client(ctx: &TcContext, flow: &Flow, reply: &CtValue) -> i32 {
    let translated = (|| {
        flow.rewrite_source(ctx, reply.rewrite_addr, reply.rewrite_port_be)?;
        if reply.flags & CT_SNAT != 0 {
            flow.rewrite_destination(ctx, reply.snat_addr, reply.snat_port_be)?;
        }
        let mut head = Ipv4Head::load(ctx)?;
        to_underlay(ctx, &mut head)
    })();
    translated.unwrap_or(DROP)
}

#[inline(always)]
fn to_backend(ctx: &TcContext, flow: &Flow, tracked: &CtValue) -> Option<i32> {
    flow.rewrite_destination(ctx, tracked.rewrite_addr, tracked.rewrite_port_be)?;
    if tracked.flags & CT_SNAT != 0 {
        flow.rewrite_source(ctx, tracked.snat_addr, tracked.snat_port_be)?;
    }
    let mut head = Ipv4Head::load(ctx)?;
    // This node is the client's first router toward the backend.
    if let Some(verdict) = to_local_pod(ctx, &mut head, Hop::Routed) {
        return Some(verdict);
    }
    to_remote_node(ctx, &mut head)
}

/// Looks the frontend up, chooses the backend and records both directions of the flow.
#[inline(always)]
fn new_flow(flow: &Flow) -> Decision {
    let to_node = NODE_ADDRS.get_ptr(flow.daddr).is_some();
    let key = ServiceKey {
        addr: if to_node { [0; 4] } else { flow.daddr },
        port_be: flow.dport_be,
        protocol: flow.protocol,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: copied out at once.
    let Some(service) = unsafe { SERVICES.get(key) }.copied() else {
        return Decision::NotOurs;
    };
    if service.backend_count == 0 {
        return Decision::Drop;
    }
    let client = u64::from(u32::from_ne_bytes(flow.saddr));
    let Some((backend_id, backend)) = lb::choose(&service, flow.hash_input(), client) else {
        return Decision::Drop;
    };
    let mut original = CtValue {
        rewrite_addr: backend.addr,
        rewrite_port_be: backend.port_be,
        snat_port_be: 0,
        snat_addr: [0; 4],
        backend_id,
        flags: 0,
    };
    let mut reply_key = CtKey {
        saddr: backend.addr,
        daddr: flow.saddr,
        sport_be: backend.port_be,
        dport_be: flow.sport_be,
        protocol: flow.protocol,
        direction: CT_REPLY,
        pad: 0,
    };
    let mut reply = CtValue {
        rewrite_addr: flow.daddr,
        rewrite_port_be: flow.dport_be,
        snat_port_be: 0,
        snat_addr: [0; 4],
        backend_id,
        flags: 0,
    };
    if ENDPOINTS.get_ptr(backend.addr).is_none() {
        // `Local` tables hold only this node's backends; anything else is a stale table.
        if service.flags & SERVICE_LOCAL != 0 {
            return Decision::Drop;
        }
        let Some(node_ip) = NODE_CONFIG.get(0).map(|c| c.node_ip) else {
            return Decision::Drop;
        };
        if node_ip == [0; 4] {
            return Decision::Drop;
        }
        let Some(port) = snat_port(flow, backend.addr, backend.port_be, node_ip) else {
            return Decision::Drop;
        };
        original.flags = CT_SNAT;
        original.snat_addr = node_ip;
        original.snat_port_be = port;
        reply_key.daddr = node_ip;
        reply_key.dport_be = port;
        reply.flags = CT_SNAT;
        reply.snat_addr = flow.saddr;
        reply.snat_port_be = flow.sport_be;
    }
    // The reply entry first: the backend may answer before this function returns.
    if CT.insert(reply_key, reply, 0).is_err()
        || CT.insert(flow.key(CT_ORIGINAL), original, 0).is_err()
    {
        return Decision::Drop;
    }
    Decision::Track(original)
}
