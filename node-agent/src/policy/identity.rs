//! The cluster as the policy compiler sees it — namespaces with their labels, pods with their
//! identity, labels, addresses and named ports — and the match of a peer selector to the set of
//! identities it selects.
//!
//! Identities are allocated by the control plane, one per distinct (namespace, pod labels,
//! namespace labels); this module only indexes them. Two pods claiming one identity with
//! different labels is an [`Error::Conflict`]: the inputs are mid-update (a relabel seen before
//! its new identity), and compiling from them could allow the wrong peer.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use apiary_api::{
    core_v1::{Namespace, Pod},
    selector::LabelSelector,
};

use super::{Identity, PodRef, ports::protocol_number};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace has (set by the API server since Kubernetes 1.21): its name, so
/// that a `namespaceSelector` can name a namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A named container port, as a `NetworkPolicyPort` can name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    /// IP protocol number.
    pub protocol: u8,
    pub port: u16,
}

/// What the compiler needs of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Allocated by the control plane for its (namespace, labels, namespace labels).
    pub identity: Identity,
    pub labels: Labels,
    /// `status.podIPs`: what `ipBlock`s match (an egress named port towards a block resolves
    /// against the pods whose address is in it).
    pub ips: Vec<IpAddr>,
    /// The named ports of its containers.
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    /// A pod's labels, addresses and named container ports; `None` for a hostNetwork pod (it
    /// is the node: no policy applies to it, and peers see it as [`Identity::HOST`]).
    pub fn from_pod(pod: &Pod, identity: Identity) -> Option<Self> {
        if pod.spec.host_network {
            return None;
        }
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .map(|s| s.pod_ips.iter().filter_map(|p| p.ip.parse().ok()).collect())
            .unwrap_or_default();
        if let Some(ip) = status.and_then(|s| s.pod_ip.parse().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        let ports = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter(|p| !p.name.is_empty())
            .filter_map(|p| {
                let protocol = (!p.protocol.is_empty()).then_some(p.protocol.as_str());
                Some(NamedPort {
                    name: p.name.clone(),
                    protocol: protocol_number(protocol)?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        Some(Self {
            identity,
            labels: pod.metadata.labels.clone(),
            ips,
            ports,
        })
    }
}

/// Every namespace and pod of the cluster (not only this node's: peers are everywhere).
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Namespace name → its labels.
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<PodRef, PodInfo>,
}

impl Cluster {
    /// Records a namespace's labels.
    pub fn add_namespace(&mut self, namespace: &Namespace) {
        self.namespaces.insert(
            namespace.metadata.name.clone(),
            namespace.metadata.labels.clone(),
        );
    }

    /// Records a pod with the identity the control plane gave it; hostNetwork pods are skipped.
    pub fn add_pod(&mut self, pod: &Pod, identity: Identity) {
        if let Some(info) = PodInfo::from_pod(pod, identity) {
            let key = PodRef::new(&pod.metadata.namespace, &pod.metadata.name);
            self.pods.insert(key, info);
        }
    }

    /// A namespace's labels, with [`NAMESPACE_NAME_LABEL`] whether or not the API server set it.
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        let mut labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        labels
            .entry(NAMESPACE_NAME_LABEL.to_owned())
            .or_insert_with(|| namespace.to_owned());
        labels
    }
}

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityLabels {
    pub namespace: String,
    pub pod_labels: Labels,
    pub namespace_labels: Labels,
}

/// Why the cluster's identities cannot be indexed. Retryable: both come from inputs that are
/// mid-update, and the next pod or namespace event fixes them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A pod carries an identity outside the cluster range (reserved, or a CIDR class).
    #[error("pod {pod} has identity {identity}, outside the cluster range")]
    Reserved { pod: PodRef, identity: Identity },
    /// Two pods share an identity but not their labels.
    #[error("pods {first} and {second} share identity {identity} with different labels")]
    Conflict {
        identity: Identity,
        first: PodRef,
        second: PodRef,
    },
}

/// Identities and what they stand for; the pods of each.
#[derive(Clone, Debug, Default)]
pub struct IdentityIndex {
    identities: BTreeMap<Identity, IdentityLabels>,
    pods: BTreeMap<Identity, Vec<PodRef>>,
}

impl IdentityIndex {
    /// The identities of `cluster`'s pods.
    pub fn new(cluster: &Cluster) -> Result<Self, Error> {
        let mut index = Self::default();
        for (pod, info) in &cluster.pods {
            if !info.identity.is_cluster() {
                return Err(Error::Reserved {
                    pod: pod.clone(),
                    identity: info.identity,
                });
            }
            let labels = IdentityLabels {
                namespace: pod.namespace.clone(),
                pod_labels: info.labels.clone(),
                namespace_labels: cluster.namespace_labels(&pod.namespace),
            };
            let pods = index.pods.entry(info.identity).or_default();
            match index.identities.get(&info.identity) {
                Some(known) if *known != labels => {
                    return Err(Error::Conflict {
                        identity: info.identity,
                        first: pods[0].clone(),
                        second: pod.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    index.identities.insert(info.identity, labels);
                }
            }
            pods.push(pod.clone());
        }
        Ok(index)
    }

    /// What `identity` stands for, if some pod has it.
    pub fn labels(&self, identity: Identity) -> Option<&IdentityLabels> {
        self.identities.get(&identity)
    }

    /// The pods that have `identity`.
    pub fn pods(&self, identity: Identity) -> &[PodRef] {
        self.pods.get(&identity).map_or(&[], Vec::as_slice)
    }

    /// Every identity some pod has.
    pub fn all(&self) -> impl Iterator<Item = Identity> + '_ {
        self.identities.keys().copied()
    }

    /// The identities a peer of a policy in `namespace` selects: with a `namespaceSelector`,
    /// pods of the namespaces it matches (all namespaces if empty), else pods of `namespace`;
    /// and of those, the ones the `podSelector` matches (all if unset or empty). A peer with
    /// neither selects nothing (it is an `ipBlock`).
    pub fn select(
        &self,
        namespace: &str,
        pod_selector: Option<&LabelSelector>,
        namespace_selector: Option<&LabelSelector>,
    ) -> BTreeSet<Identity> {
        if pod_selector.is_none() && namespace_selector.is_none() {
            return BTreeSet::new();
        }
        self.identities
            .iter()
            .filter(|(_, l)| match namespace_selector {
                Some(sel) => sel.matches(&l.namespace_labels),
                None => l.namespace == namespace,
            })
            .filter(|(_, l)| pod_selector.is_none_or(|sel| sel.matches(&l.pod_labels)))
            .map(|(&id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::selector::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(identity: u32, pairs: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            identity: Identity(identity),
            labels: labels(pairs),
            ips: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// Namespaces `x` (env=prod) and `y` (env=dev); pods x/a, x/b (app=web), y/a (app=web), y/c
    /// (tier=db).
    fn cluster() -> Cluster {
        let mut c = Cluster::default();
        c.namespaces.insert("x".into(), labels(&[("env", "prod")]));
        c.namespaces.insert("y".into(), labels(&[("env", "dev")]));
        c.pods
            .insert(PodRef::new("x", "a"), pod(300, &[("app", "web")]));
        c.pods
            .insert(PodRef::new("x", "b"), pod(300, &[("app", "web")]));
        c.pods
            .insert(PodRef::new("y", "a"), pod(301, &[("app", "web")]));
        c.pods
            .insert(PodRef::new("y", "c"), pod(302, &[("tier", "db")]));
        c
    }

    fn ids(ns: &[u32]) -> BTreeSet<Identity> {
        ns.iter().copied().map(Identity).collect()
    }

    #[test]
    fn selectors_compile_to_the_identities_they_match() {
        let index = IdentityIndex::new(&cluster()).unwrap();
        assert_eq!(index.pods(Identity(300)).len(), 2);
        assert_eq!(index.all().count(), 3);
        let web = LabelSelector::from_labels([("app", "web")]);
        let all = LabelSelector::default();
        let prod = LabelSelector::from_labels([("env", "prod")]);
        // A podSelector alone: the policy's namespace only.
        assert_eq!(index.select("x", Some(&web), None), ids(&[300]));
        assert_eq!(index.select("y", Some(&all), None), ids(&[301, 302]));
        assert_eq!(index.select("z", Some(&all), None), ids(&[]));
        // A namespaceSelector alone: every pod of the matching namespaces; empty = all.
        assert_eq!(index.select("y", None, Some(&prod)), ids(&[300]));
        assert_eq!(index.select("x", None, Some(&all)), ids(&[300, 301, 302]));
        // Both: AND.
        assert_eq!(index.select("x", Some(&web), Some(&all)), ids(&[300, 301]));
        let dev = LabelSelector::from_labels([("env", "dev")]);
        assert_eq!(index.select("x", Some(&web), Some(&dev)), ids(&[301]));
        // The automatic name label.
        let by_name = LabelSelector::from_labels([(NAMESPACE_NAME_LABEL, "y")]);
        assert_eq!(index.select("x", None, Some(&by_name)), ids(&[301, 302]));
        // Neither: an ipBlock peer, no identity.
        assert_eq!(index.select("x", None, None), ids(&[]));
        // Expressions.
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
            ..Default::default()
        };
        assert_eq!(
            index.select("x", Some(&expr("In", &["web"])), Some(&all)),
            ids(&[300, 301])
        );
        assert_eq!(
            index.select("x", Some(&expr("NotIn", &["web"])), Some(&all)),
            ids(&[302])
        );
        assert_eq!(
            index.select("x", Some(&expr("Exists", &[])), Some(&all)),
            ids(&[300, 301])
        );
        assert_eq!(
            index.select("x", Some(&expr("DoesNotExist", &[])), Some(&all)),
            ids(&[302])
        );
    }

    #[test]
    fn inconsistent_identities_are_refused() {
        let mut c = cluster();
        c.pods
            .insert(PodRef::new("x", "c"), pod(300, &[("app", "api")]));
        assert!(matches!(
            IdentityIndex::new(&c),
            Err(Error::Conflict {
                identity: Identity(300),
                ..
            })
        ));
        // Same labels in another namespace is another identity too.
        let mut c = cluster();
        c.pods
            .insert(PodRef::new("y", "b"), pod(300, &[("app", "web")]));
        assert!(IdentityIndex::new(&c).is_err());
        let mut c = cluster();
        c.pods.insert(PodRef::new("x", "h"), pod(2, &[]));
        assert!(matches!(
            IdentityIndex::new(&c),
            Err(Error::Reserved { .. })
        ));
    }

    #[test]
    fn pods_become_pod_infos() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [
                {"name": "serve-80-tcp", "containerPort": 80},
                {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
                {"containerPort": 82}
            ]}]},
            "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}
        }))
        .unwrap();
        let info = PodInfo::from_pod(&pod, Identity(256)).unwrap();
        assert_eq!(info.ips.len(), 2);
        assert_eq!(
            info.ports,
            [
                NamedPort {
                    name: "serve-80-tcp".into(),
                    protocol: apiary_ebpf_common::PROTO_TCP,
                    port: 80
                },
                NamedPort {
                    name: "serve-81-udp".into(),
                    protocol: apiary_ebpf_common::PROTO_UDP,
                    port: 81
                }
            ]
        );
        let mut host = pod.clone();
        host.spec.host_network = true;
        assert!(PodInfo::from_pod(&host, Identity(256)).is_none());
        let mut c = Cluster::default();
        c.add_pod(&pod, Identity(256));
        c.add_pod(&host, Identity(257));
        assert_eq!(c.pods.len(), 1);
    }
}
