//! Watch fan-out: one store watch per resource type, shared by all the watches of that type.
//!
//! Every watch used to hold a store watch of its own: a pod write was copied to each of the
//! thousands of node agents watching pods (`fieldSelector=spec.nodeName=X`), which each filtered
//! it away, so a write cost O(watchers). A [`Hub`] per resource type now decodes each change
//! once and hands it only to the watches it may concern: watches that require one
//! `spec.nodeName` are indexed by it (as kube-apiserver's watch cache indexes pods), the others
//! see every change. Watchers get the decoded objects behind an `Arc`, so every controller cache
//! holding an object shares one copy.
//!
//! A hub keeps the latest changes, so that a watch starting a little in the past (a listing's
//! revision, a client resuming) is served from memory. A watch starting before that, or one that
//! falls so far behind that its queue fills, continues on a store watch of its own from where it
//! was: nothing is lost or repeated, it only costs what every watch used to.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::{
    decoded::Decoded,
    error::ApiError,
    objects::{Change, Filter},
    resources::ResourceType,
};
use crate::store::{self, KeyValue, Revision, Store, WatchEvent};

/// The field watches are indexed by: a node agent watches the pods of its node.
pub const INDEXED_FIELD: &[&str] = &["spec", "nodeName"];
/// Changes a hub keeps for watches that start in the past.
const RECENT: usize = 4096;
/// Changes queued for one watch before it is moved to a store watch of its own: a burst of
/// writes (10,000 pods created at once) must not push the controllers' watches out.
const WATCH_QUEUE: usize = 4096;
/// How long a hub whose store watch failed waits before watching again.
const RESTART_DELAY: Duration = Duration::from_millis(200);

/// A change as a hub saw it: the object before and after, decoded once.
#[derive(Debug)]
struct Event {
    revision: Revision,
    key: String,
    /// The object written (`None` for a delete).
    new: Option<Arc<Value>>,
    /// The object it replaced; for a delete, the last value with the deletion's revision.
    old: Option<Arc<Value>>,
}

impl Event {
    fn decode(event: WatchEvent, resource: &ResourceType) -> Self {
        let decode = |kv: &KeyValue| super::objects::present(resource, kv).ok().map(Arc::new);
        match event {
            WatchEvent::Put { kv, prev } => Self {
                revision: kv.mod_revision,
                new: decode(&kv),
                old: prev.as_ref().and_then(decode),
                key: kv.key,
            },
            WatchEvent::Delete { prev, revision } => {
                let old = super::objects::present(resource, &prev).ok().map(|mut o| {
                    o["metadata"]["resourceVersion"] = json!(revision.to_string());
                    Arc::new(o)
                });
                Self {
                    revision,
                    key: prev.key,
                    new: None,
                    old,
                }
            }
        }
    }

    /// The value of [`INDEXED_FIELD`] in the old and the new object.
    fn indexed(&self) -> [Option<&str>; 2] {
        fn field(o: Option<&Value>) -> Option<&str> {
            o.map(|o| {
                INDEXED_FIELD
                    .iter()
                    .fold(o, |v, s| &v[*s])
                    .as_str()
                    .unwrap_or("")
            })
        }
        [field(self.old.as_deref()), field(self.new.as_deref())]
    }

    /// What a watch with `filter` sees of this change: an object entering the selection is
    /// added, one leaving it deleted.
    fn change_for(&self, filter: &Filter) -> Option<Change> {
        let selected = |o: &Option<Arc<Value>>| o.as_deref().is_some_and(|o| filter.matches(o));
        match &self.new {
            Some(new) => match (selected(&self.old), selected(&self.new)) {
                (false, true) => Some(Change::Added(Arc::clone(new))),
                (true, true) => Some(Change::Modified(Arc::clone(new))),
                (true, false) => Some(Change::Deleted(Arc::clone(new))),
                (false, false) => None,
            },
            None => self
                .old
                .as_ref()
                .filter(|o| filter.matches(o))
                .map(|o| Change::Deleted(Arc::clone(o))),
        }
    }
}

