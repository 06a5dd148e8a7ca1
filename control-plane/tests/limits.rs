//! Limits hold from the client's side: an oversized request body or a patch that would blow an
//! object up is refused with Kubernetes' Status, nothing is stored, and the server still answers.

mod support;

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
