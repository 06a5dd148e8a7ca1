//! The data-plane ABI: names and `#[repr(C)]` layouts of the maps that `ebpf/` programs and the
//! node agent share.
//!
//! Pinned maps outlive the agent that created them (the data plane keeps forwarding while the
//! agent restarts), so every layout here is append-only: never reorder or resize a field.
#![cfg_attr(not(test), no_std)]

/// Name of the per-pod traffic counters map (`PERCPU_HASH`, key: host-side veth ifindex as `u32`,
/// value: [`PodTraffic`]).
///
/// Entries are created by the node agent when it attaches to a pod's veth and removed when the pod
/// goes away; the programs only count for interfaces the agent registered, so a stray interface can
/// never fill the map.
pub const POD_TRAFFIC: &str = "POD_TRAFFIC";

/// Name of the local pod endpoints map (`HASH`, key: the pod's IPv4 address as a `u32` in network
/// byte order, value: [`Endpoint`]). Written by the agent's `PodNetwork::setup`, read by `from_pod`
/// and `from_netdev` to deliver to a pod on this node with `bpf_redirect_peer`.
pub const ENDPOINTS: &str = "ENDPOINTS";

/// Name of the remote nodes map (`LPM_TRIE`, key: `struct bpf_lpm_trie_key` with
/// 4 bytes of data, i.e. `{ prefix_len: u32, addr: [u8; 4] }` in network byte order — aya's
/// `lpm_trie::Key<[u8; 4]>` on both sides —, value: [`RemoteNode`]): other
/// nodes' pod CIDRs, and each other node's own address as a `/32`, to the node to send them to.
pub const REMOTE_NODES: &str = "REMOTE_NODES";

/// Name of the node configuration map (`ARRAY` of one [`NodeConfig`] at index 0).
pub const NODE_CONFIG: &str = "NODE_CONFIG";

/// Name of the service frontends map (`HASH`, key: [`ServiceKey`], value: [`ServiceValue`]):
/// every address, port and protocol that load-balances, for sockets and for packets.
pub const SERVICES: &str = "SERVICES";

/// Name of the backends map (`HASH`, key: backend id as `u32`, value: [`Backend`]). One entry per
/// distinct address, port and protocol, shared by every frontend that uses it.
pub const BACKENDS: &str = "BACKENDS";

/// Name of the Maglev lookup tables (`HASH` without preallocation, key: [`ServiceValue::id`] as
/// `u32`, value: [`MaglevTable`]): a frontend's backends by consistent hash.
pub const MAGLEV: &str = "MAGLEV";

/// Name of the session affinity map (`LRU_HASH`, key: [`AffinityKey`], value:
/// [`AffinityValue`]): the backend a client last used, for `sessionAffinity: ClientIP`.
pub const AFFINITY: &str = "AFFINITY";

/// Name of the socket reverse-translation map (`LRU_HASH`, key: [`SockRevNatKey`], value:
/// [`SockRevNatValue`]): for a socket the connect/sendmsg hooks translated, the backend back to the
/// frontend it asked for, so that `getpeername` and `recvmsg` show the service address.
pub const SOCK_REVNAT: &str = "SOCK_REVNAT";

/// Name of the network namespaces this node's socket programs serve (`HASH`, key: netns cookie as
/// `u64`, value: the pod's IPv4 address as `[u8; 4]`, `0.0.0.0` for the node's own namespace):
/// the node's own and its pods'. The address lets the agent remove a pod's entry after its
/// namespace is gone. The cgroup programs see every
/// socket of the machine; they leave alone those of namespaces that are not this node's (other
/// container engines, or other nodes of a lab sharing one kernel).
pub const LOCAL_NETNS: &str = "LOCAL_NETNS";

/// Name of this node's own addresses (`HASH`, key: IPv4 address as `[u8; 4]`, value: `u32`
/// reserved flags): where NodePorts answer.
pub const NODE_ADDRS: &str = "NODE_ADDRS";

