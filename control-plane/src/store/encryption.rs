//! Encryption at rest, as kube-apiserver's `--encryption-provider-config`: an
//! `EncryptionConfiguration` (`apiserver.config.k8s.io/v1`) names, for some resources, a list of
//! providers — `aesgcm`, `aescbc`, `secretbox` (each with keys) and `identity` (plain text). The
//! first key of the first provider encrypts what is written; every listed key (and `identity`,
//! for what was stored before encryption was turned on) reads. A value is stored as Kubernetes
//! stores it: `k8s:enc:<provider>:v1:<key name>:` then the provider's ciphertext, so a store
//! written by kube-apiserver and one written by Apiary read the same.
//!
//! [`EncryptedStore`] applies it to any [`Store`], one layer above both backends. A value no
//! configured key reads is an error naming the key it needs; nothing is dropped or rewritten.

use std::{collections::BTreeSet, path::Path, sync::Arc};

use aes_gcm::aead::{Aead, KeyInit, Payload, generic_array::GenericArray};
use base64::Engine as _;
use futures::StreamExt as _;
use rand::RngCore as _;
use serde::Deserialize;

use super::{
    Error, KeyValue, ListOptions, ListPage, Result, Revision, Store, WatchEvent, WatchStream,
};

/// What every encrypted value starts with.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

/// Why an encryption configuration cannot be used; the control plane does not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the encryption configuration: {0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
}

// The file's format: Kubernetes' `EncryptionConfiguration`.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncryptionConfiguration {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfiguration>,
}

#[derive(Debug, Deserialize)]
struct ResourceConfiguration {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<ProviderConfiguration>,
}

#[derive(Debug, Default, Deserialize)]
struct ProviderConfiguration {
    aesgcm: Option<KeysConfiguration>,
    aescbc: Option<KeysConfiguration>,
    secretbox: Option<KeysConfiguration>,
    identity: Option<serde_yaml::Value>,
    kms: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
struct KeysConfiguration {
    #[serde(default)]
    keys: Vec<KeyConfiguration>,
}

#[derive(Debug, Deserialize)]
struct KeyConfiguration {
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

/// One way to store a value: its prefix and cipher.
#[derive(Clone)]
struct Transformer {
    /// `k8s:enc:<provider>:v1:<key>:`, empty for identity.
    prefix: Vec<u8>,
    cipher: Cipher,
}

#[derive(Clone)]
enum Cipher {
    Identity,
    /// AES-GCM with a random 12-byte nonce, authenticating the storage key. (Boxed: the
    /// expanded key schedule is a kilobyte.)
    AesGcm(Box<AesGcmKey>),
    /// AES-256-CBC with a random IV and PKCS#7 padding.
    AesCbc([u8; 32]),
    /// NaCl secretbox (XSalsa20-Poly1305) with a random 24-byte nonce.
    SecretBox([u8; 32]),
}

#[derive(Clone)]
enum AesGcmKey {
    Aes128(aes_gcm::Aes128Gcm),
    Aes192(aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>),
    Aes256(aes_gcm::Aes256Gcm),
}

const GCM_NONCE: usize = 12;
const CBC_IV: usize = 16;
const SECRETBOX_NONCE: usize = 24;

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

impl Transformer {
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.prefix).into_owned()
    }

