//! What each kind does differently on the write path, one strategy per kind behind
//! [`KindStrategy`], in kube-apiserver's shape (`pkg/registry/<group>/<kind>/strategy.go`): its
//! defaults, create and update preparation (status reset, generation), validation, what its
//! deletion does and sets off, its table, its schema's unknown fields and list types, and its
//! scale subresource. The verbs ([`super::objects`]) are written once and ask the kind's
//! strategy at each of these steps, so adding a kind, or serving a custom resource, adds an
//! entry here and nothing there.
//!
//! Built-in kinds with nothing of their own share [`BuiltIn`]; a custom resource's strategy
//! ([`custom::Custom`]) is built from its CustomResourceDefinition's schema. As in Kubernetes,
//! where defaulting lives with the API types (`pkg/apis/<group>/v1/defaults.go`), printing in
//! one package (`pkg/printers`) and validation in another (`pkg/apis/<group>/validation`), a
//! built-in's strategy finds its defaults in [`super::defaults`], its columns in
//! [`super::tables`] and its validation in the API crate, each by its kind.

mod apiextensions;
mod autoscaling;
mod certificates;
mod core;
pub mod custom;
mod rbac;

use std::{ops::Deref, sync::Arc};

use apiary_api::validation;
use serde_json::{Value, json};

use super::{
    Api, allocator,
    custom_resources::CustomResources,
    defaults,
    error::ApiError,
    objects::Result,
    resources::{ResourceType, StorageKeys as _, is_built_in},
    tables,
};

/// Where a scalable kind keeps its replica counts and selector: a custom kind's `scale`
/// subresource paths, or (`None`) `spec.replicas`, `status.replicas` and `spec.selector` of the
/// built-ins.
pub type ScalePaths = Option<apiary_api::apiextensions_v1::ScaleSubresource>;

/// One kind's write behaviour. Every method has the behaviour most kinds share, so a kind's
/// strategy only says what it does differently. Methods take the kind's `resource` where the
/// shared behaviour depends on it (its defaults and empty status are the kind's, its `Invalid`
/// errors name it).
///
/// The verbs call them in kube-apiserver's order. Create: [`prepare_write`], the custom
/// schema's [`prune_and_default`], mutating admission, [`prepare_for_create`], [`validate`],
/// validating admission, [`allocate`], store. Update: [`prepare_for_update`] (with the shared
/// metadata rules and [`generation_changed`]), [`prepare_write`], [`default`],
/// [`prune_and_default`], [`reconcile_update`], [`validate`], validating admission (if
/// [`admits_update`]), store. Delete: [`graceful_delete`], [`prepare_for_delete`], store, then
/// [`on_marked`] or [`release`].
///
/// [`prepare_write`]: KindStrategy::prepare_write
/// [`prune_and_default`]: KindStrategy::prune_and_default
/// [`prepare_for_create`]: KindStrategy::prepare_for_create
/// [`validate`]: KindStrategy::validate
/// [`allocate`]: KindStrategy::allocate
/// [`prepare_for_update`]: KindStrategy::prepare_for_update
/// [`generation_changed`]: KindStrategy::generation_changed
/// [`default`]: KindStrategy::default
/// [`reconcile_update`]: KindStrategy::reconcile_update
/// [`admits_update`]: KindStrategy::admits_update
/// [`graceful_delete`]: KindStrategy::graceful_delete
/// [`prepare_for_delete`]: KindStrategy::prepare_for_delete
/// [`on_marked`]: KindStrategy::on_marked
/// [`release`]: KindStrategy::release
#[async_trait::async_trait]
pub trait KindStrategy: Send + Sync {
    /// What every write (create, update, patch) does to the object as sent before it is
    /// defaulted and validated: the conversion of write-only wire fields (a Secret's
    /// `stringData`) and defaults the authorizer's checks already assume.
    fn prepare_write(&self, _resource: &ResourceType, _object: &mut Value) {}

    /// A custom object's schema prunes unknown fields and nulls and fills defaults; returns the
    /// unknown fields' paths. Built-in kinds keep what they are sent.
    fn prune_and_default(&self, _object: &mut Value) -> Vec<String> {
        Vec::new()
    }

    /// The fields of `object` the kind's OpenAPI schema has no place for, reported (and kept)
    /// as a request's `fieldValidation` says.
    fn unknown_fields(&self, resource: &ResourceType, object: &Value) -> Vec<String> {
        super::openapi::unknown_fields(resource, object)
    }

