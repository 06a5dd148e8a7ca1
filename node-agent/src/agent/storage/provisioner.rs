//! Kubernetes' external-provisioner and external-resizer for a driver whose controller runs on
//! this node (CSI distributed provisioning): claims the scheduler gave to this node
//! (`volume.kubernetes.io/selected-node`) for this driver get a volume (CreateVolume) and a
//! PersistentVolume `pvc-<claim uid>`, which the PV controller then binds; Released volumes of
//! reclaim `Delete` are deleted; bound claims asking for more than their volume holds are
//! expanded. A pass lists claims, volumes and classes; it runs when the control plane's stream of
//! those kinds reports a change (as the sidecar's informers would), when a failed claim's
//! backoff ends, and every [`RESYNC`] besides.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apiary_api::{
    core_v1::{
        ANN_BETA_STORAGE_PROVISIONER, ANN_PROVISIONED_BY, ANN_SELECTED_NODE,
        ANN_STORAGE_PROVISIONER, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    },
    quantity::Quantity,
    storage_v1::StorageClass,
};
use apiary_csi::{
    Channel,
    v1::{
        CapacityRange, ControllerExpandVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest,
        NodeExpandVolumeRequest, Topology, TopologyRequirement, VolumeCapability,
        controller_client::ControllerClient, node_client::NodeClient, volume_capability,
    },
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{agent::context::Context, api_client::Found};

/// How often claims, volumes and classes are listed when nothing reports a change.
pub const RESYNC: Duration = Duration::from_secs(30);
/// The kinds whose changes start a pass.
const WATCHED: [&str; 3] = ["PersistentVolumeClaim", "PersistentVolume", "StorageClass"];
/// How long a broken change stream waits before it is opened again.
const REWATCH: Duration = Duration::from_secs(1);
/// How often capacity is published when nothing changed.
const CAPACITY_EVERY: Duration = Duration::from_secs(60);
/// The finalizer external-provisioner puts on the volumes it creates, so that a deleted PV's
/// storage is deleted first.
pub const PROVISIONER_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// The Events' source, as the sidecar's.
const COMPONENT: &str = "external-provisioner";
/// Retries of a failed claim: 1 s doubling to 5 min (the sidecar's exponential backoff).
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// One driver's provisioner on this node.
#[derive(Debug)]
pub struct Provisioner {
    ctx: Arc<Context>,
    driver: String,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
    /// Claim uid → (failures so far, not before).
    backoff: HashMap<String, (u32, Instant)>,
}

impl Provisioner {
    pub fn new(ctx: Arc<Context>, driver: String, channel: Channel) -> Self {
        Self {
            ctx,
            driver,
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            backoff: HashMap::new(),
        }
    }

    /// Reconciles for ever.
    pub async fn run(mut self) {
        let changed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(follow_changes(Arc::clone(&self.ctx), Arc::clone(&changed)));
        let mut published: Option<Instant> = None;
        loop {
            match self.sync().await {
                Ok(changed) => {
                    if changed || published.is_none_or(|at| at.elapsed() >= CAPACITY_EVERY) {
                        match super::capacity::publish(
                            &self.ctx,
                            &self.driver,
                            &mut self.controller,
                        )
                        .await
                        {
                            Ok(()) => published = Some(Instant::now()),
                            Err(e) => {
                                tracing::warn!(driver = %self.driver, error = %format!("{e:#}"), "publishing storage capacity")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(driver = %self.driver, error = %format!("{e:#}"), "storage sync")
                }
            }
            // A burst of changes is one permit: the next pass sees them all.
            let next_retry = self.backoff.values().map(|(_, until)| *until).min();
            let wait = next_retry.map_or(RESYNC, |until| {
                until.saturating_duration_since(Instant::now()).min(RESYNC)
            });
            let _ = tokio::time::timeout(wait, changed.notified()).await;
        }
    }

    /// One pass over claims and volumes; returns whether any volume was created, deleted or
    /// resized (so that capacity is published again).
    async fn sync(&mut self) -> anyhow::Result<bool> {
        let claims: Vec<PersistentVolumeClaim> =
            list(&self.ctx, "/api/v1/persistentvolumeclaims").await?;
        let volumes: Vec<PersistentVolume> = list(&self.ctx, "/api/v1/persistentvolumes").await?;
        let classes: Vec<StorageClass> =
            list(&self.ctx, "/apis/storage.k8s.io/v1/storageclasses").await?;
        let node = self.ctx.node.name.clone();
        let mut changed = false;
        let volume_names: BTreeMap<&str, &PersistentVolume> = volumes
            .iter()
            .map(|v| (v.metadata.name.as_str(), v))
            .collect();
        for claim in &claims {
            if wants_volume(claim, &self.driver, &node) {
                if volume_names.contains_key(volume_name(claim).as_str()) {
                    continue; // Made already; the PV controller binds it.
                }
                if self
                    .backoff
                    .get(&claim.metadata.uid)
                    .is_some_and(|(_, until)| Instant::now() < *until)
                {
                    continue;
                }
                match self.provision(claim, &classes).await {
                    Ok(()) => {
                        self.backoff.remove(&claim.metadata.uid);
                        changed = true;
                    }
                    Err(message) => {
                        self.event(claim, "Warning", "ProvisioningFailed", message);
                        let failures = self.backoff.get(&claim.metadata.uid).map_or(0, |b| b.0);
                        let delay = BACKOFF_FIRST
                            .saturating_mul(1 << failures.min(16))
                            .min(BACKOFF_MAX);
                        self.backoff.insert(
                            claim.metadata.uid.clone(),
                            (failures + 1, Instant::now() + delay),
                        );
                    }
                }
            } else if let Some(volume) = volume_names.get(claim.spec.volume_name.as_str())
                && is_ours(volume, &self.driver, &node)
                && let Some(bytes) = needs_expansion(claim, volume, &classes)
            {
                match self.expand(claim, volume, bytes).await {
                    Ok(()) => changed = true,
                    Err(message) => self.event(claim, "Warning", "VolumeResizeFailed", message),
                }
            }
        }
        self.backoff
            .retain(|uid, _| claims.iter().any(|c| c.metadata.uid == *uid));
        for volume in &volumes {
            if is_ours(volume, &self.driver, &node) && should_delete(volume) {
                match self.delete(volume).await {
                    Ok(()) => changed = true,
                    Err(e) => {
                        tracing::warn!(volume = %volume.metadata.name, error = %format!("{e:#}"), "deleting a volume")
                    }
                }
            }
        }
        Ok(changed)
    }

    /// CreateVolume and the PersistentVolume for `claim`; `Err` is the ProvisioningFailed
    /// message.
    async fn provision(
        &mut self,
        claim: &PersistentVolumeClaim,
        classes: &[StorageClass],
    ) -> Result<(), String> {
        let class_name = claim.class();
        let class = classes
            .iter()
            .find(|c| c.metadata.name == class_name)
            .ok_or_else(|| format!("storageclass.storage.k8s.io \"{class_name}\" not found"))?;
        let failed = |e: String| {
            format!("failed to provision volume with StorageClass \"{class_name}\": {e}")
        };
        let bytes = claim
            .request()
            .map(Quantity::value)
            .transpose()
            .map_err(|e| failed(format!("invalid storage request: {e}")))?
            .unwrap_or(0);
        let name = volume_name(claim);
        let topology = Topology {
            segments: [(
                apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY.to_owned(),
                self.ctx.node.name.clone(),
            )]
            .into(),
        };
        let request = CreateVolumeRequest {
            name: name.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: capabilities(&claim.spec.access_modes),
            parameters: class.parameters.clone().into_iter().collect(),
            accessibility_requirements: (self.driver == apiary_api::storage_v1::LOCAL_PATH_DRIVER)
                .then(|| TopologyRequirement {
                    requisite: vec![topology.clone()],
                    preferred: vec![topology],
                }),
            ..Default::default()
        };
        let volume = self
            .controller
            .create_volume(request)
            .await
            .map_err(|s| {
                failed(format!(
                    "rpc error: code = {:?} desc = {}",
                    s.code(),
                    s.message()
                ))
            })?
            .into_inner()
            .volume
            .ok_or_else(|| failed("the driver returned no volume".to_owned()))?;
        let pv = persistent_volume(claim, class, &self.driver, &volume);
        let body = serde_json::to_value(&pv).map_err(|e| failed(e.to_string()))?;
        if let Err(e) = self.ctx.api.post("/api/v1/persistentvolumes", &body).await {
            let message = format!("{e:#}");
            if !message.contains("409") {
                return Err(failed(format!(
                    "creating PersistentVolume {name}: {message}"
                )));
            }
        }
        tracing::info!(claim = %format!("{}/{}", claim.metadata.namespace, claim.metadata.name), volume = %name, "provisioned a volume");
        self.event(
            claim,
            "Normal",
            "ProvisioningSucceeded",
            format!("Successfully provisioned volume {name}"),
        );
        Ok(())
    }

    /// DeleteVolume, then the PV without our finalizer.
    async fn delete(&mut self, volume: &PersistentVolume) -> anyhow::Result<()> {
        let csi = volume.spec.csi.as_ref().context("not a CSI volume")?;
        self.controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: csi.volume_handle.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("DeleteVolume: {}", s.message()))?;
        let path = format!("/api/v1/persistentvolumes/{}", volume.metadata.name);
        let finalizers: Vec<&String> = volume
            .metadata
            .finalizers
            .iter()
            .filter(|f| *f != PROVISIONER_FINALIZER)
            .collect();
        if finalizers.len() != volume.metadata.finalizers.len() {
            let patch = json!({ "metadata": { "finalizers": finalizers } });
            self.ctx.api.merge_patch(&path, &patch).await?;
        }
        if volume.metadata.deletion_timestamp.is_none() {
            self.ctx.api.delete(&path, &json!({})).await?;
        }
        tracing::info!(volume = %volume.metadata.name, "deleted a released volume");
        Ok(())
    }

    /// ControllerExpandVolume (and NodeExpandVolume when the driver needs it), then the PV's
    /// capacity and the claim's status, as external-resizer and the kubelet leave them.
    async fn expand(
        &mut self,
        claim: &PersistentVolumeClaim,
        volume: &PersistentVolume,
        bytes: i64,
    ) -> Result<(), String> {
        let handle = volume
            .spec
            .csi
            .as_ref()
            .map(|c| c.volume_handle.clone())
            .unwrap_or_default();
        let range = Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        });
        let expanded = self
            .controller
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: handle.clone(),
                capacity_range: range,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("resize volume \"{}\" by resizer \"{}\" failed: rpc error: code = {:?} desc = {}", volume.metadata.name, self.driver, s.code(), s.message()))?
            .into_inner();
        if expanded.node_expansion_required {
            self.node
                .node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: handle,
                    capacity_range: range,
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("NodeExpandVolume failed: {}", s.message()))?;
        }
        let size = Quantity::from_bytes(expanded.capacity_bytes);
        let api = |e: anyhow::Error| format!("{e:#}");
        self.ctx
            .api
            .merge_patch(
                &format!("/api/v1/persistentvolumes/{}", volume.metadata.name),
                &json!({ "spec": { "capacity": { "storage": size } } }),
            )
            .await
            .map_err(api)?;
        let status = format!(
            "/api/v1/namespaces/{}/persistentvolumeclaims/{}/status",
            claim.metadata.namespace, claim.metadata.name
        );
        self.ctx
            .api
            .merge_patch(
                &status,
                &json!({ "status": {
                    "capacity": { "storage": size },
                    "allocatedResources": { "storage": size },
                    "allocatedResourceStatuses": null,
                    "conditions": null,
                } }),
            )
            .await
            .map_err(api)?;
        self.event(
            claim,
            "Normal",
            "FileSystemResizeSuccessful",
            format!(
                "MountVolume.NodeExpandVolume succeeded for volume \"{}\"",
                volume.metadata.name
            ),
        );
        Ok(())
    }

    fn event(&self, claim: &PersistentVolumeClaim, type_: &str, reason: &str, message: String) {
        let involved = ObjectReference {
            api_version: "v1".into(),
            kind: "PersistentVolumeClaim".into(),
            namespace: claim.metadata.namespace.clone(),
            name: claim.metadata.name.clone(),
            uid: claim.metadata.uid.clone(),
            resource_version: claim.metadata.resource_version.clone(),
            ..ObjectReference::default()
        };
        self.ctx.api.object_event(
            &format!("{COMPONENT}-{}", self.driver),
            &self.ctx.node.name,
            involved,
            type_,
            reason,
            message,
        );
    }
}

