//! End-to-end: what the real `kubectl` reads from `/openapi/v2` and `/openapi/v3` — `explain`
//! (v3), client-side validation of a `kind: List` (v2, protobuf), and strategic merge patches
//! computed from the served patch extensions — and the documents' caching headers.

use crate::support;

use std::io::Write as _;
use std::process::{Command, Stdio};

use support::ControlPlane;

const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings, namespace: default}
  data: {mode: fast}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: default}
  spec:
    replicas: 1
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec:
        containers: [{name: web, image: localhost/busybox:latest}]
"#;

#[test]
fn explain_reads_the_schemas_of_built_in_kinds() {
    let cp = ControlPlane::start();
    let pod_spec = cp.kubectl(&["explain", "pod.spec"]).success();
    assert!(pod_spec.contains("KIND:       Pod"), "{pod_spec}");
    assert!(pod_spec.contains("FIELD: spec <PodSpec>"), "{pod_spec}");
    assert!(
        pod_spec.contains("containers\t<[]Container> -required-"),
        "{pod_spec}"
    );

    let strategy = cp
        .kubectl(&["explain", "deployment.spec.strategy"])
        .success();
    assert!(strategy.contains("GROUP:      apps"), "{strategy}");
    assert!(
        strategy.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{strategy}"
    );
    assert!(strategy.contains("type\t<string>"), "{strategy}");

    let recursive = cp
        .kubectl(&["explain", "deployment", "--recursive"])
        .success();
    assert!(recursive.contains("maxSurge\t<IntOrString>"), "{recursive}");
    // Kubernetes never marks metadata required.
    assert!(
        recursive.contains("metadata\t<ObjectMeta>\n"),
        "{recursive}"
    );

    // The explain of kubectl before 1.27 reads v2.
    let v2 = cp
        .kubectl(&[
            "explain",
            "deployment.spec.strategy",
            "--output=plaintext-openapiv2",
        ])
        .success();
    assert!(v2.contains("RESOURCE: strategy <Object>"), "{v2}");
    assert!(v2.contains("rollingUpdate\t<Object>"), "{v2}");

    let identity = cp
        .kubectl(&["explain", "securityidentity.labels"])
        .success();
    assert!(identity.contains("GROUP:      apiary.dev"), "{identity}");
}

