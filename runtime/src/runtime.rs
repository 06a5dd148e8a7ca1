//! [`Runtime`]: the node agent's handle on its containers. Every call reads the state dir, so a
//! new `Runtime` after an agent restart sees (re-adopts) the containers the old one started.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use crate::cgroups;
use crate::error::{Error, Result};
use crate::shim::Report;
use crate::spec::{ContainerSpec, validate_id};
use crate::state::{
    ContainerState, ContainerStatus, ExitInfo, Layout, ShimRecord, StartedRecord, read_json,
    write_json,
};

/// How long the shim may take to report that the container started (or why it did not).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after SIGKILL the exit must be recorded.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often waiting calls look at the state files.
const POLL: Duration = Duration::from_millis(10);

/// Where the runtime keeps its state and how it runs shims.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// One directory per container, e.g. `/run/apiary/containers`.
    pub state_dir: PathBuf,
    /// The `apiary-shim` binary.
    pub shim_path: PathBuf,
    /// cgroup (relative to each hierarchy's root) under which containers get theirs, e.g. `apiary`.
    pub cgroup_parent: String,
}

/// Runs containers through one `apiary-shim` process each. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Runtime {
    config: Arc<RuntimeConfig>,
}

/// An exec to run in a running container.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// `KEY=value`, added to the container's environment.
    pub env: Vec<String>,
    /// One pseudo-terminal (`ExecProcess::pty`) instead of three pipes.
    pub tty: bool,
}

/// A process running in a container through `apiary-shim exec`.
#[derive(Debug)]
pub struct ExecProcess {
    child: Child,
    /// The process's stdin (pipes mode).
    pub stdin: Option<ChildStdin>,
    /// The process's stdout (pipes mode).
    pub stdout: Option<ChildStdout>,
    /// The process's stderr (pipes mode).
    pub stderr: Option<ChildStderr>,
    /// The terminal's master side: read output, write input (tty mode).
    pub pty: Option<tokio::fs::File>,
    pty_fd: Option<OwnedFd>,
}

