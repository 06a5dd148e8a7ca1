//! The schema of every kind the server serves and of every type they reference, named as
//! Kubernetes names them (`io.k8s.api.core.v1.Pod`), from `k8s-openapi`'s JsonSchema impls (its
//! `v1_32` types, the version `/version` reports), with the extensions kube-apiserver adds:
//! `x-kubernetes-group-version-kind` on each kind and the patch and list extensions of the lists
//! strategic merge patch merges by key ([`apiary_api::strategic`], the server's own table).
//!
//! The definitions are kept in OpenAPI v2 form (`$ref: #/definitions/<name>`); the v3 documents
//! rewrite them ([`super::v3`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    admissionregistration::v1 as admissionregistration, apps::v1 as apps,
    authentication::v1 as authentication, authorization::v1 as authorization,
    autoscaling::v1 as autoscaling, batch::v1 as batch, certificates::v1 as certificates,
    coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
    networking::v1 as networking, rbac::v1 as rbac, storage::v1 as storage,
};
use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use apiary_api::{resource::RESOURCES, strategic};

/// Where references point in the stored definitions (OpenAPI v2's place for them).
pub const REF_PREFIX: &str = "#/definitions/";

/// A group, version and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gvk {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
}

impl Gvk {
    /// The value of `x-kubernetes-group-version-kind` on an operation (a definition has a list
    /// of them).
    pub fn to_json(self) -> Value {
        json!({ "group": self.group, "kind": self.kind, "version": self.version })
    }
}

/// Every definition, and which of them are the served kinds.
#[derive(Debug)]
pub struct Catalog {
    pub definitions: Map<String, Value>,
    /// The definition of each served kind (including the kinds of subresources, such as
    /// `autoscaling/v1` `Scale`), with the group version whose document publishes it.
    pub kinds: BTreeMap<Gvk, Published>,
}

/// Where a kind's schema is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Its definition's name.
    pub name: String,
    /// `(group, version)` of the document it appears in: its own, or for a subresource's kind
    /// the parent resource's (the `/api/v1` document holds `authentication.k8s.io/v1`
    /// `TokenRequest`, as kube-apiserver's does).
    pub served_in: (&'static str, &'static str),
}

impl Catalog {
    /// Generates the definitions of every served kind.
    pub fn generate() -> Self {
        let mut settings = SchemaSettings::draft2020_12();
        settings.definitions_path = REF_PREFIX.trim_start_matches('#').into();
        let mut generator = settings.into_generator();
        let mut kinds = BTreeMap::new();
        for gvk_served_in in served_kinds() {
            let (gvk, served_in) = gvk_served_in;
            let name = add_kind(&mut generator, gvk.group, gvk.version, gvk.kind)
                .unwrap_or_else(|| panic!("no schema for the served kind {gvk:?}"));
            kinds.entry(gvk).or_insert(Published { name, served_in });
        }
        let mut definitions = generator.take_definitions(false);
        for (gvk, published) in &kinds {
            let schema = definitions
                .get_mut(&published.name)
                .and_then(Value::as_object_mut)
                .expect("a kind's schema is an object");
            schema.insert(
                "x-kubernetes-group-version-kind".to_owned(),
                json!([gvk.to_json()]),
            );
        }
        for schema in definitions.values_mut() {
            drop_required_metadata(schema);
        }
        add_patch_extensions(&mut definitions);
        Self { definitions, kinds }
    }

    /// The names of `roots` and of every definition they reference, directly or not.
    pub fn closure<'a>(&self, roots: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut pending: Vec<String> = roots.into_iter().map(str::to_owned).collect();
        while let Some(name) = pending.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(schema) = self.definitions.get(&name) {
                for_each_ref(schema, &mut |target| pending.push(target.to_owned()));
            }
        }
        seen
    }
}

