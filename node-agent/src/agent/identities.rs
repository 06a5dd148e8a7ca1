//! The node's view of security identities: which number the control plane allocated to each
//! pod (of every node), and so to each pod address, kept from the `SecurityIdentity`, `Pod` and
//! `Namespace` events of `WatchDataplane`.
//!
//! A pod's identity is the SecurityIdentity whose labels are the pod's security labels,
//! computed by [`apiary_v1::pod_security_labels`] exactly as the control plane's identity
//! controller computes them; should two identities carry one label set, the lowest is the one
//! (as the controller decides). A pod whose identity is not allocated yet (or whose namespace
//! is not seen yet) has none, and its addresses map to nothing until it is.
//!
//! [`IdentityCache::take_changes`] hands out the `ip → identity` upserts and deletes since the
//! last call, so that a BPF map can be kept in step without rewriting it.
//!
//! Pure: no I/O, no async; the caller feeds the events.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use apiary_agent_api::v1::{ObjectEvent, object_event::Type};
use apiary_api::{
    apiary_v1::{self, SecurityIdentity, SecurityLabels},
    core_v1::{Namespace, Pod},
};

/// Labels of a namespace.
pub type Labels = BTreeMap<String, String>;

/// A pod, by namespace and name.
pub type PodKey = (String, String);

