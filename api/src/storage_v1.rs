//! `storage.k8s.io/v1`: StorageClass, CSIDriver, CSINode, CSIStorageCapacity and
//! VolumeAttachment, and the names of Apiary's built-in local-path CSI driver, which the
//! control plane (its default StorageClass) and the node agent (the driver) share.
//!
//! # The local-path contract
//!
//! The control plane creates (when missing) the CSIDriver [`LOCAL_PATH_DRIVER`]
//! (`attachRequired: false`, `storageCapacity: true`) and the default StorageClass
//! [`LOCAL_PATH_CLASS`] (`WaitForFirstConsumer`, `Delete`, `allowVolumeExpansion`). Each node
//! agent plays the external-provisioner, external-resizer and capacity publisher for its own
//! node, as `system:node:<name>` (the `system:apiary:local-path-provisioner` ClusterRole):
//!
//! - It labels its Node `LOCAL_PATH_TOPOLOGY_KEY=<node name>` and keeps a CSINode `<node>`
//!   whose driver entry has `nodeID: <node>` and `topologyKeys: [LOCAL_PATH_TOPOLOGY_KEY]`.
//! - It publishes one CSIStorageCapacity per class of the driver, in `kube-system`, named
//!   `local-path-<node>` for the `local-path` class (`<class>-<node>` for others), labelled
//!   `csi.storage.k8s.io/drivername: local.csi.apiary.dev` and
//!   `csi.storage.k8s.io/managed-by: <node>`, with `storageClassName`, `capacity` (free bytes
//!   of `--volume-dir`), and `nodeTopology.matchLabels: {LOCAL_PATH_TOPOLOGY_KEY: <node>}`.
//! - It provisions the claims annotated `volume.kubernetes.io/storage-provisioner:
//!   local.csi.apiary.dev` **and** `volume.kubernetes.io/selected-node: <its node>`: it creates
//!   the PersistentVolume `pvc-<claim uid>` with `pv.kubernetes.io/provisioned-by:
//!   local.csi.apiary.dev`, `spec.claimRef` (the claim's namespace, name and uid), the
//!   claim's access modes and volume mode, `capacity.storage` = the request, the class's
//!   `reclaimPolicy` and `mountOptions`, `storageClassName`, `csi: {driver, volumeHandle:
//!   pvc-<uid>, fsType?}` and `nodeAffinity.required` on `LOCAL_PATH_TOPOLOGY_KEY In
//!   [<node>]`. The PV controller binds it. When it cannot (not enough room), it records a
//!   `ProvisioningFailed` event and removes `selected-node` so that the scheduler picks again.
//! - On a `Released` PV it provisioned with `persistentVolumeReclaimPolicy: Delete`, it
//!   removes the directory and then deletes the PV (the PV controller leaves that to it).
//! - NodeRestriction holds it to this: a node may set the topology label only to its own
//!   name, and write only its own CSINode, PVs whose every node-affinity term requires
//!   `LOCAL_PATH_TOPOLOGY_KEY In [<node>]` (created only for claims selected for it),
//!   CSIStorageCapacities whose `nodeTopology` is exactly `matchLabels: {KEY: <node>}`, and
//!   claims selected for it.
//! - Expansion: a bound claim whose `spec.resources.requests.storage` grew (admission allows
//!   it for `allowVolumeExpansion` classes) past `status.capacity` is annotated
//!   `volume.kubernetes.io/storage-resizer: local.csi.apiary.dev` by the control plane (the
//!   external-resizer's cue); the agent of the volume's node applies it to the quota and
//!   writes the new size to the PV's `capacity` and the claim's `status.capacity`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    core_v1::{PersistentVolumeSpec, TopologySelectorTerm},
    meta::{Object, ObjectMeta, TypeMeta},
    quantity::Quantity,
    selector::LabelSelector,
};

