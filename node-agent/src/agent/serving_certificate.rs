//! The agent's serving certificate from the cluster CA, as the kubelet's `serverTLSBootstrap`
//! with `rotateCertificates`: a CertificateSigningRequest to `kubernetes.io/kubelet-serving` for
//! `system:node:<name>` in `system:nodes` with the node's name and address as SANs, kept in
//! `<data-dir>/pki/kubelet-server-current.pem` across restarts, and renewed at a random point
//! between 70 % and 90 % of its lifetime (client-go's certificate manager) while the server
//! keeps serving: the new certificate is presented from the next handshake on. The API server
//! verifies it against the cluster CA and the node's address, so a certificate the CA did not
//! sign (an old self-signed one, another cluster's) is never presented.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use rustls::{
    client::danger::ServerCertVerifier as _,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use crate::{
    api_client::ApiClient,
    certificates::{self, Issued, Wanted},
    server::tls::{ServingCertificate, write_private},
};

/// The certificate and its key, PEM, in one file (the kubelet's name for it).
pub const FILE: &str = "kubelet-server-current.pem";
/// How long a request may wait for approval and signing before it is made anew.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(600);
/// The first and the longest pause after a failed request.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What the certificate is for.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node's name: the certificate's `system:node:<name>` and a DNS SAN.
    pub node: String,
    /// The node's addresses, IP SANs.
    pub addresses: Vec<IpAddr>,
    /// The cluster CA, PEM: a stored certificate it did not sign is not used.
    pub ca_pem: String,
    /// Where [`FILE`] is kept.
    pub dir: PathBuf,
}

impl Config {
    fn wanted(&self) -> Wanted {
        Wanted::node_serving(&self.node, vec![self.node.clone()], self.addresses.clone())
    }
}

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// When to renew: `not_before` plus 70 % to 90 % of the lifetime, `jitter` in [0, 1) choosing
    /// where (client-go's `nextRotationDeadline`), so that nodes do not all renew at once.
    pub fn renewal_time(&self, jitter: f64) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime.mul_f64(0.7 + 0.2 * jitter.clamp(0.0, 1.0))
    }

    fn of(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let at = |t: x509_parser::time::ASN1Time| {
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).ok()?))
        };
        Some(Self {
            not_before: at(cert.validity().not_before)?,
            not_after: at(cert.validity().not_after)?,
        })
    }
}

/// The certificate's validity if `cert_pem` (then its chain) is usable for `config`: the
/// cluster CA signed it, it is valid now, and for the node's name and every address.
pub fn check(config: &Config, cert_pem: &str) -> anyhow::Result<Validity> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut config.ca_pem.as_bytes()) {
        roots.add(ca.context("the cluster CA is not PEM")?)?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("the certificate is not PEM")?;
    let (leaf, intermediates) = chain.split_first().context("no certificate")?;
    let names = std::iter::once(ServerName::try_from(config.node.clone())?)
        .chain(config.addresses.iter().map(|ip| ServerName::from(*ip)));
    for name in names {
        verifier
            .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
            .with_context(|| format!("for {}", name.to_str()))?;
    }
    Validity::of(leaf).context("the certificate's validity does not parse")
}

/// Keeps `serving` presenting a current certificate for `config`, asking `api` for new ones;
/// runs for ever.
pub async fn keep_current(api: ApiClient, config: Config, serving: Arc<ServingCertificate>) {
    let path = config.dir.join(FILE);
    let mut validity = match load(&config, &serving) {
        Ok(validity) => Some(validity),
        Err(e) => {
            tracing::info!(path = %path.display(), reason = %format!("{e:#}"), "requesting a serving certificate");
            None
        }
    };
    let mut retry = RETRY_MIN;
    loop {
        if let Some(validity) = validity {
            let renew = validity.renewal_time(rand::random());
            let wait = renew.duration_since(SystemTime::now()).unwrap_or_default();
            tracing::info!(
                in_seconds = wait.as_secs(),
                "serving certificate renewal scheduled"
            );
            tokio::time::sleep(wait).await;
        }
        match renew(&api, &config, &serving).await {
            Ok(renewed) => {
                tracing::info!(path = %path.display(), "serving certificate issued");
                validity = Some(renewed);
                retry = RETRY_MIN;
            }
            Err(e) => {
                // The old certificate, if any, is served until it expires: better than none.
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?retry, "requesting a serving certificate");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                validity = None;
            }
        }
    }
}

