//! `BPF_PROG_RUN` tests of NetworkPolicy enforcement in the pod programs: crafted frames through
//! `from_pod` (the pod's egress) and `to_pod` (its ingress from the node's stack), with the
//! policy maps written by hand. The test skb runs on loopback, so the endpoint is ifindex 1.

use std::net::Ipv4Addr;

use apiary_ebpf_common::{
    DROP_FLOW_TABLE_FULL, IDENTITY_ANY, IDENTITY_WORLD, POLICY_EGRESS, POLICY_EGRESS_ENFORCED,
    POLICY_FLOWS_MAX_ENTRIES, POLICY_FLOWS_PER_ENDPOINT, POLICY_INGRESS, POLICY_INGRESS_ENFORCED,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyVerdict, VERDICT_ALLOWED, VERDICT_DENIED,
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

// The flows endpoints remember: no endpoint's flood evicts another's, each holds at most its
// share, and the agent's sweep forgets idle ones.

const TC_ACT_REDIRECT: u32 = 7;

/// Seconds of the programs' clock.
fn now() -> u32 {
    apiary_node_agent::agent::flow_sweep::now_seconds().unwrap()
}

/// Local pod `i` of the flood (10.123.131.i behind ifindex 100 + i), taking anything from the
/// peer's identity.
fn flooded_endpoint(s: &mut Setup, i: u8) -> (Ipv4Addr, u32) {
    let (ip, ifindex) = (Ipv4Addr::new(10, 123, 131, i), 100 + u32::from(i));
    s.dp.endpoints()
        .unwrap()
        .upsert(
            ip,
            apiary_ebpf_common::Endpoint {
                host_ifindex: ifindex,
                flags: 0,
                pod_mac: [0x02, 0xaa, 0, 0, 0, i],
                host_mac: [0x02, 0xbb, 0, 0, 0, i],
            },
        )
        .unwrap();
    s.maps
        .set_enforcement(ifindex, POLICY_INGRESS_ENFORCED)
        .unwrap();
    s.maps
        .allow(
            &AllowEntry {
                endpoint: ifindex,
                ..entry(PEER_IDENTITY, POLICY_INGRESS, 0, 0, 0)
            },
            9,
        )
        .unwrap();
    (ip, ifindex)
}

/// A datagram from the peer (another node's pod) to `dst`, as the underlay delivers it.
fn from_peer(s: &Setup, dst: Ipv4Addr, sport: u16) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(&udp_frame(PEER, dst, sport, 9000, 0)),
        repeat: 1,
        ..Default::default()
    };
    s.dp.program_named(apiary_node_agent::dataplane::FROM_NETDEV)
        .unwrap()
        .test_run(opts)
        .unwrap()
        .return_value
}

#[test]
fn a_flood_of_flows_evicts_nobody_else_s_and_stops_at_the_endpoint_s_share() {
    require_privileges!();
    let mut s = setup();
    // The pod talks to the peer on UDP 53 and takes nothing unsolicited: its replies pass only
    // while its flow is remembered.
    s.maps
        .set_enforcement(ENDPOINT, POLICY_EGRESS_ENFORCED | POLICY_INGRESS_ENFORCED)
        .unwrap();
    s.maps
        .allow(&entry(PEER_IDENTITY, POLICY_EGRESS, PROTO_UDP, 53, 16), 1)
        .unwrap();
    assert_eq!(egress(&s.dp, PEER, 40000, 53), TC_ACT_OK);
    let reply = |s: &Setup| {
        run(
            &s.dp,
            PodProgram::ToPod,
            &udp_frame(PEER, POD, 53, 40000, 8),
        )
    };
    assert_eq!(reply(&s), TC_ACT_OK, "the reply of a remembered flow");

    // The peer opens new flows to 17 other pods as fast as it can: more than the whole table
    // holds.
    let share = POLICY_FLOWS_PER_ENDPOINT as u16;
    let mut flooded = Vec::new();
    for i in 0..17 {
        let (ip, ifindex) = flooded_endpoint(&mut s, i);
        let mut let_in = 0u32;
        for sport in 1..=share {
            if from_peer(&s, ip, sport) == TC_ACT_REDIRECT {
                let_in += 1;
            }
        }
        flooded.push((ip, ifindex, let_in));
    }
    // Each pod took its share, until the table was full (16 shares fill it, the first pod's
    // flow included): the rest were dropped.
    let let_in: u32 = flooded.iter().map(|(_, _, n)| n).sum();
    assert_eq!(let_in, POLICY_FLOWS_MAX_ENTRIES - 1);
    assert_eq!(flooded[0].2, POLICY_FLOWS_PER_ENDPOINT);
    assert_eq!(flooded[16].2, 0, "nothing left for the 17th");
    assert_eq!(
        s.maps.flows_held(flooded[0].1).unwrap(),
        POLICY_FLOWS_PER_ENDPOINT
    );

    // The pod's own flow survived all of it.
    assert_eq!(reply(&s), TC_ACT_OK, "the pod's flow outlived the flood");
    // A flooded pod's remembered flows go on; a new one past its share is dropped, and counted.
    let (ip, ifindex, _) = flooded[0];
    assert_eq!(from_peer(&s, ip, 1), TC_ACT_REDIRECT, "remembered");
    assert_eq!(from_peer(&s, ip, share + 1), TC_ACT_SHOT, "past the share");
    let full: u64 = apiary_node_agent::dataplane::policy_drops(s.dp.pin_dir())
        .unwrap()
        .iter()
        .filter(|(key, _)| key.endpoint == ifindex && key.reason == DROP_FLOW_TABLE_FULL)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(full, 1);

    // A minute later every one of those UDP flows is idle: the sweep forgets them, and the
    // shares are free again.
    let sweep = s.maps.sweep_flows(now() + 61).unwrap();
    assert_eq!(
        (sweep.kept, sweep.removed),
        (0, POLICY_FLOWS_MAX_ENTRIES as usize)
    );
    assert_eq!(s.maps.flows_held(ifindex).unwrap(), 0);
    assert_eq!(from_peer(&s, ip, share + 1), TC_ACT_REDIRECT);
    assert_eq!(s.maps.flows_held(ifindex).unwrap(), 1);
}

