//! End to end on a two-node lab cluster: real pods (youki, busybox) on both nodes, reaching each
//! other over the eBPF data plane, driven through the real kubectl.

use std::time::{Duration, Instant};

use apiary_tests::{
    cluster::{ClusterLab, Leftovers, is_ready},
    require_privileges,
};
use serde_json::Value;

const IMAGE: &str = "localhost/busybox:latest";

fn web_pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: prepare
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "echo init-ran > /work/init.txt"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: web
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "cp /content/index.html /work/; echo started; exec httpd -f -p 8080 -h /work"]
    env:
    - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
    - {{name: MY_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /index.html, port: http}}, periodSeconds: 1}}
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: content, mountPath: /content}}
    - {{name: creds, mountPath: /secrets}}
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: content, configMap: {{name: web-content}}}}
  - {{name: creds, secret: {{secretName: creds}}}}
"#
    )
}

fn simple_pod(name: &str, node: &str, extra_spec: &str, container: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
{extra_spec}
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
{container}
"#
    )
}

fn exec(cluster: &ClusterLab, pod: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", pod, "-c", "web", "--"];
    if !pod.starts_with("web") {
        args = vec!["exec", pod, "--"];
    }
    args.extend_from_slice(cmd);
    cluster
        .kubectl_ok(&args)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()))
}

fn ip_of(pod: &Value) -> String {
    pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// node1's Ready condition's status and last transition time.
fn node_ready(cluster: &ClusterLab) -> (Value, Value) {
    ready_since(
        &cluster
            .kubectl_json(&["get", "node", "node1", "-o", "json"])
            .unwrap(),
    )
}

/// The Ready condition's status and last transition time.
fn ready_since(pod: &Value) -> (Value, Value) {
    let ready = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null);
    (ready["status"].clone(), ready["lastTransitionTime"].clone())
}

fn status_of(pod: &Value, container: &str) -> Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|s| s.iter().find(|c| c["name"] == container).cloned())
        .unwrap_or(Value::Null)
}

fn wget(cluster: &ClusterLab, from: &str, ip: &str) -> String {
    exec(
        cluster,
        from,
        &[
            "timeout",
            "5",
            "wget",
            "-qO-",
            &format!("http://{ip}:8080/index.html"),
        ],
    )
}

