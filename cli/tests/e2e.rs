//! `apiary` against the real control plane: each test starts its own.

mod support;

use std::time::{Duration, Instant};

use support::Cluster;

const APP: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
    tier: front
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
---
# an empty document: skipped
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector: {}
";

const CREATED: &str = "\
deployment.apps/web created
service/web created
networkpolicy.networking.k8s.io/web created
";

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn apply_creates_then_configures_and_removes_what_the_manifest_dropped() {
    let cluster = Cluster::start();
    let app = cluster.manifest("app.yaml", APP);
    assert_eq!(cluster.ok(&["apply", "-f", &app]), CREATED);
    assert_eq!(
        cluster.ok(&["apply", "-f", &app]),
        "deployment.apps/web unchanged\nservice/web unchanged\nnetworkpolicy.networking.k8s.io/web unchanged\n"
    );

    // Three replicas, and the `tier` label gone from the manifest.
    let changed = APP
        .replace("replicas: 2", "replicas: 3")
        .replace("    tier: front\n", "");
    let changed = cluster.manifest("app.yaml", &changed);
    assert_eq!(
        cluster.ok(&["apply", "-f", &changed]),
        "deployment.apps/web configured\nservice/web unchanged\nnetworkpolicy.networking.k8s.io/web unchanged\n"
    );
    let deployment = cluster.json(&["get", "deployment", "web", "-o", "json"]);
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["metadata"]["labels"],
        serde_json::json!({"app": "web"})
    );
    let recorded =
        deployment["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .expect("apply records the manifest");
    assert!(recorded.contains("\"replicas\":3"), "{recorded}");

    // From standard input, and as JSON.
    let json = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}}"#;
    let out = cluster.run(&["apply", "-f", "-"], Some(json));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configmap/cfg created\n"
    );
}

#[test]
fn apply_reads_a_folder_in_name_order() {
    let cluster = Cluster::start();
    cluster.manifest(
        "a-namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n",
    );
    let dir = cluster.manifest(
        "b-config.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg","namespace":"team-a"}}"#,
    );
    let dir = std::path::Path::new(&dir)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        cluster.ok(&["apply", "-f", &dir]),
        "namespace/team-a created\nconfigmap/cfg created\n"
    );
    assert!(cluster.ok(&["get", "cm", "-n", "team-a"]).contains("cfg"));
}

#[test]
fn get_prints_tables_like_kubectl() {
    let cluster = Cluster::start();
    let app = cluster.manifest("app.yaml", APP);
    cluster.ok(&["apply", "-f", &app]);

    let table = cluster.ok(&["get", "deployments"]);
    let rows = lines(&table);
    assert_eq!(
        rows[0], "NAME   READY   UP-TO-DATE   AVAILABLE   AGE",
        "{table}"
    );
    assert!(rows[1].starts_with("web    "), "{table}");
    assert_eq!(rows.len(), 2, "{table}");

    // Every way of naming the type finds it.
    for kind in [
        "deploy",
        "deployment",
        "Deployment",
        "deployments.apps",
        "deploy/web",
    ] {
        let table = cluster.ok(&["get", kind]);
        assert!(table.starts_with("NAME   READY"), "{kind}: {table}");
    }

    let wide = cluster.ok(&["get", "deploy", "-o", "wide"]);
    let header = lines(&wide)[0];
    assert!(
        header.ends_with("AGE   CONTAINERS   IMAGES       SELECTOR"),
        "{wide}"
    );
    assert!(lines(&wide)[1].contains("nginx:1.27"), "{wide}");

    let services = cluster.ok(&["get", "svc"]);
    assert!(
        lines(&services)[0].starts_with("NAME   TYPE        CLUSTER-IP"),
        "{services}"
    );

    let yaml = cluster.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(yaml.starts_with("apiVersion: apps/v1\n"), "{yaml}");
    assert!(yaml.contains("\nkind: Deployment\n"), "{yaml}");
    let list = cluster.json(&["get", "deploy,svc", "-o", "json"]);
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["items"][1]["kind"], "Service");

    assert_eq!(
        cluster.ok(&["get", "deploy", "-l", "app=web", "-o", "name"]),
        "deployment.apps/web\n"
    );
    let none = cluster.run(&["get", "deploy", "-l", "app=other"], None);
    assert!(none.status.success());
    assert!(none.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&none.stderr),
        "No resources found in default namespace.\n"
    );

    cluster.ok(&["create", "namespace", "team-a"]);
    cluster.ok(&["apply", "-f", &app, "-n", "team-a"]);
    let all = cluster.ok(&["get", "deploy", "-A"]);
    let rows = lines(&all);
    assert!(rows[0].starts_with("NAMESPACE   NAME   READY"), "{all}");
    assert!(rows[1].starts_with("default     web"), "{all}");
    assert!(rows[2].starts_with("team-a      web"), "{all}");
}