/// Wakes the provisioner whenever a claim, volume or class changes (and when the stream is
/// opened again, since changes may have been missed).
async fn follow_changes(ctx: Arc<Context>, changed: Arc<tokio::sync::Notify>) {
    use apiary_agent_api::v1::WatchDataplaneRequest;
    use futures::StreamExt as _;
    loop {
        let request = WatchDataplaneRequest {
            kinds: WATCHED.map(str::to_owned).to_vec(),
        };
        match ctx.agent.clone().watch_dataplane(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                changed.notify_one();
                while let Some(Ok(_)) = stream.next().await {
                    changed.notify_one();
                }
            }
            Err(e) => tracing::debug!(error = %e, "watching claims and volumes"),
        }
        tokio::time::sleep(REWATCH).await;
    }
}

/// Every item of the list at `path` that decodes.
pub async fn list<T: DeserializeOwned>(ctx: &Context, path: &str) -> anyhow::Result<Vec<T>> {
    let Found::Object(list) = ctx.api.get::<Value>(path).await? else {
        return Ok(Vec::new());
    };
    Ok(list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| serde_json::from_value(i.clone()).ok())
                .collect()
        })
        .unwrap_or_default())
}

/// The name of the volume provisioned for `claim` (external-provisioner's `pvc-<uid>`).
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.metadata.uid)
}