    /// Where server-side apply finds the kind's list types (`x-kubernetes-list-type` and merge
    /// keys).
    fn apply_shape(&self) -> apiary_api::apply::Shape<'_> {
        apiary_api::apply::Shape::BUILT_IN
    }

    /// The kind's defaults ([`defaults::apply`]), on create and on every update.
    fn default(&self, resource: &ResourceType, object: &mut Value) {
        defaults::apply(resource.kind, object);
    }

    /// `PrepareForCreate`: defaults, and the status a new object starts with.
    fn prepare_for_create(&self, resource: &ResourceType, object: &mut Value) {
        self.default(resource, object);
        self.reset_status(resource, object);
    }

    /// A new object's status. Controllers own status: what a client sends on create is
    /// replaced by the kind's empty status, which Kubernetes always serializes.
    fn reset_status(&self, resource: &ResourceType, object: &mut Value) {
        if !resource.has_subresource("status") {
            return;
        }
        match defaults::initial_status(resource.kind) {
            Some(status) => object["status"] = status,
            None => {
                if let Some(obj) = object.as_object_mut() {
                    obj.remove("status");
                }
            }
        }
    }

    /// `PrepareForUpdate`: what of the incoming object `new` an update through `sub` keeps,
    /// over the stored `old`. A main-resource write leaves `status` alone while a `status`
    /// write changes only `status`. (Metadata a client may not change is kept by the verb,
    /// for every kind.)
    fn prepare_for_update(
        &self,
        resource: &ResourceType,
        sub: Option<&str>,
        old: &Value,
        new: Value,
    ) -> Value {
        keep_status(resource, sub, old, new)
    }

    /// Whether an update changes what `metadata.generation` counts: a built-in's `spec`.
    fn generation_changed(&self, _resource: &ResourceType, old: &Value, new: &Value) -> bool {
        old.get("spec") != new.get("spec")
    }

    /// `Validate` of a new object (`old` is `None`) and `ValidateUpdate` of an update of `old`
    /// through `sub`, with Kubernetes' messages and field paths: a 422 `Invalid`, or a 400 for
    /// a body that does not even decode as its kind.
    fn validate(
        &self,
        resource: &ResourceType,
        _sub: Option<&str>,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<()> {
        validate_built_in(resource, object, old)
    }

    /// Whether validating admission judges an update from `old` to `new` (it judges what a
    /// client changed).
    fn admits_update(&self, _old: &Value, _new: &Value) -> bool {
        true
    }

    /// What a new object claims before it is stored (a Service's ClusterIP and NodePorts),
    /// released again if the create fails.
    async fn allocate(&self, _api: &Api, _object: &mut Value) -> Result<allocator::Claims> {
        Ok(allocator::Claims::default())
    }

    /// What an update through `sub` claims, and (returned) what it lets go of once stored.
    async fn reconcile_update(
        &self,
        _api: &Api,
        _sub: Option<&str>,
        _old: &Value,
        _new: &mut Value,
    ) -> Result<allocator::Claims> {
        Ok(allocator::Claims::default())
    }

    /// What a dry-run update `new` of `old` lets go of again: what
    /// [`KindStrategy::reconcile_update`] claimed for it alone.
    async fn release_dry_run(&self, _api: &Api, _old: &Value, _new: &Value) {}

    /// Refuses deleting `name` outright (kube-apiserver's admission: NamespaceLifecycle keeps
    /// `default`, `kube-system` and `kube-public`).
    fn admit_delete(&self, _resource: &ResourceType, _name: &str) -> Result<()> {
        Ok(())
    }

    /// Whether a delete only marks the object, leaving its removal to whoever stops it.
    async fn graceful_delete(&self, _api: &Api, _object: &Value, _options: &Value) -> bool {
        false
    }

    /// Whether an object already marked for deletion goes at once when a delete is not
    /// graceful and no finalizer holds it (a pod whose grace is cut to 0).
    fn delete_marked_at_once(&self) -> bool {
        false
    }

    /// Changes made to an object a delete marks.
    fn prepare_for_delete(&self, _object: &mut Value, _options: &Value) {}

    /// What marking an object for deletion sets off, if the kind finishes its own deletion
    /// (a namespace is emptied, then removed). `None`: finalizers and foreground deletion
    /// decide.
    async fn on_marked(&self, _api: &Arc<Api>, _object: &Value) -> Option<Result<()>> {
        None
    }

    /// What an object that is gone lets go of (a Service's addresses and ports).
    async fn release(&self, _api: &Api, _object: &Value) {}

    /// The server-side `Table` of `objects` (`kubectl get`): the kind's columns.
    fn table(&self, resource: &ResourceType, objects: &[Value], metadata: Value) -> Value {
        tables::table(resource, objects, metadata)
    }

    /// Where the kind's `scale` subresource reads and writes replicas.
    fn scale_paths(&self) -> ScalePaths {
        None
    }
}

