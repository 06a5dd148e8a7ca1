//! What one run measures: pods created from many clients until all are bound, and a
//! Deployment rolled out. Each in a namespace of its own, deleted (unmeasured) at the end.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    cluster::{self, Cpu, Hollow, SchedulingTotals},
    common::{Server, percentile},
};

/// Concurrent clients creating pods, each on a connection of its own.
const CLIENTS: usize = 16;
const DEPLOYMENT_REPLICAS: usize = 1_000;
/// Nodes whose pods are listed once all pods are bound.
const NODE_LISTS: usize = 100;

/// A run's figures of one workload, by key (`pods_per_s` …).
pub type Figures = Vec<(&'static str, f64)>;

fn pod(namespace: &str, name: &str, group: Option<usize>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": { "app": "bench" } },
        "spec": { "containers": [{ "name": "c", "image": "localhost/busybox:latest",
            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] },
    });
    if let Some(group) = group {
        // The namespace in the value keeps groups of different runs apart even if a run's
        // pods outlived it (the terms select in the pod's own namespace already).
        let group = format!("{namespace}-{group}");
        pod["metadata"]["labels"]["group"] = json!(group);
        pod["spec"]["affinity"] = json!({ "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": { "matchLabels": { "group": group } },
            "topologyKey": "kubernetes.io/hostname",
        }]}});
    }
    pod
}

/// Creates `pods` pods in a new `namespace` from [`CLIENTS`] clients (`groups`: spread over
/// that many anti-affinity groups, `i % groups`), waits until a watch has seen every one bound,
/// then deletes the namespace (`namespace_deleted_s`: how long that took, in no other figure).
/// Figures:
/// - `pods_per_s`: pods over the time from the first create sent to the last bind seen;
/// - `creates_per_s`: pods over the time from the first create sent to the last one answered;
/// - `bind_p50_ms`, `bind_p99_ms`: per pod, from its create *sent* to the first watch event
///   that shows `spec.nodeName` (the create's own latency included: answers can come after
///   the bind);
/// - `sched_ms_per_pod`, `attempts_per_pod`: the scheduler's own time and attempts per pod
///   bound, from `/metrics` before and after. The histogram times each attempt from its start
///   to its end, binding (a store write) included: a latency, not CPU time; attempts overlap,
///   so ms per pod × pods/s above 1,000 means attempts ran concurrently or waited;
/// - the CPU of [`Cpu::figures_since`] from the first create to the last bind, and
///   `cores_busy`: the three processes' CPU seconds over that wall time;
/// - `node_list_p50_ms`, `node_list_p99_ms`: once all are bound, lists of one node's pods
///   (`fieldSelector=spec.nodeName=X`, every pod of the cluster in the store), as node agents
///   relist and `kubectl get pods --field-selector` asks; `node_list_scan_p99_ms`: the same
///   lists (for one node in five) pinned to an exact resourceVersion, which the API server
///   answers by scanning every pod, as every such list was answered before the node index (the
///   same run's baseline); `all_pods_chunked_s`: every pod listed in pages of 500, as
///   `kubectl get pods -A --chunk-size=500` reads them; `rss_bound_mib`: the control plane's
///   RSS then, every pod still there;
/// - `reconnect_s` (plain runs): every hollow node killed at once and started again, until
///   all have registered and listed their pods (thousands of agents reconnecting together).
pub async fn schedule_pods(
    server: &Arc<Server>,
    hollow: &Hollow,
    namespace: &str,
    pods: usize,
    groups: Option<usize>,
) -> Figures {
    let client = server.client();
    cluster::create_namespace(server, &client, namespace).await;
    let binds = watch_binds(server, namespace, pods).await;
    let totals_before = SchedulingTotals::scrape(server, &client).await;
    let cpu_before = Cpu::now(server, hollow);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let server = Arc::clone(server);
        let namespace = namespace.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = server.client();
            let url = format!("{}/api/v1/namespaces/{namespace}/pods", server.base);
            let mut sent = Vec::new();
            for i in (c..pods).step_by(CLIENTS) {
                let body = pod(&namespace, &format!("p{i}"), groups.map(|g| i % g));
                sent.push((i, Instant::now()));
                let response = client
                    .post(&url)
                    .bearer_auth(&server.token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
            sent
        }));
    }
    let mut sent = vec![started; pods];
    for task in tasks {
        for (i, at) in task.await.unwrap() {
            sent[i] = at;
        }
    }
    let creates_took = started.elapsed();
    let bound = tokio::time::timeout(Duration::from_secs(900), binds)
        .await
        .unwrap_or_else(|_| panic!("pods of {namespace} still unbound after 900 s"))
        .unwrap();
    let cpu = Cpu::now(server, hollow).figures_since(cpu_before);
    let totals_after = SchedulingTotals::scrape(server, &client).await;
    let last_bind = bound.iter().max().copied().unwrap_or(started);
    let took = last_bind.duration_since(started).as_secs_f64();
    let mut latencies: Vec<Duration> = bound
        .iter()
        .zip(&sent)
        .map(|(bound, sent)| bound.saturating_duration_since(*sent))
        .collect();
    latencies.sort_unstable();
    let (sched_ms, attempts) = totals_after.per_pod_since(totals_before);
    let mut figures = vec![
        ("pods_per_s", pods as f64 / took),
        ("creates_per_s", pods as f64 / creates_took.as_secs_f64()),
        ("bind_p50_ms", percentile(&latencies, 0.50)),
        ("bind_p99_ms", percentile(&latencies, 0.99)),
        ("sched_ms_per_pod", sched_ms),
        ("attempts_per_pod", attempts),
    ];
    figures.extend(cpu);
    figures.push(("cores_busy", cores_busy(&figures, took)));
    figures.extend(node_lists(server, &client).await);
    figures.push(("rss_bound_mib", server.rss_mib()));
    if groups.is_none() {
        figures.push(("reconnect_s", hollow.restart()));
    }
    let cleanup = cluster::delete_namespace(server, &client, namespace).await;
    figures.push(("namespace_deleted_s", cleanup));
    figures
}

