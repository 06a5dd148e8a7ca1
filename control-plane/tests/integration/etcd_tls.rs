//! The etcd backend over TLS with client certificates, against a real etcd on loopback started
//! with `--client-cert-auth --trusted-ca-file` (certificates made here with rcgen): the control
//! plane connects with `--etcd-cafile/--etcd-certfile/--etcd-keyfile`, a client without a
//! certificate (or with one from another CA) is refused, and with an encryption configuration
//! etcd's values of a Secret hold no plain text.

use crate::support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apiary_control_plane::store::{
    Store as _,
    etcd::{EtcdStore, EtcdTls},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use support::ControlPlane;

const PASSWORD: &str = "etcd-must-never-see-this";

/// A CA and what it signs, as PEM files in a folder.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "etcd-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        Self {
            dir,
            ca: Issuer::new(params, key),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Issues `name.crt`/`name.key` for a server on 127.0.0.1 or for a client.
    fn issue(&self, name: &str, server: bool) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            // etcd's own gateway dials the server with its serving certificate as a client.
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (crt, key_file) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (crt, key_file)
    }

    fn tls(&self, client: Option<&(PathBuf, PathBuf)>) -> EtcdTls {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        EtcdTls {
            ca_pem: Some(read(&self.ca_file())),
            client: client.map(|(c, k)| (read(c), read(k))),
        }
    }
}

/// etcd serving TLS on a loopback port, requiring client certificates of `pki`'s CA.
struct TlsEtcd {
    child: Child,
    _data: tempfile::TempDir,
    endpoint: String,
}

impl TlsEtcd {
    fn start(pki: &Pki) -> Self {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (cert, key) = pki.issue("etcd-server", true);
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let endpoint = format!("https://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let child = Command::new("etcd")
            .args(["--data-dir", data.path().to_str().unwrap(), "--name", "tls"])
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("tls={peer}")])
            .args(["--cert-file", &path(&cert), "--key-file", &path(&key)])
            .args([
                "--client-cert-auth",
                "--trusted-ca-file",
                &path(&pki.ca_file()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian package etcd-server) is installed by cargo xtask setup");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            _data: data,
            endpoint,
        }
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_etcd_client_needs_a_certificate_of_the_trusted_ca() {
    let pki = Pki::new();
    let etcd = TlsEtcd::start(&pki);
    let endpoints = [etcd.endpoint.clone()];
    let client = pki.issue("apiserver-etcd-client", false);
    let store = EtcdStore::connect_with(&endpoints, "/t", Some(&pki.tls(Some(&client))))
        .await
        .expect("a client certificate of the trusted CA is accepted");
    assert!(store.revision().await.unwrap() >= 1);

    // No certificate: etcd refuses the handshake.
    let refused = EtcdStore::connect_with(&endpoints, "/t", Some(&pki.tls(None))).await;
    assert!(refused.is_err(), "connected without a client certificate");
    // A certificate from another CA: refused too.
    let other = Pki::new();
    let foreign = other.issue("intruder", false);
    let mut tls = pki.tls(None);
    tls.client = other.tls(Some(&foreign)).client;
    assert!(
        EtcdStore::connect_with(&endpoints, "/t", Some(&tls))
            .await
            .is_err()
    );
    // Plain HTTP to a TLS endpoint list is a configuration error, said as such.
    let plain = [etcd.endpoint.replace("https://", "http://")];
    let err = EtcdStore::connect_with(&plain, "/t", Some(&pki.tls(Some(&client))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not https://"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_on_tls_etcd_stores_secrets_as_ciphertext() {
    let pki = Pki::new();
    let etcd = TlsEtcd::start(&pki);
    let (cert, key) = pki.issue("apiserver-etcd-client", false);
    let config = pki.dir.path().join("encryption.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys: [{name: key1, secret: MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=}]\n",
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let cp = ControlPlane::start_with(&[
        "--etcd-endpoints",
        &etcd.endpoint,
        "--etcd-cafile",
        &s(&pki.ca_file()),
        "--etcd-certfile",
        &s(&cert),
        "--etcd-keyfile",
        &s(&key),
        "--encryption-provider-config",
        &s(&config),
    ]);
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{password: {PASSWORD}}}\n"),
    )
    .success();
    let secret = cp.kubectl_json(&["get", "secret", "db", "-o", "json"]);
    assert_eq!(secret["data"]["password"], base64_of(PASSWORD));

    // What etcd holds, read with a client certificate of our own.
    let own = pki.issue("reader", false);
    let mut client = etcd_client::Client::connect(
        [etcd.endpoint.as_str()],
        Some(
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(
                        std::fs::read(pki.ca_file()).unwrap(),
                    ))
                    .identity(etcd_client::Identity::from_pem(
                        std::fs::read(&own.0).unwrap(),
                        std::fs::read(&own.1).unwrap(),
                    )),
            ),
        ),
    )
    .await
    .unwrap();
    let stored = client
        .get("/apiary/registry/core/secrets/default/db", None)
        .await
        .unwrap();
    let value = stored.kvs()[0].value().to_vec();
    assert!(value.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    let contains = |needle: &str| value.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(PASSWORD) && !contains(&base64_of(PASSWORD)));

    // Without the client certificate the control plane does not start, and says why.
    let out = Command::new(env!("CARGO_BIN_EXE_apiary-control-plane"))
        .args(["--data-dir", pki.dir.path().join("other").to_str().unwrap()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--etcd-endpoints",
            &etcd.endpoint,
        ])
        .args(["--etcd-cafile", &s(&pki.ca_file())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connecting to etcd"), "{stderr}");
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
