//! Per-packet address and port translation shared by the NAT paths ([`nodeport`](crate::nodeport)
//! and [`masquerade`](crate::masquerade)): a TCP, UDP or ICMP echo packet's tuple, its rewrites
//! with checksum fixes, and the choice of this node's source port toward a peer.
//!
//! An ICMP echo's identifier stands in for ports, as in Linux's conntrack: a request's is its
//! source port (destination 0), a reply's its destination port (source 0), so that a request
//! and its reply are each other's reverse.

use apiary_ebpf_common::{CT_REPLY, CtKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use crate::{
    forward::{HEAD_LEN, IPV4_CSUM_OFFSET, IPV4_DST_OFFSET, IPV4_SRC_OFFSET, Ipv4Head},
    lb,
    maps::CT,
};

const SPORT_OFFSET: usize = HEAD_LEN;
const DPORT_OFFSET: usize = HEAD_LEN + 2;
const TCP_CSUM_OFFSET: usize = HEAD_LEN + 16;
const UDP_CSUM_OFFSET: usize = HEAD_LEN + 6;
const ICMP_CSUM_OFFSET: usize = HEAD_LEN + 2;
const ICMP_ID_OFFSET: usize = HEAD_LEN + 4;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Source ports handed out when the client's own is taken (Linux's default ephemeral range).
const SNAT_PORT_FIRST: u32 = 32768;
const SNAT_PORT_COUNT: u32 = 28232;
const SNAT_ATTEMPTS: u32 = 4;

/// A TCP, UDP or ICMP echo packet's addresses and ports (identifier), as the wire carries them.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
}

impl Flow {
    #[inline(always)]
    pub fn of(ctx: &TcContext, head: &Ipv4Head) -> Option<Self> {
        let protocol = head.plain_protocol()?;
        let (sport_be, dport_be) = if protocol == PROTO_TCP || protocol == PROTO_UDP {
            let ports: [u8; 4] = ctx.load(SPORT_OFFSET).ok()?;
            (
                u16::from_ne_bytes([ports[0], ports[1]]),
                u16::from_ne_bytes([ports[2], ports[3]]),
            )
        } else if protocol == PROTO_ICMP {
            // type, code, checksum, identifier
            let icmp: [u8; 6] = ctx.load(HEAD_LEN).ok()?;
            let id = u16::from_ne_bytes([icmp[4], icmp[5]]);
            match (icmp[0], icmp[1]) {
                (ICMP_ECHO_REQUEST, 0) => (id, 0),
                (ICMP_ECHO_REPLY, 0) => (0, id),
                _ => return None,
            }
        } else {
            return None;
        };
        Some(Self {
            saddr: head.source(),
            daddr: head.destination(),
            sport_be,
            dport_be,
            protocol,
        })
    }

    #[inline(always)]
    pub fn key(&self, direction: u8) -> CtKey {
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
    pub fn hash_input(&self) -> u64 {
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
        } else if self.protocol == PROTO_ICMP {
            ICMP_CSUM_OFFSET
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
        // ICMP's checksum covers no pseudo-header: only TCP's and UDP's see the address.
        if self.protocol != PROTO_ICMP {
            let l4_flags = u64::from(BPF_F_PSEUDO_HDR) | 4 | self.csum_flags();
            ctx.l4_csum_replace(self.csum_offset(), from, to, l4_flags)
                .ok()?;
        }
        ctx.l3_csum_replace(IPV4_CSUM_OFFSET, from, to, 4).ok()?;
        ctx.store(offset, &new, 0).ok()
    }

    /// Makes the packet's source `addr`:`port_be`.
    #[inline(always)]
    pub fn rewrite_source(&self, ctx: &TcContext, addr: [u8; 4], port_be: u16) -> Option<()> {
        self.rewrite_addr(ctx, IPV4_SRC_OFFSET, self.saddr, addr)?;
        self.rewrite_port(ctx, self.port_offset(SPORT_OFFSET), self.sport_be, port_be)
    }

    /// Makes the packet's destination `addr`:`port_be`.
    #[inline(always)]
    pub fn rewrite_destination(&self, ctx: &TcContext, addr: [u8; 4], port_be: u16) -> Option<()> {
        self.rewrite_addr(ctx, IPV4_DST_OFFSET, self.daddr, addr)?;
        self.rewrite_port(ctx, self.port_offset(DPORT_OFFSET), self.dport_be, port_be)
    }

    /// Where the port at `offset` of a TCP or UDP header is in this packet: an ICMP echo has
    /// one, its identifier.
    #[inline(always)]
    fn port_offset(&self, offset: usize) -> usize {
        if self.protocol == PROTO_ICMP {
            ICMP_ID_OFFSET
        } else {
            offset
        }
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

/// The source port this node uses toward `peer_addr`:`peer_port_be` for `flow`: the client's
/// own when no other flow to that peer holds it, else one of a few hashed ephemeral ports.
#[inline(always)]
pub fn snat_port(
    flow: &Flow,
    peer_addr: [u8; 4],
    peer_port_be: u16,
    node_ip: [u8; 4],
) -> Option<u16> {
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
            saddr: peer_addr,
            daddr: node_ip,
            sport_be: peer_port_be,
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
