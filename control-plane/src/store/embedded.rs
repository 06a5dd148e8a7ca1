//! The embedded backend: one redb file with etcd's data model.
//!
//! Three tables:
//! - `versions`: `(key, revision) -> record`. Every write adds a version (a delete adds a
//!   tombstone), so the latest version of a key is its state and older ones serve reads at past
//!   revisions. Compaction drops the versions nobody can ask for any more.
//! - `log`: `revision -> key`, one entry per write, which watches replay from.
//! - `meta`: the current and the compacted revision, and the format version.
//!
//! Beside them, in memory, every key's revisions ([`KeyIndex`], etcd's key index): a list counts
//! the keys after its page from it rather than reading their versions.
//!
//! Writes go to one writer thread, which applies everything pending in a single write transaction
//! and commits it with fsync once (group commit): each request keeps its own revision and its own
//! outcome, but they share the fsync. Reads run on tokio's blocking pool against redb's MVCC
//! snapshots and never wait for the writer.
//!
//! Watchers get committed changes from a broadcast channel. One that falls behind the channel's
//! buffer catches up from the log, so it only fails if the history it needs has been compacted.
//!
//! A full disk: redb fails every later operation on a database handle that saw an I/O error, so
//! after a failed transaction the writer reopens the file (redb repairs it to the last commit)
//! while reads wait for the new handle. Once a write has failed for want of space, writes are
//! refused without touching the file until more space is free than there was then, so reads keep
//! working on a full disk and the store takes writes again by itself once space returns.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Error, KeyValue, ListOptions, ListPage, Result, Revision, Store, WatchEvent, WatchStream,
    key_index::KeyIndex,
};

const VERSIONS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("versions");
const LOG: TableDefinition<i64, &str> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
/// Bumped on any incompatible change to the tables or the record encoding.
const FORMAT: i64 = 1;

const TAG_PUT: u8 = 1;
const TAG_TOMBSTONE: u8 = 2;

/// Requests the writer takes into one transaction at most; bounds the latency of the first.
const MAX_BATCH: usize = 1024;
/// Write requests that may wait for the writer before callers are held back.
const REQUEST_QUEUE: usize = 4096;
/// Committed batches buffered for live watchers. One that falls further behind reads the log.
const WATCH_BUFFER: usize = 256;
/// Events buffered between a watcher's task and its consumer.
const WATCHER_QUEUE: usize = 64;
/// Log entries a catching-up watcher reads per blocking call, to bound the time and memory of one.
const CATCH_UP_CHUNK: usize = 1024;
/// How long a read waits for the writer to reopen the file before it answers "unavailable".
const REOPEN_WAIT: Duration = Duration::from_secs(10);
/// After a write failed for want of space, how much more must be free before writes are tried
/// again: each failed try costs a reopen, during which reads wait.
const SPACE_TO_RETRY: u64 = 1 << 20;

/// Where the store keeps its file: a path on a disk in production; tests stand a backend in for
/// the disk to fill it up.
pub trait Disk: Send + Sync + 'static {
    /// Opens (or creates) the database, repairing it to its last commit if needed.
    fn open(&self) -> std::result::Result<Database, redb::DatabaseError>;
    /// Bytes the file may still grow into, when known.
    fn free_space(&self) -> Option<u64>;
    /// The file, for messages.
    fn describe(&self) -> String;
}

/// A redb file on the local filesystem.
#[derive(Debug)]
struct FileDisk {
    path: PathBuf,
}

impl Disk for FileDisk {
    fn open(&self) -> std::result::Result<Database, redb::DatabaseError> {
        Database::create(&self.path)
    }

