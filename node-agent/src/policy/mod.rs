//! NetworkPolicy, the pure part: what this node's policy maps must hold for each local pod, how
//! the data plane decides with them, and the writes from one state to the next. No I/O, no BPF:
//! the map wrappers apply a [`plan::Plan`], the programs evaluate exactly as [`decide`] does.
//!
//! The model is Cilium's. Every pod has a numeric security [`Identity`], one per distinct
//! (namespace, pod labels, namespace labels), allocated by the control plane; a peer selector of
//! a policy compiles to the *set of identities* it matches, never to addresses, so a new pod of
//! an existing identity needs no policy write on any node. For each local pod (an *endpoint*) and
//! direction, the compiled [`EndpointPolicy`] says whether the direction is enforced (some policy
//! of that type selects the pod) and holds allow entries keyed by (peer identity, direction,
//! protocol, port prefix), looked up by longest prefix on the port. There are no deny entries:
//! Kubernetes policies only ever add allowances, so "some entry covers the packet" is the verdict.
//!
//! - [`identity`]: the cluster as the compiler sees it (pods, namespaces, identities) and the
//!   selector → identities match.
//! - [`ports`]: a rule's `ports` → (protocol, port prefix) keys; port ranges split into prefixes.
//! - [`cidr`]: address-range arithmetic for `ipBlock`s.
//! - [`compile`](mod@compile): policies → one [`EndpointPolicy`] per local pod.
//! - [`plan`]: old and new endpoint policies → the map writes between them.
//! - [`affected`]: which endpoints a policy, pod or namespace change can affect, so that only
//!   those are recompiled.
//!
//! # Semantics chosen where Kubernetes leaves room
//!
//! - **`ipBlock` matches pod IPs too.** The API reference says `ipBlock` is meant for
//!   cluster-external addresses, but the upstream netpol e2e suite (`should allow egress access
//!   to server in CIDR block`, `should enforce except clause while egress access to server in
//!   CIDR block`, `should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is
//!   allowed`) allows and denies *pod* IPs by `ipBlock`, so a pod whose address is in the block
//!   matches. Identities cannot express that (pods of one identity have different addresses), so
//!   `ipBlock`s compile to a per-endpoint address partition: see [`EndpointPolicy::cidrs`].
//! - **`except` is subtracted, not marked.** The allowed address set of every (direction, port
//!   key) is computed exactly — union over rules of `cidr − except` — then the address space is
//!   cut into disjoint prefixes, each mapped to a *CIDR class* (a local identity ≥
//!   [`Identity::CIDR_CLASS_BASE`]) whose entries are the ports allowed there. A longest-prefix
//!   lookup therefore gives the right class for every address, and a second rule allowing an
//!   address that the first rule's `except` removed still allows it (the upstream "overlapping
//!   IPBlock.CIDR and IPBlock.Except" case).
//! - **Named ports** resolve against the destination pod's container ports, name *and* protocol
//!   (the rule's, default TCP) must match: for ingress the selected local pod's, for egress each
//!   peer pod's (so one rule can allow port 8080 to one peer identity and 9090 to another). An
//!   egress named port towards an `ipBlock` or towards "everyone" matches the pods whose address
//!   is in the block (as /32 or /128 entries) resp. every pod's identity; it never matches an
//!   address outside the cluster, which has no container ports. Pods of one identity that name
//!   the same port differently get the union of the numbers for that identity.
//! - **A peer with both `ipBlock` and a selector** (rejected by validation) is read as its
//!   `ipBlock`. Unparsable CIDRs match nothing, unparsable `except`s remove nothing (as
//!   [`apiary_api::networking_v1::IpBlock::contains`]); an unknown protocol, a port out of
//!   1..=65535 or an `endPort` below `port` match nothing.
//! - **The node itself** ([`Identity::HOST`]) may always reach its pods: an ingress-enforced
//!   endpoint gets an entry allowing everything from `HOST` ([`Allow::Host`]), as kubelet probes
//!   need (Cilium's `allow-localhost=always`). Egress to the node is subject to policy like any
//!   address (an `ipBlock` holding the node's address allows it).
//! - **Replies** of allowed connections are allowed whatever the policy: the programs look up
//!   connection tracking before the policy maps and only consult [`decide`]'s maps for the
//!   first packet of a flow. That is the data plane's business; the compiler emits no entries
//!   for replies.
//! - **hostNetwork pods** share the node's address; they are not endpoints (no policy applies
//!   to them) and, as peers, are the node ([`Identity::HOST`]).

pub mod affected;
pub mod cidr;
pub mod compile;
pub mod identity;
pub mod plan;
pub mod ports;

#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, fmt, net::IpAddr};

pub use compile::{compile, compile_endpoint};
pub use identity::{Cluster, IdentityIndex, IdentityLabels, NamedPort, PodInfo};

