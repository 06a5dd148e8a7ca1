//! The verbs on stored objects: get, list, watch, create, update, patch, delete and
//! deletecollection, for every resource type, on the objects' JSON. One module per verb
//! (`read`, `watch`, `create`, `update`, `delete`) and per subresource with its own
//! verb (`scale`, `binding`); what a kind does differently at each step is its strategy in
//! [`super::registry`].
//!
//! Objects are stored as JSON without `metadata.resourceVersion`: the store's `mod_revision` is
//! the resource version, set on the way out.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use serde_json::{Value, json};

use super::{
    Api,
    deletion::{Deletion, FOREGROUND_FINALIZER},
    error::ApiError,
    path::Target,
    registry::KindStrategy,
    resources::{ResourceType, StorageKeys as _},
    selectors::{FieldSelector, LabelSelector},
    tables,
    write_options::WriteOptions,
};
use crate::store::{self, KeyValue, Revision};

// The server's modules the verbs call by path (`super::admission::…` from a verb's module).
use super::{MAX_REQUEST_BODY_BYTES, admission, admission::webhooks, deletion};

mod binding;
mod create;
mod delete;
mod read;
mod scale;
mod update;
mod watch;

pub(crate) use binding::put_pod_scheduled;
pub(crate) use create::generate_suffix;
pub use create::{create, create_with};
pub use delete::{delete, delete_collection, delete_each};
pub use read::{Filter, get, list};
pub(crate) use update::apply_patch;
pub use update::{patch, patch_with, update, update_with};
pub use watch::{Change, Start, Watch, watch_changes};

use binding::bind;
use read::list_prefix;
use scale::scale;
pub(crate) use scale::{get_scale, set_replicas};
use update::write_update;
use watch::watch;

type Query = HashMap<String, String>;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The API verb of a request on a resource (not a subresource), by its method and whether it
/// names an object.
fn verb_of(method: &Method, named: bool, watch: bool) -> Option<&'static str> {
    Some(match (method.as_str(), named) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}

/// Runs one request against the object store.
pub async fn dispatch(
    api: &Arc<Api>,
    method: &Method,
    target: Target,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let resource = target.resource;
    let sub = target.subresource.as_deref();
    if let Some(sub) = sub
        && !resource.has_subresource(sub)
    {
        return Err(ApiError::no_route(&format!("{}/{sub}", resource.plural)));
    }
    // Create-only kinds (the reviews) have their own routes for their one verb.
    if sub.is_none() && !resource.verbs.contains(&"get") {
        return Err(ApiError::method_not_allowed(
            &method.as_str().to_lowercase(),
            resource.plural,
        ));
    }
    let as_table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(tables::wanted);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let options = |kind| WriteOptions::from_request(query, user_agent, kind);
    if sub == Some("scale")
        && let Some(name) = target.name.as_deref()
    {
        let options = match *method {
            Method::PATCH => options("PatchOptions")?,
            _ => options("UpdateOptions")?,
        };
        return json_response(
            StatusCode::OK,
            scale(api, &target, name, method, headers, &body, &options).await?,
        );
    }
    if sub == Some("token")
        && let (&Method::POST, Some(name)) = (method, target.name.as_deref())
    {
        let issued =
            super::authn::token_request::create(api, &target, name, headers, &body).await?;
        return json_response(StatusCode::CREATED, issued);
    }
    if sub == Some("binding")
        && let (&Method::POST, Some(name)) = (method, target.name.as_deref())
    {
        let options = options("CreateOptions")?;
        let binding = decode(headers, &body)?;
        bind(api, &target, name, &binding, &options).await?;
        return json_response(
            StatusCode::CREATED,
            json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201 }),
        );
    }
    // A verb the resource does not serve (deletecollection of namespaces) is refused as
    // kube-apiserver refuses it: no route for it.
    if sub.is_none()
        && let Some(verb) = verb_of(method, target.name.is_some(), is_true(query.get("watch")))
        && !resource.verbs.contains(&verb)
    {
        return Err(ApiError::method_not_allowed(verb, resource.plural));
    }
    match (method, target.name.as_deref()) {
        (&Method::GET, None) if is_true(query.get("watch")) => {
            watch(api, &target, query, as_table).await
        }
        (&Method::GET, None) => {
            // JSON is written as it is read (kube-apiserver's streaming collection encoding);
            // a protobuf list is length-prefixed as a whole, so it is encoded once complete.
            let streams = !as_table
                && !headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(super::negotiation::prefers_protobuf);
            if streams && let Some(body) = read::list_streamed(api, &target, query).await? {
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response());
            }
            let mut listing = list(api, &target, query).await?;
            if as_table {
                let items = listing["items"].as_array().cloned().unwrap_or_default();
                listing = table(api, resource, &items, listing["metadata"].take());
            }
            json_response(StatusCode::OK, listing)
        }
        (&Method::GET, Some(name)) => {
            let object = get(api, resource, target.namespace.as_deref(), name).await?;
            if as_table {
                let metadata = json!({ "resourceVersion": object["metadata"]["resourceVersion"] });
                return json_response(StatusCode::OK, table(api, resource, &[object], metadata));
            }
            json_response(StatusCode::OK, object)
        }
        (&Method::POST, None) => {
            let options = options("CreateOptions")?;
            let object = decode(headers, &body)?;
            check_duplicates(headers, &body, &options)?;
            let created = create_with(api, &target, object, &options).await?;
            json_response(StatusCode::CREATED, created)
        }
        (&Method::PUT, Some(name)) => {
            let options = options("UpdateOptions")?;
            let object = decode(headers, &body)?;
            check_duplicates(headers, &body, &options)?;
            let updated = update_with(api, &target, name, object, &options).await?;
            json_response(StatusCode::OK, updated)
        }
        (&Method::PATCH, Some(name)) => {
            let options = options("PatchOptions")?;
            let content_type = content_type(headers);
            let patched = patch_with(api, &target, name, &content_type, &body, &options).await?;
            json_response(StatusCode::OK, patched)
        }
        (&Method::DELETE, Some(name)) => {
            let options = delete_options(query, headers, &body)?;
            json_response(StatusCode::OK, delete(api, &target, name, &options).await?)
        }
        (&Method::DELETE, None) => {
            let options = delete_options(query, headers, &body)?;
            json_response(
                StatusCode::OK,
                delete_collection(api, &target, query, &options).await?,
            )
        }
        _ => Err(ApiError::method_not_allowed(
            method.as_str(),
            resource.plural,
        )),
    }
}

