//! The API server's identity: a cluster CA, a serving certificate signed by it, the admin's
//! client certificate (user `admin` in `system:masters`, as kubeadm's `admin.conf`), the client
//! certificate it shows node agents (kubeadm's `apiserver-kubelet-client`), the cluster token
//! (node agents and `apiary node join`), and the admin kubeconfig that ties them together.
//! Generated on first start, reused after; keys and the token are readable by their owner only,
//! in a directory only its owner may enter.

use std::{
    fs,
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine as _;
use rand::RngCore as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Errors setting up the server's identity; none are retryable without operator action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generating certificates")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("{path} holds no {what}")]
    Missing { path: PathBuf, what: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// File names under `<data-dir>/pki`.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "apiserver.crt";
const SERVING_KEY: &str = "apiserver.key";
/// The cluster token (`apiary node join --token`).
pub const ADMIN_TOKEN: &str = "admin.token";
const ADMIN_CERT: &str = "admin.crt";
const ADMIN_KEY: &str = "admin.key";
const KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client.crt";
const KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client.key";

/// What every control plane of a cluster shares (kubeadm's `--upload-certs` set): the cluster
/// CA, the service account signing key, and the admin's and API server's client credentials.
/// Each control plane makes its own serving certificate.
pub const SHARED_FILES: [&str; 8] = [
    CA_CERT,
    CA_KEY,
    super::authn::service_account::SA_KEY,
    ADMIN_CERT,
    ADMIN_KEY,
    ADMIN_TOKEN,
    KUBELET_CLIENT_CERT,
    KUBELET_CLIENT_KEY,
];

/// Gives the control plane of `data_dir` the cluster identity of the one in `from` (its data
/// dir): copies [`SHARED_FILES`] into `data_dir/pki`, unless that already has a CA.
pub fn share(from: &Path, data_dir: &Path) -> Result<()> {
    let (from, to) = (from.join("pki"), data_dir.join("pki"));
    if to.join(CA_CERT).exists() {
        return Ok(());
    }
    fs::create_dir_all(&to)
        .and_then(|()| fs::set_permissions(&to, fs::Permissions::from_mode(0o700)))
        .map_err(|source| Error::Io {
            path: to.clone(),
            source,
        })?;
    // The CA last: its presence says the rest is there.
    for file in SHARED_FILES.iter().rev() {
        write_private(&to.join(file), read(&from.join(file))?.as_bytes())?;
    }
    Ok(())
}

/// The user the API server is to node agents (kubeadm's `apiserver-kubelet-client`
/// certificate): in no group, it may do what RBAC grants it, `system:kubelet-api-admin`.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// The loaded identity.
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub admin_token: String,
    /// The admin's client certificate and key, PEM.
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The API server's client certificate and key for node agents, PEM.
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
    pub tls: Arc<rustls::ServerConfig>,
}

impl Pki {
    /// Loads the identity from `<data_dir>/pki`, creating what is missing. The serving
    /// certificate covers `localhost`, `kubernetes.default.svc`, loopback, `default/kubernetes`'s
    /// address (10.96.0.1), the machine's hostname and `extra_sans`.
    pub fn load_or_create(data_dir: &Path, extra_sans: &[IpAddr]) -> Result<Self> {
        let dir = data_dir.join("pki");
        fs::create_dir_all(&dir)
            .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
            .map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        if !dir.join(CA_KEY).exists() {
            create_ca(&dir)?;
        }
        if !dir.join(SERVING_KEY).exists() {
            create_serving_cert(&dir, extra_sans)?;
        }
        if !dir.join(ADMIN_KEY).exists() {
            create_client_cert(&dir, (ADMIN_CERT, ADMIN_KEY), "admin", &["system:masters"])?;
        }
        if !dir.join(KUBELET_CLIENT_KEY).exists() {
            create_client_cert(
                &dir,
                (KUBELET_CLIENT_CERT, KUBELET_CLIENT_KEY),
                KUBELET_CLIENT_USER,
                &[],
            )?;
        }
        if !dir.join(ADMIN_TOKEN).exists() {
            let mut token = [0u8; 32];
            rand::rng().fill_bytes(&mut token);
            let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&dir.join(ADMIN_TOKEN), token.as_bytes())?;
        }
        let ca_pem = read(&dir.join(CA_CERT))?;
        let admin_token = read(&dir.join(ADMIN_TOKEN))?.trim().to_owned();
        let admin_cert_pem = read(&dir.join(ADMIN_CERT))?;
        let admin_key_pem = read(&dir.join(ADMIN_KEY))?;
        let kubelet_client_cert_pem = read(&dir.join(KUBELET_CLIENT_CERT))?;
        let kubelet_client_key_pem = read(&dir.join(KUBELET_CLIENT_KEY))?;
        let tls = server_config(&dir)?;
        Ok(Self {
            dir,
            ca_pem,
            admin_token,
            admin_cert_pem,
            admin_key_pem,
            kubelet_client_cert_pem,
            kubelet_client_key_pem,
            tls,
        })
    }

    /// Issues a client certificate for user `name` in `groups` (its subject's CN and O, as
    /// Kubernetes reads them), signed by the cluster CA: `(certificate, key)`, PEM.
    pub fn issue_client_cert(&self, name: &str, groups: &[&str]) -> Result<(String, String)> {
        client_cert(&self.dir, name, groups)
    }

    /// The cluster CA as a signer of CertificateSigningRequests.
    pub fn certificate_authority(&self) -> Result<CertificateAuthority> {
        Ok(CertificateAuthority {
            cert_pem: self.ca_pem.clone(),
            key_pem: read(&self.dir.join(CA_KEY))?,
        })
    }

    /// A kubeconfig for the admin (its client certificate), pointing at `server` (e.g.
    /// `https://127.0.0.1:6443`).
    pub fn kubeconfig(&self, server: &str) -> String {
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: apiary\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: apiary-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: apiary\n  context:\n    cluster: apiary\n    user: apiary-admin\n    namespace: default\ncurrent-context: apiary\n",
            ca = b64(&self.ca_pem),
            cert = b64(&self.admin_cert_pem),
            key = b64(&self.admin_key_pem),
        )
    }

    /// Writes [`Pki::kubeconfig`] to `path`, readable by its owner only. Atomically: a reader
    /// sees the old file or the whole new one.
    pub fn write_kubeconfig(&self, path: &Path, server: &str) -> Result<()> {
        let partial = path.with_extension("partial");
        write_private(&partial, self.kubeconfig(server).as_bytes())?;
        fs::rename(&partial, path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// The cluster CA's certificate and key: what signs approved CertificateSigningRequests (as
/// kube-controller-manager's `--cluster-signing-cert-file`/`--cluster-signing-key-file`).
#[derive(Clone)]
pub struct CertificateAuthority {
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

/// How far back a signed certificate's validity starts, for clocks a little behind ours
/// (Kubernetes' signer backdates by five minutes).
const BACKDATE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl CertificateAuthority {
    /// Signs the PEM request `request` for `lifetime` (cut at the CA's own expiry): its subject
    /// and SANs, the key usages and extended key usages `usages` names (`spec.usages`), not a
    /// CA. The request's signature is verified first. Returns the certificate, PEM.
    pub fn sign(
        &self,
        request: &str,
        usages: &[String],
        lifetime: std::time::Duration,
    ) -> Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(request)?;
        let key = KeyPair::from_pem(&self.key_pem)?;
        let ca_not_after = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes())
            .ok()
            .and_then(|(_, pem)| {
                pem.parse_x509()
                    .ok()
                    .map(|c| c.validity().not_after.to_datetime())
            });
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)?;
        let now = time::OffsetDateTime::now_utc();
        let params = &mut csr.params;
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        if let Some(limit) = ca_not_after
            && params.not_after > limit
        {
            params.not_after = limit;
        }
        let mut serial = [0u8; 16];
        rand::rng().fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = Vec::new();
        params.extended_key_usages = Vec::new();
        for usage in usages {
            match usage.as_str() {
                "signing" | "digital signature" => {
                    params.key_usages.push(KeyUsagePurpose::DigitalSignature)
                }
                "content commitment" => params.key_usages.push(KeyUsagePurpose::ContentCommitment),
                "key encipherment" => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "key agreement" => params.key_usages.push(KeyUsagePurpose::KeyAgreement),
                "data encipherment" => params.key_usages.push(KeyUsagePurpose::DataEncipherment),
                "encipher only" => params.key_usages.push(KeyUsagePurpose::EncipherOnly),
                "decipher only" => params.key_usages.push(KeyUsagePurpose::DecipherOnly),
                "any" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::Any),
                "server auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                "client auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "code signing" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::CodeSigning),
                "email protection" | "s/mime" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::EmailProtection),
                "timestamping" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::TimeStamping),
                "ocsp signing" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::OcspSigning),
                // A CA certificate is never issued: `cert sign` and `crl sign` are dropped,
                // as are usages without a meaning in a modern certificate.
                _ => {}
            }
        }
        params.key_usages.dedup();
        params.extended_key_usages.dedup();
        Ok(csr.signed_by(&issuer)?.pem())
    }
}

