//! How the API server connects to node agents (kube-apiserver's `--kubelet-client-certificate`
//! and `--kubelet-client-key`): TLS with its own client certificate, user
//! [`KUBELET_CLIENT_USER`](super::pki::KUBELET_CLIENT_USER), which agents verify against the
//! cluster CA and authorize like any user (RBAC grants it `system:kubelet-api-admin`). No
//! token goes to an agent: a node's agent never holds a credential it could replay to the API
//! server.

use std::sync::Arc;

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedAgent(provider)))
        .with_client_auth_cert(certs, key)?;
    // The exec WebSocket is an HTTP/1.1 upgrade.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Agents present self-signed certificates: like kube-apiserver without
/// `--kubelet-certificate-authority`, the API server does not verify them (handshake signatures
/// are still checked; the channel is encrypted).
#[derive(Debug)]
struct UnverifiedAgent(Arc<CryptoProvider>);

impl ServerCertVerifier for UnverifiedAgent {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
