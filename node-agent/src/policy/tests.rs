//! The upstream netpol e2e model, evaluated with [`decide`]: namespaces `x`, `y`, `z` (labels
//! `ns=x` …) with pods `a`, `b`, `c` each (labels `pod=a` …; the `b`s also `role=server`),
//! serving TCP and UDP on ports 80 and 81 under the upstream names (`serve-80-tcp` …). A
//! connection from one pod to another is allowed when the source's egress and the destination's
//! ingress both allow it; a pod to itself goes over loopback and never meets the programs, so
//! the diagonal is always allowed (upstream's `AllowLoopback`).

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use apiary_api::networking_v1::NetworkPolicy;
use apiary_ebpf_common::{PROTO_TCP, PROTO_UDP};
use serde_json::{Value, json};

use super::{
    identity::Labels,
    plan::{Plan, plan},
    *,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn upstream_ports() -> Vec<NamedPort> {
    let mut ports = Vec::new();
    for port in [80, 81] {
        for (proto, name) in [(PROTO_TCP, "tcp"), (PROTO_UDP, "udp")] {
            ports.push(NamedPort {
                name: format!("serve-{port}-{name}"),
                protocol: proto,
                port,
            });
        }
    }
    ports
}

/// The pods by index `0..9`: x/a, x/b, x/c, y/a, …
fn pod_ref(i: usize) -> PodRef {
    PodRef::new(NAMESPACES[i / 3], PODS[i % 3])
}

fn index(pod: &str) -> usize {
    (0..9).find(|&i| pod_ref(i).to_string() == pod).unwrap()
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        244,
        1 + (i / 3) as u8,
        10 + (i % 3) as u8,
    ))
}

/// The cluster of the e2e model, and a stand-in for the control plane's identity allocator:
/// one identity per (namespace, pod labels, namespace labels), kept for as long as the lab
/// lives, so a relabel moves only the relabelled pods.
struct Lab {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodRef, (Labels, Vec<NamedPort>)>,
    allocated: BTreeMap<(String, Labels, Labels), Identity>,
}

impl Lab {
    fn new() -> Self {
        let namespaces = NAMESPACES
            .iter()
            .map(|ns| (ns.to_string(), labels(&[("ns", ns)])))
            .collect();
        let pods = (0..9)
            .map(|i| {
                let p = pod_ref(i);
                let mut l = labels(&[("pod", &p.name)]);
                if p.name == "b" {
                    l.insert("role".into(), "server".into());
                }
                (p, (l, upstream_ports()))
            })
            .collect();
        Self {
            namespaces,
            pods,
            allocated: BTreeMap::new(),
        }
    }

    fn cluster(&mut self) -> Cluster {
        let mut cluster = Cluster {
            namespaces: self.namespaces.clone(),
            pods: BTreeMap::new(),
        };
        for (i, (pod, (labels, ports))) in self.pods.iter().enumerate() {
            let key = (
                pod.namespace.clone(),
                labels.clone(),
                cluster.namespace_labels(&pod.namespace),
            );
            let next = Identity(Identity::MIN_CLUSTER.0 + self.allocated.len() as u32);
            let identity = *self.allocated.entry(key).or_insert(next);
            cluster.pods.insert(
                pod.clone(),
                PodInfo {
                    identity,
                    labels: labels.clone(),
                    ips: vec![pod_ip(i)],
                    ports: ports.clone(),
                },
            );
        }
        cluster
    }

    /// Every pod's policy (all nine are local: which node a pod is on does not change what it
    /// may do), and the cluster it was compiled from.
    fn compile(
        &mut self,
        policies: &[NetworkPolicy],
    ) -> (Cluster, BTreeMap<PodRef, EndpointPolicy>) {
        let cluster = self.cluster();
        let identities = IdentityIndex::new(&cluster).unwrap();
        let local: Vec<PodRef> = (0..9).map(pod_ref).collect();
        let compiled = compile(policies, &cluster, &identities, &local);
        (cluster, compiled)
    }

    /// The 9×9 reachability on one protocol and port.
    fn table(&mut self, policies: &[NetworkPolicy], protocol: u8, port: u16) -> Table {
        let (cluster, compiled) = self.compile(policies);
        let mut t = Table([[true; 9]; 9]);
        for from in 0..9 {
            for to in 0..9 {
                if from == to {
                    continue;
                }
                let (f, d) = (&cluster.pods[&pod_ref(from)], &cluster.pods[&pod_ref(to)]);
                let out = decide(
                    &compiled[&pod_ref(from)],
                    Direction::Egress,
                    d.identity,
                    d.ips[0],
                    protocol,
                    port,
                );
                let inn = decide(
                    &compiled[&pod_ref(to)],
                    Direction::Ingress,
                    f.identity,
                    f.ips[0],
                    protocol,
                    port,
                );
                t.0[from][to] = out.allowed && inn.allowed;
            }
        }
        t
    }
}

/// Reachability, `[from][to]`; printed like upstream's truth tables (`.` allowed, `X` denied).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Table([[bool; 9]; 9]);

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n    ")?;
        for to in 0..9 {
            write!(f, " {}", pod_ref(to))?;
        }
        for from in 0..9 {
            write!(f, "\n{}", pod_ref(from))?;
            for to in 0..9 {
                write!(f, "   {}", if self.0[from][to] { "." } else { "X" })?;
            }
        }
        Ok(())
    }
}

/// An expected table, built as upstream's `Reachability` is: start from all allowed or all
/// denied, then set whole rows (egress), columns (ingress) or cells. The diagonal stays allowed.
struct Expect(Table);

impl Expect {
    fn all(allowed: bool) -> Self {
        Self(Table([[allowed; 9]; 9]))
    }

    fn ingress(mut self, to: &str, allowed: bool) -> Self {
        let to = index(to);
        (0..9).for_each(|from| self.0.0[from][to] = allowed);
        self
    }

    fn egress(mut self, from: &str, allowed: bool) -> Self {
        let from = index(from);
        (0..9).for_each(|to| self.0.0[from][to] = allowed);
        self
    }

    fn set(mut self, from: &str, to: &str, allowed: bool) -> Self {
        self.0.0[index(from)][index(to)] = allowed;
        self
    }

    fn table(mut self) -> Table {
        (0..9).for_each(|i| self.0.0[i][i] = true);
        self.0
    }
}

