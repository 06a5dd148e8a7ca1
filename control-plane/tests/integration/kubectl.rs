//! End-to-end: the real `kubectl` against a started control plane, with the kubeconfig the
//! server generated and no extra flags.

use crate::support;

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

/// Wrong tokens are refused in authn.rs; beside the admin kubeconfig's client certificate one
/// is not even read: kube-apiserver tries the certificate first.
#[test]
fn a_wrong_token_beside_the_admin_certificate_is_not_read() {
    let cp = ControlPlane::start();
    let out = cp
        .kubectl(&["auth", "whoami", "--token", "not-the-token"])
        .success();
    assert!(out.contains("admin"), "{out}");
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

#[test]
fn invalid_objects_get_422_naming_the_field_and_nothing_stored_changes() {
    let cp = ControlPlane::start();
    let no_selector = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: busybox\n";
    let out = cp
        .kubectl_stdin(&["apply", "-f", "-"], no_selector)
        .failure();
    assert!(out.contains(r#"Deployment "web" is invalid"#), "{out}");
    assert!(out.contains("* spec.selector: Required value"), "{out}");

    cp.kubectl_stdin(&["apply", "-f", "-"], APP).success();
    // The selector of a Deployment is immutable.
    let moved = APP
        .replacen(
            "matchLabels: {app: web}",
            "matchLabels: {app: web, v: two}",
            1,
        )
        .replacen(
            "labels: {app: web}\n    spec:",
            "labels: {app: web, v: two}\n    spec:",
            1,
        );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &moved).failure();
    assert!(
        out.contains("spec.selector") && out.contains("field is immutable"),
        "{out}"
    );
    let deploy: Value = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"],
        serde_json::json!({"app": "web"})
    );
    assert_eq!(
        deploy["metadata"]["generation"], 1,
        "nothing stored changed"
    );

    // A value of the wrong type is malformed, not invalid.
    let out = cp
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &APP.replace("replicas: 2", "replicas: two"),
        )
        .failure();
    assert!(
        out.contains("BadRequest") || out.contains("cannot be handled"),
        "{out}"
    );

    let bad_port =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 70000\n";
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], bad_port).failure();
    assert!(out.contains("spec.ports[0].port"), "{out}");
}

#[test]
fn get_prints_the_columns_kubectl_users_know() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], APP).success();
    let deploys = cp.kubectl(&["get", "deployments"]).success();
    let header: Vec<&str> = deploys.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{deploys}"
    );
    assert!(deploys.contains("0/2"), "{deploys}");
    let svcs = cp.kubectl(&["get", "services", "-o", "wide"]).success();
    let header: Vec<&str> = svcs.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ],
        "{svcs}"
    );
    assert!(
        svcs.contains("80/TCP") && svcs.contains("app=web"),
        "{svcs}"
    );
    let all = cp.kubectl(&["get", "all", "-A"]).success();
    assert!(
        all.contains("deployment.apps/web") && all.contains("service/web"),
        "{all}"
    );
    let pods = cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: busybox\n",
    );
    pods.success();
    let pods = cp.kubectl(&["get", "pods", "-o", "wide"]).success();
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        &header[..7],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"],
        "{pods}"
    );
    assert!(
        pods.contains("0/1") && pods.contains("Pending") && pods.contains("n1"),
        "{pods}"
    );
}

#[test]
fn the_same_flows_work_on_etcd() {
    let cp = ControlPlane::start_on_etcd();
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], APP).success();
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let out = cp
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &APP.replace("replicas: 2", "replicas: 4"),
        )
        .success();
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    cp.kubectl(&["scale", "deploy", "web", "--replicas=1"])
        .success();
    let deploy: Value = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(deploy["spec"]["replicas"], 1);
    let out = cp.kubectl(&["delete", "-f", "-"]).with_stdin(APP).success();
    assert!(out.contains("service \"web\" deleted"), "{out}");
    cp.kubectl(&["get", "svc", "web"]).failure();
}

#[test]
fn the_scheduler_binds_pods_through_the_binding_subresource() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
    )
    .success();
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"n1"}}"#;
    cp.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/p/binding",
        "-f",
        "-",
    ])
    .with_stdin(binding)
    .success();
    let pod: Value = cp.kubectl_json(&["get", "pod", "p", "-o", "json"]);
    assert_eq!(pod["spec"]["nodeName"], "n1");
    let out = cp
        .kubectl(&[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/p/binding",
            "-f",
            "-",
        ])
        .with_stdin(binding)
        .failure();
    assert!(out.contains("already assigned"), "{out}");
}

