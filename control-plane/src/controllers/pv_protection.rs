//! Volume protection (kube-controller-manager's `pv-protection` controller): a volume being
//! deleted keeps its `kubernetes.io/pv-protection` finalizer (added on create by admission)
//! while it is `Bound` to a claim.

use std::sync::Arc;

use apiary_api::{core_v1::PV_PROTECTION_FINALIZER, meta::ObjectRef};
use serde_json::Value;
use tokio::sync::watch;

use super::{
    pvc_protection::{has_finalizer, remove_finalizer},
    resource,
    runtime::{self, Action, Cache, Reconciler, Result},
};
use crate::apiserver::Api;

const COMPONENT: &str = "pv-protection-controller";

/// Runs the controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let volumes = Cache::new(resource(&api, "", "v1", "persistentvolumes"));
    let reconciler = Arc::new(PvProtection {
        api: Arc::clone(&api),
        volumes: volumes.clone(),
    });
    runtime::run_single(
        api,
        volumes,
        |v: &Value| v["metadata"]["deletionTimestamp"].is_string(),
        reconciler,
        2,
        std::time::Duration::from_secs(30),
        shutdown,
    )
    .await;
}

struct PvProtection {
    api: Arc<Api>,
    volumes: Cache,
}

#[async_trait::async_trait]
impl Reconciler for PvProtection {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(volume) = self.volumes.get("", &key.name) else {
            return Ok(Action::Done);
        };
        if !volume["metadata"]["deletionTimestamp"].is_string()
            || !has_finalizer(&volume, PV_PROTECTION_FINALIZER)
            || volume["status"]["phase"] == "Bound"
        {
            return Ok(Action::Done);
        }
        remove_finalizer(
            &self.api,
            self.volumes.resource(),
            &volume,
            PV_PROTECTION_FINALIZER,
        )
        .await?;
        Ok(Action::Done)
    }
}