    fn free_space(&self) -> Option<u64> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let stats = nix::sys::statvfs::statvfs(dir).ok()?;
        #[allow(clippy::useless_conversion)] // the widths differ between targets
        Some(u64::from(stats.blocks_available()) * u64::from(stats.fragment_size()))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// The open database, shared by the writer, readers and watchers. The writer replaces it after a
/// failed transaction; reads hold it only for one read transaction, so the old file handle (and
/// its lock) is released soon after.
struct Handle {
    slot: Mutex<Slot>,
    changed: Condvar,
}

enum Slot {
    Open(Arc<Database>),
    /// The writer is reopening the file; reads wait for it.
    Reopening,
    Closed,
}

impl Handle {
    fn new(db: Database) -> Self {
        Self {
            slot: Mutex::new(Slot::Open(Arc::new(db))),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open database; blocks while the writer reopens it (at most [`REOPEN_WAIT`]).
    fn get(&self) -> Result<Arc<Database>> {
        let deadline = Instant::now() + REOPEN_WAIT;
        let mut slot = self.lock();
        loop {
            match &*slot {
                Slot::Open(db) => return Ok(Arc::clone(db)),
                Slot::Closed => return Err(Error::Unavailable("the store is closed".into())),
                Slot::Reopening => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Unavailable(
                            "the store is reopening its file after a failed write".into(),
                        ));
                    }
                    slot = self
                        .changed
                        .wait_timeout(slot, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Takes the database out for the writer to reopen; reads wait until [`Handle::put`].
    fn take(&self) -> Option<Arc<Database>> {
        let mut slot = self.lock();
        let Slot::Open(db) = &*slot else {
            return None;
        };
        let db = Arc::clone(db);
        *slot = Slot::Reopening;
        Some(db)
    }

    fn put(&self, db: Database) {
        let mut slot = self.lock();
        if !matches!(*slot, Slot::Closed) {
            *slot = Slot::Open(Arc::new(db));
        }
        drop(slot);
        self.changed.notify_all();
    }

    fn close(&self) {
        *self.lock() = Slot::Closed;
        self.changed.notify_all();
    }
}

/// Changes of one committed transaction, in revision order.
type Batch = Arc<[WatchEvent]>;
type Reply<T> = oneshot::Sender<Result<T>>;

/// The single-machine store: a redb file, every acknowledged write fsynced.
///
/// Dropping the store stops its writer thread once queued writes are done; watch streams keep the
/// file open until they are dropped too. Use [`EmbeddedStore::close`] to wait until the file is
/// released, e.g. before opening it again.
pub struct EmbeddedStore {
    db: Arc<Handle>,
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Batch>,
    /// The latest committed revision, published by the writer after each commit.
    revision: Arc<AtomicI64>,
    /// Every key's revisions, kept by the writer after each commit: lists count what follows
    /// their page from it.
    keys: Keys,
    /// Why the writer's last transaction failed, until one commits again.
    failure: Failure,
    /// Transactions committed since opening.
    commits: Arc<AtomicU64>,
    writer: JoinHandle<()>,
}

type Keys = Arc<RwLock<KeyIndex>>;

/// The writer's last failed transaction, if the last one failed.
type Failure = Arc<Mutex<Option<String>>>;

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("revision", &self.revision.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the store in the redb file at `path`, creating it if missing.
    ///
    /// Blocks on file I/O (and on redb's recovery after a crash), so call it at startup or from a
    /// blocking task. Fails with [`Error::Unavailable`] if another process has the file open and
    /// with [`Error::Corrupt`] if it is damaged or was written by an incompatible version.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_on(FileDisk {
            path: path.to_owned(),
        })
    }

    /// Opens the store on `disk`: [`EmbeddedStore::open`] with the disk made explicit.
    pub fn open_on(disk: impl Disk) -> Result<Self> {
        let db = open_database(&disk)?;
        let (revision, compacted) = init_tables(&db)?;
        let keys = Keys::new(RwLock::new(read_key_index(&db)?));
        let db = Arc::new(Handle::new(db));
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let published = Arc::new(AtomicI64::new(revision));
        let failure = Failure::default();
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            db: Arc::clone(&db),
            disk: Box::new(disk),
            revision,
            compacted,
            full: None,
            events: events.clone(),
            published: Arc::clone(&published),
            keys: Arc::clone(&keys),
            failure: Arc::clone(&failure),
            commits: Arc::clone(&commits),
        };
        let writer = std::thread::Builder::new()
            .name("apiary-store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| Error::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            db,
            requests,
            events,
            revision: published,
            keys,
            failure,
            commits,
            writer,
        })
    }

    /// How many transactions committed since the store was opened: each holds the writes that
    /// queued while the one before was fsynced (group commit), so under concurrent writers this
    /// grows far slower than the writes.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    /// Finishes queued writes, stops the writer and releases the file (unless watch streams
    /// still hold it).
    pub async fn close(self) -> Result<()> {
        let Self {
            db,
            requests,
            writer,
            ..
        } = self;
        // The writer exits when the last request sender is gone.
        drop(requests);
        db.close();
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| Error::Unavailable(format!("joining the writer: {e}")))?
            .map_err(|_| Error::Unavailable("the writer thread panicked".into()))
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| writer_gone())?;
        response.await.map_err(|_| writer_gone())?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let handle = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&*handle.get()?))
            .await
            .map_err(|e| Error::Unavailable(format!("read task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(storage_error)?;
            let versions = txn.open_table(VERSIONS).map_err(storage_error)?;
            live(&versions, &key)
        })
        .await
    }

    async fn get_at(&self, keys: &[String], revision: Revision) -> Result<Vec<KeyValue>> {
        let keys = keys.to_vec();
        self.read(move |db| {
            let txn = db.begin_read().map_err(storage_error)?;
            let meta = txn.open_table(META).map_err(storage_error)?;
            let versions = txn.open_table(VERSIONS).map_err(storage_error)?;
            readable_revision(&meta, revision)?;
            let mut found = Vec::with_capacity(keys.len());
            for key in &keys {
                if let Some(kv) = version_at(&versions, key, revision)?.and_then(|v| v.into_kv(key))
                {
                    found.push(kv);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage> {
        let prefix = prefix.to_owned();
        let options = options.clone();
        let keys = Arc::clone(&self.keys);
        self.read(move |db| list(db, &keys, &prefix, &options))
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let op = WriteOp::Create {
            key: key.to_owned(),
            value,
        };
        self.submit(|reply| Request::Write { op, reply }).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue> {
        let op = WriteOp::Update {
            key: key.to_owned(),
            value,
            expected,
        };
        self.submit(|reply| Request::Write { op, reply }).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let op = WriteOp::Delete {
            key: key.to_owned(),
            expected,
        };
        self.submit(|reply| Request::Write { op, reply }).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before reading the log: every commit is then either in what the watcher reads
        // or in what it receives, and the revision filter drops what is in both.
        let live = self.events.subscribe();
        let compacted = self
            .read(|db| {
                let txn = db.begin_read().map_err(storage_error)?;
                let meta = txn.open_table(META).map_err(storage_error)?;
                meta_get(&meta, META_COMPACTED)
            })
            .await?;
        if after < compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted,
            });
        }
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let watcher = Watcher {
            db: Arc::clone(&self.db),
            prefix: prefix.to_owned(),
            last: after,
            live,
            tx,
        };
        tokio::spawn(watcher.run());
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(|reply| Request::Compact { revision, reply })
            .await
    }

    async fn revision(&self) -> Result<Revision> {
        Ok(self.revision.load(Ordering::Acquire))
    }

    async fn check(&self) -> Result<()> {
        if let Some(failure) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(Error::Unavailable(format!(
                "the last write failed: {failure}"
            )));
        }
        self.read(|db| {
            let txn = db.begin_read().map_err(storage_error)?;
            txn.open_table(META).map_err(storage_error)?;
            Ok(())
        })
        .await
    }

    async fn is_stale(&self, _key: &str) -> Result<bool> {
        // Values are stored as given.
        Ok(false)
    }
}

fn open_database(disk: &dyn Disk) -> Result<Database> {
    disk.open().map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Unavailable(format!(
            "{} is already open in another process",
            disk.describe()
        )),
        other => storage_error(other),
    })
}

