//! Policies → one [`EndpointPolicy`] per local pod.
//!
//! For each local pod, every policy of its namespace whose `podSelector` matches it contributes,
//! for each of its effective `policyTypes`, enforcement of that direction and the rules of that
//! direction. A rule is the cross product of its peers and its ports:
//!
//! - no peers: [`Identity::ANY`] (inside the cluster or not);
//! - a peer with selectors: the identities [`IdentityIndex::select`] gives;
//! - an `ipBlock`: address ranges (the CIDR minus its `except`s), gathered per direction and
//!   turned into a disjoint partition of *CIDR classes* once every rule is in (see
//!   `cidr_classes`).
//!
//! Policies are visited in (namespace, name) order and rules in index order, so when several
//! rules allow one key the entry names the first: a recompile of the same inputs gives the same
//! entries, and a [`plan`](super::plan) between them is empty.

use std::collections::{BTreeMap, BTreeSet};

use apiary_api::networking_v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};

use super::{
    Allow, CidrKey, Direction, EndpointPolicy, Identity, PROTO_ANY, PodRef, PolicyKey, RuleRef,
    cidr::{Family, Range, block_ranges},
    identity::{Cluster, IdentityIndex, NamedPort, PodInfo},
    ports::{PortMatch, PortSpec},
};

/// The policy of every pod of `local_pods` that `cluster` knows (others are skipped: without
/// labels no policy can select them, and they have no address to attach to yet).
pub fn compile<'p>(
    policies: impl IntoIterator<Item = &'p NetworkPolicy>,
    cluster: &Cluster,
    identities: &IdentityIndex,
    local_pods: &[PodRef],
) -> BTreeMap<PodRef, EndpointPolicy> {
    let sorted = sorted(policies);
    local_pods
        .iter()
        .filter_map(|pod| {
            let info = cluster.pods.get(pod)?;
            let compiled = endpoint(&sorted, cluster, identities, pod, info);
            Some((pod.clone(), compiled))
        })
        .collect()
}

/// The policy of one local pod, `pod` with `info`; what [`compile`] computes for each.
pub fn compile_endpoint<'p>(
    policies: impl IntoIterator<Item = &'p NetworkPolicy>,
    cluster: &Cluster,
    identities: &IdentityIndex,
    pod: &PodRef,
    info: &PodInfo,
) -> EndpointPolicy {
    endpoint(&sorted(policies), cluster, identities, pod, info)
}

fn sorted<'p>(policies: impl IntoIterator<Item = &'p NetworkPolicy>) -> Vec<&'p NetworkPolicy> {
    let mut sorted: Vec<&NetworkPolicy> = policies.into_iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    sorted
}

/// An `ipBlock` allowance, before the address space is partitioned.
struct Grant {
    direction: Direction,
    range: Range,
    port: PortMatch,
    by: RuleRef,
}

/// One endpoint being compiled.
struct Builder<'a> {
    cluster: &'a Cluster,
    identities: &'a IdentityIndex,
    local: &'a PodInfo,
    policy: EndpointPolicy,
    grants: Vec<Grant>,
}

fn endpoint(
    policies: &[&NetworkPolicy],
    cluster: &Cluster,
    identities: &IdentityIndex,
    pod: &PodRef,
    info: &PodInfo,
) -> EndpointPolicy {
    let mut b = Builder {
        cluster,
        identities,
        local: info,
        policy: EndpointPolicy::default(),
        grants: Vec::new(),
    };
    for policy in policies {
        if policy.metadata.namespace != pod.namespace
            || !policy.spec.pod_selector.matches(&info.labels)
        {
            continue;
        }
        let types = policy.spec.effective_policy_types();
        let rule = |direction, rule| RuleRef {
            namespace: policy.metadata.namespace.clone(),
            policy: policy.metadata.name.clone(),
            direction,
            rule,
        };
        if types.contains(&"Ingress") {
            b.policy.ingress_enforced = true;
            for (i, r) in policy.spec.ingress.iter().enumerate() {
                let by = rule(Direction::Ingress, i);
                b.rule(&policy.metadata.namespace, &r.from, &r.ports, &by);
            }
        }
        if types.contains(&"Egress") {
            b.policy.egress_enforced = true;
            for (i, r) in policy.spec.egress.iter().enumerate() {
                let by = rule(Direction::Egress, i);
                b.rule(&policy.metadata.namespace, &r.to, &r.ports, &by);
            }
        }
    }
    if b.policy.ingress_enforced {
        let key = PolicyKey::new(Identity::HOST, Direction::Ingress, PROTO_ANY, 0, 0);
        b.policy.entries.insert(key, Allow::Host);
    }
    let Builder {
        mut policy, grants, ..
    } = b;
    cidr_classes(&mut policy, &grants);
    policy
}

