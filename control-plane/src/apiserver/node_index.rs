//! Pods by `spec.nodeName`, kept from one store watch, as kube-apiserver's watch cache indexes
//! them: a list of one node's pods (every node agent's relist, `kubectl get pods
//! --field-selector spec.nodeName=X`) reads that node's pods instead of decoding every pod of
//! the cluster. With 150,000 pods, a node agent's relist decoded 150,000 objects to keep ~30,
//! and thousands of agents reconnecting at once cost O(nodes × pods).
//!
//! The index is only a way to find keys; the objects are read from the store, all at the
//! revision the index is at, so a list served through it is the same snapshot a full scan at
//! that revision would give. The watch covers every key, not only pods, so the index's revision
//! keeps up with the store's even while no pod changes: a list waits until the index has seen
//! the store's current revision (the client may have just written), and scans as before when
//! it has not within [`CATCH_UP`].

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use futures::StreamExt as _;
use serde::Deserialize;
use tokio::sync::watch;

use crate::store::{ListOptions, Revision, Store, WatchEvent};

/// Where pods are stored (`StorageKeys::key_prefix` of core/v1 pods).
pub const PODS_PREFIX: &str = "/registry/core/pods/";
/// Every key: the index follows all writes so that its revision is the store's.
const ALL: &str = "/";
/// Keys per page while the index is first filled.
const PAGE: usize = 1000;
/// How long a list waits for the index to reach the store's revision before it scans instead.
/// Generous: while thousands of agents reconnect the index lags by seconds, and a scan costs
/// far more than the wait (every pod decoded, for each agent).
pub const CATCH_UP: Duration = Duration::from_secs(5);
/// Node lists that scan at once when the index cannot answer: each holds every pod decoded,
/// so thousands of agents relisting while the index lags must not all scan together (5,000
/// reconnecting hollow nodes took the control plane past 20 GiB before this bound).
const SCANS: usize = 2;
/// How long an index whose store watch failed waits before filling itself again.
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// `spec.nodeName` → the storage keys of the pods bound to it (`""`: not scheduled yet).
#[derive(Default)]
pub struct NodeIndex {
    state: Arc<State>,
    started: OnceLock<()>,
}

impl std::fmt::Debug for NodeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIndex")
            .field("synced", &*self.state.synced.borrow())
            .finish_non_exhaustive()
    }
}

struct State {
    index: Mutex<Index>,
    /// Permits for the scans that stand in for the index, [`SCANS`] of them.
    scans: tokio::sync::Semaphore,
    /// The revision the index reflects (`None` while it fills), to wait on.
    synced: watch::Sender<Option<Revision>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            index: Mutex::default(),
            scans: tokio::sync::Semaphore::new(SCANS),
            synced: watch::channel(None).0,
        }
    }
}

#[derive(Default)]
struct Index {
    /// Every write up to it is in; read with the keys, under the same lock.
    revision: Revision,
    pods: HashMap<Box<str>, BTreeSet<Arc<str>>>,
    /// The node each key is under, to move or remove it.
    node_of: HashMap<Arc<str>, Box<str>>,
}

impl Index {
    /// Records that pod `key` is now on `node` (`None`: gone).
    fn set(&mut self, key: &str, node: Option<Box<str>>) {
        if let Some((key, old)) = self.node_of.remove_entry(key) {
            if node.as_ref() == Some(&old) {
                self.node_of.insert(key, old);
                return;
            }
            if let Some(keys) = self.pods.get_mut(&old) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.pods.remove(&old);
                }
            }
        }
        let Some(node) = node else { return };
        let key: Arc<str> = Arc::from(key);
        self.pods
            .entry(node.clone())
            .or_default()
            .insert(Arc::clone(&key));
        self.node_of.insert(key, node);
    }

    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        if key.starts_with(PODS_PREFIX) {
            self.set(key, value.map(node_name));
        }
    }
}

/// A stored pod's `spec.nodeName` (`""` when unset), read without decoding the rest. An
/// undecodable value is indexed under `""` too: a scan would not match it to a node either.
fn node_name(value: &[u8]) -> Box<str> {
    #[derive(Deserialize)]
    struct Pod {
        #[serde(default)]
        spec: Spec,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        #[serde(default)]
        node_name: Box<str>,
    }
    serde_json::from_slice::<Pod>(value)
        .map(|pod| pod.spec.node_name)
        .unwrap_or_default()
}

impl NodeIndex {
    /// Starts following `store` (once; later calls do nothing).
    pub fn start(&self, store: &Arc<dyn Store>) {
        if self.started.set(()).is_err() {
            return;
        }
        let state = Arc::clone(&self.state);
        let store = Arc::clone(store);
        tokio::spawn(async move {
            loop {
                if let Err(e) = follow(&state, &store).await {
                    tracing::debug!(error = %e, "the pod node index's store watch ended; filling it again");
                }
                state.synced.send_replace(None);
                tokio::time::sleep(RESTART_DELAY).await;
            }
        });
    }

