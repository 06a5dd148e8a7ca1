//! Socket-level service load balancing (cgroup `connect4`/`sendmsg4`/`recvmsg4`/`getpeername4`)
//! on a one-node lab: frontends and backends are written into the maps by hand, so these tests
//! check the programs alone; the agent's reconciler has its own tests.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use apiary_ebpf_common::{
    Backend, MaglevTable, PROTO_TCP, PROTO_UDP, SCOPE_SOCKET, SERVICE_AFFINITY, ServiceKey,
    ServiceValue,
};
use apiary_node_agent::{
    dataplane::{self, Dataplane},
    network::{Ipv4Net, NetworkConfig, PodNetwork, PodRequest},
};
use apiary_tests::{
    lab::{self, Lab, Node},
    require_privileges,
};

const TIMEOUT: Duration = Duration::from_secs(5);
const BACKEND_PORT: u16 = 8080;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 77, 1);

struct Pod {
    netns: String,
    ip: Ipv4Addr,
}

struct Setup {
    lab: Lab,
    node: Node,
    net: PodNetwork,
    backends: Vec<Pod>,
    client: Pod,
}

async fn setup(backends: usize) -> Setup {
    let mut lab = Lab::new().unwrap();
    let node = lab.add_bare_node(1500).unwrap();
    let (addr, len) = node.pod_cidr;
    let cgroup = dataplane::cgroup2_root().expect("a cgroup v2 mount");
    let net = PodNetwork::new(NetworkConfig {
        pod_cidr: Ipv4Net::new(addr, len).unwrap(),
        node_ip: node.underlay_ip,
        underlay_iface: None,
        state_dir: lab.state_dir(&node.netns),
        pin_dir: lab.pin_dir(&node.netns),
        node_netns: Some(node.netns_path()),
        socket_lb_cgroup: Some(cgroup),
    })
    .await
    .unwrap();
    let mut pods = Vec::new();
    for i in 0..=backends {
        let name = if i == backends {
            "client".to_owned()
        } else {
            format!("b{i}")
        };
        let netns = lab.add_pod_netns(&name).unwrap();
        let request = PodRequest {
            uid: format!("uid-{}-{name}", lab.prefix()),
            namespace: "default".into(),
            name: name.clone(),
            netns: Path::new("/run/netns").join(&netns),
        };
        let ip = net.setup(&request).await.unwrap().ip;
        pods.push(Pod { netns, ip });
    }
    let client = pods.pop().unwrap();
    Setup {
        lab,
        node,
        net,
        backends: pods,
        client,
    }
}

impl Setup {
    fn dataplane(&self) -> Dataplane {
        Dataplane::load(&self.lab.pin_dir(&self.node.netns)).unwrap()
    }

    /// Points frontend `key` at `backends` (ids 1..) with a round-robin table.
    fn program(&self, key: ServiceKey, id: u32, flags: u32, backends: &[Backend]) {
        let mut maps = self.dataplane().services().unwrap();
        let first = 100 * id;
        for (i, backend) in backends.iter().enumerate() {
            maps.insert_backend(first + i as u32, *backend).unwrap();
        }
        let table = (!backends.is_empty()).then(|| MaglevTable {
            backend_ids: std::array::from_fn(|slot| first + (slot % backends.len()) as u32),
        });
        let value = ServiceValue {
            id,
            backend_count: backends.len() as u32,
            flags,
            affinity_timeout_secs: 30,
        };
        maps.upsert_frontend(key, value, table.as_ref()).unwrap();
    }

    fn backend_of(&self, pod: &Pod, protocol: u8) -> Backend {
        Backend {
            addr: pod.ip.octets(),
            port_be: BACKEND_PORT.to_be(),
            protocol,
            flags: 0,
        }
    }
}

fn key(addr: Ipv4Addr, port: u16, protocol: u8) -> ServiceKey {
    ServiceKey {
        addr: addr.octets(),
        port_be: port.to_be(),
        protocol,
        scope: SCOPE_SOCKET,
    }
}

/// A TCP server in `pod` answering every connection with `name`.
fn tcp_server(pod: &Pod, name: &str) {
    let listener = lab::run_in(&pod.netns, || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, BACKEND_PORT))
    })
    .unwrap()
    .unwrap();
    let name = name.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.write_all(name.as_bytes());
        }
    });
}

/// A UDP server in `pod` answering every datagram with `name`.
fn udp_server(pod: &Pod, name: &str) {
    let socket = lab::udp_socket(
        &pod.netns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, BACKEND_PORT),
    )
    .unwrap();
    let name = name.to_owned();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), from);
        }
    });
}