impl Builder<'_> {
    fn allow(&mut self, identity: Identity, direction: Direction, port: PortMatch, by: &RuleRef) {
        let key = PolicyKey::new(identity, direction, port.0, port.1, port.2);
        self.policy
            .entries
            .entry(key)
            .or_insert_with(|| Allow::Rule(by.clone()));
    }

    /// The container ports a non-egress-named port resolves against: the local pod's for
    /// ingress (it is the destination); none for egress, where only named ports need the
    /// destination's, and those are resolved per peer pod.
    fn ingress_ports(&self, by: &RuleRef) -> Option<&[NamedPort]> {
        (by.direction == Direction::Ingress).then_some(self.local.ports.as_slice())
    }

    /// Every pod of the cluster, with its info.
    fn pods(&self) -> impl Iterator<Item = &PodInfo> + '_ {
        self.cluster.pods.values()
    }

    fn rule(
        &mut self,
        namespace: &str,
        peers: &[NetworkPolicyPeer],
        ports: &[NetworkPolicyPort],
        by: &RuleRef,
    ) {
        let dir = by.direction;
        let specs = PortSpec::parse_all(ports);
        // What one port spec allows towards a set of peer identities, resolving an egress
        // named port against each peer pod.
        let to_identities = |b: &mut Self, ids: &mut dyn Iterator<Item = Identity>| {
            let ids: Vec<Identity> = ids.collect();
            for spec in &specs {
                if dir == Direction::Egress && spec.is_named() {
                    for &id in &ids {
                        let matches: BTreeSet<PortMatch> = b
                            .identities
                            .pods(id)
                            .iter()
                            .filter_map(|p| b.cluster.pods.get(p))
                            .flat_map(|p| spec.resolve(Some(&p.ports)))
                            .collect();
                        for m in matches {
                            b.allow(id, dir, m, by);
                        }
                    }
                } else {
                    for m in spec.resolve(b.ingress_ports(by)) {
                        for &id in &ids {
                            b.allow(id, dir, m, by);
                        }
                    }
                }
            }
        };
        if peers.is_empty() {
            // Everyone. An egress named port only exists on pods: their identities instead.
            if dir == Direction::Egress && specs.iter().any(PortSpec::is_named) {
                let (named, plain): (Vec<PortSpec>, Vec<PortSpec>) =
                    specs.iter().cloned().partition(PortSpec::is_named);
                for spec in &plain {
                    for m in spec.resolve(None) {
                        self.allow(Identity::ANY, dir, m, by);
                    }
                }
                let pods: Vec<(Identity, Vec<PortMatch>)> = self
                    .pods()
                    .map(|p| {
                        let ms = named.iter().flat_map(|s| s.resolve(Some(&p.ports)));
                        (p.identity, ms.collect())
                    })
                    .collect();
                for (id, ms) in pods {
                    for m in ms {
                        self.allow(id, dir, m, by);
                    }
                }
            } else {
                to_identities(self, &mut [Identity::ANY].into_iter());
            }
            return;
        }
        for peer in peers {
            let Some(block) = &peer.ip_block else {
                let ids = self.identities.select(
                    namespace,
                    peer.pod_selector.as_ref(),
                    peer.namespace_selector.as_ref(),
                );
                to_identities(self, &mut ids.into_iter());
                continue;
            };
            let ranges = block_ranges(block);
            for spec in &specs {
                if dir == Direction::Egress && spec.is_named() {
                    // Only pods have named ports: each pod address inside the block, alone.
                    let mut grants = Vec::new();
                    for pod in self.pods() {
                        for &ip in &pod.ips {
                            if ranges.iter().any(|r| r.contains(ip)) {
                                for port in spec.resolve(Some(&pod.ports)) {
                                    grants.push(Grant {
                                        direction: dir,
                                        range: Range::single(ip),
                                        port,
                                        by: by.clone(),
                                    });
                                }
                            }
                        }
                    }
                    self.grants.extend(grants);
                } else {
                    for port in spec.resolve(self.ingress_ports(by)) {
                        for &range in &ranges {
                            self.grants.push(Grant {
                                direction: dir,
                                range,
                                port,
                                by: by.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// The ports allowed on a stretch of addresses, each with the first rule that allows it.
type PortSet = BTreeMap<PortMatch, RuleRef>;

/// Turns the `ipBlock` grants into CIDR classes: the address space of each direction and family
/// is cut at every grant's edges; each piece gets the set of ports the grants covering it allow;
/// adjacent pieces with the same set merge; each distinct (direction, set) becomes a class
/// identity with one entry per port, and each piece the fewest prefixes that cover it exactly,
/// mapped to its class. The prefixes are disjoint, so longest-prefix match finds the one class
/// of an address, and addresses no grant covers have no prefix at all.
///
/// Classes are numbered from [`Identity::CIDR_CLASS_BASE`] in (direction, address) order.
fn cidr_classes(policy: &mut EndpointPolicy, grants: &[Grant]) {
    let mut classes: BTreeMap<(Direction, PortSet), Identity> = BTreeMap::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        for family in [Family::V4, Family::V6] {
            let ours: Vec<&Grant> = grants
                .iter()
                .filter(|g| g.direction == direction && g.range.family == family)
                .collect();
            // A sweep over the grants' edges: which grants are active between two cuts. Grant
            // indices follow policy and rule order, so iterating the active set in order keeps
            // the first rule for each port. Cost: the edges sorted, plus the active grants of
            // each piece (one or two when a named port adds thousands of pod /32s), where
            // testing every grant against every piece would grow with their product.
            let mut starts: BTreeMap<u128, Vec<usize>> = BTreeMap::new();
            let mut ends: BTreeMap<u128, Vec<usize>> = BTreeMap::new();
            for (i, g) in ours.iter().enumerate() {
                starts.entry(g.range.lo).or_default().push(i);
                if g.range.hi < family.max() {
                    ends.entry(g.range.hi + 1).or_default().push(i);
                }
            }
            let cuts: Vec<u128> = starts
                .keys()
                .chain(ends.keys())
                .copied()
                .collect::<BTreeSet<u128>>()
                .into_iter()
                .collect();
            let mut active: BTreeSet<usize> = BTreeSet::new();
            // Pieces with their port sets, adjacent equal ones merged.
            let mut pieces: Vec<(Range, PortSet)> = Vec::new();
            for (i, &lo) in cuts.iter().enumerate() {
                for g in ends.get(&lo).into_iter().flatten() {
                    active.remove(g);
                }
                active.extend(starts.get(&lo).into_iter().flatten());
                let hi = cuts.get(i + 1).map_or(family.max(), |next| next - 1);
                let mut set = PortSet::new();
                for g in active.iter().map(|&i| ours[i]) {
                    set.entry(g.port).or_insert_with(|| g.by.clone());
                }
                if set.is_empty() {
                    continue;
                }
                match pieces.last_mut() {
                    Some((last, last_set)) if last.hi + 1 == lo && *last_set == set => {
                        last.hi = hi;
                    }
                    _ => pieces.push((Range { family, lo, hi }, set)),
                }
            }
            for (range, set) in pieces {
                let next = Identity(Identity::CIDR_CLASS_BASE.0 + classes.len() as u32);
                let class = *classes.entry((direction, set.clone())).or_insert(next);
                if class == next {
                    for (&(protocol, port, len), by) in &set {
                        let key = PolicyKey::new(class, direction, protocol, port, len);
                        policy.entries.insert(key, Allow::Rule(by.clone()));
                    }
                }
                for prefix in range.prefixes() {
                    policy.cidrs.insert(CidrKey { direction, prefix }, class);
                }
            }
        }
    }
}
