//! `BPF_PROG_RUN` tests of NetworkPolicy enforcement in the pod programs: crafted frames through
//! `from_pod` (the pod's egress) and `to_pod` (its ingress from the node's stack), with the
//! policy maps written by hand. The test skb runs on loopback, so the endpoint is ifindex 1.

use std::net::Ipv4Addr;

use apiary_ebpf_common::{
    IDENTITY_ANY, IDENTITY_WORLD, POLICY_EGRESS, POLICY_EGRESS_ENFORCED, POLICY_INGRESS,
    POLICY_INGRESS_ENFORCED, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyVerdict, VERDICT_ALLOWED,
    VERDICT_DENIED,
};
use apiary_node_agent::dataplane::{AllowEntry, Dataplane, PodProgram, PolicyEvents, PolicyMaps};
use apiary_tests::{
    lab::Lab,
    packets::{SOURCE_MAC, l4_frame, udp_frame},
    require_privileges,
};
use aya::programs::{TestRun as _, TestRunOptions};

const ENDPOINT: u32 = 1;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const POD: Ipv4Addr = Ipv4Addr::new(10, 123, 129, 3);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 123, 130, 7);
const PEER_IDENTITY: u32 = 300;

struct Setup {
    _lab: Lab,
    dp: Dataplane,
    maps: PolicyMaps,
    events: PolicyEvents,
}

fn setup() -> Setup {
    let lab = Lab::new().unwrap();
    let pins = lab.pin_dir("dp");
    let dp = Dataplane::load(&pins).unwrap();
    // The pod that sends the crafted frames: `from_pod` only lets a pod send as itself.
    dp.endpoints()
        .unwrap()
        .upsert(
            POD,
            apiary_ebpf_common::Endpoint {
                host_ifindex: ENDPOINT,
                flags: 0,
                pod_mac: SOURCE_MAC,
                host_mac: [0x02, 0xcc, 0, 0, 0, 0x01],
            },
        )
        .unwrap();
    let mut maps = PolicyMaps::open(&pins).unwrap();
    maps.set_identity(PEER, PEER_IDENTITY).unwrap();
    let events = PolicyEvents::open(&pins).unwrap();
    Setup {
        _lab: lab,
        dp,
        maps,
        events,
    }
}

fn run(dp: &Dataplane, program: PodProgram, frame: &[u8]) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat: 1,
        ..Default::default()
    };
    dp.program(program)
        .unwrap()
        .test_run(opts)
        .unwrap()
        .return_value
}

/// A UDP datagram the pod sends to `dst:port` (from port `sport`).
fn egress(dp: &Dataplane, dst: Ipv4Addr, sport: u16, port: u16) -> u32 {
    run(
        dp,
        PodProgram::FromPod,
        &udp_frame(POD, dst, sport, port, 8),
    )
}

fn entry(identity: u32, direction: u8, protocol: u8, port: u16, prefix: u8) -> AllowEntry {
    AllowEntry {
        endpoint: ENDPOINT,
        identity,
        direction,
        protocol,
        port,
        port_prefix_len: prefix,
    }
}