/// A delete's `DeleteOptions` (its body, if it has one), with a `dryRun` of the query folded
/// in: [`delete`] reads them all from the body's form.
fn delete_options(query: &Query, headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    let mut options = if body.is_empty() {
        Value::Null
    } else {
        decode(headers, body)?
    };
    if WriteOptions::for_delete(query, &options)?.dry_run {
        options["dryRun"] = json!(["All"]);
    }
    Ok(options)
}

/// The server-side table of `objects`: the kind's columns (a custom kind's printer columns).
fn table(api: &Api, resource: &ResourceType, objects: &[Value], metadata: Value) -> Value {
    api.registry
        .strategy_for(resource)
        .table(resource, objects, metadata)
}

/// A custom object is pruned and defaulted by its schema; the unknown fields it had, or those
/// a client's built-in object has (found by its OpenAPI schema, and kept), are reported as the
/// request's `fieldValidation` says.
fn prune_and_check_fields(
    strategy: &dyn KindStrategy,
    resource: &ResourceType,
    object: &mut Value,
    options: &WriteOptions,
) -> Result<()> {
    let unknown = strategy.prune_and_default(object);
    options.unknown_fields(&unknown)?;
    if options.validates_fields() {
        options.unknown_fields(&strategy.unknown_fields(resource, object))?;
    }
    Ok(())
}

/// Defaults an object again after admission webhooks changed it (kube-apiserver decodes a
/// patched object with defaulting); what identifies the object stays as it was.
fn redefault(
    strategy: &dyn KindStrategy,
    resource: &ResourceType,
    object: &mut Value,
    old: Option<&Value>,
) {
    let before = object["metadata"].clone();
    strategy.default(resource, object);
    strategy.prune_and_default(object);
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        let kept = old.map_or(&before[field], |o| &o["metadata"][field]);
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        if kept.is_null() {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove(field);
            }
        } else {
            object["metadata"][field] = kept.clone();
        }
    }
}

/// Reports the fields a JSON body names twice, as the request's `fieldValidation` says (a
/// YAML body with a duplicate key does not decode at all).
fn check_duplicates(headers: &HeaderMap, body: &[u8], options: &WriteOptions) -> Result<()> {
    if options.validates_fields()
        && matches!(content_type(headers).as_str(), "application/json" | "")
    {
        options.duplicate_fields(&apiary_api::duplicates::duplicate_fields(body))?;
    }
    Ok(())
}

/// Records a client's write of `new` (over `old`) in its `managedFields`: the writer owns what
/// it changed. The server's own writes (no manager) are not tracked.
fn track(
    strategy: &dyn KindStrategy,
    resource: &ResourceType,
    old: &Value,
    new: &mut Value,
    options: &WriteOptions,
    subresource: Option<&str>,
) {
    let Some(manager) = options.manager() else {
        return;
    };
    let api_version = resource.api_version();
    let writer = apiary_api::apply::Writer {
        manager,
        api_version: &api_version,
        time: &now(),
        subresource,
    };
    apiary_api::apply::record_update(old, new, &writer, strategy.apply_shape());
}

fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| super::write_options::parse_bool(v))
}

fn json_response(code: StatusCode, value: Value) -> Result<Response> {
    Ok((code, axum::Json(value)).into_response())
}

pub(crate) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Decodes a request body (JSON, YAML or Kubernetes protobuf) into an object.
pub(crate) fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    let content_type = content_type(headers);
    let value: Value = match content_type.as_str() {
        apiary_api::protobuf::MEDIA_TYPE => apiary_api::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!("error decoding protobuf request body: {e}"))
        })?,
        "application/json" | "" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON request body: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body)?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// A YAML (or JSON) body, whose aliases may not expand it past the limit its bytes are held to.
