//! What a deletion sets off: what the kind does with its marked or removed object (a
//! namespace's cleanup, a Service's allocations; see [`super::registry`]), foreground deletion,
//! and the garbage collection of dependents.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{
    Api,
    objects::{self, Result},
    path::Target,
    resources::ResourceType,
};

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
            let strategy = api.registry.strategy_for(resource);
            let result = match deletion {
                Deletion::Marked => match strategy.on_marked(&api, &object).await {
                    Some(result) => result,
                    None if foreground => delete_in_foreground(&api, resource, &object).await,
                    // Finalizers hold it: dependents and allocations go when the object does.
                    None => Ok(()),
                },
                Deletion::Gone => {
                    strategy.release(&api, &object).await;
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
