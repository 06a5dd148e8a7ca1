//! Controllers: idempotent reconcilers running in the control plane, in-process against the
//! [`Api`], on the [`runtime`] (watch → cache → debounced queue → reconcile).
//!
//! - [`replicaset`]: keeps a ReplicaSet's pods at its replica count.
//! - [`deployment`]: rolls Deployments out through ReplicaSets.
//! - [`statefulset`]: ordered pods with stable identities.
//! - [`daemonset`]: one pod per eligible node.
//! - [`endpoints`]: Endpoints and EndpointSlices of Services with a selector.
//! - [`endpoints_mirror`]: EndpointSlices mirroring the hand-written Endpoints of Services
//!   without one.
//! - [`job`]: runs Jobs' pods to completion.
//! - [`cronjob`]: creates Jobs on a cron schedule.
//! - [`horizontal`]: scales Deployments, ReplicaSets, StatefulSets and custom resources with a
//!   `scale` subresource by their pods' resource usage (HorizontalPodAutoscalers).
//! - [`loadbalancer`]: addresses of LoadBalancer Services, from the configured pools.
//! - [`identity`]: a SecurityIdentity per distinct set of security labels among live pods.
//! - [`kubernetes_service`]: `default/kubernetes`, the API server's own Service.
//! - [`serviceaccount`]: the `default` ServiceAccount of every namespace.
//! - [`root_ca`]: the `kube-root-ca.crt` ConfigMap (the cluster CA) of every namespace.
//! - [`service_account_tokens`]: legacy tokens in `kubernetes.io/service-account-token` Secrets.
//! - [`csr_approving`]: approves kubelet client certificates (nodeclient, selfnodeclient) and a
//!   node's serving certificate for its own names.
//! - [`csr_signing`]: signs approved CertificateSigningRequests with the cluster CA.
//! - [`token_cleaner`]: deletes expired bootstrap tokens.
//! - [`bootstrap_signer`]: signs `kube-public/cluster-info` for every bootstrap token.
//! - [`clusterrole_aggregation`]: the rules of aggregated ClusterRoles (`admin`, `edit`,
//!   `view`), from the ClusterRoles their selectors match.
//! - [`persistentvolume`]: binds claims to volumes, hands claims to their provisioners,
//!   releases and reclaims volumes.
//! - [`pvc_protection`], [`pv_protection`]: the finalizers that keep a claim a pod uses, and a
//!   bound volume.
//! - [`ephemeral`]: the claims of pods' generic ephemeral volumes.
//! - [`expand`]: hands a grown claim to its CSI driver's resizer.

pub mod bootstrap_signer;
pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod csr_approving;
pub mod csr_signing;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpoints_mirror;
pub mod ephemeral;
pub mod expand;
pub mod horizontal;
pub mod identity;
pub mod job;
pub mod kubernetes_service;
pub mod loadbalancer;
pub mod persistentvolume;
pub mod pv_protection;
pub mod pvc_protection;
pub mod replicaset;
pub mod root_ca;
pub mod runtime;
pub mod service_account_tokens;
pub mod serviceaccount;
pub mod statefulset;
pub mod token_cleaner;

use std::{collections::BTreeMap, future::Future, sync::Arc};

use serde_json::{Value, json};
use tokio::sync::watch;

use apiary_api::core_v1::ObjectReference;

use crate::{
    apiserver::{Api, objects, path::Target, resources::ResourceType},
    events,
};
use runtime::Error;

/// What the controllers are configured with (the control plane's flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// Where LoadBalancer Services get their addresses; none: they stay pending.
    pub load_balancer_pools: Vec<loadbalancer::Pool>,
    /// How long a SecurityIdentity no pod uses is kept before it is deleted.
    pub identity_gc_grace: std::time::Duration,
    /// The cluster CA (PEM) published in every namespace as `kube-root-ca.crt`; `None`: not
    /// published.
    pub root_ca: Option<String>,
    /// What signs approved CertificateSigningRequests; none: nothing is signed.
    pub certificate_authority: Option<Arc<crate::apiserver::pki::CertificateAuthority>>,
    /// The HorizontalPodAutoscaler controller's periods.
    pub horizontal: horizontal::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            load_balancer_pools: Vec::new(),
            identity_gc_grace: identity::DEFAULT_GC_GRACE,
            root_ca: None,
            certificate_authority: None,
            horizontal: horizontal::Config::default(),
        }
    }
}

