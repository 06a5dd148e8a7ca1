//! `dryRun=All` on every write verb, through the real kubectl (`--dry-run=server`, `kubectl
//! diff`) and raw requests: the answer is what would be stored, and nothing is.

use crate::support;

use support::ControlPlane;

const CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: fast}
"#;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: localhost/busybox:latest}
"#;

fn absent(cp: &ControlPlane, what: &[&str]) -> bool {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    cp.kubectl(&args).failure().contains("NotFound")
}

#[test]
fn a_dry_run_create_answers_the_object_and_stores_nothing() {
    let cp = ControlPlane::start();
    let answer: serde_json::Value = serde_json::from_str(
        &cp.kubectl_stdin(
            &["create", "-f", "-", "--dry-run=server", "-o", "json"],
            CONFIG,
        )
        .success(),
    )
    .unwrap();
    assert_eq!(answer["data"]["mode"], "fast");
    // Defaulted and given its identity as a real create would, but never stored.
    assert!(answer["metadata"]["uid"].is_string(), "{answer}");
    assert!(answer["metadata"]["creationTimestamp"].is_string());
    assert!(answer["metadata"].get("resourceVersion").is_none());
    assert!(absent(&cp, &["configmap", "settings"]));

    // Validation and admission still run: an invalid object is refused in a dry run too.
    let bad = CONFIG.replace("name: settings", "name: Not_A_Name");
    let out = cp
        .kubectl_stdin(&["create", "-f", "-", "--dry-run=server"], &bad)
        .failure();
    assert!(out.contains("Invalid value"), "{out}");

    // A name already taken is reported, as a real create would.
    cp.kubectl_stdin(&["create", "-f", "-"], CONFIG).success();
    let out = cp
        .kubectl_stdin(&["create", "-f", "-", "--dry-run=server"], CONFIG)
        .failure();
    assert!(out.contains("AlreadyExists"), "{out}");
}

#[test]
fn dry_run_updates_patches_and_deletes_change_nothing() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], DEPLOYMENT)
        .success();
    // The deployment controller writes status meanwhile: what is compared is what a dry run
    // could have changed.
    let written = |cp: &ControlPlane| {
        let mut object = cp.kubectl_json(&["get", "deployment", "web", "-o", "json"]);
        object["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        (object["metadata"].clone(), object["spec"].clone())
    };
    // The controller marks the deployment's first revision: wait for it before comparing.
    let mut before = written(&cp);
    for _ in 0..100 {
        if before.0["annotations"]["deployment.kubernetes.io/revision"].is_string() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        before = written(&cp);
    }

    let scaled = DEPLOYMENT.replace("replicas: 2", "replicas: 5");
    let answer: serde_json::Value = serde_json::from_str(
        &cp.kubectl_stdin(
            &["apply", "-f", "-", "--dry-run=server", "-o", "json"],
            &scaled,
        )
        .success(),
    )
    .unwrap();
    assert_eq!(answer["spec"]["replicas"], 5);
    assert_eq!(answer["metadata"]["generation"], 2, "{answer}");

    let answer = cp.kubectl_json(&[
        "patch",
        "deployment",
        "web",
        "--dry-run=server",
        "-o",
        "json",
        "-p",
        r#"{"metadata":{"labels":{"tier":"front"}}}"#,
    ]);
    assert_eq!(answer["metadata"]["labels"]["tier"], "front");
    let out = cp
        .kubectl(&[
            "scale",
            "deployment",
            "web",
            "--replicas=7",
            "--dry-run=server",
        ])
        .success();
    assert!(out.contains("scaled"), "{out}");

    // `kubectl diff` asks the server what an apply would change: exit 1 and the change shown.
    let out = cp.kubectl_stdin(&["diff", "-f", "-"], &scaled).failure();
    assert!(
        out.contains("-  replicas: 2") && out.contains("+  replicas: 5"),
        "{out}"
    );

    let out = cp
        .kubectl(&["delete", "deployment", "web", "--dry-run=server"])
        .success();
    assert!(out.contains("(server dry run)"), "{out}");

    assert_eq!(written(&cp), before, "nothing was written");
}

#[test]
fn a_dry_run_service_reserves_no_address() {
    let cp = ControlPlane::start();
    let service = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.7.7
  selector: {app: web}
  ports:
  - {port: 80, nodePort: 30777}
"#;
    let answer: serde_json::Value = serde_json::from_str(
        &cp.kubectl_stdin(
            &["create", "-f", "-", "--dry-run=server", "-o", "json"],
            service,
        )
        .success(),
    )
    .unwrap();
    assert_eq!(answer["spec"]["clusterIP"], "10.96.7.7");
    assert_eq!(answer["spec"]["ports"][0]["nodePort"], 30777);
    // The address and port shown were not kept: another Service gets them for real.
    let other = service.replace("name: web", "name: other");
    cp.kubectl_stdin(&["create", "-f", "-"], &other).success();
    let out = cp
        .kubectl_stdin(&["create", "-f", "-", "--dry-run=server"], service)
        .failure();
    assert!(out.contains("already allocated"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_value_other_than_all_is_refused() {
    let cp = ControlPlane::start();
    let url = format!(
        "https://{}/api/v1/namespaces/default/configmaps?dryRun=Everything",
        cp.server_addr()
    );
    let response = cp
        .https_client()
        .post(url)
        .bearer_auth(cp.token())
        .json(&serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let status: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["kind"], "CreateOptions");
    assert_eq!(
        status["details"]["causes"][0]["field"], "dryRun",
        "{status}"
    );
    assert!(absent(&cp, &["configmap", "x"]));
}
