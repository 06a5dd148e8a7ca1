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