/// Name of the connection-tracking map of translated packets (`LRU_HASH`, key: [`CtKey`], value:
/// [`CtValue`]): NodePort and load-balancer traffic from outside the node, which the TC programs
/// NAT per packet (sockets of the node and its pods are translated once, at connect time, and
/// need none).
pub const CT: &str = "CT";

/// Name of the policy allow entries (`LPM_TRIE`, key: `{ prefix_len: u32, data: `[`PolicyData`]` }`
/// — aya's `lpm_trie::Key<PolicyData>` —, value: [`PolicyValue`]). The prefix covers endpoint,
/// peer identity and direction (72 bits) for rules of any protocol, plus protocol and the port's
/// first bits (`80 + port prefix`) for rules with ports: a port range costs one lookup.
pub const POLICY: &str = "POLICY";

/// Name of the `ipBlock` classes (`LPM_TRIE`, key: `{ prefix_len: u32, data: `[`PolicyCidrData`]`
/// }` with prefix `64 + address prefix`, value: the class's identity as `u32`, looked up in
/// [`POLICY`] like a peer identity).
pub const POLICY_CIDR: &str = "POLICY_CIDR";

/// Name of the per-endpoint enforcement flags (`HASH`, key: endpoint id `u32` (the pod's host-side
/// veth ifindex), value: `POLICY_*_ENFORCED` bits). An endpoint without an entry, or without a
/// direction's bit, is open that way.
pub const POLICY_ENFORCED: &str = "POLICY_ENFORCED";

/// Name of the address → identity map (`HASH`, key: IPv4 address `[u8; 4]`, value: identity
/// `u32`): every pod of the cluster, and this node's addresses as [`IDENTITY_HOST`]. Anything
/// else is [`IDENTITY_WORLD`].
pub const IPCACHE: &str = "IPCACHE";

/// Name of the policy connection tracking (`HASH` without preallocation, key: [`PolicyFlowKey`],
/// value: [`PolicyFlow`]): flows an endpoint let through, so that only a flow's first packet is
/// judged and replies always pass.
///
/// Not an LRU: with one shared LRU, a pod opening flows as fast as it can evicts every other
/// pod's entries, and their replies are then judged (and dropped) as new flows. Here nothing is
/// evicted: the agent removes idle flows ([`FLOW_IDLE_SECONDS`]), and each endpoint may hold at
/// most [`POLICY_FLOWS_PER_ENDPOINT`] of them ([`POLICY_FLOW_USE`]); past that, its new flows
/// are dropped ([`DROP_FLOW_TABLE_FULL`]), not anyone's established ones.
pub const POLICY_FLOWS: &str = "POLICY_FLOWS";

/// Name of the entries each endpoint holds in [`POLICY_FLOWS`] (`HASH`, key: endpoint id `u32`,
/// value: `u32`): the programs add one per flow they remember; the agent's sweep, which removes
/// flows, writes the true count back.
pub const POLICY_FLOW_USE: &str = "POLICY_FLOW_USE";

/// Maps earlier versions pinned and this one no longer uses: removed when the data plane loads
/// (and by `unpin`). `POLICY_CT` was the LRU that [`POLICY_FLOWS`] replaced.
pub const OBSOLETE_PINNED_MAPS: &[&str] = &["POLICY_CT"];

/// Name of the verdict ring buffer (`RINGBUF` of [`PolicyVerdict`] records): one per new flow at
/// an enforcing endpoint.
pub const POLICY_EVENTS: &str = "POLICY_EVENTS";

/// Name of the drop counters (`PERCPU_HASH`, key: [`PolicyDropKey`], value: `u64` packets, per
/// CPU): what NetworkPolicy and source verification dropped, by endpoint, direction and reason.
pub const POLICY_DROPS: &str = "POLICY_DROPS";

