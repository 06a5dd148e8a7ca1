//! What the benchmarks share: a control plane (and etcd) started on loopback, and an HTTPS
//! client that trusts the cluster CA.

#![allow(dead_code, reason = "each bench uses a different part")]

pub mod proc;
pub mod prometheus;
pub mod stats;

pub use stats::percentile;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub struct Server {
    child: Child,
    pub data: tempfile::TempDir,
    pub base: String,
    pub token: String,
    ca_pem: Vec<u8>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Etcd {
    child: Child,
    _data: tempfile::TempDir,
    pub endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start_etcd() -> Etcd {
    let data = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args([
            "--data-dir",
            data.path().to_str().unwrap(),
            "--name",
            "bench",
        ])
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian package etcd-server) must be installed: cargo xtask setup");
    Etcd {
        child,
        _data: data,
        endpoint,
    }
}

pub fn start_server(etcd: Option<&Etcd>) -> Server {
    start_server_with(etcd, &[])
}

/// A control plane with extra flags.
pub fn start_server_with(etcd: Option<&Etcd>, extra: &[&str]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiary-control-plane"));
    cmd.args([
        "--data-dir",
        data.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .args(extra)
    .env("RUST_LOG", "warn");
    if let Some(etcd) = etcd {
        cmd.args([
            "--etcd-endpoints",
            &etcd.endpoint,
            "--etcd-prefix",
            "/bench",
        ]);
    }
    let child = cmd.spawn().unwrap();
    let kubeconfig = data.path().join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "the control plane did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    let pem = std::fs::read(data.path().join("pki/ca.crt")).unwrap();
    Server {
        child,
        base: config["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap()
            .to_owned(),
        // The kubeconfig holds the admin's client certificate; the cluster token is beside it.
        token: std::fs::read_to_string(data.path().join("pki/admin.token"))
            .unwrap()
            .trim()
            .to_owned(),
        ca_pem: pem,
        data,
    }
}

impl Server {
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(&self.ca_pem))
            .build()
            .unwrap()
    }

    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The control plane's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs (not gone, not a zombie).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state != 'Z' && state != 'X')
            })
            .unwrap_or(false)
    }

    pub fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// The peak RSS of the process so far (`VmHWM`).
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// A `/proc/PID/status` size (`VmRSS:`, `VmHWM:` …) in MiB; 0 when unreadable.
    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

/// Trusts the cluster CA only; offers HTTP/2 so that watches share connections.
pub fn tls_config(ca_pem: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// [`tls_config`] offering HTTP/1.1 only: what a client writing raw requests speaks.
pub fn tls_config_http1(ca_pem: &[u8]) -> rustls::ClientConfig {
    let mut config = tls_config(ca_pem);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
