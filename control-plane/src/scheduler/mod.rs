//! The scheduler: assigns pending pods to nodes, in-process against the API.
//!
//! Nodes and pods are watched into an in-memory [`cache::Cache`] that accounts what each node's
//! pods request, so that scheduling a pod never lists anything. A pod is checked against the
//! nodes ([`filters`]) until enough feasible ones are found (kube-scheduler's
//! `percentageOfNodesToScore`, starting where the previous pod stopped), those are ranked
//! ([`scores`]), the pod is assumed on the best one in the cache and bound through
//! `pods/binding` by a task of its own, so that the next pod is scheduled while bindings are in
//! flight. A pod that fits nowhere gets `PodScheduled=False` and a FailedScheduling event, and
//! waits in the [`queue`] until a node or pod changes.
//!
//! [`lifecycle`] is the node lifecycle controller: nodes whose Lease goes stale become
//! NotReady and tainted, and their pods are evicted.

pub mod cache;
pub mod filters;
pub mod lifecycle;
pub mod queue;
pub mod scores;
pub mod volumes;

use std::{
    collections::{BTreeMap, HashSet},
    ops::Bound,
    sync::Arc,
    time::Duration,
};

use apiary_api::core_v1::{Node, ObjectReference, Pod};
use axum::http::{HeaderMap, Method};
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    apiserver::{
        Api,
        error::ApiError,
        objects::{self, Change, Filter},
        path::Target,
        resources::ResourceType,
    },
    events,
    metrics::ScheduleResult,
};
use cache::{Cache, PodInfo};
use filters::AffinityDomains;
use queue::Queue;
use volumes::{PodVolumes, VolumeCaches};

/// The name pods ask for in `spec.schedulerName` (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How often parked pods are tried again even if nothing seemed to change.
const RETRY_INTERVAL: Duration = Duration::from_secs(15);
/// Bindings in flight at once: enough to keep the store's group commit busy, few enough that
/// a burst of failures stays cheap to retry.
const MAX_BINDS_IN_FLIGHT: usize = 64;
/// Clusters up to this size are searched whole; larger ones until this many feasible nodes are
/// found at least (kube-scheduler's `minFeasibleNodesToFind`).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;

