//! What the unit tests of controllers and admission share: an [`Api`] over an embedded store in a
//! temporary directory, and waiting for a condition a background task brings about; and the
//! protobuf bodies typed clients send, built by hand.

use std::{future::Future, time::Duration};

use crate::apiserver::{Api, path::Target};

/// An [`Api`] (no admission plugins, not bootstrapped) on a fresh embedded store; the directory
/// lives as long as the returned guard.
/// The collection of a core/v1 resource (`pods`, `configmaps` …), in `namespace` or in all.
pub fn core_target(api: &Api, plural: &str, namespace: Option<&str>) -> Target {
    Target {
        resource: api.resources.get("", "v1", plural).unwrap(),
        namespace: namespace.map(str::to_owned),
        name: None,
        subresource: None,
    }
}

pub async fn api() -> (tempfile::TempDir, Api) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store =
        tokio::task::spawn_blocking(move || crate::store::embedded::EmbeddedStore::open(&path))
            .await
            .unwrap()
            .unwrap();
    (dir, Api::new(std::sync::Arc::new(store)))
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after 5 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A length-delimited protobuf field (a string or a message of under 128 bytes).
pub fn bytes_field(number: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2, u8::try_from(payload.len()).unwrap()];
    out.extend_from_slice(payload);
    out
}

/// A Kubernetes protobuf body: `k8s\0`, then a `runtime.Unknown` naming the kind around `raw`.
pub fn protobuf_body(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = bytes_field(1, api_version.as_bytes());
    type_meta.extend(bytes_field(2, kind.as_bytes()));
    let mut body = b"k8s\0".to_vec();
    body.extend(bytes_field(1, &type_meta));
    body.extend(bytes_field(2, raw));
    body
}

/// The headers of a protobuf request body.
pub fn protobuf_headers() -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(apiary_api::protobuf::MEDIA_TYPE),
    );
    headers
}
