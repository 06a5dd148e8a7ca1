//! Hollow nodes: many simulated nodes in one process, for scheduler and control-plane tests and
//! scale runs. Each registers a Node, renews its Lease, and reports every pod bound to it as
//! Running and Ready at once, with an IP from its pod CIDR. No containers are run.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apiary_agent_api::{
    Client,
    v1::{
        HeartbeatRequest, PodStatusReport, RegisterRequest, WatchPodsRequest, object_event::Type,
    },
};
use apiary_node_agent::{api_client::ApiClient, kubeconfig::Endpoint};
use futures::StreamExt as _;
use serde_json::{Value, json};

/// Nodes per gRPC connection: each node holds one long-lived stream, and servers cap the
/// concurrent streams of a connection (hyper: 200).
const NODES_PER_CONNECTION: usize = 100;
/// Printed on stdout once every node has registered and listed its pods: benchmarks restart
/// the process and wait for it to time how long thousands of agents take to reconnect.
pub const ALL_SYNCED: &str = "hollow nodes synced:";

/// `apiary-node-agent hollow`.
#[derive(Debug, clap::Args)]
pub struct HollowArgs {
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// The kubeconfig naming the control plane, its CA and the token.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Node names are this prefix and an index (`hollow-0`, `hollow-1`, …).
    #[arg(long, default_value = "hollow-")]
    name_prefix: String,
    /// Allocatable CPU of each node.
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Allocatable memory of each node.
    #[arg(long, default_value = "16Gi")]
    memory: String,
    /// How many pods each node takes.
    #[arg(long, default_value = "110")]
    pods: String,
    /// How often each node renews its Lease, in seconds (the kubelet's default: 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_seconds: u64,
    /// Extra node labels, `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
}

/// Runs `args.count` hollow nodes until the process is stopped.
pub async fn run(args: HollowArgs) -> anyhow::Result<()> {
    let endpoint = Endpoint::from_kubeconfig(&args.kubeconfig)?;
    let api = ApiClient::new(&endpoint)?;
    let mut labels = serde_json::Map::new();
    for pair in &args.labels {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--labels: {pair:?} is not k=v"))?;
        labels.insert(k.to_owned(), json!(v));
    }
    let mut client: Option<Client> = None;
    let mut tasks = Vec::new();
    let synced = Arc::new(Synced {
        nodes: AtomicUsize::new(0),
        of: args.count,
        started: Instant::now(),
    });
    for index in 0..args.count {
        if index % NODES_PER_CONNECTION == 0 {
            client = Some(connect(&endpoint).await);
        }
        let node = HollowNode {
            name: format!("{}{index}", args.name_prefix),
            // Loopback addresses (all of 127/8 is): the control plane dials a node's address
            // (resource metrics, logs, exec), and a hollow node's must lead nowhere but here;
            // nothing listens there, so each dial is refused at once.
            host_ip: Ipv4Addr::new(127, 254, (index / 250) as u8, (index % 250 + 1) as u8),
            client: client.clone().expect("connected above"),
            api: api.clone(),
            heartbeat: Duration::from_secs(args.heartbeat_seconds),
            synced: Arc::clone(&synced),
        };
        let object = node.object(&args, &labels);
        tasks.push(tokio::spawn(node.run(object)));
    }
    tracing::info!(count = args.count, "hollow nodes started");
    for task in tasks {
        task.await.context("a hollow node panicked")?;
    }
    Ok(())
}

