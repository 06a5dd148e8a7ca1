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
    Backend, CT_ORIGINAL, CT_REPLY, CT_SNAT, CtKey, CtValue, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
    SERVICE_LOCAL, ServiceKey,
};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    programs::TcContext,
};

use crate::{
    forward::{
        HEAD_LEN, Hop, IPV4_CSUM_OFFSET, IPV4_DST_OFFSET, IPV4_SRC_OFFSET, Ipv4Head, to_local_pod,
        to_remote_node, to_underlay,
    },
    lb,
    maps::{CT, ENDPOINTS, NODE_ADDRS, NODE_CONFIG, SERVICES},
};

/// `TC_ACT_SHOT` as the programs return it.
pub const DROP: i32 = TC_ACT_SHOT;

const SPORT_OFFSET: usize = HEAD_LEN;
const DPORT_OFFSET: usize = HEAD_LEN + 2;
const TCP_CSUM_OFFSET: usize = HEAD_LEN + 16;
const UDP_CSUM_OFFSET: usize = HEAD_LEN + 6;
/// Source ports handed out when the client's own is taken (Linux's default ephemeral range).
const SNAT_PORT_FIRST: u32 = 32768;
const SNAT_PORT_COUNT: u32 = 28232;
const SNAT_ATTEMPTS: u32 = 4;

/// A TCP or UDP packet's addresses and ports, as the wire carries them.
#[derive(Clone, Copy)]
struct Flow {
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport_be: u16,
    dport_be: u16,
    protocol: u8,
}

impl Flow {
    #[inline(always)]
    fn of(ctx: &TcContext, head: &Ipv4Head) -> Option<Self> {
        let protocol = head.plain_protocol()?;
        if protocol != PROTO_TCP && protocol != PROTO_UDP {
            return None;
        }
        let ports: [u8; 4] = ctx.load(SPORT_OFFSET).ok()?;
        Some(Self {
            saddr: head.source(),
            daddr: head.destination(),
            sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
            dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
            protocol,
        })
    }

    #[inline(always)]
    fn key(&self, direction: u8) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            protocol: self.protocol,
            direction,
            pad: 0,
        }
    }

    /// The tuple packed for hashing: one flow, one backend.
    #[inline(always)]
    fn hash_input(&self) -> u64 {
        let addrs = (u64::from(u32::from_ne_bytes(self.saddr)) << 32)
            | u64::from(u32::from_ne_bytes(self.daddr));
        let ports = (u64::from(self.sport_be) << 24)
            | (u64::from(self.dport_be) << 8)
            | u64::from(self.protocol);
        lb::mix(addrs) ^ ports
    }

    #[inline(always)]
    fn csum_offset(&self) -> usize {
        if self.protocol == PROTO_UDP {
            UDP_CSUM_OFFSET
        } else {
            TCP_CSUM_OFFSET
        }
    }

    /// A UDP checksum of zero means "none" and must stay so.
    #[inline(always)]
    fn csum_flags(&self) -> u64 {
        if self.protocol == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    }

    /// Replaces the address at `offset` (source or destination), fixing the IP header checksum
    /// and the transport checksum's pseudo-header part.
    #[inline(always)]
    fn rewrite_addr(
        &self,
        ctx: &TcContext,
        offset: usize,
        old: [u8; 4],
        new: [u8; 4],
    ) -> Option<()> {
        if old == new {
            return Some(());
        }
        let (from, to) = (
            u64::from(u32::from_ne_bytes(old)),
            u64::from(u32::from_ne_bytes(new)),
        );
        let l4_flags = u64::from(BPF_F_PSEUDO_HDR) | 4 | self.csum_flags();
        ctx.l4_csum_replace(self.csum_offset(), from, to, l4_flags)
            .ok()?;
        ctx.l3_csum_replace(IPV4_CSUM_OFFSET, from, to, 4).ok()?;
        ctx.store(offset, &new, 0).ok()
    }

    /// Makes the packet's source `addr`:`port_be`.
    #[inline(always)]
    fn rewrite_source(&self, ctx: &TcContext, addr: [u8; 4], port_be: u16) -> Option<()> {
        self.rewrite_addr(ctx, IPV4_SRC_OFFSET, self.saddr, addr)?;
        self.rewrite_port(ctx, SPORT_OFFSET, self.sport_be, port_be)
    }

    /// Makes the packet's destination `addr`:`port_be`.
    #[inline(always)]
    fn rewrite_destination(&self, ctx: &TcContext, addr: [u8; 4], port_be: u16) -> Option<()> {
        self.rewrite_addr(ctx, IPV4_DST_OFFSET, self.daddr, addr)?;
        self.rewrite_port(ctx, DPORT_OFFSET, self.dport_be, port_be)
    }

    /// Replaces the port at `offset` (source or destination), fixing the transport checksum.
    #[inline(always)]
    fn rewrite_port(&self, ctx: &TcContext, offset: usize, old: u16, new: u16) -> Option<()> {
        if old == new {
            return Some(());
        }
        let flags = 2 | self.csum_flags();
        ctx.l4_csum_replace(self.csum_offset(), u64::from(old), u64::from(new), flags)
            .ok()?;
        ctx.store(offset, &new, 0).ok()
    }
}

