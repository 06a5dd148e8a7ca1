//! The scheduler and the node lifecycle controller against a started control plane, with hollow
//! nodes (`apiary-node-agent hollow`) running the pods and kubectl looking on.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{ControlPlane, Hollow};

/// Generous: CI machines are small and shared.
const TIMEOUT: Duration = Duration::from_secs(90);

fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    support::wait_for(what, TIMEOUT, check)
}

fn ready_nodes(cp: &ControlPlane) -> Vec<String> {
    let nodes = cp.kubectl_json(&["get", "nodes", "-o", "json"]);
    nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_nodes(cp: &ControlPlane, count: usize) {
    wait_for(&format!("{count} Ready nodes"), || {
        (ready_nodes(cp).len() >= count).then_some(())
    });
}

/// A pod of `busybox` with `spec` merged into its spec and `meta` into its metadata.
fn pod(name: &str, meta: Value, spec: Value) -> String {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": "localhost/busybox:latest" }] },
    });
    json_patch::merge(&mut pod["metadata"], &meta);
    json_patch::merge(&mut pod["spec"], &spec);
    pod.to_string()
}

fn create(cp: &ControlPlane, manifest: &str) {
    cp.kubectl_stdin(&["create", "-f", "-"], manifest).success();
}

fn get_pod(cp: &ControlPlane, name: &str) -> Value {
    cp.kubectl_json(&["get", "pod", name, "-o", "json"])
}

/// Waits until the pod runs; returns its node.
fn wait_running(cp: &ControlPlane, name: &str) -> String {
    wait_for(&format!("pod {name} Running"), || {
        let pod = get_pod(cp, name);
        (pod["status"]["phase"] == "Running")
            .then(|| pod["spec"]["nodeName"].as_str().unwrap().to_owned())
    })
}

/// Waits until the pod is reported unschedulable; returns the message.
fn wait_unschedulable(cp: &ControlPlane, name: &str) -> String {
    wait_for(&format!("pod {name} Unschedulable"), || {
        let pod = get_pod(cp, name);
        assert_eq!(pod["spec"]["nodeName"], Value::Null, "{pod}");
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
            .map(|c| c["message"].as_str().unwrap().to_owned())
    })
}

