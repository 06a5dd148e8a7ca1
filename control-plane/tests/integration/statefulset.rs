//! End-to-end: the StatefulSet controller through the real `kubectl`, with hollow nodes
//! (`apiary-node-agent hollow`) running the pods, or no nodes at all to keep pods Pending.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::{ControlPlane, Hollow, is_ready, items, name, pods, wait_nodes, watch_events};

/// Generous: CI machines are small and shared.
const TIMEOUT: Duration = Duration::from_secs(120);

fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    support::wait_for(what, TIMEOUT, check)
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: nginx
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: localhost/nginx:1
"#;

fn revision(pod: &Value) -> String {
    pod["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn rollout(cp: &ControlPlane) -> String {
    cp.kubectl(&["rollout", "status", "statefulset/web", "--timeout=180s"])
        .success()
}

/// The names of the pods of `uids` deleted, in order, among `events`.
fn deleted(events: &[(String, Value)], uids: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|(t, p)| t == "DELETED" && uids.contains(&p["metadata"]["uid"]))
        .map(|(_, p)| name(p))
        .collect()
}

fn uids(cp: &ControlPlane) -> Vec<Value> {
    pods(cp, "app=web")
        .iter()
        .map(|p| p["metadata"]["uid"].clone())
        .collect()
}

/// The pod named, if it exists.
fn get_pod(cp: &ControlPlane, name: &str) -> Option<Value> {
    let out = cp
        .kubectl(&["get", "pods", name, "--ignore-not-found", "-o", "json"])
        .success();
    serde_json::from_str(&out).ok()
}

#[test]
fn ordered_ready_statefulset_creates_in_order_recreates_scales_and_rolls() {
    let cp = ControlPlane::start();
    let _nodes = Hollow::start(&cp, "node-", 2, &[]);
    wait_nodes(&cp, 2, TIMEOUT);
    let mut watch = cp.kubectl_spawn(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-w",
        "-o",
        "json",
        "--output-watch-events",
    ]);
    cp.kubectl_stdin(&["apply", "-f", "-"], WEB).success();
    let out = rollout(&cp);
    assert!(out.contains("roll out complete"), "{out}");

    // Ordered creation: web-i appears only after web-(i-1) was seen Running and Ready.
    let seen = watch.read_until(
        |s| {
            watch_events(s)
                .iter()
                .any(|(_, p)| name(p) == "web-2" && is_ready(p))
        },
        120,
    );
    let events = watch_events(&seen);
    for i in 1..3 {
        let added = events
            .iter()
            .position(|(t, p)| t == "ADDED" && name(p) == format!("web-{i}"))
            .unwrap_or_else(|| panic!("web-{i} was never added"));
        let before_ready = events[..added].iter().any(|(_, p)| {
            name(p) == format!("web-{}", i - 1) && is_ready(p) && p["status"]["phase"] == "Running"
        });
        assert!(
            before_ready,
            "web-{i} was created before web-{} was ready",
            i - 1
        );
    }

    // Identity: names, hostnames, subdomain, labels, owner.
    let set = cp.kubectl_json(&["get", "statefulset", "web", "-o", "json"]);
    let mut all = pods(&cp, "app=web");
    all.sort_by_key(name);
    let names: Vec<String> = all.iter().map(name).collect();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    for (i, pod) in all.iter().enumerate() {
        assert_eq!(pod["spec"]["hostname"], format!("web-{i}"));
        assert_eq!(pod["spec"]["subdomain"], "nginx");
        let labels = &pod["metadata"]["labels"];
        assert_eq!(
            labels["statefulset.kubernetes.io/pod-name"],
            format!("web-{i}")
        );
        assert_eq!(labels["apps.kubernetes.io/pod-index"], i.to_string());
        assert_eq!(
            revision(pod),
            set["status"]["updateRevision"].as_str().unwrap()
        );
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "StatefulSet");
        assert_eq!(owner["uid"], set["metadata"]["uid"]);
        assert_eq!(owner["controller"], true);
    }
    assert_eq!(set["status"]["readyReplicas"], 3);
    assert_eq!(
        set["status"]["currentRevision"],
        set["status"]["updateRevision"]
    );
    let events = cp.kubectl_json(&["get", "events", "-o", "json"]);
    assert!(
        items(&events)
            .iter()
            .any(|e| e["reason"] == "SuccessfulCreate"
                && e["message"] == "create Pod web-0 in StatefulSet web successful"),
        "{events}"
    );

    // A deleted pod comes back under the same name.
    let old_uid = all[1]["metadata"]["uid"].clone();
    cp.kubectl(&["delete", "pod", "web-1", "--wait=false"])
        .success();
    wait_for("web-1 recreated and ready", || {
        let pod = get_pod(&cp, "web-1")?;
        (pod["metadata"]["uid"] != old_uid && is_ready(&pod)).then_some(())
    });

    // Scale down: highest ordinal first.
    let before = uids(&cp);
    cp.kubectl(&["scale", "statefulset/web", "--replicas=1"])
        .success();
    let seen = watch.read_until(|s| deleted(&watch_events(s), &before).len() >= 2, 120);
    assert_eq!(deleted(&watch_events(&seen), &before), ["web-2", "web-1"]);
    wait_for("1 pod", || (pods(&cp, "app=web").len() == 1).then_some(()));

    // Back to 3, then a rolling update: highest ordinal first, one at a time.
    cp.kubectl(&["scale", "statefulset/web", "--replicas=3"])
        .success();
    rollout(&cp);
    let before = uids(&cp);
    cp.kubectl(&["set", "image", "statefulset/web", "nginx=localhost/nginx:2"])
        .success();
    let out = rollout(&cp);
    assert!(out.contains("roll out complete"), "{out}");
    let seen = watch.read_until(|s| deleted(&watch_events(s), &before).len() >= 3, 120);
    let events = watch_events(&seen);
    assert_eq!(deleted(&events, &before), ["web-2", "web-1", "web-0"]);
    // Each pod goes only once the one above it is back, updated and ready.
    for (upper, lower) in [("web-2", "web-1"), ("web-1", "web-0")] {
        let gone = events
            .iter()
            .position(|(t, p)| {
                t == "DELETED" && name(p) == lower && before.contains(&p["metadata"]["uid"])
            })
            .unwrap();
        assert!(
            events[..gone].iter().any(|(_, p)| name(p) == upper
                && is_ready(p)
                && p["spec"]["containers"][0]["image"] == "localhost/nginx:2"),
            "{lower} went before {upper} was updated and ready"
        );
    }
    let set = cp.kubectl_json(&["get", "statefulset", "web", "-o", "json"]);
    assert_eq!(set["status"]["updatedReplicas"], 3);
    assert_eq!(set["status"]["currentReplicas"], 3);
    assert_eq!(
        set["status"]["currentRevision"],
        set["status"]["updateRevision"]
    );
    let v2 = set["status"]["updateRevision"].as_str().unwrap().to_owned();

    // A partition: only ordinals at or above it are updated.
    cp.kubectl(&[
        "patch",
        "statefulset",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}},"template":{"spec":{"containers":[{"name":"nginx","image":"localhost/nginx:3"}]}}}}"#,
    ])
    .success();
    let out = rollout(&cp);
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let set = cp.kubectl_json(&["get", "statefulset", "web", "-o", "json"]);
    let v3 = set["status"]["updateRevision"].as_str().unwrap().to_owned();
    assert_ne!(v2, v3);
    assert_eq!(set["status"]["currentRevision"], v2.as_str());
    let by_name = |n: &str| cp.kubectl_json(&["get", "pod", n, "-o", "json"]);
    assert_eq!(revision(&by_name("web-2")), v3);
    assert_eq!(revision(&by_name("web-1")), v2);
    assert_eq!(revision(&by_name("web-0")), v2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(revision(&by_name("web-1")), v2, "below the partition stays");

    // Lifting the partition finishes the update.
    cp.kubectl(&[
        "patch",
        "statefulset",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ])
    .success();
    let out = rollout(&cp);
    assert!(out.contains("roll out complete"), "{out}");
    for n in ["web-0", "web-1", "web-2"] {
        assert_eq!(revision(&by_name(n)), v3, "{n}");
    }
}

