//! Authentication as kube-apiserver does it, through the real kubectl where it sees it: the
//! admin kubeconfig's client certificate, certificates of other users signed by the cluster CA,
//! `--token-auth-file` users, the cluster token, and what is refused (other CAs' certificates,
//! unknown tokens: 401 with Kubernetes' Status, never 200 or 5xx).

use crate::support;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{
    ControlPlane,
    certs::{client_cert, stranger_ca},
};

const TOKEN_FILE: &str = "jane-token,jane,1001,\"dev,ops\"\njoe-token,joe,1002\n";

fn admin_kubeconfig(cp: &ControlPlane) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap()
}

fn server(cp: &ControlPlane) -> String {
    admin_kubeconfig(cp)["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A kubeconfig for the test's control plane with `user` as its credentials.
fn kubeconfig_with(cp: &ControlPlane, dir: &Path, user: Value) -> PathBuf {
    let mut config = admin_kubeconfig(cp);
    config["users"][0]["user"] = user;
    let path = dir.join(format!(
        "kubeconfig-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn b64(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// Status and body of `method path` with `body`, optionally a bearer token and a client
/// identity (certificate and key PEM); `Err` when the connection fails (e.g. the handshake).
fn request(
    cp: &ControlPlane,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    identity: Option<(&str, &str)>,
    body: Option<Value>,
) -> Result<(u16, String), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(cp.data_path().join("pki/ca.crt")).unwrap();
    let url = format!("{}{path}", server(cp));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
        if let Some((cert, key)) = identity {
            builder = builder
                .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        let client = builder.build().unwrap();
        let mut request = client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("{e:?}"))?;
        let code = response.status().as_u16();
        Ok((code, response.text().await.map_err(|e| e.to_string())?))
    })
}

fn unauthorized() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
}

#[test]
fn kubectl_authenticates_with_the_admin_kubeconfigs_certificate() {
    let cp = ControlPlane::start();
    let config = admin_kubeconfig(&cp);
    let user = &config["users"][0]["user"];
    assert!(user["client-certificate-data"].is_string(), "{config:#}");
    assert!(user["client-key-data"].is_string(), "{config:#}");
    assert!(user["token"].is_null(), "{config:#}");

    let out = cp.kubectl(&["auth", "whoami"]).success();
    assert!(out.contains("Username") && out.contains("admin"), "{out}");
    assert!(
        out.contains("[system:masters system:authenticated]"),
        "{out}"
    );
    let review = cp.kubectl_json(&["auth", "whoami", "-o", "json"]);
    assert_eq!(review["kind"], "SelfSubjectReview", "{review}");
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1", "{review}");
    assert_eq!(
        review["status"]["userInfo"],
        json!({"username": "admin", "groups": ["system:masters", "system:authenticated"]})
    );
}

#[test]
fn a_certificate_signed_by_the_cluster_ca_is_its_common_name_in_its_organization() {
    let cp = ControlPlane::start();
    let pki = cp.data_path().join("pki");
    let (cert, key) = client_cert(
        &std::fs::read_to_string(pki.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(pki.join("ca.key")).unwrap(),
        "jane",
        "dev",
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with(
        &cp,
        dir.path(),
        json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}),
    );
    let (ok, out) = kubectl_with(&kubeconfig, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{out}");
    let review: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        review["status"]["userInfo"],
        json!({"username": "jane", "groups": ["dev", "system:authenticated"]})
    );
    // Kubernetes' order: the certificate is tried first, a wrong token beside it is not read.
    let (code, body) = request(
        &cp,
        reqwest::Method::POST,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some("not-a-token"),
        Some((&cert, &key)),
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    assert!(body.contains("\"username\":\"jane\""), "{body}");
}

#[test]
fn a_certificate_signed_by_another_ca_is_refused() {
    let cp = ControlPlane::start();
    let (ca_cert, ca_key) = stranger_ca();
    let (cert, key) = client_cert(&ca_cert, &ca_key, "admin", "system:masters");
    // Presented anyway (rustls sends it whatever CAs the server names): the handshake fails,
    // as Go's VerifyClientCertIfGiven makes it.
    match request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces",
        None,
        Some((&cert, &key)),
        None,
    ) {
        Err(_) => {}
        Ok((code, body)) => assert_eq!(code, 401, "{body}"),
    }
    // kubectl (Go) presents a certificate whose issuer has the name of one the server accepts
    // (the stranger CA is also called apiary-ca): the handshake fails on its signature.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with(
        &cp,
        dir.path(),
        json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}),
    );
    let (ok, out) = kubectl_with(&kubeconfig, &["get", "namespaces"]);
    assert!(!ok, "{out}");
    assert!(out.contains("remote error: tls"), "{out}");
}

