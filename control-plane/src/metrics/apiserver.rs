//! kube-apiserver's request instruments, measured by a middleware after authorization (as
//! kube-apiserver instruments its handlers, not its filters): `apiserver_request_total`,
//! `apiserver_request_duration_seconds`, `apiserver_longrunning_requests`,
//! `apiserver_registered_watchers` and `apiserver_current_inflight_requests`.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::Response,
};
use prometheus_client::metrics::gauge::Gauge;

use super::{Metrics, RequestCodeLabels, RequestKindLabels, RequestLabels, WatcherLabels};
use crate::apiserver::{
    Api,
    authz::request_info::{self, RequestInfo},
    resources::StorageKeys as _,
};

/// Non-resource paths kube-apiserver instruments, with the path as the subresource.
const INSTRUMENTED_PATHS: &[&str] = &["/healthz", "/livez", "/readyz"];

/// Subresources served by a `Connecter` in kube-apiserver: reported as `CONNECT`.
const CONNECT_SUBRESOURCES: &[&str] = &["attach", "exec", "portforward", "proxy"];

/// kube-apiserver's `CleanVerb`: the route's verb (`POST` creates, `PUT` updates), `APPLY`
/// for server-side apply, `CONNECT` for streams and proxies.
pub fn reported_verb(info: &RequestInfo, method: &str, headers: &HeaderMap) -> String {
    if !info.is_resource_request {
        return method.to_ascii_uppercase();
    }
    if info.verb == "proxy" || CONNECT_SUBRESOURCES.contains(&info.subresource.as_str()) {
        return "CONNECT".to_owned();
    }
    match info.verb.as_str() {
        "create" => "POST".to_owned(),
        "update" => "PUT".to_owned(),
        "patch" if is_apply(headers) => "APPLY".to_owned(),
        verb => verb.to_ascii_uppercase(),
    }
}

fn is_apply(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/apply-patch"))
}

/// kube-apiserver's `CleanScope`.
pub fn scope(info: &RequestInfo) -> &'static str {
    if !info.name.is_empty() || info.verb == "create" {
        "resource"
    } else if !info.namespace.is_empty() {
        "namespace"
    } else if info.is_resource_request {
        "cluster"
    } else {
        ""
    }
}

/// kube-apiserver's `cleanDryRun`: the `dryRun` values, sorted and deduplicated, joined by `,`.
pub fn dry_run(query: Option<&str>) -> String {
    let mut values: Vec<String> = query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "dryRun")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default();
    values.sort();
    values.dedup();
    values.join(",")
}

/// The labels of a request kube-apiserver would instrument: one of a served resource type (a
/// client's made-up resource names would grow the series without bound), or a health path.
pub fn labels(
    api: &Api,
    info: &RequestInfo,
    method: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<RequestLabels> {
    if info.is_resource_request {
        let resource = api
            .resources
            .get(&info.api_group, &info.api_version, &info.resource)?;
        let sub = info.subresource.as_str();
        if !sub.is_empty() && !resource.has_subresource(sub) && !CONNECT_SUBRESOURCES.contains(&sub)
        {
            return None;
        }
    } else if !INSTRUMENTED_PATHS.contains(&info.path.as_str()) {
        return None;
    }
    let subresource = if info.is_resource_request {
        info.subresource.clone()
    } else {
        info.path.clone()
    };
    Some(RequestLabels {
        verb: reported_verb(info, method, headers),
        dry_run: dry_run(query),
        group: info.api_group.clone(),
        version: info.api_version.clone(),
        resource: info.resource.clone(),
        subresource,
        scope: scope(info).to_owned(),
        component: "apiserver".to_owned(),
    })
}

/// The `request_kind` of `apiserver_current_inflight_requests` (the max-in-flight filter's
/// two pools).
pub fn request_kind(verb: &str) -> &'static str {
    if crate::apiserver::inflight::is_read_only(verb) {
        "readOnly"
    } else {
        "mutating"
    }
}

