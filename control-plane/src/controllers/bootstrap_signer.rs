//! Signs `kube-public/cluster-info` for every bootstrap token, as kube-controller-manager's
//! `bootstrapsigner`: `jws-kubeconfig-<id>` holds the detached JWS of its `kubeconfig` with the
//! token's secret, for every live token that may sign (`usage-bootstrap-signing`); signatures
//! of tokens that are gone or expired are removed. A node joining with a token checks the
//! signature of its id before it trusts what cluster-info says.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use apiary_api::{bootstrap_token as format, meta::ObjectRef};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler},
    target,
    token_cleaner::is_bootstrap_token,
};
use crate::apiserver::{Api, authn::bootstrap_token, cluster_info, objects};

const RESYNC: Duration = Duration::from_secs(60);

/// Keeps the signatures until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let secrets = Cache::new(resource(&api, "", "v1", "secrets"));
    let config_maps = Cache::new(resource(&api, "", "v1", "configmaps"));
    let queue = Queue::new();
    let key = ObjectRef {
        resource: "configmaps".to_owned(),
        namespace: cluster_info::NAMESPACE.to_owned(),
        name: cluster_info::NAME.to_owned(),
    };
    let secret_changed = {
        let (queue, key) = (Arc::clone(&queue), key.clone());
        move |object: &Value| {
            if is_bootstrap_token(object) {
                queue.add(key.clone());
            }
        }
    };
    let config_map_changed = {
        let (queue, key) = (Arc::clone(&queue), key.clone());
        move |object: &Value| {
            if object["metadata"]["namespace"] == cluster_info::NAMESPACE
                && object["metadata"]["name"] == cluster_info::NAME
            {
                queue.add(key.clone());
            }
        }
    };
    let reconciler = Arc::new(BootstrapSigner {
        api: Arc::clone(&api),
        secrets: secrets.clone(),
        config_maps: config_maps.clone(),
    });
    tokio::join!(
        runtime::reflect(Arc::clone(&api), secrets, secret_changed, shutdown.clone()),
        runtime::reflect(
            Arc::clone(&api),
            config_maps.clone(),
            config_map_changed,
            shutdown.clone()
        ),
        runtime::resync(config_maps, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, 1, shutdown),
    );
}

/// The `jws-kubeconfig-<id>` entries `kubeconfig` should carry for `tokens` at `now`.
pub fn signatures(
    kubeconfig: &str,
    tokens: &[Arc<Value>],
    now: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<String, String> {
    tokens
        .iter()
        .filter(|s| is_bootstrap_token(s) && s["metadata"]["deletionTimestamp"].is_null())
        .filter(|s| bootstrap_token::data(s, "usage-bootstrap-signing").as_deref() == Some("true"))
        .filter(|s| !bootstrap_token::has_expired(s, now))
        .filter_map(|s| {
            let id = bootstrap_token::data(s, "token-id")?;
            let secret = bootstrap_token::data(s, "token-secret")?;
            format::parse(&format!("{id}.{secret}"))?;
            Some((
                format::jws_key(&id),
                format::detached_signature(kubeconfig, &id, &secret),
            ))
        })
        .collect()
}

struct BootstrapSigner {
    api: Arc<Api>,
    secrets: Cache,
    config_maps: Cache,
}

#[async_trait::async_trait]
impl Reconciler for BootstrapSigner {
    fn name(&self) -> &'static str {
        "bootstrapsigner"
    }

    async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
        if !self.secrets.is_synced() || !self.config_maps.is_synced() {
            return Ok(Action::RequeueAfter(Duration::from_millis(200)));
        }
        let Some(config_map) = self.config_maps.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        let kubeconfig = config_map["data"][cluster_info::KUBECONFIG_KEY]
            .as_str()
            .unwrap_or_default();
        let tokens = self.secrets.list(bootstrap_token::NAMESPACE);
        let wanted = signatures(kubeconfig, &tokens, chrono::Utc::now());
        let mut updated = (*config_map).clone();
        let data = updated["data"].as_object_mut();
        let Some(data) = data else {
            return Ok(Action::Done);
        };
        data.retain(|k, _| !k.starts_with("jws-kubeconfig-"));
        for (k, v) in &wanted {
            data.insert(k.clone(), json!(v));
        }
        if updated == *config_map {
            return Ok(Action::Done);
        }
        let target = target(self.config_maps.resource(), &key.namespace, Some(&key.name));
        objects::update(&self.api, &target, &key.name, updated)
            .await
            .map_err(|e| Error::api("signing cluster-info", &e))?;
        tracing::info!(tokens = wanted.len(), "signed cluster-info");
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_signing_tokens_sign_and_expired_or_non_signing_ones_do_not() {
        let now = chrono::Utc::now();
        let hour = chrono::Duration::hours(1);
        let live =
            bootstrap_token::secret("abcdef.0123456789abcdef", Some(now + hour), "").unwrap();
        let expired =
            bootstrap_token::secret("zzzzzz.0123456789abcdef", Some(now - hour), "").unwrap();
        let mut no_signing = bootstrap_token::secret("yyyyyy.0123456789abcdef", None, "").unwrap();
        no_signing["data"]
            .as_object_mut()
            .unwrap()
            .remove("usage-bootstrap-signing");
        let tokens = [live, expired, no_signing].map(Arc::new);
        let signed = signatures("cfg", &tokens, now);
        assert_eq!(signed.keys().collect::<Vec<_>>(), ["jws-kubeconfig-abcdef"]);
        assert!(format::verify_detached(
            "cfg",
            &signed["jws-kubeconfig-abcdef"],
            "abcdef.0123456789abcdef"
        ));
    }
}