/// How many feasible nodes to find before scoring, out of `nodes`: kube-scheduler's adaptive
/// `percentageOfNodesToScore` — 50% of a 100-node cluster, falling by 1% per 125 nodes to 5%
/// (at 5,625 nodes and beyond), and never fewer than 100 nodes.
pub fn nodes_to_find(nodes: usize) -> usize {
    if nodes <= MIN_FEASIBLE_NODES_TO_FIND {
        return nodes;
    }
    let percentage = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

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
    // The storage caches outlive relists; their watches end with this task (the sender).
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let (volume_tx, mut volume_rx) = mpsc::unbounded_channel();
    let volumes = VolumeCaches::start(&api, volume_tx, stopped);
    loop {
        if let Err(e) = run_once(&api, &volumes, &mut volume_rx).await {
            tracing::warn!(error = %e, "scheduler: relisting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How a binding task ended.
#[derive(Debug)]
struct BindOutcome {
    pod: Pod,
    node: String,
    result: Result<(), ApiError>,
}

/// PreBind's message in a FailedScheduling event, as kube-scheduler words it.
fn pre_bind_message(e: &ApiError) -> String {
    format!("running PreBind plugin \"VolumeBinding\": {}", e.message)
}

/// The scheduler's state between events.
#[derive(Debug)]
struct Scheduler {
    api: Arc<Api>,
    cache: Cache,
    queue: Queue,
    /// Where the next search over the nodes starts: after the last node the previous one
    /// looked at, so that every node gets its turn.
    next_start: Option<String>,
    /// Pods whose binding task has not reported yet.
    binding: HashSet<String>,
    bound_tx: mpsc::UnboundedSender<BindOutcome>,
    volumes: VolumeCaches,
}

async fn run_once(
    api: &Arc<Api>,
    volumes: &VolumeCaches,
    volume_changes: &mut mpsc::UnboundedReceiver<()>,
) -> Result<()> {
    let pods = resource(api, "", "pods");
    let nodes = resource(api, "", "nodes");
    let mut node_watch =
        objects::watch_changes(api, &all(nodes), Filter::default(), objects::Start::Now)
            .await
            .map_err(Error::Api)?;
    let mut pod_watch =
        objects::watch_changes(api, &all(pods), Filter::default(), objects::Start::Now)
            .await
            .map_err(Error::Api)?;
    let (bound_tx, mut bound_rx) = mpsc::unbounded_channel();
    let mut s = Scheduler {
        api: Arc::clone(api),
        cache: Cache::default(),
        queue: Queue::default(),
        next_start: None,
        binding: HashSet::new(),
        bound_tx,
        volumes: volumes.clone(),
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
            Some(bound) = bound_rx.recv() => s.bound(bound),
            // A claim, volume, class or capacity changed: parked pods may fit now.
            Some(()) = volume_changes.recv() => {
                while volume_changes.try_recv().is_ok() {}
                s.queue.retry_unschedulable();
            }
            _ = retry.tick() => {
                s.queue.retry_unschedulable();
                s.cache.forget_unused_terms();
            }
            () = std::future::ready(()),
                if s.queue.has_active() && s.binding.len() < MAX_BINDS_IN_FLIGHT =>
            {
                if let Some(key) = s.queue.pop() {
                    s.schedule(&key);
                }
            }
        }
        let (active, unschedulable) = s.queue.sizes();
        crate::metrics::global().pending_pods(active, unschedulable);
    }
}

/// A typed copy of a watched object, read from the shared one (stored objects have no nulls
/// for `from_json` to strip).
fn decode<T: serde::de::DeserializeOwned>(object: &serde_json::Value) -> serde_json::Result<T> {
    T::deserialize(object)
}

/// Whether `pod` has PersistentVolumeClaims (its own or ephemeral ones).
fn has_claims(pod: &Pod) -> bool {
    pod.spec
        .volumes
        .iter()
        .any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
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
            Change::Added(o) | Change::Modified(o) => match decode::<Node>(&o) {
                Ok(node) => self.cache.upsert_node(&node),
                Err(e) => tracing::warn!(error = %e, "scheduler: undecodable node"),
            },
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
        let pod: Pod = match decode(&object) {
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
            // Assumed and being bound: the binding task reports how that went.
            if !self.binding.contains(&key) {
                self.queue.upsert(PodInfo::new(pod));
            }
        } else {
            self.queue.remove(&key);
            if self.cache.upsert_pod(PodInfo::new(pod)) {
                // A pod bound elsewhere may satisfy someone's affinity.
                self.queue.retry_unschedulable();
            }
        }
    }

    /// One scheduling attempt: assumes the pod on the best node and starts its binding, or
    /// parks it with the reasons it fits nowhere.
    fn schedule(&mut self, key: &str) {
        let Some(pending) = self.queue.pending.get(key) else {
            return;
        };
        let started = std::time::Instant::now();
        let pod = pending.info.clone();
        // VolumeBinding's PreFilter: what the pod's claims need, or why nothing will do.
        let volumes = if has_claims(&pod.pod) {
            if !self.volumes.synced() {
                self.queue.park(key.to_owned());
                return;
            }
            match self.volumes.pre_filter(&pod.pod) {
                Ok(v) => v,
                Err(why) => {
                    let message = filters::pre_filter_message(self.cache.nodes.len(), &why);
                    self.unschedulable(key, message, started);
                    return;
                }
            }
        } else {
            PodVolumes::default()
        };
        AffinityDomains::prepare(&pod, &mut self.cache);
        let found = search(&self.cache, self.next_start.as_deref(), &pod, &volumes);
        let last = found.last.map(str::to_owned);
        // The best node, at random among equals.
        let best = (!found.feasible.is_empty()).then(|| {
            let scores = scores::score(&pod, &found.feasible, &self.cache);
            let best = scores.iter().copied().max().unwrap_or_default();
            let top: Vec<&str> = found
                .feasible
                .iter()
                .zip(&scores)
                .filter(|(_, s)| **s == best)
                .map(|(n, _)| n.name.as_str())
                .collect();
            top[rand::random_range(0..top.len())].to_owned()
        });
        let reasons = found.reasons;
        if last.is_some() {
            self.next_start = last;
        }
        let Some(node) = best else {
            let message = filters::failure_message(self.cache.nodes.len(), &reasons);
            self.unschedulable(key, message, started);
            return;
        };
        let plan = self
            .cache
            .nodes
            .get(&node)
            .map(|n| volumes.plan(n))
            .unwrap_or_default();
        let caches = self.volumes.clone();
        let mut assumed = pod;
        assumed.node = node.clone();
        assumed.pod.spec.node_name = node.clone();
        let mut pod = assumed.pod.clone();
        pod.spec.node_name.clear();
        self.queue.remove(key);
        // Assumed at once, so the next pod sees this one's requests before the watch says so.
        self.cache.assume_pod(assumed);
        self.binding.insert(key.to_owned());
        let api = Arc::clone(&self.api);
        let tx = self.bound_tx.clone();
        tokio::spawn(async move {
            // PreBind: the pod's delayed claims are bound (or provisioned) on the node first.
            let pre_bound = if plan.is_empty() {
                Ok(())
            } else {
                volumes::pre_bind(&api, &caches, &node, &plan, volumes::BIND_TIMEOUT).await
            };
            if let Err(e) = &pre_bound {
                let message = pre_bind_message(e);
                let (api, pod) = (Arc::clone(&api), pod.clone());
                tokio::spawn(async move {
                    record_event(&api, &pod, "Warning", "FailedScheduling", &message).await;
                });
            }
            let result = match pre_bound {
                Ok(()) => bind(&api, &pod, &node).await,
                Err(e) => Err(e),
            };
            // kube-scheduler's attempt ends with its binding.
            let outcome = match result {
                Ok(()) => ScheduleResult::Scheduled,
                Err(_) => ScheduleResult::Error,
            };
            crate::metrics::global().scheduling_attempt(outcome, started.elapsed());
            if result.is_ok() {
                let message = format!(
                    "Successfully assigned {}/{} to {node}",
                    pod.metadata.namespace, pod.metadata.name
                );
                // Not awaited by the loop: events are for people.
                let api = Arc::clone(&api);
                let pod = pod.clone();
                tokio::spawn(async move {
                    record_event(&api, &pod, "Normal", "Scheduled", &message).await;
                });
            }
            // The loop is gone only when the scheduler restarts, relisting everything.
            let _ = tx.send(BindOutcome { pod, node, result });
        });
    }

    /// Parks `key` as fitting nowhere, telling why (once per distinct message).
    fn unschedulable(&mut self, key: &str, message: String, started: std::time::Instant) {
        let Some(pending) = self.queue.pending.get_mut(key) else {
            return;
        };
        if pending.last_message.as_deref() != Some(message.as_str()) {
            pending.last_message = Some(message.clone());
            tracing::info!(pod = key, %message, "unschedulable");
            let api = Arc::clone(&self.api);
            let pod = pending.info.pod.clone();
            tokio::spawn(async move { record_unschedulable(&api, &pod, &message).await });
        }
        self.queue.park(key.to_owned());
        crate::metrics::global()
            .scheduling_attempt(ScheduleResult::Unschedulable, started.elapsed());
    }

    /// A binding task reported.
    fn bound(&mut self, bound: BindOutcome) {
        let BindOutcome { pod, node, result } = bound;
        let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        self.binding.remove(&key);
        if let Err(e) = result {
            tracing::info!(pod = key, %node, error = %e.message, "binding failed");
            self.cache.forget_assumed(&key);
            // Gone or bound by someone else: the watch brings the truth. Otherwise retry.
            if e.reason != "NotFound" && e.reason != "Conflict" {
                self.queue.upsert(PodInfo::new(pod));
            }
            self.queue.retry_unschedulable();
        }
    }
}

/// What a search for feasible nodes found, with owned names (tests).
#[cfg(test)]
#[derive(Debug, Default)]
struct Search {
    /// Feasible node names, at most [`nodes_to_find`] of them.
    feasible: Vec<String>,
    /// Why the other nodes looked at failed: reason → nodes.
    reasons: BTreeMap<String, usize>,
    /// The last node looked at, where the next search should start after.
    last: Option<String>,
}

/// What a search found, borrowed from the cache: a search looks at hundreds of nodes per pod,
/// so it copies no names.
#[derive(Debug, Default)]
struct Found<'a> {
    /// Feasible nodes, at most [`nodes_to_find`] of them.
    feasible: Vec<&'a cache::NodeInfo>,
    /// Why the other nodes looked at failed: reason → nodes.
    reasons: BTreeMap<String, usize>,
    /// The last node looked at, where the next search should start after.
    last: Option<&'a str>,
}

/// Checks nodes from the one after `start` on, around the ring, until [`nodes_to_find`]
/// feasible ones are found (or every node was checked). The pod's terms must have been
/// [`AffinityDomains::prepare`]d.
fn search<'a>(
    cache: &'a Cache,
    start: Option<&str>,
    pod: &PodInfo,
    volumes: &PodVolumes,
) -> Found<'a> {
    let domains = AffinityDomains::compute(pod, cache);
    let wanted = nodes_to_find(cache.nodes.len());
    // Node names are never empty: after "" is every node.
    let start = start.unwrap_or_default();
    let after = cache
        .nodes
        .range::<str, _>((Bound::Excluded(start), Bound::Unbounded));
    let before = cache
        .nodes
        .range::<str, _>((Bound::Unbounded, Bound::Included(start)));
    let mut found = Found::default();
    for node in after.chain(before).map(|(_, n)| n) {
        found.last = Some(&node.name);
        let mut failed = filters::check(pod, node, cache, &domains);
        if failed.is_empty()
            && let Some(reason) = volumes.check(node)
        {
            failed.push(reason.to_owned());
        }
        if failed.is_empty() {
            found.feasible.push(node);
            if found.feasible.len() >= wanted {
                break;
            }
        }
        for reason in failed {
            *found.reasons.entry(reason).or_default() += 1;
        }
    }
    found
}