use cidr::Prefix;

/// A pod: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// The pod `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A security identity: what the data plane knows a peer as.
///
/// Layout of the `u32` space (as Cilium's): `0` is the wildcard of policy keys, `1..256`
/// reserved, `256..2^24` cluster identities allocated by the control plane, `2^24..` local CIDR
/// classes the compiler numbers per endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(pub u32);

impl Identity {
    /// The wildcard of a [`PolicyKey`]: every peer, inside the cluster or not. Never a peer's own.
    pub const ANY: Self = Self(0);
    /// The node itself (and its hostNetwork pods).
    pub const HOST: Self = Self(1);
    /// Anything outside the cluster: an address that is no pod's and no node's.
    pub const WORLD: Self = Self(2);
    /// The first identity the control plane may allocate to pods.
    pub const MIN_CLUSTER: Self = Self(256);
    /// The first local CIDR class identity; cluster identities stay below it.
    pub const CIDR_CLASS_BASE: Self = Self(1 << 24);

    /// Whether the control plane may hand it to pods.
    pub fn is_cluster(self) -> bool {
        (Self::MIN_CLUSTER.0..Self::CIDR_CLASS_BASE.0).contains(&self.0)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ANY => f.write_str("any"),
            Self::HOST => f.write_str("host"),
            Self::WORLD => f.write_str("world"),
            Self(n) if n >= Self::CIDR_CLASS_BASE.0 => write!(f, "cidr#{}", n - (1 << 24)),
            Self(n) => write!(f, "{n}"),
        }
    }
}

/// Which way a connection goes, seen from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Towards the endpoint: the peer is the source.
    Ingress = 0,
    /// Away from it: the peer is the destination.
    Egress = 1,
}

/// The protocol number of [`PolicyKey::protocol`] that matches every protocol (a rule without
/// ports).
pub const PROTO_ANY: u8 = 0;

/// Key of an allow entry: who, which way, to what.
///
/// The data plane keys the same fields in an LPM trie (see `EndpointPolicy` docs for the byte
/// layout); the fields that take part in the prefix are, in order: identity and direction
/// (always), protocol (unless [`PROTO_ANY`]), then the top `port_prefix_len` bits of the port.
/// Keys are normalized: port bits below the prefix are zero, and a [`PROTO_ANY`] key has port 0
/// and prefix 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub identity: Identity,
    pub direction: Direction,
    /// IP protocol number, or [`PROTO_ANY`].
    pub protocol: u8,
    /// The (destination) port, host byte order here; its bits below the prefix are zero.
    pub port: u16,
    /// 0 (every port) ..= 16 (exactly `port`).
    pub port_prefix_len: u8,
}

impl PolicyKey {
    /// The key, normalized: port bits below the prefix cleared; for [`PROTO_ANY`], no port.
    pub fn new(
        identity: Identity,
        direction: Direction,
        protocol: u8,
        port: u16,
        port_prefix_len: u8,
    ) -> Self {
        let (port, port_prefix_len) = if protocol == PROTO_ANY {
            (0, 0)
        } else {
            let len = port_prefix_len.min(16);
            (port & ports::prefix_mask(len), len)
        };
        Self {
            identity,
            direction,
            protocol,
            port,
            port_prefix_len,
        }
    }

    /// How many bits of the data plane's key after the fixed identity and direction this
    /// entry matches: 0 for any protocol, 8 + the port prefix otherwise. Longest wins.
    pub fn match_len(&self) -> u8 {
        if self.protocol == PROTO_ANY {
            0
        } else {
            8 + self.port_prefix_len
        }
    }
}

/// A policy rule: the policy `namespace/name`, its direction and the rule's index in
/// `spec.ingress` or `spec.egress`. What a verdict event and `apiary net policy trace` name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub namespace: String,
    pub policy: String,
    pub direction: Direction,
    pub rule: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        write!(f, "{}/{} {dir}[{}]", self.namespace, self.policy, self.rule)
    }
}

/// Why an entry allows: a rule, or the reserved always-allowed node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Allow {
    /// The reserved allowance of the node's own traffic to its pods.
    Host,
    /// A policy rule (the first, in policy then rule order, when several allow the same key).
    Rule(RuleRef),
}

/// Key of a CIDR entry: which way, and a prefix of peer addresses (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrKey {
    pub direction: Direction,
    pub prefix: Prefix,
}

