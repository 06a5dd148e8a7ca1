//! Creating objects: names (`generateName`), the namespace's lifecycle, then the kind's
//! preparation, admission and validation before the store.

use serde_json::{Value, json};

use super::{
    Api, ApiError, Result, Target, WriteOptions, check_type, get, now, present_dry_run,
    present_written, prune_and_check_fields, redefault, store_err, stored_form, track, webhooks,
};
use crate::apiserver::resources::StorageKeys as _;

/// Characters Kubernetes uses for `generateName` suffixes (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub(crate) fn generate_suffix() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// The namespace a new object goes into, which must exist and not be terminating.
async fn require_namespace(api: &Api, namespace: &str) -> Result<Value> {
    let namespaces = api
        .resources
        .get("", "v1", "namespaces")
        .expect("namespaces are served");
    let ns = get(api, namespaces, None, namespace).await?;
    if ns["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )));
    }
    Ok(ns)
}

pub async fn create(api: &Api, target: &Target, object: Value) -> Result<Value> {
    create_with(api, target, object, &WriteOptions::default()).await
}

/// [`create`] with a request's options.
pub async fn create_with(
    api: &Api,
    target: &Target,
    mut object: Value,
    options: &WriteOptions,
) -> Result<Value> {
    let resource = target.resource;
    check_type(resource, &object)?;
    let meta = &mut object["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    if resource.namespaced {
        let url_ns = target
            .namespace
            .clone()
            .ok_or_else(|| ApiError::method_not_allowed("create", resource.plural))?;
        match meta["namespace"].as_str() {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(url_ns),
        }
    } else if let Some(obj) = meta.as_object_mut() {
        obj.remove("namespace");
    }
    let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => name.to_owned(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", generate_suffix()),
        _ => {
            return Err(ApiError::invalid(
                resource.kind,
                resource.group,
                "",
                &[(
                    "metadata.name".into(),
                    "metadata.name: Required value: name or generateName is required".into(),
                )],
            ));
        }
    };
    meta["name"] = json!(name);
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now());
    meta["generation"] = json!(1);
    if let Some(obj) = meta.as_object_mut() {
        obj.remove("deletionTimestamp");
        obj.remove("deletionGracePeriodSeconds");
    }
    let strategy = api.registry.strategy_for(resource);
    strategy.prepare_write(resource, &mut object);
    prune_and_check_fields(&*strategy, resource, &mut object, options)?;
    // Mutating admission comes before defaults and validation, as in kube-apiserver: what
    // it adds is defaulted and validated like the rest. Its first plugin is the namespace's
    // lifecycle: nothing is created in a namespace that is missing or terminating.
    let namespace = match target.namespace.as_deref() {
        Some(ns) => Some(require_namespace(api, ns).await?),
        None => None,
    };
    super::admission::admit_create(api, resource, &mut object).await?;
    strategy.prepare_for_create(resource, &mut object);
    let review = super::admission::Request {
        operation: super::admission::Operation::Create,
        resource,
        subresource: "",
        namespace: target.namespace.as_deref(),
        name: &name,
        old: None,
        dry_run: options.dry_run,
        namespace_object: namespace.as_ref(),
    };
    if webhooks::mutate(api, &review, &mut object).await? {
        redefault(&*strategy, resource, &mut object, None);
    }
    strategy.validate(resource, None, &object, None)?;
    super::admission::validate(api, resource, &object, namespace.as_ref()).await?;
    super::admission::policies::validate(api, &review, &object).await?;
    webhooks::validate(api, &review, &object).await?;
    track(&*strategy, resource, &json!({}), &mut object, options, None);
    let claims = strategy.allocate(api, &mut object).await?;
    let key = resource.key(target.namespace.as_deref(), &name);
    let stored = stored_form(object);
    if options.dry_run {
        // What was allocated only to be shown goes back (kube-apiserver's dry-run allocator
        // reserves nothing either); a name taken is still reported, as a real create would.
        claims.release(api).await;
        if api
            .store
            .get(&key)
            .await
            .map_err(|e| ApiError::storage(&e))?
            .is_some()
        {
            return Err(ApiError::already_exists(
                resource.plural,
                resource.group,
                &name,
            ));
        }
        return Ok(present_dry_run(resource, stored, None));
    }
    let encoded = serde_json::to_vec(&stored).expect("a JSON value always serializes");
    match api.store.create(&key, encoded).await {
        Ok(kv) => Ok(present_written(resource, stored, &kv)),
        Err(e) => {
            claims.release(api).await;
            Err(store_err(resource, &name, e))
        }
    }
}
