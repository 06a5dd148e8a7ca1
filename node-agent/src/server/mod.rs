//! The agent's kubelet-style HTTPS server: the API server proxies `kubectl logs` and `kubectl exec`
//! here, on the kubelet's paths, authenticated by its client certificate. Every request is
//! authenticated and authorized as the kubelet's webhook mode does ([`auth`]).
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=…`: the log, streamed.
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=…&stdin=…`: a WebSocket speaking the
//!   remotecommand protocol ([`apiary_api::remotecommand`]).
//! - `GET|POST /attach/{namespace}/{pod}/{container}?stdin=…`: `kubectl attach`, on the same
//!   WebSocket protocol as exec ([`attach`]).
//! - `GET|POST /portForward/{namespace}/{pod}`: `kubectl port-forward`, SPDY/3.1 in a WebSocket
//!   or after an SPDY upgrade ([`portforward`]).
//! - `GET /metrics/resource` and `GET /stats/summary`: the node's, pods' and containers' CPU and
//!   memory as the kubelet serves them to metrics-server ([`resource_metrics`], [`summary`]).
//! - `GET /apiary/v1/services`: the node's service frontends and backends as its BPF maps hold
//!   them ([`services`]; `apiary net services`, through the API server's `nodes/proxy`).
//!
//! What a pod's containers are is the agent's business: it plugs them in through [`PodStreams`];
//! where the frontends come from, through [`ServiceSource`].

mod attach;
pub mod auth;
mod exec;
pub mod flows;
mod logs;
pub mod metrics;
pub mod portforward;
pub mod resource_metrics;
pub mod services;
pub mod summary;
pub mod tls;
pub mod trace;

use std::{io, pin::Pin, sync::Arc};

use axum::{
    Json, Router,
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{future::BoxFuture, stream::BoxStream};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::mpsc,
};

pub use flows::{FlowLog, FlowNames, FlowPeer, FlowRecord, SharedFlowNames};
pub use services::{PinnedServices, ServiceNames, ServiceSource};
pub use trace::{PolicyTracer, TraceResult};

/// The kubelet's port, which the API server dials unless the Node says otherwise.
pub const DEFAULT_PORT: u16 = 10250;

/// What the server needs from the agent: a container's log and a process in a container.
#[async_trait::async_trait]
pub trait PodStreams: Send + Sync + 'static {
    /// The log of `container`, from where `request` says; with `follow`, the stream goes on as
    /// the container writes, until it exits or the client goes away (the stream is dropped).
    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: LogRequest,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, StreamError>;

    /// Starts `request.command` in `container`. Dropping the session before `exit` resolves must
    /// end the process (the client went away).
    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError>;

    /// Attaches to the running `container`'s stdio: its output from now on, and its stdin when
    /// it has one (`stdin: true`). `exit` resolves, with 0, once the container has exited;
    /// dropping the session detaches.
    async fn attach(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError>;

    /// Where `pod`'s ports are dialled for port-forwarding; fails (before any upgrade) for a
    /// pod this node does not run.
    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<Arc<dyn PortDialer>, StreamError>;
}

/// Connections to one pod's ports, opened inside its network namespace.
#[async_trait::async_trait]
pub trait PortDialer: Send + Sync + 'static {
    /// The pod as the kubelet names it in port-forward errors (its sandbox).
    fn pod_id(&self) -> &str;

    /// A connection to `port` on the pod's loopback; the error says why not, in the runtime's
    /// words (what kubectl shows after "error forwarding port …").
    async fn dial(&self, port: u16) -> Result<tokio::net::TcpStream, String>;
}

/// The options of `kubectl logs` (Kubernetes' `PodLogOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogRequest {
    pub follow: bool,
    /// The previous instance of a restarted container.
    pub previous: bool,
    /// Only the last lines.
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<DateTime<Utc>>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<i64>,
}

impl LogRequest {
    /// Where the log starts: `sinceTime`, or `sinceSeconds` before `now`. A `sinceSeconds`
    /// reaching before what a time can hold means the whole log (chrono panics on the overflow).
    pub fn since(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.since_time.or_else(|| {
            self.since_seconds.map(|s| {
                chrono::Duration::try_seconds(s)
                    .and_then(|d| now.checked_sub_signed(d))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC)
            })
        })
    }
}

/// The options of `kubectl exec` (Kubernetes' `PodExecOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// With a terminal, stderr is merged into stdout, as on Kubernetes.
    pub tty: bool,
}

