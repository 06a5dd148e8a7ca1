//! The PersistentVolume controller, in the shape of kube-controller-manager's
//! (`pkg/controller/volume/persistentvolume/pv_controller.go`): `syncClaim` and `syncVolume`
//! over caches of claims, volumes and classes.
//!
//! - An unbound claim binds to the best matching Available volume ([`matching`]: its
//!   `spec.volumeName`, a volume whose `claimRef` names it, else the smallest one big enough,
//!   with its access modes, class, volume mode and selector). Binding writes the volume's
//!   `claimRef` (and `pv.kubernetes.io/bound-by-controller`), its phase `Bound`, the claim's
//!   `volumeName` and `pv.kubernetes.io/bind-completed` (and bound-by-controller), then the
//!   claim's status: `Bound`, the volume's access modes and capacity.
//! - Without a match: a claim of a `WaitForFirstConsumer` class waits for the scheduler
//!   (`WaitForFirstConsumer` event) until it carries `volume.kubernetes.io/selected-node`;
//!   then, as a claim of an `Immediate` class, it is handed to its class's provisioner by the
//!   `volume.kubernetes.io/storage-provisioner` annotations (`ExternalProvisioning`): the
//!   provisioner (the node agent, for `local-path`) creates a volume whose `claimRef` names the
//!   claim, and the next sync binds them. A claim without a class waits (`FailedBinding`).
//! - A claim that names no class at all gets the default class once there is one
//!   (retroactive default StorageClass assignment).
//! - A bound claim whose volume is gone or bound elsewhere is `Lost`.
//! - A volume becomes `Available` without a claim, `Bound` with its claim's, and `Released`
//!   once its claim is gone; then its reclaim policy applies: `Retain` keeps it `Released`,
//!   `Delete` of a provisioned volume (`pv.kubernetes.io/provisioned-by`) is its provisioner's
//!   to do, `Delete` of any other and (deprecated) `Recycle` fail it.
//!
//! Every claim is synced again every 15 s (kube-controller-manager's `--pv-recycler-…`
//! resync), and pending claims of a volume's class whenever a volume changes, so a new volume
//! is taken at once.

pub mod matching;

use std::{sync::Arc, time::Duration};

use apiary_api::{
    core_v1::{
        ANN_BETA_STORAGE_PROVISIONER, ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER,
        ANN_PROVISIONED_BY, ANN_SELECTED_NODE, ANN_STORAGE_PROVISIONER, PersistentVolume,
        PersistentVolumeClaim,
    },
    meta::ObjectRef,
    storage_v1::StorageClass,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    record_event, record_warning, resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler, Result},
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

const COMPONENT: &str = "persistentvolume-controller";
/// How often every claim and volume is synced again (`--pvclaimbinder-sync-period`).
const RESYNC: Duration = Duration::from_secs(15);
const CONCURRENCY: usize = 4;
const CLAIM: (&str, &str) = ("v1", "PersistentVolumeClaim");
const VOLUME: (&str, &str) = ("v1", "PersistentVolume");

