//! `cargo xtask chaos`: the API server under hostile clients, while kubectl keeps working.
//!
//! Against one control plane on loopback, one after another (each with `kubectl get pods`
//! running in a loop beside it):
//! 1. 2,000 idle TCP connections and 200 stalled TLS handshakes, reopened as the server cuts
//!    them, for a while;
//! 2. a 10 MB body, a JSON patch whose copies double the object, a YAML alias bomb;
//! 3. 10,000 watches at once;
//! 4. creates whose bodies trickle in, at once, past the in-flight limit (429 with
//!    `Retry-After` for the excess);
//! 5. random bytes: raw on the TCP port, raw inside TLS, and random requests (method, path,
//!    query, content type, body) to every resource of discovery.
//!
//! It fails (exit 1) when the server dies or stops answering `/readyz`, when kubectl fails, when
//! any answer is a 5xx other than 503 (429 and 503 are due under load), when an oversized or
//! exploding request is not refused with a 4xx, or when the peak RSS passes its bound. It prints
//! the figures (connections held, kubectl p50/p99 under attack, peak RSS, 429s) and writes
//! `target/bench/chaos.json`. `--quick` is CI's bounded run: the same attacks, shorter.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

mod common;

use common::{Server, percentile, start_server_with};
use futures::StreamExt as _;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How hard each attack pushes.
#[derive(Clone, Copy, Debug)]
struct Scale {
    idle_connections: usize,
    stalled_handshakes: usize,
    /// How long the connections are held (and reopened when cut).
    hold: Duration,
    watches: usize,
    /// Slow creates sent at once.
    burst: usize,
    random_requests: usize,
    raw_garbage: usize,
}

const FULL: Scale = Scale {
    idle_connections: 2_000,
    stalled_handshakes: 200,
    hold: Duration::from_secs(40),
    watches: 10_000,
    burst: 1_000,
    random_requests: 20_000,
    raw_garbage: 2_000,
};

const QUICK: Scale = Scale {
    idle_connections: 2_000,
    stalled_handshakes: 200,
    hold: Duration::from_secs(15),
    watches: 10_000,
    burst: 1_000,
    random_requests: 3_000,
    raw_garbage: 500,
};

/// Peak RSS the control plane may reach under all of it (a debug build holds more than a
/// release one).
const RSS_BOUND_MIB: f64 = 2_048.0;

/// What went wrong, for the verdict.
#[derive(Default)]
struct Failures(Mutex<Vec<String>>);

