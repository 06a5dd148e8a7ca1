//! `nodes/proxy` through the API server to a node agent's server: the agent runs in this process
//! (see `local_pods`), registered as a Node on 127.0.0.1, and kubectl and a plain HTTPS client
//! drive it.

use crate::local_pods;
use crate::support;

use apiary_node_agent::server::services::{BackendView, FrontendAddress, FrontendView};
use local_pods::{Agent, node};
use support::{ControlPlane, certs::stranger_ca};

fn start() -> ControlPlane {
    // No heartbeats come from the test's node: keep the lifecycle controller from evicting.
    ControlPlane::start_with(&["--node-monitor-grace-seconds", "3600"])
}

fn kubeconfig(cp: &ControlPlane) -> serde_json::Value {
    serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap()
}

fn token(cp: &ControlPlane) -> String {
    cp.token()
}

fn register(cp: &ControlPlane, name: &str, port: u16) {
    cp.register_node(&node(name, port));
}

/// Status code and body of `GET path` on the API server, with the admin token or without one.
fn get(cp: &ControlPlane, path: &str, authenticated: bool) -> (u16, String) {
    let server = kubeconfig(cp)["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = token(cp);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .use_rustls_tls()
            .build()
            .unwrap();
        let mut request = client.get(format!("{server}{path}"));
        if authenticated {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.text().await.unwrap())
    })
}

fn kubernetes_frontend() -> FrontendView {
    FrontendView {
        frontend: FrontendAddress {
            address: [10, 96, 0, 1].into(),
            port: 443,
            protocol: "TCP".into(),
            scope: "socket".into(),
        },
        id: 7,
        flags: vec!["affinity".into()],
        affinity_timeout_seconds: 10800,
        backend_count: 1,
        service: Some("default/kubernetes:https".into()),
        backends: vec![BackendView {
            id: 3,
            address: Some([10, 244, 1, 5].into()),
            port: Some(6443),
            protocol: Some("TCP".into()),
            slots: 1021,
        }],
    }
}

#[test]
fn kubectl_reads_a_nodes_services_and_logs_through_the_proxy() {
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    agent.services.set(vec![kubernetes_frontend()]);

    let raw = cp
        .kubectl(&["get", "--raw", "/api/v1/nodes/n1/proxy/apiary/v1/services"])
        .success();
    let frontends: Vec<FrontendView> = serde_json::from_str(&raw).unwrap();
    assert_eq!(frontends, [kubernetes_frontend()]);
    let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(json[0]["frontend"]["address"], "10.96.0.1");
    assert_eq!(json[0]["affinityTimeoutSeconds"], 10800);
    assert_eq!(json[0]["backends"][0]["slots"], 1021);

    // The query goes along: the agent's own log endpoint, with its parameters.
    agent.pods.add_pod("default", "web", &["app"]);
    agent
        .pods
        .append("default", "web", "app", "one\ntwo\nthree\n");
    assert_eq!(
        cp.kubectl(&[
            "get",
            "--raw",
            "/api/v1/nodes/n1/proxy/containerLogs/default/web/app?tailLines=2",
        ])
        .success(),
        "two\nthree\n"
    );

    // The agent's answers come back as they are: its errors too.
    agent.services.fail("the maps are gone");
    let (code, body) = get(&cp, "/api/v1/nodes/n1/proxy/apiary/v1/services", true);
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("the maps are gone"), "{body}");
    let (code, _) = get(&cp, "/api/v1/nodes/n1/proxy/no/such/path", true);
    assert_eq!(code, 404);
    // `proxy` alone is the agent's `/`, which serves nothing.
    let (code, body) = get(&cp, "/api/v1/nodes/n1/proxy", true);
    assert_eq!(code, 404, "{body}");
    assert!(
        !body.contains("nodes"),
        "the agent's 404, not the API server's: {body}"
    );

    // Like every other path, only for those RBAC lets: without credentials the request is
    // anonymous, and kube-apiserver's answer to that is a 403.
    let (code, body) = get(&cp, "/api/v1/nodes/n1/proxy/apiary/v1/services", false);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(r#"nodes \"n1\" is forbidden: User \"system:anonymous\" cannot get resource \"nodes/proxy\""#),
        "{body}"
    );
}

#[test]
fn unknown_unaddressed_and_unreachable_nodes_are_errors() {
    let cp = start();
    let (code, body) = get(&cp, "/api/v1/nodes/nope/proxy/apiary/v1/services", true);
    assert_eq!(code, 404, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["message"], r#"nodes "nope" not found"#);
    let missing = cp
        .kubectl(&[
            "get",
            "--raw",
            "/api/v1/nodes/nope/proxy/apiary/v1/services",
        ])
        .failure();
    assert!(missing.contains(r#"nodes "nope" not found"#), "{missing}");

    // A Node without an InternalIP.
    let mut hostname_only: serde_json::Value =
        serde_json::from_str(&node("hostname-only", 10250)).unwrap();
    hostname_only["status"]["addresses"] =
        serde_json::json!([{ "type": "Hostname", "address": "hostname-only" }]);
    cp.register_node(&hostname_only.to_string());
    let (code, body) = get(
        &cp,
        "/api/v1/nodes/hostname-only/proxy/apiary/v1/services",
        true,
    );
    assert_eq!(code, 503, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("has no InternalIP address"),
        "{body}"
    );

    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    register(&cp, "gone", free);
    let (code, body) = get(&cp, "/api/v1/nodes/gone/proxy/apiary/v1/services", true);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&format!("dial tcp 127.0.0.1:{free}")) && body.contains("refused"),
        "{body}"
    );

    // An agent that trusts another CA refuses the API server's client certificate: the
    // handshake fails, and the agent is unavailable.
    let (other_ca, _) = stranger_ca();
    let stranger =
        Agent::start_trusting("stranger", &cp.kubeconfig(), &token(&cp), Some(&other_ca));
    register(&cp, "stranger", stranger.addr.port());
    let (code, body) = get(&cp, "/api/v1/nodes/stranger/proxy/apiary/v1/services", true);
    assert_eq!(code, 503, "{body}");
}
