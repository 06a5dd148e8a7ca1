//! `apiary up`, `apiary down`, `apiary status` and `apiary node join`: a cluster on this machine
//! (the control plane with its embedded store and a node agent, as background processes), and
//! more nodes.
//!
//! What `up` started is written to `<data-dir>/cluster.json`, so `down` stops exactly that and
//! then has the node agent remove everything the node made (`apiary-node-agent reset`), and
//! `status` shows it.
//!
//! `up` and `join` return once the agent is healthy (its `/healthz` on localhost, as the
//! kubelet's: the data plane attached and the first sync done) and its node Ready; when a
//! process they started exits first, they fail with the last error line of its log.

use std::{
    fs,
    io::Write,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{client, kubeconfig};

const DEFAULT_DATA_DIR: &str = "/var/lib/apiary";
/// Where the agent `up` and `join` start serves its health (the kubelet's healthz port).
const AGENT_HEALTHZ: &str = "127.0.0.1:10248";

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the store, the PKI, the kubeconfig, images and pod data live.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The API server's address.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: String,
    /// This node's name [default: the hostname].
    #[arg(long)]
    node_name: Option<String>,
    /// This node's address [default: the address of the default route].
    #[arg(long)]
    node_ip: Option<String>,
    /// How long to wait for the node to become Ready, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// A highly available control plane: three etcd members (Debian's `etcd-server`, with peer
    /// and client TLS, on loopback ports 23790-23792) and three control planes on them, on the
    /// `--listen` port and the next two, sharing the cluster CA; the agent knows all three.
    #[arg(long)]
    ha: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// The data directory given to `apiary up`.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Also delete the data directory (store, PKI, images, logs).
    #[arg(long)]
    purge: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The data directory given to `apiary up` or `apiary node join`.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Start a node agent on this machine that joins an existing cluster.
    Join(JoinArgs),
}

#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The control plane, e.g. `https://10.0.0.1:6443`.
    #[arg(long)]
    server: String,
    /// A file holding a bootstrap token (`apiary token create`), or `-` for stdin: never the
    /// command line, where other users of the machine could read it.
    #[arg(long)]
    token_file: PathBuf,
    /// The cluster CA's public key hash, `sha256:<hex>` (`apiary token create` prints it): the
    /// CA is read from the server's `kube-public/cluster-info` and must match it.
    #[arg(long)]
    ca_cert_hash: String,
    /// Where this node keeps its data.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long)]
    node_ip: Option<String>,
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// What `up` or `join` started, for `down` and `status`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Started {
    control_plane_pid: Option<u32>,
    /// `up --ha`: the other control planes and the etcd members.
    more_control_plane_pids: Vec<u32>,
    etcd_pids: Vec<u32>,
    agent_pid: Option<u32>,
    /// The agent's health endpoint (`host:port`).
    agent_healthz: Option<String>,
    /// The node's name, once known (`--node-name`, or once it was Ready).
    node_name: Option<String>,
    kubeconfig: PathBuf,
    agent_data_dir: PathBuf,
    run_dir: PathBuf,
    pin_dir: PathBuf,
    cgroup_parent: String,
}

/// The other binaries ship next to `apiary`.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the apiary executable")?;
    let path = exe
        .parent()
        .context("the apiary executable has no directory")?
        .join(name);
    if !path.exists() {
        bail!("{} not found next to apiary ({})", name, path.display());
    }
    Ok(path)
}

/// Where the node keeps runtime state, pins its BPF maps, and puts its containers' cgroups.
fn node_dirs(data_dir: &Path) -> (PathBuf, PathBuf, String) {
    // The default layout uses the usual system places; any other data dir gets its own, so
    // that several clusters (tests) on one machine never share state.
    if data_dir == Path::new(DEFAULT_DATA_DIR) {
        (
            PathBuf::from("/run/apiary"),
            PathBuf::from("/sys/fs/bpf/apiary"),
            "apiary".to_owned(),
        )
    } else {
        let tag: String = data_dir
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let tag = tag.trim_matches('_');
        (
            data_dir.join("run"),
            PathBuf::from(format!("/sys/fs/bpf/apiary-{tag}")),
            format!("apiary-{tag}"),
        )
    }
}

fn spawn_logged(program: &Path, args: &[String], log: &Path) -> anyhow::Result<u32> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: a Ctrl-C at this terminal does not reach it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(child.id())
}

