//! The server's TLS: its serving certificate, which the cluster CA signs (the agent asks for it
//! with a CertificateSigningRequest, see [`crate::agent::serving_certificate`]) and which is
//! replaced while the server runs ([`ServingCertificate`]: a rotated certificate is used from
//! the next handshake on, without a restart), and the client certificates it accepts: those the
//! cluster CA signed (the kubelet's `--client-ca-file`), which authenticate their user (see
//! [`super::auth`]). A client certificate from another CA fails the handshake; none at all is
//! allowed (a bearer token may authenticate the request instead).

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Errors setting up TLS; none are retryable without operator action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("the certificate is not PEM")]
    Pem(#[source] io::Error),
    #[error("no certificate in the PEM")]
    NoCertificate,
    #[error("no private key in the PEM")]
    NoKey,
    #[error("the cluster CA: {0}")]
    ClientVerifier(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The certificate the server presents, replaceable at any time. Until one is set, handshakes
/// fail (as the kubelet's before its serving certificate is issued): the server never presents
/// a certificate the cluster CA did not sign.
#[derive(Debug, Default)]
pub struct ServingCertificate {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServingCertificate {
    /// Presents `cert_pem` (the certificate, then its chain) with `key_pem` from now on.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let certified = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certified));
        Ok(())
    }

    /// The certificate presented now (DER), if any.
    pub fn current(&self) -> Option<Vec<u8>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .and_then(|c| c.cert.first())
            .map(|der| der.to_vec())
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Pem)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(Error::Pem)?
        .ok_or(Error::NoKey)?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(certs, key))
}

/// The TLS configuration of the server: `serving`'s certificate, client certificates of
/// `client_ca_pem`.
pub fn server_config(
    serving: Arc<ServingCertificate>,
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier(client_ca_pem, provider)?)
        .with_cert_resolver(serving);
    // The exec WebSocket is an HTTP/1.1 upgrade.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client certificates must chain to `ca_pem`; none is fine too (Go's VerifyClientCertIfGiven).
fn client_verifier(
    ca_pem: &str,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.map_err(Error::Pem)?)?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::ClientVerifier(e.to_string()))
}

/// Writes a secret with mode 0600, atomically: a reader sees the old file or the whole new one.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let partial = path.with_extension("partial");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    fs::rename(&partial, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn the_certificate_presented_is_the_last_one_set() {
        let serving = ServingCertificate::default();
        assert_eq!(serving.current(), None);
        let (first, first_key) = self_signed("n1");
        serving.set(&first, &first_key).unwrap();
        let presented = serving.current().unwrap();
        assert_eq!(
            presented,
            rustls_pemfile::certs(&mut first.as_bytes())
                .next()
                .unwrap()
                .unwrap()
                .to_vec()
        );
        let (second, second_key) = self_signed("n1");
        serving.set(&second, &second_key).unwrap();
        assert_ne!(serving.current().unwrap(), presented);
        // A broken pair changes nothing.
        assert!(serving.set("not a certificate", &second_key).is_err());
        assert!(serving.set(&second, "not a key").is_err());
        assert_ne!(serving.current().unwrap(), presented);
    }

    /// The certificate a client trusting `ca_pem` sees in a handshake with `config`, or why
    /// the handshake failed.
    async fn handshake(config: Arc<rustls::ServerConfig>, ca_pem: &str) -> Result<Vec<u8>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let _ = tokio_rustls::TlsAcceptor::from(config).accept(a).await;
        });
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect("n1".try_into().unwrap(), b)
            .await
            .map_err(|e| e.to_string())?;
        let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        server.await.unwrap();
        Ok(der)
    }

    #[tokio::test]
    async fn a_rotated_certificate_is_presented_from_the_next_handshake_without_a_restart() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let issue = || {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["n1".to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let serving = Arc::new(ServingCertificate::default());
        let config = server_config(Arc::clone(&serving), &ca_pem).unwrap();
        // Without a certificate yet, no handshake completes.
        let refused = handshake(Arc::clone(&config), &ca_pem).await.unwrap_err();
        assert!(refused.contains("alert"), "{refused}");
        let (first, first_key) = issue();
        serving.set(&first, &first_key).unwrap();
        let before = handshake(Arc::clone(&config), &ca_pem).await.unwrap();
        assert_eq!(Some(before.clone()), serving.current());
        let (second, second_key) = issue();
        serving.set(&second, &second_key).unwrap();
        let after = handshake(Arc::clone(&config), &ca_pem).await.unwrap();
        assert_ne!(before, after);
        assert_eq!(Some(after), serving.current());
    }

    #[test]
    fn a_secret_is_written_whole_and_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.pem");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!path.with_extension("partial").exists());
    }
}
