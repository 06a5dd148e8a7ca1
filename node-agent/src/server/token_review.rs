//! Who may call the agent's endpoints when the agent runs as its node (it holds no cluster
//! token to compare with): the bearer token is reviewed by the API server (TokenReview, as the
//! kubelet's `--authentication-token-webhook`), and only `system:masters` — what the API server
//! presents when it proxies logs, exec and `nodes/proxy` today — is let in. Answers are kept
//! for two minutes (the kubelet's webhook cache TTL), refusals for ten seconds.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::api_client::ApiClient;

const ALLOWED_TTL: Duration = Duration::from_secs(120);
const DENIED_TTL: Duration = Duration::from_secs(10);
/// Entries kept at most; the cache is cleared when full (tokens are few: the API server's).
const MAX_ENTRIES: usize = 1024;

/// Reviews tokens through the API.
#[derive(Debug)]
pub struct TokenReviewer {
    api: ApiClient,
    /// SHA-256 of a token → (allowed, until).
    cache: Mutex<HashMap<[u8; 32], (bool, Instant)>>,
}

impl TokenReviewer {
    pub fn new(api: ApiClient) -> Self {
        Self {
            api,
            cache: Mutex::default(),
        }
    }

    /// Whether `token` authenticates a user in `system:masters`.
    pub async fn allows(&self, token: &str) -> bool {
        if token.is_empty() {
            return false;
        }
        let key: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(token.as_bytes()).into()
        };
        if let Some((allowed, until)) = self.cache.lock().expect("not poisoned").get(&key)
            && Instant::now() < *until
        {
            return *allowed;
        }
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        });
        let allowed = match self
            .api
            .post("/apis/authentication.k8s.io/v1/tokenreviews", &review)
            .await
        {
            Ok(answer) => is_master(&answer),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reviewing a caller's token");
                // Not cached: the next request asks again.
                return false;
            }
        };
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (allowed, Instant::now() + ttl));
        allowed
    }
}

/// Whether a TokenReview answer authenticates a `system:masters` user.
fn is_master(answer: &serde_json::Value) -> bool {
    answer["status"]["authenticated"] == true
        && answer["status"]["user"]["groups"]
            .as_array()
            .is_some_and(|groups| groups.iter().any(|g| g == "system:masters"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_authenticated_masters_are_let_in() {
        let answer = |authenticated: bool, groups: &[&str]| json!({"status": {"authenticated": authenticated, "user": {"username": "u", "groups": groups}}});
        assert!(is_master(&answer(
            true,
            &["system:masters", "system:authenticated"]
        )));
        assert!(!is_master(&answer(false, &["system:masters"])));
        assert!(!is_master(&answer(
            true,
            &["system:nodes", "system:authenticated"]
        )));
        assert!(!is_master(&json!({})));
    }
}
