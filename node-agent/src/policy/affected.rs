//! Which local endpoints a change can affect, so that only those are recompiled (the others
//! keep their [`EndpointPolicy`](super::EndpointPolicy), and [`plan`](super::plan) writes
//! nothing for them).
//!
//! An endpoint's compiled policy depends on its own labels and named ports, on the policies of
//! its namespace that select it, and, through their rules, on the pods their peers select:
//!
//! - a selector peer depends on the pods it matches (their identities, and for egress named
//!   ports, their container ports);
//! - an egress rule with a named port depends, for an `ipBlock` peer, on the pods whose address
//!   is in the block, and for "everyone", on every pod;
//! - anything else (`ipBlock`s with numeric ports, "everyone" with numeric ports) depends on no
//!   pod at all.
//!
//! The answers are conservative (a superset of the endpoints whose policy changes) and exact
//! in the sense checked by the tests: recompiling only them gives what a full compile gives.

use std::collections::{BTreeMap, BTreeSet};

use apiary_api::networking_v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};

use super::{
    PodRef,
    identity::{Cluster, Labels, NamedPort, PodInfo},
    ports::PortSpec,
};

/// What one compile saw: the cluster and the node's pods.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub cluster: &'a Cluster,
    pub local: &'a BTreeSet<PodRef>,
}

/// A policy before and after a change (`None`: absent).
pub type PolicyChange<'a> = (Option<&'a NetworkPolicy>, Option<&'a NetworkPolicy>);

/// The local endpoints to recompile between two compiles: those `changed_policies` select
/// before or after, those affected by every pod and namespace that differs between `old` and
/// `new` (found with `policies`, the policies after the change), and the pods new on the node.
/// Endpoints that left the node are not named: they are simply gone.
pub fn between(
    old: Inputs<'_>,
    new: Inputs<'_>,
    changed_policies: &[PolicyChange<'_>],
    policies: &[&NetworkPolicy],
) -> BTreeSet<PodRef> {
    let local: Vec<PodRef> = new.local.iter().cloned().collect();
    let mut affected: BTreeSet<PodRef> = new.local.difference(old.local).cloned().collect();
    for (before, after) in changed_policies {
        affected.extend(by_policy(*before, *after, new.cluster, &local));
    }
    let namespaces: BTreeSet<&String> = old
        .cluster
        .namespaces
        .keys()
        .chain(new.cluster.namespaces.keys())
        .collect();
    for namespace in namespaces {
        let (o, n) = (
            old.cluster.namespace_labels(namespace),
            new.cluster.namespace_labels(namespace),
        );
        if o != n {
            affected.extend(by_namespace(
                namespace,
                &o,
                &n,
                policies,
                new.cluster,
                &local,
            ));
        }
    }
    let changed = changed_pods(old.cluster, new.cluster);
    let namespace_labels: BTreeMap<&str, (Labels, Labels)> = changed
        .iter()
        .map(|pod| {
            let ns = pod.namespace.as_str();
            let labels = (
                old.cluster.namespace_labels(ns),
                new.cluster.namespace_labels(ns),
            );
            (ns, labels)
        })
        .collect();
    for pod in changed {
        let (o_ns, n_ns) = &namespace_labels[pod.namespace.as_str()];
        affected.extend(by_pod(
            pod,
            old.cluster.pods.get(pod).map(|i| PodView::of(i, o_ns)),
            new.cluster.pods.get(pod).map(|i| PodView::of(i, n_ns)),
            policies,
            new.cluster,
            &local,
        ));
    }
    affected.retain(|pod| new.local.contains(pod));
    affected
}

/// The pods added, removed or changed (labels, identity, addresses, ports) between two states.
fn changed_pods<'a>(old: &'a Cluster, new: &'a Cluster) -> Vec<&'a PodRef> {
    let removed = old.pods.keys().filter(|p| !new.pods.contains_key(*p));
    let added_or_changed = new
        .pods
        .iter()
        .filter(|(p, info)| old.pods.get(*p) != Some(*info))
        .map(|(p, _)| p);
    removed.chain(added_or_changed).collect()
}

/// A pod as policies see it, before or after a change.
#[derive(Clone, Copy, Debug)]
pub struct PodView<'a> {
    pub labels: &'a Labels,
    /// Its namespace's labels (with the name label, as [`Cluster::namespace_labels`] gives).
    pub namespace_labels: &'a Labels,
    pub ips: &'a [std::net::IpAddr],
    /// Its named container ports.
    pub ports: &'a [NamedPort],
}

impl<'a> PodView<'a> {
    pub fn of(info: &'a PodInfo, namespace_labels: &'a Labels) -> Self {
        Self {
            labels: &info.labels,
            namespace_labels,
            ips: &info.ips,
            ports: &info.ports,
        }
    }
}