    fn seal(&self, storage_key: &str, plain: &[u8]) -> Vec<u8> {
        let mut out = self.prefix.clone();
        match &self.cipher {
            Cipher::Identity => out.extend_from_slice(plain),
            Cipher::AesGcm(key) => {
                let nonce = random::<GCM_NONCE>();
                let payload = Payload {
                    msg: plain,
                    aad: storage_key.as_bytes(),
                };
                let nonce_ref = GenericArray::from_slice(&nonce);
                let sealed = match key.as_ref() {
                    AesGcmKey::Aes128(c) => c.encrypt(nonce_ref, payload),
                    AesGcmKey::Aes192(c) => c.encrypt(nonce_ref, payload),
                    AesGcmKey::Aes256(c) => c.encrypt(nonce_ref, payload),
                }
                .expect("AES-GCM encrypts any value under 64 GiB");
                out.extend_from_slice(&nonce);
                out.extend(sealed);
            }
            Cipher::AesCbc(key) => {
                use cbc::cipher::{BlockEncryptMut as _, KeyIvInit as _, block_padding::Pkcs7};
                let iv = random::<CBC_IV>();
                let sealed = cbc::Encryptor::<aes::Aes256>::new(key.into(), (&iv).into())
                    .encrypt_padded_vec_mut::<Pkcs7>(plain);
                out.extend_from_slice(&iv);
                out.extend(sealed);
            }
            Cipher::SecretBox(key) => {
                let nonce = random::<SECRETBOX_NONCE>();
                let sealed = crypto_secretbox::XSalsa20Poly1305::new(key.into())
                    .encrypt(GenericArray::from_slice(&nonce), plain)
                    .expect("secretbox seals any value");
                out.extend_from_slice(&nonce);
                out.extend(sealed);
            }
        }
        out
    }

    /// The plain value of `sealed` (without this transformer's prefix).
    fn open(&self, storage_key: &str, sealed: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let split = |n: usize| {
            (sealed.len() >= n)
                .then(|| sealed.split_at(n))
                .ok_or_else(|| "the stored value is too short".to_owned())
        };
        match &self.cipher {
            Cipher::Identity if sealed.starts_with(ENCRYPTED_PREFIX) => {
                Err("identity transformer tried to read encrypted data".to_owned())
            }
            Cipher::Identity => Ok(sealed.to_vec()),
            Cipher::AesGcm(key) => {
                let (nonce, data) = split(GCM_NONCE)?;
                let payload = Payload {
                    msg: data,
                    aad: storage_key.as_bytes(),
                };
                let nonce = GenericArray::from_slice(nonce);
                match key.as_ref() {
                    AesGcmKey::Aes128(c) => c.decrypt(nonce, payload),
                    AesGcmKey::Aes192(c) => c.decrypt(nonce, payload),
                    AesGcmKey::Aes256(c) => c.decrypt(nonce, payload),
                }
                .map_err(|_| "cipher: message authentication failed".to_owned())
            }
            Cipher::AesCbc(key) => {
                use cbc::cipher::{BlockDecryptMut as _, KeyIvInit as _, block_padding::Pkcs7};
                let (iv, data) = split(CBC_IV)?;
                if data.is_empty() || data.len() % CBC_IV != 0 {
                    return Err("the stored data is not a multiple of the block size".to_owned());
                }
                cbc::Decryptor::<aes::Aes256>::new(key.into(), GenericArray::from_slice(iv))
                    .decrypt_padded_vec_mut::<Pkcs7>(data)
                    .map_err(|_| "invalid padding on input".to_owned())
            }
            Cipher::SecretBox(key) => {
                let (nonce, data) = split(SECRETBOX_NONCE)?;
                crypto_secretbox::XSalsa20Poly1305::new(key.into())
                    .decrypt(GenericArray::from_slice(nonce), data)
                    .map_err(|_| "output array too small or decryption failed".to_owned())
            }
        }
    }
}

/// Which resources a rule covers: `secrets`, `deployments.apps`, `*.apps`, `*.` (the core
/// group), `*.*` (everything).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ResourceMatch {
    /// `None`: any.
    resource: Option<String>,
    /// `None`: any; `Some("")`: the core group.
    group: Option<String>,
}

