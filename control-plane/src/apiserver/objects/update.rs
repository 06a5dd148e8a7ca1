//! Updating objects: update (PUT), patch (merge, strategic merge, JSON patch) and server-side
//! apply, all through one read-modify-write of the stored object.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{
    Api, ApiError, Deletion, KindStrategy, MAX_ATTEMPTS, ResourceType, Result, Target,
    WriteOptions, check_name, check_type, conflict, create_with, decode_yaml, get, now,
    object_revision, parse_revision, present, present_dry_run, present_stored, present_written,
    prune_and_check_fields, redefault, store_err, stored_form, track, webhooks,
};
use crate::apiserver::resources::StorageKeys as _;
use crate::store::Revision;

/// Combines an incoming object with the stored one: the kind's `PrepareForUpdate` (what of
/// `new` an update through `sub` keeps), then what no client may change of any object's
/// metadata, and the generation, bumped when the kind says what it counts changed.
fn merge_for_update(
    strategy: &dyn KindStrategy,
    resource: &ResourceType,
    sub: Option<&str>,
    old: &Value,
    new: Value,
) -> Value {
    let mut merged = strategy.prepare_for_update(resource, sub, old, new);
    // An update that does not send managed fields keeps them (an empty list clears them).
    if merged["metadata"].get("managedFields").is_none()
        && let Some(managed) = old["metadata"].get("managedFields")
        && merged["metadata"].is_object()
    {
        merged["metadata"]["managedFields"] = managed.clone();
    }
    for field in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
    ] {
        match old["metadata"].get(field) {
            Some(value) => merged["metadata"][field] = value.clone(),
            None => {
                if let Some(meta) = merged["metadata"].as_object_mut() {
                    meta.remove(field);
                }
            }
        }
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let spec_changed = strategy.generation_changed(resource, old, &merged);
    merged["metadata"]["generation"] = json!(if spec_changed {
        generation + 1
    } else {
        generation
    });
    if let Some(obj) = merged.as_object_mut()
        && obj.get("status").is_some_and(Value::is_null)
    {
        obj.remove("status");
    }
    merged
}

