//! `/openapi/v2` and `/openapi/v3`, as kube-apiserver serves them (kube-openapi's handlers):
//! the schema of every served kind, which `kubectl explain` reads (v3), and which `kubectl apply`
//! and `create` validate a `kind: List` against on the client (v2, in gnostic's protobuf form).
//!
//! The built-in kinds' documents are built once, on first use; a custom group version's is
//! built from its CRDs when asked for. Each has an
//! ETag that is the SHA-512 of its bytes in upper-case hex, kube-openapi's: a matching
//! `If-None-Match` gets a 304, and a v3 document fetched by its `?hash=` URL from the index is
//! immutable (`Cache-Control: public, immutable`), so clients' disk caches never ask again.

mod fields;
mod gnostic;
mod schemas;
mod v2;
mod v3;

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, OnceLock},
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{Api, custom_resources::CustomVersion, error::ApiError, resources::ResourceType};
use schemas::Catalog;
use serde_json::Value;

/// JSON, what kubectl asks v3 documents and the v3 index in.
const JSON: &str = "application/json";
/// The protobuf form of v2 (gnostic's `openapi.v2.Document`), what kubectl asks v2 in.
const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// Its other spelling, which kube-apiserver also accepts and answers both with: Go's
/// `mime.ParseMediaType` rejects the `@`, so client-go fails on a response labelled with it.
const V2_PROTOBUF_DOTTED: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The definitions every document draws from.
static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::generate);

fn catalog() -> &'static Catalog {
    &CATALOG
}

/// The fields of a built-in object its kind's schema has no place for (see [`fields`]).
pub fn unknown_fields(resource: &ResourceType, object: &serde_json::Value) -> Vec<String> {
    fields::unknown(catalog(), resource, object)
}