/// An owner ConfigMap and two dependents pointing at it; returns the owner's uid.
fn owner_and_dependents(cp: &ControlPlane, owner: &str) -> String {
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {owner}\n"),
    )
    .success();
    let uid = cp
        .kubectl(&["get", "cm", owner, "-o", "jsonpath={.metadata.uid}"])
        .success();
    for dependent in ["d1", "d2"] {
        cp.kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {owner}-{dependent}\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: {owner}\n    uid: {uid}\n"
            ),
        )
        .success();
    }
    uid
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn garbage_collection_follows_the_propagation_policy() {
    let cp = ControlPlane::start();
    let secrets = |prefix: &str| {
        let names = cp.kubectl(&["get", "secrets", "-o", "name"]).success();
        names.lines().filter(|l| l.contains(prefix)).count()
    };

    owner_and_dependents(&cp, "bg");
    cp.kubectl(&["delete", "cm", "bg"]).success();
    wait_until("background deletion of dependents", || secrets("bg-") == 0);

    owner_and_dependents(&cp, "fg");
    let out = cp
        .kubectl(&["delete", "cm", "fg", "--cascade=foreground"])
        .success();
    assert!(out.contains("deleted"), "{out}");
    assert_eq!(
        secrets("fg-"),
        0,
        "foreground: dependents are gone before the owner"
    );
    cp.kubectl(&["get", "cm", "fg"]).failure();

    owner_and_dependents(&cp, "or");
    cp.kubectl(&["delete", "cm", "or", "--cascade=orphan"])
        .success();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(secrets("or-"), 2, "orphaned dependents stay");
    wait_until("owner references removed", || {
        let secret: Value = cp.kubectl_json(&["get", "secret", "or-d1", "-o", "json"]);
        secret["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(Vec::is_empty)
    });
}

#[test]
fn a_watch_from_a_compacted_revision_gets_410_gone() {
    let cp = ControlPlane::start_with(&["--compaction-interval-seconds", "1"]);
    for i in 0..3 {
        cp.kubectl_stdin(
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\n"),
        )
        .success();
    }
    // Two intervals: the second compacts up to the revision the first one saw.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let out = cp
        .kubectl(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=2",
        ])
        .success();
    let event: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR", "{out}");
    assert_eq!(event["object"]["code"], 410, "{out}");
    assert_eq!(event["object"]["reason"], "Expired", "{out}");
    // A list at a compacted revision is 410 too; the latest still works.
    let out = cp
        .kubectl(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/configmaps?resourceVersion=1&resourceVersionMatch=Exact",
        ])
        .failure();
    assert!(
        out.contains("410") || out.contains("Expired") || out.contains("too old"),
        "{out}"
    );
    cp.kubectl(&["get", "configmaps"]).success();
}

#[test]
fn cluster_ips_are_unique_under_concurrent_creates_and_released_on_delete() {
    let cp = ControlPlane::start();
    let manifests: Vec<String> = (0..12)
        .map(|i| format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n"))
        .collect();
    std::thread::scope(|scope| {
        for manifest in &manifests {
            let cp = &cp;
            scope.spawn(move || cp.kubectl_stdin(&["apply", "-f", "-"], manifest).success());
        }
    });
    let services: Value = cp.kubectl_json(&["get", "services", "-o", "json"]);
    let items = services["items"].as_array().unwrap();
    assert_eq!(items.len(), 12);
    let mut ips: Vec<&str> = items
        .iter()
        .map(|s| s["spec"]["clusterIP"].as_str().unwrap())
        .collect();
    let mut ports: Vec<i64> = items
        .iter()
        .map(|s| s["spec"]["ports"][0]["nodePort"].as_i64().unwrap())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        (ips.len(), ports.len()),
        (12, 12),
        "every IP and NodePort is unique"
    );
    assert!(ports.iter().all(|p| (30000..=32767).contains(p)));

    // An address in use is refused; once its Service is gone it can be had again.
    let taken = ips[0];
    let wants = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: again\nspec:\n  clusterIP: {taken}\n  ports:\n  - port: 80\n"
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &wants).failure();
    assert!(out.contains("already allocated"), "{out}");
    let owner = items
        .iter()
        .find(|s| s["spec"]["clusterIP"] == taken)
        .unwrap();
    cp.kubectl(&["delete", "svc", owner["metadata"]["name"].as_str().unwrap()])
        .success();
    wait_until("the address to be released", || {
        cp.kubectl_stdin(&["apply", "-f", "-"], &wants).ok()
    });
}

