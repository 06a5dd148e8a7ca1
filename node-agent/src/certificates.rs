//! Certificates from the cluster CA through the API, as client-go's `certificate/csr` helpers
//! the kubelet uses: generate a key, submit a CertificateSigningRequest for it, wait until a
//! signer puts the certificate in `status.certificate` (or the request is denied or fails).
//! For the agent's client certificate (`kubernetes.io/kube-apiserver-client-kubelet`) and its
//! serving certificate (`kubernetes.io/kubelet-serving`) alike.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::api_client::{ApiClient, Found};

/// The kubelet client signer.
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The kubelet serving signer.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// What to ask for.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// The subject's common name, e.g. `system:node:<name>`.
    pub common_name: String,
    /// The subject's organizations (the user's groups), e.g. `system:nodes`.
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub signer_name: &'static str,
    /// `spec.usages`, e.g. `["digital signature", "client auth"]`.
    pub usages: Vec<&'static str>,
    /// `spec.expirationSeconds`; `None`: the signer's default.
    pub expiration: Option<Duration>,
}

impl Wanted {
    /// A node's client certificate: `system:node:<node>` in `system:nodes`.
    pub fn node_client(node: &str) -> Self {
        Self {
            common_name: format!("system:node:{node}"),
            organizations: vec!["system:nodes".to_owned()],
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            signer_name: KUBE_APISERVER_CLIENT_KUBELET,
            usages: vec!["digital signature", "client auth"],
            expiration: None,
        }
    }

    /// A node's serving certificate for its name and addresses.
    pub fn node_serving(node: &str, dns_names: Vec<String>, ip_addresses: Vec<IpAddr>) -> Self {
        Self {
            dns_names,
            ip_addresses,
            signer_name: KUBELET_SERVING,
            usages: vec!["digital signature", "server auth"],
            ..Self::node_client(node)
        }
    }
}

/// An issued certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A new key (ECDSA P-256) and the PEM request for it.
pub fn generate_request(wanted: &Wanted) -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let mut params =
        rcgen::CertificateParams::new(wanted.dns_names.clone()).context("the request's names")?;
    for ip in &wanted.ip_addresses {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(*ip));
    }
    params.distinguished_name = rcgen::DistinguishedName::new();
    // rcgen keeps one value per attribute type: one organization.
    if let Some(o) = wanted.organizations.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, o.as_str());
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, wanted.common_name.as_str());
    let request = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .context("encoding the certificate request")?;
    Ok((key, request))
}

/// The CertificateSigningRequest object for `request_pem`, named `<prefix>-<random>`.
pub fn request_object(prefix: &str, wanted: &Wanted, request_pem: &str) -> Value {
    let mut csr = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": format!("{prefix}-")},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request_pem),
            "signerName": wanted.signer_name,
            "usages": wanted.usages,
        },
    });
    if let Some(expiration) = wanted.expiration {
        csr["spec"]["expirationSeconds"] = json!(expiration.as_secs());
    }
    csr
}

/// What a CSR's status says: the certificate (PEM), still pending (`None`), or why it will
/// never come.
pub fn outcome(csr: &Value) -> anyhow::Result<Option<String>> {
    for condition in csr["status"]["conditions"].as_array().into_iter().flatten() {
        let kind = condition["type"].as_str().unwrap_or_default();
        if matches!(kind, "Denied" | "Failed") {
            bail!(
                "certificate signing request {} was {}: {} {}",
                csr["metadata"]["name"].as_str().unwrap_or_default(),
                kind.to_lowercase(),
                condition["reason"].as_str().unwrap_or_default(),
                condition["message"].as_str().unwrap_or_default()
            );
        }
    }
    match csr["status"]["certificate"]
        .as_str()
        .filter(|c| !c.is_empty())
    {
        Some(b64) => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .context("status.certificate is not base64")?;
            Ok(Some(
                String::from_utf8(pem).context("status.certificate is not PEM")?,
            ))
        }
        None => Ok(None),
    }
}

