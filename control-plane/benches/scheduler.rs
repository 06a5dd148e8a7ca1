//! `cargo xtask bench scheduler`: scheduling throughput on hollow nodes.
//!
//! Pods/s to schedule 10,000 pods on 1,000 and on 5,000 hollow nodes, plain and with required
//! pod anti-affinity; seconds for a 1,000-replica Deployment to become fully available; the
//! control plane's RSS at the end. Prints a table and writes `target/bench/scheduler.json`.
//! The hollow-node binary comes from `$APIARY_NODE_AGENT` (xtask builds it).

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{Server, start_server_with};
use serde_json::{Value, json};

/// Pods per scheduling run: 10,000, or `APIARY_BENCH_PODS` for quicker iterations.
fn pods() -> usize {
    std::env::var("APIARY_BENCH_PODS").map_or(10_000, |n| {
        n.parse()
            .expect("APIARY_BENCH_PODS: a number of pods per scheduling run")
    })
}
const CLIENTS: usize = 16;
/// Anti-affinity groups: pods of one group repel each other per node, so 10 groups fit 10,000
/// pods on 1,000 nodes.
const GROUPS: usize = 10;
const DEPLOYMENT_REPLICAS: usize = 1_000;

struct Hollow(Child);

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_hollow(server: &Server, count: usize) -> Hollow {
    let agent = std::env::var("APIARY_NODE_AGENT")
        .expect("APIARY_NODE_AGENT: the hollow-node binary (cargo xtask bench scheduler sets it)");
    // Agents authenticate with the cluster token; the admin kubeconfig holds a certificate.
    let mut config: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(server.data.path().join("kubeconfig")).unwrap(),
    )
    .unwrap();
    config["users"][0]["user"] = serde_json::json!({ "token": server.token });
    let kubeconfig = server.data.path().join("node.kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&config).unwrap()).unwrap();
    let child = Command::new(agent)
        .args(["hollow", "--count", &count.to_string()])
        .args(["--cpu", "64", "--memory", "256Gi", "--pods", "110"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Hollow(child)
}

async fn get(server: &Server, client: &reqwest::Client, path: &str) -> Value {
    client
        .get(format!("{}{path}", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_nodes(server: &Server, count: usize) {
    let client = server.client();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let nodes = get(server, &client, "/api/v1/nodes").await;
        let ready = nodes["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count()
        });
        if ready >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {ready}/{count} nodes registered"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pod(namespace: &str, name: &str, group: Option<usize>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": { "app": "bench" } },
        "spec": { "containers": [{ "name": "c", "image": "localhost/busybox:latest",
            "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] },
    });
    if let Some(group) = group {
        pod["metadata"]["labels"]["group"] = json!(group.to_string());
        pod["spec"]["affinity"] = json!({ "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": { "matchLabels": { "group": group.to_string() } },
            "topologyKey": "kubernetes.io/hostname",
        }]}});
    }
    pod
}

/// Creates [`pods()`] pods from `CLIENTS` clients and returns pods/s from the first create until
/// every pod is bound.
async fn schedule_pods(server: &Arc<Server>, namespace: &str, anti_affinity: bool) -> f64 {
    let client = server.client();
    let created = client
        .post(format!("{}/api/v1/namespaces", server.base))
        .bearer_auth(&server.token)
        .json(
            &json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace } }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let pods = pods();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let server = Arc::clone(server);
        let namespace = namespace.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = server.client();
            for i in (c..pods).step_by(CLIENTS) {
                let group = anti_affinity.then_some(i % GROUPS);
                let response = client
                    .post(format!(
                        "{}/api/v1/namespaces/{namespace}/pods",
                        server.base
                    ))
                    .bearer_auth(&server.token)
                    .json(&pod(&namespace, &format!("p{i}"), group))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let pending = get(
            server,
            &client,
            &format!("/api/v1/namespaces/{namespace}/pods?fieldSelector=spec.nodeName%3D"),
        )
        .await;
        let left = pending["items"].as_array().map_or(usize::MAX, Vec::len);
        if left == 0 {
            return pods as f64 / started.elapsed().as_secs_f64();
        }
        assert!(Instant::now() < deadline, "{left} pods still unscheduled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn deployment_rollout(server: &Arc<Server>) -> f64 {
    let client = server.client();
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "big", "namespace": "default" },
        "spec": {
            "replicas": DEPLOYMENT_REPLICAS,
            "selector": { "matchLabels": { "app": "big" } },
            "template": { "metadata": { "labels": { "app": "big" } },
                "spec": { "containers": [{ "name": "c", "image": "localhost/busybox:latest" }] } },
        },
    });
    let started = Instant::now();
    let response = client
        .post(format!(
            "{}/apis/apps/v1/namespaces/default/deployments",
            server.base
        ))
        .bearer_auth(&server.token)
        .json(&deployment)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let d = get(
            server,
            &client,
            "/apis/apps/v1/namespaces/default/deployments/big",
        )
        .await;
        if d["status"]["availableReplicas"].as_u64() == Some(DEPLOYMENT_REPLICAS as u64) {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "rollout stuck at {}",
            d["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut results = serde_json::Map::new();
    // `APIARY_BENCH_NODES=1000` runs one size only.
    let sizes: Vec<usize> = std::env::var("APIARY_BENCH_NODES")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("APIARY_BENCH_NODES: comma-separated node counts")
        })
        .collect();
    for nodes in sizes {
        // A generous grace: thousands of heartbeats on two cores must not mark nodes lost.
        let server = Arc::new(start_server_with(
            None,
            &[
                "--node-monitor-grace-seconds",
                "600",
                "--cluster-cidr",
                "10.128.0.0/9",
            ],
        ));
        let hollow = start_hollow(&server, nodes);
        let result = runtime.block_on(async {
            let registering = Instant::now();
            wait_nodes(&server, nodes).await;
            let register_s = registering.elapsed().as_secs_f64();
            let plain = schedule_pods(&server, "plain", false).await;
            let anti = schedule_pods(&server, "anti", true).await;
            let mut result = json!({
                "nodes": nodes, "register_s": register_s,
                "plain_pods_per_s": plain, "anti_affinity_pods_per_s": anti,
            });
            if nodes == 1_000 {
                result["deployment_1000_available_s"] = json!(deployment_rollout(&server).await);
            }
            result
        });
        let mut result = result;
        result["rss_end_mib"] = json!(server.rss_mib());
        drop(hollow);
        // Printed as soon as known: the larger sizes take long on two cores.
        println!("{nodes} nodes: {result}");
        results.insert(format!("{nodes}_nodes"), result);
    }
    println!("{:<40} {:>12} {:>12}", "METRIC", "1000 NODES", "5000 NODES");
    let rows = [
        ("nodes registered+Ready (s)", "register_s"),
        ("pods/s, 10k pods, plain", "plain_pods_per_s"),
        (
            "pods/s, 10k pods, anti-affinity",
            "anti_affinity_pods_per_s",
        ),
        (
            "1000-replica Deployment available (s)",
            "deployment_1000_available_s",
        ),
        ("control-plane RSS at end (MiB)", "rss_end_mib"),
    ];
    for (label, key) in rows {
        let cell = |n: &str| {
            results
                .get(n)
                .and_then(|r| r[key].as_f64())
                .map_or("-".to_owned(), |v| format!("{v:.1}"))
        };
        println!(
            "{label:<40} {:>12} {:>12}",
            cell("1000_nodes"),
            cell("5000_nodes")
        );
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scheduler.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&Value::Object(results)).unwrap(),
    )
    .unwrap();
    println!("\nwrote {}", path.display());
}
