//! The agent's side of the cluster DNS process ([`super::standalone`]): finds the node's running
//! process and keeps it if it is of this build and serves with this configuration, else
//! replaces it; starts one detached when there is none; then feeds it the records and takes its
//! answer counts, connecting again (and starting a new process if need be) when the connection
//! drops. [`stop`] ends it, for `apiary-node-agent reset`.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use apiary_runtime::state::ProcessId;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::{
    feed::{self, Hello, ToAgent, ToDns},
    server::SharedRecords,
    standalone::{CGROUP, DnsArgs, Layout},
};

/// How long a started process may take to answer on its feed socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a running process may take to greet.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a killed process may take to be gone.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause before connecting again after the connection dropped.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// Errors of finding, starting and stopping the DNS process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process could not be spawned. Not retryable as such (a missing executable).
    #[error("starting the cluster DNS process: {0}")]
    Spawn(#[source] io::Error),
    /// The process exited before it answered (its log says why: a port in use…).
    #[error("the cluster DNS process exited ({status}): {log}")]
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
    /// The process did not answer on its socket in time; it was killed.
    #[error("the cluster DNS process did not answer within {}s: {log}", START_TIMEOUT.as_secs())]
    Unresponsive { log: String },
    /// Connecting, or the greeting, failed: no process is listening, or it is not well.
    #[error("connecting to the cluster DNS process: {0}")]
    Connect(#[source] feed::Error),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Starts and finds the node's DNS process.
#[derive(Clone, Debug)]
pub struct Supervisor {
    /// What the process must run with (and what it is started with).
    args: DnsArgs,
    /// The executable started as `<exe> dns …`.
    exe: PathBuf,
    /// Its [`feed::build_id`]: a running process of another build is replaced.
    build: String,
    layout: Layout,
}

/// A connection to a DNS process that greeted.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    pub hello: Hello,
}

impl Supervisor {
    /// A supervisor that starts this very executable (`/proc/self/exe`, which is this build even
    /// if the file was replaced since) as the DNS process.
    pub fn new(args: DnsArgs) -> Self {
        Self::with_executable(args, PathBuf::from("/proc/self/exe"))
    }

    /// A supervisor that starts `exe` (an `apiary-node-agent`).
    pub fn with_executable(args: DnsArgs, exe: PathBuf) -> Self {
        let layout = Layout::new(&args.run_dir);
        let build = feed::build_id_of(&exe);
        Self {
            args,
            exe,
            build,
            layout,
        }
    }

    /// A connection to a DNS process of this build serving with this configuration: the
    /// running one if it is such, else a new one (the running one is stopped first).
    pub async fn connect_or_start(&self) -> Result<Connection> {
        match self.connect().await {
            Ok(connection) => {
                let hello = &connection.hello;
                if hello.build == self.build && hello.config == self.args.config {
                    info!(
                        pid = hello.process.pid,
                        "keeping the running cluster DNS process"
                    );
                    return Ok(connection);
                }
                info!(
                    pid = hello.process.pid,
                    build = %hello.build,
                    "replacing the cluster DNS process: another build, or another configuration"
                );
            }
            Err(e) => debug!(error = %e, "no cluster DNS process answers"),
        }
        // Whatever is left (a process that does not answer, another build's) goes first: it
        // holds the DNS port.
        let problems = stop(&self.layout, self.args.cgroup_parent.as_deref()).await;
        if !problems.is_empty() {
            warn!(?problems, "stopping the previous cluster DNS process");
        }
        self.start().await
    }

    /// Connects to the running process and reads its greeting.
    pub async fn connect(&self) -> Result<Connection> {
        let mut stream = UnixStream::connect(self.layout.socket())
            .await
            .map_err(|e| Error::Connect(e.into()))?;
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, feed::receive(&mut stream)).await {
            Ok(Ok(Some(hello))) => hello,
            Ok(Ok(None)) => {
                let closed = io::Error::new(io::ErrorKind::UnexpectedEof, "closed before greeting");
                return Err(Error::Connect(closed.into()));
            }
            Ok(Err(e)) => return Err(Error::Connect(e)),
            Err(_) => {
                let silent = io::Error::new(io::ErrorKind::TimedOut, "no greeting");
                return Err(Error::Connect(silent.into()));
            }
        };
        Ok(Connection { stream, hello })
    }

    /// Starts the process detached: in a session of its own, so that it outlives the agent (a
    /// SIGKILL of the agent's process group does not reach it) like the pods' shims; then waits
    /// until it answers.
    async fn start(&self) -> Result<Connection> {
        std::fs::create_dir_all(&self.layout.dir).map_err(Error::Spawn)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.layout.log())
            .map_err(Error::Spawn)?;
        let mut command = std::process::Command::new(&self.exe);
        command
            .arg("dns")
            .args(self.args.to_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(Error::Spawn)?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // tokio reaps it if it exits while this agent lives; once the agent is gone, init does.
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .map_err(Error::Spawn)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Exited {
                    status,
                    log: tail(&self.layout.log()),
                });
            }
            if let Ok(connection) = self.connect().await
                && Some(connection.hello.process.pid) == child.id().map(|p| p as i32)
            {
                info!(
                    pid = connection.hello.process.pid,
                    "started the cluster DNS process"
                );
                return Ok(connection);
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(Error::Unresponsive {
                    log: tail(&self.layout.log()),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Feeds the DNS process for ever, starting on `connection`: a snapshot of `records` once
    /// `synced` is done (before, the process keeps what it has: a restarted agent's records are
    /// incomplete until its first listing) and then whenever they change; and its answer counts
    /// into the agent's metrics. A dropped connection is made again, with a new process if the
    /// old one is gone.
    pub async fn feed(
        self,
        connection: Connection,
        records: SharedRecords,
        synced: impl Future<Output = ()>,
    ) {
        synced.await;
        let mut counts = CountsSeen::default();
        let mut next = Some(connection);
        loop {
            let connection = match next.take() {
                Some(connection) => connection,
                None => match self.connect_or_start().await {
                    Ok(connection) => connection,
                    Err(e) => {
                        warn!(error = %e, "the cluster DNS process; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let error = stream(connection, &records, &mut counts).await;
            warn!(error = %error, "the feed to the cluster DNS process broke; connecting again");
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }
}

/// Sends snapshots and takes counts on one connection until it breaks.
async fn stream(
    connection: Connection,
    records: &SharedRecords,
    counts: &mut CountsSeen,
) -> feed::Error {
    counts.switch_to(connection.hello.process);
    let (mut reader, mut writer) = connection.stream.into_split();
    let send = async {
        let mut sent = None;
        let mut tick = tokio::time::interval(feed::SNAPSHOT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let frame = {
                let records = records
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if sent == Some(records.serial()) {
                    continue;
                }
                sent = Some(records.serial());
                feed::encode(&ToDns::Records(&*records))
            };
            if let Err(e) = feed::write_frame(&mut writer, &frame).await {
                return e;
            }
        }
    };
    let take = async {
        loop {
            match feed::receive::<ToAgent>(&mut reader).await {
                Ok(Some(ToAgent::Answered(totals))) => counts.add(totals),
                Ok(None) => {
                    let closed = io::Error::new(io::ErrorKind::UnexpectedEof, "closed");
                    return feed::Error::from(closed);
                }
                Err(e) => return e,
            }
        }
    };
    tokio::select! {
        e = send => e,
        e = take => e,
    }
}

/// The answer counts a DNS process reported last, to add only what is new to the agent's
/// counters: they stay monotonic across agent restarts and process replacements.
#[derive(Debug, Default)]
struct CountsSeen {
    process: Option<ProcessId>,
    last: BTreeMap<String, u64>,
}

impl CountsSeen {
    /// Counts from now on come from `process`; a new process counts from zero.
    fn switch_to(&mut self, process: ProcessId) {
        if self.process != Some(process) {
            self.process = Some(process);
            self.last.clear();
        }
    }

    fn add(&mut self, totals: BTreeMap<String, u64>) {
        for (rcode, total) in &totals {
            let new = total.saturating_sub(self.last.get(rcode).copied().unwrap_or(0));
            if new > 0 {
                crate::metrics::AgentMetrics::global().dns_answered(rcode, new);
            }
        }
        self.last = totals;
    }
}

/// Stops the node's DNS process: the one its pid file names (if that pid is still that
/// process) and whatever runs in its cgroup, then removes its cgroup and its files. Returns
/// what could not be done.
pub async fn stop(layout: &Layout, cgroup_parent: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut processes: Vec<ProcessId> = std::fs::read(layout.pid_file())
        .ok()
        .and_then(|json| serde_json::from_slice::<ProcessId>(&json).ok())
        .filter(ProcessId::alive)
        .into_iter()
        .collect();
    let cgroup = cgroup_parent.map(|p| apiary_runtime::cgroups::relative_path(p, CGROUP));
    if let Some(cgroup) = &cgroup {
        for dir in apiary_runtime::cgroups::existing_dirs(cgroup) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            processes.extend(
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .filter_map(ProcessId::of),
            );
        }
    }
    processes.sort_by_key(|p| (p.pid, p.start_time));
    processes.dedup();
    for process in &processes {
        if let Err(e) = nix::sys::signal::kill(Pid::from_raw(process.pid), Signal::SIGKILL)
            && e != nix::errno::Errno::ESRCH
        {
            problems.push(format!("killing pid {}: {e}", process.pid));
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while processes.iter().any(ProcessId::alive) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(alive) = processes.iter().find(|p| p.alive()) {
        problems.push(format!(
            "pid {} still runs {}s after SIGKILL",
            alive.pid,
            STOP_TIMEOUT.as_secs()
        ));
    }
    if let Some(cgroup) = &cgroup
        && let Err(e) = apiary_runtime::cgroups::remove(cgroup)
    {
        problems.push(format!("removing cgroup {cgroup}: {e}"));
    }
    for file in [layout.socket(), layout.pid_file()] {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                problems.push(format!("removing {}: {e}", file.display()));
            }
            _ => {}
        }
    }
    problems
}

/// The end of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(1000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text[start..].trim().to_owned()
}

#[cfg(test)]
mod tests;
