//! The DaemonSet controller: one pod per eligible node — a node its template's nodeSelector and
//! required node affinity accept and whose taints it tolerates, with the tolerations Kubernetes
//! adds to every daemon pod. Each pod is pinned with required node affinity
//! `matchFields metadata.name In [node]` and placed by the scheduler. Pods on nodes that are
//! gone or no longer eligible are deleted. `RollingUpdate` replaces old pods (by the
//! `controller-revision-hash` label) at most `maxUnavailable` nodes at a time; `OnDelete`
//! leaves that to the user.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use apiary_api::{
    core_v1::{NodeSelector, Taint, Toleration},
    meta::ObjectRef,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Pin, controlled_by, controller_of, labels_of, list_fresh, owner_reference, put_status,
    record_event,
    replicaset::{is_active, is_ready},
    resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler, Result},
    str_of, target,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

/// `source.component` of the events this controller records.
const COMPONENT: &str = "daemonset-controller";
const CONCURRENCY: usize = 4;
const RESYNC: Duration = Duration::from_secs(30);

/// The label naming a pod's revision (a hash of the template).
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Runs the DaemonSet controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let sets = resource(&api, "apps", "v1", "daemonsets");
    let pods = resource(&api, "", "v1", "pods");
    let nodes = resource(&api, "", "v1", "nodes");
    let cache = Cache::new(sets);
    let pod_cache = Cache::new(pods);
    let node_cache = Cache::new(nodes);
    let queue = Queue::new();
    let reconciler = Arc::new(DaemonSets {
        api: Arc::clone(&api),
        cache: cache.clone(),
        nodes: node_cache.clone(),
        pods,
    });
    let own = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |set: &Value| queue.add(cache.key_of(set))
    };
    let pod_changed = {
        let queue = Arc::clone(&queue);
        move |pod: &Value| {
            if let Some(owner) = controller_of(pod).filter(|o| o["kind"] == "DaemonSet") {
                queue.add(ObjectRef {
                    resource: sets.plural.to_owned(),
                    namespace: str_of(pod, "/metadata/namespace").to_owned(),
                    name: owner["name"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    };
    // Any node change may change where every DaemonSet runs.
    let node_changed = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |_: &Value| {
            for set in cache.all() {
                queue.add(cache.key_of(&set));
            }
        }
    };
    tokio::join!(
        runtime::reflect(Arc::clone(&api), cache.clone(), own, shutdown.clone()),
        runtime::reflect(Arc::clone(&api), pod_cache, pod_changed, shutdown.clone()),
        runtime::reflect(Arc::clone(&api), node_cache, node_changed, shutdown.clone()),
        runtime::resync(cache, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

struct DaemonSets {
    api: Arc<Api>,
    cache: Cache,
    nodes: Cache,
    pods: &'static ResourceType,
}

impl std::fmt::Debug for DaemonSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonSets").finish_non_exhaustive()
    }
}

/// The tolerations Kubernetes adds to every DaemonSet pod.
fn default_tolerations() -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: key.to_owned(),
        operator: "Exists".to_owned(),
        effect: effect.to_owned(),
        ..Toleration::default()
    };
    vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The template's tolerations and the default ones it lacks.
fn tolerations_of(template_spec: &Value) -> Vec<Toleration> {
    let mut tolerations: Vec<Toleration> =
        apiary_api::meta::from_json(template_spec["tolerations"].clone()).unwrap_or_default();
    for extra in default_tolerations() {
        if !tolerations
            .iter()
            .any(|t| t.key == extra.key && t.effect == extra.effect)
        {
            tolerations.push(extra);
        }
    }
    tolerations
}

/// Whether a daemon pod of `template_spec` should run on `node`; `existing` when it already
/// does (then only `NoExecute` taints push it off, as in Kubernetes).
fn should_run(template_spec: &Value, node: &Value, existing: bool) -> bool {
    let labels = labels_of(node);
    let node_name = str_of(node, "/metadata/name");
    let selected = template_spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| {
            v.as_str()
                .is_some_and(|v| labels.get(k).map(String::as_str) == Some(v))
        });
    if !selected {
        return false;
    }
    let required = &template_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    if required.is_object() {
        let Ok(selector) = apiary_api::meta::from_json::<NodeSelector>(required.clone()) else {
            return false;
        };
        if !selector.matches(&labels, node_name) {
            return false;
        }
    }
    let taints: Vec<Taint> =
        apiary_api::meta::from_json(node["spec"]["taints"].clone()).unwrap_or_default();
    let tolerations = tolerations_of(template_spec);
    taints
        .iter()
        .filter(|t| t.effect == "NoExecute" || (t.effect == "NoSchedule" && !existing))
        .all(|taint| tolerations.iter().any(|t| t.tolerates(taint)))
}

/// The node a daemon pod is for: where it is bound, or where its node affinity pins it.
fn node_of(pod: &Value) -> Option<String> {
    let bound = str_of(pod, "/spec/nodeName");
    if !bound.is_empty() {
        return Some(bound.to_owned());
    }
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()?
        .iter()
        .flat_map(|t| t["matchFields"].as_array().into_iter().flatten())
        .find(|r| r["key"] == "metadata.name" && r["operator"] == "In")
        .and_then(|r| r["values"][0].as_str())
        .map(str::to_owned)
}

/// The daemon pod for `node`: the template, pinned to the node by required node affinity.
fn new_pod(set: &Value, node: &str, revision: &str) -> Value {
    let template = &set["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[REVISION_LABEL] = json!(revision);
    let mut metadata = json!({
        "generateName": format!("{}-", str_of(set, "/metadata/name")),
        "namespace": str_of(set, "/metadata/namespace"),
        "labels": labels,
        "ownerReferences": [owner_reference(set, "apps/v1", "DaemonSet")],
    });
    if template["metadata"]["annotations"].is_object() {
        metadata["annotations"] = template["metadata"]["annotations"].clone();
    }
    let mut spec = template["spec"].clone();
    let pin = json!([{ "key": "metadata.name", "operator": "In", "values": [node] }]);
    let required =
        &mut spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    match required["nodeSelectorTerms"].as_array_mut() {
        Some(terms) if !terms.is_empty() => {
            for term in terms {
                term["matchFields"] = pin.clone();
            }
        }
        _ => *required = json!({ "nodeSelectorTerms": [{ "matchFields": pin }] }),
    }
    spec["tolerations"] = json!(tolerations_of(&template["spec"]));
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec })
}

/// `maxUnavailable` resolved against the desired count (percentages round up), at least 1.
fn max_unavailable(set: &Value, desired: usize) -> usize {
    let value = &set["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"];
    let n = match value {
        Value::Number(n) => usize::try_from(n.as_u64().unwrap_or(1)).unwrap_or(1),
        Value::String(s) => match s.strip_suffix('%').map(str::parse::<usize>) {
            Some(Ok(percent)) => (percent * desired).div_ceil(100),
            _ => s.parse().unwrap_or(1),
        },
        _ => 1,
    };
    n.max(1)
}

impl DaemonSets {
    fn pod_target(&self, namespace: &str, name: Option<&str>) -> Target {
        target(self.pods, namespace, name)
    }

    async fn create_pod(&self, set: &Value, node: &str, revision: &str) -> Result<()> {
        let namespace = str_of(set, "/metadata/namespace");
        let pod = new_pod(set, node, revision);
        match objects::create(&self.api, &self.pod_target(namespace, None), pod).await {
            Ok(pod) => {
                record_event(
                    &self.api,
                    COMPONENT,
                    set,
                    ("apps/v1", "DaemonSet"),
                    "SuccessfulCreate",
                    &format!("Created pod: {}", str_of(&pod, "/metadata/name")),
                )
                .await;
                Ok(())
            }
            Err(e) => Err(Error::api(format!("creating a pod for node {node}"), &e)),
        }
    }

    async fn delete_pod(&self, set: &Value, pod: &Value) -> Result<()> {
        if !super::delete_pod(&self.api, self.pods, pod).await? {
            return Ok(());
        }
        let name = str_of(pod, "/metadata/name");
        record_event(
            &self.api,
            COMPONENT,
            set,
            ("apps/v1", "DaemonSet"),
            "SuccessfulDelete",
            &format!("Deleted pod: {name}"),
        )
        .await;
        Ok(())
    }

    async fn write_status(&self, set: &Value, status: Value) -> Result<()> {
        let current = &set["status"];
        let same = status
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| &current[k] == v);
        if same {
            return Ok(());
        }
        put_status(&self.api, self.cache.resource(), set, status, Pin::Latest).await
    }
}