impl ResourceMatch {
    fn parse(name: &str) -> std::result::Result<Self, ConfigError> {
        let (resource, group) = name.split_once('.').unwrap_or((name, ""));
        if resource.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "resources: {name:?} is not a resource name"
            )));
        }
        let any = |s: &str| (s != "*").then(|| s.to_owned());
        if resource == "*" && group.is_empty() && !name.ends_with('.') {
            return Err(ConfigError::Invalid(format!(
                "resources: {name:?}: use '*.' for every resource of the core group or '*.*' for all"
            )));
        }
        Ok(Self {
            resource: any(resource),
            group: any(group),
        })
    }

    /// Whether it covers the object at storage key `/registry/<group>/<plural>/…` (`core` is
    /// the core group).
    fn covers(&self, storage_key: &str) -> bool {
        // `*.*` is every value the store holds, resource or not (address claims, leases …).
        if self.resource.is_none() && self.group.is_none() {
            return true;
        }
        let mut parts = storage_key.trim_start_matches('/').split('/');
        let (Some("registry"), Some(group), Some(plural)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let group = if group == "core" { "" } else { group };
        self.resource.as_deref().is_none_or(|r| r == plural)
            && self.group.as_deref().is_none_or(|g| g == group)
    }
}

struct Rule {
    resources: Vec<ResourceMatch>,
    /// In order: the first writes, all read.
    transformers: Vec<Transformer>,
}

/// A loaded `EncryptionConfiguration`.
pub struct EncryptionConfig {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the keys stay out of logs.
        let rules: Vec<Vec<String>> = self
            .rules
            .iter()
            .map(|r| r.transformers.iter().map(Transformer::name).collect())
            .collect();
        f.debug_struct("EncryptionConfig")
            .field("rules", &rules)
            .finish()
    }
}

impl EncryptionConfig {
    /// Reads and checks the file given to `--encryption-provider-config`.
    pub fn load(path: &Path) -> std::result::Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses an `EncryptionConfiguration` (YAML or JSON).
    pub fn parse(text: &str) -> std::result::Result<Self, ConfigError> {
        let config: EncryptionConfiguration =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if config.kind != "EncryptionConfiguration"
            || config.api_version != "apiserver.config.k8s.io/v1"
        {
            return Err(ConfigError::Invalid(format!(
                "expected kind EncryptionConfiguration of apiserver.config.k8s.io/v1, got kind {:?} of {:?}",
                config.kind, config.api_version
            )));
        }
        if config.resources.is_empty() {
            return Err(ConfigError::Invalid(
                "resources: at least one resource configuration is required".to_owned(),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut rules = Vec::new();
        for (i, rc) in config.resources.iter().enumerate() {
            let at = format!("resources[{i}]");
            if rc.resources.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{at}.resources: at least one resource is required"
                )));
            }
            let mut resources = Vec::new();
            for name in &rc.resources {
                if !seen.insert(name.clone()) {
                    return Err(ConfigError::Invalid(format!(
                        "{at}.resources: {name:?} is listed more than once"
                    )));
                }
                resources.push(ResourceMatch::parse(name)?);
            }
            if rc.providers.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{at}.providers: at least one provider is required"
                )));
            }
            let mut transformers = Vec::new();
            for (j, provider) in rc.providers.iter().enumerate() {
                transformers.extend(transformers_of(provider, &format!("{at}.providers[{j}]"))?);
            }
            rules.push(Rule {
                resources,
                transformers,
            });
        }
        Ok(Self { rules })
    }

    /// The transformers of the first rule covering `storage_key`; `None`: stored as it is.
    fn transformers(&self, storage_key: &str) -> Option<&[Transformer]> {
        self.rules
            .iter()
            .find(|r| r.resources.iter().any(|m| m.covers(storage_key)))
            .map(|r| r.transformers.as_slice())
    }

    /// The bytes to store for `plain` at `storage_key`.
    pub fn to_storage(&self, storage_key: &str, plain: Vec<u8>) -> Vec<u8> {
        match self.transformers(storage_key).and_then(|t| t.first()) {
            Some(first) => first.seal(storage_key, &plain),
            None => plain,
        }
    }

    /// Whether `stored` (at `storage_key`) was written otherwise than [`Self::to_storage`]
    /// writes now: with another key or provider, or sealed where values are now stored plain.
    pub fn is_stale(&self, storage_key: &str, stored: &[u8]) -> bool {
        match self.transformers(storage_key).and_then(|t| t.first()) {
            Some(first) if !first.prefix.is_empty() => !stored.starts_with(&first.prefix),
            // Stored plain now (identity first, or not covered): sealed values are stale.
            _ => written_by(stored).is_some(),
        }
    }

    /// The plain value of what is stored at `storage_key`.
    pub fn from_storage(&self, storage_key: &str, stored: Vec<u8>) -> Result<Vec<u8>> {
        let Some(transformers) = self.transformers(storage_key) else {
            return Ok(stored);
        };
        let mut failure = None;
        for t in transformers {
            if !stored.starts_with(&t.prefix) {
                continue;
            }
            match t.open(storage_key, &stored[t.prefix.len()..]) {
                Ok(plain) => return Ok(plain),
                // Identity is tried on anything: what it cannot read, a later key may.
                Err(_) if t.prefix.is_empty() => {}
                Err(reason) => {
                    failure = Some(format!("{} ({})", reason, t.name()));
                    break;
                }
            }
        }
        let reason = failure.unwrap_or_else(|| match written_by(&stored) {
            Some(by) => format!(
                "no matching prefix found: it was written with {by}, which the encryption configuration does not have"
            ),
            None => "no matching prefix found: it is not encrypted and the encryption configuration has no identity provider".to_owned(),
        });
        Err(Error::Transform {
            key: storage_key.to_owned(),
            reason,
        })
    }
}