/// The path of one object of `r`, as the documents list it.
fn item_path(r: &ResourceType) -> String {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

/// kube-apiserver's operation id: `patchAppsV1NamespacedDeployment`, `replaceCoreV1Node`.
fn operation_id(verb: &str, r: &ResourceType) -> String {
    let group = if r.group.is_empty() { "core" } else { r.group };
    let mut id = verb.to_owned();
    for word in group.trim_end_matches(".k8s.io").split('.') {
        id.push_str(&capitalized(word));
    }
    id.push_str(&capitalized(r.version));
    if r.namespaced {
        id.push_str("Namespaced");
    }
    id.push_str(r.kind);
    id
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The query parameters of a write (`fieldValidation` is what tells kubectl the server
/// validates fields itself, so `kubectl apply` sends `fieldValidation=Strict` instead of
/// validating on the client).
const WRITE_QUERY_PARAMETERS: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];

/// The content types a PATCH takes.
const PATCH_CONTENT_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// One document's bytes and ETag.
#[derive(Debug)]
struct Served {
    /// Shared by every response (cloning it does not copy).
    body: Bytes,
    /// Unquoted, as in the index's `?hash=`.
    etag: String,
}

impl Served {
    fn json(value: &serde_json::Value) -> Self {
        Self::with_etag(
            serde_json::to_vec(value).expect("a JSON value serializes"),
            None,
        )
    }

    /// `etag` defaults to the bytes' own; the protobuf form of v2 shares its JSON's, as
    /// kube-openapi's does.
    fn with_etag(body: Vec<u8>, etag: Option<&str>) -> Self {
        let etag = etag.map_or_else(|| etag_of(&body), str::to_owned);
        Self {
            body: body.into(),
            etag,
        }
    }
}

/// kube-openapi's ETag: SHA-512, upper-case hex.
fn etag_of(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA512, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

/// Every document, built together on first use.
#[derive(Debug)]
struct Documents {
    /// The built-in kinds' v2 document, which custom kinds are added to.
    swagger: Value,
    v2_json: Served,
    v2_protobuf: Served,
    v3_index: Served,
    /// By group version path (`api/v1`, `apis/apps/v1`).
    v3: BTreeMap<String, Served>,
}

impl Documents {
    fn build() -> Self {
        let catalog = catalog();
        let swagger = v2::document(catalog);
        let v2_json = Served::json(&swagger);
        let v2_protobuf = Served::with_etag(gnostic::document(&swagger), Some(&v2_json.etag));
        let v3: BTreeMap<String, Served> = v3::group_versions()
            .into_iter()
            .map(|(group, version)| {
                let document = v3::document(catalog, group, version);
                (v3::path_of(group, version), Served::json(&document))
            })
            .collect();
        let index = v3::index(
            v3.iter()
                .map(|(path, doc)| (path.as_str(), doc.etag.as_str())),
        );
        Self {
            swagger,
            v2_json,
            v2_protobuf,
            v3_index: Served::json(&index),
            v3,
        }
    }
}

static DOCUMENTS: OnceLock<Documents> = OnceLock::new();

/// The documents, built off the async workers the first time (it takes a while).
async fn documents() -> &'static Documents {
    if let Some(documents) = DOCUMENTS.get() {
        return documents;
    }
    tokio::task::spawn_blocking(|| DOCUMENTS.get_or_init(Documents::build))
        .await
        .expect("building the OpenAPI documents does not panic")
}

/// `GET /openapi/v2`: JSON or gnostic protobuf, by `Accept`; with the custom kinds served now.
pub async fn v2(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let documents = documents().await;
    let custom = api.resources.custom.versions();
    let with_custom;
    let (json, protobuf) = if custom.is_empty() {
        (&documents.v2_json, &documents.v2_protobuf)
    } else {
        with_custom = custom_v2(documents, custom).await;
        (&with_custom.0, &with_custom.1)
    };
    match negotiate(&headers, &[JSON, V2_PROTOBUF, V2_PROTOBUF_DOTTED]) {
        Some(JSON) => serve(json, JSON, &headers, Caching::Revalidate),
        Some(_) => serve(protobuf, V2_PROTOBUF_DOTTED, &headers, Caching::Revalidate),
        None => not_acceptable(),
    }
}

/// The v2 document with `custom` kinds, JSON and protobuf: built once per set of custom
/// schemas (the last one is kept), off the async workers.
async fn custom_v2(
    documents: &'static Documents,
    custom: Vec<Arc<CustomVersion>>,
) -> Arc<(Served, Served)> {
    /// The schemas' hash, and the documents built for them.
    type Built = (String, Arc<(Served, Served)>);
    static LAST: std::sync::Mutex<Option<Built>> = std::sync::Mutex::new(None);
    let key = {
        let mut hashed = Vec::new();
        for c in &custom {
            hashed.extend_from_slice(c.info.group.as_bytes());
            hashed.extend_from_slice(c.info.version.as_bytes());
            hashed.extend_from_slice(c.info.kind.as_bytes());
            hashed.extend_from_slice(c.schema.to_string().as_bytes());
        }
        etag_of(&hashed)
    };
    if let Some((last_key, served)) = LAST.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        && *last_key == key
    {
        return Arc::clone(served);
    }
    let built = tokio::task::spawn_blocking(move || {
        let swagger = v2::with_custom(&documents.swagger, &custom);
        let json = Served::json(&swagger);
        let protobuf = Served::with_etag(gnostic::document(&swagger), Some(&json.etag));
        Arc::new((json, protobuf))
    })
    .await
    .expect("building the OpenAPI v2 document does not panic");
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, Arc::clone(&built)));
    built
}

/// `GET /openapi/v3`: where each group version's document is, by a URL carrying its hash.
pub async fn v3_index(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let documents = documents().await;
    let custom = custom_documents(&api);
    if custom.is_empty() {
        return serve(&documents.v3_index, JSON, &headers, Caching::Revalidate);
    }
    let index = v3::index(
        documents
            .v3
            .iter()
            .chain(custom.iter())
            .map(|(path, doc)| (path.as_str(), doc.etag.as_str())),
    );
    serve(&Served::json(&index), JSON, &headers, Caching::Revalidate)
}

