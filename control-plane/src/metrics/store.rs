//! Store latencies at the [`Store`] boundary, under kube-apiserver's name for its etcd client's
//! (`etcd_request_duration_seconds{operation,type}`), whichever backend is behind it; and the
//! object counts of `apiserver_storage_objects`, read every minute as kube-apiserver does.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{Metrics, ResourceLabels, StoreLabels};
use crate::{
    apiserver::{Api, resources::StorageKeys as _},
    store::{KeyValue, ListOptions, ListPage, Result, Revision, Store, WatchStream},
};

/// A store that times every request of the one it wraps.
pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: &'static Metrics,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered").finish_non_exhaustive()
    }
}

impl Metered {
    /// `inner`, timed into the process's instruments.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            metrics: super::global(),
        }
    }

    fn observe(&self, operation: &'static str, key: &str, started: Instant) {
        self.metrics
            .store_duration
            .get_or_create(&StoreLabels {
                operation,
                r#type: key_type(key),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The prefix of the resource type `key` belongs to (`/registry/<group>/<plural>/`), as
/// kube-apiserver's etcd3 store labels its requests; keys outside it are `other`, so that no
/// key becomes a series of its own.
pub fn key_type(key: &str) -> String {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(""), Some("registry"), Some(group), Some(plural))
            if !group.is_empty() && !plural.is_empty() =>
        {
            format!("/registry/{group}/{plural}/")
        }
        _ => "other".to_owned(),
    }
}

#[async_trait::async_trait]
impl Store for Metered {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.observe("get", key, started);
        result
    }

    async fn get_at(&self, keys: &[String], revision: Revision) -> Result<Vec<KeyValue>> {
        let started = Instant::now();
        let result = self.inner.get_at(keys, revision).await;
        if let Some(key) = keys.first() {
            self.observe("get", key, started);
        }
        result
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage> {
        let started = Instant::now();
        let result = self.inner.list(prefix, options).await;
        self.observe("list", prefix, started);
        result
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let started = Instant::now();
        let result = self.inner.create(key, value).await;
        self.observe("create", key, started);
        result
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue> {
        let started = Instant::now();
        let result = self.inner.update(key, value, expected).await;
        self.observe("update", key, started);
        result
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let started = Instant::now();
        let result = self.inner.delete(key, expected).await;
        self.observe("delete", key, started);
        result
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Opening a watch is timed; its events are not requests.
        let started = Instant::now();
        let result = self.inner.watch(prefix, after).await;
        self.observe("watch", prefix, started);
        result
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.compact(revision).await;
        self.observe("compact", "", started);
        result
    }

    async fn revision(&self) -> Result<Revision> {
        self.inner.revision().await
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    async fn is_stale(&self, key: &str) -> Result<bool> {
        self.inner.is_stale(key).await
    }
}

/// How often `apiserver_storage_objects` is refreshed (kube-apiserver's
/// `--storage-object-count-tracker` period).
pub const COUNT_EVERY: Duration = Duration::from_secs(60);

/// kube-apiserver's resource label: `pods`, `deployments.apps`.
fn resource_label(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

/// Counts the objects of every served type every [`COUNT_EVERY`], forever: one single-item
/// page per type, whose `remaining` tells the rest.
pub async fn count_objects(api: Arc<Api>) {
    let metrics = super::global();
    let mut ticker = tokio::time::interval(COUNT_EVERY);
    loop {
        ticker.tick().await;
        let mut seen = std::collections::HashSet::new();
        for resource in api.resources.all() {
            let prefix = resource.key_prefix();
            // A type served at several versions is stored once.
            if !seen.insert(prefix.clone()) {
                continue;
            }
            let options = ListOptions {
                limit: Some(1),
                ..ListOptions::default()
            };
            match api.store.list(&prefix, &options).await {
                Ok(page) => {
                    let count = page.items.len() as u64 + page.remaining.unwrap_or(0);
                    metrics
                        .storage_objects
                        .get_or_create(&ResourceLabels {
                            resource: resource_label(resource.group, resource.plural),
                        })
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                Err(e) => {
                    tracing::debug!(prefix, error = %e, "counting stored objects failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_labelled_by_their_resource_type() {
        assert_eq!(
            key_type("/registry/core/pods/default/web"),
            "/registry/core/pods/"
        );
        assert_eq!(
            key_type("/registry/apps/deployments/"),
            "/registry/apps/deployments/"
        );
        assert_eq!(key_type("/registry/core/nodes/n1"), "/registry/core/nodes/");
        assert_eq!(key_type("/registry/"), "other");
        assert_eq!(key_type("elsewhere"), "other");
        assert_eq!(resource_label("apps", "deployments"), "deployments.apps");
        assert_eq!(resource_label("", "pods"), "pods");
    }

    #[tokio::test]
    async fn every_store_request_is_timed_by_operation_and_type() {
        let (_dir, api) = crate::testing::api().await;
        let metered = Metered::new(Arc::clone(&api.store));
        metered
            .create("/registry/core/configmaps/ns/a", b"{}".to_vec())
            .await
            .unwrap();
        metered.get("/registry/core/configmaps/ns/a").await.unwrap();
        metered.get("/registry/core/configmaps/ns/b").await.unwrap();
        let count = |operation| {
            super::super::global()
                .store_duration
                .get(&StoreLabels {
                    operation,
                    r#type: "/registry/core/configmaps/".into(),
                })
                .map(|h| h.count())
                .unwrap_or_default()
        };
        // The instruments are process-wide: other tests may add to them.
        assert!(count("create") >= 1);
        assert!(count("get") >= 2);
    }
}