    /// A permit to scan every pod for one node's (when [`Self::pods_on`] could not answer),
    /// held while the scan runs: at most [`SCANS`] run at once.
    pub async fn scan_permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.state
            .scans
            .acquire()
            .await
            .expect("the scan semaphore is never closed")
    }

    /// The keys under `prefix` of the pods on `node`, in key order, and the revision they are
    /// the keys at (`revision` or later); `None` when the index has not reached `revision`
    /// within `wait` (or was never started, which starts it for the next caller).
    pub async fn pods_on(
        &self,
        store: &Arc<dyn Store>,
        prefix: &str,
        node: &str,
        revision: Revision,
        wait: Duration,
    ) -> Option<(Revision, Vec<String>)> {
        self.start(store);
        let mut synced = self.state.synced.subscribe();
        let caught_up =
            tokio::time::timeout(wait, synced.wait_for(|r| r.is_some_and(|r| r >= revision)));
        if !matches!(caught_up.await, Ok(Ok(_))) {
            return None;
        }
        let index = self.state.index.lock().expect("node index lock");
        let keys = index
            .pods
            .get(node)
            .into_iter()
            .flatten()
            .filter(|key| key.starts_with(prefix))
            .map(|key| key.to_string())
            .collect();
        Some((index.revision, keys))
    }
}

/// Fills the index from a listing of the pods, then keeps it from a watch over every key until
/// that fails.
async fn follow(state: &State, store: &Arc<dyn Store>) -> crate::store::Result<()> {
    let mut fresh = Index::default();
    let mut options = ListOptions {
        limit: Some(PAGE),
        ..Default::default()
    };
    let revision = loop {
        let page = store.list(PODS_PREFIX, &options).await?;
        for kv in &page.items {
            fresh.apply(&kv.key, Some(&kv.value));
        }
        match page.continue_after {
            Some(after) => {
                options.continue_after = Some(after);
                options.revision = Some(page.revision);
            }
            None => break page.revision,
        }
    };
    let mut changes = store.watch(ALL, revision).await?;
    fresh.revision = revision;
    *state.index.lock().expect("node index lock") = fresh;
    state.synced.send_replace(Some(revision));
    while let Some(change) = changes.next().await {
        let change = change?;
        let revision = change.revision();
        {
            let mut index = state.index.lock().expect("node index lock");
            match &change {
                WatchEvent::Put { kv, .. } => index.apply(&kv.key, Some(&kv.value)),
                WatchEvent::Delete { prev, .. } => index.apply(&prev.key, None),
            }
            index.revision = revision;
        }
        state.synced.send_replace(Some(revision));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(index: &Index, node: &str) -> Vec<String> {
        index
            .pods
            .get(node)
            .into_iter()
            .flatten()
            .map(|k| k.to_string())
            .collect()
    }

    #[test]
    fn the_node_name_is_read_from_the_spec_alone() {
        assert_eq!(
            &*node_name(br#"{"metadata":{"name":"nodeName"},"spec":{"nodeName":"n1"}}"#),
            "n1"
        );
        assert_eq!(&*node_name(br#"{"spec":{"containers":[]}}"#), "");
        assert_eq!(&*node_name(b"not json"), "");
    }

    #[test]
    fn pods_move_from_unscheduled_to_their_node_and_go_when_deleted() {
        let mut index = Index::default();
        let a = "/registry/core/pods/ns/a";
        let b = "/registry/core/pods/ns/b";
        index.apply(a, Some(br#"{"spec":{}}"#));
        index.apply(b, Some(br#"{"spec":{"nodeName":"n1"}}"#));
        // Not a pod: not indexed, whatever it holds.
        index.apply(
            "/registry/core/configmaps/ns/a",
            Some(br#"{"spec":{"nodeName":"n1"}}"#),
        );
        assert_eq!(on(&index, ""), [a]);
        assert_eq!(on(&index, "n1"), [b]);
        index.apply(a, Some(br#"{"spec":{"nodeName":"n1"}}"#));
        assert!(on(&index, "").is_empty());
        assert_eq!(on(&index, "n1"), [a, b]);
        // A status update keeps it where it is.
        index.apply(a, Some(br#"{"spec":{"nodeName":"n1"},"status":{}}"#));
        assert_eq!(on(&index, "n1"), [a, b]);
        index.apply(a, None);
        index.apply(b, None);
        assert!(index.pods.is_empty());
        assert!(index.node_of.is_empty());
    }

    #[tokio::test]
    async fn a_lagging_index_answers_at_its_own_revision_only_when_asked_for_any() {
        let (_dir, api) = crate::testing::api().await;
        let index = NodeIndex::default();
        // Filled by hand at revision 7, and never following the store: an index lagging it.
        index.started.set(()).unwrap();
        let key = "/registry/core/pods/ns/a";
        {
            let mut state = index.state.index.lock().unwrap();
            state.apply(key, Some(br#"{"spec":{"nodeName":"n1"}}"#));
            state.revision = 7;
        }
        index.state.synced.send_replace(Some(7));
        let wait = Duration::from_millis(50);
        // A consistent list needs revision 8 (a write the client saw): it is not answered.
        let consistent = index.pods_on(&api.store, PODS_PREFIX, "n1", 8, wait).await;
        assert!(consistent.is_none());
        // `Any` (revision 0) is answered at once, at the index's revision.
        let any = index.pods_on(&api.store, PODS_PREFIX, "n1", 0, wait).await;
        assert_eq!(any, Some((7, vec![key.to_owned()])));
        // An index still filling answers neither.
        index.state.synced.send_replace(None);
        assert!(
            index
                .pods_on(&api.store, PODS_PREFIX, "n1", 0, wait)
                .await
                .is_none()
        );
    }
}
