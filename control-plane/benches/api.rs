//! `cargo xtask bench api`: the API server under load, embedded store and etcd side by side.
//!
//! Creates/s and latency with 16 concurrent clients, list latency at 10,000 objects, watch
//! fan-out to 1,000 watchers, and the control plane's RSS. Prints a table and writes
//! `target/bench/api.json`. Everything runs on loopback.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

mod common;

use common::{Server, percentile, start_etcd, start_server};
use futures::StreamExt as _;
use serde_json::{Value, json};

const CLIENTS: usize = 16;
const CREATES: usize = 4_000;
const LIST_OBJECTS: usize = 10_000;
const LIST_RUNS: usize = 10;
const WATCHERS: usize = 1_000;
const WATCH_EVENTS: usize = 20;

fn configmap(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }, "data": { "k": "v" } })
}

async fn create(client: &reqwest::Client, server: &Server, ns: &str, name: &str) -> Duration {
    let started = Instant::now();
    let response = client
        .post(format!("{}/api/v1/namespaces/{ns}/configmaps", server.base))
        .bearer_auth(&server.token)
        .json(&configmap(name))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "{}",
        response.text().await.unwrap_or_default()
    );
    started.elapsed()
}

async fn ensure_namespace(server: &Server, ns: &str) {
    let response = server
        .client()
        .post(format!("{}/api/v1/namespaces", server.base))
        .bearer_auth(&server.token)
        .json(&json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }))
        .send()
        .await
        .unwrap();
    assert!(response.status() == 201 || response.status() == 409);
}

/// `CREATES` creates from `CLIENTS` concurrent clients, each on its own connection.
async fn bench_creates(server: &Arc<Server>) -> Value {
    ensure_namespace(server, "creates").await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let server = Arc::clone(server);
        tasks.push(tokio::spawn(async move {
            let client = server.client();
            let mut latencies = Vec::new();
            for i in 0..CREATES / CLIENTS {
                latencies.push(create(&client, &server, "creates", &format!("c{c}-{i}")).await);
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    json!({
        "creates": latencies.len(),
        "creates_per_s": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
    })
}

/// Fills a namespace with `LIST_OBJECTS` objects, then times full lists of it.
async fn bench_list(server: &Arc<Server>) -> Value {
    ensure_namespace(server, "listing").await;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let server = Arc::clone(server);
        tasks.push(tokio::spawn(async move {
            let client = server.client();
            for i in 0..LIST_OBJECTS / CLIENTS {
                create(&client, &server, "listing", &format!("l{c}-{i}")).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let client = server.client();
    let mut latencies = Vec::new();
    for _ in 0..LIST_RUNS {
        let started = Instant::now();
        let list: Value = client
            .get(format!(
                "{}/api/v1/namespaces/listing/configmaps",
                server.base
            ))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        latencies.push(started.elapsed());
        assert_eq!(list["items"].as_array().unwrap().len(), LIST_OBJECTS);
    }
    latencies.sort();
    json!({ "objects": LIST_OBJECTS, "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99) })
}

/// `WATCHERS` watches on one namespace; `WATCH_EVENTS` creates; every watcher must see every one.
async fn bench_watch(server: &Arc<Server>) -> Value {
    ensure_namespace(server, "watched").await;
    let revision: Value = server
        .client()
        .get(format!(
            "{}/api/v1/namespaces/watched/configmaps",
            server.base
        ))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rv = revision["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    // Connections carry at most a few hundred HTTP/2 streams: spread the watchers.
    let clients: Vec<reqwest::Client> = (0..10).map(|_| server.client()).collect();
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        let request = clients[w % clients.len()]
            .get(format!(
                "{}/api/v1/namespaces/watched/configmaps?watch=true&resourceVersion={rv}",
                server.base
            ))
            .bearer_auth(&server.token)
            .send();
        watchers.push(tokio::spawn(async move {
            let mut body = request.await.unwrap().bytes_stream();
            let (mut seen, mut buffer) = (0, Vec::new());
            while seen < WATCH_EVENTS {
                let Some(Ok(chunk)) = body.next().await else {
                    break;
                };
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    buffer.drain(..=end);
                    seen += 1;
                }
            }
            (seen, Instant::now())
        }));
    }
    // Let every watch be established before the first event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let client = server.client();
    for i in 0..WATCH_EVENTS {
        create(&client, server, "watched", &format!("w{i}")).await;
    }
    let mut complete = 0;
    let mut last = started;
    for watcher in watchers {
        let (seen, at) = tokio::time::timeout(Duration::from_secs(60), watcher)
            .await
            .unwrap()
            .unwrap();
        if seen == WATCH_EVENTS {
            complete += 1;
        }
        last = last.max(at);
    }
    json!({
        "watchers": WATCHERS,
        "events": WATCH_EVENTS,
        "watchers_with_every_event": complete,
        "all_delivered_ms": (last - started).as_secs_f64() * 1e3,
    })
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut results = serde_json::Map::new();
    for backend in ["embedded", "etcd"] {
        let etcd = (backend == "etcd").then(start_etcd);
        if etcd.is_some() {
            std::thread::sleep(Duration::from_secs(2));
        }
        let server = Arc::new(start_server(etcd.as_ref()));
        std::thread::sleep(Duration::from_millis(500));
        let idle_rss = server.rss_mib();
        let result = runtime.block_on(async {
            let creates = bench_creates(&server).await;
            let list = bench_list(&server).await;
            let watch = bench_watch(&server).await;
            json!({ "creates": creates, "list": list, "watch": watch })
        });
        let mut result = result;
        result["rss_idle_mib"] = json!(idle_rss);
        result["rss_end_mib"] = json!(server.rss_mib());
        results.insert(backend.to_owned(), result);
        drop(server);
        drop(etcd);
    }
    print_table(&results);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("api.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&Value::Object(results)).unwrap(),
    )
    .unwrap();
    println!("\nwrote {}", path.display());
}

fn print_table(results: &serde_json::Map<String, Value>) {
    let rows: [(&str, &[&str]); 10] = [
        ("creates/s (16 clients)", &["creates", "creates_per_s"]),
        ("create p50 ms", &["creates", "p50_ms"]),
        ("create p99 ms", &["creates", "p99_ms"]),
        ("list 10k p50 ms", &["list", "p50_ms"]),
        ("list 10k p99 ms", &["list", "p99_ms"]),
        (
            "watchers with every event",
            &["watch", "watchers_with_every_event"],
        ),
        (
            "watch fan-out ms (1000 x 20)",
            &["watch", "all_delivered_ms"],
        ),
        ("RSS idle MiB", &["rss_idle_mib"]),
        ("RSS end MiB", &["rss_end_mib"]),
        ("ratio etcd/embedded creates/s", &[]),
    ];
    println!("{:<32} {:>12} {:>12}", "METRIC", "EMBEDDED", "ETCD");
    for (label, path) in rows {
        let get = |backend: &str| {
            path.iter()
                .fold(&results[backend], |v, k| &v[*k])
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        if path.is_empty() {
            let ratio = get_path(results, "etcd") / get_path(results, "embedded");
            println!("{label:<32} {:>12} {ratio:>12.2}", "");
            continue;
        }
        println!(
            "{label:<32} {:>12.1} {:>12.1}",
            get("embedded"),
            get("etcd")
        );
    }
}

fn get_path(results: &serde_json::Map<String, Value>, backend: &str) -> f64 {
    results[backend]["creates"]["creates_per_s"]
        .as_f64()
        .unwrap_or(f64::NAN)
}