/// Every map the programs pin by name: what `unpin` removes.
pub const PINNED_MAPS: &[&str] = &[
    POD_TRAFFIC,
    ENDPOINTS,
    REMOTE_NODES,
    NODE_CONFIG,
    SERVICES,
    BACKENDS,
    MAGLEV,
    AFFINITY,
    SOCK_REVNAT,
    LOCAL_NETNS,
    NODE_ADDRS,
    CT,
    POLICY,
    POLICY_CIDR,
    POLICY_ENFORCED,
    IPCACHE,
    POLICY_FLOWS,
    POLICY_FLOW_USE,
    POLICY_EVENTS,
    POLICY_DROPS,
];

/// Capacity of [`SERVICES`]: frontends (a Service has one per port, and per NodePort and
/// load-balancer address).
pub const SERVICES_MAX_ENTRIES: u32 = 65536;
/// Capacity of [`BACKENDS`].
pub const BACKENDS_MAX_ENTRIES: u32 = 65536;
/// Capacity of [`MAGLEV`]: one table per frontend with backends.
pub const MAGLEV_MAX_ENTRIES: u32 = SERVICES_MAX_ENTRIES;
/// Capacity of [`AFFINITY`].
pub const AFFINITY_MAX_ENTRIES: u32 = 65536;
/// Capacity of [`SOCK_REVNAT`]: one entry per translated socket still in use (least recently used
/// ones go first).
pub const SOCK_REVNAT_MAX_ENTRIES: u32 = 262144;
/// Capacity of [`CT`]: two entries (original and reply direction) per tracked flow.
pub const CT_MAX_ENTRIES: u32 = 262144;
/// Capacity of [`POLICY`].
pub const POLICY_MAX_ENTRIES: u32 = 262144;
/// Capacity of [`POLICY_CIDR`].
pub const POLICY_CIDR_MAX_ENTRIES: u32 = 65536;
/// Capacity of [`POLICY_ENFORCED`].
pub const POLICY_ENFORCED_MAX_ENTRIES: u32 = 4096;
/// Capacity of [`IPCACHE`]: the cluster's pods and nodes.
pub const IPCACHE_MAX_ENTRIES: u32 = 262144;
/// Capacity of [`POLICY_FLOWS`].
pub const POLICY_FLOWS_MAX_ENTRIES: u32 = 262144;
/// The flows one endpoint may hold in [`POLICY_FLOWS`]: a sixteenth of it, so that it takes
/// sixteen pods flooding at once to fill the table for the others' new flows (and no number of
/// them evicts an established one).
pub const POLICY_FLOWS_PER_ENDPOINT: u32 = POLICY_FLOWS_MAX_ENTRIES / 16;
/// Capacity of [`POLICY_FLOW_USE`]: one entry per enforcing endpoint.
pub const POLICY_FLOW_USE_MAX_ENTRIES: u32 = POLICY_ENFORCED_MAX_ENTRIES;
/// Capacity of [`POLICY_DROPS`].
pub const POLICY_DROPS_MAX_ENTRIES: u32 = 16384;
/// Size of [`POLICY_EVENTS`] in bytes (a power of two, a multiple of the page size).
pub const POLICY_EVENTS_BYTES: u32 = 1 << 20;
/// Capacity of [`LOCAL_NETNS`].
pub const LOCAL_NETNS_MAX_ENTRIES: u32 = 4096;
/// Capacity of [`NODE_ADDRS`].
pub const NODE_ADDRS_MAX_ENTRIES: u32 = 64;

/// Slots of a Maglev table: a prime well above the backends of one frontend (Maglev keeps each
/// backend's share within a slot of `M / N`, and a removed backend moves only its own slots).
pub const MAGLEV_TABLE_SIZE: usize = 1021;

/// `IPPROTO_TCP`, as [`ServiceKey::protocol`] holds it.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;
/// `IPPROTO_SCTP`.
pub const PROTO_SCTP: u8 = 132;
/// `IPPROTO_ICMP`: masqueraded echo requests and replies carry their identifier where the
/// other protocols carry ports.
pub const PROTO_ICMP: u8 = 1;