#[test]
fn get_watch_prints_changes_made_by_another_command() {
    let cluster = Cluster::start();
    let app = cluster.manifest("app.yaml", APP);
    cluster.ok(&["apply", "-f", &app]);
    let mut watch = cluster.spawn(&["get", "deploy", "-w"]);
    watch.read_until(|seen| seen.lines().any(|l| l.starts_with("web ")), 30);
    let scaled = cluster.manifest("scaled.yaml", &APP.replace("replicas: 2", "replicas: 5"));
    cluster.ok(&["apply", "-f", &scaled]);
    let seen = watch.read_until(
        |seen| {
            seen.lines()
                .any(|l| l.starts_with("web ") && l.contains("/5 "))
        },
        30,
    );
    assert!(seen.starts_with("NAME   READY"), "{seen}");
    assert_eq!(seen.matches("NAME").count(), 1, "one header: {seen}");
}

#[test]
fn describe_shows_metadata_spec_and_events() {
    let cluster = Cluster::start();
    let app = cluster.manifest("app.yaml", APP);
    cluster.ok(&["apply", "-f", &app]);
    let text = cluster.ok(&["describe", "deployment", "web"]);
    assert!(
        text.starts_with("Name:               web\nNamespace:          default\n"),
        "{text}"
    );
    assert!(
        text.contains("Labels:             app=web\n                    tier=front\n"),
        "{text}"
    );
    assert!(text.contains("\nCreationTimestamp:  "), "{text}");
    assert!(text.contains("\nSpec:\n  "), "{text}");
    assert!(text.contains("  replicas: 2\n"), "{text}");
    assert!(text.contains("\nEvents:"), "{text}");
    assert!(!text.contains("last-applied-configuration"), "{text}");

    let error = cluster.fails(&["describe", "deploy", "nope"], None);
    assert_eq!(
        error,
        "Error from server (NotFound): deployments.apps \"nope\" not found"
    );
}

/// Polls until `apiary get …` fails with NotFound (deletions may finish in the background).
fn assert_gone(cluster: &Cluster, args: &[&str]) {
    let out = cluster.run(args, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("(NotFound)"),
        "still there: {stderr}"
    );
}