#[test]
fn apply_of_a_list_validates_its_items_against_openapi_v2() {
    let cp = ControlPlane::start();
    let applied = cp.kubectl_stdin(&["apply", "-f", "-"], LIST).success();
    assert!(applied.contains("configmap/settings created"), "{applied}");
    assert!(applied.contains("deployment.apps/web created"), "{applied}");

    // A second apply patches (strategic merge, from the served patch extensions).
    let scaled = LIST.replace("replicas: 1", "replicas: 2");
    let reapplied = cp.kubectl_stdin(&["apply", "-f", "-"], &scaled).success();
    assert!(
        reapplied.contains("deployment.apps/web configured"),
        "{reapplied}"
    );
    let replicas = cp
        .kubectl(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .success();
    assert_eq!(replicas, "2");

    // What `kubectl get -o yaml` writes (a List, with status and server-set metadata) passes
    // the same validation.
    let listed = cp
        .kubectl(&[
            "get",
            "namespaces,serviceaccounts,configmaps,services,deployments,replicasets,pods,roles,clusterroles",
            "-A",
            "-o",
            "yaml",
        ])
        .success();
    assert!(listed.starts_with("apiVersion: v1\nitems:"), "{listed}");
    cp.kubectl_stdin(&["apply", "--dry-run=client", "-f", "-"], &listed)
        .success();

    // An unknown field fails validation on the client, before anything is written.
    let typo = LIST
        .replace("replicas: 1", "replicasx: 1")
        .replace("settings", "other");
    for validate in ["--validate=strict", "--validate=true"] {
        let error = cp
            .kubectl_stdin(&["apply", validate, "-f", "-"], &typo)
            .failure();
        assert!(
            error.contains(
                r#"ValidationError(Deployment.spec): unknown field "replicasx" in io.k8s.api.apps.v1.DeploymentSpec"#
            ),
            "{error}"
        );
    }
    let error = cp.kubectl_stdin(&["create", "-f", "-"], &typo).failure();
    assert!(error.contains(r#"unknown field "replicasx""#), "{error}");
    assert!(!cp.kubectl(&["get", "configmap", "other"]).ok());
}

/// kubectl's stderr at `-v=6` (each request's method, URL and status) for `args`.
fn requests_of(cp: &ControlPlane, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(args)
        .arg("-v=6")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn strict_apply_of_one_object_leaves_validation_to_the_server() {
    let cp = ControlPlane::start();
    let deployment = LIST
        .split("- apiVersion: apps/v1")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let deployment = format!("apiVersion: apps/v1{deployment}");
    let log = requests_of(&cp, &["apply", "--validate=strict", "-f", "-"], &deployment);
    // The v3 document says PATCH takes `fieldValidation`, so kubectl asks the server to
    // validate instead of fetching v2 and validating itself.
    assert!(log.contains("/openapi/v3/apis/apps/v1?hash="), "{log}");
    assert!(!log.contains("/openapi/v2"), "{log}");
    assert!(
        log.contains("deployments?fieldManager=kubectl-client-side-apply&fieldValidation=Strict"),
        "{log}"
    );
}

#[test]
fn strict_apply_of_an_unknown_field_fails_naming_it() {
    let cp = ControlPlane::start();
    let typo = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: typo, namespace: default}
spec:
  replicasx: 1
  selector: {matchLabels: {app: typo}}
  template:
    metadata: {labels: {app: typo}}
    spec:
      containers: [{name: web, image: localhost/busybox:latest}]
"#;
    let error = cp
        .kubectl_stdin(&["apply", "--validate=strict", "-f", "-"], typo)
        .failure();
    assert!(
        error.contains(r#"unknown field "spec.replicasx""#),
        "{error}"
    );
}

#[tokio::test]
async fn documents_carry_etags_and_hashed_urls_are_immutable() {
    let cp = ControlPlane::start();
    let base = format!("https://{}", cp.server_addr());
    let client = cp.https_client();
    let token = cp.token();
    let get = |path: String| client.get(format!("{base}{path}")).bearer_auth(&token);

    let index: serde_json::Value = get("/openapi/v3".to_owned())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = url.split("?hash=").nth(1).unwrap().to_owned();

    let document = get(url.clone()).send().await.unwrap();
    assert_eq!(document.status(), 200);
    assert_eq!(document.headers()["cache-control"], "public, immutable");
    let etag = document.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{hash}\""));

    let revalidated = get("/openapi/v3/apis/apps/v1".to_owned())
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);

    let v2 = get("/openapi/v2".to_owned())
        .header(
            "Accept",
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), 200);
    assert_eq!(
        v2.headers()["content-type"],
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    );
    let v2_json: serde_json::Value = get("/openapi/v2".to_owned())
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v2_json["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"],
        "name"
    );
}

#[tokio::test]
async fn duplicate_fields_are_reported_as_field_validation_says() {
    let cp = ControlPlane::start();
    let client = cp.https_client();
    let token = cp.token();
    let body = r#"{"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "first", "name": "twice"}, "data": {"k": "1", "k": "2"}}"#;
    let post = |validation: &str| {
        client
            .post(format!(
                "https://{}/api/v1/namespaces/default/configmaps?fieldManager=test&fieldValidation={validation}",
                cp.server_addr()
            ))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let strict = post("Strict").await.unwrap();
    assert_eq!(strict.status(), 400);
    let status: serde_json::Value = strict.json().await.unwrap();
    assert_eq!(
        status["message"],
        r#"strict decoding error: duplicate field "metadata.name", duplicate field "data.k""#
    );
    assert!(
        cp.kubectl(&["get", "configmap", "twice"])
            .failure()
            .contains("NotFound")
    );

    // Warn (the default): the last value counts, and each duplicate is a warning.
    let warned = post("Warn").await.unwrap();
    assert_eq!(warned.status(), 201);
    let warnings: Vec<String> = warned
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        warnings,
        [
            r#"299 - "duplicate field \"metadata.name\"""#,
            r#"299 - "duplicate field \"data.k\"""#
        ]
    );
    let stored = cp.kubectl_json(&["get", "configmap", "twice", "-o", "json"]);
    assert_eq!(stored["data"]["k"], "2");
    cp.kubectl(&["delete", "configmap", "twice"]).success();
    let ignored = post("Ignore").await.unwrap();
    assert_eq!(ignored.status(), 201);
    assert!(ignored.headers().get("warning").is_none());
}
