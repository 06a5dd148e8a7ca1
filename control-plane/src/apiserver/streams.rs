//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: validated here, then proxied to the node agent
//! of the pod's node, the way kube-apiserver proxies to the kubelet.
//!
//! Logs stream through as a chunked body (so `kubectl logs -f` follows). Exec, attach and
//! port-forward go through an upgrade-aware proxy: the client's upgrade request (a WebSocket with
//! remotecommand v5/v4 or SPDY-tunnelling subprotocol, or an SPDY upgrade) goes to the agent with
//! the same protocol headers, the agent's `101` comes back, and from then on bytes are copied
//! both ways until either side closes; frames are the two ends' business. (kube-apiserver
//! translates a tunnelled port-forward into SPDY to the kubelet; the agent speaks the tunnel
//! itself, so the bytes pass through.)
//!
//! `AgentEndpoint` (where a node's agent is, and one request to it) serves `nodes/proxy` too.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, RawQuery, Request, State},
    http::{self, HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;

use super::{Api, error::ApiError, objects};
use crate::metrics::apiserver::InFlight;

/// The kubelet's port, when a Node names none.
const DEFAULT_AGENT_PORT: u16 = 10250;
/// How long dialing an agent may take before the request fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an agent's error body that is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Headers of an upgrade that the agent must see as the client sent them.
const UPGRADE_REQUEST_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];
/// Headers of the agent's `101` that the client must see.
const UPGRADE_RESPONSE_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// `GET /api/v1/namespaces/{namespace}/pods/{name}/log`
pub async fn logs(
    State(api): State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let result = async {
        validate_log_options(&name, &query)?;
        let target = locate(&api, &namespace, &name, &query).await?;
        let path = format!("/containerLogs/{namespace}/{name}/{}", target.container);
        let request = http::Request::get(target.uri(&path, &query))
            .body(Body::empty())
            .map_err(internal)?;
        let response = target.agent.send(&api, request).await?;
        if !response.status().is_success() {
            return Err(agent_error(response).await);
        }
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::new(response.into_body()))
            .map_err(internal)
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

/// `GET|POST /api/v1/namespaces/{namespace}/pods/{name}/exec`
pub async fn exec(
    State(api): State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    to_container(&api, "exec", &namespace, &name, query, request).await
}

/// `GET|POST /api/v1/namespaces/{namespace}/pods/{name}/attach`
pub async fn attach(
    State(api): State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    to_container(&api, "attach", &namespace, &name, query, request).await
}

/// An upgraded stream to one container, proxied to the kubelet's `/{stream}/{namespace}/{name}/
/// {container}` on the pod's node.
async fn to_container(
    api: &Arc<Api>,
    stream: &str,
    namespace: &str,
    name: &str,
    query: Option<String>,
    request: Request,
) -> Response {
    let query = query.unwrap_or_default();
    let result = async {
        // Admission comes first, as kube-apiserver's connect handler admits before it looks
        // the pod up: the container is the one asked for, if any.
        let options = stream_options(stream, &query);
        super::admission::admit_connect(api, user_of(&request), stream, namespace, name, options)
            .await?;
        let target = locate(api, namespace, name, &query).await?;
        let path = format!("/{stream}/{namespace}/{name}/{}", target.container);
        proxy_upgrade(api, &target.agent, target.uri(&path, &query), request).await
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

/// `GET|POST /api/v1/namespaces/{namespace}/pods/{name}/portforward`: to the kubelet's
/// `/portForward/{namespace}/{name}`, whatever the client speaks (SPDY tunnelled in a
/// WebSocket, or after an SPDY upgrade): the agent answers both.
pub async fn port_forward(
    State(api): State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let query = query.unwrap_or_default();
    let result = async {
        let options = stream_options("portforward", &query);
        super::admission::admit_connect(
            &api,
            user_of(&request),
            "portforward",
            &namespace,
            &name,
            options,
        )
        .await?;
        let pod = get_pod(&api, &namespace, &name).await?;
        let agent = node_agent(&api, &pod, &name).await?;
        let path = format!("/portForward/{namespace}/{name}");
        proxy_upgrade(
            &api,
            &agent,
            agent.uri(&path, &kubelet_ports(&query)),
            request,
        )
        .await
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

/// Who asked for a stream (the authenticated user the request carries).
fn user_of(request: &Request) -> super::auth::UserInfo {
    request
        .extensions()
        .get::<super::auth::UserInfo>()
        .cloned()
        .unwrap_or_else(super::auth::UserInfo::admin)
}

/// A stream's options as the object of its CONNECT admission request: `PodExecOptions`,
/// `PodAttachOptions` or `PodPortForwardOptions` from the query.
fn stream_options(stream: &str, query: &str) -> Value {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let flag = |name: &str| {
        pairs
            .iter()
            .any(|(k, v)| k == name && super::write_options::parse_bool(v))
    };
    let kind = match stream {
        "exec" => "PodExecOptions",
        "attach" => "PodAttachOptions",
        _ => "PodPortForwardOptions",
    };
    let mut options = serde_json::json!({ "kind": kind, "apiVersion": "v1" });
    if stream == "portforward" {
        let ports: Vec<u64> = pairs
            .iter()
            .filter(|(k, _)| k == "ports")
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        options["ports"] = serde_json::json!(ports);
        return options;
    }
    for name in ["stdin", "stdout", "stderr", "tty"] {
        if flag(name) {
            options[name] = serde_json::json!(true);
        }
    }
    if let Some((_, container)) = pairs
        .iter()
        .find(|(k, v)| k == "container" && !v.is_empty())
    {
        options["container"] = serde_json::json!(container);
    }
    if stream == "exec" {
        let command: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        options["command"] = serde_json::json!(command);
    }
    options
}

/// `PodPortForwardOptions`' `ports` as the kubelet's `port` parameters (what WebSocket clients
/// of the channel protocol name; SPDY clients name ports in their streams).
fn kubelet_ports(query: &str) -> String {
    let mut ports = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "ports" {
            for port in value.split(',') {
                ports.append_pair("port", port);
            }
        }
    }
    ports.finish()
}

/// Puts the client's upgrade request to the agent and, once the agent has switched protocols,
/// copies bytes both ways until either side closes.
async fn proxy_upgrade(
    api: &Api,
    agent: &AgentEndpoint,
    uri: String,
    mut request: Request,
) -> Result<Response, ApiError> {
    if !is_upgrade(request.headers()) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let client_upgrade = hyper::upgrade::on(&mut request);
    let mut upstream = http::Request::builder().method(request.method()).uri(uri);
    for name in UPGRADE_REQUEST_HEADERS {
        for value in request.headers().get_all(*name) {
            upstream = upstream.header(*name, value);
        }
    }
    let upstream = upstream.body(Body::empty()).map_err(internal)?;
    let mut response = agent.send(api, upstream).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(agent_error(response).await);
    }
    let agent_upgrade = hyper::upgrade::on(&mut response);
    let mut reply = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for name in UPGRADE_RESPONSE_HEADERS {
        for value in response.headers().get_all(*name) {
            reply = reply.header(*name, value);
        }
    }
    // The stream counts as in flight (`apiserver_longrunning_requests`) until it ends.
    let in_flight = request.extensions().get::<InFlight>().cloned();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (client, agent) = match tokio::try_join!(client_upgrade, agent_upgrade) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "stream upgrade failed");
                return;
            }
        };
        splice(TokioIo::new(client), TokioIo::new(agent)).await;
    });
    reply.body(Body::empty()).map_err(internal)
}