/// Runs every controller until `shutdown` resolves, then drains them.
pub async fn run(
    api: Arc<Api>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    tokio::join!(
        replicaset::run(Arc::clone(&api), rx.clone()),
        clusterrole_aggregation::run(Arc::clone(&api), rx.clone()),
        deployment::run(Arc::clone(&api), rx.clone()),
        endpoints::run(Arc::clone(&api), rx.clone()),
        endpoints_mirror::run(Arc::clone(&api), rx.clone()),
        job::run(Arc::clone(&api), rx.clone()),
        cronjob::run(Arc::clone(&api), rx.clone()),
        horizontal::run(Arc::clone(&api), config.horizontal, rx.clone()),
        statefulset::run(Arc::clone(&api), rx.clone()),
        daemonset::run(Arc::clone(&api), rx.clone()),
        identity::run(Arc::clone(&api), config.identity_gc_grace, rx.clone()),
        serviceaccount::run(Arc::clone(&api), rx.clone()),
        service_account_tokens::run(Arc::clone(&api), config.root_ca.clone(), rx.clone()),
        root_ca::run(Arc::clone(&api), config.root_ca, rx.clone()),
        csr_approving::run(Arc::clone(&api), rx.clone()),
        token_cleaner::run(Arc::clone(&api), rx.clone()),
        bootstrap_signer::run(Arc::clone(&api), rx.clone()),
        persistentvolume::run(Arc::clone(&api), rx.clone()),
        pvc_protection::run(Arc::clone(&api), rx.clone()),
        pv_protection::run(Arc::clone(&api), rx.clone()),
        ephemeral::run(Arc::clone(&api), rx.clone()),
        expand::run(Arc::clone(&api), rx.clone()),
        {
            let (api, rx) = (Arc::clone(&api), rx.clone());
            async move {
                if let Some(ca) = config.certificate_authority {
                    csr_signing::run(api, ca, rx).await;
                }
            }
        },
        loadbalancer::run(Arc::clone(&api), config.load_balancer_pools, rx),
    );
    tracing::debug!("controllers stopped");
}

/// The resource type `plural` of `group`/`version`.
fn resource(api: &Api, group: &str, version: &str, plural: &str) -> &'static ResourceType {
    api.resources
        .get(group, version, plural)
        .unwrap_or_else(|| panic!("{plural} are served"))
}

fn target(resource: &'static ResourceType, namespace: &str, name: Option<&str>) -> Target {
    Target {
        resource,
        namespace: Some(namespace.to_owned()),
        name: name.map(str::to_owned),
        subresource: None,
    }
}

/// The objects of `resource` in `namespace`, read from the store (not a cache): a controller
/// counting what it created must see its own writes, or it creates them twice.
/// The object `key` names, read from the store rather than the cache (so the status written
/// last time is seen); `None` once it is gone.
async fn get_fresh(
    api: &Api,
    resource: &'static ResourceType,
    key: &apiary_api::meta::ObjectRef,
) -> runtime::Result<Option<Value>> {
    match objects::get(api, resource, Some(&key.namespace), &key.name).await {
        Ok(object) => Ok(Some(object)),
        Err(e) if e.reason == "NotFound" => Ok(None),
        Err(e) => Err(Error::api(
            format!("reading {} {}", resource.kind.to_lowercase(), key.name),
            &e,
        )),
    }
}

