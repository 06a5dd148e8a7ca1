//! Bootstrap tokens (`kube-system` Secrets of type `bootstrap.kubernetes.io/token`), as
//! kube-apiserver's `--enable-bootstrap-token-auth`: a token `<id>.<secret>` (`[a-z0-9]{6}` and
//! `[a-z0-9]{16}`) is user `system:bootstrap:<id>` in `system:bootstrappers` (and the Secret's
//! `auth-extra-groups`), while its Secret exists, is not being deleted, allows authentication
//! and has not expired. What a joining node uses until it has its own certificate.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::UserInfo;

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Bootstrap token Secrets are `kube-system/bootstrap-token-<id>`.
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const NAMESPACE: &str = "kube-system";
/// The group of every bootstrap token's user.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The user-name prefix of bootstrap tokens.
pub const USER_PREFIX: &str = "system:bootstrap:";

pub use apiary_api::bootstrap_token::parse;

/// A new random token.
pub fn generate() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    format!("{}.{}", pick(6), pick(16))
}

/// A string of the Secret's `data` (base64 on the wire).
pub fn data(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine as _;
    let encoded = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// When the token of `secret` expires, if it does; an unreadable `expiration` counts as
/// expired (`bootstrapsecretutil.HasExpired`).
pub fn expiration(secret: &Value) -> Option<Result<DateTime<Utc>, ()>> {
    let text = data(secret, "expiration")?;
    Some(
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(drop),
    )
}

/// Whether the token of `secret` has expired at `now`.
pub fn has_expired(secret: &Value, now: DateTime<Utc>) -> bool {
    match expiration(secret) {
        None => false,
        Some(Ok(at)) => now >= at,
        Some(Err(())) => true,
    }
}

/// Why `presented` (`id.secret`) is not authenticated by `secret` (the Secret of its id), or
/// the user it is, at `now`.
pub fn user(secret: &Value, presented: &str, now: DateTime<Utc>) -> Result<UserInfo, &'static str> {
    let (id, token_secret) = parse(presented).ok_or("not a bootstrap token")?;
    if !secret["metadata"]["deletionTimestamp"].is_null() {
        return Err("the token's Secret is being deleted");
    }
    if secret["type"] != SECRET_TYPE {
        return Err("the Secret is not a bootstrap token");
    }
    let stored = data(secret, "token-secret").unwrap_or_default();
    if !constant_time_eq(stored.as_bytes(), token_secret.as_bytes()) {
        return Err("wrong token secret");
    }
    if data(secret, "token-id").as_deref() != Some(id) {
        return Err("the Secret is for another token id");
    }
    if has_expired(secret, now) {
        return Err("the token has expired");
    }
    if data(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("the token may not be used for authentication");
    }
    let mut groups = vec![BOOTSTRAPPERS.to_owned()];
    for group in data(secret, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        if !valid_extra_group(group) {
            return Err("invalid auth-extra-groups");
        }
        if !groups.iter().any(|g| g == group) {
            groups.push(group.to_owned());
        }
    }
    Ok(super::with_authenticated_group(UserInfo {
        name: format!("{USER_PREFIX}{id}"),
        groups,
        ..UserInfo::default()
    }))
}

/// `^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$`: extra groups stay under
/// `system:bootstrappers:`, so a token can never be `system:masters`.
fn valid_extra_group(group: &str) -> bool {
    let Some(rest) = group.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
        && rest
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user of `presented`, if it is a bootstrap token whose Secret (read from `store`)
/// authenticates it now.
pub async fn authenticate(store: &dyn crate::store::Store, presented: &str) -> Option<UserInfo> {
    use crate::apiserver::resources::StorageKeys as _;
    let (id, _) = parse(presented)?;
    let key = apiary_api::resource::SECRETS.key(Some(NAMESPACE), &format!("{SECRET_PREFIX}{id}"));
    let kv = store.get(&key).await.ok()??;
    let secret: Value = serde_json::from_slice(&kv.value).ok()?;
    match user(&secret, presented, Utc::now()) {
        Ok(user) => Some(user),
        Err(why) => {
            tracing::debug!(token_id = id, why, "bootstrap token refused");
            None
        }
    }
}

/// The Secret for `token`, valid until `expires` (`None`: forever), usable to authenticate
/// and to sign `cluster-info`, as `kubeadm token create` makes it.
pub fn secret(token: &str, expires: Option<DateTime<Utc>>, description: &str) -> Option<Value> {
    use base64::Engine as _;
    let (id, token_secret) = parse(token)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut data = json!({
        "token-id": b64(id),
        "token-secret": b64(token_secret),
        "usage-bootstrap-authentication": b64("true"),
        "usage-bootstrap-signing": b64("true"),
        "description": b64(description),
    });
    if let Some(at) = expires {
        data["expiration"] = json!(b64(&at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("{SECRET_PREFIX}{id}"), "namespace": NAMESPACE},
        "type": SECRET_TYPE,
        "data": data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn generated_tokens_have_the_kubeadm_shape() {
        for _ in 0..20 {
            assert!(parse(&generate()).is_some());
        }
    }

    #[test]
    fn a_live_token_is_a_bootstrapper_with_its_extra_groups() {
        let mut s = secret(TOKEN, Some(now() + chrono::Duration::hours(1)), "t").unwrap();
        use base64::Engine as _;
        s["data"]["auth-extra-groups"] = json!(
            base64::engine::general_purpose::STANDARD.encode("system:bootstrappers:apiary:nodes")
        );
        let user = user(&s, TOKEN, now()).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:apiary:nodes",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn expired_wrong_deleted_and_unusable_tokens_are_refused() {
        use base64::Engine as _;
        let b64 = |s: &str| json!(base64::engine::general_purpose::STANDARD.encode(s));
        let live = secret(TOKEN, Some(now() + chrono::Duration::hours(1)), "t").unwrap();
        let expired = secret(TOKEN, Some(now() - chrono::Duration::seconds(1)), "t").unwrap();
        assert_eq!(user(&expired, TOKEN, now()), Err("the token has expired"));
        assert!(has_expired(&expired, now()) && !has_expired(&live, now()));
        let mut garbled = live.clone();
        garbled["data"]["expiration"] = b64("tomorrow");
        assert_eq!(user(&garbled, TOKEN, now()), Err("the token has expired"));
        assert_eq!(
            user(&live, "abcdef.0123456789abcdee", now()),
            Err("wrong token secret")
        );
        let mut deleting = live.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(user(&deleting, TOKEN, now()).is_err());
        let mut opaque = live.clone();
        opaque["type"] = json!("Opaque");
        assert!(user(&opaque, TOKEN, now()).is_err());
        let mut no_auth = live.clone();
        no_auth["data"]["usage-bootstrap-authentication"] = b64("false");
        assert!(user(&no_auth, TOKEN, now()).is_err());
        let mut other_id = live.clone();
        other_id["data"]["token-id"] = b64("zzzzzz");
        assert!(user(&other_id, TOKEN, now()).is_err());
        // Extra groups cannot leave system:bootstrappers: (no system:masters by a token).
        let mut masters = live;
        masters["data"]["auth-extra-groups"] = b64("system:masters");
        assert_eq!(
            user(&masters, TOKEN, now()),
            Err("invalid auth-extra-groups")
        );
        // Forever tokens have no expiration.
        assert!(user(&secret(TOKEN, None, "t").unwrap(), TOKEN, now()).is_ok());
    }
}
