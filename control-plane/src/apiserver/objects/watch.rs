//! Watches: the changes after a resource version as newline-delimited events, with bookmarks
//! and the watch-list protocol (`sendInitialEvents`).

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    response::Response,
};
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::{
    Api, ApiError, Filter, KindStrategy, Query, ResourceType, Result, Target, is_true, list,
    list_prefix, object_revision, parse_revision, streaming,
};
use crate::store::Revision;

/// One watch event line; with the kind's strategy (`as_table`), the object is a one-row Table
/// of the kind's columns (a custom kind's printer columns), as `kubectl get -w` asks for.
fn watch_event(
    resource: &ResourceType,
    as_table: Option<&dyn KindStrategy>,
    kind: &str,
    object: &Value,
) -> Bytes {
    let table;
    let object = match as_table {
        Some(strategy) if kind != "ERROR" => {
            let metadata = json!({ "resourceVersion": object["metadata"]["resourceVersion"] });
            table = strategy.table(resource, std::slice::from_ref(object), metadata);
            &table
        }
        _ => object,
    };
    // `{"type":…,"object":…}` written out: the object is shared, not copied into a wrapper.
    let mut line = format!(r#"{{"type":"{kind}","object":"#).into_bytes();
    serde_json::to_writer(&mut line, object).expect("a JSON value always serializes");
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// One change seen by a watch, as Kubernetes names them.
#[derive(Debug)]
///
/// Objects are shared (`Arc`): every watcher of a change, and every cache keeping it, holds the
/// same decoded copy.
pub enum Change {
    Added(Arc<Value>),
    Modified(Arc<Value>),
    Deleted(Arc<Value>),
    /// The watch cannot go on (e.g. the watcher fell behind compaction): relist.
    Error(ApiError),
}

impl Change {
    fn into_line(self, resource: &ResourceType, as_table: Option<&dyn KindStrategy>) -> Bytes {
        match self {
            Self::Added(o) => watch_event(resource, as_table, "ADDED", &o),
            Self::Modified(o) => watch_event(resource, as_table, "MODIFIED", &o),
            Self::Deleted(o) => watch_event(resource, as_table, "DELETED", &o),
            Self::Error(e) => watch_event(resource, None, "ERROR", &e.status()),
        }
    }
}

/// A watch: the objects that matched at `revision` (when asked to start with them) and the
/// changes after it.
pub struct Watch {
    pub initial: Vec<Arc<Value>>,
    pub revision: Revision,
    pub changes: futures::stream::BoxStream<'static, Change>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("initial", &self.initial.len())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// With every matching object as it is now (a consistent list), then the changes after.
    Now,
    /// With every matching object at whatever revision the server has at hand, then the
    /// changes after it: Kubernetes' `resourceVersion=0`, what a kubelet's reflector asks for
    /// when it (re)lists, so that thousands of agents reconnecting at once are answered from
    /// the pod index without waiting for it to catch up with the store.
    Any,
    /// With the changes after this revision only.
    After(Revision),
}

/// Watches the objects of `target` that `filter` selects, from `start`. An object leaving the
/// selection is `Deleted` to this watcher.
pub async fn watch_changes(
    api: &Api,
    target: &Target,
    filter: Filter,
    start: Start,
) -> Result<Watch> {
    let resource = target.resource;
    let (initial, revision) = match start {
        Start::After(rv) => (Vec::new(), rv),
        Start::Now | Start::Any => {
            let mut query = filter.to_query();
            if start == Start::Any {
                query.insert("resourceVersion".into(), "0".into());
            }
            let mut listing = list(api, target, &query).await?;
            let rv = parse_revision(
                listing["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0"),
            )?;
            let items = listing["items"]
                .as_array_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            (items.into_iter().map(Arc::new).collect(), rv)
        }
    };
    let changes = api
        .fanout
        .watch(
            &api.store,
            &api.decoded,
            resource,
            list_prefix(target),
            filter,
            revision,
        )
        .await?;
    Ok(Watch {
        initial,
        revision,
        changes,
    })
}

/// Streams changes as newline-delimited watch events. Without a resource version (or with "0")
/// it starts with an ADDED event per existing object, as Kubernetes does.
pub(super) async fn watch(
    api: &Arc<Api>,
    target: &Target,
    query: &Query,
    as_table: bool,
) -> Result<Response> {
    let resource = target.resource;
    let filter = Filter::from_query(query)?;
    let bookmarks = is_true(query.get("allowWatchBookmarks"));
    let send_initial_events = is_true(query.get("sendInitialEvents"));
    if send_initial_events {
        check_watch_list(query, bookmarks)?;
    }
    let start = match query.get("resourceVersion").map(String::as_str) {
        // A watch-list starts from the objects as they are, whatever version it names.
        _ if send_initial_events => Start::Now,
        None | Some("") => Start::Now,
        Some("0") => Start::Any,
        Some(rv) => Start::After(parse_revision(rv)?),
    };
    let watch = match watch_changes(api, target, filter, start).await {
        Ok(watch) => watch,
        // Kubernetes answers an expired watch with 200 and a single 410 ERROR event.
        Err(e) if e.reason == "Expired" => {
            return Ok(streaming(Body::from(
                Change::Error(e).into_line(resource, None),
            )));
        }
        Err(e) => return Err(e),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    // The newest version the watcher has been sent, for bookmarks.
    let latest = Arc::new(std::sync::atomic::AtomicI64::new(watch.revision));
    let tabled = as_table.then(|| api.registry.strategy_for(resource));
    let line = {
        let latest = Arc::clone(&latest);
        move |change: Change| {
            if let Change::Added(o) | Change::Modified(o) | Change::Deleted(o) = &change
                && let Ok(Some(revision)) = object_revision(o)
            {
                latest.fetch_max(revision, std::sync::atomic::Ordering::Relaxed);
            }
            change.into_line(resource, tabled.as_deref())
        }
    };
    let mut first: Vec<Bytes> = watch
        .initial
        .into_iter()
        .map(|o| line.clone()(Change::Added(o)))
        .collect();
    // With `sendInitialEvents` the initial objects end with a bookmark saying so (the
    // watch-list protocol: a list delivered as a watch).
    if send_initial_events {
        first.push(bookmark(resource, watch.revision, true));
    }
    let changes = watch.changes.map(line);
    let events: futures::stream::BoxStream<'static, Bytes> = if bookmarks {
        // Bookmarks tell the watcher how far it has come even when nothing it watches
        // changes, so that it can resume from there rather than relist.
        let ticks = futures::stream::unfold((), |()| async {
            tokio::time::sleep(BOOKMARK_INTERVAL).await;
            Some(((), ()))
        })
        .map(move |()| {
            let revision = latest.load(std::sync::atomic::Ordering::Relaxed);
            bookmark(resource, revision, false)
        });
        futures::stream::iter(first)
            .chain(futures::stream::select(changes, ticks))
            .boxed()
    } else {
        futures::stream::iter(first).chain(changes).boxed()
    };
    let lines = events.map(Ok::<_, std::convert::Infallible>);
    let body = match timeout {
        Some(t) => Body::from_stream(lines.take_until(tokio::time::sleep(t))),
        None => Body::from_stream(lines),
    };
    Ok(streaming(body))
}

/// How often a watch that allows bookmarks gets one (kube-apiserver sends one about a minute
/// apart, and before a watch times out).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// A `BOOKMARK` event: an object of the watched kind with only its resource version (and, at
/// the end of a watch-list's initial objects, the `k8s.io/initial-events-end` annotation).
fn bookmark(resource: &ResourceType, revision: Revision, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": revision.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = json!({
        "kind": resource.kind,
        "apiVersion": resource.api_version(),
        "metadata": metadata,
    });
    watch_event(resource, None, "BOOKMARK", &object)
}

/// What kube-apiserver requires of a watch with `sendInitialEvents=true`: bookmarks allowed
/// (the end of the initial events is one) and `resourceVersionMatch=NotOlderThan`.
fn check_watch_list(query: &Query, bookmarks: bool) -> Result<()> {
    let mut causes = Vec::new();
    if query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        causes.push((
            "resourceVersionMatch".to_owned(),
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".to_owned(),
        ));
    }
    if !bookmarks {
        causes.push((
            "allowWatchBookmarks".to_owned(),
            "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true".to_owned(),
        ));
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", &causes))
}
