//! The security identity controller (Cilium's identity allocation, done by the control plane):
//! every distinct set of security labels among live pods
//! ([`apiary_api::apiary_v1::pod_security_labels`]: the pod's labels, its namespace and the
//! namespace's labels) gets a cluster-scoped `SecurityIdentity`, numbered with the lowest free
//! id from 256; identities no pod has used for a grace period are deleted.
//!
//! Allocation is serialised: one work key, one worker, and every reconcile starts from the
//! identities in the store (never a cache), so that a restart or a new leader sees what exists
//! and a label set never gets a second number. Should two exist anyway (a store edited by
//! hand), the lowest is the one in use, on nodes as here, and the other is collected.
//!
//! Nothing is allocated or collected before pods and namespaces are listed (a new leader's
//! caches start empty). The grace period keeps a number across a pod's restart (a Deployment rolling its pods over,
//! a Job's next pod): the nodes' maps and compiled policies stay as they are.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use apiary_api::{
    apiary_v1::{self, MAX_IDENTITY, MIN_IDENTITY, SecurityIdentity, SecurityLabels},
    meta::ObjectRef,
};
use serde_json::{Value, json};
use tokio::{sync::watch, time::Instant};

use super::{
    labels_of, resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler, Result},
    str_of,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

/// How long an identity no pod uses is kept, by default.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(60);
/// How often everything is looked at again without a change: a safety net.
const RESYNC: Duration = Duration::from_secs(30);

/// The one work key: every change leads to the same (serialised) allocation pass.
fn key() -> ObjectRef {
    ObjectRef {
        resource: "securityidentities.apiary.dev".into(),
        namespace: String::new(),
        name: String::new(),
    }
}

/// Runs the identity controller until `shutdown` turns true; identities unused for `grace`
/// are deleted.
pub async fn run(api: Arc<Api>, grace: Duration, shutdown: watch::Receiver<bool>) {
    let pods = Cache::new(resource(&api, "", "v1", "pods"));
    let pod_sets: Arc<Mutex<PodSets>> = Arc::default();
    let namespaces = Cache::new(resource(&api, "", "v1", "namespaces"));
    let identities = Cache::new(resource(&api, "apiary.dev", "v1", "securityidentities"));
    let queue = Queue::new();
    let reconciler = Arc::new(Identities {
        api: Arc::clone(&api),
        pods: pods.clone(),
        pod_sets: Arc::clone(&pod_sets),
        namespaces: namespaces.clone(),
        identities: identities.resource(),
        grace,
        unused_since: Mutex::default(),
    });
    let changed = |queue: &Arc<Queue>| {
        let queue = Arc::clone(queue);
        move |_: &Value| queue.add(key())
    };
    let resync = {
        let (queue, mut shutdown) = (Arc::clone(&queue), shutdown.clone());
        async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(RESYNC) => queue.add(key()),
                    () = runtime::stopped(&mut shutdown) => return,
                }
            }
        }
    };
    tokio::join!(
        runtime::reflect(
            Arc::clone(&api),
            pods.clone(),
            {
                let (queue, pods) = (Arc::clone(&queue), pods.clone());
                move |pod: &Value| {
                    // The cache already holds the change: absent means deleted.
                    let (namespace, name) = (
                        str_of(pod, "/metadata/namespace"),
                        str_of(pod, "/metadata/name"),
                    );
                    let current = pods.get(namespace, name);
                    pod_sets.lock().unwrap_or_else(|e| e.into_inner()).observe(
                        namespace,
                        name,
                        current.as_deref(),
                    );
                    queue.add(key());
                }
            },
            shutdown.clone()
        ),
        runtime::reflect(
            Arc::clone(&api),
            namespaces,
            changed(&queue),
            shutdown.clone()
        ),
        // A hand-deleted identity still in use is made again.
        runtime::reflect(
            Arc::clone(&api),
            identities,
            changed(&queue),
            shutdown.clone()
        ),
        resync,
        runtime::process(reconciler, queue, 1, shutdown),
    );
}

struct Identities {
    api: Arc<Api>,
    pods: Cache,
    /// What the live pods need, kept from pod changes.
    pod_sets: Arc<Mutex<PodSets>>,
    namespaces: Cache,
    identities: &'static ResourceType,
    grace: Duration,
    /// Since when each unused identity has been seen unused (in this process: a restart
    /// starts the grace period again, which only keeps identities longer).
    unused_since: Mutex<HashMap<u32, Instant>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities").finish_non_exhaustive()
    }
}

/// An identity as stored.
#[derive(Debug)]
struct Stored {
    id: u32,
    labels: SecurityLabels,
    uid: String,
}

/// A pod's namespace and labels: with the namespace's labels, its security label set.
type PodSet = (String, BTreeMap<String, String>);

/// The distinct [`PodSet`]s of the live pods with their own network
/// ([`apiary_v1::has_identity`]), counted and kept up to date pod by pod: a pass looks at each
/// distinct set once instead of decoding every pod, which with 20,000 pods cost most of a core
/// on every pod change.
#[derive(Debug, Default)]
struct PodSets {
    by_pod: HashMap<(String, String), PodSet>,
    counts: BTreeMap<PodSet, usize>,
}

