//! `pods/binding`: what the scheduler writes to assign a pod to a node.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    Api, ApiError, MAX_ATTEMPTS, Result, Target, WriteOptions, conflict, get, now, object_revision,
    write_update,
};

/// `pods/binding`: assigns a pending pod to a node, once. What the scheduler calls.
pub(super) async fn bind(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    binding: &Value,
    options: &WriteOptions,
) -> Result<()> {
    let node = binding["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "Binding",
                "",
                name,
                &[("target.name".into(), "target.name: Required value".into())],
            )
        })?;
    let parent = Target {
        subresource: Some("binding".into()),
        ..target.clone()
    };
    for _ in 0..MAX_ATTEMPTS {
        let old = get(api, target.resource, target.namespace.as_deref(), name).await?;
        if let Some(bound) = old["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "pods",
                "",
                name,
                &format!("pod {name} is already assigned to node \"{bound}\""),
            ));
        }
        if old["metadata"]["deletionTimestamp"].is_string() {
            return Err(ApiError::conflict(
                "pods",
                "",
                name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        // PodScheduled=True in the same write, as Kubernetes' binding does: one store update
        // per bound pod.
        set_scheduled(&mut new);
        let expected = object_revision(&old)?.unwrap_or_default();
        match write_update(api, &parent, name, &old, new, expected, options).await {
            Ok(_) => return Ok(()),
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(conflict(target, name))
}

/// Sets the `PodScheduled=True` condition of a pod being bound.
fn set_scheduled(pod: &mut Value) {
    put_pod_scheduled(
        pod,
        json!({
            "type": "PodScheduled", "status": "True",
            "lastProbeTime": null, "lastTransitionTime": now(),
        }),
    );
}

/// Makes `condition` the pod's one `PodScheduled` condition (a pod without a phase is
/// `Pending`): the binding sets it True, the scheduler False when no node fits.
pub(crate) fn put_pod_scheduled(pod: &mut Value, condition: Value) {
    let status = &mut pod["status"];
    if !status.is_object() {
        *status = json!({});
    }
    if status["phase"].is_null() {
        status["phase"] = json!("Pending");
    }
    let mut conditions: Vec<Value> = status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conditions.push(condition);
    status["conditions"] = json!(conditions);
}
