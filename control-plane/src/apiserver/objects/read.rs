//! Reading objects: get, and list with selectors and `limit`/`continue` paging.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    Api, ApiError, FieldSelector, LabelSelector, Query, ResourceType, Result, Target,
    parse_revision, present,
};
use crate::apiserver::{
    fanout::INDEXED_FIELD,
    node_index::{self, PODS_PREFIX},
    resources::StorageKeys as _,
};
use crate::store::{ListOptions, Revision};

pub async fn get(
    api: &Api,
    resource: &ResourceType,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value> {
    let kv = api
        .store
        .get(&resource.key(namespace, name))
        .await
        .map_err(|e| ApiError::storage(&e))?
        .ok_or_else(|| ApiError::not_found(resource.plural, resource.group, name))?;
    present(resource, &kv)
}

pub(super) fn list_prefix(target: &Target) -> String {
    match &target.namespace {
        Some(ns) => format!("{}{ns}/", target.resource.key_prefix()),
        None => target.resource.key_prefix(),
    }
}

/// The opaque `continue` token: where the next page starts and the revision it reads at.
fn encode_continue(revision: Revision, after: &str) -> String {
    let token = json!({ "rv": revision, "start": after }).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

fn decode_continue(token: &str) -> Result<(Revision, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match (value["rv"].as_i64(), value["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_owned())),
        _ => Err(bad()),
    }
}

/// Which objects a list or watch selects: its label and field selectors.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    label_selector: String,
    field_selector: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// A filter from selector strings as they appear in query parameters.
    pub fn new(label_selector: &str, field_selector: &str) -> Result<Self> {
        Ok(Self {
            label_selector: label_selector.to_owned(),
            field_selector: field_selector.to_owned(),
            labels: LabelSelector::parse(label_selector)?,
            fields: FieldSelector::parse(field_selector)?,
        })
    }

    pub(super) fn from_query(query: &Query) -> Result<Self> {
        Self::new(
            query.get("labelSelector").map_or("", String::as_str),
            query.get("fieldSelector").map_or("", String::as_str),
        )
    }

    pub(super) fn to_query(&self) -> Query {
        [
            ("labelSelector", &self.label_selector),
            ("fieldSelector", &self.field_selector),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }

    /// The value the field selector requires of the field at `path`, if it requires one.
    pub fn required_field(&self, path: &[&str]) -> Option<&str> {
        self.fields.required(path)
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// What a list asks for, from its query.
struct ListRequest {
    filter: Filter,
    /// `limit` (`None`: every match).
    limit: Option<usize>,
    /// The revision to read at: a continue token's, or an `Exact` resource version.
    revision: Option<Revision>,
    /// The key a continue token resumes after.
    after: Option<String>,
    /// `resourceVersion=0` (Kubernetes' `Any`): any recent state will do, so the node index
    /// answers at the revision it has reached instead of waiting to reach the store's.
    any: bool,
}

impl ListRequest {
    fn from_query(query: &Query) -> Result<Self> {
        let filter = Filter::from_query(query)?;
        let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
            None | Some(Ok(0)) => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                return Err(ApiError::bad_request(
                    "limit must be a non-negative integer",
                ));
            }
        };
        let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
        let (revision, after) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let (rv, start) = decode_continue(token)?;
                (Some(rv), Some(start))
            }
            None => {
                let rv = query
                    .get("resourceVersion")
                    .filter(|rv| !rv.is_empty() && *rv != "0")
                    .map(|rv| parse_revision(rv))
                    .transpose()?;
                // Only `Exact` pins the read; by default (`NotOlderThan`) the latest state
                // satisfies any resource version the client has seen.
                (rv.filter(|_| exact), None)
            }
        };
        let any = after.is_none()
            && !exact
            && query.get("resourceVersion").map(String::as_str) == Some("0");
        Ok(Self {
            filter,
            limit,
            revision,
            after,
            any,
        })
    }

    /// A list from the start at the latest revision, which the node index may answer.
    fn is_fresh(&self) -> bool {
        self.revision.is_none() && self.after.is_none()
    }
}

/// Lists matching objects at one revision, paging with `limit` and `continue`.
pub async fn list(api: &Api, target: &Target, query: &Query) -> Result<Value> {
    let resource = target.resource;
    let request = ListRequest::from_query(query)?;
    if request.is_fresh()
        && let Some(list) =
            list_one_node(api, target, &request.filter, request.limit, request.any).await?
    {
        return Ok(list);
    }
    let ListRequest {
        filter,
        limit,
        mut revision,
        mut after,
        ..
    } = request;
    let prefix = list_prefix(target);
    // A node's pods read by a scan (the index could not answer) hold every pod decoded.
    let _scan = match filter.required_field(INDEXED_FIELD) {
        Some(_) if prefix.starts_with(PODS_PREFIX) => Some(api.pods_by_node.scan_permit().await),
        _ => None,
    };
    let mut items = Vec::new();
    let (continue_token, remaining) = loop {
        let want = limit.map(|l| l - items.len());
        let page = api
            .store
            .list(
                &prefix,
                &ListOptions {
                    limit: want,
                    continue_after: after.clone(),
                    revision,
                },
            )
            .await
            .map_err(|e| ApiError::storage(&e))?;
        revision = Some(page.revision);
        let last_key = page.items.last().map(|kv| kv.key.clone());
        for kv in &page.items {
            let object = present(resource, kv)?;
            if filter.matches(&object) {
                items.push(object);
            }
        }
        match (page.continue_after, limit) {
            (None, _) => break (None, None),
            (Some(_), Some(limit)) if items.len() >= limit => {
                let token = encode_continue(page.revision, &last_key.unwrap_or_default());
                // Exact only without selectors: with them the store cannot count matches.
                let remaining = (filter.labels.is_empty() && filter.fields.is_empty())
                    .then_some(page.remaining)
                    .flatten();
                break (Some(token), remaining);
            }
            (Some(next), _) => after = Some(next),
        }
    };
    Ok(list_body(
        resource,
        revision.unwrap_or_default(),
        items,
        continue_token,
        remaining,
    ))
}

/// Store keys read at a time by a streamed list: what it holds in memory at once.
const STREAM_PAGE: usize = 500;

/// A whole list (no `limit`) as JSON written while it is read: the store is read in pages of
/// [`STREAM_PAGE`] at the first page's revision (one snapshot, as an unpaged read gives), each
/// page presented, filtered and encoded before the next is read. Memory holds one page, not
/// every object of the kind, however many there are. `None` for lists [`list`] answers: with
/// `limit` or `continue` (one page at most), or a node's pods (the node index reads only those).
///
/// A store error on the first page is the request's error; one on a later page (the revision
/// compacted under a long read) can only end the body early, which the client sees as a
/// truncated response rather than a short list.
pub async fn list_streamed(
    api: &Api,
    target: &Target,
    query: &Query,
) -> Result<Option<axum::body::Body>> {
    let request = ListRequest::from_query(query)?;
    if request.limit.is_some() || request.after.is_some() {
        return Ok(None);
    }
    if request.filter.required_field(INDEXED_FIELD).is_some()
        && list_prefix(target).starts_with(PODS_PREFIX)
    {
        return Ok(None);
    }
    let resource = target.resource;
    let prefix = list_prefix(target);
    let store = std::sync::Arc::clone(&api.store);
    let read = move |revision: Option<Revision>, after: Option<String>| {
        let (store, prefix) = (std::sync::Arc::clone(&store), prefix.clone());
        async move {
            let options = ListOptions {
                limit: Some(STREAM_PAGE),
                continue_after: after,
                revision,
            };
            store.list(&prefix, &options).await
        }
    };
    let first = read(request.revision, None)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    let revision = first.revision;
    let mut head = serde_json::to_vec(&json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": { "resourceVersion": revision.to_string() },
    }))
    .expect("a JSON value always serializes");
    // The list's fields, then `items`, last so that each page can be appended to it.
    head.pop();
    head.extend_from_slice(br#","items":["#);
    let filter = request.filter;
    // Each step encodes one page and reads the next; `None` once the closing bytes are out.
    let pages = futures::stream::unfold(
        (Some(first), true, Some(head)),
        move |(page, mut first_item, head)| {
            let (read, filter) = (read.clone(), filter.clone());
            async move {
                let page = page?;
                let mut chunk = head.unwrap_or_default();
                for kv in &page.items {
                    let object = match present(resource, kv) {
                        Ok(object) => object,
                        Err(e) => {
                            tracing::warn!(key = %kv.key, error = %e.message, "listing");
                            return Some((
                                Err(std::io::Error::other(e.message)),
                                (None, false, None),
                            ));
                        }
                    };
                    if !filter.matches(&object) {
                        continue;
                    }
                    if !std::mem::take(&mut first_item) {
                        chunk.push(b',');
                    }
                    serde_json::to_writer(&mut chunk, &object)
                        .expect("a JSON value always serializes");
                }
                let next = match page.continue_after {
                    None => {
                        chunk.extend_from_slice(b"]}");
                        None
                    }
                    Some(after) => match read(Some(revision), Some(after)).await {
                        Ok(next) => Some(next),
                        Err(e) => {
                            tracing::warn!(error = %e, "a streamed list ended early");
                            return Some((
                                Err(std::io::Error::other(e.to_string())),
                                (None, false, None),
                            ));
                        }
                    },
                };
                Some((Ok(axum::body::Bytes::from(chunk)), (next, first_item, None)))
            }
        },
    );
    Ok(Some(axum::body::Body::from_stream(pages)))
}