/// `k8s:enc:<provider>:v1:<key>:` of an encrypted value.
fn written_by(stored: &[u8]) -> Option<String> {
    if !stored.starts_with(ENCRYPTED_PREFIX) {
        return None;
    }
    // `k8s`, `enc`, provider, `v1`, key name: five fields and their colons.
    let mut colons = 0;
    let end = stored.iter().position(|&b| {
        colons += usize::from(b == b':');
        colons == 5
    })?;
    Some(String::from_utf8_lossy(&stored[..=end]).into_owned())
}

fn transformers_of(
    provider: &ProviderConfiguration,
    at: &str,
) -> std::result::Result<Vec<Transformer>, ConfigError> {
    let kinds = [
        provider.aesgcm.as_ref().map(|k| ("aesgcm", k)),
        provider.aescbc.as_ref().map(|k| ("aescbc", k)),
        provider.secretbox.as_ref().map(|k| ("secretbox", k)),
    ];
    let set = kinds.iter().flatten().count()
        + usize::from(provider.identity.is_some())
        + usize::from(provider.kms.is_some());
    if set != 1 {
        return Err(ConfigError::Invalid(format!(
            "{at}: exactly one provider must be set, {set} are"
        )));
    }
    if provider.kms.is_some() {
        return Err(ConfigError::Invalid(format!(
            "{at}: the kms provider is not supported (a KMS plugin needs a gRPC socket Apiary does not speak); use aesgcm, aescbc or secretbox"
        )));
    }
    if provider.identity.is_some() {
        return Ok(vec![Transformer {
            prefix: Vec::new(),
            cipher: Cipher::Identity,
        }]);
    }
    let (kind, keys) = kinds.into_iter().flatten().next().expect("one is set");
    if keys.keys.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{at}.{kind}.keys: at least one key is required"
        )));
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (k, key) in keys.keys.iter().enumerate() {
        let kp = format!("{at}.{kind}.keys[{k}]");
        if key.name.is_empty() || key.name.contains(':') {
            return Err(ConfigError::Invalid(format!(
                "{kp}.name: a key needs a name without ':'"
            )));
        }
        if !names.insert(key.name.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "{kp}.name: {:?} is used twice",
                key.name
            )));
        }
        let secret = base64::engine::general_purpose::STANDARD
            .decode(key.secret.trim())
            .map_err(|_| ConfigError::Invalid(format!("{kp}.secret: not valid base64")))?;
        let size_error = |allowed: &str| {
            ConfigError::Invalid(format!(
                "{kp}.secret: a {kind} key is {allowed} bytes, this one is {}",
                secret.len()
            ))
        };
        let cipher = match kind {
            "aesgcm" => Cipher::AesGcm(Box::new(match secret.len() {
                16 => AesGcmKey::Aes128(aes_gcm::Aes128Gcm::new_from_slice(&secret).expect("16")),
                24 => AesGcmKey::Aes192(
                    aes_gcm::AesGcm::<aes::Aes192, _>::new_from_slice(&secret).expect("24"),
                ),
                32 => AesGcmKey::Aes256(aes_gcm::Aes256Gcm::new_from_slice(&secret).expect("32")),
                _ => return Err(size_error("16, 24 or 32")),
            })),
            "aescbc" => Cipher::AesCbc(secret.as_slice().try_into().map_err(|_| size_error("32"))?),
            _ => Cipher::SecretBox(secret.as_slice().try_into().map_err(|_| size_error("32"))?),
        };
        out.push(Transformer {
            prefix: format!("k8s:enc:{kind}:v1:{}:", key.name).into_bytes(),
            cipher,
        });
    }
    Ok(out)
}

