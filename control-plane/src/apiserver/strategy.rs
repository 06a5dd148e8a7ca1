//! What differs between resource types on the write path: defaults and status on create,
//! validation, graceful deletion, and what a deletion sets off (namespace cleanup, garbage
//! collection of dependents).

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{
    Api,
    error::ApiError,
    objects::{self, Result},
    path::Target,
    resources::ResourceType,
};

/// Per-type write behaviour. Stateless: everything it needs is in the objects.
#[derive(Debug, Default)]
pub struct Strategy;

impl Strategy {
    /// Defaults and initial status of a new object.
    pub fn prepare_create(&self, resource: &ResourceType, object: &mut Value) -> Result<()> {
        super::defaults::apply(resource.kind, object);
        match resource.plural {
            "namespaces" => object["status"] = json!({ "phase": "Active" }),
            "pods" => {
                let status = &mut object["status"];
                if !status.is_object() || status["phase"].is_null() {
                    *status = json!({ "phase": "Pending" });
                }
            }
            // Controllers own status; what a client sends on create is dropped.
            _ if resource.has_subresource("status") => {
                if let Some(obj) = object.as_object_mut() {
                    obj.remove("status");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Validates a new object (`old` is `None`) or an update of `old`.
    pub fn validate(
        &self,
        resource: &ResourceType,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<()> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let mut causes = Vec::new();
        // Namespaces and services become DNS labels; everything else may be a subdomain.
        let check = if matches!(resource.plural, "namespaces" | "services") {
            apiary_api::validation::dns1123_label
        } else {
            apiary_api::validation::dns1123_subdomain
        };
        if let Err(e) = check("metadata.name", name) {
            causes.push((e.path.clone(), e.to_string()));
        }
        if let Some(old) = old
            && resource.plural == "services"
        {
            let (before, after) = (&old["spec"]["clusterIP"], &object["spec"]["clusterIP"]);
            if before.is_string() && after.is_string() && before != after {
                causes.push((
                    "spec.clusterIP".to_owned(),
                    format!("spec.clusterIP: Invalid value: {after}: field is immutable"),
                ));
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(
                resource.kind,
                resource.group,
                name,
                &causes,
            ))
        }
    }

    /// Whether a delete only marks the object, leaving its removal to a controller.
    pub fn graceful_delete(&self, resource: &ResourceType, _object: &Value) -> bool {
        resource.plural == "namespaces"
    }

    /// Changes made to an object marked for deletion.
    pub fn prepare_delete(&self, resource: &ResourceType, object: &mut Value) {
        if resource.plural == "namespaces" {
            object["status"]["phase"] = json!("Terminating");
        }
    }
}

/// Sets off what follows a delete: a terminating namespace is emptied and removed; an object
/// that is gone takes its dependents with it (or, with `propagationPolicy: Orphan`, lets go of
/// them).
pub fn after_delete(
    api: &Arc<Api>,
    resource: &'static ResourceType,
    deleted: &Value,
    options: &Value,
) {
    let api = Arc::clone(api);
    let deleted = deleted.clone();
    let orphan = options["propagationPolicy"].as_str() == Some("Orphan")
        || options["orphanDependents"].as_bool() == Some(true);
    let marked = deleted["metadata"]["deletionTimestamp"].is_string();
    let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(async move {
            let result = if resource.plural == "namespaces" && marked {
                empty_namespace(&api, &deleted).await
            } else if marked {
                // Not gone yet: dependents and allocations go when the object does.
                Ok(())
            } else {
                if resource.plural == "services" {
                    super::allocator::claims_of(&deleted).release(&api).await;
                }
                collect_dependents(&api, resource, &deleted, orphan).await
            };
            if let Err(e) = result {
                tracing::warn!(error = %e.message, "cleanup after delete failed");
            }
        });
    tokio::spawn(task);
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
        for resource in api.resources.all().iter().filter(|r| r.namespaced) {
            let target = Target {
                resource,
                namespace: Some(ns.clone()),
                name: None,
                subresource: None,
            };
            let remaining = objects::delete_collection(api, &target, &Default::default()).await?;
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
    let Some(uid) = owner["metadata"]["uid"].as_str() else {
        return Ok(());
    };
    let namespace = owner_type.namespaced.then(|| {
        owner["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    for resource in api.resources.all() {
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
            if !owned_by_it {
                continue;
            }
            let name = dependent["metadata"]["name"].as_str().unwrap_or_default();
            let target = Target {
                namespace: dependent["metadata"]["namespace"]
                    .as_str()
                    .map(str::to_owned),
                name: Some(name.to_owned()),
                ..target.clone()
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
    }
    Ok(())
}