fn events(cp: &ControlPlane, pod: &str) -> Vec<Value> {
    let list = cp.kubectl_json(&["get", "events", "-o", "json"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .cloned()
        .collect()
}

#[test]
fn pods_are_bound_to_ready_hollow_nodes_and_run() {
    let cp = ControlPlane::start();
    let _nodes = Hollow::start(&cp, "hollow-", 2, &[]);
    wait_nodes(&cp, 2);
    for i in 0..4 {
        create(&cp, &pod(&format!("p{i}"), json!({}), json!({})));
    }
    for i in 0..4 {
        let node = wait_running(&cp, &format!("p{i}"));
        assert!(node.starts_with("hollow-"), "{node}");
    }
    let wide = cp.kubectl(&["get", "pods", "-o", "wide"]).success();
    assert!(
        wide.contains("hollow-0") || wide.contains("hollow-1"),
        "{wide}"
    );
    assert!(
        wide.contains("10.244."),
        "pod IPs from the node CIDRs: {wide}"
    );
    let p0 = get_pod(&cp, "p0");
    assert!(
        p0["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{p0}"
    );
    let scheduled = wait_for("a Scheduled event", || {
        events(&cp, "p0")
            .into_iter()
            .find(|e| e["reason"] == "Scheduled")
    });
    assert_eq!(scheduled["type"], "Normal");
    assert_eq!(scheduled["source"]["component"], "default-scheduler");
    let node = p0["spec"]["nodeName"].as_str().unwrap();
    assert_eq!(
        scheduled["message"],
        format!("Successfully assigned default/p0 to {node}")
    );
}

#[test]
fn a_pod_larger_than_every_node_waits_for_a_big_enough_one() {
    let cp = ControlPlane::start();
    let _small = Hollow::start(&cp, "small-", 2, &["--cpu", "1", "--memory", "2Gi"]);
    wait_nodes(&cp, 2);
    let big_request = json!({ "containers": [{ "name": "c", "image": "localhost/busybox:latest",
        "resources": { "requests": { "cpu": "2", "memory": "1Gi" } } }] });
    create(&cp, &pod("big", json!({}), big_request));
    let message = wait_unschedulable(&cp, "big");
    assert!(
        message.starts_with("0/2 nodes are available: 2 Insufficient cpu. "),
        "{message}"
    );
    let failed = wait_for("a FailedScheduling event", || {
        events(&cp, "big")
            .into_iter()
            .find(|e| e["reason"] == "FailedScheduling")
    });
    assert_eq!(failed["type"], "Warning");
    assert_eq!(failed["source"]["component"], "default-scheduler");
    assert_eq!(failed["involvedObject"]["kind"], "Pod");
    assert_eq!(failed["message"], message);
    assert_eq!(failed["count"], 1);

    // Requests add up: two 600m pods do not both fit on a 1-CPU node.
    let medium = json!({ "containers": [{ "name": "c", "image": "localhost/busybox:latest",
        "resources": { "requests": { "cpu": "600m" } } }] });
    for name in ["m0", "m1", "m2"] {
        create(&cp, &pod(name, json!({}), medium.clone()));
    }
    let (m0, m1) = (wait_running(&cp, "m0"), wait_running(&cp, "m1"));
    assert_ne!(m0, m1, "600m + 600m > 1 CPU");
    let m2 = wait_unschedulable(&cp, "m2");
    assert!(
        m2.starts_with("0/2 nodes are available: 2 Insufficient cpu."),
        "{m2}"
    );

    let _big = Hollow::start(&cp, "big-", 1, &["--cpu", "4"]);
    assert_eq!(wait_running(&cp, "big"), "big-0");
    assert_eq!(wait_running(&cp, "m2"), "big-0");
}

#[test]
fn selectors_affinity_taints_cordons_and_host_ports_constrain_placement() {
    let cp = ControlPlane::start();
    let _a = Hollow::start(
        &cp,
        "a-",
        1,
        &["--labels", "disk=ssd,topology.kubernetes.io/zone=z1"],
    );
    let _b = Hollow::start(
        &cp,
        "b-",
        2,
        &["--labels", "disk=hdd,topology.kubernetes.io/zone=z2"],
    );
    wait_nodes(&cp, 3);

    // nodeSelector.
    create(
        &cp,
        &pod(
            "ssd",
            json!({}),
            json!({ "nodeSelector": { "disk": "ssd" } }),
        ),
    );
    assert_eq!(wait_running(&cp, "ssd"), "a-0");
    create(
        &cp,
        &pod(
            "nvme",
            json!({}),
            json!({ "nodeSelector": { "disk": "nvme" } }),
        ),
    );
    assert!(wait_unschedulable(&cp, "nvme").starts_with(
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    ));

    // Required node affinity.
    let affinity = |op: &str, values: Value| {
        json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{ "matchExpressions": [
                { "key": "topology.kubernetes.io/zone", "operator": op, "values": values }] }] } } } })
    };
    create(
        &cp,
        &pod("not-z1", json!({}), affinity("NotIn", json!(["z1"]))),
    );
    assert!(wait_running(&cp, "not-z1").starts_with("b-"));
    create(&cp, &pod("in-z1", json!({}), affinity("In", json!(["z1"]))));
    assert_eq!(wait_running(&cp, "in-z1"), "a-0");

    // Taints and tolerations.
    for node in ["b-0", "b-1"] {
        cp.kubectl(&["taint", "nodes", node, "dedicated=gpu:NoSchedule"])
            .success();
    }
    let z2 = json!({ "nodeSelector": { "topology.kubernetes.io/zone": "z2" } });
    create(&cp, &pod("intolerant", json!({}), z2.clone()));
    let message = wait_unschedulable(&cp, "intolerant");
    assert!(
        message.starts_with(
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 node(s) had untolerated taint {dedicated: gpu}."
        ),
        "{message}"
    );
    let mut tolerant = z2.clone();
    tolerant["tolerations"] = json!([{ "key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule" }]);
    create(&cp, &pod("tolerant", json!({}), tolerant));
    assert!(wait_running(&cp, "tolerant").starts_with("b-"));

    // Cordon.
    cp.kubectl(&["cordon", "a-0"]).success();
    let ssd = json!({ "nodeSelector": { "disk": "ssd" } });
    create(&cp, &pod("cordoned", json!({}), ssd.clone()));
    let message = wait_unschedulable(&cp, "cordoned");
    assert!(
        message.starts_with(
            "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) had untolerated taint {dedicated: gpu}."
        ),
        "{message}"
    );
    cp.kubectl(&["uncordon", "a-0"]).success();
    assert_eq!(wait_running(&cp, "cordoned"), "a-0", "retried on uncordon");

    // Host ports: one pod per node may claim port 8080.
    let port = json!({ "containers": [{ "name": "c", "image": "localhost/busybox:latest",
        "ports": [{ "containerPort": 80, "hostPort": 8080 }] }] });
    create(&cp, &pod("port-a", json!({}), port.clone()));
    assert_eq!(wait_running(&cp, "port-a"), "a-0");
    create(&cp, &pod("port-b", json!({}), port));
    let message = wait_unschedulable(&cp, "port-b");
    assert!(
        message.starts_with(
            "0/3 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, 2 node(s) had untolerated taint {dedicated: gpu}."
        ),
        "{message}"
    );
    cp.kubectl(&["delete", "pod", "port-a"]).success();
    assert_eq!(
        wait_running(&cp, "port-b"),
        "a-0",
        "retried once the port is free"
    );
}

