//! The resource types the server serves (`apiary_api::resource`), and where each stores its
//! objects.

use std::sync::Arc;

pub use apiary_api::resource::ResourceInfo as ResourceType;

use super::custom_resources::CustomResources;

/// Storage keys of a resource type's objects.
pub trait StorageKeys {
    /// The prefix of every storage key of this type: `/registry/<group>/<plural>/`.
    fn key_prefix(&self) -> String;
    /// The storage key of one object.
    fn key(&self, namespace: Option<&str>, name: &str) -> String;
    /// Whether the type serves subresource `sub` (`status`, `scale`, `binding`).
    fn has_subresource(&self, sub: &str) -> bool;
}

impl StorageKeys for ResourceType {
    fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    fn has_subresource(&self, sub: &str) -> bool {
        self.subresource(sub).is_some()
    }
}

/// Every served type: the built-ins and the custom resources of CustomResourceDefinitions.
#[derive(Debug, Default)]
pub struct Resources {
    pub custom: Arc<CustomResources>,
}

impl Resources {
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        apiary_api::resource::lookup(group, version, plural)
            .or_else(|| Some(self.custom.get(group, version, plural)?.info))
    }

    /// Every served type, built-ins first.
    pub fn all(&self) -> Vec<&'static ResourceType> {
        let mut all = apiary_api::resource::built_in();
        all.extend(self.custom.all());
        all
    }
}

/// Whether `resource` is one of the server's own kinds (not a custom resource).
pub fn is_built_in(resource: &ResourceType) -> bool {
    apiary_api::resource::RESOURCES.contains(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_groups_types_and_namespaces() {
        let r = Resources::default();
        let pods = r.get("", "v1", "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        let nodes = r.get("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/core/nodes/n1");
        let deploys = r.get("apps", "v1", "deployments").unwrap();
        assert_eq!(deploys.key_prefix(), "/registry/apps/deployments/");
        assert!(deploys.has_subresource("scale"));
        assert!(!nodes.has_subresource("scale"));
    }
}