/// Copies each way until that way ends, independently: a failed write towards the agent (it
/// closed first) must not cut off what the agent sent last on its way to the client (the exit
/// status), as one `copy_bidirectional` would.
async fn splice<C, A>(client: C, agent: A)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::AsyncWriteExt as _;
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_agent, mut to_agent) = tokio::io::split(agent);
    let up = async {
        if let Err(e) = tokio::io::copy(&mut from_client, &mut to_agent).await {
            tracing::debug!(error = %e, "client to agent stream ended with an error");
        }
        let _ = to_agent.shutdown().await;
    };
    let down = async {
        if let Err(e) = tokio::io::copy(&mut from_agent, &mut to_client).await {
            tracing::debug!(error = %e, "agent to client stream ended with an error");
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Where a pod's stream is served: the container and its node agent.
#[derive(Debug)]
struct AgentTarget {
    container: String,
    agent: AgentEndpoint,
}

impl AgentTarget {
    /// `path` on the agent, with the client's query minus what only the API server reads.
    fn uri(&self, path: &str, query: &str) -> String {
        let mut forwarded = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key != "container" {
                forwarded.append_pair(&key, &value);
            }
        }
        self.agent.uri(path, &forwarded.finish())
    }
}

/// A node agent's HTTPS server (the kubelet's port): the node's `InternalIP` and
/// `status.daemonEndpoints.kubeletEndpoint.Port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AgentEndpoint {
    pub address: IpAddr,
    pub port: u16,
}

/// Why a request could not be put to a node agent (not connected, TLS failed, no credentials):
/// the message names the request and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unreachable(pub String);

impl From<Unreachable> for ApiError {
    /// A 500, as kube-apiserver answers `pods/log` when it cannot reach the kubelet.
    fn from(e: Unreachable) -> Self {
        ApiError::internal(e.0)
    }
}