#[test]
fn finalizers_hold_a_deleted_object_until_removed() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n",
    )
    .success();
    cp.kubectl(&["delete", "cm", "held", "--wait=false"])
        .success();
    let held: Value = cp.kubectl_json(&["get", "cm", "held", "-o", "json"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    cp.kubectl(&[
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .success();
    cp.kubectl(&["get", "cm", "held"]).failure();
}

#[test]
fn secret_string_data_is_folded_into_data_and_never_served() {
    let cp = ControlPlane::start();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  user: YWRtaW4=\n  password: b2xk\nstringData:\n  password: hunter2\n";
    let created = cp.kubectl_stdin(&["create", "-f", "-", "-o", "json"], secret);
    let created: Value = serde_json::from_str(&created.success()).unwrap();
    let stored = cp.kubectl_json(&["get", "secret", "db", "-o", "json"]);
    for object in [&created, &stored] {
        assert!(object.get("stringData").is_none(), "{object}");
        // base64 of hunter2: stringData overrides data under the same key.
        assert_eq!(object["data"]["password"], "aHVudGVyMg==", "{object}");
        assert_eq!(object["data"]["user"], "YWRtaW4=", "{object}");
    }

    // Updates fold too: apply (a patch of the live object) and a merge patch.
    let applied =
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: api\nstringData:\n  token: t1\n";
    cp.kubectl_stdin(&["apply", "-f", "-"], applied).success();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &applied.replace("token: t1", "token: t2"),
    )
    .success();
    cp.kubectl(&[
        "patch",
        "secret",
        "api",
        "--type=merge",
        "-p",
        r#"{"stringData":{"extra":"x"}}"#,
    ])
    .success();
    let api = cp.kubectl_json(&["get", "secret", "api", "-o", "json"]);
    assert!(api.get("stringData").is_none(), "{api}");
    assert_eq!(api["data"]["token"], "dDI=", "{api}");
    assert_eq!(api["data"]["extra"], "eA==", "{api}");

    // A bad key in stringData is named as Kubernetes names it, and nothing is stored.
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad\nstringData:\n  bad/key: x\n",
        )
        .failure();
    assert!(out.contains("data[bad/key]"), "{out}");
    cp.kubectl(&["get", "secret", "bad"]).failure();
}

#[test]
fn new_objects_have_the_status_kubernetes_serializes() {
    let cp = ControlPlane::start();
    let created = cp
        .kubectl_stdin(&["create", "-f", "-", "-o", "json"], APP)
        .success();
    // `kubectl create -o json` prints each object it created, one document after another.
    let objects: Vec<Value> = serde_json::Deserializer::from_str(&created)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .flat_map(|o| match o["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![o],
        })
        .collect();
    let by_kind = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {created}"))
            .clone()
    };
    assert_eq!(by_kind("Deployment")["status"], serde_json::json!({}));
    assert_eq!(
        by_kind("Service")["status"],
        serde_json::json!({"loadBalancer": {}})
    );
    // A client's status on create is replaced, as controllers own it.
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: localhost/busybox:latest\nstatus:\n  succeeded: 5\n";
    let job: Value = serde_json::from_str(
        &cp.kubectl_stdin(&["create", "-f", "-", "-o", "json"], job)
            .success(),
    )
    .unwrap();
    assert!(job["status"].is_object(), "{job}");
    assert!(job["status"].get("succeeded").is_none(), "{job}");
    // Reads have it too (a ConfigMap has no status at all).
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n";
    cp.kubectl_stdin(&["create", "-f", "-"], cm).success();
    assert!(
        cp.kubectl_json(&["get", "cm", "c", "-o", "json"])
            .get("status")
            .is_none()
    );
    let cronjob = "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: cj\nspec:\n  schedule: \"0 0 1 1 *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: c\n            image: localhost/busybox:latest\n";
    cp.kubectl_stdin(&["create", "-f", "-"], cronjob).success();
    assert_eq!(
        cp.kubectl_json(&["get", "cronjob", "cj", "-o", "json"])["status"],
        serde_json::json!({})
    );
}

#[test]
fn discovery_and_version_answer_with_a_trailing_slash() {
    let cp = ControlPlane::start();
    for path in ["/version", "/version/"] {
        let version: Value = serde_json::from_str(&cp.kubectl(&["get", "--raw", path]).success())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(version["major"], "1", "{path}: {version}");
    }
    for (path, kind) in [
        ("/api/", "APIVersions"),
        ("/api/v1/", "APIResourceList"),
        ("/apis/", "APIGroupList"),
        ("/apis/apps/", "APIGroup"),
        ("/apis/apps/v1/", "APIResourceList"),
    ] {
        let body: Value = serde_json::from_str(&cp.kubectl(&["get", "--raw", path]).success())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(body["kind"], kind, "{path}: {body}");
    }
}

