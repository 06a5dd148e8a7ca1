//! Which nodes a pod fits on. Each filter returns the reasons a node fails, worded as
//! Kubernetes' scheduler words them (`Insufficient cpu`, `node(s) had untolerated taint {k: v}`),
//! so that the FailedScheduling message reads the same.

use std::collections::BTreeMap;

use apiary_api::core_v1::{Taint, Toleration};

use super::cache::{Cache, NodeInfo, PodInfo, Term, TermCounts};

pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const HOST_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const POD_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const POD_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// The inter-pod (anti-)affinity counts that matter to one pod, looked up once per attempt; a
/// node is then checked by looking its domain up in them.
#[derive(Debug, Default)]
pub struct AffinityDomains<'a> {
    /// The pod's own anti-affinity terms: domains with a pod they select are out.
    anti: Vec<(&'a Term, &'a TermCounts)>,
    /// Existing pods' anti-affinity terms that select the pod: their holders' domains are out.
    existing_anti: Vec<(&'a Term, &'a TermCounts)>,
    /// The pod's affinity terms: only domains with a pod they select are in.
    affinity: Vec<(&'a Term, &'a TermCounts)>,
    /// No pod anywhere matches every affinity term, but the pod matches its own terms: the first
    /// of a group may go anywhere the key exists.
    affinity_self_match: bool,
}

impl<'a> AffinityDomains<'a> {
    /// Registers the pod's terms in the cache (a pass over the pods for a term not counted yet),
    /// its preferred ones too, for scoring.
    pub fn prepare(pod: &PodInfo, cache: &mut Cache) {
        let preferred = pod.preferred.iter().map(|(term, _)| term);
        for term in pod
            .anti_affinity
            .iter()
            .chain(&pod.affinity)
            .chain(preferred)
        {
            cache.ensure_term(term);
        }
    }

    /// The counts for `pod`; its terms must have been [`AffinityDomains::prepare`]d.
    pub fn compute(pod: &PodInfo, cache: &'a Cache) -> Self {
        let lookup = |terms: &[Term]| -> Vec<(&'a Term, &'a TermCounts)> {
            terms
                .iter()
                .filter_map(|t| cache.terms.get_key_value(t))
                .collect()
        };
        let anti = lookup(&pod.anti_affinity);
        let affinity = lookup(&pod.affinity);
        let affinity_self_match = !affinity.is_empty()
            && affinity.iter().all(|(_, c)| c.matching.is_empty())
            && pod.affinity.iter().all(|t| t.selects(pod));
        let existing_anti = cache
            .terms
            .iter()
            .filter(|(term, counts)| !counts.holders.is_empty() && term.selects(pod))
            .collect();
        Self {
            anti,
            existing_anti,
            affinity,
            affinity_self_match,
        }
    }

    fn check(&self, node: &NodeInfo) -> Option<&'static str> {
        let domain = |term: &Term| node.labels.get(&term.topology_key);
        for (term, counts) in &self.affinity {
            let Some(value) = domain(term) else {
                return Some(POD_AFFINITY);
            };
            if !counts.matching.contains_key(value) && !self.affinity_self_match {
                return Some(POD_AFFINITY);
            }
        }
        if self
            .anti
            .iter()
            .any(|(term, counts)| domain(term).is_some_and(|v| counts.matching.contains_key(v)))
        {
            return Some(POD_ANTI_AFFINITY);
        }
        if self
            .existing_anti
            .iter()
            .any(|(term, counts)| domain(term).is_some_and(|v| counts.holders.contains_key(v)))
        {
            return Some(EXISTING_ANTI_AFFINITY);
        }
        None
    }
}

pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
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

/// The FailedScheduling message of a pod a PreFilter plugin refused (`why`, e.g. a missing
/// claim): no node was looked at.
pub fn pre_filter_message(nodes: usize, why: &str) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    format!(
        "0/{nodes} nodes are available: {why}. preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling."
    )
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