/// Writes `new` over the object at `key` if it is still at `expected`.
pub(super) async fn write_update(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    old: &Value,
    new: Value,
    expected: Revision,
    options: &WriteOptions,
) -> Result<Value> {
    let resource = target.resource;
    let sub = target.subresource.as_deref();
    let strategy = api.registry.strategy_for(resource);
    let mut merged = merge_for_update(&*strategy, resource, sub, old, new);
    strategy.prepare_write(resource, &mut merged);
    strategy.default(resource, &mut merged);
    prune_and_check_fields(&*strategy, resource, &mut merged, options)?;
    // A binding is the scheduler's, not a client's update: webhooks see pods, not bindings.
    let review = (sub != Some("binding")).then(|| super::admission::Request {
        operation: super::admission::Operation::Update,
        resource,
        subresource: sub.unwrap_or_default(),
        namespace: target.namespace.as_deref(),
        name,
        old: Some(old),
        dry_run: options.dry_run,
        namespace_object: None,
    });
    if let Some(review) = &review
        && webhooks::mutate(api, review, &mut merged).await?
    {
        redefault(&*strategy, resource, &mut merged, Some(old));
    }
    track(&*strategy, resource, old, &mut merged, options, sub);
    let released = strategy
        .reconcile_update(api, sub, old, &mut merged)
        .await?;
    strategy.validate(resource, sub, &merged, Some(old))?;
    // Admission judges what a client changed, not what the system writes to subresources;
    // the kind may say an update changed nothing admission judges (a pod's labels).
    if target.subresource.is_none() && strategy.admits_update(old, &merged) {
        super::admission::validate(api, resource, &merged, None).await?;
        super::admission::validate_update(api, resource, old, &merged).await?;
    }
    if let Some(review) = &review {
        super::admission::policies::validate(api, review, &merged).await?;
        webhooks::validate(api, review, &merged).await?;
    }
    // An object whose finalizers are gone while it is being deleted goes away now.
    let finalizers_empty = merged["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    let key = resource.key(target.namespace.as_deref(), name);
    if options.dry_run {
        strategy.release_dry_run(api, old, &merged).await;
        let revision = &old["metadata"]["resourceVersion"];
        return Ok(present_dry_run(
            resource,
            stored_form(merged),
            Some(revision),
        ));
    }
    if merged["metadata"]["deletionTimestamp"].is_string() && finalizers_empty {
        let kv = api
            .store
            .delete(&key, Some(expected))
            .await
            .map_err(|e| store_err(resource, name, e))?;
        let deleted = present(resource, &kv)?;
        super::deletion::after_delete(api, resource, &deleted, &Value::Null, Deletion::Gone);
        return Ok(deleted);
    }
    let stored = stored_form(merged);
    if changes_nothing(resource, old, &stored, expected)
        && !api
            .store
            .is_stale(&key)
            .await
            .map_err(|e| store_err(resource, name, e))?
    {
        return Ok(old.clone());
    }
    let encoded = serde_json::to_vec(&stored).expect("a JSON value always serializes");
    let kv = api
        .store
        .update(&key, encoded, Some(expected))
        .await
        .map_err(|e| store_err(resource, name, e))?;
    released.release(api).await;
    Ok(present_written(resource, stored, &kv))
}

/// Whether writing `stored` over `old` (read at revision `expected`) would store what is already
/// there. Kubernetes then writes nothing (its storage compares the encoded bytes): the object
/// keeps its resource version and no watcher hears of it, so a client applying, patching or
/// updating an object to what it already is sees it unchanged, and a status reported again
/// costs no write. A write pinned to an older revision still goes on, to fail as a conflict, and
/// so does one over a value the store holds in a stale form (sealed with an old key).
fn changes_nothing(
    resource: &ResourceType,
    old: &Value,
    stored: &Value,
    expected: Revision,
) -> bool {
    let revision = &old["metadata"]["resourceVersion"];
    if object_revision(old).ok().flatten() != Some(expected) {
        return false;
    }
    // Compared as served (versions converted, status filled), the form `old` was read in.
    present_stored(resource, stored.clone(), revision.clone()) == *old
}

pub async fn update(api: &Arc<Api>, target: &Target, name: &str, object: Value) -> Result<Value> {
    update_with(api, target, name, object, &WriteOptions::default()).await
}

/// [`update`] with a request's options.
pub async fn update_with(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    object: Value,
    options: &WriteOptions,
) -> Result<Value> {
    check_type(target.resource, &object)?;
    check_name(&object, name)?;
    let pinned = object_revision(&object)?;
    for _ in 0..MAX_ATTEMPTS {
        let old = get(api, target.resource, target.namespace.as_deref(), name).await?;
        let current = object_revision(&old)?.unwrap_or_default();
        let expected = pinned.unwrap_or(current);
        match write_update(api, target, name, &old, object.clone(), expected, options).await {
            Err(e) if e.reason == "Conflict" && pinned.is_none() => continue,
            other => return other,
        }
    }
    Err(conflict(target, name))
}

/// Applies a patch of `content_type` to `object`.
pub(crate) fn apply_patch(mut object: Value, content_type: &str, body: &[u8]) -> Result<Value> {
    if content_type == APPLY_PATCH {
        // What an apply sets, for the checks that judge a write before it is made (escalation,
        // NodeRestriction): the configuration merged in. The apply itself also removes what
        // its manager no longer sets, which grants nothing.
        let config = decode_yaml(body)?;
        apiary_api::apply::merge(&mut object, &config, apiary_api::apply::Shape::BUILT_IN);
        return Ok(object);
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    match content_type {
        "application/merge-patch+json" => json_patch::merge(&mut object, &patch),
        "application/strategic-merge-patch+json" => {
            apiary_api::strategic::merge(&mut object, &patch)
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            apply_json_patch(&mut object, &ops)?;
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    Ok(object)
}

/// Server-side apply's content type.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// `PATCH` with `application/apply-patch+yaml`: the body is the manager's whole intent for the
/// object; it is merged into the live object (created if missing), fields the manager applied
/// before and no longer does are removed, and fields another manager owns with another value
/// are a 409 unless `force=true`.
async fn server_side_apply(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    body: &[u8],
    options: &WriteOptions,
) -> Result<Value> {
    let resource = target.resource;
    let manager = options
        .field_manager
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                &[(
                    "fieldManager".into(),
                    "fieldManager: Required value: is required for apply patch".into(),
                )],
            )
        })?;
    // JSON is YAML too: clients send either.
    let config = decode_yaml(body)?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    for field in ["apiVersion", "kind"] {
        if config[field].as_str().is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "invalid object type: {field} not set in the apply configuration"
            )));
        }
    }
    check_type(resource, &config)?;
    check_name(&config, name)?;
    let api_version = resource.api_version();
    // The apply's managed fields are the whole record of this write: not tracked again.
    let write = WriteOptions {
        field_manager: None,
        default_manager: None,
        ..options.clone()
    };
    for _ in 0..MAX_ATTEMPTS {
        let live = match get(api, resource, target.namespace.as_deref(), name).await {
            Ok(live) => Some(live),
            Err(e) if e.code == StatusCode::NOT_FOUND => None,
            Err(e) => return Err(e),
        };
        let base = live.clone().unwrap_or_else(|| json!({}));
        let writer = apiary_api::apply::Writer {
            manager: &manager,
            api_version: &api_version,
            time: &now(),
            subresource: target.subresource.as_deref(),
        };
        let strategy = api.registry.strategy_for(resource);
        let applied = apiary_api::apply::apply(
            &base,
            &config,
            &writer,
            options.force,
            strategy.apply_shape(),
        )
        .map_err(|conflicts| ApiError::apply_conflicts(&conflicts))?;
        let mut object = applied;
        let Some(live) = live else {
            object["apiVersion"] = json!(api_version);
            object["kind"] = json!(resource.kind);
            object["metadata"]["name"] = json!(name);
            let created = create_with(api, target, object, &write).await;
            match created {
                // Created by someone else meanwhile: apply to that.
                Err(e) if e.reason == "AlreadyExists" => continue,
                other => return other,
            }
        };
        let pinned = object_revision(&config)?;
        let expected = pinned.unwrap_or(object_revision(&live)?.unwrap_or_default());
        match write_update(api, target, name, &live, object, expected, &write).await {
            Err(e) if e.reason == "Conflict" && pinned.is_none() => continue,
            other => return other,
        }
    }
    Err(conflict(target, name))
}

