//! Limits hold from the client's side: an oversized request body or a patch that would blow an
//! object up is refused with Kubernetes' Status, nothing is stored, and the server still answers.

use crate::support;

use support::ControlPlane;

/// kube-apiserver's `MaxRequestBodyBytes`.
const LIMIT: usize = 3 * 1024 * 1024;

/// A ConfigMap's JSON padded with whitespace to exactly `size` bytes: small once decoded, so only
/// the body limit can refuse it.
fn padded_config_map(name: &str, size: usize) -> String {
    let object =
        format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}"#);
    let mut body = object.clone();
    body.push_str(&" ".repeat(size - object.len() - 1));
    body.push('}');
    assert_eq!(body.len(), size);
    body
}

fn create_raw(cp: &ControlPlane, body: &str) -> support::Run {
    // In the control plane's data directory: removed with it.
    let path = cp.data_path().join("body.json");
    std::fs::write(&path, body).unwrap();
    cp.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        path.to_str().unwrap(),
    ])
}

#[test]
fn a_request_body_over_3_mib_gets_413_and_the_server_still_answers() {
    let cp = ControlPlane::start();

    // Over axum's 2 MB default, up to kube-apiserver's limit: accepted.
    create_raw(&cp, &padded_config_map("big", LIMIT)).success();

    let out = create_raw(&cp, &padded_config_map("too-big", LIMIT + 1)).failure();
    assert!(
        out.contains(
            "Error from server (RequestEntityTooLarge): Request entity too large: limit is 3145728"
        ),
        "{out}"
    );
    assert!(!cp.kubectl(&["get", "configmap", "too-big"]).ok());
    // A far larger body is refused the same way, and the server goes on answering.
    let out = create_raw(&cp, &padded_config_map("huge", 4 * LIMIT)).failure();
    assert!(out.contains("limit is 3145728"), "{out}");
    cp.kubectl(&["get", "configmap", "big"]).success();
}

fn create_target(cp: &ControlPlane) {
    let object =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"target"},"data":{"k":"v"}}"#;
    cp.kubectl_stdin(&["create", "-f", "-"], object).success();
}

fn patch_file(cp: &ControlPlane, name: &str, patch: &serde_json::Value) -> support::Run {
    let path = cp.data_path().join("patch.json");
    std::fs::write(&path, patch.to_string()).unwrap();
    cp.kubectl(&[
        "patch",
        "configmap",
        name,
        "--type",
        "json",
        "--patch-file",
        path.to_str().unwrap(),
    ])
}

#[test]
fn a_json_patch_whose_copies_double_the_object_is_refused_not_applied() {
    let cp = ControlPlane::start();
    create_target(&cp);

    // 2 KB, then each copy of the subtree into itself doubles it: 12 copies make 8 MiB (and
    // 40 would make 2 TiB) from a patch of about 3 KB.
    let mut ops = vec![serde_json::json!({
        "op": "add", "path": "/metadata/annotations", "value": {"seed": "x".repeat(2048)},
    })];
    for i in 0..12 {
        ops.push(serde_json::json!({
            "op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/c{i}"),
        }));
    }
    let out = patch_file(&cp, "target", &serde_json::Value::Array(ops)).failure();
    assert!(
        out.contains("Unable to complete the copy, the accumulated size increase of copy is")
            && out.contains("exceeding the limit 3145728"),
        "{out}"
    );
    let stored = cp.kubectl_json(&["get", "configmap", "target", "-o", "json"]);
    assert!(stored["metadata"]["annotations"].is_null(), "{stored}");

    // Copies that stay under the limit still apply.
    let ops = serde_json::json!([
        {"op": "copy", "from": "/data/k", "path": "/data/k2"},
    ]);
    patch_file(&cp, "target", &ops).success();
    let stored = cp.kubectl_json(&["get", "configmap", "target", "-o", "json"]);
    assert_eq!(stored["data"]["k2"], "v");
}

#[test]
fn a_json_patch_of_more_than_10000_operations_gets_413() {
    let cp = ControlPlane::start();
    create_target(&cp);
    let op = serde_json::json!({"op": "test", "path": "/data/k", "value": "v"});
    let out = patch_file(&cp, "target", &serde_json::Value::Array(vec![op; 10_001])).failure();
    assert!(
        out.contains("Error from server (RequestEntityTooLarge): Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"),
        "{out}"
    );
}

