//! ServiceAccounts: every namespace that is not terminating has a `default` ServiceAccount,
//! as kube-controller-manager's serviceaccounts-controller keeps it. A namespace is
//! reconciled when it appears or changes and when its `default` ServiceAccount changes or is
//! deleted (so a deleted one comes back).

use std::sync::Arc;

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler},
    target,
};
use crate::apiserver::{Api, objects, resources::ResourceType};

/// The ServiceAccounts every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNTS: &[&str] = &["default"];
/// Namespaces reconciled at once.
const CONCURRENCY: usize = 2;
/// How often every namespace is looked at again, even without a change.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps the default ServiceAccounts until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let namespaces = Cache::new(resource(&api, "", "v1", "namespaces"));
    let accounts = Cache::new(resource(&api, "", "v1", "serviceaccounts"));
    let queue = Queue::new();
    let namespace_changed = {
        let (cache, queue) = (namespaces.clone(), Arc::clone(&queue));
        move |object: &Value| queue.add(cache.key_of(object))
    };
    let account_changed = {
        let queue = Arc::clone(&queue);
        move |object: &Value| {
            let meta = &object["metadata"];
            let name = meta["name"].as_str().unwrap_or_default();
            if DEFAULT_SERVICE_ACCOUNTS.contains(&name) {
                queue.add(namespace_key(
                    meta["namespace"].as_str().unwrap_or_default(),
                ));
            }
        }
    };
    let reconciler = Arc::new(ServiceAccounts {
        api: Arc::clone(&api),
        namespaces: namespaces.clone(),
        accounts: accounts.clone(),
    });
    tokio::join!(
        runtime::reflect(
            Arc::clone(&api),
            namespaces.clone(),
            namespace_changed,
            shutdown.clone()
        ),
        runtime::reflect(
            Arc::clone(&api),
            accounts,
            account_changed,
            shutdown.clone()
        ),
        runtime::resync(namespaces, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

fn namespace_key(namespace: &str) -> ObjectRef {
    ObjectRef {
        resource: "namespaces".to_owned(),
        namespace: String::new(),
        name: namespace.to_owned(),
    }
}

/// The `default` ServiceAccount of `namespace`, as Kubernetes creates it.
pub fn service_account(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": { "name": name, "namespace": namespace },
    })
}

struct ServiceAccounts {
    api: Arc<Api>,
    namespaces: Cache,
    accounts: Cache,
}

impl ServiceAccounts {
    fn service_accounts(&self) -> &'static ResourceType {
        self.accounts.resource()
    }
}

#[async_trait::async_trait]
impl Reconciler for ServiceAccounts {
    fn name(&self) -> &'static str {
        "serviceaccounts"
    }

    async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
        // Until both caches are filled, a missing account may just not be listed yet; the
        // listing enqueues every namespace again.
        if !self.namespaces.is_synced() || !self.accounts.is_synced() {
            return Ok(Action::RequeueAfter(std::time::Duration::from_millis(200)));
        }
        let Some(namespace) = self.namespaces.get("", &key.name) else {
            return Ok(Action::Done);
        };
        // A terminating namespace is being emptied: an account made now would be deleted (or
        // hold the namespace's removal up).
        if namespace["metadata"]["deletionTimestamp"].is_string()
            || namespace["status"]["phase"] == "Terminating"
        {
            return Ok(Action::Done);
        }
        for &name in DEFAULT_SERVICE_ACCOUNTS {
            if self.accounts.get(&key.name, name).is_some() {
                continue;
            }
            let created = objects::create(
                &self.api,
                &target(self.service_accounts(), &key.name, None),
                service_account(&key.name, name),
            )
            .await;
            match created {
                Ok(_) => tracing::debug!(namespace = %key.name, name, "service account created"),
                // Made since the cache was read (by another control plane, or a client).
                Err(e) if e.reason == "AlreadyExists" => {}
                // The namespace began terminating (or went) since the cache was read.
                Err(e) if e.reason == "Forbidden" || e.reason == "NotFound" => {}
                Err(e) => {
                    return Err(Error::api(
                        format!("creating service account {}/{name}", key.name),
                        &e,
                    ));
                }
            }
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::eventually;

    async fn account(api: &Api, namespace: &str) -> Option<Value> {
        let accounts = resource(api, "", "v1", "serviceaccounts");
        objects::get(api, accounts, Some(namespace), "default")
            .await
            .ok()
    }

    async fn create_namespace(api: &Api, name: &str) {
        let namespaces = resource(api, "", "v1", "namespaces");
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let target = crate::apiserver::path::Target {
            resource: namespaces,
            namespace: None,
            name: None,
            subresource: None,
        };
        objects::create(api, &target, object).await.unwrap();
    }

    #[tokio::test]
    async fn every_namespace_gets_a_default_service_account_which_comes_back_when_deleted() {
        let (_dir, api) = crate::testing::api().await;
        let api = Arc::new(api);
        create_namespace(&api, "before").await;
        let (tx, rx) = watch::channel(false);
        let controller = tokio::spawn(run(Arc::clone(&api), rx));

        eventually("before/default", || async {
            account(&api, "before").await.is_some()
        })
        .await;
        create_namespace(&api, "after").await;
        eventually("after/default", || async {
            account(&api, "after").await.is_some()
        })
        .await;

        let accounts = resource(&api, "", "v1", "serviceaccounts");
        let uid = account(&api, "after").await.unwrap()["metadata"]["uid"].clone();
        objects::delete(
            &api,
            &target(accounts, "after", Some("default")),
            "default",
            &Value::Null,
        )
        .await
        .unwrap();
        eventually("after/default to come back", || async {
            account(&api, "after")
                .await
                .is_some_and(|sa| sa["metadata"]["uid"] != uid)
        })
        .await;

        tx.send(true).unwrap();
        controller.await.unwrap();
    }
}