fn decode_yaml(body: &[u8]) -> Result<Value> {
    apiary_api::yaml::from_slice_bounded(body, super::MAX_REQUEST_BODY_BYTES).map_err(|e| match e {
        apiary_api::yaml::Error::ExcessiveAliasing { limit } => ApiError::request_entity_too_large(
            format_args!("limit is {limit}: the YAML body's aliases expand past it"),
        ),
        apiary_api::yaml::Error::Syntax(e) => {
            ApiError::bad_request(format!("error decoding YAML request body: {e}"))
        }
    })
}

/// A stored object as clients see it: with its resource version, kind and apiVersion.
pub(super) fn present(resource: &ResourceType, kv: &KeyValue) -> Result<Value> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::storage(&store::Error::Corrupt(format!("{}: {e}", kv.key))))?;
    object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    fill_status(resource, &mut object);
    apiary_api::resource::stored_to_served(resource, &mut object);
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version());
    Ok(object)
}

/// An object stored without a status (before it had one on create, or after a status write
/// that cleared it) is served with its kind's empty status, as Kubernetes serves every object.
fn fill_status(resource: &ResourceType, object: &mut Value) {
    if object.get("status").is_none()
        && let Some(status) = super::defaults::initial_status(resource.kind)
    {
        object["status"] = status;
    }
}

/// The stored form: no resource version (the store's revision is it) and no nulls (Kubernetes
/// omits unset fields, so `null` is never a stored value).
fn to_stored(object: &Value) -> Vec<u8> {
    serde_json::to_vec(&stored_form(object.clone())).expect("a JSON value always serializes")
}

/// `object` as [`to_stored`] encodes it.
fn stored_form(mut object: Value) -> Value {
    apiary_api::meta::strip_nulls(&mut object);
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    object
}

/// What [`present`] makes of `kv`, when `kv` was just written from `stored` (its
/// [`stored_form`]): the written object is not decoded back.
fn present_written(resource: &ResourceType, stored: Value, kv: &KeyValue) -> Value {
    present_stored(resource, stored, json!(kv.mod_revision.to_string()))
}

/// What [`present`] makes of `stored` (a [`stored_form`]) at resource version `revision`.
fn present_stored(resource: &ResourceType, mut stored: Value, revision: Value) -> Value {
    stored["metadata"]["resourceVersion"] = revision;
    fill_status(resource, &mut stored);
    apiary_api::resource::stored_to_served(resource, &mut stored);
    stored["kind"] = json!(resource.kind);
    stored["apiVersion"] = json!(resource.api_version());
    stored
}

/// What a dry-run write answers: the object as it would have been stored, with the resource
/// version it had (`None` for a create: it has none yet).
fn present_dry_run(resource: &ResourceType, mut stored: Value, revision: Option<&Value>) -> Value {
    if let Some(revision) = revision.filter(|r| r.is_string()) {
        stored["metadata"]["resourceVersion"] = revision.clone();
    }
    stored["kind"] = json!(resource.kind);
    stored["apiVersion"] = json!(resource.api_version());
    fill_status(resource, &mut stored);
    stored
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn store_err(resource: &ResourceType, name: &str, e: store::Error) -> ApiError {
    match e {
        store::Error::AlreadyExists { .. } => {
            ApiError::already_exists(resource.plural, resource.group, name)
        }
        store::Error::NotFound { .. } => ApiError::not_found(resource.plural, resource.group, name),
        store::Error::Conflict { .. } => ApiError::conflict(
            resource.plural,
            resource.group,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        other => ApiError::storage(&other),
    }
}

fn parse_revision(value: &str) -> Result<Revision> {
    value.parse::<Revision>().map_err(|_| {
        ApiError::bad_request(format!("invalid resourceVersion {value:?}: not a number"))
    })
}

fn streaming(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static headers are valid")
}

/// Checks `apiVersion`/`kind` of a body against the resource it is sent to.
fn check_type(resource: &ResourceType, object: &Value) -> Result<()> {
    if let Some(kind) = object["kind"].as_str().filter(|k| !k.is_empty())
        && kind != resource.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            resource.kind
        )));
    }
    if let Some(version) = object["apiVersion"].as_str().filter(|v| !v.is_empty())
        && version != resource.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({version}) does not match the expected API version ({})",
            resource.api_version()
        )));
    }
    Ok(())
}

fn object_revision(object: &Value) -> Result<Option<Revision>> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|rv| !rv.is_empty())
        .map(parse_revision)
        .transpose()
}

fn check_name(object: &Value, name: &str) -> Result<()> {
    match object["metadata"]["name"].as_str() {
        Some(body_name) if !body_name.is_empty() && body_name != name => {
            Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )))
        }
        _ => Ok(()),
    }
}

/// Retries a read-modify-write until it applies to the latest object, unless the client pinned
/// a resource version (then a concurrent change is its conflict to resolve).
const MAX_ATTEMPTS: usize = 8;

fn conflict(target: &Target, name: &str) -> ApiError {
    ApiError::conflict(
        target.resource.plural,
        target.resource.group,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}
