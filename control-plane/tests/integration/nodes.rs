//! Per-node credentials against a started control plane: a bootstrap token gets a node its own
//! client certificate (CSR auto-approved and signed), the node is then `system:node:<name>`
//! (`kubectl auth whoami`), the Node authorizer lets it read only what its pods reference
//! (another node's pod's Secret: 403 with Kubernetes' message), NodeRestriction keeps its
//! writes to its own objects, the agent channel refuses it for other nodes and refuses
//! non-nodes, and an expired bootstrap token authenticates nothing.

use crate::support;

use std::{path::Path, process::Command, time::Duration};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{ControlPlane, wait_for};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Creates bootstrap token `id.secret` expiring at `expires` (RFC 3339).
fn create_token(cp: &ControlPlane, id: &str, secret: &str, expires: &str) -> String {
    let object = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": {
            "token-id": b64(id), "token-secret": b64(secret), "expiration": b64(expires),
            "usage-bootstrap-authentication": b64("true"), "usage-bootstrap-signing": b64("true"),
        },
    });
    cp.kubectl_stdin(&["create", "-f", "-"], &object.to_string())
        .success();
    format!("{id}.{secret}")
}

/// A kubeconfig for the test cluster with `user`.
fn kubeconfig(cp: &ControlPlane, file: &str, user: Value) -> std::path::PathBuf {
    let mut config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    config["users"][0]["user"] = user;
    let path = cp.data_path().join(file);
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn in_an_hour() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs the agent's TLS bootstrap for `node` with `token`: its node kubeconfig.
fn bootstrap_node(cp: &ControlPlane, node: &str, token: &str) -> std::path::PathBuf {
    let bootstrap = kubeconfig(
        cp,
        &format!("{node}-bootstrap.kubeconfig"),
        json!({"token": token}),
    );
    let node_kubeconfig = cp.data_path().join(format!("{node}.kubeconfig"));
    let pki = cp.data_path().join(format!("{node}-pki"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    runtime
        .block_on(apiary_node_agent::agent::client_certificate::ensure(
            &node_kubeconfig,
            Some(&bootstrap),
            &pki,
            node,
        ))
        .unwrap();
    eprintln!(
        "TLS bootstrap of {node} (CSR created, approved, signed, written): {:?}",
        started.elapsed()
    );
    node_kubeconfig
}

#[test]
fn a_bootstrap_token_gets_a_node_its_own_identity_which_reads_only_its_pods_objects() {
    let cp = ControlPlane::start();
    let token = create_token(&cp, "abcdef", "0123456789abcdef", &in_an_hour());
    let bootstrap = kubeconfig(&cp, "bootstrap.kubeconfig", json!({"token": token}));
    let (ok, whoami) = kubectl_as(&bootstrap, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{whoami}");
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(
        whoami["status"]["userInfo"]["username"],
        "system:bootstrap:abcdef"
    );
    // A bootstrap token can ask for a certificate, and nothing more.
    let (ok, refused) = kubectl_as(&bootstrap, &["get", "pods", "-A"]);
    assert!(!ok && refused.contains("forbidden"), "{refused}");

    let n1 = bootstrap_node(&cp, "n1", &token);
    let (ok, whoami) = kubectl_as(&n1, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{whoami}");
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["status"]["userInfo"]["username"], "system:node:n1");
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        json!(["system:nodes", "system:authenticated"])
    );
    let csrs = cp.kubectl(&["get", "csr"]).success();
    let row = csrs.lines().find(|l| l.starts_with("node-csr-")).unwrap();
    assert!(
        row.contains("kubernetes.io/kube-apiserver-client-kubelet"),
        "{row}"
    );
    assert!(row.contains("system:bootstrap:abcdef"), "{row}");
    assert!(row.contains("Approved,Issued"), "{row}");
    let n2 = bootstrap_node(&cp, "n2", &token);

    // One pod on each node, each with its Secret.
    for node in ["n1", "n2"] {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{node}-secret"), "namespace": "default"},
            "stringData": {"k": "v"}});
        cp.kubectl_stdin(&["create", "-f", "-"], &secret.to_string())
            .success();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{node}-pod"), "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "s", "secret": {"secretName": format!("{node}-secret")}}]}});
        cp.kubectl_stdin(&["create", "-f", "-"], &pod.to_string())
            .success();
    }
    wait_for(
        "n1 may read its pod's Secret",
        Duration::from_secs(10),
        || {
            kubectl_as(&n1, &["get", "secret", "n1-secret"])
                .0
                .then_some(())
        },
    );
    let (ok, refused) = kubectl_as(&n1, &["get", "secret", "n2-secret"]);
    assert!(!ok);
    assert!(
        refused.contains(
            "secrets \"n2-secret\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"
        ),
        "{refused}"
    );
    assert!(kubectl_as(&n2, &["get", "secret", "n2-secret"]).0);
    let (ok, refused) = kubectl_as(&n1, &["get", "secrets"]);
    assert!(
        !ok && refused.contains("can only get individual resources of this type"),
        "{refused}"
    );
    // What the kubelet reads, it reads.
    assert!(kubectl_as(&n1, &["get", "pods", "-A"]).0);
    assert!(kubectl_as(&n1, &["get", "services", "-A"]).0);
    // NodeRestriction: not another node's pods, not ordinary pods, not cluster objects.
    let (ok, refused) = kubectl_as(&n1, &["delete", "pod", "n2-pod", "--wait=false"]);
    assert!(
        !ok && refused.contains("can only delete pods with spec.nodeName set to itself"),
        "{refused}"
    );
    let plain = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sneaky", "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
    let path = cp.data_path().join("sneaky.json");
    std::fs::write(&path, plain.to_string()).unwrap();
    let (ok, refused) = kubectl_as(&n1, &["create", "-f", path.to_str().unwrap()]);
    assert!(
        !ok && refused.contains("can only create mirror pods"),
        "{refused}"
    );
    let (ok, refused) = kubectl_as(&n1, &["create", "namespace", "mine"]);
    assert!(!ok && refused.contains("forbidden"), "{refused}");
    let (ok, refused) = kubectl_as(&n1, &["auth", "can-i", "create", "clusterrolebindings"]);
    assert!(
        !ok && refused.lines().any(|l| l.trim() == "no"),
        "{refused}"
    );
    // The renewal path: the node asking for its own identity again is approved too.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = apiary_node_agent::kubeconfig::Endpoint::from_kubeconfig(&n1).unwrap();
    let api = apiary_node_agent::api_client::ApiClient::new(&endpoint).unwrap();
    let renewed = runtime
        .block_on(apiary_node_agent::certificates::request_certificate(
            &api,
            "node-csr",
            &apiary_node_agent::certificates::Wanted::node_client("n1"),
            Duration::from_secs(20),
        ))
        .unwrap();
    assert!(renewed.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    // But not another node's.
    let stolen = runtime.block_on(apiary_node_agent::certificates::request_certificate(
        &api,
        "node-csr",
        &apiary_node_agent::certificates::Wanted::node_client("n2"),
        Duration::from_secs(3),
    ));
    assert!(stolen.is_err(), "n1 got n2's identity");
}

