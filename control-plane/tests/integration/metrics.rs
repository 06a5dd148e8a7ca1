//! `GET /metrics` as kube-apiserver serves it: Prometheus text under Kubernetes' names, the
//! requests made counted by verb, resource, scope and code, and refused to whoever is not in
//! `system:monitoring` (403) or presents a bad token (401).

use crate::support;

use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use support::{ControlPlane, wait_for};

struct Client {
    http: reqwest::Client,
    base: String,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn new(cp: &ControlPlane) -> Self {
        Self {
            http: cp.https_client(),
            base: format!("https://{}", cp.server_addr()),
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    /// Status, content type and body of `method path` with `token` (none: anonymous).
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, String) {
        self.runtime.block_on(async {
            let mut request = self
                .http
                .request(method, format!("{}{path}", self.base))
                .timeout(Duration::from_secs(30));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request
                    .header("Content-Type", "application/json")
                    .body(body.to_owned());
            }
            let response = request.send().await.unwrap();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (
                response.status().as_u16(),
                content_type,
                response.text().await.unwrap(),
            )
        })
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, String, String) {
        self.send(reqwest::Method::GET, path, token, None)
    }
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the first sample of `name` with `labels` (a histogram's count).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or_default(),
            Value::Summary(_) => f64::NAN,
        })
}

/// Whether every sample of `name` has the type `kind` (and there is one).
fn has_type(scrape: &Scrape, name: &str, kind: &str) -> bool {
    let samples: Vec<_> = scrape.samples.iter().filter(|s| s.metric == name).collect();
    !samples.is_empty()
        && samples.iter().all(|s| {
            matches!(
                (&s.value, kind),
                (Value::Counter(_), "counter")
                    | (Value::Gauge(_), "gauge")
                    | (Value::Histogram(_), "histogram")
            )
        })
}

