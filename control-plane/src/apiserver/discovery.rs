//! Discovery (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`), `/version`, and the minimal
//! OpenAPI v3 documents kubectl reads to learn that the server validates fields itself.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    Api,
    error::ApiError,
    resources::{ResourceType, Resources},
};

macro_rules! resource {
    ($group:literal, $version:literal, $plural:literal, $kind:literal, $namespaced:literal, [$($sub:literal),*]) => {
        &ResourceType {
            group: $group,
            version: $version,
            plural: $plural,
            kind: $kind,
            namespaced: $namespaced,
            subresources: &[$($sub),*],
        }
    };
}

/// Every type the server serves.
static SERVED: &[&ResourceType] = &[
    resource!(
        "",
        "v1",
        "namespaces",
        "Namespace",
        false,
        ["status", "finalize"]
    ),
    resource!("", "v1", "pods", "Pod", true, ["status", "binding"]),
    resource!("", "v1", "services", "Service", true, ["status"]),
    resource!("", "v1", "endpoints", "Endpoints", true, []),
    resource!("", "v1", "configmaps", "ConfigMap", true, []),
    resource!("", "v1", "secrets", "Secret", true, []),
    resource!("", "v1", "nodes", "Node", false, ["status"]),
    resource!("", "v1", "events", "Event", true, []),
    resource!("", "v1", "serviceaccounts", "ServiceAccount", true, []),
    resource!(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        ["status", "scale"]
    ),
    resource!(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        true,
        ["status", "scale"]
    ),
    resource!(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        ["status", "scale"]
    ),
    resource!("apps", "v1", "daemonsets", "DaemonSet", true, ["status"]),
    resource!("batch", "v1", "jobs", "Job", true, ["status"]),
    resource!("batch", "v1", "cronjobs", "CronJob", true, ["status"]),
    resource!(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        []
    ),
    resource!(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        []
    ),
    resource!("coordination.k8s.io", "v1", "leases", "Lease", true, []),
];

/// Short names and categories, as Kubernetes advertises them.
fn short_names(plural: &str) -> &'static [&'static str] {
    match plural {
        "namespaces" => &["ns"],
        "pods" => &["po"],
        "services" => &["svc"],
        "endpoints" => &["ep"],
        "configmaps" => &["cm"],
        "nodes" => &["no"],
        "events" => &["ev"],
        "serviceaccounts" => &["sa"],
        "deployments" => &["deploy"],
        "replicasets" => &["rs"],
        "statefulsets" => &["sts"],
        "daemonsets" => &["ds"],
        "cronjobs" => &["cj"],
        "networkpolicies" => &["netpol"],
        _ => &[],
    }
}

fn in_category_all(plural: &str) -> bool {
    matches!(
        plural,
        "pods"
            | "services"
            | "deployments"
            | "replicasets"
            | "statefulsets"
            | "daemonsets"
            | "jobs"
            | "cronjobs"
    )
}

/// The served types.
pub fn served_resources() -> Resources {
    Resources::new(SERVED.to_vec())
}

/// The groups other than core, in the order discovery lists them.
fn group_names(resources: &Resources) -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in resources.all() {
        if !r.group.is_empty() && !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn api_resource_list(resources: &Resources, group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in resources
        .all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.kind.to_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !short_names(r.plural).is_empty() {
            entry["shortNames"] = json!(short_names(r.plural));
        }
        if in_category_all(r.plural) {
            entry["categories"] = json!(["all"]);
        }
        list.push(entry);
        for sub in r.subresources {
            let (kind, verbs): (&str, &[&str]) = match *sub {
                "scale" => ("Scale", &["get", "patch", "update"]),
                "binding" => ("Binding", &["create"]),
                "finalize" => (r.kind, &["update"]),
                _ => (r.kind, &["get", "patch", "update"]),
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if *sub == "scale" {
                entry["group"] = json!("autoscaling");
                entry["version"] = json!("v1");
            }
            list.push(entry);
        }
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

fn group_json(group: &str) -> Value {
    json!({
        "name": group,
        "versions": [{ "groupVersion": format!("{group}/v1"), "version": "v1" }],
        "preferredVersion": { "groupVersion": format!("{group}/v1"), "version": "v1" },
    })
}

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-apiary.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    }))
}

