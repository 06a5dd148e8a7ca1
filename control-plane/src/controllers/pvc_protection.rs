//! Claim protection (kube-controller-manager's `pvc-protection` controller): a claim being
//! deleted keeps its `kubernetes.io/pvc-protection` finalizer (added on create by admission)
//! while a pod scheduled to a node and not finished (`Succeeded`/`Failed`) uses it, through a
//! `persistentVolumeClaim` volume or as its generic ephemeral volume's claim. The pods are read
//! from the store before the finalizer goes, so a pod the cache has not seen yet still counts.

use std::sync::Arc;

use apiary_api::{core_v1::PVC_PROTECTION_FINALIZER, meta::ObjectRef};
use serde_json::Value;
use tokio::sync::watch;

use super::{
    list_fresh, resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler, Result},
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

const COMPONENT: &str = "pvc-protection-controller";
const CONCURRENCY: usize = 2;
const RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// The names of the claims `pod` uses (its `persistentVolumeClaim` volumes' claims and its
/// ephemeral volumes' `<pod>-<volume>`), if it is scheduled and not finished.
pub fn claims_in_use(pod: &Value) -> Vec<String> {
    let scheduled = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if !scheduled || finished {
        return Vec::new();
    }
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                Some(claim.to_owned())
            } else if v["ephemeral"].is_object() {
                Some(format!(
                    "{pod_name}-{}",
                    v["name"].as_str().unwrap_or_default()
                ))
            } else {
                None
            }
        })
        .collect()
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let claims = Cache::new(resource(&api, "", "v1", "persistentvolumeclaims"));
    let pods = Cache::new(resource(&api, "", "v1", "pods"));
    let queue = Queue::new();
    let claim_changed = {
        let (cache, queue) = (claims.clone(), Arc::clone(&queue));
        move |claim: &Value| {
            if is_held(claim) {
                queue.add(cache.key_of(claim));
            }
        }
    };
    let pod_changed = {
        let (claims, queue) = (claims.clone(), Arc::clone(&queue));
        move |pod: &Value| {
            let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            // Every claim the pod names, whatever its state now (it may just have finished).
            let names = pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    v["persistentVolumeClaim"]["claimName"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| {
                            v["ephemeral"].is_object().then(|| {
                                format!(
                                    "{}-{}",
                                    pod["metadata"]["name"].as_str().unwrap_or_default(),
                                    v["name"].as_str().unwrap_or_default()
                                )
                            })
                        })
                });
            for name in names {
                if claims.get(namespace, &name).is_some_and(|c| is_held(&c)) {
                    queue.add(ObjectRef {
                        resource: "persistentvolumeclaims".to_owned(),
                        namespace: namespace.to_owned(),
                        name,
                    });
                }
            }
        }
    };
    let reconciler = Arc::new(PvcProtection {
        api: Arc::clone(&api),
        claims: claims.clone(),
        pods: pods.resource(),
    });
    tokio::join!(
        runtime::reflect(
            Arc::clone(&api),
            claims.clone(),
            claim_changed,
            shutdown.clone()
        ),
        runtime::reflect(Arc::clone(&api), pods, pod_changed, shutdown.clone()),
        runtime::resync(claims, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

/// Whether a claim is being deleted and still held by the finalizer.
fn is_held(claim: &Value) -> bool {
    claim["metadata"]["deletionTimestamp"].is_string()
        && has_finalizer(claim, PVC_PROTECTION_FINALIZER)
}

pub(crate) fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == finalizer))
}

/// Writes `object` without `finalizer`.
pub(crate) async fn remove_finalizer(
    api: &Arc<Api>,
    resource: &'static ResourceType,
    object: &Value,
    finalizer: &str,
) -> Result<()> {
    let mut updated = object.clone();
    if let Some(list) = updated["metadata"]["finalizers"].as_array_mut() {
        list.retain(|f| f != finalizer);
    }
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty());
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let target = Target {
        resource,
        namespace: namespace.map(str::to_owned),
        name: None,
        subresource: None,
    };
    match objects::update(api, &target, name, updated).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "NotFound" => Ok(()),
        Err(e) => Err(Error::api(format!("removing {finalizer} from {name}"), &e)),
    }
}

struct PvcProtection {
    api: Arc<Api>,
    claims: Cache,
    pods: &'static ResourceType,
}

#[async_trait::async_trait]
impl Reconciler for PvcProtection {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(claim) = self.claims.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if !is_held(&claim) {
            return Ok(Action::Done);
        }
        let in_use = list_fresh(&self.api, self.pods, &key.namespace)
            .await?
            .iter()
            .any(|pod| claims_in_use(pod).contains(&key.name));
        if in_use {
            tracing::debug!(claim = %key, "in use by a pod: kept");
            return Ok(Action::Done);
        }
        remove_finalizer(
            &self.api,
            self.claims.resource(),
            &claim,
            PVC_PROTECTION_FINALIZER,
        )
        .await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_scheduled_unfinished_pods_hold_their_claims() {
        let pod = |node: &str, phase: &str| {
            json!({
                "metadata": { "name": "p" },
                "spec": { "nodeName": node, "volumes": [
                    { "name": "a", "persistentVolumeClaim": { "claimName": "data" } },
                    { "name": "scratch", "ephemeral": { "volumeClaimTemplate": {} } },
                    { "name": "tmp", "emptyDir": {} },
                ] },
                "status": { "phase": phase },
            })
        };
        assert_eq!(claims_in_use(&pod("n1", "Running")), ["data", "p-scratch"]);
        assert!(claims_in_use(&pod("", "Pending")).is_empty());
        assert!(claims_in_use(&pod("n1", "Succeeded")).is_empty());
        assert!(claims_in_use(&pod("n1", "Failed")).is_empty());
    }
}
