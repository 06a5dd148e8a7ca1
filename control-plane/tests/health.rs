//! `/livez` and `/readyz` tell the truth: with etcd unreachable they fail as kube-apiserver's
//! do (500, every check listed, `[-]etcd failed: reason withheld`), `?exclude` and single checks
//! work, and they pass again once etcd answers.

mod support;

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
