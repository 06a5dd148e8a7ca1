//! Object metadata, as in `k8s.io/apimachinery/pkg/apis/meta/v1`.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// `apiVersion` and `kind`, the first two fields of every object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
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

fn is_zero(n: &i64) -> bool {
    *n == 0
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
