//! `kubectl logs` and `kubectl exec` through the API server to a node agent's server: the agent
//! runs in this process with a backend of local files and processes, registered as a Node on
//! 127.0.0.1, and the real kubectl drives it.

use crate::local_pods;
use crate::support;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use local_pods::{Agent, node, pod};
use support::{ControlPlane, certs::stranger_ca};

fn start() -> ControlPlane {
    // No heartbeats come from the test's node: keep the lifecycle controller from evicting.
    ControlPlane::start_with(&["--node-monitor-grace-seconds", "3600"])
}

fn token(cp: &ControlPlane) -> String {
    cp.token()
}

fn register(cp: &ControlPlane, name: &str, port: u16) {
    cp.register_node(&node(name, port));
}

fn create_pod(cp: &ControlPlane, name: &str, node: Option<&str>, containers: &[&str]) {
    cp.kubectl_stdin(&["create", "-f", "-"], &pod(name, node, containers))
        .success();
}

/// Exit code, stdout and stderr of a kubectl run.
fn kubectl_full(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(stdin) = stdin {
        input.write_all(stdin.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kubectl_logs_tail_follow_and_containers() {
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    create_pod(&cp, "web", Some("n1"), &["app"]);
    create_pod(&cp, "duo", Some("n1"), &["a", "b"]);
    agent.pods.add_pod("default", "web", &["app"]);
    agent.pods.add_pod("default", "duo", &["a", "b"]);
    agent
        .pods
        .append("default", "web", "app", "one\ntwo\nthree\n");
    agent.pods.append("default", "duo", "b", "from b\n");

    let discovery = cp.kubectl(&["get", "--raw", "/api/v1"]).success();
    assert!(
        discovery.contains(r#""name":"pods/log""#) && discovery.contains(r#""name":"pods/exec""#),
        "{discovery}"
    );
    assert_eq!(cp.kubectl(&["logs", "web"]).success(), "one\ntwo\nthree\n");
    assert_eq!(
        cp.kubectl(&["logs", "web", "--tail", "2"]).success(),
        "two\nthree\n"
    );
    assert_eq!(
        cp.kubectl(&["logs", "web", "--limit-bytes", "6"]).success(),
        "one\ntw"
    );
    let stamped = cp.kubectl(&["logs", "web", "--timestamps"]).success();
    assert!(
        stamped.lines().all(|l| l.contains("Z ")) && stamped.ends_with(" three\n"),
        "{stamped}"
    );

    let mut follow = cp.kubectl_spawn(&["logs", "-f", "web"]);
    follow.read_until(|s| s.ends_with("three\n"), 20);
    agent.pods.append("default", "web", "app", "four\n");
    let seen = follow.read_until(|s| s.ends_with("four\n"), 20);
    assert_eq!(seen, "one\ntwo\nthree\nfour\n");

    assert_eq!(
        cp.kubectl(&["logs", "duo", "-c", "b"]).success(),
        "from b\n"
    );
    let missing = cp.kubectl(&["logs", "duo", "-c", "c"]).failure();
    assert!(
        missing.contains("container c is not valid for pod duo"),
        "{missing}"
    );
    // kubectl picks a default container itself; the API server's rule shows without it.
    let unnamed = cp
        .kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/duo/log"])
        .failure();
    assert!(
        unnamed.contains("a container name must be specified for pod duo, choose one of: [a b]"),
        "{unnamed}"
    );
    let no_pod = cp.kubectl(&["logs", "nosuchpod"]).failure();
    assert!(no_pod.contains(r#"pods "nosuchpod" not found"#), "{no_pod}");

    create_pod(&cp, "lost", None, &["app"]);
    let unscheduled = cp.kubectl(&["logs", "lost"]).failure();
    assert!(
        unscheduled.contains("pod lost does not have a host assigned"),
        "{unscheduled}"
    );
}

#[test]
fn kubectl_exec_streams_stdin_and_exit_codes() {
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    create_pod(&cp, "web", Some("n1"), &["app"]);
    create_pod(&cp, "duo", Some("n1"), &["a", "b"]);
    agent.pods.add_pod("default", "web", &["app"]);
    agent.pods.add_pod("default", "duo", &["a", "b"]);

    let (code, stdout, stderr) = kubectl_full(
        &cp,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(code, 3, "stdout: {stdout} stderr: {stderr}");
    assert_eq!(stdout, "out\n");
    assert!(stderr.starts_with("err\n"), "{stderr}");
    assert!(
        stderr.contains("command terminated with exit code 3"),
        "{stderr}"
    );

    let (code, stdout, stderr) = kubectl_full(&cp, &["exec", "web", "--", "true"], None);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");

    let input = "hello\nworld\n".repeat(1000);
    let (code, stdout, stderr) =
        kubectl_full(&cp, &["exec", "-i", "web", "--", "cat"], Some(&input));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, input);

    let (code, stdout, stderr) = kubectl_full(
        &cp,
        &["exec", "duo", "-c", "b", "--", "sh", "-c", "echo in b"],
        None,
    );
    assert_eq!((code, stdout.as_str()), (0, "in b\n"), "{stderr}");
    let missing = cp
        .kubectl(&["exec", "duo", "-c", "c", "--", "true"])
        .failure();
    assert!(
        missing.contains("container c is not valid for pod duo"),
        "{missing}"
    );
    // A pod the agent does not run: its refusal reaches kubectl on the error channel.
    create_pod(&cp, "ghost", Some("n1"), &["app"]);
    let ghost = cp.kubectl(&["exec", "ghost", "--", "true"]).failure();
    assert!(ghost.contains(r#"pods "ghost" not found"#), "{ghost}");
    create_pod(&cp, "lost", None, &["app"]);
    let unscheduled = cp.kubectl(&["exec", "lost", "--", "true"]).failure();
    assert!(
        unscheduled.contains("pod lost does not have a host assigned"),
        "{unscheduled}"
    );

    // kubectl 1.32 speaks remotecommand v5 over WebSocket (not its SPDY fallback).
    let (code, _, verbose) = kubectl_full(&cp, &["exec", "-v=8", "web", "--", "true"], None);
    assert_eq!(code, 0, "{verbose}");
    assert!(
        verbose.contains("The subprotocol is v5.channel.k8s.io") && !verbose.contains("SPDY"),
        "{verbose}"
    );

    // Measured: the round trip of a trivial exec through kubectl, API server and agent.
    let runs = 5;
    let started = Instant::now();
    for _ in 0..runs {
        let (code, _, stderr) = kubectl_full(&cp, &["exec", "web", "--", "true"], None);
        assert_eq!(code, 0, "{stderr}");
    }
    eprintln!(
        "kubectl exec web -- true: {:?} per run (mean of {runs})",
        started.elapsed() / runs
    );
}

#[test]
fn unreachable_and_refusing_agents_are_errors() {
    let cp = start();
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    register(&cp, "gone", free);
    create_pod(&cp, "orphan", Some("gone"), &["app"]);
    let unreachable = cp.kubectl(&["logs", "orphan"]).failure();
    assert!(
        unreachable.contains(&format!("dial tcp 127.0.0.1:{free}"))
            && unreachable.contains("refused"),
        "{unreachable}"
    );
    let (code, _, stderr) = kubectl_full(&cp, &["exec", "orphan", "--", "true"], None);
    assert_ne!(code, 0);
    assert!(stderr.contains("refused"), "{stderr}");

    // An agent that trusts another CA refuses the API server's client certificate: the
    // handshake fails, and so does the request.
    let (other_ca, _) = stranger_ca();
    let stranger =
        Agent::start_trusting("stranger", &cp.kubeconfig(), &token(&cp), Some(&other_ca));
    stranger.pods.add_pod("default", "web", &["app"]);
    register(&cp, "stranger", stranger.addr.port());
    create_pod(&cp, "web", Some("stranger"), &["app"]);
    let refused = cp.kubectl(&["logs", "web"]).failure();
    assert!(refused.contains("(InternalError)"), "{refused}");
    let (code, _, stderr) = kubectl_full(&cp, &["exec", "web", "--", "true"], None);
    assert_ne!(code, 0, "{stderr}");
}

#[test]
fn kubectl_logs_and_exec_throughput() {
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    create_pod(&cp, "big", Some("n1"), &["app"]);
    agent.pods.add_pod("default", "big", &["app"]);
    let line = format!("{}\n", "x".repeat(99));
    let lines = 200_000;
    agent
        .pods
        .append("default", "big", "app", &line.repeat(lines));
    let started = Instant::now();
    let out = cp.kubectl(&["logs", "big"]).success();
    let elapsed = started.elapsed();
    assert_eq!(out.len(), line.len() * lines);
    eprintln!(
        "kubectl logs of {} MB: {elapsed:?} ({:.0} MB/s)",
        out.len() / 1_000_000,
        out.len() as f64 / 1e6 / elapsed.as_secs_f64()
    );
    assert!(elapsed < Duration::from_secs(30));

    // Exec: 20 MB out of the command, then 20 MB into it.
    let size = 20_000_000;
    let started = Instant::now();
    let (code, out, stderr) = kubectl_full(
        &cp,
        &[
            "exec",
            "big",
            "--",
            "head",
            "-c",
            &size.to_string(),
            "/dev/zero",
        ],
        None,
    );
    let elapsed = started.elapsed();
    assert_eq!((code, out.len()), (0, size), "{stderr}");
    eprintln!(
        "kubectl exec stdout of 20 MB: {elapsed:?} ({:.0} MB/s)",
        size as f64 / 1e6 / elapsed.as_secs_f64()
    );
    let input = "y".repeat(size);
    let started = Instant::now();
    let (code, out, stderr) =
        kubectl_full(&cp, &["exec", "-i", "big", "--", "wc", "-c"], Some(&input));
    let elapsed = started.elapsed();
    assert_eq!(
        (code, out.trim()),
        (0, size.to_string().as_str()),
        "{stderr}"
    );
    eprintln!(
        "kubectl exec -i stdin of 20 MB: {elapsed:?} ({:.0} MB/s)",
        size as f64 / 1e6 / elapsed.as_secs_f64()
    );
}

/// A WebSocket to the API server's `path`, offering `protocol`, trusting the cluster CA.
async fn websocket(
    cp: &ControlPlane,
    path: &str,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let config: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let addr = server.strip_prefix("https://").unwrap().to_owned();
    let ca = std::fs::read(cp.data_path().join("pki/ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut request = format!("wss://{addr}{path}").into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", token(cp)).parse().unwrap(),
    );
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
    socket
}

/// Collects `[channel, data…]` frames until the server closes: (stdout, error channel).
async fn drain(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    >,
) -> (String, String) {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let (mut stdout, mut status) = (Vec::new(), Vec::new());
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Binary(data) if data.first() == Some(&1) => {
                stdout.extend_from_slice(&data[1..]);
            }
            Message::Binary(data) if data.first() == Some(&3) => {
                status.extend_from_slice(&data[1..]);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&status).into_owned(),
    )
}

#[test]
fn websocket_exec_v4_on_a_terminal_resizes_base64_frames_and_a_gone_client_kills_the_command() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    create_pod(&cp, "web", Some("n1"), &["app"]);
    agent.pods.add_pod("default", "web", &["app"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // v4, on a pseudo-terminal: the size set through the resize channel is what stty sees.
        let path = "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=read%20x%3B%20stty%20size&stdin=true&stdout=true&tty=true";
        let mut socket = websocket(&cp, path, "v4.channel.k8s.io").await;
        let mut resize = vec![4u8];
        resize.extend_from_slice(br#"{"Width":123,"Height":45}"#);
        socket.send(Message::Binary(resize.into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        socket
            .send(Message::Binary(b"\x00go\n".to_vec().into()))
            .await
            .unwrap();
        let (stdout, status) = drain(&mut socket).await;
        assert!(stdout.contains("45 123\r\n"), "{stdout:?}");
        assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);

        // v4.base64: text messages, the channel as a digit.
        let path = "/api/v1/namespaces/default/pods/web/exec?command=echo&command=hi&stdout=true";
        let mut socket = websocket(&cp, path, "v4.base64.channel.k8s.io").await;
        let mut texts = Vec::new();
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) => texts.push(text.to_string()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert_eq!(texts[0], "1aGkK", "stdout: \"hi\\n\"");
        assert!(texts[1].starts_with('3'), "{texts:?}");

        // v5: the client going away ends the command.
        let path = "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=echo%20%24%24%3B%20exec%20sleep%20600&stdout=true&stderr=true";
        let mut socket = websocket(&cp, path, "v5.channel.k8s.io").await;
        let pid = loop {
            match socket.next().await.unwrap().unwrap() {
                Message::Binary(data) if data.first() == Some(&1) => {
                    break String::from_utf8_lossy(&data[1..]).trim().to_owned();
                }
                _ => {}
            }
        };
        drop(socket);
        let stat = format!("/proc/{pid}/stat");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive = std::fs::read_to_string(&stat)
                .is_ok_and(|s| !s.contains(") Z ") && s.contains("sleep"));
            if !alive {
                break;
            }
            assert!(Instant::now() < deadline, "sleep ({pid}) outlived its client");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn kubectl_exec_it_runs_on_a_remote_terminal_of_the_local_size() {
    use std::io::Read as _;
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    create_pod(&cp, "web", Some("n1"), &["app"]);
    agent.pods.add_pod("default", "web", &["app"]);
    let size = nix::pty::Winsize {
        ws_row: 41,
        ws_col: 99,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let on_pty = || Stdio::from(pty.slave.try_clone().unwrap());
    // The command starts before kubectl's first resize can arrive: wait for it.
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do s=$(stty size); [ \"$s\" != '0 0' ] && break; sleep 0.2; done; echo \"size $s\"; test -t 0 && echo on-a-tty; exit 5";
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["exec", "-it", "web", "--", "sh", "-c", script])
        .stdin(on_pty())
        .stdout(on_pty())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once kubectl, the last holder of the terminal, has exited.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let status = child.wait().unwrap();
    let seen = reader.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(5), "{seen:?} {stderr}");
    assert!(seen.contains("size 41 99"), "{seen:?}");
    assert!(seen.contains("on-a-tty"), "{seen:?}");
}

/// A pod of the local agent, reported running (kubectl port-forward checks the phase first).
fn running_pod(cp: &ControlPlane, agent: &Agent, name: &str) {
    create_pod(cp, name, Some("n1"), &["app"]);
    agent.pods.add_pod("default", name, &["app"]);
    cp.kubectl(&[
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ])
    .success();
}

/// A loopback port nothing listens on (the kernel's pick, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The "pod's" HTTP server: a listener on this machine's loopback that answers every request
/// with `body`, a thread per connection.
fn http_server(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else {
                return;
            };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut connection, &mut byte) {
                        Ok(1) => request.push(byte[0]),
                        _ => return,
                    }
                }
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = connection.write_all(answer.as_bytes());
            });
        }
    });
    port
}

/// A `GET /` on `port` of this machine, and the whole answer.
fn http_get(stream: &mut std::net::TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(stream, &mut answer).unwrap();
    answer
}

/// How kubectl carries SPDY to the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    /// Tunnelled in a WebSocket (`SPDY/3.1+portforward.k8s.io`): kubectl 1.32's default.
    WebSocket,
    /// After an `Upgrade: SPDY/3.1`: kubectl's fallback, forced by
    /// `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`.
    SpdyUpgrade,
}

/// `kubectl port-forward` in the background, until dropped; its stderr goes to a file.
struct PortForward {
    child: std::process::Child,
    stderr: tempfile::NamedTempFile,
}

impl PortForward {
    /// Starts it and waits until it listens on `local`.
    fn start(cp: &ControlPlane, pod: &str, local: u16, remote: u16, carrier: Carrier) -> Self {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args(["port-forward", "-v=4", pod, &format!("{local}:{remote}")])
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                (carrier == Carrier::WebSocket).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", local)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "kubectl port-forward exited ({status}): {}",
                    std::fs::read_to_string(stderr.path()).unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "kubectl never listened on {local}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap()
    }

    /// Waits up to `seconds` for its stderr to hold `text`.
    fn wait_stderr(&self, text: &str, seconds: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let stderr = self.stderr();
            if stderr.contains(text) {
                return stderr;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} from kubectl port-forward; stderr: {stderr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kubectl_port_forward_splices_connections_to_the_pods_port() {
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    running_pod(&cp, &agent, "web");
    let discovery = cp.kubectl(&["get", "--raw", "/api/v1"]).success();
    assert!(
        discovery.contains(r#"{"kind":"PodPortForwardOptions","name":"pods/portforward","namespaced":true,"singularName":"","verbs":["create","get"]}"#),
        "{discovery}"
    );

    let pod_port = http_server("hello from web\n");
    for carrier in [Carrier::WebSocket, Carrier::SpdyUpgrade] {
        let local = free_port();
        let forward = PortForward::start(&cp, "pod/web", local, pod_port, carrier);
        let mut connection = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        let answer = http_get(&mut connection);
        assert!(
            answer.starts_with("HTTP/1.0 200 OK\r\n")
                && answer.ends_with("\r\n\r\nhello from web\n"),
            "{carrier:?}: {answer:?}; kubectl: {}",
            forward.stderr()
        );

        // Two connections at once: the first waits, open, while the second is served.
        let mut first = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        let mut second = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        assert!(http_get(&mut second).ends_with("hello from web\n"));
        assert!(http_get(&mut first).ends_with("hello from web\n"));
        let stderr = forward.stderr();
        assert!(!stderr.contains("error"), "{carrier:?}: kubectl: {stderr}");
        // kubectl says (at -v=4) when it tunnels through a WebSocket.
        assert_eq!(
            stderr.contains("Before WebSocket Upgrade Connection"),
            carrier == Carrier::WebSocket,
            "{carrier:?}: kubectl: {stderr}"
        );
    }
}

#[test]
fn kubectl_port_forward_reports_a_refused_port_as_the_kubelet_does() {
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    running_pod(&cp, &agent, "web");

    let closed = free_port();
    let local = free_port();
    let forward = PortForward::start(&cp, "pod/web", local, closed, Carrier::WebSocket);
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    connection
        .write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    // kubectl closes the local connection when the stream fails: cleanly, or with a reset when
    // our request still sat unread in its socket (a race between its reader and the error).
    match std::io::Read::read_to_string(&mut connection, &mut answer) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("reading from the forwarded port: {error}"),
    }
    assert_eq!(answer, "", "nothing comes back from a refused port");
    forward.wait_stderr(
        // klog quotes the message: its quotes come escaped.
        &format!(
            r#"an error occurred forwarding {local} -> {closed}: error forwarding port {closed} to pod default_web, uid : failed to connect to localhost:{closed} inside namespace \"default_web\", IPv4: dial tcp4 127.0.0.1:{closed}: connect: connection refused IPv6 dial tcp6 [::1]:{closed}: connect: "#
        ),
        20,
    );
    // kubectl 1.32 itself ends the whole session after an error on any connection (the agent's
    // session would go on: see the agent's port-forward tests).
    forward.wait_stderr("error: lost connection to pod", 20);
}

#[test]
fn port_forward_and_attach_need_create_on_their_subresources() {
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    running_pod(&cp, &agent, "web");
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
         metadata: {name: viewer}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{kind: User, name: viewer}]\n",
    )
    .success();
    // `view` may read the pod, as kubectl does first, but not forward its ports.
    let (code, _, stderr) = kubectl_full(
        &cp,
        &[
            "port-forward",
            "pod/web",
            &format!("{}:{}", free_port(), free_port()),
            "--as",
            "viewer",
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains(r#"pods "web" is forbidden: User "viewer" cannot create resource "pods/portforward" in API group "" in the namespace "default""#),
        "{stderr}"
    );

    let (code, _, stderr) = kubectl_full(&cp, &["attach", "web", "--as", "viewer"], None);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(r#"pods "web" is forbidden: User "viewer" cannot create resource "pods/attach" in API group "" in the namespace "default""#),
        "{stderr}"
    );

    let ghost_port = free_port();
    create_pod(&cp, "ghost", Some("n1"), &["app"]);
    cp.kubectl(&[
        "patch",
        "pod",
        "ghost",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ])
    .success();
    let (code, _, stderr) = kubectl_full(
        &cp,
        &["port-forward", "pod/ghost", &format!("{ghost_port}:80")],
        None,
    );
    assert_ne!(code, 0);
    assert!(stderr.contains(r#"pods "ghost" not found"#), "{stderr}");
}

#[test]
fn kubectl_attach_shows_output_from_now_on_and_forwards_stdin() {
    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    running_pod(&cp, &agent, "web");
    let discovery = cp.kubectl(&["get", "--raw", "/api/v1"]).success();
    assert!(
        discovery.contains(r#"{"kind":"PodAttachOptions","name":"pods/attach","namespaced":true,"singularName":"","verbs":["create","get"]}"#),
        "{discovery}"
    );
    agent
        .pods
        .append("default", "web", "app", "before attaching\n");

    // The container keeps writing; the attached client sees what comes after it attached.
    let mut attached = cp.kubectl_spawn(&["attach", "web"]);
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (writing, pods) = (writing.clone(), agent.pods.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while writing.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                pods.append("default", "web", "app", "tick\n");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let seen = attached.read_until(|s| s.contains("tick\ntick\n"), 30);
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(!seen.contains("before attaching"), "{seen}");
    drop(attached);

    // With -i, stdin goes to the container (here `cat`: it comes back), whose end it is.
    let (code, stdout, stderr) =
        kubectl_full(&cp, &["attach", "-i", "web"], Some("hello\nworld\n"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "hello\nworld\n", "{stderr}");

    let (code, _, stderr) = kubectl_full(&cp, &["attach", "web", "-c", "nope"], None);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("container nope not found in pod web"),
        "{stderr}"
    );
}

#[test]
fn websocket_port_forward_channels_start_with_the_port() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let cp = start();
    let agent = Agent::start("n1", &cp.kubeconfig(), &token(&cp));
    register(&cp, "n1", agent.addr.port());
    running_pod(&cp, &agent, "web");
    let pod_port = http_server("hello over channels\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut socket = websocket(
            &cp,
            &format!("/api/v1/namespaces/default/pods/web/portforward?ports={pod_port}"),
            "v4.channel.k8s.io",
        )
        .await;
        let [low, high] = pod_port.to_le_bytes();
        for channel in [0, 1] {
            let first = socket.next().await.unwrap().unwrap();
            assert_eq!(first, Message::Binary(vec![channel, low, high].into()));
        }
        socket
            .send(Message::Binary(
                [&[0u8][..], b"GET / HTTP/1.0\r\n\r\n"].concat().into(),
            ))
            .await
            .unwrap();
        // The pod's answer on the data channel, until the pod closes and so does the socket.
        let mut answer = Vec::new();
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Binary(frame) => {
                    assert_eq!(frame[0], 0, "only the data channel speaks");
                    answer.extend_from_slice(&frame[1..]);
                }
                Message::Close(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        let answer = String::from_utf8(answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.0 200 OK") && answer.ends_with("hello over channels\n"),
            "{answer:?}"
        );
    });
}
