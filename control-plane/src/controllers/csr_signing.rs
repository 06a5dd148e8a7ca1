//! Signing of approved CertificateSigningRequests with the cluster CA, as
//! kube-controller-manager's `csrsigning` controller: for `kubernetes.io/kube-apiserver-client`,
//! `kube-apiserver-client-kubelet` and `kubelet-serving`, each with its signer's rules on the
//! request (a request that breaks them gets a `Failed` condition, `SignerValidationFailure`),
//! for `spec.expirationSeconds` capped at a year (`--cluster-signing-duration`).

use std::{sync::Arc, time::Duration};

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    resource,
    runtime::{self, Action, Cache, Error, Reconciler},
};
use crate::apiserver::{
    Api, certificates as csr, objects, path::Target, pki::CertificateAuthority,
};

const CONCURRENCY: usize = 2;
const RESYNC: Duration = Duration::from_secs(60);
/// kube-controller-manager's default `--cluster-signing-duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest certificate a request may ask for (`expirationSeconds` ≥ 600).
const MIN_DURATION: Duration = Duration::from_secs(600);

/// Signs approved requests with `ca` until `shutdown` turns true.
pub async fn run(api: Arc<Api>, ca: Arc<CertificateAuthority>, shutdown: watch::Receiver<bool>) {
    let requests = Cache::new(resource(
        &api,
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
    ));
    let reconciler = Arc::new(Signer {
        api: Arc::clone(&api),
        requests: requests.clone(),
        ca,
    });
    runtime::run_single(
        api,
        requests,
        |_| true,
        reconciler,
        CONCURRENCY,
        RESYNC,
        shutdown,
    )
    .await;
}

/// Whether this signer handles `signer`, and the signer's rules on the request:
/// `None` (not ours), `Some(Ok)` (sign it), `Some(Err(why))` (refuse it).
pub fn check(object: &Value, request: &csr::Request) -> Option<Result<(), String>> {
    let usages = csr::usages(object);
    match object["spec"]["signerName"].as_str().unwrap_or_default() {
        csr::KUBE_APISERVER_CLIENT_KUBELET => Some(csr::validate_kubelet_client(request, &usages)),
        csr::KUBELET_SERVING => Some(csr::validate_kubelet_serving(request, &usages)),
        csr::KUBE_APISERVER_CLIENT => Some(csr::validate_apiserver_client(&usages)),
        _ => None,
    }
}

/// The lifetime of the certificate for `object`: what it asks for, between ten minutes and
/// [`MAX_DURATION`].
pub fn lifetime(object: &Value) -> Duration {
    match object["spec"]["expirationSeconds"].as_u64() {
        Some(seconds) => Duration::from_secs(seconds).clamp(MIN_DURATION, MAX_DURATION),
        None => MAX_DURATION,
    }
}

struct Signer {
    api: Arc<Api>,
    requests: Cache,
    ca: Arc<CertificateAuthority>,
}

#[async_trait::async_trait]
impl Reconciler for Signer {
    fn name(&self) -> &'static str {
        "csrsigning"
    }

    async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
        let Some(object) = self.requests.get("", &key.name) else {
            return Ok(Action::Done);
        };
        let issued = object["status"]["certificate"]
            .as_str()
            .is_some_and(|c| !c.is_empty());
        if issued
            || !csr::has_condition(&object, "Approved")
            || csr::has_condition(&object, "Failed")
        {
            return Ok(Action::Done);
        }
        let pem = csr::request_pem(&object);
        let Ok(request) = csr::parse_request(&pem) else {
            return Ok(Action::Done);
        };
        let mut signed = (*object).clone();
        match check(&object, &request) {
            None => return Ok(Action::Done),
            Some(Err(why)) => {
                let conditions = &mut signed["status"]["conditions"];
                if !conditions.is_array() {
                    *conditions = json!([]);
                }
                conditions.as_array_mut().expect("an array").push(json!({
                    "type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                    "message": why,
                }));
            }
            Some(Ok(())) => {
                let request = String::from_utf8_lossy(&pem).into_owned();
                let certificate = self
                    .ca
                    .sign(&request, &csr::usages(&object), lifetime(&object))
                    .map_err(|e| Error {
                        action: format!("signing {}", key.name),
                        message: format!("{e:#}"),
                        reason: "InternalError",
                    })?;
                use base64::Engine as _;
                signed["status"]["certificate"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(certificate));
            }
        }
        let target = Target {
            resource: self.requests.resource(),
            namespace: None,
            name: Some(key.name.clone()),
            subresource: Some("status".to_owned()),
        };
        match objects::update(&self.api, &target, &key.name, signed).await {
            Ok(_) => {
                tracing::info!(csr = %key.name, "signed");
                Ok(Action::Done)
            }
            Err(e) if e.reason == "NotFound" => Ok(Action::Done),
            Err(e) => Err(Error::api(
                format!("writing the certificate of {}", key.name),
                &e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_what_was_asked_within_ten_minutes_and_a_year() {
        assert_eq!(lifetime(&json!({"spec": {}})), MAX_DURATION);
        assert_eq!(
            lifetime(&json!({"spec": {"expirationSeconds": 3600}})),
            Duration::from_secs(3600)
        );
        assert_eq!(
            lifetime(&json!({"spec": {"expirationSeconds": 10 * 365 * 24 * 3600}})),
            MAX_DURATION
        );
        assert_eq!(
            lifetime(&json!({"spec": {"expirationSeconds": 60}})),
            MIN_DURATION
        );
    }
}
