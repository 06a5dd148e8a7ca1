//! What differs between resource types on the write path: defaults and status on create,
//! validation, graceful deletion, and what a deletion sets off (namespace cleanup, garbage
//! collection of dependents).

use std::{sync::Arc, time::Duration};

use apiary_api::validation;
use serde_json::{Value, json};

use super::{
    Api,
    custom_resources::{CLEANUP_FINALIZER, CustomResources, CustomVersion},
    error::ApiError,
    objects::{self, Result},
    path::Target,
    resources::is_built_in,
    resources::{ResourceType, StorageKeys as _},
};

/// Per-type write behaviour: built-in kinds by their rules, custom kinds by their schemas.
#[derive(Debug, Default)]
pub struct Strategy {
    /// The custom resources served (shared with [`super::resources::Resources`]).
    pub custom: Arc<CustomResources>,
}

impl Strategy {
    /// What every write of a custom object does to it first: unknown fields and nulls pruned,
    /// defaults filled in. Returns the unknown fields' paths (none for built-in kinds).
    pub fn prune_and_default(&self, resource: &ResourceType, object: &mut Value) -> Vec<String> {
        let Some(custom) = self.custom.of(resource) else {
            return Vec::new();
        };
        let unknown = apiary_api::structural::prune(&custom.schema, object);
        apiary_api::structural::default(&custom.schema, object);
        unknown
    }

    /// What every write (create, update, patch) does to the object as sent before it is
    /// defaulted and validated: the conversion of write-only wire fields.
    pub fn prepare_write(&self, resource: &ResourceType, object: &mut Value) {
        if resource.kind == "Secret" && resource.group.is_empty() {
            apiary_api::core_v1::Secret::fold_string_data(object);
        }
        if matches!(resource.plural, "rolebindings" | "clusterrolebindings") {
            apiary_api::rbac_v1::default_binding(object);
        }
        if *resource == apiary_api::resource::CUSTOM_RESOURCE_DEFINITIONS {
            default_crd(object);
        }
    }

    /// Defaults and initial status of a new object.
    pub fn prepare_create(&self, resource: &ResourceType, object: &mut Value) -> Result<()> {
        if is_built_in(resource) {
            super::defaults::apply(resource.kind, object);
        }
        if *resource == apiary_api::resource::CUSTOM_RESOURCE_DEFINITIONS {
            // Its objects go before it does.
            let finalizers = &mut object["metadata"]["finalizers"];
            if !finalizers.is_array() {
                *finalizers = json!([]);
            }
            if let Some(list) = finalizers.as_array_mut()
                && !list.iter().any(|f| f == CLEANUP_FINALIZER)
            {
                list.push(json!(CLEANUP_FINALIZER));
            }
        }
        let is_crd = *resource == apiary_api::resource::CUSTOM_RESOURCE_DEFINITIONS;
        match resource.plural {
            "namespaces" => object["status"] = json!({ "phase": "Active" }),
            "pods" => {
                let status = &mut object["status"];
                if !status.is_object() || status["phase"].is_null() {
                    *status = json!({ "phase": "Pending" });
                }
            }
            // Controllers own status: what a client sends on create is replaced by the
            // kind's empty status, which Kubernetes always serializes.
            _ if resource.has_subresource("status") => {
                match super::defaults::initial_status(resource.kind) {
                    Some(status) => object["status"] = status,
                    None => {
                        if let Some(obj) = object.as_object_mut() {
                            obj.remove("status");
                        }
                    }
                }
            }
            _ => {}
        }
        if is_crd {
            // What kube-apiserver answers a create with, before the CRD is established.
            let storage = object["spec"]["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["storage"] == true)
                .map(|v| v["name"].clone())
                .collect::<Vec<_>>();
            object["status"] = json!({
                "acceptedNames": { "plural": "", "kind": "" },
                "storedVersions": storage,
            });
        }
        Ok(())
    }

    /// Validates a new object (`old` is `None`) or an update of `old`, with Kubernetes'
    /// messages and field paths. A body that does not even decode as its kind is a 400.
    pub fn validate(
        &self,
        resource: &ResourceType,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<()> {
        self.validate_through(resource, None, object, old)
    }

    /// [`Strategy::validate`] of a write through subresource `sub` (`status`, `approval`),
    /// for the kinds whose rules depend on it.
    pub fn validate_through(
        &self,
        resource: &ResourceType,
        sub: Option<&str>,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<()> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if let Some(custom) = self.custom.of(resource) {
            return invalid(resource, name, &validate_custom(&custom, object, old)?);
        }
        if *resource == apiary_api::resource::CUSTOM_RESOURCE_DEFINITIONS
            && let Ok(crd) = apiary_api::meta::from_json(object.clone())
            && let Some(why) = super::custom_resources::conflict_with_built_ins(&crd)
        {
            let field = "spec.names.plural";
            return invalid(
                resource,
                name,
                &vec![validation::FieldError::invalid(field, name, why)],
            );
        }
        if resource.plural == "certificatesigningrequests" {
            let mut errors = match old {
                None => validation::validate_object(resource, object),
                Some(old) => validation::validate_object_update(resource, old, object),
            }
            .unwrap_or_default();
            errors.extend(super::certificates::validate(object, old, sub));
            return invalid(resource, name, &errors);
        }
        let errors = match old {
            None => validation::validate_object(resource, object),
            Some(old) => validation::validate_object_update(resource, old, object),
        }
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: {e}",
                kind = resource.kind,
                version = resource.version,
            ))
        })?;
        invalid(resource, name, &errors)
    }

    /// Whether a delete only marks the object, leaving its removal to a controller.
    pub fn graceful_delete(
        &self,
        resource: &ResourceType,
        object: &Value,
        options: &Value,
    ) -> bool {
        match resource.plural {
            "namespaces" => true,
            // A pod running on a node is stopped by that node's agent, which then deletes it
            // with a grace period of 0 (as the kubelet does); unscheduled and finished pods
            // have nothing to stop.
            "pods" => {
                let phase = object["status"]["phase"].as_str().unwrap_or_default();
                pod_grace_seconds(object, options) > 0
                    && object["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty())
                    && phase != "Succeeded"
                    && phase != "Failed"
            }
            _ => false,
        }
    }

    /// Changes made to an object marked for deletion.
    pub fn prepare_delete(&self, resource: &ResourceType, object: &mut Value, options: &Value) {
        match resource.plural {
            "namespaces" => object["status"]["phase"] = json!("Terminating"),
            "pods" => {
                object["metadata"]["deletionGracePeriodSeconds"] =
                    json!(pod_grace_seconds(object, options));
            }
            _ => {}
        }
    }
}