#[test]
fn a_node_gets_a_serving_certificate_for_its_own_names_only() {
    use apiary_node_agent::certificates::{Wanted, request_certificate};
    let cp = ControlPlane::start();
    let token = create_token(&cp, "srvtok", "0123456789abcdef", &in_an_hour());
    let n1 = bootstrap_node(&cp, "n1", &token);
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}).to_string(),
    )
    .success();
    cp.kubectl(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.5"},{"type":"Hostname","address":"n1"}]}}"#,
    ])
    .success();
    let endpoint = apiary_node_agent::kubeconfig::Endpoint::from_kubeconfig(&n1).unwrap();
    let api = apiary_node_agent::api_client::ApiClient::new(&endpoint).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let own = Wanted::node_serving("n1", vec!["n1".into()], vec!["127.0.0.5".parse().unwrap()]);
    let issued = runtime
        .block_on(request_certificate(
            &api,
            "serving",
            &own,
            Duration::from_secs(20),
        ))
        .unwrap();
    assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    // A name that is not the node's is left for an operator: no automatic approval.
    let foreign = Wanted::node_serving(
        "n1",
        vec!["n1".into(), "kubernetes.default.svc".into()],
        vec!["127.0.0.5".parse().unwrap()],
    );
    let pending = runtime.block_on(request_certificate(
        &api,
        "serving",
        &foreign,
        Duration::from_secs(3),
    ));
    assert!(pending.unwrap_err().to_string().contains("was not signed"));
    let table = cp.kubectl(&["get", "csr"]).success();
    assert!(
        table
            .lines()
            .any(|l| l.contains("kubernetes.io/kubelet-serving")
                && l.trim_end().ends_with("Pending")),
        "{table}"
    );
}