impl PodSets {
    /// Records the latest state of pod `namespace/name` (`None`: deleted).
    fn observe(&mut self, namespace: &str, name: &str, pod: Option<&Value>) {
        let key = (namespace.to_owned(), name.to_owned());
        let new = pod.and_then(pod_set);
        if self.by_pod.get(&key) == new.as_ref() {
            return;
        }
        if let Some(old) = self.by_pod.remove(&key)
            && let Some(n) = self.counts.get_mut(&old)
        {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&old);
            }
        }
        if let Some(new) = new {
            *self.counts.entry(new.clone()).or_default() += 1;
            self.by_pod.insert(key, new);
        }
    }
}

/// The pod's [`PodSet`], if it has an identity: read in place, without decoding the pod.
fn pod_set(pod: &Value) -> Option<PodSet> {
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if finished || pod["spec"]["hostNetwork"].as_bool() == Some(true) {
        return None;
    }
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    Some((namespace.to_owned(), labels_of(pod)))
}

/// The label sets the live pods need, given their namespaces' labels. Pods of a namespace not
/// seen yet are left out (their namespace's event brings them back).
fn desired(pods: &PodSets, namespaces: &Cache) -> BTreeSet<SecurityLabels> {
    let mut namespace_labels: BTreeMap<&str, Option<BTreeMap<String, String>>> = BTreeMap::new();
    let mut sets = BTreeSet::new();
    for (namespace, labels) in pods.counts.keys() {
        let ns_labels = namespace_labels
            .entry(namespace)
            .or_insert_with(|| namespaces.get("", namespace).map(|ns| labels_of(&ns)));
        if let Some(ns_labels) = ns_labels {
            sets.insert(apiary_v1::security_labels(namespace, labels, ns_labels));
        }
    }
    sets
}

/// The lowest id from `from` that `used` does not hold.
fn lowest_free(used: &BTreeSet<u32>, from: u32) -> Option<u32> {
    let mut candidate = from.max(MIN_IDENTITY);
    for &id in used.range(candidate..) {
        if id != candidate {
            break;
        }
        candidate += 1;
    }
    (candidate < MAX_IDENTITY).then_some(candidate)
}

impl Identities {
    fn target(&self, name: Option<&str>) -> Target {
        Target {
            resource: self.identities,
            namespace: None,
            name: name.map(str::to_owned),
            subresource: None,
        }
    }