/// A custom object against its version's schema, and its metadata as every object's.
fn validate_custom(
    custom: &CustomVersion,
    object: &Value,
    old: Option<&Value>,
) -> Result<validation::ErrorList> {
    let meta = |v: &Value| {
        apiary_api::meta::from_json::<apiary_api::meta::ObjectMeta>(v["metadata"].clone())
            .map_err(|e| ApiError::bad_request(format!("invalid metadata: {e}")))
    };
    let new_meta = meta(object)?;
    let mut errors = validation::validate_object_meta(
        &new_meta,
        custom.info.namespaced,
        validation::NameRule::Subdomain,
    );
    if let Some(old) = old {
        errors.extend(validation::validate_object_meta_update(
            &meta(old)?,
            &new_meta,
        ));
    }
    errors.extend(apiary_api::structural::validate(
        &custom.schema,
        object,
        old,
    ));
    Ok(errors)
}

/// A CRD's defaults: `singular` is the kind lowercased, `listKind` the kind + `List`, and
/// conversion `None`.
fn default_crd(crd: &mut Value) {
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let names = &mut crd["spec"]["names"];
    if names.is_object() && !kind.is_empty() {
        if names["singular"].as_str().is_none_or(str::is_empty) {
            names["singular"] = json!(kind.to_ascii_lowercase());
        }
        if names["listKind"].as_str().is_none_or(str::is_empty) {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    if crd["spec"].is_object() && crd["spec"]["conversion"].is_null() {
        crd["spec"]["conversion"] = json!({ "strategy": "None" });
    }
}

/// Kubernetes' 422 `Invalid` Status for `errors`, if there are any.
fn invalid(resource: &ResourceType, name: &str, errors: &validation::ErrorList) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let causes: Vec<(String, String)> = errors
        .iter()
        .map(|e| (e.path.clone(), e.to_string()))
        .collect();
    Err(ApiError::invalid(
        resource.kind,
        resource.group,
        name,
        &causes,
    ))
}

/// A pod's grace period for this delete: the request's `gracePeriodSeconds`, else the pod's
/// `terminationGracePeriodSeconds`, else 30.
pub fn pod_grace_seconds(pod: &Value, options: &Value) -> i64 {
    options["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

/// Where a delete left the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Marked with a deletion timestamp; finalizers (or a grace period) still hold it.
    Marked,
    /// Removed from the store.
    Gone,
}

/// The finalizer that holds an owner deleted with `propagationPolicy: Foreground` until its
/// dependents are gone.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// Sets off what follows a delete: a terminating namespace is emptied and removed; a
/// foreground deletion removes the dependents, then the owner; an object that is gone releases
/// what it held and takes its dependents with it (or, with `propagationPolicy: Orphan`, lets go
/// of them).
pub fn after_delete(
    api: &Arc<Api>,
    resource: &'static ResourceType,
    object: &Value,
    options: &Value,
    deletion: Deletion,
) {
    let api = Arc::clone(api);
    let object = object.clone();
    let orphan = options["propagationPolicy"].as_str() == Some("Orphan")
        || options["orphanDependents"].as_bool() == Some(true);
    let foreground = object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == FOREGROUND_FINALIZER));
    let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(async move {
            let result = match deletion {
                Deletion::Marked if resource.plural == "namespaces" => {
                    empty_namespace(&api, &object).await
                }
                Deletion::Marked if foreground => {
                    delete_in_foreground(&api, resource, &object).await
                }
                // Finalizers hold it: dependents and allocations go when the object does.
                Deletion::Marked => Ok(()),
                Deletion::Gone => {
                    if resource.plural == "services" {
                        super::allocator::claims_of(&object).release(&api).await;
                    }
                    collect_dependents(&api, resource, &object, orphan).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e.message, "cleanup after delete failed");
            }
        });
    tokio::spawn(task);
}