#[test]
fn anti_affinity_spreads_replicas_and_affinity_follows_them() {
    let cp = ControlPlane::start();
    let _z1 = Hollow::start(
        &cp,
        "z1-",
        2,
        &["--labels", "topology.kubernetes.io/zone=z1"],
    );
    let _z2 = Hollow::start(
        &cp,
        "z2-",
        1,
        &["--labels", "topology.kubernetes.io/zone=z2"],
    );
    wait_nodes(&cp, 3);
    let anti = json!({ "affinity": { "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [
        { "labelSelector": { "matchLabels": { "app": "web" } }, "topologyKey": "kubernetes.io/hostname" }] } } });
    let web = json!({ "labels": { "app": "web" } });
    for i in 0..3 {
        create(&cp, &pod(&format!("web-{i}"), web.clone(), anti.clone()));
    }
    let mut nodes: Vec<String> = (0..3)
        .map(|i| wait_running(&cp, &format!("web-{i}")))
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["z1-0", "z1-1", "z2-0"], "one replica per node");
    create(&cp, &pod("web-3", web, anti));
    let message = wait_unschedulable(&cp, "web-3");
    assert!(
        message.starts_with(
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
        ),
        "{message}"
    );

    // Zone affinity: next to the `db` pod's zone.
    create(
        &cp,
        &pod(
            "db",
            json!({ "labels": { "app": "db" } }),
            json!({ "nodeSelector": { "topology.kubernetes.io/zone": "z2" } }),
        ),
    );
    assert_eq!(wait_running(&cp, "db"), "z2-0");
    let near_db = json!({ "affinity": { "podAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [
        { "labelSelector": { "matchLabels": { "app": "db" } }, "topologyKey": "topology.kubernetes.io/zone" }] } } });
    for i in 0..2 {
        create(&cp, &pod(&format!("cache-{i}"), json!({}), near_db.clone()));
        assert_eq!(wait_running(&cp, &format!("cache-{i}")), "z2-0");
    }
    // Existing pods' anti-affinity repels newcomers it selects: web-0..2 shun `app=web`.
    cp.kubectl(&["delete", "pod", "web-3"]).success();
    create(
        &cp,
        &pod(
            "plain-web",
            json!({ "labels": { "app": "web" } }),
            json!({}),
        ),
    );
    let message = wait_unschedulable(&cp, "plain-web");
    assert!(
        message.starts_with(
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
        ),
        "{message}"
    );
}

