//! `BPF_PROG_RUN` tests: the pod programs run on crafted frames, with no network at all.
//!
//! The kernel runs a test skb on the loopback device of the caller's namespace, so the program
//! sees ifindex 1.

use std::net::Ipv4Addr;

use apiary_ebpf_common::{Endpoint, NodeConfig, PodTraffic};
use apiary_node_agent::dataplane::{Dataplane, FROM_NETDEV, PodProgram};
use apiary_tests::{
    lab::Lab,
    packets::{ETH_HLEN, IPV4_HLEN, SOURCE_MAC, ipv4_checksum, udp_frame},
    require_privileges,
};
use aya::programs::{TestRun as _, TestRunOptions};

const LOOPBACK_IFINDEX: u32 = 1;
const TC_ACT_OK: u32 = 0;
const FROM_POD: &str = "from_pod";

fn run(dp: &Dataplane, program: PodProgram, frame: &[u8], repeat: u32) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    };
    dp.program(program)
        .unwrap()
        .test_run(opts)
        .unwrap()
        .return_value
}

/// Registers the pod that sends the crafted frames: `ip` behind the test skb's device, with the
/// frames' source MAC.
fn register_sender(dp: &Dataplane, ip: Ipv4Addr) {
    dp.endpoints()
        .unwrap()
        .upsert(
            ip,
            Endpoint {
                host_ifindex: LOOPBACK_IFINDEX,
                flags: 0,
                pod_mac: SOURCE_MAC,
                host_mac: [0x02, 0xcc, 0, 0, 0, 0x01],
            },
        )
        .unwrap();
}

const SENDER: Ipv4Addr = Ipv4Addr::new(10, 123, 1, 2);

fn frame(payload: usize) -> Vec<u8> {
    udp_frame(SENDER, Ipv4Addr::new(10, 123, 1, 3), 40000, 53, payload)
}

#[test]
fn from_pod_counts_every_run_into_the_from_pod_counters() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = Dataplane::load(&lab.pin_dir("dp")).unwrap();
    dp.pod_traffic()
        .unwrap()
        .register(LOOPBACK_IFINDEX)
        .unwrap();
    register_sender(&dp, SENDER);

    let frame = frame(100);
    assert_eq!(run(&dp, PodProgram::FromPod, &frame, 3), TC_ACT_OK);

    let counted = dp.pod_traffic().unwrap().get(LOOPBACK_IFINDEX).unwrap();
    assert_eq!(
        counted,
        Some(PodTraffic {
            from_pod_packets: 3,
            from_pod_bytes: 3 * 142,
            ..PodTraffic::default()
        })
    );
}

#[test]
fn to_pod_counts_into_the_to_pod_counters() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = Dataplane::load(&lab.pin_dir("dp")).unwrap();
    dp.pod_traffic()
        .unwrap()
        .register(LOOPBACK_IFINDEX)
        .unwrap();

    assert_eq!(run(&dp, PodProgram::ToPod, &frame(0), 1), TC_ACT_OK);
    assert_eq!(run(&dp, PodProgram::ToPod, &frame(1000), 1), TC_ACT_OK);

    let counted = dp.pod_traffic().unwrap().get(LOOPBACK_IFINDEX).unwrap();
    assert_eq!(
        counted,
        Some(PodTraffic {
            to_pod_packets: 2,
            to_pod_bytes: 42 + 1042,
            ..PodTraffic::default()
        })
    );
}

#[test]
fn interfaces_the_agent_did_not_register_are_not_counted() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = Dataplane::load(&lab.pin_dir("dp")).unwrap();
    register_sender(&dp, SENDER);

    assert_eq!(run(&dp, PodProgram::FromPod, &frame(10), 5), TC_ACT_OK);
    assert_eq!(run(&dp, PodProgram::ToPod, &frame(10), 5), TC_ACT_OK);

    let traffic = dp.pod_traffic().unwrap();
    assert_eq!(traffic.get(LOOPBACK_IFINDEX).unwrap(), None);
    assert!(traffic.all().unwrap().is_empty(), "nothing may be inserted");
}

// Forwarding decisions: what `from_pod` and `from_netdev` do with a frame, given the maps.

const TC_ACT_REDIRECT: u32 = 7;
const POD_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x01];
/// Any ifindex will do: `BPF_PROG_RUN` only records the redirect target.
const DEST_IFINDEX: u32 = 42;

struct Decision {
    verdict: u32,
    frame: Vec<u8>,
}

