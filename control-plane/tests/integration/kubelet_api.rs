//! The node agent's API (the kubelet's port) from the attacker's side, and the API server as
//! its client: every endpoint refuses requests without a credential, with a token nobody owns,
//! with a certificate of another CA and from users RBAC grants nothing on the node — 401 or 403
//! with the kubelet's messages, never 200, never 5xx — while the API server, authenticated by
//! its own client certificate (and no token), is let through; and the API server sends nothing
//! to an agent whose serving certificate the cluster CA did not sign for its address. The agent
//! runs in this process (see `local_pods`), gets its serving certificate through a CSR, and asks
//! the real API server to review every request.

use crate::local_pods;
use crate::support;

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use local_pods::{Agent, node};
use support::{
    ControlPlane,
    certs::{
        client_cert, cluster_ca, self_signed_cert, serving_cert, serving_cert_between, stranger_ca,
    },
    fake_agent::Seen,
};

/// `--token-auth-file` users: alice has no binding, viewer is bound to `view`, ops to
/// `system:kubelet-api-admin`.
const TOKENS: &str =
    "alice-token,alice,1001,\"dev\"\nviewer-token,viewer,1002\nops-token,ops,1003\n";

const BINDINGS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: viewer-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: User, name: viewer}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ops-kubelet-api-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:kubelet-api-admin}
subjects: [{kind: User, name: ops}]
"#;

/// Every endpoint the agent serves (and two it does not: those are behind the checks too).
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/containerLogs/default/web/app"),
    ("GET", "/containerLogs/default/web/app?follow=true"),
    ("GET", "/exec/default/web/app?command=true&stdout=true"),
    ("POST", "/exec/default/web/app?command=true&stdout=true"),
    ("GET", "/apiary/v1/services"),
    ("GET", "/apiary/v1/flows"),
    (
        "GET",
        "/apiary/v1/policy/trace?from=default/web&to=default/web&port=80",
    ),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/no/such/path"),
];

struct Cluster {
    cp: ControlPlane,
    agent: Agent,
    _tokens: tempfile::NamedTempFile,
}

fn setup() -> Cluster {
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    tokens.write_all(TOKENS.as_bytes()).unwrap();
    let cp = ControlPlane::start_with(&[
        // No heartbeats come from the test's node: keep the lifecycle controller from evicting.
        "--node-monitor-grace-seconds",
        "3600",
        "--token-auth-file",
        tokens.path().to_str().unwrap(),
    ]);
    cp.kubectl_stdin(&["apply", "-f", "-"], BINDINGS).success();
    let agent = Agent::start("n1", &cp.kubeconfig(), &cp.token());
    cp.register_node(&node("n1", agent.addr.port()));
    agent.pods.add_pod("default", "web", &["app"]);
    agent.pods.append("default", "web", "app", "hello\n");
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        &local_pods::pod("web", Some("n1"), &["app"]),
    )
    .success();
    Cluster {
        cp,
        agent,
        _tokens: tokens,
    }
}

/// A credential a request to the agent carries.
#[derive(Clone, Copy)]
enum Credential<'a> {
    None,
    Token(&'a str),
    /// A client certificate and its key, PEM.
    Certificate(&'a str, &'a str),
}

/// Status and body of `method path` sent straight to the agent at `addr`; `Err` when the
/// connection fails (e.g. the handshake).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    credential: Credential<'_>,
) -> Result<(u16, String), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The agent's serving certificate is not what this test is about.
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .danger_accept_invalid_certs(true);
        if let Credential::Certificate(cert, key) = credential {
            builder = builder
                .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        let client = builder.build().unwrap();
        let mut request = client.request(method.parse().unwrap(), format!("https://{addr}{path}"));
        if let Credential::Token(token) = credential {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| format!("{e:?}"))?;
        let code = response.status().as_u16();
        // A followed log goes on for ever: what came within a second is its body.
        let body = match tokio::time::timeout(Duration::from_secs(1), response.text()).await {
            Ok(text) => text.map_err(|e| e.to_string())?,
            Err(_) => "(still streaming)".to_owned(),
        };
        Ok((code, body))
    })
}

/// The subresource the kubelet's mapping gives `path`.
fn subresource(path: &str) -> &'static str {
    if path.starts_with("/metrics") {
        "metrics"
    } else {
        "proxy"
    }
}

fn verb(method: &str) -> &'static str {
    match method {
        "POST" => "create",
        _ => "get",
    }
}