/// Where a watch moved to a store watch of its own continues: after this revision.
/// `NOT_MOVED` while it is served by the hub.
type Resume = Arc<AtomicI64>;
const NOT_MOVED: i64 = i64::MIN;

/// One watch served by a hub.
#[derive(Debug)]
struct Slot {
    /// Key prefix (the namespace's, or the resource's).
    prefix: String,
    filter: Filter,
    /// Changes up to this revision are not for this watch (it started after them).
    after: Revision,
    tx: mpsc::Sender<Change>,
    resume: Resume,
}

/// What a hub holds under its lock.
#[derive(Debug, Default)]
struct State {
    /// Whether the store watch is up; while it is not, new watches go to the store directly.
    running: bool,
    /// Every change after this revision is in `recent` or still to come from the store.
    floor: Revision,
    /// The revision of the last change handled.
    last: Revision,
    recent: VecDeque<Arc<Event>>,
    slots: HashMap<u64, Slot>,
    /// Watches requiring one value of [`INDEXED_FIELD`], by that value.
    by_field: HashMap<String, HashSet<u64>>,
    /// The other watches: every change is tried against them.
    unindexed: HashSet<u64>,
    next_id: u64,
    /// How many changes `recent` keeps.
    keep: usize,
}

impl State {
    fn insert(&mut self, slot: Slot) {
        let id = self.next_id;
        self.next_id += 1;
        match slot.filter.required_field(INDEXED_FIELD) {
            Some(value) => {
                self.by_field
                    .entry(value.to_owned())
                    .or_default()
                    .insert(id);
            }
            None => {
                self.unindexed.insert(id);
            }
        }
        self.slots.insert(id, slot);
    }

    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        match slot.filter.required_field(INDEXED_FIELD) {
            Some(value) => {
                if let Some(ids) = self.by_field.get_mut(value) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_field.remove(value);
                    }
                }
            }
            None => {
                self.unindexed.remove(&id);
            }
        }
        Some(slot)
    }

    /// Hands `event` to the watches it may concern; a watch whose queue is full moves to the
    /// store from just before this change.
    fn publish(&mut self, event: Arc<Event>) {
        let mut candidates: Vec<u64> = self.unindexed.iter().copied().collect();
        let [old, new] = event.indexed();
        for value in [old, new].into_iter().flatten() {
            if let Some(ids) = self.by_field.get(value) {
                candidates.extend(ids.iter().copied());
            }
        }
        if old.is_some() && old == new {
            candidates.sort_unstable();
            candidates.dedup();
        }
        let mut gone = Vec::new();
        for id in candidates {
            let slot = &self.slots[&id];
            if event.revision <= slot.after || !event.key.starts_with(&slot.prefix) {
                continue;
            }
            let Some(change) = event.change_for(&slot.filter) else {
                continue;
            };
            match slot.tx.try_send(change) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.resume
                        .store((event.revision - 1).max(slot.after), Ordering::Release);
                    gone.push(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(id),
            }
        }
        for id in gone {
            self.remove(id);
        }
        self.last = event.revision;
        self.recent.push_back(event);
        while self.recent.len() > self.keep {
            if let Some(old) = self.recent.pop_front() {
                self.floor = old.revision;
            }
        }
    }

    /// The store watch failed: every watch continues on one of its own from what it has seen.
    fn stop(&mut self) {
        for (_, slot) in self.slots.drain() {
            slot.resume
                .store(self.last.max(slot.after), Ordering::Release);
        }
        self.by_field.clear();
        self.unindexed.clear();
        self.recent.clear();
        self.running = false;
    }
}

