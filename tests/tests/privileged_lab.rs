//! The lab itself: connectivity where it should be, none beyond it, and no leftovers.

use std::{
    net::{SocketAddrV4, UdpSocket},
    path::Path,
    time::Duration,
};

use apiary_tests::{
    lab::{self, Lab},
    require_privileges,
};

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn nodes_reach_each_other_over_the_underlay() {
    require_privileges!();
    let mut lab = Lab::new().unwrap();
    let n1 = lab.add_node().unwrap();
    let n2 = lab.add_node().unwrap();
    assert_eq!(n2.underlay_ip.octets(), [10, 123, 0, 2]);

    let server = lab::udp_socket(&n2.netns, SocketAddrV4::new(n2.underlay_ip, 9100)).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client: UdpSocket =
        lab::udp_socket(&n1.netns, SocketAddrV4::new(n1.underlay_ip, 0)).unwrap();
    client
        .send_to(b"ping", SocketAddrV4::new(n2.underlay_ip, 9100))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from.ip(), std::net::IpAddr::V4(n1.underlay_ip));
}

/// Regression: the pod bridge snooped multicast, so it joined 224.0.0.106 and its IGMPv3
/// report (one 54-byte frame, sent again within a second) reached every pod: an exact packet
/// count run while the machine was busy counted one `to_pod` packet more than it sent.
#[test]
fn pods_receive_no_frame_the_test_did_not_send() {
    require_privileges!();
    let mut lab = Lab::new().unwrap();
    let mut node = lab.add_node().unwrap();
    let a = lab.add_pod(&mut node, "a").unwrap();
    let b = lab.add_pod(&mut node, "b").unwrap();
    lab.pin_neighbors(&a, &b).unwrap();
    // Whether a report lands after the pods are wired depends on timing; which groups the
    // bridges joined does not. 224.0.0.1 (all hosts) is joined by every interface and never
    // reported.
    let underlay = lab.underlay_netns().unwrap();
    for (netns, bridge) in [(&node.netns, "pods0"), (&underlay, "ul0")] {
        assert_eq!(
            lab::ipv4_groups(netns, bridge).unwrap(),
            ["224.0.0.1"],
            "{bridge} joined a group it sends IGMP reports for"
        );
    }
    // IGMPv3's unsolicited reports go out within `unsolicited_report_interval` (1 s) of a join.
    std::thread::sleep(Duration::from_millis(2500));
    for pod in [&a, &b] {
        assert_eq!(
            lab::link_packets(&node.netns, &pod.host_veth).unwrap(),
            (0, 0),
            "frames on {}'s veth (tx toward the pod, rx from it) that no test sent",
            pod.name
        );
    }
}

#[test]
fn no_lab_namespace_has_a_route_beyond_the_lab() {
    require_privileges!();
    let mut lab = Lab::new().unwrap();
    let mut node = lab.add_node().unwrap();
    lab.add_pod(&mut node, "a").unwrap();
    for netns in lab.namespaces() {
        let routes = lab::ip(&["-n", netns, "-4", "route", "show", "table", "all"]).unwrap();
        for route in routes.lines() {
            let dst = route
                .split_whitespace()
                .find(|w| w.contains('.'))
                .unwrap_or("");
            let local_or_lab = route.starts_with("local ")
                || route.starts_with("broadcast ")
                || dst.starts_with("10.123.")
                || dst.starts_with("127.");
            assert!(
                local_or_lab && !route.starts_with("default"),
                "{netns} has a route out of the lab: {route}"
            );
        }
    }
}

#[test]
fn namespaces_are_removed_on_drop_even_after_a_panic() {
    require_privileges!();
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::new().unwrap();
        let mut node = lab.add_node().unwrap();
        lab.add_pod(&mut node, "a").unwrap();
        names = lab.namespaces().to_vec();
        assert!(names.iter().all(|n| netns_exists(n)));
        panic!("the test body fails half way");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 3, "underlay, node and pod");
    for name in names {
        assert!(!netns_exists(&name), "{name} survived the panic");
    }
}

#[test]
fn labs_left_behind_by_dead_processes_are_swept() {
    require_privileges!();
    // A pid that existed and is gone: our own finished child.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("ap{dead_pid}x0-node1");
    lab::ip(&["netns", "add", &stale]).unwrap();

    let _lab = Lab::new().unwrap();
    assert!(!netns_exists(&stale), "{stale} was not swept");
}
