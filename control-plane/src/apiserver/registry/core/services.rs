//! Services: a ClusterIP and NodePorts are allocated on create and reconciled on update
//! ([`allocator`]); an update keeps the allocated ClusterIP and drops what the new type has no
//! use for; a deleted Service releases what it held.

use serde_json::Value;

use super::super::KindStrategy;
use crate::apiserver::{Api, allocator, objects::Result};

/// The strategy of `v1` `Service`.
#[derive(Debug)]
pub struct Services;

#[async_trait::async_trait]
impl KindStrategy for Services {
    async fn allocate(&self, api: &Api, object: &mut Value) -> Result<allocator::Claims> {
        allocator::allocate(api, object).await
    }

    async fn reconcile_update(
        &self,
        api: &Api,
        sub: Option<&str>,
        old: &Value,
        new: &mut Value,
    ) -> Result<allocator::Claims> {
        if sub.is_some() {
            return Ok(allocator::Claims::default());
        }
        keep_cluster_ip(old, new);
        drop_type_dependent_fields(old, new);
        allocator::reconcile_update(api, old, new).await
    }

    /// Ports claimed for an update only shown go back; those the Service held stay held.
    async fn release_dry_run(&self, api: &Api, old: &Value, new: &Value) {
        let held = allocator::claims_of(old);
        allocator::claims_of(new).without(&held).release(api).await;
    }

    async fn release(&self, api: &Api, object: &Value) {
        allocator::claims_of(object).release(api).await;
    }
}

/// An update that leaves `clusterIP` out keeps the allocated one (it is immutable).
fn keep_cluster_ip(old: &Value, new: &mut Value) {
    for field in ["clusterIP", "clusterIPs"] {
        let empty = new["spec"][field].is_null() || new["spec"][field] == "";
        if empty && !old["spec"][field].is_null() {
            new["spec"][field] = old["spec"][field].clone();
        }
    }
}

/// A Service changed to a type that has no use for a field the old type had (and defaulted)
/// loses it, unless the update changed it, as Kubernetes' `dropTypeDependentFields` does: so
/// that `type: ClusterIP` applied over a LoadBalancer is valid. (NodePorts are the allocator's.)
fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let external = |svc: &Value| {
        matches!(
            svc["spec"]["type"].as_str(),
            Some("NodePort" | "LoadBalancer")
        )
    };
    let load_balancer = |svc: &Value| svc["spec"]["type"] == "LoadBalancer";
    let mut drop = Vec::new();
    if external(old) && !external(new) {
        drop.extend(["externalTrafficPolicy", "healthCheckNodePort"]);
    }
    if load_balancer(old) && !load_balancer(new) {
        drop.extend(["allocateLoadBalancerNodePorts", "loadBalancerClass"]);
    }
    for field in drop {
        if new["spec"][field] == old["spec"][field]
            && let Some(spec) = new["spec"].as_object_mut()
        {
            spec.remove(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_update_without_cluster_ip_keeps_the_allocated_one() {
        let old = json!({ "spec": { "clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"] } });
        let mut new = json!({ "spec": { "clusterIP": "" } });
        keep_cluster_ip(&old, &mut new);
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.7");
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.96.0.7"]));
    }

    #[test]
    fn a_load_balancer_changed_to_cluster_ip_drops_what_only_it_uses() {
        let old = json!({ "spec": {
            "type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
            "allocateLoadBalancerNodePorts": true,
        } });
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        drop_type_dependent_fields(&old, &mut new);
        assert!(new["spec"].get("externalTrafficPolicy").is_none());
        assert!(new["spec"].get("allocateLoadBalancerNodePorts").is_none());
        // What the update itself changed stays, for validation to judge.
        let mut changed = new.clone();
        changed["spec"]["externalTrafficPolicy"] = json!("Local");
        drop_type_dependent_fields(&old, &mut changed);
        assert_eq!(changed["spec"]["externalTrafficPolicy"], "Local");
    }
}