#[test]
fn egress_is_open_until_enforced_then_only_allowed_peers_and_ports_pass() {
    require_privileges!();
    let mut s = setup();
    assert_eq!(egress(&s.dp, PEER, 40000, 80), TC_ACT_OK, "not enforced");

    s.maps
        .set_enforcement(ENDPOINT, POLICY_EGRESS_ENFORCED)
        .unwrap();
    assert_eq!(
        egress(&s.dp, PEER, 40001, 80),
        TC_ACT_SHOT,
        "nothing allowed"
    );

    // The peer's identity, UDP, ports 80..=81 (one entry: 80 with a 15-bit prefix).
    s.maps
        .allow(&entry(PEER_IDENTITY, POLICY_EGRESS, PROTO_UDP, 80, 15), 7)
        .unwrap();
    assert_eq!(egress(&s.dp, PEER, 40002, 80), TC_ACT_OK);
    assert_eq!(egress(&s.dp, PEER, 40003, 81), TC_ACT_OK);
    assert_eq!(egress(&s.dp, PEER, 40004, 82), TC_ACT_SHOT);
    assert_eq!(egress(&s.dp, PEER, 40005, 79), TC_ACT_SHOT);
    // Another peer (world) is not that identity.
    let world = Ipv4Addr::new(192, 0, 2, 9);
    assert_eq!(egress(&s.dp, world, 40006, 80), TC_ACT_SHOT);

    // A rule without ports, for any peer: everything goes.
    s.maps
        .allow(&entry(IDENTITY_ANY, POLICY_EGRESS, 0, 0, 0), 8)
        .unwrap();
    assert_eq!(egress(&s.dp, world, 40007, 9999), TC_ACT_OK);

    // Revoked: back to denied for new flows; a flow let through before stays allowed.
    assert!(
        s.maps
            .revoke(&entry(IDENTITY_ANY, POLICY_EGRESS, 0, 0, 0))
            .unwrap()
    );
    assert_eq!(egress(&s.dp, world, 40008, 9999), TC_ACT_SHOT);
    assert_eq!(egress(&s.dp, world, 40007, 9999), TC_ACT_OK, "tracked flow");

    // Every judged flow was reported, in order, with the rule that decided it.
    let verdicts: Vec<(u16, u8, u32, u32)> = s
        .events
        .drain()
        .iter()
        .map(|v: &PolicyVerdict| {
            (
                u16::from_be(v.sport_be),
                v.verdict,
                v.peer_identity,
                v.rule_id,
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            (40001, VERDICT_DENIED, PEER_IDENTITY, 0),
            (40002, VERDICT_ALLOWED, PEER_IDENTITY, 7),
            (40003, VERDICT_ALLOWED, PEER_IDENTITY, 7),
            (40004, VERDICT_DENIED, PEER_IDENTITY, 0),
            (40005, VERDICT_DENIED, PEER_IDENTITY, 0),
            (40006, VERDICT_DENIED, IDENTITY_WORLD, 0),
            (40007, VERDICT_ALLOWED, IDENTITY_ANY, 8),
            (40008, VERDICT_DENIED, IDENTITY_WORLD, 0),
        ]
    );
}

/// Protocols are told apart: an SCTP rule does not open TCP (upstream's "should not mistakenly
/// treat 'protocol: SCTP' as 'protocol: TCP'"), a UDP rule does not open TCP, and SCTP ports
/// are read like the others'.
#[test]
fn each_protocol_opens_only_itself() {
    require_privileges!();
    let mut s = setup();
    s.maps
        .set_enforcement(ENDPOINT, POLICY_EGRESS_ENFORCED)
        .unwrap();
    s.maps
        .allow(&entry(PEER_IDENTITY, POLICY_EGRESS, PROTO_SCTP, 80, 16), 1)
        .unwrap();
    s.maps
        .allow(&entry(PEER_IDENTITY, POLICY_EGRESS, PROTO_UDP, 81, 16), 2)
        .unwrap();
    let send = |protocol: u8, sport: u16, port: u16| {
        run(
            &s.dp,
            PodProgram::FromPod,
            &l4_frame(protocol, POD, PEER, sport, port, 0),
        )
    };
    assert_eq!(send(PROTO_SCTP, 41000, 80), TC_ACT_OK, "SCTP 80 allowed");
    assert_eq!(
        send(PROTO_TCP, 41001, 80),
        TC_ACT_SHOT,
        "TCP 80 is not SCTP"
    );
    assert_eq!(
        send(PROTO_UDP, 41002, 80),
        TC_ACT_SHOT,
        "UDP 80 is not SCTP"
    );
    assert_eq!(
        send(PROTO_SCTP, 41003, 81),
        TC_ACT_SHOT,
        "SCTP 81 not allowed"
    );
    assert_eq!(send(PROTO_UDP, 41004, 81), TC_ACT_OK, "UDP 81 allowed");
    assert_eq!(send(PROTO_TCP, 41005, 81), TC_ACT_SHOT, "TCP 81 is not UDP");
    let decided: Vec<(u8, u8, u32)> = s
        .events
        .drain()
        .iter()
        .map(|v: &PolicyVerdict| (v.protocol, v.verdict, v.rule_id))
        .collect();
    assert_eq!(
        decided,
        [
            (PROTO_SCTP, VERDICT_ALLOWED, 1),
            (PROTO_TCP, VERDICT_DENIED, 0),
            (PROTO_UDP, VERDICT_DENIED, 0),
            (PROTO_SCTP, VERDICT_DENIED, 0),
            (PROTO_UDP, VERDICT_ALLOWED, 2),
            (PROTO_TCP, VERDICT_DENIED, 0),
        ]
    );
}

#[test]
fn ip_blocks_match_by_address_class() {
    require_privileges!();
    let mut s = setup();
    s.maps
        .set_enforcement(ENDPOINT, POLICY_EGRESS_ENFORCED)
        .unwrap();
    let class = 1 << 24;
    s.maps
        .set_cidr_class(
            ENDPOINT,
            POLICY_EGRESS,
            Ipv4Addr::new(192, 0, 2, 0),
            24,
            class,
        )
        .unwrap();
    s.maps
        .allow(&entry(class, POLICY_EGRESS, PROTO_UDP, 53, 16), 9)
        .unwrap();
    assert_eq!(
        egress(&s.dp, Ipv4Addr::new(192, 0, 2, 9), 40000, 53),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&s.dp, Ipv4Addr::new(192, 0, 2, 9), 40001, 54),
        TC_ACT_SHOT
    );
    assert_eq!(
        egress(&s.dp, Ipv4Addr::new(198, 51, 100, 1), 40002, 53),
        TC_ACT_SHOT
    );
    // A more specific prefix of another class carves a hole (an `except`).
    s.maps
        .set_cidr_class(
            ENDPOINT,
            POLICY_EGRESS,
            Ipv4Addr::new(192, 0, 2, 128),
            25,
            class + 1,
        )
        .unwrap();
    assert_eq!(
        egress(&s.dp, Ipv4Addr::new(192, 0, 2, 200), 40003, 53),
        TC_ACT_SHOT
    );
    assert_eq!(
        egress(&s.dp, Ipv4Addr::new(192, 0, 2, 100), 40004, 53),
        TC_ACT_OK
    );
}

