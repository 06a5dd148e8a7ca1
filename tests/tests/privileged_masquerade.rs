//! Pods reaching addresses outside the cluster: their connections (TCP, UDP, ping) leave
//! masqueraded behind their node's address (the outside sees the node, never a pod address),
//! replies come back to the pod, and the API server — outside the nodes in the lab — is reachable from pods through
//! `default/kubernetes` (10.96.0.1:443).

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use apiary_tests::{
    cluster::{ClusterLab, sleeper_pod, wait},
    lab, require_privileges,
};

#[test]
fn pods_reach_the_outside_behind_their_node_address() {
    require_privileges!();
    let mut cluster = ClusterLab::start(2).unwrap();
    let nodes: Vec<(String, Ipv4Addr)> = cluster
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.node.underlay_ip))
        .collect();
    // A machine outside the cluster, on the underlay: a TCP server that answers each connection
    // with the address it came from, and a UDP one on the DNS port (busybox's nslookup is the
    // pods' only UDP sender) that records where datagrams came from.
    let outside = cluster.lab.add_client().unwrap();
    let tcp_addr = SocketAddrV4::new(outside.underlay_ip, 7000);
    let udp_addr = SocketAddrV4::new(outside.underlay_ip, 53);
    let listener = lab::run_in(&outside.netns, || TcpListener::bind(tcp_addr))
        .unwrap()
        .unwrap();
    let udp = lab::run_in(&outside.netns, || UdpSocket::bind(udp_addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(format!("{peer}\n").as_bytes());
        }
    });
    let udp_sources = Arc::new(Mutex::new(Vec::<IpAddr>::new()));
    let recorded = Arc::clone(&udp_sources);
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            recorded.lock().unwrap().push(from.ip());
        }
    });

    for (i, (node, _)) in nodes.iter().enumerate() {
        cluster.apply(&sleeper_pod(&format!("p{i}"), node)).unwrap();
    }
    for (i, (_, node_ip)) in nodes.iter().enumerate() {
        let pod = format!("p{i}");
        let status = cluster
            .wait_ready("default", &pod, Duration::from_secs(60))
            .unwrap();
        let pod_ip = status["status"]["podIP"].as_str().unwrap().to_owned();
        // TCP: the outside saw the node's address, and the answer got back to the pod.
        let seen = cluster.sh(
            &pod,
            &format!("timeout 5 nc {} 7000 </dev/null", outside.underlay_ip),
        );
        assert_eq!(seen.trim(), node_ip.to_string(), "{pod} (pod IP {pod_ip})");
        // Several connections at once, each with its own translation.
        let many = cluster.sh(
            &pod,
            &format!(
                "for i in 1 2 3 4 5 6 7 8; do timeout 5 nc {} 7000 </dev/null & done; wait",
                outside.underlay_ip
            ),
        );
        assert_eq!(
            many.lines()
                .filter(|l| l.trim() == node_ip.to_string())
                .count(),
            8,
            "{many}"
        );
        // UDP: a DNS query to the outside "server" (which never answers).
        udp_sources.lock().unwrap().clear();
        let _ = cluster.kubectl(&[
            "exec",
            &pod,
            "--",
            "timeout",
            "2",
            "nslookup",
            "probe.invalid",
            &outside.underlay_ip.to_string(),
        ]);
        let seen = udp_sources.lock().unwrap().clone();
        assert!(!seen.is_empty(), "{pod}: no datagram arrived");
        assert!(
            seen.iter().all(|ip| *ip == IpAddr::V4(*node_ip)),
            "{pod}: {seen:?}, expected only {node_ip}"
        );
        // ICMP echo: the outside machine's kernel answers the node, the reply reaches the pod.
        let ping = cluster.sh(
            &pod,
            &format!("ping -c 2 -W 2 {} && echo PONG", outside.underlay_ip),
        );
        assert!(ping.contains("PONG"), "{pod}: {ping}");
    }

    // The API server is outside the nodes here: pods reach it through its Service.
    let through_service = wait("the API server from a pod", Duration::from_secs(30), || {
        let out = cluster
            .kubectl_ok(&[
                "exec",
                "p1",
                "--",
                "sh",
                "-c",
                "echo x | timeout 5 nc 10.96.0.1 443 >/dev/null && echo CONNECTED",
            ])
            .ok()?;
        out.contains("CONNECTED").then_some(out)
    });
    through_service.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
}
