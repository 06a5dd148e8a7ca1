//! The scheduler: assigns pending pods to nodes, in-process against the API.
//!
//! Nodes and pods are watched into an in-memory [`cache::Cache`] that accounts what each node's
//! pods request, so that scheduling a pod never lists anything. A pod is checked against every
//! node ([`filters`]), the feasible ones are ranked ([`scores`]) and the pod is bound through
//! `pods/binding`. A pod that fits nowhere gets `PodScheduled=False` and a FailedScheduling
//! event, and waits in the [`queue`] until a node or pod changes.
//!
//! [`lifecycle`] is the node lifecycle controller: nodes whose Lease goes stale become
//! NotReady and tainted, and their pods are evicted.

pub mod cache;
pub mod filters;
pub mod lifecycle;
pub mod queue;
pub mod scores;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use apiary_api::core_v1::{Node, Pod};
use axum::http::{HeaderMap, Method};
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::apiserver::{
    Api,
    error::ApiError,
    objects::{self, Change, Filter},
    path::Target,
    resources::ResourceType,
};
use cache::{Cache, PodInfo};
use queue::Queue;

/// The name pods ask for in `spec.schedulerName` (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How often parked pods are tried again even if nothing seemed to change.
const RETRY_INTERVAL: Duration = Duration::from_secs(15);

/// Errors that end one watch session; all are retried by relisting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API: {}", .0.message)]
    Api(ApiError),
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn resource(api: &Api, group: &str, plural: &str) -> &'static ResourceType {
    api.resources
        .get(group, "v1", plural)
        .expect("core types are served")
}

