//! `cargo xtask faults`: what the control plane loses, and for how long it stops, when a part of
//! it dies.
//!
//! An HA control plane on loopback: three etcd members (Debian's `etcd-server`) with peer and
//! client TLS and client-certificate auth, and three control planes sharing one cluster CA (as
//! kubeadm's joined control planes do), each with its own serving certificate, all on the three
//! members. Each fault runs under a write load (16 clients creating ConfigMaps, each going to
//! the next API server when one fails, as clients behind a load balancer do) and a read loop:
//! 1. SIGKILL of the control plane leading the controllers, then its restart;
//! 2. the leading control plane cut off from etcd (a relay between them stops passing bytes, as
//!    a partition drops packets), then joined again;
//! 3. SIGKILL of one etcd member, then its restart;
//! 4. SIGKILL of two members (quorum lost), then their restart;
//! 5. a full disk under the embedded store (a small tmpfs as the data dir; needs root).
//!
//! Each reports writes acknowledged and lost (an acknowledged ConfigMap missing afterwards), the
//! longest write and read outage (the longest time without a successful one), the time until
//! the controllers have a leader again, and the time until the cluster is whole (every part
//! back and serving). It fails (exit 1) when an acknowledged write is lost, when the cluster is
//! not whole within a minute, when a control-plane fault stops writes for more than 5 s, or when
//! more than 5 % of the writes fail while one etcd member is dead.
//! Prints a table and writes `target/bench/faults.json`. `--quick` is CI's bounded run.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

mod common;

use common::free_port;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::{Value, json};

const WRITERS: usize = 16;
/// Longer than this without a write through a control-plane fault fails the run.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// A fault that leaves the cluster broken longer than this fails the run.
const WHOLE_BOUND: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "default";

#[derive(Clone, Copy, Debug)]
struct Timing {
    /// Load before the fault.
    before: Duration,
    /// How long the fault lasts before the part is restarted.
    held: Duration,
    /// Load after the cluster is whole again.
    after: Duration,
}

const FULL: Timing = Timing {
    before: Duration::from_secs(5),
    held: Duration::from_secs(10),
    after: Duration::from_secs(5),
};

const QUICK: Timing = Timing {
    before: Duration::from_secs(2),
    held: Duration::from_secs(3),
    after: Duration::from_secs(2),
};

/// A directory for the run's files, kept (for its logs) when `APIARY_FAULTS_KEEP` is set.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("apiary-faults-")
        .disable_cleanup(std::env::var_os("APIARY_FAULTS_KEEP").is_some())
        .tempdir()
        .unwrap()
}

/// A CA and the certificates it signs, as PEM files in a folder.
struct Certificates {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
}

impl Certificates {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "etcd-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = scratch();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        Self {
            dir,
            ca: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `name.crt`/`name.key`: for a member (serving and dialing its peers on 127.0.0.1) or for
    /// a client.
    fn issue(&self, name: &str, member: bool) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if member {
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let files = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&files.0, cert.pem()).unwrap();
        std::fs::write(&files.1, key.serialize_pem()).unwrap();
        files
    }
}

