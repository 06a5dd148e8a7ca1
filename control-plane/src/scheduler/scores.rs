//! How well a feasible node suits a pod, 0–100 per plugin: least allocated, balanced
//! allocation, and spreading the pods of one controller across nodes.

use super::cache::{NodeInfo, PodInfo};

/// Weight of spreading against the resource scores (Kubernetes weighs topology spreading 2).
const SPREAD_WEIGHT: i64 = 2;

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
pub fn score(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let counts = owner_counts(pod, nodes);
    let max = counts.iter().copied().max().unwrap_or(0);
    nodes
        .iter()
        .zip(counts)
        .map(|(node, count)| {
            let spread = if max == 0 {
                100
            } else {
                (max - count) * 100 / max
            };
            least_allocated(pod, node) + balanced_allocation(pod, node) + SPREAD_WEIGHT * spread
        })
        .collect()
}