fn policy(namespace: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn deny_all_ingress(ns: &str) -> NetworkPolicy {
    policy(ns, "deny-all", json!({"podSelector": {}}))
}

/// Asserts reachability on TCP/80 (upstream's default probe).
fn assert_tcp80(policies: &[NetworkPolicy], expected: Expect) {
    assert_table(policies, PROTO_TCP, 80, expected);
}

fn assert_table(policies: &[NetworkPolicy], protocol: u8, port: u16, expected: Expect) {
    let got = Lab::new().table(policies, protocol, port);
    assert_eq!(got, expected.table(), "protocol {protocol} port {port}");
}

/// The policy of `x/a` allowing ingress `from` these peers on these ports.
fn allow_xa_from(from: Value, ports: Value) -> NetworkPolicy {
    policy(
        "x",
        "allow-xa",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": from, "ports": ports}]}),
    )
}

fn xa_column_only(allowed_from: &[&str]) -> Expect {
    let mut e = Expect::all(true).ingress("x/a", false);
    for from in allowed_from {
        e = e.set(from, "x/a", true);
    }
    e
}

#[test]
fn no_policy_allows_everything() {
    assert_tcp80(&[], Expect::all(true));
    assert_table(&[], PROTO_UDP, 81, Expect::all(true));
}

#[test]
fn default_deny_ingress_closes_only_the_selected_namespace() {
    let e = Expect::all(true)
        .ingress("x/a", false)
        .ingress("x/b", false)
        .ingress("x/c", false);
    assert_tcp80(&[deny_all_ingress("x")], e);
}

#[test]
fn default_deny_egress() {
    let p = policy(
        "x",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let e = Expect::all(true)
        .egress("x/a", false)
        .egress("x/b", false)
        .egress("x/c", false);
    assert_tcp80(std::slice::from_ref(&p), e);
    // Egress only: ingress of x stays open.
    let (_, compiled) = Lab::new().compile(&[p]);
    assert!(!compiled[&PodRef::new("x", "a")].ingress_enforced);
    assert!(compiled[&PodRef::new("x", "a")].egress_enforced);
}

#[test]
fn default_deny_both_directions() {
    let p = policy(
        "y",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let mut e = Expect::all(true);
    for pod in ["y/a", "y/b", "y/c"] {
        e = e.ingress(pod, false).egress(pod, false);
    }
    assert_tcp80(&[p], e);
}

#[test]
fn allow_all_ingress_unions_with_deny_all() {
    let allow = policy(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    assert_tcp80(&[deny_all_ingress("x"), allow.clone()], Expect::all(true));
    assert_table(&[allow], PROTO_UDP, 81, Expect::all(true));
    let allow_egress = policy(
        "x",
        "allow-all-egress",
        json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}),
    );
    assert_tcp80(&[allow_egress], Expect::all(true));
}

#[test]
fn pod_selector_peers_are_of_the_policy_namespace() {
    let p = allow_xa_from(
        json!([{"podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([]),
    );
    assert_tcp80(&[p], xa_column_only(&["x/b"]));
}

#[test]
fn namespace_selector_peers_are_every_pod_of_the_namespaces() {
    let p = allow_xa_from(
        json!([{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]),
        json!([]),
    );
    assert_tcp80(&[p], xa_column_only(&["y/a", "y/b", "y/c"]));
    // The automatic name label selects the same.
    let p = allow_xa_from(
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]),
        json!([]),
    );
    assert_tcp80(&[p], xa_column_only(&["y/a", "y/b", "y/c"]));
    // An empty namespaceSelector: every pod, no address outside the cluster.
    let p = allow_xa_from(json!([{"namespaceSelector": {}}]), json!([]));
    assert_tcp80(std::slice::from_ref(&p), Expect::all(true));
    let (_, compiled) = Lab::new().compile(&[p]);
    let world = decide(
        &compiled[&PodRef::new("x", "a")],
        Direction::Ingress,
        Identity::WORLD,
        "8.8.8.8".parse().unwrap(),
        PROTO_TCP,
        80,
    );
    assert!(!world.allowed);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and() {
    let p = allow_xa_from(
        json!([{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                "podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([]),
    );
    assert_tcp80(&[p], xa_column_only(&["y/b"]));
}

#[test]
fn several_peers_are_or() {
    let p = allow_xa_from(
        json!([{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
               {"podSelector": {"matchLabels": {"pod": "c"}}}]),
        json!([]),
    );
    assert_tcp80(&[p], xa_column_only(&["y/a", "y/b", "y/c", "x/c"]));
}

fn expression(key: &str, operator: &str, values: &[&str]) -> Value {
    json!({"matchExpressions": [{"key": key, "operator": operator, "values": values}]})
}

#[test]
fn match_expressions_in() {
    let p = allow_xa_from(
        json!([{"namespaceSelector": expression("ns", "In", &["y", "z"]),
                "podSelector": expression("pod", "In", &["a", "c"])}]),
        json!([]),
    );
    assert_tcp80(&[p], xa_column_only(&["y/a", "y/c", "z/a", "z/c"]));
}

#[test]
fn match_expressions_not_in() {
    let p = allow_xa_from(
        json!([{"namespaceSelector": expression("ns", "NotIn", &["x", "y"])}]),
        json!([]),
    );
    assert_tcp80(&[p], xa_column_only(&["z/a", "z/b", "z/c"]));
}

#[test]
fn match_expressions_exists() {
    let p = allow_xa_from(
        json!([{"namespaceSelector": {}, "podSelector": expression("role", "Exists", &[])}]),
        json!([]),
    );
    assert_tcp80(&[p], xa_column_only(&["x/b", "y/b", "z/b"]));
}

#[test]
fn match_expressions_does_not_exist_on_the_policy_selector_too() {
    // Selects x/a and x/c (no `role`); lets in only x/b.
    let p = policy(
        "x",
        "servers-only",
        json!({"podSelector": expression("role", "DoesNotExist", &[]),
               "ingress": [{"from": [{"podSelector": expression("role", "Exists", &[])}]}]}),
    );
    let e = Expect::all(true)
        .ingress("x/a", false)
        .ingress("x/c", false)
        .set("x/b", "x/a", true)
        .set("x/b", "x/c", true);
    assert_tcp80(&[p], e);
}

#[test]
fn ip_block_with_except_matches_pod_ips() {
    // Upstream "should enforce except clause while egress access to server in CIDR block":
    // x/a may reach the pod network except y/b.
    let p = policy(
        "x",
        "cidr-egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                               "except": ["10.244.2.11/32"]}}]}]}),
    );
    assert_tcp80(
        std::slice::from_ref(&p),
        Expect::all(true).set("x/a", "y/b", false),
    );
    let (cluster, compiled) = Lab::new().compile(&[p]);
    let xa = &compiled[&PodRef::new("x", "a")];
    let out = |ip: &str| {
        decide(
            xa,
            Direction::Egress,
            Identity::WORLD,
            ip.parse().unwrap(),
            PROTO_UDP,
            53,
        )
    };
    assert!(out("10.244.200.1").allowed);
    assert!(!out("10.244.2.11").allowed);
    assert!(out("10.244.2.10").allowed);
    assert!(out("10.244.2.12").allowed);
    assert!(!out("10.245.0.1").allowed);
    assert!(!out("8.8.8.8").allowed);
    assert!(matches!(out("10.244.2.12").reason, Reason::Cidr { .. }));
    // One class; the /16 minus one address is 16 prefixes.
    assert_eq!(xa.cidrs.len(), 16);
    // Brute force every address of 10.244.2.0/24 against the API's own reading of the block.
    let block = apiary_api::networking_v1::IpBlock {
        cidr: "10.244.0.0/16".into(),
        except: vec!["10.244.2.11/32".into()],
    };
    for last in 0..=255u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 244, 2, last));
        assert_eq!(out(&ip.to_string()).allowed, block.contains(ip), "{ip}");
    }
    // The identity does not matter for a CIDR: y/b's own identity is still denied.
    let yb = cluster.pods[&PodRef::new("y", "b")].identity;
    let v = decide(xa, Direction::Egress, yb, pod_ip(4), PROTO_TCP, 80);
    assert!(!v.allowed);
}

#[test]
fn ip_block_overlapping_another_rules_except_is_allowed() {
    // Upstream "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is
    // allowed": one rule excepts y/b, another allows exactly y/b.
    let p = policy(
        "x",
        "cidr-overlap",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [
                   {"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]},
                   {"to": [{"ipBlock": {"cidr": "10.244.2.11/32"}}]}]}),
    );
    let e = Expect::all(true)
        .set("x/a", "y/a", false)
        .set("x/a", "y/c", false);
    assert_tcp80(std::slice::from_ref(&p), e);
    let (_, compiled) = Lab::new().compile(&[p]);
    let v = decide(
        &compiled[&PodRef::new("x", "a")],
        Direction::Egress,
        Identity::WORLD,
        pod_ip(4),
        PROTO_TCP,
        80,
    );
    match v.reason {
        Reason::Cidr {
            by: Allow::Rule(r), ..
        } => assert_eq!(r.rule, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ip_block_ingress_with_ports() {
    // From namespace y's addresses, TCP/81 only.
    let p = allow_xa_from(
        json!([{"ipBlock": {"cidr": "10.244.2.0/24"}}]),
        json!([{"port": 81}]),
    );
    assert_tcp80(std::slice::from_ref(&p), xa_column_only(&[]));
    assert_table(
        std::slice::from_ref(&p),
        PROTO_TCP,
        81,
        xa_column_only(&["y/a", "y/b", "y/c"]),
    );
    assert_table(&[p], PROTO_UDP, 81, xa_column_only(&[]));
}

#[test]
fn ip_block_rules_union_their_ports_per_address() {
    // 80 to the whole pod network, 81 and UDP/80 to namespace y only: y's addresses get all.
    let p = policy(
        "x",
        "cidr-ports",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [
                   {"to": [{"ipBlock": {"cidr": "10.244.0.0/16"}}], "ports": [{"port": 80}]},
                   {"to": [{"ipBlock": {"cidr": "10.244.2.0/24"}}],
                    "ports": [{"port": 81}, {"port": 80, "protocol": "UDP"}]}]}),
    );
    let only_y = Expect::all(true)
        .egress("x/a", false)
        .set("x/a", "y/a", true)
        .set("x/a", "y/b", true)
        .set("x/a", "y/c", true);
    assert_tcp80(std::slice::from_ref(&p), Expect::all(true));
    assert_table(std::slice::from_ref(&p), PROTO_TCP, 81, only_y);
    let only_y = Expect::all(true)
        .egress("x/a", false)
        .set("x/a", "y/a", true)
        .set("x/a", "y/b", true)
        .set("x/a", "y/c", true);
    assert_table(std::slice::from_ref(&p), PROTO_UDP, 80, only_y);
    // Two classes: the /16 outside y (port 80), y's /24 (three entries).
    let (_, compiled) = Lab::new().compile(&[p]);
    let xa = &compiled[&PodRef::new("x", "a")];
    let classes: std::collections::BTreeSet<Identity> = xa.cidrs.values().copied().collect();
    assert_eq!(classes.len(), 2);
    assert_eq!(xa.entries.len(), 4);
}

#[test]
fn named_ports_resolve_on_the_selected_pod_for_ingress() {
    let p = allow_xa_from(json!([]), json!([{"port": "serve-81-tcp"}]));
    assert_tcp80(std::slice::from_ref(&p), xa_column_only(&[]));
    assert_table(std::slice::from_ref(&p), PROTO_TCP, 81, Expect::all(true));
    assert_table(std::slice::from_ref(&p), PROTO_UDP, 81, xa_column_only(&[]));
    // A UDP name with a UDP port.
    let p = allow_xa_from(
        json!([]),
        json!([{"port": "serve-80-udp", "protocol": "UDP"}]),
    );
    assert_table(std::slice::from_ref(&p), PROTO_UDP, 80, Expect::all(true));
    assert_tcp80(std::slice::from_ref(&p), xa_column_only(&[]));
    // The name with the wrong protocol matches nothing.
    let p = allow_xa_from(json!([]), json!([{"port": "serve-80-udp"}]));
    assert_tcp80(std::slice::from_ref(&p), xa_column_only(&[]));
    assert_table(&[p], PROTO_UDP, 80, xa_column_only(&[]));
}

#[test]
fn named_ports_resolve_per_peer_for_egress() {
    // `web` is 80 on x/b, 81 on x/c and y/b, absent elsewhere.
    let mut lab = Lab::new();
    for (pod, port) in [("x/b", 80), ("x/c", 81), ("y/b", 81)] {
        let (_, ports) = lab.pods.get_mut(&pod_ref(index(pod))).unwrap();
        ports.push(NamedPort {
            name: "web".into(),
            protocol: PROTO_TCP,
            port,
        });
    }
    let rule = |to: Value| {
        policy(
            "x",
            "egress-web",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": to, "ports": [{"port": "web"}]}]}),
        )
    };
    let egress_xa_only = |to: &[&str]| {
        let mut e = Expect::all(true).egress("x/a", false);
        for t in to {
            e = e.set("x/a", t, true);
        }
        e.table()
    };
    for p in [
        rule(json!([{"namespaceSelector": {}}])),
        rule(json!([])),
        rule(json!([{"ipBlock": {"cidr": "10.244.0.0/16"}}])),
    ] {
        let p = std::slice::from_ref(&p);
        assert_eq!(lab.table(p, PROTO_TCP, 80), egress_xa_only(&["x/b"]));
        assert_eq!(lab.table(p, PROTO_TCP, 81), egress_xa_only(&["x/c", "y/b"]));
        assert_eq!(lab.table(p, PROTO_UDP, 81), egress_xa_only(&[]));
    }
    // Towards "everyone" a named port never reaches outside the cluster.
    let (_, compiled) = lab.compile(&[rule(json!([]))]);
    let v = decide(
        &compiled[&PodRef::new("x", "a")],
        Direction::Egress,
        Identity::WORLD,
        "1.1.1.1".parse().unwrap(),
        PROTO_TCP,
        80,
    );
    assert!(!v.allowed);
}

#[test]
fn end_port_ranges_split_at_odd_boundaries() {
    let p = allow_xa_from(json!([]), json!([{"port": 80, "endPort": 81}]));
    let (_, compiled) = Lab::new().compile(std::slice::from_ref(&p));
    let xa = &compiled[&PodRef::new("x", "a")];
    // One entry for 80..=81 (80/15) plus the host's.
    assert_eq!(xa.entries.len(), 2);
    assert_tcp80(std::slice::from_ref(&p), Expect::all(true));
    assert_table(std::slice::from_ref(&p), PROTO_TCP, 81, Expect::all(true));
    assert_table(&[p], PROTO_TCP, 82, xa_column_only(&[]));

    let check = |lo: i32, hi: i32, probes: &[(u16, bool)]| {
        let p = allow_xa_from(
            json!([]),
            json!([{"protocol": "SCTP", "port": lo, "endPort": hi}]),
        );
        let (cluster, compiled) = Lab::new().compile(&[p]);
        let xb = cluster.pods[&PodRef::new("x", "b")].identity;
        for &(port, allowed) in probes {
            let v = decide(
                &compiled[&PodRef::new("x", "a")],
                Direction::Ingress,
                xb,
                pod_ip(1),
                apiary_ebpf_common::PROTO_SCTP,
                port,
            );
            assert_eq!(v.allowed, allowed, "{lo}..={hi} port {port}");
        }
        compiled[&PodRef::new("x", "a")].entries.len() - 1
    };
    let probes: Vec<(u16, bool)> = [
        0u16, 1, 999, 1000, 1001, 1023, 1024, 1535, 1536, 1999, 2000, 2001, 2047, 65535,
    ]
    .iter()
    .map(|&p| (p, (1000..=2000).contains(&p)))
    .collect();
    assert_eq!(check(1000, 2000, &probes), 8);
    let all: Vec<(u16, bool)> = [0u16, 1, 2, 80, 32767, 32768, 65534, 65535]
        .iter()
        .map(|&p| (p, p >= 1))
        .collect();
    assert_eq!(check(1, 65535, &all), 16);
    assert_eq!(check(65535, 65535, &[(65535, true), (65534, false)]), 1);
    // Every port of a protocol: no `port`.
    let p = allow_xa_from(json!([]), json!([{"protocol": "UDP"}]));
    assert_table(std::slice::from_ref(&p), PROTO_UDP, 1, Expect::all(true));
    assert_table(
        std::slice::from_ref(&p),
        PROTO_UDP,
        65535,
        Expect::all(true),
    );
    assert_tcp80(&[p], xa_column_only(&[]));
}

#[test]
fn protocols_are_matched() {
    let p = allow_xa_from(json!([]), json!([{"protocol": "UDP", "port": 80}]));
    assert_table(std::slice::from_ref(&p), PROTO_UDP, 80, Expect::all(true));
    assert_table(std::slice::from_ref(&p), PROTO_UDP, 81, xa_column_only(&[]));
    assert_tcp80(std::slice::from_ref(&p), xa_column_only(&[]));
    // An unknown protocol allows nothing (and does not turn into "all ports").
    let p = allow_xa_from(json!([]), json!([{"protocol": "ICMP", "port": 80}]));
    assert_tcp80(&[p], xa_column_only(&[]));
}

#[test]
fn policy_types_egress_only_ignores_ingress_rules() {
    let p = policy(
        "x",
        "egress-only",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "policyTypes": ["Egress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    let e = Expect::all(true)
        .egress("x/a", false)
        .set("x/a", "y/a", true)
        .set("x/a", "y/b", true)
        .set("x/a", "y/c", true);
    assert_tcp80(&[p], e);
}

#[test]
fn implied_egress_type_when_egress_rules_exist() {
    let p = policy(
        "x",
        "implied",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "egress": [{"ports": [{"port": 81}]}]}),
    );
    // Ingress implied and empty: nothing in. Egress: only port 81, to anyone.
    assert_tcp80(
        std::slice::from_ref(&p),
        Expect::all(true).ingress("x/a", false).egress("x/a", false),
    );
    assert_table(&[p], PROTO_TCP, 81, Expect::all(true).ingress("x/a", false));
}

#[test]
fn multiple_policies_union() {
    let one = allow_xa_from(
        json!([{"podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([]),
    );
    let mut two = policy(
        "x",
        "allow-xa-2",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}},
                                      "podSelector": {"matchLabels": {"pod": "c"}}}],
                            "ports": [{"port": 80}]}]}),
    );
    assert_tcp80(&[one.clone(), two.clone()], xa_column_only(&["x/b", "z/c"]));
    assert_table(
        &[one.clone(), two.clone()],
        PROTO_TCP,
        81,
        xa_column_only(&["x/b"]),
    );
    // A policy of another namespace with the same selector does not apply to x/a.
    two.metadata.namespace = "y".into();
    assert_tcp80(
        &[one, two],
        Expect::all(true)
            .ingress("x/a", false)
            .set("x/b", "x/a", true)
            .ingress("y/a", false)
            .set("z/c", "y/a", true),
    );
}

#[test]
fn the_host_always_reaches_its_pods_and_verdicts_name_the_rule() {
    let p = allow_xa_from(
        json!([{"podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([]),
    );
    let (cluster, compiled) = Lab::new().compile(&[deny_all_ingress("x"), p]);
    let xa = &compiled[&PodRef::new("x", "a")];
    let host = decide(
        xa,
        Direction::Ingress,
        Identity::HOST,
        "192.168.0.1".parse().unwrap(),
        PROTO_TCP,
        10250,
    );
    assert_eq!(host.reason, Reason::Identity(Allow::Host));
    let xb = cluster.pods[&PodRef::new("x", "b")].identity;
    let v = decide(xa, Direction::Ingress, xb, pod_ip(1), PROTO_TCP, 80);
    let rule = v.rule().unwrap();
    assert_eq!(rule.to_string(), "x/allow-xa ingress[0]");
    let yb = cluster.pods[&PodRef::new("y", "b")].identity;
    let denied = decide(xa, Direction::Ingress, yb, pod_ip(4), PROTO_TCP, 80);
    assert_eq!(denied.reason, Reason::NoRule);
    assert!(!denied.allowed);
    let open = decide(xa, Direction::Egress, yb, pod_ip(4), PROTO_TCP, 80);
    assert_eq!(open.reason, Reason::NotEnforced);
}

#[test]
fn the_longest_port_prefix_names_the_rule() {
    // Rule 0 allows every port from x/b, rule 1 exactly 80: port 80 is attributed to rule 1.
    let p = policy(
        "x",
        "two-rules",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]},
                           {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                            "ports": [{"port": 80}]}]}),
    );
    let (cluster, compiled) = Lab::new().compile(&[p]);
    let xb = cluster.pods[&PodRef::new("x", "b")].identity;
    let xa = &compiled[&PodRef::new("x", "a")];
    let at = |port| decide(xa, Direction::Ingress, xb, pod_ip(1), PROTO_TCP, port);
    assert_eq!(at(80).rule().unwrap().rule, 1);
    assert_eq!(at(81).rule().unwrap().rule, 0);
}