impl Failures {
    fn add(&self, what: String) {
        let mut all = self.0.lock().unwrap();
        // A hundred say enough.
        if all.len() < 100 {
            all.push(what);
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// Answers by status code.
#[derive(Default)]
struct Statuses(Mutex<BTreeMap<u16, usize>>);

impl Statuses {
    fn count(&self, status: u16) {
        *self.0.lock().unwrap().entry(status).or_default() += 1;
    }

    fn get(&self, status: u16) -> usize {
        self.0.lock().unwrap().get(&status).copied().unwrap_or(0)
    }

    fn json(&self) -> Value {
        let all = self.0.lock().unwrap();
        Value::Object(all.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
    }
}

/// A 5xx other than 503 is a failure: the server lost track of a request it should refuse.
fn check_status(failures: &Failures, what: &str, status: u16) {
    if status >= 500 && status != 503 {
        failures.add(format!("{what}: answered {status}"));
    }
}

/// `kubectl get pods` in a loop until `stop`: each run's latency, and failures.
fn kubectl_loop(
    kubeconfig: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    failures: Arc<Failures>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let mut latencies = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let out = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "pods", "--request-timeout=30s"])
                .output()
                .expect("kubectl is installed");
            let took = started.elapsed();
            if out.status.success() {
                latencies.push(took);
            } else {
                failures.add(format!(
                    "kubectl get pods failed after {took:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        latencies
    })
}

/// The latencies' p50 and p99 in ms.
fn summary(mut latencies: Vec<Duration>) -> Value {
    latencies.sort_unstable();
    if latencies.is_empty() {
        return json!({ "runs": 0 });
    }
    json!({
        "runs": latencies.len(),
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    })
}

/// The server's address, from its base URL.
fn address(server: &Server) -> SocketAddr {
    server
        .base
        .trim_start_matches("https://")
        .parse()
        .expect("the control plane listens on an IP address")
}

/// A TLS record header announcing a 512-byte ClientHello, and a few bytes of it: the server
/// waits for the rest until its handshake timeout.
const STALLED_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// Holds `count` connections open for `hold`, reopening each as the server cuts it; returns
/// (most held at once, how many the server cut).
async fn hold_connections(
    addr: SocketAddr,
    count: usize,
    first_bytes: &'static [u8],
    hold: Duration,
) -> (usize, usize) {
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + hold;
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (open, most, cut) = (Arc::clone(&open), Arc::clone(&most), Arc::clone(&cut));
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if tcp.write_all(first_bytes).await.is_err() {
                    continue;
                }
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let mut buf = [0u8; 256];
                let closed = tokio::time::timeout_at(deadline, async {
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await
                .is_ok();
                open.fetch_sub(1, Ordering::SeqCst);
                if closed {
                    cut.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    (most.load(Ordering::SeqCst), cut.load(Ordering::SeqCst))
}

async fn attack_connections(server: &Server, scale: Scale) -> Value {
    let addr = address(server);
    let idle = hold_connections(addr, scale.idle_connections, b"", scale.hold);
    let stalled = hold_connections(addr, scale.stalled_handshakes, STALLED_HELLO, scale.hold);
    let ((idle_most, idle_cut), (stalled_most, stalled_cut)) = tokio::join!(idle, stalled);
    json!({
        "idle_held_at_once": idle_most, "idle_cut_by_server": idle_cut,
        "stalled_held_at_once": stalled_most, "stalled_cut_by_server": stalled_cut,
        "seconds": scale.hold.as_secs(),
    })
}

async fn send(
    client: &reqwest::Client,
    server: &Server,
    method: reqwest::Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Option<u16> {
    client
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(&server.token)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// The oversized and exploding requests: each refused with its 4xx, nothing stored.
async fn attack_bodies(server: &Server, failures: &Failures) -> Value {
    let client = server.client();
    let mut result = serde_json::Map::new();
    let post = reqwest::Method::POST;

    // 10 MB of ConfigMap.
    let mut big =
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"k":""#
            .to_vec();
    big.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    big.extend_from_slice(br#""}}"#);
    let path = "/api/v1/namespaces/default/configmaps";
    let status = send(&client, server, post.clone(), path, "application/json", big).await;
    result.insert("body_10mb".into(), json!(status));
    if status != Some(413) {
        failures.add(format!("a 10 MB body: {status:?}, not 413"));
    }

    // A patch whose copies double the object at every step.
    let seed = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"bomb"},"data":{"a":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}"#;
    send(
        &client,
        server,
        post.clone(),
        path,
        "application/json",
        seed.to_vec(),
    )
    .await;
    let mut ops = vec![json!({"op": "add", "path": "/metadata/annotations", "value": {"x": ""}})];
    ops.push(json!({"op": "copy", "from": "/data", "path": "/metadata/annotations/d0"}));
    for i in 1..40 {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/labels{i}")}));
        ops.push(json!({"op": "copy", "from": "/metadata", "path": format!("/data/m{i}")}));
    }
    let patch = serde_json::to_vec(&ops).unwrap();
    let status = send(
        &client,
        server,
        reqwest::Method::PATCH,
        &format!("{path}/bomb"),
        "application/json-patch+json",
        patch,
    )
    .await;
    result.insert("patch_bomb".into(), json!(status));
    if !status.is_some_and(|s| (400..500).contains(&s)) {
        failures.add(format!("a patch bomb: {status:?}, not a 4xx"));
    }

    // YAML aliases expanding a few hundred bytes to gigabytes.
    let mut yaml = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: aliases}\n");
    yaml.push_str("a: &a [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"]\n");
    let mut previous = "a".to_owned();
    for level in 0..20 {
        let name = format!("l{level}");
        let refs = vec![format!("*{previous}"); 10].join(",");
        yaml.push_str(&format!("{name}: &{name} [{refs}]\n"));
        previous = name;
    }
    let status = send(
        &client,
        server,
        post,
        path,
        "application/yaml",
        yaml.into_bytes(),
    )
    .await;
    result.insert("yaml_alias_bomb".into(), json!(status));
    if !status.is_some_and(|s| (400..500).contains(&s)) {
        failures.add(format!("a YAML alias bomb: {status:?}, not a 4xx"));
    }
    // Nothing of it was stored but the seed.
    let stored = client
        .get(format!("{}{path}", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .ok();
    if let Some(stored) = stored {
        let list: Value = stored.json().await.unwrap_or_default();
        let names: Vec<&str> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str())
            .collect();
        for refused in ["big", "aliases"] {
            if names.contains(&refused) {
                failures.add(format!("{refused} was stored: {names:?}"));
            }
        }
        let bomb = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["metadata"]["name"] == "bomb")
            .map_or(0, |bomb| bomb.to_string().len());
        if bomb > 1024 {
            failures.add(format!("the patch bomb grew the object to {bomb} bytes"));
        }
    }
    Value::Object(result)
}

/// `count` watches at once, spread over connections (each carries a few hundred HTTP/2
/// streams); how many were established and how many were refused with 429.
async fn attack_watches(
    server: &Server,
    count: usize,
    statuses: &Statuses,
    failures: &Failures,
) -> Value {
    let clients: Vec<reqwest::Client> = (0..count.div_ceil(150)).map(|_| server.client()).collect();
    let started = Instant::now();
    let mut opening = futures::stream::iter(0..count)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let url = format!(
                "{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=120",
                server.base
            );
            let token = server.token.clone();
            async move { client.get(url).bearer_auth(token).send().await }
        })
        .buffer_unordered(500);
    let mut open = Vec::new();
    let mut errors = 0;
    while let Some(response) = opening.next().await {
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                statuses.count(status);
                check_status(failures, "a watch", status);
                if status == 200 {
                    open.push(response);
                }
            }
            Err(_) => errors += 1,
        }
    }
    let established = open.len();
    let opened_in = started.elapsed();
    // Every open watch sees an event.
    let client = server.client();
    let event = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"watched"}}"#;
    send(
        &client,
        server,
        reqwest::Method::POST,
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        event.to_vec(),
    )
    .await;
    let delivered = futures::stream::iter(open)
        .map(|response| async move {
            let mut body = response.bytes_stream();
            tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(Ok(chunk)) = body.next().await {
                    if chunk.windows(7).any(|w| w == b"watched") {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false)
        })
        .buffer_unordered(count.max(1))
        .filter(|seen| futures::future::ready(*seen))
        .count()
        .await;
    json!({
        "asked": count, "established": established, "refused_429": statuses.get(429),
        "client_errors": errors, "opened_in_ms": opened_in.as_secs_f64() * 1e3,
        "saw_the_event": delivered,
    })
}

/// A user of `--token-auth-file` bound to cluster-admin, but not in `system:masters` (whose
/// requests no in-flight limit counts, as in Kubernetes).
const USER_TOKEN: &str = "chaos-user-token";

/// `count` creates at once whose bodies trickle in over two seconds (each holds its slot all
/// along), as [`USER_TOKEN`]: more than the server's in-flight limit for writes (200), so those
/// past it are refused with 429 and a `Retry-After`, the others created; none fails otherwise.
async fn attack_burst(
    server: &Server,
    count: usize,
    statuses: &Statuses,
    failures: &Failures,
) -> Value {
    let binding = br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"chaos-user"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"cluster-admin"},"subjects":[{"kind":"User","name":"chaos-user","apiGroup":"rbac.authorization.k8s.io"}]}"#;
    let status = send(
        &server.client(),
        server,
        reqwest::Method::POST,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "application/json",
        binding.to_vec(),
    )
    .await;
    if status != Some(201) {
        failures.add(format!("binding the burst's user: {status:?}"));
    }
    let clients: Vec<reqwest::Client> = (0..count.div_ceil(100)).map(|_| server.client()).collect();
    let answers = futures::future::join_all((0..count).map(|i| {
        let client = clients[i % clients.len()].clone();
        let url = format!("{}/api/v1/namespaces/default/configmaps", server.base);
        async move {
            let object = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"burst-{i}"}}}}"#
            );
            let chunks: Vec<Vec<u8>> = object.as_bytes().chunks(16).map(<[u8]>::to_vec).collect();
            let pause = Duration::from_millis(2_000 / chunks.len() as u64);
            let body = futures::stream::iter(chunks).then(move |chunk| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(chunk)
            });
            let response = client
                .post(url)
                .bearer_auth(USER_TOKEN)
                .header("Content-Type", "application/json")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .ok()?;
            let retry_after = response.headers().contains_key("retry-after");
            Some((response.status().as_u16(), retry_after))
        }
    }))
    .await;
    let (mut created, mut refused, mut lost) = (0, 0, 0);
    for answer in answers {
        match answer {
            Some((status, retry_after)) => {
                statuses.count(status);
                check_status(failures, "a create in a burst", status);
                if status == 429 {
                    refused += 1;
                    if !retry_after {
                        failures.add("a 429 without Retry-After".into());
                    }
                } else if status == 201 {
                    created += 1;
                } else {
                    failures.add(format!("a create in a burst: {status}"));
                }
            }
            None => lost += 1,
        }
    }
    if lost > 0 {
        failures.add(format!("{lost} creates of the burst got no answer"));
    }
    if refused == 0 {
        failures.add(format!(
            "{count} slow creates at once, none refused with 429"
        ));
    }
    json!({ "asked": count, "created": created, "refused_429": refused })
}

