//! The Kubernetes-compatible API server: HTTPS with client certificates and bearer tokens, discovery, and the verbs on
//! every resource type, over the [`Store`](crate::store::Store).

pub mod admission;
pub mod allocator;
pub mod audit;
pub mod auth;
pub mod authn;
pub mod authz;
pub mod certificates;
pub mod cluster_info;
pub mod custom_resources;
pub mod decoded;
pub mod defaults;
pub mod deletion;
pub mod dependency_graph;
pub mod discovery;
pub mod error;
pub mod fanout;
pub mod health;
pub mod inflight;
pub mod kubelet_client;
pub mod negotiation;
pub mod node_index;
pub mod node_proxy;
pub mod objects;
pub mod openapi;
pub mod path;
pub mod pki;
pub mod registry;
pub mod resource_metrics;
pub mod resources;
pub mod selectors;
pub mod streams;
pub mod tables;
pub mod warnings;
pub mod write_options;

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, Method, Uri},
    middleware,
    response::{IntoResponse as _, Response},
    routing::{any, get},
};

use crate::store::Store;
use error::ApiError;
use registry::Registry;
use resources::Resources;

/// Everything a request handler needs.
pub struct Api {
    pub store: Arc<dyn Store>,
    pub resources: Resources,
    /// Each kind's write behaviour.
    pub registry: Registry,
    /// What node pod CIDRs are cut from.
    pub pod_network: crate::agents::PodNetwork,
    /// How node agents are reached ([`kubelet_client`]), for proxying `pods/log`, `pods/exec`,
    /// `pods/attach`, `pods/portforward` (without it those fail with a 500) and `nodes/proxy` (a 503).
    pub kubelet_client: Option<Arc<rustls::ClientConfig>>,
    /// Watch events decoded once for all their watchers.
    pub decoded: Arc<decoded::Decoded>,
    /// One store watch per resource type, shared by its watches.
    pub fanout: fanout::Fanout,
    /// The Event correlator of this process's controllers and scheduler.
    pub events: crate::events::Recorder,
    /// Who may do what: RBAC over a watch-fed index of roles and bindings.
    pub authz: authz::Authz,
    /// Signs service account tokens (TokenRequest); without it they are not served.
    pub service_account_issuer: Option<Arc<authn::service_account::Issuer>>,
    /// The max-in-flight limits of read-only and mutating requests.
    pub inflight: inflight::Limits,
    /// Which admission plugins run on writes.
    pub admission: admission::Plugins,
    /// The admission webhooks clients configured ([`admission::webhooks::start`] keeps them).
    pub webhooks: admission::webhooks::Webhooks,
    /// The ValidatingAdmissionPolicies and bindings ([`admission::policies::start`] keeps them).
    pub policies: admission::policies::Policies,
    /// What the node agents' resource metrics say (`metrics.k8s.io`), kept by
    /// [`resource_metrics::scrape::run`].
    pub resource_metrics: resource_metrics::ResourceMetrics,
    /// Owner uid → dependents, for the garbage collection that follows a delete.
    pub dependency_graph: dependency_graph::DependencyGraph,
    /// Pods by `spec.nodeName`, for lists of one node's pods.
    pub pods_by_node: node_index::NodeIndex,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let resources = Resources::default();
        let registry = Registry {
            custom: Arc::clone(&resources.custom),
        };
        Self {
            store,
            resources,
            registry,
            pod_network: crate::agents::PodNetwork::default(),
            kubelet_client: None,
            decoded: Arc::default(),
            fanout: fanout::Fanout::default(),
            events: crate::events::Recorder::default(),
            authz: authz::Authz::default(),
            inflight: inflight::Limits::default(),
            service_account_issuer: None,
            admission: admission::Plugins::default(),
            webhooks: admission::webhooks::Webhooks::default(),
            policies: admission::policies::Policies::default(),
            resource_metrics: resource_metrics::ResourceMetrics::default(),
            dependency_graph: dependency_graph::DependencyGraph::default(),
            pods_by_node: node_index::NodeIndex::default(),
        }
    }
}

/// The namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The cluster DNS Service's address (kubeadm's choice: the tenth of the service CIDR); node
/// agents give it to pods as their nameserver (`--cluster-dns`).
pub const CLUSTER_DNS_IP: &str = "10.96.0.10";