// Updates: recompile, and the plan touches only the endpoints whose policy changed.

fn touched(plan: &Plan) -> Vec<String> {
    plan.endpoints.keys().map(ToString::to_string).collect()
}

#[test]
fn recompiling_the_same_inputs_plans_nothing() {
    let mut lab = Lab::new();
    let ps = [
        deny_all_ingress("x"),
        allow_xa_from(
            json!([{"namespaceSelector": {}}]),
            json!([{"port": 80, "endPort": 90}]),
        ),
    ];
    let (_, a) = lab.compile(&ps);
    let (_, b) = lab.compile(&ps);
    assert!(plan(&a, &b).is_empty());
}

#[test]
fn update_changing_a_selector_touches_only_its_pods() {
    let mut lab = Lab::new();
    let before = allow_xa_from(
        json!([{"podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([]),
    );
    let after = allow_xa_from(
        json!([{"podSelector": {"matchLabels": {"pod": "c"}}}]),
        json!([]),
    );
    let (_, old) = lab.compile(&[deny_all_ingress("y"), before]);
    let (_, new) = lab.compile(&[deny_all_ingress("y"), after.clone()]);
    let p = plan(&old, &new);
    assert_eq!(touched(&p), ["x/a"]);
    let xa = &p.endpoints[&PodRef::new("x", "a")];
    assert_eq!((xa.upsert_entries.len(), xa.delete_entries.len()), (1, 1));
    assert_eq!(xa.enforcement, None);
    assert_eq!(
        lab.table(&[after], PROTO_TCP, 80),
        xa_column_only(&["x/c"]).table()
    );
}

#[test]
fn update_relabelling_a_peer_pod_touches_the_pods_that_select_it() {
    let mut lab = Lab::new();
    let ps = [allow_xa_from(
        json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([]),
    )];
    let (_, old) = lab.compile(&ps);
    // y/b loses `pod=b`: a new identity, no longer selected.
    lab.pods.get_mut(&PodRef::new("y", "b")).unwrap().0 =
        labels(&[("pod", "b2"), ("role", "server")]);
    let (_, new) = lab.compile(&ps);
    let p = plan(&old, &new);
    assert_eq!(touched(&p), ["x/a"]);
    assert_eq!(p.endpoints[&PodRef::new("x", "a")].delete_entries.len(), 1);
    assert_eq!(
        lab.table(&ps, PROTO_TCP, 80),
        xa_column_only(&["x/b", "z/b"]).table()
    );
    // y/c gains `pod=b`: its (new) identity is selected.
    lab.pods.get_mut(&PodRef::new("y", "c")).unwrap().0 = labels(&[("pod", "b")]);
    let (_, newer) = lab.compile(&ps);
    assert_eq!(touched(&plan(&new, &newer)), ["x/a"]);
    assert_eq!(
        lab.table(&ps, PROTO_TCP, 80),
        xa_column_only(&["x/b", "y/c", "z/b"]).table()
    );
}

#[test]
fn update_relabelling_a_local_pod_touches_only_it() {
    let mut lab = Lab::new();
    let ps = [allow_xa_from(json!([]), json!([{"port": 81}]))];
    let (_, old) = lab.compile(&ps);
    // x/c becomes `pod=a`: now selected by the policy (and shares x/a's identity).
    lab.pods.get_mut(&PodRef::new("x", "c")).unwrap().0 = labels(&[("pod", "a")]);
    let (_, new) = lab.compile(&ps);
    let p = plan(&old, &new);
    assert_eq!(touched(&p), ["x/c"]);
    let xc = &p.endpoints[&PodRef::new("x", "c")];
    assert_eq!(
        xc.enforcement,
        Some(plan::Enforcement {
            ingress: true,
            egress: false
        })
    );
    assert_eq!(
        lab.table(&ps, PROTO_TCP, 80),
        Expect::all(true)
            .ingress("x/a", false)
            .ingress("x/c", false)
            .table()
    );
}

#[test]
fn update_relabelling_a_namespace_touches_the_pods_that_select_it() {
    let mut lab = Lab::new();
    let ps = [
        allow_xa_from(
            json!([{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]),
            json!([]),
        ),
        deny_all_ingress("z"),
    ];
    let (_, old) = lab.compile(&ps);
    lab.namespaces
        .insert("y".into(), labels(&[("ns", "y-old")]));
    let (_, new) = lab.compile(&ps);
    let p = plan(&old, &new);
    assert_eq!(touched(&p), ["x/a"]);
    assert_eq!(lab.table(&ps, PROTO_TCP, 80), {
        let mut e = xa_column_only(&[]);
        for pod in ["z/a", "z/b", "z/c"] {
            e = e.ingress(pod, false);
        }
        e.table()
    });
}

#[test]
fn update_deleting_a_policy_touches_only_its_pods() {
    let mut lab = Lab::new();
    let keep = allow_xa_from(json!([{"podSelector": {}}]), json!([]));
    let (_, old) = lab.compile(&[keep.clone(), deny_all_ingress("y")]);
    let (_, new) = lab.compile(&[keep]);
    let p = plan(&old, &new);
    assert_eq!(touched(&p), ["y/a", "y/b", "y/c"]);
    for pod in ["y/a", "y/b", "y/c"] {
        let e = &p.endpoints[&pod_ref(index(pod))];
        assert_eq!(
            e.enforcement,
            Some(plan::Enforcement {
                ingress: false,
                egress: false
            })
        );
        assert_eq!(e.delete_entries.len(), 1, "the host entry");
    }
}

#[test]
fn ip_block_exceptions_update_only_the_selecting_pod() {
    let mut lab = Lab::new();
    let cidr = |except: &[&str]| {
        policy(
            "z",
            "cidr",
            json!({"podSelector": {"matchLabels": {"pod": "c"}},
                   "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.1.0/24", "except": except}}]}]}),
        )
    };
    let (_, old) = lab.compile(&[cidr(&[])]);
    let (_, new) = lab.compile(&[cidr(&["10.244.1.10/31"])]);
    assert_eq!(touched(&plan(&old, &new)), ["z/c"]);
    assert_eq!(
        lab.table(&[cidr(&["10.244.1.10/31"])], PROTO_TCP, 80),
        Expect::all(true)
            .ingress("z/c", false)
            .set("x/c", "z/c", true)
            .table()
    );
}