#[async_trait::async_trait]
impl Reconciler for DaemonSets {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(set) = self.cache.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if set["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let template_spec = &set["spec"]["template"]["spec"];
        let revision = super::deployment::template_hash(&set["spec"]["template"], 0);
        let rolling = str_of(&set, "/spec/updateStrategy/type") != "OnDelete";

        // Owned pods by node; pods for no node at all are surplus.
        let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut doomed = Vec::new();
        for pod in list_fresh(&self.api, self.pods, &key.namespace).await? {
            if !controlled_by(&pod, &set) || pod["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            if !is_active(&pod) {
                // Failed or finished: replaced by a fresh one.
                doomed.push(pod);
                continue;
            }
            match node_of(&pod) {
                Some(node) => by_node.entry(node).or_default().push(pod),
                None => doomed.push(pod),
            }
        }

        let nodes: BTreeMap<String, Arc<Value>> = self
            .nodes
            .all()
            .into_iter()
            .map(|n| (str_of(&n, "/metadata/name").to_owned(), n))
            .collect();
        let mut to_create = Vec::new();
        let mut eligible = BTreeSet::new();
        let mut misscheduled = 0;
        let mut kept: BTreeMap<String, Value> = BTreeMap::new();
        for (name, node) in &nodes {
            let mut pods = by_node.remove(name).unwrap_or_default();
            let run = should_run(template_spec, node, !pods.is_empty());
            if run {
                eligible.insert(name.clone());
            }
            if pods.is_empty() {
                if run {
                    to_create.push(name.clone());
                }
                continue;
            }
            if !run {
                misscheduled += 1;
                doomed.extend(pods);
                continue;
            }
            // One pod per node: keep the updated (then oldest) one.
            pods.sort_by_key(|p| {
                (
                    p["metadata"]["labels"][REVISION_LABEL] != revision.as_str(),
                    !is_ready(p),
                    str_of(p, "/metadata/creationTimestamp").to_owned(),
                )
            });
            let first = pods.remove(0);
            doomed.extend(pods);
            kept.insert(name.clone(), first);
        }
        // Pods for nodes that are gone.
        doomed.extend(by_node.into_values().flatten());

        // Rolling update: old pods go while at most maxUnavailable nodes lack an available pod.
        if rolling {
            let desired = eligible.len();
            let unavailable = eligible
                .iter()
                .filter(|n| !kept.get(*n).is_some_and(is_ready))
                .count();
            let mut budget = max_unavailable(&set, desired).saturating_sub(unavailable);
            let mut old: Vec<(&String, &Value)> = kept
                .iter()
                .filter(|(_, p)| p["metadata"]["labels"][REVISION_LABEL] != revision.as_str())
                .collect();
            // Unavailable old pods first: replacing them costs nothing.
            old.sort_by_key(|(n, p)| (is_ready(p), (*n).clone()));
            let mut replaced = Vec::new();
            for (node, pod) in old {
                if !is_ready(pod) {
                    doomed.push(pod.clone());
                    replaced.push(node.clone());
                } else if budget > 0 {
                    budget -= 1;
                    doomed.push(pod.clone());
                    replaced.push(node.clone());
                }
            }
            for node in replaced {
                kept.remove(&node);
            }
        }

        let mut outcome = Ok(());
        for pod in &doomed {
            if let Err(e) = self.delete_pod(&set, pod).await {
                outcome = Err(e);
            }
        }
        for node in &to_create {
            if let Err(e) = self.create_pod(&set, node, &revision).await {
                outcome = Err(e);
            }
        }

        let scheduled = eligible.iter().filter(|n| kept.contains_key(*n)).count();
        let ready = kept
            .iter()
            .filter(|(n, p)| eligible.contains(*n) && is_ready(p))
            .count();
        let updated = kept
            .iter()
            .filter(|(n, p)| {
                eligible.contains(*n)
                    && p["metadata"]["labels"][REVISION_LABEL] == revision.as_str()
            })
            .count();
        let desired = eligible.len();
        let status = json!({
            "observedGeneration": set["metadata"]["generation"].as_i64().unwrap_or(1),
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": scheduled,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": desired.saturating_sub(ready),
            "updatedNumberScheduled": updated,
        });
        self.write_status(&set, status).await?;
        outcome?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({ "metadata": { "name": name, "labels": labels }, "spec": { "taints": taints } })
    }