/// [`ServiceKey::scope`] of frontends that sockets on this node connect to (ClusterIPs, and
/// NodePorts and load-balancer addresses reached from the node or its pods).
pub const SCOPE_SOCKET: u8 = 0;
/// [`ServiceKey::scope`] of frontends that packets arriving from outside the node are translated
/// for (NodePorts and load-balancer addresses, by the TC programs).
pub const SCOPE_EXTERNAL: u8 = 1;

/// A frontend: what a client addresses. NodePorts have the unspecified address `0.0.0.0` (they
/// answer on every node address). Key of [`SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4 address, octets in wire order.
    pub addr: [u8; 4],
    /// Port in network byte order, as the kernel's socket address holds it.
    pub port_be: u16,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`], [`PROTO_SCTP`]).
    pub protocol: u8,
    /// [`SCOPE_SOCKET`] or [`SCOPE_EXTERNAL`].
    pub scope: u8,
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);

/// [`ServiceValue::flags`]: `sessionAffinity: ClientIP`.
pub const SERVICE_AFFINITY: u32 = 1;
/// [`ServiceValue::flags`]: only node-local backends are in the table (`externalTrafficPolicy` or
/// `internalTrafficPolicy: Local`); packets keep their client address.
pub const SERVICE_LOCAL: u32 = 1 << 1;

/// Value of [`SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// The frontend's id: key of its [`MAGLEV`] table and of its [`AFFINITY`] entries. Never 0.
    pub id: u32,
    /// Backends in the table; 0 means the service has no ready endpoint here: connections are
    /// refused, as Kubernetes rejects them.
    pub backend_count: u32,
    /// `SERVICE_*` bits.
    pub flags: u32,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` (for [`SERVICE_AFFINITY`]).
    pub affinity_timeout_secs: u32,
}

const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// Value of [`BACKENDS`]: where a translated connection goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// IPv4 address, octets in wire order.
    pub addr: [u8; 4],
    /// Port in network byte order.
    pub port_be: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Reserved, zero.
    pub flags: u8,
}

const _: () = assert!(core::mem::size_of::<Backend>() == 8);

/// Value of [`MAGLEV`]: backend ids by slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub backend_ids: [u32; MAGLEV_TABLE_SIZE],
}

/// Key of [`AFFINITY`]: one client of one frontend. Clients are network namespaces (by cookie) for
/// sockets, and IPv4 addresses (zero-extended) for packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityKey {
    pub service_id: u32,
    /// Reserved, zero.
    pub pad: u32,
    pub client: u64,
}

const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);

/// Value of [`AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// Reserved, zero.
    pub pad: u32,
    /// `bpf_ktime_get_ns` when the client last connected through it.
    pub last_used_ns: u64,
}

const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Key of [`SOCK_REVNAT`]: a socket (by cookie) and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatKey {
    pub cookie: u64,
    pub backend_addr: [u8; 4],
    pub backend_port_be: u16,
    /// Reserved, zero.
    pub pad: u16,
}

const _: () = assert!(core::mem::size_of::<SockRevNatKey>() == 16);

/// Value of [`SOCK_REVNAT`]: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatValue {
    pub addr: [u8; 4],
    pub port_be: u16,
    /// Reserved, zero.
    pub pad: u16,
    pub service_id: u32,
}

const _: () = assert!(core::mem::size_of::<SockRevNatValue>() == 12);

/// [`CtKey::direction`] of packets from the client, as they arrive.
pub const CT_ORIGINAL: u8 = 0;
/// [`CtKey::direction`] of the backend's replies, as the backend sends them.
pub const CT_REPLY: u8 = 1;

/// A tracked flow as one direction's packets carry it. Key of [`CT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
    /// [`CT_ORIGINAL`] or [`CT_REPLY`].
    pub direction: u8,
    /// Reserved, zero.
    pub pad: u16,
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

/// [`CtValue::flags`]: the client's address was replaced by this node's (the backend is on
/// another node and the policy is Cluster), so replies come back here.
pub const CT_SNAT: u32 = 1;
/// [`CtValue::flags`]: a pod's connection to an address outside the cluster, its source
/// replaced by this node's (masquerading); replies go back to the pod. Always with [`CT_SNAT`];
/// `backend_id` is 0 (no backend).
pub const CT_MASQUERADE: u32 = 2;

