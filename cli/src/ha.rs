//! `apiary up --ha`: a highly available control plane on this machine, to try the topology (and
//! for the lab): three etcd members (Debian's `etcd-server`) with peer and client TLS and
//! client-certificate auth, and three control planes on them, sharing the cluster CA (as
//! kubeadm's joined control planes do) and each with its own serving certificate.
//!
//! Layout under the data dir: `etcd/pki/` (the etcd CA, one certificate per member, the API
//! servers' client certificate), `etcd/m<i>/` (each member's data), the first control plane in
//! the data dir itself (its kubeconfig and PKI where `apiary up` puts them) and the others in
//! `control-plane-<i>/`. etcd listens on loopback only.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// Members and control planes.
pub const SIZE: usize = 3;
/// etcd member `i` serves clients on `127.0.0.1:CLIENT_PORT + i`, peers on `PEER_PORT + i`
/// (off etcd's defaults, so that a system etcd can keep them).
const CLIENT_PORT: u16 = 23790;
const PEER_PORT: u16 = 23800;

/// The etcd certificates, made once and kept in `etcd/pki`.
pub struct EtcdPki {
    pub dir: PathBuf,
}

impl EtcdPki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn member(&self, i: usize) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("member-{i}.crt")),
            self.dir.join(format!("member-{i}.key")),
        )
    }

    pub fn client(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("apiserver-etcd-client.crt"),
            self.dir.join("apiserver-etcd-client.key"),
        )
    }
}

/// Makes the etcd PKI under `data_dir/etcd/pki` unless it is there.
pub fn etcd_pki(data_dir: &Path) -> anyhow::Result<EtcdPki> {
    use std::os::unix::fs::PermissionsExt as _;
    let pki = EtcdPki {
        dir: data_dir.join("etcd").join("pki"),
    };
    if pki.ca().exists() {
        return Ok(pki);
    }
    fs::create_dir_all(&pki.dir)?;
    fs::set_permissions(&pki.dir, fs::Permissions::from_mode(0o700))?;
    let mut params = CertificateParams::new(Vec::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "etcd-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let issuer = Issuer::new(params, key);
    let write = |(crt, key_file): (PathBuf, PathBuf), cert: String, key: String| {
        fs::write(&crt, cert)?;
        fs::write(&key_file, key)?;
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600))
    };
    for i in 0..SIZE {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("etcd-member-{i}"));
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        // A member serves clients and peers, and dials its peers with the same certificate.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(pki.member(i), cert.pem(), key.serialize_pem())?;
    }
    let mut params = CertificateParams::new(Vec::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-etcd-client");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let client = params.signed_by(&key, &issuer)?;
    write(pki.client(), client.pem(), key.serialize_pem())?;
    // The CA last: its presence says the rest is there.
    fs::write(pki.ca(), cert.pem())?;
    Ok(pki)
}

