//! `apiary-node-agent dns`: the node's cluster DNS server as a process of its own, so that pods
//! keep resolving names while the agent is down (restarted, upgraded, crashed), as Kubernetes
//! pods do with CoreDNS, which does not depend on the kubelet.
//!
//! The agent starts it detached ([`super::supervisor`]), in its own session and in the node's
//! cgroup parent, and feeds it records over a unix socket in the agent's run dir
//! ([`super::feed`]). Without an agent it goes on answering from the last records it got; when
//! an agent connects again, it takes that agent's.

use std::{
    io,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
};

use apiary_runtime::state::ProcessId;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::{
    feed::{self, Hello, ToAgent, ToDns},
    records::{ClusterRecords, DEFAULT_DOMAIN},
    server::{AnswerCounts, Clients, DnsServer, SharedRecords},
};

/// The cgroup (below the node's cgroup parent) the DNS process runs in. The underscore keeps it
/// apart from containers' cgroups, whose ids are `[a-z0-9-]`.
pub const CGROUP: &str = "cluster_dns";

/// Errors of the DNS process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The DNS listeners could not be bound or failed.
    #[error(transparent)]
    Server(#[from] super::server::Error),
    /// The feed socket or the pid file could not be set up, or accepting failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    |source| Error::Io { what, source }
}

/// What the DNS process serves with. The agent compares it with the running process's (from
/// its [`Hello`]) and replaces a process that serves with something else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
pub struct DnsConfig {
    /// Address to answer on, UDP and TCP (repeatable).
    #[arg(long = "listen", required = true)]
    pub listen: Vec<SocketAddr>,
    /// Server that questions outside the cluster are forwarded to, in order (repeatable).
    #[arg(long = "upstream")]
    pub upstreams: Vec<SocketAddr>,
    /// Network whose clients are answered; others get REFUSED (repeatable).
    #[arg(long = "client")]
    pub clients: Vec<ipnet::IpNet>,
    /// The cluster domain, answered for (empty) until the agent sends the records.
    #[arg(long, default_value = DEFAULT_DOMAIN)]
    pub cluster_domain: String,
}

impl DnsConfig {
    /// The command-line arguments that give this configuration.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for listen in &self.listen {
            args.extend(["--listen".to_owned(), listen.to_string()]);
        }
        for upstream in &self.upstreams {
            args.extend(["--upstream".to_owned(), upstream.to_string()]);
        }
        for client in &self.clients {
            args.extend(["--client".to_owned(), client.to_string()]);
        }
        args.extend(["--cluster-domain".to_owned(), self.cluster_domain.clone()]);
        args
    }
}

/// `apiary-node-agent dns`.
#[derive(Clone, Debug, clap::Args)]
pub struct DnsArgs {
    /// The agent's run dir: the feed socket and the pid file are in `<run-dir>/dns`.
    #[arg(long, default_value = "/run/apiary/agent")]
    pub run_dir: PathBuf,
    /// The node's cgroup parent: the process moves into `<parent>/cluster_dns`, where the node's
    /// teardown (`apiary-node-agent reset`) finds it.
    #[arg(long)]
    pub cgroup_parent: Option<String>,
    #[command(flatten)]
    pub config: DnsConfig,
}

impl DnsArgs {
    /// The command-line arguments (after `dns`) that give these.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--run-dir".to_owned(), self.run_dir.display().to_string()];
        if let Some(parent) = &self.cgroup_parent {
            args.extend(["--cgroup-parent".to_owned(), parent.clone()]);
        }
        args.extend(self.config.to_args());
        args
    }
}

/// The DNS process's files in the agent's run dir.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(run_dir: &Path) -> Self {
        Self {
            dir: run_dir.join("dns"),
        }
    }

    /// The feed socket the process listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("feed.sock")
    }

    /// The running process's [`ProcessId`] (JSON): with its start time, a pid that was reused
    /// by another process is not taken for it.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("dns.pid.json")
    }

    /// The process's log (its stdout and stderr).
    pub fn log(&self) -> PathBuf {
        self.dir.join("dns.log")
    }
}

/// What has to happen before the async runtime starts its threads: descriptors leaked by
/// whoever started the agent (cargo's jobserver, sockets) are closed, as they must not live as
/// long as this process; and the process joins its cgroup while it is one thread, so that
/// `cgroup.procs` moves all of it.
pub fn prepare(args: &DnsArgs) {
    // close_range(2): Linux 5.9.
    // SAFETY: close_range takes plain integers; nothing in this process owns fds above 2 yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    if let Some(parent) = &args.cgroup_parent {
        for problem in join_cgroup(&apiary_runtime::cgroups::relative_path(parent, CGROUP)) {
            eprintln!("apiary-node-agent dns: {problem}");
        }
    }
}

