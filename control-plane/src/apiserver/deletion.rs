//! What a deletion sets off: what the kind does with its marked or removed object (a
//! namespace's cleanup, a Service's allocations; see [`super::registry`]), foreground deletion,
//! and the garbage collection of dependents.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{
    Api,
    objects::{self, Result},
    path::Target,
    resources::{ResourceType, StorageKeys as _},
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

/// How long a deletion waits for the dependency graph to have seen it before it lists instead.
const GRAPH_WAIT: Duration = Duration::from_secs(10);

/// The objects whose `ownerReferences` name `owner`: looked up in the dependency graph, each
/// read again to confirm it (the graph may trail the store); listed when the graph is not there.
async fn dependents(
    api: &Arc<Api>,
    owner_type: &ResourceType,
    owner: &Value,
) -> Result<Vec<(&'static ResourceType, Value)>> {
    let Some(uid) = owner["metadata"]["uid"].as_str() else {
        return Ok(Vec::new());
    };
    // A namespaced owner owns only objects of its namespace.
    let namespace = owner_type.namespaced.then(|| {
        owner["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    // The owner's own write (its deletion or its marking) is the revision the graph must reach:
    // every dependent created before it is in the graph from there on.
    let revision = owner["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let Some(mut keys) = api
        .dependency_graph
        .dependents(&api.store, uid, revision, GRAPH_WAIT)
        .await
    else {
        tracing::debug!(
            uid,
            "the dependency graph is behind; listing for dependents"
        );
        return listed_dependents(api, uid, namespace).await;
    };
    keys.sort();
    let resources = listable(api);
    let mut found = Vec::new();
    for key in keys {
        let Some((resource, key_namespace, name)) = locate(&resources, &key) else {
            continue;
        };
        if namespace.is_some() && key_namespace != namespace.as_deref() {
            continue;
        }
        match objects::get(api, resource, key_namespace, name).await {
            Ok(dependent) if names_owner(&dependent, uid) => found.push((resource, dependent)),
            Ok(_) => {}
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// Reviews are never stored: nothing to list or get.
fn listable(api: &Api) -> Vec<&'static ResourceType> {
    api.resources
        .all()
        .into_iter()
        .filter(|r| r.verbs.contains(&"list"))
        .collect()
}

/// The type, namespace and name a storage key holds (the first type whose keys it has, as
/// versions of one type share their keys).
fn locate<'k>(
    resources: &[&'static ResourceType],
    key: &'k str,
) -> Option<(&'static ResourceType, Option<&'k str>, &'k str)> {
    resources.iter().find_map(|&resource| {
        let rest = key.strip_prefix(resource.key_prefix().as_str())?;
        match rest.split_once('/') {
            Some((namespace, name)) if resource.namespaced => {
                Some((resource, Some(namespace), name))
            }
            None if !resource.namespaced => Some((resource, None, rest)),
            _ => None,
        }
    })
}

fn names_owner(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
}

/// The dependents of `uid` found by listing every listable resource (of `namespace`).
async fn listed_dependents(
    api: &Arc<Api>,
    uid: &str,
    namespace: Option<String>,
) -> Result<Vec<(&'static ResourceType, Value)>> {
    let mut found = Vec::new();
    for resource in listable(api) {
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
            if names_owner(dependent, uid) {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::core_target as target;
    use crate::testing::eventually;

    async fn exists(api: &Api, plural: &str, namespace: Option<&str>, name: &str) -> bool {
        let resource = api.resources.get("", "v1", plural).unwrap();
        objects::get(api, resource, namespace, name).await.is_ok()
    }

    #[tokio::test]
    async fn dependents_are_found_in_the_graph_and_only_in_the_owners_namespace() {
        let (_dir, api) = crate::testing::api().await;
        let api = Arc::new(api);
        for ns in ["a", "b"] {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            objects::create(&api, &target(&api, "namespaces", None), namespace)
                .await
                .unwrap();
        }
        let owner = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}});
        let owner = objects::create(&api, &target(&api, "configmaps", Some("a")), owner)
            .await
            .unwrap();
        let reference = json!([{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner["metadata"]["uid"],
        }]);
        // Written right before the owner's deletion: the graph must have them all the same.
        for (ns, name) in [("a", "d1"), ("a", "d2"), ("b", "elsewhere")] {
            let dependent = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "ownerReferences": reference},
            });
            objects::create(&api, &target(&api, "secrets", Some(ns)), dependent)
                .await
                .unwrap();
        }
        let unrelated = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "free"}});
        objects::create(&api, &target(&api, "secrets", Some("a")), unrelated)
            .await
            .unwrap();

        objects::delete(
            &api,
            &target(&api, "configmaps", Some("a")),
            "owner",
            &json!({}),
        )
        .await
        .unwrap();
        eventually("the owner's dependents to go", || async {
            !exists(&api, "secrets", Some("a"), "d1").await
                && !exists(&api, "secrets", Some("a"), "d2").await
        })
        .await;
        // A namespaced owner owns nothing in another namespace, and nothing unnamed.
        assert!(exists(&api, "secrets", Some("b"), "elsewhere").await);
        assert!(exists(&api, "secrets", Some("a"), "free").await);
    }

    #[tokio::test]
    async fn graph_lookups_agree_with_listing() {
        let (_dir, api) = crate::testing::api().await;
        let api = Arc::new(api);
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
        let node = objects::create(&api, &target(&api, "nodes", None), node)
            .await
            .unwrap();
        let uid = node["metadata"]["uid"].as_str().unwrap();
        // A cluster-scoped owner owns namespaced dependents anywhere.
        for ns in ["default", "kube-system"] {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            objects::create(&api, &target(&api, "namespaces", None), namespace)
                .await
                .unwrap();
            let dependent = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "of-n1", "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": uid,
                }]},
            });
            objects::create(&api, &target(&api, "configmaps", Some(ns)), dependent)
                .await
                .unwrap();
        }
        let names = |found: Vec<(&'static ResourceType, Value)>| {
            let mut names: Vec<String> = found
                .iter()
                .map(|(_, o)| format!("{}/{}", o["metadata"]["namespace"], o["metadata"]["name"]))
                .collect();
            names.sort();
            names
        };
        let node_type = api.resources.get("", "v1", "nodes").unwrap();
        let from_graph = names(dependents(&api, node_type, &node).await.unwrap());
        let listed = names(listed_dependents(&api, uid, None).await.unwrap());
        assert_eq!(from_graph.len(), 2, "{from_graph:?}");
        assert_eq!(from_graph, listed);
    }
}
