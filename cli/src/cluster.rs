//! `apiary up`, `apiary down` and `apiary node join`: a cluster on this machine (the control
//! plane with its embedded store and a node agent, as background processes), and more nodes.
//!
//! What `up` started is written to `<data-dir>/cluster.json`, so `down` stops exactly that and
//! then has the node agent remove everything the node made (`apiary-node-agent reset`).

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
    /// The cluster's token (`<data-dir>/pki/admin.token` on the control plane).
    #[arg(long)]
    token: String,
    /// The cluster CA certificate (`<data-dir>/pki/ca.crt` on the control plane).
    #[arg(long)]
    ca_cert: PathBuf,
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

/// What `up` or `join` started, for `down`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Started {
    control_plane_pid: Option<u32>,
    agent_pid: Option<u32>,
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

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    log: &Path,
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
        ..Default::default()
    };
    (args, started)
}

/// Waits until the API answers with the kubeconfig's credentials, then until `node` (or any
/// node) is Ready.
async fn wait_ready(
    kubeconfig: &Path,
    node: Option<&str>,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<String> {
    let client = wait_for("waiting for the API server", timeout, log, async || {
        let conn = kubeconfig::load(kubeconfig, None).ok()?;
        let client = client::Client::new(&conn).ok()?;
        client.get("/version", &[]).await.ok()?;
        Some(client)
    })
    .await?;
    wait_for(
        "waiting for the node to be Ready",
        timeout,
        log,
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

pub async fn up(args: &UpArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    let state_path = data_dir.join("cluster.json");
    if let Some(started) = read_started(&state_path)
        && [started.control_plane_pid, started.agent_pid]
            .iter()
            .flatten()
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
    let cp_pid = spawn_logged(
        &sibling("apiary-control-plane")?,
        &[
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            args.listen.clone(),
        ],
        &cp_log,
    )?;
    let kubeconfig = data_dir.join("kubeconfig");
    let mut started = Started {
        control_plane_pid: Some(cp_pid),
        ..Default::default()
    };
    write_started(&state_path, &started)?;
    wait_for(
        "starting the control plane",
        Duration::from_secs(args.timeout),
        &cp_log,
        async || kubeconfig.exists().then_some(()),
    )
    .await?;
    // The admin kubeconfig holds the admin's client certificate; the agent runs with the
    // cluster token, as on a node that joined.
    let node_kubeconfig = data_dir.join("node.kubeconfig");
    {
        let pki = data_dir.join("pki");
        let token = fs::read_to_string(pki.join("admin.token"))
            .with_context(|| format!("reading {}", pki.join("admin.token").display()))?;
        let ca = fs::read(pki.join("ca.crt"))
            .with_context(|| format!("reading {}", pki.join("ca.crt").display()))?;
        let server = kubeconfig::load(&kubeconfig, None)?.server;
        write_node_kubeconfig(&node_kubeconfig, &server, &ca, token.trim())?;
    }
    let (agent, mut node) = agent_args(
        &node_kubeconfig,
        data_dir,
        args.node_name.as_deref(),
        args.node_ip.as_deref(),
    );
    node.control_plane_pid = Some(cp_pid);
    node.agent_pid = Some(spawn_logged(
        &sibling("apiary-node-agent")?,
        &agent,
        &agent_log,
    )?);
    started = node;
    write_started(&state_path, &started)?;
    let name = wait_ready(
        &kubeconfig,
        args.node_name.as_deref(),
        Duration::from_secs(args.timeout),
        &agent_log,
    )
    .await?;
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
    writeln!(
        out,
        "  apiary down{}",
        if data_dir == Path::new(DEFAULT_DATA_DIR) {
            String::new()
        } else {
            format!(" --data-dir {}", data_dir.display())
        }
    )?;
    Ok(())
}

pub async fn join(args: &JoinArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let ca = fs::read(&args.ca_cert)
        .with_context(|| format!("reading --ca-cert {}", args.ca_cert.display()))?;
    let kubeconfig = data_dir.join("node.kubeconfig");
    write_node_kubeconfig(&kubeconfig, &args.server, &ca, &args.token)?;
    let agent_log = data_dir.join("logs").join("node-agent.log");
    let (agent, mut started) = agent_args(
        &kubeconfig,
        data_dir,
        args.node_name.as_deref(),
        args.node_ip.as_deref(),
    );
    started.agent_pid = Some(spawn_logged(
        &sibling("apiary-node-agent")?,
        &agent,
        &agent_log,
    )?);
    write_started(&data_dir.join("cluster.json"), &started)?;
    let name = wait_ready(
        &kubeconfig,
        args.node_name.as_deref(),
        Duration::from_secs(args.timeout),
        &agent_log,
    )
    .await?;
    writeln!(out, "node {name} joined {} and is Ready", args.server)?;
    Ok(())
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
    // The agent first, so that it does not watch the control plane go away.
    for (what, pid) in [
        ("node agent", started.agent_pid),
        ("control plane", started.control_plane_pid),
    ] {
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

/// Writes the kubeconfig a node agent runs with: the cluster token (agents authenticate with it
/// on the API and accept it from the API server), readable by its owner only.
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