/// `kube-system/kube-dns`: cluster DNS, answered by every node's agent for the pods of its node
/// (`internalTrafficPolicy: Local`; each agent publishes its own EndpointSlice, so the Service
/// has no selector).
fn kube_dns_service() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            "clusterIP": CLUSTER_DNS_IP,
            "internalTrafficPolicy": "Local",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    })
}

/// Creates the system namespaces and the cluster DNS Service where they do not exist yet.
pub async fn bootstrap(api: &Api) -> Result<(), ApiError> {
    let namespaces = api
        .resources
        .get("", "v1", "namespaces")
        .expect("namespaces are served");
    for name in SYSTEM_NAMESPACES {
        let target = path::Target {
            resource: namespaces,
            namespace: None,
            name: None,
            subresource: None,
        };
        let object = serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
        match objects::create(api, &target, object).await {
            Ok(_) => tracing::info!(namespace = name, "created"),
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    bootstrap_storage(api).await?;
    let services = api
        .resources
        .get("", "v1", "services")
        .expect("services are served");
    let target = path::Target {
        resource: services,
        namespace: Some("kube-system".to_owned()),
        name: None,
        subresource: None,
    };
    let exists = || objects::get(api, services, Some("kube-system"), "kube-dns");
    // Look first: creating it again would fail on its address (taken by itself) before its
    // name, and control planes sharing a store may race here.
    if exists().await.is_ok() {
        return Ok(());
    }
    match objects::create(api, &target, kube_dns_service()).await {
        Ok(_) => tracing::info!(service = "kube-system/kube-dns", "created"),
        Err(e) if exists().await.is_ok() => {
            tracing::debug!(error = %e.message, "kube-dns was created by another control plane");
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The built-in local-path storage: its CSIDriver and the `local-path` StorageClass, each
/// created only when missing, as the addon manager's `EnsureExists` mode does (and k3s's
/// local-storage): a user's edits survive restarts, and a class deleted comes back on the next
/// start. The class is made the default only if no other class is the default by then, so a
/// user who replaced it with a default of their own keeps theirs (the newest default would
/// otherwise win, and a recreated `local-path` is always the newest).
async fn bootstrap_storage(api: &Api) -> Result<(), ApiError> {
    use apiary_api::storage_v1::{
        IS_DEFAULT_CLASS_ANNOTATION, LOCAL_PATH_CLASS, LOCAL_PATH_DRIVER, StorageClass,
    };
    let drivers = api
        .resources
        .get("storage.k8s.io", "v1", "csidrivers")
        .expect("csidrivers are served");
    let classes = api
        .resources
        .get("storage.k8s.io", "v1", "storageclasses")
        .expect("storageclasses are served");
    let ensure = |resource: &'static resources::ResourceType, object: serde_json::Value| async move {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if objects::get(api, resource, None, &name).await.is_ok() {
            return Ok(());
        }
        let target = path::Target {
            resource,
            namespace: None,
            name: None,
            subresource: None,
        };
        match objects::create(api, &target, object).await {
            Ok(_) => {
                tracing::info!(kind = resource.kind, name, "created");
                Ok(())
            }
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    };
    ensure(
        drivers,
        serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": { "name": LOCAL_PATH_DRIVER },
            "spec": {
                "attachRequired": false,
                "podInfoOnMount": false,
                "storageCapacity": true,
                "fsGroupPolicy": "File",
                "volumeLifecycleModes": ["Persistent"],
            },
        }),
    )
    .await?;
    let listing = objects::list(
        api,
        &path::Target {
            resource: classes,
            namespace: None,
            name: None,
            subresource: None,
        },
        &Default::default(),
    )
    .await?;
    let other_default = listing["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| apiary_api::meta::from_json::<StorageClass>(c.clone()).ok())
        .any(|c| c.is_default() && c.metadata.name != LOCAL_PATH_CLASS);
    let mut class = serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": { "name": LOCAL_PATH_CLASS },
        "provisioner": LOCAL_PATH_DRIVER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": true,
    });
    if !other_default {
        class["metadata"]["annotations"] =
            serde_json::json!({ IS_DEFAULT_CLASS_ANNOTATION: "true" });
    }
    ensure(classes, class).await
}

/// The router: health checks, discovery, and every resource path, behind authentication and
/// authorization.
pub fn router(api: Arc<Api>, tokens: Arc<auth::Tokens>) -> Router {
    let authorizer = middleware::from_fn_with_state(Arc::clone(&api), authz::authorize);
    let limiter = middleware::from_fn_with_state(Arc::clone(&api), inflight::limit);
    let instrument =
        middleware::from_fn_with_state(Arc::clone(&api), crate::metrics::apiserver::instrument);
    // gRPC for node agents shares the port: its paths never collide with the REST API's.
    let agents = crate::agents::AgentService::new(Arc::clone(&api)).into_server();
    Router::new()
        .route_service("/apiary.agent.v1.NodeAgent/{*method}", agents)
        .route("/healthz", get(health::healthz))
        .route("/healthz/{check}", get(health::healthz_one))
        .route("/livez", get(health::livez))
        .route("/livez/{check}", get(health::livez_one))
        .route("/readyz", get(health::readyz))
        .route("/readyz/{check}", get(health::readyz_one))
        .route("/metrics", get(crate::metrics::serve))
        // Discovery answers with and without a trailing slash, as kube-apiserver's go-restful
        // routes do: the official Python client asks for `/version/`, `/api/v1/`, `/apis/`.
        .route("/version", get(discovery::version))
        .route("/version/", get(discovery::version))
        .route("/api", get(discovery::core_versions))
        .route("/api/", get(discovery::core_versions))
        .route("/apis", get(discovery::groups))
        .route("/apis/", get(discovery::groups))
        .route("/api/v1", get(discovery::core_resources))
        .route("/api/v1/", get(discovery::core_resources))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/apis/{group}/{version}/", get(discovery::group_resources))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/", get(discovery::group))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            get(streams::logs),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            get(streams::exec).post(streams::exec),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/attach",
            get(streams::attach).post(streams::attach),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/portforward",
            get(streams::port_forward).post(streams::port_forward),
        )
        .route("/api/v1/nodes/{name}/proxy", get(node_proxy::proxy))
        .route("/api/v1/nodes/{name}/proxy/", get(node_proxy::proxy))
        .route("/api/v1/nodes/{name}/proxy/{*path}", get(node_proxy::proxy))
        .route(
            "/.well-known/openid-configuration",
            get(|State(api): State<Arc<Api>>| async move { oidc(&api, |i| i.openid_configuration()) }),
        )
        .route(
            "/openid/v1/jwks",
            get(|State(api): State<Arc<Api>>| async move { oidc(&api, |i| i.jwks()) }),
        )
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::v3_index))
        .route("/openapi/v3/{*path}", get(openapi::v3_group_version))
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            any(authn::review::self_subject_reviews),
        )
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            any(authn::review::token_reviews),
        )
        .fallback(resource_request)
        .with_state(api)
        // Layers run last-added first: authentication, the in-flight limit, authorization,
        // the request metrics; the audit notes after each (the log's own layer, outermost,
        // is `audit::layer`).
        .layer(instrument)
        .layer(middleware::from_fn(audit::note_authorized))
        .layer(authorizer)
        .layer(limiter)
        .layer(middleware::from_fn(audit::note_authenticated))
        .layer(axum::Extension(Arc::clone(&tokens)))
        .layer(middleware::from_fn_with_state(tokens, auth::require_token))
        // Outermost, so that authentication's errors are negotiated too.
        .layer(middleware::from_fn(negotiation::negotiate))
}