/// Each served kind with the group version whose document publishes it: the resources'
/// kinds, then their subresources' (`Binding`, `Scale`, `TokenRequest`) that Kubernetes
/// publishes a schema for.
fn served_kinds() -> Vec<(Gvk, (&'static str, &'static str))> {
    let mut out = Vec::new();
    for r in RESOURCES {
        let gv = (r.group, r.version);
        out.push((
            Gvk {
                group: r.group,
                version: r.version,
                kind: r.kind,
            },
            gv,
        ));
        for sub in r.subresources {
            let (group, version) = sub.group_version.unwrap_or(gv);
            let gvk = Gvk {
                group,
                version,
                kind: sub.kind,
            };
            if is_query_options(gvk) {
                continue;
            }
            out.push((gvk, gv));
        }
    }
    out
}

/// `PodExecOptions` and its kin are query parameters, not bodies: Kubernetes publishes no
/// definition for them.
fn is_query_options(gvk: Gvk) -> bool {
    gvk.group.is_empty() && gvk.kind.ends_with("Options")
}

/// Adds the schema of kind `group`/`kind`, and of everything it references, to `generator`;
/// returns its definition's name, or `None` for a kind without one.
fn add_kind(
    generator: &mut SchemaGenerator,
    group: &str,
    version: &str,
    kind: &str,
) -> Option<String> {
    fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> Option<String> {
        generator.subschema_for::<T>();
        Some(T::schema_name().into_owned())
    }
    let g = generator;
    // The one built-in kind served in two versions.
    if (group, kind) == ("autoscaling", "HorizontalPodAutoscaler") {
        return match version {
            "v1" => add::<autoscaling::HorizontalPodAutoscaler>(g),
            _ => add::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>(g),
        };
    }
    match (group, kind) {
        ("", "Binding") => add::<core::Binding>(g),
        ("", "ConfigMap") => add::<core::ConfigMap>(g),
        ("", "Endpoints") => add::<core::Endpoints>(g),
        ("", "Event") => add::<core::Event>(g),
        ("", "Namespace") => add::<core::Namespace>(g),
        ("", "Node") => add::<core::Node>(g),
        ("", "Pod") => add::<core::Pod>(g),
        ("", "Secret") => add::<core::Secret>(g),
        ("", "Service") => add::<core::Service>(g),
        ("", "ServiceAccount") => add::<core::ServiceAccount>(g),
        ("", "PersistentVolume") => add::<core::PersistentVolume>(g),
        ("", "PersistentVolumeClaim") => add::<core::PersistentVolumeClaim>(g),
        ("storage.k8s.io", "StorageClass") => add::<storage::StorageClass>(g),
        ("storage.k8s.io", "CSIDriver") => add::<storage::CSIDriver>(g),
        ("storage.k8s.io", "CSINode") => add::<storage::CSINode>(g),
        ("storage.k8s.io", "CSIStorageCapacity") => add::<storage::CSIStorageCapacity>(g),
        ("storage.k8s.io", "VolumeAttachment") => add::<storage::VolumeAttachment>(g),
        ("apps", "DaemonSet") => add::<apps::DaemonSet>(g),
        ("apps", "Deployment") => add::<apps::Deployment>(g),
        ("apps", "ReplicaSet") => add::<apps::ReplicaSet>(g),
        ("apps", "StatefulSet") => add::<apps::StatefulSet>(g),
        ("authentication.k8s.io", "SelfSubjectReview") => {
            add::<authentication::SelfSubjectReview>(g)
        }
        ("authentication.k8s.io", "TokenRequest") => add::<authentication::TokenRequest>(g),
        ("authentication.k8s.io", "TokenReview") => add::<authentication::TokenReview>(g),
        ("authorization.k8s.io", "LocalSubjectAccessReview") => {
            add::<authorization::LocalSubjectAccessReview>(g)
        }
        ("authorization.k8s.io", "SelfSubjectAccessReview") => {
            add::<authorization::SelfSubjectAccessReview>(g)
        }
        ("authorization.k8s.io", "SelfSubjectRulesReview") => {
            add::<authorization::SelfSubjectRulesReview>(g)
        }
        ("authorization.k8s.io", "SubjectAccessReview") => {
            add::<authorization::SubjectAccessReview>(g)
        }
        ("autoscaling", "Scale") => add::<autoscaling::Scale>(g),
        ("batch", "CronJob") => add::<batch::CronJob>(g),
        ("batch", "Job") => add::<batch::Job>(g),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            add::<certificates::CertificateSigningRequest>(g)
        }
        ("coordination.k8s.io", "Lease") => add::<coordination::Lease>(g),
        ("discovery.k8s.io", "EndpointSlice") => add::<discovery::EndpointSlice>(g),
        ("networking.k8s.io", "NetworkPolicy") => add::<networking::NetworkPolicy>(g),
        ("rbac.authorization.k8s.io", "ClusterRole") => add::<rbac::ClusterRole>(g),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => add::<rbac::ClusterRoleBinding>(g),
        ("rbac.authorization.k8s.io", "Role") => add::<rbac::Role>(g),
        ("rbac.authorization.k8s.io", "RoleBinding") => add::<rbac::RoleBinding>(g),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            add::<admissionregistration::MutatingWebhookConfiguration>(g)
        }
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            add::<admissionregistration::ValidatingWebhookConfiguration>(g)
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => {
            add::<admissionregistration::ValidatingAdmissionPolicy>(g)
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => {
            add::<admissionregistration::ValidatingAdmissionPolicyBinding>(g)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => add::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(g),
        ("apiary.dev", "SecurityIdentity") => add::<SecurityIdentity>(g),
        ("metrics.k8s.io", "NodeMetrics") => add::<ResourceMetrics<false>>(g),
        ("metrics.k8s.io", "PodMetrics") => add::<ResourceMetrics<true>>(g),
        _ => None,
    }
}

