//! A small controller runtime, in the shape of kube-runtime: a watcher per resource type feeds
//! an in-memory cache and a debounced work queue of [`ObjectRef`]s; a dispatcher reconciles
//! each key one at a time, several keys at once (bounded), requeues failures with back-off and
//! drains in-flight reconciles on shutdown.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use apiary_api::meta::ObjectRef;
use futures::StreamExt as _;
use serde_json::Value;
use tokio::{
    sync::{Notify, Semaphore, watch},
    task::JoinSet,
    time::Instant,
};

use crate::apiserver::{
    Api,
    objects::{self, Change, Filter},
    path::Target,
    resources::ResourceType,
};

/// How long a key waits after its first enqueue, so that a burst of changes is one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Back-off of a failing key: doubles from the first value up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));

/// The outcome of a successful reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing more to do until something changes (or the periodic resync).
    Done,
    /// Look again after this long (e.g. a pod becomes available after `minReadySeconds`).
    RequeueAfter(Duration),
}

/// Why a reconcile failed. Always retryable: the key is requeued with back-off.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {message}")]
pub struct Error {
    pub action: String,
    pub message: String,
    /// Kubernetes' reason, e.g. `Conflict`.
    pub reason: &'static str,
}

impl Error {
    /// An API error met while doing `action`.
    pub fn api(action: impl Into<String>, e: &crate::apiserver::error::ApiError) -> Self {
        Self {
            action: action.into(),
            message: e.message.clone(),
            reason: e.reason,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Computes the desired state of one object and applies the difference. Must be idempotent:
/// it runs again on every change and on every resync.
#[async_trait::async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name, for logs.
    fn name(&self) -> &'static str;
    /// Reconciles the object `key` names (which may no longer exist).
    async fn reconcile(&self, key: &ObjectRef) -> Result<Action>;
}

/// Cached objects by (namespace, name).
type Objects = BTreeMap<(String, String), Arc<Value>>;

/// The latest seen state of every object of one type, by namespace and name.
#[derive(Clone, Debug)]
pub struct Cache {
    resource: &'static ResourceType,
    objects: Arc<RwLock<Objects>>,
    /// Whether a listing has filled it (see [`Cache::is_synced`]).
    synced: Arc<AtomicBool>,
}

fn ns_name(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

impl Cache {
    pub fn new(resource: &'static ResourceType) -> Self {
        Self {
            resource,
            objects: Arc::default(),
            synced: Arc::default(),
        }
    }

    /// Whether [`reflect`] has filled the cache from a listing at least once: before that, an
    /// object missing from it may just not be listed yet.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The resource type cached.
    pub fn resource(&self) -> &'static ResourceType {
        self.resource
    }

    /// The object named, if it exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The objects of one namespace.
    pub fn list(&self, namespace: &str) -> Vec<Arc<Value>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .range((namespace.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, o)| Arc::clone(o))
            .collect()
    }

    /// Every cached object.
    pub fn all(&self) -> Vec<Arc<Value>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects.values().cloned().collect()
    }

    /// The key a work queue uses for `object`.
    pub fn key_of(&self, object: &Value) -> ObjectRef {
        let (namespace, name) = ns_name(object);
        ObjectRef {
            resource: self.resource.plural.to_owned(),
            namespace,
            name,
        }
    }

    /// Keeps `object` as the latest state of its key (what [`reflect`] does on each change).
    pub(crate) fn apply(&self, object: Arc<Value>) {
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        objects.insert(ns_name(&object), object);
    }

    fn remove(&self, object: &Value) {
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        objects.remove(&ns_name(object));
    }

    /// Replaces everything with a fresh listing; returns the objects that are gone.
    fn replace(&self, listing: &[Arc<Value>]) -> Vec<Arc<Value>> {
        let fresh: BTreeMap<_, _> = listing
            .iter()
            .map(|o| (ns_name(o), Arc::clone(o)))
            .collect();
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut *objects, fresh);
        old.into_iter()
            .filter(|(k, _)| !objects.contains_key(k))
            .map(|(_, v)| v)
            .collect()
    }
}

