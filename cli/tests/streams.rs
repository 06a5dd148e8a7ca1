//! `apiary logs` and `apiary exec` against the real control plane, proxying to a node agent's
//! server that runs in this process with local files and processes as its containers.

#[path = "../../control-plane/tests/local_pods/mod.rs"]
mod local_pods;
mod support;

use std::process::Command;

use local_pods::{Agent, node, pod};
use support::Cluster;

fn kubectl(cluster: &Cluster, args: &[&str], stdin: &str) {
    let mut child = Command::new("kubectl")
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

/// A cluster with node `n1` served by an in-process agent, and pods `web` (one container,
/// `app`), `duo` (`a`, `b`) on it and `lost` on no node.
fn setup() -> (Cluster, Agent) {
    let cluster = Cluster::start();
    let config: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cluster.kubeconfig()).unwrap()).unwrap();
    let agent = Agent::start(config["users"][0]["user"]["token"].as_str().unwrap());
    let node = node("n1", agent.addr.port());
    kubectl(&cluster, &["create", "-f", "-"], &node);
    let status: serde_json::Value = serde_json::from_str(&node).unwrap();
    let patch = serde_json::json!({ "status": status["status"] }).to_string();
    kubectl(
        &cluster,
        &[
            "patch",
            "node",
            "n1",
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
        "",
    );
    for (name, node, containers) in [
        ("web", Some("n1"), &["app"][..]),
        ("duo", Some("n1"), &["a", "b"][..]),
        ("lost", None, &["app"][..]),
    ] {
        kubectl(
            &cluster,
            &["create", "-f", "-"],
            &pod(name, node, containers),
        );
        agent.pods.add_pod("default", name, containers);
    }
    (cluster, agent)
}

#[test]
fn apiary_logs_tail_follow_and_errors() {
    let (cluster, agent) = setup();
    agent
        .pods
        .append("default", "web", "app", "one\ntwo\nthree\n");
    agent.pods.append("default", "duo", "b", "from b\n");
    assert_eq!(cluster.ok(&["logs", "web"]), "one\ntwo\nthree\n");
    assert_eq!(cluster.ok(&["logs", "pod/web", "--tail", "1"]), "three\n");
    assert_eq!(cluster.ok(&["logs", "duo", "-c", "b"]), "from b\n");
    let stamped = cluster.ok(&["logs", "web", "--timestamps"]);
    assert!(stamped.ends_with("Z three\n"), "{stamped}");

    let mut follow = cluster.spawn(&["logs", "-f", "web"]);
    follow.read_until(|s| s.ends_with("three\n"), 20);
    agent.pods.append("default", "web", "app", "four\n");
    follow.read_until(|s| s == "one\ntwo\nthree\nfour\n", 20);

    assert_eq!(
        cluster.fails(&["logs", "duo"], None),
        "Error from server (BadRequest): a container name must be specified for pod duo, choose one of: [a b]"
    );
    assert_eq!(
        cluster.fails(&["logs", "duo", "-c", "c"], None),
        "Error from server (BadRequest): container c is not valid for pod duo"
    );
    assert_eq!(
        cluster.fails(&["logs", "lost"], None),
        "Error from server (BadRequest): pod lost does not have a host assigned"
    );
}

#[test]
fn apiary_exec_streams_stdin_and_exit_codes() {
    let (cluster, _agent) = setup();
    let out = cluster.run(
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let input = "line\n".repeat(10_000);
    let out = cluster.run(&["exec", "-i", "web", "--", "wc", "-l"], Some(&input));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10000");

    let out = cluster.run(&["exec", "-c", "b", "duo", "--", "echo", "in b"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in b\n");

    assert_eq!(
        cluster.fails(&["exec", "duo", "-c", "c", "--", "true"], None),
        "Error from server (BadRequest): container c is not valid for pod duo"
    );
    assert_eq!(
        cluster.fails(&["exec", "lost", "--", "true"], None),
        "Error from server (BadRequest): pod lost does not have a host assigned"
    );
    // -t without a terminal on stdin: warned, then run without one.
    let out = cluster.run(&["exec", "-t", "web", "--", "echo", "plain"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n");
}