/// Whether `claim` waits for `driver` to provision it on `node`.
pub fn wants_volume(claim: &PersistentVolumeClaim, driver: &str, node: &str) -> bool {
    let ann = &claim.metadata.annotations;
    let provisioner = ann
        .get(ANN_STORAGE_PROVISIONER)
        .or_else(|| ann.get(ANN_BETA_STORAGE_PROVISIONER));
    claim.spec.volume_name.is_empty()
        && claim.metadata.deletion_timestamp.is_none()
        && provisioner.is_some_and(|p| p == driver)
        && ann.get(ANN_SELECTED_NODE).is_some_and(|n| n == node)
}

/// Whether `volume` is one `driver` provisioned on `node` (by its node affinity).
pub fn is_ours(volume: &PersistentVolume, driver: &str, node: &str) -> bool {
    volume.spec.csi.as_ref().is_some_and(|c| c.driver == driver)
        && volume
            .metadata
            .annotations
            .get(ANN_PROVISIONED_BY)
            .is_some_and(|p| p == driver)
        && volume
            .spec
            .node_affinity
            .as_ref()
            .and_then(|a| a.required.as_ref())
            .is_some_and(|s| {
                s.node_selector_terms.iter().any(|t| {
                    t.match_expressions.iter().any(|e| {
                        e.key == apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY
                            && e.operator == "In"
                            && e.values.iter().any(|v| v == node)
                    })
                })
            })
}

