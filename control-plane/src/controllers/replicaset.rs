//! The ReplicaSet controller: keeps as many pods as `spec.replicas` that match the selector and
//! name the ReplicaSet as their controller; adopts matching orphans, releases pods that stopped
//! matching, and reports counts in `status`.

use std::{cmp::Reverse, sync::Arc, time::Duration};

use apiary_api::meta::ObjectRef;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Pin, controlled_by, controller_of, labels_of, list_fresh, owner_reference, put_status,
    record_event, resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler, Result},
    selector_of, str_of, target,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

/// `source.component` of the events this controller records.
const COMPONENT: &str = "replicaset-controller";
/// Reconciles running at once, across ReplicaSets.
const CONCURRENCY: usize = 4;
const RESYNC: Duration = Duration::from_secs(30);

/// Runs the ReplicaSet controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let replicasets = resource(&api, "apps", "v1", "replicasets");
    let pods = resource(&api, "", "v1", "pods");
    let cache = Cache::new(replicasets);
    let pod_cache = Cache::new(pods);
    let queue = Queue::new();
    let reconciler = Arc::new(ReplicaSets {
        api: Arc::clone(&api),
        cache: cache.clone(),
        pods,
    });
    let own = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |rs: &Value| queue.add(cache.key_of(rs))
    };
    let pod_changed = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |pod: &Value| {
            for key in owners_of_pod(&cache, pod) {
                queue.add(key);
            }
        }
    };
    tokio::join!(
        runtime::reflect(Arc::clone(&api), cache.clone(), own, shutdown.clone()),
        runtime::reflect(Arc::clone(&api), pod_cache, pod_changed, shutdown.clone()),
        runtime::resync(cache, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

/// The ReplicaSets a pod change concerns: its controller, or (an orphan) every ReplicaSet of
/// its namespace that selects it and may adopt it.
fn owners_of_pod(cache: &Cache, pod: &Value) -> Vec<ObjectRef> {
    let namespace = str_of(pod, "/metadata/namespace");
    match controller_of(pod) {
        Some(owner) if owner["kind"] == "ReplicaSet" => vec![ObjectRef {
            resource: cache.resource().plural.to_owned(),
            namespace: namespace.to_owned(),
            name: owner["name"].as_str().unwrap_or_default().to_owned(),
        }],
        Some(_) => Vec::new(),
        None => {
            let labels = labels_of(pod);
            cache
                .list(namespace)
                .iter()
                .filter(|rs| selector_of(rs).is_some_and(|s| !s.is_empty() && s.matches(&labels)))
                .map(|rs| cache.key_of(rs))
                .collect()
        }
    }
}

struct ReplicaSets {
    api: Arc<Api>,
    cache: Cache,
    pods: &'static ResourceType,
}

impl std::fmt::Debug for ReplicaSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSets").finish_non_exhaustive()
    }
}

/// Whether a pod counts at all: not being deleted and not finished.
pub(crate) fn is_active(pod: &Value) -> bool {
    let phase = str_of(pod, "/status/phase");
    !pod["metadata"]["deletionTimestamp"].is_string() && phase != "Succeeded" && phase != "Failed"
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Whether the pod's `Ready` condition is `True`.
pub(crate) fn is_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some_and(|c| c["status"] == "True")
}