/// Deletes exactly `pod` (its UID is a precondition, so a replacement of the same name is never
/// hit); `Ok(false)` when it was gone already.
async fn delete_pod(
    api: &Arc<Api>,
    pods: &'static ResourceType,
    pod: &Value,
) -> runtime::Result<bool> {
    let namespace = str_of(pod, "/metadata/namespace");
    let name = str_of(pod, "/metadata/name");
    let options = json!({ "preconditions": { "uid": pod["metadata"]["uid"] } });
    match objects::delete(api, &target(pods, namespace, Some(name)), name, &options).await {
        Ok(_) => Ok(true),
        Err(e) if e.reason == "NotFound" => Ok(false),
        Err(e) => Err(Error::api(format!("deleting pod {name}"), &e)),
    }
}

async fn list_fresh(
    api: &Api,
    resource: &'static ResourceType,
    namespace: &str,
) -> runtime::Result<Vec<Value>> {
    let mut listing = objects::list(api, &target(resource, namespace, None), &Default::default())
        .await
        .map_err(|e| Error::api(format!("listing {}", resource.plural), &e))?;
    Ok(listing["items"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A `metav1.Time` field (RFC 3339) of an object; `None` when unset or malformed.
fn parse_time(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn str_of<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// The owner reference with `controller: true`, if any.
fn controller_of(object: &Value) -> Option<&Value> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
}

/// Whether `owner` (by uid) is the controller of `object`.
fn controlled_by(object: &Value, owner: &Value) -> bool {
    controller_of(object).is_some_and(|r| r["uid"] == owner["metadata"]["uid"])
}

/// The controller owner reference pointing at `owner`.
fn owner_reference(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn selector_of(object: &Value) -> Option<apiary_api::selector::LabelSelector> {
    apiary_api::meta::from_json(object["spec"]["selector"].clone()).ok()
}

/// Records a core/v1 Event about `involved` (of `api_version`/`kind`); a repeat is counted on
/// the Event it repeats. Best effort: a failure is logged, never fails the reconcile.
async fn record_event(
    api: &Arc<Api>,
    component: &str,
    involved: &Value,
    kind: (&str, &str),
    reason: &str,
    message: &str,
) {
    record(api, component, involved, kind, ("Normal", reason), message).await;
}

/// Records a `Warning` Event, like [`record_event`].
async fn record_warning(
    api: &Arc<Api>,
    component: &str,
    involved: &Value,
    kind: (&str, &str),
    reason: &str,
    message: &str,
) {
    record(api, component, involved, kind, ("Warning", reason), message).await;
}

async fn record(
    api: &Arc<Api>,
    component: &str,
    involved: &Value,
    (api_version, kind): (&str, &str),
    type_reason: (&str, &str),
    message: &str,
) {
    let involved = ObjectReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: str_of(involved, "/metadata/name").to_owned(),
        namespace: str_of(involved, "/metadata/namespace").to_owned(),
        uid: str_of(involved, "/metadata/uid").to_owned(),
        resource_version: str_of(involved, "/metadata/resourceVersion").to_owned(),
        field_path: String::new(),
    };
    let reporter = events::Reporter {
        component,
        instance: "",
    };
    events::record(api, reporter, involved, type_reason, message).await;
}

/// Which resource version a status write is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pin {
    /// The latest version: the status is recomputed from scratch every time.
    Latest,
    /// The version the status was computed from: it builds on the previous status.
    AsRead,
}

/// Writes `status` to `object` through its `status` subresource; an object gone meanwhile is
/// no error.
async fn put_status(
    api: &Arc<Api>,
    resource: &'static ResourceType,
    object: &Value,
    status: Value,
    pin: Pin,
) -> runtime::Result<()> {
    let namespace = str_of(object, "/metadata/namespace");
    let name = str_of(object, "/metadata/name");
    let mut updated = object.clone();
    updated["status"] = status;
    if pin == Pin::Latest {
        updated["metadata"]["resourceVersion"] = Value::Null;
    }
    let status_target = Target {
        subresource: Some("status".into()),
        ..target(resource, namespace, Some(name))
    };
    match objects::update(api, &status_target, name, updated).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "NotFound" => Ok(()),
        Err(e) => Err(Error::api(format!("updating the status of {name}"), &e)),
    }
}
