//! NetworkPolicy at a pod's veth, Cilium-style: the peer's address gives its security identity
//! (`IPCACHE`), and one longest-prefix lookup in `POLICY` says whether (endpoint, identity,
//! direction, protocol, port) is allowed — for the peer's identity, then for any peer, then for
//! the peer address's `ipBlock` class. Only a flow's first packet is judged: flows let through are
//! remembered in `POLICY_FLOWS`, which also lets every reply pass. An endpoint remembers at most
//! its share of flows (`POLICY_FLOW_USE`); the agent sweeps idle ones away. Each judged flow's
//! verdict goes out through the `POLICY_EVENTS` ring buffer.
//!
//! Packets reach the checks after Service translation (sockets were translated at `connect`,
//! NodePorts before delivery), so policies apply to backend pods, as in Kubernetes.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use apiary_ebpf_common::{
    DROP_FLOW_TABLE_FULL, DROP_POLICY_DENIED, DROP_UNPARSABLE, FLOW_CLOSING, FLOW_REPLIED,
    IDENTITY_ANY, IDENTITY_WORLD, POLICY_CIDR_PREFIX_BASE, POLICY_EGRESS_ENFORCED,
    POLICY_FLOWS_PER_ENDPOINT, POLICY_INGRESS, POLICY_INGRESS_ENFORCED, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, PolicyCidrData, PolicyData, PolicyDropKey, PolicyFlow, PolicyFlowKey, PolicyVerdict,
    VERDICT_ALLOWED, VERDICT_DENIED, VERDICT_FLOW_TABLE_FULL,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key,
    programs::TcContext,
};

