//! PersistentVolumes (`pkg/registry/core/persistentvolume/strategy.go`): a new volume starts
//! `Pending` (the PV controller makes it `Available` or binds it), and every change of phase
//! through `status` stamps `status.lastPhaseTransitionTime`.

use serde_json::{Value, json};

use super::super::{KindStrategy, keep_status};
use crate::apiserver::resources::ResourceType;

/// The strategy of `v1` `PersistentVolume`.
#[derive(Debug)]
pub struct PersistentVolumes;

impl KindStrategy for PersistentVolumes {
    fn prepare_for_update(
        &self,
        resource: &ResourceType,
        sub: Option<&str>,
        old: &Value,
        new: Value,
    ) -> Value {
        let mut merged = keep_status(resource, sub, old, new);
        if sub == Some("status") && merged["status"]["phase"] != old["status"]["phase"] {
            merged["status"]["lastPhaseTransitionTime"] =
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        merged
    }
}