fn pending_set(name: &str, policy: &str, strategy: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {name}
spec:
  serviceName: {name}
  replicas: 3
  podManagementPolicy: {policy}
  updateStrategy: {{type: {strategy}}}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: c
        image: localhost/busybox:1
"#
    )
}

#[test]
fn parallel_creates_all_at_once_ordered_waits_and_on_delete_waits_for_deletes() {
    // No nodes: pods stay Pending and never become ready.
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &pending_set("par", "Parallel", "OnDelete"),
    )
    .success();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &pending_set("ord", "OrderedReady", "RollingUpdate"),
    )
    .success();
    let mut par = wait_for("3 par pods", || {
        let p = pods(&cp, "app=par");
        (p.len() == 3).then_some(p)
    });
    par.sort_by_key(name);
    assert_eq!(
        par.iter().map(name).collect::<Vec<_>>(),
        ["par-0", "par-1", "par-2"]
    );
    wait_for("ord-0", || (!pods(&cp, "app=ord").is_empty()).then_some(()));
    std::thread::sleep(Duration::from_secs(3));
    let ord: Vec<String> = pods(&cp, "app=ord").iter().map(name).collect();
    assert_eq!(ord, ["ord-0"], "ord-1 must wait for ord-0 to be ready");

    // OnDelete: a template change touches no pod until one is deleted.
    let old = revision(&par[1]);
    cp.kubectl(&["set", "image", "statefulset/par", "c=localhost/busybox:2"])
        .success();
    std::thread::sleep(Duration::from_secs(3));
    for pod in pods(&cp, "app=par") {
        assert_eq!(revision(&pod), old, "{}", name(&pod));
    }
    let out = cp
        .kubectl(&["rollout", "status", "statefulset/par"])
        .failure();
    assert!(out.contains("RollingUpdate"), "{out}");
    cp.kubectl(&["delete", "pod", "par-1"]).success();
    let pod = wait_for("par-1 recreated with the new template", || {
        let pod = get_pod(&cp, "par-1")?;
        (revision(&pod) != old).then_some(pod)
    });
    assert_eq!(pod["spec"]["containers"][0]["image"], "localhost/busybox:2");
    assert_eq!(
        revision(&cp.kubectl_json(&["get", "pod", "par-0", "-o", "json"])),
        old
    );

    // Parallel scale-down removes every surplus pod at once.
    cp.kubectl(&["scale", "statefulset/par", "--replicas=0"])
        .success();
    wait_for("no par pods", || {
        pods(&cp, "app=par").is_empty().then_some(())
    });
}
