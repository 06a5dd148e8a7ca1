//! A control plane started for one test, and `kubectl` pointed at it.

#![allow(dead_code, reason = "not every helper is used by a test today")]

pub mod certs;
pub mod fake_agent;
pub mod webhook;

use serde_json::Value;
use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A running `apiary-control-plane` with its own data directory, on a free loopback port.
pub struct ControlPlane {
    child: Child,
    pub data_dir: tempfile::TempDir,
    /// The etcd it stores into, when not the embedded store; dropped after the server.
    _etcd: Option<Etcd>,
}

/// A single-member etcd on loopback ports, killed on drop.
pub struct Etcd {
    child: Child,
    _data: tempfile::TempDir,
    pub endpoint: String,
}

impl Etcd {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// An etcd with flags of its own (`--quota-backend-bytes`, `--max-request-bytes`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let data = tempfile::tempdir().unwrap();
        let client_port = free_port();
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new("etcd")
            .args([
                "--data-dir",
                data.path().to_str().unwrap(),
                "--name",
                "test",
            ])
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--heartbeat-interval", "20", "--election-timeout", "200"])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian package etcd-server) is installed by cargo xtask setup");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            _data: data,
            endpoint,
        }
    }

    /// Freezes etcd (SIGSTOP): it holds its connections but answers nothing, as an unreachable
    /// member does.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused etcd go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlane {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A control plane storing into an etcd of its own.
    pub fn start_on_etcd() -> Self {
        Self::start_on_etcd_with(&[])
    }

    /// A control plane storing into an etcd of its own started with `etcd_args`.
    pub fn start_on_etcd_with(etcd_args: &[&str]) -> Self {
        let etcd = Etcd::start_with(etcd_args);
        let mut cp = Self::start_with(&["--etcd-endpoints", &etcd.endpoint]);
        cp._etcd = Some(etcd);
        cp
    }

    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra_args, &[])
    }

    /// A control plane with `env` set in its environment (tests share one process: a test
    /// must not set variables of its own process for its control plane).
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra_args, env)
    }

    /// A control plane on `data_dir`, once it answers.
    fn start_in(data_dir: tempfile::TempDir, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Self::spawn_with_env(data_dir.path(), extra_args, env);
        let mut cp = Self {
            child,
            data_dir,
            _etcd: None,
        };
        cp.wait_ready();
        cp
    }

    /// Another control plane of `first`'s cluster (start both on one etcd): it shares the
    /// cluster CA, the service account key and the admin's credentials, as kubeadm's joined
    /// control planes do, and makes its own serving certificate.
    pub fn start_joining(first: &ControlPlane, extra_args: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        apiary_control_plane::apiserver::pki::share(first.data_path(), data_dir.path()).unwrap();
        Self::start_in(data_dir, extra_args, &[])
    }

    /// Kills the control plane, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn spawn(data_dir: &Path, extra_args: &[&str]) -> Child {
        Self::spawn_with_env(data_dir, extra_args, &[])
    }

    fn spawn_with_env(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_apiary-control-plane"))
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .spawn()
            .unwrap()
    }

    /// Kills the control plane (as a crash would) and starts it again on the same data
    /// directory with `extra_args`. Pass the same `--identity` both times, or the new process
    /// waits for the dead one's leader lease to expire before it runs the controllers.
    pub fn restart_with(&mut self, extra_args: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The new process listens on another port and writes a new kubeconfig.
        let _ = std::fs::remove_file(self.kubeconfig());
        self.child = Self::spawn(self.data_dir.path(), extra_args);
        self.wait_ready();
    }

    /// The etcd of a control plane started with [`ControlPlane::start_on_etcd`].
    pub fn etcd(&self) -> &Etcd {
        self._etcd.as_ref().expect("started on etcd")
    }

    /// The control plane's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the control plane has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The API server's address, from the kubeconfig's `server`.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let kubeconfig = std::fs::read_to_string(self.kubeconfig()).unwrap();
        kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://"))
            .and_then(|addr| addr.trim_matches('"').parse().ok())
            .expect("the kubeconfig names the server as https://ADDR:PORT")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.path().join("kubeconfig")
    }

    /// A kubeconfig with the cluster token, as node agents run with (`apiary node join`
    /// writes one): the admin kubeconfig holds a client certificate.
    pub fn node_kubeconfig(&self) -> PathBuf {
        let mut config: Value =
            serde_yaml::from_str(&std::fs::read_to_string(self.kubeconfig()).unwrap()).unwrap();
        config["users"][0]["user"] = serde_json::json!({ "token": self.token() });
        let path = self.data_dir.path().join("node.kubeconfig");
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    }

    /// The cluster token (what node agents and `apiary node join` authenticate with; the
    /// admin kubeconfig holds a client certificate instead).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("pki/admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the control plane exited before it was ready: {status}");
            }
            if self.kubeconfig().exists() && self.kubectl(&["get", "--raw", "/readyz"]).ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the control plane did not become ready in 30 s");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Run {
        Run::new(self.command(args), args)
    }

    /// Creates the Node `object` (JSON) and writes its status (as an agent registering would).
    pub fn register_node(&self, object: &str) {
        self.kubectl_stdin(&["create", "-f", "-"], object).success();
        let object: Value = serde_json::from_str(object).unwrap();
        let patch = serde_json::json!({ "status": object["status"] }).to_string();
        let name = object["metadata"]["name"].as_str().unwrap();
        self.kubectl(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .success();
    }

    /// A kubeconfig of the cluster whose user is bearer `token` (in the admin's kubeconfig, the
    /// admin's client certificate would win over a `--token`).
    pub fn kubeconfig_with_token(&self, token: &str) -> PathBuf {
        let mut config: Value =
            serde_yaml::from_str(&std::fs::read_to_string(self.kubeconfig()).unwrap()).unwrap();
        config["users"][0]["user"] = serde_json::json!({ "token": token });
        let path = self
            .data_dir
            .path()
            .join(format!("kubeconfig-{}", token.replace(['/', '.'], "_")));
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    }

    /// kubectl as the holder of bearer `token`.
    pub fn kubectl_as_token(&self, token: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig_with_token(token))
            .args(args);
        Run::new(cmd, args)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.kubectl(args).with_stdin(stdin)
    }

    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.kubectl(args).success();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {out}"))
    }

    /// Starts a long-running kubectl (e.g. `get -w`) whose output can be read as it comes.
    pub fn kubectl_spawn(&self, args: &[&str]) -> Streaming {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Streaming {
            child,
            rx,
            seen: String::new(),
        }
    }

    /// An HTTPS client that trusts only the cluster CA (no credentials of its own).
    pub fn https_client(&self) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(self.data_path().join("pki/ca.crt")).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
    }

    pub fn data_path(&self) -> &Path {
        self.data_dir.path()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One kubectl invocation, run when its outcome is asked for.
pub struct Run {
    args: Vec<String>,
    cmd: Command,
    stdin: Option<String>,
}

impl Run {
    fn new(cmd: Command, args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            cmd,
            stdin: None,
        }
    }

    /// Feeds `stdin` to the command.
    pub fn with_stdin(mut self, stdin: &str) -> Self {
        self.stdin = Some(stdin.to_owned());
        self
    }

    fn run(mut self) -> (bool, String, String, Vec<String>) {
        self.cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("kubectl is installed");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = &self.stdin {
            stdin.write_all(input.as_bytes()).unwrap();
        }
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            self.args,
        )
    }

    /// Stdout when kubectl exits 0.
    pub fn output(self) -> Option<String> {
        let (ok, stdout, _, _) = self.run();
        ok.then_some(stdout)
    }

    /// Whether kubectl exits 0, and everything it printed.
    pub fn outcome(self) -> (bool, String) {
        let (ok, stdout, stderr, _) = self.run();
        (ok, format!("{stdout}{stderr}"))
    }

    /// Whether kubectl exits 0.
    pub fn ok(self) -> bool {
        self.run().0
    }

    /// Stdout; panics with everything kubectl said unless it succeeded.
    pub fn success(self) -> String {
        let (ok, stdout, stderr, args) = self.run();
        assert!(ok, "kubectl {args:?} failed: {stdout}{stderr}");
        stdout
    }

    /// Stderr (where `-v=8` logs requests and responses); panics unless kubectl succeeded.
    #[allow(dead_code, reason = "not every test binary logs kubectl's requests")]
    pub fn success_log(self) -> String {
        let (ok, stdout, stderr, args) = self.run();
        assert!(ok, "kubectl {args:?} failed: {stdout}{stderr}");
        stderr
    }

    /// Stdout and stderr; panics unless kubectl failed.
    pub fn failure(self) -> String {
        let (ok, stdout, stderr, args) = self.run();
        assert!(!ok, "kubectl {args:?} should have failed: {stdout}{stderr}");
        format!("{stdout}{stderr}")
    }
}