fn decide(dp: &Dataplane, program: &'static str, frame: &[u8]) -> Decision {
    let mut out = vec![0u8; frame.len()];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        ..Default::default()
    };
    let result = dp.program_named(program).unwrap().test_run(opts).unwrap();
    out.truncate(result.data_size_out as usize);
    Decision {
        verdict: result.return_value,
        frame: out,
    }
}

/// A data plane with one local pod (10.123.129.3 behind ifindex 42) and one remote node owning
/// 10.123.130.0/24 at 10.123.0.2, underlay ifindex 7.
fn forwarding_dataplane(lab: &Lab) -> Dataplane {
    let dp = Dataplane::load(&lab.pin_dir("dp")).unwrap();
    dp.endpoints()
        .unwrap()
        .upsert(
            Ipv4Addr::new(10, 123, 129, 3),
            Endpoint {
                host_ifindex: DEST_IFINDEX,
                flags: 0,
                pod_mac: POD_MAC,
                host_mac: HOST_MAC,
            },
        )
        .unwrap();
    dp.pod_traffic().unwrap().register(DEST_IFINDEX).unwrap();
    register_sender(&dp, FORWARDING_SENDER);
    let mut remote = dp.remote_nodes().unwrap();
    remote
        .upsert(
            "10.123.130.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 123, 0, 2),
        )
        .unwrap();
    dp.node_config()
        .unwrap()
        .set(NodeConfig {
            underlay_ifindex: 7,
            node_ip: [0; 4],
        })
        .unwrap();
    dp
}

/// The IP packet went through one routing hop: TTL one less, header checksum still valid, and
/// nothing else changed.
fn assert_routed(sent: &[u8], forwarded: &[u8]) {
    const TTL: usize = ETH_HLEN + 8;
    const CSUM: usize = ETH_HLEN + 10;
    assert_eq!(forwarded[TTL], sent[TTL] - 1, "TTL");
    assert_eq!(
        ipv4_checksum(&forwarded[ETH_HLEN..ETH_HLEN + IPV4_HLEN]),
        0,
        "header checksum"
    );
    let unchanged = |f: &[u8]| [&f[12..TTL], &f[TTL + 1..CSUM], &f[CSUM + 2..]].concat();
    assert_eq!(
        unchanged(forwarded),
        unchanged(sent),
        "the rest is untouched"
    );
}

#[test]
fn a_spent_ttl_is_left_to_the_host_stack() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = forwarding_dataplane(&lab);
    for dst in [
        Ipv4Addr::new(10, 123, 129, 3),
        Ipv4Addr::new(10, 123, 130, 9),
    ] {
        let mut frame = to(dst);
        frame[ETH_HLEN + 8] = 1;
        let decision = decide(&dp, FROM_POD, &frame);
        assert_eq!(decision.verdict, TC_ACT_OK, "{dst}");
        assert_eq!(decision.frame, frame, "{dst}");
    }
}

/// The local pod that sends [`to`]'s frames.
const FORWARDING_SENDER: Ipv4Addr = Ipv4Addr::new(10, 123, 129, 2);

fn to(dst: Ipv4Addr) -> Vec<u8> {
    udp_frame(FORWARDING_SENDER, dst, 40000, 53, 20)
}

#[test]
fn from_pod_redirects_to_a_local_pod_with_its_macs_and_counts_it_for_the_receiver() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = forwarding_dataplane(&lab);
    let frame = to(Ipv4Addr::new(10, 123, 129, 3));
    let decision = decide(&dp, FROM_POD, &frame);
    assert_eq!(decision.verdict, TC_ACT_REDIRECT);
    assert_eq!(decision.frame[..6], POD_MAC, "destination MAC: the pod's");
    assert_eq!(
        decision.frame[6..12],
        HOST_MAC,
        "source MAC: its host veth's"
    );
    assert_routed(&frame, &decision.frame);
    let counted = dp
        .pod_traffic()
        .unwrap()
        .get(DEST_IFINDEX)
        .unwrap()
        .unwrap();
    assert_eq!(
        (counted.to_pod_packets, counted.to_pod_bytes),
        (1, frame.len() as u64)
    );
}

#[test]
fn from_pod_sends_other_nodes_pods_to_the_underlay_one_hop_later() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = forwarding_dataplane(&lab);
    let frame = to(Ipv4Addr::new(10, 123, 130, 9));
    let decision = decide(&dp, FROM_POD, &frame);
    assert_eq!(decision.verdict, TC_ACT_REDIRECT);
    // bpf_redirect_neigh fills in the Ethernet header on the way out, not the program.
    assert_eq!(decision.frame[..12], frame[..12]);
    assert_routed(&frame, &decision.frame);
    assert!(
        dp.pod_traffic()
            .unwrap()
            .get(DEST_IFINDEX)
            .unwrap()
            .unwrap()
            .to_pod_packets
            == 0
    );

    // Without an underlay configured there is nowhere to send it: the host stack decides.
    dp.node_config()
        .unwrap()
        .set(NodeConfig::default())
        .unwrap();
    assert_eq!(decide(&dp, FROM_POD, &frame).verdict, TC_ACT_OK);
}