#[test]
fn pods_of_one_owner_spread_across_nodes() {
    let cp = ControlPlane::start();
    let _nodes = Hollow::start(&cp, "n-", 3, &[]);
    wait_nodes(&cp, 3);
    create(
        &cp,
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}"#,
    );
    let owner = cp.kubectl_json(&["get", "configmap", "owner", "-o", "json"]);
    let meta = json!({ "labels": { "app": "spread" }, "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
        "uid": owner["metadata"]["uid"], "controller": true }] });
    for i in 0..6 {
        create(&cp, &pod(&format!("s{i}"), meta.clone(), json!({})));
    }
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..6 {
        *per_node
            .entry(wait_running(&cp, &format!("s{i}")))
            .or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|n| *n == 2), "{per_node:?}");
}

/// Preferences count: preferred node affinity draws pods to the node it names, a
/// PreferNoSchedule taint keeps them off another, preferred pod affinity draws them near pods
/// (anti-affinity's repelling is unit-tested beside the scores).
#[test]
fn preferences_steer_pods_among_feasible_nodes() {
    let cp = ControlPlane::start();
    let _nodes = Hollow::start(&cp, "pref-", 3, &[]);
    wait_nodes(&cp, 3);
    cp.kubectl(&["label", "node", "pref-2", "disk=ssd"])
        .success();
    cp.kubectl(&["taint", "node", "pref-0", "slow=yes:PreferNoSchedule"])
        .success();
    let prefers_ssd = json!({ "affinity": { "nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{ "weight": 100, "preference": {
            "matchExpressions": [{ "key": "disk", "operator": "In", "values": ["ssd"] }] } }],
    }}});
    for name in ["ssd-a", "ssd-b"] {
        create(&cp, &pod(name, json!({}), prefers_ssd.clone()));
        assert_eq!(wait_running(&cp, name), "pref-2", "{name}");
    }
    // Off the slow node, though it is the emptiest.
    for name in ["plain-a", "plain-b"] {
        create(&cp, &pod(name, json!({}), json!({})));
        assert_eq!(wait_running(&cp, name), "pref-1", "{name}");
    }
    // Near the ssd pods, though their node is the fullest.
    for name in ["ssd-a", "ssd-b"] {
        cp.kubectl(&["label", "pod", name, "role=ssd"]).success();
    }
    let near = json!({ "affinity": { "podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{ "weight": 100, "podAffinityTerm": {
            "labelSelector": { "matchLabels": { "role": "ssd" } },
            "topologyKey": "kubernetes.io/hostname" } }],
    }}});
    create(&cp, &pod("near", json!({}), near));
    assert_eq!(wait_running(&cp, "near"), "pref-2");
}

