//! Which nodes a pod fits on. Each filter returns the reasons a node fails, worded as
//! Kubernetes' scheduler words them (`Insufficient cpu`, `node(s) had untolerated taint {k: v}`),
//! so that the FailedScheduling message reads the same.

use std::collections::{BTreeMap, HashSet};

use apiary_api::core_v1::{PodAffinityTerm, Taint, Toleration};

use super::cache::{Cache, NodeInfo, PodInfo};

pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const HOST_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const POD_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const POD_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// The topology domains (label key, value) inter-pod (anti-)affinity computed once per pod.
#[derive(Debug, Default)]
pub struct AffinityDomains {
    /// Domains where the pod's own anti-affinity terms find a matching pod.
    anti: HashSet<(String, String)>,
    /// Domains where an existing pod's anti-affinity terms match the incoming pod.
    existing_anti: HashSet<(String, String)>,
    /// Per required affinity term: its key and the values whose domains hold a matching pod.
    affinity: Vec<(String, HashSet<String>)>,
    /// No pod anywhere matches every affinity term, but the pod matches its own terms: the first
    /// of a group may go anywhere the key exists.
    affinity_self_match: bool,
}

/// Whether `term` (of a pod in `own_namespace`) selects `other`.
fn term_selects(term: &PodAffinityTerm, own_namespace: &str, other: &PodInfo) -> bool {
    let namespace_ok = if term.namespaces.is_empty() {
        // An empty namespaceSelector (`{}`) means every namespace.
        term.namespace_selector
            .as_ref()
            .is_some_and(apiary_api::selector::LabelSelector::is_empty)
            || other.namespace == own_namespace
    } else {
        term.namespaces.contains(&other.namespace)
    };
    namespace_ok
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| s.matches(&other.labels))
}

fn domain(cache: &Cache, node: &str, key: &str) -> Option<String> {
    cache.nodes.get(node)?.labels.get(key).cloned()
}

impl AffinityDomains {
    pub fn compute(pod: &PodInfo, cache: &Cache) -> Self {
        let mut domains = Self::default();
        let affinity = pod.pod.spec.affinity.as_ref();
        let anti_terms = &pod.anti_affinity;
        let affinity_terms: Vec<PodAffinityTerm> = affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .map(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        if !anti_terms.is_empty() || !affinity_terms.is_empty() {
            domains.affinity = affinity_terms
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect();
            for other in cache.pods.values() {
                if other.key == pod.key {
                    continue;
                }
                for term in anti_terms {
                    if term_selects(term, &pod.namespace, other)
                        && let Some(value) = domain(cache, &other.node, &term.topology_key)
                    {
                        domains.anti.insert((term.topology_key.clone(), value));
                    }
                }
                for (i, term) in affinity_terms.iter().enumerate() {
                    if term_selects(term, &pod.namespace, other)
                        && let Some(value) = domain(cache, &other.node, &term.topology_key)
                    {
                        domains.affinity[i].1.insert(value);
                    }
                }
            }
            domains.affinity_self_match = domains.affinity.iter().all(|(_, v)| v.is_empty())
                && affinity_terms
                    .iter()
                    .all(|t| term_selects(t, &pod.namespace, pod));
        }
        for key in &cache.with_anti_affinity {
            let Some(other) = cache.pods.get(key) else {
                continue;
            };
            for term in &other.anti_affinity {
                if term_selects(term, &other.namespace, pod)
                    && let Some(value) = domain(cache, &other.node, &term.topology_key)
                {
                    domains
                        .existing_anti
                        .insert((term.topology_key.clone(), value));
                }
            }
        }
        domains
    }

    fn check(&self, node: &NodeInfo) -> Option<&'static str> {
        let in_domains = |set: &HashSet<(String, String)>| {
            set.iter()
                .any(|(k, v)| node.labels.get(k).is_some_and(|nv| nv == v))
        };
        for (key, values) in &self.affinity {
            let Some(value) = node.labels.get(key) else {
                return Some(POD_AFFINITY);
            };
            if !values.contains(value) && !self.affinity_self_match {
                return Some(POD_AFFINITY);
            }
        }
        if in_domains(&self.anti) {
            return Some(POD_ANTI_AFFINITY);
        }
        if in_domains(&self.existing_anti) {
            return Some(EXISTING_ANTI_AFFINITY);
        }
        None
    }
}

fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

fn taint_reason(taint: &Taint) -> String {
    format!(
        "node(s) had untolerated taint {{{}: {}}}",
        taint.key, taint.value
    )
}

/// Why `pod` cannot go to `node`; empty when it can.
pub fn check(
    pod: &PodInfo,
    node: &NodeInfo,
    cache: &Cache,
    domains: &AffinityDomains,
) -> Vec<String> {
    let spec = &pod.pod.spec;
    let tolerations = &spec.tolerations;
    // NodeUnschedulable: cordoned nodes, unless the pod tolerates that.
    if node.unschedulable {
        let cordon = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        if !tolerated(tolerations, &cordon) {
            return vec![UNSCHEDULABLE.into()];
        }
    }
    // TaintToleration: NoSchedule and NoExecute taints. A node that is not Ready counts as
    // tainted not-ready (what the node lifecycle controller would add).
    for taint in &node.taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerated(tolerations, taint)
        {
            return vec![taint_reason(taint)];
        }
    }
    if !node.ready {
        let not_ready = Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        let lifecycle_tainted = node
            .taints
            .iter()
            .any(|t| t.key.starts_with("node.kubernetes.io/"));
        if !lifecycle_tainted && !tolerated(tolerations, &not_ready) {
            return vec![taint_reason(&not_ready)];
        }
    }
    // NodeAffinity: nodeSelector and required node affinity.
    if !node_affinity_matches(pod, &node.labels, &node.name) {
        return vec![NODE_AFFINITY.into()];
    }
    // NodePorts.
    if !pod.host_ports.is_empty() && ports_conflict(pod, node, cache) {
        return vec![HOST_PORTS.into()];
    }
    // NodeResourcesFit: every insufficient resource is a reason.
    let mut reasons = Vec::new();
    let free = |alloc: i64, used: i64| alloc - used;
    if node.requested.pods + 1 > node.allocatable.pods {
        reasons.push("Too many pods".to_owned());
    }
    if pod.requests.milli_cpu > 0
        && pod.requests.milli_cpu > free(node.allocatable.milli_cpu, node.requested.milli_cpu)
    {
        reasons.push("Insufficient cpu".to_owned());
    }
    if pod.requests.memory > 0
        && pod.requests.memory > free(node.allocatable.memory, node.requested.memory)
    {
        reasons.push("Insufficient memory".to_owned());
    }
    if !reasons.is_empty() {
        return reasons;
    }
    // InterPodAffinity.
    if let Some(reason) = domains.check(node) {
        return vec![reason.into()];
    }
    Vec::new()
}

fn ports_conflict(pod: &PodInfo, node: &NodeInfo, cache: &Cache) -> bool {
    let used = node
        .pods
        .iter()
        .filter_map(|k| cache.pods.get(k))
        .flat_map(|p| &p.host_ports);
    let mut used = used.peekable();
    if used.peek().is_none() {
        return false;
    }
    let used: Vec<_> = used.collect();
    pod.host_ports.iter().any(|(ip, proto, port)| {
        used.iter().any(|(uip, uproto, uport)| {
            uport == port && uproto == proto && (ip == uip || is_any(ip) || is_any(uip))
        })
    })
}

fn is_any(ip: &str) -> bool {
    ip.is_empty() || ip == "0.0.0.0" || ip == "::"
}

/// Whether the pod's nodeSelector and required node affinity accept a node.
pub fn node_affinity_matches(
    pod: &PodInfo,
    labels: &BTreeMap<String, String>,
    node_name: &str,
) -> bool {
    let spec = &pod.pod.spec;
    if !spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|selector| selector.matches(labels, node_name))
}

/// The FailedScheduling message: `0/3 nodes are available: 1 node(s) had untolerated taint
/// {k: v}, 2 Insufficient cpu. preemption: …`, reasons counted and sorted as Kubernetes does.
pub fn failure_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!(
        "0/{nodes} nodes are available: {}. preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling.",
        parts.join(", ")
    )
}
