//! NetworkPolicy end to end on a two-node lab cluster: policies applied with the real kubectl are
//! compiled by each node's agent against the control plane's security identities and enforced by
//! the pod programs, across nodes; removing a policy opens the way again.

use std::time::Duration;

use apiary_tests::{
    cluster::{ClusterLab, wait},
    require_privileges,
};

const IMAGE: &str = "localhost/busybox:latest";

fn pod(name: &str, node: &str, labels: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: x, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "{command}"]
    ports: [{{name: http, containerPort: 8080}}]
"#
    )
}

/// A two-node cluster with namespace x; the nodes' names.
fn two_nodes_and_namespace_x() -> (ClusterLab, String, String) {
    let cluster = ClusterLab::start(2).unwrap();
    let (n0, n1) = (
        cluster.nodes()[0].name.clone(),
        cluster.nodes()[1].name.clone(),
    );
    cluster
        .apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
        .unwrap();
    (cluster, n0, n1)
}

/// Whether `from` gets the page of the server at `ip` (one try, 2 s at most).
fn reaches(cluster: &ClusterLab, from: &str, ip: &str) -> bool {
    cluster
        .kubectl(&[
            "exec",
            "-n",
            "x",
            from,
            "--",
            "timeout",
            "2",
            "wget",
            "-qO-",
            &format!("http://{ip}:8080/"),
        ])
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).contains("b"))
}