use crate::{
    forward::{HEAD_LEN, Ipv4Head},
    maps::{
        IPCACHE, POLICY, POLICY_CIDR, POLICY_DROPS, POLICY_ENFORCED, POLICY_EVENTS,
        POLICY_FLOW_USE, POLICY_FLOWS,
    },
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// `-EEXIST`, as map helpers return it.
const EEXIST: i32 = -17;

/// Bits of a full `POLICY` key's data: endpoint, identity, direction, protocol, port.
const POLICY_KEY_BITS: u32 = 96;

/// A packet's addresses, ports (zero for protocols without) and protocol.
#[derive(Clone, Copy)]
pub struct Tuple {
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport_be: u16,
    dport_be: u16,
    protocol: u8,
    /// TCP's flags byte; zero for other protocols.
    tcp_flags: u8,
}

impl Tuple {
    #[inline(always)]
    pub fn of(ctx: &TcContext, head: &Ipv4Head) -> Option<Self> {
        let protocol = head.plain_protocol()?;
        let (sport_be, dport_be, tcp_flags) = if protocol == PROTO_TCP {
            // Ports, sequence and acknowledgement numbers, data offset, flags.
            let header: [u8; 14] = ctx.load(HEAD_LEN).ok()?;
            (
                u16::from_ne_bytes([header[0], header[1]]),
                u16::from_ne_bytes([header[2], header[3]]),
                header[13],
            )
        } else if protocol == PROTO_UDP || protocol == PROTO_SCTP {
            let ports: [u8; 4] = ctx.load(HEAD_LEN).ok()?;
            (
                u16::from_ne_bytes([ports[0], ports[1]]),
                u16::from_ne_bytes([ports[2], ports[3]]),
                0,
            )
        } else {
            (0, 0, 0)
        };
        Some(Self {
            saddr: head.source(),
            daddr: head.destination(),
            sport_be,
            dport_be,
            protocol,
            tcp_flags,
        })
    }

    #[inline(always)]
    fn flow(&self, endpoint: u32) -> PolicyFlowKey {
        PolicyFlowKey {
            endpoint,
            saddr: self.saddr,
            daddr: self.daddr,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            protocol: self.protocol,
            pad: [0; 3],
        }
    }

    /// The flow of the packets answering this one.
    #[inline(always)]
    fn reply_flow(&self, endpoint: u32) -> PolicyFlowKey {
        PolicyFlowKey {
            endpoint,
            saddr: self.daddr,
            daddr: self.saddr,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            protocol: self.protocol,
            pad: [0; 3],
        }
    }
}

/// Whether the packet in `ctx` may pass `endpoint` (a pod's host-side veth ifindex) in
/// `direction`. Endpoints that enforce nothing pass everything without a lookup beyond their
/// flags; packets an enforcing endpoint cannot parse (IP options, fragments) are dropped.
///
/// A function of its own (a BPF-to-BPF call), not inlined into each program: its frame then
/// counts once per call chain, not on top of every path's, against the 512-byte stack limit.
#[inline(never)]
pub fn allows(ctx: &TcContext, head: &Ipv4Head, endpoint: u32, direction: u8) -> bool {
    // SAFETY: copied out at once.
    let flags = match unsafe { POLICY_ENFORCED.get(endpoint) } {
        Some(flags) if *flags != 0 => *flags,
        _ => return true,
    };
    let Some(tuple) = Tuple::of(ctx, head) else {
        count_drop(endpoint, direction, DROP_UNPARSABLE);
        return false;
    };
    let now = now_seconds();
    if track(&tuple.flow(endpoint), &tuple, now, 0)
        || track(&tuple.reply_flow(endpoint), &tuple, now, FLOW_REPLIED)
    {
        return true;
    }
    let bit = if direction == POLICY_INGRESS {
        POLICY_INGRESS_ENFORCED
    } else {
        POLICY_EGRESS_ENFORCED
    };
    if flags & bit == 0 {
        // Open this way, but enforcing the other: remember the flow so that its replies pass.
        return remember(endpoint, direction, &tuple, now);
    }
    let (peer_identity, rule) = decide(endpoint, direction, &tuple);
    let verdict = if rule.is_none() {
        count_drop(endpoint, direction, DROP_POLICY_DENIED);
        VERDICT_DENIED
    } else if remember(endpoint, direction, &tuple, now) {
        VERDICT_ALLOWED
    } else {
        // Allowed, but the endpoint cannot remember one more flow (the drop is counted).
        VERDICT_FLOW_TABLE_FULL
    };
    report(endpoint, direction, &tuple, peer_identity, verdict, rule);
    verdict == VERDICT_ALLOWED
}

/// Seconds of `CLOCK_MONOTONIC`, as the agent's sweep reads them too.
#[inline(always)]
fn now_seconds() -> u32 {
    // SAFETY: a plain helper call.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The `FLOW_*` flags a TCP segment with `tcp_flags` leaves on its flow's entry (`flags`).
#[inline(always)]
fn flow_flags(flags: u32, tcp_flags: u8) -> u32 {
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A new connection on a tuple still remembered (a port reused): it starts afresh.
        0
    } else if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags | FLOW_CLOSING
    } else {
        flags
    }
}

/// Whether `key` is a remembered flow; if so, the packet (of the flow, or answering it when
/// `seen` is [`FLOW_REPLIED`]) keeps it alive and marks its TCP state.
#[inline(always)]
fn track(key: &PolicyFlowKey, tuple: &Tuple, now: u32, seen: u32) -> bool {
    let Some(flow) = POLICY_FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup; concurrent writers (other CPUs on the
    // same flow) only ever store a time or flags as recent as these, so a lost write is harmless.
    let flow = unsafe { &mut *flow };
    let flags = flow_flags(flow.flags, tuple.tcp_flags) | seen;
    // Written only on change: within a second, most packets of a flow change nothing.
    if flow.last_seen != now {
        flow.last_seen = now;
    }
    if flow.flags != flags {
        flow.flags = flags;
    }
    true
}

/// Remembers the tuple's flow at `endpoint`, within the endpoint's share of the table; `false`
/// (the drop counted) when the share or the table is full.
#[inline(always)]
fn remember(endpoint: u32, direction: u8, tuple: &Tuple, now: u32) -> bool {
    let used = match POLICY_FLOW_USE.get_ptr_mut(endpoint) {
        Some(used) => Some(used),
        None => {
            let _ = POLICY_FLOW_USE.insert(endpoint, 0, u64::from(BPF_NOEXIST));
            POLICY_FLOW_USE.get_ptr_mut(endpoint)
        }
    };
    let Some(used) = used else {
        count_drop(endpoint, direction, DROP_FLOW_TABLE_FULL);
        return false;
    };
    // SAFETY: a pointer from a successful lookup; a racing increment on another CPU makes the
    // count at most a few flows stale, which the agent's sweep corrects.
    if unsafe { *used } >= POLICY_FLOWS_PER_ENDPOINT {
        count_drop(endpoint, direction, DROP_FLOW_TABLE_FULL);
        return false;
    }
    let value = PolicyFlow {
        last_seen: now,
        flags: flow_flags(0, tuple.tcp_flags),
    };
    match POLICY_FLOWS.insert(tuple.flow(endpoint), value, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            // Atomic (BPF_ATOMIC add): CPUs remembering flows of one endpoint at once all count.
            // The target has no `AtomicU32`, hence the intrinsic.
            // SAFETY: `used` points at the map value, a `u32`.
            unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(used, 1) };
            true
        }
        // Another CPU remembered the same flow first.
        Err(EEXIST) => true,
        Err(_) => {
            count_drop(endpoint, direction, DROP_FLOW_TABLE_FULL);
            false
        }
    }
}