    #[test]
    fn eligibility_follows_selectors_affinity_and_taints() {
        let plain = node("a", json!({ "disk": "ssd" }), json!([]));
        let tainted = node(
            "b",
            json!({}),
            json!([{ "key": "dedicated", "value": "gpu", "effect": "NoSchedule" }]),
        );
        let not_ready = node(
            "c",
            json!({}),
            json!([{ "key": "node.kubernetes.io/not-ready", "effect": "NoExecute" }]),
        );
        let spec = json!({ "containers": [] });
        assert!(should_run(&spec, &plain, false));
        assert!(!should_run(&spec, &tainted, false));
        // A NoSchedule taint does not evict a pod already there.
        assert!(should_run(&spec, &tainted, true));
        assert!(should_run(&spec, &not_ready, false));
        let selected = json!({ "nodeSelector": { "disk": "ssd" } });
        assert!(should_run(&selected, &plain, false));
        assert!(!should_run(&selected, &not_ready, false));
        let tolerant = json!({ "tolerations": [{ "key": "dedicated", "operator": "Exists" }] });
        assert!(should_run(&tolerant, &tainted, false));
        let affinity = json!({ "affinity": { "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [
                { "matchExpressions": [{ "key": "disk", "operator": "In", "values": ["ssd"] }] }
            ] } } } });
        assert!(should_run(&affinity, &plain, false));
        assert!(!should_run(&affinity, &tainted, false));
    }

    #[test]
    fn pods_are_pinned_by_match_fields_and_tolerate_the_defaults() {
        let set = json!({
            "metadata": { "name": "agent", "namespace": "default", "uid": "u" },
            "spec": { "template": {
                "metadata": { "labels": { "app": "agent" } },
                "spec": { "containers": [{ "name": "c", "image": "i" }] },
            } },
        });
        let pod = new_pod(&set, "node-1", "h");
        assert_eq!(node_of(&pod).as_deref(), Some("node-1"));
        assert_eq!(pod["metadata"]["labels"][REVISION_LABEL], "h");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn max_unavailable_resolves_percentages_up() {
        let set = |v: Value| json!({ "spec": { "updateStrategy": { "rollingUpdate": { "maxUnavailable": v } } } });
        assert_eq!(max_unavailable(&set(json!(2)), 10), 2);
        assert_eq!(max_unavailable(&set(json!("25%")), 10), 3);
        assert_eq!(max_unavailable(&set(json!(0)), 10), 1);
        assert_eq!(max_unavailable(&json!({}), 10), 1);
    }
}