#[test]
fn an_invalid_token_is_401_with_kubernetes_status() {
    let cp = ControlPlane::start();
    let (code, body) = request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces",
        Some("not-the-token"),
        None,
        None,
    )
    .unwrap();
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        unauthorized()
    );
    // No credentials at all is not a failed authentication: the request is anonymous, and the
    // default policy does not let system:anonymous list namespaces (as kube-apiserver).
    let (code, body) = request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces",
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(code, 403, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "Forbidden", "{body}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(r#"User "system:anonymous" cannot list resource "namespaces""#),
        "{body}"
    );
    let (code, body) = request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces",
        Some(&cp.token()),
        None,
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    // kubectl with only a wrong token (no certificate).
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with(&cp, dir.path(), json!({"token": "not-the-token"}));
    let (ok, out) = kubectl_with(&kubeconfig, &["get", "pods"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("Unauthorized") || out.contains("provide credentials"),
        "{out}"
    );
}

#[test]
fn token_file_users_are_who_the_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, TOKEN_FILE).unwrap();
    let cp = ControlPlane::start_with(&["--token-auth-file", file.to_str().unwrap()]);

    let jane = kubeconfig_with(&cp, dir.path(), json!({"token": "jane-token"}));
    let (ok, out) = kubectl_with(&jane, &["auth", "whoami"]);
    assert!(ok, "{out}");
    assert!(out.contains("jane"), "{out}");
    assert!(out.contains("1001"), "{out}");
    assert!(out.contains("[dev ops system:authenticated]"), "{out}");

    let joe = kubeconfig_with(&cp, dir.path(), json!({"token": "joe-token"}));
    let (ok, out) = kubectl_with(&joe, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{out}");
    let review: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        review["status"]["userInfo"],
        json!({"username": "joe", "uid": "1002", "groups": ["system:authenticated"]})
    );
}

#[test]
fn a_bad_token_file_stops_the_server_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, "t1,jane,1\nt2,joe\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_apiary-control-plane"))
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--token-auth-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("at least 3 columns"),
        "{stderr}"
    );
}

#[test]
fn token_reviews_say_who_a_token_belongs_to() {
    let cp = ControlPlane::start();
    let review = |token: &str| {
        let manifest = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                              "spec": {"token": token}});
        let out = cp
            .kubectl_stdin(&["create", "-f", "-", "-o", "json"], &manifest.to_string())
            .success();
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let cluster = review(&cp.token());
    assert_eq!(
        cluster["status"],
        json!({
            "authenticated": true,
            "user": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
            "audiences": ["https://kubernetes.default.svc.cluster.local"],
        }),
        "{cluster}"
    );
    // Not an error: a review that says no (Kubernetes leaves `authenticated` out).
    let garbage = review("garbage");
    assert_eq!(garbage["kind"], "TokenReview", "{garbage}");
    assert_eq!(garbage["status"], json!({"user": {}}), "{garbage}");
    // A static token is for this API server's audience only.
    let (code, body) = request(
        &cp,
        reqwest::Method::POST,
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(&cp.token()),
        None,
        Some(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "spec": {"token": cp.token(), "audiences": ["vault"]}}),
        ),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        json!({"user": {}})
    );
    // Reviews are never stored: there is nothing to get.
    let out = cp.kubectl(&["get", "tokenreviews"]).failure();
    assert!(
        out.contains("MethodNotAllowed") || out.contains("not allow"),
        "{out}"
    );
}

#[test]
fn reviews_are_discoverable() {
    let cp = ControlPlane::start();
    let out = cp
        .kubectl(&["api-resources", "--api-group=authentication.k8s.io"])
        .success();
    assert!(out.contains("selfsubjectreviews"), "{out}");
    assert!(out.contains("tokenreviews"), "{out}");
    assert!(out.contains("TokenReview"), "{out}");
}

#[test]
fn keys_tokens_and_kubeconfigs_are_for_their_owner_only() {
    let cp = ControlPlane::start();
    let mode = |path: PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(cp.data_path().to_owned()), 0o700);
    assert_eq!(mode(cp.kubeconfig()), 0o600);
    for file in ["ca.key", "apiserver.key", "admin.key", "admin.token"] {
        assert_eq!(mode(cp.data_path().join("pki").join(file)), 0o600, "{file}");
    }
}

#[test]
fn the_python_client_authenticates_with_the_certificate_kubeconfig() {
    let cp = ControlPlane::start();
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import sys
from kubernetes import client, config
config.load_kube_config(sys.argv[1])
review = client.AuthenticationV1Api().create_self_subject_review(
    client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"))
print(review.status.user_info.username, ",".join(review.status.user_info.groups))
print(len(client.CoreV1Api().list_namespace().items))
"#,
        )
        .arg(cp.kubeconfig())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("admin system:masters,system:authenticated\n"),
        "{stdout}"
    );
}