#[test]
fn delete_removes_objects_and_waits_until_they_are_gone() {
    let cluster = Cluster::start();
    let app = cluster.manifest("app.yaml", APP);
    cluster.ok(&["apply", "-f", &app]);
    assert_eq!(
        cluster.ok(&["delete", "-f", &app]),
        "deployment.apps \"web\" deleted\nservice \"web\" deleted\nnetworkpolicy.networking.k8s.io \"web\" deleted\n"
    );
    assert_gone(&cluster, &["get", "deploy", "web"]);
    assert_gone(&cluster, &["get", "svc", "web"]);
    assert_gone(&cluster, &["get", "netpol", "web"]);

    cluster.ok(&["apply", "-f", &app]);
    assert_eq!(
        cluster.ok(&["delete", "deployment", "web"]),
        "deployment.apps \"web\" deleted\n"
    );
    assert_gone(&cluster, &["get", "deploy", "web"]);
    assert_eq!(
        cluster.ok(&["delete", "svc/web"]),
        "service \"web\" deleted\n"
    );
    let error = cluster.fails(&["delete", "svc", "web"], None);
    assert_eq!(
        error,
        "Error from server (NotFound): services \"web\" not found"
    );
    assert_eq!(
        cluster.ok(&["delete", "svc", "web", "--ignore-not-found"]),
        ""
    );

    // Namespaces terminate first; `delete` waits for the end.
    assert_eq!(
        cluster.ok(&["create", "namespace", "team-a"]),
        "namespace/team-a created\n"
    );
    assert!(cluster.ok(&["get", "ns"]).contains("\nteam-a "));
    let started = Instant::now();
    assert_eq!(
        cluster.ok(&["delete", "ns", "team-a"]),
        "namespace \"team-a\" deleted\n"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_gone(&cluster, &["get", "ns", "team-a"]);
}

#[test]
fn create_namespace_twice_is_an_error() {
    let cluster = Cluster::start();
    assert_eq!(
        cluster.ok(&["create", "namespace", "dev"]),
        "namespace/dev created\n"
    );
    let error = cluster.fails(&["create", "namespace", "dev"], None);
    assert_eq!(
        error,
        "Error from server (AlreadyExists): namespaces \"dev\" already exists"
    );
}

#[test]
fn bad_input_is_one_line_naming_the_field_and_changes_nothing() {
    let cluster = Cluster::start();
    let app = cluster.manifest("app.yaml", APP);
    cluster.ok(&["apply", "-f", &app]);
    // What apply controls: specs, labels and annotations (not status, which controllers write).
    let snapshot = || {
        let list = cluster.json(&["get", "deploy,svc", "-o", "json"]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["spec"].clone(),
                    o["metadata"]["labels"].clone(),
                    o["metadata"]["annotations"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    // The Deployment controller annotates the Deployment with its revision right after the
    // apply; wait for that, so the snapshot only moves if the bad commands below move it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.json(&["get", "deploy", "web", "-o", "json"])["metadata"]["annotations"]
        ["deployment.kubernetes.io/revision"]
        .is_null()
    {
        assert!(Instant::now() < deadline, "the Deployment controller never annotated web");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = snapshot();

    // Rejected by the server: a field that cannot change.
    let immutable = APP.replace(
        "kind: Service\nmetadata:\n  name: web\nspec:\n",
        "kind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.7.7\n",
    );
    let immutable = cluster.manifest("immutable.yaml", &immutable);
    let error = cluster.fails(&["apply", "-f", &immutable], None);
    assert!(
        error.starts_with(&format!(
            "Error from server (Invalid): error when patching {immutable:?}: Service \"web\" is invalid: "
        )),
        "{error}"
    );
    assert!(error.contains("spec.clusterIP: Invalid value"), "{error}");
    // Rejected by the server: an invalid name.
    let bad_name = cluster.manifest(
        "bad-name.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    );
    let error = cluster.fails(&["apply", "-f", &bad_name], None);
    assert!(
        error.contains("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"),
        "{error}"
    );
    assert!(
        error.starts_with("Error from server (Invalid): "),
        "{error}"
    );

    // Rejected here, before anything is sent: the first document's change is not applied.
    let missing_name = format!(
        "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {{a: b}}\n",
        APP.replace("replicas: 2", "replicas: 7")
    );
    let missing_name = cluster.manifest("missing-name.yaml", &missing_name);
    let error = cluster.fails(&["apply", "-f", &missing_name], None);
    assert_eq!(
        error,
        format!("error: file {missing_name}, document 5: metadata.name is required")
    );
    let error = cluster.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Gizmo\nmetadata: {name: g}\n"),
    );
    assert_eq!(
        error,
        "error: file -, document 1: no matches for kind \"Gizmo\" in version \"v1\""
    );
    let error = cluster.fails(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: [\n"));
    assert!(
        error.starts_with("error: file -, document 1: invalid YAML: "),
        "{error}"
    );
    let error = cluster.fails(&["apply", "-f", "/nonexistent/app.yaml"], None);
    assert!(
        error.starts_with("error: reading /nonexistent/app.yaml: "),
        "{error}"
    );
    let error = cluster.fails(&["get", "gizmos"], None);
    assert_eq!(
        error,
        "error: the server doesn't have a resource type \"gizmos\""
    );
    let error = cluster.fails(&["get", "deploy", "-o", "toml"], None);
    assert!(error.starts_with("error: invalid value 'toml'"), "{error}");

    assert_eq!(before, snapshot(), "nothing changed");
}

#[test]
fn a_missing_kubeconfig_is_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "get", "ns"])
        // One line even where backtraces are asked for.
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: reading kubeconfig /nonexistent/kubeconfig: No such file or directory (os error 2)\n"
    );
}

#[test]
fn status_without_a_cluster_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apiary"))
        .args(["status", "--data-dir"])
        .arg(dir.path())
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: no cluster started from {0} (no {0}/cluster.json)\n",
            dir.path().display()
        )
    );
}

#[test]
fn label_annotate_and_scale_like_kubectl() {
    let cluster = Cluster::start();
    let app = cluster.manifest("app.yaml", APP);
    cluster.ok(&["apply", "-f", &app]);

    assert_eq!(
        cluster.ok(&["label", "svc", "web", "team=a"]),
        "service/web labeled\n"
    );
    let out = cluster.fails(&["label", "svc", "web", "team=b"], None);
    assert!(
        out.contains("'team' already has a value (a), and --overwrite is false"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    cluster.ok(&["label", "svc", "web", "team=b", "--overwrite"]);
    let svc = cluster.json(&["get", "svc", "web", "-o", "json"]);
    assert_eq!(svc["metadata"]["labels"]["team"], "b");
    cluster.ok(&["label", "svc/web", "team-"]);
    let svc = cluster.json(&["get", "svc", "web", "-o", "json"]);
    assert!(svc["metadata"]["labels"].get("team").is_none(), "{svc}");

    assert_eq!(
        cluster.ok(&["annotate", "deploy", "web", "owner=team-a"]),
        "deployment.apps/web annotated\n"
    );
    let deploy = cluster.json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(deploy["metadata"]["annotations"]["owner"], "team-a");

    assert_eq!(
        cluster.ok(&["scale", "deploy", "web", "--replicas", "4"]),
        "deployment.apps/web scaled\n"
    );
    let deploy = cluster.json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(deploy["spec"]["replicas"], 4);
    let out = cluster.fails(&["scale", "svc", "web", "--replicas", "2"], None);
    assert_eq!(out.lines().count(), 1, "{out}");
}
