//! What the scheduler knows about the cluster, kept in memory from watches: nodes with the
//! resources their pods request, and the bound pods (including those it assumed before the
//! binding came back through the watch).
//!
//! Inter-pod (anti-)affinity is answered from counts kept here as pods come and go: for every
//! required term in use, how many pods it selects per topology domain (the value of its
//! `topologyKey` on their node), and how many bound pods hold it as anti-affinity per domain.
//! A scheduling attempt then looks a node's domain up instead of scanning placed pods.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use apiary_api::{
    core_v1::{Node, Pod, PodAffinityTerm, Taint},
    selector::LabelSelector,
};

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
    pub anti_affinity: Vec<Term>,
    /// Required affinity terms.
    pub affinity: Vec<Term>,
    /// Preferred affinity terms with their weights, and preferred anti-affinity terms with
    /// their weights negated (for scoring).
    pub preferred: Vec<(Term, i64)>,
    pub pod: Pod,
}

/// A required inter-pod (anti-)affinity term with its namespaces resolved against the pod that
/// holds it: equal terms share one set of counts in the [`Cache`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Term {
    pub topology_key: String,
    /// The namespaces whose pods it selects; `None` is every namespace.
    pub namespaces: Option<BTreeSet<String>>,
    /// No selector selects nothing.
    pub selector: Option<LabelSelector>,
}

impl Term {
    fn new(term: &PodAffinityTerm, own_namespace: &str) -> Self {
        let namespaces = if term.namespaces.is_empty() {
            // An empty namespaceSelector (`{}`) means every namespace.
            let every = term
                .namespace_selector
                .as_ref()
                .is_some_and(LabelSelector::is_empty);
            (!every).then(|| BTreeSet::from([own_namespace.to_owned()]))
        } else {
            Some(term.namespaces.iter().cloned().collect())
        };
        Self {
            topology_key: term.topology_key.clone(),
            namespaces,
            selector: term.label_selector.clone(),
        }
    }

    /// Whether the term selects `pod`.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|n| n.contains(&pod.namespace))
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&pod.labels))
    }
}

/// Per-domain counts of one [`Term`] over the cached pods.
#[derive(Debug, Default)]
pub struct TermCounts {
    /// Domain value → pods the term selects there.
    pub matching: HashMap<String, u32>,
    /// Domain value → pods holding the term as required anti-affinity there.
    pub holders: HashMap<String, u32>,
    /// Pods holding it as anti-affinity, wherever (also on nodes the cache doesn't know).
    holder_pods: usize,
    /// Asked for by a scheduling attempt since the last [`Cache::forget_unused_terms`].
    used: bool,
}

fn bump(map: &mut HashMap<String, u32>, domain: Option<&String>, delta: i32) {
    let Some(domain) = domain else {
        return;
    };
    if delta > 0 {
        *map.entry(domain.clone()).or_default() += 1;
    } else if let Some(n) = map.get_mut(domain) {
        *n -= 1;
        if *n == 0 {
            map.remove(domain);
        }
    }
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
        let affinity = pod.spec.affinity.as_ref();
        let terms = |list: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            list.into_iter()
                .flatten()
                .map(|t| Term::new(t, &meta.namespace))
                .collect()
        };
        let anti_affinity = terms(
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .map(|a| &a.required_during_scheduling_ignored_during_execution),
        );
        let pod_affinity = terms(
            affinity
                .and_then(|a| a.pod_affinity.as_ref())
                .map(|a| &a.required_during_scheduling_ignored_during_execution),
        );
        let mut preferred = Vec::new();
        for (list, sign) in [
            (affinity.and_then(|a| a.pod_affinity.as_ref()), 1),
            (affinity.and_then(|a| a.pod_anti_affinity.as_ref()), -1),
        ] {
            let weighted = list
                .into_iter()
                .flat_map(|a| &a.preferred_during_scheduling_ignored_during_execution);
            for t in weighted {
                let term = Term::new(&t.pod_affinity_term, &meta.namespace);
                preferred.push((term, sign * i64::from(t.weight)));
            }
        }
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
            affinity: pod_affinity,
            preferred,
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
    /// Pods per controller UID, for spreading.
    pub owners: HashMap<String, u32>,
}

impl NodeInfo {
    fn add(&mut self, pod: &PodInfo) {
        self.requested.add(&pod.requests);
        self.nonzero_requested.add(&pod.nonzero);
        self.pods.insert(pod.key.clone());
        bump(&mut self.owners, pod.owner.as_ref(), 1);
    }

    fn remove(&mut self, pod: &PodInfo) {
        self.requested.sub(&pod.requests);
        self.nonzero_requested.sub(&pod.nonzero);
        self.pods.remove(&pod.key);
        bump(&mut self.owners, pod.owner.as_ref(), -1);
    }

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
    /// Pods placed by this scheduler whose binding the watch has not confirmed yet.
    assumed: HashSet<PodKey>,
    /// Counts of every required (anti-)affinity term held by a cached pod or asked for by a
    /// scheduling attempt.
    pub terms: HashMap<Term, TermCounts>,
}