#[test]
fn replies_of_flows_let_out_pass_an_enforced_ingress() {
    require_privileges!();
    let mut s = setup();
    s.maps
        .set_enforcement(ENDPOINT, POLICY_INGRESS_ENFORCED)
        .unwrap();
    let to_pod = |s: &Setup, sport: u16, dport: u16| {
        run(
            &s.dp,
            PodProgram::ToPod,
            &udp_frame(PEER, POD, sport, dport, 8),
        )
    };
    // Unsolicited: dropped.
    assert_eq!(to_pod(&s, 80, 40000), TC_ACT_SHOT);
    // The pod sends first (egress is open, but the flow is remembered): the reply passes.
    assert_eq!(egress(&s.dp, PEER, 40000, 80), TC_ACT_OK);
    assert_eq!(to_pod(&s, 80, 40000), TC_ACT_OK);
    // Another port of the peer is another flow.
    assert_eq!(to_pod(&s, 81, 40000), TC_ACT_SHOT);
    // Allowed by a rule for the peer's identity on the pod's port.
    s.maps
        .allow(
            &entry(PEER_IDENTITY, POLICY_INGRESS, PROTO_UDP, 40000, 16),
            3,
        )
        .unwrap();
    assert_eq!(to_pod(&s, 81, 40000), TC_ACT_OK);
    // Not enforced any more: everything passes.
    s.maps.set_enforcement(ENDPOINT, 0).unwrap();
    assert_eq!(to_pod(&s, 99, 41000), TC_ACT_OK);
}