/// Why an event could not be applied. Not retryable: the same object fails again; the cache
/// is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not decode as its kind.
    #[error("decoding a {kind}: {source}")]
    Decode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The `ip → identity` changes since the last [`IdentityCache::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityChanges {
    /// Addresses that map to a new or other identity, in address order.
    pub upserts: Vec<(IpAddr, u32)>,
    /// Addresses that map to no identity any more, in address order.
    pub deletes: Vec<IpAddr>,
}

impl IdentityChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// What the cache keeps of a pod.
#[derive(Clone, Debug, Default)]
struct PodEntry {
    pod: Pod,
    /// Its security labels: `None` without an identity or while its namespace is unknown.
    security: Option<SecurityLabels>,
    /// Its addresses, when it has an identity.
    ips: Vec<IpAddr>,
}

/// Identities, pods and namespaces of the cluster, indexed both ways.
#[derive(Debug, Default)]
pub struct IdentityCache {
    /// Every SecurityIdentity, by number.
    identities: BTreeMap<u32, SecurityLabels>,
    /// The numbers of each label set (normally one; the lowest wins).
    by_labels: BTreeMap<SecurityLabels, BTreeSet<u32>>,
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodKey, PodEntry>,
    /// The pods of each label set.
    pods_by_labels: BTreeMap<SecurityLabels, BTreeSet<PodKey>>,
    /// The pods claiming each address (one, unless an update is half seen).
    ips: BTreeMap<IpAddr, BTreeSet<PodKey>>,
    /// What the last [`Self::take_changes`] left the consumer with.
    reported: BTreeMap<IpAddr, u32>,
    /// Addresses whose identity may differ from `reported`.
    dirty: BTreeSet<IpAddr>,
}

/// The addresses of a pod: `status.podIPs`, and `status.podIP` if it is not among them.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Ok(ip) = status.pod_ip.parse()
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

fn key_of(pod: &Pod) -> PodKey {
    (pod.metadata.namespace.clone(), pod.metadata.name.clone())
}

impl IdentityCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one `WatchDataplane` event; kinds other than SecurityIdentity, Pod and
    /// Namespace, and `SYNCED`, are ignored.
    pub fn apply(&mut self, event: &ObjectEvent) -> Result<(), Error> {
        let kind = Type::try_from(event.r#type).unwrap_or(Type::Unspecified);
        if !matches!(kind, Type::Added | Type::Modified | Type::Deleted) {
            return Ok(());
        }
        let deleted = kind == Type::Deleted;
        let decode_error = |source| Error::Decode {
            kind: event.kind.clone(),
            source,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&event.object_json).map_err(decode_error)?;
        match event.kind.as_str() {
            "SecurityIdentity" => {
                let identity: SecurityIdentity =
                    apiary_api::from_json(value).map_err(decode_error)?;
                if deleted {
                    self.remove_identity(&identity.metadata.name);
                } else {
                    self.upsert_identity(&identity);
                }
            }
            "Pod" => {
                let pod: Pod = apiary_api::from_json(value).map_err(decode_error)?;
                if deleted {
                    self.remove_pod(&pod.metadata.namespace, &pod.metadata.name);
                } else {
                    self.upsert_pod(pod);
                }
            }
            "Namespace" => {
                let namespace: Namespace = apiary_api::from_json(value).map_err(decode_error)?;
                if deleted {
                    self.remove_namespace(&namespace.metadata.name);
                } else {
                    self.upsert_namespace(&namespace);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Forgets every object but remembers what was reported, before the events of a new
    /// watch (which list everything again): objects gone meanwhile then show up as deletes.
    /// Take changes only once every kind is listed again (`SYNCED`), or addresses not yet
    /// relisted are reported deleted.
    pub fn restart(&mut self) {
        let reported = std::mem::take(&mut self.reported);
        *self = Self {
            dirty: reported.keys().copied().collect(),
            reported,
            ..Self::default()
        };
    }

    /// A SecurityIdentity added or changed. One named outside the allocated range is ignored.
    pub fn upsert_identity(&mut self, identity: &SecurityIdentity) {
        let Some(id) = identity.id() else {
            return;
        };
        if self.identities.get(&id) == Some(&identity.labels) {
            return;
        }
        self.remove_identity(&identity.metadata.name);
        self.identities.insert(id, identity.labels.clone());
        self.by_labels
            .entry(identity.labels.clone())
            .or_default()
            .insert(id);
        self.mark_label_set(&identity.labels);
    }

    /// The SecurityIdentity named `name` deleted.
    pub fn remove_identity(&mut self, name: &str) {
        let Some(id) = apiary_v1::parse_id(name) else {
            return;
        };
        let Some(labels) = self.identities.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_labels.get_mut(&labels) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_labels.remove(&labels);
            }
        }
        self.mark_label_set(&labels);
    }

    /// A namespace added or changed: its pods' label sets follow its labels.
    pub fn upsert_namespace(&mut self, namespace: &Namespace) {
        let name = &namespace.metadata.name;
        if self.namespaces.get(name) == Some(&namespace.metadata.labels) {
            return;
        }
        self.namespaces
            .insert(name.clone(), namespace.metadata.labels.clone());
        self.refresh_namespace(name);
    }

    /// The namespace `name` deleted: its pods have no identity any more.
    pub fn remove_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.refresh_namespace(name);
        }
    }

    /// A pod added or changed (labels, phase, addresses).
    pub fn upsert_pod(&mut self, pod: Pod) {
        let key = key_of(&pod);
        self.unindex_pod(&key);
        let entry = self.entry_for(pod);
        self.index_pod(key, entry);
    }

    /// The pod `namespace/name` deleted.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.unindex_pod(&(namespace.to_owned(), name.to_owned()));
    }

    /// The identity of pod `namespace/name`, once allocated; `None` for a hostNetwork or
    /// finished pod, or an unknown one.
    pub fn identity_of_pod(&self, namespace: &str, name: &str) -> Option<u32> {
        let entry = self.pods.get(&(namespace.to_owned(), name.to_owned()))?;
        self.identity_of_labels(entry.security.as_ref()?)
    }

    /// The identity of the pod (of any node) that has address `ip`.
    pub fn identity_of_ip(&self, ip: IpAddr) -> Option<u32> {
        self.ips
            .get(&ip)?
            .iter()
            .find_map(|key| self.identity_of_pod(&key.0, &key.1))
    }

    /// The identity allocated to `labels`: the lowest of those carrying them.
    pub fn identity_of_labels(&self, labels: &SecurityLabels) -> Option<u32> {
        self.by_labels.get(labels)?.first().copied()
    }

    /// The labels identity `id` stands for.
    pub fn labels_of(&self, id: u32) -> Option<&SecurityLabels> {
        self.identities.get(&id)
    }

    /// Every pod address with an identity.
    pub fn ip_identities(&self) -> BTreeMap<IpAddr, u32> {
        self.ips
            .keys()
            .filter_map(|ip| Some((*ip, self.identity_of_ip(*ip)?)))
            .collect()
    }

    /// The `ip → identity` changes since the last call (since the start for the first).
    pub fn take_changes(&mut self) -> IdentityChanges {
        let mut changes = IdentityChanges::default();
        for ip in std::mem::take(&mut self.dirty) {
            match (self.identity_of_ip(ip), self.reported.get(&ip).copied()) {
                (Some(now), before) if before != Some(now) => {
                    self.reported.insert(ip, now);
                    changes.upserts.push((ip, now));
                }
                (None, Some(_)) => {
                    self.reported.remove(&ip);
                    changes.deletes.push(ip);
                }
                _ => {}
            }
        }
        changes
    }

    /// The entry of `pod` as it is now, with its label set under the namespace as known.
    fn entry_for(&self, pod: Pod) -> PodEntry {
        let security = self
            .namespaces
            .get(&pod.metadata.namespace)
            .and_then(|ns_labels| apiary_v1::pod_security_labels(&pod, ns_labels));
        let ips = if apiary_v1::has_identity(&pod) {
            pod_ips(&pod)
        } else {
            Vec::new()
        };
        PodEntry { pod, security, ips }
    }

    fn index_pod(&mut self, key: PodKey, entry: PodEntry) {
        if let Some(labels) = &entry.security {
            self.pods_by_labels
                .entry(labels.clone())
                .or_default()
                .insert(key.clone());
        }
        for ip in &entry.ips {
            self.ips.entry(*ip).or_default().insert(key.clone());
            self.dirty.insert(*ip);
        }
        self.pods.insert(key, entry);
    }

    fn unindex_pod(&mut self, key: &PodKey) -> Option<PodEntry> {
        let entry = self.pods.remove(key)?;
        if let Some(labels) = &entry.security
            && let Some(pods) = self.pods_by_labels.get_mut(labels)
        {
            pods.remove(key);
            if pods.is_empty() {
                self.pods_by_labels.remove(labels);
            }
        }
        for ip in &entry.ips {
            if let Some(pods) = self.ips.get_mut(ip) {
                pods.remove(key);
                if pods.is_empty() {
                    self.ips.remove(ip);
                }
            }
            self.dirty.insert(*ip);
        }
        Some(entry)
    }

    /// Recomputes the label sets of the pods of namespace `name`.
    fn refresh_namespace(&mut self, name: &str) {
        let keys: Vec<PodKey> = self
            .pods
            .range((name.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == name)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(entry) = self.unindex_pod(&key) {
                let entry = self.entry_for(entry.pod);
                self.index_pod(key, entry);
            }
        }
    }

    /// Marks the addresses of the pods with label set `labels` for recomputation.
    fn mark_label_set(&mut self, labels: &SecurityLabels) {
        let Some(pods) = self.pods_by_labels.get(labels) else {
            return;
        };
        for key in pods {
            if let Some(entry) = self.pods.get(key) {
                self.dirty.extend(entry.ips.iter().copied());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::core_v1::{PodIp, PodStatus};
    use serde_json::json;

    fn labels(entries: &[(&str, &str)]) -> Labels {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn namespace(name: &str, l: &[(&str, &str)]) -> Namespace {
        let mut ns = Namespace::new(name);
        ns.metadata.labels = labels(l);
        ns
    }

    fn pod(ns: &str, name: &str, l: &[(&str, &str)], ip: &str) -> Pod {
        let mut pod = Pod::new(name);
        pod.metadata.namespace = ns.into();
        pod.metadata.labels = labels(l);
        pod.status = Some(PodStatus {
            phase: "Running".into(),
            pod_ip: ip.into(),
            pod_ips: vec![PodIp { ip: ip.into() }],
            ..Default::default()
        });
        pod
    }

    fn identity(
        id: u32,
        ns: &str,
        pod_labels: &[(&str, &str)],
        ns_labels: &[(&str, &str)],
    ) -> SecurityIdentity {
        SecurityIdentity::new(
            id,
            apiary_v1::security_labels(ns, &labels(pod_labels), &labels(ns_labels)),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn event(kind: &str, object: serde_json::Value, r#type: Type) -> ObjectEvent {
        ObjectEvent {
            r#type: r#type as i32,
            kind: kind.into(),
            object_json: serde_json::to_vec(&object).unwrap(),
            resource_version: 1,
        }
    }

    #[test]
    fn pods_and_addresses_map_to_their_identity_once_it_exists() {
        let mut cache = IdentityCache::new();
        cache.upsert_namespace(&namespace("a", &[]));
        cache.upsert_pod(pod("a", "web-1", &[("app", "web")], "10.244.1.5"));
        cache.upsert_pod(pod("a", "web-2", &[("app", "web")], "10.244.2.5"));
        // Not allocated yet: nothing to report.
        assert_eq!(cache.identity_of_pod("a", "web-1"), None);
        assert!(cache.take_changes().is_empty());
        cache.upsert_identity(&identity(256, "a", &[("app", "web")], &[]));
        assert_eq!(cache.identity_of_pod("a", "web-1"), Some(256));
        assert_eq!(cache.identity_of_ip(ip("10.244.2.5")), Some(256));
        assert_eq!(
            cache.take_changes(),
            IdentityChanges {
                upserts: vec![(ip("10.244.1.5"), 256), (ip("10.244.2.5"), 256)],
                deletes: vec![],
            }
        );
        // Nothing new since.
        assert!(cache.take_changes().is_empty());
        assert_eq!(cache.ip_identities().len(), 2);
    }

    #[test]
    fn a_relabelled_pod_moves_and_a_deleted_pod_is_deleted() {
        let mut cache = IdentityCache::new();
        cache.upsert_namespace(&namespace("a", &[]));
        cache.upsert_identity(&identity(256, "a", &[("app", "web")], &[]));
        cache.upsert_identity(&identity(257, "a", &[("app", "db")], &[]));
        cache.upsert_pod(pod("a", "p", &[("app", "web")], "10.244.1.5"));
        cache.upsert_pod(pod("a", "q", &[("app", "web")], "10.244.1.6"));
        cache.take_changes();
        cache.upsert_pod(pod("a", "p", &[("app", "db")], "10.244.1.5"));
        cache.remove_pod("a", "q");
        assert_eq!(
            cache.take_changes(),
            IdentityChanges {
                upserts: vec![(ip("10.244.1.5"), 257)],
                deletes: vec![ip("10.244.1.6")],
            }
        );
        assert_eq!(cache.identity_of_pod("a", "q"), None);
    }

    #[test]
    fn a_namespace_relabel_moves_its_pods_only() {
        let mut cache = IdentityCache::new();
        cache.upsert_namespace(&namespace("a", &[("team", "x")]));
        cache.upsert_namespace(&namespace("b", &[("team", "x")]));
        cache.upsert_identity(&identity(256, "a", &[("app", "web")], &[("team", "x")]));
        cache.upsert_identity(&identity(257, "b", &[("app", "web")], &[("team", "x")]));
        cache.upsert_pod(pod("a", "p", &[("app", "web")], "10.244.1.5"));
        cache.upsert_pod(pod("b", "p", &[("app", "web")], "10.244.1.6"));
        // Same pod labels, other namespace: another identity.
        assert_eq!(cache.identity_of_pod("a", "p"), Some(256));
        assert_eq!(cache.identity_of_pod("b", "p"), Some(257));
        cache.take_changes();

        cache.upsert_namespace(&namespace("a", &[("team", "y")]));
        // The new set has no identity yet: the address maps to nothing meanwhile.
        assert_eq!(
            cache.take_changes(),
            IdentityChanges {
                upserts: vec![],
                deletes: vec![ip("10.244.1.5")],
            }
        );
        cache.upsert_identity(&identity(258, "a", &[("app", "web")], &[("team", "y")]));
        assert_eq!(
            cache.take_changes(),
            IdentityChanges {
                upserts: vec![(ip("10.244.1.5"), 258)],
                deletes: vec![],
            }
        );
        assert_eq!(cache.identity_of_pod("b", "p"), Some(257));
    }

    #[test]
    fn host_network_finished_and_unknown_namespace_pods_have_none() {
        let mut cache = IdentityCache::new();
        cache.upsert_identity(&identity(256, "a", &[("app", "web")], &[]));
        cache.upsert_pod(pod("a", "early", &[("app", "web")], "10.244.1.4"));
        // Namespace not seen yet.
        assert_eq!(cache.identity_of_pod("a", "early"), None);
        cache.upsert_namespace(&namespace("a", &[]));
        assert_eq!(cache.identity_of_pod("a", "early"), Some(256));

        let mut host = pod("a", "host", &[("app", "web")], "192.168.1.10");
        host.spec.host_network = true;
        cache.upsert_pod(host);
        assert_eq!(cache.identity_of_pod("a", "host"), None);
        assert_eq!(cache.identity_of_ip(ip("192.168.1.10")), None);

        let mut done = pod("a", "early", &[("app", "web")], "10.244.1.4");
        done.status.as_mut().unwrap().phase = "Succeeded".into();
        cache.upsert_pod(done);
        assert_eq!(cache.identity_of_ip(ip("10.244.1.4")), None);
        assert_eq!(
            cache.take_changes(),
            IdentityChanges::default(),
            "added and gone between two calls: nothing to tell"
        );
        cache.remove_namespace("a");
        assert!(cache.ip_identities().is_empty());
    }

    #[test]
    fn the_lowest_of_two_identities_for_one_set_wins() {
        let mut cache = IdentityCache::new();
        cache.upsert_namespace(&namespace("a", &[]));
        cache.upsert_pod(pod("a", "p", &[("app", "web")], "10.244.1.5"));
        cache.upsert_identity(&identity(300, "a", &[("app", "web")], &[]));
        cache.upsert_identity(&identity(256, "a", &[("app", "web")], &[]));
        assert_eq!(cache.identity_of_pod("a", "p"), Some(256));
        cache.remove_identity("256");
        assert_eq!(cache.identity_of_pod("a", "p"), Some(300));
        assert_eq!(cache.take_changes().upserts, vec![(ip("10.244.1.5"), 300)]);
        // Names outside the range are no identity.
        let mut bogus = identity(256, "a", &[("app", "web")], &[]);
        bogus.metadata.name = "12".into();
        cache.upsert_identity(&bogus);
        assert_eq!(cache.labels_of(12), None);
    }

    #[test]
    fn events_drive_the_cache_and_a_restart_reports_what_went_away() {
        let mut cache = IdentityCache::new();
        let ns = serde_json::to_value(namespace("a", &[])).unwrap();
        let p = serde_json::to_value(pod("a", "p", &[("app", "web")], "10.244.1.5")).unwrap();
        let q = serde_json::to_value(pod("a", "q", &[("app", "db")], "10.244.1.6")).unwrap();
        let id = json!({"apiVersion": "apiary.dev/v1", "kind": "SecurityIdentity",
            "metadata": {"name": "256"},
            "labels": {"apiary:namespace": "a", "k8s:app": "web"}});
        let id2 = json!({"apiVersion": "apiary.dev/v1", "kind": "SecurityIdentity",
            "metadata": {"name": "257"},
            "labels": {"apiary:namespace": "a", "k8s:app": "db"}});
        for e in [
            event("Namespace", ns.clone(), Type::Added),
            event("Pod", p.clone(), Type::Added),
            event("Pod", q, Type::Added),
            event("SecurityIdentity", id.clone(), Type::Added),
            event("SecurityIdentity", id2.clone(), Type::Added),
            event("Service", json!({}), Type::Added),
            event("", json!(null), Type::Synced),
        ] {
            cache.apply(&e).unwrap();
        }
        assert_eq!(cache.take_changes().upserts.len(), 2);
        cache
            .apply(&event("SecurityIdentity", id2.clone(), Type::Deleted))
            .unwrap();
        assert_eq!(cache.take_changes().deletes, vec![ip("10.244.1.6")]);
        cache
            .apply(&event("SecurityIdentity", id2, Type::Added))
            .unwrap();
        assert_eq!(cache.take_changes().upserts, vec![(ip("10.244.1.6"), 257)]);

        // A new watch lists only the namespace, p and its identity: q went away unseen.
        cache.restart();
        for e in [
            event("Namespace", ns, Type::Added),
            event("Pod", p, Type::Added),
            event("SecurityIdentity", id, Type::Added),
        ] {
            cache.apply(&e).unwrap();
        }
        assert_eq!(
            cache.take_changes(),
            IdentityChanges {
                upserts: vec![],
                deletes: vec![ip("10.244.1.6")],
            },
            "p kept its identity; q's address is gone"
        );

        let bad = ObjectEvent {
            object_json: b"{".to_vec(),
            ..event("Pod", json!({}), Type::Added)
        };
        assert!(matches!(cache.apply(&bad), Err(Error::Decode { .. })));
    }
}