/// Resolves once every one of `caches` has been filled from a listing.
async fn all_synced(caches: &[&Cache]) {
    while !caches.iter().all(|c| c.is_synced()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every one of `caches` has been filled from a listing, or `timeout` has
/// passed: what a server that serves from them does before its first request.
pub async fn wait_synced(caches: &[&Cache], timeout: Duration) {
    let _ = tokio::time::timeout(timeout, all_synced(caches)).await;
}

/// Waits until every one of `caches` has been filled from a listing; false when `shutdown`
/// came first.
pub async fn until_synced(caches: &[&Cache], shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        () = all_synced(caches) => true,
        () = stopped(shutdown) => false,
    }
}

/// [`process`], started once every one of `caches` the reconciler reads is synced, as
/// Kubernetes' controllers wait for their informers before starting workers: a reconcile on a
/// cache not filled yet acts on a world that lacks objects (the EndpointSlice controller of a
/// newly elected leader wrote Services' slices empty while its pods were still being listed,
/// and their clients were refused until it caught up).
pub async fn process_once_synced<R: Reconciler>(
    caches: Vec<Cache>,
    reconciler: Arc<R>,
    queue: Arc<Queue>,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    if until_synced(&caches.iter().collect::<Vec<_>>(), &mut shutdown).await {
        process(reconciler, queue, concurrency, shutdown).await;
    }
}

/// Resolves when `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Keeps `cache` in step with the objects of its type, in every namespace: lists, watches from
/// the listing's revision, and relists when the watch fails (e.g. 410 after compaction) or ends.
/// Every object seen (added, changed, deleted, or gone between two listings) goes to `changed`.
pub async fn reflect(
    api: Arc<Api>,
    cache: Cache,
    changed: impl Fn(&Value) + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let target = Target {
        resource: cache.resource,
        namespace: None,
        name: None,
        subresource: None,
    };
    let mut backoff = BACKOFF.0;
    loop {
        let watch = tokio::select! {
            w = objects::watch_changes(&api, &target, Filter::default(), objects::Start::Now) => w,
            () = stopped(&mut shutdown) => return,
        };
        let mut watch = match watch {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(resource = cache.resource.plural, error = %e.message, "list failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        for gone in cache.replace(&watch.initial) {
            changed(&gone);
        }
        cache.synced.store(true, Ordering::Release);
        for object in &watch.initial {
            changed(object);
        }
        loop {
            let change = tokio::select! {
                c = watch.changes.next() => c,
                () = stopped(&mut shutdown) => return,
            };
            match change {
                Some(Change::Added(o) | Change::Modified(o)) => {
                    cache.apply(Arc::clone(&o));
                    changed(&o);
                }
                Some(Change::Deleted(o)) => {
                    cache.remove(&o);
                    changed(&o);
                }
                Some(Change::Error(e)) => {
                    tracing::debug!(resource = cache.resource.plural, error = %e.message, "watch failed; relisting");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Enqueues every object of `cache` every `period`: a safety net for missed changes and for
/// time-driven conditions.
pub async fn resync(
    cache: Cache,
    queue: Arc<Queue>,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stopped(&mut shutdown) => return,
        }
        for object in cache.all() {
            queue.add(cache.key_of(&object));
        }
    }
}

#[derive(Debug, Default)]
struct QueueState {
    /// Keys waiting, with when each is due and the order it was added in.
    pending: HashMap<ObjectRef, (Instant, u64)>,
    /// The same keys by when each is due, earliest first: taking a key reads from the front
    /// instead of every waiting key (tens of thousands of pods made that quadratic).
    due: BTreeMap<(Instant, u64), ObjectRef>,
    /// The order of the next key added, to tell keys due at the same instant apart.
    added: u64,
    /// Keys being reconciled: never handed out twice at once.
    active: HashSet<ObjectRef>,
    /// Consecutive failures per key, for back-off.
    failures: HashMap<ObjectRef, u32>,
}

impl QueueState {
    /// `key` waits until `at`, or until when it was due already if that is sooner.
    fn wait_until(&mut self, key: ObjectRef, at: Instant) {
        match self.pending.get(&key).copied() {
            Some((due, _)) if due <= at => {}
            Some((due, order)) => {
                self.due.remove(&(due, order));
                self.due.insert((at, order), key.clone());
                self.pending.insert(key, (at, order));
            }
            None => {
                let order = self.added;
                self.added += 1;
                self.due.insert((at, order), key.clone());
                self.pending.insert(key, (at, order));
            }
        }
    }
}

/// A debounced, delaying work queue of object keys that hands a key to one worker at a time.
#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
    /// client-go's workqueue instruments, once [`process`] names the queue after its
    /// controller.
    metrics: OnceLock<crate::metrics::Workqueue>,
}

impl Queue {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Reports the queue as `workqueue_*{name}`. Keys added before are counted then: none has
    /// been handed out yet, so each waiting key is one add.
    pub fn instrument(&self, name: &str) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let metrics = crate::metrics::global().workqueue(name);
        metrics.adds.inc_by(state.pending.len() as u64);
        metrics.depth.set(gauge_value(state.pending.len()));
        let _ = self.metrics.set(metrics);
    }

    /// Enqueues `key`, due after the debounce delay; a key already waiting keeps its place.
    pub fn add(&self, key: ObjectRef) {
        self.add_after(key, DEBOUNCE);
    }

    /// Enqueues `key`, due after `delay` (or sooner if it already is).
    pub fn add_after(&self, key: ObjectRef, delay: Duration) {
        let at = Instant::now() + delay;
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let before = state.pending.len();
            state.wait_until(key, at);
            // As client-go's, a key already waiting is no new add.
            if let Some(metrics) = self.metrics.get()
                && state.pending.len() > before
            {
                metrics.adds.inc();
                metrics.depth.set(gauge_value(state.pending.len()));
            }
        }
        self.notify.notify_one();
    }

    /// How many keys wait or are being reconciled.
    pub fn len(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pending.len() + state.active.len()
    }

    /// Whether nothing waits and nothing is being reconciled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a due key that no worker holds, or tells when the next one is due.
    fn take_due(&self) -> std::result::Result<ObjectRef, Option<Instant>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Keys being reconciled are skipped: at most one per worker.
        let first = state
            .due
            .iter()
            .find(|(_, key)| !state.active.contains(*key))
            .map(|(&order, key)| (order, key.clone()));
        let (due, next) = match first {
            Some(((at, _), key)) if at <= now => (Some((key, at)), None),
            Some(((at, _), _)) => (None, Some(at)),
            None => (None, None),
        };
        match due {
            Some((key, at)) => {
                if let Some(order) = state.pending.remove(&key) {
                    state.due.remove(&order);
                }
                state.active.insert(key.clone());
                if let Some(metrics) = self.metrics.get() {
                    metrics.taken(now - at);
                    metrics.depth.set(gauge_value(state.pending.len()));
                }
                Ok(key)
            }
            None => Err(next),
        }
    }

    /// Waits for the next due key; `None` on shutdown.
    async fn next(&self, shutdown: &mut watch::Receiver<bool>) -> Option<ObjectRef> {
        loop {
            let notified = self.notify.notified();
            let next = match self.take_due() {
                Ok(key) => return Some(key),
                Err(next) => next,
            };
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(next.unwrap_or(far)) => {}
                () = stopped(shutdown) => return None,
            }
        }
    }

    /// Releases `key` after a reconcile and schedules what its outcome asks for.
    fn done(&self, key: &ObjectRef, outcome: &Result<Action>) {
        let delay = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.active.remove(key);
            match outcome {
                Ok(action) => {
                    state.failures.remove(key);
                    match action {
                        Action::Done => None,
                        Action::RequeueAfter(after) => Some(*after),
                    }
                }
                Err(_) => {
                    if let Some(metrics) = self.metrics.get() {
                        metrics.retries.inc();
                    }
                    let failures = state.failures.entry(key.clone()).or_default();
                    *failures = failures.saturating_add(1);
                    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
                    Some((BACKOFF.0 * factor).min(BACKOFF.1))
                }
            }
        };
        match delay {
            Some(delay) => self.add_after(key.clone(), delay),
            // Another worker may wait for this key.
            None => self.notify.notify_one(),
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reconciles keys from `queue` with at most `concurrency` at once, until shutdown; then waits
/// for the reconciles under way.
pub async fn process<R: Reconciler>(
    reconciler: Arc<R>,
    queue: Arc<Queue>,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    queue.instrument(reconciler.name());
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            () = stopped(&mut shutdown) => break,
        };
        let Some(key) = queue.next(&mut shutdown).await else {
            break;
        };
        let reconciler = Arc::clone(&reconciler);
        let queue = Arc::clone(&queue);
        tasks.spawn(async move {
            let started = Instant::now();
            let outcome = reconciler.reconcile(&key).await;
            if let Some(metrics) = queue.metrics.get() {
                metrics.worked(started.elapsed());
            }
            match &outcome {
                Err(e) if e.reason == "Conflict" || e.reason == "NotFound" => {
                    tracing::debug!(controller = reconciler.name(), %key, error = %e, "reconcile failed; retrying");
                }
                Err(e) => {
                    tracing::warn!(controller = reconciler.name(), %key, error = %e, "reconcile failed; retrying");
                }
                Ok(_) => {}
            }
            queue.done(&key, &outcome);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// How often every owner is reconciled again, even without a change.
const OWNER_RESYNC: Duration = Duration::from_secs(30);
/// Owners reconciled at once.
const OWNER_CONCURRENCY: usize = 4;

/// Runs a controller of the objects in `cache` alone: one is reconciled when it changes (if
/// `wanted` says it is one of the controller's) and on a resync every `resync`, with
/// `concurrency` workers, until `shutdown` turns true.
pub async fn run_single<R: Reconciler>(
    api: Arc<Api>,
    cache: Cache,
    wanted: impl Fn(&Value) -> bool + Send + Sync + 'static,
    reconciler: Arc<R>,
    concurrency: usize,
    resync_every: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let queue = Queue::new();
    let changed = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |object: &Value| {
            if wanted(object) {
                queue.add(cache.key_of(object));
            }
        }
    };
    tokio::join!(
        reflect(api, cache.clone(), changed, shutdown.clone()),
        resync(cache, Arc::clone(&queue), resync_every, shutdown.clone()),
        process(reconciler, queue, concurrency, shutdown),
    );
}

/// Runs a controller of objects in `cache` that own objects of `owned` (pods, jobs): an owner
/// is reconciled when it changes, when one of the objects it controls changes, and on a
/// periodic resync, until `shutdown` turns true.
pub async fn run_owner_controller<R: Reconciler>(
    api: Arc<Api>,
    cache: Cache,
    owned: &'static ResourceType,
    reconciler: Arc<R>,
    shutdown: watch::Receiver<bool>,
) {
    let owner = cache.resource();
    let queue = Queue::new();
    let owner_changed = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |object: &Value| queue.add(cache.key_of(object))
    };
    let owned_changed = {
        let queue = Arc::clone(&queue);
        move |object: &Value| {
            if let Some(controller) =
                super::controller_of(object).filter(|r| r["kind"] == owner.kind)
            {
                queue.add(ObjectRef {
                    resource: owner.plural.to_owned(),
                    namespace: object["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    name: controller["name"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    };
    tokio::join!(
        reflect(
            Arc::clone(&api),
            cache.clone(),
            owner_changed,
            shutdown.clone()
        ),
        reflect(
            Arc::clone(&api),
            Cache::new(owned),
            owned_changed,
            shutdown.clone()
        ),
        resync(cache, Arc::clone(&queue), OWNER_RESYNC, shutdown.clone()),
        process(reconciler, queue, OWNER_CONCURRENCY, shutdown),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectRef {
        ObjectRef {
            resource: "pods".into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn workers_wait_for_every_cache_they_read() {
        use crate::apiserver::resources::Resources;
        let resources = Resources::default();
        let services = Cache::new(resources.get("", "v1", "services").unwrap());
        let pods = Cache::new(resources.get("", "v1", "pods").unwrap());
        let (stop, mut shutdown) = watch::channel(false);
        let waiting = tokio::spawn({
            let (services, pods) = (services.clone(), pods.clone());
            let mut shutdown = shutdown.clone();
            async move { until_synced(&[&services, &pods], &mut shutdown).await }
        });
        services.synced.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!waiting.is_finished(), "one cache of two is synced");
        pods.synced.store(true, Ordering::Release);
        assert!(waiting.await.unwrap());
        // Shut down while a cache is still empty: no workers.
        let unsynced = Cache::new(resources.get("", "v1", "pods").unwrap());
        stop.send(true).unwrap();
        assert!(!until_synced(&[&unsynced], &mut shutdown).await);
    }

    #[tokio::test]
    async fn a_key_is_handed_out_once_until_done() {
        let queue = Queue::new();
        queue.add_after(key("a"), Duration::ZERO);
        let (_tx, mut rx) = watch::channel(false);
        let got = queue.next(&mut rx).await.unwrap();
        assert_eq!(got, key("a"));
        // Enqueued again while active: not handed out until done.
        queue.add_after(key("a"), Duration::ZERO);
        assert!(queue.take_due().is_err());
        queue.done(&got, &Ok(Action::Done));
        assert_eq!(queue.take_due().unwrap(), key("a"));
    }

    #[tokio::test]
    async fn keys_are_taken_earliest_due_first_past_the_ones_being_reconciled() {
        let queue = Queue::new();
        let soon = Duration::from_secs(60);
        queue.add_after(key("late"), soon * 2);
        queue.add_after(key("b"), Duration::ZERO);
        queue.add_after(key("a"), Duration::ZERO);
        queue.add_after(key("c"), soon);
        // Added again, sooner: it moves up; later: it keeps its place.
        queue.add_after(key("c"), Duration::ZERO);
        queue.add_after(key("b"), soon * 3);
        let b = queue.take_due().unwrap();
        assert_eq!(b, key("b"));
        // `b` again while it is reconciled: skipped, the keys behind it are taken.
        queue.add_after(key("b"), Duration::ZERO);
        assert_eq!(queue.take_due().unwrap(), key("a"));
        assert_eq!(queue.take_due().unwrap(), key("c"));
        // Nothing else due: the next is `late`'s time, not the active `b`'s.
        let Err(Some(next)) = queue.take_due() else {
            panic!("a key is waiting")
        };
        assert!(next > Instant::now() + soon);
        queue.done(&b, &Ok(Action::Done));
        assert_eq!(queue.take_due().unwrap(), key("b"));
        assert_eq!(queue.len(), 4);
    }

    #[tokio::test]
    async fn bursts_are_debounced_into_one_key() {
        let queue = Queue::new();
        for _ in 0..10 {
            queue.add(key("a"));
        }
        assert_eq!(queue.len(), 1);
    }

    #[tokio::test]
    async fn failures_back_off() {
        let queue = Queue::new();
        queue.add_after(key("a"), Duration::ZERO);
        let k = queue.take_due().unwrap();
        let err = Error {
            action: "x".into(),
            message: "y".into(),
            reason: "InternalError",
        };
        queue.done(&k, &Err(err));
        // Not due yet: back-off applies.
        assert!(matches!(queue.take_due(), Err(Some(_))));
    }

    #[tokio::test]
    async fn process_stops_on_shutdown() {
        struct Nop;
        #[async_trait::async_trait]
        impl Reconciler for Nop {
            fn name(&self) -> &'static str {
                "nop"
            }
            async fn reconcile(&self, _: &ObjectRef) -> Result<Action> {
                Ok(Action::Done)
            }
        }
        let queue = Queue::new();
        queue.add_after(key("a"), Duration::ZERO);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(process(Arc::new(Nop), Arc::clone(&queue), 2, rx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(queue.is_empty());
    }
}