#[test]
fn the_sweep_keeps_flows_for_their_lifetime_by_protocol_and_tcp_state() {
    require_privileges!();
    let mut s = setup();
    s.maps
        .set_enforcement(ENDPOINT, POLICY_EGRESS_ENFORCED | POLICY_INGRESS_ENFORCED)
        .unwrap();
    s.maps
        .allow(&entry(PEER_IDENTITY, POLICY_EGRESS, 0, 0, 0), 1)
        .unwrap();
    let tcp = |from: Ipv4Addr, to: Ipv4Addr, sport: u16, dport: u16, flags: u8| {
        let mut frame = l4_frame(PROTO_TCP, from, to, sport, dport, 0);
        frame[14 + 20 + 13] = flags;
        frame
    };
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    // 41000: established (SYN answered). 41001: a SYN nobody answered. 41002: established, then
    // closed. 41003: UDP.
    for sport in [41000, 41001, 41002] {
        let syn = tcp(POD, PEER, sport, 80, SYN);
        assert_eq!(run(&s.dp, PodProgram::FromPod, &syn), TC_ACT_OK);
    }
    for sport in [41000, 41002] {
        let syn_ack = tcp(PEER, POD, 80, sport, SYN | ACK);
        assert_eq!(run(&s.dp, PodProgram::ToPod, &syn_ack), TC_ACT_OK);
    }
    let fin = tcp(POD, PEER, 41002, 80, FIN | ACK);
    assert_eq!(run(&s.dp, PodProgram::FromPod, &fin), TC_ACT_OK);
    assert_eq!(egress(&s.dp, PEER, 41003, 53), TC_ACT_OK);

    let remembered = |s: &Setup| -> Vec<u16> {
        let mut ports: Vec<u16> = s
            .maps
            .tracked_flows()
            .unwrap()
            .iter()
            .map(|f| u16::from_be(f.sport_be))
            .collect();
        ports.sort_unstable();
        ports
    };
    let t = now();
    assert_eq!(s.maps.sweep_flows(t + 5).unwrap().removed, 0);
    assert_eq!(remembered(&s), [41000, 41001, 41002, 41003]);
    // Closing: 10 s.
    s.maps.sweep_flows(t + 12).unwrap();
    assert_eq!(remembered(&s), [41000, 41001, 41003]);
    // Unanswered SYN and UDP: 60 s.
    s.maps.sweep_flows(t + 62).unwrap();
    assert_eq!(remembered(&s), [41000]);
    // Established TCP: 6 hours.
    s.maps.sweep_flows(t + 3 * 3600).unwrap();
    assert_eq!(remembered(&s), [41000]);
    s.maps.sweep_flows(t + 6 * 3600 + 2).unwrap();
    assert!(remembered(&s).is_empty());

    // An endpoint that stops enforcing has nothing to remember.
    assert_eq!(egress(&s.dp, PEER, 41004, 53), TC_ACT_OK);
    s.maps.set_enforcement(ENDPOINT, 0).unwrap();
    let sweep = s.maps.sweep_flows(now()).unwrap();
    assert_eq!((sweep.kept, sweep.removed), (0, 1));
}
