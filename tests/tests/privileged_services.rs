//! Services end to end on a two-node lab cluster: ClusterIPs from pods on both nodes and from a
//! node, NodePorts from a client outside the nodes (Cluster and Local policies), session
//! affinity, cluster DNS, a Deployment scaled down under an open connection, and requests through
//! a ClusterIP while a node agent is killed and restarted.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use apiary_tests::{
    cluster::{ClusterLab, sleeper_pod, wait},
    lab, require_privileges,
};
use serde_json::Value;

const IMAGE: &str = "localhost/busybox:latest";

/// A Deployment of busybox httpd answering `GET /` with the pod's name, on port 8080 (`http`).
fn web(name: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: {IMAGE}
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
"#
    )
}

fn service(name: &str, app: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
{extra_spec}
"#
    )
}

/// Who answered each of `n` fresh connections from `pod` to `url`.
fn answers_from_pod(cluster: &ClusterLab, pod: &str, url: &str, n: u32) -> BTreeMap<String, u32> {
    let out = cluster.sh(
        pod,
        &format!("for i in $(seq {n}); do timeout 5 wget -qO- {url} || echo FAILED; done"),
    );
    let mut counts = BTreeMap::new();
    for line in out.lines() {
        *counts.entry(line.trim().to_owned()).or_default() += 1;
    }
    counts
}

