//! Pods: a new pod is `Pending`; `pods/binding` writes the stored pod, status included, and
//! is validated as an object (it sets `spec.nodeName`, which no client update may change); a
//! pod on a node is deleted gracefully, by that node's agent.

use serde_json::{Value, json};

use super::super::{KindStrategy, keep_status, validate_built_in};
use crate::apiserver::{
    Api,
    objects::Result,
    resources::{ResourceType, StorageKeys as _},
};

/// The strategy of `v1` `Pod`.
#[derive(Debug)]
pub struct Pods;

#[async_trait::async_trait]
impl KindStrategy for Pods {
    /// A pod keeps a phase it is created with (a static pod's agent reports it); else it is
    /// `Pending`.
    fn reset_status(&self, _resource: &ResourceType, object: &mut Value) {
        let status = &mut object["status"];
        if !status.is_object() || status["phase"].is_null() {
            *status = json!({ "phase": "Pending" });
        }
    }

    fn prepare_for_update(
        &self,
        resource: &ResourceType,
        sub: Option<&str>,
        old: &Value,
        new: Value,
    ) -> Value {
        match sub {
            // The server builds a binding's object from the stored one, status included.
            Some("binding") => new,
            _ => keep_status(resource, sub, old, new),
        }
    }

    fn validate(
        &self,
        resource: &ResourceType,
        sub: Option<&str>,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<()> {
        // A binding sets `spec.nodeName`, which no client update may change: it is checked as
        // an object, not as an update.
        let old = old.filter(|_| sub != Some("binding"));
        validate_built_in(resource, object, old)
    }

    /// A pod whose spec is unchanged (a label added) is not judged again (as Pod Security's).
    fn admits_update(&self, old: &Value, new: &Value) -> bool {
        old.get("spec") != new.get("spec")
    }

    /// A pod running on a node is stopped by that node's agent, which then deletes it with a
    /// grace period of 0 (as the kubelet does); unscheduled and finished pods have nothing to
    /// stop. Only a node that exists can finish a graceful deletion (PodGC's rule): a pod bound
    /// to a deleted node goes at once.
    async fn graceful_delete(&self, api: &Api, object: &Value, options: &Value) -> bool {
        let phase = object["status"]["phase"].as_str().unwrap_or_default();
        let on_a_node = grace_seconds(object, options) > 0
            && object["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && phase != "Succeeded"
            && phase != "Failed";
        if !on_a_node {
            return false;
        }
        let node = object["spec"]["nodeName"].as_str().unwrap_or_default();
        let nodes = api.resources.get("", "v1", "nodes").expect("served");
        matches!(api.store.get(&nodes.key(None, node)).await, Ok(Some(_)))
    }

    /// A pod already terminating goes at once when its grace is cut to 0 (its agent finished,
    /// or `--force`); it stays marked otherwise.
    fn delete_marked_at_once(&self) -> bool {
        true
    }

    fn prepare_for_delete(&self, object: &mut Value, options: &Value) {
        object["metadata"]["deletionGracePeriodSeconds"] = json!(grace_seconds(object, options));
    }
}

/// A pod's grace period for this delete: the request's `gracePeriodSeconds`, else the pod's
/// `terminationGracePeriodSeconds`, else 30.
pub fn grace_seconds(pod: &Value, options: &Value) -> i64 {
    options["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_is_the_requests_then_the_pods_then_30() {
        let pod = json!({ "spec": { "terminationGracePeriodSeconds": 5 } });
        assert_eq!(grace_seconds(&pod, &json!({ "gracePeriodSeconds": 0 })), 0);
        assert_eq!(grace_seconds(&pod, &Value::Null), 5);
        assert_eq!(grace_seconds(&json!({}), &Value::Null), 30);
        assert_eq!(grace_seconds(&pod, &json!({ "gracePeriodSeconds": -3 })), 0);
    }
}
