//! Object metadata, as in `k8s.io/apimachinery/pkg/apis/meta/v1`.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// `apiVersion` and `kind`, the first two fields of every object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
}

impl TypeMeta {
    /// `kind` and `apiVersion` set, e.g. `TypeMeta::new("apps/v1", "Deployment")`.
    pub fn new(api_version: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            api_version: api_version.into(),
        }
    }
}

/// Metadata every stored object carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

pub(crate) fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// An RFC 3339 timestamp with second precision, e.g. `2024-05-01T12:00:00Z` (`metav1.Time`).
pub type Time = String;
/// An RFC 3339 timestamp with microseconds, e.g. `2024-05-01T12:00:00.000001Z` (`metav1.MicroTime`).
pub type MicroTime = String;

/// Removes the `null` members of JSON objects, recursively. Go reads `null` as "absent" (a nil
/// map, an empty string), and manifests carry such nulls (`labels:` with nothing under it,
/// `creationTimestamp: null`); this crate's types read absent members as empty, so decode
/// through [`from_json`].
pub fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Decodes an API body as Kubernetes does: unknown fields are ignored and `null` means absent.
pub fn from_json<T: serde::de::DeserializeOwned>(
    mut value: serde_json::Value,
) -> Result<T, serde_json::Error> {
    strip_nulls(&mut value);
    serde_json::from_value(value)
}

/// A stored object: `apiVersion`/`kind`, metadata, the desired state and the observed state.
///
/// Kinds without a spec/status split (ConfigMap, Secret, Event …) are their own structs with the
/// same `TypeMeta` + `metadata` head.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Object<Spec, Status> {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// The status of kinds that have none (NetworkPolicy, Lease): accepts and drops any `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoStatus {}

/// Metadata of a list: the revision it was read at and how to get the next page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, rename = "continue", skip_serializing_if = "String::is_empty")]
    pub continue_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_item_count: Option<i64>,
}

/// A list of objects, e.g. `PodList` (`kind` is the item kind followed by `List`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
}

/// A condition of an object's status. One type for Kubernetes' `PodCondition`,
/// `DeploymentCondition`, `JobCondition`, `NodeCondition` and `metav1.Condition`: they differ
/// only in which timestamps they carry, and absent ones are omitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Condition {
    /// E.g. `Ready`, `Available`, `Progressing`, `Complete`, `Failed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What a watch stream sends, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent<T> {
    #[serde(rename = "type")]
    pub type_: WatchEventType,
    /// The object; a [`crate::status::Status`] for `ERROR`, an object with only
    /// `metadata.resourceVersion` for `BOOKMARK`.
    pub object: T,
}

/// The kind of change a [`WatchEvent`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

/// The body of a DELETE (`meta.k8s.io/v1` `DeleteOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DeleteOptions {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preconditions: Option<Preconditions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphan_dependents: Option<bool>,
    /// `Orphan`, `Background` or `Foreground`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation_policy: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<String>,
}

/// Conditions a DELETE must meet, or it fails with a conflict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Preconditions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// A link from a dependent object to its owner, for garbage collection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// Names one object: the key shared by the store, work queues and controllers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The plural resource, e.g. `pods` or `deployments.apps`.
    pub resource: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.resource, self.name)
        } else {
            write!(f, "{}/{}/{}", self.resource, self.namespace, self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_uses_kubernetes_field_names_and_omits_empty_fields() {
        let json = r#"{"name":"web","namespace":"default","resourceVersion":"7",
            "labels":{"app":"web"},"ownerReferences":[{"apiVersion":"apps/v1",
            "kind":"ReplicaSet","name":"web-5d9","uid":"u1","controller":true}]}"#;
        let meta: ObjectMeta = serde_json::from_str(json).unwrap();
        assert_eq!(meta.resource_version, "7");
        assert_eq!(meta.owner_references[0].controller, Some(true));
        let back = serde_json::to_value(&meta).unwrap();
        assert_eq!(back["ownerReferences"][0]["kind"], "ReplicaSet");
        assert!(
            back.get("uid").is_none(),
            "empty fields are omitted: {back}"
        );
        assert!(
            back.get("generation").is_none(),
            "zero generation is omitted"
        );
    }

    #[test]
    fn nulls_read_as_absent() {
        let json = serde_json::json!({"name": "web", "labels": null, "annotations": {"a": "b"},
            "finalizers": null, "creationTimestamp": null});
        assert!(serde_json::from_value::<ObjectMeta>(json.clone()).is_err());
        let meta: ObjectMeta = from_json(json).unwrap();
        assert!(meta.labels.is_empty() && meta.finalizers.is_empty());
        assert_eq!(meta.annotations["a"], "b");
    }

    #[test]
    fn lists_watch_events_and_delete_options() {
        let list = List::<ObjectMeta> {
            type_meta: TypeMeta::new("v1", "PodList"),
            metadata: ListMeta {
                resource_version: "5".into(),
                continue_: "abc".into(),
                remaining_item_count: Some(3),
            },
            items: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata":
                {"resourceVersion": "5", "continue": "abc", "remainingItemCount": 3}, "items": []})
        );
        let event = WatchEvent {
            type_: WatchEventType::Added,
            object: ObjectMeta::default(),
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"ADDED","object":{}}"#
        );
        let opts: DeleteOptions = serde_json::from_str(
            r#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Foreground",
                "gracePeriodSeconds":0,"preconditions":{"resourceVersion":"7"}}"#,
        )
        .unwrap();
        assert_eq!(opts.propagation_policy.as_deref(), Some("Foreground"));
        assert_eq!(opts.grace_period_seconds, Some(0));
        assert_eq!(
            opts.preconditions.unwrap().resource_version.as_deref(),
            Some("7")
        );
        assert_eq!(opts.type_meta.kind, "DeleteOptions");
    }

    #[test]
    fn object_refs_print_like_keys() {
        let pod = ObjectRef {
            resource: "pods".into(),
            namespace: "default".into(),
            name: "web-0".into(),
        };
        assert_eq!(pod.to_string(), "pods/default/web-0");
        let node = ObjectRef {
            resource: "nodes".into(),
            namespace: String::new(),
            name: "n1".into(),
        };
        assert_eq!(node.to_string(), "nodes/n1");
    }
}