/// A volume whose claim is gone and whose class says `Delete`.
pub fn should_delete(volume: &PersistentVolume) -> bool {
    volume.phase() == "Released" && volume.spec.persistent_volume_reclaim_policy == "Delete"
}

/// The bytes a bound claim now asks for beyond its volume, when its class allows expansion.
pub fn needs_expansion(
    claim: &PersistentVolumeClaim,
    volume: &PersistentVolume,
    classes: &[StorageClass],
) -> Option<i64> {
    let allowed = classes
        .iter()
        .find(|c| c.metadata.name == volume.class())
        .is_some_and(|c| c.allow_volume_expansion == Some(true));
    let requested = claim.request()?.value().ok()?;
    let has = volume.capacity()?.value().ok()?;
    let bound = claim.status.as_ref().is_some_and(|s| s.phase == "Bound");
    (allowed && bound && requested > has).then_some(requested)
}

/// The volume capabilities of a claim's access modes: mounted directories.
fn capabilities(access_modes: &[String]) -> Vec<VolumeCapability> {
    use volume_capability::access_mode::Mode;
    let modes: Vec<Mode> = if access_modes.is_empty() {
        vec![Mode::SingleNodeWriter]
    } else {
        access_modes
            .iter()
            .map(|m| match m.as_str() {
                "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
                "ReadWriteMany" => Mode::MultiNodeMultiWriter,
                "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
                _ => Mode::SingleNodeWriter,
            })
            .collect()
    };
    modes
        .into_iter()
        .map(|mode| VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume::default(),
            )),
            access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
        })
        .collect()
}

