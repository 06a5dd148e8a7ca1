//! What `apiary-shim` does. libcontainer forks the calling process, so it runs here, in a
//! single-threaded process per container, never in the multi-threaded agent.
//!
//! `run`: detach into a new session (the agent may die, the container lives on), become the
//! child subreaper (the container's init is reparented to us, so we reap it), mount the overlay
//! rootfs, write the bundle, create + start the container with its stdout/stderr on our pipes,
//! report to [`crate::Runtime::start`] on stdout, pump the output into the CRI log until the init
//! exits, then write `exit.json` and delete the container's cgroup.
//!
//! `exec`: run a process in the running container with this process's stdio, wait for it, exit
//! with its status.

use std::collections::HashMap;
use std::error::Error as _;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2, setsid};
use serde::{Deserialize, Serialize};

use crate::cgroups;
use crate::error::{Error, Result};
use crate::logs::{LogStream, LogWriter};
use crate::spec::{ContainerSpec, PidNamespace};
use crate::state::{ExitInfo, Layout, ProcessId, ShimRecord, StartedRecord, read_json, write_json};
use crate::stdin::StdinRelay;

/// Exit code recorded for a container that never started (Kubernetes' `StartError` uses 128).
pub const START_ERROR_EXIT_CODE: i32 = 128;
/// How long output is still pumped after the init exited (grandchildren may hold the pipes).
const DRAIN: Duration = Duration::from_secs(2);

/// The line `run` writes on stdout for [`crate::Runtime::start`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Report {
    Started(StartedRecord),
    Failed(String),
}

/// `apiary-shim run`. Returns in the first process (which exits at once) and, in the detached
/// one, once the container exited and was cleaned up.
pub fn run(state_dir: &Path, id: &str, cgroup_parent: &str) -> Result<()> {
    // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map_err(Error::sys("SIGPIPE"))?;
    // Descriptors the agent leaked to us (sockets, cargo's jobserver…) must not live as long as
    // the container: keep only stdio.
    // close_range(2): Linux 5.9.
    // SAFETY: close_range takes plain integers; nothing in this process owns fds above 2 yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let layout = Layout::new(state_dir, id);
    let spec: ContainerSpec =
        read_json(&layout.spec())?.ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
    // SAFETY: the shim is single-threaded: the child may do anything after fork.
    match unsafe { fork() }.map_err(Error::sys("fork"))? {
        ForkResult::Parent { .. } => return Ok(()),
        ForkResult::Child => {}
    }
    setsid().map_err(Error::sys("setsid"))?;
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(Error::io("PR_SET_CHILD_SUBREAPER")(
            std::io::Error::last_os_error(),
        ));
    }
    let me = ProcessId::current().ok_or_else(|| Error::Shim {
        id: id.to_owned(),
        message: "cannot read own /proc entry".into(),
    })?;
    write_json(&layout.shim(), &ShimRecord { shim: me })?;

    let cgroup = cgroups::relative_path(cgroup_parent, id);
    match start(&layout, &spec, &cgroup) {
        Ok(running) => {
            write_json(&layout.started(), &running.record)?;
            report(&Report::Started(running.record.clone()));
            // Without a PID namespace of its own the kernel does not end the init's children
            // with it: they are killed when it exits (containerd's shim does the same).
            let kill_all = spec.namespaces.pid == PidNamespace::Host;
            supervise(&layout, &cgroup, running, kill_all)
        }
        Err(message) => {
            eprintln!("apiary-shim {id}: start failed: {message}");
            let exit = ExitInfo {
                exit_code: START_ERROR_EXIT_CODE,
                signal: None,
                oom_killed: false,
                finished_at: Utc::now(),
                message: Some(message.clone()),
            };
            let written = write_json(&layout.exit(), &exit);
            delete_container(&layout, id, &cgroup);
            report(&Report::Failed(message));
            written
        }
    }
}