/// Submits a request for `wanted` and waits (up to `timeout`) for the certificate.
pub async fn request_certificate(
    api: &ApiClient,
    prefix: &str,
    wanted: &Wanted,
    timeout: Duration,
) -> anyhow::Result<Issued> {
    let (key, request) = generate_request(wanted)?;
    let created = api
        .post(
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            &request_object(prefix, wanted, &request),
        )
        .await
        .context("submitting a certificate signing request")?;
    let name = created["metadata"]["name"]
        .as_str()
        .context("the created request has no name")?
        .to_owned();
    tracing::info!(csr = %name, signer = wanted.signer_name, "certificate requested");
    let path = format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut current = created;
    loop {
        if let Some(cert_pem) = outcome(&current)? {
            return Ok(Issued {
                cert_pem,
                key_pem: key.serialize_pem(),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "certificate signing request {name} was not signed within {}s (kubectl certificate approve {name}?)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        current = match api.get::<Value>(&path).await? {
            Found::Object(csr) => csr,
            Found::Missing => bail!("certificate signing request {name} was deleted"),
        };
    }
}

/// The client certificate of TLS handshakes, read from its files when they changed since the
/// last handshake: a renewed certificate is used from the next connection on, without a
/// restart (the kubelet's certificate manager does the same through its store).
#[derive(Debug)]
pub struct FileClientCert {
    files: crate::kubeconfig::ClientCertificateFiles,
    /// The loaded key and the modification time of the certificate file it was loaded at.
    loaded: std::sync::Mutex<Option<(std::time::SystemTime, Arc<CertifiedKey>)>>,
}

use std::sync::Arc;

use rustls::sign::CertifiedKey;

impl FileClientCert {
    pub fn new(files: crate::kubeconfig::ClientCertificateFiles) -> Self {
        Self {
            files,
            loaded: std::sync::Mutex::default(),
        }
    }

    fn load(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let modified = std::fs::metadata(&self.files.cert)
            .and_then(|m| m.modified())
            .with_context(|| format!("{}", self.files.cert.display()))?;
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if let Some((at, key)) = loaded.as_ref()
            && *at == modified
        {
            return Ok(Arc::clone(key));
        }
        let key = certified_key(
            &std::fs::read(&self.files.cert)
                .with_context(|| format!("{}", self.files.cert.display()))?,
            &std::fs::read(&self.files.key)
                .with_context(|| format!("{}", self.files.key.display()))?,
        )?;
        *loaded = Some((modified, Arc::clone(&key)));
        Ok(key)
    }
}

/// A certificate chain and key (PEM) as rustls signs with them.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = rustls_pemfile::certs(&mut &*cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the client certificate is not PEM")?;
    if certs.is_empty() {
        bail!("no certificate in the client certificate file");
    }
    let key = rustls_pemfile::private_key(&mut &*key_pem)
        .context("the client key is not PEM")?
        .context("no private key in the client key file")?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .context("the client key's type is not supported")?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

impl rustls::client::ResolvesClientCert for FileClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        match self.load() {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "loading the client certificate");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_client_request_names_the_node_in_system_nodes() {
        let wanted = Wanted::node_client("n1");
        let (_, pem) = generate_request(&wanted).unwrap();
        let csr = request_object("node-csr", &wanted, &pem);
        assert_eq!(csr["metadata"]["generateName"], "node-csr-");
        assert_eq!(csr["spec"]["signerName"], KUBE_APISERVER_CLIENT_KUBELET);
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        let dn = &parsed.params.distinguished_name;
        assert_eq!(
            dn.get(&rcgen::DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("system:node:n1".into()))
        );
        assert_eq!(
            dn.get(&rcgen::DnType::OrganizationName),
            Some(&rcgen::DnValue::Utf8String("system:nodes".into()))
        );
    }

    #[test]
    fn denied_and_failed_requests_are_errors_and_pending_ones_wait() {
        assert!(outcome(&json!({"status": {}})).unwrap().is_none());
        let denied = json!({"metadata": {"name": "x"}, "status": {"conditions": [{"type": "Denied", "reason": "No"}]}});
        assert!(
            outcome(&denied)
                .unwrap_err()
                .to_string()
                .contains("was denied")
        );
        let issued = json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode("PEM")}});
        assert_eq!(outcome(&issued).unwrap().as_deref(), Some("PEM"));
    }
}