/// The `apiVersion` and `kind` properties of the kinds whose schemas are written here.
fn api_version_property() -> Value {
    json!({
        "description": "APIVersion defines the versioned schema of this representation of an object.",
        "type": "string",
    })
}

fn kind_property() -> Value {
    json!({
        "description": "Kind is a string value representing the REST resource this object represents.",
        "type": "string",
    })
}

/// The schema of `apiary.dev/v1` `SecurityIdentity` ([`apiary_api::apiary_v1::SecurityIdentity`]),
/// Apiary's own kind, named as kube-apiserver names a custom resource's schema (reversed group).
struct SecurityIdentity;

impl JsonSchema for SecurityIdentity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "dev.apiary.v1.SecurityIdentity".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> schemars::Schema {
        let mut metadata =
            generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
        metadata.insert(
            "description".to_owned(),
            "Standard object's metadata; its name is the identity's number in decimal.".into(),
        );
        schemars::json_schema!({
            "description": "The cluster-wide number of one set of security labels (a pod's labels, its namespace's name and its namespace's labels). The control plane allocates them; every node maps pod addresses to them.",
            "type": "object",
            "properties": {
                "apiVersion": api_version_property(),
                "kind": kind_property(),
                "metadata": metadata,
                "labels": {
                    "description": "What the identity stands for: `k8s:<key>` for each label of the pod, `k8s-ns:<key>` for each label of its namespace, `apiary:namespace` for its namespace's name. Immutable.",
                    "type": "object",
                    "additionalProperties": { "type": "string" },
                },
            },
        })
    }
}

/// metrics-server's `NodeMetrics` (`POD` false) and `PodMetrics` (`k8s.io/metrics`, which
/// k8s-openapi does not carry), under the names metrics-server publishes them.
struct ResourceMetrics<const POD: bool>;