/// One HTTP GET over a fresh connection from namespace `netns`; the body (a pod name).
fn http_get(netns: &str, addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = lab::run_in(netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .expect("entering the namespace")?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .unwrap_or_default();
    if body.is_empty() {
        return Err(std::io::Error::other(format!("no body in {response:?}")));
    }
    Ok(body)
}

fn cluster_ip(cluster: &ClusterLab, name: &str) -> Ipv4Addr {
    let svc = cluster
        .kubectl_json(&["get", "svc", name, "-o", "json"])
        .unwrap();
    svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap()
}

/// The pods of Deployment `app` by node name.
fn pods_by_node(cluster: &ClusterLab, app: &str) -> BTreeMap<String, Vec<String>> {
    let pods = cluster
        .kubectl_json(&["get", "pods", "-l", &format!("app={app}"), "-o", "json"])
        .unwrap();
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods["items"].as_array().unwrap() {
        by_node
            .entry(pod["spec"]["nodeName"].as_str().unwrap().to_owned())
            .or_default()
            .push(pod["metadata"]["name"].as_str().unwrap().to_owned());
    }
    by_node
}

fn wait_available(cluster: &ClusterLab, deployment: &str, replicas: u64) {
    wait(
        &format!("{deployment} available"),
        Duration::from_secs(120),
        || {
            let d: Value = cluster
                .kubectl_json(&["get", "deployment", deployment, "-o", "json"])
                .ok()?;
            (d["status"]["availableReplicas"].as_u64() == Some(replicas)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
}

#[test]
fn cluster_ips_node_ports_affinity_and_dns() {
    require_privileges!();
    let mut cluster = ClusterLab::start(2).unwrap();
    let nodes: Vec<(String, Ipv4Addr)> = cluster
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.node.underlay_ip))
        .collect();
    cluster.apply(&web("web", 4)).unwrap();
    cluster.apply(&service("web", "web", "")).unwrap();
    cluster
        .apply(&service(
            "web-np",
            "web",
            "  type: NodePort\n  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]",
        ))
        .unwrap();
    cluster
        .apply(&service("web-sticky", "web", "  sessionAffinity: ClientIP"))
        .unwrap();
    cluster.apply(&sleeper_pod("c1", &nodes[0].0)).unwrap();
    cluster.apply(&sleeper_pod("c2", &nodes[1].0)).unwrap();
    wait_available(&cluster, "web", 4);
    for pod in ["c1", "c2"] {
        cluster
            .wait_ready("default", pod, Duration::from_secs(60))
            .unwrap();
    }
    let backends = pods_by_node(&cluster, "web");
    let all: Vec<&String> = backends.values().flatten().collect();
    assert_eq!(all.len(), 4);

    // ClusterIP by DNS name (the pod's search path), from pods on both nodes: 150 connections
    // each, every backend within ±50 % of its fair share.
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for pod in ["c1", "c2"] {
        for (answer, n) in answers_from_pod(&cluster, pod, "http://web/", 150) {
            *counts.entry(answer).or_default() += n;
        }
    }
    assert!(!counts.contains_key("FAILED"), "{counts:?}");
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        {
            let mut names = all.clone();
            names.sort();
            names
        },
        "every backend answered, nothing else did"
    );
    for (backend, n) in &counts {
        assert!(
            (38..=112).contains(n),
            "{backend}: {n} of 300 (fair share 75 ± 50 %): {counts:?}"
        );
    }

    // Cluster DNS: the service's FQDN resolves to its ClusterIP.
    let ip = cluster_ip(&cluster, "web");
    let lookup = cluster.sh("c1", "nslookup web.default.svc.cluster.local");
    assert!(lookup.contains(&ip.to_string()), "{lookup}");

    // Headless: the name resolves to the ready pods themselves.
    cluster
        .apply(&service("web-headless", "web", "  clusterIP: None"))
        .unwrap();
    let pod_ips: Vec<String> = cluster
        .kubectl_json(&["get", "pods", "-l", "app=web", "-o", "json"])
        .unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_owned())
        .collect();
    let mut last = String::new();
    let headless = wait("headless records", Duration::from_secs(20), || {
        let out = cluster.kubectl(&[
            "exec",
            "c1",
            "--",
            "nslookup",
            "web-headless.default.svc.cluster.local",
        ]);
        last = format!("{out:?}");
        let out = String::from_utf8(out.ok()?.stdout).ok()?;
        pod_ips.iter().all(|ip| out.contains(ip)).then_some(out)
    })
    .unwrap_or_else(|e| panic!("{e:#}: {last}\n{}", cluster.logs()));
    assert!(!headless.contains(&ip.to_string()), "{headless}");

    // ExternalName: a CNAME to another name, which the pod's resolver follows.
    cluster
        .apply(
            "apiVersion: v1\nkind: Service\nmetadata: {name: alias}\nspec: {type: ExternalName, externalName: web.default.svc.cluster.local}\n",
        )
        .unwrap();
    let alias = wait("the ExternalName alias", Duration::from_secs(20), || {
        let out = cluster
            .kubectl_ok(&[
                "exec",
                "c1",
                "--",
                "nslookup",
                "alias.default.svc.cluster.local",
            ])
            .ok()?;
        out.contains(&ip.to_string()).then_some(out)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}
{}",
            cluster.logs()
        )
    });
    assert!(alias.contains("web.default.svc.cluster.local"), "{alias}");

    // Several ports, by name and by number, and a Service without a selector backed by
    // hand-written Endpoints (mirrored into an EndpointSlice).
    cluster
        .apply(&service(
            "web-ports",
            "web",
            "  ports: [{name: http, port: 80, targetPort: http}, {name: alt, port: 8000, targetPort: 8080}]",
        ))
        .unwrap();
    let first_ip = &pod_ips[0];
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: manual}}
spec:
  ports: [{{port: 81, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: manual}}
subsets:
- addresses: [{{ip: "{first_ip}"}}]
  ports: [{{port: 8080}}]
"#
        ))
        .unwrap();
    let first_pod = cluster
        .kubectl_json(&["get", "pods", "-l", "app=web", "-o", "json"])
        .unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["status"]["podIP"] == first_ip.as_str())
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for url in [
        "http://web-ports/",
        "http://web-ports:8000/",
        "http://manual:81/",
    ] {
        let answer = wait(url, Duration::from_secs(20), || {
            let out = cluster
                .kubectl_ok(&["exec", "c2", "--", "timeout", "5", "wget", "-qO-", url])
                .ok()?;
            Some(out.trim().to_owned())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{url}: {e:#}
{}",
                cluster.logs()
            )
        });
        assert!(all.contains(&&answer), "{url}: {answer}");
        if url.contains("manual") {
            assert_eq!(answer, first_pod, "the hand-written endpoint");
        }
    }

    // The node's own sockets: ClusterIP from node 2.
    let answer = http_get(&cluster.nodes()[1].node.netns, SocketAddr::from((ip, 80))).unwrap();
    assert!(all.contains(&&answer), "{answer}");

    // internalTrafficPolicy: Local: pods reach only the backends of their own node (and are
    // refused when it has none).
    cluster
        .apply(&service("web-itp", "web", "  internalTrafficPolicy: Local"))
        .unwrap();
    for (pod, (node, _)) in ["c1", "c2"].iter().zip(&nodes) {
        let local = backends.get(node).cloned().unwrap_or_default();
        let answers = wait(
            "internalTrafficPolicy: Local",
            Duration::from_secs(20),
            || {
                let answers = answers_from_pod(&cluster, pod, "http://web-itp/", 20);
                let settled = if local.is_empty() {
                    answers.keys().all(|a| a == "FAILED")
                } else {
                    answers.keys().all(|a| local.contains(a))
                };
                settled.then_some(answers)
            },
        )
        .unwrap_or_else(|e| panic!("{pod} on {node}: {e:#}; local backends {local:?}"));
        assert_eq!(answers.values().sum::<u32>(), 20, "{answers:?}");
    }

    // `apiary net services` shows what node 1's maps hold: the frontend of web:http with the
    // four pods, read from the maps (through the API server's node proxy and the agent).
    let out = cluster
        .apiary(&["net", "services", "--node", &nodes[0].0, "-o", "json"])
        .unwrap();
    let view: Value = serde_json::from_str(&out).unwrap();
    let web_frontend = view
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["service"] == "default/web:http" && f["frontend"]["scope"] == "socket")
        .unwrap_or_else(|| panic!("no default/web:http in {view:#}"));
    assert_eq!(web_frontend["frontend"]["address"], ip.to_string());
    let mut seen: Vec<String> = web_frontend["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    let mut expected = pod_ips.clone();
    expected.sort();
    assert_eq!(seen, expected);
    let slots: u64 = web_frontend["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["slots"].as_u64().unwrap())
        .sum();
    assert_eq!(slots, apiary_ebpf_common::MAGLEV_TABLE_SIZE as u64);

    // Session affinity: one client, one backend.
    let sticky = answers_from_pod(&cluster, "c2", "http://web-sticky/", 20);
    assert_eq!(sticky.len(), 1, "{sticky:?}");

    // NodePort from a machine outside the nodes, on both node addresses (policy Cluster: both
    // nodes reach every backend, remote ones through SNAT).
    let client = cluster.lab.add_client().unwrap();
    for (name, node_ip) in &nodes {
        let mut seen = BTreeMap::<String, u32>::new();
        for _ in 0..40 {
            let answer = http_get(&client.netns, SocketAddr::from((*node_ip, 30080)))
                .unwrap_or_else(|e| panic!("NodePort on {name}: {e}\n{}", cluster.logs()));
            *seen.entry(answer).or_default() += 1;
        }
        assert!(
            seen.keys().all(|b| all.contains(&b)),
            "{name}: {seen:?} vs {all:?}"
        );
        assert!(
            seen.len() >= 3,
            "{name}: 40 connections reached only {seen:?}"
        );
    }

    // LoadBalancer: an address from the pool, served like a NodePort by the node the client
    // routes it to, and from pods like a ClusterIP.
    cluster
        .apply(&service("web-lb", "web", "  type: LoadBalancer"))
        .unwrap();
    let lb_ip: Ipv4Addr = wait("a load-balancer address", Duration::from_secs(20), || {
        let svc = cluster
            .kubectl_json(&["get", "svc", "web-lb", "-o", "json"])
            .ok()?;
        svc["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()?
            .parse()
            .ok()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    assert!(lb_ip.to_string().starts_with("10.123.64."), "{lb_ip}");
    lab::ip(&[
        "-n",
        &client.netns,
        "route",
        "add",
        &format!("{lb_ip}/32"),
        "via",
        &nodes[1].1.to_string(),
    ])
    .unwrap();
    let answer = wait("the load-balancer address", Duration::from_secs(20), || {
        http_get(&client.netns, SocketAddr::from((lb_ip, 80))).ok()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    assert!(all.contains(&&answer), "{answer}");
    let from_pod = answers_from_pod(&cluster, "c1", &format!("http://{lb_ip}/"), 5);
    assert!(from_pod.keys().all(|a| all.contains(&a)), "{from_pod:?}");

    // externalTrafficPolicy: Local: a node answers with its own backends only, and a node
    // without any does not answer.
    cluster
        .apply(&service(
            "web-local",
            "web",
            "  type: NodePort\n  externalTrafficPolicy: Local\n  ports: [{name: http, port: 80, targetPort: http, nodePort: 30081}]",
        ))
        .unwrap();
    cluster
        .kubectl_ok(&["scale", "deployment", "web", "--replicas", "1"])
        .unwrap();
    wait_available(&cluster, "web", 1);
    let remaining = wait("one backend left", Duration::from_secs(60), || {
        let by_node = pods_by_node(&cluster, "web");
        (by_node.values().flatten().count() == 1).then_some(by_node)
    })
    .unwrap();
    let (with, pod) = remaining.iter().next().unwrap();
    for (name, node_ip) in &nodes {
        let addr = SocketAddr::from((*node_ip, 30081));
        if name == with {
            let answer = wait("the Local NodePort", Duration::from_secs(20), || {
                http_get(&client.netns, addr).ok()
            })
            .unwrap();
            assert_eq!(&answer, &pod[0]);
        } else {
            // Give the maps a moment to lose the scaled-down backends, then expect silence.
            std::thread::sleep(Duration::from_secs(2));
            assert!(
                http_get(&client.netns, addr).is_err(),
                "{name} has no backend of web-local but answered"
            );
        }
    }
}

/// `nc` echo servers that ignore SIGTERM, so a scaled-down pod keeps serving its connections for
/// its grace period.
const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: echo
        image: localhost/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "trap '' TERM; while true; do nc -l -p 9000 -e cat; done"]
        ports: [{name: echo, containerPort: 9000}]
        readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 9000, targetPort: echo}]
"#;

#[test]
fn connections_survive_scale_down_and_agent_restarts() {
    require_privileges!();
    let mut cluster = ClusterLab::start(2).unwrap();
    cluster.apply(&web("web", 2)).unwrap();
    cluster.apply(&service("web", "web", "")).unwrap();
    cluster.apply(ECHO).unwrap();
    wait_available(&cluster, "web", 2);
    wait_available(&cluster, "echo", 1);
    let node0 = cluster.nodes()[0].node.netns.clone();
    let web_ip = cluster_ip(&cluster, "web");
    let echo_ip = cluster_ip(&cluster, "echo");
    let web = SocketAddr::from((web_ip, 80));
    wait("the ClusterIP served", Duration::from_secs(20), || {
        http_get(&node0, web).ok()
    })
    .unwrap();

    // A connection to the echo service stays up while its Deployment is scaled to zero: the
    // backend leaves the maps (new connections are refused) but finishes what it has.
    let echo = SocketAddr::from((echo_ip, 9000));
    let mut open = wait("an echo connection", Duration::from_secs(20), || {
        lab::run_in(&node0, || {
            TcpStream::connect_timeout(&echo, Duration::from_secs(2))
        })
        .ok()?
        .ok()
    })
    .unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut round_trip = |text: &[u8]| {
        open.write_all(text).unwrap();
        let mut buf = vec![0u8; text.len()];
        open.read_exact(&mut buf).unwrap();
        assert_eq!(buf, text);
    };
    round_trip(b"before\n");
    cluster
        .kubectl_ok(&["scale", "deployment", "echo", "--replicas", "0"])
        .unwrap();
    wait(
        "new echo connections refused",
        Duration::from_secs(20),
        || {
            let refused = lab::run_in(&node0, || {
                TcpStream::connect_timeout(&echo, Duration::from_secs(2))
            })
            .ok()?
            .err()?;
            (refused.kind() == std::io::ErrorKind::ConnectionRefused).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    round_trip(b"after scale-down\n");

    // Requests through the ClusterIP from node 0 while its agent is killed and restarted: none
    // may fail (the programs and maps are pinned; the new agent reconciles without flushing).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let looper = std::thread::spawn({
        let (stop, done, failures, node0) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&failures),
            node0.clone(),
        );
        move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = http_get(&node0, web) {
                    failures.lock().unwrap().push(e.to_string());
                }
                done.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    cluster.kill_agent(0);
    std::thread::sleep(Duration::from_secs(2));
    cluster.restart_agent(0).unwrap();
    // Until the restarted agent has reconciled (it logs when it writes nothing, too: wait for
    // its node to be Ready again), then a little longer.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap();
    let failures = failures.lock().unwrap();
    let done = done.load(Ordering::Relaxed);
    assert!(done > 100, "only {done} requests made");
    assert!(
        failures.is_empty(),
        "{} of {done} requests failed: {failures:?}\n{}",
        failures.len(),
        cluster.logs()
    );
}

fn udp_pod(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: udp}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    ports: [{{containerPort: 9001, protocol: UDP}}]
"#
    )
}

/// A UDP server inside pod `name`'s network namespace (the agent's sandbox), answering every
/// datagram with the pod's name. The test plays the container's part: busybox has no UDP
/// server.
fn udp_server_in_pod(cluster: &ClusterLab, name: &str) {
    let pod = cluster.pod("default", name).unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let netns = cluster.nodes()[0]
        .run_dir
        .join("pods")
        .join(uid)
        .join("net");
    let socket = apiary_node_agent::netns::run_in(&netns, || {
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 9001))
    })
    .unwrap()
    .unwrap();
    let name = name.to_owned();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), from);
        }
    });
}

