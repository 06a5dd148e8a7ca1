//! The VolumeBinding plugin's essentials (kube-scheduler's `volumebinding`): claims, volumes,
//! classes, CSI drivers and storage capacities are watched into caches, and a pod with
//! PersistentVolumeClaims is
//!
//! - refused outright (PreFilter) when a claim is missing, being deleted, or unbound in
//!   `Immediate` mode (the PV controller binds those; `pod has unbound immediate
//!   PersistentVolumeClaims`);
//! - kept off nodes (Filter) its bound volumes' `nodeAffinity` excludes (`node(s) had volume
//!   node affinity conflict`), and, for an unbound `WaitForFirstConsumer` claim, nodes where no
//!   Available volume matches and its class cannot provision: a class without a provisioner,
//!   outside the class's `allowedTopologies`, or, for a CSI driver with `storageCapacity: true`,
//!   without a CSIStorageCapacity of the class whose `nodeTopology` selects the node and whose
//!   capacity (or `maximumVolumeSize`) holds the request (`node(s) did not have enough free
//!   storage`);
//! - bound (PreBind, in the binding task) only after its delayed claims are: a matching static
//!   volume gets the claim's `claimRef`, any other claim the `volume.kubernetes.io/selected-node`
//!   annotation for its provisioner; then the binding waits until every claim is `Bound`, and
//!   fails (the pod is tried again) if a claim is handed to another node or after
//!   [`BIND_TIMEOUT`].

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use apiary_api::{
    core_v1::{
        ANN_BOUND_BY_CONTROLLER, ANN_SELECTED_NODE, PersistentVolume, PersistentVolumeClaim, Pod,
    },
    storage_v1::{CsiDriver, CsiStorageCapacity, StorageClass},
    validation::storage_bytes,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

use crate::{
    apiserver::{Api, error::ApiError, objects, path::Target},
    controllers::{
        persistentvolume::matching::{find_matching_volume, node_affinity_allows},
        runtime::{self, Cache},
    },
};

use super::cache::NodeInfo;

/// How long a binding waits for its claims to be bound (kube-scheduler's
/// `bindTimeoutSeconds`, 600 by default).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(600);
/// A provisioner that never provisions (local volumes are all static).
const NOT_SUPPORTED_PROVISIONER: &str = "kubernetes.io/no-provisioner";

pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const NOT_ENOUGH_SPACE: &str = "node(s) did not have enough free storage";
pub const PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";

/// The storage objects the scheduler reads, kept current by watches.
#[derive(Clone, Debug)]
pub struct VolumeCaches {
    claims: Cache,
    volumes: Cache,
    classes: Cache,
    drivers: Cache,
    capacities: Cache,
    /// Woken on every change of a claim: bindings waiting for their claims look again.
    claim_changed: Arc<Notify>,
}

fn decode<T: serde::de::DeserializeOwned>(object: &Value) -> Option<T> {
    T::deserialize(object).ok()
}

impl VolumeCaches {
    /// Starts watching; every change is signalled on `changed` (parked pods may fit now). The
    /// watches end when `shutdown`'s sender is dropped.
    pub fn start(
        api: &Arc<Api>,
        changed: mpsc::UnboundedSender<()>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let cache = |group: &str, plural: &str| {
            Cache::new(
                api.resources
                    .get(group, "v1", plural)
                    .unwrap_or_else(|| panic!("{plural} are served")),
            )
        };
        let caches = Self {
            claims: cache("", "persistentvolumeclaims"),
            volumes: cache("", "persistentvolumes"),
            classes: cache("storage.k8s.io", "storageclasses"),
            drivers: cache("storage.k8s.io", "csidrivers"),
            capacities: cache("storage.k8s.io", "csistoragecapacities"),
            claim_changed: Arc::new(Notify::new()),
        };
        for c in [
            &caches.claims,
            &caches.volumes,
            &caches.classes,
            &caches.drivers,
            &caches.capacities,
        ] {
            let changed = changed.clone();
            let claim_changed =
                std::ptr::eq(c, &caches.claims).then(|| Arc::clone(&caches.claim_changed));
            tokio::spawn(runtime::reflect(
                Arc::clone(api),
                c.clone(),
                move |_: &Value| {
                    let _ = changed.send(());
                    if let Some(claim_changed) = &claim_changed {
                        claim_changed.notify_waiters();
                    }
                },
                shutdown.clone(),
            ));
        }
        caches
    }

    /// Whether every cache has been filled once (before that, a claim missing from one may just
    /// not be listed yet).
    pub fn synced(&self) -> bool {
        [
            &self.claims,
            &self.volumes,
            &self.classes,
            &self.drivers,
            &self.capacities,
        ]
        .iter()
        .all(|c| c.is_synced())
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<PersistentVolumeClaim> {
        self.claims.get(namespace, name).and_then(|c| decode(&c))
    }

    fn class(&self, name: &str) -> Option<StorageClass> {
        (!name.is_empty())
            .then(|| self.classes.get("", name).and_then(|c| decode(&c)))
            .flatten()
    }

    /// What the pod's claims ask of a node (PreFilter), or why no node will do.
    pub fn pre_filter(&self, pod: &Pod) -> Result<PodVolumes, String> {
        let mut volumes = PodVolumes::default();
        for volume in &pod.spec.volumes {
            let (name, ephemeral) = if let Some(c) = &volume.persistent_volume_claim {
                (c.claim_name.clone(), false)
            } else if volume.ephemeral.is_some() {
                (format!("{}-{}", pod.metadata.name, volume.name), true)
            } else {
                continue;
            };
            let Some(claim) = self.claim(&pod.metadata.namespace, &name) else {
                return Err(if ephemeral {
                    format!(
                        "waiting for ephemeral volume controller to create the persistentvolumeclaim {name:?}"
                    )
                } else {
                    format!("persistentvolumeclaim {name:?} not found")
                });
            };
            if ephemeral
                && !claim
                    .metadata
                    .owner_references
                    .iter()
                    .any(|r| r.controller == Some(true) && r.uid == pod.metadata.uid)
            {
                return Err(format!(
                    "PVC {}/{name} was not created for pod {}/{} (pod is not owner)",
                    pod.metadata.namespace, pod.metadata.namespace, pod.metadata.name
                ));
            }
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            let bound = !claim.spec.volume_name.is_empty()
                && claim
                    .metadata
                    .annotations
                    .contains_key(apiary_api::core_v1::ANN_BIND_COMPLETED);
            if bound {
                let volume = self
                    .volumes
                    .get("", &claim.spec.volume_name)
                    .and_then(|v| decode(&v));
                volumes.bound.push(volume);
                continue;
            }
            let class = self.class(claim.class());
            let delayed = claim.spec.volume_name.is_empty()
                && class
                    .as_ref()
                    .is_some_and(StorageClass::waits_for_first_consumer);
            if !delayed {
                return Err("pod has unbound immediate PersistentVolumeClaims".to_owned());
            }
            let class = class.expect("delayed claims have a class");
            let candidates: Vec<PersistentVolume> = self
                .volumes
                .all()
                .iter()
                .filter_map(|v| decode::<PersistentVolume>(v))
                .filter(|v| v.class() == claim.class())
                .collect();
            let capacity_tracked = self
                .drivers
                .get("", &class.provisioner)
                .and_then(|d| decode::<CsiDriver>(&d))
                .is_some_and(|d| d.spec.storage_capacity == Some(true));
            let capacities = if capacity_tracked {
                self.capacities
                    .all()
                    .iter()
                    .filter_map(|c| decode::<CsiStorageCapacity>(c))
                    .filter(|c| c.storage_class_name == class.metadata.name)
                    .collect()
            } else {
                Vec::new()
            };
            volumes.delayed.push(DelayedClaim {
                claim,
                class,
                candidates,
                capacity_tracked,
                capacities,
            });
        }
        Ok(volumes)
    }

    /// Whether the claim `namespace/name` is bound (`None` once gone), and the node it was
    /// handed to.
    fn claim_state(&self, namespace: &str, name: &str) -> Option<(bool, Option<String>)> {
        let claim = self.claim(namespace, name)?;
        let bound = claim.status.as_ref().is_some_and(|s| s.phase == "Bound");
        Some((
            bound,
            claim.metadata.annotations.get(ANN_SELECTED_NODE).cloned(),
        ))
    }
}

/// An unbound `WaitForFirstConsumer` claim of a pod, with what could satisfy it.
#[derive(Clone, Debug)]
pub struct DelayedClaim {
    claim: PersistentVolumeClaim,
    class: StorageClass,
    /// Volumes of its class (Available ones may be bound to it on the chosen node).
    candidates: Vec<PersistentVolume>,
    /// Whether its class's CSI driver publishes capacity (`storageCapacity: true`).
    capacity_tracked: bool,
    capacities: Vec<CsiStorageCapacity>,
}

/// What one pod's claims need of a node.
#[derive(Clone, Debug, Default)]
pub struct PodVolumes {
    /// The volumes of its bound claims (`None`: the claim names a volume that is gone).
    bound: Vec<Option<PersistentVolume>>,
    delayed: Vec<DelayedClaim>,
}

/// What PreBind does for one delayed claim on the chosen node.
#[derive(Clone, Debug)]
pub enum Binding {
    /// Bind this Available volume to the claim.
    Static {
        claim: PersistentVolumeClaim,
        volume: String,
    },
    /// Hand the claim to its provisioner for this node.
    Provision { claim: PersistentVolumeClaim },
}

fn labels_match(selector: &apiary_api::LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.matches(labels)
}

impl DelayedClaim {
    fn static_match(&self, node: &NodeInfo) -> Option<&PersistentVolume> {
        find_matching_volume(
            &self.claim,
            self.candidates.iter(),
            Some((node.name.as_str(), &node.labels)),
            true,
        )
    }

    /// Why the claim cannot be provisioned on `node`, if it cannot.
    fn provision_conflict(&self, node: &NodeInfo) -> Option<&'static str> {
        if let Some(selected) = self.claim.metadata.annotations.get(ANN_SELECTED_NODE) {
            return (selected != &node.name).then_some(BIND_CONFLICT);
        }
        let provisioner = self.class.provisioner.as_str();
        if provisioner.is_empty() || provisioner == NOT_SUPPORTED_PROVISIONER {
            return Some(BIND_CONFLICT);
        }
        if !self.class.allowed_topologies.is_empty()
            && !self.class.allowed_topologies.iter().any(|term| {
                term.match_label_expressions.iter().all(|r| {
                    node.labels
                        .get(&r.key)
                        .is_some_and(|v| r.values.contains(v))
                })
            })
        {
            return Some(BIND_CONFLICT);
        }
        let requested = self.claim.request().and_then(storage_bytes).unwrap_or(0);
        if !self.capacity_tracked || requested == 0 {
            return None;
        }
        let enough = self.capacities.iter().any(|c| {
            let limit = c.maximum_volume_size.as_ref().or(c.capacity.as_ref());
            limit
                .and_then(storage_bytes)
                .is_some_and(|l| l >= requested)
                && c.node_topology
                    .as_ref()
                    .is_some_and(|t| labels_match(t, &node.labels))
        });
        (!enough).then_some(NOT_ENOUGH_SPACE)
    }
}

impl PodVolumes {
    /// Whether the pod has no claims to check.
    pub fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.delayed.is_empty()
    }

    /// Why the pod's volumes keep it off `node` (Filter), if they do.
    pub fn check(&self, node: &NodeInfo) -> Option<&'static str> {
        for volume in &self.bound {
            match volume {
                None => return Some(PV_NOT_EXIST),
                Some(v) if !node_affinity_allows(v, &node.name, &node.labels) => {
                    return Some(NODE_CONFLICT);
                }
                Some(_) => {}
            }
        }
        let mut reason = None;
        for claim in &self.delayed {
            if claim.static_match(node).is_some() {
                continue;
            }
            if let Some(r) = claim.provision_conflict(node) {
                // Capacity is the more telling reason when both apply.
                reason = Some(
                    if r == NOT_ENOUGH_SPACE || reason == Some(NOT_ENOUGH_SPACE) {
                        NOT_ENOUGH_SPACE
                    } else {
                        r
                    },
                );
            }
        }
        reason
    }

    /// What PreBind does on `node` (which passed [`PodVolumes::check`]).
    pub fn plan(&self, node: &NodeInfo) -> Vec<Binding> {
        let mut taken: Vec<&str> = Vec::new();
        self.delayed
            .iter()
            .map(|d| {
                let chosen = find_matching_volume(
                    &d.claim,
                    d.candidates
                        .iter()
                        .filter(|v| !taken.contains(&v.metadata.name.as_str())),
                    Some((node.name.as_str(), &node.labels)),
                    true,
                );
                match chosen {
                    Some(v) => {
                        taken.push(&v.metadata.name);
                        Binding::Static {
                            claim: d.claim.clone(),
                            volume: v.metadata.name.clone(),
                        }
                    }
                    None => Binding::Provision {
                        claim: d.claim.clone(),
                    },
                }
            })
            .collect()
    }
}

