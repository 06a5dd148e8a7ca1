//! `metrics.k8s.io` and `kubectl top` against a control plane scraping a fake node agent whose
//! `/metrics/resource` (the kubelet's format) says the node burns 1.5 cores and the pod's two
//! containers 250m and 50m: the API server turns the counters into the rates metrics-server
//! would, kubectl prints them, RBAC decides who sees them, and what metrics-server refuses is
//! refused.

use crate::local_pods;
use crate::support;

use std::{io::Write as _, time::Instant};

use support::{
    ControlPlane,
    certs::{cluster_ca, serving_cert},
};

const MIB: u64 = 1024 * 1024;

/// `--token-auth-file` users: viewer is bound to `view` in `default`, alice to nothing.
const TOKENS: &str = "viewer-token,viewer,1002\nalice-token,alice,1001\n";

const VIEWER: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer-view, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: User, name: viewer}]
"#;

/// The kubelet's resource metrics at `elapsed_ms` after the fake agent started: cumulative CPU
/// at constant rates, constant working sets, sample timestamps of now.
fn exposition(now_ms: i64, elapsed_ms: i64) -> String {
    let cpu = |cores: f64| cores * elapsed_ms as f64 / 1000.0;
    let container = |name: &str, cores: f64, memory: u64| {
        format!(
            "container_cpu_usage_seconds_total{{container=\"{name}\",namespace=\"default\",pod=\"web\"}} {} {now_ms}\n\
             container_memory_working_set_bytes{{container=\"{name}\",namespace=\"default\",pod=\"web\"}} {memory} {now_ms}\n\
             container_start_time_seconds{{container=\"{name}\",namespace=\"default\",pod=\"web\"}} 1.7e+09\n",
            cpu(cores)
        )
    };
    format!(
        "# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total {} {now_ms}\n\
         # TYPE node_memory_working_set_bytes gauge\nnode_memory_working_set_bytes {} {now_ms}\n\
         {}{}scrape_error 0\n",
        cpu(1.5),
        512 * MIB,
        container("app", 0.25, 64 * MIB),
        container("side", 0.05, 16 * MIB),
    )
}

#[test]
fn kubectl_top_shows_the_rates_of_the_agents_counters() {
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    tokens.write_all(TOKENS.as_bytes()).unwrap();
    let cp = ControlPlane::start_with(&[
        "--node-monitor-grace-seconds",
        "3600",
        "--metric-resolution",
        "1",
        "--token-auth-file",
        tokens.path().to_str().unwrap(),
    ]);
    let (ca_cert, ca_key) = cluster_ca(&cp);
    let serving = serving_cert(
        &ca_cert,
        &ca_key,
        &["fake"],
        &["127.0.0.1".parse().unwrap()],
    );
    // Counters and timestamps from one clock: the rates come out exact.
    let started_ms = chrono::Utc::now().timestamp_millis();
    let (addr, seen, _runtime) =
        support::fake_agent::start((&serving.0, &serving.1), &ca_cert, move |head| {
            assert!(head.contains("/metrics/resource "), "{head}");
            let now_ms = chrono::Utc::now().timestamp_millis();
            exposition(now_ms, now_ms - started_ms)
        });
    cp.register_node(&local_pods::node("fake", addr.port()));
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        &local_pods::pod("web", Some("fake"), &["app", "side"]),
    )
    .success();
    cp.kubectl_stdin(&["apply", "-f", "-"], VIEWER).success();

    // Two scrapes make a rate.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let top = loop {
        if let Some(out) = cp
            .kubectl(&["top", "node", "fake", "--no-headers"])
            .output()
        {
            break out;
        }
        assert!(Instant::now() < deadline, "kubectl top node never answered");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(
        top.split_whitespace().collect::<Vec<_>>(),
        ["fake", "1500m", "75%", "512Mi", "12%"],
        "{top}"
    );
    assert_eq!(
        seen.lock().unwrap().client.as_deref(),
        Some("CN=kube-apiserver-kubelet-client"),
        "the API server scrapes with its kubelet client certificate"
    );

    let pods = cp
        .kubectl(&["top", "pod", "web", "--containers", "--no-headers"])
        .success();
    let rows: Vec<Vec<&str>> = pods
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["web", "app", "250m", "64Mi"],
            vec!["web", "side", "50m", "16Mi"]
        ],
        "{pods}"
    );

    // The objects as metrics-server serves them.
    let raw = |path: &str| -> serde_json::Value {
        serde_json::from_str(&cp.kubectl(&["get", "--raw", path]).success()).unwrap()
    };
    let node = raw("/apis/metrics.k8s.io/v1beta1/nodes/fake");
    assert_eq!(node["kind"], "NodeMetrics");
    assert_eq!(node["apiVersion"], "metrics.k8s.io/v1beta1");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], "fake");
    assert_eq!(node["usage"]["memory"], "512Mi");
    let window = node["window"].as_str().unwrap();
    assert!(window.ends_with('s'), "a Go duration: {window}");
    chrono::DateTime::parse_from_rfc3339(node["timestamp"].as_str().unwrap()).unwrap();
    let pod = raw("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web");
    assert_eq!(pod["kind"], "PodMetrics");
    assert_eq!(pod["metadata"]["namespace"], "default");
    assert_eq!(pod["containers"][0]["name"], "app");
    assert_eq!(pod["containers"][1]["usage"]["memory"], "16Mi");
    let list = raw("/apis/metrics.k8s.io/v1beta1/pods");
    assert_eq!(list["kind"], "PodMetricsList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let none = raw("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dnone");
    assert_eq!(none["items"], serde_json::json!([]));

    // kubectl get prints metrics-server's columns.
    let table = cp.kubectl(&["get", "nodes.metrics.k8s.io"]).success();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("CPU") && table.contains("WINDOW"), "{table}");

    // What metrics-server does not serve.
    let missing = cp
        .kubectl(&[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nobody",
        ])
        .failure();
    assert!(missing.contains("NotFound"), "{missing}");
    let (status, _) = request(
        &cp,
        reqwest::Method::DELETE,
        "/apis/metrics.k8s.io/v1beta1/nodes/fake",
        None,
    );
    assert_eq!(status, 405);
    let (status, _) = request(
        &cp,
        reqwest::Method::GET,
        "/apis/metrics.k8s.io/v1beta1/pods?watch=true",
        None,
    );
    assert_eq!(status, 405);

    // RBAC: `view` in default may top its pods, not nodes; alice may do neither.
    let viewer = cp
        .kubectl_as_token("viewer-token", &["top", "pod", "web", "--no-headers"])
        .success();
    assert!(viewer.starts_with("web"), "{viewer}");
    let refused = cp
        .kubectl_as_token("viewer-token", &["top", "node"])
        .failure();
    assert!(refused.contains("forbidden"), "{refused}");
    let (status, body) = request(
        &cp,
        reqwest::Method::GET,
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
        Some("alice-token"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(r#"pods.metrics.k8s.io is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"metrics.k8s.io\" in the namespace \"default\""#),
        "{body}"
    );
}

/// Status and body of `method path`, as the cluster admin or with `token`.
fn request(
    cp: &ControlPlane,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("https://{}{path}", cp.server_addr());
        let token = token.map_or_else(|| cp.token(), str::to_owned);
        let response = cp
            .https_client()
            .request(method, url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}