/// The shared store watch of one resource type.
#[derive(Debug)]
struct Hub {
    resource: &'static ResourceType,
    state: Mutex<State>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent: a panic cannot leave half of one behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The hubs of one API server, created by the first watch of each resource type.
#[derive(Debug)]
pub struct Fanout {
    /// By key prefix and version: the versions of a custom resource share their keys, but
    /// each presents the objects as its own `apiVersion`.
    hubs: Mutex<HashMap<(&'static str, &'static str), Arc<Hub>>>,
    /// Changes each hub keeps ([`RECENT`]).
    recent: usize,
    /// Each watch's queue ([`WATCH_QUEUE`]).
    queue: usize,
    /// Dropped with the API server: the hubs' tasks end and release the store.
    _alive: watch::Sender<()>,
    alive: watch::Receiver<()>,
}

impl Default for Fanout {
    fn default() -> Self {
        Self::with_limits(RECENT, WATCH_QUEUE)
    }
}

impl Fanout {
    /// Hubs keeping `recent` changes, with queues of `queue` changes per watch.
    pub fn with_limits(recent: usize, queue: usize) -> Self {
        let (alive_tx, alive) = watch::channel(());
        Self {
            hubs: Mutex::default(),
            recent,
            queue,
            _alive: alive_tx,
            alive,
        }
    }

    /// The changes under `prefix` (of `resource`'s keys) that `filter` selects, after `after`.
    pub async fn watch(
        &self,
        store: &Arc<dyn Store>,
        decoded: &Arc<Decoded>,
        resource: &'static ResourceType,
        prefix: String,
        filter: Filter,
        after: Revision,
    ) -> Result<futures::stream::BoxStream<'static, Change>, ApiError> {
        let hub = self.hub(store, resource).await;
        let served =
            hub.map(|hub| subscribe(&hub, prefix.clone(), filter.clone(), after, self.queue));
        let source = StoreSource {
            store: Arc::clone(store),
            decoded: Arc::clone(decoded),
            resource,
            prefix,
            filter,
        };
        match served {
            Some(Some((rx, resume))) => Ok(hub_then_store(rx, resume, source)),
            // Too far in the past for the hub, or its store watch is down.
            _ => source.watch(after).await,
        }
    }