impl AgentEndpoint {
    /// Where `node`'s agent listens; `None` without an `InternalIP`.
    pub(super) fn of(node: &Value) -> Option<Self> {
        let address = node["status"]["addresses"]
            .as_array()?
            .iter()
            .find(|a| a["type"] == "InternalIP")?["address"]
            .as_str()?
            .parse()
            .ok()?;
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .unwrap_or(DEFAULT_AGENT_PORT);
        Some(Self { address, port })
    }

    /// `https://agent/path?query` (no `?` for an empty query); `query` as given.
    pub(super) fn uri(&self, path: &str, query: &str) -> String {
        let host = match self.address {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let separator = if query.is_empty() { "" } else { "?" };
        format!("https://{host}:{}{path}{separator}{query}", self.port)
    }

    /// Sends `request` to the agent over a connection of its own (upgrades keep it),
    /// authenticated by the API server's client certificate ([`super::kubelet_client`]).
    pub(super) async fn send(
        &self,
        api: &Api,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, Unreachable> {
        let what = format!("{} \"{}\"", request.method(), request.uri());
        let fail = |reason: String| Unreachable(format!("{what}: {reason}"));
        let tls = api
            .kubelet_client
            .clone()
            .ok_or_else(|| fail("the API server has no credentials for node agents".into()))?;
        let headers = request.headers_mut();
        let host = match self.address {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        };
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&host).map_err(|e| fail(e.to_string()))?,
        );
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.address, self.port)),
        )
        .await
        .map_err(|_| fail(format!("dial tcp {host}: i/o timeout")))?
        .map_err(|e| fail(format!("dial tcp {host}: connect: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::IpAddress(self.address.into()), tcp)
            .await
            .map_err(|e| fail(format!("TLS handshake with {host}: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "agent connection ended with an error");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| fail(e.to_string()))
    }
}

/// Validates the request against the pod and finds its node agent, with Kubernetes' messages.
/// kube-apiserver's checks of `PodLogOptions` before it asks the kubelet: a value that is no
/// integer or time is a 400 (the query does not decode), one out of range a 422
/// (`ValidatePodLogOptions`). The node agent checks again: it may be asked directly.
fn validate_log_options(name: &str, query: &str) -> Result<(), ApiError> {
    let mut integers: [(&str, Option<i64>); 3] = [
        ("tailLines", None),
        ("limitBytes", None),
        ("sinceSeconds", None),
    ];
    let mut since_time = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if let Some((_, slot)) = integers.iter_mut().find(|(k, _)| *k == key) {
            *slot = Some(value.parse().map_err(|e| {
                ApiError::bad_request(format!("{key}: Invalid value: {value:?}: {e}"))
            })?);
        } else if key == "sinceTime" {
            chrono::DateTime::parse_from_rfc3339(&value).map_err(|e| {
                ApiError::bad_request(format!("sinceTime: Invalid value: {value:?}: {e}"))
            })?;
            since_time = true;
        }
    }
    let [(_, tail_lines), (_, limit_bytes), (_, since_seconds)] = integers;
    let mut causes = Vec::new();
    let mut invalid = |field: &str, value: i64, why: &str| {
        causes.push((
            field.to_owned(),
            format!("{field}: Invalid value: {value}: {why}"),
        ));
    };
    if let Some(n) = tail_lines.filter(|n| *n < 0) {
        invalid("tailLines", n, "must be greater than or equal to 0");
    }
    if let Some(n) = limit_bytes.filter(|n| *n < 1) {
        invalid("limitBytes", n, "must be greater than 0");
    }
    match since_seconds {
        Some(_) if since_time => causes.push((
            "sinceSeconds".to_owned(),
            "sinceSeconds: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
                .to_owned(),
        )),
        Some(n) if n < 1 => invalid("sinceSeconds", n, "must be greater than 0"),
        _ => {}
    }
    match causes.is_empty() {
        true => Ok(()),
        false => Err(ApiError::invalid("PodLogOptions", "", name, &causes)),
    }
}

async fn locate(
    api: &Api,
    namespace: &str,
    name: &str,
    query: &str,
) -> Result<AgentTarget, ApiError> {
    let pod = get_pod(api, namespace, name).await?;
    let requested = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty());
    let container = container(&pod, name, requested)?;
    let agent = node_agent(api, &pod, name).await?;
    Ok(AgentTarget { container, agent })
}

async fn get_pod(api: &Api, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let pods = api
        .resources
        .get("", "v1", "pods")
        .expect("pods are served");
    objects::get(api, pods, Some(namespace), name).await
}

/// The agent of the node `pod` is bound to.
async fn node_agent(api: &Api, pod: &Value, name: &str) -> Result<AgentEndpoint, ApiError> {
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let nodes = api
        .resources
        .get("", "v1", "nodes")
        .expect("nodes are served");
    let node = objects::get(api, nodes, None, node_name).await?;
    AgentEndpoint::of(&node).ok_or_else(|| {
        ApiError::internal(format!(
            "node {node_name} has no InternalIP address to reach its agent at"
        ))
    })
}

/// The container a request is for: the named one (which must exist), or the only one.
fn container(pod: &Value, pod_name: &str, requested: Option<String>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    match requested {
        Some(name) if containers.contains(&name) || init.contains(&name) => Ok(name),
        Some(name) => Err(ApiError::bad_request(format!(
            "container {name} is not valid for pod {pod_name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// An agent's refusal, as a `Status` with the agent's code: its own `Status` when it sent one.
async fn agent_error(response: http::Response<hyper::body::Incoming>) -> ApiError {
    let code = response.status();
    let body = http_body_util::Limited::new(response.into_body(), ERROR_BODY_LIMIT)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|status| status["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
    ApiError::from_agent(code, message)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_defaults_to_the_only_one_and_must_exist() {
        let one = json!({ "spec": { "containers": [{ "name": "app" }] } });
        assert_eq!(container(&one, "p", None).unwrap(), "app");
        let two = json!({ "spec": { "containers": [{ "name": "a" }, { "name": "b" }] } });
        assert_eq!(
            container(&two, "p", None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(container(&two, "p", Some("b".into())).unwrap(), "b");
        let missing = container(&two, "p", Some("c".into())).unwrap_err();
        assert_eq!(missing.code, StatusCode::BAD_REQUEST);
        assert_eq!(missing.message, "container c is not valid for pod p");
    }

    #[test]
    fn log_options_out_of_range_are_refused_before_the_agent_is_asked() {
        assert_eq!(
            validate_log_options("p", "container=c&sinceSeconds=1&tailLines=0&limitBytes=1"),
            Ok(())
        );
        let e = validate_log_options("p", "sinceSeconds=0").unwrap_err();
        assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.message,
            "PodLogOptions \"p\" is invalid: sinceSeconds: Invalid value: 0: must be greater than 0"
        );
        let e = validate_log_options("p", "tailLines=-1&limitBytes=0").unwrap_err();
        assert_eq!(
            e.message,
            "PodLogOptions \"p\" is invalid: [tailLines: Invalid value: -1: must be greater than or equal to 0, limitBytes: Invalid value: 0: must be greater than 0]"
        );
        let e =
            validate_log_options("p", "sinceSeconds=5&sinceTime=2026-01-02T03:04:05Z").unwrap_err();
        assert!(
            e.message.contains("sinceSeconds: Forbidden"),
            "{}",
            e.message
        );
        // Beyond i64 or no number at all: the query does not decode.
        for query in [
            "sinceSeconds=9223372036854775808",
            "tailLines=ten",
            "sinceTime=yesterday",
        ] {
            let e = validate_log_options("p", query).unwrap_err();
            assert_eq!(e.code, StatusCode::BAD_REQUEST, "{query}: {}", e.message);
        }
        assert_eq!(
            validate_log_options("p", "sinceSeconds=9223372036854775807"),
            Ok(())
        );
    }

    #[test]
    fn forwarded_ports_are_the_kubelets_port_parameters() {
        assert_eq!(
            kubelet_ports("ports=8080&ports=9090,9091&pretty=true"),
            "port=8080&port=9090&port=9091"
        );
        assert_eq!(kubelet_ports(""), "");
    }

    #[test]
    fn the_agent_is_the_internal_ip_at_the_kubelet_port() {
        let node = json!({ "status": {
            "addresses": [{ "type": "Hostname", "address": "n1" }, { "type": "InternalIP", "address": "10.0.0.7" }],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 12345 } },
        }});
        assert_eq!(
            AgentEndpoint::of(&node),
            Some(AgentEndpoint {
                address: "10.0.0.7".parse().unwrap(),
                port: 12345
            })
        );
        let default_port =
            json!({ "status": { "addresses": [{ "type": "InternalIP", "address": "10.0.0.7" }] } });
        assert_eq!(AgentEndpoint::of(&default_port).unwrap().port, 10250);
        assert_eq!(AgentEndpoint::of(&json!({ "status": {} })), None);
    }

    #[test]
    fn only_the_api_servers_parameters_stay_behind() {
        let target = AgentTarget {
            container: "app".into(),
            agent: AgentEndpoint {
                address: "127.0.0.1".parse().unwrap(),
                port: 10250,
            },
        };
        assert_eq!(
            target.uri(
                "/exec/default/p/app",
                "command=sh&command=-c&command=echo+hi&container=app&stdout=true"
            ),
            "https://127.0.0.1:10250/exec/default/p/app?command=sh&command=-c&command=echo+hi&stdout=true"
        );
        assert_eq!(
            target.uri("/containerLogs/default/p/app", "container=app"),
            "https://127.0.0.1:10250/containerLogs/default/p/app"
        );
    }
}