/// What to do with a tracked flow's packets. Value of [`CT`].
///
/// Original direction: the destination becomes `rewrite` (the backend) and, with [`CT_SNAT`], the
/// source becomes `snat` (this node). Reply direction: the source becomes `rewrite` (the frontend)
/// and, with [`CT_SNAT`], the destination becomes `snat` (the client).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub rewrite_addr: [u8; 4],
    pub rewrite_port_be: u16,
    pub snat_port_be: u16,
    pub snat_addr: [u8; 4],
    /// The backend the flow went to: UDP flows of removed backends are flushed by it.
    pub backend_id: u32,
    /// `CT_*` bits.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<CtValue>() == 20);

/// [`PolicyData::direction`] (and [`PolicyVerdict::direction`]): toward the endpoint.
pub const POLICY_INGRESS: u8 = 0;
/// Away from the endpoint.
pub const POLICY_EGRESS: u8 = 1;
/// [`POLICY_ENFORCED`] bit: ingress is enforced.
pub const POLICY_INGRESS_ENFORCED: u32 = 1;
/// [`POLICY_ENFORCED`] bit: egress is enforced.
pub const POLICY_EGRESS_ENFORCED: u32 = 1 << 1;
/// Identity of every peer: entries for it match whoever the peer is.
pub const IDENTITY_ANY: u32 = 0;
/// Identity of this node (its own addresses).
pub const IDENTITY_HOST: u32 = 1;
/// Identity of addresses outside the cluster.
pub const IDENTITY_WORLD: u32 = 2;
/// Prefix length of a [`POLICY`] key up to the direction: an entry for every protocol and port.
pub const POLICY_PREFIX_ANY_PROTOCOL: u32 = 72;
/// Prefix length of a [`POLICY`] key up to the protocol: add the port prefix (0..=16).
pub const POLICY_PREFIX_PROTOCOL: u32 = 80;
/// Prefix length of a [`POLICY_CIDR`] key before the address: add the address prefix.
pub const POLICY_CIDR_PREFIX_BASE: u32 = 64;

/// The data of a [`POLICY`] key: multi-byte fields big-endian, so that a prefix covers a
/// port's high bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyData {
    pub endpoint_be: [u8; 4],
    pub identity_be: [u8; 4],
    pub direction: u8,
    /// IP protocol number (0 in entries for every protocol).
    pub protocol: u8,
    pub port_be: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<PolicyData>() == 12);

/// Value of [`POLICY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// Which rule allowed it, for verdict events: 0 is "the node may always reach its pods",
    /// others index the agent's table of policy rules.
    pub rule_id: u32,
    /// Reserved, zero.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);

/// The data of a [`POLICY_CIDR`] key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCidrData {
    pub endpoint_be: [u8; 4],
    pub direction: u8,
    /// Reserved, zero.
    pub pad: [u8; 3],
    pub addr: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<PolicyCidrData>() == 12);

/// Key of [`POLICY_FLOWS`]: a flow as one endpoint saw it pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyFlowKey {
    pub endpoint: u32,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
    /// Reserved, zero.
    pub pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<PolicyFlowKey>() == 20);

/// Value of [`POLICY_FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyFlow {
    /// When a packet of the flow (either way) last passed, in seconds of `CLOCK_MONOTONIC`
    /// (`bpf_ktime_get_coarse_ns`).
    pub last_seen: u32,
    /// `FLOW_*` bits.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyFlow>() == 8);

/// [`PolicyFlow::flags`]: a packet answering the flow passed (TCP: the connection is
/// established, not a lone SYN).
pub const FLOW_REPLIED: u32 = 1;
/// [`PolicyFlow::flags`]: a TCP FIN or RST passed; the connection is closing.
pub const FLOW_CLOSING: u32 = 1 << 1;