/// Every resource path discovery lists (collections in the default namespace for namespaced
/// ones), and a few beyond.
async fn resource_paths(server: &Server) -> Vec<String> {
    let client = server.client();
    let get = |path: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{}{path}", server.base))
                .bearer_auth(&server.token)
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()
        }
    };
    let mut group_versions = vec!["/api/v1".to_owned()];
    if let Some(groups) = get("/apis".into()).await {
        for group in groups["groups"].as_array().into_iter().flatten() {
            for version in group["versions"].as_array().into_iter().flatten() {
                if let Some(gv) = version["groupVersion"].as_str() {
                    group_versions.push(format!("/apis/{gv}"));
                }
            }
        }
    }
    let mut paths = vec![
        "/".to_owned(),
        "/version".to_owned(),
        "/openapi/v2".to_owned(),
        "/openapi/v3".to_owned(),
        "/healthz".to_owned(),
        "/metrics".to_owned(),
    ];
    for gv in group_versions {
        paths.push(gv.clone());
        let Some(list) = get(gv.clone()).await else {
            continue;
        };
        for resource in list["resources"].as_array().into_iter().flatten() {
            let Some(name) = resource["name"].as_str() else {
                continue;
            };
            let (plural, sub) = name.split_once('/').unwrap_or((name, ""));
            let base = if resource["namespaced"] == true {
                format!("{gv}/namespaces/default/{plural}")
            } else {
                format!("{gv}/{plural}")
            };
            if sub.is_empty() {
                paths.push(base.clone());
                paths.push(format!("{base}/chaos"));
            } else {
                paths.push(format!("{base}/chaos/{sub}"));
            }
        }
    }
    paths
}

