//! Generic ephemeral volumes (kube-controller-manager's `ephemeral-volume` controller): every
//! `volumes[].ephemeral.volumeClaimTemplate` of a pod becomes the claim `<pod>-<volume>`,
//! controlled by the pod (so the garbage collector deletes it with the pod), with the template's
//! labels, annotations and spec. A claim of that name that the pod does not own is left alone
//! (the pod cannot start: the claim is not its), with a Warning event on the pod.

use std::sync::Arc;

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    controlled_by, get_fresh, owner_reference, record_warning, resource,
    runtime::{self, Action, Cache, Error, Reconciler, Result},
    target,
};
use crate::apiserver::{Api, objects, resources::ResourceType};

const COMPONENT: &str = "ephemeral-volume-controller";

/// The claim of a pod's ephemeral volume `volume` (`ephemeral.VolumeClaimName`).
pub fn claim_name(pod: &Value, volume: &Value) -> String {
    format!(
        "{}-{}",
        pod["metadata"]["name"].as_str().unwrap_or_default(),
        volume["name"].as_str().unwrap_or_default()
    )
}

fn ephemeral_volumes(pod: &Value) -> impl Iterator<Item = &Value> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["ephemeral"].is_object())
}

/// The claim made from `volume`'s template for `pod`.
pub fn claim_for(pod: &Value, volume: &Value) -> Value {
    let template = &volume["ephemeral"]["volumeClaimTemplate"];
    let mut metadata = json!({
        "name": claim_name(pod, volume),
        "namespace": pod["metadata"]["namespace"],
        "ownerReferences": [owner_reference(pod, "v1", "Pod")],
    });
    for field in ["labels", "annotations"] {
        if template["metadata"][field].is_object() {
            metadata[field] = template["metadata"][field].clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": template["spec"],
    })
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let pods = Cache::new(resource(&api, "", "v1", "pods"));
    let reconciler = Arc::new(Ephemeral {
        api: Arc::clone(&api),
        pods: pods.clone(),
        claims: resource(&api, "", "v1", "persistentvolumeclaims"),
    });
    runtime::run_single(
        api,
        pods,
        |pod: &Value| ephemeral_volumes(pod).next().is_some(),
        reconciler,
        4,
        std::time::Duration::from_secs(60),
        shutdown,
    )
    .await;
}

struct Ephemeral {
    api: Arc<Api>,
    pods: Cache,
    claims: &'static ResourceType,
}

#[async_trait::async_trait]
impl Reconciler for Ephemeral {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(pod) = self.pods.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        for volume in ephemeral_volumes(&pod) {
            let name = claim_name(&pod, volume);
            let claim_key = ObjectRef {
                resource: "persistentvolumeclaims".to_owned(),
                namespace: key.namespace.clone(),
                name: name.clone(),
            };
            if let Some(existing) = get_fresh(&self.api, self.claims, &claim_key).await? {
                if !controlled_by(&existing, &pod) {
                    record_warning(
                        &self.api,
                        COMPONENT,
                        &pod,
                        ("v1", "Pod"),
                        "FailedBinding",
                        &format!(
                            "PVC {}/{name} was not created for pod {}/{} (pod is not owner)",
                            key.namespace, key.namespace, key.name
                        ),
                    )
                    .await;
                }
                continue;
            }
            match objects::create(
                &self.api,
                &target(self.claims, &key.namespace, None),
                claim_for(&pod, volume),
            )
            .await
            {
                Ok(_) => tracing::debug!(claim = %claim_key, "ephemeral claim created"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(Error::api(format!("create PVC {name}"), &e)),
            }
        }
        Ok(Action::Done)
    }
}