fn create_ca(dir: &Path) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "apiary-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key)?;
    write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
    write_private(&dir.join(CA_CERT), cert.pem().as_bytes())
}

fn create_serving_cert(dir: &Path, extra_sans: &[IpAddr]) -> Result<()> {
    let ca_key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&dir.join(CA_CERT))?, ca_key)?;

    let mut names = vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ];
    if let Ok(hostname) = fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(hostname.trim().to_owned());
    }
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "apiary-apiserver");
    // Pods reach the API server at `default/kubernetes`'s address (their in-cluster
    // configuration's KUBERNETES_SERVICE_HOST), which the certificate must name too.
    let service_ip: IpAddr = crate::controllers::kubernetes_service::SERVICE_IP
        .parse()
        .expect("a valid address");
    let mut ips: Vec<IpAddr> = vec![
        [127, 0, 0, 1].into(),
        std::net::Ipv6Addr::LOCALHOST.into(),
        service_ip,
    ];
    ips.extend(extra_sans.iter().copied().filter(|ip| !ip.is_unspecified()));
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(ip));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_private(&dir.join(SERVING_KEY), key.serialize_pem().as_bytes())?;
    write_private(&dir.join(SERVING_CERT), cert.pem().as_bytes())
}

/// Issues a client certificate for `name` in `groups` into the files `(cert, key)`.
fn create_client_cert(
    dir: &Path,
    (cert_file, key_file): (&str, &str),
    name: &str,
    groups: &[&str],
) -> Result<()> {
    let (cert, key) = client_cert(dir, name, groups)?;
    write_private(&dir.join(key_file), key.as_bytes())?;
    write_private(&dir.join(cert_file), cert.as_bytes())
}