/// A request being served: recorded when the last holder lets go. Long-running requests are
/// held by their response body and, for upgraded streams, by the task that copies them (it
/// finds this in the request's extensions).
#[derive(Clone, Debug)]
pub struct InFlight(#[allow(dead_code, reason = "held for its Drop")] Arc<Measured>);

#[derive(Debug)]
struct Measured {
    metrics: &'static Metrics,
    labels: Option<RequestLabels>,
    started: Instant,
    /// Known once the handler answered.
    code: std::sync::OnceLock<StatusCode>,
    /// What to decrement when done.
    gauges: Vec<Gauge>,
}

impl Drop for Measured {
    fn drop(&mut self) {
        for gauge in &self.gauges {
            gauge.dec();
        }
        if let (Some(labels), Some(code)) = (self.labels.take(), self.code.get()) {
            self.metrics.record(labels, *code, self.started);
        }
    }
}

impl Metrics {
    /// One finished request.
    pub fn record(&self, labels: RequestLabels, code: StatusCode, started: Instant) {
        self.request_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&RequestCodeLabels {
                request: labels,
                code: code.as_u16().to_string(),
            })
            .inc();
    }
}

/// The middleware.
pub async fn instrument(State(api): State<Arc<Api>>, mut request: Request, next: Next) -> Response {
    let metrics = super::global();
    let info = request_info::of(&mut request);
    let method = request.method().as_str().to_owned();
    let labels = labels(
        &api,
        &info,
        &method,
        request.uri().query(),
        request.headers(),
    );
    let long_running = info.is_long_running();
    let mut gauges = Vec::new();
    if long_running {
        if let Some(labels) = &labels {
            gauges.push(metrics.longrunning.get_or_create_owned(labels));
            if labels.verb == "WATCH"
                && let Some(resource) =
                    api.resources
                        .get(&info.api_group, &info.api_version, &info.resource)
            {
                gauges.push(metrics.watchers.get_or_create_owned(&WatcherLabels {
                    group: info.api_group.clone(),
                    version: info.api_version.clone(),
                    kind: resource.kind.to_owned(),
                }));
            }
        }
    } else {
        gauges.push(metrics.inflight.get_or_create_owned(&RequestKindLabels {
            request_kind: request_kind(&info.verb),
        }));
    }
    for gauge in &gauges {
        gauge.inc();
    }
    let measured = Arc::new(Measured {
        metrics,
        labels,
        started: Instant::now(),
        code: std::sync::OnceLock::new(),
        gauges,
    });
    if !long_running {
        let response = next.run(request).await;
        let _ = measured.code.set(response.status());
        // Counted as the response leaves the handler: a client that reads /metrics right
        // after its answer sees its request.
        drop(measured);
        return response;
    }
    let held = InFlight(Arc::clone(&measured));
    request.extensions_mut().insert(held.clone());
    let response = next.run(request).await;
    let _ = measured.code.set(response.status());
    drop(measured);
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(Holding { body, _held: held }))
}

