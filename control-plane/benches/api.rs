//! `cargo xtask bench api`: the API server under load, embedded store and etcd side by side.
//!
//! Creates/s and latency with 16 concurrent clients (as the admin, and as a user RBAC authorizes
//! with 10,000 RoleBindings present), list latency at 10,000 objects, the same creates and list
//! for a custom resource (a CRD with a schema, so pruning, defaulting and validation are in the
//! cost), watch fan-out to 1,000 watchers, and the control plane's RSS. Prints a table and writes
//! `target/bench/api.json`. Everything runs on loopback.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

mod common;

use common::{Server, percentile, start_etcd, start_server_with};
use futures::StreamExt as _;
use serde_json::{Value, json};

const CLIENTS: usize = 16;
const CREATES: usize = 4_000;
const LIST_OBJECTS: usize = 10_000;
const LIST_RUNS: usize = 10;
const WATCHERS: usize = 1_000;
const WATCH_EVENTS: usize = 20;
/// RoleBindings present while the non-admin user creates (none of them its own but one).
const BINDINGS: usize = 10_000;
/// The non-admin user (`--token-auth-file`): its writes go through RBAC.
const USER_TOKEN: &str = "bench-user-token";
const USER: &str = "bench-user";

fn configmap(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }, "data": { "k": "v" } })
}

fn widget(name: &str) -> Value {
    json!({ "apiVersion": "bench.apiary.dev/v1", "kind": "Widget", "metadata": { "name": name }, "spec": { "size": 3 } })
}

/// What the creates and lists are timed on: a built-in kind, or a custom one.
struct Kind {
    /// `api/v1`, `apis/bench.apiary.dev/v1`.
    group_version: &'static str,
    plural: &'static str,
    object: fn(&str) -> Value,
}

const CONFIG_MAPS: Kind = Kind {
    group_version: "api/v1",
    plural: "configmaps",
    object: configmap,
};
const WIDGETS: Kind = Kind {
    group_version: "apis/bench.apiary.dev/v1",
    plural: "widgets",
    object: widget,
};

/// The CRD of [`WIDGETS`]: a schema with a bound, a default and an enum, as real ones have.
fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.bench.apiary.dev" },
        "spec": {
            "group": "bench.apiary.dev", "scope": "Namespaced",
            "names": { "plural": "widgets", "kind": "Widget" },
            "versions": [{ "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                    "spec": { "type": "object", "required": ["size"], "properties": {
                        "size": { "type": "integer", "minimum": 1, "maximum": 100 },
                        "mode": { "type": "string", "enum": ["fast", "safe"], "default": "safe" },
                    }},
                }}},
            }],
        },
    })
}

