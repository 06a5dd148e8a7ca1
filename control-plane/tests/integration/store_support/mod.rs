//! Fixtures for the store tests: a temporary embedded store, and a real etcd started for the test
//! and killed when its guard drops.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_control_plane::store::Store;
use apiary_control_plane::store::embedded::EmbeddedStore;
use apiary_control_plane::store::etcd::EtcdStore;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The etcd binary: `$ETCD_BIN`, or `etcd` from `PATH` (Debian: package `etcd-server`).
fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

/// A store under test, and whatever must outlive it.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    _guard: Guard,
}

enum Guard {
    Embedded(#[allow(dead_code, reason = "held for its Drop")] TempDir),
    Etcd(#[allow(dead_code, reason = "held for its Drop")] EtcdServer),
}

impl Fixture {
    /// An embedded store in a fresh temporary directory.
    pub async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let path = dir.path().join("store.redb");
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
            .await
            .expect("open task")
            .expect("opening the embedded store");
        Self {
            store: Arc::new(store),
            _guard: Guard::Embedded(dir),
        }
    }

    /// An embedded store behind encryption of every value (`*.*`, AES-GCM), so that the
    /// contract is checked through the encryption layer too.
    pub async fn encrypted() -> Self {
        let Self { store, _guard } = Self::embedded().await;
        let config = apiary_control_plane::store::encryption::EncryptionConfig::parse(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers:\n  - aesgcm:\n      keys: [{name: k, secret: MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=}]\n",
        )
        .expect("a valid configuration");
        Self {
            store: Arc::new(
                apiary_control_plane::store::encryption::EncryptedStore::new(store, config),
            ),
            _guard,
        }
    }

    /// An etcd store on an etcd of its own.
    pub async fn etcd() -> Self {
        let server = EtcdServer::start().await;
        let store = EtcdStore::connect(&[server.endpoint()], "/apiary-test")
            .await
            .expect("connecting to etcd");
        Self {
            store: Arc::new(store),
            _guard: Guard::Etcd(server),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free loopback port")
        .port()
}

/// A single-member etcd on loopback ports with a temporary data directory, SIGKILLed on drop.
pub struct EtcdServer {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers. Panics (failing the test) if etcd is not
    /// installed: CI installs it, and a silently skipped backend would hide regressions.
    pub async fn start() -> Self {
        let mut server = Self {
            child: None,
            dir: tempfile::tempdir().expect("creating a temporary directory"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        server.restart().await;
        server
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kills etcd with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts etcd on the same data directory and ports, and waits until it is healthy.
    pub async fn restart(&mut self) {
        self.kill();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the etcd log");
        let child = Command::new(etcd_bin())
            .arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            // A single member elects itself; short timers make that take milliseconds, not a second.
            .arg("--heartbeat-interval=20")
            .arg("--election-timeout=200")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run `{}` ({e}): the etcd tests need etcd installed \
                 (Debian: `apt-get install etcd-server`) or ETCD_BIN set",
                etcd_bin()
            ),
        };
        self.child = Some(child);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.healthy().await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                panic!("etcd did not become healthy:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Asks etcd's `/health` endpoint, which says true once the member has a leader.
    async fn healthy(&self) -> bool {
        let check = async {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.client_port))
                .await
                .ok()?;
            conn.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .ok()?;
            let mut response = String::new();
            conn.read_to_string(&mut response).await.ok()?;
            Some(response.contains(r#""health":"true""#))
        };
        tokio::time::timeout(Duration::from_secs(1), check)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
