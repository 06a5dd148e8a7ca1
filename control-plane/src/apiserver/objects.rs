//! The verbs on stored objects: get, list, watch, create, update, patch, delete and
//! deletecollection, for every resource type, on the objects' JSON.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`: the store's `mod_revision` is
//! the resource version, set on the way out.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::{
    Api,
    admission::webhooks,
    allocator, defaults,
    error::ApiError,
    path::Target,
    resources::{ResourceType, StorageKeys as _, is_built_in},
    selectors::{FieldSelector, LabelSelector},
    strategy::{Deletion, FOREGROUND_FINALIZER},
    tables,
    write_options::WriteOptions,
};
use crate::store::{self, KeyValue, ListOptions, Revision};

type Query = HashMap<String, String>;
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

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
    match (method, target.name.as_deref()) {
        (&Method::GET, None) if is_true(query.get("watch")) => {
            watch(api, &target, query, as_table).await
        }
        (&Method::GET, None) => {
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

/// The server-side table of `objects`: a custom kind's printer columns, or a built-in's.
fn table(api: &Api, resource: &ResourceType, objects: &[Value], metadata: Value) -> Value {
    match api.resources.custom.of(resource) {
        Some(custom) => tables::custom_table(&custom.columns, objects, metadata),
        None => tables::table(resource, objects, metadata),
    }
}

/// A custom object is pruned and defaulted by its schema; the unknown fields it had, or those
/// a client's built-in object has (found by its OpenAPI schema, and kept), are reported as the
/// request's `fieldValidation` says.
fn prune_and_check_fields(
    api: &Api,
    resource: &ResourceType,
    object: &mut Value,
    options: &WriteOptions,
) -> Result<()> {
    let unknown = api.strategy.prune_and_default(resource, object);
    options.unknown_fields(&unknown)?;
    if options.validates_fields() && is_built_in(resource) {
        options.unknown_fields(&super::openapi::unknown_fields(resource, object))?;
    }
    Ok(())
}

/// The list types of `resource`'s objects, for server-side apply: a custom kind's schema, or
/// the built-in table.
fn with_shape<T>(
    api: &Api,
    resource: &ResourceType,
    f: impl FnOnce(apiary_api::apply::Shape<'_>) -> T,
) -> T {
    match api.resources.custom.of(resource) {
        Some(custom) => f(apiary_api::apply::Shape::Schema(Some(&custom.schema))),
        None => f(apiary_api::apply::Shape::BUILT_IN),
    }
}

/// Records a client's write of `new` (over `old`) in its `managedFields`: the writer owns what
/// it changed. The server's own writes (no manager) are not tracked.
fn track(
    api: &Api,
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
    with_shape(api, resource, |shape| {
        let writer = apiary_api::apply::Writer {
            manager,
            api_version: &api_version,
            time: &now(),
            subresource,
        };
        apiary_api::apply::record_update(old, new, &writer, shape);
    });
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
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version());
    fill_status(resource, &mut object);
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
fn present_written(resource: &ResourceType, mut stored: Value, kv: &KeyValue) -> Value {
    stored["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    stored["kind"] = json!(resource.kind);
    stored["apiVersion"] = json!(resource.api_version());
    fill_status(resource, &mut stored);
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

pub async fn get(
    api: &Api,
    resource: &ResourceType,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value> {
    let kv = api
        .store
        .get(&resource.key(namespace, name))
        .await
        .map_err(|e| ApiError::storage(&e))?
        .ok_or_else(|| ApiError::not_found(resource.plural, resource.group, name))?;
    present(resource, &kv)
}

fn list_prefix(target: &Target) -> String {
    match &target.namespace {
        Some(ns) => format!("{}{ns}/", target.resource.key_prefix()),
        None => target.resource.key_prefix(),
    }
}

/// The opaque `continue` token: where the next page starts and the revision it reads at.
fn encode_continue(revision: Revision, after: &str) -> String {
    let token = json!({ "rv": revision, "start": after }).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

fn decode_continue(token: &str) -> Result<(Revision, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match (value["rv"].as_i64(), value["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_owned())),
        _ => Err(bad()),
    }
}

fn parse_revision(value: &str) -> Result<Revision> {
    value.parse::<Revision>().map_err(|_| {
        ApiError::bad_request(format!("invalid resourceVersion {value:?}: not a number"))
    })
}

/// Which objects a list or watch selects: its label and field selectors.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    label_selector: String,
    field_selector: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// A filter from selector strings as they appear in query parameters.
    pub fn new(label_selector: &str, field_selector: &str) -> Result<Self> {
        Ok(Self {
            label_selector: label_selector.to_owned(),
            field_selector: field_selector.to_owned(),
            labels: LabelSelector::parse(label_selector)?,
            fields: FieldSelector::parse(field_selector)?,
        })
    }

    fn from_query(query: &Query) -> Result<Self> {
        Self::new(
            query.get("labelSelector").map_or("", String::as_str),
            query.get("fieldSelector").map_or("", String::as_str),
        )
    }

    fn to_query(&self) -> Query {
        [
            ("labelSelector", &self.label_selector),
            ("fieldSelector", &self.field_selector),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }

    /// The value the field selector requires of the field at `path`, if it requires one.
    pub fn required_field(&self, path: &[&str]) -> Option<&str> {
        self.fields.required(path)
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// Lists matching objects at one revision, paging with `limit` and `continue`.
pub async fn list(api: &Api, target: &Target, query: &Query) -> Result<Value> {
    let resource = target.resource;
    let filter = Filter::from_query(query)?;
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None | Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "limit must be a non-negative integer",
            ));
        }
    };
    let (mut revision, mut after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, start) = decode_continue(token)?;
            (Some(rv), Some(start))
        }
        None => {
            let rv = query
                .get("resourceVersion")
                .filter(|rv| !rv.is_empty() && *rv != "0")
                .map(|rv| parse_revision(rv))
                .transpose()?;
            // Only `Exact` pins the read; by default (`NotOlderThan`) the latest state
            // satisfies any resource version the client has seen.
            let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
            (rv.filter(|_| exact), None)
        }
    };
    let prefix = list_prefix(target);
    let mut items = Vec::new();
    let (continue_token, remaining) = loop {
        let want = limit.map(|l| l - items.len());
        let page = api
            .store
            .list(
                &prefix,
                &ListOptions {
                    limit: want,
                    continue_after: after.clone(),
                    revision,
                },
            )
            .await
            .map_err(|e| ApiError::storage(&e))?;
        revision = Some(page.revision);
        let last_key = page.items.last().map(|kv| kv.key.clone());
        for kv in &page.items {
            let object = present(resource, kv)?;
            if filter.matches(&object) {
                items.push(object);
            }
        }
        match (page.continue_after, limit) {
            (None, _) => break (None, None),
            (Some(_), Some(limit)) if items.len() >= limit => {
                let token = encode_continue(page.revision, &last_key.unwrap_or_default());
                // Exact only without selectors: with them the store cannot count matches.
                let remaining = (filter.labels.is_empty() && filter.fields.is_empty())
                    .then_some(page.remaining)
                    .flatten();
                break (Some(token), remaining);
            }
            (Some(next), _) => after = Some(next),
        }
    };
    let mut metadata = json!({ "resourceVersion": revision.unwrap_or_default().to_string() });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// One watch event line; with `as_table`, the object is a one-row Table, as `kubectl get -w`
/// asks for.
fn watch_event(resource: &ResourceType, as_table: bool, kind: &str, object: &Value) -> Bytes {
    let table;
    let object = if as_table && kind != "ERROR" {
        let metadata = json!({ "resourceVersion": object["metadata"]["resourceVersion"] });
        table = tables::table(resource, std::slice::from_ref(object), metadata);
        &table
    } else {
        object
    };
    // `{"type":…,"object":…}` written out: the object is shared, not copied into a wrapper.
    let mut line = format!(r#"{{"type":"{kind}","object":"#).into_bytes();
    serde_json::to_writer(&mut line, object).expect("a JSON value always serializes");
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// One change seen by a watch, as Kubernetes names them.
#[derive(Debug)]
///
/// Objects are shared (`Arc`): every watcher of a change, and every cache keeping it, holds the
/// same decoded copy.
pub enum Change {
    Added(Arc<Value>),
    Modified(Arc<Value>),
    Deleted(Arc<Value>),
    /// The watch cannot go on (e.g. the watcher fell behind compaction): relist.
    Error(ApiError),
}

impl Change {
    fn into_line(self, resource: &ResourceType, as_table: bool) -> Bytes {
        match self {
            Self::Added(o) => watch_event(resource, as_table, "ADDED", &o),
            Self::Modified(o) => watch_event(resource, as_table, "MODIFIED", &o),
            Self::Deleted(o) => watch_event(resource, as_table, "DELETED", &o),
            Self::Error(e) => watch_event(resource, false, "ERROR", &e.status()),
        }
    }
}

/// A watch: the objects that matched at `revision` (when asked to start with them) and the
/// changes after it.
pub struct Watch {
    pub initial: Vec<Arc<Value>>,
    pub revision: Revision,
    pub changes: futures::stream::BoxStream<'static, Change>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("initial", &self.initial.len())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Watches the objects of `target` that `filter` selects, after `from`, or (`None`) starting
/// with every matching object. An object leaving the selection is `Deleted` to this watcher.
pub async fn watch_changes(
    api: &Api,
    target: &Target,
    filter: Filter,
    from: Option<Revision>,
) -> Result<Watch> {
    let resource = target.resource;
    let (initial, revision) = match from {
        Some(rv) => (Vec::new(), rv),
        None => {
            let query = filter.to_query();
            let mut listing = list(api, target, &query).await?;
            let rv = parse_revision(
                listing["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0"),
            )?;
            let items = listing["items"]
                .as_array_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            (items.into_iter().map(Arc::new).collect(), rv)
        }
    };
    let changes = api
        .fanout
        .watch(
            &api.store,
            &api.decoded,
            resource,
            list_prefix(target),
            filter,
            revision,
        )
        .await?;
    Ok(Watch {
        initial,
        revision,
        changes,
    })
}

/// Streams changes as newline-delimited watch events. Without a resource version (or with "0")
/// it starts with an ADDED event per existing object, as Kubernetes does.
async fn watch(api: &Arc<Api>, target: &Target, query: &Query, as_table: bool) -> Result<Response> {
    let resource = target.resource;
    let filter = Filter::from_query(query)?;
    let bookmarks = is_true(query.get("allowWatchBookmarks"));
    let send_initial_events = is_true(query.get("sendInitialEvents"));
    if send_initial_events {
        check_watch_list(query, bookmarks)?;
    }
    let from = query
        .get("resourceVersion")
        // A watch-list starts from the objects as they are, whatever version it names.
        .filter(|rv| !rv.is_empty() && *rv != "0" && !send_initial_events)
        .map(|rv| parse_revision(rv))
        .transpose()?;
    let watch = match watch_changes(api, target, filter, from).await {
        Ok(watch) => watch,
        // Kubernetes answers an expired watch with 200 and a single 410 ERROR event.
        Err(e) if e.reason == "Expired" => {
            return Ok(streaming(Body::from(
                Change::Error(e).into_line(resource, false),
            )));
        }
        Err(e) => return Err(e),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    // The newest version the watcher has been sent, for bookmarks.
    let latest = Arc::new(std::sync::atomic::AtomicI64::new(watch.revision));
    let line = {
        let latest = Arc::clone(&latest);
        move |change: Change| {
            if let Change::Added(o) | Change::Modified(o) | Change::Deleted(o) = &change
                && let Ok(Some(revision)) = object_revision(o)
            {
                latest.fetch_max(revision, std::sync::atomic::Ordering::Relaxed);
            }
            change.into_line(resource, as_table)
        }
    };
    let mut first: Vec<Bytes> = watch
        .initial
        .into_iter()
        .map(|o| line.clone()(Change::Added(o)))
        .collect();
    // With `sendInitialEvents` the initial objects end with a bookmark saying so (the
    // watch-list protocol: a list delivered as a watch).
    if send_initial_events {
        first.push(bookmark(resource, watch.revision, true));
    }
    let changes = watch.changes.map(line);
    let events: futures::stream::BoxStream<'static, Bytes> = if bookmarks {
        // Bookmarks tell the watcher how far it has come even when nothing it watches
        // changes, so that it can resume from there rather than relist.
        let ticks = futures::stream::unfold((), |()| async {
            tokio::time::sleep(BOOKMARK_INTERVAL).await;
            Some(((), ()))
        })
        .map(move |()| {
            let revision = latest.load(std::sync::atomic::Ordering::Relaxed);
            bookmark(resource, revision, false)
        });
        futures::stream::iter(first)
            .chain(futures::stream::select(changes, ticks))
            .boxed()
    } else {
        futures::stream::iter(first).chain(changes).boxed()
    };
    let lines = events.map(Ok::<_, std::convert::Infallible>);
    let body = match timeout {
        Some(t) => Body::from_stream(lines.take_until(tokio::time::sleep(t))),
        None => Body::from_stream(lines),
    };
    Ok(streaming(body))
}

/// How often a watch that allows bookmarks gets one (kube-apiserver sends one about a minute
/// apart, and before a watch times out).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// A `BOOKMARK` event: an object of the watched kind with only its resource version (and, at
/// the end of a watch-list's initial objects, the `k8s.io/initial-events-end` annotation).
fn bookmark(resource: &ResourceType, revision: Revision, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": revision.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = json!({
        "kind": resource.kind,
        "apiVersion": resource.api_version(),
        "metadata": metadata,
    });
    watch_event(resource, false, "BOOKMARK", &object)
}

/// What kube-apiserver requires of a watch with `sendInitialEvents=true`: bookmarks allowed
/// (the end of the initial events is one) and `resourceVersionMatch=NotOlderThan`.
fn check_watch_list(query: &Query, bookmarks: bool) -> Result<()> {
    let mut causes = Vec::new();
    if query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        causes.push((
            "resourceVersionMatch".to_owned(),
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".to_owned(),
        ));
    }
    if !bookmarks {
        causes.push((
            "allowWatchBookmarks".to_owned(),
            "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true".to_owned(),
        ));
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", &causes))
}

fn filter_only(query: &Query) -> Query {
    query
        .iter()
        .filter(|(k, _)| *k == "labelSelector" || *k == "fieldSelector")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn streaming(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static headers are valid")
}

/// Characters Kubernetes uses for `generateName` suffixes (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub(crate) fn generate_suffix() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
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
    api.strategy.prepare_write(resource, &mut object);
    prune_and_check_fields(api, resource, &mut object, options)?;
    // Mutating admission comes before defaults and validation, as in kube-apiserver: what
    // it adds is defaulted and validated like the rest. Its first plugin is the namespace's
    // lifecycle: nothing is created in a namespace that is missing or terminating.
    let namespace = match target.namespace.as_deref() {
        Some(ns) => Some(require_namespace(api, ns).await?),
        None => None,
    };
    super::admission::admit_create(api, resource, &mut object).await?;
    api.strategy.prepare_create(resource, &mut object)?;
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
        redefault(api, resource, &mut object, None);
    }
    api.strategy.validate(resource, &object, None)?;
    super::admission::validate(api, resource, &object, namespace.as_ref()).await?;
    super::admission::policies::validate(api, &review, &object).await?;
    webhooks::validate(api, &review, &object).await?;
    track(api, resource, &json!({}), &mut object, options, None);
    let claims = if resource.plural == "services" {
        allocator::allocate(api, &mut object).await?
    } else {
        allocator::Claims::default()
    };
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

/// Defaults an object again after admission webhooks changed it (kube-apiserver decodes a
/// patched object with defaulting); what identifies the object stays as it was.
fn redefault(api: &Api, resource: &ResourceType, object: &mut Value, old: Option<&Value>) {
    let before = object["metadata"].clone();
    if is_built_in(resource) {
        defaults::apply(resource.kind, object);
    } else {
        api.strategy.prune_and_default(resource, object);
    }
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

/// Combines an incoming object with the stored one: what a client may not change is kept, and
/// a main-resource write leaves `status` alone while a `status` write changes only `status`.
fn merge_for_update(resource: &ResourceType, sub: Option<&str>, old: &Value, new: Value) -> Value {
    let mut merged = match sub {
        _ if resource.plural == "certificatesigningrequests" => {
            super::certificates::merge_update(sub, old, new)
        }
        // The server builds a binding's object from the stored one, status included.
        Some("binding") => new,
        Some("status") => {
            let mut merged = old.clone();
            merged["status"] = new["status"].clone();
            merged
        }
        _ => {
            let mut merged = new;
            if resource.has_subresource("status") {
                merged["status"] = old["status"].clone();
            }
            merged
        }
    };
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
    let spec_changed = if is_built_in(resource) {
        old.get("spec") != merged.get("spec")
    } else {
        // A custom object's generation counts changes to anything but its metadata (and its
        // status, when that is a subresource).
        let content = |o: &Value| {
            let mut o = o.clone();
            if let Some(fields) = o.as_object_mut() {
                fields.remove("metadata");
                if resource.has_subresource("status") {
                    fields.remove("status");
                }
            }
            o
        };
        content(old) != content(&merged)
    };
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
async fn write_update(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    old: &Value,
    new: Value,
    expected: Revision,
    options: &WriteOptions,
) -> Result<Value> {
    let resource = target.resource;
    let mut merged = merge_for_update(resource, target.subresource.as_deref(), old, new);
    api.strategy.prepare_write(resource, &mut merged);
    if is_built_in(resource) {
        defaults::apply(resource.kind, &mut merged);
    }
    prune_and_check_fields(api, resource, &mut merged, options)?;
    // A binding is the scheduler's, not a client's update: webhooks see pods, not bindings.
    let review =
        (target.subresource.as_deref() != Some("binding")).then(|| super::admission::Request {
            operation: super::admission::Operation::Update,
            resource,
            subresource: target.subresource.as_deref().unwrap_or_default(),
            namespace: target.namespace.as_deref(),
            name,
            old: Some(old),
            dry_run: options.dry_run,
            namespace_object: None,
        });
    if let Some(review) = &review
        && webhooks::mutate(api, review, &mut merged).await?
    {
        redefault(api, resource, &mut merged, Some(old));
    }
    track(
        api,
        resource,
        old,
        &mut merged,
        options,
        target.subresource.as_deref(),
    );
    let released = if resource.plural == "services" && target.subresource.is_none() {
        keep_cluster_ip(old, &mut merged);
        drop_type_dependent_fields(old, &mut merged);
        allocator::reconcile_update(api, old, &mut merged).await?
    } else {
        allocator::Claims::default()
    };
    // A binding sets `spec.nodeName`, which no client update may change: it is checked as an
    // object, not as an update.
    let before = (target.subresource.as_deref() != Some("binding")).then_some(old);
    api.strategy
        .validate_through(resource, target.subresource.as_deref(), &merged, before)?;
    // Admission judges what a client changed, not what the system writes to subresources;
    // a pod whose spec is unchanged (a label added) is not judged again (as Pod Security's).
    let pod_spec_unchanged = resource.group.is_empty()
        && resource.plural == "pods"
        && old.get("spec") == merged.get("spec");
    if target.subresource.is_none() && !pod_spec_unchanged {
        super::admission::validate(api, resource, &merged, None).await?;
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
        // Ports claimed for this update alone go back; those the Service held stay held.
        let held = allocator::claims_of(old);
        allocator::claims_of(&merged)
            .without(&held)
            .release(api)
            .await;
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
        super::strategy::after_delete(api, resource, &deleted, &Value::Null, Deletion::Gone);
        return Ok(deleted);
    }
    let stored = stored_form(merged);
    let encoded = serde_json::to_vec(&stored).expect("a JSON value always serializes");
    let kv = api
        .store
        .update(&key, encoded, Some(expected))
        .await
        .map_err(|e| store_err(resource, name, e))?;
    released.release(api).await;
    Ok(present_written(resource, stored, &kv))
}

/// An update that leaves `clusterIP` out keeps the allocated one (it is immutable).
fn keep_cluster_ip(old: &Value, new: &mut Value) {
    for field in ["clusterIP", "clusterIPs"] {
        let empty = new["spec"][field].is_null() || new["spec"][field] == "";
        if empty && !old["spec"][field].is_null() {
            new["spec"][field] = old["spec"][field].clone();
        }
    }
}

/// A Service changed to a type that has no use for a field the old type had (and defaulted)
/// loses it, unless the update changed it, as Kubernetes' `dropTypeDependentFields` does: so
/// that `type: ClusterIP` applied over a LoadBalancer is valid. (NodePorts are the allocator's.)
fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let external = |svc: &Value| {
        matches!(
            svc["spec"]["type"].as_str(),
            Some("NodePort" | "LoadBalancer")
        )
    };
    let load_balancer = |svc: &Value| svc["spec"]["type"] == "LoadBalancer";
    let mut drop = Vec::new();
    if external(old) && !external(new) {
        drop.extend(["externalTrafficPolicy", "healthCheckNodePort"]);
    }
    if load_balancer(old) && !load_balancer(new) {
        drop.extend(["allocateLoadBalancerNodePorts", "loadBalancerClass"]);
    }
    for field in drop {
        if new["spec"][field] == old["spec"][field]
            && let Some(spec) = new["spec"].as_object_mut()
        {
            spec.remove(field);
        }
    }
}

/// `pods/binding`: assigns a pending pod to a node, once. What the scheduler calls.
async fn bind(
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

/// Where a scalable kind keeps its replica counts and selector: a custom kind's `scale`
/// subresource paths, or `spec.replicas`, `status.replicas` and `spec.selector` of the built-ins.
type ScalePaths = Option<apiary_api::apiextensions_v1::ScaleSubresource>;

/// The `Scale` (autoscaling/v1) view of a scalable object.
fn to_scale(object: &Value, paths: &ScalePaths) -> Value {
    let count = |path: &str| {
        super::custom_resources::json_path(object, path)
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let (spec_replicas, status_replicas, selector) = match paths {
        Some(paths) => (
            count(&paths.spec_replicas_path),
            count(&paths.status_replicas_path),
            // A custom kind's selector path holds the selector in its string form.
            paths
                .label_selector_path
                .as_deref()
                .and_then(|p| super::custom_resources::json_path(object, p))
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
async fn scale(
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
    let paths: ScalePaths = api
        .resources
        .custom
        .of(target.resource)
        .and_then(|custom| custom.scale.clone());
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
            Some(paths) => super::custom_resources::set_json_path(
                &mut new,
                &paths.spec_replicas_path,
                json!(replicas),
            ),
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

fn conflict(target: &Target, name: &str) -> ApiError {
    ApiError::conflict(
        target.resource.plural,
        target.resource.group,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
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
        let applied = with_shape(api, resource, |shape| {
            let writer = apiary_api::apply::Writer {
                manager: &manager,
                api_version: &api_version,
                time: &now(),
                subresource: target.subresource.as_deref(),
            };
            apiary_api::apply::apply(&base, &config, &writer, options.force, shape)
        })
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

/// Deletes an object as `options` (a `DeleteOptions`) say; with `dryRun: ["All"]` it answers
/// what the delete would leave and changes nothing.
pub async fn delete(api: &Arc<Api>, target: &Target, name: &str, options: &Value) -> Result<Value> {
    let resource = target.resource;
    let dry_run = options["dryRun"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v == "All"));
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
        let mut graceful = api.strategy.graceful_delete(resource, &old, options);
        if graceful && resource.plural == "pods" {
            // Only a node that exists can finish a graceful deletion (PodGC's rule): a pod
            // bound to a deleted node goes at once.
            let node = old["spec"]["nodeName"].as_str().unwrap_or_default();
            let nodes = api.resources.get("", "v1", "nodes").expect("served");
            graceful = matches!(api.store.get(&nodes.key(None, node)).await, Ok(Some(_)));
        }
        let foreground = options["propagationPolicy"].as_str() == Some("Foreground");
        let marked_already = old["metadata"]["deletionTimestamp"].is_string();
        // A pod already terminating goes at once when its grace is cut to 0 (its agent
        // finished, or `--force`); it stays marked otherwise.
        let forced = resource.plural == "pods" && marked_already && !graceful && !has_finalizers;
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
            api.strategy.prepare_delete(resource, &mut marked, options);
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
                super::strategy::after_delete(api, resource, &deleted, options, deletion);
                return Ok(deleted);
            }
            Err(store::Error::Conflict { .. }) if pinned.is_none() => continue,
            Err(e) => return Err(store_err(resource, name, e)),
        }
    }
    Err(conflict(target, name))
}

pub async fn delete_collection(
    api: &Arc<Api>,
    target: &Target,
    query: &Query,
    options: &Value,
) -> Result<Value> {
    let listing = list(api, target, &filter_only(query)).await?;
    let mut deleted = Vec::new();
    for object in listing["items"].as_array().into_iter().flatten() {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let target = Target {
            namespace: object["metadata"]["namespace"].as_str().map(str::to_owned),
            name: Some(name.to_owned()),
            ..target.clone()
        };
        match delete(api, &target, name, options).await {
            Ok(object) => deleted.push(object),
            // Someone else deleted it first: the collection is still gone.
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json!({
        "kind": format!("{}List", target.resource.kind),
        "apiVersion": target.resource.api_version(),
        "metadata": { "resourceVersion": listing["metadata"]["resourceVersion"] },
        "items": deleted,
    }))
}
