//! What every part of the agent shares: the node's facts, the runtime, the image store, the pod
//! network, and the clients of the control plane.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use apiary_agent_api::Client;
use apiary_images::{ImageStore, PullOptions};
use apiary_runtime::Runtime;

use super::node::NodeFacts;
use crate::api_client::ApiClient;
use crate::network::PodNetwork;

/// Shared by the pod workers, the pod manager and the streaming server.
#[derive(Debug)]
pub struct Context {
    pub node: NodeFacts,
    pub runtime: Runtime,
    pub images: ImageStore,
    pub pull_options: PullOptions,
    pub network: PodNetwork,
    pub api: ApiClient,
    pub agent: Client,
    /// Persistent per-pod files: volumes and logs (`<data-dir>/pods/<uid>`).
    pub pods_dir: PathBuf,
    /// Per-pod runtime state: the sandbox's namespaces (`<run-dir>/pods/<uid>`).
    pub sandboxes_dir: PathBuf,
    /// Which pods run here, for logs and exec.
    pub registry: Registry,
    /// What pods' `/etc/resolv.conf` is made of.
    pub dns: DnsSettings,
    /// The Service behind each frontend of the service maps, for `GET /apiary/v1/services`:
    /// the service reconciler records their names here.
    pub service_names: crate::server::ServiceNames,
    /// What `/healthz` and the node's Ready condition say: each first sync passes its check.
    pub health: super::health::Health,
    /// The node's seccomp default and profile directory.
    pub seccomp: super::pods::security::SeccompSettings,
    /// The CSI drivers registered on the node, which mount pods' claims.
    pub csi: super::storage::Drivers,
}

/// The kubelet's DNS settings: the cluster DNS address and domain, and the node's own resolver
/// configuration.
#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// `None`: no cluster DNS; pods resolve as the node does.
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    pub domain: String,
    /// The node's `/etc/resolv.conf` (or what `--resolv-conf` names), read at start.
    pub node_resolv_conf: String,
}

impl Context {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    pub fn sandbox_dir(&self, uid: &str) -> PathBuf {
        self.sandboxes_dir.join(uid)
    }

    /// `<pod dir>/logs/<container>/<attempt>.log`, as the kubelet lays out `/var/log/pods`.
    pub fn log_path(&self, uid: &str, container: &str, attempt: u32) -> PathBuf {
        log_path(&self.pod_dir(uid), container, attempt)
    }
}

pub fn log_path(pod_dir: &Path, container: &str, attempt: u32) -> PathBuf {
    pod_dir
        .join("logs")
        .join(container)
        .join(format!("{attempt}.log"))
}

/// The pods of this node by namespace and name, with their containers' current attempts.
#[derive(Clone, Debug, Default)]
pub struct Registry(Arc<RwLock<HashMap<(String, String), PodEntry>>>);

#[derive(Clone, Debug, Default)]
pub struct PodEntry {
    pub uid: String,
    /// Container name → (runtime id of the latest attempt, attempt number).
    pub containers: HashMap<String, (String, u32)>,
    /// Every container name of the spec, init containers first.
    pub names: Vec<String>,
    /// The pod's `status.startTime` (RFC 3339), which the Summary API reports.
    pub start_time: String,
}

impl Registry {
    pub fn set(&self, namespace: &str, name: &str, entry: PodEntry) {
        self.0
            .write()
            .expect("registry lock")
            .insert((namespace.to_owned(), name.to_owned()), entry);
    }

    pub fn remove(&self, namespace: &str, name: &str, uid: &str) {
        let mut map = self.0.write().expect("registry lock");
        let key = (namespace.to_owned(), name.to_owned());
        if map.get(&key).is_some_and(|e| e.uid == uid) {
            map.remove(&key);
        }
    }

    /// Every pod: (namespace, name) and its entry.
    pub fn all(&self) -> Vec<((String, String), PodEntry)> {
        let map = self.0.read().expect("registry lock");
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<PodEntry> {
        self.0
            .read()
            .expect("registry lock")
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}