#[test]
fn service_account_tokens_from_kubectl_create_token() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: robot\n",
    )
    .success();
    let token = cp.kubectl(&["create", "token", "robot"]).success();
    let token = token.trim();
    let robot = kubeconfig_with(&cp, dir.path(), json!({"token": token}));
    let (ok, out) = kubectl_with(&robot, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{out}");
    let info = &serde_json::from_str::<Value>(&out).unwrap()["status"]["userInfo"];
    assert_eq!(info["username"], "system:serviceaccount:default:robot");
    assert_eq!(
        info["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    let sa = cp.kubectl_json(&["get", "serviceaccount", "robot", "-o", "json"]);
    assert_eq!(info["uid"], sa["metadata"]["uid"]);

    // Kubernetes' bounds and audiences.
    let out = cp
        .kubectl(&["create", "token", "robot", "--duration", "5m"])
        .failure();
    assert!(
        out.contains("may not specify a duration less than 10 minutes"),
        "{out}"
    );
    let vault = cp
        .kubectl(&["create", "token", "robot", "--audience", "vault"])
        .success();
    let for_vault = kubeconfig_with(&cp, dir.path(), json!({"token": vault.trim()}));
    let (ok, out) = kubectl_with(&for_vault, &["get", "pods"]);
    assert!(
        !ok && out.contains("Unauthorized"),
        "not for this API server: {out}"
    );
    let manifest = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                          "spec": {"token": vault.trim(), "audiences": ["vault"]}});
    let review = cp
        .kubectl_stdin(&["create", "-f", "-", "-o", "json"], &manifest.to_string())
        .success();
    let review: Value = serde_json::from_str(&review).unwrap();
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(review["status"]["audiences"], json!(["vault"]), "{review}");

    // The issuer's keys are published.
    let jwks = cp.kubectl_json(&["get", "--raw", "/openid/v1/jwks"]);
    assert_eq!(jwks["keys"][0]["kty"], "EC", "{jwks}");
    assert_eq!(jwks["keys"][0]["alg"], "ES256", "{jwks}");
    let oidc = cp.kubectl_json(&["get", "--raw", "/.well-known/openid-configuration"]);
    assert_eq!(
        oidc["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );

    // A deleted account's tokens stop working.
    cp.kubectl(&["delete", "serviceaccount", "robot"]).success();
    let (ok, out) = kubectl_with(&robot, &["auth", "whoami"]);
    assert!(!ok && out.contains("Unauthorized"), "{out}");
}

#[test]
fn a_token_bound_to_a_pod_dies_with_the_pod() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "create",
        "token",
        "default",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "web",
    ];
    let out = cp.kubectl(&args).failure();
    assert!(out.contains("pods \"web\" not found"), "{out}");
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: busybox\n",
    )
    .success();
    let token = cp.kubectl(&args).success();
    // Only the pod's own account's token binds to it.
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: other\n",
    )
    .success();
    let mut other = args;
    other[2] = "other";
    let out = cp.kubectl(&other).failure();
    assert!(
        out.contains(
            "cannot bind token for serviceaccount \"other\" to pod running with different serviceaccount name."
        ),
        "{out}"
    );
    let bound = kubeconfig_with(&cp, dir.path(), json!({"token": token.trim()}));
    let (ok, out) = kubectl_with(&bound, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{out}");
    let info = &serde_json::from_str::<Value>(&out).unwrap()["status"]["userInfo"];
    assert_eq!(
        info["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["web"]),
        "{info}"
    );
    cp.kubectl(&["delete", "pod", "web", "--wait=false"])
        .success();
    let (ok, out) = kubectl_with(&bound, &["auth", "whoami"]);
    assert!(!ok && out.contains("Unauthorized"), "{out}");
}

#[test]
fn a_service_account_token_secret_gets_a_legacy_token_valid_while_it_holds_it() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: builder\n  namespace: default\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: builder-token\n  namespace: default\n  annotations:\n    kubernetes.io/service-account.name: builder\ntype: kubernetes.io/service-account-token\n",
    )
    .success();
    // The tokens controller fills it in: token, ca.crt, namespace, the account's uid.
    let secret = support::wait_for("the token", std::time::Duration::from_secs(20), || {
        let secret = cp.kubectl_json(&["get", "secret", "builder-token", "-o", "json"]);
        secret["data"]["token"].is_string().then_some(secret)
    });
    let decode = |v: &Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let account = cp.kubectl_json(&["get", "serviceaccount", "builder", "-o", "json"]);
    assert_eq!(
        secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"],
        account["metadata"]["uid"]
    );
    assert_eq!(decode(&secret["data"]["namespace"]), "default");
    assert_eq!(
        decode(&secret["data"]["ca.crt"]),
        std::fs::read_to_string(cp.data_path().join("pki/ca.crt")).unwrap()
    );
    let token = decode(&secret["data"]["token"]);
    let whoami = |token: &str| {
        request(
            &cp,
            reqwest::Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(token),
            None,
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
        )
        .unwrap()
    };
    let (code, body) = whoami(&token);
    assert_eq!(code, 201, "{body}");
    let review: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        review["status"]["userInfo"]["username"],
        "system:serviceaccount:default:builder"
    );
    // The Secret goes: so does the token (401), although it never expires.
    cp.kubectl(&["delete", "secret", "builder-token"]).success();
    let (code, body) = whoami(&token);
    assert_eq!(code, 401, "{body}");
    // A Secret naming an account that does not exist is deleted.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: orphan-token\n  namespace: default\n  annotations:\n    kubernetes.io/service-account.name: nobody\ntype: kubernetes.io/service-account-token\n",
    )
    .success();
    support::wait_for(
        "the orphan's deletion",
        std::time::Duration::from_secs(20),
        || (!cp.kubectl(&["get", "secret", "orphan-token"]).ok()).then_some(()),
    );
}
