//! How well a feasible node suits a pod, 0–100 per plugin: least allocated, balanced
//! allocation, spreading the pods of one controller across nodes, and the pod's preferences
//! (preferred node affinity, preferred pod affinity and anti-affinity, PreferNoSchedule
//! taints), weighed as kube-scheduler's default profile weighs its plugins.

use super::{
    cache::{Cache, NodeInfo, PodInfo},
    filters::tolerated,
};

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
/// The pod's preferred pod (anti-)affinity terms must have been counted
/// ([`AffinityDomains::prepare`](super::filters::AffinityDomains::prepare)).
pub fn score(pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache) -> Vec<i64> {
    let spread = fewest_best(owner_counts(pod, nodes));
    let preferred_nodes = preferred_node_affinity(pod, nodes);
    let preferred_pods = preferred_pod_affinity(pod, nodes, cache);
    let taints = prefer_no_schedule(pod, nodes);
    nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            least_allocated(pod, node)
                + balanced_allocation(pod, node)
                + SPREAD_WEIGHT * spread[i]
                + NODE_AFFINITY_WEIGHT * preferred_nodes[i]
                + POD_AFFINITY_WEIGHT * preferred_pods[i]
                + TAINT_WEIGHT * taints[i]
        })
        .collect()
}

/// Counts scaled so that the lowest has [`MAX_SCORE`] and the highest 0 ([`MAX_SCORE`] for all
/// when none counts).
fn fewest_best(counts: Vec<i64>) -> Vec<i64> {
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
    let counts = nodes
        .iter()
        .map(|node| {
            node.taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|t| !tolerated(&pod.pod.spec.tolerations, t))
                .count() as i64
        })
        .collect();
    fewest_best(counts)
}

/// InterPodAffinity's score: for each of the pod's preferred affinity terms, its weight for
/// every pod the term selects in the node's topology domain (subtracted for anti-affinity),
/// from the cache's counts of the term, scaled min–max to 0–[`MAX_SCORE`]. (Existing pods' own
/// preferences toward the new pod are not counted: the cache counts terms by the pods they
/// select, not by the pods they would attract.)
pub fn preferred_pod_affinity(pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache) -> Vec<i64> {
    if pod.preferred.is_empty() {
        return vec![0; nodes.len()];
    }
    let totals: Vec<i64> = nodes
        .iter()
        .map(|node| {
            pod.preferred
                .iter()
                .filter_map(|(term, weight)| {
                    let value = node.labels.get(&term.topology_key)?;
                    let matching = cache.terms.get(term)?.matching.get(value)?;
                    Some(weight * i64::from(*matching))
                })
                .sum()
        })
        .collect();
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