/// A kubectl still running.
pub struct Streaming {
    child: Child,
    rx: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Streaming {
    /// Reads output until `done` holds for all of it, or `seconds` pass (then panics).
    pub fn read_until(&mut self, done: impl Fn(&str) -> bool, seconds: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!("timed out after {seconds} s; output so far: {}", self.seen),
            }
        }
        self.seen.clone()
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `apiary-node-agent hollow`, killed on drop.
pub struct Hollow(Child);

impl Hollow {
    pub fn start(cp: &ControlPlane, prefix: &str, count: usize, extra: &[&str]) -> Self {
        let exe = std::env::current_exe().expect("the test executable's path");
        // target/<profile>/deps/<test>-… → target/<profile>/apiary-node-agent
        let agent: PathBuf = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("apiary-node-agent"))
            .expect("the target directory");
        assert!(
            agent.exists(),
            "{} is missing: build the workspace first (cargo build -p apiary-node-agent)",
            agent.display()
        );
        let child = Command::new(agent)
            .args(["hollow", "--count", &count.to_string()])
            .arg("--kubeconfig")
            .arg(cp.node_kubeconfig())
            .args(["--name-prefix", prefix])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the hollow nodes");
        Self(child)
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` until it yields a value, for at most `timeout` (then panics naming `what`).
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The `items` of a list.
pub fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

pub fn name(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn pods(cp: &ControlPlane, selector: &str) -> Vec<Value> {
    items(&cp.kubectl_json(&["get", "pods", "-l", selector, "-o", "json"]))
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

pub fn ready_nodes(cp: &ControlPlane) -> usize {
    items(&cp.kubectl_json(&["get", "nodes", "-o", "json"]))
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count()
}

pub fn wait_nodes(cp: &ControlPlane, count: usize, timeout: Duration) {
    wait_for(&format!("{count} Ready nodes"), timeout, || {
        (ready_nodes(cp) >= count).then_some(())
    });
}

/// The watch events (`kubectl get -w -o json --output-watch-events`) complete so far.
pub fn watch_events(output: &str) -> Vec<(String, Value)> {
    serde_json::Deserializer::from_str(output)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["object"].clone(),
            )
        })
        .collect()
}