impl<const POD: bool> JsonSchema for ResourceMetrics<POD> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        match POD {
            false => "io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics".into(),
            true => "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics".into(),
        }
    }

    fn json_schema(generator: &mut SchemaGenerator) -> schemars::Schema {
        use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1};
        let metadata = generator.subschema_for::<v1::ObjectMeta>();
        let timestamp = generator.subschema_for::<v1::Time>();
        let usage = schemars::json_schema!({
            "description": "The memory and CPU usage.",
            "type": "object",
            "additionalProperties": generator.subschema_for::<Quantity>(),
        });
        let mut schema = schemars::json_schema!({
            "description": if POD { "PodMetrics sets resource usage metrics of a pod." } else { "NodeMetrics sets resource usage metrics of a node." },
            "type": "object",
            "required": ["timestamp", "window"],
            "properties": {
                "apiVersion": api_version_property(),
                "kind": kind_property(),
                "metadata": metadata,
                "timestamp": timestamp,
                "window": { "type": "string" },
            },
        });
        let properties = schema
            .get_mut("properties")
            .and_then(Value::as_object_mut)
            .expect("just written");
        if POD {
            properties.insert(
                "containers".into(),
                json!({
                    "description": "Metrics for all containers are collected within the same time window.",
                    "type": "array",
                    "items": {
                        "description": "ContainerMetrics sets resource usage metrics of a container.",
                        "type": "object",
                        "required": ["name", "usage"],
                        "properties": { "name": { "description": "Container name corresponding to the one from pod.spec.containers.", "type": "string" }, "usage": usage },
                    },
                }),
            );
        } else {
            properties.insert("usage".into(), usage.to_value());
        }
        schema
    }
}

/// k8s-openapi lists `metadata` as required in every kind (its Rust field is not optional);
/// Kubernetes' schemas never do, and `kubectl explain` would show it as `-required-`.
fn drop_required_metadata(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(required)) = object.get_mut("required") {
        required.retain(|field| field != "metadata");
        if required.is_empty() {
            object.remove("required");
        }
    }
}

/// Calls `f` with the target of every `$ref` in `schema`.
pub fn for_each_ref(schema: &Value, f: &mut impl FnMut(&str)) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => {
                        f(target.strip_prefix(REF_PREFIX).unwrap_or(target));
                    }
                    _ => for_each_ref(value, f),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| for_each_ref(item, f)),
        _ => {}
    }
}

/// The definition a property's value (or, for a list or map, its items) refers to.
fn referenced(property: &Value) -> Option<&str> {
    let target = property
        .get("$ref")
        .or_else(|| property.get("items").and_then(|i| i.get("$ref")))
        .or_else(|| {
            property
                .get("additionalProperties")
                .and_then(|i| i.get("$ref"))
        })?
        .as_str()?;
    Some(target.strip_prefix(REF_PREFIX).unwrap_or(target))
}

fn properties(schema: &Value) -> impl Iterator<Item = (&String, &Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
}

