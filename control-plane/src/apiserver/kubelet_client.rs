//! How the API server connects to node agents, as kube-apiserver with
//! `--kubelet-client-certificate`/`--kubelet-client-key` and `--kubelet-certificate-authority`:
//! TLS with its own client certificate, user
//! [`KUBELET_CLIENT_USER`](super::pki::KUBELET_CLIENT_USER), which agents verify against the
//! cluster CA and authorize like any user (RBAC grants it `system:kubelet-api-admin`); and the
//! agent's serving certificate verified against the cluster CA for the address the API server
//! dials (the node's `InternalIP`), so that nothing is sent to an agent whose certificate does
//! not verify (a forged or self-signed one, another cluster's): agents get theirs through a
//! `kubernetes.io/kubelet-serving` CertificateSigningRequest. No token goes to an agent: a node's
//! agent never holds a credential it could replay to the API server.

use std::sync::Arc;

use super::pki::{self, Pki};

/// The TLS client configuration for node agents, with `pki`'s client certificate for them.
pub fn tls_config(pki: &Pki) -> pki::Result<Arc<rustls::ClientConfig>> {
    let certs = rustls_pemfile::certs(&mut pki.kubelet_client_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pki::Error::Io {
            path: pki.dir.clone(),
            source,
        })?;
    let key = rustls_pemfile::private_key(&mut pki.kubelet_client_key_pem.as_bytes())
        .map_err(|source| pki::Error::Io {
            path: pki.dir.clone(),
            source,
        })?
        .ok_or_else(|| pki::Error::Missing {
            path: pki.dir.clone(),
            what: "kubelet client key",
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
        roots.add(ca.map_err(|source| pki::Error::Io {
            path: pki.dir.clone(),
            source,
        })?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    // The exec WebSocket is an HTTP/1.1 upgrade.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