fn client_cert(dir: &Path, name: &str, groups: &[&str]) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&dir.join(CA_CERT))?, ca_key)?;
    let mut params = CertificateParams::new(Vec::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    // rcgen keeps one value per attribute type: one group per certificate.
    if let Some(group) = groups.first() {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *group);
    }
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let cert_path = dir.join(SERVING_CERT);
    let key_path = dir.join(SERVING_KEY);
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let certs = rustls_pemfile::certs(&mut read(&cert_path)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(&cert_path))?;
    let key = rustls_pemfile::private_key(&mut read(&key_path)?.as_bytes())
        .map_err(io_err(&key_path))?
        .ok_or(Error::Missing {
            path: key_path,
            what: "private key",
        })?;
    let ca_path = dir.join(CA_CERT);
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut read(&ca_path)?.as_bytes()) {
        roots.add(ca.map_err(io_err(&ca_path))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A client certificate is optional (tokens authenticate too), but one that is presented
    // must verify against the cluster CA or the handshake fails: Go's VerifyClientCertIfGiven.
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_single_cert(certs, key)?;
    // kubectl (Go) speaks HTTP/2; WebSocket upgrades (exec) need HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a secret: created with mode 0600, synced before returning.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
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
    fn first_start_creates_and_second_start_reuses_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(first.admin_token.len(), 64);
        assert!(first.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let second = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(first.admin_token, second.admin_token);
        assert_eq!(first.ca_pem, second.ca_pem);
        let mode = fs::metadata(dir.path().join("pki").join(CA_KEY))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn kubeconfig_names_server_ca_and_the_admin_certificate_not_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let config = pki.kubeconfig("https://127.0.0.1:6443");
        assert!(config.contains("server: https://127.0.0.1:6443"));
        assert!(!config.contains(&pki.admin_token));
        assert!(config.contains("certificate-authority-data: "));
        assert!(config.contains("client-certificate-data: "));
        assert!(config.contains("client-key-data: "));
    }

    #[test]
    fn the_ca_signs_a_request_for_its_subject_usages_and_lifetime_but_never_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let ca = pki.certificate_authority().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        params
            .distinguished_name
            .push(DnType::CommonName, "system:node:n1");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let request = params.serialize_request(&key).unwrap().pem().unwrap();
        let usages = ["digital signature".to_owned(), "client auth".to_owned()];
        let hour = std::time::Duration::from_secs(3600);
        let pem = ca.sign(&request, &usages, hour).unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let user = crate::apiserver::authn::x509::user(&der).unwrap();
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(user.groups, ["system:nodes", "system:authenticated"]);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let validity = cert.validity();
        let seconds = (validity.not_after.timestamp() - validity.not_before.timestamp()) as u64;
        assert_eq!(seconds, 3600 + BACKDATE.as_secs());
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        // Chains to the cluster CA.
        let (_, issuer) = x509_parser::pem::parse_x509_pem(pki.ca_pem.as_bytes()).unwrap();
        let issuer = issuer.parse_x509().unwrap();
        cert.verify_signature(Some(issuer.public_key())).unwrap();
    }

    #[test]
    fn the_kubelet_client_certificate_names_its_user_in_no_group_but_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let der = rustls_pemfile::certs(&mut pki.kubelet_client_cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let user = crate::apiserver::authn::x509::user(&der).unwrap();
        assert_eq!(user.name, KUBELET_CLIENT_USER);
        assert_eq!(user.groups, ["system:authenticated"]);
        let mode = fs::metadata(dir.path().join("pki").join(KUBELET_CLIENT_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reused on the next start.
        let again = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(again.kubelet_client_cert_pem, pki.kubelet_client_cert_pem);
    }

    #[test]
    fn the_admin_certificate_names_admin_in_system_masters() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let der = rustls_pemfile::certs(&mut pki.admin_cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let user = crate::apiserver::authn::x509::user(&der).unwrap();
        assert_eq!(user, crate::apiserver::auth::UserInfo::admin());
        for (path, mode) in [
            (dir.path().join("pki"), 0o700),
            (dir.path().join("pki").join(ADMIN_KEY), 0o600),
            (dir.path().join("pki").join(ADMIN_TOKEN), 0o600),
        ] {
            let found = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(found, mode, "{}", path.display());
        }
    }
}
