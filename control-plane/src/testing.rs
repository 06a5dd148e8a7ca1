//! What the unit tests of controllers and admission share: an [`Api`] over an embedded store in a
//! temporary directory, and waiting for a condition a background task brings about.

use std::{future::Future, time::Duration};

use crate::apiserver::Api;

/// An [`Api`] (no admission plugins, not bootstrapped) on a fresh embedded store; the directory
/// lives as long as the returned guard.
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