/// Lists of one node's pods: [`NODE_LISTS`] nodes, every node alike spread over the cluster,
/// first as a node agent asks (latest), then at an exact resourceVersion (a scan).
async fn node_lists(server: &Server, client: &reqwest::Client) -> Figures {
    let nodes = cluster::get(server, client, "/api/v1/nodes").await;
    let names: Vec<&str> = nodes["items"]
        .as_array()
        .expect("a node list")
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    let step = names.len().div_ceil(NODE_LISTS).max(1);
    let chosen: Vec<&str> = names.iter().step_by(step).copied().collect();
    let version = nodes["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list's resourceVersion")
        .to_owned();
    let timed = |query: String| {
        let url = format!("/api/v1/pods?{query}");
        async move {
            let started = Instant::now();
            let list = cluster::get(server, client, &url).await;
            assert!(list["items"].is_array(), "{url}: {list}");
            started.elapsed()
        }
    };
    let mut latest = Vec::new();
    let mut scanned = Vec::new();
    for (i, node) in chosen.iter().enumerate() {
        latest.push(timed(format!("fieldSelector=spec.nodeName%3D{node}")).await);
        // Fewer scans: each costs a decode of every pod.
        if i % 5 != 0 {
            continue;
        }
        scanned.push(
            timed(format!(
                "fieldSelector=spec.nodeName%3D{node}&resourceVersion={version}&resourceVersionMatch=Exact"
            ))
            .await,
        );
    }
    latest.sort_unstable();
    scanned.sort_unstable();
    let started = Instant::now();
    let mut next = String::new();
    loop {
        let page = cluster::get(server, client, &format!("/api/v1/pods?limit=500{next}")).await;
        assert!(page["items"].is_array(), "listing all pods: {page}");
        match page["metadata"]["continue"].as_str() {
            Some(token) if !token.is_empty() => next = format!("&continue={token}"),
            _ => break,
        }
    }
    let chunked = started.elapsed().as_secs_f64();
    vec![
        ("all_pods_chunked_s", chunked),
        ("node_list_p50_ms", percentile(&latest, 0.50)),
        ("node_list_p99_ms", percentile(&latest, 0.99)),
        ("node_list_scan_p99_ms", percentile(&scanned, 0.99)),
    ]
}

