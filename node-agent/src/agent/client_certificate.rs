//! The node's own client certificate, as the kubelet's TLS bootstrap and certificate manager:
//! the first start has only a bootstrap kubeconfig (a bootstrap token); the agent asks for
//! `system:node:<name>` in `system:nodes` with a CertificateSigningRequest, keeps the key and
//! certificate in one file under its data directory (0600) and writes its kubeconfig to point
//! at it. From then on it is that node, and it renews the certificate at 70–90 % of its
//! lifetime (jittered, so nodes do not all renew at once); connections pick the new one up
//! without a restart.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use base64::Engine as _;

use crate::{
    api_client::ApiClient,
    certificates::{self, Wanted},
    kubeconfig::{ClientCertificateFiles, Endpoint},
};

/// The file holding the certificate and then its key (the kubelet's
/// `kubelet-client-current.pem`): one file, replaced at once, so a reader never sees a key of
/// one certificate with another.
pub const CLIENT_PEM: &str = "node-client.pem";
/// How long to wait for a request to be approved and signed.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The endpoint the agent runs with: `kubeconfig`'s if it names a certificate that is still
/// valid (or a token), else a new certificate through `bootstrap` (a bootstrap kubeconfig).
pub async fn ensure(
    kubeconfig: &Path,
    bootstrap: Option<&Path>,
    pki_dir: &Path,
    node: &str,
) -> anyhow::Result<Endpoint> {
    if kubeconfig.exists() {
        let endpoint = Endpoint::from_kubeconfig(kubeconfig)?;
        match &endpoint.client_certificate {
            Some(files) if remaining(&files.cert).is_ok_and(|r| r > Duration::ZERO) => {
                return Ok(endpoint);
            }
            None if bootstrap.is_none() => return Ok(endpoint),
            _ => {}
        }
    }
    let bootstrap = bootstrap.with_context(|| {
        format!(
            "{} names no valid client certificate and no --bootstrap-kubeconfig was given",
            kubeconfig.display()
        )
    })?;
    let bootstrap_endpoint = Endpoint::from_kubeconfig(bootstrap)?;
    let api = ApiClient::new(&bootstrap_endpoint)?;
    let issued = certificates::request_certificate(
        &api,
        "node-csr",
        &Wanted::node_client(node),
        SIGNING_TIMEOUT,
    )
    .await
    .context("getting the node's client certificate")?;
    let pem = store(pki_dir, &issued)?;
    write_kubeconfig(kubeconfig, &bootstrap_endpoint, &pem)?;
    tracing::info!(user = %format!("system:node:{node}"), kubeconfig = %kubeconfig.display(), "client certificate issued");
    Endpoint::from_kubeconfig(kubeconfig)
}