/// The PersistentVolume external-provisioner makes for `claim` from the driver's `volume`.
pub fn persistent_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    driver: &str,
    volume: &apiary_csi::v1::Volume,
) -> Value {
    let terms: Vec<Value> = volume
        .accessible_topology
        .iter()
        .map(|t| {
            let expressions: Vec<Value> = t
                .segments
                .iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .map(|(k, v)| json!({ "key": k, "operator": "In", "values": [v] }))
                .collect();
            json!({ "matchExpressions": expressions })
        })
        .collect();
    let attributes: BTreeMap<&String, &String> = volume.volume_context.iter().collect();
    let mut spec = json!({
        "capacity": { "storage": Quantity::from_bytes(volume.capacity_bytes) },
        "accessModes": claim.spec.access_modes,
        "volumeMode": claim.spec.volume_mode.as_deref().unwrap_or("Filesystem"),
        "persistentVolumeReclaimPolicy": class.reclaim_policy.as_deref().unwrap_or("Delete"),
        "storageClassName": class.metadata.name,
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": claim.metadata.namespace,
            "name": claim.metadata.name,
            "uid": claim.metadata.uid,
            "resourceVersion": claim.metadata.resource_version,
        },
        "csi": {
            "driver": driver,
            "volumeHandle": volume.volume_id,
            "volumeAttributes": attributes,
        },
    });
    if !class.mount_options.is_empty() {
        spec["mountOptions"] = json!(class.mount_options);
    }
    if !terms.is_empty() {
        spec["nodeAffinity"] = json!({ "required": { "nodeSelectorTerms": terms } });
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(claim),
            "annotations": { ANN_PROVISIONED_BY: driver },
            "finalizers": [PROVISIONER_FINALIZER],
        },
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {
                "name": "data", "namespace": "db", "uid": "1234", "resourceVersion": "7",
                "annotations": {
                    "volume.kubernetes.io/storage-provisioner": "local.csi.apiary.dev",
                    "volume.kubernetes.io/selected-node": "node-a",
                },
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local-path",
                "resources": { "requests": { "storage": "1Gi" } },
            },
            "status": { "phase": "Pending" },
        }))
        .unwrap()
    }

    fn class(reclaim: Option<&str>) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": { "name": "local-path" },
            "provisioner": "local.csi.apiary.dev",
            "reclaimPolicy": reclaim,
            "allowVolumeExpansion": true,
            "volumeBindingMode": "WaitForFirstConsumer",
        }))
        .unwrap()
    }

    fn created(bytes: i64) -> apiary_csi::v1::Volume {
        apiary_csi::v1::Volume {
            capacity_bytes: bytes,
            volume_id: "pvc-1234".into(),
            volume_context: [("k".to_owned(), "v".to_owned())].into(),
            content_source: None,
            accessible_topology: vec![Topology {
                segments: [(
                    "topology.local.csi.apiary.dev/node".to_owned(),
                    "node-a".to_owned(),
                )]
                .into(),
            }],
        }
    }

    #[test]
    fn the_volume_is_made_as_external_provisioner_makes_it() {
        let pv = persistent_volume(
            &claim(),
            &class(Some("Retain")),
            "local.csi.apiary.dev",
            &created(1 << 30),
        );
        assert_eq!(pv["metadata"]["name"], "pvc-1234");
        assert_eq!(
            pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
            "local.csi.apiary.dev"
        );
        assert_eq!(pv["metadata"]["finalizers"], json!([PROVISIONER_FINALIZER]));
        let spec = &pv["spec"];
        assert_eq!(spec["capacity"]["storage"], "1Gi");
        assert_eq!(spec["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(spec["volumeMode"], "Filesystem");
        assert_eq!(spec["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(spec["storageClassName"], "local-path");
        assert_eq!(
            spec["claimRef"],
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "db",
                   "name": "data", "uid": "1234", "resourceVersion": "7"})
        );
        assert_eq!(
            spec["csi"],
            json!({"driver": "local.csi.apiary.dev", "volumeHandle": "pvc-1234",
                   "volumeAttributes": {"k": "v"}})
        );
        assert_eq!(
            spec["nodeAffinity"]["required"]["nodeSelectorTerms"],
            json!([{"matchExpressions": [{"key": "topology.local.csi.apiary.dev/node",
                                          "operator": "In", "values": ["node-a"]}]}])
        );
        // It decodes as the API's type, and is recognised as this node's.
        let mut typed: PersistentVolume = serde_json::from_value(pv).unwrap();
        assert!(is_ours(&typed, "local.csi.apiary.dev", "node-a"));
        assert!(!is_ours(&typed, "local.csi.apiary.dev", "node-b"));
        typed.status = Some(apiary_api::core_v1::PersistentVolumeStatus {
            phase: "Released".into(),
            ..Default::default()
        });
        assert!(!should_delete(&typed), "Retain keeps it");
        let deleting = persistent_volume(
            &claim(),
            &class(None),
            "local.csi.apiary.dev",
            &created(1 << 30),
        );
        assert_eq!(deleting["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    }

    #[test]
    fn only_this_nodes_unbound_claims_of_the_driver_are_provisioned() {
        let c = claim();
        assert!(wants_volume(&c, "local.csi.apiary.dev", "node-a"));
        assert!(!wants_volume(&c, "local.csi.apiary.dev", "node-b"));
        assert!(!wants_volume(&c, "other.csi.example.com", "node-a"));
        let mut bound = claim();
        bound.spec.volume_name = "pvc-1234".into();
        assert!(!wants_volume(&bound, "local.csi.apiary.dev", "node-a"));
        let mut unscheduled = claim();
        unscheduled.metadata.annotations.remove(ANN_SELECTED_NODE);
        assert!(!wants_volume(
            &unscheduled,
            "local.csi.apiary.dev",
            "node-a"
        ));
    }

    #[test]
    fn a_bound_claim_asking_for_more_is_expanded_when_its_class_allows() {
        let pv: PersistentVolume = serde_json::from_value(persistent_volume(
            &claim(),
            &class(None),
            "local.csi.apiary.dev",
            &created(1 << 30),
        ))
        .unwrap();
        let mut c = claim();
        c.status.as_mut().unwrap().phase = "Bound".into();
        assert_eq!(needs_expansion(&c, &pv, &[class(None)]), None);
        c.spec
            .resources
            .requests
            .insert("storage".into(), Quantity::from("2Gi"));
        assert_eq!(needs_expansion(&c, &pv, &[class(None)]), Some(2 << 30));
        let mut fixed = class(None);
        fixed.allow_volume_expansion = Some(false);
        assert_eq!(needs_expansion(&c, &pv, &[fixed]), None);
    }
}