/// Moves this process into cgroup `relative` of every hierarchy; returns what failed. v1's
/// cpuset takes no process until the cgroup has CPUs and memory nodes, copied from its parent
/// as libcontainer does for containers.
fn join_cgroup(relative: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let pid = std::process::id().to_string();
    for hierarchy in apiary_runtime::cgroups::hierarchies() {
        let dir = hierarchy.join(relative);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            problems.push(format!("creating {}: {e}", dir.display()));
            continue;
        }
        if hierarchy.join("cpuset.cpus").exists() {
            let mut level = hierarchy.clone();
            for part in Path::new(relative).components() {
                let parent = level.clone();
                level.push(part);
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let own = std::fs::read_to_string(level.join(file)).unwrap_or_default();
                    if own.trim().is_empty()
                        && let Ok(inherited) = std::fs::read_to_string(parent.join(file))
                    {
                        let _ = std::fs::write(level.join(file), inherited.trim());
                    }
                }
            }
        }
        if let Err(e) = std::fs::write(dir.join("cgroup.procs"), &pid) {
            problems.push(format!("joining {}: {e}", dir.display()));
        }
    }
    problems
}

/// Runs the DNS process: binds the DNS listeners, then the feed socket, and serves both until a
/// listener fails.
pub async fn run(args: DnsArgs) -> Result<()> {
    let config = args.config.clone();
    let records: SharedRecords = Arc::new(RwLock::new(ClusterRecords::new(&config.cluster_domain)));
    let server = DnsServer::bind(
        Arc::clone(&records),
        &config.listen,
        config.upstreams.clone(),
        Clients::new(config.clients.clone()),
    )
    .await?;
    let layout = Layout::new(&args.run_dir);
    std::fs::create_dir_all(&layout.dir)
        .map_err(io_error(format!("creating {}", layout.dir.display())))?;
    let process = ProcessId::current().ok_or_else(|| Error::Io {
        what: "reading our own /proc entry".to_owned(),
        source: io::Error::last_os_error(),
    })?;
    let hello = Hello {
        build: feed::build_id(),
        process,
        config,
    };
    let listener = bind_feed(&layout.socket())?;
    let pid_json = serde_json::to_vec(&process).expect("a ProcessId serializes");
    std::fs::write(layout.pid_file(), pid_json)
        .map_err(io_error(format!("writing {}", layout.pid_file().display())))?;
    info!(listen = ?server.local_addrs(), socket = %layout.socket().display(), pid = process.pid, "serving cluster DNS");
    let answered = server.answered();
    tokio::select! {
        served = server.run() => Ok(served?),
        fed = serve_feeds(listener, records, answered, hello) => fed,
    }
}

/// Binds the feed socket, replacing the file a dead process left; only root may connect.
pub fn bind_feed(path: &Path) -> Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_error(format!("removing {}", path.display()))(e));
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(path).map_err(io_error(format!("binding {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error(format!("restricting {}", path.display())))?;
    Ok(listener)
}

/// Takes feeds from agents on `listener` for ever: each connection may replace `records`. One
/// agent runs per node, but a new one may connect before the old connection is seen closed:
/// both are served, and the last snapshot received wins.
pub async fn serve_feeds(
    listener: UnixListener,
    records: SharedRecords,
    answered: AnswerCounts,
    hello: Hello,
) -> Result<()> {
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(io_error("accepting a feed connection"))?;
        info!("an agent connected");
        tokio::spawn({
            let records = Arc::clone(&records);
            let answered = answered.clone();
            let hello = hello.clone();
            async move {
                match take_feed(stream, &records, &answered, &hello).await {
                    Ok(()) => info!("the agent disconnected; serving the last records it sent"),
                    Err(e) => {
                        warn!(error = %e, "the agent's feed broke; serving the last records it sent")
                    }
                }
            }
        });
    }
}

/// One agent's connection: greets it, then takes its snapshots and reports the answer counts
/// until it closes.
async fn take_feed(
    stream: UnixStream,
    records: &SharedRecords,
    answered: &AnswerCounts,
    hello: &Hello,
) -> feed::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    feed::send(&mut writer, hello).await?;
    tokio::select! {
        reported = report_counts(&mut writer, answered) => reported,
        taken = take_records(&mut reader, records) => taken,
    }
}

/// Sends the answer counts every [`feed::REPORT_INTERVAL`] when they changed, until that fails.
async fn report_counts(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    answered: &AnswerCounts,
) -> feed::Result<()> {
    let mut last = None;
    let mut tick = tokio::time::interval(feed::REPORT_INTERVAL);
    loop {
        tick.tick().await;
        let totals = answered.totals();
        if last.as_ref() != Some(&totals) {
            feed::send(writer, &ToAgent::Answered(totals.clone())).await?;
            last = Some(totals);
        }
    }
}

/// Replaces the records with each snapshot received, until the agent closes the connection.
async fn take_records(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    records: &SharedRecords,
) -> feed::Result<()> {
    while let Some(message) = feed::receive::<ToDns>(reader).await? {
        match message {
            ToDns::Records(new) => {
                let serial = new.serial();
                *records.write().unwrap_or_else(PoisonError::into_inner) = new;
                tracing::debug!(serial, "took the agent's records");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