// A differential check: compile + decide against a direct reading of the NetworkPolicy spec.

/// A peer as the reference sees it: a pod of the lab, or a bare address.
#[derive(Clone, Copy)]
enum Peer {
    Pod(usize),
    Address(IpAddr),
}

/// Whether the spec allows `peer` ↔ `local` in `direction` on (protocol, port), read straight
/// from the policies, without identities, prefixes or classes.
fn reference(
    policies: &[NetworkPolicy],
    cluster: &Cluster,
    local: usize,
    direction: Direction,
    peer: Peer,
    protocol: u8,
    port: u16,
) -> bool {
    let local_ref = pod_ref(local);
    let local_info = &cluster.pods[&local_ref];
    let (peer_ref, peer_ip) = match peer {
        Peer::Pod(i) => (Some(pod_ref(i)), pod_ip(i)),
        Peer::Address(ip) => (None, ip),
    };
    let ty = match direction {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    };
    let selecting: Vec<&NetworkPolicy> = policies
        .iter()
        .filter(|p| p.metadata.namespace == local_ref.namespace)
        .filter(|p| p.spec.pod_selector.matches(&local_info.labels))
        .filter(|p| p.spec.effective_policy_types().contains(&ty))
        .collect();
    if selecting.is_empty() {
        return true;
    }
    let peer_matches = |ns: &str, peers: &[apiary_api::networking_v1::NetworkPolicyPeer]| {
        peers.is_empty()
            || peers.iter().any(|p| {
                if let Some(block) = &p.ip_block {
                    return block.contains(peer_ip);
                }
                let Some(pr) = &peer_ref else { return false };
                if p.pod_selector.is_none() && p.namespace_selector.is_none() {
                    return false;
                }
                let ns_ok = match &p.namespace_selector {
                    Some(sel) => sel.matches(&cluster.namespace_labels(&pr.namespace)),
                    None => pr.namespace == ns,
                };
                ns_ok
                    && p.pod_selector
                        .as_ref()
                        .is_none_or(|sel| sel.matches(&cluster.pods[pr].labels))
            })
    };
    // The destination's container ports: the local pod's for ingress, the peer's for egress.
    let destination = match direction {
        Direction::Ingress => Some(local_info),
        Direction::Egress => peer_ref.as_ref().map(|p| &cluster.pods[p]),
    };
    let port_matches = |ports: &[apiary_api::networking_v1::NetworkPolicyPort]| {
        ports.is_empty()
            || ports.iter().any(|p| {
                let Some(proto) = super::ports::protocol_number(p.protocol.as_deref()) else {
                    return false;
                };
                proto == protocol
                    && match &p.port {
                        None => true,
                        Some(apiary_api::intstr::IntOrString::Int(n)) => {
                            let end = p.end_port.unwrap_or(*n);
                            *n >= 1 && (*n..=end).contains(&i32::from(port))
                        }
                        Some(apiary_api::intstr::IntOrString::String(name)) => destination
                            .is_some_and(|d| {
                                d.ports.iter().any(|c| {
                                    c.name == *name && c.protocol == proto && c.port == port
                                })
                            }),
                    }
            })
    };
    selecting.iter().any(|p| {
        let ns = p.metadata.namespace.as_str();
        match direction {
            Direction::Ingress => p
                .spec
                .ingress
                .iter()
                .any(|r| peer_matches(ns, &r.from) && port_matches(&r.ports)),
            Direction::Egress => p
                .spec
                .egress
                .iter()
                .any(|r| peer_matches(ns, &r.to) && port_matches(&r.ports)),
        }
    })
}