/// The local endpoints selected by the old or the new version of a policy (`None`: it did not
/// exist / was deleted).
pub fn by_policy(
    old: Option<&NetworkPolicy>,
    new: Option<&NetworkPolicy>,
    cluster: &Cluster,
    local_pods: &[PodRef],
) -> BTreeSet<PodRef> {
    local_pods
        .iter()
        .filter(|pod| {
            let Some(info) = cluster.pods.get(*pod) else {
                return false;
            };
            [old, new].into_iter().flatten().any(|p| {
                p.metadata.namespace == pod.namespace && p.spec.pod_selector.matches(&info.labels)
            })
        })
        .cloned()
        .collect()
}

/// The local endpoints affected when `pod` changes from `old` to `new` (labels, identity,
/// addresses, named ports, or its namespace's labels; `None` when it is created or deleted):
/// the pod itself if local and its labels or named ports changed (its own policy does not
/// depend on its identity or addresses), and every local endpoint selected by a policy that
/// depends on the pod before or after. `cluster` is the state after the change (the selecting policies are
/// found from the endpoints' current labels, which this change does not touch).
pub fn by_pod(
    pod: &PodRef,
    old: Option<PodView<'_>>,
    new: Option<PodView<'_>>,
    policies: &[&NetworkPolicy],
    cluster: &Cluster,
    local_pods: &[PodRef],
) -> BTreeSet<PodRef> {
    let dependent: Vec<&NetworkPolicy> = policies
        .iter()
        .copied()
        .filter(|p| {
            [old, new]
                .into_iter()
                .flatten()
                .any(|view| depends_on(p, &pod.namespace, view))
        })
        .collect();
    let mut affected = BTreeSet::new();
    let own_inputs_changed = match (old, new) {
        (Some(o), Some(n)) => o.labels != n.labels || o.ports != n.ports,
        _ => true,
    };
    if own_inputs_changed && local_pods.contains(pod) {
        affected.insert(pod.clone());
    }
    if !dependent.is_empty() {
        affected.extend(by_policies(&dependent, cluster, local_pods));
    }
    affected
}

/// The local endpoints affected when namespace `name`'s labels change from `old` to `new`:
/// those of policies that depend on one of its pods under either set of labels. (The pods'
/// new identities, if the control plane reallocates them, are pod changes of their own.)
pub fn by_namespace(
    name: &str,
    old: &Labels,
    new: &Labels,
    policies: &[&NetworkPolicy],
    cluster: &Cluster,
    local_pods: &[PodRef],
) -> BTreeSet<PodRef> {
    let with_name = |labels: &Labels| {
        let mut l = labels.clone();
        l.entry(super::identity::NAMESPACE_NAME_LABEL.to_owned())
            .or_insert_with(|| name.to_owned());
        l
    };
    let (old, new) = (with_name(old), with_name(new));
    let mut affected = BTreeSet::new();
    for (pod, info) in cluster.pods.iter().filter(|(p, _)| p.namespace == name) {
        affected.extend(by_pod(
            pod,
            Some(PodView::of(info, &old)),
            Some(PodView::of(info, &new)),
            policies,
            cluster,
            local_pods,
        ));
    }
    affected
}

fn by_policies(
    policies: &[&NetworkPolicy],
    cluster: &Cluster,
    local_pods: &[PodRef],
) -> BTreeSet<PodRef> {
    policies
        .iter()
        .flat_map(|p| by_policy(Some(p), None, cluster, local_pods))
        .collect()
}

/// Whether `policy`'s compiled entries can change with the pod (of `namespace`) seen as `view`.
fn depends_on(policy: &NetworkPolicy, namespace: &str, view: PodView<'_>) -> bool {
    let types = policy.spec.effective_policy_types();
    let ingress = types.contains(&"Ingress")
        && policy
            .spec
            .ingress
            .iter()
            .any(|r| rule_depends_on(policy, &r.from, &r.ports, false, namespace, view));
    let egress = types.contains(&"Egress")
        && policy
            .spec
            .egress
            .iter()
            .any(|r| rule_depends_on(policy, &r.to, &r.ports, true, namespace, view));
    ingress || egress
}

fn rule_depends_on(
    policy: &NetworkPolicy,
    peers: &[NetworkPolicyPeer],
    ports: &[NetworkPolicyPort],
    egress: bool,
    namespace: &str,
    view: PodView<'_>,
) -> bool {
    let named = egress && PortSpec::parse_all(ports).iter().any(PortSpec::is_named);
    if peers.is_empty() {
        return named;
    }
    peers.iter().any(|peer| match &peer.ip_block {
        Some(block) => named && view.ips.iter().any(|&ip| block.contains(ip)),
        None => {
            if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
                return false;
            }
            let namespace_ok = match &peer.namespace_selector {
                Some(sel) => sel.matches(view.namespace_labels),
                None => namespace == policy.metadata.namespace,
            };
            namespace_ok
                && peer
                    .pod_selector
                    .as_ref()
                    .is_none_or(|sel| sel.matches(view.labels))
        }
    })
}
