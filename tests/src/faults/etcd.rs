//! Three etcd members (Debian's `etcd-server`) on loopback, with peer and client TLS and
//! client-certificate auth, as kubeadm's stacked etcd runs.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::Value;

use super::{load::trusting, process::Process};

/// A CA and the certificates it signs, as PEM files in a folder.
struct Certificates {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

impl Certificates {
    fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut params = CertificateParams::new(Vec::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "etcd-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join("ca.crt"), cert.pem())?;
        Ok(Self {
            dir,
            ca: Issuer::new(params, key),
        })
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// `name.crt`/`name.key`: for a member (serving and dialing its peers on 127.0.0.1) or for
    /// a client.
    fn issue(&self, name: &str, member: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if member {
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let files = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&files.0, cert.pem())?;
        std::fs::write(&files.1, key.serialize_pem())?;
        Ok(files)
    }
}

#[derive(Debug)]
pub struct Member {
    /// The client port on 127.0.0.1.
    pub client: u16,
    pub process: Process,
}

pub struct Etcd {
    pub members: Vec<Member>,
    certificates: Certificates,
    /// The control planes' client certificate and key.
    client: (PathBuf, PathBuf),
    /// Asks the members for `/health` as a control plane, built once for every probe.
    health: reqwest::Client,
}

impl Etcd {
    /// Starts `size` members under `dir` (data, certificates, logs), ports from `first_port`
    /// (client) and the next (peer) for each member in turn.
    pub fn start(dir: &Path, size: usize, first_port: u16) -> anyhow::Result<Self> {
        let certificates = Certificates::new(dir.join("pki"))?;
        let ports: Vec<(u16, u16)> = (0..size as u16)
            .map(|i| (first_port + 2 * i, first_port + 2 * i + 1))
            .collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=https://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let ca = certificates.ca().display().to_string();
        let mut members = Vec::new();
        for (i, &(client, peer)) in ports.iter().enumerate() {
            let (crt, key) = certificates.issue(&format!("m{i}"), true)?;
            let (crt, key) = (crt.display().to_string(), key.display().to_string());
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("https://127.0.0.1:{peer}");
            let args = [
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &dir.join(format!("m{i}")).display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--client-cert-auth",
                "--trusted-ca-file",
                &ca,
                "--cert-file",
                &crt,
                "--key-file",
                &key,
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file",
                &ca,
                "--peer-cert-file",
                &crt,
                "--peer-key-file",
                &key,
            ]
            .map(str::to_owned)
            .to_vec();
            let log = dir.join(format!("m{i}.log"));
            members.push(Member {
                client,
                process: Process::start("etcd", args, log)?,
            });
        }
        let client = certificates.issue("apiary", false)?;
        let health = Self::health_client(&certificates, &client)?;
        Ok(Self {
            members,
            certificates,
            client,
            health,
        })
    }

    /// The flags a control plane needs to use these members through `endpoints`.
    pub fn control_plane_flags(&self, endpoints: &str) -> Vec<String> {
        vec![
            "--etcd-endpoints".to_owned(),
            endpoints.to_owned(),
            "--etcd-cafile".to_owned(),
            self.certificates.ca().display().to_string(),
            "--etcd-certfile".to_owned(),
            self.client.0.display().to_string(),
            "--etcd-keyfile".to_owned(),
            self.client.1.display().to_string(),
        ]
    }

    /// A client that presents the control planes' certificate, for etcd's `/health`.
    fn health_client(
        certificates: &Certificates,
        client: &(PathBuf, PathBuf),
    ) -> anyhow::Result<reqwest::Client> {
        let certs = rustls_pemfile::certs(&mut &std::fs::read(&client.0)?[..])
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut &std::fs::read(&client.1)?[..])?
            .ok_or_else(|| anyhow::anyhow!("no key in the client key file"))?;
        let tls = trusting(&certificates.ca())?.with_client_auth_cert(certs, key)?;
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(2))
            .build()?)
    }

    /// Members that answer `/health` with `true` (they are in a quorum).
    pub async fn healthy(&self) -> usize {
        let mut healthy = 0;
        for member in &self.members {
            let url = format!("https://127.0.0.1:{}/health", member.client);
            let Ok(response) = self.health.get(url).send().await else {
                continue;
            };
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if body["health"] == "true" {
                healthy += 1;
            }
        }
        healthy
    }
}
