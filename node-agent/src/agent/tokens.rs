//! ServiceAccount tokens of projected volumes, as the kubelet's token manager keeps them: each
//! is asked of the API server (TokenRequest on the pod's ServiceAccount, bound to the pod by
//! name and uid — the agent never signs one itself), and asked again once 80 % of its lifetime
//! has passed or it is a day old, whichever comes first. A refresh that fails keeps the token
//! in use while it is still valid.

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, SystemTime},
};

use apiary_api::core_v1::Pod;
use serde_json::{Value, json};

/// Tokens older than this are refreshed whatever their lifetime (the kubelet's `maxTTL`).
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What one `serviceAccountToken` projection asks for; projections asking the same share one
/// token.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    /// Empty: the API server's own audience.
    pub audience: String,
    pub expiration_seconds: i64,
}

/// A token the API server issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl IssuedToken {
    /// Whether it is due for renewal at `now`: past 80 % of its lifetime, or a day old.
    pub fn requires_refresh(&self, now: SystemTime) -> bool {
        let lifetime = self
            .expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default();
        let age = now.duration_since(self.issued_at).unwrap_or_default();
        age >= MAX_AGE || age >= lifetime.mul_f64(0.8)
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The API server refused or could not be reached; retried on the next sync.
    #[error("requesting a token for service account {namespace}/{service_account}: {source:#}")]
    Request {
        namespace: String,
        service_account: String,
        #[source]
        source: anyhow::Error,
    },
    /// The answer had no token or no expiry.
    #[error("the TokenRequest answer for service account {0} is malformed")]
    Malformed(String),
}

/// The tokens the pod's projected volumes want.
pub fn wanted(pod: &Pod) -> Vec<TokenKey> {
    let mut keys: Vec<TokenKey> = pod
        .spec
        .volumes
        .iter()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| &p.sources)
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| TokenKey {
            audience: t.audience.clone(),
            expiration_seconds: t.expiration_seconds.unwrap_or(3600),
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The pod's ServiceAccount: `serviceAccountName`, else the deprecated `serviceAccount`, else
/// `default`.
pub fn service_account(pod: &Pod) -> &str {
    [&pod.spec.service_account_name, &pod.spec.service_account]
        .into_iter()
        .find(|s| !s.is_empty())
        .map_or("default", String::as_str)
}

/// The TokenRequest path and body for `key`, bound to `pod`, as the kubelet sends it.
pub fn request(pod: &Pod, key: &TokenKey) -> (String, Value) {
    let meta = &pod.metadata;
    let path = format!(
        "/api/v1/namespaces/{}/serviceaccounts/{}/token",
        meta.namespace,
        service_account(pod)
    );
    let audiences: Vec<&str> = if key.audience.is_empty() {
        Vec::new()
    } else {
        vec![key.audience.as_str()]
    };
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audiences,
            "expirationSeconds": key.expiration_seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta.name,
                "uid": meta.uid,
            },
        },
    });
    (path, body)
}

