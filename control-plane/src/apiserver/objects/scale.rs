//! The `scale` subresource: a scalable object's replica count as an autoscaling/v1 `Scale`.

use std::sync::Arc;

use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::{
    Api, ApiError, MAX_ATTEMPTS, Result, Target, WriteOptions, apply_patch, conflict, content_type,
    decode, get, object_revision, write_update,
};
use crate::apiserver::{
    custom_resources::{json_path, set_json_path},
    registry::ScalePaths,
};

/// The `Scale` (autoscaling/v1) view of a scalable object.
fn to_scale(object: &Value, paths: &ScalePaths) -> Value {
    let count = |path: &str| json_path(object, path).and_then(Value::as_i64).unwrap_or(0);
    let (spec_replicas, status_replicas, selector) = match paths {
        Some(paths) => (
            count(&paths.spec_replicas_path),
            count(&paths.status_replicas_path),
            // A custom kind's selector path holds the selector in its string form.
            paths
                .label_selector_path
                .as_deref()
                .and_then(|p| json_path(object, p))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        None => {
            let mut terms: Vec<String> = object["spec"]["selector"]["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            terms.sort();
            (
                count(".spec.replicas"),
                count(".status.replicas"),
                terms.join(","),
            )
        }
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "uid": object["metadata"]["uid"],
            "resourceVersion": object["metadata"]["resourceVersion"],
            "creationTimestamp": object["metadata"]["creationTimestamp"],
        },
        "spec": { "replicas": spec_replicas },
        "status": { "replicas": status_replicas, "selector": selector },
    })
}

/// `…/scale`: read the replica count, or set it with a Scale (PUT) or a patch of one.
pub(super) async fn scale(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    options: &WriteOptions,
) -> Result<Value> {
    let parent = Target {
        subresource: None,
        ..target.clone()
    };
    let paths: ScalePaths = api.registry.strategy_for(target.resource).scale_paths();
    for _ in 0..MAX_ATTEMPTS {
        let old = get(api, target.resource, target.namespace.as_deref(), name).await?;
        let current = to_scale(&old, &paths);
        let (desired, pinned) = match *method {
            Method::GET => return Ok(current),
            Method::PUT => {
                let desired = decode(headers, body)?;
                let pinned = object_revision(&desired)?;
                (desired, pinned)
            }
            Method::PATCH => (
                apply_patch(current.clone(), &content_type(headers), body)?,
                None,
            ),
            _ => return Err(ApiError::method_not_allowed(method.as_str(), "scale")),
        };
        let replicas = desired["spec"]["replicas"].as_i64().ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                &[(
                    "spec.replicas".into(),
                    "spec.replicas: Required value".into(),
                )],
            )
        })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                &[(
                    "spec.replicas".into(),
                    format!(
                        "spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                    ),
                )],
            ));
        }
        let mut new = old.clone();
        match &paths {
            Some(paths) => set_json_path(&mut new, &paths.spec_replicas_path, json!(replicas)),
            None => new["spec"]["replicas"] = json!(replicas),
        }
        let expected = pinned.unwrap_or(object_revision(&old)?.unwrap_or_default());
        match write_update(api, &parent, name, &old, new, expected, options).await {
            Ok(updated) => return Ok(to_scale(&updated, &paths)),
            Err(e) if e.reason == "Conflict" && pinned.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(conflict(target, name))
}

/// The Scale of `target`'s object `name`, as a controller reads it (the HPA's `GetScale`).
pub(crate) async fn get_scale(api: &Arc<Api>, target: &Target, name: &str) -> Result<Value> {
    let sub = Target {
        subresource: Some("scale".into()),
        ..target.clone()
    };
    let options = WriteOptions::default();
    scale(
        api,
        &sub,
        name,
        &Method::GET,
        &HeaderMap::new(),
        &[],
        &options,
    )
    .await
}

/// Sets the replica count of `target`'s object `name` through its scale subresource.
pub(crate) async fn set_replicas(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    replicas: i64,
) -> Result<Value> {
    let sub = Target {
        subresource: Some("scale".into()),
        ..target.clone()
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/merge-patch+json"),
    );
    let body = json!({ "spec": { "replicas": replicas } }).to_string();
    let options = WriteOptions::default();
    scale(
        api,
        &sub,
        name,
        &Method::PATCH,
        &headers,
        body.as_bytes(),
        &options,
    )
    .await
}