/// [`search`] with owned names, for tests.
#[cfg(test)]
fn find_feasible(cache: &mut Cache, start: Option<&str>, pod: &PodInfo) -> Search {
    AffinityDomains::prepare(pod, cache);
    let found = search(cache, start, pod, &PodVolumes::default());
    Search {
        feasible: found.feasible.iter().map(|n| n.name.clone()).collect(),
        reasons: found.reasons,
        last: found.last.map(str::to_owned),
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
        objects::put_pod_scheduled(&mut current, condition);
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

/// Records a core/v1 Event about `pod` from `component`; a repeat is counted on the Event it
/// repeats.
pub(crate) async fn record_event_from(
    api: &Arc<Api>,
    pod: &Pod,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let involved = ObjectReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    };
    let reporter = events::Reporter {
        component,
        instance: component,
    };
    events::record(api, reporter, involved, (kind, reason), message).await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apiary_api::core_v1::{Node, Pod};
    use serde_json::{Value, json};

    use super::{
        Search,
        cache::{Cache, PodInfo},
        find_feasible, nodes_to_find,
    };

    fn node(name: &str, labels: Value, pods: u32) -> Node {
        apiary_api::meta::from_json(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": name, "labels": labels },
            "status": {
                "allocatable": { "cpu": "4", "memory": "8Gi", "pods": pods.to_string() },
                "conditions": [{ "type": "Ready", "status": "True" }],
            },
        }))
        .unwrap()
    }

    fn pod(name: &str, labels: Value, spec: Value) -> PodInfo {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels },
            "spec": { "containers": [{ "name": "c", "image": "busybox" }] },
        });
        json_patch::merge(&mut pod["spec"], &spec);
        PodInfo::new(apiary_api::meta::from_json::<Pod>(pod).unwrap())
    }

    fn anti(group: &str, key: &str) -> Value {
        json!({ "affinity": { "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": { "matchLabels": { "group": group } }, "topologyKey": key,
        }]}}})
    }

    fn cluster(nodes: usize, pods_per_node: u32) -> Cache {
        let mut cache = Cache::default();
        for i in 0..nodes {
            cache.upsert_node(&node(
                &format!("n{i:04}"),
                json!({ "kubernetes.io/hostname": format!("n{i:04}"), "zone": format!("z{}", i % 3) }),
                pods_per_node,
            ));
        }
        cache
    }

    /// Schedules as the loop does: search, then assume on the first feasible node.
    fn place(cache: &mut Cache, start: &mut Option<String>, pod: PodInfo) -> Option<String> {
        let Search { feasible, last, .. } = find_feasible(cache, start.as_deref(), &pod);
        *start = last.or(start.take());
        let node = feasible.first()?.clone();
        let mut assumed = pod;
        assumed.node = node.clone();
        cache.assume_pod(assumed);
        Some(node)
    }

    /// The scores of `pod` on every node of `cache`, its terms counted first as the loop does.
    fn scores(cache: &mut Cache, pod: &PodInfo) -> Vec<i64> {
        super::filters::AffinityDomains::prepare(pod, cache);
        let nodes: Vec<_> = cache.nodes.values().collect();
        super::scores::score(pod, &nodes, cache)
    }

    /// The node `scores::score` ranks first for `pod` among every node of `cache`.
    fn best(cache: &mut Cache, pod: &PodInfo) -> String {
        let scores = scores(cache, pod);
        let nodes: Vec<_> = cache.nodes.values().collect();
        let best = scores.iter().copied().max().unwrap();
        let top: Vec<_> = nodes
            .iter()
            .zip(&scores)
            .filter(|(_, s)| **s == best)
            .map(|(n, _)| n.name.clone())
            .collect();
        assert_eq!(top.len(), 1, "one best node: {top:?} ({scores:?})");
        top[0].clone()
    }

    #[test]
    fn preferred_node_affinity_weighs_in() {
        let mut cache = cluster(3, 110);
        let prefers = |zone: &str, weight: i32| {
            json!({ "weight": weight, "preference": { "matchExpressions": [
                { "key": "zone", "operator": "In", "values": [zone] }] } })
        };
        let p = pod(
            "p",
            json!({}),
            json!({ "affinity": { "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [prefers("z1", 10), prefers("z2", 80)],
            }}}),
        );
        assert_eq!(best(&mut cache, &p), "n0002");
    }

    #[test]
    fn prefer_no_schedule_taints_are_avoided_unless_tolerated() {
        let mut cache = cluster(2, 110);
        let mut tainted = node("n0000", json!({ "zone": "z0" }), 110);
        tainted.spec.taints = vec![
            apiary_api::meta::from_json(json!({ "key": "slow", "effect": "PreferNoSchedule" }))
                .unwrap(),
        ];
        cache.upsert_node(&tainted);
        assert_eq!(best(&mut cache, &pod("p", json!({}), json!({}))), "n0001");
        let tolerant = pod(
            "t",
            json!({}),
            json!({ "tolerations": [{ "key": "slow", "operator": "Exists" }] }),
        );
        let scores = scores(&mut cache, &tolerant);
        assert_eq!(scores[0], scores[1], "a tolerated taint costs nothing");
    }

    #[test]
    fn preferred_pod_affinity_attracts_and_anti_affinity_repels() {
        let mut cache = cluster(3, 110);
        let mut db = pod("db", json!({ "app": "db" }), json!({}));
        db.node = "n0001".to_owned();
        cache.upsert_pod(db);
        let term = |kind: &str| {
            json!({ "affinity": { kind: { "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 50,
                "podAffinityTerm": { "labelSelector": { "matchLabels": { "app": "db" } },
                    "topologyKey": "kubernetes.io/hostname" },
            }]}}})
        };
        assert_eq!(
            best(&mut cache, &pod("near", json!({}), term("podAffinity"))),
            "n0001"
        );
        let away = pod("away", json!({}), term("podAntiAffinity"));
        let scores = scores(&mut cache, &away);
        assert!(scores[1] < scores[0] && scores[1] < scores[2], "{scores:?}");
    }

    #[test]
    fn percentage_of_nodes_to_score_follows_kube_scheduler() {
        assert_eq!(nodes_to_find(3), 3);
        assert_eq!(nodes_to_find(100), 100);
        // 50% - 200/125 = 49% of 200 = 98, raised to the minimum of 100.
        assert_eq!(nodes_to_find(200), 100);
        assert_eq!(nodes_to_find(1_000), 420);
        assert_eq!(nodes_to_find(5_000), 500);
        assert_eq!(nodes_to_find(20_000), 1_000);
    }

    #[test]
    fn sampling_stops_early_and_rotates_through_every_node() {
        let mut cache = cluster(1_000, 110);
        let p = pod("p", json!({}), json!({}));
        let first = find_feasible(&mut cache, None, &p);
        assert_eq!(first.feasible.len(), 420);
        assert_eq!(first.feasible[0], "n0000");
        let second = find_feasible(&mut cache, first.last.as_deref(), &p);
        assert_eq!(second.feasible[0], "n0420");
        let third = find_feasible(&mut cache, second.last.as_deref(), &p);
        // Wraps around the end.
        assert_eq!(third.feasible[0], "n0840");
        assert!(third.feasible.contains(&"n0000".to_owned()));
    }

    #[test]
    fn sampling_still_finds_the_one_feasible_node() {
        let mut cache = cluster(1_000, 110);
        // Only n0777 carries the label the pod selects.
        cache.upsert_node(&node("n0777", json!({ "disk": "ssd" }), 110));
        let p = pod("p", json!({}), json!({ "nodeSelector": { "disk": "ssd" } }));
        for start in [None, Some("n0778"), Some("n0500")] {
            let search = find_feasible(&mut cache, start, &p);
            assert_eq!(search.feasible, ["n0777"]);
            assert_eq!(search.reasons.values().sum::<usize>(), 999);
        }
        let nowhere = pod(
            "q",
            json!({}),
            json!({ "nodeSelector": { "disk": "nvme" } }),
        );
        let search = find_feasible(&mut cache, None, &nowhere);
        assert!(search.feasible.is_empty());
        assert_eq!(
            search.reasons,
            BTreeMap::from([(super::filters::NODE_AFFINITY.to_owned(), 1_000)])
        );
    }

    #[test]
    fn assumed_pods_never_overfill_a_node() {
        // 3 nodes × 4 pods: binds still in flight count like bound pods.
        let mut cache = cluster(3, 4);
        let mut start = None;
        let mut placed = BTreeMap::<String, usize>::new();
        for i in 0..20 {
            if let Some(node) = place(
                &mut cache,
                &mut start,
                pod(&format!("p{i}"), json!({}), json!({})),
            ) {
                *placed.entry(node).or_default() += 1;
            }
        }
        assert_eq!(placed.values().sum::<usize>(), 12, "{placed:?}");
        assert!(placed.values().all(|n| *n == 4), "{placed:?}");
        // A failed binding gives its room back.
        cache.forget_assumed("default/p0");
        assert!(place(&mut cache, &mut start, pod("again", json!({}), json!({}))).is_some());
        assert!(place(&mut cache, &mut start, pod("more", json!({}), json!({}))).is_none());
    }

    #[test]
    fn a_confirmed_binding_is_not_forgotten() {
        let mut cache = cluster(1, 4);
        let mut start = None;
        let node = place(&mut cache, &mut start, pod("p", json!({}), json!({}))).unwrap();
        assert!(cache.is_assumed("default/p"));
        let mut bound = pod("p", json!({}), json!({}));
        bound.node = node.clone();
        cache.upsert_pod(bound);
        assert!(!cache.is_assumed("default/p"));
        cache.forget_assumed("default/p");
        assert_eq!(cache.nodes[&node].requested.pods, 1);
    }

    #[test]
    fn anti_affinity_counts_follow_pods_nodes_and_labels() {
        let mut cache = cluster(3, 110);
        let mut start = None;
        // One pod of group a per hostname: three fit, the fourth doesn't.
        let mut nodes = Vec::new();
        for i in 0..4 {
            let p = pod(
                &format!("a{i}"),
                json!({ "group": "a" }),
                anti("a", "kubernetes.io/hostname"),
            );
            nodes.push(place(&mut cache, &mut start, p));
        }
        assert!(
            nodes[..3].iter().all(Option::is_some) && nodes[3].is_none(),
            "{nodes:?}"
        );
        let search = find_feasible(
            &mut cache,
            None,
            &pod(
                "a9",
                json!({ "group": "a" }),
                anti("a", "kubernetes.io/hostname"),
            ),
        );
        assert_eq!(
            search.reasons,
            BTreeMap::from([(super::filters::POD_ANTI_AFFINITY.to_owned(), 3)])
        );
        // A pod without terms but selected by the placed pods' terms is kept off too.
        let plain = pod("b", json!({ "group": "a" }), json!({}));
        let search = find_feasible(&mut cache, None, &plain);
        assert_eq!(
            search.reasons,
            BTreeMap::from([(super::filters::EXISTING_ANTI_AFFINITY.to_owned(), 3)])
        );
        // Another group is not affected.
        let other = pod(
            "c0",
            json!({ "group": "c" }),
            anti("c", "kubernetes.io/hostname"),
        );
        assert_eq!(find_feasible(&mut cache, None, &other).feasible.len(), 3);
        // A pod going away frees its domain.
        cache.remove_pod("default/a1");
        let search = find_feasible(
            &mut cache,
            None,
            &pod(
                "a9",
                json!({ "group": "a" }),
                anti("a", "kubernetes.io/hostname"),
            ),
        );
        assert_eq!(search.feasible.len(), 1);
        // Zones: a node moving to another zone moves its pods' domain.
        let mut cache = cluster(3, 110);
        let z = |name: &str| pod(name, json!({ "group": "z" }), anti("z", "zone"));
        let mut start = None;
        let first = place(&mut cache, &mut start, z("z0")).unwrap();
        // n0000..n0002 are in z0, z1, z2: two more fit, one per zone.
        assert!(place(&mut cache, &mut start, z("z1")).is_some());
        assert!(place(&mut cache, &mut start, z("z2")).is_some());
        assert!(place(&mut cache, &mut start, z("z3")).is_none());
        cache.upsert_node(&node(
            &first,
            json!({ "kubernetes.io/hostname": first, "zone": "z9" }),
            110,
        ));
        // The zone the first node left is free now, and z9 holds the first pod.
        let search = find_feasible(&mut cache, None, &z("z4"));
        assert!(search.feasible.is_empty(), "{:?}", search.feasible);
        cache.upsert_node(&node(
            "n0100",
            json!({ "kubernetes.io/hostname": "n0100", "zone": "z0" }),
            110,
        ));
        assert_eq!(
            find_feasible(&mut cache, None, &z("z4")).feasible,
            ["n0100"]
        );
    }

    #[test]
    fn affinity_follows_the_first_of_a_group() {
        let mut cache = cluster(6, 110);
        let aff = |name: &str| {
            pod(
                name,
                json!({ "app": "db" }),
                json!({ "affinity": { "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": { "matchLabels": { "app": "db" } }, "topologyKey": "zone" }]}}}),
            )
        };
        let mut start = None;
        let first = place(&mut cache, &mut start, aff("d0")).unwrap();
        let zone = cache.nodes[&first].labels["zone"].clone();
        for i in 1..5 {
            let node = place(&mut cache, &mut start, aff(&format!("d{i}"))).unwrap();
            assert_eq!(cache.nodes[&node].labels["zone"], zone);
        }
    }

    #[test]
    fn unused_terms_are_forgotten_and_held_ones_kept() {
        let mut cache = cluster(2, 110);
        let probe = pod("x", json!({}), anti("x", "zone"));
        find_feasible(&mut cache, None, &probe);
        assert_eq!(cache.terms.len(), 1);
        cache.forget_unused_terms();
        assert_eq!(cache.terms.len(), 1, "used since the last sweep");
        cache.forget_unused_terms();
        assert!(cache.terms.is_empty());
        let mut start = None;
        place(
            &mut cache,
            &mut start,
            pod("h", json!({ "group": "h" }), anti("h", "zone")),
        )
        .unwrap();
        cache.forget_unused_terms();
        cache.forget_unused_terms();
        assert_eq!(cache.terms.len(), 1, "held by a placed pod");
        cache.remove_pod("default/h");
        cache.forget_unused_terms();
        assert!(cache.terms.is_empty());
    }
}