    async fn stored(&self) -> Result<Vec<Stored>> {
        let listing = objects::list(&self.api, &self.target(None), &Default::default())
            .await
            .map_err(|e| Error::api("listing security identities", &e))?;
        let mut stored: Vec<Stored> = listing["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                let identity: SecurityIdentity = apiary_api::from_json(o.clone()).ok()?;
                Some(Stored {
                    id: identity.id()?,
                    uid: identity.metadata.uid,
                    labels: identity.labels,
                })
            })
            .collect();
        stored.sort_by_key(|s| s.id);
        Ok(stored)
    }

    /// Creates an identity for `labels` with the lowest free id, moving on to the next when
    /// one is taken meanwhile; returns its id.
    async fn allocate(&self, labels: &SecurityLabels, used: &mut BTreeSet<u32>) -> Result<u32> {
        let mut from = MIN_IDENTITY;
        loop {
            let Some(id) = lowest_free(used, from) else {
                return Err(Error {
                    action: "allocating a security identity".into(),
                    message: format!("all ids from {MIN_IDENTITY} to {MAX_IDENTITY} are in use"),
                    reason: "InternalError",
                });
            };
            let object = serde_json::to_value(SecurityIdentity::new(id, labels.clone()))
                .expect("an identity encodes");
            match objects::create(&self.api, &self.target(None), object).await {
                Ok(_) => {
                    used.insert(id);
                    return Ok(id);
                }
                Err(e) if e.reason == "AlreadyExists" => {
                    used.insert(id);
                    from = id + 1;
                }
                Err(e) => return Err(Error::api(format!("creating security identity {id}"), &e)),
            }
        }
    }

    /// Deletes exactly `identity` (its UID is a precondition).
    async fn delete(&self, identity: &Stored) -> Result<()> {
        let name = identity.id.to_string();
        let options = json!({ "preconditions": { "uid": identity.uid } });
        match objects::delete(&self.api, &self.target(Some(&name)), &name, &options).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "NotFound" => Ok(()),
            Err(e) => Err(Error::api(format!("deleting security identity {name}"), &e)),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for Identities {
    fn name(&self) -> &'static str {
        "identity"
    }

    async fn reconcile(&self, _: &ObjectRef) -> Result<Action> {
        // Until pods and namespaces are listed, every identity would look unused.
        if !self.pods.is_synced() || !self.namespaces.is_synced() {
            return Ok(Action::RequeueAfter(Duration::from_millis(100)));
        }
        let desired = {
            let pod_sets = self.pod_sets.lock().unwrap_or_else(|e| e.into_inner());
            desired(&pod_sets, &self.namespaces)
        };
        let stored = self.stored().await?;
        let mut used: BTreeSet<u32> = stored.iter().map(|s| s.id).collect();
        // The lowest id of each label set is its identity.
        let mut current: BTreeMap<&SecurityLabels, u32> = BTreeMap::new();
        for s in &stored {
            current.entry(&s.labels).or_insert(s.id);
        }
        for labels in &desired {
            if !current.contains_key(labels) {
                let id = self.allocate(labels, &mut used).await?;
                tracing::info!(id, ?labels, "allocated a security identity");
            }
        }

        let now = Instant::now();
        let mut next: Option<Duration> = None;
        let mut expired = Vec::new();
        {
            let mut unused_since = self.unused_since.lock().unwrap_or_else(|e| e.into_inner());
            unused_since.retain(|id, _| used.contains(id));
            for s in &stored {
                let in_use = desired.contains(&s.labels) && current.get(&s.labels) == Some(&s.id);
                if in_use {
                    unused_since.remove(&s.id);
                    continue;
                }
                let since = *unused_since.entry(s.id).or_insert(now);
                let idle = now.saturating_duration_since(since);
                if idle >= self.grace {
                    expired.push(s);
                } else {
                    let left = self.grace - idle;
                    next = Some(next.map_or(left, |n| n.min(left)));
                }
            }
        }
        for s in expired {
            self.delete(s).await?;
            self.unused_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&s.id);
            tracing::info!(id = s.id, "deleted an unused security identity");
        }
        Ok(next.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_pods_with_their_own_network_need_their_label_sets_counted_pod_by_pod() {
        use crate::apiserver::resources::Resources;
        let namespaces = Cache::new(Resources::default().get("", "v1", "namespaces").unwrap());
        namespaces.apply(Arc::new(json!({
            "metadata": { "name": "shop", "labels": { "team": "a" } },
        })));
        let pod = |name: &str, ns: &str, labels: Value, extra: Value| {
            let mut pod = json!({
                "metadata": { "name": name, "namespace": ns, "labels": labels },
                "spec": { "containers": [{ "name": "c", "image": "i" }] },
            });
            json_patch::merge(&mut pod, &extra);
            Arc::new(pod)
        };
        let pods = [
            pod("a", "shop", json!({ "app": "web" }), json!({})),
            pod("b", "shop", json!({ "app": "web" }), json!({})),
            pod(
                "c",
                "shop",
                json!({ "app": "db" }),
                json!({ "status": { "phase": "Running" } }),
            ),
            pod(
                "done",
                "shop",
                json!({ "app": "batch" }),
                json!({ "status": { "phase": "Succeeded" } }),
            ),
            pod(
                "failed",
                "shop",
                json!({ "app": "batch" }),
                json!({ "status": { "phase": "Failed" } }),
            ),
            pod(
                "host",
                "shop",
                json!({ "app": "agent" }),
                json!({ "spec": { "hostNetwork": true } }),
            ),
            // Its namespace is not known yet.
            pod("early", "other", json!({ "app": "web" }), json!({})),
        ];
        let mut sets = PodSets::default();
        for pod in &pods {
            sets.observe(
                str_of(pod, "/metadata/namespace"),
                str_of(pod, "/metadata/name"),
                Some(pod),
            );
        }
        let ns = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        let set = |app: &str| {
            apiary_v1::security_labels(
                "shop",
                &BTreeMap::from([("app".to_owned(), app.to_owned())]),
                &ns,
            )
        };
        assert_eq!(
            desired(&sets, &namespaces),
            BTreeSet::from([set("web"), set("db")])
        );
        assert_eq!(
            sets.counts.len(),
            3,
            "web, db, and web in the unknown namespace"
        );
        // b finishes, a is deleted: web is needed no more; c's labels change.
        sets.observe(
            "shop",
            "b",
            Some(&pod(
                "b",
                "shop",
                json!({ "app": "web" }),
                json!({ "status": { "phase": "Succeeded" } }),
            )),
        );
        sets.observe("shop", "a", None);
        sets.observe(
            "shop",
            "c",
            Some(&pod("c", "shop", json!({ "app": "cache" }), json!({}))),
        );
        assert_eq!(desired(&sets, &namespaces), BTreeSet::from([set("cache")]));
        sets.observe("other", "early", None);
        assert_eq!(sets.counts.len(), 1);
        assert_eq!(sets.by_pod.len(), 1);
    }

    #[test]
    fn the_lowest_free_id_fills_holes_first() {
        let used: BTreeSet<u32> = [256, 257, 259].into();
        assert_eq!(lowest_free(&used, MIN_IDENTITY), Some(258));
        assert_eq!(lowest_free(&used, 259), Some(260));
        assert_eq!(lowest_free(&BTreeSet::new(), 0), Some(256));
        assert_eq!(
            lowest_free(&[MAX_IDENTITY - 1].into(), MAX_IDENTITY - 1),
            None
        );
    }
}
