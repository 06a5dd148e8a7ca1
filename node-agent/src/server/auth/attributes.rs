//! What a request to the agent asks for, in the API's terms: the kubelet's
//! `nodeAuthorizerAttributesGetter` (`pkg/kubelet/server/auth.go`). Every request is a verb on
//! the node's `nodes/<subresource>`, so that RBAC on Node subresources decides who may use an
//! agent: `nodes/proxy` by default (exec, logs of containers, the data-plane views), finer
//! subresources for the paths the kubelet gives them.

use axum::http::Method;

/// The attributes of one request, as a SubjectAccessReview's `resourceAttributes`: always
/// resource `nodes` in the core group, version `v1`, no namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// From the HTTP method; empty for methods the kubelet gives no verb (nobody is granted it).
    pub verb: &'static str,
    /// `proxy`, or `stats`, `metrics`, `log`, `spec` for their paths.
    pub subresource: &'static str,
    /// The node's name.
    pub name: String,
}

/// Paths with a subresource of their own, and everything under them.
const SUBRESOURCES: &[(&str, &str)] = &[
    ("/stats", "stats"),
    ("/metrics", "metrics"),
    ("/logs", "log"),
    ("/spec", "spec"),
];

impl Attributes {
    /// The attributes of `method path` on the agent of node `node_name`.
    pub fn of(method: &Method, path: &str, node_name: &str) -> Self {
        let verb = match *method {
            Method::POST => "create",
            Method::GET => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        };
        let subresource = SUBRESOURCES
            .iter()
            .find(|(prefix, _)| is_subpath(path, prefix))
            .map_or("proxy", |(_, subresource)| subresource);
        Self {
            verb,
            subresource,
            name: node_name.to_owned(),
        }
    }
}

/// `path` is `prefix` or below it (`/metricsfoo` is not below `/metrics`).
fn is_subpath(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, path: &str) -> (&'static str, &'static str) {
        let a = Attributes::of(&method, path, "n1");
        assert_eq!(a.name, "n1");
        (a.verb, a.subresource)
    }

    #[test]
    fn the_method_is_the_verb() {
        assert_eq!(of(Method::GET, "/exec/ns/p/c").0, "get");
        assert_eq!(of(Method::POST, "/exec/ns/p/c").0, "create");
        assert_eq!(of(Method::PUT, "/x").0, "update");
        assert_eq!(of(Method::PATCH, "/x").0, "patch");
        assert_eq!(of(Method::DELETE, "/x").0, "delete");
        // No verb: no role grants it, so such a request is refused.
        assert_eq!(of(Method::HEAD, "/x").0, "");
        assert_eq!(of(Method::OPTIONS, "/x").0, "");
    }

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        for (path, subresource) in [
            ("/containerLogs/default/web/app", "proxy"),
            ("/exec/default/web/app", "proxy"),
            ("/apiary/v1/services", "proxy"),
            ("/apiary/v1/flows", "proxy"),
            ("/apiary/v1/policy/trace", "proxy"),
            ("/", "proxy"),
            ("/metrics", "metrics"),
            ("/metrics/cadvisor", "metrics"),
            ("/stats", "stats"),
            ("/stats/summary", "stats"),
            ("/logs/", "log"),
            ("/logs/syslog", "log"),
            ("/spec/", "spec"),
            // Only whole path segments count.
            ("/metricsfoo", "proxy"),
            ("/statsx/summary", "proxy"),
            ("/logsx", "proxy"),
            ("/apiary/metrics", "proxy"),
        ] {
            assert_eq!(of(Method::GET, path).1, subresource, "{path}");
        }
    }
}
