//! A control plane started for one test, and `apiary` pointed at it.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support module"
)]

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The control plane binary: `$APIARY_CONTROL_PLANE`, else next to this test's target folder
/// (`target/debug/apiary-control-plane`). Cargo builds binaries of other packages only when asked,
/// so `cargo build --workspace` (or `-p apiary-control-plane`) must run before these tests.
fn control_plane_binary() -> PathBuf {
    let path = match std::env::var_os("APIARY_CONTROL_PLANE") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("the test binary knows its path");
            // target/debug/deps/e2e-<hash> → target/debug
            exe.parent()
                .and_then(Path::parent)
                .expect("the test binary is in target/<profile>/deps")
                .join("apiary-control-plane")
        }
    };
    assert!(
        path.exists(),
        "{} is missing: these tests start the real control plane; build it first with \
         `cargo build -p apiary-control-plane` (or `cargo build --workspace`)",
        path.display()
    );
    path
}

/// A running `apiary-control-plane` with its own data directory, on a free loopback port.
pub struct Cluster {
    child: Child,
    dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A control plane started with `extra_args`.
    pub fn start_with(extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("data")).unwrap();
        let child = Self::spawn_control_plane(dir.path(), extra_args);
        let mut cluster = Self { child, dir };
        cluster.wait_ready();
        cluster
    }

    /// Stops the control plane and starts it again on the same data with `extra_args`.
    pub fn restart_with(&mut self, extra_args: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(self.kubeconfig());
        self.child = Self::spawn_control_plane(self.dir.path(), extra_args);
        self.wait_ready();
    }

    fn spawn_control_plane(dir: &Path, extra_args: &[&str]) -> Child {
        let log = fs::File::create(dir.join("control-plane.log")).unwrap();
        Command::new(control_plane_binary())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            // The same name every start: a restarted control plane leads at once.
            .args(["--identity", "test"])
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the control plane")
    }

    /// The control plane's data directory (its store, `store.redb`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("kubeconfig")
    }

    /// The cluster token (node agents'; the admin kubeconfig holds a client certificate).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/pki/admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("control-plane.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the control plane exited ({status}): {}", self.log());
            }
            if self.kubeconfig().exists() && self.run(&["get", "namespaces"], None).status.success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the control plane did not become ready in 60 s: {}",
            self.log()
        );
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiary"));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path())
            .env("RUST_BACKTRACE", "0");
        cmd
    }

    /// Runs `apiary args…`, feeding it `stdin`.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("apiary was built");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Stdout of `apiary args…`; panics with everything it said unless it succeeded.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "apiary {args:?} failed: {stdout}{stderr}"
        );
        stdout
    }

    /// `apiary args…` printed as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("apiary {args:?}: {e}: {out}"))
    }

    /// Stderr of `apiary args…`; panics unless it exited with 1, printed one line on stderr and
    /// nothing that looks like a panic.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let (stdout, stderr) = texts(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "apiary {args:?} should exit 1: {stdout}{stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "apiary {args:?} should print one error line: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr.trim_end().to_owned()
    }

    /// Writes a manifest into the test's folder.
    pub fn manifest(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Starts a long-running `apiary` (e.g. `get -w`) whose output can be read as it comes.
    pub fn spawn(&self, args: &[&str]) -> Streaming {
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An `apiary` still running.
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