/// Deletes an owner's dependents, waits until they are gone, then lets the owner go by removing
/// its `foregroundDeletion` finalizer.
async fn delete_in_foreground(
    api: &Arc<Api>,
    resource: &'static ResourceType,
    owner: &Value,
) -> Result<()> {
    collect_dependents(api, resource, owner, false).await?;
    for _ in 0..600 {
        if count_dependents(api, resource, owner).await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let name = owner["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = owner["metadata"]["namespace"].as_str().map(str::to_owned);
    let target = Target {
        resource,
        namespace: namespace.clone(),
        name: Some(name.clone()),
        subresource: None,
    };
    for _ in 0..8 {
        let mut current = match objects::get(api, resource, namespace.as_deref(), &name).await {
            Ok(current) => current,
            Err(e) if e.reason == "NotFound" => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(finalizers) = current["metadata"]["finalizers"].as_array_mut() {
            finalizers.retain(|f| f != FOREGROUND_FINALIZER);
        }
        match objects::update(api, &target, &name, current).await {
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) if e.reason == "NotFound" => return Ok(()),
            other => return other.map(drop),
        }
    }
    Ok(())
}

/// The objects whose `ownerReferences` name `owner`.
async fn dependents(
    api: &Arc<Api>,
    owner_type: &ResourceType,
    owner: &Value,
) -> Result<Vec<(&'static ResourceType, Value)>> {
    let Some(uid) = owner["metadata"]["uid"].as_str() else {
        return Ok(Vec::new());
    };
    let namespace = owner_type.namespaced.then(|| {
        owner["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    let mut found = Vec::new();
    // Reviews are never stored: nothing to list.
    for resource in api
        .resources
        .all()
        .into_iter()
        .filter(|r| r.verbs.contains(&"list"))
    {
        if namespace.is_some() && !resource.namespaced {
            continue;
        }
        let target = Target {
            resource,
            namespace: namespace.clone(),
            name: None,
            subresource: None,
        };
        let listing = objects::list(api, &target, &Default::default()).await?;
        for dependent in listing["items"].as_array().into_iter().flatten() {
            let owned_by_it = dependent["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)));
            if owned_by_it {
                found.push((resource, dependent.clone()));
            }
        }
    }
    Ok(found)
}

async fn count_dependents(
    api: &Arc<Api>,
    owner_type: &ResourceType,
    owner: &Value,
) -> Result<usize> {
    Ok(dependents(api, owner_type, owner).await?.len())
}

/// Deletes everything in a terminating namespace, then the namespace.
async fn empty_namespace(api: &Arc<Api>, namespace: &Value) -> Result<()> {
    let ns = namespace["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespaces = api
        .resources
        .get("", "v1", "namespaces")
        .expect("namespaces are served");
    // Objects with finalizers leave when their finalizers are done; give them a while.
    for attempt in 0..600 {
        let mut left = 0;
        for resource in api.resources.all().into_iter().filter(|r| r.namespaced) {
            let target = Target {
                resource,
                namespace: Some(ns.clone()),
                name: None,
                subresource: None,
            };
            let remaining =
                objects::delete_collection(api, &target, &Default::default(), &Value::Null).await?;
            left += remaining["items"].as_array().map_or(0, |items| {
                items
                    .iter()
                    .filter(|o| o["metadata"]["deletionTimestamp"].is_string())
                    .count()
            });
        }
        if left == 0 {
            break;
        }
        tracing::debug!(namespace = %ns, left, attempt, "waiting for finalizers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = namespaces.key(None, &ns);
    match api.store.delete(&key, None).await {
        Ok(_) | Err(crate::store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(ApiError::storage(&e)),
    }
}

/// Deletes (or orphans) the objects whose `ownerReferences` name the deleted object.
async fn collect_dependents(
    api: &Arc<Api>,
    owner_type: &ResourceType,
    owner: &Value,
    orphan: bool,
) -> Result<()> {
    let uid = owner["metadata"]["uid"].as_str().unwrap_or_default();
    for (resource, dependent) in dependents(api, owner_type, owner).await? {
        let name = dependent["metadata"]["name"].as_str().unwrap_or_default();
        let target = Target {
            resource,
            namespace: dependent["metadata"]["namespace"]
                .as_str()
                .map(str::to_owned),
            name: Some(name.to_owned()),
            subresource: None,
        };
        let result = if orphan {
            let mut released = dependent.clone();
            if let Some(refs) = released["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
            }
            objects::update(api, &target, name, released)
                .await
                .map(drop)
        } else {
            objects::delete(
                api,
                &target,
                name,
                &json!({ "propagationPolicy": "Background" }),
            )
            .await
            .map(drop)
        };
        match result {
            Ok(()) => {}
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