/// Presents the stored certificate if it is usable.
fn load(config: &Config, serving: &ServingCertificate) -> anyhow::Result<Validity> {
    let path = config.dir.join(FILE);
    let pem = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let validity = check(config, &pem)?;
    serving.set(&pem, &pem)?;
    Ok(validity)
}

/// A new certificate: requested, checked, stored, then presented.
async fn renew(
    api: &ApiClient,
    config: &Config,
    serving: &ServingCertificate,
) -> anyhow::Result<Validity> {
    let Issued { cert_pem, key_pem } =
        certificates::request_certificate(api, "csr", &config.wanted(), SIGNING_TIMEOUT).await?;
    let validity = check(config, &cert_pem).context("the issued certificate")?;
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("creating {}", config.dir.display()))?;
    write_private(
        &config.dir.join(FILE),
        format!("{cert_pem}{key_pem}").as_bytes(),
    )?;
    serving.set(&cert_pem, &key_pem)?;
    Ok(validity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "apiary-ca");
        let pem = params.self_signed(&key).unwrap().pem();
        (rcgen::Issuer::new(params, key), pem)
    }

    fn serving(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        names: &[&str],
        ips: &[IpAddr],
    ) -> String {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        for ip in ips {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(*ip));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    fn config(ca_pem: &str) -> Config {
        Config {
            node: "n1".into(),
            addresses: vec!["10.0.0.5".parse().unwrap()],
            ca_pem: ca_pem.to_owned(),
            dir: std::env::temp_dir(),
        }
    }

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let validity = Validity {
            not_before: start,
            not_after: start + Duration::from_secs(1000),
        };
        assert_eq!(validity.renewal_time(0.0), start + Duration::from_secs(700));
        assert_eq!(validity.renewal_time(0.5), start + Duration::from_secs(800));
        assert_eq!(validity.renewal_time(1.0), start + Duration::from_secs(900));
    }

    #[test]
    fn only_a_certificate_of_the_cluster_ca_for_the_nodes_names_is_used() {
        let (issuer, ca_pem) = ca();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let good = serving(&issuer, &["n1"], &[ip]);
        let validity = check(&config(&ca_pem), &good).unwrap();
        assert!(validity.not_before <= SystemTime::now() && SystemTime::now() < validity.not_after);

        // Another CA's, a self-signed one, one without the node's address or name.
        let (stranger, _) = ca();
        assert!(check(&config(&ca_pem), &serving(&stranger, &["n1"], &[ip])).is_err());
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["n1".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
        let self_signed = params.self_signed(&key).unwrap().pem();
        assert!(check(&config(&ca_pem), &self_signed).is_err());
        let other_ip = serving(&issuer, &["n1"], &["10.0.0.6".parse().unwrap()]);
        assert!(check(&config(&ca_pem), &other_ip).is_err());
        let other_name = serving(&issuer, &["n2"], &[ip]);
        assert!(check(&config(&ca_pem), &other_name).is_err());
    }

    #[test]
    fn a_stored_certificate_is_presented_when_it_is_usable() {
        let (issuer, ca_pem) = ca();
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            dir: dir.path().to_owned(),
            ..config(&ca_pem)
        };
        let presented = ServingCertificate::default();
        assert!(load(&config, &presented).is_err());
        std::fs::write(
            dir.path().join(FILE),
            serving(&issuer, &["n1"], &["10.0.0.6".parse().unwrap()]),
        )
        .unwrap();
        assert!(load(&config, &presented).is_err());
        assert_eq!(presented.current(), None);
        std::fs::write(
            dir.path().join(FILE),
            serving(&issuer, &["n1"], &["10.0.0.5".parse().unwrap()]),
        )
        .unwrap();
        load(&config, &presented).unwrap();
        assert!(presented.current().is_some());
    }
}