    /// The hub of `resource`, started if needed; `None` if its store watch cannot start.
    async fn hub(
        &self,
        store: &Arc<dyn Store>,
        resource: &'static ResourceType,
    ) -> Option<Arc<Hub>> {
        let prefix = (resource_prefix(resource), resource.version);
        if let Some(hub) = self.lock().get(&prefix) {
            return Some(Arc::clone(hub));
        }
        let (floor, events) = start(store, resource).await?;
        let mut hubs = self.lock();
        if let Some(hub) = hubs.get(&prefix) {
            // Another watch started it meanwhile.
            return Some(Arc::clone(hub));
        }
        let hub = Arc::new(Hub {
            resource,
            state: Mutex::new(State {
                running: true,
                floor,
                last: floor,
                keep: self.recent,
                ..State::default()
            }),
        });
        hubs.insert(prefix, Arc::clone(&hub));
        tokio::spawn(run(
            Arc::downgrade(&hub),
            Arc::clone(store),
            events,
            self.alive.clone(),
        ));
        Some(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, &'static str), Arc<Hub>>> {
        self.hubs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The prefix of every key of `resource`, leaked once per type (a few dozen built-in, and one
/// per custom resource version served since the process started).
fn resource_prefix(resource: &'static ResourceType) -> &'static str {
    use super::resources::StorageKeys as _;
    static PREFIXES: Mutex<Vec<(usize, &'static str)>> = Mutex::new(Vec::new());
    let id = std::ptr::from_ref(resource) as usize;
    let mut prefixes = PREFIXES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, prefix)) = prefixes.iter().find(|(r, _)| *r == id) {
        return prefix;
    }
    let prefix: &'static str = Box::leak(resource.key_prefix().into_boxed_str());
    prefixes.push((id, prefix));
    prefix
}

/// A store watch of every key of `resource` from the latest revision.
async fn start(
    store: &Arc<dyn Store>,
    resource: &'static ResourceType,
) -> Option<(Revision, store::WatchStream)> {
    let floor = store.revision().await.ok()?;
    let events = store.watch(resource_prefix(resource), floor).await.ok()?;
    Some((floor, events))
}

/// Adds a watch after `after` to `hub`, replaying the kept changes it missed. `None` if the hub
/// cannot serve it (not running, or `after` is older than what it keeps).
fn subscribe(
    hub: &Hub,
    prefix: String,
    filter: Filter,
    after: Revision,
    queue: usize,
) -> Option<(mpsc::Receiver<Change>, Resume)> {
    let mut state = hub.lock();
    if !state.running || after < state.floor {
        return None;
    }
    let (tx, rx) = mpsc::channel(queue);
    for event in state.recent.iter().filter(|e| e.revision > after) {
        if !event.key.starts_with(&prefix) {
            continue;
        }
        if let Some(change) = event.change_for(&filter) {
            // More missed changes than a queue holds: the store serves this watch.
            tx.try_send(change).ok()?;
        }
    }
    let resume = Arc::new(AtomicI64::new(NOT_MOVED));
    state.insert(Slot {
        prefix,
        filter,
        after,
        tx,
        resume: Arc::clone(&resume),
    });
    Some((rx, resume))
}

/// A hub's task: decodes and publishes the changes of its store watch until the API server is
/// dropped; watches again after a failure.
async fn run(
    hub: Weak<Hub>,
    store: Arc<dyn Store>,
    mut events: store::WatchStream,
    mut alive: watch::Receiver<()>,
) {
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = alive.changed() => return,
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        match event {
            Some(Ok(event)) => {
                let event = Arc::new(Event::decode(event, hub.resource));
                hub.lock().publish(event);
            }
            failed => {
                let error = failed.and_then(Result::err);
                tracing::warn!(resource = hub.resource.plural, error = ?error, "watch fan-out: store watch ended; restarting");
                hub.lock().stop();
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(RESTART_DELAY) => {}
                        _ = alive.changed() => return,
                    }
                    if let Some((floor, restarted)) = start(&store, hub.resource).await {
                        let mut state = hub.lock();
                        state.running = true;
                        state.floor = floor;
                        state.last = floor;
                        events = restarted;
                        break;
                    }
                }
            }
        }
    }
}

/// What a watch needs to go on with a store watch of its own.
struct StoreSource {
    store: Arc<dyn Store>,
    decoded: Arc<Decoded>,
    resource: &'static ResourceType,
    prefix: String,
    filter: Filter,
}

impl StoreSource {
    /// A store watch after `after`, filtered: the watch as it was before hubs.
    async fn watch(
        self,
        after: Revision,
    ) -> Result<futures::stream::BoxStream<'static, Change>, ApiError> {
        let Self {
            store,
            decoded,
            resource,
            prefix,
            filter,
        } = self;
        let events = store
            .watch(&prefix, after)
            .await
            .map_err(|e| ApiError::storage(&e))?;
        let changes = events.filter_map(move |event| {
            let change = match event {
                Ok(store::WatchEvent::Put { kv, prev }) => {
                    let decode = |kv: &KeyValue| {
                        decoded
                            .get_or_decode(kv, resource.version, |kv| {
                                super::objects::present(resource, kv)
                            })
                            .ok()
                    };
                    Event {
                        revision: kv.mod_revision,
                        new: decode(&kv),
                        old: prev.as_ref().and_then(decode),
                        key: String::new(),
                    }
                    .change_for(&filter)
                }
                Ok(delete) => Event::decode(delete, resource).change_for(&filter),
                Err(e) => Some(Change::Error(ApiError::storage(&e))),
            };
            std::future::ready(change)
        });
        Ok(changes.boxed())
    }
}