#[test]
fn every_namespace_gets_a_default_service_account() {
    let cp = ControlPlane::start();
    let has_default = |ns: &str| {
        cp.kubectl(&["-n", ns, "get", "serviceaccount", "default", "-o", "name"])
            .ok()
    };
    wait_until("default/default", || has_default("default"));
    wait_until("kube-system/default", || has_default("kube-system"));
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-b\n",
    )
    .success();
    wait_until("team-b/default", || has_default("team-b"));
    let out = cp.kubectl(&["-n", "team-b", "get", "sa"]).success();
    assert!(out.contains("default"), "{out}");
    // Deleted, it comes back.
    let uid = |cp: &ControlPlane| {
        cp.kubectl_json(&["-n", "team-b", "get", "sa", "default", "-o", "json"])["metadata"]["uid"]
            .clone()
    };
    let first = uid(&cp);
    cp.kubectl(&["-n", "team-b", "delete", "sa", "default"])
        .success();
    wait_until("team-b/default to come back", || {
        has_default("team-b") && uid(&cp) != first
    });
}

/// The Events about `default/<kind>/<name>` with `reason`, as JSON.
fn events_about(cp: &ControlPlane, kind: &str, name: &str, reason: &str) -> Vec<Value> {
    let selector = format!("involvedObject.kind={kind},involvedObject.name={name},reason={reason}");
    let list = cp.kubectl_json(&["get", "events", "--field-selector", &selector, "-o", "json"]);
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Scales Deployment `web` and waits until its ReplicaSet has been scaled, so that every step
/// is reconciled (and records its Event) on its own.
fn scale_web(cp: &ControlPlane, replicas: u32) {
    cp.kubectl(&[
        "scale",
        "deployment",
        "web",
        &format!("--replicas={replicas}"),
    ])
    .success();
    wait_until(&format!("web's ReplicaSet at {replicas}"), || {
        let sets = cp.kubectl_json(&["get", "rs", "-l", "app=web", "-o", "json"]);
        sets["items"][0]["spec"]["replicas"] == replicas
    });
}

#[test]
fn repeated_events_are_one_event_with_a_count() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &APP.split("---")
            .next()
            .unwrap()
            .replace("replicas: 2", "replicas: 1"),
    )
    .success();
    wait_until("web's ReplicaSet", || {
        cp.kubectl(&["get", "rs", "-l", "app=web", "-o", "name"])
            .success()
            .contains("replicaset")
    });
    let mut watch = cp.kubectl_spawn(&[
        "get",
        "events",
        "--watch-only",
        "--output-watch-events",
        "-o",
        "json",
    ]);
    // 1 → 2 → 1 → 2 → 1 → 2: "Scaled up replica set web-… to 2" three times.
    for replicas in [2, 1, 2, 1, 2] {
        scale_web(&cp, replicas);
    }
    let up = events_about(&cp, "Deployment", "web", "ScalingReplicaSet");
    let up: Vec<&Value> = up
        .iter()
        .filter(|e| e["message"].as_str().unwrap().ends_with(" to 2"))
        .collect();
    assert_eq!(up.len(), 1, "{up:#?}");
    let event = up[0];
    assert_eq!(event["count"], 3, "{event:#}");
    assert!(
        event["firstTimestamp"].as_str() <= event["lastTimestamp"].as_str(),
        "{event:#}"
    );
    // The bumps are writes watchers see.
    watch.read_until(|s| s.contains("\"MODIFIED\""), 10);

    // kube-apiserver's columns: the count in the wide ones, by the name.
    let name = event["metadata"]["name"].as_str().unwrap();
    let wide = cp
        .kubectl(&[
            "get",
            "events",
            "-o",
            "wide",
            "--field-selector",
            &format!("metadata.name={name}"),
        ])
        .success();
    let mut lines = wide.lines();
    let header = lines.next().unwrap();
    for column in [
        "LAST SEEN",
        "TYPE",
        "REASON",
        "OBJECT",
        "SUBOBJECT",
        "SOURCE",
        "MESSAGE",
        "FIRST SEEN",
        "COUNT",
        "NAME",
    ] {
        assert!(header.contains(column), "{wide}");
    }
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[row.len() - 2..], ["3", name], "{wide}");
    let narrow = cp.kubectl(&["get", "events"]).success();
    let header: Vec<&str> = narrow.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{narrow}"
    );
    assert!(narrow.contains("deployment/web"), "{narrow}");
    // kubectl describe counts from count, firstTimestamp and lastTimestamp.
    let described = cp.kubectl(&["describe", "deployment", "web"]).success();
    assert!(described.contains("(x3 over "), "{described}");

    // The ReplicaSet's "Created pod: …" Events differ in their message: from the tenth in ten
    // minutes on, they are one combined Event (client-go's aggregation). 4 pods were created
    // so far; 10 more make 14: 9 Events of their own, 5 combined.
    scale_web(&cp, 12);
    let rs = cp
        .kubectl(&[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .success();
    let mut created = Vec::new();
    wait_until("14 SuccessfulCreate events counted", || {
        created = events_about(&cp, "ReplicaSet", &rs, "SuccessfulCreate");
        created
            .iter()
            .map(|e| e["count"].as_i64().unwrap())
            .sum::<i64>()
            == 14
    });
    let (combined, single): (Vec<&Value>, Vec<&Value>) = created.iter().partition(|e| {
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("(combined from similar events): Created pod: ")
    });
    assert_eq!(single.len(), 9, "{created:#?}");
    assert_eq!(combined.len(), 1, "{created:#?}");
    assert_eq!(combined[0]["count"], 5, "{created:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agents_repeated_events_are_one_event_with_a_count() {
    use apiary_node_agent::{
        api_client::{ApiClient, PodRef},
        kubeconfig::Endpoint,
    };
    let cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .unwrap();
    // Agents authenticate with the cluster token, not the admin kubeconfig's certificate.
    let admin: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let endpoint = Endpoint {
        server: admin["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap()
            .to_owned(),
        more_servers: Vec::new(),
        ca_pem: std::fs::read_to_string(cp.data_path().join("pki/ca.crt")).unwrap(),
        token: cp.token(),
        client_certificate: None,
    };
    let api = ApiClient::new(&endpoint).unwrap();
    let pod = PodRef {
        namespace: "default".into(),
        name: "web-1".into(),
        uid: "uid-1".into(),
        field_path: "spec.containers{web}".into(),
    };
    for _ in 0..4 {
        api.pod_event(
            "node-1",
            &pod,
            "Warning",
            "BackOff",
            "Back-off restarting failed container web".into(),
        );
    }
    api.pod_event(
        "node-1",
        &pod,
        "Normal",
        "Pulled",
        "Container image \"busybox\" already present".into(),
    );
    let cp = std::sync::Arc::new(cp);
    let mut events = Vec::new();
    for _ in 0..100 {
        let cp = std::sync::Arc::clone(&cp);
        events = tokio::task::spawn_blocking(move || events_about(&cp, "Pod", "web-1", "BackOff"))
            .await
            .unwrap();
        if events.first().is_some_and(|e| e["count"] == 4) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["count"], 4, "{event:#}");
    assert_eq!(
        event["source"],
        serde_json::json!({"component": "kubelet", "host": "node-1"})
    );
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{web}");
    let pulled = tokio::task::spawn_blocking(move || events_about(&cp, "Pod", "web-1", "Pulled"))
        .await
        .unwrap();
    assert_eq!(pulled.len(), 1, "{pulled:#?}");
    assert_eq!(pulled[0]["count"], 1);
}

/// NamespaceLifecycle keeps the cluster's own namespaces, and namespaces have no
/// deletecollection (found by `cargo xtask chaos`: a random DELETE emptied the cluster).
#[test]
fn the_cluster_s_own_namespaces_cannot_be_deleted() {
    let cp = ControlPlane::start();
    for ns in ["default", "kube-system", "kube-public"] {
        let out = cp.kubectl(&["delete", "namespace", ns]).failure();
        assert!(
            out.contains(&format!(
                "Error from server (Forbidden): namespaces \"{ns}\" is forbidden: this namespace may not be deleted"
            )),
            "{out}"
        );
    }
    let out = cp
        .kubectl(&["delete", "--raw", "/api/v1/namespaces"])
        .failure();
    assert!(out.contains("MethodNotAllowed"), "{out}");
    // Another namespace goes as before.
    cp.kubectl(&["create", "namespace", "scratch"]).success();
    cp.kubectl(&["delete", "namespace", "scratch", "--wait=false"])
        .success();
    let names = cp.kubectl(&["get", "namespaces", "-o", "name"]).success();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&format!("namespace/{ns}")), "{names}");
    }
}