/// kube-apiserver's `MaxRequestBodyBytes`: the largest request body (and patched object) it
/// accepts. etcd's default request limit is 1.5 MiB; this leaves room for encoding overhead.
pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Reads a request body of at most `limit` bytes, as kube-apiserver's `limitedReadBody`: one
/// byte more is a 413 with Kubernetes' Status, and a larger body is never buffered whole.
async fn limited_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(
            ApiError::request_entity_too_large(format_args!("limit is {limit}")),
        ),
        Err(e) => Err(ApiError::bad_request(format!(
            "error reading the request body: {e}"
        ))),
    }
}

/// A CertificateSigningRequest write: the requester is recorded on create, and the admission
/// plugins of [`certificates::admit`] run on what the write would store.
async fn certificate_request(
    api: &Arc<Api>,
    user: &auth::UserInfo,
    method: &Method,
    target: path::Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sub = target.subresource.as_deref();
    match (method, target.name.as_deref()) {
        (&Method::POST, None) => {
            let mut csr = objects::decode(headers, &body)?;
            certificates::prepare_create(&mut csr, user);
            certificates::admit(&api.authz, user, None, &csr, None)?;
            let options = write_options::WriteOptions::from_query(query, "CreateOptions")?;
            let created = objects::create_with(api, &target, csr, &options).await?;
            Ok((axum::http::StatusCode::CREATED, axum::Json(created)).into_response())
        }
        (&Method::PUT | &Method::PATCH, Some(name)) => {
            let old = objects::get(api, target.resource, None, name).await?;
            let sent = if *method == Method::PATCH {
                objects::apply_patch(old.clone(), &objects::content_type(headers), &body)?
            } else {
                objects::decode(headers, &body)?
            };
            let merged = api
                .registry
                .strategy_for(target.resource)
                .prepare_for_update(target.resource, sub, &old, sent);
            certificates::admit(&api.authz, user, sub, &merged, Some(&old))?;
            objects::dispatch(api, method, target, query, headers, body).await
        }
        _ => objects::dispatch(api, method, target, query, headers, body).await,
    }
}

