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
            let listing = objects::list(api, &target, &Default::default()).await?;
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
                &target,
                items.iter().filter(|o| !terminating(o)),
                &Value::Null,
            )
            .await?;
            left += deleted.iter().filter(terminating).count();
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