/// A response body that holds its request's [`InFlight`] until it ends or is dropped.
struct Holding {
    body: Body,
    _held: InFlight,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, path: &str, query: Option<&str>) -> RequestInfo {
        request_info::parse(method, path, query, false)
    }

    fn verb(method: &str, path: &str, query: Option<&str>, content_type: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        reported_verb(&info(method, path, query), method, &headers)
    }

    #[test]
    fn verbs_are_kube_apiservers() {
        let json = "application/json";
        assert_eq!(verb("GET", "/api/v1/namespaces/a/pods", None, json), "LIST");
        assert_eq!(
            verb("GET", "/api/v1/namespaces/a/pods/p", None, json),
            "GET"
        );
        assert_eq!(verb("GET", "/api/v1/pods", Some("watch=1"), json), "WATCH");
        assert_eq!(
            verb("POST", "/api/v1/namespaces/a/pods", None, json),
            "POST"
        );
        assert_eq!(
            verb("PUT", "/api/v1/namespaces/a/pods/p", None, json),
            "PUT"
        );
        assert_eq!(
            verb(
                "PATCH",
                "/api/v1/namespaces/a/pods/p",
                None,
                "application/merge-patch+json"
            ),
            "PATCH"
        );
        assert_eq!(
            verb(
                "PATCH",
                "/api/v1/namespaces/a/pods/p",
                None,
                "application/apply-patch+yaml"
            ),
            "APPLY"
        );
        assert_eq!(
            verb("DELETE", "/api/v1/namespaces/a/pods", None, json),
            "DELETECOLLECTION"
        );
        assert_eq!(
            verb("POST", "/api/v1/namespaces/a/pods/p/exec", None, json),
            "CONNECT"
        );
        assert_eq!(
            verb("GET", "/api/v1/nodes/n/proxy/x", None, json),
            "CONNECT"
        );
        assert_eq!(
            verb("GET", "/api/v1/namespaces/a/pods/p/log", None, json),
            "GET"
        );
        assert_eq!(verb("GET", "/readyz", None, json), "GET");
    }

    #[test]
    fn scopes_are_kube_apiservers() {
        assert_eq!(
            scope(&info("GET", "/api/v1/namespaces/a/pods/p", None)),
            "resource"
        );
        assert_eq!(
            scope(&info("POST", "/api/v1/namespaces/a/pods", None)),
            "resource"
        );
        assert_eq!(
            scope(&info("GET", "/api/v1/namespaces/a/pods", None)),
            "namespace"
        );
        assert_eq!(scope(&info("GET", "/api/v1/pods", None)), "cluster");
        assert_eq!(scope(&info("GET", "/healthz", None)), "");
    }

    #[test]
    fn dry_run_values_are_sorted_and_unique() {
        assert_eq!(dry_run(None), "");
        assert_eq!(dry_run(Some("dryRun=All&dryRun=All&pretty=1")), "All");
    }

    #[tokio::test]
    async fn only_served_resources_and_health_paths_are_labelled() {
        let (_dir, api) = crate::testing::api().await;
        let headers = HeaderMap::new();
        let l = |method: &str, path: &str, query: Option<&str>| {
            labels(&api, &info(method, path, query), method, query, &headers)
        };
        let pods = l("GET", "/api/v1/namespaces/a/pods/p", None).unwrap();
        assert_eq!(
            (
                pods.verb.as_str(),
                pods.group.as_str(),
                pods.version.as_str()
            ),
            ("GET", "", "v1")
        );
        assert_eq!(
            (
                pods.resource.as_str(),
                pods.scope.as_str(),
                pods.component.as_str()
            ),
            ("pods", "resource", "apiserver")
        );
        let scale = l(
            "PUT",
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
            None,
        )
        .unwrap();
        assert_eq!(
            (scale.group.as_str(), scale.subresource.as_str()),
            ("apps", "scale")
        );
        let readyz = l("GET", "/readyz", None).unwrap();
        assert_eq!(
            (readyz.resource.as_str(), readyz.subresource.as_str()),
            ("", "/readyz")
        );
        assert!(l("GET", "/api/v1/namespaces/a/made-up", None).is_none());
        assert!(l("GET", "/api/v1/namespaces/a/pods/p/made-up", None).is_none());
        assert!(l("GET", "/api/v1/nodes/n/proxy/x", None).is_some());
        assert!(l("GET", "/openapi/v2", None).is_none());
    }

    #[test]
    fn a_request_is_recorded_once_its_last_holder_lets_go() {
        let metrics: &'static Metrics = Box::leak(Box::default());
        let labels = RequestLabels {
            verb: "WATCH".into(),
            resource: "pods".into(),
            component: "apiserver".into(),
            ..RequestLabels::default()
        };
        let gauge = metrics.longrunning.get_or_create_owned(&labels);
        gauge.inc();
        let measured = Arc::new(Measured {
            metrics,
            labels: Some(labels.clone()),
            started: Instant::now(),
            code: std::sync::OnceLock::new(),
            gauges: vec![gauge.clone()],
        });
        measured.code.set(StatusCode::OK).unwrap();
        let held = InFlight(Arc::clone(&measured));
        drop(measured);
        assert_eq!(gauge.get(), 1, "the body still holds the watch");
        let code = RequestCodeLabels {
            request: labels,
            code: "200".into(),
        };
        assert!(metrics.requests.get(&code).is_none());
        drop(held);
        assert_eq!(gauge.get(), 0);
        assert_eq!(metrics.requests.get(&code).unwrap().get(), 1);
    }
}
