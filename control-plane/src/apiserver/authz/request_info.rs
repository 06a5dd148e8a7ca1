//! Kubernetes' request attributes (`k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`):
//! what an HTTP request does, in the terms RBAC rules speak.

/// What a request asks to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// `false` for non-resource paths (`/healthz`, `/api`, `/apis/apps/v1`).
    pub is_resource_request: bool,
    /// The URL path, for non-resource requests.
    pub path: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or a
    /// lowercased HTTP method for non-resource requests.
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl RequestInfo {
    /// kube-apiserver's long-running requests (`BasicLongRunningRequestCheck`): watches,
    /// proxies, and the streaming subresources. Timeouts and in-flight limits leave them out.
    pub fn is_long_running(&self) -> bool {
        matches!(self.verb.as_str(), "watch" | "proxy")
            || matches!(
                self.subresource.as_str(),
                "attach" | "exec" | "proxy" | "log" | "portforward"
            )
    }
}

/// The attributes of `request`, parsed once: the first layer that asks (the audit log, the
/// in-flight limit, authorization) keeps them in the request's extensions for the others.
pub fn of(request: &mut axum::extract::Request) -> std::sync::Arc<RequestInfo> {
    if let Some(info) = request.extensions().get::<std::sync::Arc<RequestInfo>>() {
        return std::sync::Arc::clone(info);
    }
    let info = std::sync::Arc::new(parse(
        request.method().as_str(),
        request.uri().path(),
        request.uri().query(),
        is_websocket(request.headers()),
    ));
    request
        .extensions_mut()
        .insert(std::sync::Arc::clone(&info));
    info
}