/// The hub's changes; once the hub moves the watch out, a store watch's from where it left.
fn hub_then_store(
    rx: mpsc::Receiver<Change>,
    resume: Resume,
    source: StoreSource,
) -> futures::stream::BoxStream<'static, Change> {
    enum Phase {
        Hub(mpsc::Receiver<Change>, Resume, StoreSource),
        Store(futures::stream::BoxStream<'static, Change>),
        Over,
    }
    futures::stream::unfold(Phase::Hub(rx, resume, source), |phase| async move {
        let mut phase = phase;
        loop {
            phase = match phase {
                Phase::Hub(mut rx, resume, source) => match rx.recv().await {
                    Some(change) => return Some((change, Phase::Hub(rx, resume, source))),
                    None => match resume.load(Ordering::Acquire) {
                        // The hub is gone with the API server.
                        NOT_MOVED => return None,
                        after => match source.watch(after).await {
                            Ok(changes) => Phase::Store(changes),
                            Err(e) => return Some((Change::Error(e), Phase::Over)),
                        },
                    },
                },
                Phase::Store(mut changes) => {
                    let change = changes.next().await?;
                    return Some((change, Phase::Store(changes)));
                }
                Phase::Over => return None,
            };
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str) -> Arc<Value> {
        Arc::new(json!({
            "metadata": { "name": name, "namespace": "default" },
            "spec": { "nodeName": node },
        }))
    }

    fn event(revision: Revision, old: Option<Arc<Value>>, new: Option<Arc<Value>>) -> Arc<Event> {
        let name = new
            .as_ref()
            .or(old.as_ref())
            .and_then(|o| o["metadata"]["name"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Arc::new(Event {
            revision,
            key: format!("/registry/pods/default/{name}"),
            new,
            old,
        })
    }

    fn watch_node(state: &mut State, node: &str, after: Revision) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        state.insert(Slot {
            prefix: "/registry/pods/".into(),
            filter: Filter::new("", &format!("spec.nodeName={node}")).unwrap(),
            after,
            tx,
            resume: Arc::new(AtomicI64::new(NOT_MOVED)),
        });
        rx
    }

    fn drain(rx: &mut mpsc::Receiver<Change>) -> Vec<(&'static str, String)> {
        let mut seen = Vec::new();
        while let Ok(change) = rx.try_recv() {
            let (kind, o) = match change {
                Change::Added(o) => ("ADDED", o),
                Change::Modified(o) => ("MODIFIED", o),
                Change::Deleted(o) => ("DELETED", o),
                Change::Error(e) => panic!("{}", e.message),
            };
            seen.push((kind, o["metadata"]["name"].as_str().unwrap().to_owned()));
        }
        seen
    }

    #[test]
    fn a_node_filtered_watch_gets_exactly_its_nodes_changes() {
        let mut state = State {
            running: true,
            keep: RECENT,
            ..State::default()
        };
        let mut a = watch_node(&mut state, "a", 0);
        let mut b = watch_node(&mut state, "b", 0);
        let (tx, mut every) = mpsc::channel(WATCH_QUEUE);
        state.insert(Slot {
            prefix: "/registry/pods/".into(),
            filter: Filter::default(),
            after: 0,
            tx,
            resume: Arc::new(AtomicI64::new(NOT_MOVED)),
        });
        assert_eq!(state.by_field.len(), 2);
        assert_eq!(state.unindexed.len(), 1);
        state.publish(event(1, None, Some(pod("p", ""))));
        // Bound to a: enters a's selection.
        state.publish(event(2, Some(pod("p", "")), Some(pod("p", "a"))));
        state.publish(event(3, None, Some(pod("q", "b"))));
        state.publish(event(4, Some(pod("p", "a")), Some(pod("p", "a"))));
        state.publish(event(5, Some(pod("q", "b")), None));
        assert_eq!(
            drain(&mut a),
            [("ADDED", "p".to_owned()), ("MODIFIED", "p".to_owned())]
        );
        assert_eq!(
            drain(&mut b),
            [("ADDED", "q".to_owned()), ("DELETED", "q".to_owned())]
        );
        assert_eq!(drain(&mut every).len(), 5);
    }

    #[test]
    fn a_full_queue_moves_the_watch_out_from_before_the_change() {
        let mut state = State {
            running: true,
            keep: RECENT,
            ..State::default()
        };
        let (tx, mut rx) = mpsc::channel(2);
        let resume = Arc::new(AtomicI64::new(NOT_MOVED));
        state.insert(Slot {
            prefix: "/registry/pods/".into(),
            filter: Filter::default(),
            after: 0,
            tx,
            resume: Arc::clone(&resume),
        });
        for revision in 1..=3 {
            state.publish(event(
                revision,
                None,
                Some(pod(&format!("p{revision}"), "a")),
            ));
        }
        assert!(state.slots.is_empty(), "moved out");
        assert_eq!(
            resume.load(Ordering::Acquire),
            2,
            "goes on after revision 2"
        );
        assert_eq!(drain(&mut rx).len(), 2);
        assert!(rx.is_closed());
    }

    #[test]
    fn a_failed_store_watch_moves_every_watch_out_from_what_it_has_seen() {
        let mut state = State {
            running: true,
            floor: 10,
            last: 10,
            keep: RECENT,
            ..State::default()
        };
        // Receivers kept: a watch whose consumer is gone is dropped, not moved.
        let (resumes, _receivers): (Vec<Resume>, Vec<_>) = [5, 20]
            .into_iter()
            .map(|after| {
                let (tx, rx) = mpsc::channel(WATCH_QUEUE);
                let resume = Arc::new(AtomicI64::new(NOT_MOVED));
                state.insert(Slot {
                    prefix: "/registry/pods/".into(),
                    filter: Filter::new("", "spec.nodeName=a").unwrap(),
                    after,
                    tx,
                    resume: Arc::clone(&resume),
                });
                (resume, rx)
            })
            .unzip();
        state.publish(event(11, None, Some(pod("p", "a"))));
        state.stop();
        assert!(!state.running);
        assert!(state.slots.is_empty() && state.by_field.is_empty() && state.recent.is_empty());
        // The first saw up to 11; the second starts later and goes on from where it starts.
        assert_eq!(resumes[0].load(Ordering::Acquire), 11);
        assert_eq!(resumes[1].load(Ordering::Acquire), 20);
    }

    #[test]
    fn recent_changes_bound_how_far_back_a_watch_may_start() {
        let mut state = State {
            running: true,
            floor: 10,
            last: 10,
            keep: RECENT,
            ..State::default()
        };
        for revision in 11..=10 + RECENT as Revision + 5 {
            state.publish(event(revision, None, Some(pod("p", "a"))));
        }
        assert_eq!(state.recent.len(), RECENT);
        assert_eq!(state.floor, 15);
        assert_eq!(state.recent.front().unwrap().revision, 16);
    }

    mod end_to_end {
        use std::time::Duration;

        use super::*;
        use crate::{
            apiserver::{Api, objects, path::Target, resources::StorageKeys as _},
            store::embedded::EmbeddedStore,
        };

        async fn api(fanout: Fanout) -> (tempfile::TempDir, Arc<Api>) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.redb");
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
                .await
                .unwrap()
                .unwrap();
            let mut api = Api::new(Arc::new(store));
            api.fanout = fanout;
            (dir, Arc::new(api))
        }

        fn pods(api: &Api) -> Target {
            Target {
                resource: api.resources.get("", "v1", "pods").unwrap(),
                namespace: None,
                name: None,
                subresource: None,
            }
        }

        fn stored(name: &str, node: &str) -> Vec<u8> {
            serde_json::to_vec(&json!({
                "metadata": { "name": name, "namespace": "default", "uid": name },
                "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "i" }] },
            }))
            .unwrap()
        }

        async fn next(watch: &mut objects::Watch) -> (&'static str, String, Revision) {
            let change = tokio::time::timeout(Duration::from_secs(10), watch.changes.next())
                .await
                .expect("a change within 10 s")
                .expect("the watch goes on");
            let (kind, o) = match change {
                Change::Added(o) => ("ADDED", o),
                Change::Modified(o) => ("MODIFIED", o),
                Change::Deleted(o) => ("DELETED", o),
                Change::Error(e) => panic!("{}", e.message),
            };
            let rv = o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            (kind, o["metadata"]["name"].as_str().unwrap().to_owned(), rv)
        }

        async fn nothing_more(watch: &mut objects::Watch) {
            let more = tokio::time::timeout(Duration::from_millis(300), watch.changes.next()).await;
            assert!(more.is_err(), "unexpected change");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn node_watches_get_exactly_their_nodes_pods() {
            let (_dir, api) = api(Fanout::default()).await;
            let target = pods(&api);
            let watch = |node: &str| {
                let filter = Filter::new("", &format!("spec.nodeName={node}")).unwrap();
                objects::watch_changes(&api, &target, filter, objects::Start::Now)
            };
            let mut a = watch("a").await.unwrap();
            let mut b = watch("b").await.unwrap();
            let mut every =
                objects::watch_changes(&api, &pods(&api), Filter::default(), objects::Start::Now)
                    .await
                    .unwrap();
            let store = &api.store;
            let key = |name: &str| pods(&api).resource.key(Some("default"), name);
            let p = store.create(&key("p"), stored("p", "")).await.unwrap();
            let p = store
                .update(&key("p"), stored("p", "a"), Some(p.mod_revision))
                .await
                .unwrap();
            let q = store.create(&key("q"), stored("q", "b")).await.unwrap();
            store
                .update(&key("p"), stored("p", "a"), Some(p.mod_revision))
                .await
                .unwrap();
            let deleted = store.delete(&key("q"), None).await.unwrap();
            let (p1, p2) = (p.mod_revision, p.mod_revision + 2);
            assert_eq!(next(&mut a).await, ("ADDED", "p".into(), p1));
            assert_eq!(next(&mut a).await, ("MODIFIED", "p".into(), p2));
            nothing_more(&mut a).await;
            assert_eq!(next(&mut b).await, ("ADDED", "q".into(), q.mod_revision));
            assert_eq!(
                next(&mut b).await,
                ("DELETED", "q".into(), deleted.mod_revision)
            );
            nothing_more(&mut b).await;
            for _ in 0..5 {
                next(&mut every).await;
            }
            nothing_more(&mut every).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_watch_that_falls_behind_misses_and_repeats_nothing() {
            // Queues of 4 changes: a watch that is not read is moved to the store at once.
            let (_dir, api) = api(Fanout::with_limits(8, 4)).await;
            let filter = Filter::new("", "spec.nodeName=a").unwrap();
            let mut slow = objects::watch_changes(&api, &pods(&api), filter, objects::Start::Now)
                .await
                .unwrap();
            // Writes from several tasks at once: group-committed, each with its own revision.
            let mut writers = Vec::new();
            for w in 0..4 {
                let api = Arc::clone(&api);
                writers.push(tokio::spawn(async move {
                    for i in 0..10 {
                        let name = format!("p{w}-{i}");
                        let node = if i % 2 == 0 { "a" } else { "b" };
                        api.store
                            .create(
                                &pods(&api).resource.key(Some("default"), &name),
                                stored(&name, node),
                            )
                            .await
                            .unwrap();
                    }
                }));
            }
            for writer in writers {
                writer.await.unwrap();
            }
            let mut seen = Vec::new();
            for _ in 0..20 {
                let (kind, name, rv) = next(&mut slow).await;
                assert_eq!(kind, "ADDED");
                seen.push((rv, name));
            }
            nothing_more(&mut slow).await;
            let revisions: Vec<_> = seen.iter().map(|(rv, _)| *rv).collect();
            assert!(revisions.is_sorted(), "in revision order: {revisions:?}");
            let mut names: Vec<_> = seen.into_iter().map(|(_, n)| n).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), 20, "each once: {names:?}");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn watches_start_in_the_past_from_memory_or_from_the_store() {
            let (_dir, api) = api(Fanout::with_limits(4, 64)).await;
            // Starts the pods' hub.
            drop(
                objects::watch_changes(&api, &pods(&api), Filter::default(), objects::Start::Now)
                    .await
                    .unwrap(),
            );
            let mut revisions = Vec::new();
            for i in 0..10 {
                let name = format!("p{i}");
                let kv = api
                    .store
                    .create(
                        &pods(&api).resource.key(Some("default"), &name),
                        stored(&name, "a"),
                    )
                    .await
                    .unwrap();
                revisions.push(kv.mod_revision);
            }
            // The hub keeps the last 4 changes: after p7 is served from memory, after p1 by the
            // store; both see the same.
            for from in [7, 1] {
                let mut watch = objects::watch_changes(
                    &api,
                    &pods(&api),
                    Filter::default(),
                    objects::Start::After(revisions[from]),
                )
                .await
                .unwrap();
                for (i, revision) in revisions.iter().enumerate().skip(from + 1) {
                    assert_eq!(
                        next(&mut watch).await,
                        ("ADDED", format!("p{i}"), *revision)
                    );
                }
                nothing_more(&mut watch).await;
            }
        }
    }
}