#[test]
fn every_endpoint_of_the_agent_refuses_who_may_not_use_it() {
    let Cluster { cp, agent, .. } = setup();
    let (ca_cert, ca_key) = cluster_ca(&cp);
    let (jane_cert, jane_key) = client_cert(&ca_cert, &ca_key, "jane", "dev");
    let (stranger_cert, stranger_key) = stranger_ca();
    let (forged_cert, forged_key) =
        client_cert(&stranger_cert, &stranger_key, "admin", "system:masters");
    for &(method, path) in ENDPOINTS {
        let what = format!("{method} {path}");
        let send = |credential| request(agent.addr, method, path, credential);
        assert_eq!(
            send(Credential::None),
            Ok((401, "Unauthorized".to_owned())),
            "{what}"
        );
        assert_eq!(
            send(Credential::Token("not-a-token")),
            Ok((401, "Unauthorized".to_owned())),
            "{what}"
        );
        // A certificate of another CA (claiming system:masters) fails the handshake.
        match send(Credential::Certificate(&forged_cert, &forged_key)) {
            Err(_) => {}
            Ok((code, body)) => assert_eq!(code, 401, "{what}: {body}"),
        }
        // Authenticated users RBAC grants nothing on the node: by token, by certificate, and a
        // viewer of the whole cluster (view has no node subresource).
        for (user, credential) in [
            ("alice", Credential::Token("alice-token")),
            ("viewer", Credential::Token("viewer-token")),
            ("jane", Credential::Certificate(&jane_cert, &jane_key)),
        ] {
            assert_eq!(
                send(credential),
                Ok((
                    403,
                    format!(
                        "Forbidden (user={user}, verb={}, resource=nodes, subresource={})",
                        verb(method),
                        subresource(path)
                    )
                )),
                "{what}"
            );
        }
        // Bound to system:kubelet-api-admin, ops gets past the checks (to the endpoint's own
        // answer).
        let (code, body) = send(Credential::Token("ops-token")).unwrap();
        assert!(![401, 403].contains(&code), "{what}: {code} {body}");
    }
    // What the agent let through is what it was asked for.
    assert_eq!(
        request(
            agent.addr,
            "GET",
            "/containerLogs/default/web/app",
            Credential::Token("ops-token")
        ),
        Ok((200, "hello\n".to_owned()))
    );
}

#[test]
fn the_api_servers_certificate_is_let_through_and_kubectl_works_through_it() {
    let Cluster { cp, agent, .. } = setup();
    let pki = cp.data_path().join("pki");
    let cert = std::fs::read_to_string(pki.join("apiserver-kubelet-client.crt")).unwrap();
    let key = std::fs::read_to_string(pki.join("apiserver-kubelet-client.key")).unwrap();
    assert_eq!(
        request(
            agent.addr,
            "GET",
            "/containerLogs/default/web/app",
            Credential::Certificate(&cert, &key)
        ),
        Ok((200, "hello\n".to_owned()))
    );
    assert_eq!(cp.kubectl(&["logs", "web"]).success(), "hello\n");
    assert_eq!(
        cp.kubectl(&["exec", "web", "--", "sh", "-c", "echo hi"])
            .success(),
        "hi\n"
    );
    // A viewer of the cluster reads logs through the API server (pods/log is in view), never
    // straight from the agent.
    assert_eq!(
        cp.kubectl(&["logs", "web", "--as", "viewer"]).success(),
        "hello\n"
    );
    assert_eq!(
        request(
            agent.addr,
            "GET",
            "/containerLogs/default/web/app",
            Credential::Token("viewer-token")
        )
        .unwrap()
        .0,
        403
    );
    // Once RBAC no longer binds the API server's user, the agent refuses it (the allowed
    // answer is kept for a while: a new agent asks afresh).
    cp.kubectl(&[
        "delete",
        "clusterrolebinding",
        "kube-apiserver-kubelet-client",
    ])
    .success();
    let fresh = Agent::start("n2", &cp.kubeconfig(), &cp.token());
    fresh.pods.add_pod("default", "other", &["app"]);
    cp.register_node(&node("n2", fresh.addr.port()));
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        &local_pods::pod("other", Some("n2"), &["app"]),
    )
    .success();
    let refused = cp.kubectl(&["logs", "other"]).failure();
    assert!(
        refused.contains(
            "Forbidden (user=kube-apiserver-kubelet-client, verb=get, resource=nodes, subresource=proxy)"
        ),
        "{refused}"
    );
}

/// A fake agent answering every request `200 ok`.
fn fake_agent(
    serving: (&str, &str),
    client_ca: &str,
) -> (SocketAddr, Arc<Mutex<Seen>>, tokio::runtime::Runtime) {
    support::fake_agent::start(serving, client_ca, |_| "ok".to_owned())
}

#[test]
fn the_api_server_shows_agents_its_certificate_and_no_token() {
    let cp = ControlPlane::start_with(&["--node-monitor-grace-seconds", "3600"]);
    let (ca_cert, ca_key) = cluster_ca(&cp);
    let serving = serving_cert(
        &ca_cert,
        &ca_key,
        &["fake"],
        &["127.0.0.1".parse().unwrap()],
    );
    let (addr, seen, _runtime) = fake_agent((&serving.0, &serving.1), &ca_cert);
    cp.register_node(&node("fake", addr.port()));
    assert_eq!(
        cp.kubectl(&["get", "--raw", "/api/v1/nodes/fake/proxy/anything"])
            .success(),
        "ok"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.client.as_deref(),
        Some("CN=kube-apiserver-kubelet-client")
    );
    let request = seen.request.as_deref().unwrap().to_ascii_lowercase();
    // (hyper's client sends the absolute form of the URI, which servers accept.)
    assert!(request.starts_with("get "), "{request}");
    assert!(request.contains("/anything http/1.1\r\n"), "{request}");
    assert!(!request.contains("authorization"), "{request}");
    assert!(!request.contains(&cp.token()), "{request}");
}