/// Connects from `netns` to `addr`; returns who answered and the peer address the socket reports.
fn ask_tcp(netns: &str, addr: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let mut conn = lab::run_in(netns, || TcpStream::connect_timeout(&addr, TIMEOUT)).unwrap()?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    let peer = conn.peer_addr()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    Ok((answer, peer))
}

fn serve_all_tcp(setup: &Setup) -> Vec<Backend> {
    for (i, pod) in setup.backends.iter().enumerate() {
        tcp_server(pod, &format!("b{i}"));
    }
    setup
        .backends
        .iter()
        .map(|pod| setup.backend_of(pod, PROTO_TCP))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_ip_spreads_connections_and_reports_itself_as_the_peer() {
    require_privileges!();
    let setup = setup(3).await;
    let backends = serve_all_tcp(&setup);
    setup.program(key(VIP, 80, PROTO_TCP), 1, 0, &backends);

    let vip = SocketAddr::from((VIP, 80));
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        let (answer, peer) = ask_tcp(&setup.client.netns, vip).unwrap();
        assert_eq!(peer, vip, "getpeername shows the service, not the backend");
        *answers.entry(answer).or_default() += 1;
    }
    assert_eq!(answers.len(), 3, "every backend answered: {answers:?}");
    for (backend, count) in &answers {
        assert!(
            (50..=150).contains(count),
            "{backend} got {count} of 300 connections (fair share 100 ± 50 %): {answers:?}"
        );
    }

    // The node's own sockets are load-balanced too.
    let (answer, _) = ask_tcp(&setup.node.netns, vip).unwrap();
    assert!(answer.starts_with('b'), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_replies_come_from_the_service_address() {
    require_privileges!();
    let setup = setup(2).await;
    for (i, pod) in setup.backends.iter().enumerate() {
        udp_server(pod, &format!("b{i}"));
    }
    let backends: Vec<Backend> = setup
        .backends
        .iter()
        .map(|pod| setup.backend_of(pod, PROTO_UDP))
        .collect();
    setup.program(key(VIP, 53, PROTO_UDP), 1, 0, &backends);
    let vip = SocketAddr::from((VIP, 53));

    // Unconnected: sendmsg4 translates, recvmsg4 gives the reply the service's address.
    let socket = lab::udp_socket(
        &setup.client.netns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    )
    .unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    let mut first = None;
    for _ in 0..5 {
        socket.send_to(b"q", vip).unwrap();
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(from, vip);
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        // One socket is one flow: it stays on one backend.
        assert_eq!(first.get_or_insert_with(|| answer.clone()), &answer);
    }

    // Connected: connect4 translates, getpeername and recv see the service.
    let connected = lab::udp_socket(
        &setup.client.netns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    )
    .unwrap();
    connected.set_read_timeout(Some(TIMEOUT)).unwrap();
    connected.connect(vip).unwrap();
    assert_eq!(connected.peer_addr().unwrap(), vip);
    connected.send(b"q").unwrap();
    let n = connected.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_udp_sockets_to_a_removed_backend_are_closed() {
    require_privileges!();
    let setup = setup(1).await;
    udp_server(&setup.backends[0], "b0");
    let backend = setup.backend_of(&setup.backends[0], PROTO_UDP);
    setup.program(key(VIP, 53, PROTO_UDP), 1, 0, &[backend]);
    let connected = lab::udp_socket(
        &setup.client.netns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    )
    .unwrap();
    connected.set_read_timeout(Some(TIMEOUT)).unwrap();
    connected.connect(SocketAddr::from((VIP, 53))).unwrap();
    connected.send(b"q").unwrap();
    let mut buf = [0u8; 64];
    assert!(connected.recv(&mut buf).is_ok());
    // An unconnected socket is no flow: it stays.
    let unconnected = lab::udp_socket(
        &setup.client.netns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    )
    .unwrap();

    let ip = setup.backends[0].ip;
    let closed = lab::run_in(&setup.client.netns, || {
        dataplane::destroy_udp_sockets_to(ip, BACKEND_PORT)
    })
    .unwrap()
    .unwrap();
    assert_eq!(closed, 1);
    // Aborted and disconnected, as a destroyed socket is: the application learns it on its next
    // call and opens a new one.
    let pending = connected.take_error().unwrap().expect("a pending error");
    assert_eq!(
        pending.raw_os_error(),
        Some(libc::ECONNABORTED),
        "{pending}"
    );
    assert!(connected.peer_addr().is_err(), "still connected");
    assert!(connected.send(b"q").is_err());
    assert!(unconnected.local_addr().is_ok());
    // Nothing else to close in a namespace without such sockets.
    let none = lab::run_in(&setup.node.netns, || {
        dataplane::destroy_udp_sockets_to(ip, BACKEND_PORT)
    })
    .unwrap()
    .unwrap();
    assert_eq!(none, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_ready_backends_refuses_connections() {
    require_privileges!();
    let setup = setup(1).await;
    setup.program(key(VIP, 80, PROTO_TCP), 1, 0, &[]);
    let err = ask_tcp(&setup.client.netns, SocketAddr::from((VIP, 80))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_keeps_a_client_on_one_backend() {
    require_privileges!();
    let setup = setup(3).await;
    let backends = serve_all_tcp(&setup);
    setup.program(key(VIP, 80, PROTO_TCP), 1, SERVICE_AFFINITY, &backends);
    let vip = SocketAddr::from((VIP, 80));
    let (first, _) = ask_tcp(&setup.client.netns, vip).unwrap();
    for _ in 0..30 {
        assert_eq!(ask_tcp(&setup.client.netns, vip).unwrap().0, first);
    }
    // The affinity lapses after its timeout of idleness: fresh choices then spread again.
    setup.program(key(VIP, 82, PROTO_TCP), 3, SERVICE_AFFINITY, &backends);
    let mut maps = setup.dataplane().services().unwrap();
    let mut value = maps.frontends().unwrap()[&key(VIP, 82, PROTO_TCP)];
    value.affinity_timeout_secs = 1;
    maps.write_frontend(key(VIP, 82, PROTO_TCP), value).unwrap();
    let mut chosen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let answer = ask_tcp(&setup.client.netns, SocketAddr::from((VIP, 82)))
            .unwrap()
            .0;
        // Within the timeout: the same backend again.
        assert_eq!(
            ask_tcp(&setup.client.netns, SocketAddr::from((VIP, 82)))
                .unwrap()
                .0,
            answer
        );
        chosen.insert(answer);
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Ten independent choices among three backends all alike: (1/3)^9.
    assert!(chosen.len() > 1, "{chosen:?}");

    // Another client (the node) is balanced on its own: over many connections of fresh
    // clients, not every one lands on `first`.
    setup.program(key(VIP, 81, PROTO_TCP), 2, 0, &backends);
    let others: Vec<String> = (0..30)
        .map(|_| {
            ask_tcp(&setup.client.netns, SocketAddr::from((VIP, 81)))
                .unwrap()
                .0
        })
        .collect();
    assert!(others.iter().any(|a| a != &first), "{others:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_answer_on_the_node_address_and_loopback() {
    require_privileges!();
    let setup = setup(2).await;
    let backends = serve_all_tcp(&setup);
    setup.program(
        key(Ipv4Addr::UNSPECIFIED, 30080, PROTO_TCP),
        1,
        0,
        &backends,
    );
    for addr in [setup.node.underlay_ip, Ipv4Addr::LOCALHOST] {
        let (answer, peer) = ask_tcp(&setup.node.netns, SocketAddr::from((addr, 30080))).unwrap();
        assert!(answer.starts_with('b'), "{addr}: {answer}");
        assert_eq!(peer, SocketAddr::from((addr, 30080)));
    }
    // From a pod, the node's address works too.
    let (answer, _) = ask_tcp(
        &setup.client.netns,
        SocketAddr::from((setup.node.underlay_ip, 30080)),
    )
    .unwrap();
    assert!(answer.starts_with('b'), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_namespaces_are_left_alone_and_reattaching_keeps_serving() {
    require_privileges!();
    let mut setup = setup(1).await;
    let backends = serve_all_tcp(&setup);
    setup.program(key(VIP, 80, PROTO_TCP), 1, 0, &backends);
    let vip = SocketAddr::from((VIP, 80));

    // A namespace that is not this node's (another node of a lab, another container engine):
    // untouched, so the service address means nothing there.
    let stranger = setup.lab.add_pod_netns("stranger").unwrap();
    lab::ip(&["-n", &stranger, "link", "set", "lo", "up"]).unwrap();
    assert!(ask_tcp(&stranger, vip).is_err());

    // A restarted agent attaches its programs again: one set of links stays pinned, and
    // connections go on working.
    let pin_dir = setup.lab.pin_dir(&setup.node.netns);
    let cgroup = dataplane::cgroup2_root().unwrap();
    let mut again = Dataplane::load(&pin_dir).unwrap();
    again.attach_socket_lb(&cgroup).unwrap();
    assert!(ask_tcp(&setup.client.netns, vip).is_ok());
    let links = std::fs::read_dir(pin_dir.join("links")).unwrap().count();
    assert_eq!(links, dataplane::SOCKET_LB_PROGRAMS.len());

    // Detached: translation stops.
    let removed = dataplane::detach_socket_lb(&pin_dir).unwrap();
    assert_eq!(removed.len(), dataplane::SOCKET_LB_PROGRAMS.len() + 1);
    assert!(ask_tcp(&setup.client.netns, vip).is_err());
    // Keep `net` alive to the end: its pods' entries stay.
    let _ = &mut setup.net;
}