/// kube-apiserver's `maxJSONPatchOperations`.
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Applies a JSON patch within kube-apiserver's limits: at most 10000 operations, and `copy`
/// operations together add at most `MaxRequestBodyBytes` (its `JSONPatchMaxCopyBytes`). Without
/// the copy limit a few KB of `copy` ops, each doubling a subtree, would exhaust memory: `add`
/// and `replace` only grow the object by what the (already limited) body holds, `copy` by
/// whatever the object already holds. Ops are applied one at a time so the limit is checked
/// before each copy; `object` is the caller's copy, so a failure leaves nothing half-applied.
fn apply_json_patch(object: &mut Value, ops: &json_patch::Patch) -> Result<()> {
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::request_entity_too_large(format_args!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        )));
    }
    let limit = super::MAX_REQUEST_BODY_BYTES;
    let mut copied = 0;
    for (index, op) in ops.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(copy) = op
            && let Some(value) = object.pointer(copy.from.as_str())
        {
            copied += serialized_len(value);
            if copied > limit {
                return Err(ApiError::unprocessable(format!(
                    "Unable to complete the copy, the accumulated size increase of copy is \
                     {copied}, exceeding the limit {limit}"
                )));
            }
        }
        json_patch::patch_unsafe(object, std::slice::from_ref(op)).map_err(|mut e| {
            // Applied one at a time, every op is the patch's op 0 to the crate.
            e.operation = index;
            ApiError::unprocessable(format!("the JSON patch could not be applied: {e}"))
        })?;
    }
    Ok(())
}

/// The length of `value` as JSON, counted without building the text.
fn serialized_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("counting never fails");
    count.0
}

pub async fn patch(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Value> {
    patch_with(
        api,
        target,
        name,
        content_type,
        body,
        &WriteOptions::default(),
    )
    .await
}

/// [`patch`] with a request's options.
pub async fn patch_with(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    content_type: &str,
    body: &[u8],
    options: &WriteOptions,
) -> Result<Value> {
    if content_type == APPLY_PATCH {
        return server_side_apply(api, target, name, body, options).await;
    }
    // A resourceVersion the patch itself sets is a precondition; otherwise the patch applies to
    // whatever is current.
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let pinned = patch["metadata"]["resourceVersion"]
        .as_str()
        .map(parse_revision)
        .transpose()?;
    for _ in 0..MAX_ATTEMPTS {
        let old = get(api, target.resource, target.namespace.as_deref(), name).await?;
        let patched = apply_patch(old.clone(), content_type, body)?;
        check_name(&patched, name)?;
        let current = object_revision(&old)?.unwrap_or_default();
        let expected = pinned.unwrap_or(current);
        match write_update(api, target, name, &old, patched, expected, options).await {
            Err(e) if e.reason == "Conflict" && pinned.is_none() => continue,
            other => return other,
        }
    }
    Err(conflict(target, name))
}