pub async fn core_versions() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "" }],
    }))
}

pub async fn groups(State(api): State<Arc<Api>>) -> Json<Value> {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": group_names(&api.resources).into_iter().map(group_json).collect::<Vec<_>>(),
    }))
}

pub async fn group(State(api): State<Arc<Api>>, Path(group): Path<String>) -> Response {
    if group_names(&api.resources).contains(&group.as_str()) {
        let mut body = group_json(&group);
        body["kind"] = json!("APIGroup");
        body["apiVersion"] = json!("v1");
        Json(body).into_response()
    } else {
        ApiError::no_route(&format!("/apis/{group}")).into_response()
    }
}

pub async fn core_resources(State(api): State<Arc<Api>>) -> Response {
    Json(api_resource_list(&api.resources, "", "v1").expect("core is served")).into_response()
}

pub async fn group_resources(
    State(api): State<Arc<Api>>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    match api_resource_list(&api.resources, &group, &version) {
        Some(list) => Json(list).into_response(),
        None => ApiError::no_route(&format!("/apis/{group}/{version}")).into_response(),
    }
}

/// No OpenAPI v2: kubectl then computes apply patches from its built-in types.
pub async fn openapi_v2() -> Response {
    ApiError::no_route("/openapi/v2").into_response()
}

/// The OpenAPI v3 index: one document per group version.
pub async fn openapi_v3(State(api): State<Arc<Api>>) -> Json<Value> {
    let mut paths = serde_json::Map::new();
    let mut add = |gv_path: String| {
        let url = format!("/openapi/v3/{gv_path}");
        paths.insert(gv_path, json!({ "serverRelativeURL": url }));
    };
    add("api/v1".to_owned());
    for group in group_names(&api.resources) {
        add(format!("apis/{group}/v1"));
    }
    Json(json!({ "paths": paths }))
}

/// One group version's document: for each type, the PATCH operation with the
/// `fieldValidation` parameter, which tells kubectl the server validates fields itself (so
/// `kubectl apply` needs no `--validate=false`).
pub async fn openapi_v3_group(State(api): State<Arc<Api>>, Path(path): Path<String>) -> Response {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", version] => (String::new(), (*version).to_owned()),
        ["apis", group, version] => ((*group).to_owned(), (*version).to_owned()),
        _ => return ApiError::no_route(&format!("/openapi/v3/{path}")).into_response(),
    };
    let types: Vec<&ResourceType> = api
        .resources
        .all()
        .iter()
        .copied()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if types.is_empty() {
        return ApiError::no_route(&format!("/openapi/v3/{path}")).into_response();
    }
    let mut paths = serde_json::Map::new();
    for r in types {
        let base = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let gvk = json!({ "group": r.group, "version": r.version, "kind": r.kind });
        let operation = |id: &str| {
            json!({
                "operationId": format!("{id}{}", r.kind),
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    { "name": "dryRun", "in": "query", "schema": { "type": "string" } },
                    { "name": "fieldManager", "in": "query", "schema": { "type": "string" } },
                    { "name": "fieldValidation", "in": "query", "schema": { "type": "string" } },
                ],
                "requestBody": { "content": {
                    "application/json-patch+json": {},
                    "application/merge-patch+json": {},
                } },
                "responses": { "200": { "description": "OK" } },
            })
        };
        paths.insert(
            item,
            json!({ "patch": operation("patch"), "put": operation("replace") }),
        );
    }
    (
        StatusCode::OK,
        Json(json!({
            "openapi": "3.0.0",
            "info": { "title": "Apiary", "version": env!("CARGO_PKG_VERSION") },
            "paths": paths,
            "components": { "schemas": {} },
        })),
    )
        .into_response()
}