fn settles(cluster: &ClusterLab, what: &str, from: &str, ip: &str, reachable: bool) {
    wait(what, Duration::from_secs(40), || {
        (reaches(cluster, from, ip) == reachable).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
}

/// `apiary net observe -n x ARGS -o json`: the records, as JSON values.
fn observe(cluster: &ClusterLab, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["net", "observe", "-n", "x", "-o", "json"];
    all.extend_from_slice(args);
    cluster
        .apiary(&all)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `apiary net policy trace --from FROM --to x/b --port 8080 -o json`.
fn trace(cluster: &ClusterLab, from: &str) -> serde_json::Value {
    let out = cluster
        .apiary(&[
            "net", "policy", "trace", "--from", from, "--to", "x/b", "--port", "8080", "-o", "json",
        ])
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

#[test]
fn policies_allow_and_deny_across_nodes_and_go_away() {
    require_privileges!();
    let (cluster, n0, n1) = two_nodes_and_namespace_x();
    cluster
        .apply(&pod(
            "b",
            &n1,
            "app: b",
            "mkdir -p /www && echo b > /www/index.html && exec httpd -f -p 8080 -h /www",
        ))
        .unwrap();
    cluster
        .apply(&pod("a", &n0, "role: client", "exec sleep 3600"))
        .unwrap();
    cluster
        .apply(&pod("c", &n0, "role: other", "exec sleep 3600"))
        .unwrap();
    for name in ["a", "b", "c"] {
        cluster
            .wait_ready("x", name, Duration::from_secs(60))
            .unwrap();
    }
    let b = cluster.pod("x", "b").unwrap();
    let ip = b["status"]["podIP"].as_str().unwrap().to_owned();
    settles(&cluster, "a reaches b (no policy)", "a", &ip, true);
    assert!(reaches(&cluster, "c", &ip), "c reaches b (no policy)");

    // Ingress to b only from role=client, on its http port.
    cluster
        .apply(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: http}]
"#,
        )
        .unwrap();
    settles(&cluster, "c denied by b's ingress policy", "c", &ip, false);
    assert!(reaches(&cluster, "a", &ip), "a is a client: allowed");

    // The verdicts, as b's node reported them: c denied at b's ingress, a allowed by the rule.
    // (The agent reads its ring buffer every 100 ms: a record may lag the request a little.)
    let reported = |what: &str, args: &[&str], wanted: &dyn Fn(&serde_json::Value) -> bool| {
        wait(what, Duration::from_secs(10), || {
            observe(&cluster, args).iter().any(wanted).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}: {:#?}", observe(&cluster, &[])));
    };
    reported("c's denied verdict", &["--verdict", "denied"], &|r| {
        r["source"]["pod"] == "x/c"
            && r["destination"]["pod"] == "x/b"
            && r["direction"] == "ingress"
            && r["endpoint"] == "x/b"
            && r["destination"]["port"] == 8080
    });
    reported("a's allowed verdict", &["--verdict", "allowed"], &|r| {
        r["source"]["pod"] == "x/a" && r["policy"] == "x/b-from-clients ingress[0]"
    });

    // b's node counts the dropped packets, for Prometheus (through the API server's node proxy).
    let metrics = cluster
        .kubectl_ok(&["get", "--raw", &format!("/api/v1/nodes/{n1}/proxy/metrics")])
        .unwrap();
    let denied_packets: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "apiary_policy_drops_total{pod=\"x/b\",direction=\"ingress\",reason=\"policy_denied\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter for x/b in:\n{metrics}"));
    assert!(denied_packets >= 1, "{metrics}");

    // `policy trace` explains both from the compiled maps, naming the rule.
    let c_to_b = trace(&cluster, "x/c");
    assert_eq!(c_to_b["allowed"], false, "{c_to_b:#}");
    assert_eq!(c_to_b["egress"]["enforced"], false);
    assert_eq!(c_to_b["ingress"]["enforced"], true);
    assert_eq!(c_to_b["ingress"]["rule"], serde_json::Value::Null);
    let a_to_b = trace(&cluster, "x/a");
    assert_eq!(a_to_b["allowed"], true, "{a_to_b:#}");
    assert_eq!(a_to_b["ingress"]["rule"], "x/b-from-clients ingress[0]");
    assert_eq!(a_to_b["ingress"]["node"], n1.as_str());

    // Relabel c as a client: its new identity is allowed.
    cluster
        .kubectl_ok(&["label", "pod", "-n", "x", "c", "role=client", "--overwrite"])
        .unwrap();
    settles(&cluster, "c allowed once relabelled", "c", &ip, true);

    // Egress default deny for a: nothing leaves it, whatever b allows.
    cluster
        .apply(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-no-egress, namespace: x}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
"#,
        )
        .unwrap();
    settles(&cluster, "a denied by its egress policy", "a", &ip, false);

    // Policies deleted: open again.
    cluster
        .kubectl_ok(&["delete", "networkpolicy", "-n", "x", "--all"])
        .unwrap();
    settles(&cluster, "a reaches b again", "a", &ip, true);
}

/// Bytes the client has received back on its long-lived echo connection.
fn echoed(cluster: &ClusterLab) -> u64 {
    cluster
        .kubectl_ok(&["exec", "-n", "x", "a", "--", "wc", "-c", "/tmp/echo"])
        .ok()
        .and_then(|out| out.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether the echo connection carries data now: the count grows within 1.5 s.
fn flowing(cluster: &ClusterLab) -> bool {
    let before = echoed(cluster);
    std::thread::sleep(Duration::from_millis(1500));
    echoed(cluster) > before
}

/// A connection established before a policy stays up across changes that still allow it, and
/// stops when a change revokes it (the node forgets its tracked flow), then resumes (TCP
/// retransmits) once the policy goes.
#[test]
fn established_connections_outlive_allowed_changes_and_stop_when_revoked() {
    require_privileges!();
    let (cluster, n0, n1) = two_nodes_and_namespace_x();
    cluster
        .apply(&pod("b", &n1, "app: b", "exec nc -ll -p 9000 -e cat"))
        .unwrap();
    let b = cluster
        .wait_ready("x", "b", Duration::from_secs(60))
        .unwrap();
    let ip = b["status"]["podIP"].as_str().unwrap().to_owned();
    // One TCP connection for the pod's life, the client sending a line every 100 ms.
    cluster
        .apply(&pod(
            "a",
            &n0,
            "role: client",
            &format!("(while sleep 0.1; do echo ping; done) | nc {ip} 9000 > /tmp/echo"),
        ))
        .unwrap();
    cluster
        .wait_ready("x", "a", Duration::from_secs(60))
        .unwrap();
    let wait_flowing = |what: &str, expected: bool| {
        wait(what, Duration::from_secs(20), || {
            (flowing(&cluster) == expected).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    };
    wait_flowing("the echo connection up", true);

    let allow = |ports: &str| {
        format!(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: b-from-clients, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]
    ports: [{ports}]
"#
        )
    };
    // Enforcement starts and allows it: the established connection goes on. (This one is
    // applied with our own CLI, the others with kubectl.)
    let manifest = cluster.dir.path().join("b-from-clients.yaml");
    std::fs::write(&manifest, allow("{port: 9000}")).unwrap();
    let applied = cluster
        .apiary(&["apply", "-f", manifest.to_str().unwrap()])
        .unwrap();
    assert!(applied.contains("b-from-clients"), "{applied}");
    let enforced = || {
        let trace = cluster
            .apiary(&[
                "net", "policy", "trace", "--from", "x/a", "--to", "x/b", "--port", "9000", "-o",
                "json",
            ])
            .unwrap();
        let trace: serde_json::Value = serde_json::from_str(&trace).unwrap();
        trace["ingress"]["enforced"] == true
    };
    wait("b's ingress enforced", Duration::from_secs(20), || {
        enforced().then_some(())
    })
    .unwrap();
    assert!(
        flowing(&cluster),
        "allowed connection stopped under the new policy"
    );
    // Another change that still allows it (a second port): it goes on.
    cluster.apply(&allow("{port: 9000}, {port: 8080}")).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        flowing(&cluster),
        "allowed connection stopped by an unrelated change"
    );
    // Revoked: its tracked flow is forgotten and its next packets are dropped.
    cluster.apply(&allow("{port: 8080}")).unwrap();
    wait_flowing("the revoked connection stopped", false);
    // Policy gone: TCP's retransmissions get through again.
    cluster
        .kubectl_ok(&["delete", "networkpolicy", "-n", "x", "b-from-clients"])
        .unwrap();
    wait_flowing("the connection back", true);
}

/// A pod that claims another pod's address (it may add one with `NET_ADMIN`, or forge one with
/// `NET_RAW`) is stopped at its own veth: the victim's allowances do not become its own, and the
/// drop is counted and shown by `apiary net observe` as the sender's.
#[test]
fn a_pod_cannot_pass_ingress_policy_as_another_pod() {
    require_privileges!();
    let cluster = ClusterLab::start(1).unwrap();
    let node = cluster.nodes()[0].name.clone();
    cluster
        .apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
        .unwrap();
    cluster
        .apply(&pod(
            "b",
            &node,
            "app: b",
            "mkdir -p /www && echo b > /www/index.html && exec httpd -f -p 8080 -h /www",
        ))
        .unwrap();
    cluster
        .apply(&pod("a", &node, "role: client", "exec sleep 3600"))
        .unwrap();
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: m, namespace: x, labels: {{role: other}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    securityContext: {{capabilities: {{add: [NET_ADMIN]}}}}
"#
        ))
        .unwrap();
    for name in ["a", "b", "m"] {
        cluster
            .wait_ready("x", name, Duration::from_secs(60))
            .unwrap();
    }
    let ip = |name: &str| {
        cluster.pod("x", name).unwrap()["status"]["podIP"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a_ip, b_ip) = (ip("a"), ip("b"));
    // b takes anything from clients (every protocol, ICMP too), nothing from others.
    cluster
        .apply(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
"#,
        )
        .unwrap();
    settles(
        &cluster,
        "m denied by b's ingress policy",
        "m",
        &b_ip,
        false,
    );
    assert!(reaches(&cluster, "a", &b_ip), "a is a client: allowed");
    let exec_m = |script: &str| {
        cluster
            .kubectl(&["exec", "-n", "x", "m", "--", "sh", "-c", script])
            .unwrap()
    };
    // m sends as itself: fine (a has no policy).
    let own = exec_m(&format!("ping -c 1 -W 2 {a_ip}"));
    assert!(own.status.success(), "{own:?}");

    // m takes a's address and pings b from it (the replies would go to a: m only needs b to
    // accept what it sends, as with any one-way UDP message).
    let spoof = exec_m(&format!(
        "ip addr add {a_ip}/32 dev eth0 && ping -c 3 -W 1 -I {a_ip} {b_ip}; ip addr del {a_ip}/32 dev eth0"
    ));
    assert!(
        !String::from_utf8_lossy(&spoof.stderr).contains("Operation not permitted"),
        "{spoof:?}"
    );

    // The agent reads its ring buffer every 100 ms: wait for m's spoofed packets to show.
    let spoofed = wait(
        "m's spoofed packets reported",
        Duration::from_secs(10),
        || {
            let records = observe(&cluster, &["--verdict", "spoofed"]);
            let found: Vec<_> = records
                .into_iter()
                .filter(|r| r["endpoint"] == "x/m" && r["source"]["address"] == a_ip.as_str())
                .collect();
            (found.len() >= 3).then_some(found)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:#?}", observe(&cluster, &[])));
    assert_eq!(spoofed[0]["destination"]["pod"], "x/b", "{spoofed:#?}");
    assert_eq!(spoofed[0]["source"]["pod"], serde_json::Value::Null);
    // b's policy never judged (let alone allowed) a packet claiming to be a's.
    let all = observe(&cluster, &[]);
    assert!(
        !all.iter().any(|r| r["endpoint"] == "x/b"
            && r["source"]["address"] == a_ip.as_str()
            && r["protocol"] == "ICMP"),
        "{all:#?}"
    );
    let metrics = cluster
        .kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/metrics"),
        ])
        .unwrap();
    let dropped: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "apiary_dataplane_drops_total{pod=\"x/m\",direction=\"egress\",reason=\"spoofed\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no spoofed counter for x/m in:\n{metrics}"));
    assert!(dropped >= 3, "{metrics}");
    // a, the real owner, is untouched.
    assert!(reaches(&cluster, "a", &b_ip), "a still allowed");
}
