//! The write load (16 clients creating ConfigMaps, each moving to the next API server when one
//! fails, as clients behind a load balancer do) and a read loop, and what they saw.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub const WRITERS: usize = 16;
const NAMESPACE: &str = "default";

/// An HTTPS client trusting the cluster CA, with the admin token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    /// From a control plane's `pki/` (its `ca.crt` and `admin.token`).
    pub fn new(pki: &Path) -> anyhow::Result<Self> {
        let tls = trusting(&pki.join("ca.crt"))?.with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let token = std::fs::read_to_string(pki.join("admin.token"))?
            .trim()
            .to_owned();
        Ok(Self { http, token })
    }

    pub async fn get(&self, base: &str, path: &str) -> Result<(u16, Value), String> {
        let response = self
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        let code = response.status().as_u16();
        Ok((code, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn ready(&self, base: &str) -> bool {
        matches!(self.get(base, "/readyz").await, Ok((200, _)))
    }

    /// Every ConfigMap name in the namespace, read from the first server that answers.
    async fn config_maps(&self, bases: &[String]) -> Option<Vec<String>> {
        for base in bases {
            let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps");
            if let Ok((200, list)) = self.get(base, &path).await {
                let names = list["items"].as_array()?.iter();
                return Some(
                    names
                        .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_owned))
                        .collect(),
                );
            }
        }
        None
    }

    /// The controllers' Lease, read from the first server that answers: its holder while it
    /// holds it (the lease is fresh), and when it was last renewed.
    pub async fn lease(&self, bases: &[String]) -> Option<Lease> {
        for base in bases {
            let path =
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/apiary-controllers";
            if let Ok((200, lease)) = self.get(base, path).await {
                let renewed = lease["spec"]["renewTime"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?
                    .with_timezone(&chrono::Utc);
                let duration = lease["spec"]["leaseDurationSeconds"].as_i64()?;
                let fresh = renewed + chrono::Duration::seconds(duration) > chrono::Utc::now();
                let holder = lease["spec"]["holderIdentity"].as_str().map(str::to_owned);
                return Some(Lease {
                    holder: holder.filter(|_| fresh),
                    renewed,
                });
            }
        }
        None
    }

    /// The identity holding the controllers' Lease, while it holds it.
    pub async fn leader(&self, bases: &[String]) -> Option<String> {
        self.lease(bases).await?.holder
    }

    /// How many of the acknowledged writes in `seen` are missing now (all of them when no
    /// server answers the list).
    pub async fn lost(&self, bases: &[String], seen: &Seen) -> usize {
        let Some(names) = self.config_maps(bases).await else {
            return seen.acknowledged.len();
        };
        let present: HashSet<_> = names.into_iter().collect();
        seen.acknowledged
            .iter()
            .filter(|name| !present.contains(*name))
            .count()
    }
}

/// A TLS client configuration that trusts only the CA in the PEM file `ca`.
pub fn trusting(
    ca: &Path,
) -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let ca = std::fs::read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(cert?)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots))
}

/// The controllers' Lease as [`Api::lease`] read it.
#[derive(Debug)]
pub struct Lease {
    pub holder: Option<String>,
    pub renewed: chrono::DateTime<chrono::Utc>,
}

/// What the write load and the read loop saw.
#[derive(Default)]
pub struct Seen {
    /// Names whose create was answered 201.
    pub acknowledged: Vec<String>,
    /// Names whose create failed and whose retry found them created (applied, not answered).
    pub unanswered_but_applied: usize,
    /// Times of successful writes and reads.
    pub writes: Vec<Instant>,
    pub reads: Vec<Instant>,
    /// Failed requests by what failed them (`503`, `connect`…).
    pub failures: BTreeMap<String, usize>,
}

pub struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// [`WRITERS`] writers and one reader against `bases`, each moving to the next server when
    /// one fails. ConfigMaps are named `<step>-<writer>-<n>` and carry `value_bytes` bytes.
    pub fn start(api: &Api, bases: &[String], step: &str, value_bytes: usize) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let bases: Arc<[String]> = bases.into();
        let value = "x".repeat(value_bytes);
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let (api, bases, seen, stop) = (
                api.clone(),
                Arc::clone(&bases),
                Arc::clone(&seen),
                Arc::clone(&stop),
            );
            let (step, value) = (step.to_owned(), value.clone());
            tasks.push(tokio::spawn(async move {
                let mut server = writer % bases.len();
                let mut sequence = 0usize;
                let mut retrying = false;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("{step}-{writer}-{sequence}");
                    let body = json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name}, "data": {"v": value},
                    });
                    let url = format!("{}/api/v1/namespaces/{NAMESPACE}/configmaps", bases[server]);
                    let outcome = api
                        .http
                        .post(url)
                        .bearer_auth(&api.token)
                        .json(&body)
                        .send()
                        .await;
                    let done = {
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        match outcome.as_ref().map(reqwest::Response::status) {
                            Ok(code) if code.as_u16() == 201 => {
                                seen.acknowledged.push(name);
                                seen.writes.push(Instant::now());
                                true
                            }
                            // The create that failed was applied after all.
                            Ok(code) if code.as_u16() == 409 && retrying => {
                                seen.unanswered_but_applied += 1;
                                true
                            }
                            Ok(code) => {
                                *seen.failures.entry(code.as_u16().to_string()).or_default() += 1;
                                false
                            }
                            Err(e) => {
                                *seen.failures.entry(kind_of(e)).or_default() += 1;
                                false
                            }
                        }
                    };
                    if done {
                        sequence += 1;
                        retrying = false;
                        continue;
                    }
                    retrying = true;
                    server = (server + 1) % bases.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        let (api, seen_reads, stop_reads) = (api.clone(), Arc::clone(&seen), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut server = 0;
            while !stop_reads.load(Ordering::SeqCst) {
                let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps?limit=1");
                match api.get(&bases[server], &path).await {
                    Ok((200, _)) => seen_reads
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .reads
                        .push(Instant::now()),
                    _ => server = (server + 1) % bases.len(),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
        Self {
            seen,
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// Stops the load: what it saw, and its longest write and read outages.
    pub async fn stop(self) -> (Seen, Duration, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
        let ended = Instant::now();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        let writes = longest_gap(&seen.writes, self.started, ended);
        let reads = longest_gap(&seen.reads, self.started, ended);
        (seen, writes, reads)
    }

    pub fn written(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writes
            .len()
    }

    /// Whether a write failed with `code` (`507`…).
    pub fn failed_with(&self, code: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures
            .contains_key(code)
    }
}

fn kind_of(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// The longest time in `[start, end]` without one of `times`.
pub fn longest_gap(times: &[Instant], start: Instant, end: Instant) -> Duration {
    let mut times = times.to_vec();
    times.sort();
    let mut longest = Duration::ZERO;
    let mut previous = start;
    for t in times.into_iter().chain([end]) {
        longest = longest.max(t.saturating_duration_since(previous));
        previous = previous.max(t);
    }
    longest
}