fn all(resource: &'static ResourceType) -> Target {
    Target {
        resource,
        namespace: None,
        name: None,
        subresource: None,
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs the scheduler until the process ends, relisting after any watch error.
pub async fn run(api: Arc<Api>) {
    loop {
        if let Err(e) = run_once(&api).await {
            tracing::warn!(error = %e, "scheduler: relisting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The scheduler's state between events.
#[derive(Debug)]
struct Scheduler {
    api: Arc<Api>,
    cache: Cache,
    queue: Queue,
}

async fn run_once(api: &Arc<Api>) -> Result<()> {
    let pods = resource(api, "", "pods");
    let nodes = resource(api, "", "nodes");
    let mut node_watch = objects::watch_changes(api, &all(nodes), Filter::default(), None)
        .await
        .map_err(Error::Api)?;
    let mut pod_watch = objects::watch_changes(api, &all(pods), Filter::default(), None)
        .await
        .map_err(Error::Api)?;
    let mut s = Scheduler {
        api: Arc::clone(api),
        cache: Cache::default(),
        queue: Queue::default(),
    };
    for node in std::mem::take(&mut node_watch.initial) {
        s.node_changed(Change::Added(node));
    }
    for pod in std::mem::take(&mut pod_watch.initial) {
        s.pod_changed(Change::Added(pod));
    }
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    loop {
        tokio::select! {
            biased;
            change = node_watch.changes.next() => {
                let change = change.ok_or(Error::WatchEnded("node"))?;
                if let Change::Error(e) = change {
                    return Err(Error::Api(e));
                }
                s.node_changed(change);
            }
            change = pod_watch.changes.next() => {
                let change = change.ok_or(Error::WatchEnded("pod"))?;
                if let Change::Error(e) = change {
                    return Err(Error::Api(e));
                }
                s.pod_changed(change);
            }
            _ = retry.tick() => s.queue.retry_unschedulable(),
            () = std::future::ready(()), if s.queue.has_active() => {
                if let Some(key) = s.queue.pop() {
                    s.schedule(&key).await;
                }
            }
        }
    }
}

/// Whether this scheduler is the one to place `pod`.
fn wants(pod: &Pod) -> bool {
    let name = pod.spec.scheduler_name.as_str();
    pod.spec.node_name.is_empty()
        && (name.is_empty() || name == SCHEDULER_NAME)
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
}

fn is_terminal(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed")
}

impl Scheduler {
    fn node_changed(&mut self, change: Change) {
        match change {
            Change::Added(o) | Change::Modified(o) => {
                match apiary_api::meta::from_json::<Node>(o) {
                    Ok(node) => self.cache.upsert_node(&node),
                    Err(e) => tracing::warn!(error = %e, "scheduler: undecodable node"),
                }
            }
            Change::Deleted(o) => {
                if let Some(name) = o["metadata"]["name"].as_str() {
                    self.cache.remove_node(name);
                }
            }
            Change::Error(_) => return,
        }
        self.queue.retry_unschedulable();
    }

    fn pod_changed(&mut self, change: Change) {
        let (object, deleted) = match change {
            Change::Added(o) | Change::Modified(o) => (o, false),
            Change::Deleted(o) => (o, true),
            Change::Error(_) => return,
        };
        let pod: Pod = match apiary_api::meta::from_json(object) {
            Ok(pod) => pod,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: undecodable pod");
                return;
            }
        };
        let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        if deleted || (pod.spec.node_name.is_empty() && !wants(&pod)) || is_terminal(&pod) {
            self.queue.remove(&key);
            if self.cache.remove_pod(&key) {
                self.queue.retry_unschedulable();
            }
            return;
        }
        if pod.spec.node_name.is_empty() {
            self.queue.upsert(PodInfo::new(pod));
        } else {
            self.queue.remove(&key);
            if self.cache.upsert_pod(PodInfo::new(pod)) {
                // A pod bound elsewhere may satisfy someone's affinity.
                self.queue.retry_unschedulable();
            }
        }
    }

    async fn schedule(&mut self, key: &str) {
        let Some(pending) = self.queue.pending.get(key) else {
            return;
        };
        let pod = &pending.info;
        let domains = filters::AffinityDomains::compute(pod, &self.cache);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut feasible = Vec::new();
        for node in self.cache.nodes.values() {
            let failed = filters::check(pod, node, &self.cache, &domains);
            if failed.is_empty() {
                feasible.push(node);
            }
            for reason in failed {
                *reasons.entry(reason).or_default() += 1;
            }
        }
        if feasible.is_empty() {
            let message = filters::failure_message(self.cache.nodes.len(), &reasons);
            let pending = self.queue.pending.get_mut(key).expect("looked up above");
            if pending.last_message.as_deref() != Some(message.as_str()) {
                pending.last_message = Some(message.clone());
                tracing::info!(pod = key, %message, "unschedulable");
                let api = Arc::clone(&self.api);
                let pod = pending.info.pod.clone();
                tokio::spawn(async move { record_unschedulable(&api, &pod, &message).await });
            }
            self.queue.park(key.to_owned());
            return;
        }
        let scores = scores::score(pod, &self.cache, &feasible);
        let best = scores.iter().copied().max().unwrap_or_default();
        let top: Vec<&str> = feasible
            .iter()
            .zip(&scores)
            .filter(|(_, s)| **s == best)
            .map(|(n, _)| n.name.as_str())
            .collect();
        let node = top[rand::random_range(0..top.len())].to_owned();
        let mut assumed = pod.clone();
        assumed.node = node.clone();
        assumed.pod.spec.node_name = node.clone();
        let pod = pod.pod.clone();
        self.queue.remove(key);
        // Assumed at once, so the next pod sees this one's requests before the watch says so.
        self.cache.upsert_pod(assumed);
        match bind(&self.api, &pod, &node).await {
            Ok(()) => {
                let message = format!(
                    "Successfully assigned {}/{} to {node}",
                    pod.metadata.namespace, pod.metadata.name
                );
                let api = Arc::clone(&self.api);
                tokio::spawn(async move {
                    record_event(&api, &pod, "Normal", "Scheduled", &message).await;
                });
            }
            Err(e) => {
                tracing::info!(pod = key, %node, error = %e.message, "binding failed");
                self.cache.remove_pod(key);
                // Gone or bound by someone else: the watch brings the truth. Otherwise retry.
                if e.reason != "NotFound" && e.reason != "Conflict" {
                    self.queue.upsert(PodInfo::new(pod));
                }
            }
        }
    }
}

/// POSTs a Binding to `pods/{name}/binding`.
async fn bind(api: &Arc<Api>, pod: &Pod, node: &str) -> Result<(), ApiError> {
    let target = Target {
        resource: resource(api, "", "pods"),
        namespace: Some(pod.metadata.namespace.clone()),
        name: Some(pod.metadata.name.clone()),
        subresource: Some("binding".into()),
    };
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": { "name": pod.metadata.name, "namespace": pod.metadata.namespace, "uid": pod.metadata.uid },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    });
    let body = serde_json::to_vec(&binding).expect("a JSON value always serializes");
    objects::dispatch(
        api,
        &Method::POST,
        target,
        &Default::default(),
        &HeaderMap::new(),
        body.into(),
    )
    .await
    .map(drop)
}

/// Sets `PodScheduled=False` (Unschedulable) and records a FailedScheduling event.
async fn record_unschedulable(api: &Arc<Api>, pod: &Pod, message: &str) {
    let pods = resource(api, "", "pods");
    let ns = pod.metadata.namespace.as_str();
    let name = pod.metadata.name.as_str();
    let target = Target {
        resource: pods,
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        subresource: Some("status".into()),
    };
    for _ in 0..3 {
        let Ok(mut current) = objects::get(api, pods, Some(ns), name).await else {
            return;
        };
        if current["metadata"]["uid"] != pod.metadata.uid.as_str() {
            return;
        }
        let condition = json!({
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": now(),
        });
        let status = &mut current["status"];
        if !status.is_object() {
            *status = json!({});
        }
        if status["phase"].is_null() {
            status["phase"] = json!("Pending");
        }
        let mut conditions: Vec<Value> = status["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(condition);
        status["conditions"] = json!(conditions);
        match objects::update(api, &target, name, current).await {
            Ok(_) => break,
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => {
                tracing::warn!(pod = name, error = %e.message, "writing PodScheduled");
                break;
            }
        }
    }
    record_event(api, pod, "Warning", "FailedScheduling", message).await;
}

/// Creates a core/v1 Event about `pod` from the scheduler.
pub(crate) async fn record_event(
    api: &Arc<Api>,
    pod: &Pod,
    kind: &str,
    reason: &str,
    message: &str,
) {
    record_event_from(api, pod, kind, reason, message, SCHEDULER_NAME).await;
}

/// Creates a core/v1 Event about `pod` from `component`.
pub(crate) async fn record_event_from(
    api: &Arc<Api>,
    pod: &Pod,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let events = resource(api, "", "events");
    let ns = pod.metadata.namespace.clone();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let now = now();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "name": format!("{}.{nanos:x}", pod.metadata.name), "namespace": ns },
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        },
        "reason": reason, "message": message, "type": kind,
        "source": { "component": component },
        "reportingComponent": component, "reportingInstance": component,
        "count": 1, "firstTimestamp": now, "lastTimestamp": now,
    });
    let target = Target {
        resource: events,
        namespace: Some(ns),
        name: None,
        subresource: None,
    };
    if let Err(e) = objects::create(api, &target, event).await {
        tracing::debug!(error = %e.message, "recording an event");
    }
}