/// Regression: an `accept()` error (EMFILE once idle connections hold every descriptor) ended
/// the server's accept loop and with it the control plane.
#[test]
fn running_out_of_file_descriptors_does_not_stop_the_server() {
    let mut cp = ControlPlane::start();
    let addr = cp.server_addr();
    // A limit just above what the server holds now, so that idle connections exhaust it.
    let open = std::fs::read_dir(format!("/proc/{}/fd", cp.pid()))
        .unwrap()
        .count();
    let limit = (open + 16).to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &cp.pid().to_string()])
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());
    // Twice the limit: the server cannot accept them all.
    let idle: Vec<_> = (0..(open + 16) * 2)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!cp.exited(), "the control plane exited on EMFILE");
    drop(idle);
    // The descriptors come back once the idle connections are gone (their handshakes fail).
    let mut answered = false;
    for _ in 0..100 {
        if cp.kubectl(&["get", "--raw", "/readyz"]).ok() {
            answered = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(answered, "the server no longer answers after EMFILE");
    assert!(!cp.exited());
}

#[test]
fn requests_past_the_in_flight_limit_get_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "jane-token,jane,1001\n").unwrap();
    let cp = ControlPlane::start_with(&[
        "--token-auth-file",
        tokens.to_str().unwrap(),
        "--max-requests-inflight",
        "1",
        "--max-mutating-requests-inflight",
        "1",
    ]);
    // jane may do anything through RBAC, but is not in system:masters: her requests count.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: jane-admin\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: jane\n",
    )
    .success();
    let base = format!("https://{}", cp.server_addr());
    let admin = cp.token();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Lists that take a while: ten ConfigMaps of 1 MB.
        let client = cp.https_client();
        for i in 0..10 {
            let object = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("big-{i}")}, "data": {"k": "x".repeat(1_000_000)}});
            let response = client
                .post(format!("{base}/api/v1/namespaces/default/configmaps"))
                .bearer_auth(&admin)
                .json(&object)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        }
        // A watch of jane's holds no slot.
        let watch = cp
            .https_client()
            .get(format!(
                "{base}/api/v1/namespaces/default/configmaps?watch=true"
            ))
            .bearer_auth("jane-token")
            .send()
            .await
            .unwrap();
        assert_eq!(watch.status(), 200);
        let list = |token: String| {
            let (client, url) = (
                cp.https_client(),
                format!("{base}/api/v1/namespaces/default/configmaps"),
            );
            async move {
                let response = client.get(url).bearer_auth(token).send().await.unwrap();
                let code = response.status().as_u16();
                let retry = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (code, retry, response.text().await.unwrap())
            }
        };
        let answers = futures::future::join_all((0..16).map(|_| list("jane-token".into()))).await;
        let refused: Vec<_> = answers.iter().filter(|(code, ..)| *code == 429).collect();
        assert!(
            answers
                .iter()
                .all(|(code, ..)| *code == 200 || *code == 429),
            "{:?}",
            answers.iter().map(|a| a.0).collect::<Vec<_>>()
        );
        assert!(
            !refused.is_empty(),
            "16 lists at once past a limit of 1: none refused"
        );
        assert!(answers.iter().any(|(code, ..)| *code == 200));
        for (_, retry, body) in refused {
            assert_eq!(retry.as_deref(), Some("1"));
            assert_eq!(body, "Too many requests, please try again later.\n");
        }
        // system:masters is never refused.
        let answers = futures::future::join_all((0..16).map(|_| list(admin.clone()))).await;
        assert!(
            answers.iter().all(|(code, ..)| *code == 200),
            "{:?}",
            answers.iter().map(|a| a.0).collect::<Vec<_>>()
        );
        drop(watch);
    });
    // kubectl retries a 429 after its Retry-After: as jane, it gets through.
    let jane = dir.path().join("jane.kubeconfig");
    let mut config: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    config["users"][0]["user"] = serde_json::json!({"token": "jane-token"});
    std::fs::write(&jane, serde_yaml::to_string(&config).unwrap()).unwrap();
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&jane)
        .args(["get", "configmaps", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_yaml_body_whose_aliases_expand_past_the_limit_gets_413() {
    let cp = ControlPlane::start();
    // 200 KB of scalar, aliased 100 times: 20 MB from a body of 200 KB.
    let body = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: laughs\ndata:\n  big: &big \"{}\"\nbinaryData: {{}}\nimmutable: false\nx: [{}]\n",
        "x".repeat(200_000),
        vec!["*big"; 100].join(",")
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let base = format!("https://{}", cp.server_addr());
    let (code, text) = runtime.block_on(async {
        let response = cp
            .https_client()
            .post(format!("{base}/api/v1/namespaces/default/configmaps"))
            .bearer_auth(cp.token())
            .header("content-type", "application/yaml")
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("aliases expand past it"), "{text}");
    assert!(!cp.kubectl(&["get", "configmap", "laughs"]).ok());
    // Modest aliases are YAML as usual.
    let (code, text) = runtime.block_on(async {
        let response = cp.https_client()
            .post(format!("{base}/api/v1/namespaces/default/configmaps"))
            .bearer_auth(cp.token())
            .header("content-type", "application/yaml")
            .body("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: aliased\n  labels: &l {app: web}\n  annotations: *l\n")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    assert_eq!(code, 201, "{text}");
}
