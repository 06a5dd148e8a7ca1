//! Storage for API objects: one trait, two backends.
//!
//! - [`embedded`]: a redb file in the data directory, the single-machine default. Every
//!   acknowledged write is fsynced and survives `kill -9`.
//! - [`etcd`]: etcd v3 through `etcd-client`, for HA control planes.
//!
//! [`encryption`] wraps either: values of the resources an `EncryptionConfiguration` names are
//! encrypted before they reach the backend.
//!
//! The model is etcd's: one cluster-wide, monotonically increasing revision; every write gets the
//! next revision; each key remembers the revision that created it and the one that last modified
//! it. Kubernetes' `resourceVersion` is the object's `mod_revision`, and a list's
//! `resourceVersion` is the store revision it was read at.

pub mod embedded;
pub mod encryption;
pub mod etcd;
mod key_index;

use std::pin::Pin;

use futures::Stream;

/// A store revision. Starts at 1 for the first write; 0 means "nothing written yet".
pub type Revision = i64;

/// One stored key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that created the key.
    pub create_revision: Revision,
    /// The revision of the write that last changed the key (its `resourceVersion`).
    pub mod_revision: Revision,
}

/// What a list returns: one page of keys in key order, read at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub items: Vec<KeyValue>,
    /// The store revision the page was read at. Later pages of the same list read at this one.
    pub revision: Revision,
    /// Set when more keys follow: pass it as [`ListOptions::continue_after`] (the last key of
    /// this page) together with [`ListOptions::revision`] = `revision` to read the next page.
    pub continue_after: Option<String>,
    /// How many keys under the prefix follow this page (at `revision`), when more follow. Like
    /// Kubernetes' `remainingItemCount`, an estimate: a page read while a write commits may
    /// count without it.
    pub remaining: Option<u64>,
}

/// How to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// At most this many items (`None`: all).
    pub limit: Option<usize>,
    /// Start strictly after this key (from a previous page's `continue_after`).
    pub continue_after: Option<String>,
    /// Read at this revision (a consistent snapshot for paging); `None`: the latest.
    /// Fails with [`Error::Compacted`] when that revision has been compacted away.
    pub revision: Option<Revision>,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created (`prev` is `None`) or updated (`prev` is the value it replaced).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// The key was deleted at `revision`; `prev` is the last value it had.
    Delete { prev: KeyValue, revision: Revision },
}

impl WatchEvent {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> Revision {
        match self {
            Self::Put { kv, .. } => kv.mod_revision,
            Self::Delete { revision, .. } => *revision,
        }
    }
}

/// An unending stream of the changes under one prefix, in revision order. It ends with
/// `Err(Error::Compacted { .. })` if the store cannot deliver the next event (e.g. a slow watcher
/// fell behind the history the backend keeps); a consumer then relists, as Kubernetes clients do
/// on `410 Gone`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// Storage errors. [`Error::Unavailable`] is retryable; the others describe the request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    /// Compare-and-swap failed: the key's `mod_revision` is not the expected one. Carries the
    /// current value so that callers can report or retry.
    #[error("key {key} was modified: expected revision {expected}, found {}", current.mod_revision)]
    Conflict {
        key: String,
        expected: Revision,
        current: KeyValue,
    },
    /// The requested revision is older than the oldest one kept.
    #[error("revision {requested} has been compacted; the oldest available is {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The backend cannot be reached or failed; retrying may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the write for what it is, in its own words: etcd's "etcdserver:
    /// request is too large" (past `--max-request-bytes`) or "etcdserver: mvcc: database space
    /// exceeded" (its quota). Retrying the same write fails the same way.
    #[error("{0}")]
    Rejected(String),
    /// The embedded store's disk is full: writes are refused (before they touch the file, once
    /// one has failed) until space is freed; reads go on.
    #[error("{0}")]
    NoSpace(String),
    /// The store's files are damaged or from an incompatible version; not retryable.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// A stored value the encryption configuration cannot read (its key is not configured, or
    /// it does not authenticate); not retryable, and the value is left as it is.
    #[error("unable to transform key {key:?}: {reason}")]
    Transform { key: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The storage every API server request goes through.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The latest value of `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// The values `keys` had at `revision`, read from one snapshot, in the order given; keys
    /// that did not exist then are left out. Fails as [`Store::list`] does for a revision
    /// compacted away or not reached yet.
    async fn get_at(&self, keys: &[String], revision: Revision) -> Result<Vec<KeyValue>>;

    /// Keys starting with `prefix`, in key order, one page at a time.
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage>;

    /// Creates `key`; fails with [`Error::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;

    /// Replaces the value of an existing `key`. With `expected` set, only if the key's
    /// `mod_revision` equals it ([`Error::Conflict`] otherwise). [`Error::NotFound`] if absent.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue>;

    /// Deletes `key` (with `expected`, only at that `mod_revision`) and returns the value it had,
    /// with `mod_revision` set to the deletion's revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue>;

    /// Changes under `prefix` with a revision greater than `after`. `after` older than the
    /// compacted revision fails with [`Error::Compacted`].
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Forgets history up to and including `revision`: older revisions can no longer be listed
    /// at or watched from.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The latest revision.
    async fn revision(&self) -> Result<Revision>;

    /// Whether the store serves: reachable, and not in a failed state (the embedded file's last
    /// write failed). `/livez` and `/readyz` report it as kube-apiserver reports etcd's health.
    async fn check(&self) -> Result<()>;

    /// Whether the value at `key` is stored otherwise than this store would store it now (an
    /// encrypting store's value sealed with a key that is no longer its first, or not sealed
    /// where it now seals). Kubernetes rewrites such a value on any update, even one that
    /// changes nothing: that is how `kubectl replace` of every Secret re-encrypts them.
    async fn is_stale(&self, key: &str) -> Result<bool>;
}

/// Compacts history older than one interval, forever, as kube-apiserver does every 5 minutes:
/// a watcher may fall up to one interval behind before it has to relist.
pub async fn compact_periodically(store: std::sync::Arc<dyn Store>, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    let mut previous: Option<Revision> = None;
    loop {
        ticker.tick().await;
        if let Some(revision) = previous.filter(|r| *r > 0)
            && let Err(e) = store.compact(revision).await
        {
            tracing::warn!(revision, error = %e, "compaction failed; retrying next interval");
        }
        previous = store.revision().await.ok();
    }
}
