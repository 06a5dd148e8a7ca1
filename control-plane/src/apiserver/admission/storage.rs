//! kube-apiserver's storage admission plugins, all enabled by default there:
//!
//! - `DefaultStorageClass` (mutating, create): a claim that names no class (neither
//!   `storageClassName` nor the beta annotation; `""` is a choice) gets the default one, the
//!   newest of the classes annotated `storageclass.kubernetes.io/is-default-class: "true"`.
//! - `StorageObjectInUseProtection` (mutating, create): claims get the
//!   `kubernetes.io/pvc-protection` finalizer and volumes `kubernetes.io/pv-protection`, which
//!   the protection controllers remove once nothing uses them.
//! - `PersistentVolumeClaimResize` (validating, update): a claim may only grow when it is
//!   bound and its class allows volume expansion.

use apiary_api::{
    core_v1::{PV_PROTECTION_FINALIZER, PVC_PROTECTION_FINALIZER, PersistentVolumeClaim},
    storage_v1::{StorageClass, default_class},
    validation::storage_bytes,
};
use serde_json::{Value, json};

use crate::apiserver::{
    Api, authz::forbidden_on, objects, objects::Result, path::Target, resources::ResourceType,
};

fn is(resource: &ResourceType, plural: &str) -> bool {
    resource.group.is_empty() && resource.plural == plural
}

/// Every StorageClass, from the store.
async fn storage_classes(api: &Api) -> Result<Vec<StorageClass>> {
    let classes = api
        .resources
        .get("storage.k8s.io", "v1", "storageclasses")
        .expect("storageclasses are served");
    let target = Target {
        resource: classes,
        namespace: None,
        name: None,
        subresource: None,
    };
    let listing = objects::list(api, &target, &Default::default()).await?;
    Ok(listing["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| apiary_api::meta::from_json(c.clone()).ok())
        .collect())
}

/// The mutating plugins, on a new object of `resource`.
pub async fn admit_create(api: &Api, resource: &ResourceType, object: &mut Value) -> Result<()> {
    if is(resource, "persistentvolumeclaims") {
        default_storage_class(api, object).await?;
        add_finalizer(object, PVC_PROTECTION_FINALIZER);
    } else if is(resource, "persistentvolumes") {
        add_finalizer(object, PV_PROTECTION_FINALIZER);
    }
    Ok(())
}

fn add_finalizer(object: &mut Value, finalizer: &str) {
    let finalizers = &mut object["metadata"]["finalizers"];
    if !finalizers.is_array() {
        *finalizers = json!([]);
    }
    if let Some(list) = finalizers.as_array_mut()
        && !list.iter().any(|f| f == finalizer)
    {
        list.push(json!(finalizer));
    }
}

/// `DefaultStorageClass`.
async fn default_storage_class(api: &Api, object: &mut Value) -> Result<()> {
    let Ok(claim) = apiary_api::meta::from_json::<PersistentVolumeClaim>(object.clone()) else {
        return Ok(()); // validation reports what does not decode
    };
    if claim.has_class() {
        return Ok(());
    }
    let classes = storage_classes(api).await.map_err(|e| {
        forbidden_on(
            "persistentvolumeclaims",
            "",
            &claim.metadata.name,
            &e.message,
        )
    })?;
    if let Some(class) = default_class(&classes) {
        object["spec"]["storageClassName"] = json!(class.metadata.name);
    }
    Ok(())
}

/// `PersistentVolumeClaimResize`, on an update of a claim from `old` to `new` (not through a
/// subresource).
pub async fn validate_update(
    api: &Api,
    resource: &ResourceType,
    old: &Value,
    new: &Value,
) -> Result<()> {
    if !is(resource, "persistentvolumeclaims") {
        return Ok(());
    }
    let decode = |v: &Value| apiary_api::meta::from_json::<PersistentVolumeClaim>(v.clone()).ok();
    let (Some(old), Some(new)) = (decode(old), decode(new)) else {
        return Ok(());
    };
    let size = |c: &PersistentVolumeClaim| c.request().and_then(storage_bytes).unwrap_or(0);
    if size(&new) <= size(&old) {
        return Ok(());
    }
    let forbidden = |why: &str| forbidden_on("persistentvolumeclaims", "", &new.metadata.name, why);
    if old.status.as_ref().is_none_or(|s| s.phase != "Bound") {
        return Err(forbidden(
            "Only bound persistent volume claims can be expanded",
        ));
    }
    let (class, old_class) = (new.class(), old.class());
    let allowed = !class.is_empty()
        && class == old_class
        && storage_classes(api)
            .await
            .unwrap_or_default()
            .iter()
            .find(|c| c.metadata.name == class)
            .and_then(|c| c.allow_volume_expansion)
            .unwrap_or(false);
    if !allowed {
        return Err(forbidden(
            "only dynamically provisioned pvc can be resized and the storageclass that \
             provisions the pvc must support resize",
        ));
    }
    Ok(())
}