/// Policy sets mixing every feature, for the differential check.
fn catalogue() -> Vec<Vec<NetworkPolicy>> {
    let web_ports = json!([{"port": "serve-81-tcp"}, {"port": 80, "endPort": 81, "protocol": "UDP"},
                           {"port": 1000, "endPort": 2000, "protocol": "SCTP"}]);
    vec![
        vec![],
        vec![deny_all_ingress("x")],
        vec![
            deny_all_ingress("x"),
            allow_xa_from(
                json!([{"namespaceSelector": expression("ns", "In", &["y", "z"]),
                        "podSelector": expression("role", "DoesNotExist", &[])},
                       {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24", "10.244.3.11/32"]}},
                       {"ipBlock": {"cidr": "10.244.2.12/30"}}]),
                web_ports.clone(),
            ),
        ],
        vec![policy(
            "y",
            "egress-mix",
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]},
                   "policyTypes": ["Egress", "Ingress"],
                   "ingress": [{"ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}],
                   "egress": [
                       {"to": [{"podSelector": {}}], "ports": [{"port": "serve-80-tcp"}]},
                       {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.1.0/24"]}}],
                        "ports": [{"port": 81}, {"port": "serve-81-udp", "protocol": "UDP"}]},
                       {"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
        )],
        vec![
            policy(
                "z",
                "a",
                json!({"podSelector": {"matchLabels": {"role": "server"}},
                       "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]},
                                   {"from": [{"ipBlock": {"cidr": "10.244.1.8/29", "except": ["10.244.1.12/32"]}}]}],
                       "egress": [{"to": [], "ports": [{"protocol": "UDP"}]}]}),
            ),
            policy(
                "z",
                "b",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}, "namespaceSelector": {}}],
                                   "ports": [{"port": 81, "endPort": 82}, {"port": 1, "endPort": 65535, "protocol": "SCTP"}]},
                                  {"to": [{"ipBlock": {"cidr": "8.8.8.0/24"}}]}]}),
            ),
        ],
    ]
}