#[test]
fn udp_node_ports_forget_flows_of_deleted_backends() {
    require_privileges!();
    let mut cluster = ClusterLab::start(1).unwrap();
    let node_ip = cluster.nodes()[0].node.underlay_ip;
    cluster.apply(&udp_pod("u1")).unwrap();
    cluster
        .apply(
            r#"
apiVersion: v1
kind: Service
metadata: {name: udp}
spec:
  type: NodePort
  selector: {app: udp}
  ports: [{port: 9001, protocol: UDP, targetPort: 9001, nodePort: 30090}]
"#,
        )
        .unwrap();
    cluster
        .wait_ready("default", "u1", Duration::from_secs(60))
        .unwrap();
    udp_server_in_pod(&cluster, "u1");
    // A pod with a connected UDP socket to the ClusterIP: translated once, to u1.
    cluster
        .apply(&sleeper_pod("uc", &cluster.nodes()[0].name))
        .unwrap();
    cluster
        .wait_ready("default", "uc", Duration::from_secs(60))
        .unwrap();
    let uc = cluster.pod("default", "uc").unwrap();
    let uc_netns = cluster.nodes()[0]
        .run_dir
        .join("pods")
        .join(uc["metadata"]["uid"].as_str().unwrap())
        .join("net");
    let cluster_ip = SocketAddr::from((cluster_ip(&cluster, "udp"), 9001));
    let connected = apiary_node_agent::netns::run_in(&uc_netns, || {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect(cluster_ip)?;
        Ok::<_, std::io::Error>(socket)
    })
    .unwrap()
    .unwrap();
    connected
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    wait(
        "the connected UDP socket answered",
        Duration::from_secs(20),
        || {
            connected.send(b"q").ok()?;
            let n = connected.recv(&mut buf).ok()?;
            (&buf[..n] == b"u1").then_some(())
        },
    )
    .unwrap();

    // One client flow (fixed source port) through the NodePort: replies come from the NodePort.
    let client = cluster.lab.add_client().unwrap();
    let socket = lab::udp_socket(
        &client.netns,
        std::net::SocketAddrV4::new(client.underlay_ip, 40000),
    )
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let frontend = SocketAddr::from((node_ip, 30090));
    let ask = || -> Option<String> {
        socket.send_to(b"q", frontend).ok()?;
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        assert_eq!(from, frontend, "the reply's source is the NodePort");
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let first = wait("the UDP NodePort", Duration::from_secs(20), &ask)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    assert_eq!(first, "u1");

    // A second backend: the tracked flow stays on the first.
    cluster.apply(&udp_pod("u2")).unwrap();
    cluster
        .wait_ready("default", "u2", Duration::from_secs(60))
        .unwrap();
    udp_server_in_pod(&cluster, "u2");
    wait("two endpoints", Duration::from_secs(20), || {
        let slices = cluster
            .kubectl_json(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=udp",
                "-o",
                "json",
            ])
            .ok()?;
        let endpoints = slices["items"][0]["endpoints"].as_array()?.len();
        (endpoints == 2).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ask().as_deref(), Some("u1"));

    // The first backend goes: its UDP flows are flushed, so the same client flow moves to the
    // live backend instead of vanishing into the deleted one.
    cluster
        .kubectl_ok(&["delete", "pod", "u1", "--wait=false"])
        .unwrap();
    // (Without the flush the flow would stay pinned to the deleted pod's address: silence.)
    wait(
        "the flow on the live backend",
        Duration::from_secs(30),
        || ask().filter(|answer| answer == "u2"),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    // The pod's connected socket to u1 was closed by the agent: the application sees it and
    // opens a new one.
    let pending = connected.take_error().unwrap();
    assert_eq!(
        pending.and_then(|e| e.raw_os_error()),
        Some(libc::ECONNABORTED),
        "{}",
        cluster.logs()
    );
}

/// `default/kubernetes` points at the API server (10.96.0.1:443, with the control plane's
/// address as its endpoint), is reached through the socket LB from a node, resolves by name in
/// pods, and pods get the kubelet's service variables for it and their namespace's Services
/// (unless `enableServiceLinks: false`).
#[test]
fn the_api_server_service_and_service_links() {
    require_privileges!();
    let cluster = ClusterLab::start(1).unwrap();
    let node = cluster.nodes()[0].name.clone();
    let kubernetes = wait(
        "default/kubernetes endpoints",
        Duration::from_secs(30),
        || {
            let e = cluster
                .kubectl_json(&["get", "endpoints", "kubernetes", "-o", "json"])
                .ok()?;
            (e["subsets"][0]["addresses"][0]["ip"] == "10.123.0.254").then_some(e)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    assert_eq!(kubernetes["subsets"][0]["ports"][0]["port"], 6443);
    assert_eq!(
        cluster_ip(&cluster, "kubernetes"),
        Ipv4Addr::new(10, 96, 0, 1)
    );

    // From the node, 10.96.0.1:443 is the API server (TLS: the handshake's first bytes come
    // back from the real server).
    let node_netns = cluster.nodes()[0].node.netns.clone();
    wait(
        "the API server through 10.96.0.1:443",
        Duration::from_secs(30),
        || {
            let addr: SocketAddr = "10.96.0.1:443".parse().unwrap();
            let mut conn = lab::run_in(&node_netns, || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            })
            .ok()?
            .ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            // A TLS ClientHello would need a TLS stack; an HTTP request gets the server's TLS
            // alert or an HTTP 400 from a TLS listener either way: any bytes back prove the path.
            conn.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").ok()?;
            let mut first = [0u8; 1];
            (conn.read(&mut first).ok()? > 0).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));

    cluster.apply(&service("db", "db", "")).unwrap();
    let db_ip = cluster_ip(&cluster, "db");
    cluster.apply(&sleeper_pod("linked", &node)).unwrap();
    cluster
        .apply(&sleeper_pod("unlinked", &node).replace(
            "  containers:",
            "  enableServiceLinks: false\n  containers:",
        ))
        .unwrap();
    for pod in ["linked", "unlinked"] {
        cluster
            .wait_ready("default", pod, Duration::from_secs(60))
            .unwrap();
    }
    let env = cluster.sh("linked", "env");
    for expected in [
        "KUBERNETES_SERVICE_HOST=10.96.0.1".to_owned(),
        "KUBERNETES_SERVICE_PORT=443".to_owned(),
        "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443".to_owned(),
        format!("DB_SERVICE_HOST={db_ip}"),
        "DB_SERVICE_PORT_HTTP=80".to_owned(),
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "{expected} not in:\n{env}"
        );
    }
    let env = cluster.sh("unlinked", "env");
    assert!(env.contains("KUBERNETES_SERVICE_HOST=10.96.0.1"), "{env}");
    assert!(!env.contains("DB_SERVICE_HOST"), "{env}");
    let lookup = cluster.sh("linked", "nslookup kubernetes.default.svc.cluster.local");
    assert!(lookup.contains("10.96.0.1"), "{lookup}");
}