/// The CPU seconds of the three processes over `wall` seconds: 2.0 is two cores saturated.
fn cores_busy(figures: &Figures, wall: f64) -> f64 {
    figures
        .iter()
        .filter(|(k, _)| matches!(*k, "cp_cpu_s" | "hollow_cpu_s" | "bench_cpu_s"))
        .map(|(_, v)| v)
        .sum::<f64>()
        / wall
}

/// Opens a watch on `namespace`'s pods (from a list's resourceVersion, so nothing created after
/// this returns is missed) and returns the task that ends once `pods` pods named `p<i>` were
/// seen bound, with the instant each was first seen so: when its event's chunk arrived.
async fn watch_binds(
    server: &Arc<Server>,
    namespace: &str,
    pods: usize,
) -> tokio::task::JoinHandle<Vec<Instant>> {
    let client = server.client();
    let list = cluster::get(
        server,
        &client,
        &format!("/api/v1/namespaces/{namespace}/pods"),
    )
    .await;
    let mut version = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list's resourceVersion")
        .to_owned();
    let mut response = open_watch(server, &client, namespace, &version).await;
    let server = Arc::clone(server);
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        let mut bound: Vec<Option<Instant>> = vec![None; pods];
        let mut left = pods;
        let mut buffer = Vec::new();
        while left > 0 {
            let Ok(Some(chunk)) = response.chunk().await else {
                // The server ended the watch (its timeout): resume where it stopped.
                response = open_watch(&server, &client, &namespace, &version).await;
                continue;
            };
            let now = Instant::now();
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                if line.trim_ascii().is_empty() {
                    continue;
                }
                let event: Value = serde_json::from_slice(&line).expect("a watch event");
                assert_ne!(event["type"], "ERROR", "the watch failed: {event}");
                let object = &event["object"];
                if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
                    v.clone_into(&mut version);
                }
                let on_node = object["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty());
                let index = object["metadata"]["name"]
                    .as_str()
                    .and_then(|n| n.strip_prefix('p')?.parse::<usize>().ok());
                if on_node
                    && let Some(slot) = index.and_then(|i| bound.get_mut(i))
                    && slot.is_none()
                {
                    *slot = Some(now);
                    left -= 1;
                }
            }
        }
        bound.into_iter().map(Option::unwrap).collect()
    })
}

async fn open_watch(
    server: &Server,
    client: &reqwest::Client,
    namespace: &str,
    version: &str,
) -> reqwest::Response {
    let response = client
        .get(format!(
            "{}/api/v1/namespaces/{namespace}/pods?watch=1&resourceVersion={version}",
            server.base
        ))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "watching the pods of {namespace}");
    response
}

/// Creates a [`DEPLOYMENT_REPLICAS`]-replica Deployment in a new `namespace` and waits until
/// all are available; deletes the namespace (`namespace_deleted_s`). Figures: `available_s` from the create sent, and
/// the CPU of [`Cpu::figures_since`] over that time.
pub async fn deployment_rollout(server: &Arc<Server>, hollow: &Hollow, namespace: &str) -> Figures {
    let client = server.client();
    cluster::create_namespace(server, &client, namespace).await;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "big", "namespace": namespace },
        "spec": {
            "replicas": DEPLOYMENT_REPLICAS,
            "selector": { "matchLabels": { "app": "big" } },
            "template": { "metadata": { "labels": { "app": "big" } },
                "spec": { "containers": [{ "name": "c", "image": "localhost/busybox:latest" }] } },
        },
    });
    let cpu_before = Cpu::now(server, hollow);
    let started = Instant::now();
    let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments");
    let response = client
        .post(format!("{}{path}", server.base))
        .bearer_auth(&server.token)
        .json(&deployment)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(900);
    let available = loop {
        let d = cluster::get(server, &client, &format!("{path}/big")).await;
        if d["status"]["availableReplicas"].as_u64() == Some(DEPLOYMENT_REPLICAS as u64) {
            break started.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "rollout stuck at {}",
            d["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut figures = vec![("available_s", available)];
    figures.extend(Cpu::now(server, hollow).figures_since(cpu_before));
    figures.push(("cores_busy", cores_busy(&figures, available)));
    let cleanup = cluster::delete_namespace(server, &client, namespace).await;
    figures.push(("namespace_deleted_s", cleanup));
    figures
}