fn list_body(
    resource: &ResourceType,
    revision: Revision,
    items: Vec<Value>,
    continue_token: Option<String>,
    remaining: Option<u64>,
) -> Value {
    let mut metadata = json!({ "resourceVersion": revision.to_string() });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    })
}

/// A list of the pods on one node (`fieldSelector=spec.nodeName=X`, at the latest revision,
/// from the start), read through the [`node_index`]: the node's pods only, at the revision the
/// index is at, instead of every pod. `None` when the index cannot answer (not caught up, or
/// more matches than `limit`, which need the scan's `continue` token): the list then scans.
/// With `any` (`resourceVersion=0`) the index answers at whatever revision it has reached.
async fn list_one_node(
    api: &Api,
    target: &Target,
    filter: &Filter,
    limit: Option<usize>,
    any: bool,
) -> Result<Option<Value>> {
    let prefix = list_prefix(target);
    let Some(node) = filter.required_field(INDEXED_FIELD) else {
        return Ok(None);
    };
    if !prefix.starts_with(PODS_PREFIX) {
        return Ok(None);
    }
    // The store's revision now: a consistent list must show every write the client may have
    // seen. While thousands of agents reconnect, the index can lag the store by seconds (its
    // watch waits its turn behind their requests); their relists ask for `Any` and do not wait.
    let current = if any {
        0
    } else {
        api.store
            .revision()
            .await
            .map_err(|e| ApiError::storage(&e))?
    };
    let Some((revision, keys)) = api
        .pods_by_node
        .pods_on(&api.store, &prefix, node, current, node_index::CATCH_UP)
        .await
    else {
        return Ok(None);
    };
    let mut items = Vec::with_capacity(keys.len());
    for kv in api
        .store
        .get_at(&keys, revision)
        .await
        .map_err(|e| ApiError::storage(&e))?
    {
        let object = present(target.resource, &kv)?;
        if filter.matches(&object) {
            items.push(object);
        }
    }
    if limit.is_some_and(|limit| items.len() > limit) {
        return Ok(None);
    }
    Ok(Some(list_body(
        target.resource,
        revision,
        items,
        None,
        None,
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::apiserver::objects;
    use crate::testing::core_target as target;

    fn pod(name: &str, node: &str, app: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        })
    }

    async fn names(api: &Api, namespace: Option<&str>, query: &[(&str, &str)]) -> Value {
        let query: Query = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let list = list(api, &target(api, "pods", namespace), &query)
            .await
            .unwrap();
        let names: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().unwrap(),
                    p["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        json!({"names": names, "rv": list["metadata"]["resourceVersion"], "continue": list["metadata"]["continue"]})
    }

    /// An API over a fresh store, with these namespaces.
    async fn api_with_namespaces(names: &[&str]) -> (tempfile::TempDir, Arc<Api>) {
        let (dir, api) = crate::testing::api().await;
        let api = Arc::new(api);
        for ns in names {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            objects::create(&api, &target(&api, "namespaces", None), namespace)
                .await
                .unwrap();
        }
        (dir, api)
    }

    #[tokio::test]
    async fn a_nodes_pods_are_listed_through_the_index_as_a_scan_lists_them() {
        let (_dir, api) = api_with_namespaces(&["a", "b"]).await;
        for (ns, name, node, app) in [
            ("a", "p2", "n1", "web"),
            ("a", "p1", "n1", "db"),
            ("b", "p3", "n1", "web"),
            ("a", "p4", "n2", "web"),
            ("a", "p5", "", "web"),
        ] {
            objects::create(&api, &target(&api, "pods", Some(ns)), pod(name, node, app))
                .await
                .unwrap();
        }
        let on = |node: &str| format!("spec.nodeName={node}");
        // In key order, across namespaces or in one, with other selectors applied after.
        let n1 = on("n1");
        let listed = names(&api, None, &[("fieldSelector", &n1)]).await;
        assert_eq!(listed["names"], json!(["a/p1", "a/p2", "b/p3"]));
        assert_eq!(
            names(&api, Some("a"), &[("fieldSelector", &n1)]).await["names"],
            json!(["a/p1", "a/p2"])
        );
        assert_eq!(
            names(
                &api,
                None,
                &[("fieldSelector", &n1), ("labelSelector", "app=web")]
            )
            .await["names"],
            json!(["a/p2", "b/p3"])
        );
        assert_eq!(
            names(
                &api,
                None,
                &[("fieldSelector", &format!("{n1},metadata.namespace=b"))]
            )
            .await["names"],
            json!(["b/p3"])
        );
        assert_eq!(
            names(&api, None, &[("fieldSelector", "spec.nodeName=")]).await["names"],
            json!(["a/p5"])
        );
        assert_eq!(
            names(&api, None, &[("fieldSelector", "spec.nodeName=nowhere")]).await["names"],
            json!([])
        );
        // Every write is seen by the next list: a pod bound, a pod deleted.
        super::super::binding::bind(
            &api,
            &target(&api, "pods", Some("a")),
            "p5",
            &json!({"target": {"kind": "Node", "name": "n1"}}),
            &Default::default(),
        )
        .await
        .unwrap();
        let pods = target(&api, "pods", None).resource;
        let written = get(&api, pods, Some("a"), "p5").await.unwrap();
        let listed = names(&api, None, &[("fieldSelector", &n1)]).await;
        assert_eq!(listed["names"], json!(["a/p1", "a/p2", "a/p5", "b/p3"]));
        let rv = |v: &Value| v.as_str().unwrap().parse::<i64>().unwrap();
        assert!(rv(&listed["rv"]) >= rv(&written["metadata"]["resourceVersion"]));
        objects::delete(
            &api,
            &target(&api, "pods", Some("a")),
            "p1",
            &json!({"gracePeriodSeconds": 0}),
        )
        .await
        .unwrap();
        assert_eq!(
            names(&api, None, &[("fieldSelector", &n1)]).await["names"],
            json!(["a/p2", "a/p5", "b/p3"])
        );
        // `resourceVersion=0` (any state will do) is answered through the index too, and by a
        // state at least as new as the last list's here, where the index keeps up.
        let any = names(
            &api,
            None,
            &[("fieldSelector", &n1), ("resourceVersion", "0")],
        )
        .await;
        assert_eq!(any["names"], json!(["a/p2", "a/p5", "b/p3"]));
        // More than a page: the scan answers, with its continue token.
        let first = names(&api, None, &[("fieldSelector", &n1), ("limit", "2")]).await;
        assert_eq!(first["names"], json!(["a/p2", "a/p5"]));
        let token = first["continue"].as_str().expect("a continue token");
        let rest = names(
            &api,
            None,
            &[("fieldSelector", &n1), ("limit", "2"), ("continue", token)],
        )
        .await;
        assert_eq!(rest["names"], json!(["b/p3"]));
    }

    /// The body of a streamed list, parsed.
    async fn streamed(api: &Api, target: &Target, query: &[(&str, &str)]) -> Value {
        use http_body_util::BodyExt as _;
        let query: Query = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = list_streamed(api, target, &query)
            .await
            .unwrap()
            .expect("a whole list streams");
        let bytes = body.collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_whole_list_streams_page_by_page_from_one_snapshot_as_it_lists() {
        let (_dir, api) = api_with_namespaces(&["s", "t"]).await;
        // More than two store pages, written concurrently so that they commit in groups.
        let count = 2 * STREAM_PAGE + 100;
        let creates = (0..count).map(|i| {
            let (api, ns) = (Arc::clone(&api), if i % 10 == 0 { "t" } else { "s" });
            async move {
                let map = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("m{i:04}"), "labels": {"even": (i % 2 == 0).to_string()}},
                    "data": {"i": i.to_string()},
                });
                objects::create(&api, &target(&api, "configmaps", Some(ns)), map)
                    .await
                    .unwrap();
            }
        });
        futures::future::join_all(creates).await;
        for (namespace, query) in [
            (None, vec![]),
            (Some("s"), vec![]),
            (None, vec![("labelSelector", "even=true")]),
            (Some("t"), vec![("fieldSelector", "metadata.name!=m0000")]),
            (None, vec![("labelSelector", "even=maybe")]),
        ] {
            let target = target(&api, "configmaps", namespace);
            let owned: Query = query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let whole = list(&api, &target, &owned).await.unwrap();
            let streamed = streamed(&api, &target, &query).await;
            assert_eq!(streamed, whole, "{namespace:?} {query:?}");
        }
        let everything = streamed(&api, &target(&api, "configmaps", None), &[]).await;
        let own = everything["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["metadata"]["name"].as_str().unwrap().starts_with('m'))
            .count();
        assert_eq!(own, count);

        // The body is read while writes go on: its later pages show the revision of its first
        // (an object deleted and one created on the last page, after the first was read).
        let configmaps = target(&api, "configmaps", Some("s"));
        let body = list_streamed(&api, &configmaps, &Query::new())
            .await
            .unwrap()
            .unwrap();
        objects::delete(&api, &configmaps, "m1099", &json!({}))
            .await
            .unwrap();
        let late =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "zz-late"}});
        objects::create(&api, &configmaps, late).await.unwrap();
        use http_body_util::BodyExt as _;
        let listed: Value =
            serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
        let names: Vec<&str> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["metadata"]["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"m1099"));
        assert!(!names.contains(&"zz-late"));
        let after = list(&api, &configmaps, &Query::new()).await.unwrap();
        assert!(
            listed["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
                < after["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
        );

        // What a page answers is not streamed: a limit, a continue token, a node's pods.
        for query in [
            vec![("limit", "10")],
            vec![("fieldSelector", "spec.nodeName=n1")],
        ] {
            let owned: Query = query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let pods = target(&api, "pods", None);
            assert!(list_streamed(&api, &pods, &owned).await.unwrap().is_none());
        }
    }
}