/// The arguments of etcd member `i`.
pub fn etcd_args(data_dir: &Path, pki: &EtcdPki, i: usize) -> Vec<String> {
    let cluster = (0..SIZE)
        .map(|m| format!("member-{m}=https://127.0.0.1:{}", PEER_PORT + m as u16))
        .collect::<Vec<_>>()
        .join(",");
    let client = format!("https://127.0.0.1:{}", CLIENT_PORT + i as u16);
    let peer = format!("https://127.0.0.1:{}", PEER_PORT + i as u16);
    let (crt, key) = pki.member(i);
    let path = |p: &Path| p.display().to_string();
    let ca = path(&pki.ca());
    [
        "--name",
        &format!("member-{i}"),
        "--data-dir",
        &path(&data_dir.join("etcd").join(format!("m{i}"))),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &cluster,
        "--initial-cluster-state",
        "new",
        "--client-cert-auth",
        "--trusted-ca-file",
        &ca,
        "--cert-file",
        &path(&crt),
        "--key-file",
        &path(&key),
        "--peer-client-cert-auth",
        "--peer-trusted-ca-file",
        &ca,
        "--peer-cert-file",
        &path(&crt),
        "--peer-key-file",
        &path(&key),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The flags that put a control plane on the members.
pub fn control_plane_etcd_flags(pki: &EtcdPki) -> Vec<String> {
    let endpoints = (0..SIZE)
        .map(|m| format!("https://127.0.0.1:{}", CLIENT_PORT + m as u16))
        .collect::<Vec<_>>()
        .join(",");
    let (crt, key) = pki.client();
    vec![
        "--etcd-endpoints".to_owned(),
        endpoints,
        "--etcd-cafile".to_owned(),
        pki.ca().display().to_string(),
        "--etcd-certfile".to_owned(),
        crt.display().to_string(),
        "--etcd-keyfile".to_owned(),
        key.display().to_string(),
    ]
}

/// Where control plane `i` keeps its data: the data dir for the first.
pub fn control_plane_dir(data_dir: &Path, i: usize) -> PathBuf {
    if i == 0 {
        data_dir.to_owned()
    } else {
        data_dir.join(format!("control-plane-{i}"))
    }
}

/// `listen` (`host:port`) with the port moved up by `i`: control plane `i`'s address.
pub fn listen_of(listen: &str, i: usize) -> anyhow::Result<String> {
    let (host, port) = listen
        .rsplit_once(':')
        .with_context(|| format!("--listen {listen:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--listen {listen:?} has no port number"))?;
    let port = port
        .checked_add(i as u16)
        .with_context(|| format!("--listen {listen:?}: no room for {SIZE} ports"))?;
    Ok(format!("{host}:{port}"))
}

/// `server` (`https://host:port`) with control plane `i`'s port.
pub fn server_of(server: &str, listen: &str, i: usize) -> anyhow::Result<String> {
    let (base, _) = server
        .rsplit_once(':')
        .with_context(|| format!("the kubeconfig's server {server:?} has no port"))?;
    let port = listen_of(listen, i)?
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default();
    Ok(format!("{base}:{port}"))
}

/// Whether every member answers `/health` as healthy, asked through `client`
/// ([`etcd_client`]).
pub async fn etcd_healthy(client: &reqwest::Client) -> bool {
    for i in 0..SIZE {
        let url = format!("https://127.0.0.1:{}/health", CLIENT_PORT + i as u16);
        let healthy = match client.get(url).send().await {
            Ok(response) => response.bytes().await.is_ok_and(|body| {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|body| body["health"] == "true")
            }),
            Err(_) => false,
        };
        if !healthy {
            return false;
        }
    }
    true
}

/// A client that presents the API servers' etcd client certificate.
pub fn etcd_client(pki: &EtcdPki) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut fs::read(pki.ca())?.as_slice()) {
        roots.add(cert?)?;
    }
    let (crt, key) = pki.client();
    let certs =
        rustls_pemfile::certs(&mut fs::read(crt)?.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut fs::read(key)?.as_slice())?
        .context("no key in the etcd client key file")?;
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(2))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_planes_take_the_next_ports() {
        assert_eq!(listen_of("0.0.0.0:6443", 2).unwrap(), "0.0.0.0:6445");
        assert_eq!(
            server_of("https://10.0.0.5:6443", "0.0.0.0:6443", 1).unwrap(),
            "https://10.0.0.5:6444"
        );
        assert!(listen_of("0.0.0.0:65535", 1).is_err());
        assert!(listen_of("nowhere", 1).is_err());
    }

    #[test]
    fn the_etcd_pki_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let pki = etcd_pki(dir.path()).unwrap();
        let ca = fs::read(pki.ca()).unwrap();
        for i in 0..SIZE {
            assert!(pki.member(i).0.exists() && pki.member(i).1.exists());
        }
        assert!(pki.client().0.exists());
        let again = etcd_pki(dir.path()).unwrap();
        assert_eq!(fs::read(again.ca()).unwrap(), ca);
        let args = etcd_args(dir.path(), &pki, 1);
        assert!(args.contains(&"https://127.0.0.1:23791".to_owned()));
        assert!(args.contains(&"--client-cert-auth".to_owned()));
    }
}