/// How long a flow of [`POLICY_FLOWS`] may go without a packet before the agent forgets it
/// (Cilium's connection-tracking lifetimes): `(flags, protocol) → seconds`. An established TCP
/// connection lasts 6 hours idle; one closing, 10 s; a SYN nobody answered, and any other
/// protocol's flow, 60 s.
pub const fn flow_idle_seconds(flags: u32, protocol: u8) -> u32 {
    if protocol != PROTO_TCP {
        FLOW_IDLE_SECONDS.other
    } else if flags & FLOW_CLOSING != 0 {
        FLOW_IDLE_SECONDS.tcp_closing
    } else if flags & FLOW_REPLIED != 0 {
        FLOW_IDLE_SECONDS.tcp_established
    } else {
        FLOW_IDLE_SECONDS.other
    }
}

/// The lifetimes [`flow_idle_seconds`] chooses from.
#[derive(Clone, Copy, Debug)]
pub struct FlowIdleSeconds {
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub other: u32,
}

/// Cilium's defaults (`bpf-ct-timeout-regular-tcp`, `-tcp-fin`, `-regular-any`).
pub const FLOW_IDLE_SECONDS: FlowIdleSeconds = FlowIdleSeconds {
    tcp_established: 6 * 3600,
    tcp_closing: 10,
    other: 60,
};

/// [`PolicyVerdict::verdict`]: let through.
pub const VERDICT_ALLOWED: u8 = 1;
/// [`PolicyVerdict::verdict`]: dropped.
pub const VERDICT_DENIED: u8 = 0;
/// [`PolicyVerdict::verdict`]: dropped before any policy, because the pod sent it with an address
/// (or MAC) that is not its own ([`DROP_SPOOFED`]).
pub const VERDICT_SPOOFED: u8 = 2;
/// [`PolicyVerdict::verdict`]: allowed by a rule, but dropped because the endpoint could not
/// remember one more flow ([`DROP_FLOW_TABLE_FULL`]).
pub const VERDICT_FLOW_TABLE_FULL: u8 = 3;

/// A record of [`POLICY_EVENTS`]: the first packet of a flow at an enforcing endpoint, or a
/// spoofed packet at any endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyVerdict {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
    /// [`POLICY_INGRESS`] or [`POLICY_EGRESS`], at `endpoint`.
    pub direction: u8,
    /// [`VERDICT_ALLOWED`], [`VERDICT_DENIED`], [`VERDICT_SPOOFED`] or
    /// [`VERDICT_FLOW_TABLE_FULL`].
    pub verdict: u8,
    /// Reserved, zero.
    pub pad: u8,
    pub endpoint: u32,
    /// The peer's identity (or `ipBlock` class) as judged.
    pub peer_identity: u32,
    /// The allowing rule ([`PolicyValue::rule_id`]); 0 when denied or not enforced.
    pub rule_id: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyVerdict>() == 28);

/// [`PolicyDropKey::reason`]: no policy rule allows the flow.
pub const DROP_POLICY_DENIED: u8 = 1;
/// [`PolicyDropKey::reason`]: an enforcing endpoint got a packet it cannot judge (IP options,
/// fragments).
pub const DROP_UNPARSABLE: u8 = 2;
/// [`PolicyDropKey::reason`]: a pod sent a packet whose source address is not its own, or not
/// from its own MAC (counted at the sender, direction [`POLICY_EGRESS`]). Every endpoint checks
/// this, enforcing policy or not: policy judges peers by their source address.
pub const DROP_SPOOFED: u8 = 3;
/// [`PolicyDropKey::reason`]: the endpoint holds its whole share of [`POLICY_FLOWS`] (or the
/// table is full), so a new flow it would have to remember is dropped.
pub const DROP_FLOW_TABLE_FULL: u8 = 4;

/// Key of [`POLICY_DROPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyDropKey {
    pub endpoint: u32,
    /// [`POLICY_INGRESS`] or [`POLICY_EGRESS`].
    pub direction: u8,
    /// `DROP_*`.
    pub reason: u8,
    /// Reserved, zero.
    pub pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<PolicyDropKey>() == 8);