/// A [`Store`] whose values are encrypted as an [`EncryptionConfig`] says.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    config: Arc<EncryptionConfig>,
}

impl std::fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, config: EncryptionConfig) -> Self {
        Self {
            inner,
            config: Arc::new(config),
        }
    }
}

fn open_kv(config: &EncryptionConfig, mut kv: KeyValue) -> Result<KeyValue> {
    kv.value = config.from_storage(&kv.key, std::mem::take(&mut kv.value))?;
    Ok(kv)
}

fn open_error(config: &EncryptionConfig, e: Error) -> Error {
    match e {
        Error::Conflict {
            key,
            expected,
            current,
        } => match open_kv(config, current) {
            Ok(current) => Error::Conflict {
                key,
                expected,
                current,
            },
            Err(e) => e,
        },
        other => other,
    }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner
            .get(key)
            .await?
            .map(|kv| open_kv(&self.config, kv))
            .transpose()
    }

    async fn get_at(&self, keys: &[String], revision: Revision) -> Result<Vec<KeyValue>> {
        self.inner
            .get_at(keys, revision)
            .await?
            .into_iter()
            .map(|kv| open_kv(&self.config, kv))
            .collect()
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage> {
        let mut page = self.inner.list(prefix, options).await?;
        page.items = std::mem::take(&mut page.items)
            .into_iter()
            .map(|kv| open_kv(&self.config, kv))
            .collect::<Result<_>>()?;
        Ok(page)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let sealed = self.config.to_storage(key, value.clone());
        let mut kv = self.inner.create(key, sealed).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue> {
        let sealed = self.config.to_storage(key, value.clone());
        let mut kv = self
            .inner
            .update(key, sealed, expected)
            .await
            .map_err(|e| open_error(&self.config, e))?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let kv = self
            .inner
            .delete(key, expected)
            .await
            .map_err(|e| open_error(&self.config, e))?;
        open_kv(&self.config, kv)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let config = Arc::clone(&self.config);
        let stream = self.inner.watch(prefix, after).await?;
        Ok(Box::pin(stream.map(move |event| {
            Ok(match event? {
                WatchEvent::Put { kv, prev } => WatchEvent::Put {
                    kv: open_kv(&config, kv)?,
                    prev: prev.map(|p| open_kv(&config, p)).transpose()?,
                },
                WatchEvent::Delete { prev, revision } => WatchEvent::Delete {
                    prev: open_kv(&config, prev)?,
                    revision,
                },
            })
        })))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn revision(&self) -> Result<Revision> {
        self.inner.revision().await
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    async fn is_stale(&self, key: &str) -> Result<bool> {
        Ok(match self.inner.get(key).await? {
            Some(kv) => self.config.is_stale(key, &kv.value),
            None => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY1: &str = "c2VjcmV0IGlzIHNlY3VyZSwgaXMgc2VjdXJlLCBpcz8="; // 32 bytes
    const KEY2: &str = "dGhpcyBpcyBwYXNzd29yZCwgdGhpcyBpcyBzZWN1cmU="; // 32 bytes
    const SECRET_KEY: &str = "/registry/core/secrets/default/db";

    fn config(providers: &str) -> EncryptionConfig {
        EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .unwrap()
    }

    fn keys(kind: &str, names: &[(&str, &str)]) -> String {
        let mut out = format!("  - {kind}:\n      keys:\n");
        for (name, secret) in names {
            out.push_str(&format!("      - {{name: {name}, secret: {secret}}}\n"));
        }
        out
    }

    #[test]
    fn every_provider_round_trips_with_kubernetes_prefix_and_no_plain_text() {
        let aes128 = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let aes192 = base64::engine::general_purpose::STANDARD.encode([7u8; 24]);
        for (kind, secret) in [
            ("aesgcm", KEY1),
            ("aesgcm", aes128.as_str()),
            ("aesgcm", aes192.as_str()),
            ("aescbc", KEY1),
            ("secretbox", KEY1),
        ] {
            let c = config(&keys(kind, &[("key1", secret)]));
            let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#.to_vec();
            let stored = c.to_storage(SECRET_KEY, plain.clone());
            let prefix = format!("k8s:enc:{kind}:v1:key1:");
            assert!(stored.starts_with(prefix.as_bytes()), "{kind}");
            assert!(
                !stored.windows(8).any(|w| w == b"password"),
                "{kind} leaks plain text"
            );
            assert_eq!(c.from_storage(SECRET_KEY, stored.clone()).unwrap(), plain);
            // Two writes of the same value differ (random nonce or IV).
            assert_ne!(c.to_storage(SECRET_KEY, plain.clone()), stored, "{kind}");
        }
    }

    #[test]
    fn values_not_sealed_as_the_first_provider_seals_are_stale() {
        let plain = b"{}".to_vec();
        let key1 = config(&keys("aescbc", &[("key1", KEY1)]));
        let sealed1 = key1.to_storage(SECRET_KEY, plain.clone());
        assert!(!key1.is_stale(SECRET_KEY, &sealed1));
        assert!(key1.is_stale(SECRET_KEY, &plain), "plain where it seals");
        // key2 first, key1 still read: key1's values are stale, key2's are not.
        let rotated = config(&keys("aescbc", &[("key2", KEY2), ("key1", KEY1)]));
        assert!(rotated.is_stale(SECRET_KEY, &sealed1));
        let sealed2 = rotated.to_storage(SECRET_KEY, plain.clone());
        assert!(!rotated.is_stale(SECRET_KEY, &sealed2));
        // Identity first (decrypting to turn encryption off): sealed values are stale.
        let off = config(&format!(
            "  - identity: {{}}\n{}",
            keys("aescbc", &[("key1", KEY1)])
        ));
        assert!(off.is_stale(SECRET_KEY, &sealed1));
        assert!(!off.is_stale(SECRET_KEY, &plain));
        // A resource no rule covers is stored plain.
        assert!(!key1.is_stale("/registry/core/configmaps/default/c", &plain));
    }

    #[test]
    fn aes_gcm_values_are_bound_to_their_key() {
        let c = config(&keys("aesgcm", &[("key1", KEY1)]));
        let stored = c.to_storage(SECRET_KEY, b"x".to_vec());
        let err = c
            .from_storage("/registry/core/secrets/default/other", stored)
            .unwrap_err();
        assert!(
            err.to_string().contains("message authentication failed"),
            "{err}"
        );
    }

    #[test]
    fn the_first_key_writes_and_every_key_and_identity_read() {
        let old = config(&keys("aescbc", &[("key1", KEY1)]));
        let written_by_key1 = old.to_storage(SECRET_KEY, b"one".to_vec());
        let rotated = config(&format!(
            "{}  - identity: {{}}\n",
            keys("aescbc", &[("key2", KEY2), ("key1", KEY1)])
        ));
        assert_eq!(
            rotated.from_storage(SECRET_KEY, written_by_key1).unwrap(),
            b"one"
        );
        assert_eq!(
            rotated
                .from_storage(SECRET_KEY, b"{\"plain\":1}".to_vec())
                .unwrap(),
            b"{\"plain\":1}"
        );
        let written = rotated.to_storage(SECRET_KEY, b"two".to_vec());
        assert!(written.starts_with(b"k8s:enc:aescbc:v1:key2:"));
        // Resources not listed are stored as they are.
        assert_eq!(
            rotated.to_storage("/registry/core/configmaps/default/c", b"cm".to_vec()),
            b"cm"
        );
    }

    #[test]
    fn a_value_no_configured_key_reads_is_an_error_naming_the_key_it_needs() {
        let old = config(&keys("secretbox", &[("key1", KEY1)]));
        let stored = old.to_storage(SECRET_KEY, b"one".to_vec());
        let other = config(&keys("secretbox", &[("key2", KEY2)]));
        assert_eq!(
            other
                .from_storage(SECRET_KEY, stored)
                .unwrap_err()
                .to_string(),
            "unable to transform key \"/registry/core/secrets/default/db\": no matching prefix found: it was written with k8s:enc:secretbox:v1:key1:, which the encryption configuration does not have"
        );
        // A key with the same name but other bytes fails authentication, it does not return
        // garbage.
        let wrong = config(&keys("secretbox", &[("key1", KEY2)]));
        let stored = old.to_storage(SECRET_KEY, b"one".to_vec());
        assert!(wrong.from_storage(SECRET_KEY, stored).is_err());
        // Plain text without identity configured.
        assert!(
            old.from_storage(SECRET_KEY, b"{}".to_vec())
                .unwrap_err()
                .to_string()
                .contains("has no identity provider")
        );
    }

    #[test]
    fn resources_match_as_kubernetes_names_them() {
        let m = |name: &str, key: &str| ResourceMatch::parse(name).unwrap().covers(key);
        assert!(m("secrets", "/registry/core/secrets/ns/a"));
        assert!(!m("secrets", "/registry/core/configmaps/ns/a"));
        assert!(m("deployments.apps", "/registry/apps/deployments/ns/a"));
        assert!(!m("deployments.apps", "/registry/core/deployments/ns/a"));
        assert!(m("*.apps", "/registry/apps/statefulsets/ns/a"));
        assert!(m("*.", "/registry/core/pods/ns/a"));
        assert!(!m("*.", "/registry/apps/deployments/ns/a"));
        assert!(m("*.*", "/registry/rbac.authorization.k8s.io/roles/ns/a"));
        assert!(m("*.*", "/claims/ip/10.96.0.1"));
        assert!(ResourceMatch::parse("*").is_err());
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let parse = |providers: &str| {
            EncryptionConfig::parse(&format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(parse("  - kms: {name: vault}\n").contains("kms provider is not supported"));
        assert!(
            parse(&keys("aescbc", &[("key1", "c2hvcnQ=")]))
                .contains("a aescbc key is 32 bytes, this one is 5")
        );
        assert!(parse(&keys("aesgcm", &[("k", KEY1), ("k", KEY2)])).contains("used twice"));
        assert!(parse("  - {identity: {}, aescbc: {keys: []}}\n").contains("exactly one provider"));
        assert!(
            EncryptionConfig::parse("kind: Other\n")
                .unwrap_err()
                .to_string()
                .contains("expected kind EncryptionConfiguration")
        );
    }
}