#[test]
fn the_agent_channel_is_for_nodes_each_for_itself() {
    use apiary_agent_api::{
        Credential,
        v1::{RegisterRequest, WatchPodsRequest},
    };
    let cp = ControlPlane::start();
    let token = create_token(&cp, "qwerty", "0123456789abcdef", &in_an_hour());
    let n1 = bootstrap_node(&cp, "n1", &token);
    let endpoint = apiary_node_agent::kubeconfig::Endpoint::from_kubeconfig(&n1).unwrap();
    let files = endpoint.client_certificate.clone().unwrap();
    let pem = std::fs::read_to_string(&files.cert).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let credential = Credential::Certificate {
            cert_pem: &pem,
            key_pem: &pem,
        };
        let mut client =
            apiary_agent_api::connect_as(&endpoint.server, &endpoint.ca_pem, credential)
                .await
                .unwrap();
        let own = client
            .watch_pods(WatchPodsRequest {
                node_name: "n1".into(),
            })
            .await;
        assert!(own.is_ok(), "{own:?}");
        let other = client
            .watch_pods(WatchPodsRequest {
                node_name: "n2".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
        let register = |name: &str, labels: Value| RegisterRequest {
            node_json: serde_json::to_vec(&json!({"metadata": {"name": name, "labels": labels}}))
                .unwrap(),
        };
        let plain = json!({"kubernetes.io/hostname": "n1"});
        client
            .register(register("n1", plain.clone()))
            .await
            .unwrap();
        let refused = client.register(register("n2", plain)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let steering = json!({"node-restriction.kubernetes.io/trusted": "yes"});
        let refused = client.register(register("n1", steering)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("not allowed to modify the following labels"),
            "{refused:?}"
        );
        // A bootstrap token is no node.
        let mut bootstrapper =
            apiary_agent_api::connect(&endpoint.server, &endpoint.ca_pem, &token)
                .await
                .unwrap();
        let refused = bootstrapper
            .watch_pods(WatchPodsRequest {
                node_name: "n1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    });
}

#[test]
fn an_expired_bootstrap_token_authenticates_nothing_and_is_cleaned_up() {
    let cp = ControlPlane::start();
    let expired = (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let token = create_token(&cp, "zzzzzz", "0123456789abcdef", &expired);
    let config = kubeconfig(&cp, "expired.kubeconfig", json!({"token": token}));
    let (ok, refused) = kubectl_as(&config, &["auth", "whoami"]);
    assert!(!ok && refused.contains("Unauthorized"), "{refused}");
    // The token cleaner deletes its Secret.
    wait_for(
        "the expired token's Secret to go",
        Duration::from_secs(20),
        || {
            (!cp.kubectl(&[
                "get",
                "secret",
                "-n",
                "kube-system",
                "bootstrap-token-zzzzzz",
            ])
            .ok())
            .then_some(())
        },
    );
    // cluster-info is readable without credentials, and signed for live tokens only.
    let live = create_token(&cp, "livexx", "0123456789abcdef", &in_an_hour());
    let info = wait_for(
        "cluster-info signed for the live token",
        Duration::from_secs(20),
        || {
            let (code, info) = anonymous_get(
                &cp,
                "/api/v1/namespaces/kube-public/configmaps/cluster-info",
            );
            (code == 200 && info["data"]["jws-kubeconfig-livexx"].is_string()).then_some(info)
        },
    );
    assert!(info["data"]["jws-kubeconfig-zzzzzz"].is_null());
    let kubeconfig_text = info["data"]["kubeconfig"].as_str().unwrap();
    assert!(apiary_api::bootstrap_token::verify_detached(
        kubeconfig_text,
        info["data"]["jws-kubeconfig-livexx"].as_str().unwrap(),
        &live
    ));
    // Anonymous may read that one ConfigMap only.
    let (code, refused) = anonymous_get(&cp, "/api/v1/namespaces/kube-public/configmaps");
    assert_eq!(code, 403, "{refused}");
    let (code, _) = anonymous_get(
        &cp,
        "/api/v1/namespaces/kube-system/secrets/bootstrap-token-livexx",
    );
    assert_eq!(code, 403);
}

/// GET `path` without credentials: the status and the body.
fn anonymous_get(cp: &ControlPlane, path: &str) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(cp.data_path().join("pki/ca.crt")).unwrap();
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let response = client.get(format!("{server}{path}")).send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap_or(Value::Null))
    })
}
