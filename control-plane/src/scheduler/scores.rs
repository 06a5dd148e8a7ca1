//! How well a feasible node suits a pod, 0–100 per plugin: least allocated, balanced
//! allocation, spreading the pods of one controller across nodes, and the pod's preferences
//! (preferred node affinity, preferred pod affinity and anti-affinity, PreferNoSchedule
//! taints), weighed as kube-scheduler's default profile weighs its plugins.

use std::collections::HashMap;

use super::cache::{Cache, NodeInfo, PodInfo, Term};

/// Weight of spreading against the resource scores (Kubernetes weighs topology spreading 2).
const SPREAD_WEIGHT: i64 = 2;
/// kube-scheduler's weights of NodeAffinity, InterPodAffinity and TaintToleration.
const NODE_AFFINITY_WEIGHT: i64 = 2;
const POD_AFFINITY_WEIGHT: i64 = 2;
const TAINT_WEIGHT: i64 = 3;
const MAX_SCORE: i64 = 100;

fn fractions(pod: &PodInfo, node: &NodeInfo) -> (f64, f64) {
    let frac = |requested: i64, allocatable: i64| {
        if allocatable <= 0 {
            1.0
        } else {
            (requested as f64 / allocatable as f64).min(1.0)
        }
    };
    (
        frac(
            node.nonzero_requested.milli_cpu + pod.nonzero.milli_cpu,
            node.allocatable.milli_cpu,
        ),
        frac(
            node.nonzero_requested.memory + pod.nonzero.memory,
            node.allocatable.memory,
        ),
    )
}

/// Favors nodes with the most room left.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let (cpu, memory) = fractions(pod, node);
    (((1.0 - cpu) + (1.0 - memory)) * 50.0) as i64
}

/// Favors nodes whose CPU and memory use stay alike after placing the pod.
pub fn balanced_allocation(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let (cpu, memory) = fractions(pod, node);
    ((1.0 - (cpu - memory).abs()) * 100.0) as i64
}

/// Pods of the pod's controller on each node, for spreading.
pub fn owner_counts(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let Some(owner) = &pod.owner else {
        return vec![0; nodes.len()];
    };
    nodes
        .iter()
        .map(|n| n.owners.get(owner).copied().map_or(0, i64::from))
        .collect()
}

/// The total score of each node in `nodes`.
pub fn score(pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache) -> Vec<i64> {
    let counts = owner_counts(pod, nodes);
    let max = counts.iter().copied().max().unwrap_or(0);
    let preferred_nodes = preferred_node_affinity(pod, nodes);
    let preferred_pods = preferred_pod_affinity(pod, nodes, cache);
    let taints = prefer_no_schedule(pod, nodes);
    nodes
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(i, (node, count))| {
            let spread = if max == 0 {
                100
            } else {
                (max - count) * 100 / max
            };
            least_allocated(pod, node)
                + balanced_allocation(pod, node)
                + SPREAD_WEIGHT * spread
                + NODE_AFFINITY_WEIGHT * preferred_nodes[i]
                + POD_AFFINITY_WEIGHT * preferred_pods[i]
                + TAINT_WEIGHT * taints[i]
        })
        .collect()
}

/// NodeAffinity's score: the weights of the pod's preferred terms each node meets, scaled so
/// that the best node has [`MAX_SCORE`].
pub fn preferred_node_affinity(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let terms = pod
        .pod
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .map(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_slice()
        })
        .unwrap_or_default();
    let sums: Vec<i64> = nodes
        .iter()
        .map(|node| {
            terms
                .iter()
                .filter(|t| t.preference.matches(&node.labels, &node.name))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .collect();
    let max = sums.iter().copied().max().unwrap_or(0);
    sums.into_iter()
        .map(|sum| if max > 0 { sum * MAX_SCORE / max } else { 0 })
        .collect()
}

/// TaintToleration's score: the fewer `PreferNoSchedule` taints a node has that the pod does
/// not tolerate, the higher.
pub fn prefer_no_schedule(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let counts: Vec<i64> = nodes
        .iter()
        .map(|node| {
            node.taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|t| !pod.pod.spec.tolerations.iter().any(|tol| tol.tolerates(t)))
                .count() as i64
        })
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .into_iter()
        .map(|count| {
            if max > 0 {
                (max - count) * MAX_SCORE / max
            } else {
                MAX_SCORE
            }
        })
        .collect()
}

/// InterPodAffinity's score: for each of the pod's preferred affinity terms, its weight for
/// every pod the term selects in the node's topology domain (subtracted for anti-affinity),
/// scaled min–max to 0–[`MAX_SCORE`]. (Existing pods' own preferences toward the new pod are not
/// counted: that would cost a pass over every pod for every pod scheduled.)
pub fn preferred_pod_affinity(pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache) -> Vec<i64> {
    let affinity = pod.pod.spec.affinity.as_ref();
    let attract = preferred_terms(affinity.and_then(|a| a.pod_affinity.as_ref()));
    let repel = preferred_terms(affinity.and_then(|a| a.pod_anti_affinity.as_ref()));
    if attract.is_empty() && repel.is_empty() {
        return vec![0; nodes.len()];
    }
    let mut totals = vec![0i64; nodes.len()];
    let weighted = attract
        .iter()
        .map(|t| (t, 1))
        .chain(repel.iter().map(|t| (t, -1)));
    for (term, sign) in weighted {
        let resolved = Term::new(&term.pod_affinity_term, &pod.namespace);
        // Pods the term selects, per value of its topology key.
        let mut per_domain: HashMap<&str, i64> = HashMap::new();
        for other in cache.pods.values() {
            if other.node.is_empty() || other.key == pod.key || !resolved.selects(other) {
                continue;
            }
            if let Some(value) = cache
                .nodes
                .get(&other.node)
                .and_then(|n| n.labels.get(&resolved.topology_key))
            {
                *per_domain.entry(value).or_default() += 1;
            }
        }
        for (total, node) in totals.iter_mut().zip(nodes) {
            let matching = node
                .labels
                .get(&resolved.topology_key)
                .and_then(|value| per_domain.get(value.as_str()))
                .copied()
                .unwrap_or(0);
            *total += sign * i64::from(term.weight) * matching;
        }
    }
    let (min, max) = (
        totals.iter().copied().min().unwrap_or(0),
        totals.iter().copied().max().unwrap_or(0),
    );
    totals
        .into_iter()
        .map(|t| {
            if max > min {
                (t - min) * MAX_SCORE / (max - min)
            } else {
                0
            }
        })
        .collect()
}

fn preferred_terms(
    affinity: Option<&apiary_api::core_v1::PodAffinity>,
) -> &[apiary_api::core_v1::WeightedPodAffinityTerm] {
    affinity
        .map(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_slice()
        })
        .unwrap_or_default()
}
