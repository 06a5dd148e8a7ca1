//! Namespaces: a new one is `Active`; deleting one marks it `Terminating`, and the server
//! empties it, then removes it (the namespace controller's work in Kubernetes).

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::super::KindStrategy;
use crate::apiserver::{
    Api,
    error::ApiError,
    objects::{self, Result},
    path::Target,
    resources::{ResourceType, StorageKeys as _},
};

/// The strategy of `v1` `Namespace`.
#[derive(Debug)]
pub struct Namespaces;

/// What NamespaceLifecycle never lets go (its `immortalNamespaces`): the cluster's own.
const IMMORTAL: [&str; 3] = ["default", "kube-system", "kube-public"];

#[async_trait::async_trait]
impl KindStrategy for Namespaces {
    fn admit_delete(&self, resource: &ResourceType, name: &str) -> Result<()> {
        if IMMORTAL.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: this namespace may not be deleted",
                resource.plural
            )));
        }
        Ok(())
    }

    fn reset_status(&self, _resource: &ResourceType, object: &mut Value) {
        object["status"] = json!({ "phase": "Active" });
    }

    async fn graceful_delete(&self, _api: &Api, _object: &Value, _options: &Value) -> bool {
        true
    }

    fn prepare_for_delete(&self, object: &mut Value, _options: &Value) {
        object["status"]["phase"] = json!("Terminating");
    }

    async fn on_marked(&self, api: &Arc<Api>, object: &Value) -> Option<Result<()>> {
        Some(empty(api, object).await)
    }
}

/// Objects of a namespace read at once while it is emptied: pages, so that a namespace of
/// 150,000 pods is not held decoded whole (twice, with what deleting them returns), which took
/// the control plane past 23 GiB.
const EMPTY_PAGE: usize = 500;

/// Deletes the objects of `target` (one type in one namespace) page by page; how many are left
/// terminating (waiting for their grace period or finalizers).
async fn empty_of(api: &Arc<Api>, target: &Target) -> Result<usize> {
    let mut left = 0;
    let mut query = std::collections::HashMap::from([("limit".to_owned(), EMPTY_PAGE.to_string())]);
    loop {
        let listing = match objects::list(api, target, &query).await {
            Ok(listing) => listing,
            // The pages' revision was compacted away meanwhile: the next round lists afresh.
            Err(e) if e.reason == "Expired" => return Ok(left.max(1)),
            Err(e) => return Err(e),
        };
        let items = listing["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        // What is already terminating waits for its grace or finalizers: deleting it again
        // would only read it again, every round, while its owner finishes it.
        let terminating = |o: &&Value| o["metadata"]["deletionTimestamp"].is_string();
        left += items.iter().filter(terminating).count();
        let deleted = objects::delete_each(
            api,
            target,
            items.iter().filter(|o| !terminating(o)),
            &Value::Null,
        )
        .await?;
        left += deleted.iter().filter(terminating).count();
        match listing["metadata"]["continue"].as_str() {
            Some(token) if !token.is_empty() => {
                query.insert("continue".to_owned(), token.to_owned());
            }
            _ => return Ok(left),
        }
    }
}

/// Deletes everything in a terminating namespace, then the namespace.
async fn empty(api: &Arc<Api>, namespace: &Value) -> Result<()> {
    let ns = namespace["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespaces = api
        .resources
        .get("", "v1", "namespaces")
        .expect("namespaces are served");
    // Objects with finalizers (or a grace period) leave when they are done; give them a while,
    // asking again less often as it drags on: each round goes through every object left.
    let mut pause = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    for attempt in 0.. {
        let mut left = 0;
        for resource in api.resources.all().into_iter().filter(|r| r.namespaced) {
            let target = Target {
                resource,
                namespace: Some(ns.clone()),
                name: None,
                subresource: None,
            };
            left += empty_of(api, &target).await?;
        }
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tracing::debug!(namespace = %ns, left, attempt, "waiting for finalizers");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    let key = namespaces.key(None, &ns);
    match api.store.delete(&key, None).await {
        Ok(_) | Err(crate::store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(ApiError::storage(&e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::apiserver::objects;
    use crate::testing::core_target as target;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_namespace_of_more_than_a_page_is_emptied_and_removed() {
        let (_dir, api) = crate::testing::api().await;
        let api = Arc::new(api);
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"}});
        objects::create(&api, &target(&api, "namespaces", None), ns)
            .await
            .unwrap();
        let count = super::EMPTY_PAGE * 2 + 7;
        let creates = (0..count).map(|i| {
            let api = Arc::clone(&api);
            async move {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm{i}")}});
                objects::create(&api, &target(&api, "configmaps", Some("big")), cm)
                    .await
                    .unwrap();
            }
        });
        futures::future::join_all(creates).await;
        objects::delete(
            &api,
            &target(&api, "namespaces", None),
            "big",
            &serde_json::Value::Null,
        )
        .await
        .unwrap();
        let namespaces = target(&api, "namespaces", None).resource;
        crate::testing::eventually("the namespace to go", || async {
            objects::get(&api, namespaces, None, "big").await.is_err()
        })
        .await;
        let left = objects::list(
            &api,
            &target(&api, "configmaps", Some("big")),
            &Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(left["items"], json!([]));
    }
}