/// The documents of the custom group versions served now, built from their CRDs' schemas.
fn custom_documents(api: &Api) -> BTreeMap<String, Served> {
    let mut by_group_version: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for version in api.resources.custom.versions() {
        let path = v3::path_of(version.info.group, version.info.version);
        by_group_version.entry(path).or_default().push(version);
    }
    by_group_version
        .into_iter()
        .map(|(path, kinds)| {
            let document = v3::custom_document(catalog(), &kinds);
            (path, Served::json(&document))
        })
        .collect()
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`: one group version's
/// document. With the `?hash=` of the index it is immutable; with a stale hash it redirects
/// to the current one (301), as kube-openapi does.
pub async fn v3_group_version(
    State(api): State<Arc<Api>>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let documents = documents().await;
    let custom;
    let document = match documents.v3.get(&path) {
        Some(document) => document,
        None => {
            custom = custom_documents(&api);
            let Some(document) = custom.get(&path) else {
                return ApiError::no_route(&format!("/openapi/v3/{path}")).into_response();
            };
            document
        }
    };
    if negotiate(&headers, &[JSON]).is_none() {
        return not_acceptable();
    }
    let hash = query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "hash")
            .map(|(_, value)| value.into_owned())
    });
    match hash {
        None => serve(document, JSON, &headers, Caching::Revalidate),
        Some(hash) if hash == document.etag => serve(document, JSON, &headers, Caching::Immutable),
        Some(_) => Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header(header::LOCATION, v3::url_of(&path, &document.etag))
            .body(Body::empty())
            .expect("a valid response"),
    }
}

/// How long a client may keep a document without asking again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caching {
    /// Until it changes: clients revalidate with `If-None-Match`.
    Revalidate,
    /// For good: its URL names its hash.
    Immutable,
}

fn serve(document: &Served, content_type: &str, request: &HeaderMap, caching: Caching) -> Response {
    let etag = format!("\"{}\"", document.etag);
    let not_modified = if_none_match(request, &etag);
    let mut response = if not_modified {
        Response::builder().status(StatusCode::NOT_MODIFIED)
    } else {
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
    }
    .header(header::ETAG, &etag)
    // The Accept header chooses between encodings of one URL.
    .header(header::VARY, "Accept");
    if caching == Caching::Immutable {
        // kube-openapi: a year from now, `time.RFC1123`.
        let expires = chrono::Utc::now()
            .checked_add_months(chrono::Months::new(12))
            .expect("a year from now is a date");
        response = response
            .header(header::CACHE_CONTROL, "public, immutable")
            .header(
                header::EXPIRES,
                expires.format("%a, %d %b %Y %H:%M:%S UTC").to_string(),
            );
    }
    let body = if not_modified {
        Body::empty()
    } else {
        Body::from(document.body.clone())
    };
    response.body(body).expect("a valid response")
}

/// Whether `If-None-Match` names `etag` (quoted) or is `*`; weak tags compare equal, as Go's
/// `http.ServeContent` compares them.
fn if_none_match(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// The first of `offered` that `Accept` takes, clauses by descending `q` (`*/*` when absent).
fn negotiate<'a>(request: &HeaderMap, offered: &[&'a str]) -> Option<&'a str> {
    let accept = request
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .unwrap_or("*/*");
    let mut clauses: Vec<(&str, f32)> = accept
        .split(',')
        .map(|clause| {
            let mut parts = clause.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let q = parts
                .find_map(|p| p.strip_prefix("q="))
                .and_then(|q| q.parse().ok())
                .unwrap_or(1.0);
            (media, q)
        })
        .filter(|(_, q)| *q > 0.0)
        .collect();
    clauses.sort_by(|a, b| b.1.total_cmp(&a.1));
    clauses.iter().find_map(|(media, _)| {
        let (ty, sub) = media.split_once('/')?;
        offered.iter().copied().find(|offer| {
            let (offer_ty, offer_sub) = offer.split_once('/').expect("a media type");
            (ty == "*" || ty == offer_ty) && (sub == "*" || sub == offer_sub)
        })
    })
}

