//! Volume expansion, kube-controller-manager's `persistentvolume-expander` part for CSI
//! volumes: a bound claim asking for more than its volume has (`PersistentVolumeClaimResize`
//! admitted the growth) is handed to the volume's CSI driver by the annotation
//! `volume.kubernetes.io/storage-resizer: <driver>`, with an `ExternalExpanding` event; the
//! driver's resizer (the node agent, for local-path) grows the volume and writes the new
//! capacity to the PV and the claim's status.

use std::sync::Arc;

use apiary_api::{meta::ObjectRef, validation::storage_bytes};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    record_event, resource,
    runtime::{self, Action, Cache, Error, Reconciler, Result},
    target,
};
use crate::apiserver::{Api, objects};

const COMPONENT: &str = "volume_expand";
/// The annotation naming the resizer a claim's expansion waits for.
pub const ANN_STORAGE_RESIZER: &str = "volume.kubernetes.io/storage-resizer";

fn bytes(q: &Value) -> Option<i64> {
    storage_bytes(&apiary_api::Quantity(q.as_str()?.to_owned()))
}

/// Whether a bound claim asks for more than its status says it has.
fn wants_more(claim: &Value) -> bool {
    claim["status"]["phase"] == "Bound"
        && match (
            bytes(&claim["spec"]["resources"]["requests"]["storage"]),
            bytes(&claim["status"]["capacity"]["storage"]),
        ) {
            (Some(wanted), Some(has)) => wanted > has,
            _ => false,
        }
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let claims = Cache::new(resource(&api, "", "v1", "persistentvolumeclaims"));
    let volumes = Cache::new(resource(&api, "", "v1", "persistentvolumes"));
    let reconciler = Arc::new(Expand {
        api: Arc::clone(&api),
        claims: claims.clone(),
        volumes: volumes.clone(),
    });
    tokio::join!(
        runtime::reflect(Arc::clone(&api), volumes, |_: &Value| {}, shutdown.clone()),
        runtime::run_single(
            api,
            claims,
            wants_more,
            reconciler,
            2,
            std::time::Duration::from_secs(60),
            shutdown,
        ),
    );
}

struct Expand {
    api: Arc<Api>,
    claims: Cache,
    volumes: Cache,
}

#[async_trait::async_trait]
impl Reconciler for Expand {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(claim) = self.claims.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if !wants_more(&claim) {
            return Ok(Action::Done);
        }
        let volume_name = claim["spec"]["volumeName"].as_str().unwrap_or_default();
        let Some(volume) = self.volumes.get("", volume_name) else {
            // The volumes are not listed yet, or the claim is about to be Lost.
            return Ok(Action::RequeueAfter(std::time::Duration::from_secs(1)));
        };
        let Some(driver) = volume["spec"]["csi"]["driver"].as_str() else {
            return Ok(Action::Done); // no in-tree volume plugin expands here
        };
        if claim["metadata"]["annotations"][ANN_STORAGE_RESIZER] == driver {
            return Ok(Action::Done);
        }
        let mut updated = (*claim).clone();
        if !updated["metadata"]["annotations"].is_object() {
            updated["metadata"]["annotations"] = json!({});
        }
        updated["metadata"]["annotations"][ANN_STORAGE_RESIZER] = json!(driver);
        objects::update(
            &self.api,
            &target(self.claims.resource(), &key.namespace, None),
            &key.name,
            updated,
        )
        .await
        .map_err(|e| Error::api(format!("annotating claim {}", key.name), &e))?;
        record_event(
            &self.api,
            COMPONENT,
            &claim,
            ("v1", "PersistentVolumeClaim"),
            "ExternalExpanding",
            "waiting for an external controller to expand this PVC",
        )
        .await;
        Ok(Action::Done)
    }
}
