//! Deletes expired bootstrap tokens, as kube-controller-manager's `tokencleaner`: a
//! `bootstrap.kubernetes.io/token` Secret in kube-system goes once its `expiration` has passed
//! (authentication refuses it from that moment anyway).

use std::{sync::Arc, time::Duration};

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    resource,
    runtime::{self, Action, Cache, Error, Reconciler},
    target,
};
use crate::apiserver::{Api, authn::bootstrap_token, objects};

const RESYNC: Duration = Duration::from_secs(60);

/// Cleans until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let secrets = Cache::new(resource(&api, "", "v1", "secrets"));
    let reconciler = Arc::new(TokenCleaner {
        api: Arc::clone(&api),
        secrets: secrets.clone(),
    });
    runtime::run_single(
        api,
        secrets,
        is_bootstrap_token,
        reconciler,
        1,
        RESYNC,
        shutdown,
    )
    .await;
}

/// A bootstrap token's Secret (its namespace and type).
pub fn is_bootstrap_token(secret: &Value) -> bool {
    secret["metadata"]["namespace"] == bootstrap_token::NAMESPACE
        && secret["type"] == bootstrap_token::SECRET_TYPE
}

struct TokenCleaner {
    api: Arc<Api>,
    secrets: Cache,
}

#[async_trait::async_trait]
impl Reconciler for TokenCleaner {
    fn name(&self) -> &'static str {
        "tokencleaner"
    }

    async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
        let Some(secret) = self.secrets.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if !is_bootstrap_token(&secret) {
            return Ok(Action::Done);
        }
        let now = chrono::Utc::now();
        if !bootstrap_token::has_expired(&secret, now) {
            return Ok(match bootstrap_token::expiration(&secret) {
                Some(Ok(at)) => Action::RequeueAfter(
                    (at - now).to_std().unwrap_or_default() + Duration::from_secs(1),
                ),
                _ => Action::Done,
            });
        }
        let options = json!({"preconditions": {"uid": secret["metadata"]["uid"]}});
        let target = target(self.secrets.resource(), &key.namespace, Some(&key.name));
        match objects::delete(&self.api, &target, &key.name, &options).await {
            Ok(_) => {
                tracing::info!(secret = %key.name, "deleted an expired bootstrap token");
                Ok(Action::Done)
            }
            Err(e) if e.reason == "NotFound" => Ok(Action::Done),
            Err(e) => Err(Error::api(format!("deleting {}", key.name), &e)),
        }
    }
}