#[test]
fn the_destination_pod_s_ingress_is_judged_before_the_redirect() {
    require_privileges!();
    const TC_ACT_REDIRECT: u32 = 7;
    const DEST: Ipv4Addr = Ipv4Addr::new(10, 123, 129, 9);
    const DEST_ENDPOINT: u32 = 42;
    let mut s = setup();
    s.dp.endpoints()
        .unwrap()
        .upsert(
            DEST,
            apiary_ebpf_common::Endpoint {
                host_ifindex: DEST_ENDPOINT,
                flags: 0,
                pod_mac: [0x02, 0xaa, 0, 0, 0, 1],
                host_mac: [0x02, 0xbb, 0, 0, 0, 1],
            },
        )
        .unwrap();
    s.maps.set_identity(POD, 400).unwrap();
    assert_eq!(egress(&s.dp, DEST, 40000, 80), TC_ACT_REDIRECT, "open");
    s.maps
        .set_enforcement(DEST_ENDPOINT, POLICY_INGRESS_ENFORCED)
        .unwrap();
    assert_eq!(egress(&s.dp, DEST, 40001, 80), TC_ACT_SHOT);
    s.maps
        .allow(
            &AllowEntry {
                endpoint: DEST_ENDPOINT,
                identity: 400,
                direction: POLICY_INGRESS,
                protocol: PROTO_UDP,
                port: 80,
                port_prefix_len: 16,
            },
            5,
        )
        .unwrap();
    assert_eq!(egress(&s.dp, DEST, 40002, 80), TC_ACT_REDIRECT);
    let last = s.events.drain().pop().unwrap();
    assert_eq!(
        (last.endpoint, last.direction, last.verdict, last.rule_id),
        (DEST_ENDPOINT, POLICY_INGRESS, VERDICT_ALLOWED, 5)
    );
}

/// The compiler, the map writer and the programs agree: a NetworkPolicy compiled for a local
/// pod and written to the maps decides every probe as `policy::decide` does.
#[test]
fn compiled_policies_decide_in_the_programs_as_the_compiler_does() {
    use apiary_node_agent::{
        agent::policy_maps::{self, RuleTable},
        policy::{self, Cluster, Direction, Identity, IdentityIndex, PodRef},
    };
    require_privileges!();
    let mut s = setup();
    let pod = |ns: &str, name: &str, ip: Ipv4Addr| -> apiary_api::core_v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
            "spec": {"containers": [{"name": "c", "image": "i",
                     "ports": [{"name": "http", "containerPort": 80, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
        }))
        .unwrap()
    };
    let namespace = |name: &str| -> apiary_api::core_v1::Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "ns": name}},
        }))
        .unwrap()
    };
    let mut cluster = Cluster::default();
    cluster.add_namespace(&namespace("x"));
    cluster.add_namespace(&namespace("y"));
    cluster.add_pod(&pod("x", "a", POD), Identity(300));
    cluster.add_pod(&pod("y", "b", PEER), Identity(301));
    // x/a may send to pods labelled pod=b in namespaces labelled ns=y, on their `http` port.
    let policies: Vec<apiary_api::networking_v1::NetworkPolicy> = vec![
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "to-b"},
            "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}},
                                    "namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                            "ports": [{"protocol": "UDP", "port": "http"}]}],
            },
        }))
        .unwrap(),
    ];
    let identities = IdentityIndex::new(&cluster).unwrap();
    let a = PodRef::new("x", "a");
    let compiled = policy::compile(&policies, &cluster, &identities, std::slice::from_ref(&a));
    let plan = policy::plan::plan(&Default::default(), &compiled);
    s.maps.set_identity(PEER, 301).unwrap();
    let mut rules = RuleTable::default();
    let skipped = policy_maps::apply(&mut s.maps, &plan, &mut rules, |p| {
        (p == &a).then_some(ENDPOINT)
    })
    .unwrap();
    assert!(skipped.is_empty());

    let endpoint_policy = &compiled[&a];
    for (sport, dst, identity, port) in [
        (41000, PEER, 301, 80),
        (41001, PEER, 301, 81),
        (41002, Ipv4Addr::new(192, 0, 2, 1), IDENTITY_WORLD, 80),
    ] {
        let expected = policy::decide(
            endpoint_policy,
            Direction::Egress,
            Identity(identity),
            dst.into(),
            PROTO_UDP,
            port,
        );
        let got = egress(&s.dp, dst, sport, port);
        assert_eq!(
            got == TC_ACT_OK,
            expected.allowed,
            "to {dst}:{port}: the program said {got}, the compiler {expected:?}"
        );
    }
    // And the rule the program reports is the compiler's.
    let allowed = s
        .events
        .drain()
        .into_iter()
        .find(|v| v.verdict == VERDICT_ALLOWED)
        .unwrap();
    assert_eq!(
        rules.rule(allowed.rule_id).map(|r| r.policy.as_str()),
        Some("to-b")
    );
}