/// Connects, retrying until the control plane answers.
async fn connect(endpoint: &Endpoint) -> Client {
    loop {
        match apiary_agent_api::connect(&endpoint.server, &endpoint.ca_pem, &endpoint.token).await {
            Ok(client) => return client,
            Err(e) => {
                tracing::warn!(error = %e, "connecting; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How many nodes have listed their pods once.
#[derive(Debug)]
struct Synced {
    nodes: AtomicUsize,
    of: usize,
    started: Instant,
}

impl Synced {
    fn one_more(&self) {
        if self.nodes.fetch_add(1, Ordering::Relaxed) + 1 == self.of {
            println!(
                "{ALL_SYNCED} {} in {:.3}s",
                self.of,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// One simulated node.
#[derive(Debug, Clone)]
struct HollowNode {
    name: String,
    host_ip: Ipv4Addr,
    client: Client,
    api: ApiClient,
    heartbeat: Duration,
    synced: Arc<Synced>,
}

impl HollowNode {
    fn object(&self, args: &HollowArgs, extra: &serde_json::Map<String, Value>) -> Value {
        let mut labels = extra.clone();
        labels.insert("kubernetes.io/hostname".into(), json!(self.name));
        labels.insert("kubernetes.io/os".into(), json!("linux"));
        labels.insert("kubernetes.io/arch".into(), json!("amd64"));
        let resources = json!({ "cpu": args.cpu, "memory": args.memory, "pods": args.pods });
        json!({
            "metadata": { "name": self.name, "labels": labels },
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    { "type": "InternalIP", "address": self.host_ip.to_string() },
                    { "type": "Hostname", "address": self.name },
                ],
                "nodeInfo": {
                    "machineID": "", "systemUUID": "", "bootID": "",
                    "kernelVersion": "hollow", "osImage": "Apiary hollow node",
                    "containerRuntimeVersion": "hollow://0.1.0", "kubeletVersion": "v1.32.0-apiary",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
                },
            },
        })
    }

    async fn run(mut self, object: Value) {
        let node_json = serde_json::to_vec(&object).expect("a JSON value always serializes");
        let pod_cidr = loop {
            match self
                .client
                .register(RegisterRequest {
                    node_json: node_json.clone(),
                })
                .await
            {
                Ok(reply) => break reply.into_inner().pod_cidr,
                Err(e) => {
                    tracing::warn!(node = %self.name, error = %e, "registering; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        tracing::info!(node = %self.name, %pod_cidr, "registered");
        tokio::spawn(heartbeats(
            self.client.clone(),
            self.name.clone(),
            self.heartbeat,
        ));
        let mut ips = PodIps::new(&pod_cidr);
        let mut listed = false;
        loop {
            if let Err(e) = self.watch_pods(&mut ips, &mut listed).await {
                tracing::warn!(node = %self.name, error = %e, "pod watch ended; rewatching");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Reports each new pod of the node Running; returns when the stream ends. `listed` turns
    /// true (and is counted) at the first listing's end.
    async fn watch_pods(&mut self, ips: &mut PodIps, listed: &mut bool) -> anyhow::Result<()> {
        let mut stream = self
            .client
            .watch_pods(WatchPodsRequest {
                node_name: self.name.clone(),
            })
            .await?
            .into_inner();
        while let Some(event) = stream.next().await {
            let event = event?;
            let kind = Type::try_from(event.r#type).unwrap_or(Type::Unspecified);
            if kind == Type::Synced && !*listed {
                *listed = true;
                self.synced.one_more();
            }
            if !matches!(kind, Type::Added | Type::Modified | Type::Deleted) {
                continue;
            }
            let pod: Value = serde_json::from_slice(&event.object_json)?;
            let uid = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if kind == Type::Deleted {
                ips.release(&uid);
                continue;
            }
            if pod["metadata"]["deletionTimestamp"].is_string() {
                // Nothing runs here to stop: finish the graceful deletion at once, as an agent
                // does once its containers are gone.
                let api = self.api.clone();
                let path = format!(
                    "/api/v1/namespaces/{}/pods/{}",
                    pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                    pod["metadata"]["name"].as_str().unwrap_or_default()
                );
                let options = json!({ "gracePeriodSeconds": 0, "preconditions": { "uid": uid } });
                tokio::spawn(async move {
                    if let Err(e) = api.delete(&path, &options).await {
                        tracing::debug!(error = %format!("{e:#}"), "finishing a pod deletion");
                    }
                });
                continue;
            }
            if let Some(ip) = pod["status"]["podIP"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                && pod["status"]["phase"] == "Running"
            {
                // Already reported (by this process or an earlier one).
                ips.claim(&uid, ip);
                continue;
            }
            let Some(ip) = ips.assign(&uid) else {
                tracing::warn!(node = %self.name, "pod CIDR exhausted");
                continue;
            };
            let report = PodStatusReport {
                namespace: pod["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                name: pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                uid: uid.clone(),
                status_json: serde_json::to_vec(&running_status(&pod, ip, self.host_ip))?,
            };
            if let Err(e) = self.client.report_pod_status(report).await {
                // Gone or replaced meanwhile: the watch tells what comes next.
                tracing::debug!(node = %self.name, error = %e, "reporting pod status");
                ips.release(&uid);
            }
        }
        Ok(())
    }
}

async fn heartbeats(mut client: Client, node_name: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = client
            .heartbeat(HeartbeatRequest {
                node_name: node_name.clone(),
                ready: None,
            })
            .await
        {
            tracing::warn!(node = %node_name, error = %e, "heartbeat failed");
        }
    }
}

/// The status of a pod whose containers all started just now.
fn running_status(pod: &Value, ip: Ipv4Addr, host_ip: Ipv4Addr) -> Value {
    let now = chrono_now();
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c["name"], "image": c["image"], "imageID": "",
                "containerID": format!("hollow://{}/{}", pod["metadata"]["uid"].as_str().unwrap_or_default(), c["name"].as_str().unwrap_or_default()),
                "ready": true, "started": true, "restartCount": 0,
                "state": { "running": { "startedAt": now } },
            })
        })
        .collect();
    let condition = |kind: &str| json!({ "type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now });
    json!({
        "phase": "Running",
        "conditions": [
            condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
            condition("ContainersReady"), condition("PodScheduled"),
        ],
        "hostIP": host_ip.to_string(),
        "hostIPs": [{ "ip": host_ip.to_string() }],
        "podIP": ip.to_string(),
        "podIPs": [{ "ip": ip.to_string() }],
        "startTime": now,
        "containerStatuses": containers,
    })
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Pod IPs of one node's /24: `.1` is the gateway, `.2`–`.254` go to pods.
#[derive(Debug)]
struct PodIps {
    prefix: [u8; 3],
    by_pod: HashMap<String, Ipv4Addr>,
    used: HashSet<Ipv4Addr>,
}

impl PodIps {
    fn new(cidr: &str) -> Self {
        let base: Ipv4Addr = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(Ipv4Addr::new(10, 244, 255, 0));
        let [a, b, c, _] = base.octets();
        Self {
            prefix: [a, b, c],
            by_pod: HashMap::new(),
            used: HashSet::new(),
        }
    }

    fn claim(&mut self, uid: &str, ip: Ipv4Addr) {
        self.used.insert(ip);
        self.by_pod.insert(uid.to_owned(), ip);
    }

    fn assign(&mut self, uid: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_pod.get(uid) {
            return Some(*ip);
        }
        let [a, b, c] = self.prefix;
        let ip = (2..=254)
            .map(|d| Ipv4Addr::new(a, b, c, d))
            .find(|ip| !self.used.contains(ip))?;
        self.claim(uid, ip);
        Some(ip)
    }

    fn release(&mut self, uid: &str) {
        if let Some(ip) = self.by_pod.remove(uid) {
            self.used.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_come_from_the_node_cidr_and_are_reused() {
        let mut ips = PodIps::new("10.244.3.0/24");
        assert_eq!(ips.assign("a"), Some(Ipv4Addr::new(10, 244, 3, 2)));
        assert_eq!(ips.assign("b"), Some(Ipv4Addr::new(10, 244, 3, 3)));
        assert_eq!(ips.assign("a"), Some(Ipv4Addr::new(10, 244, 3, 2)));
        ips.release("a");
        assert_eq!(ips.assign("c"), Some(Ipv4Addr::new(10, 244, 3, 2)));
    }

    #[test]
    fn times_are_rfc3339() {
        let now = chrono_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