/// A built-in kind with nothing of its own: its defaults, empty status and validation are
/// found by its kind.
#[derive(Debug)]
pub struct BuiltIn;

impl KindStrategy for BuiltIn {}

/// The strategies of every kind served: the built-ins', and the custom resources' built from
/// their schemas.
#[derive(Debug, Default)]
pub struct Registry {
    /// The custom resources served (shared with [`super::resources::Resources`]).
    pub custom: Arc<CustomResources>,
}

impl Registry {
    /// The strategy of `resource`'s kind.
    pub fn strategy_for(&self, resource: &ResourceType) -> Registered {
        if !is_built_in(resource) {
            return Registered::Custom(custom::Custom::new(self.custom.of(resource)));
        }
        Registered::BuiltIn(match (resource.group, resource.plural) {
            ("", "pods") => &core::pods::Pods,
            ("", "services") => &core::services::Services,
            ("", "namespaces") => &core::namespaces::Namespaces,
            ("", "secrets") => &core::secrets::Secrets,
            ("", "persistentvolumes") => &core::persistent_volumes::PersistentVolumes,
            ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
                &rbac::Bindings
            }
            ("certificates.k8s.io", "certificatesigningrequests") => {
                &certificates::CertificateSigningRequests
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                &apiextensions::CustomResourceDefinitions
            }
            ("autoscaling", "horizontalpodautoscalers") => &autoscaling::HorizontalPodAutoscalers,
            _ => &BuiltIn,
        })
    }
}

/// A kind's strategy as the registry finds it: a built-in's is static, a custom resource's
/// holds its version's schema.
#[derive(Clone)]
pub enum Registered {
    BuiltIn(&'static dyn KindStrategy),
    Custom(custom::Custom),
}

impl Deref for Registered {
    type Target = dyn KindStrategy;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::BuiltIn(strategy) => *strategy,
            Self::Custom(custom) => custom,
        }
    }
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BuiltIn(_) => f.write_str("BuiltIn"),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// The status rule of [`KindStrategy::prepare_for_update`]: a `status` write changes only
/// `status`, any other leaves it as stored (if the kind has a `status` subresource).
fn keep_status(resource: &ResourceType, sub: Option<&str>, old: &Value, new: Value) -> Value {
    if sub == Some("status") {
        let mut merged = old.clone();
        merged["status"] = new["status"].clone();
        return merged;
    }
    let mut merged = new;
    if resource.has_subresource("status") {
        merged["status"] = old["status"].clone();
    }
    merged
}

/// A built-in object's validation, by the API crate's rules for its kind.
fn validate_built_in(resource: &ResourceType, object: &Value, old: Option<&Value>) -> Result<()> {
    let errors = built_in_errors(resource, object, old).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {e}",
            kind = resource.kind,
            version = resource.version,
        ))
    })?;
    invalid(resource, object_name(object), &errors)
}

/// The API crate's errors for a new object (`old` is `None`) or an update of `old`.
fn built_in_errors(
    resource: &ResourceType,
    object: &Value,
    old: Option<&Value>,
) -> std::result::Result<validation::ErrorList, serde_json::Error> {
    match old {
        None => validation::validate_object(resource, object),
        Some(old) => validation::validate_object_update(resource, old, object),
    }
}

fn object_name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Kubernetes' 422 `Invalid` Status for `errors`, if there are any.
fn invalid(resource: &ResourceType, name: &str, errors: &validation::ErrorList) -> Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let causes: Vec<(String, String)> = errors
        .iter()
        .map(|e| (e.path.clone(), e.to_string()))
        .collect();
    Err(ApiError::invalid(
        resource.kind,
        resource.group,
        name,
        &causes,
    ))
}

/// Adds `finalizer` to `object`'s finalizers, once.
fn add_finalizer(object: &mut Value, finalizer: &str) {
    let finalizers = &mut object["metadata"]["finalizers"];
    if !finalizers.is_array() {
        *finalizers = json!([]);
    }
    if let Some(list) = finalizers.as_array_mut()
        && !list.iter().any(|f| f == finalizer)
    {
        list.push(json!(finalizer));
    }
}

#[cfg(test)]
mod tests {
    use apiary_api::resource::{
        CUSTOM_RESOURCE_DEFINITIONS, DEPLOYMENTS, NAMESPACES, PODS, ResourceInfo, SECRETS,
    };

    use super::*;

    /// A custom resource whose CRD is not served (any longer): only the rules of every object.
    const WIDGETS: ResourceInfo = ResourceInfo {
        group: "example.com",
        kind: "Widget",
        plural: "widgets",
        singular: "widget",
        short_names: &[],
        categories: &[],
        field_selectors: &[],
        ..DEPLOYMENTS
    };

