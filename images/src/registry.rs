//! Pulling from and pushing to registries with the OCI distribution API, with anonymous bearer
//! tokens (`WWW-Authenticate: Bearer realm=…`).

use std::{io::Write as _, sync::Arc};

use reqwest::{Method, RequestBuilder, Response, StatusCode, header};

use crate::{
    digest::{self, HashingWriter},
    error::{Error, IoContext as _, Result, from_json},
    manifest::{self, ACCEPT_MANIFESTS, Document},
    reference::Reference,
    store::{Image, ImageStore, Lock},
};

/// Where the system's trusted roots are.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `host[:port]` of registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// More trusted certificate authorities (PEM), besides the system's.
    pub extra_ca_pem: Option<Vec<u8>>,
}

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// The manifest is known: how many layers, how many (compressed) bytes.
    Resolved {
        digest: String,
        layers: usize,
        total_bytes: u64,
    },
    /// Bytes of a layer downloaded so far.
    Layer {
        digest: String,
        downloaded: u64,
        total: u64,
    },
    /// A layer is stored and unpacked; `cached` if it was there already.
    LayerDone { digest: String, cached: bool },
    /// The image is in the store.
    Done { digest: String },
}

/// The largest manifest, index (or token response) read: containerd's limit for manifests
/// (`remotes.MaxManifestSize`, 4 MiB). Layers and configs are streamed to disk instead.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// How much of an error response is read for its message (of which 300 characters are shown).
const ERROR_BODY_BYTES: usize = 4096;

/// A session with one repository of one registry.
struct Client {
    http: reqwest::Client,
    registry: String,
    base: String,
    repository: String,
    scope: &'static str,
    token: Option<String>,
}

