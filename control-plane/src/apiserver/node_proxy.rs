//! `nodes/proxy`: `GET /api/v1/nodes/{name}/proxy/{path}` is `GET /{path}` on the node's agent
//! (its kubelet-style server), as kube-apiserver proxies to the kubelet. The query goes along as
//! the client wrote it; the agent's status, headers and body come back as the agent sent them,
//! streamed. `kubectl get --raw /api/v1/nodes/N/proxy/apiary/v1/services` reads a node's
//! service maps this way (`apiary net services`).

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{self, HeaderMap, HeaderName, Uri, header},
    response::{IntoResponse as _, Response},
};

use super::{Api, error::ApiError, objects, streams::AgentEndpoint};

/// Request headers the agent sees as the client sent them (authorization is the API server's).
const FORWARDED_REQUEST_HEADERS: &[HeaderName] = &[header::ACCEPT];

/// Response headers that describe one hop only: the API server's own connection sets them.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
];

/// `GET /api/v1/nodes/{name}/proxy[/{path}]`
pub async fn proxy(State(api): State<Arc<Api>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let (name, path) = split(uri.path()).ok_or_else(|| ApiError::no_route(uri.path()))?;
        let nodes = api
            .resources
            .get("", "v1", "nodes")
            .expect("nodes are served");
        let node = objects::get(&api, nodes, None, &name).await?;
        let agent = AgentEndpoint::of(&node).ok_or_else(|| {
            ApiError::service_unavailable(format!(
                "node {name} has no InternalIP address to reach its agent at"
            ))
        })?;
        let mut upstream = http::Request::get(agent.uri(&path, uri.query().unwrap_or_default()));
        for name in FORWARDED_REQUEST_HEADERS {
            for value in headers.get_all(name) {
                upstream = upstream.header(name, value);
            }
        }
        let upstream = upstream
            .body(Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let response = agent
            .send(&api, upstream)
            .await
            .map_err(|e| ApiError::service_unavailable(e.0))?;
        let (mut parts, body) = response.into_parts();
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, Body::new(body)))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| e.into_response())
}

/// The node's name and the path on its agent (`/` for none) of a `nodes/proxy` request path;
/// the agent's path stays as the client encoded it.
fn split(request_path: &str) -> Option<(String, String)> {
    let rest = request_path.strip_prefix("/api/v1/nodes/")?;
    let (name, rest) = rest.split_once('/')?;
    let path = rest.strip_prefix("proxy")?;
    if !(path.is_empty() || path.starts_with('/')) || name.is_empty() {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    Some((name.to_owned(), path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_after_proxy_goes_to_the_agent() {
        assert_eq!(
            split("/api/v1/nodes/n1/proxy/apiary/v1/services"),
            Some(("n1".into(), "/apiary/v1/services".into()))
        );
        assert_eq!(
            split("/api/v1/nodes/n1/proxy"),
            Some(("n1".into(), "/".into()))
        );
        assert_eq!(
            split("/api/v1/nodes/n1/proxy/"),
            Some(("n1".into(), "/".into()))
        );
        // Escapes in the agent's path stay as they are.
        assert_eq!(
            split("/api/v1/nodes/n1/proxy/a%20b"),
            Some(("n1".into(), "/a%20b".into()))
        );
        assert_eq!(split("/api/v1/nodes/n1/proxyx"), None);
        assert_eq!(split("/api/v1/nodes/n1/status"), None);
        assert_eq!(split("/api/v1/nodes//proxy"), None);
    }
}
