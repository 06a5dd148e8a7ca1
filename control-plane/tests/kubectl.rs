//! End-to-end: the real `kubectl` against a started control plane, with the kubeconfig the
//! server generated and no extra flags.

mod support;

use serde_json::Value;
use support::ControlPlane;

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: localhost/busybox:latest
        command: ["httpd", "-f", "-p", "8080"]
        ports:
        - containerPort: 8080
          name: http
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: http
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-allow-frontend
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {role: frontend}
    ports:
    - port: 8080
"#;

#[test]
fn kubectl_reaches_the_server_with_the_generated_kubeconfig() {
    let cp = ControlPlane::start();
    let out = cp.kubectl(&["get", "namespaces", "-o", "name"]).success();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(&format!("namespace/{ns}")), "{out}");
    }
}

#[test]
fn requests_without_the_token_get_401() {
    let cp = ControlPlane::start();
    let out = cp
        .kubectl(&["get", "pods", "--token", "not-the-token"])
        .failure();
    assert!(
        out.contains("Unauthorized") || out.contains("provide credentials"),
        "{out}"
    );
}

#[test]
fn apply_get_update_and_delete_an_app() {
    let cp = ControlPlane::start();
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], APP).success();
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");
    assert!(
        out.contains("networkpolicy.networking.k8s.io/web-allow-frontend created"),
        "{out}"
    );

    let deploy: Value = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["metadata"]["generation"], 1);
    let rv1: u64 = deploy["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Applying again with a change is a patch of the live object.
    let changed = APP.replace("replicas: 2", "replicas: 3");
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &changed).success();
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    let deploy: Value = cp.kubectl_json(&["get", "deployments.apps", "web", "-o", "json"]);
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["metadata"]["generation"], 2);
    let rv2: u64 = deploy["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);

    cp.kubectl(&["label", "svc", "web", "tier=front"]).success();
    let out = cp
        .kubectl(&["scale", "deploy", "web", "--replicas=5"])
        .success();
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let deploy: Value = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(deploy["spec"]["replicas"], 5);
    let svc: Value = cp.kubectl_json(&["get", "svc", "web", "-o", "json"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap();
    assert!(
        cluster_ip.starts_with("10."),
        "allocated from 10.96.0.0/12: {cluster_ip}"
    );
    cp.kubectl(&["annotate", "netpol", "web-allow-frontend", "owner=team-a"])
        .success();
    let svc: Value = cp.kubectl_json(&["get", "svc", "-l", "tier=front", "-o", "json"]);
    assert_eq!(svc["items"].as_array().unwrap().len(), 1);
    let yaml = cp
        .kubectl(&["get", "netpol", "web-allow-frontend", "-o", "yaml"])
        .success();
    assert!(yaml.contains("owner: team-a"), "{yaml}");

    let out = cp.kubectl(&["delete", "-f", "-"]).with_stdin(APP).success();
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let out = cp.kubectl(&["get", "deploy", "web"]).failure();
    assert!(
        out.contains("NotFound") || out.contains("not found"),
        "{out}"
    );
}

#[test]
fn namespaces_lifecycle_removes_their_content() {
    let cp = ControlPlane::start();
    // `kubectl create namespace|configmap` send protobuf, which the server does not decode yet;
    // manifests go as JSON.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n",
    )
    .success();
    cp.kubectl_stdin(
        &["-n", "team-a", "apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n",
    )
    .success();
    let out = cp.kubectl(&["delete", "namespace", "team-a"]).success();
    assert!(out.contains("namespace \"team-a\" deleted"), "{out}");
    let out = cp.kubectl(&["get", "namespace", "team-a"]).failure();
    assert!(out.contains("not found"), "{out}");
    let out = cp
        .kubectl(&["-n", "team-a", "get", "configmap", "settings"])
        .failure();
    assert!(out.contains("not found"), "{out}");
}

#[test]
fn bad_input_gets_a_status_naming_the_problem_and_no_5xx() {
    let cp = ControlPlane::start();
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
        )
        .failure();
    assert!(
        out.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{out}"
    );
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dup\n",
        )
        .success();
    assert!(out.contains("configmap/dup created"), "{out}");
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dup\n",
        )
        .failure();
    assert!(
        out.contains("AlreadyExists") || out.contains("already exists"),
        "{out}"
    );
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  namespace: missing\n",
        )
        .failure();
    assert!(out.contains("namespaces \"missing\" not found"), "{out}");
}

#[test]
fn watch_sees_changes() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n",
    )
    .success();
    let mut watch = cp.kubectl_spawn(&[
        "get",
        "configmap",
        "watched",
        "-w",
        "-o",
        "json",
        "--output-watch-events",
    ]);
    // Give the watch a moment to be established before changing the object.
    std::thread::sleep(std::time::Duration::from_millis(500));
    cp.kubectl(&["label", "configmap", "watched", "changed=yes"])
        .success();
    let events = watch.read_until(|out| out.contains("changed"), 10);
    assert!(
        events.contains("\"MODIFIED\"") || events.contains("\"ADDED\""),
        "{events}"
    );
    assert!(events.contains(r#""changed":"yes""#), "{events}");
}
