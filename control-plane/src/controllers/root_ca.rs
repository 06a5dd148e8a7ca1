//! The root CA publisher, as kube-controller-manager's `root-ca-cert-publisher`: every namespace
//! that is not terminating has a `kube-root-ca.crt` ConfigMap whose `ca.crt` is the cluster CA,
//! which the `kube-api-access-*` volume of its pods projects. A deleted one is made again, an
//! edited one is put back. A namespace is reconciled when it appears or changes and when its
//! ConfigMap changes or is deleted.

use std::sync::Arc;

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler},
    target,
};
use crate::apiserver::{Api, admission::service_account::ROOT_CA_CONFIG_MAP, objects};

/// The annotation that says what the ConfigMap is for, with Kubernetes' wording.
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";
/// Namespaces reconciled at once.
const CONCURRENCY: usize = 2;
/// How often every namespace is looked at again, even without a change.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// Publishes `ca_pem` until `shutdown` turns true; without a CA there is nothing to publish.
pub async fn run(api: Arc<Api>, ca_pem: Option<String>, shutdown: watch::Receiver<bool>) {
    let Some(ca_pem) = ca_pem else {
        return;
    };
    let namespaces = Cache::new(resource(&api, "", "v1", "namespaces"));
    let config_maps = Cache::new(resource(&api, "", "v1", "configmaps"));
    let queue = Queue::new();
    let namespace_changed = {
        let (cache, queue) = (namespaces.clone(), Arc::clone(&queue));
        move |object: &Value| queue.add(cache.key_of(object))
    };
    let config_map_changed = {
        let queue = Arc::clone(&queue);
        move |object: &Value| {
            let meta = &object["metadata"];
            if meta["name"] == ROOT_CA_CONFIG_MAP {
                queue.add(ObjectRef {
                    resource: "namespaces".to_owned(),
                    namespace: String::new(),
                    name: meta["namespace"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    };
    let reconciler = Arc::new(Publisher {
        api: Arc::clone(&api),
        ca_pem,
        namespaces: namespaces.clone(),
        config_maps: config_maps.clone(),
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
            config_maps,
            config_map_changed,
            shutdown.clone()
        ),
        runtime::resync(namespaces, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

struct Publisher {
    api: Arc<Api>,
    ca_pem: String,
    namespaces: Cache,
    config_maps: Cache,
}

#[async_trait::async_trait]
impl Reconciler for Publisher {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
        if !self.namespaces.is_synced() || !self.config_maps.is_synced() {
            return Ok(Action::RequeueAfter(std::time::Duration::from_millis(200)));
        }
        let Some(namespace) = self.namespaces.get("", &key.name) else {
            return Ok(Action::Done);
        };
        if namespace["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let config_maps = self.config_maps.resource();
        let data = json!({ "ca.crt": self.ca_pem });
        let Some(current) = self.config_maps.get(&key.name, ROOT_CA_CONFIG_MAP) else {
            let object = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": ROOT_CA_CONFIG_MAP,
                    "annotations": { DESCRIPTION_ANNOTATION: DESCRIPTION },
                },
                "data": data,
            });
            return match objects::create(&self.api, &target(config_maps, &key.name, None), object)
                .await
            {
                Ok(_) => Ok(Action::Done),
                // Made since the cache was read; the namespace is going or gone.
                Err(e) if matches!(e.reason, "AlreadyExists" | "Forbidden" | "NotFound") => {
                    Ok(Action::Done)
                }
                Err(e) => Err(Error::api(
                    format!("creating {}/{ROOT_CA_CONFIG_MAP}", key.name),
                    &e,
                )),
            };
        };
        let described = current["metadata"]["annotations"][DESCRIPTION_ANNOTATION]
            .as_str()
            .is_some_and(|d| !d.is_empty());
        if current["data"] == data && described {
            return Ok(Action::Done);
        }
        // Only the data and the description are ours: other annotations and labels stay.
        let mut fixed = (*current).clone();
        fixed["data"] = data;
        if let Some(object) = fixed.as_object_mut() {
            object.remove("binaryData");
        }
        if !fixed["metadata"]["annotations"].is_object() {
            fixed["metadata"]["annotations"] = json!({});
        }
        if !described {
            fixed["metadata"]["annotations"][DESCRIPTION_ANNOTATION] = json!(DESCRIPTION);
        }
        match objects::update(
            &self.api,
            &target(config_maps, &key.name, Some(ROOT_CA_CONFIG_MAP)),
            ROOT_CA_CONFIG_MAP,
            fixed,
        )
        .await
        {
            Ok(_) => Ok(Action::Done),
            // The watch brings the newer version (or the deletion) and with it another pass.
            Err(e) if matches!(e.reason, "Conflict" | "NotFound") => Ok(Action::Done),
            Err(e) => Err(Error::api(
                format!("updating {}/{ROOT_CA_CONFIG_MAP}", key.name),
                &e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::path::Target;
    use crate::testing::eventually;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    async fn published(api: &Api, namespace: &str) -> Option<Value> {
        let config_maps = resource(api, "", "v1", "configmaps");
        objects::get(api, config_maps, Some(namespace), ROOT_CA_CONFIG_MAP)
            .await
            .ok()
    }

    #[tokio::test]
    async fn every_namespace_gets_the_ca_which_comes_back_when_deleted_or_edited() {
        let (_dir, api) = crate::testing::api().await;
        let api = Arc::new(api);
        let namespaces = resource(&api, "", "v1", "namespaces");
        let create_namespace = |name: &'static str| {
            let api = Arc::clone(&api);
            async move {
                let target = Target {
                    resource: namespaces,
                    namespace: None,
                    name: None,
                    subresource: None,
                };
                let object =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                objects::create(&api, &target, object).await.unwrap();
            }
        };
        create_namespace("before").await;
        let (tx, rx) = watch::channel(false);
        let controller = tokio::spawn(run(Arc::clone(&api), Some(CA.to_owned()), rx));
        let has_ca = |namespace: &'static str| {
            let api = Arc::clone(&api);
            async move {
                published(&api, namespace)
                    .await
                    .is_some_and(|cm| cm["data"] == json!({"ca.crt": CA}))
            }
        };
        eventually("before/kube-root-ca.crt", || has_ca("before")).await;
        let cm = published(&api, "before").await.unwrap();
        assert_eq!(
            cm["metadata"]["annotations"][DESCRIPTION_ANNOTATION],
            DESCRIPTION
        );
        create_namespace("after").await;
        eventually("after/kube-root-ca.crt", || has_ca("after")).await;

        // Edited: the data is put back, the user's own annotation stays.
        let config_maps = resource(&api, "", "v1", "configmaps");
        let mut edited = published(&api, "after").await.unwrap();
        edited["data"] = json!({"ca.crt": "forged", "extra": "x"});
        edited["metadata"]["annotations"]["mine"] = json!("kept");
        objects::update(
            &api,
            &target(config_maps, "after", Some(ROOT_CA_CONFIG_MAP)),
            ROOT_CA_CONFIG_MAP,
            edited,
        )
        .await
        .unwrap();
        eventually("the edit to be undone", || has_ca("after")).await;
        assert_eq!(
            published(&api, "after").await.unwrap()["metadata"]["annotations"]["mine"],
            "kept"
        );

        // Deleted: it comes back.
        objects::delete(
            &api,
            &target(config_maps, "after", Some(ROOT_CA_CONFIG_MAP)),
            ROOT_CA_CONFIG_MAP,
            &Value::Null,
        )
        .await
        .unwrap();
        eventually("after/kube-root-ca.crt to come back", || has_ca("after")).await;

        tx.send(true).unwrap();
        controller.await.unwrap();
    }
}