fn progress(message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(message.to_owned());
    bar
}

/// A process `up` or `join` started, watched while they wait: if it exits, waiting is over.
#[derive(Debug, Clone)]
struct Watched {
    what: &'static str,
    pid: u32,
    log: PathBuf,
}

impl Watched {
    /// An error if the process exited: its last error line, else where its log is.
    fn check(&self) -> anyhow::Result<()> {
        if alive(self.pid) {
            return Ok(());
        }
        match last_error_line(&self.log) {
            Some(line) => bail!(
                "the {} exited: {} (log: {})",
                self.what,
                line.strip_prefix("error: ").unwrap_or(&line),
                self.log.display()
            ),
            None => bail!(
                "the {} exited; see its log {}",
                self.what,
                self.log.display()
            ),
        }
    }
}

/// Polls `check` until it gives a value, `timeout` passes (an error pointing at `log`), or one
/// of `watched` exits (an error with its last error line).
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    log: &Path,
    watched: &[Watched],
    mut check: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let bar = progress(what);
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            bar.finish_with_message(format!(
                "{what}: done in {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(value);
        }
        if let Some(exited) = watched.iter().find_map(|w| w.check().err()) {
            bar.abandon_with_message(format!("{what}: failed"));
            return Err(exited);
        }
        if started.elapsed() > timeout {
            bar.abandon_with_message(format!("{what}: timed out"));
            bail!(
                "{what} did not happen within {}s; see {}",
                timeout.as_secs(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn agent_args(
    kubeconfig: &Path,
    data_dir: &Path,
    node_name: Option<&str>,
    node_ip: Option<&str>,
) -> (Vec<String>, Started) {
    let (run_dir, pin_dir, cgroup_parent) = node_dirs(data_dir);
    let agent_data_dir = data_dir.join("agent");
    let mut args = vec![
        "run".to_owned(),
        "--kubeconfig".to_owned(),
        kubeconfig.display().to_string(),
        "--data-dir".to_owned(),
        agent_data_dir.display().to_string(),
        "--run-dir".to_owned(),
        run_dir.display().to_string(),
        "--pin-dir".to_owned(),
        pin_dir.display().to_string(),
        "--image-root".to_owned(),
        data_dir.join("images").display().to_string(),
        "--cgroup-parent".to_owned(),
        cgroup_parent.clone(),
        "--healthz-port".to_owned(),
        AGENT_HEALTHZ
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned(),
    ];
    if let Some(name) = node_name {
        args.extend(["--node-name".to_owned(), name.to_owned()]);
    }
    if let Some(ip) = node_ip {
        args.extend(["--node-ip".to_owned(), ip.to_owned()]);
    }
    let started = Started {
        kubeconfig: kubeconfig.to_owned(),
        agent_data_dir,
        run_dir,
        pin_dir,
        cgroup_parent,
        agent_healthz: Some(AGENT_HEALTHZ.to_owned()),
        node_name: node_name.map(str::to_owned),
        ..Default::default()
    };
    (args, started)
}

/// Waits until the API answers with the kubeconfig's credentials, the agent is healthy, and
/// `node` (or any node) is Ready; fails as soon as one of `watched` exits.
async fn wait_ready(
    kubeconfig: &Path,
    node: Option<&str>,
    timeout: Duration,
    log: &Path,
    watched: &[Watched],
) -> anyhow::Result<String> {
    let client = wait_for(
        "waiting for the API server",
        timeout,
        log,
        watched,
        async || {
            let conn = kubeconfig::load(kubeconfig, None).ok()?;
            let client = client::Client::new(&conn).ok()?;
            client.get("/version", &[]).await.ok()?;
            Some(client)
        },
    )
    .await?;
    let mut said = String::new();
    wait_for(
        "waiting for the node agent to be healthy",
        timeout,
        log,
        watched,
        async || match healthz(AGENT_HEALTHZ).await {
            Ok((true, _)) => Some(()),
            Ok((false, body)) => {
                said = body;
                None
            }
            Err(e) => {
                said = e.to_string();
                None
            }
        },
    )
    .await
    .map_err(|e| {
        // Timed out (nothing exited): what the agent still waits for.
        if said.is_empty() || watched.iter().any(|w| w.check().is_err()) {
            e
        } else {
            anyhow::anyhow!("{e}; its /healthz says: {}", one_line(&said))
        }
    })?;
    wait_for(
        "waiting for the node to be Ready",
        timeout,
        log,
        watched,
        async || {
            let nodes = client.get("/api/v1/nodes", &[]).await.ok()?;
            nodes["items"].as_array()?.iter().find_map(|n: &Value| {
                let name = n["metadata"]["name"].as_str()?;
                if node.is_some_and(|want| want != name) {
                    return None;
                }
                let ready = n["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                ready.then(|| name.to_owned())
            })
        },
    )
    .await
}

/// `GET /healthz` of a node agent at `addr`: whether it said ok, and what it said.
async fn healthz(addr: &str) -> std::io::Result<(bool, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 2s"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let ok = head
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200");
    Ok((ok, body.trim().to_owned()))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The last line of the log at `path` that reports an error: a fatal one (`error: …`, how our
/// binaries end), a logged `ERROR`, or a panic; without colour codes.
fn last_error_line(path: &Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    // The tail is enough: the error that ended a process is near the end of its log.
    const TAIL: u64 = 256 * 1024;
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    error_line_in(&String::from_utf8_lossy(&bytes))
}

fn error_line_in(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let line = strip_ansi(line);
        let line = line.trim();
        let is_error = line.starts_with("error:")
            || line.split_whitespace().nth(1) == Some("ERROR")
            || line.contains("panicked at");
        is_error.then(|| line.to_owned())
    })
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub async fn up(args: &UpArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    let state_path = data_dir.join("cluster.json");
    if let Some(started) = read_started(&state_path)
        && [started.control_plane_pid, started.agent_pid]
            .iter()
            .flatten()
            .chain(&started.more_control_plane_pids)
            .chain(&started.etcd_pids)
            .any(|pid| alive(*pid))
    {
        bail!(
            "a cluster from {} is already running; stop it with `apiary down --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        );
    }
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let logs = data_dir.join("logs");
    let cp_log = logs.join("control-plane.log");
    let agent_log = logs.join("node-agent.log");
    let mut started = Started::default();
    let mut cp_flags = vec![
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
        "--listen".to_owned(),
        args.listen.clone(),
    ];
    let mut members = Vec::new();
    if args.ha {
        restrict_data_dir(data_dir)?;
        let pki = crate::ha::etcd_pki(data_dir).context("making the etcd certificates")?;
        for i in 0..crate::ha::SIZE {
            let log = logs.join(format!("etcd-{i}.log"));
            let pid = spawn_logged(
                Path::new("etcd"),
                &crate::ha::etcd_args(data_dir, &pki, i),
                &log,
            )
            .context("etcd (Debian's etcd-server) must be installed for --ha")?;
            started.etcd_pids.push(pid);
            members.push(Watched {
                what: "etcd member",
                pid,
                log,
            });
        }
        write_started(&state_path, &started)?;
        let etcd_log = logs.join("etcd-0.log");
        let etcd = crate::ha::etcd_client(&pki).context("the etcd client certificate")?;
        wait_for(
            "starting etcd (3 members)",
            Duration::from_secs(args.timeout),
            &etcd_log,
            &members,
            async || crate::ha::etcd_healthy(&etcd).await.then_some(()),
        )
        .await
        .map_err(|e| stop_hint(e, data_dir))?;
        cp_flags.extend(crate::ha::control_plane_etcd_flags(&pki));
        cp_flags.extend(["--identity".to_owned(), "control-plane-0".to_owned()]);
    }
    let cp_pid = spawn_logged(&sibling("apiary-control-plane")?, &cp_flags, &cp_log)?;
    let kubeconfig = data_dir.join("kubeconfig");
    started.control_plane_pid = Some(cp_pid);
    write_started(&state_path, &started)?;
    let control_plane = Watched {
        what: "control plane",
        pid: cp_pid,
        log: cp_log.clone(),
    };
    wait_for(
        "starting the control plane",
        Duration::from_secs(args.timeout),
        &cp_log,
        std::slice::from_ref(&control_plane),
        async || kubeconfig.exists().then_some(()),
    )
    .await?;
    // The local agent is a node like any other: it gets its own client certificate through a
    // short-lived bootstrap token, as on a node that joined (never the admin's credentials).
    let node_kubeconfig = data_dir.join("node.kubeconfig");
    let bootstrap_kubeconfig = data_dir.join("bootstrap.kubeconfig");
    let mut servers = Vec::new();
    {
        let ca = fs::read(data_dir.join("pki").join("ca.crt"))
            .with_context(|| format!("reading {}", data_dir.join("pki/ca.crt").display()))?;
        let admin = kubeconfig::load(&kubeconfig, None)?;
        let client = wait_for(
            "waiting for the API server",
            Duration::from_secs(args.timeout),
            &cp_log,
            std::slice::from_ref(&control_plane),
            async || {
                let client = client::Client::new(&admin).ok()?;
                client.get("/version", &[]).await.ok()?;
                Some(client)
            },
        )
        .await?;
        let token =
            crate::token::create_token(&client, Duration::from_secs(3600), "apiary up: local node")
                .await?;
        write_node_kubeconfig(&bootstrap_kubeconfig, &admin.server, &ca, &token)?;
        if args.ha {
            servers = start_more_control_planes(args, &cp_flags, &admin.server, &mut started)
                .await
                .map_err(|e| stop_hint(e, data_dir))?;
        }
    }
    let (mut agent, mut node) = agent_args(
        &node_kubeconfig,
        data_dir,
        args.node_name.as_deref(),
        args.node_ip.as_deref(),
    );
    agent.extend([
        "--bootstrap-kubeconfig".to_owned(),
        bootstrap_kubeconfig.display().to_string(),
    ]);
    for server in servers {
        agent.extend(["--server".to_owned(), server]);
    }
    node.control_plane_pid = Some(cp_pid);
    node.more_control_plane_pids = std::mem::take(&mut started.more_control_plane_pids);
    node.etcd_pids = std::mem::take(&mut started.etcd_pids);
    let agent_pid = spawn_logged(&sibling("apiary-node-agent")?, &agent, &agent_log)?;
    node.agent_pid = Some(agent_pid);
    started = node;
    write_started(&state_path, &started)?;
    let agent = Watched {
        what: "node agent",
        pid: agent_pid,
        log: agent_log.clone(),
    };
    let name = wait_ready(
        &kubeconfig,
        args.node_name.as_deref(),
        Duration::from_secs(args.timeout),
        &agent_log,
        &[agent, control_plane],
    )
    .await
    .map_err(|e| stop_hint(e, data_dir))?;
    started.node_name = Some(name.clone());
    write_started(&state_path, &started)?;
    writeln!(out, "\nApiary is up: node {name} is Ready.")?;
    writeln!(out, "  kubeconfig: {}", kubeconfig.display())?;
    writeln!(out, "  logs:       {}", logs.display())?;
    writeln!(out, "\nNext steps:")?;
    writeln!(out, "  export KUBECONFIG={}", kubeconfig.display())?;
    writeln!(
        out,
        "  apiary image import target/images/busybox.tar --root {}",
        data_dir.join("images").display()
    )?;
    writeln!(out, "  apiary apply -f examples/demo.yaml")?;
    writeln!(out, "  kubectl get pods -o wide")?;
    writeln!(out, "  apiary status{}", data_dir_flag(data_dir))?;
    writeln!(out, "  apiary down{}", data_dir_flag(data_dir))?;
    Ok(())
}

/// `up --ha`: control planes 1 and 2, on the first one's flags with their own data dir, port
/// and identity; waits until each answers, and returns their servers for the agent.
async fn start_more_control_planes(
    args: &UpArgs,
    first_flags: &[String],
    first_server: &str,
    started: &mut Started,
) -> anyhow::Result<Vec<String>> {
    let data_dir = &args.data_dir;
    let mut servers = Vec::new();
    for i in 1..crate::ha::SIZE {
        let dir = crate::ha::control_plane_dir(data_dir, i);
        let mut flags = first_flags.to_vec();
        flags.extend([
            "--shared-pki-from".to_owned(),
            data_dir.display().to_string(),
        ]);
        let mut set = |flag: &str, value: String| {
            if let Some(at) = flags.iter().position(|f| f == flag) {
                flags[at + 1] = value;
            }
        };
        set("--data-dir", dir.display().to_string());
        set("--listen", crate::ha::listen_of(&args.listen, i)?);
        set("--identity", format!("control-plane-{i}"));
        let log = data_dir.join("logs").join(format!("control-plane-{i}.log"));
        let pid = spawn_logged(&sibling("apiary-control-plane")?, &flags, &log)?;
        started.more_control_plane_pids.push(pid);
        write_started(&data_dir.join("cluster.json"), started)?;
        let kubeconfig = dir.join("kubeconfig");
        let watched = Watched {
            what: "control plane",
            pid,
            log: log.clone(),
        };
        wait_for(
            &format!("starting control plane {i}"),
            Duration::from_secs(args.timeout),
            &log,
            std::slice::from_ref(&watched),
            async || kubeconfig.exists().then_some(()),
        )
        .await?;
        servers.push(crate::ha::server_of(first_server, &args.listen, i)?);
    }
    Ok(servers)
}

pub async fn join(args: &JoinArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let pin = crate::bootstrap::parse_pin(&args.ca_cert_hash)?;
    let token = crate::bootstrap::read_token(&args.token_file)?;
    // Fails closed, before the token is sent anywhere, unless the CA matches the pin.
    let ca = crate::bootstrap::discover(&args.server, &token, &pin).await?;
    restrict_data_dir(data_dir)?;
    let bootstrap_kubeconfig = data_dir.join("bootstrap.kubeconfig");
    write_node_kubeconfig(&bootstrap_kubeconfig, &args.server, &ca, &token)?;
    // The agent writes this one once its client certificate is issued.
    let kubeconfig = data_dir.join("node.kubeconfig");
    let agent_log = data_dir.join("logs").join("node-agent.log");
    let (mut agent, mut started) = agent_args(
        &kubeconfig,
        data_dir,
        args.node_name.as_deref(),
        args.node_ip.as_deref(),
    );
    agent.extend([
        "--bootstrap-kubeconfig".to_owned(),
        bootstrap_kubeconfig.display().to_string(),
    ]);
    let agent_pid = spawn_logged(&sibling("apiary-node-agent")?, &agent, &agent_log)?;
    started.agent_pid = Some(agent_pid);
    let state_path = data_dir.join("cluster.json");
    write_started(&state_path, &started)?;
    let agent = Watched {
        what: "node agent",
        pid: agent_pid,
        log: agent_log.clone(),
    };
    let name = wait_ready(
        &kubeconfig,
        args.node_name.as_deref(),
        Duration::from_secs(args.timeout),
        &agent_log,
        &[agent],
    )
    .await
    .map_err(|e| stop_hint(e, data_dir))?;
    started.node_name = Some(name.clone());
    write_started(&state_path, &started)?;
    writeln!(out, "node {name} joined {} and is Ready", args.server)?;
    Ok(())
}

/// `error`, saying how to stop what was started (`down` also cleans up after the agent).
fn stop_hint(error: anyhow::Error, data_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{error:#}; stop the rest with `apiary down{}`",
        data_dir_flag(data_dir)
    )
}

/// ` --data-dir DIR`, unless `data_dir` is the default.
fn data_dir_flag(data_dir: &Path) -> String {
    if data_dir == Path::new(DEFAULT_DATA_DIR) {
        String::new()
    } else {
        format!(" --data-dir {}", data_dir.display())
    }
}

pub async fn down(args: &DownArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let state_path = args.data_dir.join("cluster.json");
    let started = read_started(&state_path).with_context(|| {
        format!(
            "no cluster started from {} (no {})",
            args.data_dir.display(),
            state_path.display()
        )
    })?;
    // The agent first, so that it does not watch the control plane go away; etcd last.
    let processes = [
        ("node agent", started.agent_pid),
        ("control plane", started.control_plane_pid),
    ]
    .into_iter()
    .chain(
        started
            .more_control_plane_pids
            .iter()
            .map(|pid| ("control plane", Some(*pid))),
    )
    .chain(
        started
            .etcd_pids
            .iter()
            .map(|pid| ("etcd member", Some(*pid))),
    );
    for (what, pid) in processes {
        if let Some(pid) = pid {
            stop(pid).await;
            writeln!(out, "stopped the {what} (pid {pid})")?;
        }
    }
    let status = Command::new(sibling("apiary-node-agent")?)
        .args(["reset", "--data-dir"])
        .arg(&started.agent_data_dir)
        .arg("--run-dir")
        .arg(&started.run_dir)
        .arg("--pin-dir")
        .arg(&started.pin_dir)
        .arg("--cgroup-parent")
        .arg(&started.cgroup_parent)
        .status()
        .context("running apiary-node-agent reset")?;
    if !status.success() {
        bail!("apiary-node-agent reset failed ({status}); pods or network leftovers may remain");
    }
    fs::remove_file(&state_path).ok();
    if args.purge {
        fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("removing {}", args.data_dir.display()))?;
        writeln!(out, "removed {}", args.data_dir.display())?;
    }
    writeln!(out, "Apiary is down.")?;
    Ok(())
}

/// `apiary status`: the processes `up` or `join` started (alive or not, their versions, their
/// logs' last error lines), the agent's health and the node's Ready condition. Fails (exit 1)
/// unless both run and the node is Ready.
pub async fn status(args: &StatusArgs, out: &mut impl Write) -> anyhow::Result<crate::Outcome> {
    let state_path = args.data_dir.join("cluster.json");
    let started = read_started(&state_path).with_context(|| {
        format!(
            "no cluster started from {} (no {})",
            args.data_dir.display(),
            state_path.display()
        )
    })?;
    let logs = args.data_dir.join("logs");
    let mut healthy = true;
    let mut table = crate::table::Table {
        headers: ["PROCESS", "PID", "STATE", "VERSION", "HEALTH"]
            .map(str::to_owned)
            .to_vec(),
        rows: Vec::new(),
    };
    let mut errors = Vec::new();
    let more_control_planes = started
        .more_control_plane_pids
        .iter()
        .enumerate()
        .map(|(i, pid)| {
            let log = logs.join(format!("control-plane-{}.log", i + 1));
            ("control plane", Some(*pid), log, None)
        });
    let members = started.etcd_pids.iter().enumerate().map(|(i, pid)| {
        let log = logs.join(format!("etcd-{i}.log"));
        ("etcd member", Some(*pid), log, None)
    });
    let processes = [
        (
            "control plane",
            started.control_plane_pid,
            logs.join("control-plane.log"),
            None,
        ),
        (
            "node agent",
            started.agent_pid,
            logs.join("node-agent.log"),
            started.agent_healthz.as_deref(),
        ),
    ]
    .into_iter()
    .chain(more_control_planes)
    .chain(members);
    for (what, pid, log, health_addr) in processes {
        let Some(pid) = pid else { continue };
        let running = alive(pid);
        healthy &= running;
        let health = match (running, health_addr) {
            (false, _) | (_, None) => "-".to_owned(),
            (true, Some(addr)) => match healthz(addr).await {
                Ok((true, _)) => "ok".to_owned(),
                Ok((false, body)) => {
                    healthy = false;
                    let failing: Vec<&str> = body
                        .lines()
                        .filter_map(|l| l.strip_prefix("[-]"))
                        .filter_map(|l| l.split_whitespace().next())
                        .collect();
                    format!("waiting: {}", failing.join(","))
                }
                Err(e) => {
                    healthy = false;
                    format!("no answer: {e}")
                }
            },
        };
        table.rows.push(vec![
            what.to_owned(),
            pid.to_string(),
            if running { "running" } else { "exited" }.to_owned(),
            if running {
                version_of(pid).unwrap_or_else(|| "unknown".to_owned())
            } else {
                "-".to_owned()
            },
            health,
        ]);
        let line = last_error_line(&log).map_or_else(
            || "none".to_owned(),
            |l| l.strip_prefix("error: ").unwrap_or(&l).to_owned(),
        );
        errors.push((what, line, log));
    }
    table.write(out, false)?;
    writeln!(out)?;
    healthy &= write_nodes(&started, out).await?;
    writeln!(out)?;
    for (what, line, log) in errors {
        writeln!(out, "{what} log {}", log.display())?;
        writeln!(out, "  last error: {line}")?;
    }
    Ok(if healthy {
        crate::Outcome::Success
    } else {
        crate::Outcome::SomeFailed
    })
}

/// Prints the Ready condition of the node `started` runs (of every node, when its name is not
/// known yet); whether it is Ready.
async fn write_nodes(started: &Started, out: &mut impl Write) -> anyhow::Result<bool> {
    let conn = match kubeconfig::load(&started.kubeconfig, None) {
        Ok(conn) => conn,
        Err(e) => {
            writeln!(out, "nodes: {}", one_line(&format!("{e:#}")))?;
            return Ok(false);
        }
    };
    let client = client::Client::new(&conn)?;
    let nodes = match &started.node_name {
        Some(name) => client
            .get(&format!("/api/v1/nodes/{name}"), &[])
            .await
            .map(|node| vec![node]),
        None => client
            .get("/api/v1/nodes", &[])
            .await
            .map(|list| list["items"].as_array().cloned().unwrap_or_default()),
    };
    let nodes = match nodes {
        Ok(nodes) => nodes,
        Err(e) => {
            writeln!(out, "nodes: the API server did not answer: {e}")?;
            return Ok(false);
        }
    };
    let mut table = crate::table::Table {
        headers: ["NODE", "READY", "REASON", "MESSAGE"]
            .map(str::to_owned)
            .to_vec(),
        rows: Vec::new(),
    };
    let mut ready = !nodes.is_empty();
    for node in &nodes {
        let condition = node["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
        let field = |key: &str| {
            condition
                .and_then(|c| c[key].as_str())
                .unwrap_or("-")
                .to_owned()
        };
        ready &= field("status") == "True";
        table.rows.push(vec![
            node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            field("status"),
            field("reason"),
            field("message"),
        ]);
    }
    if nodes.is_empty() {
        writeln!(out, "nodes: none registered")?;
    } else {
        table.write(out, false)?;
    }
    Ok(ready)
}

/// The version of the running process `pid`: its executable's `--version` (`/proc/PID/exe`
/// is the file it runs, even if replaced since).
fn version_of(pid: u32) -> Option<String> {
    let output = Command::new(format!("/proc/{pid}/exe"))
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success().then(|| version_in(&text)).flatten()
}

/// The version a `--version` prints: ours end with it (`apiary-node-agent 0.1.0`); etcd's
/// names it on its first line (`etcd Version: 3.4.23`).
fn version_in(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    match first.split_once("Version:") {
        Some((_, version)) => version.split_whitespace().next().map(str::to_owned),
        None => first.split_whitespace().last().map(str::to_owned),
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
}

/// SIGTERM, then SIGKILL after 15 s.
async fn stop(pid: u32) {
    let Ok(pid_i) = i32::try_from(pid) else {
        return;
    };
    let signal = |sig| {
        // SAFETY: kill(2) with a pid we started and a valid signal number has no memory effects.
        unsafe { libc::kill(pid_i, sig) }
    };
    if !alive(pid) {
        return;
    }
    signal(15);
    let started = Instant::now();
    while alive(pid) && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if alive(pid) {
        signal(9);
    }
}

fn read_started(path: &Path) -> Option<Started> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn write_started(path: &Path, started: &Started) -> anyhow::Result<()> {
    fs::write(path, serde_json::to_vec_pretty(started)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The data directory holds keys and kubeconfigs: its owner's only.
fn restrict_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", data_dir.display()))
}

/// Writes a kubeconfig with a bearer token (the bootstrap kubeconfig a joining agent starts
/// from), readable by its owner only.
fn write_node_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &[u8],
    token: &str,
) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "apiary", "cluster": {
            "server": server,
            "certificate-authority-data": base64_encode(ca_pem),
        }}],
        "users": [{ "name": "node", "user": { "token": token } }],
        "contexts": [{ "name": "node", "context": { "cluster": "apiary", "user": "node" } }],
        "current-context": "node",
    });
    let text = serde_yaml::to_string(&config)?;
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_ours_and_of_etcd() {
        assert_eq!(
            version_in("apiary-node-agent 0.1.0\n").as_deref(),
            Some("0.1.0")
        );
        assert_eq!(
            version_in("etcd Version: 3.4.23\nGit SHA: Not provided\nGo OS/Arch: linux/amd64\n")
                .as_deref(),
            Some("3.4.23")
        );
    }

    #[test]
    fn the_last_error_line_is_the_fatal_one_without_colours() {
        let log = "2025-01-01T00:00:00Z  INFO apiary_node_agent::agent::run: registered\n\
                   2025-01-01T00:00:01Z \u{1b}[31mERROR\u{1b}[0m apiary_node_agent: the DNS server stopped\n\
                   error: no cgroup v2 hierarchy is mounted: Services need one\n";
        assert_eq!(
            error_line_in(log).as_deref(),
            Some("error: no cgroup v2 hierarchy is mounted: Services need one")
        );
        let logged = "2025-01-01T00:00:01Z \u{1b}[31mERROR\u{1b}[0m x: the DNS server stopped\n\
                      2025-01-01T00:00:02Z  INFO x: still going\n";
        assert_eq!(
            error_line_in(logged).as_deref(),
            Some("2025-01-01T00:00:01Z ERROR x: the DNS server stopped")
        );
        assert_eq!(error_line_in("2025-01-01T00:00:00Z  INFO x: fine\n"), None);
    }
}