/// Writes the report line for `Runtime::start`, then lets go of the pipe so that the agent's
/// read ends.
fn report(report: &Report) {
    let mut line = serde_json::to_vec(report).expect("reports serialize");
    line.push(b'\n');
    // Errors are ignored: the agent may be gone; it reads the state files when it comes back.
    let _ = std::io::stdout().write_all(&line);
    let _ = std::io::stdout().flush();
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 replaces our stdout; no Rust object owns fd 1 exclusively.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

#[derive(Debug)]
struct Running {
    container: Container,
    record: StartedRecord,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// The container's stdin, when it has one to attach to.
    stdin: Option<StdinRelay>,
    log: LogWriter,
}

/// Mounts the rootfs, writes the bundle and starts the container. Errors are messages for the
/// user (they end up in `ExitInfo::message`).
fn start(layout: &Layout, spec: &ContainerSpec, cgroup: &str) -> Result<Running, String> {
    for dir in [
        layout.upper(),
        layout.work(),
        layout.rootfs(),
        layout.youki_root(),
    ] {
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let lower: Vec<String> = spec
        .layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        layout.upper().display(),
        layout.work().display()
    );
    mount(
        Some("overlay"),
        &layout.rootfs(),
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| format!("mounting the overlay rootfs: {e}"))?;
    let config =
        crate::bundle::config(spec, &format!("/{cgroup}"), cgroups::swap_limit_supported());
    fs::write(
        layout.bundle().join("config.json"),
        serde_json::to_vec_pretty(&config).expect("config serializes"),
    )
    .map_err(|e| format!("writing config.json: {e}"))?;
    let log = LogWriter::open(&spec.log_path, spec.log_max_bytes, spec.log_max_files)
        .map_err(|e| format!("opening log {}: {e}", spec.log_path.display()))?;

    let (stdout, stdout_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (stderr, stderr_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (relay, stdin) = if spec.stdin {
        let (relay, read) = StdinRelay::open(&layout.dir, spec.stdin_once)
            .map_err(|e| format!("creating the stdin of the container: {e}"))?;
        (Some(relay), read)
    } else {
        let null = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        (None, OwnedFd::from(null))
    };
    let mut container = ContainerBuilder::new(spec.id.clone(), SyscallType::default())
        .with_root_path(layout.youki_root())
        .map_err(|e| describe(spec, &e))?
        .with_stdin(stdin)
        .with_stdout(stdout_w)
        .with_stderr(stderr_w)
        .as_init(layout.bundle())
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| describe(spec, &e))?;
    container.start().map_err(|e| describe(spec, &e))?;
    let pid = container
        .pid()
        .ok_or("libcontainer reported no pid for the started container")?;
    let init = ProcessId::of(pid.as_raw()).unwrap_or(ProcessId {
        pid: pid.as_raw(),
        start_time: 0,
    });
    Ok(Running {
        container,
        record: StartedRecord {
            init,
            started_at: Utc::now(),
        },
        stdout,
        stderr,
        stdin: relay,
        log,
    })
}

/// A start error as Kubernetes users know it, with libcontainer's chain of causes otherwise.
fn describe(spec: &ContainerSpec, err: &dyn std::error::Error) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    if chain.contains("not found in $PATH") {
        return format!(
            "exec: \"{}\": executable file not found in $PATH",
            spec.args[0]
        );
    }
    if chain.contains("does not have correct permissions") {
        return format!("exec: \"{}\": permission denied", spec.args[0]);
    }
    chain
}

/// Pumps output into the log until the init exited, then records the exit and cleans up.
/// `kill_all`: the init's exit ends every other process of the container (SIGKILL to its
/// cgroup), as a PID namespace's end would.
fn supervise(layout: &Layout, cgroup: &str, mut running: Running, kill_all: bool) -> Result<()> {
    let init = Pid::from_raw(running.record.init.pid);
    // SIGCHLD is blocked only now: libcontainer's children must not inherit a blocked mask.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(Error::sys("sigprocmask"))?;
    let sigchld = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(Error::sys("signalfd"))?;

    let mut status = None;
    let mut exited_at = None;
    let mut pipes = [
        (LogStream::Stdout, Some(running.stdout)),
        (LogStream::Stderr, Some(running.stderr)),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if status.is_none() {
            status = reap(init);
            if status.is_some() {
                exited_at = Some(Instant::now());
                if kill_all && let Err(e) = running.container.kill(Signal::SIGKILL, true) {
                    eprintln!("apiary-shim: killing the container's other processes: {e}");
                }
            }
        }
        let all_closed = pipes.iter().all(|(_, p)| p.is_none());
        if let Some(at) = exited_at
            && (all_closed || at.elapsed() > DRAIN)
        {
            break;
        }
        let mut fds: Vec<PollFd> = vec![PollFd::new(sigchld.as_fd(), PollFlags::POLLIN)];
        let open: Vec<usize> = (0..2).filter(|&i| pipes[i].1.is_some()).collect();
        for &i in &open {
            let fd = pipes[i].1.as_ref().expect("open pipe");
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let relay_fds = running
            .stdin
            .as_ref()
            .map_or_else(Vec::new, StdinRelay::fds);
        let relay_first = fds.len();
        fds.extend(
            relay_fds
                .into_iter()
                .map(|(fd, flags)| PollFd::new(fd, flags)),
        );
        let timeout = if exited_at.is_some() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::sys("poll")(e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(_)) = sigchld.read_signal() {}
        }
        if ready[relay_first..].iter().any(|r| *r)
            && let Some(relay) = running.stdin.as_mut()
        {
            relay.service(&mut buf);
        }
        for (k, &i) in open.iter().enumerate() {
            if !ready[k + 1] {
                continue;
            }
            let (stream, pipe) = &mut pipes[i];
            let fd = pipe.as_ref().expect("open pipe");
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    let _ = running.log.finish(*stream);
                    *pipe = None;
                }
                Ok(n) => {
                    if let Err(e) = running.log.write(*stream, &buf[..n]) {
                        eprintln!("apiary-shim: writing the log: {e}");
                    }
                }
                Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                Err(e) => {
                    eprintln!("apiary-shim: reading container output: {e}");
                    *pipe = None;
                }
            }
        }
    }
    for (stream, pipe) in &pipes {
        if pipe.is_some() {
            let _ = running.log.finish(*stream);
        }
    }

    let (exit_code, signal) = match status.expect("loop ends after the exit") {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        other => {
            eprintln!("apiary-shim: unexpected wait status {other:?}");
            (255, None)
        }
    };
    let exit = ExitInfo {
        exit_code,
        signal,
        oom_killed: cgroups::oom_killed(cgroup),
        finished_at: Utc::now(),
        message: None,
    };
    write_json(&layout.exit(), &exit)?;
    if let Err(e) = running.container.delete(true) {
        eprintln!("apiary-shim: deleting the container: {e}");
    }
    if let Err(e) = cgroups::remove(cgroup) {
        eprintln!("apiary-shim: {e}");
    }
    Ok(())
}

