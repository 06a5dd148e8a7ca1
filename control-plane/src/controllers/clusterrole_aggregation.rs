//! ClusterRole aggregation, as kube-controller-manager's clusterrole-aggregation controller: an
//! aggregated ClusterRole (`aggregationRule.clusterRoleSelectors`) holds the rules of every other
//! ClusterRole its selectors match, in name order without duplicates. Any ClusterRole change
//! requeues every aggregated one (there are few).

use std::sync::Arc;

use apiary_api::{LabelSelector, meta::ObjectRef};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler},
};
use crate::apiserver::{Api, objects, path::Target};

const CONCURRENCY: usize = 1;
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps aggregated ClusterRoles' rules until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let roles = Cache::new(resource(
        &api,
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
    ));
    let queue = Queue::new();
    let changed = {
        let (roles, queue) = (roles.clone(), Arc::clone(&queue));
        move |_: &Value| {
            for role in roles.all() {
                if role["aggregationRule"].is_object() {
                    queue.add(roles.key_of(&role));
                }
            }
        }
    };
    let reconciler = Arc::new(Aggregation {
        api: Arc::clone(&api),
        roles: roles.clone(),
    });
    tokio::join!(
        runtime::reflect(Arc::clone(&api), roles.clone(), changed, shutdown.clone()),
        runtime::resync(roles, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

/// The rules `aggregated` should hold, from the other ClusterRoles in `all`.
pub fn aggregate(aggregated: &Value, all: &[Arc<Value>]) -> Vec<Value> {
    let selectors: Vec<LabelSelector> =
        serde_json::from_value(aggregated["aggregationRule"]["clusterRoleSelectors"].clone())
            .unwrap_or_default();
    let name = &aggregated["metadata"]["name"];
    let mut sources: Vec<&Arc<Value>> = all
        .iter()
        .filter(|r| &r["metadata"]["name"] != name)
        .filter(|r| {
            let labels =
                serde_json::from_value(r["metadata"]["labels"].clone()).unwrap_or_default();
            selectors.iter().any(|s| s.matches(&labels))
        })
        .collect();
    sources.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    let mut rules: Vec<Value> = Vec::new();
    for source in sources {
        for rule in source["rules"].as_array().into_iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    rules
}

struct Aggregation {
    api: Arc<Api>,
    roles: Cache,
}

#[async_trait::async_trait]
impl Reconciler for Aggregation {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
        if !self.roles.is_synced() {
            return Ok(Action::RequeueAfter(std::time::Duration::from_millis(200)));
        }
        let Some(role) = self.roles.get("", &key.name) else {
            return Ok(Action::Done);
        };
        if !role["aggregationRule"].is_object() {
            return Ok(Action::Done);
        }
        let rules = aggregate(&role, &self.roles.all());
        if role["rules"]
            .as_array()
            .map_or(rules.is_empty(), |r| *r == rules)
        {
            return Ok(Action::Done);
        }
        let target = Target {
            resource: self.roles.resource(),
            namespace: None,
            name: Some(key.name.clone()),
            subresource: None,
        };
        let patch = serde_json::to_vec(&json!({"rules": rules})).expect("JSON serializes");
        match objects::patch(
            &self.api,
            &target,
            &key.name,
            "application/merge-patch+json",
            &patch,
        )
        .await
        {
            Ok(_) => {
                tracing::debug!(clusterrole = key.name, "aggregated rules");
                Ok(Action::Done)
            }
            Err(e) if e.reason == "NotFound" => Ok(Action::Done),
            Err(e) => Err(Error::api(
                format!("aggregating clusterrole {}", key.name),
                &e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_come_from_matching_roles_in_name_order_once() {
        let role = |name: &str, labels: Value, rules: Value| {
            Arc::new(json!({"metadata": {"name": name, "labels": labels}, "rules": rules}))
        };
        let view = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors":
            [{"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]}});
        let get_pods = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]});
        let list_crds =
            json!({"verbs": ["list"], "apiGroups": ["example.com"], "resources": ["widgets"]});
        let all = vec![
            role(
                "z-widgets",
                json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
                json!([list_crds, get_pods]),
            ),
            role(
                "a-pods",
                json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
                json!([get_pods]),
            ),
            role(
                "other",
                json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
                json!([{"verbs": ["*"]}]),
            ),
            Arc::new(view.clone()),
        ];
        assert_eq!(aggregate(&view, &all), vec![get_pods, list_crds]);
    }
}
