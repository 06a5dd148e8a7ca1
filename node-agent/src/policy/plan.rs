//! The diff between two compilations: per endpoint, the map writes that turn the old
//! [`EndpointPolicy`] into the new one. An endpoint whose policy did not change gets no writes,
//! so a label or policy change rewrites only the endpoints it affects.
//!
//! Within an endpoint, [`EndpointPlan::steps`] orders the writes so that a packet classified in
//! the middle of a plan is never denied something both the old and the new policy allow: new
//! and changed entries first, then new CIDR prefixes, then the enforcement flags, then removed
//! prefixes and entries. (Between the first and the last step the union of both applies; and a
//! CIDR class whose number is reused for another port set may briefly give its old prefixes the
//! new ports. Both last for one plan's writes.)

use std::collections::BTreeMap;

use super::{Allow, CidrKey, EndpointPolicy, Identity, PodRef, PolicyKey};

/// The enforcement flags of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enforcement {
    pub ingress: bool,
    pub egress: bool,
}

/// The writes for one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPlan {
    /// 1. `POLICY` entries new or with another value.
    pub upsert_entries: Vec<(PolicyKey, Allow)>,
    /// 2. `POLICY_CIDR` prefixes new or mapped to another class.
    pub upsert_cidrs: Vec<(CidrKey, Identity)>,
    /// 3. The new flags, when they changed (or the endpoint is new: its flags entry is written
    ///    even when both are off). `None`: unchanged.
    pub enforcement: Option<Enforcement>,
    /// 4. `POLICY_CIDR` prefixes no longer there.
    pub delete_cidrs: Vec<CidrKey>,
    /// 5. `POLICY` entries no longer there.
    pub delete_entries: Vec<PolicyKey>,
    /// The endpoint is gone: after the deletes, its flags entry goes too.
    pub removed: bool,
}

/// One write, in [`EndpointPlan::steps`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    UpsertEntry(&'a PolicyKey, &'a Allow),
    UpsertCidr(&'a CidrKey, Identity),
    SetEnforcement(Enforcement),
    DeleteCidr(&'a CidrKey),
    DeleteEntry(&'a PolicyKey),
    RemoveEndpoint,
}

impl EndpointPlan {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the new policy may deny something the old one allowed: entries or prefixes
    /// removed, prefixes moved to another class, or a direction enforced.
    pub fn may_revoke(&self) -> bool {
        !self.delete_entries.is_empty()
            || !self.delete_cidrs.is_empty()
            || !self.upsert_cidrs.is_empty()
            || self.enforcement.is_some_and(|e| e.ingress || e.egress)
    }

    /// Every write, in an order that never denies what both policies allow.
    pub fn steps(&self) -> Vec<Step<'_>> {
        let mut steps: Vec<Step<'_>> = Vec::new();
        steps.extend(
            self.upsert_entries
                .iter()
                .map(|(k, v)| Step::UpsertEntry(k, v)),
        );
        steps.extend(
            self.upsert_cidrs
                .iter()
                .map(|(k, c)| Step::UpsertCidr(k, *c)),
        );
        steps.extend(self.enforcement.map(Step::SetEnforcement));
        steps.extend(self.delete_cidrs.iter().map(Step::DeleteCidr));
        steps.extend(self.delete_entries.iter().map(Step::DeleteEntry));
        if self.removed {
            steps.push(Step::RemoveEndpoint);
        }
        steps
    }
}

/// The writes per endpoint, only for endpoints that change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub endpoints: BTreeMap<PodRef, EndpointPlan>,
}

impl Plan {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let upserts = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let deletes = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (upserts, deletes)
}