impl Client {
    fn new(reference: &Reference, options: &PullOptions, scope: &'static str) -> Result<Self> {
        let insecure = options
            .insecure_registries
            .iter()
            .any(|r| r == &reference.registry || r == reference.api_host());
        let scheme = if insecure { "http" } else { "https" };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(options)?)
            .connect_timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|error| Error::Http {
                registry: reference.registry.clone(),
                error,
            })?;
        Ok(Self {
            http,
            registry: reference.registry.clone(),
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.api_host(),
                reference.repository
            ),
            repository: reference.repository.clone(),
            scope,
            token: None,
        })
    }

    fn http_error(&self, error: reqwest::Error) -> Error {
        Error::Http {
            registry: self.registry.clone(),
            error,
        }
    }

    /// Sends the request `build` makes, fetching a token and retrying once on a 401.
    async fn send(
        &mut self,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Sync),
    ) -> Result<Response> {
        let mut request = build(&self.http);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.http_error(e))?;
        if response.status() != StatusCode::UNAUTHORIZED || self.token.is_some() {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.token = Some(self.fetch_token(&challenge).await?);
        let request = build(&self.http).bearer_auth(self.token.as_deref().unwrap_or_default());
        request.send().await.map_err(|e| self.http_error(e))
    }

    async fn fetch_token(&self, challenge: &str) -> Result<String> {
        let auth = |reason: String| Error::Auth {
            registry: self.registry.clone(),
            reason,
        };
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(auth(format!(
                "the registry wants credentials ({challenge:?}); only anonymous bearer tokens are supported"
            )));
        };
        let params = parse_challenge(params);
        let realm = params
            .get("realm")
            .ok_or_else(|| auth("the Bearer challenge has no realm".to_owned()))?;
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = params.get("service") {
            query.push(("service", service.clone()));
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:{}", self.repository, self.scope));
        query.push(("scope", scope));
        let response = self
            .http
            .get(realm)
            .query(&query)
            .send()
            .await
            .map_err(|e| self.http_error(e))?;
        if !response.status().is_success() {
            return Err(auth(format!(
                "token endpoint {realm}: HTTP {}",
                response.status()
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = self
            .read_limited(response, "the token response", MAX_MANIFEST_BYTES)
            .await?;
        let token: Token = from_json(&bytes, "token response")?;
        token
            .token
            .or(token.access_token)
            .ok_or_else(|| auth("the token response has no token".to_owned()))
    }

    async fn fail(&self, what: String, mut response: Response) -> Error {
        let status = response.status().as_u16();
        // Only the start of an error body is shown: no more is read.
        let mut bytes = Vec::new();
        while bytes.len() < ERROR_BODY_BYTES
            && let Ok(Some(chunk)) = response.chunk().await
        {
            bytes.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&bytes);
        Error::Registry {
            registry: self.registry.clone(),
            what,
            status,
            body: body.chars().take(300).collect::<String>().trim().to_owned(),
        }
    }

    /// Fetches a manifest (or index) by tag or digest: its bytes and content type.
    async fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self
            .send(&|http| http.get(&url).header(header::ACCEPT, ACCEPT_MANIFESTS))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(Error::ManifestUnknown {
                registry: self.registry.clone(),
                reference: format!("{}:{reference}", self.repository)
                    .replace(":sha256:", "@sha256:"),
            });
        }
        if !response.status().is_success() {
            return Err(self.fail(format!("manifest {reference}"), response).await);
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = self
            .read_limited(
                response,
                &format!("manifest {reference}"),
                MAX_MANIFEST_BYTES,
            )
            .await?;
        Ok((bytes, content_type))
    }

    /// The body of `response`, read a chunk at a time and refused as soon as it passes `limit`
    /// (or announces more), so a registry cannot make us buffer an endless body.
    async fn read_limited(
        &self,
        mut response: Response,
        what: &str,
        limit: usize,
    ) -> Result<Vec<u8>> {
        let too_large = || Error::TooLarge {
            registry: self.registry.clone(),
            what: what.to_owned(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.http_error(e))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn blob_response(&mut self, digest: &str) -> Result<Response> {
        let url = format!("{}/blobs/{digest}", self.base);
        let response = self.send(&|http| http.get(&url)).await?;
        if !response.status().is_success() {
            return Err(self.fail(format!("blob {digest}"), response).await);
        }
        Ok(response)
    }
}

/// Runs `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Invalid(format!("store task failed: {e}")))
}

/// `realm="https://auth",service="registry",scope="repository:x:pull"` → map.
fn parse_challenge(params: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = after.trim_start_matches([',', ' ']);
    }
    out
}

fn tls_config(options: &PullOptions) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read(SYSTEM_ROOTS) {
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .flatten()
            .collect();
        roots.add_parsable_certificates(certs);
    }
    if let Some(pem) = &options.extra_ca_pem {
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("extra CA PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Tls("extra CA PEM: no certificate in it".to_owned()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("extra CA PEM: {e}")))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

impl ImageStore {
    /// Pulls `reference` (linux/amd64) into the store, skipping blobs it has already.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<Image> {
        let parsed = Reference::parse(reference)?;
        let name = parsed.to_string();
        let mut client = Client::new(&parsed, options, "pull")?;
        let (mut bytes, mut content_type) = client.manifest(parsed.manifest_ref()).await?;
        let mut digest = digest::of(&bytes);
        if let Some(pinned) = &parsed.digest {
            digest::check("manifest", pinned, &digest)?;
        }
        if let Document::Index(index) = Document::parse(&bytes, content_type.as_deref(), &name)? {
            let chosen = manifest::pick_platform(&index, &name)?.digest.clone();
            (bytes, content_type) = client.manifest(&chosen).await?;
            digest = digest::of(&bytes);
            digest::check("manifest", &chosen, &digest)?;
        }
        let Document::Manifest(image) = Document::parse(&bytes, content_type.as_deref(), &name)?
        else {
            return Err(Error::Invalid(format!(
                "{name}: the platform manifest {digest} is itself an index"
            )));
        };
        progress(PullProgress::Resolved {
            digest: digest.clone(),
            layers: image.layers.len(),
            total_bytes: image.layers.iter().map(|l| l.size).sum(),
        });

        // From here on the store changes: hold the lock so no removal collects what we fetch.
        let lock = Arc::new(self.lock_async().await?);
        let fetched = self
            .fetch(&mut client, &name, &digest, &bytes, &image, &lock, progress)
            .await;
        if fetched.is_err() {
            // Leave nothing of a failed pull behind (the manifest, a config, finished layers).
            let (store, held) = (self.clone(), lock.clone());
            if let Ok(Err(e)) = blocking(move || store.gc(&held)).await {
                tracing::warn!(error = %e, "image store: cleaning up after a failed pull");
            }
        }
        fetched?;
        drop(lock);
        progress(PullProgress::Done {
            digest: digest.clone(),
        });
        self.resolve(&name)?
            .ok_or_else(|| Error::ImageNotFound(name.clone()))
    }

    /// Fetches what the store lacks of a resolved image, unpacks its layers and tags it.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, all of them needed"
    )]
    async fn fetch(
        &self,
        client: &mut Client,
        name: &str,
        digest: &str,
        bytes: &[u8],
        image: &manifest::Manifest,
        lock: &Arc<Lock>,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<()> {
        self.write_blob(&mut &bytes[..], "manifest", Some(digest))?;
        if !self.has_blob(&image.config.digest) {
            self.download(client, &image.config.digest, "config", &mut |_, _| {})
                .await?;
        }
        let config: manifest::Config =
            from_json(&self.read_blob(&image.config.digest)?, "image config")?;
        if config.rootfs.diff_ids.len() != image.layers.len() {
            return Err(Error::Invalid(format!(
                "{name}: config lists {} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                image.layers.len()
            )));
        }
        for (layer, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
            let cached = self.has_blob(&layer.digest);
            if !cached {
                let total = layer.size;
                let layer_digest = layer.digest.clone();
                self.download(client, &layer.digest, "layer", &mut |downloaded, _| {
                    progress(PullProgress::Layer {
                        digest: layer_digest.clone(),
                        downloaded,
                        total,
                    })
                })
                .await?;
            }
            // Unpacking is CPU and disk bound: off the async workers.
            let store = self.clone();
            let (blob, media_type, diff_id) = (
                layer.digest.clone(),
                layer.media_type.clone(),
                diff_id.clone(),
            );
            let held = lock.clone();
            let unpacked_before =
                blocking(move || store.ensure_layer(&blob, &media_type, &diff_id, &held)).await??;
            progress(PullProgress::LayerDone {
                digest: layer.digest.clone(),
                cached: cached && unpacked_before,
            });
        }
        let store = self.clone();
        let (name, digest, held) = (name.to_owned(), digest.to_owned(), lock.clone());
        blocking(move || store.register(&name, &digest, &held)).await?
    }

    /// Streams a blob into the store, verifying its digest; reports bytes so far.
    async fn download(
        &self,
        client: &mut Client,
        digest: &str,
        what: &'static str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<()> {
        let mut response = client.blob_response(digest).await?;
        let file = self.temp_file()?;
        let path = file.path().to_path_buf();
        let mut writer = HashingWriter::new(std::io::BufWriter::new(file));
        let mut downloaded = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| client.http_error(e))? {
            writer.write_all(&chunk).at(&path)?;
            downloaded += chunk.len() as u64;
            progress(downloaded, 0);
        }
        let (buffered, actual, _) = writer.finish();
        let file = buffered.into_inner().map_err(|e| Error::Io {
            path,
            error: e.into_error(),
        })?;
        self.commit_blob(file, what, Some(digest), &actual)
    }

    /// Pushes the local image `reference` to the registry as `target`; returns the manifest
    /// digest. Blobs the registry has already are not sent again.
    pub async fn push(
        &self,
        reference: &str,
        target: &str,
        options: &PullOptions,
    ) -> Result<String> {
        let local = Reference::parse(reference)?.to_string();
        let digest = self
            .read_index()?
            .images
            .get(&local)
            .cloned()
            .ok_or_else(|| Error::ImageNotFound(local.clone()))?;
        let (image, _) = self.manifest_and_config(&digest)?;
        let target = Reference::parse(target)?;
        let mut client = Client::new(&target, options, "pull,push")?;
        let blobs = std::iter::once(&image.config).chain(&image.layers);
        for blob in blobs {
            let url = format!("{}/blobs/{}", client.base, blob.digest);
            let head = client.send(&|http| http.head(&url)).await?;
            if head.status().is_success() {
                continue;
            }
            let start = format!("{}/blobs/uploads/", client.base);
            let response = client.send(&|http| http.post(&start)).await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(client
                    .fail("starting a blob upload".to_owned(), response)
                    .await);
            }
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Error::Invalid("blob upload: no Location header".to_owned()))?;
            let mut upload = response.url().join(location).map_err(|e| {
                Error::Invalid(format!("blob upload: bad Location {location:?}: {e}"))
            })?;
            upload.query_pairs_mut().append_pair("digest", &blob.digest);
            let body = self.read_blob(&blob.digest)?;
            let response = client
                .send(&|http| {
                    http.request(Method::PUT, upload.clone())
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .body(body.clone())
                })
                .await?;
            if !response.status().is_success() {
                return Err(client
                    .fail(format!("uploading blob {}", blob.digest), response)
                    .await);
            }
        }
        let bytes = self.read_blob(&digest)?;
        let media_type = image
            .media_type
            .clone()
            .unwrap_or_else(|| manifest::OCI_MANIFEST.to_owned());
        let url = format!("{}/manifests/{}", client.base, target.manifest_ref());
        let response = client
            .send(&|http| {
                http.put(&url)
                    .header(header::CONTENT_TYPE, &media_type)
                    .body(bytes.clone())
            })
            .await?;
        if !response.status().is_success() {
            return Err(client
                .fail("uploading the manifest".to_owned(), response)
                .await);
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let params = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/busybox:pull");
    }

    #[test]
    fn rejects_an_extra_ca_that_is_not_pem() {
        let options = PullOptions {
            extra_ca_pem: Some(b"not a certificate".to_vec()),
            ..PullOptions::default()
        };
        let err = tls_config(&options).unwrap_err().to_string();
        assert!(err.contains("extra CA PEM"), "{err}");
    }
}
