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

use apiary_api::resource;
use axum::http::{HeaderMap, header};

use super::{Api, error::ApiError, resources::ResourceType};

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

pub async fn core_versions(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated(resource::aggregated_discovery(&api.resources.all(), true));
    }
    Json(resource::api_versions("")).into_response()
}

pub async fn groups(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let served = api.resources.all();
    if wants_aggregated(&headers) {
        return aggregated(resource::aggregated_discovery(&served, false));
    }
    Json(resource::api_group_list(&served)).into_response()
}

/// kubectl asks for aggregated discovery first, which saves it a request per group version.
fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|accept| accept.split(',').next())
        .is_some_and(|first| first.contains("as=APIGroupDiscoveryList"))
}

fn aggregated(body: Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            resource::AGGREGATED_DISCOVERY_CONTENT_TYPE,
        )],
        Json(body),
    )
        .into_response()
}

pub async fn group(State(api): State<Arc<Api>>, Path(group): Path<String>) -> Response {
    match resource::api_group(&api.resources.all(), &group) {
        Some(body) => Json(body).into_response(),
        None => ApiError::no_route(&format!("/apis/{group}")).into_response(),
    }
}

pub async fn core_resources() -> Response {
    let core = resource::api_resource_list(&resource::built_in(), "", "v1");
    Json(core.expect("core is served")).into_response()
}

pub async fn group_resources(
    State(api): State<Arc<Api>>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    match resource::api_resource_list(&api.resources.all(), &group, &version) {
        Some(list) => Json(list).into_response(),
        None => ApiError::no_route(&format!("/apis/{group}/{version}")).into_response(),
    }
}

/// No OpenAPI v2: kubectl then computes apply patches from its built-in types.
pub async fn openapi_v2() -> Response {
    ApiError::no_route("/openapi/v2").into_response()
}

/// The OpenAPI v3 index: one document per group version.
pub async fn openapi_v3() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    let mut add = |gv_path: String| {
        let url = format!("/openapi/v3/{gv_path}");
        paths.insert(gv_path, json!({ "serverRelativeURL": url }));
    };
    add("api/v1".to_owned());
    for group in resource::GROUPS {
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
        .into_iter()
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