fn ready_since(pod: &Value) -> Option<DateTime<Utc>> {
    let since = ready_condition(pod)?["lastTransitionTime"].as_str()?;
    DateTime::parse_from_rfc3339(since)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How long until a ready pod is available (ready for `min_ready` seconds): `Some(ZERO)` when
/// it is, `None` when it is not ready (or its ready time is unknown while one is needed).
fn until_available(pod: &Value, min_ready: i64, now: DateTime<Utc>) -> Option<Duration> {
    if !is_ready(pod) {
        return None;
    }
    if min_ready <= 0 {
        return Some(Duration::ZERO);
    }
    let since = ready_since(pod)?;
    let at = since + chrono::Duration::seconds(min_ready);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Orders pods so that the first ones are the cheapest to lose, as Kubernetes ranks them:
/// unscheduled, then pending, then not ready, then ready for less time, more restarts, newer.
fn deletion_rank(pod: &Value) -> impl Ord + use<> {
    let scheduled = !str_of(pod, "/spec/nodeName").is_empty();
    let phase = match str_of(pod, "/status/phase") {
        "Pending" | "" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let restarts: i64 = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    (
        scheduled,
        phase,
        is_ready(pod),
        Reverse(ready_since(pod)),
        Reverse(restarts),
        Reverse(str_of(pod, "/metadata/creationTimestamp").to_owned()),
    )
}

/// Pods created at once grow 1, 2, 4 … so that a failing template fails fast (Kubernetes'
/// slow start).
const SLOW_START: usize = 1;

impl ReplicaSets {
    fn pod_target(&self, namespace: &str, name: Option<&str>) -> Target {
        target(self.pods, namespace, name)
    }

    /// Claims a pod: adopts a matching orphan, releases an owned pod that no longer matches.
    /// Returns the pod if the ReplicaSet owns it afterwards.
    async fn claim(
        &self,
        rs: &Value,
        selector: &apiary_api::selector::LabelSelector,
        pod: Value,
    ) -> Result<Option<Value>> {
        let matches = selector.matches(&labels_of(&pod));
        let owned = controlled_by(&pod, rs);
        let name = str_of(&pod, "/metadata/name").to_owned();
        let namespace = str_of(&pod, "/metadata/namespace").to_owned();
        match (controller_of(&pod).is_some(), owned, matches) {
            (_, true, true) => Ok(Some(pod)),
            (_, true, false) => {
                let mut released = pod.clone();
                if let Some(refs) = released["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"] != rs["metadata"]["uid"]);
                }
                objects::update(
                    &self.api,
                    &self.pod_target(&namespace, Some(&name)),
                    &name,
                    released,
                )
                .await
                .map_err(|e| Error::api(format!("releasing pod {name}"), &e))?;
                Ok(None)
            }
            (false, false, true) if is_active(&pod) => {
                let mut adopted = pod.clone();
                let reference = owner_reference(rs, "apps/v1", "ReplicaSet");
                match adopted["metadata"]["ownerReferences"].as_array_mut() {
                    Some(refs) => refs.push(reference),
                    None => adopted["metadata"]["ownerReferences"] = json!([reference]),
                }
                // Pinned to the version read: someone else may be adopting it too.
                let adopted = objects::update(
                    &self.api,
                    &self.pod_target(&namespace, Some(&name)),
                    &name,
                    adopted,
                )
                .await
                .map_err(|e| Error::api(format!("adopting pod {name}"), &e))?;
                Ok(Some(adopted))
            }
            _ => Ok(None),
        }
    }

    async fn create_pods(&self, rs: &Value, count: usize) -> Result<Vec<Value>> {
        let namespace = str_of(rs, "/metadata/namespace");
        let name = str_of(rs, "/metadata/name");
        let template = &rs["spec"]["template"];
        let mut metadata = json!({
            "generateName": format!("{name}-"),
            "namespace": namespace,
            "ownerReferences": [owner_reference(rs, "apps/v1", "ReplicaSet")],
        });
        for field in ["labels", "annotations"] {
            if template["metadata"][field].is_object() {
                metadata[field] = template["metadata"][field].clone();
            }
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": template["spec"],
        });
        let mut created = Vec::new();
        let mut batch = SLOW_START;
        while created.len() < count {
            let n = batch.min(count - created.len());
            let target = self.pod_target(namespace, None);
            let results = futures::future::join_all(
                (0..n).map(|_| objects::create(&self.api, &target, pod.clone())),
            )
            .await;
            let mut failed = None;
            for result in results {
                match result {
                    Ok(pod) => {
                        let pod_name = str_of(&pod, "/metadata/name");
                        record_event(
                            &self.api,
                            COMPONENT,
                            rs,
                            ("apps/v1", "ReplicaSet"),
                            "SuccessfulCreate",
                            &format!("Created pod: {pod_name}"),
                        )
                        .await;
                        created.push(pod);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                return Err(Error::api(format!("creating pods for {name}"), &e));
            }
            batch *= 2;
        }
        Ok(created)
    }

    async fn delete_pods(&self, rs: &Value, doomed: &[Value]) -> Result<()> {
        let results = futures::future::join_all(doomed.iter().map(|pod| async move {
            let namespace = str_of(pod, "/metadata/namespace");
            let name = str_of(pod, "/metadata/name");
            // Only the pod we chose: not one recreated under the same name since.
            let options = json!({ "preconditions": { "uid": pod["metadata"]["uid"] } });
            match objects::delete(
                &self.api,
                &self.pod_target(namespace, Some(name)),
                name,
                &options,
            )
            .await
            {
                Ok(_) => {
                    record_event(
                        &self.api,
                        COMPONENT,
                        rs,
                        ("apps/v1", "ReplicaSet"),
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    )
                    .await;
                    Ok(())
                }
                Err(e) if e.reason == "NotFound" => Ok(()),
                Err(e) => Err(Error::api(format!("deleting pod {name}"), &e)),
            }
        }))
        .await;
        results.into_iter().collect()
    }

    async fn write_status(&self, rs: &Value, status: Value) -> Result<()> {
        let current = &rs["status"];
        let same = [
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
        ]
        .iter()
        .all(|f| current[f].as_i64().unwrap_or(0) == status[f].as_i64().unwrap_or(0));
        if same {
            return Ok(());
        }
        // Not pinned: status is recomputed from the pods every time, and the spec is not written.
        put_status(&self.api, self.cache.resource(), rs, status, Pin::Latest).await
    }
}

#[async_trait::async_trait]
impl Reconciler for ReplicaSets {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(rs) = self.cache.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if rs["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let Some(selector) = selector_of(&rs).filter(|s| !s.is_empty()) else {
            return Ok(Action::Done);
        };
        let want = usize::try_from(rs["spec"]["replicas"].as_i64().unwrap_or(1)).unwrap_or(0);
        let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);

        let mut owned = Vec::new();
        for pod in list_fresh(&self.api, self.pods, &key.namespace).await? {
            if !is_active(&pod) {
                continue;
            }
            if let Some(pod) = self.claim(&rs, &selector, pod).await? {
                owned.push(pod);
            }
        }

        let mut outcome = Ok(());
        if owned.len() < want {
            match self.create_pods(&rs, want - owned.len()).await {
                Ok(created) => owned.extend(created),
                Err(e) => outcome = Err(e),
            }
        } else if owned.len() > want {
            owned.sort_by_key(deletion_rank);
            let doomed: Vec<Value> = owned.drain(..owned.len() - want).collect();
            outcome = self.delete_pods(&rs, &doomed).await;
        }

        let now = Utc::now();
        let template_labels = labels_of(&rs["spec"]["template"]);
        let mut next_check: Option<Duration> = None;
        let mut available = 0;
        for pod in &owned {
            match until_available(pod, min_ready, now) {
                Some(Duration::ZERO) => available += 1,
                Some(left) => {
                    next_check = Some(next_check.map_or(left, |n| n.min(left)));
                }
                None => {}
            }
        }
        let fully_labeled = owned
            .iter()
            .filter(|p| {
                let labels = labels_of(p);
                template_labels
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
            })
            .count();
        let status = json!({
            "replicas": owned.len(),
            "fullyLabeledReplicas": fully_labeled,
            "readyReplicas": owned.iter().filter(|p| is_ready(p)).count(),
            "availableReplicas": available,
            "observedGeneration": rs["metadata"]["generation"].as_i64().unwrap_or(1),
        });
        self.write_status(&rs, status).await?;
        outcome?;
        Ok(match next_check {
            Some(after) => Action::RequeueAfter(after + Duration::from_millis(100)),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready: bool, created: &str) -> Value {
        json!({
            "metadata": { "name": name, "creationTimestamp": created },
            "spec": { "nodeName": node },
            "status": {
                "phase": phase,
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
            },
        })
    }

    #[test]
    fn surplus_pods_go_unscheduled_then_pending_then_unready_then_newest_first() {
        let mut pods = [
            pod("old-ready", "n1", "Running", true, "2024-01-01T00:00:00Z"),
            pod("new-ready", "n1", "Running", true, "2024-01-02T00:00:00Z"),
            pod("unready", "n1", "Running", false, "2024-01-01T00:00:00Z"),
            pod("pending", "n1", "Pending", false, "2024-01-01T00:00:00Z"),
            pod("unscheduled", "", "Pending", false, "2024-01-01T00:00:00Z"),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<&str> = pods.iter().map(|p| str_of(p, "/metadata/name")).collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "unready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now = Utc::now();
        let since = (now - chrono::Duration::seconds(3)).to_rfc3339();
        let mut p = pod("p", "n1", "Running", true, "2024-01-01T00:00:00Z");
        p["status"]["conditions"][0]["lastTransitionTime"] = json!(since);
        assert_eq!(until_available(&p, 0, now), Some(Duration::ZERO));
        assert_eq!(until_available(&p, 2, now), Some(Duration::ZERO));
        assert!(until_available(&p, 10, now).unwrap() > Duration::from_secs(5));
        p["status"]["conditions"][0]["status"] = json!("False");
        assert_eq!(until_available(&p, 0, now), None);
    }
}