/// A process the bench starts, kills and starts again with the same arguments.
struct Process {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn new(program: impl Into<PathBuf>, args: Vec<String>, log: PathBuf) -> Self {
        let mut process = Self {
            program: program.into(),
            args,
            log,
            child: None,
        };
        process.start();
        process
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Member {
    client: u16,
    process: Process,
}

/// Three etcd members with peer and client TLS.
struct Etcd {
    members: Vec<Member>,
    certificates: Certificates,
    /// The control planes' client certificate.
    client: (PathBuf, PathBuf),
    _data: tempfile::TempDir,
}

impl Etcd {
    fn start(size: usize) -> Self {
        let certificates = Certificates::new();
        let data = scratch();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=https://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let ca = certificates.ca().display().to_string();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                let (crt, key) = certificates.issue(&format!("m{i}"), true);
                let (crt, key) = (crt.display().to_string(), key.display().to_string());
                let client_url = format!("https://127.0.0.1:{client}");
                let peer_url = format!("https://127.0.0.1:{peer}");
                let args = [
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    &data.path().join(format!("m{i}")).display().to_string(),
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                    "--client-cert-auth",
                    "--trusted-ca-file",
                    &ca,
                    "--cert-file",
                    &crt,
                    "--key-file",
                    &key,
                    "--peer-client-cert-auth",
                    "--peer-trusted-ca-file",
                    &ca,
                    "--peer-cert-file",
                    &crt,
                    "--peer-key-file",
                    &key,
                ]
                .map(str::to_owned)
                .to_vec();
                let log = data.path().join(format!("m{i}.log"));
                Member {
                    client,
                    process: Process::new("etcd", args, log),
                }
            })
            .collect();
        let client = certificates.issue("apiary", false);
        Self {
            members,
            certificates,
            client,
            _data: data,
        }
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("https://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that presents the control planes' certificate, for etcd's `/health`.
    fn health_client(&self) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(self.certificates.ca()).unwrap();
        for cert in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(cert.unwrap()).unwrap();
        }
        let certs = rustls_pemfile::certs(&mut &std::fs::read(&self.client.0).unwrap()[..])
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut &std::fs::read(&self.client.1).unwrap()[..])
            .unwrap()
            .unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    }

    /// Members that answer `/health` with `true` (they are in a quorum).
    async fn healthy(&self, client: &reqwest::Client) -> usize {
        let mut healthy = 0;
        for member in &self.members {
            let url = format!("https://127.0.0.1:{}/health", member.client);
            let Ok(response) = client.get(url).send().await else {
                continue;
            };
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if body["health"] == "true" {
                healthy += 1;
            }
        }
        healthy
    }
}

/// A control plane process on a fixed port, so that it comes back where clients look for it.
struct ControlPlane {
    identity: String,
    base: String,
    data: PathBuf,
    process: Process,
}

fn start_control_plane(
    identity: &str,
    data: &Path,
    extra: &[String],
    shared_pki: Option<&Path>,
) -> ControlPlane {
    if let Some(from) = shared_pki {
        apiary_control_plane::apiserver::pki::share(from, data).unwrap();
    }
    let port = free_port();
    let mut args = vec![
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--identity".to_owned(),
        identity.to_owned(),
    ];
    args.extend_from_slice(extra);
    let process = Process::new(
        env!("CARGO_BIN_EXE_apiary-control-plane"),
        args,
        data.with_extension("log"),
    );
    ControlPlane {
        identity: identity.to_owned(),
        base: format!("https://127.0.0.1:{port}"),
        data: data.to_owned(),
        process,
    }
}