/// Whether a request asks to upgrade to a WebSocket.
pub fn is_websocket(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Subresources of a namespace that are not namespaced resources (`namespaces/{name}/status`).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// The attributes of `method path?query`. `websocket` says the request is an upgrade: a
/// WebSocket `GET` of `pods/exec`, `attach` or `portforward` needs `create`, as since
/// Kubernetes 1.31.
pub fn parse(method: &str, path: &str, query: Option<&str>, websocket: bool) -> RequestInfo {
    let mut info = RequestInfo {
        path: path.to_owned(),
        verb: method.to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 {
        return info;
    }
    let mut rest: &[&str] = match parts[0] {
        "api" => &parts[1..],
        "apis" if parts.len() >= 4 => {
            info.api_group = parts[1].to_owned();
            &parts[2..]
        }
        _ => return info,
    };
    info.is_resource_request = true;
    info.api_version = rest[0].to_owned();
    rest = &rest[1..];
    let special = matches!(rest[0], "watch" | "proxy");
    if special {
        if rest.len() < 2 {
            // Kubernetes fails such a request as unparseable; as a non-resource request it
            // is only what RBAC allows on its path.
            return RequestInfo {
                is_resource_request: false,
                path: path.to_owned(),
                verb: method.to_ascii_lowercase(),
                ..RequestInfo::default()
            };
        }
        info.verb = rest[0].to_owned();
        rest = &rest[1..];
    } else {
        info.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_owned();
    }
    if rest[0] == "namespaces" && rest.len() > 1 {
        info.namespace = rest[1].to_owned();
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    if rest.len() >= 3 && info.verb != "proxy" {
        info.subresource = rest[2].to_owned();
    }
    if rest.len() >= 2 {
        info.name = rest[1].to_owned();
    }
    info.resource = rest[0].to_owned();
    let query: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if info.name.is_empty() && info.verb == "get" {
        let watch = param("watch")
            .is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "false" | "0" | ""));
        info.verb = if watch { "watch" } else { "list" }.to_owned();
        // A list of one object by name (`fieldSelector=metadata.name=x`) is about that object.
        if let Some(selector) = param("fieldSelector") {
            let name = selector.split(',').find_map(|t| {
                t.strip_prefix("metadata.name==")
                    .or_else(|| t.strip_prefix("metadata.name="))
            });
            if let Some(name) = name
                && !selector.contains("metadata.name!=")
                && apiary_api::validation::is_valid_path_segment_name(name).is_empty()
                && !name.is_empty()
            {
                info.name = name.to_owned();
            }
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".to_owned();
    }
    if websocket
        && info.verb == "get"
        && info.resource == "pods"
        && matches!(info.subresource.as_str(), "exec" | "attach" | "portforward")
    {
        info.verb = "create".to_owned();
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, path: &str, query: Option<&str>) -> RequestInfo {
        parse(method, path, query, false)
    }

    #[test]
    fn resource_requests() {
        let i = p("GET", "/api/v1/namespaces/default/pods", None);
        assert!(i.is_resource_request);
        assert_eq!(
            (
                i.verb.as_str(),
                i.api_group.as_str(),
                i.namespace.as_str(),
                i.resource.as_str(),
                i.name.as_str()
            ),
            ("list", "", "default", "pods", "")
        );
        let i = p("GET", "/api/v1/pods", Some("watch=true&resourceVersion=5"));
        assert_eq!((i.verb.as_str(), i.namespace.as_str()), ("watch", ""));
        let i = p("GET", "/api/v1/watch/namespaces/ns/pods/web", None);
        assert_eq!(
            (i.verb.as_str(), i.name.as_str(), i.resource.as_str()),
            ("watch", "web", "pods")
        );
        let i = p(
            "POST",
            "/api/v1/namespaces/ns/pods/web/exec",
            Some("command=sh"),
        );
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.subresource.as_str(),
                i.name.as_str()
            ),
            ("create", "pods", "exec", "web")
        );
        assert_eq!(
            parse("GET", "/api/v1/namespaces/ns/pods/web/exec", None, true).verb,
            "create"
        );
        let i = p("GET", "/api/v1/namespaces/ns/pods/web/log", None);
        assert_eq!((i.verb.as_str(), i.subresource.as_str()), ("get", "log"));
        let i = p(
            "PUT",
            "/apis/apps/v1/namespaces/ns/deployments/web/scale",
            None,
        );
        assert_eq!(
            (
                i.verb.as_str(),
                i.api_group.as_str(),
                i.resource.as_str(),
                i.subresource.as_str()
            ),
            ("update", "apps", "deployments", "scale")
        );
        let i = p("PATCH", "/api/v1/nodes/n1/status", None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.namespace.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str()
            ),
            ("patch", "", "nodes", "n1", "status")
        );
        let i = p("DELETE", "/api/v1/namespaces/ns/pods", None);
        assert_eq!(i.verb, "deletecollection");
        let i = p("DELETE", "/api/v1/namespaces/ns", None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.namespace.as_str()
            ),
            ("delete", "namespaces", "ns", "ns")
        );
        let i = p("PUT", "/api/v1/namespaces/ns/finalize", None);
        assert_eq!(
            (i.resource.as_str(), i.name.as_str(), i.subresource.as_str()),
            ("namespaces", "ns", "finalize")
        );
        let i = p(
            "GET",
            "/api/v1/namespaces/ns/pods",
            Some("fieldSelector=metadata.name%3Dweb"),
        );
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("list", "web"));
        let i = p("GET", "/api/v1/nodes/n1/proxy/metrics", None);
        assert_eq!(
            (i.verb.as_str(), i.resource.as_str(), i.subresource.as_str()),
            ("get", "nodes", "proxy")
        );
        let i = p(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            None,
        );
        assert_eq!(
            (i.verb.as_str(), i.api_group.as_str(), i.resource.as_str()),
            ("create", "authorization.k8s.io", "selfsubjectaccessreviews")
        );
    }

    #[test]
    fn non_resource_requests() {
        for path in [
            "/healthz",
            "/version",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/openapi/v2",
            "/foo/bar/baz",
        ] {
            let i = p("GET", path, None);
            assert!(!i.is_resource_request, "{path}");
            assert_eq!(i.verb, "get");
            assert_eq!(i.path, path);
        }
        assert_eq!(p("POST", "/foo", None).verb, "post");
    }
}
