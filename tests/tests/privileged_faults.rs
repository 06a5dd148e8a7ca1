//! Faults on a two-node lab cluster, each under a request loop through a ClusterIP from a pod:
//! - the control plane killed for a while: the data plane does not depend on it (no request
//!   fails), and NetworkPolicy goes on being enforced while an agent is dead too, as does
//!   cluster DNS (the node's DNS process outlives its agent; no lookup fails);
//! - a node lost (its agent killed and its link down, its pods still running): the node turns
//!   NotReady, its pods not ready and out of the Service within the grace, the Deployment's pod
//!   is replaced on the other node, and once the Node is deleted its route, `REMOTE_NODES` entry
//!   and its pods' identities are gone from the other node.
//!
//! Figures (times and request counts) are printed for the record; the bounds asserted are the
//! ones the cluster promises (no failed request while nothing it needs is down).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use apiary_runtime::state::ProcessId;
use apiary_tests::{
    cluster::{ClusterLab, wait},
    faults::data_plane::{self, WebPod},
    require_privileges,
};

const IMAGE: &str = "localhost/busybox:latest";

/// A pod on `node` that looks `name` up every 200 ms through the cluster DNS (busybox's
/// `nslookup`, its resolv.conf's nameserver), logging `<host uptime> ok` to /tmp/log when the
/// answer holds `ip`, else `fail` (as [`data_plane::request_loop`]s do).
fn resolver(pod: &str, node: &str, name: &str, ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "while true; do if timeout 2 nslookup {name} 2>/dev/null | grep -q '[[:space:]]{ip}$'; then r=ok; else r=fail; fi; read up idle < /proc/uptime; echo \"$up $r\" >> /tmp/log; sleep 0.2; done"]
"#
    )
}

/// The node's cluster DNS process, from its pid file in the agent's run dir.
fn dns_process(cluster: &ClusterLab, node: usize) -> ProcessId {
    let layout = apiary_node_agent::dns::standalone::Layout::new(&cluster.nodes()[node].run_dir);
    let json = std::fs::read(layout.pid_file()).expect("the DNS process's pid file");
    serde_json::from_slice(&json).unwrap()
}

/// A process's resident memory, from `/proc/<pid>/status` (`VmRSS`, kB).
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// How many requests of `pod`'s loop succeeded and failed so far.
fn requests(cluster: &ClusterLab, pod: &str) -> (usize, usize) {
    let log = data_plane::log(cluster, pod).unwrap_or_default();
    let ok = log.iter().filter(|r| r.error.is_none()).count();
    (ok, log.len() - ok)
}

/// Waits until `pod`'s loop has made `more` requests after `since` (a count of both kinds);
/// returns the counts then.
fn wait_requests(
    cluster: &ClusterLab,
    pod: &str,
    since: (usize, usize),
    more: usize,
) -> (usize, usize) {
    wait("requests from the loop", Duration::from_secs(60), || {
        let now = requests(cluster, pod);
        (now.0 + now.1 >= since.0 + since.1 + more).then_some(now)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()))
}

fn cluster_ip(cluster: &ClusterLab, service: &str) -> String {
    cluster
        .kubectl_json(&["get", "service", service, "-o", "json"])
        .unwrap()["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The web pods still meant to run.
fn web_pods(cluster: &ClusterLab) -> Vec<WebPod> {
    data_plane::web_pods(cluster).unwrap()
}

/// The addresses of the ready endpoints of Service `service`'s slices.
fn ready_endpoints(cluster: &ClusterLab, service: &str) -> Vec<String> {
    let selector = format!("kubernetes.io/service-name={service}");
    let slices = cluster
        .kubectl_json(&["get", "endpointslices", "-l", &selector, "-o", "json"])
        .unwrap();
    let mut ips: Vec<String> = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] != false)
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
        .collect();
    ips.sort();
    ips
}

fn start_web(cluster: &ClusterLab) -> Vec<WebPod> {
    cluster.apply(data_plane::WEB).unwrap();
    wait("two web pods ready", Duration::from_secs(120), || {
        let pods = web_pods(cluster);
        (pods.len() == 2 && pods.iter().all(|p| p.ready)).then_some(pods)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()))
}