/// A started process: its streams (those the request asked for) and its end.
pub struct ExecSession {
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Terminal size changes (width, height), for `tty` sessions.
    pub resize: Option<mpsc::Sender<(u16, u16)>>,
    /// The exit code.
    pub exit: BoxFuture<'static, io::Result<i32>>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a stream cannot be served. None is retryable as is but `NotRunning`, once the container
/// has started.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("pods \"{pod}\" not found")]
    PodNotFound { namespace: String, pod: String },
    #[error("container {container} is not valid for pod {pod}")]
    ContainerNotFound { pod: String, container: String },
    #[error("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}")]
    NotRunning {
        pod: String,
        container: String,
        /// Why, e.g. `ContainerCreating`.
        reason: String,
    },
    /// A request parameter is malformed; the message names it.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl StreamError {
    fn code(&self) -> StatusCode {
        match self {
            Self::PodNotFound { .. } => StatusCode::NOT_FOUND,
            Self::ContainerNotFound { .. } | Self::NotRunning { .. } | Self::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl StreamError {
    /// The Kubernetes `Status` saying this.
    fn status(&self) -> serde_json::Value {
        let code = self.code();
        let reason = match code {
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::BAD_REQUEST => "BadRequest",
            _ => "InternalError",
        };
        status(code, reason, &self.to_string())
    }
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        (self.code(), Json(self.status())).into_response()
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

/// What the agent shows of its data plane: the service maps, the policy verdicts, and the
/// policy tracer (`None`: an agent without policy maps); and of its resource usage.
#[derive(Clone)]
pub struct DataplaneViews {
    pub services: Arc<dyn ServiceSource>,
    pub flows: FlowLog,
    pub tracer: Option<Arc<PolicyTracer>>,
    /// The collector's latest snapshot (empty: nothing collected, a scrape error).
    pub stats: crate::stats::Latest,
}

impl std::fmt::Debug for DataplaneViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataplaneViews").finish_non_exhaustive()
    }
}

/// The routes, behind authentication and authorization.
pub fn router(
    auth: Arc<auth::Auth>,
    backend: Arc<dyn PodStreams>,
    dataplane: DataplaneViews,
) -> Router {
    Router::new()
        .route(
            "/apiary/v1/services",
            get(services::handle).with_state(dataplane.services),
        )
        .route(
            "/apiary/v1/flows",
            get(flows::handle).with_state(dataplane.flows),
        )
        .route(
            "/apiary/v1/policy/trace",
            get(trace::handle).with_state(dataplane.tracer.clone()),
        )
        .route(
            "/metrics",
            get(metrics::handle).with_state(metrics::MetricsSources {
                tracer: dataplane.tracer,
                stats: dataplane.stats.clone(),
            }),
        )
        .route(
            "/metrics/resource",
            get(resource_metrics::handle).with_state(dataplane.stats.clone()),
        )
        .route(
            "/stats/summary",
            get(summary::handle).with_state(dataplane.stats),
        )
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::handle),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec::handle).post(exec::handle),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach::handle).post(attach::handle),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(portforward::handle).post(portforward::handle),
        )
        .with_state(backend)
        .layer(middleware::from_fn_with_state(auth, auth::middleware))
}

/// The user of the connection's client certificate (the handshake verified it against the
/// cluster CA).
fn client_cert_user(connection: &rustls::ServerConnection) -> Option<auth::ClientCertUser> {
    Some(auth::ClientCertUser(
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| auth::User::of_certificate(leaf)),
    ))
}

/// Serves the routes over TLS on `listener` until the task is dropped, with the API server's
/// limits on what one client may hold ([`apiary_serve`]): the kubelet's port is as exposed.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    auth: Arc<auth::Auth>,
    backend: Arc<dyn PodStreams>,
    dataplane: DataplaneViews,
) -> anyhow::Result<()> {
    let app = router(auth, backend, dataplane);
    let limits = apiary_serve::Limits::for_open_files(apiary_serve::raise_open_files_limit());
    apiary_serve::serve_tls(
        listener,
        tls,
        app,
        limits,
        client_cert_user,
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// What the agent starts with: binds `listen` (the node's address and [`DEFAULT_PORT`]) and
/// [`serve`]s with `serving`'s certificate to clients with certificates of `client_ca_pem` or
/// tokens `auth` accepts.
pub async fn run(
    listen: std::net::SocketAddr,
    serving: Arc<tls::ServingCertificate>,
    client_ca_pem: &str,
    auth: Arc<auth::Auth>,
    backend: Arc<dyn PodStreams>,
    dataplane: DataplaneViews,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let tls = tls::server_config(serving, client_ca_pem).context("the server's TLS")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%listen, "serving logs and exec");
    serve(listener, tls, auth, backend, dataplane).await
}

/// `true`/`1` as Kubernetes reads booleans in queries; anything else but absence is an error
/// naming the parameter.
fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, StreamError> {
    match value {
        None | Some("" | "false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(StreamError::BadRequest(format!(
            "{name}: Invalid value: {other:?}: must be true or false"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_name_the_bad_parameter() {
        assert!(parse_bool("follow", Some("true")).unwrap());
        assert!(!parse_bool("follow", None).unwrap());
        let e = parse_bool("follow", Some("yes")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "follow: Invalid value: \"yes\": must be true or false"
        );
    }
}