#[test]
fn a_silent_node_goes_not_ready_and_its_pods_are_evicted() {
    let cp = ControlPlane::start_with(&[
        "--node-monitor-grace-seconds",
        "4",
        "--default-eviction-seconds",
        "3",
    ]);
    let fast = ["--heartbeat-seconds", "1"];
    let lost = Hollow::start(&cp, "lost-", 1, &fast);
    let _kept = Hollow::start(&cp, "kept-", 1, &fast);
    wait_nodes(&cp, 2);
    let on_lost = json!({ "nodeSelector": { "kubernetes.io/hostname": "lost-0" } });
    create(&cp, &pod("doomed", json!({}), on_lost.clone()));
    let mut tolerant = on_lost;
    tolerant["tolerations"] = json!([{ "key": "node.kubernetes.io/unreachable",
        "operator": "Exists", "effect": "NoExecute" }]);
    create(&cp, &pod("stays", json!({}), tolerant));
    wait_running(&cp, "doomed");
    wait_running(&cp, "stays");

    drop(lost);
    wait_for("lost-0 NotReady", || {
        let nodes = cp.kubectl(&["get", "nodes"]).success();
        nodes
            .lines()
            .any(|l| l.starts_with("lost-0") && l.contains("NotReady"))
            .then_some(())
    });
    let node = cp.kubectl_json(&["get", "node", "lost-0", "-o", "json"]);
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "Unknown");
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    assert!(
        node["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"),
        "{node}"
    );
    // Nobody vouches for the pods of an unreachable node: not ready, so Services drop them.
    let pod_ready = |name: &str| {
        let pod = cp.kubectl_json(&["get", "pod", name, "-o", "json"]);
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
    };
    wait_for("stays not ready", || {
        (pod_ready("stays").as_deref() == Some("False")).then_some(())
    });
    wait_for("doomed evicted", || {
        (!cp.kubectl(&["get", "pod", "doomed"]).ok()).then_some(())
    });
    assert!(
        cp.kubectl(&["get", "pod", "stays"]).ok(),
        "a pod tolerating the taint without a limit stays"
    );
    assert!(ready_nodes(&cp).contains(&"kept-0".to_owned()));

    // Heartbeats resume: the taint goes, the node is Ready again.
    let _back = Hollow::start(&cp, "lost-", 1, &fast);
    wait_for("lost-0 Ready and untainted", || {
        let node = cp.kubectl_json(&["get", "node", "lost-0", "-o", "json"]);
        let tainted = node["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable")
        });
        (!tainted && ready_nodes(&cp).contains(&"lost-0".to_owned())).then_some(())
    });
}

/// Bindings run concurrently, each pod assumed on its node first: a burst of pods fills the
/// nodes exactly to their pod capacity and never past it.
#[test]
fn a_burst_of_pods_fills_nodes_to_capacity_and_not_past_it() {
    let cp = ControlPlane::start();
    let _nodes = Hollow::start(&cp, "small-", 3, &["--pods", "4"]);
    wait_nodes(&cp, 3);
    // One kubectl call, a stream of JSON documents: the pods arrive as a burst.
    let manifests: Vec<String> = (0..20)
        .map(|i| pod(&format!("b{i}"), json!({}), json!({})))
        .collect();
    create(&cp, &manifests.join("\n"));
    let count = |cp: &ControlPlane| {
        let pods = cp.kubectl_json(&["get", "pods", "-o", "json"]);
        let mut per_node = std::collections::BTreeMap::<String, usize>::new();
        let mut unschedulable = 0;
        for p in pods["items"].as_array().unwrap() {
            match p["spec"]["nodeName"].as_str() {
                Some(node) => *per_node.entry(node.to_owned()).or_default() += 1,
                None => {
                    let parked = p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable");
                    unschedulable += usize::from(parked);
                }
            }
        }
        (per_node, unschedulable)
    };
    let per_node = wait_for("12 pods bound and 8 unschedulable", || {
        let (per_node, unschedulable) = count(&cp);
        assert!(per_node.values().all(|n| *n <= 4), "{per_node:?}");
        (per_node.values().sum::<usize>() == 12 && unschedulable == 8).then_some(per_node)
    });
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    let message = wait_unschedulable(&cp, &{
        let pods = cp.kubectl_json(&["get", "pods", "-o", "json"]);
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["spec"]["nodeName"].is_null())
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .unwrap()
    });
    assert!(
        message.starts_with("0/3 nodes are available: 3 Too many pods."),
        "{message}"
    );
    // Nothing more gets bound later.
    std::thread::sleep(Duration::from_secs(2));
    let (per_node, unschedulable) = count(&cp);
    assert_eq!(
        (per_node.values().sum::<usize>(), unschedulable),
        (12, 8),
        "{per_node:?}"
    );
}
