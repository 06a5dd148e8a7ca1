//! `rbac.authorization.k8s.io/v1`: Role, ClusterRole, RoleBinding and ClusterRoleBinding.

use serde::{Deserialize, Serialize};

use crate::{
    meta::{ObjectMeta, TypeMeta},
    selector::LabelSelector,
};

/// The API group of the RBAC kinds, and of `User` and `Group` subjects.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What a rule allows: verbs on resources of API groups (optionally only the named ones), or
/// verbs on non-resource URLs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

impl PolicyRule {
    /// A rule of `verbs` on `resources` of `groups`.
    pub fn resources(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            verbs: owned(verbs),
            api_groups: owned(groups),
            resources: owned(resources),
            ..Self::default()
        }
    }

    /// A rule of `verbs` on non-resource `urls`.
    pub fn urls(verbs: &[&str], urls: &[&str]) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            verbs: owned(verbs),
            non_resource_urls: owned(urls),
            ..Self::default()
        }
    }
}

/// Where an aggregated ClusterRole's rules come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AggregationRule {
    pub cluster_role_selectors: Vec<LabelSelector>,
}

/// The role a binding grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RoleRef {
    pub api_group: String,
    pub kind: String,
    pub name: String,
}

/// Whom a binding grants its role to: a `User`, `Group` or `ServiceAccount`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// A namespaced set of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// A cluster-wide set of rules, possibly aggregated from other ClusterRoles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRole {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_rule: Option<AggregationRule>,
}

/// Grants a Role or ClusterRole within one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleBinding {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    #[serde(default)]
    pub role_ref: RoleRef,
}

/// Grants a ClusterRole in every namespace and at the cluster scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleBinding {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    #[serde(default)]
    pub role_ref: RoleRef,
}

impl From<&ClusterRoleBinding> for RoleBinding {
    fn from(b: &ClusterRoleBinding) -> Self {
        Self {
            type_meta: b.type_meta.clone(),
            metadata: b.metadata.clone(),
            subjects: b.subjects.clone(),
            role_ref: b.role_ref.clone(),
        }
    }
}

/// Fills what Kubernetes defaults in a binding (`SetDefaults_RoleBinding`, `SetDefaults_Subject`):
/// `roleRef.apiGroup`, and the `apiGroup` of `User` and `Group` subjects.
pub fn default_binding(binding: &mut serde_json::Value) {
    if binding["roleRef"].is_object()
        && binding["roleRef"]["apiGroup"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        binding["roleRef"]["apiGroup"] = GROUP.into();
    }
    if let Some(subjects) = binding["subjects"].as_array_mut() {
        for s in subjects {
            let kind = s["kind"].as_str().unwrap_or_default();
            if (kind == "User" || kind == "Group")
                && s["apiGroup"].as_str().is_none_or(str::is_empty)
            {
                s["apiGroup"] = GROUP.into();
            }
        }
    }
}