#[test]
fn compiled_policies_agree_with_a_direct_reading_of_the_spec() {
    use apiary_ebpf_common::PROTO_SCTP;
    let probes: Vec<(u8, u16)> = [PROTO_TCP, PROTO_UDP, PROTO_SCTP]
        .into_iter()
        .flat_map(|proto| {
            [1u16, 53, 79, 80, 81, 82, 999, 1000, 1500, 2000, 2001, 65535].map(|port| (proto, port))
        })
        .collect();
    let outside: Vec<IpAddr> = [
        "8.8.8.8",
        "8.8.9.8",
        "10.244.1.9",
        "10.244.2.200",
        "10.244.3.99",
        "172.16.0.1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let (mut checked, mut allowed) = (0, 0);
    for policies in catalogue() {
        let (cluster, compiled) = Lab::new().compile(&policies);
        for local in 0..9 {
            let ep = &compiled[&pod_ref(local)];
            let peers = (0..9)
                .filter(|&p| p != local)
                .map(Peer::Pod)
                .chain(outside.iter().copied().map(Peer::Address));
            for peer in peers {
                let (identity, ip) = match peer {
                    Peer::Pod(i) => (cluster.pods[&pod_ref(i)].identity, pod_ip(i)),
                    Peer::Address(ip) => (Identity::WORLD, ip),
                };
                for direction in [Direction::Ingress, Direction::Egress] {
                    for &(proto, port) in &probes {
                        let got = decide(ep, direction, identity, ip, proto, port);
                        let want =
                            reference(&policies, &cluster, local, direction, peer, proto, port);
                        assert_eq!(
                            got.allowed,
                            want,
                            "{} {direction:?} peer {ip} proto {proto} port {port}: {:?}",
                            pod_ref(local),
                            got.reason
                        );
                        checked += 1;
                        allowed += usize::from(want);
                    }
                }
            }
        }
    }
    assert_eq!(checked, 5 * 9 * 14 * 2 * 36);
    // Neither side trivially true: the catalogue denies a good share.
    assert!(
        (checked / 4..checked * 9 / 10).contains(&allowed),
        "{allowed} of {checked}"
    );
}

#[test]
fn egress_named_ports_towards_thousands_of_pods_become_one_prefix_each() {
    // 6,000 pods in 10.200.0.0/16, `http` = 8080 on even-numbered ones and 9090 on odd ones,
    // 60 identities; one local pod may reach `http` of every pod of the block.
    let mut cluster = Cluster::default();
    cluster.namespaces.insert("big".into(), Labels::new());
    for i in 0..6000u32 {
        let port = if i % 2 == 0 { 8080 } else { 9090 };
        cluster.pods.insert(
            PodRef::new("big", format!("p{i}")),
            PodInfo {
                identity: Identity(1000 + i % 60),
                labels: labels(&[("group", &(i % 60).to_string())]),
                ips: vec![IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 + i))],
                ports: vec![NamedPort {
                    name: "http".into(),
                    protocol: PROTO_TCP,
                    port,
                }],
            },
        );
    }
    let client = PodRef::new("big", "client");
    cluster.pods.insert(
        client.clone(),
        PodInfo {
            identity: Identity(999),
            labels: labels(&[("app", "client")]),
            ips: vec!["10.201.0.1".parse().unwrap()],
            ports: Vec::new(),
        },
    );
    let p = policy(
        "big",
        "to-http",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.200.0.0/16"}}],
                           "ports": [{"port": "http"}]}]}),
    );
    let identities = IdentityIndex::new(&cluster).unwrap();
    let compiled = compile(&[p], &cluster, &identities, std::slice::from_ref(&client));
    let ep = &compiled[&client];
    // Alternating ports: no two neighbours merge, one /32 each, two classes.
    assert_eq!(ep.cidrs.len(), 6000);
    assert_eq!(ep.entries.len(), 2);
    let to = |i: u32, port| {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 + i));
        decide(
            ep,
            Direction::Egress,
            Identity(1000 + i % 60),
            ip,
            PROTO_TCP,
            port,
        )
        .allowed
    };
    assert!(to(0, 8080) && !to(0, 9090));
    assert!(to(4321, 9090) && !to(4321, 8080));
    assert!(
        !to(6001, 8080),
        "an address of the block with no pod has no named port"
    );
}

