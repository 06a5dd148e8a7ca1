//! The garbage collector's graph: which stored objects name each owner (by uid) in their
//! `ownerReferences`, kept from one store watch over every resource, as kube-controller-manager's
//! garbage collector keeps its graph from informers.
//!
//! A deletion used to find its dependents by listing and decoding every listable resource of its
//! namespace: deleting the 10,000 pods of a namespace decoded about 10,000 × 10,000 objects and
//! held the API server's CPU. It now looks the owner's uid up here and reads only the objects
//! found, each checked again against the store (the graph may trail it).
//!
//! The graph is only a hint, never the source of truth: a deletion waits until the graph has seen
//! the store up to the deletion's own revision (so every dependent written before it is in), and
//! falls back to the full listing when the graph is not there in time.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use futures::StreamExt as _;
use serde::Deserialize;
use tokio::sync::watch;

use crate::store::{ListOptions, Revision, Store, WatchEvent};

/// Every resource's objects live under it.
const PREFIX: &str = "/registry/";
/// Keys per page while the graph is first filled.
const PAGE: usize = 1000;
/// How long a graph whose store watch failed waits before filling itself again.
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// Owner uid → the storage keys of its dependents.
#[derive(Default)]
pub struct DependencyGraph {
    state: Arc<State>,
    started: OnceLock<()>,
}

impl std::fmt::Debug for DependencyGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DependencyGraph")
            .field("synced", &*self.state.synced.borrow())
            .finish_non_exhaustive()
    }
}

struct State {
    graph: Mutex<Graph>,
    /// The store revision the graph reflects: every write up to it is in. 0 while it fills.
    synced: watch::Sender<Revision>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            graph: Mutex::default(),
            synced: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct Graph {
    dependents: HashMap<Box<str>, HashSet<Arc<str>>>,
    /// The owner uids each key names, to take it out of their sets when it changes.
    owners: HashMap<Arc<str>, Vec<Box<str>>>,
}

impl Graph {
    /// Records that `key` now names `owners` (none: it is gone or owns to nobody).
    fn set(&mut self, key: &str, owners: Vec<Box<str>>) {
        if let Some((key, old)) = self.owners.remove_entry(key) {
            for uid in old {
                if let Some(set) = self.dependents.get_mut(&uid) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.dependents.remove(&uid);
                    }
                }
            }
        }
        if owners.is_empty() {
            return;
        }
        let key: Arc<str> = Arc::from(key);
        for uid in &owners {
            self.dependents
                .entry(uid.clone())
                .or_default()
                .insert(Arc::clone(&key));
        }
        self.owners.insert(key, owners);
    }
}

/// The owner uids a stored object names. Most objects name none: those are told by a substring
/// test, without decoding them.
fn owner_uids(value: &[u8]) -> Vec<Box<str>> {
    #[derive(Deserialize)]
    struct Object {
        #[serde(default)]
        metadata: Metadata,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Metadata {
        #[serde(default)]
        owner_references: Vec<OwnerReference>,
    }
    #[derive(Deserialize)]
    struct OwnerReference {
        #[serde(default)]
        uid: Box<str>,
    }
    if memchr::memmem::find(value, b"\"ownerReferences\"").is_none() {
        return Vec::new();
    }
    match serde_json::from_slice::<Object>(value) {
        Ok(object) => object
            .metadata
            .owner_references
            .into_iter()
            .map(|r| r.uid)
            .filter(|uid| !uid.is_empty())
            .collect(),
        Err(_) => Vec::new(),
    }
}

impl DependencyGraph {
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
                    tracing::debug!(error = %e, "the dependency graph's store watch ended; filling it again");
                }
                state.synced.send_replace(0);
                tokio::time::sleep(RESTART_DELAY).await;
            }
        });
    }

    /// The storage keys of the objects naming `uid` as an owner, once the graph has seen the
    /// store at `revision` or later; `None` when it has not within `wait` (or was never
    /// started, which starts it for the next caller).
    pub async fn dependents(
        &self,
        store: &Arc<dyn Store>,
        uid: &str,
        revision: Revision,
        wait: Duration,
    ) -> Option<Vec<Arc<str>>> {
        self.start(store);
        let mut synced = self.state.synced.subscribe();
        let caught_up = tokio::time::timeout(wait, synced.wait_for(|&r| r > 0 && r >= revision));
        if !matches!(caught_up.await, Ok(Ok(_))) {
            return None;
        }
        let graph = self.state.graph.lock().expect("graph lock");
        Some(
            graph
                .dependents
                .get(uid)
                .map(|keys| keys.iter().cloned().collect())
                .unwrap_or_default(),
        )
    }
}

