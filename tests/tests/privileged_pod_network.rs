//! The pod network on a two-node lab: `PodNetwork` wires pods (empty namespaces, as the runtime
//! makes them) on nodes without a pod bridge and with `ip_forward=0`, so pod traffic between
//! namespaces only flows if the BPF programs move it.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use apiary_node_agent::dataplane::Dataplane;
use apiary_node_agent::network::{
    Ipv4Net, NetworkConfig, PodInterface, PodNetwork, PodRequest, RemoteNode,
};
use apiary_tests::{
    lab::{self, Lab, Node},
    require_privileges,
};

const MTU: u32 = 1400;
const TIMEOUT: Duration = Duration::from_secs(5);

struct Cluster {
    lab: Lab,
    nodes: Vec<Node>,
    nets: Vec<PodNetwork>,
}

fn config(lab: &Lab, node: &Node) -> NetworkConfig {
    let (addr, len) = node.pod_cidr;
    NetworkConfig {
        pod_cidr: Ipv4Net::new(addr, len).unwrap(),
        node_ip: node.underlay_ip,
        underlay_iface: None,
        state_dir: lab.state_dir(&node.netns),
        pin_dir: lab.pin_dir(&node.netns),
        node_netns: Some(node.netns_path()),
        socket_lb_cgroup: None,
    }
}

fn remote(node: &Node) -> RemoteNode {
    let (addr, len) = node.pod_cidr;
    RemoteNode {
        name: node.netns.clone(),
        pod_cidr: Ipv4Net::new(addr, len).unwrap(),
        node_ip: node.underlay_ip,
    }
}

async fn cluster() -> Cluster {
    let mut lab = Lab::new().unwrap();
    let nodes = vec![
        lab.add_bare_node(MTU).unwrap(),
        lab.add_bare_node(MTU).unwrap(),
    ];
    let mut nets = Vec::new();
    for node in &nodes {
        nets.push(PodNetwork::new(config(&lab, node)).await.unwrap());
    }
    nets[0]
        .set_remote_nodes(&[remote(&nodes[1])])
        .await
        .unwrap();
    nets[1]
        .set_remote_nodes(&[remote(&nodes[0])])
        .await
        .unwrap();
    Cluster { lab, nodes, nets }
}

struct TestPod {
    netns: String,
    uid: String,
    iface: PodInterface,
}

async fn add_pod(cluster: &mut Cluster, node: usize, name: &str) -> TestPod {
    let netns = cluster.lab.add_pod_netns(name).unwrap();
    let uid = format!("uid-{}-{name}", cluster.lab.prefix());
    let request = PodRequest {
        uid: uid.clone(),
        namespace: "default".into(),
        name: name.into(),
        netns: Path::new("/run/netns").join(&netns),
    };
    let iface = cluster.nets[node].setup(&request).await.unwrap();
    TestPod { netns, uid, iface }
}

/// One TCP request/response from `client_netns` to `server_ip` (listening in `server_netns`).
fn tcp_round_trip(
    client_netns: &str,
    server_netns: &str,
    server_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    let listener = lab::run_in(server_netns, || {
        TcpListener::bind(SocketAddrV4::new(server_ip, 0))
    })??;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf)?;
        conn.write_all(&buf.map(|b| b.to_ascii_uppercase()))
    });
    let mut client = lab::run_in(client_netns, || TcpStream::connect_timeout(&addr, TIMEOUT))??;
    client.set_read_timeout(Some(TIMEOUT))?;
    client.write_all(b"hello")?;
    let mut reply = [0u8; 5];
    client.read_exact(&mut reply)?;
    anyhow::ensure!(&reply == b"HELLO", "wrong reply {reply:?}");
    server.join().unwrap()?;
    Ok(())
}

/// One UDP datagram each way between two namespaces.
fn udp_round_trip(
    a_netns: &str,
    a_ip: Ipv4Addr,
    b_netns: &str,
    b_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    udp_round_trip_within(a_netns, a_ip, b_netns, b_ip, TIMEOUT)
}

