//! End-to-end: the DaemonSet controller through the real `kubectl`, with hollow nodes
//! (`apiary-node-agent hollow`) registering, running the pods and going away.

use crate::support;

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use support::{ControlPlane, Hollow, is_ready, name, pods, wait_nodes, watch_events};

/// Generous: CI machines are small and shared.
const TIMEOUT: Duration = Duration::from_secs(120);

fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    support::wait_for(what, TIMEOUT, check)
}

fn daemon_set(name: &str, node_selector: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      nodeSelector: {{{node_selector}}}
      containers:
      - name: c
        image: localhost/agent:1
"#
    )
}

/// The nodes of the ready pods of `selector`, once every pod is bound and ready and they are
/// exactly `nodes`.
fn wait_daemons(cp: &ControlPlane, selector: &str, nodes: &[&str]) -> Vec<Value> {
    wait_for(&format!("{selector} pods ready on {nodes:?}"), || {
        let pods = pods(cp, selector);
        let mut on: Vec<&str> = pods
            .iter()
            .filter(|p| is_ready(p))
            .filter_map(|p| p["spec"]["nodeName"].as_str())
            .collect();
        on.sort_unstable();
        (pods.len() == nodes.len() && on == nodes).then_some(pods)
    })
}

#[test]
fn daemon_set_follows_nodes_taints_selectors_and_rolls_one_node_at_a_time() {
    let cp = ControlPlane::start();
    let _nodes = Hollow::start(&cp, "n-", 3, &[]);
    let _tainted = Hollow::start(&cp, "t-", 1, &[]);
    wait_nodes(&cp, 4, TIMEOUT);
    cp.kubectl(&["taint", "nodes", "t-0", "dedicated=x:NoSchedule"])
        .success();
    cp.kubectl(&["label", "nodes", "n-1", "role=special"])
        .success();

    cp.kubectl_stdin(&["apply", "-f", "-"], &daemon_set("agent", ""))
        .success();
    cp.kubectl_stdin(&["apply", "-f", "-"], &daemon_set("picky", "role: special"))
        .success();

    // One pod per untainted node; none on the tainted one.
    let agents = wait_daemons(&cp, "app=agent", &["n-0", "n-1", "n-2"]);
    for pod in &agents {
        let node = pod["spec"]["nodeName"].as_str().unwrap();
        let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(term["matchFields"][0]["key"], "metadata.name");
        assert_eq!(term["matchFields"][0]["values"][0], node);
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
        let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
        );
    }
    let out = cp
        .kubectl(&["rollout", "status", "daemonset/agent", "--timeout=180s"])
        .success();
    assert!(out.contains("successfully rolled out"), "{out}");
    // The nodeSelector limits the nodes.
    wait_daemons(&cp, "app=picky", &["n-1"]);
    let picky = cp.kubectl_json(&["get", "ds", "picky", "-o", "json"]);
    assert_eq!(picky["status"]["desiredNumberScheduled"], 1);

    // A new node gets its pod.
    let extra = Hollow::start(&cp, "m-", 1, &[]);
    wait_daemons(&cp, "app=agent", &["m-0", "n-0", "n-1", "n-2"]);
    let ds = wait_for("status of 4", || {
        let ds = cp.kubectl_json(&["get", "ds", "agent", "-o", "json"]);
        (ds["status"]["numberReady"] == 4).then_some(ds)
    });
    assert_eq!(ds["status"]["desiredNumberScheduled"], 4);
    assert_eq!(ds["status"]["currentNumberScheduled"], 4);
    assert_eq!(ds["status"]["numberMisscheduled"], 0);

    // An image change: old pods replaced one node at a time.
    let mut watch = cp.kubectl_spawn(&[
        "get",
        "pods",
        "-l",
        "app=agent",
        "-w",
        "-o",
        "json",
        "--output-watch-events",
    ]);
    cp.kubectl(&["set", "image", "daemonset/agent", "c=localhost/agent:2"])
        .success();
    let out = cp
        .kubectl(&["rollout", "status", "daemonset/agent", "--timeout=180s"])
        .success();
    assert!(out.contains("successfully rolled out"), "{out}");
    let updated = |p: &Value| p["spec"]["containers"][0]["image"] == "localhost/agent:2";
    let seen = watch.read_until(
        |s| {
            let mut latest: BTreeMap<String, Value> = BTreeMap::new();
            for (t, p) in watch_events(s) {
                if t == "DELETED" {
                    latest.remove(&name(&p));
                } else {
                    latest.insert(name(&p), p);
                }
            }
            latest.len() == 4 && latest.values().all(|p| updated(p) && is_ready(p))
        },
        120,
    );
    // Replay the events: never more than one node without a ready pod.
    let mut live: BTreeMap<String, Value> = BTreeMap::new();
    let mut worst = 0;
    let mut started = false;
    for (t, p) in watch_events(&seen) {
        if t == "DELETED" {
            live.remove(&name(&p));
        } else {
            live.insert(name(&p), p);
        }
        let served = live
            .values()
            .filter(|p| is_ready(p))
            .filter_map(|p| p["spec"]["nodeName"].as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        // The watch starts with a listing: count from when all four were seen.
        started |= served == 4;
        if started {
            worst = worst.max(4usize.saturating_sub(served));
        }
    }
    assert_eq!(worst, 1, "maxUnavailable 1: exactly one node at a time");
    let ds = cp.kubectl_json(&["get", "ds", "agent", "-o", "json"]);
    assert_eq!(ds["status"]["updatedNumberScheduled"], 4);
    assert_eq!(ds["status"]["numberAvailable"], 4);

    // A node that goes away takes its pod with it.
    drop(extra);
    cp.kubectl(&["delete", "node", "m-0"]).success();
    wait_daemons(&cp, "app=agent", &["n-0", "n-1", "n-2"]);

    // A node that stops matching the selector loses its pod.
    cp.kubectl(&["label", "nodes", "n-1", "role-"]).success();
    wait_for("no picky pods", || {
        pods(&cp, "app=picky").is_empty().then_some(())
    });
}