/// Runs the controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let claims = Cache::new(resource(&api, "", "v1", "persistentvolumeclaims"));
    let volumes = Cache::new(resource(&api, "", "v1", "persistentvolumes"));
    let classes = Cache::new(resource(&api, "storage.k8s.io", "v1", "storageclasses"));
    let queue = Queue::new();
    let claim_changed = {
        let (cache, queue, volumes) = (claims.clone(), Arc::clone(&queue), volumes.clone());
        move |claim: &Value| {
            queue.add(cache.key_of(claim));
            // A claim gone (or changed) releases or settles the volume it names.
            let name = claim["spec"]["volumeName"].as_str().unwrap_or_default();
            if !name.is_empty() {
                queue.add(volume_key(name));
            }
            let (ns, n) = (
                claim["metadata"]["namespace"].as_str().unwrap_or_default(),
                claim["metadata"]["name"].as_str().unwrap_or_default(),
            );
            for volume in volumes.all() {
                let r = &volume["spec"]["claimRef"];
                if r["namespace"] == ns && r["name"] == n {
                    queue.add(volumes.key_of(&volume));
                }
            }
        }
    };
    let volume_changed = {
        let (cache, queue, claims) = (volumes.clone(), Arc::clone(&queue), claims.clone());
        move |volume: &Value| {
            queue.add(cache.key_of(volume));
            // Its claim settles (or is lost, when the volume is gone).
            let claim_ref = &volume["spec"]["claimRef"];
            if let (Some(ns), Some(name)) =
                (claim_ref["namespace"].as_str(), claim_ref["name"].as_str())
            {
                queue.add(ObjectRef {
                    resource: "persistentvolumeclaims".to_owned(),
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                });
            }
            // A volume free for any claim may be taken by a pending claim now (Kubernetes
            // waits for the periodic resync). A volume meant for one claim wakes only that one:
            // waking every pending claim for each provisioned volume's writes queued them all
            // behind each other while many were provisioned at once.
            if claim_ref.is_null() {
                for claim in claims.all() {
                    if claim["status"]["phase"] != "Bound" {
                        queue.add(claims.key_of(&claim));
                    }
                }
            }
        }
    };
    let class_changed = {
        let (queue, claims) = (Arc::clone(&queue), claims.clone());
        move |class: &Value| {
            let name = class["metadata"]["name"].as_str().unwrap_or_default();
            for claim in claims.all() {
                // Its claims, and claims of no class (which may get a new default).
                let class = &claim["spec"]["storageClassName"];
                if claim["status"]["phase"] != "Bound" && (class == name || class.is_null()) {
                    queue.add(claims.key_of(&claim));
                }
            }
        }
    };
    let reconciler = Arc::new(PersistentVolumes {
        api: Arc::clone(&api),
        claims: claims.clone(),
        volumes: volumes.clone(),
        classes: classes.clone(),
    });
    tokio::join!(
        runtime::reflect(
            Arc::clone(&api),
            claims.clone(),
            claim_changed,
            shutdown.clone()
        ),
        runtime::reflect(
            Arc::clone(&api),
            volumes.clone(),
            volume_changed,
            shutdown.clone()
        ),
        runtime::reflect(Arc::clone(&api), classes, class_changed, shutdown.clone()),
        runtime::resync(claims, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::resync(volumes, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

fn volume_key(name: &str) -> ObjectRef {
    ObjectRef {
        resource: "persistentvolumes".to_owned(),
        namespace: String::new(),
        name: name.to_owned(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(object: &Value) -> Option<T> {
    apiary_api::meta::from_json(object.clone()).ok()
}

fn annotated(object: &Value, annotation: &str) -> bool {
    object["metadata"]["annotations"][annotation].is_string()
}

struct PersistentVolumes {
    api: Arc<Api>,
    claims: Cache,
    volumes: Cache,
    classes: Cache,
}

impl PersistentVolumes {
    fn target(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        sub: Option<&str>,
    ) -> Target {
        Target {
            resource,
            namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
            name: None,
            subresource: sub.map(str::to_owned),
        }
    }

    /// Writes `object` (through `sub`) and returns what was stored.
    async fn write(
        &self,
        resource: &'static ResourceType,
        object: Value,
        sub: Option<&str>,
    ) -> Result<Value> {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        objects::update(
            &self.api,
            &self.target(resource, &namespace, sub),
            &name,
            object,
        )
        .await
        .map_err(|e| Error::api(format!("updating {} {name}", resource.kind), &e))
    }

    fn class(&self, name: &str) -> Option<StorageClass> {
        self.classes.get("", name).and_then(|c| decode(&c))
    }

    fn all_volumes(&self) -> Vec<PersistentVolume> {
        self.volumes
            .all()
            .iter()
            .filter_map(|v| decode(v))
            .collect()
    }

    /// Writes a claim's phase, and its access modes and capacity from `volume` (cleared
    /// without one), when they differ (`updateClaimStatus`).
    async fn claim_status(
        &self,
        claim: &Value,
        phase: &str,
        volume: Option<&Value>,
    ) -> Result<Value> {
        let mut status = claim["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let old_phase = status["phase"].clone();
        status["phase"] = json!(phase);
        match volume {
            None => {
                if let Some(s) = status.as_object_mut() {
                    s.remove("accessModes");
                    s.remove("capacity");
                }
            }
            Some(volume) => {
                status["accessModes"] = volume["spec"]["accessModes"].clone();
                // Capacity only as the claim becomes bound: a later difference may be meant
                // (a filesystem smaller than its block device, an expansion under way).
                if old_phase != phase {
                    status["capacity"] = volume["spec"]["capacity"].clone();
                }
            }
        }
        if status == claim["status"] {
            return Ok(claim.clone());
        }
        let mut updated = claim.clone();
        updated["status"] = status;
        self.write(self.claims.resource(), updated, Some("status"))
            .await
    }

    /// Writes a volume's phase (and message), when it differs (`updateVolumePhase`).
    async fn volume_phase(&self, volume: &Value, phase: &str, message: &str) -> Result<Value> {
        if volume["status"]["phase"] == phase
            && volume["status"]["message"].as_str().unwrap_or_default() == message
        {
            return Ok(volume.clone());
        }
        let mut updated = volume.clone();
        if !updated["status"].is_object() {
            updated["status"] = json!({});
        }
        updated["status"]["phase"] = json!(phase);
        if message.is_empty() {
            if let Some(s) = updated["status"].as_object_mut() {
                s.remove("message");
            }
        } else {
            updated["status"]["message"] = json!(message);
        }
        self.write(self.volumes.resource(), updated, Some("status"))
            .await
    }

    /// `bind`: volume → claim, volume Bound, claim → volume, claim Bound.
    async fn bind(&self, volume: &Value, claim: &Value) -> Result<()> {
        // bindVolumeToClaim
        let mut volume = volume.clone();
        let wanted_ref = json!({
            "kind": "PersistentVolumeClaim",
            "namespace": claim["metadata"]["namespace"],
            "name": claim["metadata"]["name"],
            "uid": claim["metadata"]["uid"],
            "apiVersion": "v1",
            "resourceVersion": claim["metadata"]["resourceVersion"],
        });
        let claim_ref = &volume["spec"]["claimRef"];
        let same = claim_ref["name"] == wanted_ref["name"]
            && claim_ref["namespace"] == wanted_ref["namespace"]
            && claim_ref["uid"] == wanted_ref["uid"];
        if !same {
            if !claim_ref.is_object() {
                set_annotation(&mut volume, ANN_BOUND_BY_CONTROLLER, "yes");
            }
            volume["spec"]["claimRef"] = wanted_ref;
            volume = self.write(self.volumes.resource(), volume, None).await?;
        }
        let volume = self.volume_phase(&volume, "Bound", "").await?;
        // bindClaimToVolume
        let mut claim = claim.clone();
        let volume_name = volume["metadata"]["name"].as_str().unwrap_or_default();
        let mut dirty = false;
        if claim["spec"]["volumeName"] != volume_name {
            claim["spec"]["volumeName"] = json!(volume_name);
            set_annotation(&mut claim, ANN_BOUND_BY_CONTROLLER, "yes");
            dirty = true;
        }
        if claim["metadata"]["annotations"][ANN_BIND_COMPLETED] != "yes" {
            set_annotation(&mut claim, ANN_BIND_COMPLETED, "yes");
            dirty = true;
        }
        if dirty {
            claim = self.write(self.claims.resource(), claim, None).await?;
        }
        self.claim_status(&claim, "Bound", Some(&volume)).await?;
        Ok(())
    }

    async fn sync_claim(&self, claim: Arc<Value>) -> Result<Action> {
        if annotated(&claim, ANN_BIND_COMPLETED) {
            self.sync_bound_claim(&claim).await
        } else {
            self.sync_unbound_claim(&claim).await
        }
    }

    async fn sync_unbound_claim(&self, claim_json: &Value) -> Result<Action> {
        let Some(claim) = decode::<PersistentVolumeClaim>(claim_json) else {
            return Ok(Action::Done);
        };
        if claim.spec.volume_name.is_empty() {
            // Retroactive default StorageClass assignment (GA in 1.28): a claim made before
            // any class was the default gets the default now.
            if !claim.has_class() {
                let classes: Vec<StorageClass> = self
                    .classes
                    .all()
                    .iter()
                    .filter_map(|c| decode(c))
                    .collect();
                if let Some(default) = apiary_api::storage_v1::default_class(&classes) {
                    let mut updated = claim_json.clone();
                    updated["spec"]["storageClassName"] = json!(default.metadata.name);
                    self.write(self.claims.resource(), updated, None).await?;
                    return Ok(Action::Done);
                }
            }
            let class = self.class(claim.class());
            let delay = !claim.metadata.annotations.contains_key(ANN_SELECTED_NODE)
                && class
                    .as_ref()
                    .is_some_and(StorageClass::waits_for_first_consumer);
            let volumes = self.all_volumes();
            if let Some(volume) = matching::find_best_match(&claim, &volumes, delay) {
                let volume = self
                    .volumes
                    .get("", &volume.metadata.name)
                    .expect("matched from the cache");
                self.bind(&volume, claim_json).await?;
                return Ok(Action::Done);
            }
            if delay {
                self.event(
                    claim_json,
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
                .await;
            } else if !claim.class().is_empty() {
                return self.provision(claim_json, &claim, class).await;
            } else {
                self.event(
                    claim_json,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
            }
            self.claim_status(claim_json, "Pending", None).await?;
            return Ok(Action::Done);
        }
        // The user asked for a volume by name.
        let Some(volume_json) = self.volumes.get("", &claim.spec.volume_name) else {
            self.claim_status(claim_json, "Pending", None).await?;
            return Ok(Action::Done);
        };
        let Some(volume) = decode::<PersistentVolume>(&volume_json) else {
            return Ok(Action::Done);
        };
        if volume.spec.claim_ref.is_none() {
            if let Err(why) = matching::volume_satisfies_claim(&volume, &claim) {
                self.warning(
                    claim_json,
                    "VolumeMismatch",
                    &format!(
                        "Cannot bind to requested volume {:?}: {why}",
                        claim.spec.volume_name
                    ),
                )
                .await;
                self.claim_status(claim_json, "Pending", None).await?;
                return Ok(Action::Done);
            }
            self.bind(&volume_json, claim_json).await?;
        } else if matching::is_bound_to(&volume, &claim) {
            self.bind(&volume_json, claim_json).await?;
        } else {
            if !annotated(claim_json, ANN_BOUND_BY_CONTROLLER) {
                self.warning(
                    claim_json,
                    "FailedBinding",
                    &format!(
                        "volume {:?} already bound to a different claim.",
                        volume.metadata.name
                    ),
                )
                .await;
            }
            self.claim_status(claim_json, "Pending", None).await?;
        }
        Ok(Action::Done)
    }

    /// `provisionClaim` for external provisioners: the claim is annotated with its class's
    /// provisioner, which creates the volume.
    async fn provision(
        &self,
        claim_json: &Value,
        claim: &PersistentVolumeClaim,
        class: Option<StorageClass>,
    ) -> Result<Action> {
        let Some(class) = class else {
            self.warning(
                claim_json,
                "ProvisioningFailed",
                &format!("storageclass.storage.k8s.io {:?} not found", claim.class()),
            )
            .await;
            self.claim_status(claim_json, "Pending", None).await?;
            return Ok(Action::Done);
        };
        if class.provisioner.starts_with("kubernetes.io/") {
            // In-tree provisioners (and `kubernetes.io/no-provisioner`): none is built in.
            self.warning(
                claim_json,
                "ProvisioningFailed",
                "no provisionable volume plugin matched",
            )
            .await;
            self.claim_status(claim_json, "Pending", None).await?;
            return Ok(Action::Done);
        }
        let provisioner = class.provisioner.as_str();
        let mut claim_json = claim_json.clone();
        if claim_json["metadata"]["annotations"][ANN_STORAGE_PROVISIONER] != provisioner
            || claim_json["metadata"]["annotations"][ANN_BETA_STORAGE_PROVISIONER] != provisioner
        {
            set_annotation(&mut claim_json, ANN_STORAGE_PROVISIONER, provisioner);
            set_annotation(&mut claim_json, ANN_BETA_STORAGE_PROVISIONER, provisioner);
            claim_json = self.write(self.claims.resource(), claim_json, None).await?;
        }
        self.event(
            &claim_json,
            "ExternalProvisioning",
            &format!(
                "Waiting for a volume to be created either by the external provisioner '{provisioner}' \
                 or manually by the system administrator. If volume creation is delayed, please \
                 verify that the provisioner is running and correctly registered."
            ),
        )
        .await;
        self.claim_status(&claim_json, "Pending", None).await?;
        Ok(Action::Done)
    }

    async fn sync_bound_claim(&self, claim_json: &Value) -> Result<Action> {
        let volume_name = claim_json["spec"]["volumeName"]
            .as_str()
            .unwrap_or_default();
        if volume_name.is_empty() {
            self.lost(
                claim_json,
                "ClaimLost",
                "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
            )
            .await?;
            return Ok(Action::Done);
        }
        let Some(volume) = self.volumes.get("", volume_name) else {
            self.lost(
                claim_json,
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            )
            .await?;
            return Ok(Action::Done);
        };
        let claim_ref = &volume["spec"]["claimRef"];
        if !claim_ref.is_object() || claim_ref["uid"] == claim_json["metadata"]["uid"] {
            self.bind(&volume, claim_json).await?;
        } else {
            self.lost(
                claim_json,
                "ClaimMisbound",
                "Two claims are bound to the same volume, this one is bound incorrectly",
            )
            .await?;
        }
        Ok(Action::Done)
    }

    async fn lost(&self, claim: &Value, reason: &str, message: &str) -> Result<()> {
        if claim["status"]["phase"] != "Lost" {
            self.warning(claim, reason, message).await;
        }
        self.claim_status(claim, "Lost", None).await.map(drop)
    }

    async fn sync_volume(&self, volume_json: Arc<Value>) -> Result<Action> {
        let Some(volume) = decode::<PersistentVolume>(&volume_json) else {
            return Ok(Action::Done);
        };
        let Some(claim_ref) = &volume.spec.claim_ref else {
            self.volume_phase(&volume_json, "Available", "").await?;
            return Ok(Action::Done);
        };
        if claim_ref.uid.is_empty() {
            // Pre-bound to a claim by name: the claim's sync binds it.
            self.volume_phase(&volume_json, "Available", "").await?;
            return Ok(Action::Done);
        }
        let claim = match self.claims.get(&claim_ref.namespace, &claim_ref.name) {
            Some(c) if c["metadata"]["uid"] == claim_ref.uid.as_str() => Some(c),
            // The cache may lag: ask the store before releasing a volume.
            _ => super::get_fresh(
                &self.api,
                self.claims.resource(),
                &ObjectRef {
                    resource: "persistentvolumeclaims".to_owned(),
                    namespace: claim_ref.namespace.clone(),
                    name: claim_ref.name.clone(),
                },
            )
            .await?
            .filter(|c| c["metadata"]["uid"] == claim_ref.uid.as_str())
            .map(Arc::new),
        };
        let Some(claim) = claim else {
            let volume_json = if matches!(volume.phase(), "Released" | "Failed") {
                (*volume_json).clone()
            } else {
                self.volume_phase(&volume_json, "Released", "").await?
            };
            return self.reclaim(&volume_json, &volume).await;
        };
        let claim_volume = claim["spec"]["volumeName"].as_str().unwrap_or_default();
        if claim_volume.is_empty() {
            // Bound by us but not finished, or dangling: the claim's sync settles it.
            return Ok(Action::RequeueAfter(Duration::from_millis(200)));
        }
        if claim_volume == volume.metadata.name {
            self.volume_phase(&volume_json, "Bound", "").await?;
            return Ok(Action::Done);
        }
        // The claim is bound to another volume.
        if annotated(&volume_json, ANN_PROVISIONED_BY)
            && volume.spec.persistent_volume_reclaim_policy == "Delete"
        {
            let volume_json = if matches!(volume.phase(), "Released" | "Failed") {
                (*volume_json).clone()
            } else {
                self.volume_phase(&volume_json, "Released", "").await?
            };
            return self.reclaim(&volume_json, &volume).await;
        }
        // unbindVolume
        let mut unbound = (*volume_json).clone();
        if let Some(spec) = unbound["spec"].as_object_mut() {
            if annotated(&volume_json, ANN_BOUND_BY_CONTROLLER) {
                spec.remove("claimRef");
            } else if let Some(r) = spec.get_mut("claimRef").and_then(Value::as_object_mut) {
                r.remove("uid");
            }
        }
        if let Some(a) = unbound["metadata"]["annotations"].as_object_mut() {
            a.remove(ANN_BOUND_BY_CONTROLLER);
        }
        let unbound = self.write(self.volumes.resource(), unbound, None).await?;
        self.volume_phase(&unbound, "Available", "").await?;
        Ok(Action::Done)
    }

    /// `reclaimVolume` of a Released volume.
    async fn reclaim(&self, volume_json: &Value, volume: &PersistentVolume) -> Result<Action> {
        match volume.spec.persistent_volume_reclaim_policy.as_str() {
            "Recycle" => {
                let message = "No recycler plugin found for the volume!";
                if volume_json["status"]["phase"] != "Failed" {
                    self.warning_on(volume_json, VOLUME, "VolumeFailedRecycle", message)
                        .await;
                }
                self.volume_phase(volume_json, "Failed", message).await?;
            }
            "Delete" if !annotated(volume_json, ANN_PROVISIONED_BY) => {
                let message = format!(
                    "error getting deleter volume plugin for volume {:?}: no deletable volume plugin matched",
                    volume.metadata.name
                );
                if volume_json["status"]["phase"] != "Failed" {
                    self.warning_on(volume_json, VOLUME, "VolumeFailedDelete", &message)
                        .await;
                }
                self.volume_phase(volume_json, "Failed", &message).await?;
            }
            // Delete of a provisioned volume: its provisioner deletes it (and its storage).
            // Retain: the administrator's.
            _ => {}
        }
        Ok(Action::Done)
    }

    async fn event(&self, claim: &Value, reason: &str, message: &str) {
        record_event(&self.api, COMPONENT, claim, CLAIM, reason, message).await;
    }

    async fn warning(&self, claim: &Value, reason: &str, message: &str) {
        self.warning_on(claim, CLAIM, reason, message).await;
    }

    async fn warning_on(&self, object: &Value, kind: (&str, &str), reason: &str, message: &str) {
        record_warning(&self.api, COMPONENT, object, kind, reason, message).await;
    }
}

fn set_annotation(object: &mut Value, key: &str, value: &str) {
    if !object["metadata"]["annotations"].is_object() {
        object["metadata"]["annotations"] = json!({});
    }
    object["metadata"]["annotations"][key] = json!(value);
}

#[async_trait::async_trait]
impl Reconciler for PersistentVolumes {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        if !self.claims.is_synced() || !self.volumes.is_synced() || !self.classes.is_synced() {
            return Ok(Action::RequeueAfter(Duration::from_millis(200)));
        }
        if key.resource == "persistentvolumes" {
            match self.volumes.get("", &key.name) {
                Some(volume) => self.sync_volume(volume).await,
                None => Ok(Action::Done),
            }
        } else {
            match self.claims.get(&key.namespace, &key.name) {
                Some(claim) => self.sync_claim(claim).await,
                None => Ok(Action::Done),
            }
        }
    }
}
