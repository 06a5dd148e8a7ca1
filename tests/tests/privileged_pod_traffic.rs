//! The pod traffic counters on real veths: two pods on one lab node exchange UDP datagrams and the
//! counters must match to the byte.

use std::{
    net::{SocketAddrV4, UdpSocket},
    time::Duration,
};

use apiary_ebpf_common::PodTraffic;
use apiary_node_agent::dataplane::{self, Dataplane};
use apiary_tests::{
    lab::{self, Lab, Pod},
    packets::{ETH_HLEN, IPV4_HLEN, UDP_HLEN},
    require_privileges,
};

const FRAME_OVERHEAD: u64 = (ETH_HLEN + IPV4_HLEN + UDP_HLEN) as u64;

struct TwoPods {
    lab: Lab,
    node_netns: String,
    a: Pod,
    b: Pod,
}

fn two_pods() -> TwoPods {
    let mut lab = Lab::new().unwrap();
    let mut node = lab.add_node().unwrap();
    let a = lab.add_pod(&mut node, "a").unwrap();
    let b = lab.add_pod(&mut node, "b").unwrap();
    // No ARP on the wire: the only frames crossing the veths are the ones the test sends.
    lab.pin_neighbors(&a, &b).unwrap();
    TwoPods {
        lab,
        node_netns: node.netns,
        a,
        b,
    }
}

/// Sends `count` datagrams of `len` bytes from `from` to `to`, each one received before the next.
fn send(from: &Pod, to: &Pod, count: usize, len: usize) {
    let receiver = lab::udp_socket(&to.netns, SocketAddrV4::new(to.ip, 0)).unwrap();
    let to_addr = receiver.local_addr().unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sender: UdpSocket = lab::udp_socket(&from.netns, SocketAddrV4::new(from.ip, 0)).unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..count {
        sender.send_to(&vec![7; len], to_addr).unwrap();
        let (n, _) = receiver
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} from {} lost: {e}", from.name));
        assert_eq!(n, len);
    }
}

/// Lets `pod` send through its programs: `from_pod` only passes a pod's own address and MAC,
/// as the agent's pod network registers them.
fn register(dataplane: &Dataplane, pod: &Pod) {
    dataplane
        .endpoints()
        .unwrap()
        .upsert(pod.ip, pod.endpoint().unwrap())
        .unwrap();
}

fn counters(dataplane: &Dataplane, node_netns: &str, pod: &Pod) -> Option<PodTraffic> {
    let ifindex = lab::run_in(node_netns, || dataplane::ifindex(&pod.host_veth))
        .unwrap()
        .unwrap();
    dataplane.pod_traffic().unwrap().get(ifindex).unwrap()
}

fn traffic(from_packets: u64, from_payload: u64, to_packets: u64, to_payload: u64) -> PodTraffic {
    PodTraffic {
        from_pod_packets: from_packets,
        from_pod_bytes: from_packets * (FRAME_OVERHEAD + from_payload),
        to_pod_packets: to_packets,
        to_pod_bytes: to_packets * (FRAME_OVERHEAD + to_payload),
    }
}

#[test]
fn counts_exact_packets_and_bytes_per_pod_in_each_direction() {
    require_privileges!();
    let TwoPods {
        lab,
        node_netns,
        a,
        b,
    } = two_pods();
    let mut dp = Dataplane::load(&lab.pin_dir("dp")).unwrap();
    for pod in [&a, &b] {
        lab::run_in(&node_netns, || dp.attach_pod(&pod.host_veth))
            .unwrap()
            .unwrap();
        register(&dp, pod);
    }

    send(&a, &b, 10, 100);
    send(&b, &a, 4, 300);

    assert_eq!(
        counters(&dp, &node_netns, &a),
        Some(traffic(10, 100, 4, 300))
    );
    assert_eq!(
        counters(&dp, &node_netns, &b),
        Some(traffic(4, 300, 10, 100))
    );
}

#[test]
fn attaching_twice_keeps_one_filter_per_hook_and_detach_removes_them() {
    require_privileges!();
    let TwoPods {
        lab,
        node_netns,
        a,
        b,
    } = two_pods();
    let pin_dir = lab.pin_dir("dp");
    let mut dp = Dataplane::load(&pin_dir).unwrap();
    for _ in 0..2 {
        lab::run_in(&node_netns, || dp.attach_pod(&a.host_veth))
            .unwrap()
            .unwrap();
    }
    register(&dp, &a);
    let expected = vec![
        ("clsact/ingress".to_owned(), "from_pod".to_owned()),
        ("clsact/egress".to_owned(), "to_pod".to_owned()),
    ];
    assert_eq!(
        lab::tc_programs(&node_netns, &a.host_veth).unwrap(),
        expected
    );

    // Counters survive re-attaching and count only pod a.
    send(&a, &b, 3, 10);
    assert_eq!(counters(&dp, &node_netns, &a), Some(traffic(3, 10, 0, 0)));
    assert_eq!(counters(&dp, &node_netns, &b), None, "b was never attached");

    let detached = lab::run_in(&node_netns, || {
        dataplane::detach_pod(&pin_dir, &a.host_veth)
    })
    .unwrap()
    .unwrap();
    assert_eq!(detached, dataplane::PodProgram::ALL);
    assert!(
        lab::tc_programs(&node_netns, &a.host_veth)
            .unwrap()
            .is_empty()
    );
    assert_eq!(counters(&dp, &node_netns, &a), None, "counters forgotten");

    let again = lab::run_in(&node_netns, || {
        dataplane::detach_pod(&pin_dir, &a.host_veth)
    })
    .unwrap()
    .unwrap();
    assert!(again.is_empty(), "detaching twice is a no-op");
}

#[test]
fn counters_are_pinned_and_survive_a_restart_of_the_loader() {
    require_privileges!();
    let TwoPods {
        lab,
        node_netns,
        a,
        b,
    } = two_pods();
    let pin_dir = lab.pin_dir("dp");
    {
        let mut first = Dataplane::load(&pin_dir).unwrap();
        lab::run_in(&node_netns, || first.attach_pod(&a.host_veth))
            .unwrap()
            .unwrap();
        register(&first, &a);
        send(&a, &b, 2, 64);
    } // The first loader is gone, as after an agent restart; its filter stays attached.
    send(&a, &b, 1, 64);
    let mut second = Dataplane::load(&pin_dir).unwrap();
    assert_eq!(
        counters(&second, &node_netns, &a),
        Some(traffic(3, 64, 0, 0)),
        "the filter kept counting while no loader ran"
    );
    lab::run_in(&node_netns, || second.attach_pod(&a.host_veth))
        .unwrap()
        .unwrap();
    send(&a, &b, 1, 64);
    assert_eq!(
        counters(&second, &node_netns, &a),
        Some(traffic(4, 64, 0, 0))
    );
}