#[test]
fn the_data_plane_and_policy_go_on_without_the_control_plane_or_an_agent() {
    require_privileges!();
    let mut cluster = ClusterLab::start(2).unwrap();
    start_web(&cluster);
    let ip = cluster_ip(&cluster, "web");
    cluster.apply(data_plane::POLICY).unwrap();
    cluster
        .apply(&data_plane::request_loop(
            "allowed",
            "node1",
            &ip,
            "role: client",
        ))
        .unwrap();
    cluster
        .apply(&data_plane::request_loop(
            "denied",
            "node1",
            &ip,
            "role: other",
        ))
        .unwrap();
    cluster
        .apply(&resolver(
            "resolver",
            "node1",
            "web.default.svc.cluster.local",
            &ip,
        ))
        .unwrap();
    for pod in ["allowed", "denied", "resolver"] {
        cluster
            .wait_ready("default", pod, Duration::from_secs(60))
            .unwrap();
    }
    let before = wait_requests(&cluster, "allowed", (0, 0), 20);
    assert_eq!(before.1, 0, "requests failed before any fault: {before:?}");
    let lookups = wait_requests(&cluster, "resolver", (0, 0), 10);
    assert_eq!(lookups.1, 0, "lookups failed before any fault: {lookups:?}");

    // The control plane dies for 10 s, then comes back.
    cluster.kill_control_plane();
    std::thread::sleep(Duration::from_secs(10));
    cluster.restart_control_plane().unwrap();
    let after = wait_requests(&cluster, "allowed", before, 20);
    eprintln!(
        "control plane down 10 s: {} requests through the ClusterIP, {} failed",
        after.0 + after.1 - before.0 - before.1,
        after.1 - before.1
    );
    assert_eq!(
        after.1, before.1,
        "requests failed while the control plane was down"
    );

    // node1's agent dies: its pods' traffic and their policy go on as the BPF maps hold them.
    // (The loops' logs are read through the agent, so after it is back.)
    let denied_before = requests(&cluster, "denied");
    let lookups_before = requests(&cluster, "resolver");
    let dns = dns_process(&cluster, 0);
    cluster.kill_agent(0);
    std::thread::sleep(Duration::from_secs(5));
    assert!(dns.alive(), "node1's DNS process died with its agent");
    cluster.restart_agent(0).unwrap();
    let allowed = wait_requests(&cluster, "allowed", after, 60);
    let denied = requests(&cluster, "denied");
    let lookups_after = wait_requests(&cluster, "resolver", lookups_before, 30);
    eprintln!(
        "node1's agent dead 5 s: {} lookups of web.default.svc.cluster.local from node1 ({} failed); \
         its DNS process (pid {}) {} kB resident",
        lookups_after.0 + lookups_after.1 - lookups_before.0 - lookups_before.1,
        lookups_after.1 - lookups_before.1,
        dns.pid,
        rss_kb(dns.pid),
    );
    assert_eq!(
        lookups_after.1, lookups_before.1,
        "lookups failed while the agent was dead or restarting"
    );
    assert_eq!(
        dns_process(&cluster, 0),
        dns,
        "the restarted agent keeps the running DNS process"
    );
    // The restarted agent feeds the process it kept: a new Service's name resolves on node1.
    cluster
        .apply("apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n")
        .unwrap();
    let late_ip = cluster_ip(&cluster, "late");
    wait(
        "a new Service's name on node1",
        Duration::from_secs(30),
        || {
            let out = cluster
                .kubectl_ok(&[
                    "exec",
                    "resolver",
                    "--",
                    "nslookup",
                    "late.default.svc.cluster.local",
                ])
                .ok()?;
            out.lines()
                .any(|l| l.starts_with("Address") && l.trim_end().ends_with(&late_ip))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    eprintln!(
        "node1's agent dead 5 s: {} allowed requests ({} failed), {} denied ones ({} passed)",
        allowed.0 + allowed.1 - after.0 - after.1,
        allowed.1 - after.1,
        denied.0 + denied.1 - denied_before.0 - denied_before.1,
        denied.0 - denied_before.0,
    );
    assert_eq!(
        allowed.1, after.1,
        "allowed requests failed while the agent was dead"
    );
    assert!(
        denied.1 > denied_before.1,
        "the denied loop stalled: {denied:?}"
    );
    assert_eq!(
        denied.0, denied_before.0,
        "policy let a denied request through"
    );
    // The lab's teardown stops the DNS processes with the nodes.
    drop(cluster);
    assert!(!dns.alive(), "node1's DNS process outlived the lab");
}

#[test]
fn a_lost_node_is_left_out_and_cleaned_up() {
    require_privileges!();
    let mut cluster = ClusterLab::start_with(
        2,
        &[
            "--node-monitor-grace-seconds",
            "4",
            "--security-identity-gc-seconds",
            "2",
        ],
    )
    .unwrap();
    let pods = start_web(&cluster);
    let Some(lost) = pods.iter().find(|p| p.node == "node2").cloned() else {
        panic!("the web pods are not spread over both nodes: {pods:?}");
    };
    let ip = cluster_ip(&cluster, "web");
    cluster
        .apply(&data_plane::request_loop(
            "client",
            "node1",
            &ip,
            "role: client",
        ))
        .unwrap();
    cluster
        .wait_ready("default", "client", Duration::from_secs(60))
        .unwrap();
    let before = wait_requests(&cluster, "client", (0, 0), 20);
    let node2 = cluster
        .kubectl_json(&["get", "node", "node2", "-o", "json"])
        .unwrap();
    let node2_cidr = node2["spec"]["podCIDR"].as_str().unwrap().to_owned();
    let node2_ip: Ipv4Addr = cluster.nodes()[1].node.underlay_ip;
    let pin_dir = cluster.nodes()[0].pin_dir.clone();
    let lost_ip: Ipv4Addr = lost.ip.parse().unwrap();
    let policy = apiary_node_agent::dataplane::PolicyMaps::open(&pin_dir).unwrap();
    assert!(
        policy.identity(lost_ip).unwrap().is_some(),
        "node1 knows the identity of node2's pod"
    );

    let lost_at = Instant::now();
    cluster.lose_node(1).unwrap();
    wait("node2 NotReady", Duration::from_secs(30), || {
        let nodes = cluster.kubectl_ok(&["get", "nodes"]).ok()?;
        nodes
            .lines()
            .any(|l| l.starts_with("node2 ") && l.contains("NotReady"))
            .then_some(())
    })
    .unwrap();
    let not_ready = lost_at.elapsed();
    wait(
        "node2's pod out of the Service",
        Duration::from_secs(30),
        || (!ready_endpoints(&cluster, "web").contains(&lost.ip)).then_some(()),
    )
    .unwrap();
    let left_out = lost_at.elapsed();
    // The agent on node1 applies the change within a moment; from then on nothing fails.
    std::thread::sleep(Duration::from_secs(2));
    let settled = requests(&cluster, "client");
    let after = wait_requests(&cluster, "client", settled, 30);
    assert_eq!(
        after.1, settled.1,
        "requests failed after node2's pod left the Service"
    );
    let replaced = wait(
        "a new web pod ready on node1",
        Duration::from_secs(60),
        || {
            let pods = web_pods(&cluster);
            (pods.iter().filter(|p| p.node == "node1" && p.ready).count() == 2).then_some(())
        },
    )
    .map(|()| lost_at.elapsed())
    .unwrap_or_else(|e| panic!("{e:#}: {:?}\n{}", web_pods(&cluster), cluster.logs()));
    eprintln!(
        "node2 lost: NotReady after {not_ready:.1?}, its pod out of the Service after \
         {left_out:.1?}, replaced after {replaced:.1?}; {} requests failed of {} (all before \
         the Service left it out)",
        after.1 - before.1,
        after.0 + after.1 - before.0 - before.1
    );

    // The Node is deleted (as a cloud controller or an admin does): node1 forgets it.
    cluster.kubectl_ok(&["delete", "node", "node2"]).unwrap();
    let remote = apiary_node_agent::dataplane::RemoteNodeMap::open(&pin_dir).unwrap();
    wait(
        "node2 gone from node1's REMOTE_NODES",
        Duration::from_secs(30),
        || {
            let all = remote.all().ok()?;
            (!all.iter().any(|(_, node_ip)| *node_ip == node2_ip)).then_some(())
        },
    )
    .unwrap();
    let routes = apiary_tests::lab::ip(&["-n", &cluster.nodes()[0].node.netns, "route"]).unwrap();
    assert!(
        !routes.contains(&node2_cidr),
        "node1 still routes node2's pod CIDR {node2_cidr}:\n{routes}"
    );
    wait(
        "node2's pod's identity gone from node1",
        Duration::from_secs(30),
        || policy.identity(lost_ip).ok()?.is_none().then_some(()),
    )
    .unwrap();
}