/// Fills the graph from a listing, then keeps it from the store's watch until that fails.
async fn follow(state: &State, store: &Arc<dyn Store>) -> crate::store::Result<()> {
    let mut fresh = Graph::default();
    let mut options = ListOptions {
        limit: Some(PAGE),
        ..Default::default()
    };
    let revision = loop {
        let page = store.list(PREFIX, &options).await?;
        for kv in &page.items {
            fresh.set(&kv.key, owner_uids(&kv.value));
        }
        match page.continue_after {
            Some(after) => {
                options.continue_after = Some(after);
                options.revision = Some(page.revision);
            }
            None => break page.revision,
        }
    };
    let mut changes = store.watch(PREFIX, revision).await?;
    *state.graph.lock().expect("graph lock") = fresh;
    state.synced.send_replace(revision);
    while let Some(change) = changes.next().await {
        let change = change?;
        let revision = change.revision();
        {
            let mut graph = state.graph.lock().expect("graph lock");
            match &change {
                WatchEvent::Put { kv, .. } => graph.set(&kv.key, owner_uids(&kv.value)),
                WatchEvent::Delete { prev, .. } => graph.set(&prev.key, Vec::new()),
            }
        }
        state.synced.send_replace(revision);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uids(owners: &[&str]) -> Vec<Box<str>> {
        owners.iter().map(|&o| Box::from(o)).collect()
    }

    #[test]
    fn owner_uids_are_read_only_from_owner_references() {
        let pod = br#"{"metadata":{"name":"p","ownerReferences":[{"uid":"a","kind":"ReplicaSet"},{"uid":"b"}]},"spec":{"x":"\"ownerReferences\""}}"#;
        assert_eq!(owner_uids(pod), uids(&["a", "b"]));
        assert!(owner_uids(br#"{"metadata":{"name":"p"}}"#).is_empty());
        // Mentioned elsewhere, not in the metadata: nobody owns it.
        assert!(owner_uids(br#"{"metadata":{},"data":{"\"ownerReferences\"":"x"}}"#).is_empty());
        assert!(owner_uids(b"not json \"ownerReferences\"").is_empty());
    }

    #[test]
    fn graph_follows_changes_of_owners() {
        let mut graph = Graph::default();
        graph.set("/registry/core/pods/ns/a", uids(&["rs1"]));
        graph.set("/registry/core/pods/ns/b", uids(&["rs1", "x"]));
        let of = |graph: &Graph, uid: &str| {
            let mut keys: Vec<String> = graph
                .dependents
                .get(uid)
                .into_iter()
                .flatten()
                .map(|k| k.to_string())
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(
            of(&graph, "rs1"),
            ["/registry/core/pods/ns/a", "/registry/core/pods/ns/b"]
        );
        // Orphaned from rs1, adopted by rs2.
        graph.set("/registry/core/pods/ns/a", uids(&["rs2"]));
        assert_eq!(of(&graph, "rs1"), ["/registry/core/pods/ns/b"]);
        assert_eq!(of(&graph, "rs2"), ["/registry/core/pods/ns/a"]);
        // Deleted: nothing is left of it.
        graph.set("/registry/core/pods/ns/a", Vec::new());
        graph.set("/registry/core/pods/ns/b", Vec::new());
        assert!(graph.dependents.is_empty());
        assert!(graph.owners.is_empty());
    }
}