#[test]
fn from_pod_leaves_the_node_s_own_traffic_and_non_ipv4_to_the_host_stack() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = forwarding_dataplane(&lab);
    for dst in [
        Ipv4Addr::new(10, 123, 0, 1),
        Ipv4Addr::new(10, 123, 129, 99),
    ] {
        let frame = to(dst);
        let decision = decide(&dp, FROM_POD, &frame);
        assert_eq!(decision.verdict, TC_ACT_OK, "{dst}");
        assert_eq!(decision.frame, frame, "{dst}");
    }
    let mut arp = to(Ipv4Addr::new(10, 123, 129, 3));
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(decide(&dp, FROM_POD, &arp).verdict, TC_ACT_OK);
}

#[test]
fn from_netdev_delivers_to_local_pods_only() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = forwarding_dataplane(&lab);
    let local = decide(&dp, FROM_NETDEV, &to(Ipv4Addr::new(10, 123, 129, 3)));
    assert_eq!(local.verdict, TC_ACT_REDIRECT);
    assert_eq!(local.frame[..6], POD_MAC);
    // Never bounced back out: the underlay only delivers, it does not route between nodes.
    let remote = decide(&dp, FROM_NETDEV, &to(Ipv4Addr::new(10, 123, 130, 9)));
    assert_eq!(remote.verdict, TC_ACT_OK);
}

// Source verification: a pod sends as itself (its address, its veth, its MAC) or not at all.

const TC_ACT_SHOT: u32 = 2;

#[test]
fn from_pod_drops_what_a_pod_sends_as_someone_else_and_reports_it() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = forwarding_dataplane(&lab);
    let mut events = apiary_node_agent::dataplane::PolicyEvents::open(&lab.pin_dir("dp")).unwrap();
    let local_pod = Ipv4Addr::new(10, 123, 129, 3);

    // As itself: forwarded.
    assert_eq!(
        decide(&dp, FROM_POD, &to(local_pod)).verdict,
        TC_ACT_REDIRECT
    );

    // Another local pod's address (that pod lives behind another veth).
    let mut as_other_pod = udp_frame(local_pod, Ipv4Addr::new(10, 123, 129, 4), 40001, 53, 20);
    assert_eq!(decide(&dp, FROM_POD, &as_other_pod).verdict, TC_ACT_SHOT);
    // An address no pod of this node has (a remote pod's, the world's).
    for claimed in [Ipv4Addr::new(10, 123, 130, 9), Ipv4Addr::new(192, 0, 2, 1)] {
        let frame = udp_frame(claimed, local_pod, 40002, 53, 20);
        assert_eq!(
            decide(&dp, FROM_POD, &frame).verdict,
            TC_ACT_SHOT,
            "{claimed}"
        );
    }
    // Its own address from another MAC.
    let mut other_mac = to(local_pod);
    other_mac[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    assert_eq!(decide(&dp, FROM_POD, &other_mac).verdict, TC_ACT_SHOT);
    // Non-IPv4 (ARP) is the host's business, as before.
    as_other_pod[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(decide(&dp, FROM_POD, &as_other_pod).verdict, TC_ACT_OK);

    // Four spoofed packets, counted at the sender's endpoint...
    let drops = apiary_node_agent::dataplane::policy_drops(&lab.pin_dir("dp")).unwrap();
    let spoofed: u64 = drops
        .iter()
        .filter(|(key, _)| {
            key.reason == apiary_ebpf_common::DROP_SPOOFED && key.endpoint == LOOPBACK_IFINDEX
        })
        .map(|(_, packets)| packets)
        .sum();
    assert_eq!(spoofed, 4);
    // ...and reported with the address they claimed.
    let reported: Vec<(Ipv4Addr, u8)> = events
        .drain()
        .iter()
        .map(|v| (Ipv4Addr::from(v.saddr), v.verdict))
        .collect();
    let spoofed = apiary_ebpf_common::VERDICT_SPOOFED;
    assert_eq!(
        reported,
        [
            (local_pod, spoofed),
            (Ipv4Addr::new(10, 123, 130, 9), spoofed),
            (Ipv4Addr::new(192, 0, 2, 1), spoofed),
            (FORWARDING_SENDER, spoofed),
        ]
    );
}
