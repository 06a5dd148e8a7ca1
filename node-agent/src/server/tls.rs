//! The server's TLS: its certificate, self-signed, generated on first start into the agent's data
//! dir and reused after (the API server does not verify it, as kube-apiserver without
//! `--kubelet-certificate-authority`), and the client certificates it accepts: those the cluster
//! CA signed (the kubelet's `--client-ca-file`), which authenticate their user (see
//! [`super::auth`]). A certificate from another CA fails the handshake; none at all is allowed
//! (a bearer token may authenticate the request instead).

use std::{
    fs,
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};

/// File names under the data dir.
pub const CERT_FILE: &str = "agent-server.crt";
pub const KEY_FILE: &str = "agent-server.key";

/// Errors setting up the certificate; none are retryable without operator action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generating the server certificate")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("{path} holds no private key")]
    NoKey { path: PathBuf },
    #[error("the cluster CA")]
    ClientCa(#[source] io::Error),
    #[error("the cluster CA: {0}")]
    ClientVerifier(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The TLS configuration of the server, from `dir` (creating the certificate for `hostname` and
/// `addresses` if there is none yet), accepting client certificates of `client_ca_pem`.
pub fn load_or_create(
    dir: &Path,
    hostname: &str,
    addresses: &[IpAddr],
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !key_path.exists() || !cert_path.exists() {
        let mut params = CertificateParams::new(vec![hostname.to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{hostname}@apiary-node-agent"));
        for ip in addresses.iter().filter(|ip| !ip.is_unspecified()) {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, cert.pem().as_bytes())?;
    }
    let cert_pem = fs::read(&cert_path).map_err(io_err(&cert_path))?;
    let key_pem = fs::read(&key_path).map_err(io_err(&key_path))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(&cert_path))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(io_err(&key_path))?
        .ok_or(Error::NoKey { path: key_path })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier(client_ca_pem, provider)?)
        .with_single_cert(certs, key)?;
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
        roots.add(cert.map_err(Error::ClientCa)?)?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::ClientVerifier(e.to_string()))
}

/// Writes a secret with mode 0600.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("apiary-agent-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ca = rcgen::CertificateParams::new(Vec::new())
            .unwrap()
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        load_or_create(&dir, "node-1", &[[127, 0, 0, 1].into()], &ca).unwrap();
        let first = fs::read(dir.join(CERT_FILE)).unwrap();
        load_or_create(&dir, "node-1", &[], &ca).unwrap();
        assert_eq!(first, fs::read(dir.join(CERT_FILE)).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
