//! `apiary.dev/v1`: SecurityIdentity, the cluster-wide number of one set of security labels
//! (a pod's labels, its namespace's name and its namespace's labels), as Cilium's
//! `CiliumIdentity`. The control plane allocates them; every node maps pod addresses to them.
//!
//! # The label set
//!
//! [`security_labels`] is the one definition both sides use. Each entry is `<source>:<key>` →
//! value; label keys cannot contain `:`, so the source before the first `:` is unambiguous:
//!
//! | entry                        | from                          |
//! |------------------------------|-------------------------------|
//! | `k8s:<key>` = `<value>`      | each label of the pod         |
//! | `k8s-ns:<key>` = `<value>`   | each label of its namespace   |
//! | `apiary:namespace` = `<ns>`  | the pod's namespace name      |
//!
//! Pods in different namespaces therefore never share an identity.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    core_v1::Pod,
    meta::{ObjectMeta, TypeMeta},
};

/// A set of security labels (see the [module docs](self)).
pub type SecurityLabels = BTreeMap<String, String>;

/// The source prefix of a pod label's entry.
pub const POD_LABEL_PREFIX: &str = "k8s:";
/// The source prefix of a namespace label's entry.
pub const NAMESPACE_LABEL_PREFIX: &str = "k8s-ns:";
/// The entry holding the namespace's name.
pub const NAMESPACE_NAME_KEY: &str = "apiary:namespace";
/// The sources an entry may have.
pub const SOURCES: &[&str] = &["k8s", "k8s-ns", "apiary"];

/// The lowest identity allocated to pods (below are the reserved ones: 0 any, 1 host, 2 world).
pub const MIN_IDENTITY: u32 = 256;
/// One past the highest identity allocated to pods (from 2^24 on the policy compiler numbers
/// its CIDR classes).
pub const MAX_IDENTITY: u32 = 1 << 24;

/// The number of one set of security labels, named after the number in decimal (`"256"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityIdentity {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the identity stands for; immutable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: SecurityLabels,
}

impl SecurityIdentity {
    /// An identity numbered `id` for `labels`, with `apiVersion` and `kind` set.
    pub fn new(id: u32, labels: SecurityLabels) -> Self {
        Self {
            type_meta: <Self as crate::Resource>::type_meta(),
            metadata: ObjectMeta {
                name: id.to_string(),
                ..Default::default()
            },
            labels,
        }
    }

    /// Its number, if its name is one in the allocated range.
    pub fn id(&self) -> Option<u32> {
        parse_id(&self.metadata.name)
    }

    /// The namespace its pods are in (from [`NAMESPACE_NAME_KEY`]).
    pub fn namespace(&self) -> Option<&str> {
        self.labels.get(NAMESPACE_NAME_KEY).map(String::as_str)
    }
}

/// The identity a SecurityIdentity's name stands for: a canonical decimal number (no sign, no
/// leading zero) in `MIN_IDENTITY..MAX_IDENTITY`.
pub fn parse_id(name: &str) -> Option<u32> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u32 = name.parse().ok()?;
    (MIN_IDENTITY..MAX_IDENTITY).contains(&id).then_some(id)
}

/// The security labels of a pod with `pod_labels` in `namespace`, whose labels are
/// `namespace_labels`.
pub fn security_labels(
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> SecurityLabels {
    let mut labels = SecurityLabels::new();
    for (k, v) in pod_labels {
        labels.insert(format!("{POD_LABEL_PREFIX}{k}"), v.clone());
    }
    for (k, v) in namespace_labels {
        labels.insert(format!("{NAMESPACE_LABEL_PREFIX}{k}"), v.clone());
    }
    labels.insert(NAMESPACE_NAME_KEY.to_owned(), namespace.to_owned());
    labels
}

/// Whether `pod` has a security identity: it is live (not `Succeeded` or `Failed`) and has its
/// own network (a hostNetwork pod is the node: it is the reserved host identity).
pub fn has_identity(pod: &Pod) -> bool {
    let finished = pod
        .status
        .as_ref()
        .is_some_and(|s| matches!(s.phase.as_str(), "Succeeded" | "Failed"));
    !finished && !pod.spec.host_network
}

/// The security labels of `pod`, whose namespace has `namespace_labels`; `None` when it has
/// no identity ([`has_identity`]).
pub fn pod_security_labels(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<SecurityLabels> {
    has_identity(pod).then(|| {
        security_labels(
            &pod.metadata.namespace,
            &pod.metadata.labels,
            namespace_labels,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core_v1::PodStatus;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_label_set_is_pod_labels_namespace_labels_and_namespace() {
        let labels = security_labels(
            "shop",
            &map(&[("app", "web"), ("example.com/tier", "front")]),
            &map(&[("team", "a")]),
        );
        assert_eq!(
            labels,
            map(&[
                ("apiary:namespace", "shop"),
                ("k8s-ns:team", "a"),
                ("k8s:app", "web"),
                ("k8s:example.com/tier", "front"),
            ])
        );
    }

    #[test]
    fn a_pod_label_never_collides_with_a_namespace_label_or_the_namespace() {
        // The same key and value on the pod and on the namespace are two different sets.
        let on_pod = security_labels("a", &map(&[("team", "x")]), &map(&[]));
        let on_ns = security_labels("a", &map(&[]), &map(&[("team", "x")]));
        assert_ne!(on_pod, on_ns);
        // A pod label named like the namespace entry stays a pod label.
        let tricky = security_labels("a", &map(&[("apiary:namespace", "b")]), &map(&[]));
        assert_eq!(tricky[NAMESPACE_NAME_KEY], "a");
        // Same labels, other namespace: another set.
        assert_ne!(
            security_labels("a", &map(&[("app", "web")]), &map(&[])),
            security_labels("b", &map(&[("app", "web")]), &map(&[]))
        );
    }

    #[test]
    fn finished_and_host_network_pods_have_no_identity() {
        let mut pod = Pod::new("p");
        pod.metadata.namespace = "default".into();
        pod.metadata.labels = map(&[("app", "web")]);
        assert_eq!(
            pod_security_labels(&pod, &map(&[])),
            Some(map(&[("apiary:namespace", "default"), ("k8s:app", "web")]))
        );
        for phase in ["Succeeded", "Failed"] {
            let mut done = pod.clone();
            done.status = Some(PodStatus {
                phase: phase.into(),
                ..Default::default()
            });
            assert_eq!(pod_security_labels(&done, &map(&[])), None, "{phase}");
        }
        let mut running = pod.clone();
        running.status = Some(PodStatus {
            phase: "Running".into(),
            ..Default::default()
        });
        assert!(has_identity(&running));
        let mut host = pod;
        host.spec.host_network = true;
        assert!(!has_identity(&host));
    }

    #[test]
    fn names_are_canonical_numbers_in_the_allocated_range() {
        assert_eq!(parse_id("256"), Some(256));
        assert_eq!(parse_id("16777215"), Some(16_777_215));
        for bad in [
            "", "255", "2", "16777216", "0256", "+256", "-1", "25 6", "abc",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        let id = SecurityIdentity::new(300, map(&[("apiary:namespace", "x")]));
        assert_eq!(id.id(), Some(300));
        assert_eq!(id.namespace(), Some("x"));
        let v = serde_json::to_value(&id).unwrap();
        assert_eq!(v["apiVersion"], "apiary.dev/v1");
        assert_eq!(v["kind"], "SecurityIdentity");
        assert_eq!(v["labels"]["apiary:namespace"], "x");
    }
}