fn writer_gone() -> Error {
    Error::Unavailable("the store's writer has stopped".into())
}

/// Maps redb's errors: damage and format mismatches are [`Error::Corrupt`], the rest (I/O,
/// closed database) [`Error::Unavailable`].
fn storage_error(error: impl Into<redb::Error>) -> Error {
    match error.into() {
        redb::Error::Corrupted(message) => Error::Corrupt(message),
        redb::Error::Io(e) if is_out_of_space(&e) => no_space(&e.to_string()),
        e @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)) => Error::Corrupt(e.to_string()),
        e => Error::Unavailable(format!("redb: {e}")),
    }
}

fn is_out_of_space(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull
        || error.kind() == std::io::ErrorKind::QuotaExceeded
}

fn no_space(cause: &str) -> Error {
    Error::NoSpace(format!(
        "the store's disk is full ({cause}): writes are refused until space is freed; reads continue"
    ))
}

/// A copy of a fatal error for each request of a failed batch.
fn replicate(error: &Error) -> Error {
    match error {
        Error::Corrupt(message) => Error::Corrupt(message.clone()),
        Error::NoSpace(message) => Error::NoSpace(message.clone()),
        other => Error::Unavailable(other.to_string()),
    }
}

/// Creates the tables of a new file, checks the format of an old one, and returns its current and
/// compacted revision.
fn init_tables(db: &Database) -> Result<(Revision, Revision)> {
    let txn = db.begin_write().map_err(storage_error)?;
    let revisions = {
        txn.open_table(VERSIONS).map_err(storage_error)?;
        txn.open_table(LOG).map_err(storage_error)?;
        let mut meta = txn.open_table(META).map_err(storage_error)?;
        let format = meta
            .get(META_FORMAT)
            .map_err(storage_error)?
            .map(|format| format.value());
        match format {
            None => {
                meta.insert(META_FORMAT, FORMAT).map_err(storage_error)?;
            }
            Some(FORMAT) => {}
            Some(format) => {
                return Err(Error::Corrupt(format!(
                    "store format {format} is not the supported {FORMAT}"
                )));
            }
        }
        (
            meta_get(&meta, META_REVISION)?,
            meta_get(&meta, META_COMPACTED)?,
        )
    };
    txn.commit().map_err(storage_error)?;
    Ok(revisions)
}

/// Every key's revisions, from the versions table (values are not decoded).
fn read_key_index(db: &Database) -> Result<KeyIndex> {
    let txn = db.begin_read().map_err(storage_error)?;
    let versions = txn.open_table(VERSIONS).map_err(storage_error)?;
    let mut index = KeyIndex::default();
    for entry in versions.iter().map_err(storage_error)? {
        let (k, v) = entry.map_err(storage_error)?;
        let (key, revision) = k.value();
        index.record(key, revision, v.value().first() == Some(&TAG_PUT));
    }
    Ok(index)
}

/// The current and compacted revision of an open file.
fn read_revisions(db: &Database) -> Result<(Revision, Revision)> {
    let txn = db.begin_read().map_err(storage_error)?;
    let meta = txn.open_table(META).map_err(storage_error)?;
    Ok((
        meta_get(&meta, META_REVISION)?,
        meta_get(&meta, META_COMPACTED)?,
    ))
}

fn meta_get(meta: &impl ReadableTable<&'static str, i64>, name: &str) -> Result<i64> {
    Ok(meta
        .get(name)
        .map_err(storage_error)?
        .map_or(0, |v| v.value()))
}

/// One stored version of a key, decoded.
#[derive(Debug)]
struct Version {
    revision: Revision,
    /// `None` for a tombstone.
    data: Option<(Revision, Vec<u8>)>,
}

impl Version {
    fn into_kv(self, key: &str) -> Option<KeyValue> {
        let (create_revision, value) = self.data?;
        Some(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: self.revision,
        })
    }
}

fn encode_put(create_revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(9 + value.len());
    record.push(TAG_PUT);
    record.extend_from_slice(&create_revision.to_le_bytes());
    record.extend_from_slice(value);
    record
}