#[test]
fn an_agent_whose_certificate_does_not_verify_never_receives_a_request() {
    let cp = ControlPlane::start_with(&["--node-monitor-grace-seconds", "3600"]);
    let (ca_cert, ca_key) = cluster_ca(&cp);
    let (stranger_cert, stranger_key) = stranger_ca();
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let forged = [
        (
            "self-signed",
            self_signed_cert(&["self-signed"], &[loopback]),
        ),
        (
            "other-ca",
            serving_cert(&stranger_cert, &stranger_key, &["other-ca"], &[loopback]),
        ),
        // The cluster CA's, but for another address than the node's.
        (
            "elsewhere",
            serving_cert(
                &ca_cert,
                &ca_key,
                &["elsewhere"],
                &["10.9.9.9".parse().unwrap()],
            ),
        ),
        // The cluster CA's, but a client certificate (no server auth, no address).
        (
            "client",
            client_cert(&ca_cert, &ca_key, "system:node:client", "system:nodes"),
        ),
    ];
    for (name, serving) in forged {
        let (addr, seen, _runtime) = fake_agent((&serving.0, &serving.1), &ca_cert);
        cp.register_node(&node(name, addr.port()));
        let pod = format!("on-{name}");
        cp.kubectl_stdin(
            &["create", "-f", "-"],
            &local_pods::pod(&pod, Some(name), &["app"]),
        )
        .success();
        let proxied = cp
            .kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/nodes/{name}/proxy/anything"),
            ])
            .failure();
        assert!(proxied.contains("ServiceUnavailable"), "{name}: {proxied}");
        assert!(proxied.contains("certificate"), "{name}: {proxied}");
        let logs = cp.kubectl(&["logs", &pod]).failure();
        assert!(logs.contains("InternalError"), "{name}: {logs}");
        assert!(!cp.kubectl(&["exec", &pod, "--", "true"]).ok(), "{name}");
        assert_eq!(seen.lock().unwrap().request, None, "{name}");
    }
}

#[test]
fn a_certificate_near_its_end_is_renewed_through_a_csr_while_the_agent_serves() {
    use apiary_node_agent::{
        agent::serving_certificate::{self, Config, FILE},
        api_client::ApiClient,
        kubeconfig::Endpoint,
        server::tls::{ServingCertificate, server_config},
    };
    let cp = ControlPlane::start_with(&["--node-monitor-grace-seconds", "3600"]);
    let (ca_cert, ca_key) = cluster_ca(&cp);
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    // A certificate of the cluster CA at 90 % of its ten days: past its renewal time.
    let (old_cert, old_key) = serving_cert_between(&ca_cert, &ca_key, &["n1"], &[loopback], (9, 1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE), format!("{old_cert}{old_key}")).unwrap();
    let old_der = rustls_pemfile::certs(&mut old_cert.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();

    let endpoint = Endpoint::from_kubeconfig(&cp.node_kubeconfig()).unwrap();
    let serving = Arc::new(ServingCertificate::default());
    let config = server_config(Arc::clone(&serving), &ca_cert).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.spawn(serving_certificate::keep_current(
        ApiClient::new(&endpoint).unwrap(),
        Config {
            node: "n1".into(),
            addresses: vec![loopback],
            ca_pem: ca_cert.clone(),
            dir: dir.path().to_owned(),
        },
        Arc::clone(&serving),
    ));
    // The stored certificate is presented at once, then replaced by the CSR's, in the same
    // server configuration (no restart).
    support::wait_for("the stored certificate", Duration::from_secs(10), || {
        (serving.current() == Some(old_der.clone())).then_some(())
    });
    local_pods::approve_serving_requests(&cp.kubeconfig(), || {
        serving.current().is_some_and(|der| der != old_der)
    });
    let presented = runtime.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls_pemfile::certs(&mut ca_cert.as_bytes())
                    .next()
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let _ = tokio_rustls::TlsAcceptor::from(config).accept(a).await;
        });
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(rustls::pki_types::ServerName::from(loopback), b)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    });
    assert_ne!(presented, old_der);
    assert_eq!(Some(presented), serving.current());
    // And kept for the next start.
    let stored = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
    assert!(
        !stored.contains(&old_cert),
        "the renewed certificate is stored"
    );
}

#[test]
fn a_stalled_handshake_to_the_agent_is_cut_off() {
    use std::io::Read as _;
    let c = setup();
    // A client that connects and never says a word: the agent hangs up after its timeout.
    let mut stalled = std::net::TcpStream::connect(c.agent.addr).unwrap();
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = stalled.read(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the agent answered a client that sent nothing: {read:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(9) && waited < std::time::Duration::from_secs(20),
        "{waited:?}"
    );
}