/// The CSI driver name of Apiary's built-in local-path provisioner: the `provisioner` of the
/// `local-path` StorageClass, the `csi.driver` and `pv.kubernetes.io/provisioned-by` of the
/// volumes it creates, and its CSIDriver object's name.
pub const LOCAL_PATH_DRIVER: &str = "local.csi.apiary.dev";
/// The StorageClass the control plane creates at start-up (if missing) and marks default.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// The node label key of the local-path driver's topology: a local volume's
/// `nodeAffinity` and a CSIStorageCapacity's `nodeTopology` name the node by it (its value is
/// the node's name; the agent labels its Node with it, as CSI's node registration does).
pub const LOCAL_PATH_TOPOLOGY_KEY: &str = "topology.local.csi.apiary.dev/node";

/// The annotation that makes a StorageClass the default (`"true"`).
pub const IS_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The deprecated beta form of [`IS_DEFAULT_CLASS_ANNOTATION`], still honoured.
pub const BETA_IS_DEFAULT_CLASS_ANNOTATION: &str =
    "storageclass.beta.kubernetes.io/is-default-class";

/// A class of storage: who provisions it, with what parameters, and how volumes of it are
/// bound and reclaimed. Its fields are top-level (no `spec`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StorageClass {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    pub metadata: ObjectMeta,
    pub provisioner: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// `Delete` (the default) or `Retain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_volume_expansion: Option<bool>,
    /// `Immediate` (the default) or `WaitForFirstConsumer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_binding_mode: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_topologies: Vec<TopologySelectorTerm>,
}

impl StorageClass {
    /// Whether the class carries the default-class annotation (either form) as `"true"`.
    pub fn is_default(&self) -> bool {
        [
            IS_DEFAULT_CLASS_ANNOTATION,
            BETA_IS_DEFAULT_CLASS_ANNOTATION,
        ]
        .iter()
        .any(|a| self.metadata.annotations.get(*a).map(String::as_str) == Some("true"))
    }

    /// Whether volumes of this class are bound once a pod using the claim is scheduled.
    pub fn waits_for_first_consumer(&self) -> bool {
        self.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
    }
}

/// The default class among `classes` (`GetDefaultClass`): of those annotated default, the
/// newest, and of equally new ones the first by name.
pub fn default_class(classes: &[StorageClass]) -> Option<&StorageClass> {
    classes.iter().filter(|c| c.is_default()).max_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| b.metadata.name.cmp(&a.metadata.name))
    })
}

/// A CSI driver installed in the cluster, and how Kubernetes talks to it.
pub type CsiDriver = Object<CsiDriverSpec, crate::meta::NoStatus>;

/// The spec of a [`CsiDriver`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsiDriverSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_info_on_mount: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_lifecycle_modes: Vec<String>,
    /// Whether the scheduler considers the driver's CSIStorageCapacity objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_capacity: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_group_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires_republish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub se_linux_mount: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub token_requests: Vec<Value>,
}

/// The CSI drivers of one node (named after it).
pub type CsiNode = Object<CsiNodeSpec, crate::meta::NoStatus>;

/// The spec of a [`CsiNode`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsiNodeSpec {
    pub drivers: Vec<CsiNodeDriver>,
}

/// One driver on a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsiNodeDriver {
    pub name: String,
    #[serde(rename = "nodeID")]
    pub node_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topology_keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<Value>,
}

/// The capacity a driver has for a class in one topology segment (namespaced; its fields are
/// top-level).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CsiStorageCapacity {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    pub metadata: ObjectMeta,
    /// The nodes this capacity is for; none: no node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_topology: Option<LabelSelector>,
    pub storage_class_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_volume_size: Option<Quantity>,
}

/// The attachment of a volume to a node, by an attacher.
pub type VolumeAttachment = Object<VolumeAttachmentSpec, VolumeAttachmentStatus>;

/// The spec of a [`VolumeAttachment`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeAttachmentSpec {
    pub attacher: String,
    pub source: VolumeAttachmentSource,
    pub node_name: String,
}

/// What a [`VolumeAttachment`] attaches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeAttachmentSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_volume_spec: Option<Box<PersistentVolumeSpec>>,
}

/// The status of a [`VolumeAttachment`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeAttachmentStatus {
    pub attached: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attachment_metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_error: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detach_error: Option<Value>,
}