#[test]
fn metrics_count_requests_under_kube_apiservers_names_and_need_system_monitoring() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "jane-token,jane,1001\n").unwrap();
    let cp = ControlPlane::start_with(&["--token-auth-file", tokens.to_str().unwrap()]);
    let client = Client::new(&cp);
    let admin_token = cp.token();
    let admin = Some(admin_token.as_str());

    assert_eq!(client.get("/api/v1/namespaces/default/pods", admin).0, 200);
    assert_eq!(
        client
            .get("/api/v1/namespaces/default/pods/missing", admin)
            .0,
        404
    );
    // No node to run on: one unschedulable attempt.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},"spec":{"containers":[{"name":"c","image":"nginx"}]}}"#;
    let (status, _, body) = client.send(
        reqwest::Method::POST,
        "/api/v1/namespaces/default/pods",
        admin,
        Some(pod),
    );
    assert_eq!(status, 201, "{body}");
    // A watch held open while scraping.
    let watch = client.runtime.block_on(
        client
            .http
            .get(format!("{}/api/v1/pods?watch=1", client.base))
            .bearer_auth(&admin_token)
            .send(),
    );
    let watch = watch.unwrap();
    assert_eq!(watch.status().as_u16(), 200);

    let scrape = wait_for("every family", Duration::from_secs(20), || {
        let (status, content_type, text) = client.get("/metrics", admin);
        assert_eq!(status, 200, "{text}");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let scrape = parse(&text);
        let ready = value(
            &scrape,
            "scheduler_schedule_attempts_total",
            &[("result", "unschedulable")],
        )
        .is_some()
            && value(&scrape, "workqueue_adds_total", &[]).is_some()
            // Counted at start-up, before the pod (then every minute).
            && value(&scrape, "apiserver_storage_objects", &[("resource", "pods")]).is_some();
        ready.then_some(scrape)
    });

    for (name, kind) in [
        ("apiserver_request_total", "counter"),
        ("apiserver_request_duration_seconds", "histogram"),
        ("apiserver_longrunning_requests", "gauge"),
        ("apiserver_registered_watchers", "gauge"),
        ("apiserver_current_inflight_requests", "gauge"),
        ("etcd_request_duration_seconds", "histogram"),
        ("apiserver_storage_objects", "gauge"),
        ("scheduler_schedule_attempts_total", "counter"),
        ("scheduler_scheduling_attempt_duration_seconds", "histogram"),
        ("scheduler_pending_pods", "gauge"),
        ("workqueue_depth", "gauge"),
        ("workqueue_adds_total", "counter"),
        ("workqueue_queue_duration_seconds", "histogram"),
        ("workqueue_work_duration_seconds", "histogram"),
        ("workqueue_retries_total", "counter"),
        ("leader_election_master_status", "gauge"),
    ] {
        assert!(has_type(&scrape, name, kind), "{name} is not a {kind}");
    }

    let request = |verb: &str, scope: &str, code: &str| {
        value(
            &scrape,
            "apiserver_request_total",
            &[
                ("verb", verb),
                ("group", ""),
                ("version", "v1"),
                ("resource", "pods"),
                ("subresource", ""),
                ("scope", scope),
                ("component", "apiserver"),
                ("code", code),
                ("dry_run", ""),
            ],
        )
    };
    assert_eq!(request("LIST", "namespace", "200"), Some(1.0));
    assert_eq!(request("GET", "resource", "404"), Some(1.0));
    assert_eq!(request("POST", "resource", "201"), Some(1.0));
    assert_eq!(
        value(
            &scrape,
            "apiserver_request_duration_seconds",
            &[
                ("verb", "LIST"),
                ("resource", "pods"),
                ("scope", "namespace")
            ]
        ),
        Some(1.0)
    );
    // The watch is still open: in flight, not yet counted as a request.
    assert_eq!(
        value(
            &scrape,
            "apiserver_longrunning_requests",
            &[
                ("verb", "WATCH"),
                ("resource", "pods"),
                ("scope", "cluster")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "apiserver_registered_watchers",
            &[("group", ""), ("version", "v1"), ("kind", "Pod")]
        ),
        Some(1.0)
    );
    assert_eq!(request("WATCH", "cluster", "200"), None);
    // The scrape itself is in flight.
    assert!(
        value(
            &scrape,
            "apiserver_current_inflight_requests",
            &[("request_kind", "readOnly")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        value(
            &scrape,
            "etcd_request_duration_seconds",
            &[("operation", "create"), ("type", "/registry/core/pods/")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "leader_election_master_status",
            &[("name", "kube-controller-manager")]
        ),
        Some(1.0)
    );

    // Once the watch ends it is counted, and no longer in flight.
    drop(watch);
    wait_for("the watch to be counted", Duration::from_secs(10), || {
        let scrape = parse(&client.get("/metrics", admin).2);
        let done = value(
            &scrape,
            "apiserver_longrunning_requests",
            &[("verb", "WATCH"), ("resource", "pods")],
        ) == Some(0.0);
        let counted = value(
            &scrape,
            "apiserver_request_total",
            &[("verb", "WATCH"), ("resource", "pods"), ("code", "200")],
        ) == Some(1.0);
        (done && counted).then_some(())
    });

    // Refused as kube-apiserver refuses a non-resource URL: jane is authenticated but not in
    // system:monitoring, an anonymous caller is system:anonymous, a bad token is no one.
    let (status, _, body) = client.get("/metrics", Some("jane-token"));
    assert_eq!(status, 403, "{body}");
    let status_body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status_body["kind"], "Status");
    assert_eq!(status_body["reason"], "Forbidden");
    let message = status_body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("forbidden: User \"jane\" cannot get path \"/metrics\""),
        "{message}"
    );
    let (status, _, body) = client.get("/metrics", None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("system:anonymous"), "{body}");
    let (status, _, body) = client.get("/metrics", Some("not-a-token"));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Unauthorized"), "{body}");
}
