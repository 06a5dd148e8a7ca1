//! What the scheduler knows about the cluster, kept in memory from watches: nodes with the
//! resources their pods request, and the bound pods (including those it assumed before the
//! binding came back through the watch).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use apiary_api::core_v1::{Node, Pod, PodAffinityTerm, Taint};

/// `namespace/name`.
pub type PodKey = String;

/// CPU (millicores), memory (bytes) and a pod count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    fn add(&mut self, other: &Self) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.pods += other.pods;
    }

    fn sub(&mut self, other: &Self) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.pods -= other.pods;
    }
}

/// What scoring counts for a container without requests (Kubernetes' non-zero defaults).
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// A host port a pod claims: (IP, protocol, port).
pub type HostPort = (String, String, i32);

/// A pod as scheduling sees it.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub key: PodKey,
    pub uid: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Empty while pending.
    pub node: String,
    /// What the pod requests, for fitting.
    pub requests: Resources,
    /// The same with defaults for unset requests, for scoring.
    pub nonzero: Resources,
    pub host_ports: Vec<HostPort>,
    /// The UID of the controller owning the pod.
    pub owner: Option<String>,
    /// Required anti-affinity terms (existing pods' ones repel newcomers).
    pub anti_affinity: Vec<PodAffinityTerm>,
    pub pod: Pod,
}

fn quantity(list: &BTreeMap<String, apiary_api::quantity::Quantity>, name: &str) -> Option<i64> {
    let q = list.get(name)?;
    if name == "cpu" {
        q.milli_value().ok()
    } else {
        q.value().ok()
    }
}

impl PodInfo {
    pub fn new(pod: Pod) -> Self {
        let meta = &pod.metadata;
        let mut requests = Resources {
            pods: 1,
            ..Resources::default()
        };
        let mut nonzero = requests;
        for c in &pod.spec.containers {
            let list = c
                .resources
                .as_ref()
                .map(|r| r.requests.clone())
                .unwrap_or_default();
            let cpu = quantity(&list, "cpu");
            let memory = quantity(&list, "memory");
            requests.milli_cpu += cpu.unwrap_or(0);
            requests.memory += memory.unwrap_or(0);
            nonzero.milli_cpu += cpu.unwrap_or(DEFAULT_MILLI_CPU);
            nonzero.memory += memory.unwrap_or(DEFAULT_MEMORY);
        }
        // Init containers run one at a time, before the others: the largest one counts.
        for c in &pod.spec.init_containers {
            let list = c
                .resources
                .as_ref()
                .map(|r| r.requests.clone())
                .unwrap_or_default();
            let cpu = quantity(&list, "cpu").unwrap_or(0);
            let memory = quantity(&list, "memory").unwrap_or(0);
            requests.milli_cpu = requests.milli_cpu.max(cpu);
            requests.memory = requests.memory.max(memory);
            nonzero.milli_cpu = nonzero.milli_cpu.max(cpu);
            nonzero.memory = nonzero.memory.max(memory);
        }
        let host_ports = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let protocol = if p.protocol.is_empty() {
                    "TCP".to_owned()
                } else {
                    p.protocol.clone()
                };
                (p.host_ip.clone(), protocol, p.host_port)
            })
            .collect();
        let owner = meta
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        let anti_affinity = pod
            .spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .map(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        Self {
            key: format!("{}/{}", meta.namespace, meta.name),
            uid: meta.uid.clone(),
            namespace: meta.namespace.clone(),
            labels: meta.labels.clone(),
            node: pod.spec.node_name.clone(),
            requests,
            nonzero,
            host_ports,
            owner,
            anti_affinity,
            pod,
        }
    }
}

/// A node as scheduling sees it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub nonzero_requested: Resources,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    pub ready: bool,
    pub pods: BTreeSet<PodKey>,
}

impl NodeInfo {
    fn update(&mut self, node: &Node) {
        self.name = node.metadata.name.clone();
        self.labels = node.metadata.labels.clone();
        let status = node.status.clone().unwrap_or_default();
        self.allocatable = Resources {
            milli_cpu: quantity(&status.allocatable, "cpu").unwrap_or(0),
            memory: quantity(&status.allocatable, "memory").unwrap_or(0),
            pods: quantity(&status.allocatable, "pods").unwrap_or(110),
        };
        self.unschedulable = node.spec.unschedulable;
        self.taints = node.spec.taints.clone();
        self.ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    }
}

/// Nodes and bound pods.
#[derive(Debug, Default)]
pub struct Cache {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub pods: HashMap<PodKey, PodInfo>,
    /// Bound pods with required anti-affinity terms: few, and every newcomer is checked
    /// against them.
    pub with_anti_affinity: BTreeSet<PodKey>,
}

impl Cache {
    /// Adds or updates a node; keeps what its pods request.
    pub fn upsert_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone();
        let is_new = !self.nodes.contains_key(&name);
        let info = self.nodes.entry(name.clone()).or_default();
        info.update(node);
        if is_new {
            let on_it: Vec<PodInfo> = self
                .pods
                .values()
                .filter(|p| p.node == name)
                .cloned()
                .collect();
            for pod in on_it {
                info.requested.add(&pod.requests);
                info.nonzero_requested.add(&pod.nonzero);
                info.pods.insert(pod.key);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Adds (or replaces) a bound pod. Returns whether the pod was not known on that node yet.
    pub fn upsert_pod(&mut self, pod: PodInfo) -> bool {
        let same = self
            .pods
            .get(&pod.key)
            .is_some_and(|old| old.uid == pod.uid && old.node == pod.node);
        self.remove_pod(&pod.key);
        if let Some(node) = self.nodes.get_mut(&pod.node) {
            node.requested.add(&pod.requests);
            node.nonzero_requested.add(&pod.nonzero);
            node.pods.insert(pod.key.clone());
        }
        if !pod.anti_affinity.is_empty() {
            self.with_anti_affinity.insert(pod.key.clone());
        }
        self.pods.insert(pod.key.clone(), pod);
        !same
    }

    /// Forgets a pod; returns whether it was known.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(old) = self.pods.remove(key) else {
            return false;
        };
        self.with_anti_affinity.remove(key);
        if let Some(node) = self.nodes.get_mut(&old.node) {
            node.requested.sub(&old.requests);
            node.nonzero_requested.sub(&old.nonzero);
            node.pods.remove(key);
        }
        true
    }
}