impl Cache {
    /// Adds or updates a node; keeps what its pods request.
    pub fn upsert_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone();
        let is_new = !self.nodes.contains_key(&name);
        let info = self.nodes.entry(name.clone()).or_default();
        let old_labels = std::mem::take(&mut info.labels);
        info.update(node);
        let mut recount = !is_new && old_labels != info.labels && !info.pods.is_empty();
        if is_new {
            for pod in self.pods.values().filter(|p| p.node == name) {
                info.add(pod);
                recount = true;
            }
        }
        // Domains are node labels: pods on this node may have moved between domains.
        if recount {
            self.recount_terms();
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if self
            .nodes
            .remove(name)
            .is_some_and(|node| !node.pods.is_empty())
        {
            self.recount_terms();
        }
    }

    /// The value of label `key` on `node` — the pod's domain for a term with that key.
    fn domain<'a>(
        nodes: &'a BTreeMap<String, NodeInfo>,
        node: &str,
        key: &str,
    ) -> Option<&'a String> {
        nodes.get(node)?.labels.get(key)
    }

    /// Adds or updates what `pod` contributes to every term's counts (`delta` ±1).
    fn count(
        nodes: &BTreeMap<String, NodeInfo>,
        terms: &mut HashMap<Term, TermCounts>,
        pod: &PodInfo,
        delta: i32,
    ) {
        for (term, counts) in terms.iter_mut() {
            if term.selects(pod) {
                let domain = Self::domain(nodes, &pod.node, &term.topology_key);
                bump(&mut counts.matching, domain, delta);
            }
        }
        for term in &pod.anti_affinity {
            let counts = terms
                .get_mut(term)
                .expect("a held term is registered first");
            let domain = Self::domain(nodes, &pod.node, &term.topology_key);
            bump(&mut counts.holders, domain, delta);
            if delta > 0 {
                counts.holder_pods += 1;
            } else {
                counts.holder_pods -= 1;
            }
        }
    }

    /// Starts counting `term` if nothing did yet (one pass over the pods), and marks it used.
    pub fn ensure_term(&mut self, term: &Term) {
        if let Some(counts) = self.terms.get_mut(term) {
            counts.used = true;
            return;
        }
        let mut counts = TermCounts {
            used: true,
            ..TermCounts::default()
        };
        for pod in self.pods.values() {
            if term.selects(pod) {
                let domain = Self::domain(&self.nodes, &pod.node, &term.topology_key);
                bump(&mut counts.matching, domain, 1);
            }
            // Holders register their terms when they enter the cache, so a new term has none.
        }
        self.terms.insert(term.clone(), counts);
    }

    /// Rebuilds every term's counts, after node labels (the domains) changed.
    fn recount_terms(&mut self) {
        for counts in self.terms.values_mut() {
            counts.matching.clear();
            counts.holders.clear();
            counts.holder_pods = 0;
        }
        for pod in self.pods.values() {
            Self::count(&self.nodes, &mut self.terms, pod, 1);
        }
    }

    /// Stops counting terms no cached pod holds and no scheduling attempt asked for since the
    /// previous call; they come back (with a pass over the pods) when asked for again.
    pub fn forget_unused_terms(&mut self) {
        self.terms.retain(|_, counts| {
            let used = std::mem::take(&mut counts.used);
            counts.holder_pods > 0 || used
        });
    }

    /// Places `pod` on `pod.node` before its binding is confirmed, so that the next pods see
    /// its requests; [`Cache::forget_assumed`] takes it back if the binding fails.
    pub fn assume_pod(&mut self, pod: PodInfo) {
        let key = pod.key.clone();
        self.upsert_pod(pod);
        self.assumed.insert(key);
    }

    /// Whether `key` is placed by this scheduler and not confirmed by the watch yet.
    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    /// Takes back an assumed pod whose binding failed; a pod the watch has confirmed since stays.
    pub fn forget_assumed(&mut self, key: &str) {
        if self.assumed.remove(key) {
            self.remove_pod(key);
        }
    }

    /// Adds (or replaces) a bound pod. Returns whether the pod was not known on that node yet.
    pub fn upsert_pod(&mut self, pod: PodInfo) -> bool {
        let same = self
            .pods
            .get(&pod.key)
            .is_some_and(|old| old.uid == pod.uid && old.node == pod.node);
        self.remove_pod(&pod.key);
        if let Some(node) = self.nodes.get_mut(&pod.node) {
            node.add(&pod);
        }
        for term in &pod.anti_affinity {
            if !self.terms.contains_key(term) {
                self.ensure_term(term);
                // Marked used only by scheduling attempts.
                if let Some(counts) = self.terms.get_mut(term) {
                    counts.used = false;
                }
            }
        }
        Self::count(&self.nodes, &mut self.terms, &pod, 1);
        self.pods.insert(pod.key.clone(), pod);
        !same
    }

    /// Forgets a pod; returns whether it was known.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        self.assumed.remove(key);
        let Some(old) = self.pods.remove(key) else {
            return false;
        };
        if let Some(node) = self.nodes.get_mut(&old.node) {
            node.remove(&old);
        }
        Self::count(&self.nodes, &mut self.terms, &old, -1);
        true
    }
}