/// The reasons of the Events about pod `name`, e.g. `Pulled`, `Started`, `BackOff`.
fn event_reasons(cluster: &ClusterLab, name: &str) -> Vec<String> {
    let selector = format!("involvedObject.name={name}");
    let events = cluster
        .kubectl_json(&["get", "events", "--field-selector", &selector, "-o", "json"])
        .unwrap();
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

/// No veth, sandbox, container, pod directory, cgroup or IP lease is left on either node.
fn assert_nothing_left(cluster: &mut ClusterLab) {
    for i in 0..2 {
        let left = apiary_tests::cluster::wait("node cleanup", Duration::from_secs(30), || {
            let l = cluster.leftovers(i).ok()?;
            (l == Leftovers::default()).then_some(l)
        });
        assert!(
            left.is_ok(),
            "node {i}: {:?}\n{}",
            cluster.leftovers(i),
            cluster.logs()
        );
    }
    for i in 0..2 {
        assert_eq!(
            cluster.leases_after_stopping(i).unwrap(),
            [],
            "node {i}'s IP leases"
        );
    }
}

#[test]
fn pods_on_two_nodes_run_talk_and_clean_up() {
    require_privileges!();
    let mut cluster = ClusterLab::start(2).unwrap();
    cluster
        .apply(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-content\ndata:\n  index.html: hello from configmap\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: s3cret\n",
        )
        .unwrap();
    cluster.apply(&web_pod("web-a", "node1")).unwrap();
    cluster.apply(&web_pod("web-b", "node2")).unwrap();
    cluster
        .apply(&simple_pod(
            "client",
            "node1",
            "",
            "    command: [sleep, '3600']",
        ))
        .unwrap();
    let a = cluster
        .wait_ready("default", "web-a", Duration::from_secs(90))
        .unwrap();
    let b = cluster
        .wait_ready("default", "web-b", Duration::from_secs(90))
        .unwrap();
    cluster
        .wait_ready("default", "client", Duration::from_secs(60))
        .unwrap();
    let (ip_a, ip_b) = (ip_of(&a), ip_of(&b));
    for (ip, node) in [(&ip_a, "node1"), (&ip_b, "node2")] {
        let cidr = cluster
            .kubectl_json(&["get", "node", node, "-o", "json"])
            .unwrap()["spec"]["podCIDR"]
            .as_str()
            .unwrap()
            .to_owned();
        let prefix = cidr.trim_end_matches("0/24");
        assert!(
            ip.starts_with(prefix),
            "{ip} is in {node}'s pod CIDR {cidr}"
        );
    }
    assert_ne!(
        ip_a.rsplit_once('.').unwrap().0,
        ip_b.rsplit_once('.').unwrap().0
    );
    assert_eq!(a["status"]["hostIP"], "10.123.0.1");

    // Cross-node both ways, and same-node.
    assert_eq!(
        wget(&cluster, "web-a", &ip_b).trim(),
        "hello from configmap"
    );
    assert_eq!(
        wget(&cluster, "web-b", &ip_a).trim(),
        "hello from configmap"
    );
    assert_eq!(
        wget(&cluster, "client", &ip_a).trim(),
        "hello from configmap"
    );
    // The node reaches its pods.
    let node1 = &cluster.nodes()[0].node.netns;
    let from_node = apiary_tests::lab::exec(
        node1,
        &[
            "timeout",
            "5",
            "busybox",
            "wget",
            "-qO-",
            &format!("http://{ip_a}:8080/index.html"),
        ],
    )
    .unwrap();
    assert_eq!(from_node.trim(), "hello from configmap");

    // Init container, env from a Secret and the downward API, Secret volume, hostname.
    assert_eq!(
        exec(&cluster, "web-a", &["cat", "/work/init.txt"]).trim(),
        "init-ran"
    );
    assert_eq!(
        exec(&cluster, "web-a", &["sh", "-c", "echo $PASSWORD $MY_IP"]).trim(),
        format!("s3cret {ip_a}")
    );
    assert_eq!(
        exec(&cluster, "web-a", &["cat", "/secrets/password"]).trim(),
        "s3cret"
    );
    assert_eq!(exec(&cluster, "web-a", &["hostname"]).trim(), "web-a");
    let reasons = event_reasons(&cluster, "web-a");
    for reason in ["Pulled", "Created", "Started"] {
        assert!(
            reasons.contains(&reason.to_owned()),
            "{reason} in {reasons:?}"
        );
    }
    let init = &a["status"]["initContainerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (init["exitCode"].as_i64(), init["reason"].as_str()),
        (Some(0), Some("Completed"))
    );
    // Logs, and exec's exit code.
    let logs = cluster.kubectl_ok(&["logs", "web-a", "-c", "web"]).unwrap();
    assert_eq!(logs.trim(), "started");
    let failed = cluster
        .kubectl(&["exec", "client", "--", "sh", "-c", "exit 3"])
        .unwrap();
    assert_eq!(failed.status.code(), Some(3));
    // kubectl cp both ways (tar through exec's stdin and stdout).
    let local = cluster.dir.path().join("cp-in.txt");
    std::fs::write(&local, "copied in\n").unwrap();
    cluster
        .kubectl_ok(&["cp", local.to_str().unwrap(), "client:/tmp/cp.txt"])
        .unwrap();
    assert_eq!(
        exec(&cluster, "client", &["cat", "/tmp/cp.txt"]),
        "copied in\n"
    );
    let back = cluster.dir.path().join("cp-out.txt");
    cluster
        .kubectl_ok(&["cp", "client:/tmp/cp.txt", back.to_str().unwrap()])
        .unwrap();
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");

    // A crashing container restarts with back-off; --previous shows the last attempt's logs.
    cluster
        .apply(&simple_pod(
            "crasher",
            "node2",
            "",
            "    command: [sh, -c, 'echo attempt; sleep 1; exit 3']",
        ))
        .unwrap();
    let crashed = cluster
        .wait_pod(
            "default",
            "crasher",
            "two restarts",
            Duration::from_secs(60),
            |p| status_of(p, "c")["restartCount"].as_i64() >= Some(2),
        )
        .unwrap();
    let last = &status_of(&crashed, "c")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{crashed}");
    let previous = cluster
        .kubectl_ok(&["logs", "crasher", "--previous"])
        .unwrap();
    assert!(event_reasons(&cluster, "crasher").contains(&"BackOff".to_owned()));
    assert_eq!(previous.trim(), "attempt");

    // A failing liveness probe restarts the container; readiness follows its probe.
    cluster
        .apply(&simple_pod(
            "probed",
            "node1",
            "",
            "    command: [sh, -c, 'touch /tmp/alive; sleep 4; rm /tmp/alive; sleep 3600']\n    livenessProbe: {exec: {command: [cat, /tmp/alive]}, periodSeconds: 1, failureThreshold: 1}\n    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}",
        ))
        .unwrap();
    let probed = cluster
        .wait_pod(
            "default",
            "probed",
            "a liveness restart",
            Duration::from_secs(60),
            |p| status_of(p, "c")["restartCount"].as_i64() >= Some(1),
        )
        .unwrap();
    assert!(!is_ready(&probed), "not ready before /tmp/ready exists");
    let reasons = event_reasons(&cluster, "probed");
    assert!(
        reasons.contains(&"Unhealthy".to_owned()) && reasons.contains(&"Killing".to_owned()),
        "{reasons:?}"
    );
    exec(&cluster, "probed", &["touch", "/tmp/ready"]);
    cluster
        .wait_ready("default", "probed", Duration::from_secs(20))
        .unwrap();

    // A memory limit is enforced and reported.
    cluster
        .apply(&simple_pod(
            "hog",
            "node2",
            "  restartPolicy: Never",
            "    command: [sh, -c, 'tail /dev/zero']\n    resources: {limits: {memory: 32Mi}}",
        ))
        .unwrap();
    let hog = cluster
        .wait_pod("default", "hog", "OOM kill", Duration::from_secs(60), |p| {
            p["status"]["phase"] == "Failed"
        })
        .unwrap();
    assert_eq!(
        status_of(&hog, "c")["state"]["terminated"]["reason"],
        "OOMKilled",
        "{hog}"
    );

    // Graceful termination: preStop, then SIGTERM; a process that ignores SIGTERM is killed
    // when the grace period ends.
    cluster
        .apply(&simple_pod(
            "stubborn",
            "node1",
            "  terminationGracePeriodSeconds: 3",
            "    command: [sh, -c, \"trap '' TERM; while true; do sleep 1; done\"]",
        ))
        .unwrap();
    cluster
        .apply(&simple_pod(
            "polite",
            "node1",
            "  terminationGracePeriodSeconds: 30",
            "    command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]",
        ))
        .unwrap();
    cluster
        .wait_ready("default", "stubborn", Duration::from_secs(30))
        .unwrap();
    cluster
        .wait_ready("default", "polite", Duration::from_secs(30))
        .unwrap();
    let started = Instant::now();
    cluster
        .kubectl_ok(&["delete", "pod", "polite", "--timeout=60s"])
        .unwrap();
    let polite = started.elapsed();
    assert!(
        polite < Duration::from_secs(10),
        "SIGTERM was honoured: {polite:?}"
    );
    let started = Instant::now();
    cluster
        .kubectl_ok(&["delete", "pod", "stubborn", "--timeout=60s"])
        .unwrap();
    let stubborn = started.elapsed();
    assert!(
        stubborn >= Duration::from_secs(3) && stubborn < Duration::from_secs(15),
        "SIGKILL after the 3 s grace period: {stubborn:?}"
    );

    // Deleting every pod leaves nothing behind on either node.
    cluster
        .kubectl_ok(&["delete", "pods", "--all", "--timeout=90s"])
        .unwrap();
    assert_nothing_left(&mut cluster);
}

#[test]
fn a_killed_agent_leaves_pods_running_and_adopts_them_again() {
    require_privileges!();
    let mut cluster = ClusterLab::start(2).unwrap();
    cluster
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-content\ndata:\n  index.html: still here\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: x\n")
        .unwrap();
    cluster.apply(&web_pod("web-a", "node1")).unwrap();
    cluster
        .apply(&simple_pod(
            "client",
            "node2",
            "",
            "    command: [sleep, '3600']",
        ))
        .unwrap();
    let before = cluster
        .wait_ready("default", "web-a", Duration::from_secs(90))
        .unwrap();
    cluster
        .wait_ready("default", "client", Duration::from_secs(60))
        .unwrap();
    let ip = ip_of(&before);
    let id = status_of(&before, "web")["containerID"].clone();
    let node_before = node_ready(&cluster);

    cluster.kill_agent(0);
    assert_eq!(
        wget(&cluster, "client", &ip).trim(),
        "still here",
        "reachable without its agent"
    );
    cluster.restart_agent(0).unwrap();
    // Give the new agent time to sync; it must adopt, not restart.
    std::thread::sleep(Duration::from_secs(5));
    let after = cluster
        .wait_ready("default", "web-a", Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        status_of(&after, "web")["containerID"],
        id,
        "the same container"
    );
    assert_eq!(status_of(&after, "web")["restartCount"], 0);
    assert_eq!(ip_of(&after), ip);
    assert_eq!(wget(&cluster, "client", &ip).trim(), "still here");
    // Ready throughout: the new agent took the container's readiness from the API until its
    // probe ran (not every pod of the node not ready, and out of its Services, meanwhile).
    assert_eq!(
        ready_since(&after),
        ready_since(&before),
        "the Ready condition did not change"
    );
    // Nor did the node's: its pods and data plane kept running, so the restarted agent did not
    // post NotReady while it synced (the lifecycle controller would have marked every pod of
    // the node not ready, and tainted it NoExecute).
    assert_eq!(node_ready(&cluster), node_before, "the node stayed Ready");
    // And the adopted container is probed again: without its page it goes not ready.
    exec(&cluster, "web-a", &["rm", "/work/index.html"]);
    apiary_tests::cluster::wait("web-a not ready", Duration::from_secs(30), || {
        let pod = cluster.pod("default", "web-a").ok()?;
        (status_of(&pod, "web")["ready"] == false).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    exec(&cluster, "web-a", &["cp", "/content/index.html", "/work/"]);
    cluster
        .wait_ready("default", "web-a", Duration::from_secs(30))
        .unwrap();

    // A static pod: a manifest in the node's directory runs as a mirror pod; removing the
    // file removes the pod.
    let manifest = cluster.nodes()[1].manifests.join("static-web.yaml");
    std::fs::write(
        &manifest,
        simple_pod("static-web", "", "", "    command: [sleep, '3600']")
            .replace("  nodeName: \n", ""),
    )
    .unwrap();
    let mirror = cluster
        .wait_ready("default", "static-web-node2", Duration::from_secs(60))
        .unwrap();
    assert_eq!(mirror["spec"]["nodeName"], "node2");
    assert_eq!(
        mirror["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    std::fs::remove_file(&manifest).unwrap();
    apiary_tests::cluster::wait("the mirror pod gone", Duration::from_secs(60), || {
        cluster
            .pod("default", "static-web-node2")
            .is_err()
            .then_some(())
    })
    .unwrap();

    cluster
        .kubectl_ok(&["delete", "pods", "--all", "--timeout=90s"])
        .unwrap();
    assert_nothing_left(&mut cluster);
}

#[test]
fn images_are_pulled_from_a_registry_as_the_pull_policy_says() {
    require_privileges!();
    let mut cluster = ClusterLab::start(1).unwrap();
    let image = cluster.start_registry("demo/busybox:v1").unwrap();
    let pod = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: node1\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Always\n    command: [sleep, '3600']\n"
        )
    };
    cluster.apply(&pod("pulled", &image)).unwrap();
    cluster
        .wait_ready("default", "pulled", Duration::from_secs(60))
        .unwrap();
    let reasons = event_reasons(&cluster, "pulled");
    assert!(
        reasons.contains(&"Pulling".to_owned()) && reasons.contains(&"Pulled".to_owned()),
        "{reasons:?}"
    );
    // A tag the registry does not have: the container waits with the registry's answer.
    cluster
        .apply(&pod("missing", &image.replace(":v1", ":nope")))
        .unwrap();
    let missing = cluster
        .wait_pod(
            "default",
            "missing",
            "a pull error",
            Duration::from_secs(60),
            |p| {
                let reason = status_of(p, "c")["state"]["waiting"]["reason"].clone();
                reason == "ErrImagePull" || reason == "ImagePullBackOff"
            },
        )
        .unwrap();
    let message = status_of(&missing, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("manifest unknown"), "{message}");
    cluster
        .kubectl_ok(&["delete", "pods", "--all", "--timeout=60s"])
        .unwrap();
}
