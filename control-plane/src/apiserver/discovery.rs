//! Discovery (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`) and `/version`; the OpenAPI
//! documents are [`super::openapi`]'s.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use apiary_api::resource;
use axum::http::{HeaderMap, header};

use super::{Api, error::ApiError};

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
