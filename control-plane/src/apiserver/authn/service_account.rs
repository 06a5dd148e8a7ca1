//! ServiceAccount tokens: ES256 JWTs signed with `<data-dir>/pki/sa.key`, issued by TokenRequest
//! (`serviceaccounts/<name>/token`) with an expiry, audiences and optionally a pod they are bound
//! to, and authenticating as `system:serviceaccount:<ns>:<name>` in `system:serviceaccounts`,
//! `system:serviceaccounts:<ns>`. The issuer's keys are published as kube-apiserver does
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`).

use std::path::Path;

use base64::Engine as _;
use ring::{
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    },
};
use serde_json::{Value, json};

use super::{API_AUDIENCE, UserInfo, with_authenticated_group};
use crate::apiserver::pki;

/// The signing key's file under `<data-dir>/pki`.
/// The signing key under `<data-dir>/pki`.
pub const SA_KEY: &str = "sa.key";

/// Signs and verifies service account tokens.
pub struct Issuer {
    key: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("kid", &self.kid).finish()
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub user: UserInfo,
    pub audiences: Vec<String>,
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// `(name, uid)` of the pod the token is bound to.
    pub pod: Option<(String, String)>,
    /// For a legacy token, the `kubernetes.io/service-account-token` Secret holding it: it is
    /// valid while that Secret holds it.
    pub secret: Option<String>,
}

/// The issuer of legacy (Secret-held, non-expiring) tokens, as Kubernetes' tokens controller.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    /// Loads `<pki_dir>/sa.key`, creating it (P-256, mode 0600) on first start.
    pub fn load_or_create(pki_dir: &Path) -> pki::Result<Self> {
        let path = pki_dir.join(SA_KEY);
        if !path.exists() {
            let key = rcgen::KeyPair::generate()?;
            pki::write_private(&path, key.serialize_pem().as_bytes())?;
        }
        let pem = pki::read(&path)?;
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .ok()
            .flatten()
            .ok_or(pki::Error::Missing {
                path: path.clone(),
                what: "private key",
            })?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_der(),
            &SystemRandom::new(),
        )
        .map_err(|_| pki::Error::Missing {
            path,
            what: "P-256 private key",
        })?;
        let kid =
            b64(ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref()).as_ref());
        Ok(Self { key, kid })
    }

    /// `/openid/v1/jwks`: the public key.
    pub fn jwks(&self) -> Value {
        // An uncompressed point: 0x04, X, Y.
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": API_AUDIENCE,
            "jwks_uri": format!("{API_AUDIENCE}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// A signed token with `claims` (the issuer is set here).
    pub fn sign(&self, mut claims: Value) -> String {
        claims["iss"] = API_AUDIENCE.into();
        self.sign_as_is(&claims)
    }

    /// A legacy token of service account `name` (uid `uid`) in `namespace`, for the Secret
    /// `secret`: Kubernetes' flat claims, no audience and no expiry (it lives as long as the
    /// Secret holds it).
    pub fn sign_legacy(&self, namespace: &str, secret: &str, name: &str, uid: &str) -> String {
        let claims = json!({
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": uid,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        self.sign_as_is(&claims)
    }

    fn sign_as_is(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("ECDSA signing does not fail with a valid key");
        format!("{input}.{}", b64(signature.as_ref()))
    }

    /// The claims of `token` if this issuer signed it and it is valid at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Option<Verified> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let decode = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()
        };
        let header: Value = serde_json::from_slice(&decode(header)?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        ring::signature::UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(&token.as_bytes()[..token.rfind('.')?], &decode(signature)?)
        .ok()?;
        let claims: Value = serde_json::from_slice(&decode(claims)?).ok()?;
        if claims["iss"] == LEGACY_ISSUER {
            return legacy(&claims);
        }
        if claims["iss"] != API_AUDIENCE
            || claims["exp"].as_i64()? <= now
            || claims["nbf"].as_i64().is_some_and(|nbf| nbf > now)
        {
            return None;
        }
        let k8s = &claims["kubernetes.io"];
        let namespace = k8s["namespace"].as_str()?.to_owned();
        let name = k8s["serviceaccount"]["name"].as_str()?.to_owned();
        let uid = k8s["serviceaccount"]["uid"].as_str()?.to_owned();
        let pod = k8s["pod"]["name"]
            .as_str()
            .zip(k8s["pod"]["uid"].as_str())
            .map(|(n, u)| (n.to_owned(), u.to_owned()));
        let mut extra = std::collections::BTreeMap::new();
        if let Some((pod_name, pod_uid)) = &pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec![pod_name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec![pod_uid.clone()],
            );
        }
        if let Some(jti) = claims["jti"].as_str() {
            extra.insert(
                "authentication.kubernetes.io/credential-id".to_owned(),
                vec![format!("JTI={jti}")],
            );
        }
        let user = with_authenticated_group(UserInfo {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.clone(),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
            ],
            extra,
        });
        let audiences = match &claims["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Some(Verified {
            user,
            audiences,
            namespace,
            service_account: name,
            service_account_uid: uid,
            pod,
            secret: None,
        })
    }
}

/// What a legacy token says (Kubernetes' flat claims); valid for the API server only.
fn legacy(claims: &Value) -> Option<Verified> {
    let claim = |name: &str| {
        claims[format!("kubernetes.io/serviceaccount/{name}")]
            .as_str()
            .map(str::to_owned)
    };
    let namespace = claim("namespace")?;
    let name = claim("service-account.name")?;
    let uid = claim("service-account.uid")?;
    let secret = claim("secret.name")?;
    let user = with_authenticated_group(UserInfo {
        name: format!("system:serviceaccount:{namespace}:{name}"),
        uid: uid.clone(),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
        ],
        extra: std::collections::BTreeMap::new(),
    });
    Some(Verified {
        user,
        audiences: vec![API_AUDIENCE.to_owned()],
        namespace,
        service_account: name,
        service_account_uid: uid,
        pod: None,
        secret: Some(secret),
    })
}

/// Whether what `verified` (the claims of `token`) was issued for still exists: its service
/// account (same uid), the pod it is bound to (same uid, not being deleted), and for a legacy
/// token the Secret still holding it, as Kubernetes checks on every request.
pub async fn still_bound(
    store: &dyn crate::store::Store,
    verified: &Verified,
    token: &str,
) -> bool {
    use crate::apiserver::resources::StorageKeys as _;
    let object = async |resource: &apiary_api::resource::ResourceInfo, name: &str| {
        let kv = store
            .get(&resource.key(Some(&verified.namespace), name))
            .await
            .ok()??;
        serde_json::from_slice::<Value>(&kv.value).ok()
    };
    let Some(sa) = object(
        &apiary_api::resource::SERVICE_ACCOUNTS,
        &verified.service_account,
    )
    .await
    else {
        return false;
    };
    if sa["metadata"]["uid"] != verified.service_account_uid.as_str()
        || !sa["metadata"]["deletionTimestamp"].is_null()
    {
        return false;
    }
    if let Some(secret) = &verified.secret {
        use base64::Engine as _;
        let held = object(&apiary_api::resource::SECRETS, secret)
            .await
            .and_then(|s| s["data"]["token"].as_str().map(str::to_owned))
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok());
        if held.as_deref() != Some(token.as_bytes()) {
            return false;
        }
    }
    match &verified.pod {
        None => true,
        Some((name, uid)) => object(&apiary_api::resource::PODS, name)
            .await
            .is_some_and(|pod| {
                pod["metadata"]["uid"] == uid.as_str()
                    && pod["metadata"]["deletionTimestamp"].is_null()
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Value {
        json!({"aud": [API_AUDIENCE], "exp": exp, "iat": 0, "nbf": 0, "jti": "j1",
               "sub": "system:serviceaccount:ns:sa",
               "kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "sa", "uid": "u1"}}})
    }

    #[test]
    fn legacy_tokens_name_their_secret_and_never_expire() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Issuer::load_or_create(dir.path()).unwrap();
        let token = issuer.sign_legacy("ns", "sa-token", "sa", "u1");
        let verified = issuer.verify(&token, i64::MAX).unwrap();
        assert_eq!(verified.user.name, "system:serviceaccount:ns:sa");
        assert_eq!(verified.service_account_uid, "u1");
        assert_eq!(verified.secret.as_deref(), Some("sa-token"));
        assert_eq!(verified.audiences, [API_AUDIENCE]);
        // Another issuer's legacy token is not ours.
        let other = Issuer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.verify(&token, 0), None);
    }

    #[test]
    fn signed_tokens_verify_until_they_expire_and_tampered_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Issuer::load_or_create(dir.path()).unwrap();
        let token = issuer.sign(claims(100));
        let verified = issuer.verify(&token, 50).unwrap();
        assert_eq!(verified.user.name, "system:serviceaccount:ns:sa");
        assert_eq!(
            verified.user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
        assert_eq!(verified.audiences, [API_AUDIENCE]);
        assert_eq!(issuer.verify(&token, 100), None);
        let other = Issuer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.verify(&token, 50), None);
        let again = Issuer::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token, 50).is_some(), "the key is kept");
        let mut forged = claims(100);
        forged["kubernetes.io"]["serviceaccount"]["name"] = "admin".into();
        let forged_payload = b64(forged.to_string().as_bytes());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(issuer.verify(&tampered, 50), None);
    }
}