impl Drop for ExecProcess {
    /// An exec dropped before it ended is ended: SIGTERM makes the exec shim SIGKILL the process
    /// in the container (SIGKILL on the shim would leave that process running).
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

impl ExecProcess {
    /// Sets the terminal size (tty mode).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let fd = self
            .pty_fd
            .as_ref()
            .ok_or_else(|| Error::invalid("tty", "this exec has no terminal to resize"))?;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize that outlives the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
            return Err(Error::io("TIOCSWINSZ")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits for the process; its exit code (128 + signal when killed; 126 when it could not
    /// be run, 127 when the executable was not found).
    pub async fn wait(&mut self) -> Result<i32> {
        // Dropping our stdin lets a process reading it see EOF.
        drop(self.stdin.take());
        let status = self
            .child
            .wait()
            .await
            .map_err(Error::io("waiting for exec"))?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255))
    }
}

impl Runtime {
    /// Checks the configuration and creates the state dir.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        if !config.state_dir.is_absolute() {
            return Err(Error::invalid("state_dir", "must be absolute"));
        }
        if !config.shim_path.is_file() {
            return Err(Error::invalid(
                "shim_path",
                format!("{} is not a file", config.shim_path.display()),
            ));
        }
        let parent = config.cgroup_parent.trim_matches('/');
        if parent.is_empty()
            || parent
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::invalid(
                "cgroup_parent",
                "must be a plain relative cgroup path",
            ));
        }
        fs::create_dir_all(&config.state_dir).map_err(Error::io(format!(
            "creating {}",
            config.state_dir.display()
        )))?;
        Ok(Runtime {
            config: Arc::new(config),
        })
    }

    fn layout(&self, id: &str) -> Layout {
        Layout::new(&self.config.state_dir, id)
    }

    /// Starts a container; returns once its process runs, or, when it could not start, its
    /// exited state with the reason in [`ExitInfo::message`] (exit code 128, as `StartError`).
    /// `Err` means the runtime itself failed.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<ContainerState> {
        spec.validate()?;
        let layout = self.layout(&spec.id);
        match fs::create_dir(&layout.dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists {
                    id: spec.id.clone(),
                });
            }
            other => other.map_err(Error::io(format!("creating {}", layout.dir.display())))?,
        }
        write_json(&layout.spec(), spec)?;
        let shim_log = fs::File::create(layout.shim_log()).map_err(Error::io(format!(
            "creating {}",
            layout.shim_log().display()
        )))?;
        let mut child = Command::new(&self.config.shim_path)
            .arg("run")
            .arg("--state-dir")
            .arg(&self.config.state_dir)
            .arg("--id")
            .arg(&spec.id)
            .arg("--cgroup-parent")
            .arg(&self.config.cgroup_parent)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .spawn()
            .map_err(Error::io(format!(
                "spawning {}",
                self.config.shim_path.display()
            )))?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut report = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, stdout.read_to_string(&mut report)).await;
        // The first shim process exits as soon as it forked the detached one.
        let _ = child.wait().await;
        match read {
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("waiting for container {} to start", spec.id),
                });
            }
            Ok(Err(e)) => return Err(Error::io("reading the shim's report")(e)),
            Ok(Ok(_)) => {}
        }
        if serde_json::from_str::<Report>(report.trim()).is_err() {
            return Err(Error::Shim {
                id: spec.id.clone(),
                message: format!(
                    "no start report; shim log: {}",
                    tail(&layout.shim_log(), 2000)
                ),
            });
        }
        self.state(&spec.id)?.ok_or_else(|| Error::NotFound {
            id: spec.id.clone(),
        })
    }

    /// The container's state; `None` when there is no such container.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        validate_id(id)?;
        let layout = self.layout(id);
        let Some(spec) = read_json::<ContainerSpec>(&layout.spec())? else {
            return Ok(None);
        };
        let started: Option<StartedRecord> = read_json(&layout.started())?;
        let exit: Option<ExitInfo> = read_json(&layout.exit())?;
        let shim: Option<ShimRecord> = read_json(&layout.shim())?;
        let status = match exit {
            Some(exit) => ContainerStatus::Exited(exit),
            None => {
                let shim_alive = shim.as_ref().is_some_and(|s| s.shim.alive());
                let init_alive = started.as_ref().is_some_and(|s| s.init.alive());
                let starting = shim.is_none() && younger_than(&layout.spec(), START_TIMEOUT);
                if shim_alive || init_alive || starting {
                    ContainerStatus::Running
                } else {
                    // The shim was killed: the exit status is lost.
                    ContainerStatus::Exited(ExitInfo {
                        exit_code: 255,
                        signal: None,
                        oom_killed: false,
                        finished_at: modified(&layout.dir),
                        message: Some(if started.is_some() {
                            "the shim exited without recording the container's exit".into()
                        } else {
                            format!(
                                "the shim exited before starting the container: {}",
                                tail(&layout.shim_log(), 500)
                            )
                        }),
                    })
                }
            }
        };
        let pid = match status {
            ContainerStatus::Running => started.as_ref().map(|s| s.init.pid),
            ContainerStatus::Exited(_) => None,
        };
        Ok(Some(ContainerState {
            id: id.to_owned(),
            labels: spec.labels,
            pid,
            status,
            started_at: started.map(|s| s.started_at),
            log_path: spec.log_path,
        }))
    }

    /// Every container with a state dir, running or exited, sorted by id.
    pub fn list(&self) -> Result<Vec<ContainerState>> {
        let entries = fs::read_dir(&self.config.state_dir).map_err(Error::io(format!(
            "reading {}",
            self.config.state_dir.display()
        )))?;
        let mut states = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("reading the state dir"))?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_id(&id).is_err() {
                continue;
            }
            match self.state(&id) {
                Ok(Some(state)) => states.push(state),
                Ok(None) => {}
                // One broken container must not hide the others.
                Err(e) => tracing::warn!(%id, error = %e, "skipping container"),
            }
        }
        states.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(states)
    }

    /// Sends SIGTERM, then SIGKILL after `grace`; returns the exited state.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<ContainerState> {
        let started = match self.wait_started(id).await? {
            Some(started) => started,
            None => return self.existing(id),
        };
        if let Some(state) = self
            .signal_and_wait(id, &started, Signal::SIGTERM, grace)
            .await?
        {
            return Ok(state);
        }
        match self
            .signal_and_wait(id, &started, Signal::SIGKILL, KILL_TIMEOUT)
            .await?
        {
            Some(state) => Ok(state),
            None => Err(Error::Timeout {
                what: format!("waiting for container {id} to exit after SIGKILL"),
            }),
        }
    }

    fn existing(&self, id: &str) -> Result<ContainerState> {
        self.state(id)?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })
    }

    /// Waits until the container runs (its started record) or exited (`None`).
    async fn wait_started(&self, id: &str) -> Result<Option<StartedRecord>> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let state = self.existing(id)?;
            if let ContainerStatus::Exited(_) = state.status {
                return Ok(None);
            }
            if let Some(started) = read_json::<StartedRecord>(&self.layout(id).started())? {
                return Ok(Some(started));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("waiting for container {id} to start"),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Signals the init and waits up to `timeout` for the recorded exit.
    async fn signal_and_wait(
        &self,
        id: &str,
        started: &StartedRecord,
        signal: Signal,
        timeout: Duration,
    ) -> Result<Option<ContainerState>> {
        if started.init.alive() {
            match kill(Pid::from_raw(started.init.pid), signal) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(Error::sys(format!("kill {id} with {signal}"))(e)),
            }
        }
        let deadline = Instant::now() + timeout;
        let layout = self.layout(id);
        loop {
            let shim_alive =
                read_json::<ShimRecord>(&layout.shim())?.is_some_and(|s| s.shim.alive());
            if !shim_alive && !started.init.alive() && !layout.exit().exists() {
                // Nobody is left to record the exit (the shim was killed): record what we know.
                write_json(
                    &layout.exit(),
                    &ExitInfo {
                        exit_code: 128 + signal as i32,
                        signal: Some(signal as i32),
                        oom_killed: false,
                        finished_at: chrono::Utc::now(),
                        message: Some("exit status unknown: the shim was gone".into()),
                    },
                )?;
            }
            let state = self.existing(id)?;
            if let ContainerStatus::Exited(_) = state.status {
                return Ok(Some(state));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends `signal` to the container's init process.
    pub fn signal(&self, id: &str, signal: i32) -> Result<()> {
        let signal = Signal::try_from(signal)
            .map_err(|_| Error::invalid("signal", format!("{signal} is not a signal")))?;
        let state = self.existing(id)?;
        let started = read_json::<StartedRecord>(&self.layout(id).started())?;
        match (state.status, started) {
            (ContainerStatus::Running, Some(started)) if started.init.alive() => {
                kill(Pid::from_raw(started.init.pid), signal)
                    .map_err(Error::sys(format!("kill {id} with {signal}")))
            }
            _ => Err(Error::NotRunning { id: id.to_owned() }),
        }
    }

    /// Removes an exited container: unmounts its rootfs, removes its cgroup and state dir.
    /// Idempotent: removing a removed container succeeds.
    pub async fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let layout = self.layout(id);
        if !layout.dir.exists() {
            return Ok(());
        }
        if let Some(state) = self.state(id)?
            && state.status == ContainerStatus::Running
        {
            return Err(Error::StillRunning { id: id.to_owned() });
        }
        // The shim records the exit before it deletes the cgroup: let it finish.
        if let Some(shim) = read_json::<ShimRecord>(&layout.shim())? {
            let deadline = Instant::now() + KILL_TIMEOUT;
            while shim.shim.alive() && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        let cgroup = cgroups::relative_path(&self.config.cgroup_parent, id);
        tokio::task::spawn_blocking(move || remove_files(&layout, &cgroup))
            .await
            .map_err(|e| Error::Io {
                context: "remove task".into(),
                source: io::Error::other(e),
            })?
    }

    /// A connection to the stdin of a running container that has one (`stdin: true`): what is
    /// written goes to the container; with `stdin_once`, closing it closes the container's
    /// stdin. `Ok(None)` for a container without stdin.
    pub async fn attach_stdin(&self, id: &str) -> Result<Option<tokio::net::UnixStream>> {
        let state = self.existing(id)?;
        if state.status != ContainerStatus::Running {
            return Err(Error::NotRunning { id: id.to_owned() });
        }
        let layout = Layout::new(&self.config.state_dir, id);
        let spec: Option<ContainerSpec> = read_json(&layout.spec())?;
        if !spec.is_some_and(|s| s.stdin) {
            return Ok(None);
        }
        let connected = tokio::task::spawn_blocking(move || crate::stdin::connect(&layout.dir))
            .await
            .map_err(|e| Error::Io {
                context: "attach stdin".into(),
                source: io::Error::other(e),
            })?;
        let stream = match connected {
            Ok(stream) => stream,
            // `stdinOnce` closed it: the first client came and went.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(Error::io("attach stdin")(e)),
        };
        stream
            .set_nonblocking(true)
            .map_err(Error::io("attach stdin"))?;
        tokio::net::UnixStream::from_std(stream)
            .map(Some)
            .map_err(Error::io("attach stdin"))
    }

    /// Runs a process in a running container.
    pub async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecProcess> {
        if request.args.is_empty() || request.args[0].is_empty() {
            return Err(Error::invalid("args", "a command is required"));
        }
        for (i, env) in request.env.iter().enumerate() {
            if !env.contains('=') || env.starts_with('=') {
                return Err(Error::invalid(format!("env[{i}]"), "must be KEY=value"));
            }
        }
        let state = self.existing(id)?;
        if state.status != ContainerStatus::Running || state.pid.is_none() {
            return Err(Error::NotRunning { id: id.to_owned() });
        }
        let mut command = Command::new(&self.config.shim_path);
        command
            .arg("exec")
            .arg("--state-dir")
            .arg(&self.config.state_dir)
            .arg("--id")
            .arg(id);
        for env in &request.env {
            command.arg("--env").arg(env);
        }
        command.arg("--").args(&request.args);
        let mut pty_fd = None;
        if request.tty {
            let pty = nix::pty::openpty(None, None).map_err(Error::sys("openpty"))?;
            let slave = pty.slave;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(Error::io("dup pty"));
            command
                .stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    // The terminal becomes the shim's controlling terminal, inherited by the
                    // process it runs.
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            pty_fd = Some(pty.master);
        } else {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut child = command.spawn().map_err(Error::io(format!(
            "spawning {}",
            self.config.shim_path.display()
        )))?;
        // The slave ends in `command` must close in the agent, or reads never see the end.
        drop(command);
        let pty = match &pty_fd {
            Some(master) => {
                let file = fs::File::from(master.try_clone().map_err(Error::io("dup pty"))?);
                Some(tokio::fs::File::from_std(file))
            }
            None => None,
        };
        Ok(ExecProcess {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            pty,
            pty_fd,
        })
    }
}

fn remove_files(layout: &Layout, cgroup: &str) -> Result<()> {
    let rootfs = layout.rootfs();
    match umount2(&rootfs, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("unmounting {}", rootfs.display()))(e)),
    }
    cgroups::remove(cgroup).map_err(Error::io("removing the cgroup"))?;
    match fs::remove_dir_all(&layout.dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", layout.dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// The last `max` bytes of a text file, for error messages.
fn tail(path: &Path, max: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[start..]).trim().to_owned()
}

fn modified(path: &Path) -> chrono::DateTime<chrono::Utc> {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map(chrono::DateTime::from)
        .unwrap_or_else(|_| chrono::Utc::now())
}

fn younger_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < age))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ProcessId;

    fn runtime(dir: &Path) -> Runtime {
        Runtime::new(RuntimeConfig {
            state_dir: dir.join("state"),
            shim_path: std::env::current_exe().unwrap(),
            cgroup_parent: "apiary".into(),
        })
        .unwrap()
    }

    fn create(rt: &Runtime, id: &str, layer: &Path) -> Layout {
        let layout = rt.layout(id);
        fs::create_dir_all(&layout.dir).unwrap();
        let mut spec = crate::spec::tests::sample(layer);
        spec.id = id.into();
        spec.labels.insert("pod".into(), "p1".into());
        write_json(&layout.spec(), &spec).unwrap();
        layout
    }

    #[test]
    fn new_names_the_bad_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = RuntimeConfig {
            state_dir: dir.path().join("state"),
            shim_path: std::env::current_exe().unwrap(),
            cgroup_parent: "apiary".into(),
        };
        let err = |c: RuntimeConfig| Runtime::new(c).unwrap_err().to_string();
        assert!(
            err(RuntimeConfig {
                state_dir: "rel".into(),
                ..good.clone()
            })
            .starts_with("state_dir:")
        );
        assert!(
            err(RuntimeConfig {
                shim_path: dir.path().join("none"),
                ..good.clone()
            })
            .starts_with("shim_path:")
        );
        assert!(
            err(RuntimeConfig {
                cgroup_parent: "a/../b".into(),
                ..good.clone()
            })
            .starts_with("cgroup_parent:")
        );
        Runtime::new(good).unwrap();
    }

    #[test]
    fn state_is_read_back_from_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        assert_eq!(rt.state("c1").unwrap(), None);
        assert!(rt.state("Bad").unwrap_err().to_string().starts_with("id:"));

        // Just written by start(), no shim yet: starting.
        let layout = create(&rt, "c1", dir.path());
        let state = rt.state("c1").unwrap().unwrap();
        assert_eq!((state.status, state.pid), (ContainerStatus::Running, None));
        assert_eq!(state.labels["pod"], "p1");

        // A shim that died before the container started.
        let me = ProcessId::current().unwrap();
        let dead = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        write_json(&layout.shim(), &ShimRecord { shim: dead }).unwrap();
        let ContainerStatus::Exited(exit) = rt.state("c1").unwrap().unwrap().status else {
            panic!("a dead shim without a started container is an exit");
        };
        assert!(exit.message.unwrap().contains("before starting"));

        // Running: the init (here: this test process) is alive even though the shim is gone.
        let started = StartedRecord {
            init: me,
            started_at: chrono::Utc::now(),
        };
        write_json(&layout.started(), &started).unwrap();
        let state = rt.state("c1").unwrap().unwrap();
        assert_eq!(state.status, ContainerStatus::Running);
        assert_eq!(state.pid, Some(me.pid));
        assert_eq!(state.started_at, Some(started.started_at));

        // The recorded exit wins.
        let exit = ExitInfo {
            exit_code: 3,
            signal: None,
            oom_killed: false,
            finished_at: chrono::Utc::now(),
            message: None,
        };
        write_json(&layout.exit(), &exit).unwrap();
        let state = rt.state("c1").unwrap().unwrap();
        assert_eq!(state.status, ContainerStatus::Exited(exit));
        assert_eq!(state.pid, None);
        assert!(matches!(rt.signal("c1", 15), Err(Error::NotRunning { .. })));
        assert!(
            rt.signal("c1", 999)
                .unwrap_err()
                .to_string()
                .starts_with("signal:")
        );
    }

    #[test]
    fn list_skips_strangers_and_broken_state() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        create(&rt, "b", dir.path());
        create(&rt, "a", dir.path());
        fs::create_dir_all(rt.config.state_dir.join("Not_An_Id")).unwrap();
        let broken = create(&rt, "c", dir.path());
        fs::write(broken.spec(), "{").unwrap();
        let ids: Vec<String> = rt.list().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn start_rejects_an_existing_id_and_an_invalid_spec() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let rt2 = rt.clone();
        let spec = crate::spec::tests::sample(dir.path());
        create(&rt, &spec.id, dir.path());
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(async {
            assert!(matches!(
                rt2.start(&spec).await,
                Err(Error::AlreadyExists { .. })
            ));
            let mut bad = spec.clone();
            bad.log_max_files = 0;
            assert!(
                rt2.start(&bad)
                    .await
                    .unwrap_err()
                    .to_string()
                    .starts_with("log_max_files:")
            );
        });
    }
}