fn endpoint_plan(old: Option<&EndpointPolicy>, new: Option<&EndpointPolicy>) -> EndpointPlan {
    let empty = EndpointPolicy::default();
    let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let (upsert_entries, delete_entries) = diff(&o.entries, &n.entries);
    let (upsert_cidrs, delete_cidrs) = diff(&o.cidrs, &n.cidrs);
    let flags = |p: &EndpointPolicy| Enforcement {
        ingress: p.ingress_enforced,
        egress: p.egress_enforced,
    };
    let enforcement = match (old, new) {
        (_, None) => (flags(o) != flags(n)).then_some(flags(n)),
        (None, Some(n)) => Some(flags(n)),
        (Some(o), Some(n)) => (flags(o) != flags(n)).then_some(flags(n)),
    };
    EndpointPlan {
        upsert_entries,
        upsert_cidrs,
        enforcement,
        delete_cidrs,
        delete_entries,
        removed: new.is_none(),
    }
}

/// The writes from `old` to `new` (both as [`compile`](super::compile()) returns them).
pub fn plan(
    old: &BTreeMap<PodRef, EndpointPolicy>,
    new: &BTreeMap<PodRef, EndpointPolicy>,
) -> Plan {
    plan_for(old, new, old.keys().chain(new.keys()))
}

/// [`plan`] for the endpoints `pods` only, when the others are known to be unchanged.
pub fn plan_for<'a>(
    old: &BTreeMap<PodRef, EndpointPolicy>,
    new: &BTreeMap<PodRef, EndpointPolicy>,
    pods: impl IntoIterator<Item = &'a PodRef>,
) -> Plan {
    let mut endpoints = BTreeMap::new();
    for pod in pods {
        if endpoints.contains_key(pod) {
            continue;
        }
        let p = endpoint_plan(old.get(pod), new.get(pod));
        if !p.is_empty() {
            endpoints.insert(pod.clone(), p);
        }
    }
    Plan { endpoints }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Direction, PROTO_ANY, RuleRef};

    fn entry(identity: u32, by: usize) -> (PolicyKey, Allow) {
        (
            PolicyKey::new(Identity(identity), Direction::Ingress, PROTO_ANY, 0, 0),
            Allow::Rule(RuleRef {
                namespace: "x".into(),
                policy: "p".into(),
                direction: Direction::Ingress,
                rule: by,
            }),
        )
    }

    #[test]
    fn only_changes_are_written_in_a_safe_order() {
        let a = PodRef::new("x", "a");
        let b = PodRef::new("x", "b");
        let mut old_a = EndpointPolicy {
            ingress_enforced: true,
            ..Default::default()
        };
        old_a.entries.extend([entry(300, 0), entry(301, 0)]);
        let old = BTreeMap::from([(a.clone(), old_a.clone())]);
        assert!(plan(&old, &old).is_empty());

        // x/a: 301 goes, 302 comes, 300 changes its rule; x/b is new and open.
        let mut new_a = old_a.clone();
        new_a.entries.remove(&entry(301, 0).0);
        new_a.entries.extend([entry(302, 0), entry(300, 1)]);
        let new = BTreeMap::from([(a.clone(), new_a), (b.clone(), EndpointPolicy::default())]);
        let p = plan(&old, &new);
        let pa = &p.endpoints[&a];
        assert_eq!(pa.upsert_entries, [entry(300, 1), entry(302, 0)]);
        assert_eq!(pa.delete_entries, [entry(301, 0).0]);
        assert_eq!(pa.enforcement, None);
        let pb = &p.endpoints[&b];
        assert_eq!(
            pb.steps(),
            [Step::SetEnforcement(Enforcement {
                ingress: false,
                egress: false
            })]
        );
        assert!(pa.may_revoke(), "301 is gone");
        assert!(!pb.may_revoke(), "x/b enforces nothing");
        let steps = pa.steps();
        assert!(matches!(steps[0], Step::UpsertEntry(..)));
        assert!(matches!(steps.last(), Some(Step::DeleteEntry(_))));

        // x/a goes away: everything deleted, flags last.
        let gone = plan(&old, &BTreeMap::new());
        let steps = gone.endpoints[&a].steps();
        assert_eq!(steps.len(), 4);
        assert_eq!(
            steps[0],
            Step::SetEnforcement(Enforcement {
                ingress: false,
                egress: false
            })
        );
        assert_eq!(steps[3], Step::RemoveEndpoint);
    }
}