fn udp_round_trip_within(
    a_netns: &str,
    a_ip: Ipv4Addr,
    b_netns: &str,
    b_ip: Ipv4Addr,
    timeout: Duration,
) -> anyhow::Result<()> {
    let a: UdpSocket = lab::udp_socket(a_netns, SocketAddrV4::new(a_ip, 0))?;
    let b: UdpSocket = lab::udp_socket(b_netns, SocketAddrV4::new(b_ip, 0))?;
    a.set_read_timeout(Some(timeout))?;
    b.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 64];
    a.send_to(b"ping", b.local_addr()?)?;
    let (n, from) = b.recv_from(&mut buf)?;
    anyhow::ensure!(
        &buf[..n] == b"ping" && from == a.local_addr()?,
        "bad datagram at b"
    );
    b.send_to(b"pong", from)?;
    let (n, _) = a.recv_from(&mut buf)?;
    anyhow::ensure!(&buf[..n] == b"pong", "bad datagram at a");
    Ok(())
}

fn both_ways(a: &TestPod, b: &TestPod) {
    tcp_round_trip(&a.netns, &b.netns, b.iface.ip)
        .unwrap_or_else(|e| panic!("TCP {} -> {}: {e:#}", a.iface.ip, b.iface.ip));
    tcp_round_trip(&b.netns, &a.netns, a.iface.ip)
        .unwrap_or_else(|e| panic!("TCP {} -> {}: {e:#}", b.iface.ip, a.iface.ip));
    udp_round_trip(&a.netns, a.iface.ip, &b.netns, b.iface.ip)
        .unwrap_or_else(|e| panic!("UDP {} <-> {}: {e:#}", a.iface.ip, b.iface.ip));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_talk_on_one_node_and_across_nodes_with_ip_forward_off() {
    require_privileges!();
    let mut cluster = cluster().await;
    let a1 = add_pod(&mut cluster, 0, "a1").await;
    let b1 = add_pod(&mut cluster, 0, "b1").await;
    let a2 = add_pod(&mut cluster, 1, "a2").await;
    for node in &cluster.nodes {
        assert_eq!(
            lab::read_sysctl(&node.netns, "net.ipv4.ip_forward").unwrap(),
            "0"
        );
    }

    both_ways(&a1, &b1);
    both_ways(&a1, &a2);
    both_ways(&b1, &a2);

    // The BPF path counted: redirected frames count as "to pod" for the receiver too.
    let net = &cluster.nets[0];
    let traffic = net.traffic(&a1.uid).await.unwrap().expect("a1 is counted");
    assert!(
        traffic.from_pod_packets >= 6 && traffic.to_pod_packets >= 6,
        "{traffic:?}"
    );

    // Control: without b1's endpoint entry its traffic falls to the host stack, which does not
    // forward; a repeated setup repairs the entry.
    let dp = Dataplane::load(&cluster.lab.pin_dir(&cluster.nodes[0].netns)).unwrap();
    assert!(dp.endpoints().unwrap().remove(b1.iface.ip).unwrap());
    let blocked = udp_round_trip_within(
        &a1.netns,
        a1.iface.ip,
        &b1.netns,
        b1.iface.ip,
        Duration::from_millis(500),
    );
    assert!(
        blocked.is_err(),
        "the host stack must not forward between pods"
    );
    let request = PodRequest {
        uid: b1.uid.clone(),
        namespace: "default".into(),
        name: "b1".into(),
        netns: Path::new("/run/netns").join(&b1.netns),
    };
    assert_eq!(net.setup(&request).await.unwrap(), b1.iface);
    both_ways(&a1, &b1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_local_and_remote_pods_and_pods_reach_their_node() {
    require_privileges!();
    let mut cluster = cluster().await;
    let a1 = add_pod(&mut cluster, 0, "a1").await;
    let a2 = add_pod(&mut cluster, 1, "a2").await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);

    tcp_round_trip(&n1.netns, &a1.netns, a1.iface.ip).expect("node -> local pod");
    tcp_round_trip(&a1.netns, &n1.netns, n1.underlay_ip).expect("pod -> own node");
    tcp_round_trip(&n1.netns, &a2.netns, a2.iface.ip).expect("node -> remote pod");
    tcp_round_trip(&a2.netns, &n1.netns, n1.underlay_ip).expect("pod -> remote node");
    udp_round_trip(&n2.netns, n2.underlay_ip, &a2.netns, a2.iface.ip).expect("UDP node <-> pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_interface_has_the_underlay_mtu_a_32_and_the_link_local_gateway() {
    require_privileges!();
    let mut cluster = cluster().await;
    let a1 = add_pod(&mut cluster, 0, "a1").await;
    assert_eq!(a1.iface.mtu, MTU);
    let link = lab::ip(&["-n", &a1.netns, "-j", "link", "show", "dev", "eth0"]).unwrap();
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    assert_eq!(link[0]["mtu"], MTU);
    assert_eq!(link[0]["address"], a1.iface.mac.as_str());
    let addrs = lab::ip(&["-n", &a1.netns, "-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(addrs.contains(&format!("{}/32", a1.iface.ip)), "{addrs}");
    let routes = lab::ip(&["-n", &a1.netns, "route", "show", "default"]).unwrap();
    assert!(routes.contains("via 169.254.1.1 dev eth0"), "{routes}");
    let host = lab::ip(&[
        "-n",
        &cluster.nodes[0].netns,
        "-j",
        "link",
        "show",
        "dev",
        &a1.iface.host_veth,
    ])
    .unwrap();
    let host: serde_json::Value = serde_json::from_str(&host).unwrap();
    assert_eq!(host[0]["mtu"], MTU);
    // Same uid again: same interface (setup is idempotent).
    let again = cluster.nets[0]
        .setup(&PodRequest {
            uid: a1.uid.clone(),
            namespace: "default".into(),
            name: "a1".into(),
            netns: Path::new("/run/netns").join(&a1.netns),
        })
        .await
        .unwrap();
    assert_eq!(again, a1.iface);
}

/// What a node holds for its pods: veths, agent routes, endpoint entries, counter entries, leases.
fn footprint(cluster: &Cluster, node: usize) -> [usize; 5] {
    let netns = &cluster.nodes[node].netns;
    let veths = lab::ip(&["-n", netns, "-o", "link", "show", "type", "veth"]).unwrap();
    let veths = veths.lines().filter(|l| l.contains("lxc")).count();
    let routes = lab::ip(&["-n", netns, "route", "show", "proto", "201"]).unwrap();
    let pod_routes = routes.lines().filter(|l| !l.contains(" via ")).count();
    let net = &cluster.nets[node];
    [
        veths,
        pod_routes,
        net.endpoints().unwrap().len(),
        net.pod_counters().unwrap().len(),
        net.allocations().unwrap().len(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_is_idempotent_and_leaves_nothing_behind() {
    require_privileges!();
    let mut cluster = cluster().await;
    assert_eq!(footprint(&cluster, 0), [0; 5]);
    let a1 = add_pod(&mut cluster, 0, "a1").await;
    let b1 = add_pod(&mut cluster, 0, "b1").await;
    assert_eq!(footprint(&cluster, 0), [2; 5]);

    cluster.nets[0].teardown(&a1.uid).await.unwrap();
    assert_eq!(footprint(&cluster, 0), [1; 5]);
    cluster.nets[0].teardown(&a1.uid).await.unwrap();
    cluster.nets[0].teardown(&b1.uid).await.unwrap();
    cluster.nets[0].teardown(&b1.uid).await.unwrap();
    cluster.nets[0].teardown("never-existed").await.unwrap();
    assert_eq!(footprint(&cluster, 0), [0; 5]);
    let left = lab::ip(&["-n", &a1.netns, "-o", "link", "show"]).unwrap();
    assert!(
        !left.contains("eth0"),
        "the pod's eth0 went with its veth: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart_and_are_never_handed_out_twice() {
    require_privileges!();
    let mut cluster = cluster().await;
    let a1 = add_pod(&mut cluster, 0, "a1").await;
    let node = cluster.nodes[0].clone();
    let config = config(&cluster.lab, &node);
    cluster.nets.remove(0);
    let net = PodNetwork::new(config.clone()).await.unwrap();
    assert_eq!(
        net.allocations().unwrap(),
        vec![(a1.uid.clone(), a1.iface.ip)]
    );
    let b1_netns = cluster.lab.add_pod_netns("b1").unwrap();
    let b1 = net
        .setup(&PodRequest {
            uid: "b1".into(),
            namespace: "default".into(),
            name: "b1".into(),
            netns: Path::new("/run/netns").join(&b1_netns),
        })
        .await
        .unwrap();
    assert_ne!(b1.ip, a1.iface.ip);
    let again = net
        .setup(&PodRequest {
            uid: a1.uid.clone(),
            namespace: "default".into(),
            name: "a1".into(),
            netns: Path::new("/run/netns").join(&a1.netns),
        })
        .await
        .unwrap();
    assert_eq!(again.ip, a1.iface.ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_stay_reachable_while_the_agent_restarts() {
    require_privileges!();
    let mut cluster = cluster().await;
    let a1 = add_pod(&mut cluster, 0, "a1").await;
    let b1 = add_pod(&mut cluster, 0, "b1").await;
    let a2 = add_pod(&mut cluster, 1, "a2").await;
    let before = cluster.nets[0].endpoints().unwrap();

    // Request/response over one TCP connection per path, all through the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let mut pingers = Vec::new();
    for (client, server) in [(&a1, &b1), (&a1, &a2)] {
        let listener = lab::run_in(&server.netns, || {
            TcpListener::bind(SocketAddrV4::new(server.iface.ip, 0))
        })
        .unwrap()
        .unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 8];
            while conn.read_exact(&mut buf).is_ok() {
                if conn.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let mut conn = lab::run_in(&client.netns, || TcpStream::connect_timeout(&addr, TIMEOUT))
            .unwrap()
            .unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        let stop = Arc::clone(&stop);
        let done = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&done);
        pingers.push((
            done,
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    conn.write_all(&i.to_be_bytes())?;
                    let mut buf = [0u8; 8];
                    conn.read_exact(&mut buf)?;
                    assert_eq!(u64::from_be_bytes(buf), i);
                    i += 1;
                    count.store(i, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(())
            }),
        ));
    }
    let progress = |pingers: &Vec<(Arc<AtomicU64>, _)>| -> Vec<u64> {
        pingers
            .iter()
            .map(|(n, _)| n.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Agent down: the pinned maps and attached filters keep forwarding.
    let config = config(&cluster.lab, &cluster.nodes[0]);
    let programs_before = lab::tc_programs(&cluster.nodes[0].netns, &a1.iface.host_veth).unwrap();
    cluster.nets.remove(0);
    let down = progress(&pingers);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = progress(&pingers);
    assert!(
        down.iter().zip(&still).all(|(d, s)| s > d),
        "stalled while down: {down:?} -> {still:?}"
    );

    // Agent back: same entries (nothing flushed), traffic flows on.
    let net = PodNetwork::new(config).await.unwrap();
    assert_eq!(net.endpoints().unwrap(), before);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = progress(&pingers);
    assert!(
        still.iter().zip(&after).all(|(s, a)| a > s),
        "stalled after restart: {still:?} -> {after:?}"
    );
    let programs_after = lab::tc_programs(&cluster.nodes[0].netns, &a1.iface.host_veth).unwrap();
    assert_eq!(
        programs_after, programs_before,
        "one filter per hook, replaced in place"
    );

    stop.store(true, Ordering::Relaxed);
    for (_, pinger) in pingers {
        pinger
            .join()
            .unwrap()
            .expect("a connection broke during the restart");
    }
    both_ways(&a1, &a2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_nodes_are_reconciled_to_the_given_set() {
    require_privileges!();
    let mut cluster = cluster().await;
    let a1 = add_pod(&mut cluster, 0, "a1").await;
    let a2 = add_pod(&mut cluster, 1, "a2").await;
    let via_routes = |cluster: &Cluster| {
        let routes = lab::ip(&[
            "-n",
            &cluster.nodes[0].netns,
            "route",
            "show",
            "proto",
            "201",
        ])
        .unwrap();
        routes
            .lines()
            .filter(|l| l.contains(" via "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let dp = Dataplane::load(&cluster.lab.pin_dir(&cluster.nodes[0].netns)).unwrap();
    let n2 = remote(&cluster.nodes[1]);
    assert_eq!(
        via_routes(&cluster),
        vec![format!("{} via {} dev eth0 ", n2.pod_cidr, n2.node_ip)]
    );
    // Besides this node's own pod CIDR, listed "to itself".
    let own_ip = cluster.nodes[0].underlay_ip;
    let others = |dp: &Dataplane| -> Vec<_> {
        let all = dp.remote_nodes().unwrap().all().unwrap();
        assert!(all.iter().any(|(_, ip)| *ip == own_ip), "{all:?}");
        all.into_iter().filter(|(_, ip)| *ip != own_ip).collect()
    };
    assert_eq!(others(&dp).len(), 2, "pod CIDR and node /32");

    // Same set again: nothing changes; the empty set: everything of node 2 goes.
    cluster.nets[0]
        .set_remote_nodes(std::slice::from_ref(&n2))
        .await
        .unwrap();
    assert_eq!(via_routes(&cluster).len(), 1);
    cluster.nets[0].set_remote_nodes(&[]).await.unwrap();
    assert!(via_routes(&cluster).is_empty());
    assert!(others(&dp).is_empty());
    let cut = udp_round_trip_within(
        &a1.netns,
        a1.iface.ip,
        &a2.netns,
        a2.iface.ip,
        Duration::from_millis(500),
    );
    assert!(
        cut.is_err(),
        "node 2's pods must be unreachable without its entry"
    );

    // And back.
    cluster.nets[0].set_remote_nodes(&[n2]).await.unwrap();
    both_ways(&a1, &a2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_after_the_runtime_deleted_the_pod_namespace_cleans_up_too() {
    require_privileges!();
    let mut cluster = cluster().await;
    let a1 = add_pod(&mut cluster, 0, "a1").await;
    assert_eq!(footprint(&cluster, 0), [1; 5]);
    // The runtime removed the namespace first, taking the veth pair (and its route) along.
    lab::ip(&["netns", "del", &a1.netns]).unwrap();
    cluster.nets[0].teardown(&a1.uid).await.unwrap();
    assert_eq!(footprint(&cluster, 0), [0; 5]);
}

/// Pods are wired up side by side (a few at a time), so concurrent setups must still hand out
/// distinct addresses and leave every pod reachable; concurrent teardowns leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_setups_and_teardowns_do_not_interfere() {
    require_privileges!();
    let mut cluster = cluster().await;
    let before = footprint(&cluster, 0);
    let mut requests = Vec::new();
    for i in 0..8 {
        let name = format!("c{i}");
        let netns = cluster.lab.add_pod_netns(&name).unwrap();
        requests.push(PodRequest {
            uid: format!("uid-{}-{name}", cluster.lab.prefix()),
            namespace: "default".into(),
            name,
            netns: Path::new("/run/netns").join(&netns),
        });
    }
    let net = &cluster.nets[0];
    let ifaces = futures::future::join_all(requests.iter().map(|r| net.setup(r))).await;
    let ifaces: Vec<PodInterface> = ifaces.into_iter().map(Result::unwrap).collect();
    let mut ips: Vec<Ipv4Addr> = ifaces.iter().map(|i| i.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(
        ips.len(),
        requests.len(),
        "addresses handed out twice: {ifaces:?}"
    );
    let netns_of = |r: &PodRequest| r.netns.file_name().unwrap().to_string_lossy().into_owned();
    for (r, iface) in requests.iter().zip(&ifaces).skip(1) {
        udp_round_trip(
            &netns_of(&requests[0]),
            ifaces[0].ip,
            &netns_of(r),
            iface.ip,
        )
        .unwrap_or_else(|e| panic!("UDP {} <-> {}: {e:#}", ifaces[0].ip, iface.ip));
    }
    let torn = futures::future::join_all(requests.iter().map(|r| net.teardown(&r.uid))).await;
    torn.into_iter().for_each(Result::unwrap);
    assert_eq!(footprint(&cluster, 0), before);
}