fn api_error(message: String) -> ApiError {
    ApiError::internal(message)
}

/// PreBind: carries out `plan` for `pod` on `node` and waits for every claim to be bound.
pub async fn pre_bind(
    api: &Arc<Api>,
    caches: &VolumeCaches,
    node: &str,
    plan: &[Binding],
    timeout: Duration,
) -> Result<(), ApiError> {
    for binding in plan {
        match binding {
            Binding::Static { claim, volume } => {
                // As the PV controller binds (`bindVolumeToClaim`); it finishes the claim's side.
                let current = objects::get(api, caches.volumes.resource(), None, volume).await?;
                if current["spec"]["claimRef"].is_object() {
                    if current["spec"]["claimRef"]["uid"] == claim.metadata.uid.as_str() {
                        continue;
                    }
                    return Err(ApiError::conflict(
                        "persistentvolumes",
                        "",
                        volume,
                        "the volume was bound to another claim meanwhile",
                    ));
                }
                let mut updated = current.clone();
                updated["spec"]["claimRef"] = json!({
                    "kind": "PersistentVolumeClaim",
                    "namespace": claim.metadata.namespace,
                    "name": claim.metadata.name,
                    "uid": claim.metadata.uid,
                    "apiVersion": "v1",
                    "resourceVersion": claim.metadata.resource_version,
                });
                if !updated["metadata"]["annotations"].is_object() {
                    updated["metadata"]["annotations"] = json!({});
                }
                updated["metadata"]["annotations"][ANN_BOUND_BY_CONTROLLER] = json!("yes");
                let target = Target {
                    resource: caches.volumes.resource(),
                    namespace: None,
                    name: None,
                    subresource: None,
                };
                objects::update(api, &target, volume, updated).await?;
            }
            Binding::Provision { claim } => {
                let ns = claim.metadata.namespace.as_str();
                let name = claim.metadata.name.as_str();
                let mut current =
                    objects::get(api, caches.claims.resource(), Some(ns), name).await?;
                match current["metadata"]["annotations"][ANN_SELECTED_NODE].as_str() {
                    Some(n) if n == node => continue,
                    Some(other) => {
                        return Err(api_error(format!(
                            "claim {ns}/{name} is selected for node {other:?}, not {node:?}"
                        )));
                    }
                    None => {}
                }
                if !current["metadata"]["annotations"].is_object() {
                    current["metadata"]["annotations"] = json!({});
                }
                current["metadata"]["annotations"][ANN_SELECTED_NODE] = json!(node);
                let target = Target {
                    resource: caches.claims.resource(),
                    namespace: Some(ns.to_owned()),
                    name: None,
                    subresource: None,
                };
                objects::update(api, &target, name, current).await?;
            }
        }
    }
    // checkBindings, from the caches each time a claim changes (and every second besides).
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Registered before the look, so that a change made meanwhile is not missed.
        let changed = caches.claim_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let mut all_bound = true;
        for binding in plan {
            let claim = match binding {
                Binding::Static { claim, .. } | Binding::Provision { claim } => claim,
            };
            let (ns, name) = (&claim.metadata.namespace, &claim.metadata.name);
            match caches.claim_state(ns, name) {
                None => {
                    return Err(api_error(format!(
                        "binding volumes: persistentvolumeclaim {name:?} not found"
                    )));
                }
                Some((true, _)) => {}
                Some((false, selected)) => {
                    if matches!(binding, Binding::Provision { .. })
                        && selected.as_deref() != Some(node)
                    {
                        return Err(api_error(format!(
                            "binding volumes: selectedNode annotation reset for PVC {name:?}"
                        )));
                    }
                    all_bound = false;
                }
            }
        }
        if all_bound {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(api_error(
                "binding volumes: context deadline exceeded".to_owned(),
            ));
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_owned(),
            labels: BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), name.to_owned()),
                (
                    apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY.to_owned(),
                    name.to_owned(),
                ),
            ]),
            ..NodeInfo::default()
        }
    }

    fn delayed(size: &str, capacities: &[(&str, &str)]) -> DelayedClaim {
        DelayedClaim {
            claim: apiary_api::meta::from_json(json!({
                "metadata": { "name": "c", "namespace": "ns", "uid": "u" },
                "spec": { "accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                    "resources": { "requests": { "storage": size } } },
            }))
            .unwrap(),
            class: apiary_api::meta::from_json(json!({
                "metadata": { "name": "local-path" },
                "provisioner": "local.csi.apiary.dev",
                "volumeBindingMode": "WaitForFirstConsumer",
            }))
            .unwrap(),
            candidates: Vec::new(),
            capacity_tracked: true,
            capacities: capacities
                .iter()
                .map(|(node, capacity)| {
                    apiary_api::meta::from_json(json!({
                        "metadata": { "name": format!("cap-{node}"), "namespace": "kube-system" },
                        "storageClassName": "local-path",
                        "capacity": capacity,
                        "nodeTopology": { "matchLabels": {
                            apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY: node } },
                    }))
                    .unwrap()
                })
                .collect(),
        }
    }

    #[test]
    fn capacity_decides_where_a_claim_can_be_provisioned() {
        let volumes = PodVolumes {
            bound: Vec::new(),
            delayed: vec![delayed("5Gi", &[("n1", "10Gi"), ("n2", "1Gi")])],
        };
        assert_eq!(volumes.check(&node("n1")), None);
        assert_eq!(volumes.check(&node("n2")), Some(NOT_ENOUGH_SPACE));
        assert_eq!(
            volumes.check(&node("n3")),
            Some(NOT_ENOUGH_SPACE),
            "no capacity object"
        );
        let mut untracked = delayed("5Gi", &[]);
        untracked.capacity_tracked = false;
        let volumes = PodVolumes {
            bound: Vec::new(),
            delayed: vec![untracked],
        };
        assert_eq!(volumes.check(&node("n3")), None);
        assert!(matches!(
            volumes.plan(&node("n3"))[..],
            [Binding::Provision { .. }]
        ));
    }

    #[test]
    fn a_selected_node_and_a_bound_volumes_affinity_pin_the_pod() {
        let mut claim = delayed("1Gi", &[("n1", "10Gi"), ("n2", "10Gi")]);
        claim
            .claim
            .metadata
            .annotations
            .insert(ANN_SELECTED_NODE.to_owned(), "n2".to_owned());
        let volumes = PodVolumes {
            bound: Vec::new(),
            delayed: vec![claim],
        };
        assert_eq!(volumes.check(&node("n1")), Some(BIND_CONFLICT));
        assert_eq!(volumes.check(&node("n2")), None);

        let pinned: PersistentVolume = apiary_api::meta::from_json(json!({
            "metadata": { "name": "pv" },
            "spec": { "nodeAffinity": { "required": { "nodeSelectorTerms": [{ "matchExpressions": [{
                "key": apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY, "operator": "In", "values": ["n1"] }] }] } } },
        }))
        .unwrap();
        let volumes = PodVolumes {
            bound: vec![Some(pinned), None],
            delayed: Vec::new(),
        };
        assert_eq!(volumes.check(&node("n2")), Some(NODE_CONFLICT));
        assert_eq!(volumes.check(&node("n1")), Some(PV_NOT_EXIST));
    }
}
