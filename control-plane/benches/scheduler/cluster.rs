//! The cluster one node count's runs share: a control plane, its hollow nodes, and what the
//! runs read from it (namespaces, `/metrics`, the processes' CPU time).

use std::{
    io::BufRead as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::common::{Server, proc, prometheus::HistogramTotals};

/// What the hollow-node process prints once all its nodes have listed their pods
/// (`apiary_node_agent::hollow::ALL_SYNCED`).
const ALL_SYNCED: &str = "hollow nodes synced:";

/// The hollow-node process: every node of the cluster in one process.
pub struct Hollow {
    child: Mutex<Child>,
    /// Told of each [`ALL_SYNCED`] line the process prints.
    synced: Mutex<mpsc::Receiver<()>>,
    kubeconfig: PathBuf,
    count: usize,
}

impl Hollow {
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Kills every hollow node at once and starts them again: thousands of agents reconnect,
    /// register and relist their pods together. Returns the seconds from the start until
    /// every node has listed its pods.
    pub fn restart(&self) -> f64 {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let started = Instant::now();
        let (spawned, synced) = spawn_hollow(&self.kubeconfig, self.count);
        *child = spawned;
        *self.synced.lock().unwrap() = synced;
        drop(child);
        self.wait_synced(Duration::from_secs(600));
        started.elapsed().as_secs_f64()
    }

    /// Waits for the process's [`ALL_SYNCED`] line.
    fn wait_synced(&self, timeout: Duration) {
        self.synced
            .lock()
            .unwrap()
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("the hollow nodes did not all list their pods: {e}"));
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub fn start_hollow(server: &Server, count: usize) -> Hollow {
    // Agents authenticate with the cluster token; the admin kubeconfig holds a certificate.
    let mut config: Value = serde_yaml::from_str(
        &std::fs::read_to_string(server.data.path().join("kubeconfig")).unwrap(),
    )
    .unwrap();
    config["users"][0]["user"] = json!({ "token": server.token });
    let kubeconfig = server.data.path().join("node.kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&config).unwrap()).unwrap();
    let (child, synced) = spawn_hollow(&kubeconfig, count);
    Hollow {
        child: Mutex::new(child),
        synced: Mutex::new(synced),
        kubeconfig,
        count,
    }
}

/// Starts the hollow-node process, and a thread that reads its stdout (to its end, so that it
/// never blocks on a full pipe) and reports each [`ALL_SYNCED`] line.
fn spawn_hollow(kubeconfig: &std::path::Path, count: usize) -> (Child, mpsc::Receiver<()>) {
    let agent = std::env::var("APIARY_NODE_AGENT")
        .expect("APIARY_NODE_AGENT: the hollow-node binary (cargo xtask bench scheduler sets it)");
    let mut child = Command::new(agent)
        .args(["hollow", "--count", &count.to_string()])
        .args(["--cpu", "64", "--memory", "256Gi", "--pods", "110"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(ALL_SYNCED) {
                let _ = tx.send(());
            }
        }
    });
    (child, rx)
}

pub async fn get(server: &Server, client: &reqwest::Client, path: &str) -> Value {
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

pub async fn wait_nodes(server: &Server, count: usize) {
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

pub async fn create_namespace(server: &Server, client: &reqwest::Client, name: &str) {
    let created = client
        .post(format!("{}/api/v1/namespaces", server.base))
        .bearer_auth(&server.token)
        .json(&json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "creating namespace {name}");
}

/// Deletes a run's namespace and waits until the server has emptied and removed it, so that
/// the next run starts on empty nodes; returns the seconds that took (outside every figure's
/// window: the server deletes a namespace's pods one at a time, and that is slow).
pub async fn delete_namespace(server: &Server, client: &reqwest::Client, name: &str) -> f64 {
    let started = Instant::now();
    let path = format!("{}/api/v1/namespaces/{name}", server.base);
    let deleted = client
        .delete(&path)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "deleting namespace {name}");
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let status = client
            .get(&path)
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "namespace {name} still there after 1800 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `scheduler_scheduling_attempt_duration_seconds` from `/metrics`: every attempt, and the
/// attempts that ended with the pod bound.
#[derive(Clone, Copy, Debug)]
pub struct SchedulingTotals {
    pub all: HistogramTotals,
    pub scheduled: HistogramTotals,
}

impl SchedulingTotals {
    const HISTOGRAM: &str = "scheduler_scheduling_attempt_duration_seconds";

    pub async fn scrape(server: &Server, client: &reqwest::Client) -> Self {
        let response = client
            .get(format!("{}/metrics", server.base))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET /metrics");
        let text = response.text().await.unwrap();
        Self {
            all: HistogramTotals::read(&text, Self::HISTOGRAM, &[]),
            scheduled: HistogramTotals::read(&text, Self::HISTOGRAM, &[("result", "scheduled")]),
        }
    }

    /// The scheduler's milliseconds per pod bound (every attempt's time, failed ones too,
    /// over the pods bound) and its attempts per pod bound, between `before` and `self`.
    pub fn per_pod_since(self, before: Self) -> (f64, f64) {
        let all = self.all.since(before.all);
        let bound = self.scheduled.since(before.scheduled).count;
        (all.sum * 1e3 / bound, all.count / bound)
    }
}

/// CPU seconds used so far (user + system, every thread) by the control plane, the hollow
/// nodes and this bench's own client.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    pub control_plane: f64,
    pub hollow: f64,
    pub bench: f64,
}

impl Cpu {
    pub fn now(server: &Server, hollow: &Hollow) -> Self {
        let of = |pid| proc::cpu_seconds(pid).expect("a process of the bench is gone");
        Self {
            control_plane: of(server.pid()),
            hollow: of(hollow.pid()),
            bench: of(std::process::id()),
        }
    }

    /// The figures of the CPU used since `before`: each process's seconds, and the hollow
    /// nodes' share of what the control plane and they used together.
    pub fn figures_since(self, before: Self) -> [(&'static str, f64); 4] {
        let control_plane = self.control_plane - before.control_plane;
        let hollow = self.hollow - before.hollow;
        [
            ("cp_cpu_s", control_plane),
            ("hollow_cpu_s", hollow),
            (
                "hollow_cpu_share_pct",
                100.0 * hollow / (control_plane + hollow).max(f64::MIN_POSITIVE),
            ),
            ("bench_cpu_s", self.bench - before.bench),
        ]
    }
}