/// An HTTPS client trusting the cluster CA, with the admin token.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new(pki: &Path) -> Self {
        let ca = std::fs::read(pki.join("ca.crt")).unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(common::tls_config(&ca))
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let token = std::fs::read_to_string(pki.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Self { http, token }
    }

    async fn get(&self, base: &str, path: &str) -> Result<(u16, Value), String> {
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

    async fn ready(&self, base: &str) -> bool {
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

    /// The identity holding the controllers' Lease, while it holds it.
    async fn leader(&self, bases: &[String]) -> Option<String> {
        for base in bases {
            let path =
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/apiary-controllers";
            if let Ok((200, lease)) = self.get(base, path).await {
                let renewed = lease["spec"]["renewTime"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
                let duration = lease["spec"]["leaseDurationSeconds"].as_i64()?;
                let fresh = renewed + chrono::Duration::seconds(duration) > chrono::Utc::now();
                return fresh
                    .then(|| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
                    .flatten();
            }
        }
        None
    }
}

/// What the write load and the read loop saw.
#[derive(Default)]
struct Seen {
    /// Names whose create was answered 201.
    acknowledged: Vec<String>,
    /// Names whose create failed and whose retry found them created (applied, not answered).
    unanswered_but_applied: usize,
    /// Times of successful writes and reads.
    writes: Vec<Instant>,
    reads: Vec<Instant>,
    /// Failed requests by what failed them (`status 503`, `connect`…).
    failures: std::collections::BTreeMap<String, usize>,
}

struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// 16 writers and one reader against `bases`, each moving to the next server when one fails.
    fn start(api: &Api, bases: &[String], step: &str, value_bytes: usize) -> Self {
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
                        let mut seen = seen.lock().unwrap();
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
                    Ok((200, _)) => seen_reads.lock().unwrap().reads.push(Instant::now()),
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

    async fn stop(self) -> (Seen, Duration, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
        let ended = Instant::now();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let writes = longest_gap(&seen.writes, self.started, ended);
        let reads = longest_gap(&seen.reads, self.started, ended);
        (seen, writes, reads)
    }

    fn written(&self) -> usize {
        self.seen.lock().unwrap().writes.len()
    }

    fn last_failure(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        seen.failures
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, _)| k.clone())
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
fn longest_gap(times: &[Instant], start: Instant, end: Instant) -> Duration {
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

/// One fault's figures.
struct Outcome {
    fault: &'static str,
    acknowledged: usize,
    lost: usize,
    unanswered_but_applied: usize,
    write_outage: Duration,
    read_outage: Duration,
    /// From the fault to a leader holding the controllers' Lease again, when the fault cost
    /// the controllers their leader (`None`: they never stopped).
    leader_back: Option<Duration>,
    /// From the broken part's return (its restart, or space freed) to every part back and
    /// serving.
    whole: Duration,
    failures: std::collections::BTreeMap<String, usize>,
}

impl Outcome {
    fn json(&self) -> Value {
        json!({
            "fault": self.fault,
            "writes_acknowledged": self.acknowledged,
            "writes_lost": self.lost,
            "writes_applied_without_answer": self.unanswered_but_applied,
            "longest_write_outage_ms": self.write_outage.as_millis() as u64,
            "longest_read_outage_ms": self.read_outage.as_millis() as u64,
            "leader_back_ms": self.leader_back.map(|d| d.as_millis() as u64),
            "whole_after_ms": self.whole.as_millis() as u64,
            "failed_requests": self.failures,
        })
    }
}

/// Waits until `check` holds, polling; how long it took, or `None` past [`WHOLE_BOUND`].
async fn until<F: AsyncFnMut() -> bool>(since: Instant, mut check: F) -> Option<Duration> {
    loop {
        if check().await {
            return Some(since.elapsed());
        }
        if since.elapsed() > WHOLE_BOUND {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether every acknowledged write is there; the number missing.
async fn lost(api: &Api, bases: &[String], seen: &Seen) -> usize {
    let Some(names) = api.config_maps(bases).await else {
        return seen.acknowledged.len();
    };
    let present: std::collections::HashSet<_> = names.into_iter().collect();
    seen.acknowledged
        .iter()
        .filter(|name| !present.contains(*name))
        .count()
}

/// The network between one control plane and the etcd members: a relay per member that can be
/// cut. Cut, bytes stop flowing both ways while connections stay open (a partition drops
/// packets; nothing resets), and new connections get nowhere.
struct Link {
    cut: Arc<AtomicBool>,
    ports: Vec<u16>,
}

impl Link {
    async fn start(members: &[u16]) -> Self {
        let cut = Arc::new(AtomicBool::new(false));
        let mut ports = Vec::new();
        for &member in members {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let cut = Arc::clone(&cut);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", member)).await
                    else {
                        continue;
                    };
                    let (from_client, to_client) = client.into_split();
                    let (from_server, to_server) = server.into_split();
                    tokio::spawn(relay(from_client, to_server, Arc::clone(&cut)));
                    tokio::spawn(relay(from_server, to_client, Arc::clone(&cut)));
                }
            });
        }
        Self { cut, ports }
    }

    fn endpoints(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Copies `from` to `to`, holding what it read while the link is cut.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0; 16 << 10];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

struct Ha {
    etcd: Etcd,
    control_planes: Vec<ControlPlane>,
    /// Each control plane's link to etcd.
    links: Vec<Link>,
    api: Api,
    _dir: tempfile::TempDir,
}

impl Ha {
    async fn start() -> Self {
        let etcd = Etcd::start(3);
        let health = etcd.health_client();
        until(Instant::now(), async || etcd.healthy(&health).await == 3)
            .await
            .expect("etcd did not come up");
        let dir = scratch();
        let members: Vec<u16> = etcd.members.iter().map(|m| m.client).collect();
        let mut links = Vec::new();
        for _ in 0..3 {
            links.push(Link::start(&members).await);
        }
        let extra = vec![
            "--etcd-endpoints".to_owned(),
            etcd.endpoints(),
            "--etcd-cafile".to_owned(),
            etcd.certificates.ca().display().to_string(),
            "--etcd-certfile".to_owned(),
            etcd.client.0.display().to_string(),
            "--etcd-keyfile".to_owned(),
            etcd.client.1.display().to_string(),
        ];
        let flags = |link: &Link| {
            let mut flags = extra.clone();
            flags[1] = link.endpoints();
            flags
        };
        let first = start_control_plane("cp0", &dir.path().join("cp0"), &flags(&links[0]), None);
        let first_data = first.data.clone();
        let pki = first.data.join("pki");
        let deadline = Instant::now() + WHOLE_BOUND;
        while !first.data.join("kubeconfig").exists() {
            assert!(
                Instant::now() < deadline,
                "the first control plane did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut control_planes = vec![first];
        for (i, link) in links.iter().enumerate().skip(1) {
            let name = format!("cp{i}");
            let data = dir.path().join(&name);
            control_planes.push(start_control_plane(
                &name,
                &data,
                &flags(link),
                Some(&first_data),
            ));
        }
        let api = Api::new(&pki);
        let ha = Self {
            etcd,
            control_planes,
            links,
            api,
            _dir: dir,
        };
        let since = Instant::now();
        if until(since, async || ha.whole().await).await.is_none() {
            panic!(
                "the HA control plane did not come up: {:?}",
                ha.broken_part().await
            );
        }
        ha
    }

    /// The index of the control plane named `leader` (the first when none leads).
    fn leading(&self, leader: Option<&str>) -> usize {
        self.control_planes
            .iter()
            .position(|c| Some(c.identity.as_str()) == leader)
            .unwrap_or(0)
    }

    fn bases(&self) -> Vec<String> {
        self.control_planes.iter().map(|c| c.base.clone()).collect()
    }

    /// Every member healthy, every control plane ready, and a leader.
    async fn whole(&self) -> bool {
        self.broken_part().await.is_none()
    }

    /// What is not whole yet.
    async fn broken_part(&self) -> Option<String> {
        let health = self.etcd.health_client();
        let healthy = self.etcd.healthy(&health).await;
        if healthy < self.etcd.members.len() {
            return Some(format!("{healthy} etcd members healthy"));
        }
        for cp in &self.control_planes {
            if !self.api.ready(&cp.base).await {
                return Some(format!("{} not ready", cp.identity));
            }
        }
        match self.api.leader(&self.bases()).await {
            Some(_) => None,
            None => Some("no control plane leads".into()),
        }
    }

    /// Runs a fault under load: `fault` breaks something and returns what to mend; the part is
    /// mended after [`Timing::held`].
    async fn run(
        &mut self,
        name: &'static str,
        timing: Timing,
        fault: impl FnOnce(&mut Self, Option<&str>) -> Vec<Box<dyn FnOnce(&mut Self)>>,
    ) -> Outcome {
        let bases = self.bases();
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let load = Load::start(&self.api, &bases, &slug, 64);
        tokio::time::sleep(timing.before).await;
        let leader_before = self.api.leader(&bases).await;
        let broken = Instant::now();
        let mends = fault(self, leader_before.as_deref());
        // The controllers' leader: when it was lost (no fresh lease to be read) or changed,
        // and when one led again.
        let mut lost_at = None;
        let mut leader_back = None;
        let held_until = broken + timing.held;
        while Instant::now() < held_until {
            // A probe hanging on a broken part must not stretch the fault.
            let left = held_until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.api.leader(&bases)).await {
                // Cut short by the end of the fault: nothing learnt.
                Err(_) => {}
                Ok(None) => {
                    lost_at.get_or_insert(broken.elapsed());
                }
                Ok(Some(leader)) => {
                    let changed = leader_before.as_deref() != Some(leader.as_str());
                    if leader_back.is_none() && (changed || lost_at.is_some()) {
                        leader_back = Some(broken.elapsed());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mended = Instant::now();
        for mend in mends {
            mend(self);
        }
        let whole = until(mended, async || self.whole().await).await;
        if leader_back.is_none() && lost_at.is_some() {
            leader_back = until(broken, async || self.api.leader(&bases).await.is_some()).await;
        }
        tokio::time::sleep(timing.after).await;
        let written = load.written();
        let failure = load.last_failure();
        let (seen, write_outage, read_outage) = load.stop().await;
        let lost = lost(&self.api, &bases, &seen).await;
        println!(
            "{name}: {written} writes, lost {lost}, write outage {write_outage:.1?}, whole after {whole:.1?} (most failures: {failure:?})"
        );
        Outcome {
            fault: name,
            acknowledged: seen.acknowledged.len(),
            lost,
            unanswered_but_applied: seen.unanswered_but_applied,
            write_outage,
            read_outage,
            leader_back,
            whole: whole.unwrap_or(WHOLE_BOUND + Duration::from_secs(1)),
            failures: seen.failures,
        }
    }
}

/// The embedded store's disk filling up: a tmpfs data dir with a filler file, writes until the
/// store refuses them, reads meanwhile, then the filler goes and writes must resume.
async fn disk_full(timing: Timing) -> Result<Outcome, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("mounting a tmpfs needs root".into());
    }
    let dir = scratch();
    let mount = dir.path().join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "apiary-faults"])
        .arg(&mount)
        .status()
        .map_err(|e| format!("mount: {e}"))?;
    if !status.success() {
        return Err(format!("mount failed: {status}"));
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let filler = mount.join("filler");
    std::fs::write(&filler, vec![0u8; 16 << 20]).unwrap();
    let data = mount.join("cp");
    let mut cp = start_control_plane("solo", &data, &[], None);
    let since = Instant::now();
    while !data.join("kubeconfig").exists() {
        if since.elapsed() > WHOLE_BOUND {
            return Err("the control plane did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api = Api::new(&data.join("pki"));
    let bases = vec![cp.base.clone()];
    until(since, async || api.ready(&cp.base).await)
        .await
        .ok_or("the control plane never got ready")?;
    // 16 KiB ConfigMaps fill 32 MiB in about 2,000 writes.
    let load = Load::start(&api, &bases, "disk", 16 << 10);
    let full = until(Instant::now(), async || {
        load.seen.lock().unwrap().failures.contains_key("507")
    })
    .await
    .ok_or_else(|| format!("writes never failed with 507: {:?}", load.last_failure()))?;
    let broken = Instant::now();
    println!("disk full after {full:.1?}");
    let mut problems = Vec::new();
    if api.ready(&cp.base).await {
        problems.push("/readyz said ready on a full disk".to_owned());
    }
    tokio::time::sleep(timing.held).await;
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let before = load.written();
    let whole = until(freed, async || {
        load.written() > before && api.ready(&cp.base).await
    })
    .await;
    tokio::time::sleep(timing.after).await;
    let (seen, _, read_outage) = load.stop().await;
    let write_outage = longest_gap(&seen.writes, broken, Instant::now());
    let lost = lost(&api, &bases, &seen).await;
    let other_errors: Vec<_> = seen
        .failures
        .keys()
        .filter(|k| k.as_str() != "507")
        .cloned()
        .collect();
    if !other_errors.is_empty() {
        problems.push(format!(
            "writes failed other than with 507: {:?}",
            seen.failures
        ));
    }
    cp.process.kill();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(Outcome {
        fault: "disk full (embedded store)",
        acknowledged: seen.acknowledged.len(),
        lost,
        unanswered_but_applied: seen.unanswered_but_applied,
        write_outage,
        read_outage,
        leader_back: None,
        whole: whole.unwrap_or(WHOLE_BOUND + Duration::from_secs(1)),
        failures: seen.failures,
    })
}

fn table(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<34} {:>7} {:>5} {:>13} {:>12} {:>10} {:>9}\n",
        "fault", "acked", "lost", "write outage", "read outage", "leader in", "whole in"
    );
    let ms = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    for o in outcomes {
        out.push_str(&format!(
            "{:<34} {:>7} {:>5} {:>13} {:>12} {:>10} {:>9}\n",
            o.fault,
            o.acknowledged,
            o.lost,
            ms(o.write_outage),
            ms(o.read_outage),
            o.leader_back.map_or("-".to_owned(), ms),
            ms(o.whole),
        ));
    }
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let timing = if quick { QUICK } else { FULL };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut failures = Vec::new();
    let outcomes = runtime.block_on(async {
        let mut ha = Ha::start().await;
        let mut outcomes = Vec::new();
        outcomes.push(
            ha.run("control plane leader SIGKILL", timing, |ha, leader| {
                let i = ha.leading(leader);
                ha.control_planes[i].process.kill();
                vec![Box::new(move |ha: &mut Ha| {
                    ha.control_planes[i].process.start()
                })]
            })
            .await,
        );
        outcomes.push(
            ha.run("leader partitioned from etcd", timing, |ha, leader| {
                let i = ha.leading(leader);
                ha.links[i].cut.store(true, Ordering::SeqCst);
                vec![Box::new(move |ha: &mut Ha| {
                    ha.links[i].cut.store(false, Ordering::SeqCst)
                })]
            })
            .await,
        );
        outcomes.push(
            ha.run("etcd member SIGKILL", timing, |ha, _| {
                ha.etcd.members[0].process.kill();
                vec![Box::new(|ha: &mut Ha| ha.etcd.members[0].process.start())]
            })
            .await,
        );
        outcomes.push(
            ha.run("etcd quorum lost (2 of 3)", timing, |ha, _| {
                ha.etcd.members[1].process.kill();
                ha.etcd.members[2].process.kill();
                vec![Box::new(|ha: &mut Ha| {
                    ha.etcd.members[1].process.start();
                    ha.etcd.members[2].process.start();
                })]
            })
            .await,
        );
        drop(ha);
        match disk_full(timing).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(problem) => failures.push(format!("disk full: {problem}")),
        }
        outcomes
    });
    for o in &outcomes {
        if o.lost > 0 {
            failures.push(format!("{}: {} acknowledged writes lost", o.fault, o.lost));
        }
        if o.whole > WHOLE_BOUND {
            failures.push(format!("{}: not whole within {WHOLE_BOUND:?}", o.fault));
        }
        // One member of three is no outage: its requests go to the others within a probe.
        let failed: usize = o.failures.values().sum();
        if o.fault == "etcd member SIGKILL" && failed * 20 > o.acknowledged {
            failures.push(format!(
                "{}: {failed} writes failed of {} (a dead member keeps its share of requests)",
                o.fault, o.acknowledged
            ));
        }
        let control_plane_fault =
            o.fault.starts_with("control plane") || o.fault.starts_with("leader partitioned");
        if control_plane_fault && o.write_outage > FAILOVER_BOUND {
            failures.push(format!(
                "{}: writes stopped for {:.1?} (> {FAILOVER_BOUND:?})",
                o.fault, o.write_outage
            ));
        }
    }
    let table = table(&outcomes);
    println!("\n{table}");
    let report = json!({
        "quick": quick,
        "writers": WRITERS,
        "faults": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
        "failures": failures,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("faults.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}
