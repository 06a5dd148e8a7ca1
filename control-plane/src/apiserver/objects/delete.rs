//! Deleting objects: preconditions, graceful deletion and finalizers, and deletecollection.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    Api, ApiError, Deletion, FOREGROUND_FINALIZER, MAX_ATTEMPTS, Query, Result, Target, conflict,
    get, list, now, object_revision, parse_revision, present, present_dry_run, store_err,
    stored_form, to_stored, webhooks,
};
use crate::apiserver::resources::StorageKeys as _;
use crate::store;

fn filter_only(query: &Query) -> Query {
    query
        .iter()
        .filter(|(k, _)| *k == "labelSelector" || *k == "fieldSelector")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Deletes an object as `options` (a `DeleteOptions`) say; with `dryRun: ["All"]` it answers
/// what the delete would leave and changes nothing.
pub async fn delete(api: &Arc<Api>, target: &Target, name: &str, options: &Value) -> Result<Value> {
    let resource = target.resource;
    let dry_run = options["dryRun"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v == "All"));
    api.registry
        .strategy_for(resource)
        .admit_delete(resource, name)?;
    for _ in 0..MAX_ATTEMPTS {
        let old = get(api, resource, target.namespace.as_deref(), name).await?;
        let preconditions = &options["preconditions"];
        if let Some(uid) = preconditions["uid"].as_str()
            && Some(uid) != old["metadata"]["uid"].as_str()
        {
            return Err(ApiError::conflict(
                resource.plural,
                resource.group,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old["metadata"]["uid"].as_str().unwrap_or_default()
                ),
            ));
        }
        let current = object_revision(&old)?.unwrap_or_default();
        let pinned = preconditions["resourceVersion"]
            .as_str()
            .map(parse_revision)
            .transpose()?;
        if let Some(pinned) = pinned
            && pinned != current
        {
            return Err(ApiError::conflict(
                resource.plural,
                resource.group,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {pinned}, ResourceVersion in object meta: {current}"
                ),
            ));
        }
        let review = super::admission::Request {
            operation: super::admission::Operation::Delete,
            resource,
            subresource: "",
            namespace: target.namespace.as_deref(),
            name,
            old: Some(&old),
            dry_run,
            namespace_object: None,
        };
        webhooks::mutate(api, &review, &mut Value::Null).await?;
        super::admission::policies::validate(api, &review, &Value::Null).await?;
        webhooks::validate(api, &review, &Value::Null).await?;
        let key = resource.key(target.namespace.as_deref(), name);
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let strategy = api.registry.strategy_for(resource);
        let graceful = strategy.graceful_delete(api, &old, options).await;
        let foreground = options["propagationPolicy"].as_str() == Some("Foreground");
        let marked_already = old["metadata"]["deletionTimestamp"].is_string();
        // An object already terminating may go at once when its grace is cut to 0 (a pod's
        // agent finished, or `--force`); it stays marked otherwise.
        let forced =
            strategy.delete_marked_at_once() && marked_already && !graceful && !has_finalizers;
        let marking = (has_finalizers || graceful || foreground) && !forced;
        let result = if marking {
            // Mark for deletion; whoever owns the finalizers (or the grace period) finishes it.
            if marked_already {
                return Ok(old);
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            if let Some(seconds) = options["gracePeriodSeconds"].as_i64() {
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(seconds);
            }
            strategy.prepare_for_delete(&mut marked, options);
            if foreground {
                let finalizers = &mut marked["metadata"]["finalizers"];
                if !finalizers.is_array() {
                    *finalizers = json!([]);
                }
                if let Some(list) = finalizers.as_array_mut()
                    && !list.iter().any(|f| f == FOREGROUND_FINALIZER)
                {
                    list.push(json!(FOREGROUND_FINALIZER));
                }
            }
            if dry_run {
                return Ok(present_dry_run(
                    resource,
                    stored_form(marked),
                    Some(&old["metadata"]["resourceVersion"]),
                ));
            }
            marked["metadata"]["resourceVersion"] = Value::Null;
            api.store
                .update(&key, to_stored(&marked), Some(current))
                .await
        } else if dry_run {
            return Ok(old);
        } else {
            api.store.delete(&key, Some(current)).await
        };
        match result {
            Ok(kv) => {
                let deleted = present(resource, &kv)?;
                let deletion = if marking {
                    Deletion::Marked
                } else {
                    Deletion::Gone
                };
                super::deletion::after_delete(api, resource, &deleted, options, deletion);
                return Ok(deleted);
            }
            Err(store::Error::Conflict { .. }) if pinned.is_none() => continue,
            Err(e) => return Err(store_err(resource, name, e)),
        }
    }
    Err(conflict(target, name))
}

/// Deletes of one collection in flight at once.
const DELETE_COLLECTION_IN_FLIGHT: usize = 16;

/// DELETE of a collection: every object the query's selectors match, each deleted as a DELETE
/// of it would be; answers the list of what was deleted (or marked for deletion).
pub async fn delete_collection(
    api: &Arc<Api>,
    target: &Target,
    query: &Query,
    options: &Value,
) -> Result<Value> {
    let listing = list(api, target, &filter_only(query)).await?;
    let items = listing["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let deleted = delete_each(api, target, items.iter(), options).await?;
    Ok(json!({
        "kind": format!("{}List", target.resource.kind),
        "apiVersion": target.resource.api_version(),
        "metadata": { "resourceVersion": listing["metadata"]["resourceVersion"] },
        "items": deleted,
    }))
}

/// Deletes `objects` (of `target`'s resource) as DELETEs of each would, several at a time so
/// that their writes share the store's commits (one at a time, a namespace of 10,000 pods took
/// one durable commit per pod); what was deleted or marked, in `objects`' order. One already
/// gone is left out.
pub async fn delete_each<'a>(
    api: &Arc<Api>,
    target: &Target,
    objects: impl Iterator<Item = &'a Value>,
    options: &Value,
) -> Result<Vec<Value>> {
    use futures::StreamExt as _;
    let targets: Vec<(Target, String)> = objects
        .map(|object| {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let target = Target {
                namespace: object["metadata"]["namespace"].as_str().map(str::to_owned),
                name: Some(name.to_owned()),
                ..target.clone()
            };
            (target, name.to_owned())
        })
        .collect();
    let mut deletes = futures::stream::iter(targets)
        .map(|(target, name)| async move { delete(api, &target, &name, options).await })
        .buffered(DELETE_COLLECTION_IN_FLIGHT);
    let mut deleted = Vec::new();
    while let Some(outcome) = deletes.next().await {
        match outcome {
            Ok(object) => deleted.push(object),
            // Someone else deleted it first: the collection is still gone.
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
