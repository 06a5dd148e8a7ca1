//! Admission: what kube-apiserver's admission plugins do to an object between decoding and
//! validation. Only the mutating plugins Kubernetes enables by default that change what
//! clients see live here, one file each.
//!
//! - [`service_account`]: a pod's ServiceAccount (`default` unless named), which must exist,
//!   and its `kube-api-access-*` projected volume.
//! - [`storage`]: `DefaultStorageClass` and `StorageObjectInUseProtection` (and, validating,
//!   `PersistentVolumeClaimResize`).
//!
//! Validating plugins run after validation, on what will be stored:
//! - [`pod_security`]: the Pod Security Standards a namespace's labels ask for.
//!
//! What clients configure runs after the built-in plugins, in kube-apiserver's order: the
//! mutating [`webhooks`], then (after validation) the [`policies`] (ValidatingAdmissionPolicy)
//! and the validating [`webhooks`].

pub mod pod_security;
pub mod policies;
mod request;
pub mod service_account;
pub mod storage;
pub mod webhooks;

pub use request::{Operation, Request, as_user, namespace_object};

use serde_json::Value;

use super::{Api, objects::Result, resources::ResourceType};

/// The plugins that run. The control plane enables all of them, as kube-apiserver enables
/// these by default; an [`Api`] made for a unit test starts with none, so that a test of
/// something else need not create ServiceAccounts for its pods.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plugins {
    pub service_account: bool,
    pub pod_security: bool,
    pub storage: bool,
}

impl Plugins {
    pub fn all() -> Self {
        Self {
            service_account: true,
            pod_security: true,
            storage: true,
        }
    }
}

/// Admits a stream to pod `namespace/name` (`exec`, `attach`, `portforward`) by `user`: the
/// CONNECT request, whose object is the stream's options, goes to the policies and webhooks
/// that match it (policy engines refuse `kubectl exec` this way).
pub async fn admit_connect(
    api: &Api,
    user: super::auth::UserInfo,
    subresource: &str,
    namespace: &str,
    name: &str,
    options: Value,
) -> Result<()> {
    let request = Request {
        operation: Operation::Connect,
        resource: &apiary_api::resource::PODS,
        subresource,
        namespace: Some(namespace),
        name,
        old: None,
        dry_run: false,
        namespace_object: None,
    };
    as_user(user, async {
        // Mutating webhooks see it too; what they would change is not applied (the options
        // are the client's).
        webhooks::mutate(api, &request, &mut options.clone()).await?;
        policies::validate(api, &request, &options).await?;
        webhooks::validate(api, &request, &options).await
    })
    .await
}

/// Runs the admission plugins on a new object of `resource` (its namespace and name are set).
pub async fn admit_create(api: &Api, resource: &ResourceType, object: &mut Value) -> Result<()> {
    if api.admission.service_account && resource.group.is_empty() && resource.plural == "pods" {
        service_account::admit(api, object).await?;
    }
    if api.admission.storage {
        storage::admit_create(api, resource, object).await?;
    }
    Ok(())
}

/// Runs the validating plugins on an object about to be created or updated (as validated);
/// `namespace` is its namespace's object when the caller has read it already.
pub async fn validate(
    api: &Api,
    resource: &ResourceType,
    object: &Value,
    namespace: Option<&Value>,
) -> Result<()> {
    if api.admission.pod_security {
        pod_security::admit(api, resource, object, namespace).await?;
    }
    Ok(())
}

/// Runs the validating plugins that judge a change, on an update of `old` to `new` (through
/// the main resource).
pub async fn validate_update(
    api: &Api,
    resource: &ResourceType,
    old: &Value,
    new: &Value,
) -> Result<()> {
    if api.admission.storage {
        storage::validate_update(api, resource, old, new).await?;
    }
    Ok(())
}