/// The service account issuer's discovery documents (kube-apiserver's OIDC discovery).
fn oidc(
    api: &Api,
    document: impl Fn(&authn::service_account::Issuer) -> serde_json::Value,
) -> Response {
    match &api.service_account_issuer {
        Some(issuer) => axum::Json(document(issuer)).into_response(),
        None => ApiError::no_route("/openid/v1/jwks").into_response(),
    }
}

// The body is taken as a raw `Body`, not `Bytes`: axum's extractor would cap it at its own 2 MB
// default and answer a plain-text 413 no Kubernetes client understands.
async fn resource_request(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    user: Option<axum::Extension<auth::UserInfo>>,
    body: Body,
) -> Response {
    let user = user.map(|u| u.0).unwrap_or_else(auth::UserInfo::admin);
    let as_user = user.clone();
    let handler = warnings::collect(async move {
        let result = match path::parse(&api.resources, uri.path()) {
            Ok(target) => match limited_body(body, MAX_REQUEST_BODY_BYTES).await {
                Ok(body) => {
                    resource_request_as(&api, &user, &method, target, &query, &headers, body).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| {
        tracing::debug!(%method, %uri, code = e.code.as_u16(), message = %e.message, "request failed");
        e.into_response()
    })
    });
    // Admission webhooks are told who asked.
    admission::as_user(as_user, handler).await
}

/// A resource request by `user`, who is authorized for it: access reviews are answered, RBAC
/// writes checked for escalation, everything else goes to the store.
async fn resource_request_as(
    api: &Arc<Api>,
    user: &auth::UserInfo,
    method: &Method,
    target: path::Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if target.resource.group == "authorization.k8s.io" {
        if *method != Method::POST || target.name.is_some() {
            return Err(ApiError::method_not_allowed(
                method.as_str(),
                target.resource.plural,
            ));
        }
        // kubectl auth can-i sends its reviews as protobuf, which `decode` reads too.
        let review = objects::decode(headers, &body)?;
        let answer = authz::reviews::answer(&api.authz, user, &target, review)?;
        return Ok((axum::http::StatusCode::CREATED, axum::Json(answer)).into_response());
    }
    if target.resource.group == "metrics.k8s.io" {
        return resource_metrics::serve(api, method, &target, query, headers).await;
    }
    if let Some(node) = authz::node::node_identity(user) {
        authz::node_restriction::admit(api, node, method, &target, headers, &body).await?;
    }
    if target.resource.plural == "certificatesigningrequests" {
        return certificate_request(api, user, method, target, query, headers, body).await;
    }
    if authz::needs_escalation_check(method, &target) {
        let (object, old) = match (method, target.name.as_deref()) {
            (&Method::POST, _) => (objects::decode(headers, &body)?, None),
            (_, Some(name)) => {
                let old = objects::get(api, target.resource, target.namespace.as_deref(), name)
                    .await
                    .ok();
                let object = if *method == Method::PATCH {
                    let Some(old) = old.clone() else {
                        return objects::dispatch(api, method, target, query, headers, body).await;
                    };
                    objects::apply_patch(old, &objects::content_type(headers), &body)?
                } else {
                    objects::decode(headers, &body)?
                };
                (object, old)
            }
            _ => return objects::dispatch(api, method, target, query, headers, body).await,
        };
        let mut object = object;
        if object["metadata"]["name"].is_null()
            && let Some(name) = target.name.as_deref()
        {
            object["metadata"]["name"] = serde_json::json!(name);
        }
        apiary_api::rbac_v1::default_binding(&mut object);
        authz::check_escalation(&api.authz, user, &target, &object, old.as_ref())?;
    }
    objects::dispatch(api, method, target, query, headers, body).await
}