/// What one local pod may send and receive.
///
/// In the data plane (proposed layouts, for `ebpf-common`):
///
/// - enforcement: a flag word per endpoint (`POLICY_ENFORCED`, `HASH` endpoint id → `u32`,
///   bit 0 ingress, bit 1 egress); an endpoint absent or without the bit is open that way.
/// - [`entries`](Self::entries): `POLICY` (`LPM_TRIE`), data `{ endpoint_be: u32, identity_be:
///   u32, direction: u8, protocol: u8, port_be: u16 }` (12 bytes, prefix length `64 + 8 +
///   match_len`), value `{ rule_id: u32, flags: u32 }` (`rule_id` 0 = [`Allow::Host`], others
///   index a user-space table of [`RuleRef`]s for verdict events).
/// - [`cidrs`](Self::cidrs): `POLICY_CIDR` (`LPM_TRIE`), data `{ endpoint_be: u32, direction:
///   u8, _pad: [u8; 3], addr: [u8; 4] }` (prefix length `64 + address prefix`), value the CIDR
///   class identity `u32`.
///
/// [`decide`] is the lookup order the programs follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Some policy with `Ingress` in its types selects the pod: only what entries allow gets in.
    pub ingress_enforced: bool,
    /// Some policy with `Egress` in its types selects the pod: only what entries allow goes out.
    pub egress_enforced: bool,
    /// Allow entries, by peer identity ([`Identity::ANY`] for everyone, CIDR classes for
    /// `ipBlock`s).
    pub entries: BTreeMap<PolicyKey, Allow>,
    /// Peer address prefixes → the CIDR class whose entries apply to them: a disjoint cover of
    /// the addresses some `ipBlock` allows (per direction), so longest-prefix match is exact.
    pub cidrs: BTreeMap<CidrKey, Identity>,
}

impl EndpointPolicy {
    /// Whether `direction` is enforced.
    pub fn enforced(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_enforced,
            Direction::Egress => self.egress_enforced,
        }
    }

    /// The longest entry for `identity` covering (protocol, port), as the LPM trie finds it.
    fn lookup(
        &self,
        identity: Identity,
        direction: Direction,
        protocol: u8,
        port: u16,
    ) -> Option<&Allow> {
        (0..=16u8)
            .rev()
            .map(|len| PolicyKey::new(identity, direction, protocol, port, len))
            .chain([PolicyKey::new(identity, direction, PROTO_ANY, 0, 0)])
            .find_map(|k| self.entries.get(&k))
    }

    /// The CIDR class of the longest prefix holding `ip`, as the LPM trie finds it.
    pub fn cidr_class(&self, direction: Direction, ip: IpAddr) -> Option<Identity> {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        (0..=width).rev().find_map(|len| {
            let key = CidrKey {
                direction,
                prefix: Prefix::new(ip, len),
            };
            self.cidrs.get(&key).copied()
        })
    }
}

/// Why [`decide`] said what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No policy of this direction selects the endpoint.
    NotEnforced,
    /// An entry for the peer's identity.
    Identity(Allow),
    /// An entry for every peer ([`Identity::ANY`]).
    AnyPeer(Allow),
    /// An entry of the CIDR class of the peer's address.
    Cidr { class: Identity, by: Allow },
    /// Enforced, and no entry allows it.
    NoRule,
}

/// The verdict on the first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: Reason,
}

impl Verdict {
    /// The rule that allowed it, if a rule did.
    pub fn rule(&self) -> Option<&RuleRef> {
        match &self.reason {
            Reason::Identity(Allow::Rule(r))
            | Reason::AnyPeer(Allow::Rule(r))
            | Reason::Cidr {
                by: Allow::Rule(r), ..
            } => Some(r),
            _ => None,
        }
    }
}

/// Whether `policy` lets a new connection through, evaluated as the BPF programs will:
///
/// 1. direction not enforced → allowed;
/// 2. `POLICY` LPM lookup with the peer's identity (from the ipcache), then with
///    [`Identity::ANY`];
/// 3. `POLICY_CIDR` LPM lookup of the peer's address → CIDR class, then `POLICY` with the class;
/// 4. otherwise denied.
///
/// `port` is the destination port (the endpoint's for ingress, the peer's for egress); ICMP and
/// other portless protocols pass 0.
pub fn decide(
    policy: &EndpointPolicy,
    direction: Direction,
    peer_identity: Identity,
    peer_ip: IpAddr,
    protocol: u8,
    port: u16,
) -> Verdict {
    if !policy.enforced(direction) {
        return Verdict {
            allowed: true,
            reason: Reason::NotEnforced,
        };
    }
    let reason = if let Some(by) = policy.lookup(peer_identity, direction, protocol, port) {
        Reason::Identity(by.clone())
    } else if let Some(by) = policy.lookup(Identity::ANY, direction, protocol, port) {
        Reason::AnyPeer(by.clone())
    } else if let Some((class, by)) = policy.cidr_class(direction, peer_ip).and_then(|class| {
        policy
            .lookup(class, direction, protocol, port)
            .map(|by| (class, by))
    }) {
        Reason::Cidr {
            class,
            by: by.clone(),
        }
    } else {
        Reason::NoRule
    };
    Verdict {
        allowed: reason != Reason::NoRule,
        reason,
    }
}
