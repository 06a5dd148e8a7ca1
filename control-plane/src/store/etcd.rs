//! The etcd backend: etcd v3 through `etcd-client`, for HA control planes.
//!
//! Every key is stored under a key prefix (e.g. `/apiary` + `/pods/default/web`) so that several
//! clusters can share one etcd. Preconditions are etcd transactions, so each write is one round
//! trip. Every request has a timeout: an unreachable etcd gives [`Error::Unavailable`], never a
//! hang. Watch streams survive etcd restarts by resuming from the last revision they delivered.
//! With [`EtcdTls`] it speaks TLS and authenticates with a client certificate.
//!
//! Two differences from the embedded store come from etcd itself: an empty etcd is at revision 1,
//! so the first write gets revision 2; and a watch event's `prev` is missing if etcd compacted it
//! between the write and its delivery (a delete then ends the stream with [`Error::Compacted`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Error, KeyValue, ListOptions, ListPage, Result, Revision, Store, WatchEvent, WatchStream,
};

/// The largest etcd response decoded (kube-apiserver's `MaxCallRecvMsgSize`, `math.MaxInt32`).
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;
/// Default for [`EtcdStore::with_request_timeout`].
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings find a dead connection that no RST announced (a partition, a crashed host).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a broken watch waits before reconnecting, doubling up to the maximum.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(100);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);
/// Events buffered between a watch's task and its consumer.
const WATCHER_QUEUE: usize = 256;
/// How long to wait for etcd to report its compacted revision.
const COMPACTED_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the etcd client presents and trusts over TLS (kube-apiserver's `--etcd-cafile`,
/// `--etcd-certfile`, `--etcd-keyfile`), PEM.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// The CA etcd's serving certificate must chain to.
    pub ca_pem: Option<String>,
    /// This client's certificate and key.
    pub client: Option<(String, String)>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// A store in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// Prepended to every key.
    prefix: String,
    timeout: Duration,
    /// Keeps the client's endpoints to the members that answer, while a clone of the store
    /// lives (with more than one endpoint).
    _members: Option<Arc<MemberFollower>>,
}

/// How often the members are probed, and how long a probe may take.
const MEMBER_PROBE_EVERY: Duration = Duration::from_secs(1);
const MEMBER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The task of [`follow_members`]; stopped with the last clone of the store.
struct MemberFollower(tokio::task::JoinHandle<()>);