/// What a packet from outside is to this module.
enum Decision {
    /// No frontend: the caller forwards or passes it as before.
    NotOurs,
    /// A frontend that cannot serve it (no backend here for `Local`, no address to SNAT from).
    Drop,
    /// Translate with this original-direction entry.
    Track(CtValue),
}

/// TC ingress on the underlay: NodePort and load-balancer traffic from clients, and replies of
/// backends on other nodes. `None`: not service traffic, carry on.
#[inline(always)]
pub fn from_outside(ctx: &TcContext, head: &Ipv4Head) -> Option<i32> {
    let flow = Flow::of(ctx, head)?;
    // SAFETY: values are copied out at once.
    if let Some(reply) = unsafe { CT.get(flow.key(CT_REPLY)) }.copied()
        && reply.flags & CT_SNAT != 0
    {
        return Some(reply_to_client(ctx, &flow, &reply));
    }
    // SAFETY: as above.
    let tracked = match unsafe { CT.get(flow.key(CT_ORIGINAL)) }.copied() {
        Some(tracked) => tracked,
        None => match new_flow(&flow) {
            Decision::NotOurs => return None,
            Decision::Drop => return Some(DROP),
            Decision::Track(tracked) => tracked,
        },
    };
    Some(to_backend(ctx, &flow, &tracked).unwrap_or(DROP))
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
        let Some(port) = snat_port(flow, &backend, node_ip) else {
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

/// The source port this node uses toward `backend` for `flow`: the client's own when no other
/// flow to that backend holds it, else one of a few hashed ephemeral ports.
#[inline(always)]
fn snat_port(flow: &Flow, backend: &Backend, node_ip: [u8; 4]) -> Option<u16> {
    let hash = lb::mix(flow.hash_input());
    for attempt in 0..SNAT_ATTEMPTS {
        let port_be = if attempt == 0 {
            flow.sport_be
        } else {
            let salt = (hash >> (attempt * 16)) as u32;
            let port = SNAT_PORT_FIRST + salt % SNAT_PORT_COUNT;
            (port as u16).to_be()
        };
        let key = CtKey {
            saddr: backend.addr,
            daddr: node_ip,
            sport_be: backend.port_be,
            dport_be: port_be,
            protocol: flow.protocol,
            direction: CT_REPLY,
            pad: 0,
        };
        // SAFETY: copied out at once.
        match unsafe { CT.get(key) }.copied() {
            None => return Some(port_be),
            // This very flow (its entries were evicted one at a time): take the port back.
            Some(taken) if taken.snat_addr == flow.saddr && taken.snat_port_be == flow.sport_be => {
                return Some(port_be);
            }
            Some(_) => {}
        }
    }
    None
}