/// Creates the Widget CRD and waits until its kind is served.
async fn install_widgets(server: &Server) {
    let client = server.client();
    let response = client
        .post(format!(
            "{}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            server.base
        ))
        .bearer_auth(&server.token)
        .json(&widget_crd())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{}/apis/bench.apiary.dev/v1", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "the Widget kind is never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create(
    client: &reqwest::Client,
    server: &Server,
    kind: &Kind,
    ns: &str,
    name: &str,
) -> Duration {
    create_as(client, server, kind, &server.token, ns, name).await
}

async fn create_as(
    client: &reqwest::Client,
    server: &Server,
    kind: &Kind,
    token: &str,
    ns: &str,
    name: &str,
) -> Duration {
    let started = Instant::now();
    let response = client
        .post(format!(
            "{}/{}/namespaces/{ns}/{}",
            server.base, kind.group_version, kind.plural
        ))
        .bearer_auth(token)
        .json(&(kind.object)(name))
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

/// `CREATES` creates into `ns` from `CLIENTS` concurrent clients, each on its own connection,
/// with `token`.
async fn bench_creates(server: &Arc<Server>, kind: &'static Kind, ns: &str, token: &str) -> Value {
    ensure_namespace(server, ns).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let server = Arc::clone(server);
        let (ns, token) = (ns.to_owned(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let client = server.client();
            let mut latencies = Vec::new();
            for i in 0..CREATES / CLIENTS {
                let name = format!("c{c}-{i}");
                latencies.push(create_as(&client, &server, kind, &token, &ns, &name).await);
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

/// `BINDINGS` RoleBindings over 100 namespaces, each granting `edit` to another user, and one
/// granting it to [`USER`] in `ns`.
async fn create_bindings(server: &Arc<Server>, ns: &str) {
    let binding = |ns: &str, name: &str, user: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": name, "namespace": ns },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit" },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        })
    };
    let post = |client: reqwest::Client, server: Arc<Server>, object: Value| async move {
        let ns = object["metadata"]["namespace"].as_str().unwrap().to_owned();
        let response = client
            .post(format!(
                "{}/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
                server.base
            ))
            .bearer_auth(&server.token)
            .json(&object)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.unwrap_or_default()
        );
    };
    for n in 0..100 {
        ensure_namespace(server, &format!("bindings-{n}")).await;
    }
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let server = Arc::clone(server);
        tasks.push(tokio::spawn(async move {
            let client = server.client();
            for i in (c..BINDINGS - 1).step_by(CLIENTS) {
                let object = binding(
                    &format!("bindings-{}", i % 100),
                    &format!("b{i}"),
                    &format!("user-{i}"),
                );
                post(client.clone(), Arc::clone(&server), object).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    ensure_namespace(server, ns).await;
    post(
        server.client(),
        Arc::clone(server),
        binding(ns, "bench-user-edit", USER),
    )
    .await;
    // The authorizer's index follows bindings by watch: wait until the user's has arrived.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = server
            .client()
            .post(format!(
                "{}/api/v1/namespaces/{ns}/configmaps?dryRun=All",
                server.base
            ))
            .bearer_auth(USER_TOKEN)
            .json(&configmap("probe"))
            .send()
            .await
            .unwrap();
        if response.status() != 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the user's binding never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fills a namespace with `LIST_OBJECTS` objects, then times full lists of it.
async fn bench_list(server: &Arc<Server>, kind: &'static Kind) -> Value {
    let ns = format!("listing-{}", kind.plural);
    ensure_namespace(server, &ns).await;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let server = Arc::clone(server);
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let client = server.client();
            for i in 0..LIST_OBJECTS / CLIENTS {
                create(&client, &server, kind, &ns, &format!("l{c}-{i}")).await;
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
                "{}/{}/namespaces/{ns}/{}",
                server.base, kind.group_version, kind.plural
            ))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        latencies.push(started.elapsed());
        // Every namespace also holds the root CA publisher's `kube-root-ca.crt`.
        let ours = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["metadata"]["name"] != "kube-root-ca.crt")
            .count();
        assert_eq!(ours, LIST_OBJECTS);
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
        create(&client, server, &CONFIG_MAPS, "watched", &format!("w{i}")).await;
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
        let users = tempfile::tempdir().unwrap();
        let token_file = users.path().join("tokens.csv");
        std::fs::write(&token_file, format!("{USER_TOKEN},{USER},1\n")).unwrap();
        let server = Arc::new(start_server_with(
            etcd.as_ref(),
            &["--token-auth-file", token_file.to_str().unwrap()],
        ));
        std::thread::sleep(Duration::from_millis(500));
        let idle_rss = server.rss_mib();
        let result = runtime.block_on(async {
            let creates = bench_creates(&server, &CONFIG_MAPS, "creates", &server.token).await;
            create_bindings(&server, "creates-rbac").await;
            let rbac_creates =
                bench_creates(&server, &CONFIG_MAPS, "creates-rbac", USER_TOKEN).await;
            let list = bench_list(&server, &CONFIG_MAPS).await;
            install_widgets(&server).await;
            let custom_creates =
                bench_creates(&server, &WIDGETS, "creates-custom", &server.token).await;
            let custom_list = bench_list(&server, &WIDGETS).await;
            let watch = bench_watch(&server).await;
            json!({
                "creates": creates, "rbac_creates": rbac_creates, "list": list,
                "custom_creates": custom_creates, "custom_list": custom_list, "watch": watch,
            })
        });
        let mut result = result;
        result["rss_idle_mib"] = json!(idle_rss);
        result["rss_end_mib"] = json!(server.rss_mib());
        result["custom_ratio"] = json!(
            result["custom_creates"]["creates_per_s"]
                .as_f64()
                .unwrap_or(f64::NAN)
                / result["creates"]["creates_per_s"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
        );
        result["rbac_ratio"] = json!(
            result["rbac_creates"]["creates_per_s"]
                .as_f64()
                .unwrap_or(f64::NAN)
                / result["creates"]["creates_per_s"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
        );
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
    let rows: [(&str, &[&str]); 19] = [
        ("creates/s (16 clients)", &["creates", "creates_per_s"]),
        ("create p50 ms", &["creates", "p50_ms"]),
        ("create p99 ms", &["creates", "p99_ms"]),
        (
            "creates/s non-admin, 10k bindings",
            &["rbac_creates", "creates_per_s"],
        ),
        ("non-admin create p50 ms", &["rbac_creates", "p50_ms"]),
        ("non-admin create p99 ms", &["rbac_creates", "p99_ms"]),
        ("ratio non-admin/admin creates/s", &["rbac_ratio"]),
        ("list 10k p50 ms", &["list", "p50_ms"]),
        ("list 10k p99 ms", &["list", "p99_ms"]),
        (
            "custom creates/s (16 clients)",
            &["custom_creates", "creates_per_s"],
        ),
        ("custom create p99 ms", &["custom_creates", "p99_ms"]),
        ("ratio custom/configmap creates/s", &["custom_ratio"]),
        ("custom list 10k p50 ms", &["custom_list", "p50_ms"]),
        ("custom list 10k p99 ms", &["custom_list", "p99_ms"]),
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
    println!("{:<34} {:>12} {:>12}", "METRIC", "EMBEDDED", "ETCD");
    for (label, path) in rows {
        let get = |backend: &str| {
            path.iter()
                .fold(&results[backend], |v, k| &v[*k])
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        if path.is_empty() {
            let ratio = get_path(results, "etcd") / get_path(results, "embedded");
            println!("{label:<34} {:>12} {ratio:>12.2}", "");
            continue;
        }
        let decimals = if label.starts_with("ratio") { 2 } else { 1 };
        println!(
            "{label:<34} {:>12.decimals$} {:>12.decimals$}",
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
