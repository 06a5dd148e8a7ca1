//! `/livez` and `/readyz` tell the truth: with etcd unreachable they fail as kube-apiserver's
//! do (500, every check listed, `[-]etcd failed: reason withheld`), `?exclude` and single checks
//! work, and they pass again once etcd answers.

use crate::support;

use std::time::Duration;

use support::{ControlPlane, wait_for};

/// Status and body of a GET of `path`: anonymous (system:public-info-viewer may read the
/// endpoints, not their single checks, as in Kubernetes), or as the admin for `/…z/NAME`.
fn get(cp: &ControlPlane, path: &str) -> (u16, String) {
    let admin = path.matches('/').count() > 1;
    let client = cp.https_client();
    let url = format!("https://{}{path}", cp.server_addr());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = client.get(url).timeout(Duration::from_secs(30));
        if admin {
            request = request.bearer_auth(cp.token());
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    })
}

#[test]
fn livez_and_readyz_fail_while_etcd_is_unreachable_and_pass_again_after() {
    let cp = ControlPlane::start_on_etcd();
    assert_eq!(get(&cp, "/readyz"), (200, "ok".to_owned()));
    assert_eq!(get(&cp, "/livez"), (200, "ok".to_owned()));
    assert_eq!(
        get(&cp, "/readyz?verbose"),
        (
            200,
            "[+]ping ok\n[+]log ok\n[+]etcd ok\n[+]etcd-readiness ok\nreadyz check passed\n"
                .to_owned()
        )
    );
    assert_eq!(get(&cp, "/readyz/etcd"), (200, "ok".to_owned()));
    assert_eq!(get(&cp, "/readyz/nonsense").0, 404);
    // Anonymous callers get the endpoints, not the checks one by one.
    let anonymous = cp.https_client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        anonymous
            .get(format!("https://{}/readyz/etcd", cp.server_addr()))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 403);

    cp.etcd().pause();
    let (status, body) = get(&cp, "/readyz");
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        body,
        "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[-]etcd-readiness failed: reason withheld\nreadyz check failed\n"
    );
    let (status, body) = get(&cp, "/livez");
    assert_eq!(status, 500, "{body}");
    assert!(
        body.ends_with("[-]etcd failed: reason withheld\nlivez check failed\n"),
        "{body}"
    );
    assert_eq!(
        get(&cp, "/livez/etcd"),
        (500, "internal server error: reason withheld\n".to_owned())
    );
    // What an operator excludes is not checked.
    assert_eq!(
        get(&cp, "/readyz?exclude=etcd&exclude=etcd-readiness"),
        (200, "ok".to_owned())
    );

    cp.etcd().resume();
    wait_for("readyz to pass again", Duration::from_secs(30), || {
        (get(&cp, "/readyz").0 == 200).then_some(())
    });
    assert_eq!(get(&cp, "/livez"), (200, "ok".to_owned()));
    cp.kubectl(&["get", "pods"]).success();
}

/// A ConfigMap of `bytes` bytes of data, as a file for `kubectl create -f`.
fn big_config_map(cp: &ControlPlane, name: &str, bytes: usize) -> String {
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"k": "x".repeat(bytes)},
    });
    let path = cp.data_path().join(format!("{name}.json"));
    std::fs::write(&path, object.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn etcd_refusing_a_write_is_kubernetes_error_not_unavailable() {
    // etcd takes requests up to 512 KiB here, and holds 16 MiB in all.
    let cp = ControlPlane::start_on_etcd_with(&[
        "--max-request-bytes",
        "524288",
        "--quota-backend-bytes",
        "16777216",
    ]);
    // Valid for the API server (a ConfigMap may hold 1 MiB), over etcd's limit: etcd's words,
    // as kube-apiserver passes them on (500, no reason), not a 503 a client would retry.
    let file = big_config_map(&cp, "too-big", 768 * 1024);
    let out = cp.kubectl(&["create", "-f", &file]).failure();
    assert!(
        out.starts_with("Error from server: error when creating")
            && out
                .trim_end()
                .ends_with(": etcdserver: request is too large"),
        "{out}"
    );
    // Filling the quota: once etcd raises its alarm, writes fail with its words too...
    let mut refused = None;
    for i in 0..128 {
        let file = big_config_map(&cp, &format!("fill-{i}"), 400 * 1024);
        let (ok, out) = cp.kubectl(&["create", "-f", &file]).outcome();
        if !ok {
            refused = Some(out);
            break;
        }
    }
    let refused = refused.expect("a 16 MiB quota fills up");
    assert!(
        refused.starts_with("Error from server: error when creating")
            && refused
                .trim_end()
                .ends_with(": etcdserver: mvcc: database space exceeded"),
        "{refused}"
    );
    // ...while reads go on.
    let names = cp.kubectl(&["get", "configmaps", "-o", "name"]).success();
    assert!(names.contains("configmap/fill-0"), "{names}");
}