    fn strategy(resource: &ResourceInfo) -> Registered {
        Registry::default().strategy_for(resource)
    }

    #[test]
    fn each_kind_finds_its_own_strategy() {
        let mut secret = json!({ "metadata": { "name": "s" }, "stringData": { "a": "b" } });
        strategy(&SECRETS).prepare_write(&SECRETS, &mut secret);
        assert!(secret.get("stringData").is_none());
        assert!(secret["data"]["a"].is_string());

        let mut pod =
            json!({ "metadata": { "name": "p" }, "spec": {}, "status": { "phase": "Running" } });
        strategy(&PODS).prepare_for_create(&PODS, &mut pod);
        assert_eq!(
            pod["status"]["phase"], "Running",
            "a pod keeps the phase it is created with"
        );

        let mut ns = json!({ "metadata": { "name": "n" }, "status": { "phase": "Terminating" } });
        strategy(&NAMESPACES).prepare_for_create(&NAMESPACES, &mut ns);
        assert_eq!(ns["status"], json!({ "phase": "Active" }));

        let mut crd = json!({
            "metadata": { "name": "widgets.example.com" },
            "spec": { "names": { "kind": "Widget" }, "versions": [{ "name": "v1", "storage": true }] },
        });
        let crds = strategy(&CUSTOM_RESOURCE_DEFINITIONS);
        crds.prepare_write(&CUSTOM_RESOURCE_DEFINITIONS, &mut crd);
        crds.prepare_for_create(&CUSTOM_RESOURCE_DEFINITIONS, &mut crd);
        assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(
            crd["metadata"]["finalizers"],
            json!([super::super::custom_resources::CLEANUP_FINALIZER])
        );
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    }

    #[test]
    fn a_create_resets_status_to_the_kinds_empty_one() {
        let mut deployment =
            json!({ "metadata": { "name": "d" }, "spec": {}, "status": { "replicas": 3 } });
        strategy(&DEPLOYMENTS).prepare_for_create(&DEPLOYMENTS, &mut deployment);
        assert_eq!(deployment["status"], json!({}));
        assert_eq!(deployment["spec"]["replicas"], 1, "defaulted");
    }

    #[test]
    fn an_update_keeps_status_unless_it_is_a_status_write() {
        let builtin = strategy(&DEPLOYMENTS);
        let old = json!({ "spec": { "replicas": 1 }, "status": { "replicas": 1 } });
        let new = json!({ "spec": { "replicas": 2 }, "status": { "replicas": 5 } });
        let merged = builtin.prepare_for_update(&DEPLOYMENTS, None, &old, new.clone());
        assert_eq!(merged["spec"]["replicas"], 2);
        assert_eq!(merged["status"]["replicas"], 1);
        let merged = builtin.prepare_for_update(&DEPLOYMENTS, Some("status"), &old, new);
        assert_eq!(merged["spec"]["replicas"], 1);
        assert_eq!(merged["status"]["replicas"], 5);
    }

    #[test]
    fn generation_counts_a_built_ins_spec_and_a_custom_objects_content() {
        let old = json!({ "metadata": { "labels": {} }, "spec": { "a": 1 }, "data": 1 });
        let relabeled =
            json!({ "metadata": { "labels": { "x": "y" } }, "spec": { "a": 1 }, "data": 1 });
        let new_data = json!({ "metadata": {}, "spec": { "a": 1 }, "data": 2 });
        let builtin = strategy(&DEPLOYMENTS);
        assert!(!builtin.generation_changed(&DEPLOYMENTS, &old, &relabeled));
        assert!(!builtin.generation_changed(&DEPLOYMENTS, &old, &new_data));
        let custom = strategy(&WIDGETS);
        assert!(matches!(custom, Registered::Custom(_)));
        assert!(!custom.generation_changed(&WIDGETS, &old, &relabeled));
        assert!(custom.generation_changed(&WIDGETS, &old, &new_data));
    }

    #[test]
    fn a_pod_binding_is_validated_as_an_object_and_a_pods_labels_skip_admission() {
        let pods = strategy(&PODS);
        let old = json!({ "metadata": { "name": "p" }, "spec": { "nodeName": "" } });
        let mut relabeled = old.clone();
        relabeled["metadata"]["labels"] = json!({ "a": "b" });
        assert!(!pods.admits_update(&old, &relabeled));
        assert!(strategy(&DEPLOYMENTS).admits_update(&old, &relabeled));
        let bound = json!({ "spec": { "nodeName": "n1" }, "status": { "phase": "Pending" } });
        let merged = pods.prepare_for_update(&PODS, Some("binding"), &old, bound.clone());
        assert_eq!(
            merged, bound,
            "a binding's object is the server's, status included"
        );
    }
}