/// Capacity of [`ENDPOINTS`], like [`POD_TRAFFIC_MAX_ENTRIES`].
pub const ENDPOINTS_MAX_ENTRIES: u32 = 4096;

/// Capacity of [`REMOTE_NODES`]: two entries (pod CIDR and node address) per other node.
pub const REMOTE_NODES_MAX_ENTRIES: u32 = 16384;

/// A pod on this node, as the programs need it to deliver a frame straight into its namespace.
///
/// MACs are in wire order. Value of [`ENDPOINTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The host-side veth's ifindex: `bpf_redirect_peer` target and [`POD_TRAFFIC`] key.
    pub host_ifindex: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// The pod's `eth0` MAC: destination of delivered frames.
    pub pod_mac: [u8; 6],
    /// The host-side veth's MAC: source of delivered frames (the pod's gateway neighbour).
    pub host_mac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);

/// Value of [`REMOTE_NODES`]: where to send a packet for the matching prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteNode {
    /// The node's underlay address in network byte order (octets in memory order): the next hop
    /// given to `bpf_redirect_neigh`.
    pub node_ip_be: [u8; 4],
    /// Reserved, zero.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<RemoteNode>() == 8);

/// Value of [`NODE_CONFIG`] at index 0. All zero means "not configured": the programs then only
/// deliver to local pods and hand everything else to the host stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The underlay device's ifindex: where `bpf_redirect_neigh` sends packets for other nodes.
    pub underlay_ifindex: u32,
    /// This node's underlay address, octets in wire order: the source NodePort traffic gets when
    /// it is sent on to a backend on another node. Zero (as agents before it wrote this once
    /// reserved field) means unknown: such traffic then only reaches local backends.
    pub node_ip: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<NodeConfig>() == 8);

/// Capacity of [`POD_TRAFFIC`]: well above the 110 pods a node runs.
pub const POD_TRAFFIC_MAX_ENTRIES: u32 = 4096;

/// Packets and bytes seen on one pod's host-side veth, per CPU in the map.
///
/// "From pod" is what the pod sent (TC ingress on the host side), "to pod" what it was sent (TC
/// egress on the host side). Bytes are `skb->len`: the Ethernet frame without FCS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PodTraffic>() == 32);

impl PodTraffic {
    /// Adds another CPU's counters to these (user space sums the per-CPU values).
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            from_pod_packets: self.from_pod_packets + other.from_pod_packets,
            from_pod_bytes: self.from_pod_bytes + other.from_pod_bytes,
            to_pod_packets: self.to_pod_packets + other.to_pod_packets,
            to_pod_bytes: self.to_pod_bytes + other.to_pod_bytes,
        }
    }
}

// SAFETY: `PodTraffic` is `repr(C)`, made only of `u64`s, has no padding and is valid for any bit
// pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PodTraffic {}

// SAFETY: `repr(C)`, integers and byte arrays only, no implicit padding (checked sizes above), valid
// for any bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RemoteNode {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NodeConfig {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceKey {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceValue {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Backend {}
// SAFETY: an array of `u32`s.
#[cfg(feature = "user")]
unsafe impl aya::Pod for MaglevTable {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for AffinityKey {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for AffinityValue {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockRevNatKey {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockRevNatValue {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CtKey {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CtValue {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyData {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyValue {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyCidrData {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyFlowKey {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyVerdict {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyDropKey {}
// SAFETY: as for `Endpoint`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyFlow {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_adds_every_counter() {
        let a = PodTraffic {
            from_pod_packets: 1,
            from_pod_bytes: 100,
            to_pod_packets: 2,
            to_pod_bytes: 200,
        };
        let b = PodTraffic {
            from_pod_packets: 10,
            from_pod_bytes: 1000,
            to_pod_packets: 20,
            to_pod_bytes: 2000,
        };
        assert_eq!(
            a.merged(b),
            PodTraffic {
                from_pod_packets: 11,
                from_pod_bytes: 1100,
                to_pod_packets: 22,
                to_pod_bytes: 2200,
            }
        );
    }
}