fn random_body(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..4) {
        0 => 0,
        1 => rng.random_range(1..64),
        2 => rng.random_range(64..4096),
        _ => rng.random_range(4096..65536),
    };
    let mut body = vec![0u8; len];
    if rng.random_bool(0.5) {
        rng.fill(&mut body[..]);
    } else {
        // JSON-ish: braces, quotes and keys the decoders look for.
        const PIECES: [&[u8]; 12] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b":",
            b",",
            b"apiVersion",
            b"kind",
            b"metadata",
            b"null",
            b"1e999",
        ];
        body.clear();
        while body.len() < len {
            body.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
        }
    }
    body
}

/// Random requests to every path: methods, query strings, content types, bodies.
async fn attack_requests(
    server: &Server,
    count: usize,
    statuses: &Statuses,
    failures: &Failures,
) -> Value {
    let paths = resource_paths(server).await;
    let client = server.client();
    const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    const TYPES: [&str; 8] = [
        "application/json",
        "application/yaml",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/json-patch+json",
        "application/apply-patch+yaml",
        "application/vnd.kubernetes.protobuf",
        "text/plain",
    ];
    const QUERIES: [&str; 12] = [
        "",
        "?watch=true&timeoutSeconds=1",
        "?labelSelector=a%20in%20(",
        "?fieldSelector=metadata.name%3D%3D%3D",
        "?limit=-1",
        "?limit=99999999999999999999",
        "?continue=%ff%fe",
        "?resourceVersion=abc&resourceVersionMatch=Exact",
        "?dryRun=All&fieldManager=%00",
        "?timeoutSeconds=-5",
        "?sinceSeconds=99999999999999",
        "?propagationPolicy=Sideways&gracePeriodSeconds=-1",
    ];
    let mut rng = StdRng::seed_from_u64(0x0a91a27);
    let requests: Vec<(String, String, &str, Vec<u8>)> = (0..count)
        .map(|_| {
            let path = &paths[rng.random_range(0..paths.len())];
            let query = QUERIES[rng.random_range(0..QUERIES.len())];
            (
                METHODS[rng.random_range(0..METHODS.len())].to_owned(),
                format!("{path}{query}"),
                TYPES[rng.random_range(0..TYPES.len())],
                random_body(&mut rng),
            )
        })
        .collect();
    let sent = futures::stream::iter(requests)
        .map(|(method, path, content_type, body)| {
            let client = client.clone();
            async move {
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let request = client
                    .request(method.clone(), format!("{}{path}", server.base))
                    .bearer_auth(&server.token)
                    .header("Content-Type", content_type)
                    .body(body)
                    .send();
                let status = match tokio::time::timeout(Duration::from_secs(30), request).await {
                    Ok(Ok(response)) => Ok(response.status().as_u16()),
                    Ok(Err(e)) => Err(format!("{e:?}")),
                    Err(_) => Err("no answer within 30 s".to_owned()),
                };
                (method, path, status)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let (mut unanswered, mut calmed) = (0, 0);
    for (method, path, status) in &sent {
        match status {
            Ok(status) => {
                statuses.count(*status);
                check_status(failures, &format!("{method} {path}"), *status);
            }
            // The server's HTTP/2 guard against rapid resets (h2's limit on streams it resets,
            // here those whose bodies it answered without reading): the connection ends with
            // GOAWAY ENHANCE_YOUR_CALM, in-flight requests on it fail, and the client reconnects.
            // A defence, not a failure.
            Err(e) if e.contains("GoAway") && e.contains("ENHANCE_YOUR_CALM") => calmed += 1,
            Err(e) => {
                unanswered += 1;
                if unanswered <= 5 {
                    failures.add(format!("{method} {path}: {e}"));
                }
            }
        }
    }
    if unanswered > 0 {
        failures.add(format!("{unanswered} random requests got no answer"));
    }
    json!({
        "paths": paths.len(), "requests": sent.len(), "unanswered": unanswered,
        "ended_by_goaway_enhance_your_calm": calmed,
    })
}

/// Random bytes where the server expects a TLS handshake, and inside TLS where it expects
/// HTTP; any HTTP answer must not be a 5xx.
async fn attack_garbage(server: &Server, count: usize, failures: &Failures) -> Value {
    let addr = address(server);
    let tls = Arc::new(common::tls_config_http1(server.ca_pem()));
    let mut rng = StdRng::seed_from_u64(0x9a4ba9e);
    let payloads: Vec<(bool, Vec<u8>)> = (0..count)
        .map(|i| {
            let len = rng.random_range(1..8192);
            let mut bytes = vec![0u8; len];
            rng.fill(&mut bytes[..]);
            if i % 3 == 0 {
                // Almost HTTP: a request line, then garbage.
                let mut http =
                    b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\n".to_vec();
                http.extend_from_slice(&bytes);
                bytes = http;
            }
            (i % 2 == 0, bytes)
        })
        .collect();
    let answers = futures::stream::iter(payloads)
        .map(|(inside_tls, bytes)| {
            let tls = Arc::clone(&tls);
            async move {
                let exchange = async {
                    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let mut reply = Vec::new();
                    if inside_tls {
                        let connector = tokio_rustls::TlsConnector::from(tls);
                        let mut stream = connector
                            .connect("localhost".try_into().unwrap(), tcp)
                            .await
                            .ok()?;
                        stream.write_all(&bytes).await.ok()?;
                        let _ = stream.read_to_end(&mut reply).await;
                    } else {
                        let mut tcp = tcp;
                        tcp.write_all(&bytes).await.ok()?;
                        let _ = tcp.read_to_end(&mut reply).await;
                    }
                    Some(reply)
                };
                tokio::time::timeout(Duration::from_secs(40), exchange)
                    .await
                    .ok()
                    .flatten()
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut http_answers = 0;
    for reply in answers.iter().flatten() {
        let head = String::from_utf8_lossy(&reply[..reply.len().min(64)]).into_owned();
        if let Some(status) = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
        {
            http_answers += 1;
            check_status(failures, "garbage", status);
        }
    }
    json!({ "sent": count, "http_answers": http_answers })
}

async fn ready(server: &Server) -> bool {
    server
        .client()
        .get(format!("{}/readyz", server.base))
        .bearer_auth(&server.token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { QUICK } else { FULL };
    let _ = rustls::crypto::ring::default_provider().install_default();
    // 2,000 idle connections and 10,000 watches are descriptors of this process too.
    apiary_serve::raise_open_files_limit();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let users = tempfile::tempdir().unwrap();
    let tokens = users.path().join("tokens.csv");
    std::fs::write(&tokens, format!("{USER_TOKEN},chaos-user,1001\n")).unwrap();
    let server = start_server_with(None, &["--token-auth-file", tokens.to_str().unwrap()]);
    let failures = Arc::new(Failures::default());
    let statuses = Statuses::default();
    let kubeconfig = server.data.path().join("kubeconfig");
    let idle_rss = server.rss_mib();

    let mut phases = serde_json::Map::new();
    let mut kubectl = serde_json::Map::new();
    let started = Instant::now();
    let phase = |name: &str, attack: &mut dyn FnMut() -> Value| -> (Value, Value) {
        let stop = Arc::new(AtomicBool::new(false));
        let looping = kubectl_loop(kubeconfig.clone(), Arc::clone(&stop), Arc::clone(&failures));
        let result = attack();
        stop.store(true, Ordering::SeqCst);
        let latencies = looping.join().unwrap();
        println!("{name}: done");
        (result, summary(latencies))
    };
    for name in ["connections", "bodies", "watches", "burst", "random"] {
        let (result, kubectl_during) = phase(name, &mut || {
            runtime.block_on(async {
                match name {
                    "connections" => attack_connections(&server, scale).await,
                    "bodies" => attack_bodies(&server, &failures).await,
                    "watches" => attack_watches(&server, scale.watches, &statuses, &failures).await,
                    "burst" => attack_burst(&server, scale.burst, &statuses, &failures).await,
                    _ => {
                        let requests =
                            attack_requests(&server, scale.random_requests, &statuses, &failures)
                                .await;
                        let garbage = attack_garbage(&server, scale.raw_garbage, &failures).await;
                        json!({ "requests": requests, "garbage": garbage })
                    }
                }
            })
        });
        phases.insert(name.to_owned(), result);
        kubectl.insert(name.to_owned(), kubectl_during);
        if !runtime.block_on(ready(&server)) {
            failures.add(format!("not ready after the {name} attack"));
        }
    }
    let alive = server.alive();
    if !alive {
        failures.add("the control plane died".into());
    }
    let peak_rss = server.peak_rss_mib();
    if peak_rss > RSS_BOUND_MIB {
        failures.add(format!("peak RSS {peak_rss:.0} MiB > {RSS_BOUND_MIB} MiB"));
    }
    let failures = failures.take();
    // Stopped before any exit: `process::exit` runs no destructor.
    drop(server);
    let result = json!({
        "quick": quick,
        "seconds": started.elapsed().as_secs_f64(),
        "phases": phases,
        "kubectl_get_pods": kubectl,
        "statuses": statuses.json(),
        "answered_429": statuses.get(429),
        "rss_idle_mib": idle_rss,
        "rss_peak_mib": peak_rss,
        "alive": alive,
        "failures": failures,
    });
    print_table(&result);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chaos.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
    println!("\nwrote {}", path.display());
    if !failures.is_empty() {
        eprintln!("\nchaos: {} failure(s):", failures.len());
        for failure in &failures {
            eprintln!("  - {failure}");
        }
        std::process::exit(1);
    }
}

fn print_table(result: &Value) {
    let c = &result["phases"]["connections"];
    let k = &result["kubectl_get_pods"];
    let w = &result["phases"]["watches"];
    let r = &result["phases"]["random"];
    let rows = [
        (
            "idle TCP connections held at once",
            c["idle_held_at_once"].clone(),
        ),
        (
            "  cut by the server (and reopened)",
            c["idle_cut_by_server"].clone(),
        ),
        (
            "stalled TLS handshakes held at once",
            c["stalled_held_at_once"].clone(),
        ),
        (
            "  cut by the server (and reopened)",
            c["stalled_cut_by_server"].clone(),
        ),
        (
            "kubectl get pods p50 ms (connections)",
            k["connections"]["p50_ms"].clone(),
        ),
        (
            "kubectl get pods p99 ms (connections)",
            k["connections"]["p99_ms"].clone(),
        ),
        (
            "kubectl get pods p99 ms (bodies)",
            k["bodies"]["p99_ms"].clone(),
        ),
        (
            "kubectl get pods p99 ms (watches)",
            k["watches"]["p99_ms"].clone(),
        ),
        (
            "kubectl get pods p99 ms (random)",
            k["random"]["p99_ms"].clone(),
        ),
        (
            "10 MB body",
            result["phases"]["bodies"]["body_10mb"].clone(),
        ),
        (
            "patch bomb",
            result["phases"]["bodies"]["patch_bomb"].clone(),
        ),
        (
            "YAML alias bomb",
            result["phases"]["bodies"]["yaml_alias_bomb"].clone(),
        ),
        ("watches asked", w["asked"].clone()),
        ("watches established", w["established"].clone()),
        ("watches that saw the event", w["saw_the_event"].clone()),
        (
            "slow creates at once",
            result["phases"]["burst"]["asked"].clone(),
        ),
        ("  created", result["phases"]["burst"]["created"].clone()),
        (
            "  refused 429 (with Retry-After)",
            result["phases"]["burst"]["refused_429"].clone(),
        ),
        (
            "kubectl get pods p99 ms (burst)",
            k["burst"]["p99_ms"].clone(),
        ),
        ("random requests", r["requests"]["requests"].clone()),
        (
            "  ended by GOAWAY (rapid-reset guard)",
            r["requests"]["ended_by_goaway_enhance_your_calm"].clone(),
        ),
        ("raw garbage connections", r["garbage"]["sent"].clone()),
        ("requests answered 429", result["answered_429"].clone()),
        ("RSS idle MiB", result["rss_idle_mib"].clone()),
        ("RSS peak MiB", result["rss_peak_mib"].clone()),
    ];
    println!("\n{:<42} {:>12}", "chaos", "");
    for (name, value) in rows {
        let shown = match value.as_f64() {
            Some(v) if value.is_f64() => format!("{v:.1}"),
            _ => value.to_string(),
        };
        println!("{name:<42} {shown:>12}");
    }
}
