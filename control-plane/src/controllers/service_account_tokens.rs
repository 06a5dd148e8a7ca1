//! The tokens controller (kube-controller-manager's `serviceaccount-token`): a Secret of type
//! `kubernetes.io/service-account-token` naming a ServiceAccount
//! (`kubernetes.io/service-account.name`) gets a legacy token of that account (no expiry; valid
//! while the Secret holds it), the cluster CA as `ca.crt`, its `namespace`, and the account's uid
//! (`kubernetes.io/service-account.uid`). A Secret whose account does not exist, or is another
//! account by now (another uid), is deleted, as Kubernetes does.

use std::sync::Arc;

use apiary_api::meta::ObjectRef;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler},
    target,
};
use crate::apiserver::{Api, objects};

pub const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
const CONCURRENCY: usize = 2;

/// Fills token Secrets until `shutdown`; without a CA or a signing key there is nothing to do.
pub async fn run(api: Arc<Api>, ca_pem: Option<String>, shutdown: watch::Receiver<bool>) {
    let (Some(ca_pem), true) = (ca_pem, api.service_account_issuer.is_some()) else {
        return;
    };
    let secrets = Cache::new(resource(&api, "", "v1", "secrets"));
    let accounts = Cache::new(resource(&api, "", "v1", "serviceaccounts"));
    let queue = Queue::new();
    let secret_changed = {
        let (cache, queue) = (secrets.clone(), Arc::clone(&queue));
        move |object: &Value| {
            if object["type"] == TOKEN_TYPE {
                queue.add(cache.key_of(object));
            }
        }
    };
    // An account that changes or goes: its token Secrets are looked at again.
    let account_changed = {
        let (secrets, queue) = (secrets.clone(), Arc::clone(&queue));
        move |object: &Value| {
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = &object["metadata"]["name"];
            for secret in secrets.list(namespace) {
                if secret["type"] == TOKEN_TYPE
                    && &secret["metadata"]["annotations"][NAME_ANNOTATION] == name
                {
                    queue.add(secrets.key_of(&secret));
                }
            }
        }
    };
    let reconciler = Arc::new(Tokens {
        api: Arc::clone(&api),
        ca_pem,
        secrets: secrets.clone(),
        accounts: accounts.clone(),
    });
    tokio::join!(
        runtime::reflect(Arc::clone(&api), secrets, secret_changed, shutdown.clone()),
        runtime::reflect(
            Arc::clone(&api),
            accounts,
            account_changed,
            shutdown.clone()
        ),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

struct Tokens {
    api: Arc<Api>,
    ca_pem: String,
    secrets: Cache,
    accounts: Cache,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[async_trait::async_trait]
impl Reconciler for Tokens {
    fn name(&self) -> &'static str {
        "serviceaccount-token"
    }

    async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
        if !self.secrets.is_synced() || !self.accounts.is_synced() {
            return Ok(Action::RequeueAfter(std::time::Duration::from_millis(200)));
        }
        let Some(secret) = self.secrets.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if secret["type"] != TOKEN_TYPE || secret["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let annotations = &secret["metadata"]["annotations"];
        let account_name = annotations[NAME_ANNOTATION].as_str().unwrap_or_default();
        // Read the account from the store: one created with its Secret may not be cached yet.
        let accounts = self.accounts.resource();
        let account =
            match objects::get(&self.api, accounts, Some(&key.namespace), account_name).await {
                Ok(account) => Some(account),
                Err(e) if e.reason == "NotFound" => None,
                Err(e) => {
                    return Err(Error::api(
                        format!("reading serviceaccount {account_name}"),
                        &e,
                    ));
                }
            };
        let account_uid = account
            .as_ref()
            .and_then(|a| a["metadata"]["uid"].as_str())
            .unwrap_or_default()
            .to_owned();
        let named_uid = annotations[UID_ANNOTATION].as_str().unwrap_or_default();
        let secrets = self.secrets.resource();
        if account.is_none() || (!named_uid.is_empty() && named_uid != account_uid) {
            let options = json!({"apiVersion": "v1", "kind": "DeleteOptions",
                "preconditions": {"uid": secret["metadata"]["uid"]}});
            return match objects::delete(
                &self.api,
                &target(secrets, &key.namespace, Some(&key.name)),
                &key.name,
                &options,
            )
            .await
            {
                Ok(_) => Ok(Action::Done),
                Err(e) if matches!(e.reason, "NotFound" | "Conflict") => Ok(Action::Done),
                Err(e) => Err(Error::api(format!("deleting secret {}", key.name), &e)),
            };
        }
        let data = &secret["data"];
        let complete = data["token"].as_str().is_some_and(|t| !t.is_empty())
            && data["ca.crt"].as_str() == Some(b64(&self.ca_pem).as_str())
            && data["namespace"].as_str() == Some(b64(&key.namespace).as_str())
            && named_uid == account_uid;
        if complete {
            return Ok(Action::Done);
        }
        let issuer = self
            .api
            .service_account_issuer
            .as_ref()
            .expect("checked at start");
        let mut filled = (*secret).clone();
        if !filled["data"].is_object() {
            filled["data"] = json!({});
        }
        if filled["data"]["token"].as_str().is_none_or(str::is_empty) {
            let token = issuer.sign_legacy(&key.namespace, &key.name, account_name, &account_uid);
            filled["data"]["token"] = json!(b64(&token));
        }
        filled["data"]["ca.crt"] = json!(b64(&self.ca_pem));
        filled["data"]["namespace"] = json!(b64(&key.namespace));
        filled["metadata"]["annotations"][UID_ANNOTATION] = json!(account_uid);
        match objects::update(
            &self.api,
            &target(secrets, &key.namespace, Some(&key.name)),
            &key.name,
            filled,
        )
        .await
        {
            Ok(_) => Ok(Action::Done),
            Err(e) if matches!(e.reason, "Conflict" | "NotFound") => Ok(Action::Done),
            Err(e) => Err(Error::api(format!("filling secret {}", key.name), &e)),
        }
    }
}
