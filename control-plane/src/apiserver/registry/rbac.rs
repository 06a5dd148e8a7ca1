//! RoleBindings and ClusterRoleBindings: their defaults (`roleRef.apiGroup`, subjects'
//! `apiGroup`) are set on every write, before validation, as the authorizer's escalation check
//! sets them on what it judges.

use serde_json::Value;

use super::KindStrategy;
use crate::apiserver::resources::ResourceType;

/// The strategy of `RoleBinding` and `ClusterRoleBinding`.
#[derive(Debug)]
pub struct Bindings;

impl KindStrategy for Bindings {
    fn prepare_write(&self, _resource: &ResourceType, object: &mut Value) {
        apiary_api::rbac_v1::default_binding(object);
    }
}