fn decode(key: &str, revision: Revision, record: &[u8]) -> Result<Version> {
    let data = match record.split_first() {
        Some((&TAG_TOMBSTONE, [])) => None,
        Some((&TAG_PUT, rest)) if rest.len() >= 8 => {
            let (create, value) = rest.split_at(8);
            let mut bytes = [0; 8];
            bytes.copy_from_slice(create);
            Some((i64::from_le_bytes(bytes), value.to_vec()))
        }
        _ => {
            return Err(Error::Corrupt(format!(
                "bad record for {key} at revision {revision}"
            )));
        }
    };
    Ok(Version { revision, data })
}

/// The version of `key` that was current at revision `at`, tombstones included.
fn version_at<T>(versions: &T, key: &str, at: Revision) -> Result<Option<Version>>
where
    T: ReadableTable<(&'static str, i64), &'static [u8]> + ?Sized,
{
    let mut range = versions
        .range((key, i64::MIN)..=(key, at))
        .map_err(storage_error)?;
    match range.next_back() {
        None => Ok(None),
        Some(entry) => {
            let (k, v) = entry.map_err(storage_error)?;
            let revision = k.value().1;
            decode(key, revision, v.value()).map(Some)
        }
    }
}

/// The current value of `key`, if it exists.
fn live<T>(versions: &T, key: &str) -> Result<Option<KeyValue>>
where
    T: ReadableTable<(&'static str, i64), &'static [u8]> + ?Sized,
{
    Ok(version_at(versions, key, i64::MAX)?.and_then(|v| v.into_kv(key)))
}

/// `at`, if the store can be read at it: neither compacted away nor newer than the store.
fn readable_revision<T>(meta: &T, at: Revision) -> Result<Revision>
where
    T: ReadableTable<&'static str, i64>,
{
    let current = meta_get(meta, META_REVISION)?;
    let compacted = meta_get(meta, META_COMPACTED)?;
    if at > current {
        // Kubernetes answers "too large resource version" and lets the client retry.
        return Err(Error::Unavailable(format!(
            "revision {at} is newer than the store's {current}"
        )));
    }
    if at < compacted {
        return Err(Error::Compacted {
            requested: at,
            compacted,
        });
    }
    Ok(at)
}

fn list(db: &Database, keys: &Keys, prefix: &str, options: &ListOptions) -> Result<ListPage> {
    let txn = db.begin_read().map_err(storage_error)?;
    let meta = txn.open_table(META).map_err(storage_error)?;
    let versions = txn.open_table(VERSIONS).map_err(storage_error)?;
    let at = match options.revision {
        Some(at) => readable_revision(&meta, at)?,
        None => meta_get(&meta, META_REVISION)?,
    };
    // A limit of 0 means none, as in Kubernetes and etcd.
    let limit = options.limit.filter(|&l| l > 0).unwrap_or(usize::MAX);
    let start = match &options.continue_after {
        Some(after) if after.as_str() >= prefix => Bound::Excluded((after.as_str(), i64::MAX)),
        _ => Bound::Included((prefix, i64::MIN)),
    };

    let mut items = Vec::new();
    // Whether a key exists past a full page; the rest is counted from the key index.
    let mut more = false;
    // Versions are sorted by key, then revision: scan them once, keeping for each key the last
    // version at or before `at`.
    let mut current_key = String::new();
    // The record is decoded (its value copied) only once it is known to be the key's last
    // version at `at`: a key updated a few times, or deleted, is read once.
    let mut best: Option<(Revision, redb::AccessGuard<'_, &[u8]>)> = None;
    for entry in versions
        .range((start, Bound::Unbounded))
        .map_err(storage_error)?
    {
        let (k, v) = entry.map_err(storage_error)?;
        let (key, revision) = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        if key != current_key {
            if let Some(kv) = seen(&current_key, best.take())? {
                if items.len() >= limit {
                    more = true;
                    break;
                }
                items.push(kv);
            }
            current_key.clear();
            current_key.push_str(key);
        }
        if revision <= at {
            best = Some((revision, v));
        }
    }
    if let Some(kv) = seen(&current_key, best)? {
        if items.len() >= limit {
            more = true;
        } else {
            items.push(kv);
        }
    }
    let continue_after = more
        .then(|| items.last().map(|kv| kv.key.clone()))
        .flatten();
    let remaining = match &continue_after {
        Some(last) => {
            let keys = keys.read().unwrap_or_else(|e| e.into_inner());
            // At least the key found past the page, should the index not have a commit that
            // this read sees yet (it is updated right after each commit).
            Some(keys.count_live(prefix, last, at).max(1))
        }
        None => None,
    };
    Ok(ListPage {
        continue_after,
        items,
        revision: at,
        remaining,
    })
}

/// What a list sees of `key`: its last version at the list's revision (`best`, undecoded), if
/// that holds a value. Decoding copies the value, so it waits until the version is known.
fn seen(
    key: &str,
    best: Option<(Revision, redb::AccessGuard<'_, &[u8]>)>,
) -> Result<Option<KeyValue>> {
    match best {
        Some((revision, record)) => Ok(decode(key, revision, record.value())?.into_kv(key)),
        None => Ok(None),
    }
}

/// Some of the log after a revision, for a watcher.
#[derive(Debug)]
struct LogChunk {
    events: Vec<WatchEvent>,
    /// The watcher has seen everything up to here.
    last: Revision,
    /// `last` is the latest committed revision.
    caught_up: bool,
}

fn read_log(db: &Database, prefix: &str, after: Revision) -> Result<LogChunk> {
    let txn = db.begin_read().map_err(storage_error)?;
    let meta = txn.open_table(META).map_err(storage_error)?;
    let current = meta_get(&meta, META_REVISION)?;
    let compacted = meta_get(&meta, META_COMPACTED)?;
    if after < compacted {
        return Err(Error::Compacted {
            requested: after,
            compacted,
        });
    }
    let mut chunk = LogChunk {
        events: Vec::new(),
        last: after.max(current),
        caught_up: true,
    };
    if after >= current {
        return Ok(chunk);
    }
    let log = txn.open_table(LOG).map_err(storage_error)?;
    let versions = txn.open_table(VERSIONS).map_err(storage_error)?;
    for (scanned, entry) in log
        .range(after + 1..=current)
        .map_err(storage_error)?
        .enumerate()
    {
        let (revision, key) = entry.map_err(storage_error)?;
        let (revision, key) = (revision.value(), key.value());
        if scanned == CATCH_UP_CHUNK {
            chunk.last = revision - 1;
            chunk.caught_up = false;
            break;
        }
        if key.starts_with(prefix) {
            chunk.events.push(event_at(&versions, key, revision)?);
        }
    }
    Ok(chunk)
}

/// Every change after `after`, read from the log.
fn read_log_all(db: &Database, after: Revision) -> Result<Vec<WatchEvent>> {
    let mut events = Vec::new();
    let mut last = after;
    loop {
        let chunk = read_log(db, "", last)?;
        events.extend(chunk.events);
        last = chunk.last;
        if chunk.caught_up {
            return Ok(events);
        }
    }
}

/// Rebuilds the event of the write of `key` at `revision` from the versions table.
fn event_at<T>(versions: &T, key: &str, revision: Revision) -> Result<WatchEvent>
where
    T: ReadableTable<(&'static str, i64), &'static [u8]>,
{
    let corrupt = |what: &str| Error::Corrupt(format!("{what} for {key} at revision {revision}"));
    let this = version_at(versions, key, revision)?
        .filter(|v| v.revision == revision)
        .ok_or_else(|| corrupt("logged write without a version"))?;
    // Compaction keeps the newest version at or before the compacted revision unless it is a
    // tombstone, so the previous value of any write after it is still there.
    let prev = version_at(versions, key, revision - 1)?.and_then(|v| v.into_kv(key));
    match this.into_kv(key) {
        Some(kv) => Ok(WatchEvent::Put { kv, prev }),
        None => Ok(WatchEvent::Delete {
            prev: prev.ok_or_else(|| corrupt("delete without a previous value"))?,
            revision,
        }),
    }
}

/// What callers ask the writer to do.
#[derive(Debug)]
enum Request {
    Write {
        op: WriteOp,
        reply: Reply<KeyValue>,
    },
    Compact {
        revision: Revision,
        reply: Reply<()>,
    },
}

impl Request {
    /// Answers with `error` without applying the request.
    fn refuse(self, error: &Error) {
        match self {
            Self::Write { reply, .. } => {
                let _ = reply.send(Err(replicate(error)));
            }
            Self::Compact { reply, .. } => {
                let _ = reply.send(Err(replicate(error)));
            }
        }
    }
}

#[derive(Debug)]
enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

/// A request applied in the open transaction, answered once it commits.
enum Done {
    Write(Reply<KeyValue>, Result<KeyValue>),
    Compact(Reply<()>, Result<()>),
}

impl Done {
    /// Answers with the request's own outcome, or with `failed` if the transaction did not
    /// commit. A caller that went away is no longer interested, so send errors are ignored.
    fn answer(self, failed: Option<&Error>) {
        match self {
            Self::Write(reply, outcome) => {
                let _ = reply.send(failed.map_or(outcome, |e| Err(replicate(e))));
            }
            Self::Compact(reply, outcome) => {
                let _ = reply.send(failed.map_or(outcome, |e| Err(replicate(e))));
            }
        }
    }
}

/// The tables of one write transaction and the revisions as it changes them.
struct Tx<'t> {
    versions: Table<'t, (&'static str, i64), &'static [u8]>,
    log: Table<'t, i64, &'static str>,
    revision: Revision,
    compacted: Revision,
    events: Vec<WatchEvent>,
}

/// The writer thread's state.
struct Writer {
    db: Arc<Handle>,
    disk: Box<dyn Disk>,
    revision: Revision,
    compacted: Revision,
    /// Set when a write failed for want of space: the bytes free then. Writes are refused without
    /// touching the file until more is free.
    full: Option<u64>,
    events: broadcast::Sender<Batch>,
    published: Arc<AtomicI64>,
    keys: Keys,
    failure: Failure,
    commits: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        while let Some(first) = queue.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Applies `batch` in one transaction, commits it with fsync, then publishes its changes and
    /// answers every request.
    fn commit(&mut self, batch: Vec<Request>) {
        if let Some(error) = self.still_full() {
            for request in batch {
                request.refuse(&error);
            }
            return;
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut pending = batch.into_iter();
        let result = self
            .db
            .get()
            .and_then(|db| self.apply(&db, &mut pending, &mut done));
        match result {
            Ok((revision, compacted, events)) => {
                if self.full.take().is_some() {
                    tracing::info!("the store's disk has space again: writes resume");
                }
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                {
                    let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
                    keys.record_events(&events);
                    if compacted > self.compacted {
                        keys.compact(compacted);
                    }
                }
                self.revision = revision;
                self.compacted = compacted;
                self.published.store(revision, Ordering::Release);
                self.commits.fetch_add(1, Ordering::Release);
                if !events.is_empty() {
                    // No receivers is fine: nobody watches.
                    let _ = self.events.send(events.into());
                }
                for d in done {
                    d.answer(None);
                }
            }
            Err(error) => {
                tracing::error!(%error, "store write transaction failed");
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
                if matches!(error, Error::NoSpace(_)) {
                    self.full = Some(self.disk.free_space().unwrap_or(0));
                }
                // Before answering: a caller who reads next gets the new handle.
                self.reopen();
                for d in done {
                    d.answer(Some(&error));
                }
                // Requests not reached yet fail as well: the transaction they were part of is gone.
                for request in pending {
                    request.refuse(&error);
                }
            }
        }
    }

    /// While the disk is as full as when a write last failed for want of space, the error to
    /// refuse writes with.
    fn still_full(&self) -> Option<Error> {
        let then = self.full?;
        match self.disk.free_space() {
            Some(now) if now < then.saturating_add(SPACE_TO_RETRY) => Some(no_space(&format!(
                "{} bytes free for {}",
                now,
                self.disk.describe()
            ))),
            _ => None,
        }
    }

    /// Replaces the database handle after a failed transaction: redb fails every later operation
    /// on a handle that saw an I/O error. Opening repairs the file to its last commit.
    fn reopen(&mut self) {
        let Some(old) = self.db.take() else {
            return;
        };
        // The file lock goes with the last clone of the old handle; reads hold one only for the
        // read they are doing.
        let deadline = Instant::now() + REOPEN_WAIT;
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(old);
        let mut delay = Duration::from_millis(50);
        let db = loop {
            match open_database(&*self.disk).and_then(|db| {
                let revisions = read_revisions(&db)?;
                let keys = read_key_index(&db)?;
                Ok((db, (revisions, keys)))
            }) {
                Ok(opened) => break opened,
                Err(error) => {
                    tracing::error!(%error, "reopening the store failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let (db, ((revision, compacted), keys)) = db;
        // Read again from the file: the failed commit may have reached it after all.
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        if revision > self.revision {
            // The failed commit reached the disk after all (its fsync failed after the data was
            // written): publish what it wrote, so watchers miss nothing.
            match read_log_all(&db, self.revision) {
                Ok(events) if !events.is_empty() => {
                    let _ = self.events.send(events.into());
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "reading back the recovered commit"),
            }
        }
        self.revision = revision;
        self.compacted = compacted;
        self.published.store(revision, Ordering::Release);
        tracing::info!(revision, "the store's file was reopened");
        self.db.put(db);
    }

    fn apply(
        &self,
        db: &Database,
        requests: &mut impl Iterator<Item = Request>,
        done: &mut Vec<Done>,
    ) -> Result<(Revision, Revision, Vec<WatchEvent>)> {
        let mut txn = db.begin_write().map_err(storage_error)?;
        // The default, but the whole point: the commit returns only once the data is on disk.
        txn.set_durability(Durability::Immediate)
            .map_err(|e| Error::Unavailable(format!("redb: {e}")))?;
        let (revision, compacted, events) = self.apply_in(&txn, requests, done)?;
        txn.commit().map_err(storage_error)?;
        Ok((revision, compacted, events))
    }

    fn apply_in(
        &self,
        txn: &WriteTransaction,
        requests: &mut impl Iterator<Item = Request>,
        done: &mut Vec<Done>,
    ) -> Result<(Revision, Revision, Vec<WatchEvent>)> {
        let mut tx = Tx {
            versions: txn.open_table(VERSIONS).map_err(storage_error)?,
            log: txn.open_table(LOG).map_err(storage_error)?,
            revision: self.revision,
            compacted: self.compacted,
            events: Vec::new(),
        };
        for request in requests {
            match request {
                // A fatal error is answered with the rest of the batch, once the failure is
                // recorded (so that a caller who sees it finds the store unhealthy).
                Request::Write { op, reply } => match tx.write(op) {
                    Ok(outcome) => done.push(Done::Write(reply, outcome)),
                    Err(error) => {
                        done.push(Done::Write(reply, Err(replicate(&error))));
                        return Err(error);
                    }
                },
                Request::Compact { revision, reply } => match tx.compact(revision) {
                    Ok(outcome) => done.push(Done::Compact(reply, outcome)),
                    Err(error) => {
                        done.push(Done::Compact(reply, Err(replicate(&error))));
                        return Err(error);
                    }
                },
            }
        }
        let mut meta = txn.open_table(META).map_err(storage_error)?;
        meta.insert(META_REVISION, tx.revision)
            .map_err(storage_error)?;
        meta.insert(META_COMPACTED, tx.compacted)
            .map_err(storage_error)?;
        Ok((tx.revision, tx.compacted, tx.events))
    }
}

impl Tx<'_> {
    /// Applies one write. The outer error is fatal to the transaction; the inner one is this
    /// request's answer (`AlreadyExists`, `NotFound`, `Conflict`).
    fn write(&mut self, op: WriteOp) -> Result<Result<KeyValue>> {
        match op {
            WriteOp::Create { key, value } => self.create(key, value),
            WriteOp::Update {
                key,
                value,
                expected,
            } => self.update(key, value, expected),
            WriteOp::Delete { key, expected } => self.delete(key, expected),
        }
    }

    fn create(&mut self, key: String, value: Vec<u8>) -> Result<Result<KeyValue>> {
        if live(&self.versions, &key)?.is_some() {
            return Ok(Err(Error::AlreadyExists { key }));
        }
        // A new key's create revision is the revision of this write.
        let revision = self.next(&key, &encode_put(self.revision + 1, &value))?;
        let kv = KeyValue {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
        };
        self.events.push(WatchEvent::Put {
            kv: kv.clone(),
            prev: None,
        });
        Ok(Ok(kv))
    }

    fn update(
        &mut self,
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<Result<KeyValue>> {
        let prev = match self.existing(&key, expected)? {
            Ok(prev) => prev,
            Err(refused) => return Ok(Err(refused)),
        };
        let revision = self.next(&key, &encode_put(prev.create_revision, &value))?;
        let kv = KeyValue {
            key,
            value,
            create_revision: prev.create_revision,
            mod_revision: revision,
        };
        self.events.push(WatchEvent::Put {
            kv: kv.clone(),
            prev: Some(prev),
        });
        Ok(Ok(kv))
    }

    fn delete(&mut self, key: String, expected: Option<Revision>) -> Result<Result<KeyValue>> {
        let prev = match self.existing(&key, expected)? {
            Ok(prev) => prev,
            Err(refused) => return Ok(Err(refused)),
        };
        let revision = self.next(&key, &[TAG_TOMBSTONE])?;
        let deleted = KeyValue {
            mod_revision: revision,
            ..prev.clone()
        };
        self.events.push(WatchEvent::Delete { prev, revision });
        Ok(Ok(deleted))
    }

    /// The current value of `key` if it exists and, with `expected`, is at that revision.
    fn existing(&self, key: &str, expected: Option<Revision>) -> Result<Result<KeyValue>> {
        let Some(current) = live(&self.versions, key)? else {
            return Ok(Err(Error::NotFound {
                key: key.to_owned(),
            }));
        };
        match expected {
            Some(expected) if expected != current.mod_revision => Ok(Err(Error::Conflict {
                key: key.to_owned(),
                expected,
                current,
            })),
            _ => Ok(Ok(current)),
        }
    }

    /// Stores `record` as the version of `key` at the next revision and logs it.
    fn next(&mut self, key: &str, record: &[u8]) -> Result<Revision> {
        let revision = self.revision + 1;
        self.versions
            .insert((key, revision), record)
            .map_err(storage_error)?;
        self.log.insert(revision, key).map_err(storage_error)?;
        self.revision = revision;
        Ok(revision)
    }

    /// Drops the history up to `revision`, keeping for each key the version current at
    /// `revision` (unless it is a tombstone) so that reads at `revision` and later still work.
    fn compact(&mut self, revision: Revision) -> Result<Result<()>> {
        if revision > self.revision {
            return Ok(Err(Error::Unavailable(format!(
                "cannot compact at revision {revision}: the store is at {}",
                self.revision
            ))));
        }
        if revision <= self.compacted {
            return Ok(Ok(()));
        }
        let mut keys = BTreeSet::new();
        for entry in self.log.range(..=revision).map_err(storage_error)? {
            let (_, key) = entry.map_err(storage_error)?;
            keys.insert(key.value().to_owned());
        }
        for key in &keys {
            let mut doomed = Vec::new();
            for entry in self
                .versions
                .range((key.as_str(), i64::MIN)..=(key.as_str(), revision))
                .map_err(storage_error)?
            {
                let (k, v) = entry.map_err(storage_error)?;
                doomed.push((k.value().1, v.value().first() == Some(&TAG_TOMBSTONE)));
            }
            // The newest version stays, unless it says the key was gone.
            if doomed.last().is_some_and(|&(_, tombstone)| !tombstone) {
                doomed.pop();
            }
            for (version, _) in doomed {
                self.versions
                    .remove((key.as_str(), version))
                    .map_err(storage_error)?;
            }
        }
        self.log
            .retain_in(..=revision, |_, _| false)
            .map_err(storage_error)?;
        self.compacted = revision;
        Ok(Ok(()))
    }
}

/// The task behind one watch stream.
struct Watcher {
    db: Arc<Handle>,
    prefix: String,
    /// Changes up to here have been delivered or skipped.
    last: Revision,
    live: broadcast::Receiver<Batch>,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

impl Watcher {
    async fn run(mut self) {
        loop {
            if !self.catch_up().await {
                return;
            }
            loop {
                let received = tokio::select! {
                    () = self.tx.closed() => return,
                    received = self.live.recv() => received,
                };
                match received {
                    Ok(batch) => {
                        for event in batch.iter() {
                            let revision = event.revision();
                            if revision <= self.last {
                                continue;
                            }
                            self.last = revision;
                            if event_key(event).starts_with(&self.prefix)
                                && self.tx.send(Ok(event.clone())).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    // Fell behind the buffer: read what was missed from the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = self.tx.send(Err(writer_gone())).await;
                        return;
                    }
                }
            }
        }
    }

    /// Delivers the logged changes after `last` up to the latest commit. False when the stream
    /// is over (consumer gone, or an error was delivered).
    async fn catch_up(&mut self) -> bool {
        loop {
            let handle = Arc::clone(&self.db);
            let prefix = self.prefix.clone();
            let after = self.last;
            let chunk =
                tokio::task::spawn_blocking(move || read_log(&*handle.get()?, &prefix, after))
                    .await
                    .unwrap_or_else(|e| Err(Error::Unavailable(format!("watch task failed: {e}"))));
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    let _ = self.tx.send(Err(error)).await;
                    return false;
                }
            };
            for event in chunk.events {
                if self.tx.send(Ok(event)).await.is_err() {
                    return false;
                }
            }
            self.last = chunk.last;
            if chunk.caught_up {
                return true;
            }
        }
    }
}

fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put { kv, .. } => &kv.key,
        WatchEvent::Delete { prev, .. } => &prev.key,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// A disk of a set size, in memory: writes past the size fail as a full disk does. The bytes
    /// survive reopening, as a file's do.
    #[derive(Clone, Debug, Default)]
    struct SmallDisk {
        bytes: Arc<Mutex<Vec<u8>>>,
        size: Arc<AtomicU64>,
        /// Writes that reached the disk.
        writes: Arc<AtomicU64>,
    }

    impl SmallDisk {
        fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
            self.bytes.lock().unwrap()
        }

        fn full(&self, end: u64) -> std::io::Result<()> {
            if end > self.size.load(Ordering::SeqCst) {
                return Err(std::io::ErrorKind::StorageFull.into());
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for SmallDisk {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.bytes().len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            let bytes = self.bytes();
            let start = offset as usize;
            let range = bytes
                .get(start..start + out.len())
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            out.copy_from_slice(range);
            Ok(())
        }

        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.full(len)?;
            self.bytes().resize(len as usize, 0);
            Ok(())
        }

        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }

        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.full(offset + data.len() as u64)?;
            self.writes.fetch_add(1, Ordering::SeqCst);
            let mut bytes = self.bytes();
            let start = offset as usize;
            let end = start + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
            Ok(())
        }
    }

    impl Disk for SmallDisk {
        fn open(&self) -> std::result::Result<Database, redb::DatabaseError> {
            redb::Builder::new().create_with_backend(self.clone())
        }

        fn free_space(&self) -> Option<u64> {
            Some(
                self.size
                    .load(Ordering::SeqCst)
                    .saturating_sub(self.bytes().len() as u64),
            )
        }

        fn describe(&self) -> String {
            "a small disk".into()
        }
    }

    #[tokio::test]
    async fn a_full_disk_refuses_writes_keeps_reads_and_takes_writes_again_once_freed() {
        let disk = SmallDisk::default();
        disk.size.store(u64::MAX, Ordering::SeqCst);
        let store = EmbeddedStore::open_on(disk.clone()).unwrap();
        let value = vec![b'x'; 64 << 10];
        store.create("/k/0", value.clone()).await.unwrap();
        let mut watch = store.watch("/k/", 0).await.unwrap();
        // The disk ends where the file ends now, plus a little.
        disk.size
            .store(disk.bytes().len() as u64 + (1 << 20), Ordering::SeqCst);

        let mut acknowledged = vec!["/k/0".to_owned()];
        let refusal = loop {
            let key = format!("/k/{}", acknowledged.len());
            match store.create(&key, value.clone()).await {
                Ok(_) => acknowledged.push(key),
                Err(error) => break error,
            }
            assert!(acknowledged.len() < 1000, "the disk never filled up");
        };
        assert!(
            matches!(&refusal, Error::NoSpace(message) if message.contains("disk is full")),
            "{refusal:?}"
        );
        assert!(store.check().await.is_err(), "a full store is not healthy");

        // Reads go on, on the reopened file, and hold every acknowledged write.
        let page = store.list("/k/", &ListOptions::default()).await.unwrap();
        let keys: Vec<_> = page.items.iter().map(|kv| kv.key.clone()).collect();
        let mut expected = acknowledged.clone();
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(page.revision, acknowledged.len() as i64);

        // Later writes are refused without touching the disk, which is still full.
        let writes = disk.writes.load(Ordering::SeqCst);
        for i in 0..3 {
            let error = store
                .create(&format!("/later/{i}"), b"v".to_vec())
                .await
                .unwrap_err();
            assert!(matches!(error, Error::NoSpace(_)), "{error:?}");
        }
        assert_eq!(disk.writes.load(Ordering::SeqCst), writes);
        assert!(store.get("/later/0").await.unwrap().is_none());

        // Space returns: writes resume, with the next revision, and watchers see them in order.
        disk.size.store(u64::MAX, Ordering::SeqCst);
        let kv = store.create("/k/after", b"v".to_vec()).await.unwrap();
        assert_eq!(kv.mod_revision, acknowledged.len() as i64 + 1);
        store.check().await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < acknowledged.len() + 1 {
            let event = futures::StreamExt::next(&mut watch).await.unwrap().unwrap();
            seen.push(event.revision());
        }
        assert_eq!(
            seen,
            (1..=acknowledged.len() as i64 + 1).collect::<Vec<_>>()
        );
    }
}
