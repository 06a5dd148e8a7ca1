//! A real [`PodStreams`] on this machine, for tests: a container's log is a file the test appends
//! to, exec runs the command as a local process (on a pseudo-terminal for `tty`), and a pod's
//! ports are this machine's loopback. The service
//! frontends the agent shows are what the test sets ([`FixedServices`]). The agent's server runs
//! on a runtime of its own so that tests can block on kubectl.
//!
//! Shared by `control-plane/tests/integration/streams.rs` and `cli/tests/{streams,net}.rs`.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the backend"
)]

use std::{
    collections::HashMap,
    io::{self, Write as _},
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use apiary_node_agent::{
    agent::serving_certificate,
    api_client::ApiClient,
    kubeconfig::Endpoint,
    server::{
        self, ExecRequest, ExecSession, LogRequest, PodStreams, PortDialer, ServiceSource,
        StreamError,
        auth::{Auth, Reviews},
        services::FrontendView,
    },
};
use bytes::Bytes;
use futures::{StreamExt as _, stream::BoxStream};
use tokio::{io::AsyncReadExt as _, sync::mpsc};

/// Pods by `(namespace, name)`, each with its container names; logs under `dir`.
pub struct LocalPods {
    pods: Mutex<HashMap<(String, String), Vec<String>>>,
    dir: PathBuf,
}

impl LocalPods {
    pub fn new(dir: &Path) -> Self {
        Self {
            pods: Mutex::default(),
            dir: dir.to_owned(),
        }
    }

    pub fn add_pod(&self, namespace: &str, pod: &str, containers: &[&str]) {
        for c in containers {
            std::fs::File::create(self.log_path(namespace, pod, c)).unwrap();
        }
        self.pods.lock().unwrap().insert(
            (namespace.to_owned(), pod.to_owned()),
            containers.iter().map(|c| (*c).to_owned()).collect(),
        );
    }

    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.dir.join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// What the container "writes".
    pub fn append(&self, namespace: &str, pod: &str, container: &str, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path(namespace, pod, container))
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn check(&self, namespace: &str, pod: &str, container: &str) -> Result<(), StreamError> {
        let pods = self.pods.lock().unwrap();
        let containers = pods
            .get(&(namespace.to_owned(), pod.to_owned()))
            .ok_or_else(|| StreamError::PodNotFound {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
            })?;
        if containers.iter().any(|c| c == container) {
            Ok(())
        } else {
            Err(StreamError::ContainerNotFound {
                pod: pod.to_owned(),
                container: container.to_owned(),
            })
        }
    }
}

/// The lines of `text` that `request` selects, as the kubelet would send them.
fn select(text: &str, request: &LogRequest, written: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let skip = request.tail_lines.map_or(0, |n| {
        lines.len().saturating_sub(usize::try_from(n).unwrap_or(0))
    });
    let mut out = Vec::new();
    for line in &lines[skip..] {
        if request.timestamps {
            out.extend_from_slice(
                written
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                    .as_bytes(),
            );
            out.push(b' ');
        }
        out.extend_from_slice(line.as_bytes());
    }
    out
}

#[async_trait::async_trait]
impl PodStreams for LocalPods {
    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: LogRequest,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, StreamError> {
        self.check(namespace, pod, container)?;
        let path = self.log_path(namespace, pod, container);
        let text = std::fs::read_to_string(&path).map_err(|e| StreamError::Internal(e.into()))?;
        let offset = text.len() as u64;
        let first = Bytes::from(select(&text, &request, chrono::Utc::now()));
        // The server applies limitBytes.
        let head = futures::stream::once(async move { Ok(first) });
        if !request.follow {
            return Ok(head.boxed());
        }
        // Follows by polling for what was appended since.
        let follow_request = LogRequest {
            tail_lines: None,
            ..request
        };
        let rest = futures::stream::unfold((path, offset), move |(path, mut offset)| {
            let request = follow_request.clone();
            async move {
                loop {
                    let text = match tokio::fs::read(&path).await {
                        Ok(text) => text,
                        Err(e) => return Some((Err(e), (path, offset))),
                    };
                    if text.len() as u64 > offset {
                        let new = String::from_utf8_lossy(&text[offset as usize..]).into_owned();
                        offset = text.len() as u64;
                        let chunk = Bytes::from(select(&new, &request, chrono::Utc::now()));
                        return Some((Ok(chunk), (path, offset)));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Ok(head.chain(rest).boxed())
    }

    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        self.check(namespace, pod, container)?;
        let (program, args) = request
            .command
            .split_first()
            .ok_or_else(|| StreamError::BadRequest("command: Required value".into()))?;
        let mut command = tokio::process::Command::new(program);
        command.args(args).kill_on_drop(true);
        if request.tty {
            return spawn_on_pty(command);
        }
        let piped = |wanted: bool| {
            if wanted {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        command
            .stdin(piped(request.stdin))
            .stdout(piped(request.stdout))
            .stderr(piped(request.stderr));
        let mut child = command
            .spawn()
            .map_err(|e| StreamError::Internal(anyhow::anyhow!("starting {program}: {e}")))?;
        Ok(ExecSession {
            stdin: child
                .stdin
                .take()
                .map(|w| Box::pin(w) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>),
            stdout: child
                .stdout
                .take()
                .map(|r| Box::pin(r) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>),
            stderr: child
                .stderr
                .take()
                .map(|r| Box::pin(r) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>),
            resize: None,
            exit: Box::pin(async move { child.wait().await.map(|s| exit_code(&s)) }),
        })
    }

    /// The container is `cat` writing its log: what an attached client sends comes back as
    /// output (followed from the log's end), and the end of its stdin ends the container.
    async fn attach(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        let log = self
            .logs(
                namespace,
                pod,
                container,
                LogRequest {
                    follow: true,
                    tail_lines: Some(0),
                    ..LogRequest::default()
                },
            )
            .await?;
        let (exited_tx, exited_rx) = tokio::sync::watch::channel(false);
        let exited = move || {
            let mut exited = exited_rx.clone();
            async move {
                let _ = exited.wait_for(|done| *done).await;
            }
        };
        let stdout = request.stdout.then(|| {
            // What was written last is read before the output ends.
            let after_exit = exited();
            let until = async move {
                after_exit.await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            pump_into_reader(log.take_until(Box::pin(until)).boxed())
        });
        // Without stdin the container runs on: the exit holds the sender, never sending.
        let mut running = None;
        let stdin = if request.stdin {
            let (writer, mut reader) = tokio::io::duplex(64 * 1024);
            let path = self.log_path(namespace, pod, container);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                while let Ok(n @ 1..) = reader.read(&mut buffer).await {
                    let mut file = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap();
                    file.write_all(&buffer[..n]).unwrap();
                }
                let _ = exited_tx.send(true);
            });
            Some(Box::pin(writer) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>)
        } else {
            running = Some(exited_tx);
            None
        };
        let exit = exited();
        Ok(ExecSession {
            stdin,
            stdout,
            stderr: None,
            resize: None,
            exit: Box::pin(async move {
                let _running = running;
                exit.await;
                Ok(0)
            }),
        })
    }

    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<Arc<dyn PortDialer>, StreamError> {
        if !self
            .pods
            .lock()
            .unwrap()
            .contains_key(&(namespace.to_owned(), pod.to_owned()))
        {
            return Err(StreamError::PodNotFound {
                namespace: namespace.into(),
                pod: pod.into(),
            });
        }
        Ok(Arc::new(LoopbackPorts(format!("{namespace}_{pod}"))))
    }
}

/// `chunks` as a reader, pumped by a task that ends when the reader goes.
fn pump_into_reader(
    chunks: BoxStream<'static, io::Result<Bytes>>,
) -> std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> {
    let (reader, mut writer) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let mut chunks = chunks;
        while let Some(Ok(chunk)) = chunks.next().await {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    Box::pin(reader)
}

/// A pod's ports are this machine's loopback; the string names the pod in errors.
#[derive(Debug)]
struct LoopbackPorts(String);

#[async_trait::async_trait]
impl PortDialer for LoopbackPorts {
    fn pod_id(&self) -> &str {
        &self.0
    }

    async fn dial(&self, port: u16) -> Result<tokio::net::TcpStream, String> {
        let sandbox = self.0.clone();
        let socket = tokio::task::spawn_blocking(move || {
            server::portforward::connect_loopback(port, &sandbox)
        })
        .await
        .map_err(|e| e.to_string())??;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        tokio::net::TcpStream::from_std(socket).map_err(|e| e.to_string())
    }
}

fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs the command with a new pseudo-terminal as its controlling terminal.
fn spawn_on_pty(mut command: tokio::process::Command) -> Result<ExecSession, StreamError> {
    let internal = |e: nix::Error| StreamError::Internal(anyhow::anyhow!("openpty: {e}"));
    let pty = nix::pty::openpty(None, None).map_err(internal)?;
    let (master, slave): (OwnedFd, OwnedFd) = (pty.master, pty.slave);
    let stdio = |fd: &OwnedFd| -> Result<Stdio, StreamError> {
        Ok(Stdio::from(
            fd.try_clone()
                .map_err(|e| StreamError::Internal(e.into()))?,
        ))
    };
    command
        .stdin(stdio(&slave)?)
        .stdout(stdio(&slave)?)
        .stderr(stdio(&slave)?);
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| StreamError::Internal(anyhow::anyhow!("starting the command: {e}")))?;
    drop(slave);
    let writer = tokio::fs::File::from_std(std::fs::File::from(
        master
            .try_clone()
            .map_err(|e| StreamError::Internal(e.into()))?,
    ));
    let reader = tokio::fs::File::from_std(std::fs::File::from(
        master
            .try_clone()
            .map_err(|e| StreamError::Internal(e.into()))?,
    ));
    // Reading a pty whose other side closed is EIO, not EOF: end the stream there.
    let reader = futures::stream::unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 16 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, io::Error>(Bytes::from(buf)), reader))
            }
        }
    });
    let (resize, mut sizes) = mpsc::channel::<(u16, u16)>(4);
    tokio::spawn(async move {
        while let Some((width, height)) = sizes.recv().await {
            let size = libc::winsize {
                ws_row: height,
                ws_col: width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        }
    });
    Ok(ExecSession {
        stdin: Some(Box::pin(writer)),
        stdout: Some(Box::pin(tokio_util_reader(reader))),
        stderr: None,
        resize: Some(resize),
        exit: Box::pin(async move { child.wait().await.map(|s| exit_code(&s)) }),
    })
}

/// An `AsyncRead` over a stream of chunks.
fn tokio_util_reader(
    stream: impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static,
) -> impl tokio::io::AsyncRead + Send {
    StreamReader {
        stream: Box::pin(stream),
        chunk: Bytes::new(),
    }
}

struct StreamReader {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = io::Result<Bytes>> + Send>>,
    chunk: Bytes,
}

impl tokio::io::AsyncRead for StreamReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while self.chunk.is_empty() {
            match self.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.chunk = chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.chunk.len().min(buf.remaining());
        buf.put_slice(&self.chunk.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// Service frontends as a node's maps would hold them, set by the test; with an error set, reading
/// them fails with it.
#[derive(Debug)]
pub struct FixedServices(Mutex<Result<Vec<FrontendView>, String>>);

impl Default for FixedServices {
    fn default() -> Self {
        Self(Mutex::new(Ok(Vec::new())))
    }
}

impl FixedServices {
    pub fn set(&self, frontends: Vec<FrontendView>) {
        *self.0.lock().unwrap() = Ok(frontends);
    }

    pub fn fail(&self, message: &str) {
        *self.0.lock().unwrap() = Err(message.to_owned());
    }
}

impl ServiceSource for FixedServices {
    fn frontends(&self) -> anyhow::Result<Vec<FrontendView>> {
        self.0.lock().unwrap().clone().map_err(anyhow::Error::msg)
    }
}

/// The agent's server on a loopback port, on a runtime of its own; stopped on drop.
pub struct Agent {
    pub addr: SocketAddr,
    pub pods: Arc<LocalPods>,
    pub services: Arc<FixedServices>,
    _dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Agent {
    /// The agent of node `node`: it accepts the cluster CA's client certificates and asks the
    /// API server of `kubeconfig` (authenticated by `token`, as node agents) to review the
    /// requests it gets.
    pub fn start(node: &str, kubeconfig: &Path, token: &str) -> Self {
        Self::start_trusting(node, kubeconfig, token, None)
    }

    /// Like [`Agent::start`], but accepting client certificates of `client_ca_pem` (another CA
    /// than the cluster's) instead.
    pub fn start_trusting(
        node: &str,
        kubeconfig: &Path,
        token: &str,
        client_ca_pem: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
        config["users"][0]["user"] = serde_json::json!({ "token": token });
        let node_kubeconfig = dir.path().join("node.kubeconfig");
        std::fs::write(&node_kubeconfig, serde_yaml::to_string(&config).unwrap()).unwrap();
        let endpoint = Endpoint::from_kubeconfig(&node_kubeconfig).unwrap();
        let pods = Arc::new(LocalPods::new(dir.path()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let api = ApiClient::new(&endpoint).unwrap();
        // A serving certificate of the cluster CA, through a CSR as the agent asks for it.
        let serving = Arc::new(server::tls::ServingCertificate::default());
        runtime.spawn(serving_certificate::keep_current(
            api.clone(),
            serving_certificate::Config {
                node: node.to_owned(),
                addresses: vec![[127, 0, 0, 1].into()],
                ca_pem: endpoint.ca_pem.clone(),
                dir: dir.path().join("pki"),
            },
            Arc::clone(&serving),
        ));
        approve_serving_requests(kubeconfig, || serving.current().is_some());
        let tls =
            server::tls::server_config(serving, client_ca_pem.unwrap_or(&endpoint.ca_pem)).unwrap();
        let reviews: Arc<dyn Reviews> = Arc::new(api);
        let auth = Arc::new(Auth::new(node, reviews));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let backend: Arc<dyn PodStreams> = Arc::clone(&pods) as _;
        let services = Arc::new(FixedServices::default());
        let source: Arc<dyn ServiceSource> = Arc::clone(&services) as _;
        runtime.spawn(server::serve(
            listener,
            tls,
            auth,
            backend,
            server::DataplaneViews {
                services: source,
                flows: server::FlowLog::default(),
                tracer: None,
                stats: Default::default(),
            },
        ));
        Self {
            addr,
            pods,
            services,
            _dir: dir,
            runtime: Some(runtime),
        }
    }
}

/// Approves the pending serving certificate requests as the admin of `kubeconfig` until `done`:
/// the agent asks with the cluster token, whose user is not the node the approver approves
/// serving certificates for.
pub fn approve_serving_requests(kubeconfig: &Path, done: impl Fn() -> bool) {
    let kubectl = |args: &[&str]| {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "no serving certificate within 30 s"
        );
        let listed = kubectl(&["get", "csr", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        for csr in list["items"].as_array().into_iter().flatten() {
            if csr["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                && csr["status"]["conditions"].is_null()
            {
                let name = csr["metadata"]["name"].as_str().unwrap();
                kubectl(&["certificate", "approve", name]);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A Node whose agent listens on `127.0.0.1:port`.
pub fn node(name: &str, port: u16) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        "status": {
            "addresses": [{ "type": "InternalIP", "address": "127.0.0.1" }, { "type": "Hostname", "address": name }],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": port } },
            "capacity": { "cpu": "2", "memory": "4Gi", "pods": "110" },
            "allocatable": { "cpu": "2", "memory": "4Gi", "pods": "110" },
        },
    })
    .to_string()
}

/// A pod bound to `node` (or, with `None`, one no node can take: it stays unscheduled).
pub fn pod(name: &str, node: Option<&str>, containers: &[&str]) -> String {
    let containers: Vec<_> = containers
        .iter()
        .map(|c| serde_json::json!({ "name": c, "image": "busybox" }))
        .collect();
    let mut pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": containers },
    });
    match node {
        Some(node) => pod["spec"]["nodeName"] = node.into(),
        None => pod["spec"]["nodeSelector"] = serde_json::json!({ "apiary.test/nowhere": "true" }),
    }
    pod.to_string()
}