/// Marks the lists that strategic merge patch merges by key or as a set, as kube-apiserver
/// does: `x-kubernetes-patch-merge-key`, `x-kubernetes-patch-strategy` (what `kubectl apply`
/// computes its patches from) and `x-kubernetes-list-type`/`x-kubernetes-list-map-keys`.
///
/// The merge key table ([`strategic::merge_key`]) is keyed by the list's field and the field
/// holding it (container `ports` merge by `containerPort`, a service's by `port`), so each
/// definition is first matched with the fields that hold it.
fn add_patch_extensions(definitions: &mut Map<String, Value>) {
    let mut holders: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for schema in definitions.values() {
        for (field, property) in properties(schema) {
            if let Some(target) = referenced(property) {
                holders.entry(target).or_default().insert(field);
            }
        }
    }
    let mut marks: Vec<(String, String, Map<String, Value>)> = Vec::new();
    for (name, schema) in definitions.iter() {
        // A kind is held by no field: its lists' keys depend on their own names only.
        let parents: Vec<&str> = holders
            .get(name.as_str())
            .map(|h| h.iter().copied().collect())
            .unwrap_or_else(|| vec![""]);
        for (field, property) in properties(schema) {
            if property.get("type").and_then(Value::as_str) != Some("array") {
                continue;
            }
            let item = referenced(property).and_then(|target| definitions.get(target));
            let key = parents.iter().find_map(|parent| {
                strategic::merge_key(field, parent)
                    .filter(|key| item.is_some_and(|item| properties(item).any(|(p, _)| p == key)))
            });
            let extensions = match key {
                Some(key) => json!({
                    "x-kubernetes-list-map-keys": [key],
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-patch-merge-key": key,
                    "x-kubernetes-patch-strategy": "merge",
                }),
                None if strategic::merges_as_set(field) => json!({
                    "x-kubernetes-list-type": "set",
                    "x-kubernetes-patch-strategy": "merge",
                }),
                None => continue,
            };
            let Value::Object(extensions) = extensions else {
                unreachable!("json! of an object")
            };
            marks.push((name.clone(), field.clone(), extensions));
        }
    }
    for (name, field, extensions) in marks {
        if let Some(property) = definitions
            .get_mut(&name)
            .and_then(|schema| schema.get_mut("properties"))
            .and_then(|properties| properties.get_mut(&field))
            .and_then(Value::as_object_mut)
        {
            property.extend(extensions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> &'static Catalog {
        super::super::catalog()
    }

    fn property<'a>(name: &str, field: &str) -> &'a Value {
        &catalog().definitions[name]["properties"][field]
    }

    #[test]
    fn every_served_kind_has_a_schema_with_its_gvk() {
        let catalog = catalog();
        for r in RESOURCES {
            let gvk = Gvk {
                group: r.group,
                version: r.version,
                kind: r.kind,
            };
            let published = catalog
                .kinds
                .get(&gvk)
                .unwrap_or_else(|| panic!("{gvk:?} has no schema"));
            let schema = &catalog.definitions[&published.name];
            assert_eq!(
                schema["x-kubernetes-group-version-kind"],
                json!([gvk.to_json()]),
                "{}",
                published.name
            );
            assert!(
                schema["properties"]["metadata"].is_object(),
                "{} has metadata",
                published.name
            );
            let mut required = schema["required"].as_array().into_iter().flatten();
            assert!(
                !required.any(|field| field == "metadata"),
                "{}: Kubernetes never requires metadata",
                published.name
            );
        }
        assert_eq!(
            catalog.kinds[&Gvk {
                group: "apps",
                version: "v1",
                kind: "Deployment"
            }]
                .name,
            "io.k8s.api.apps.v1.Deployment"
        );
        let scale = &catalog.kinds[&Gvk {
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
        }];
        assert_eq!(
            (scale.name.as_str(), scale.served_in),
            ("io.k8s.api.autoscaling.v1.Scale", ("apps", "v1"))
        );
    }

    #[test]
    fn every_reference_resolves() {
        let catalog = catalog();
        for (name, schema) in &catalog.definitions {
            for_each_ref(schema, &mut |target| {
                assert!(
                    catalog.definitions.contains_key(target),
                    "{name} refers to the missing {target}"
                );
            });
        }
        for name in [
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.api.core.v1.PodSpec",
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
        ] {
            assert!(catalog.definitions.contains_key(name), "{name}");
        }
    }

    #[test]
    fn merge_keys_follow_the_strategic_merge_table() {
        let containers = property("io.k8s.api.core.v1.PodSpec", "containers");
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
        let container_ports = property("io.k8s.api.core.v1.Container", "ports");
        assert_eq!(
            container_ports["x-kubernetes-patch-merge-key"],
            "containerPort"
        );
        let service_ports = property("io.k8s.api.core.v1.ServiceSpec", "ports");
        assert_eq!(service_ports["x-kubernetes-patch-merge-key"], "port");
        let owners = property(
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "ownerReferences",
        );
        assert_eq!(owners["x-kubernetes-patch-merge-key"], "uid");
        let finalizers = property(
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "finalizers",
        );
        assert_eq!(finalizers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(finalizers["x-kubernetes-list-type"], "set");
        // Lists without a merge key are replaced whole: no extension.
        let args = property("io.k8s.api.core.v1.Container", "args");
        assert!(args.get("x-kubernetes-patch-strategy").is_none());
    }
}