impl Drop for MemberFollower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Takes a member that does not answer out of the client's balancer, and puts it back once it
/// does: the balancer alone goes on sending a dead member its share of the requests (every
/// third one failing after a member's death, in `cargo xtask faults`). Each member is asked
/// for its status through a client of its own; one that cannot answer within
/// [`MEMBER_PROBE_TIMEOUT`] (dead, or cut off) is left out. The last member left is never taken
/// out.
async fn follow_members(client: Client, endpoints: Vec<String>, options: ConnectOptions) {
    let mut probes: Vec<Option<Client>> = vec![None; endpoints.len()];
    let mut inside = vec![true; endpoints.len()];
    loop {
        tokio::time::sleep(MEMBER_PROBE_EVERY).await;
        for (i, endpoint) in endpoints.iter().enumerate() {
            let answers = tokio::time::timeout(MEMBER_PROBE_TIMEOUT, async {
                if probes[i].is_none() {
                    let connect = Client::connect([endpoint], Some(options.clone()));
                    probes[i] = Some(connect.await.ok()?);
                }
                probes[i].as_mut()?.status().await.ok()
            })
            .await
            .is_ok_and(|status| status.is_some());
            let others_inside = inside
                .iter()
                .enumerate()
                .any(|(j, inside)| j != i && *inside);
            if !answers && inside[i] && others_inside {
                match client.remove_endpoint(endpoint).await {
                    Ok(()) => {
                        tracing::warn!(%endpoint, "etcd member not answering: requests go to the others");
                        inside[i] = false;
                    }
                    Err(error) => tracing::warn!(%endpoint, %error, "leaving out an etcd member"),
                }
            } else if answers && !inside[i] {
                match client.add_endpoint(endpoint).await {
                    Ok(()) => {
                        tracing::info!(%endpoint, "etcd member answers again");
                        inside[i] = true;
                    }
                    Err(error) => tracing::warn!(%endpoint, %error, "taking an etcd member back"),
                }
            }
        }
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`http://host:port`) and checks that it answers.
    ///
    /// Keys are stored as `key_prefix` + key, e.g. `/apiary` + `/pods/default/web`. Lists of the
    /// empty prefix see every key under `key_prefix`, so give clusters prefixes where neither is
    /// a prefix of the other (`/apiary-a` and `/apiary-b`, not `/apiary` and `/apiary2`).
    pub async fn connect(endpoints: &[String], key_prefix: &str) -> Result<Self> {
        Self::connect_with(endpoints, key_prefix, None).await
    }

    /// A KV client whose responses may be as large as a list of the whole store (etcd-client's
    /// default, 4 MiB, is under 10,000 ConfigMaps with their managed fields);
    /// kube-apiserver's etcd client allows `math.MaxInt32`.
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// A watch client with the same allowance: one watch response may carry many events.
    fn watcher(&self) -> etcd_client::WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// [`EtcdStore::connect`], over TLS when `tls` is given (`https://host:port` endpoints):
    /// the server verified against `tls`'s CA, this client authenticated by its certificate,
    /// as etcd's `--client-cert-auth` requires.
    pub async fn connect_with(
        endpoints: &[String],
        key_prefix: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(DEFAULT_REQUEST_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT);
        if let Some(tls) = tls {
            if let Some(plain) = endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(Error::Unavailable(format!(
                    "etcd endpoint {plain} is not https://, but TLS files were given"
                )));
            }
            let mut config = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                config = config.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.client {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        let connect = Client::connect(endpoints, Some(options.clone()));
        let client = tokio::time::timeout(DEFAULT_REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| {
                Error::Unavailable(format!("connecting to etcd at {endpoints:?} timed out"))
            })?
            .map_err(|e| Error::Unavailable(format!("connecting to etcd at {endpoints:?}: {e}")))?;
        let members = (endpoints.len() > 1).then(|| {
            Arc::new(MemberFollower(tokio::spawn(follow_members(
                client.clone(),
                endpoints.to_vec(),
                options.clone(),
            ))))
        });
        let store = Self {
            client,
            prefix: key_prefix.to_owned(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            _members: members,
        };
        // The client connects lazily; make a missing etcd an error here rather than at first use.
        store.revision().await?;
        Ok(store)
    }

    /// Sets how long a request may take before it fails with [`Error::Unavailable`] (default
    /// 5 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// Runs one request under the timeout.
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(Failure::from(e)),
            Err(_) => Err(Failure::Other(Error::Unavailable(format!(
                "etcd did not answer within {:?}",
                self.timeout
            )))),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut kv = self.kv();
        self.call(kv.txn(txn)).await.map_err(|f| f.into_error(None))
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = kv
            .key()
            .strip_prefix(self.prefix.as_bytes())
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "etcd returned a key outside {}: {:?}",
                    self.prefix,
                    String::from_utf8_lossy(kv.key())
                ))
            })?;
        let key = std::str::from_utf8(key)
            .map_err(|_| Error::Corrupt(format!("key {key:?} is not UTF-8")))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// The current value from the `else` branch of a failed transaction.
    fn current(&self, response: &TxnResponse) -> Result<Option<KeyValue>> {
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                return get.kvs().first().map(|kv| self.to_kv(kv)).transpose();
            }
        }
        Ok(None)
    }

    /// Why a guarded update or delete of `key` failed.
    fn precondition_failed(
        &self,
        key: &str,
        expected: Option<Revision>,
        response: &TxnResponse,
    ) -> Error {
        match (self.current(response), expected) {
            (Err(e), _) => e,
            (Ok(None), _) | (Ok(Some(_)), None) => Error::NotFound {
                key: key.to_owned(),
            },
            (Ok(Some(current)), Some(expected)) => Error::Conflict {
                key: key.to_owned(),
                expected,
                current,
            },
        }
    }

    /// The compares that guard an update or delete: the key exists, at `expected` if given.
    fn guards(full: &[u8], expected: Option<Revision>) -> Vec<Compare> {
        let mut compares = vec![Compare::create_revision(full, CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(full, CompareOp::Equal, expected));
        }
        compares
    }

    /// The revision etcd has compacted up to, which its "compacted" errors do not say. A watch
    /// from revision 1 learns it; `fallback` if that fails.
    async fn compacted_revision(&self, fallback: Revision) -> Revision {
        let mut client = self.watcher();
        let probe_key = self.full_key("\0compaction-probe");
        let probe = async move {
            let mut stream = client
                .watch(probe_key, Some(WatchOptions::new().with_start_revision(1)))
                .await
                .ok()?;
            while let Some(response) = stream.message().await.ok()? {
                if response.compact_revision() > 0 {
                    return Some(response.compact_revision());
                }
                if response.canceled() {
                    return None;
                }
            }
            None
        };
        tokio::time::timeout(COMPACTED_PROBE_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(fallback)
    }

    /// [`Error::Compacted`] for a request at `requested`.
    async fn compacted(&self, requested: Revision) -> Error {
        Error::Compacted {
            requested,
            compacted: self.compacted_revision(requested + 1).await,
        }
    }

    /// Opens an etcd watch delivering the changes under `full_prefix` from `after` on. It starts
    /// at `after` itself rather than after it so that etcd reports `after` being compacted; the
    /// caller drops the event at `after`.
    async fn open_watch(
        &self,
        full_prefix: &[u8],
        after: Revision,
    ) -> Result<etcd_client::WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after.max(1));
        let mut client = self.watcher();
        self.call(client.watch(full_prefix, Some(options)))
            .await
            .map_err(|f| f.into_error(None))
    }

    /// Converts one etcd event.
    fn to_event(&self, event: &etcd_client::Event) -> Result<WatchEvent> {
        let kv = event
            .kv()
            .ok_or_else(|| Error::Corrupt("etcd sent an event without a key".into()))?;
        let prev = event.prev_kv().map(|kv| self.to_kv(kv)).transpose()?;
        match event.event_type() {
            etcd_client::EventType::Put => Ok(WatchEvent::Put {
                kv: self.to_kv(kv)?,
                prev,
            }),
            etcd_client::EventType::Delete => {
                let revision = kv.mod_revision();
                // etcd leaves the previous value out only when it has been compacted meanwhile.
                let prev = prev.ok_or(Error::Compacted {
                    requested: revision - 1,
                    compacted: revision,
                })?;
                Ok(WatchEvent::Delete { prev, revision })
            }
        }
    }

    /// The task behind one watch stream: forwards events, reconnects when the connection
    /// breaks, and ends with an error only when history it needs is gone.
    async fn pump(
        self,
        full_prefix: Vec<u8>,
        mut last: Revision,
        mut watch: Option<etcd_client::WatchStream>,
        tx: mpsc::Sender<Result<WatchEvent>>,
    ) {
        let mut backoff = WATCH_RETRY_MIN;
        loop {
            let mut stream = match watch.take() {
                Some(stream) => stream,
                None => {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(WATCH_RETRY_MAX);
                    match self.open_watch(&full_prefix, last).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%error, "reopening an etcd watch failed");
                            continue;
                        }
                    }
                }
            };
            loop {
                let message = tokio::select! {
                    () = tx.closed() => return,
                    message = stream.message() => message,
                };
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(%error, "etcd watch broke; reconnecting");
                        break;
                    }
                };
                if response.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(Error::Compacted {
                            requested: last,
                            compacted: response.compact_revision(),
                        }))
                        .await;
                    return;
                }
                if response.canceled() {
                    tracing::debug!(reason = response.cancel_reason(), "etcd canceled a watch");
                    break;
                }
                backoff = WATCH_RETRY_MIN;
                for event in response.events() {
                    let revision = event.kv().map_or(0, |kv| kv.mod_revision());
                    if revision <= last {
                        continue;
                    }
                    let event = self.to_event(event);
                    let failed = event.is_err();
                    if tx.send(event).await.is_err() || failed {
                        return;
                    }
                    last = revision;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.kv();
        let response = self
            .call(kv.get(self.full_key(key), None))
            .await
            .map_err(|f| f.into_error(None))?;
        response.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn get_at(&self, keys: &[String], revision: Revision) -> Result<Vec<KeyValue>> {
        if revision <= 0 {
            return Ok(Vec::new()); // etcd reads 0 as "the latest"; revision 0 is the empty store.
        }
        let mut kv = self.kv();
        let mut found = Vec::with_capacity(keys.len());
        // One range per key, each at `revision`: etcd's reads at a revision are a snapshot.
        for key in keys {
            let options = GetOptions::new().with_revision(revision);
            let response = match self.call(kv.get(self.full_key(key), Some(options))).await {
                Ok(response) => response,
                Err(Failure::Compacted) => return Err(self.compacted(revision).await),
                Err(failure) => return Err(failure.into_error(Some(revision))),
            };
            if let Some(value) = response.kvs().first() {
                found.push(self.to_kv(value)?);
            }
        }
        Ok(found)
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage> {
        let full_prefix = self.full_key(prefix);
        let start = match &options.continue_after {
            Some(after) if after.as_str() >= prefix => {
                // The smallest key after `after`.
                let mut start = self.full_key(after);
                start.push(0);
                start
            }
            _ => full_prefix.clone(),
        };
        let mut get = GetOptions::new().with_range(prefix_end(&full_prefix));
        // A limit of 0 means none, as in Kubernetes and etcd.
        if let Some(limit) = options.limit.filter(|&l| l > 0) {
            get = get.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        match options.revision {
            // etcd reads 0 as "the latest"; revision 0 is the empty store.
            Some(revision) if revision <= 0 => {
                return Ok(ListPage {
                    items: Vec::new(),
                    revision: 0,
                    continue_after: None,
                    remaining: None,
                });
            }
            Some(revision) => get = get.with_revision(revision),
            None => {}
        }
        let mut kv = self.kv();
        let response = match self.call(kv.get(start, Some(get))).await {
            Ok(response) => response,
            Err(Failure::Compacted) => {
                let requested = options.revision.unwrap_or_default();
                return Err(self.compacted(requested).await);
            }
            Err(failure) => return Err(failure.into_error(options.revision)),
        };
        let items = response
            .kvs()
            .iter()
            .map(|kv| self.to_kv(kv))
            .collect::<Result<Vec<_>>>()?;
        let revision = match options.revision {
            Some(revision) => revision,
            None => header_revision(response.header())?,
        };
        let more = response.more();
        // `count` counts the whole range from the start key, this page included.
        let count = u64::try_from(response.count()).unwrap_or_default();
        Ok(ListPage {
            continue_after: if more {
                items.last().map(|kv| kv.key.clone())
            } else {
                None
            },
            remaining: more.then(|| count.saturating_sub(items.len() as u64)),
            items,
            revision,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value.clone(), None)]);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = header_revision(response.header())?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when(Self::guards(&full, expected))
            .and_then([TxnOp::put(
                full.clone(),
                value.clone(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Err(self.precondition_failed(key, expected, &response));
        }
        let prev = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Put(put) => put.prev_key().cloned(),
            _ => None,
        });
        let create_revision = prev
            .ok_or_else(|| Error::Corrupt(format!("etcd updated {key} without a previous value")))?
            .create_revision();
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: header_revision(response.header())?,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when(Self::guards(&full, expected))
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Err(self.precondition_failed(key, expected, &response));
        }
        let prev = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(delete) => delete.prev_kvs().first().cloned(),
            _ => None,
        });
        let prev = prev.ok_or_else(|| {
            Error::Corrupt(format!("etcd deleted {key} without a previous value"))
        })?;
        Ok(KeyValue {
            mod_revision: header_revision(response.header())?,
            ..self.to_kv(&prev)?
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // etcd reports a compacted start revision only on the stream, after the fact; the trait
        // promises the error from this call, so ask first with a read at `after`.
        let mut kv = self.kv();
        let check = GetOptions::new()
            .with_revision(after.max(1))
            .with_count_only();
        match self.call(kv.get(self.full_key(prefix), Some(check))).await {
            Ok(_) | Err(Failure::FutureRevision) => {}
            Err(Failure::Compacted) => return Err(self.compacted(after).await),
            Err(failure) => return Err(failure.into_error(None)),
        }
        let full_prefix = self.full_key(prefix);
        let stream = self.open_watch(&full_prefix, after).await?;
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        tokio::spawn(self.clone().pump(full_prefix, after, Some(stream), tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut kv = self.kv();
        // Not physical: etcd refuses reads below `revision` as soon as this returns, and the
        // space is reclaimed in the background.
        match self
            .call(kv.compact(revision, Some(CompactionOptions::new())))
            .await
        {
            // Compacting again at or below the compacted revision is a no-op, as in the embedded
            // store.
            Ok(_) | Err(Failure::Compacted) => Ok(()),
            Err(failure) => Err(failure.into_error(Some(revision))),
        }
    }

    async fn revision(&self) -> Result<Revision> {
        let mut kv = self.kv();
        let response = self
            .call(kv.get(self.full_key(""), Some(GetOptions::new().with_count_only())))
            .await
            .map_err(|f| f.into_error(None))?;
        header_revision(response.header())
    }

    async fn check(&self) -> Result<()> {
        // A read with the store's timeout, as kube-apiserver's etcd check is a Get.
        self.revision().await.map(drop)
    }

    async fn is_stale(&self, _key: &str) -> Result<bool> {
        // Values are stored as given.
        Ok(false)
    }
}

/// An etcd request's failure, with the two errors callers handle told apart.
#[derive(Debug)]
enum Failure {
    /// "mvcc: required revision has been compacted"
    Compacted,
    /// "mvcc: required revision is a future revision"
    FutureRevision,
    Other(Error),
}

impl From<etcd_client::Error> for Failure {
    fn from(error: etcd_client::Error) -> Self {
        // etcd-client exposes gRPC statuses only through their message; etcd's texts are stable
        // (they are its API's error values).
        let message = error.to_string();
        if message.contains("required revision has been compacted") {
            Self::Compacted
        } else if message.contains("required revision is a future revision") {
            Self::FutureRevision
        } else if let etcd_client::Error::GRpcStatus(status) = &error
            && (status.message().contains("request is too large")
                || status.message().contains("database space exceeded"))
        {
            Self::Other(Error::Rejected(status.message().to_owned()))
        } else {
            Self::Other(Error::Unavailable(format!("etcd: {message}")))
        }
    }
}

impl Failure {
    /// The store error, for a request at `revision` if it had one.
    fn into_error(self, revision: Option<Revision>) -> Error {
        match self {
            Self::Compacted => {
                Error::Unavailable("etcd: required revision has been compacted".into())
            }
            // Kubernetes answers "too large resource version" and lets the client retry.
            Self::FutureRevision => Error::Unavailable(match revision {
                Some(revision) => format!("revision {revision} is newer than etcd's"),
                None => "etcd: required revision is a future revision".into(),
            }),
            Self::Other(error) => error,
        }
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::Corrupt("etcd sent a response without a header".into()))
}

/// The end of the range of keys starting with `prefix`: `prefix` with its last byte below 0xff
/// incremented, or `\0` (no end) if there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