// Incremental recompiles: only the endpoints `affected` names, merged into the old result,
// give what a full compile gives.

/// Applies `mutate` to a fresh lab, recompiles only what [`affected::between`] names, checks
/// the merge against a full compile, and returns the affected endpoints.
fn recompile_affected(
    policies: &[NetworkPolicy],
    mutate: &Mutation,
) -> std::collections::BTreeSet<String> {
    recompile_between(policies, policies, mutate)
}

/// The same across a change of policies (`before` → `after`, matched by name) and of the lab.
fn recompile_between(
    before: &[NetworkPolicy],
    after: &[NetworkPolicy],
    mutate: &Mutation,
) -> std::collections::BTreeSet<String> {
    use super::affected::{Inputs, between};
    let mut lab = Lab::new();
    let (old_cluster, old) = lab.compile(before);
    mutate(&mut lab);
    let (new_cluster, full) = lab.compile(after);
    let local: std::collections::BTreeSet<PodRef> = (0..9).map(pod_ref).collect();
    let key = |p: &NetworkPolicy| (p.metadata.namespace.clone(), p.metadata.name.clone());
    let names: std::collections::BTreeSet<_> = before.iter().chain(after).map(key).collect();
    let changed: Vec<_> = names
        .iter()
        .map(|name| {
            (
                before.iter().find(|p| key(p) == *name),
                after.iter().find(|p| key(p) == *name),
            )
        })
        .filter(|(b, a)| b != a)
        .collect();
    let refs: Vec<&NetworkPolicy> = after.iter().collect();
    let affected = between(
        Inputs {
            cluster: &old_cluster,
            local: &local,
        },
        Inputs {
            cluster: &new_cluster,
            local: &local,
        },
        &changed,
        &refs,
    );
    let identities = IdentityIndex::new(&new_cluster).unwrap();
    let mut merged = old;
    for pod in &affected {
        let info = &new_cluster.pods[pod];
        let compiled = compile_endpoint(after, &new_cluster, &identities, pod, info);
        merged.insert(pod.clone(), compiled);
    }
    assert_eq!(merged, full, "affected: {affected:?}");
    affected.iter().map(ToString::to_string).collect()
}