/// Reads a TokenRequest answer. Its issue time is its expiry less the lifetime it was given,
/// as the kubelet reckons it (the clocks of node and server need not agree).
pub fn issued(answer: &Value, service_account: &str) -> Result<IssuedToken, TokenError> {
    let malformed = || TokenError::Malformed(service_account.to_owned());
    let token = answer["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(malformed)?;
    let expires_at: SystemTime = answer["status"]["expirationTimestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .ok_or_else(malformed)?
        .with_timezone(&chrono::Utc)
        .into();
    let lifetime = answer["spec"]["expirationSeconds"]
        .as_u64()
        .ok_or_else(malformed)?;
    Ok(IssuedToken {
        token: token.to_owned(),
        issued_at: expires_at - Duration::from_secs(lifetime),
        expires_at,
    })
}

/// The tokens `pod` wants at `now`: those of `previous` not yet due, and new ones from
/// `post(path, body)` (a TokenRequest) for the rest. A failed request keeps a previous token
/// that is still valid, and fails only when there is none.
pub async fn refresh<F, Fut>(
    pod: &Pod,
    previous: &BTreeMap<TokenKey, IssuedToken>,
    now: SystemTime,
    mut post: F,
) -> Result<BTreeMap<TokenKey, IssuedToken>, TokenError>
where
    F: FnMut(String, Value) -> Fut,
    Fut: Future<Output = anyhow::Result<Value>>,
{
    let account = service_account(pod);
    let mut tokens = BTreeMap::new();
    for key in wanted(pod) {
        let current = previous.get(&key);
        if let Some(token) = current.filter(|t| !t.requires_refresh(now)) {
            tokens.insert(key, token.clone());
            continue;
        }
        let (path, body) = request(pod, &key);
        let fresh = match post(path, body).await {
            Ok(answer) => issued(&answer, account),
            Err(source) => Err(TokenError::Request {
                namespace: pod.metadata.namespace.clone(),
                service_account: account.to_owned(),
                source,
            }),
        };
        match (fresh, current) {
            (Ok(token), _) => {
                tokens.insert(key, token);
            }
            (Err(e), Some(token)) if !token.expired(now) => {
                tracing::warn!(pod = %pod.metadata.name, error = %e, "token refresh failed; the current token is still valid");
                tokens.insert(key, token.clone());
            }
            (Err(e), _) => return Err(e),
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::core_v1::{
        ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeProjection,
    };
    use std::sync::{Arc, Mutex};

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = "web".into();
        pod.metadata.namespace = "shop".into();
        pod.metadata.uid = "u-1".into();
        pod.spec.service_account_name = "builder".into();
        let token = |audience: &str| VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                audience: audience.into(),
                expiration_seconds: Some(1000),
                path: "token".into(),
            }),
            ..Default::default()
        };
        pod.spec.volumes = vec![Volume {
            name: "kube-api-access-abcde".into(),
            projected: Some(ProjectedVolumeSource {
                sources: vec![token(""), token("vault")],
                default_mode: Some(0o644),
            }),
            ..Default::default()
        }];
        pod
    }

    /// A fake API server that issues `token-<n>` tokens valid 1000 s from `clock`, and records
    /// what it was asked.
    #[derive(Clone, Default)]
    struct Server {
        asked: Arc<Mutex<Vec<(String, Value)>>>,
        down: Arc<Mutex<bool>>,
        clock: Arc<Mutex<i64>>,
    }

    impl Server {
        fn post(&self) -> impl FnMut(String, Value) -> std::future::Ready<anyhow::Result<Value>> {
            let this = self.clone();
            move |path, body| {
                if *this.down.lock().unwrap() {
                    return std::future::ready(Err(anyhow::anyhow!("connection refused")));
                }
                let mut asked = this.asked.lock().unwrap();
                asked.push((path, body.clone()));
                let now = *this.clock.lock().unwrap();
                let expires = chrono::DateTime::from_timestamp(now + 1000, 0).unwrap();
                std::future::ready(Ok(json!({
                    "spec": {"expirationSeconds": body["spec"]["expirationSeconds"]},
                    "status": {"token": format!("token-{}", asked.len()),
                               "expirationTimestamp": expires.to_rfc3339()},
                })))
            }
        }
    }

    fn at(seconds: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds as u64)
    }

    #[tokio::test]
    async fn tokens_are_requested_bound_to_the_pod_and_renewed_at_eighty_percent() {
        let pod = pod();
        let server = Server::default();
        *server.clock.lock().unwrap() = 10_000;
        let tokens = refresh(&pod, &BTreeMap::new(), at(10_000), server.post())
            .await
            .unwrap();
        assert_eq!(tokens.len(), 2);
        let asked = server.asked.lock().unwrap().clone();
        assert_eq!(
            asked[0].0,
            "/api/v1/namespaces/shop/serviceaccounts/builder/token"
        );
        assert_eq!(
            asked[0].1["spec"],
            json!({"audiences": [], "expirationSeconds": 1000,
                   "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "u-1"}})
        );
        assert_eq!(asked[1].1["spec"]["audiences"], json!(["vault"]));

        // At 79 % of the lifetime nothing is asked; at 80 % both are renewed.
        let same = refresh(&pod, &tokens, at(10_790), server.post())
            .await
            .unwrap();
        assert_eq!(same, tokens);
        assert_eq!(server.asked.lock().unwrap().len(), 2);
        *server.clock.lock().unwrap() = 10_800;
        let renewed = refresh(&pod, &tokens, at(10_800), server.post())
            .await
            .unwrap();
        assert_eq!(server.asked.lock().unwrap().len(), 4);
        assert!(renewed.values().all(|t| t.token.starts_with("token-")));
        assert_ne!(renewed, tokens);
    }

    #[tokio::test]
    async fn a_failed_renewal_keeps_a_valid_token_and_fails_once_it_expired() {
        let pod = pod();
        let server = Server::default();
        let tokens = refresh(&pod, &BTreeMap::new(), at(0), server.post())
            .await
            .unwrap();
        *server.down.lock().unwrap() = true;
        let kept = refresh(&pod, &tokens, at(900), server.post())
            .await
            .unwrap();
        assert_eq!(kept, tokens);
        let err = refresh(&pod, &tokens, at(1000), server.post())
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "requesting a token for service account shop/builder: connection refused"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_day_old_token_is_renewed_whatever_its_lifetime() {
        let token = IssuedToken {
            token: "t".into(),
            issued_at: at(0),
            expires_at: at(365 * 24 * 3600),
        };
        assert!(!token.requires_refresh(at(24 * 3600 - 1)));
        assert!(token.requires_refresh(at(24 * 3600)));
    }
}