fn not_acceptable() -> Response {
    let mut response = StatusCode::NOT_ACCEPTABLE.into_response();
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// The handlers' state: an API server over a temporary store (no custom resources).
    async fn state() -> (tempfile::TempDir, State<Arc<Api>>) {
        let (dir, api) = crate::testing::api().await;
        (dir, State(Arc::new(api)))
    }

    async fn body(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn index_urls_carry_each_documents_hash() {
        let (_dir, state) = state().await;
        let response = v3_index(state.clone(), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let index: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        let hash = url.strip_prefix("/openapi/v3/apis/apps/v1?hash=").unwrap();
        let document = &documents().await.v3["apis/apps/v1"];
        assert_eq!(hash, etag_of(&document.body));
        assert_eq!(hash.len(), 128, "SHA-512 in hex");
        assert!(
            hash.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert!(index["paths"]["api/v1"].is_object());
    }

    #[test]
    fn hashes_are_stable_across_builds() {
        let (a, b) = (Documents::build(), Documents::build());
        assert_eq!(a.v3_index.etag, b.v3_index.etag);
        assert_eq!(a.v2_json.etag, b.v2_json.etag);
        assert_eq!(a.v2_protobuf.body, b.v2_protobuf.body);
        for (path, doc) in &a.v3 {
            assert_eq!(doc.body, b.v3[path].body, "{path}");
        }
    }

    #[tokio::test]
    async fn hashed_urls_are_immutable_and_stale_hashes_redirect() {
        let (_dir, state) = state().await;
        let etag = documents().await.v3["api/v1"].etag.clone();
        let response = v3_group_version(
            state.clone(),
            Path("api/v1".to_owned()),
            RawQuery(Some(format!("hash={etag}"))),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, immutable"
        );
        assert!(response.headers().contains_key(header::EXPIRES));
        assert_eq!(response.headers()[header::ETAG], format!("\"{etag}\""));
        assert_eq!(response.headers()[header::CONTENT_TYPE], JSON);

        let plain = v3_group_version(
            state.clone(),
            Path("api/v1".to_owned()),
            RawQuery(None),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(plain.status(), StatusCode::OK);
        assert!(!plain.headers().contains_key(header::CACHE_CONTROL));

        let stale = v3_group_version(
            state.clone(),
            Path("api/v1".to_owned()),
            RawQuery(Some("hash=0123".to_owned())),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(stale.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            stale.headers()[header::LOCATION],
            format!("/openapi/v3/api/v1?hash={etag}")
        );
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_304() {
        let (_dir, state) = state().await;
        let etag = format!("\"{}\"", documents().await.v3["apis/apps/v1"].etag);
        let response = v3_group_version(
            state.clone(),
            Path("apis/apps/v1".to_owned()),
            RawQuery(None),
            headers(&[(header::IF_NONE_MATCH, &format!("\"other\", {etag}"))]),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], etag);
        assert!(body(response).await.is_empty());

        let changed = v3_group_version(
            state.clone(),
            Path("apis/apps/v1".to_owned()),
            RawQuery(None),
            headers(&[(header::IF_NONE_MATCH, "\"other\"")]),
        )
        .await;
        assert_eq!(changed.status(), StatusCode::OK);

        let v2_etag = format!("\"{}\"", documents().await.v2_json.etag);
        let v2 = v2(
            state.clone(),
            headers(&[
                (header::ACCEPT, V2_PROTOBUF),
                (header::IF_NONE_MATCH, &v2_etag),
            ]),
        )
        .await;
        assert_eq!(v2.status(), StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn v2_is_served_as_json_or_protobuf_by_accept() {
        let (_dir, state) = state().await;
        let json = v2(
            state.clone(),
            headers(&[(header::ACCEPT, "application/json")]),
        )
        .await;
        assert_eq!(json.headers()[header::CONTENT_TYPE], JSON);
        let swagger: serde_json::Value = serde_json::from_slice(&body(json).await).unwrap();
        assert_eq!(swagger["swagger"], "2.0");

        let protobuf = v2(state.clone(), headers(&[(header::ACCEPT, V2_PROTOBUF)])).await;
        assert_eq!(protobuf.headers()[header::CONTENT_TYPE], V2_PROTOBUF_DOTTED);
        let bytes = body(protobuf).await;
        // Field 1 of the Document, `swagger`: "2.0".
        assert_eq!(&bytes[..5], b"\x0a\x032.0");

        let other = v2(state, headers(&[(header::ACCEPT, "application/yaml")])).await;
        assert_eq!(other.status(), StatusCode::NOT_ACCEPTABLE);
    }

    #[tokio::test]
    async fn unknown_group_versions_are_404() {
        let (_dir, state) = state().await;
        let response = v3_group_version(
            state.clone(),
            Path("apis/apps/v2".to_owned()),
            RawQuery(None),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