/// Reaps every exited child (we are their subreaper); returns the init's status once it exited.
fn reap(init: Pid) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(status) => {
                if status.pid() == Some(init) {
                    found = Some(status);
                }
            }
        }
    }
}

/// Deletes what libcontainer created for a container that failed to start.
fn delete_container(layout: &Layout, id: &str, cgroup: &str) {
    let dir = layout.youki_root().join(id);
    if dir.join("state.json").exists()
        && let Ok(mut container) = Container::load(dir)
        && let Err(e) = container.delete(true)
    {
        eprintln!("apiary-shim: deleting the failed container: {e}");
    }
    // The failed init may still be ours to reap.
    reap(Pid::from_raw(-1));
    if let Err(e) = cgroups::remove(cgroup) {
        eprintln!("apiary-shim: {e}");
    }
}

/// `apiary-shim exec`: runs `args` in the container with this process's stdio and returns the
/// exit code to exit with (128 + signal when killed; 126/127 when it could not run).
pub fn exec(state_dir: &Path, id: &str, args: Vec<String>, env: Vec<String>) -> i32 {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers. The exec'd process
    // is reparented to us when libcontainer's intermediate process exits.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let layout = Layout::new(state_dir, id);
    let env: HashMap<String, String> = env
        .into_iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let arg0 = args.first().cloned().unwrap_or_default();
    // Like the container's own process: same user and working directory.
    let spec = match read_json::<ContainerSpec>(&layout.spec()) {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            eprintln!("exec in {id}: no such container");
            return 126;
        }
        Err(e) => {
            eprintln!("exec in {id}: {e}");
            return 126;
        }
    };
    let cwd = if spec.cwd.is_empty() {
        "/".to_owned()
    } else {
        spec.cwd.clone()
    };
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(layout.youki_root())
        .and_then(|b| {
            b.as_tenant()
                .with_container_args(args)
                .with_env(env)
                .with_user(Some(spec.uid))
                .with_group(Some(spec.gid))
                .with_cwd(Some(cwd))
                .with_detach(true)
                .build()
        });
    let pid = match built {
        Ok(pid) => pid,
        Err(e) => {
            let message = format!("{e}");
            let mut chain = message.clone();
            let mut source = e.source();
            while let Some(cause) = source {
                chain.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            if chain.contains("not found in $PATH") {
                eprintln!("exec: \"{arg0}\": executable file not found in $PATH");
                return 127;
            }
            eprintln!("exec in {id}: {chain}");
            return 126;
        }
    };
    // SIGTERM/SIGHUP/SIGINT (the agent dropped the exec, or its terminal went away) end the
    // process in the container too, not just this shim.
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
    ] {
        mask.add(sig);
    }
    let signals = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .and_then(|()| SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC));
    let signals = match signals {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("exec in {id}: signalfd: {e}");
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            return 126;
        }
    };
    loop {
        // The process may have exited before SIGCHLD was blocked: look before waiting.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
                Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => {
                    eprintln!("exec in {id}: waiting: {e}");
                    return 126;
                }
            }
        }
        match signals.read_signal() {
            Ok(Some(info)) if info.ssi_signo != Signal::SIGCHLD as u32 => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                eprintln!("exec in {id}: signalfd: {e}");
                return 126;
            }
        }
    }
}