/// Renews `endpoint`'s client certificate before it expires, for as long as the agent runs.
pub async fn rotate(endpoint: Endpoint, pki_dir: PathBuf, node: String) {
    let Some(files) = endpoint.client_certificate.clone() else {
        return;
    };
    loop {
        let wait = match rotation_deadline(&files.cert) {
            Ok(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the client certificate");
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(wait).await;
        let renewed = async {
            let api = ApiClient::new(&endpoint)?;
            let issued = certificates::request_certificate(
                &api,
                "node-csr",
                &Wanted::node_client(&node),
                SIGNING_TIMEOUT,
            )
            .await?;
            store(&pki_dir, &issued)
        };
        match renewed.await {
            Ok(path) => tracing::info!(file = %path.display(), "client certificate renewed"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "renewing the client certificate; retrying");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// `(not_before, not_after)` of the first certificate in the PEM file `path`.
fn validity(path: &Path) -> anyhow::Result<(SystemTime, SystemTime)> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .context("no certificate")?
        .context("not PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).context("not a certificate")?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

/// How long the certificate at `path` is still valid.
fn remaining(path: &Path) -> anyhow::Result<Duration> {
    let (_, not_after) = validity(path)?;
    Ok(not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO))
}

/// When to renew: a random point between 70 % and 90 % of the lifetime (the kubelet's
/// `nextRotationDeadline`).
pub fn rotation_deadline(path: &Path) -> anyhow::Result<SystemTime> {
    let (not_before, not_after) = validity(path)?;
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    Ok(not_before + jittered(lifetime, rand::random::<f64>()))
}

/// `lifetime` × (0.7 + 0.2 × `unit`), `unit` in [0, 1).
fn jittered(lifetime: Duration, unit: f64) -> Duration {
    lifetime.mul_f64(0.7 + 0.2 * unit.clamp(0.0, 1.0))
}

/// Writes the certificate and key to `<pki_dir>/node-client.pem` (0600, in a 0700 directory),
/// replacing the old file at once.
fn store(pki_dir: &Path, issued: &certificates::Issued) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(pki_dir)
        .and_then(|()| std::fs::set_permissions(pki_dir, std::fs::Permissions::from_mode(0o700)))
        .with_context(|| format!("creating {}", pki_dir.display()))?;
    let path = pki_dir.join(CLIENT_PEM);
    let contents = format!("{}{}", issued.cert_pem, issued.key_pem);
    write_private(&path, contents.as_bytes())?;
    Ok(path)
}

/// Writes `contents` to `path` through a temporary file (0600) renamed over it.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}

/// The node's kubeconfig: `bootstrap`'s server and CA, the certificate file as its user.
fn write_kubeconfig(path: &Path, bootstrap: &Endpoint, pem: &Path) -> anyhow::Result<()> {
    if !pem.is_absolute() {
        bail!("{} is not an absolute path", pem.display());
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "apiary", "cluster": {
            "server": bootstrap.server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&bootstrap.ca_pem),
        }}],
        "users": [{"name": "node", "user": {
            "client-certificate": pem.display().to_string(),
            "client-key": pem.display().to_string(),
        }}],
        "contexts": [{"name": "node", "context": {"cluster": "apiary", "user": "node"}}],
        "current-context": "node",
    });
    write_private(path, serde_yaml::to_string(&config)?.as_bytes())
}

/// The client certificate files of `endpoint`, read now, for a gRPC connection.
pub fn read_pem(files: &ClientCertificateFiles) -> anyhow::Result<(String, String)> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("{}", p.display()));
    Ok((read(&files.cert)?, read(&files.key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_the_lifetime() {
        let year = Duration::from_secs(365 * 86400);
        assert_eq!(jittered(year, 0.0), year.mul_f64(0.7));
        assert!(jittered(year, 0.999) < year.mul_f64(0.9));
        assert!(
            jittered(year, 0.5) > year.mul_f64(0.79) && jittered(year, 0.5) < year.mul_f64(0.81)
        );
    }

    #[test]
    fn the_certificate_file_and_kubeconfig_are_private_and_point_at_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let issued = certificates::Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let pki = dir.path().join("pki");
        let pem = store(&pki, &issued).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki), 0o700);
        assert_eq!(mode(&pem), 0o600);
        let kubeconfig = dir.path().join("node.kubeconfig");
        let bootstrap = Endpoint {
            server: "https://10.0.0.1:6443".into(),
            more_servers: Vec::new(),
            ca_pem: cert.pem(),
            token: "abcdef.0123456789abcdef".into(),
            client_certificate: None,
        };
        write_kubeconfig(&kubeconfig, &bootstrap, &pem).unwrap();
        assert_eq!(mode(&kubeconfig), 0o600);
        let endpoint = Endpoint::from_kubeconfig(&kubeconfig).unwrap();
        assert!(endpoint.token.is_empty(), "the bootstrap token is not kept");
        assert_eq!(endpoint.client_certificate.as_ref().unwrap().cert, pem);
        assert!(remaining(&pem).unwrap() > Duration::from_secs(86400));
        let (cert_pem, key_pem) = read_pem(endpoint.client_certificate.as_ref().unwrap()).unwrap();
        assert!(certificates::certified_key(cert_pem.as_bytes(), key_pem.as_bytes()).is_ok());
        let deadline = rotation_deadline(&pem).unwrap();
        let (from, to) = validity(&pem).unwrap();
        let lifetime = to.duration_since(from).unwrap();
        assert!(
            deadline >= from + lifetime.mul_f64(0.7) && deadline <= from + lifetime.mul_f64(0.9)
        );
    }
}
