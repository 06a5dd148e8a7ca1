//! `apiary net services` against the real control plane, whose `nodes/proxy` reaches node agents'
//! servers running in this process with service frontends the test sets.

#[path = "../../control-plane/tests/integration/local_pods/mod.rs"]
mod local_pods;
mod support;

use apiary_node_agent::server::services::{BackendView, FrontendAddress, FrontendView};
use local_pods::{Agent, node};
use support::Cluster;

fn kubectl(cluster: &Cluster, args: &[&str], stdin: &str) {
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn register(cluster: &Cluster, name: &str, port: u16) {
    let node = node(name, port);
    kubectl(cluster, &["create", "-f", "-"], &node);
    let status: serde_json::Value = serde_json::from_str(&node).unwrap();
    let patch = serde_json::json!({ "status": status["status"] }).to_string();
    kubectl(
        cluster,
        &[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
        "",
    );
}

fn frontend(
    address: [u8; 4],
    port: u16,
    scope: &str,
    service: Option<&str>,
    backends: &[([u8; 4], u16, u32)],
) -> FrontendView {
    FrontendView {
        frontend: FrontendAddress {
            address: address.into(),
            port,
            protocol: "TCP".into(),
            scope: scope.into(),
        },
        id: u32::from(port),
        flags: vec!["affinity".into()],
        affinity_timeout_seconds: 10800,
        backend_count: u32::try_from(backends.len()).unwrap(),
        service: service.map(str::to_owned),
        backends: backends
            .iter()
            .zip(1..)
            .map(|(&(address, port, slots), id)| BackendView {
                id,
                address: Some(address.into()),
                port: Some(port),
                protocol: Some("TCP".into()),
                slots,
            })
            .collect(),
    }
}

/// A cluster with nodes `n1` and `n2`, each served by an in-process agent.
fn setup() -> (Cluster, Agent, Agent) {
    let cluster = Cluster::start();
    let token = cluster.token();
    let kubeconfig = cluster.kubeconfig();
    let (n1, n2) = (
        Agent::start("n1", &kubeconfig, &token),
        Agent::start("n2", &kubeconfig, &token),
    );
    register(&cluster, "n1", n1.addr.port());
    register(&cluster, "n2", n2.addr.port());
    n1.services.set(vec![
        frontend(
            [10, 96, 0, 1],
            443,
            "socket",
            Some("default/kubernetes:https"),
            &[([10, 244, 1, 5], 6443, 511), ([10, 244, 2, 7], 6443, 510)],
        ),
        frontend([0, 0, 0, 0], 30080, "external", None, &[]),
    ]);
    n2.services.set(vec![frontend(
        [10, 96, 0, 1],
        443,
        "socket",
        Some("default/kubernetes:https"),
        &[([10, 244, 2, 7], 6443, 1021)],
    )]);
    (cluster, n1, n2)
}

#[test]
fn net_services_prints_each_nodes_frontends() {
    let (cluster, _n1, _n2) = setup();
    assert_eq!(
        cluster.ok(&["net", "services", "--node", "n1"]),
        "\
NODE   FRONTEND            SCOPE      SERVICE                    BACKENDS
n1     10.96.0.1:443/TCP   socket     default/kubernetes:https   10.244.1.5:6443, 10.244.2.7:6443
n1     *:30080/TCP         external   <none>                     <none>
"
    );
    assert_eq!(
        cluster.ok(&["net", "services"]),
        "\
NODE   FRONTEND            SCOPE      SERVICE                    BACKENDS
n1     10.96.0.1:443/TCP   socket     default/kubernetes:https   10.244.1.5:6443, 10.244.2.7:6443
n1     *:30080/TCP         external   <none>                     <none>
n2     10.96.0.1:443/TCP   socket     default/kubernetes:https   10.244.2.7:6443
"
    );
    let wide = cluster.ok(&["net", "services", "--node", "n2", "-o", "wide"]);
    assert_eq!(
        wide.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "n2",
            "10.96.0.1:443/TCP",
            "socket",
            "default/kubernetes:https",
            "443",
            "affinity=10800s",
            "10.244.2.7:6443",
            "1021"
        ],
        "{wide}"
    );

    let json = cluster.json(&["net", "services", "-o", "json"]);
    let entries = json.as_array().unwrap();
    assert_eq!(entries.len(), 3, "{json}");
    assert_eq!(entries[2]["node"], "n2");
    assert_eq!(entries[0]["backends"][1]["slots"], 510);
    assert_eq!(entries[1]["frontend"]["address"], "0.0.0.0");
    assert_eq!(entries[1]["service"], serde_json::Value::Null);
}

#[test]
fn net_services_names_missing_and_unreachable_nodes() {
    let (cluster, _n1, _n2) = setup();
    assert_eq!(
        cluster.fails(&["net", "services", "--node", "nope"], None),
        r#"error: node "nope" not found"#
    );
    // A node whose agent is gone: the others are still shown, and the command fails.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    register(&cluster, "gone", free);
    let out = cluster.run(&["net", "services"], None);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(r#"Error from server (ServiceUnavailable): node "gone": "#)
            && stderr.contains("refused"),
        "{stderr}"
    );
    let only = cluster.fails(&["net", "services", "--node", "gone"], None);
    assert!(only.contains(r#"node "gone""#), "{only}");
}