/// A change to the lab.
type Mutation = dyn Fn(&mut Lab);

fn relabel(pod: &'static str, pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&mut Lab) {
    move |lab: &mut Lab| lab.pods.get_mut(&pod_ref(index(pod))).unwrap().0 = labels(pairs)
}

#[test]
fn recompiling_only_affected_endpoints_equals_a_full_compile() {
    let mutations: Vec<Box<Mutation>> = vec![
        Box::new(relabel("y/b", &[("pod", "b2")])),
        Box::new(relabel("x/c", &[("pod", "a")])),
        Box::new(relabel("x/b", &[("pod", "b")])),
        Box::new(|lab: &mut Lab| {
            lab.namespaces
                .insert("y".into(), labels(&[("ns", "y-old")]));
        }),
        Box::new(|lab: &mut Lab| {
            lab.namespaces.insert("z".into(), labels(&[("ns", "y")]));
        }),
        Box::new(|lab: &mut Lab| {
            let ports = &mut lab.pods.get_mut(&PodRef::new("z", "b")).unwrap().1;
            ports.retain(|p| p.name != "serve-80-tcp");
            ports.push(NamedPort {
                name: "serve-80-tcp".into(),
                protocol: PROTO_TCP,
                port: 8080,
            });
        }),
    ];
    let mut sizes = Vec::new();
    for policies in catalogue() {
        for mutate in &mutations {
            sizes.push(recompile_affected(&policies, mutate.as_ref()).len());
        }
    }
    // Mostly far fewer than all nine.
    assert!(
        sizes.iter().filter(|&&n| n < 9).count() > sizes.len() / 2,
        "{sizes:?}"
    );
}

#[test]
fn recompiling_only_affected_endpoints_follows_policy_changes() {
    let catalogue = catalogue();
    let nothing: &Mutation = &|_: &mut Lab| {};
    let relabel_yb = relabel("y/b", &[("pod", "b2")]);
    for (i, before) in catalogue.iter().enumerate() {
        let after = &catalogue[(i + 1) % catalogue.len()];
        recompile_between(before, after, nothing);
        recompile_between(before, after, &relabel_yb);
        recompile_between(before, &[], nothing);
        recompile_between(&[], before, &relabel_yb);
    }
    // Changing x/a's policy recompiles x/a alone.
    let before = allow_xa_from(
        json!([{"podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([]),
    );
    let after = allow_xa_from(
        json!([{"podSelector": {"matchLabels": {"pod": "c"}}}]),
        json!([]),
    );
    assert_eq!(
        recompile_between(
            &[deny_all_ingress("y"), before],
            &[deny_all_ingress("y"), after],
            nothing
        ),
        ["x/a"].map(String::from).into()
    );
}

#[test]
fn affected_endpoints_of_typical_changes() {
    let from_b = [allow_xa_from(
        json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]),
        json!([]),
    )];
    // A peer loses the selected label: the selecting pod and the pod itself.
    assert_eq!(
        recompile_affected(&from_b, &relabel("y/b", &[("pod", "b2")])),
        ["x/a", "y/b"].map(String::from).into()
    );
    // A pod nobody selects changes: only itself.
    assert_eq!(
        recompile_affected(&from_b, &relabel("z/c", &[("pod", "c2")])),
        ["z/c"].map(String::from).into()
    );
    // A namespace nobody's selector reads: nothing (its pods' new identities included).
    let from_ns_y = [allow_xa_from(
        json!([{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]),
        json!([]),
    )];
    assert_eq!(
        recompile_affected(&from_ns_y, &|lab: &mut Lab| {
            lab.namespaces.insert("z".into(), labels(&[("ns", "z2")]));
        }),
        std::collections::BTreeSet::new()
    );
    assert_eq!(
        recompile_affected(&from_ns_y, &|lab: &mut Lab| {
            lab.namespaces.insert("y".into(), labels(&[("ns", "y2")]));
        }),
        ["x/a"].map(String::from).into()
    );
    // A pod's named port changes number: endpoints whose egress named ports reach it through an
    // ipBlock or "everyone", and the pod itself; and a local pod's own ingress named port.
    let renumber = |pod: &'static str| {
        move |lab: &mut Lab| {
            let ports = &mut lab.pods.get_mut(&pod_ref(index(pod))).unwrap().1;
            for p in ports.iter_mut().filter(|p| p.name == "serve-80-tcp") {
                p.port = 8080;
            }
        }
    };
    for to in [json!([{"ipBlock": {"cidr": "10.244.3.0/24"}}]), json!([])] {
        let egress_named = [policy(
            "x",
            "egress-named",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": to, "ports": [{"port": "serve-80-tcp"}]}]}),
        )];
        assert_eq!(
            recompile_affected(&egress_named, &renumber("z/b")),
            ["x/a", "z/b"].map(String::from).into()
        );
    }
    let own = [allow_xa_from(json!([]), json!([{"port": "serve-80-tcp"}]))];
    assert_eq!(
        recompile_affected(&own, &renumber("x/a")),
        ["x/a"].map(String::from).into()
    );
    // A policy change: the pods its old or new selector picks.
    let mut lab = Lab::new();
    let cluster = lab.cluster();
    let local: Vec<PodRef> = (0..9).map(pod_ref).collect();
    let old = policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    );
    let new = policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}}),
    );
    let got = super::affected::by_policy(Some(&old), Some(&new), &cluster, &local);
    assert_eq!(got, [PodRef::new("x", "a"), PodRef::new("x", "b")].into());
    let got = super::affected::by_policy(None, Some(&deny_all_ingress("z")), &cluster, &local);
    assert_eq!(got.len(), 3);
}