/// Writes the verdict straight into the ring buffer (no copy on the stack, which the verifier
/// limits to 512 bytes for the whole program). A full ring drops the record, never the packet.
#[inline(always)]
pub fn report(
    endpoint: u32,
    direction: u8,
    tuple: &Tuple,
    peer_identity: u32,
    verdict: u8,
    rule: Option<u32>,
) {
    let Some(mut entry) = POLICY_EVENTS.reserve::<PolicyVerdict>(0) else {
        return;
    };
    entry.write(PolicyVerdict {
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        sport_be: tuple.sport_be,
        dport_be: tuple.dport_be,
        protocol: tuple.protocol,
        direction,
        verdict,
        pad: 0,
        endpoint,
        peer_identity,
        rule_id: rule.unwrap_or(0),
    });
    entry.submit(0);
}

/// Counts a dropped packet for the metrics.
#[inline(always)]
pub fn count_drop(endpoint: u32, direction: u8, reason: u8) {
    let key = PolicyDropKey {
        endpoint,
        direction,
        reason,
        pad: [0; 2],
    };
    match POLICY_DROPS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU map, written by nothing else while this program
        // runs.
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = POLICY_DROPS.insert(key, 1, 0);
        }
    }
}

/// The peer's identity as judged, and the allowing rule (`None`: denied).
#[inline(always)]
fn decide(endpoint: u32, direction: u8, tuple: &Tuple) -> (u32, Option<u32>) {
    let peer = if direction == POLICY_INGRESS {
        tuple.saddr
    } else {
        tuple.daddr
    };
    // SAFETY: copied out at once.
    let identity = unsafe { IPCACHE.get(peer) }
        .copied()
        .unwrap_or(IDENTITY_WORLD);
    for candidate in [identity, IDENTITY_ANY] {
        if let Some(rule) = lookup(endpoint, candidate, direction, tuple) {
            return (candidate, Some(rule));
        }
    }
    let cidr = PolicyCidrData {
        endpoint_be: endpoint.to_be_bytes(),
        direction,
        pad: [0; 3],
        addr: peer,
    };
    if let Some(class) = POLICY_CIDR
        .get(Key::new(POLICY_CIDR_PREFIX_BASE + 32, cidr))
        .copied()
    {
        return (class, lookup(endpoint, class, direction, tuple));
    }
    (identity, None)
}

/// The rule allowing `identity` to `endpoint` in `direction` for the tuple's protocol and
/// destination port (the endpoint's for ingress, the peer's for egress).
#[inline(always)]
fn lookup(endpoint: u32, identity: u32, direction: u8, tuple: &Tuple) -> Option<u32> {
    let data = PolicyData {
        endpoint_be: endpoint.to_be_bytes(),
        identity_be: identity.to_be_bytes(),
        direction,
        protocol: tuple.protocol,
        port_be: tuple.dport_be.to_ne_bytes(),
    };
    POLICY
        .get(Key::new(POLICY_KEY_BITS, data))
        .map(|value| value.rule_id)
}
