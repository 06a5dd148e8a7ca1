//! The container runtime end to end: real `apiary-shim` processes running busybox containers
//! with youki's libcontainer.
//!
//! The tests build the shim themselves (`cargo build -p apiary-runtime --bin apiary-shim`, next
//! to this test binary in `target/debug`) unless `APIARY_SHIM` names one. Run them with
//! `cargo test -p apiary-tests --test privileged_runtime -- --test-threads 2 --nocapture`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use apiary_runtime::{
    ContainerSpec, ContainerState, ContainerStatus, Error, ExecRequest, ExitInfo, Mount,
    PidNamespace, Resources, Runtime, RuntimeConfig, Sandbox, SandboxNamespaces, Seccomp, Security,
    cgroups,
};
use apiary_tests::require_privileges;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOSTNAME: &str = "pod-host";
const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "head", "tail", "hostname", "ls", "wget", "httpd", "nc", "id",
    "touch", "seq", "true", "test", "ps", "grep", "unshare", "ping",
];

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The shim binary, built once per test process.
fn shim_path() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        if let Some(path) = std::env::var_os("APIARY_SHIM") {
            return path.into();
        }
        // target/<profile>/deps/privileged_runtime-… → target/<profile>/apiary-shim
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let mut build = vec!["build", "-p", "apiary-runtime", "--bin", "apiary-shim"];
        if profile_dir.ends_with("release") {
            build.push("--release");
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(&build)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("running cargo build for apiary-shim");
        assert!(status.success(), "building apiary-shim failed");
        profile_dir.join("apiary-shim")
    })
    .clone()
}

/// A busybox layer, a sandbox, a state dir and a cgroup parent of its own; all removed on drop
/// (containers are killed and removed first).
struct Fixture {
    dir: tempfile::TempDir,
    runtime: Runtime,
    config: RuntimeConfig,
    namespaces: SandboxNamespaces,
    name: String,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_host_ipc(false)
    }

    /// A fixture whose sandbox has no IPC namespace of its own (`hostIPC`).
    fn with_host_ipc(host_ipc: bool) -> Fixture {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rt{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("apiary-rt-")
            .tempdir()
            .unwrap();
        let layer = dir.path().join("layer");
        for sub in ["bin", "proc", "dev", "sys", "tmp", "etc", "data"] {
            std::fs::create_dir_all(layer.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
        }
        let config = RuntimeConfig {
            state_dir: dir.path().join("state"),
            shim_path: shim_path(),
            cgroup_parent: format!("apiary-test-{name}"),
        };
        let runtime = Runtime::new(config.clone()).unwrap();
        let namespaces = Sandbox::create(&dir.path().join("sandbox"), HOSTNAME, host_ipc).unwrap();
        Fixture {
            dir,
            runtime,
            config,
            namespaces,
            name,
        }
    }

    fn spec(&self, container: &str, args: &[&str]) -> ContainerSpec {
        let id = format!("{}-{container}", self.name);
        ContainerSpec {
            labels: BTreeMap::from([("container".to_owned(), container.to_owned())]),
            layers: vec![self.dir.path().join("layer")],
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            hostname: HOSTNAME.into(),
            namespaces: self.namespaces.clone(),
            mounts: vec![],
            resources: Resources::default(),
            log_path: self.dir.path().join("logs").join(format!("{id}.log")),
            log_max_bytes: 1 << 20,
            log_max_files: 2,
            security: apiary_runtime::Security::default(),
            stdin: false,
            stdin_once: false,
            id,
        }
    }

    /// Mounts under this fixture's dir (overlay rootfs, sandbox namespaces).
    fn mounts(&self) -> usize {
        let dir = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
            .count()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let runtime = self.runtime.clone();
        // Cleanup runs on its own thread and runtime: a panicking test may be inside block_on.
        let cleanup = std::thread::spawn(move || {
            block_on(async {
                for state in runtime.list().unwrap_or_default() {
                    if state.status == ContainerStatus::Running {
                        let _ = runtime.stop(&state.id, Duration::ZERO).await;
                    }
                    if let Err(e) = runtime.remove(&state.id).await {
                        eprintln!("cleanup: removing {}: {e}", state.id);
                    }
                }
            })
        });
        let _ = cleanup.join();
        if let Err(e) = Sandbox::remove(&self.dir.path().join("sandbox")) {
            eprintln!("cleanup: sandbox: {e}");
        }
        for dir in cgroups::existing_dirs(&self.config.cgroup_parent) {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn exit_info(state: &ContainerState) -> &ExitInfo {
    match &state.status {
        ContainerStatus::Exited(exit) => exit,
        ContainerStatus::Running => panic!("{} is still running: {state:?}", state.id),
    }
}

/// Polls until the container exited.
async fn wait_exit(runtime: &Runtime, id: &str, timeout: Duration) -> ContainerState {
    let deadline = Instant::now() + timeout;
    loop {
        let state = runtime.state(id).unwrap().expect("container exists");
        if matches!(state.status, ContainerStatus::Exited(_)) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not exit within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The log's records as (stream, tag, content).
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
                "bad timestamp in {line:?}"
            );
            let stream = parts.next().unwrap().to_owned();
            let tag = parts.next().unwrap().to_owned();
            (stream, tag, parts.next().unwrap_or_default().to_owned())
        })
        .collect()
}

fn log_lines(path: &Path) -> Vec<String> {
    log_records(path).into_iter().map(|(_, _, c)| c).collect()
}

async fn run_to_exit(fx: &Fixture, spec: &ContainerSpec) -> ExitInfo {
    let started = fx.runtime.start(spec).await.unwrap();
    assert_eq!(started.labels, spec.labels);
    let state = wait_exit(&fx.runtime, &spec.id, Duration::from_secs(20)).await;
    exit_info(&state).clone()
}

#[test]
fn echo_hello_is_logged_in_cri_format_and_exits_zero() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let spec = fx.spec("echo", &["echo", "hello"]);
        let exit = run_to_exit(&fx, &spec).await;
        assert_eq!(exit.exit_code, 0, "{exit:?}");
        assert_eq!(exit.signal, None);
        assert!(!exit.oom_killed);
        assert_eq!(
            log_records(&spec.log_path),
            [("stdout".to_owned(), "F".to_owned(), "hello".to_owned())]
        );
    });
}

#[test]
fn exit_code_and_stderr_are_recorded() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let spec = fx.spec(
            "exit3",
            &["sh", "-c", "echo oops >&2; printf partial; exit 3"],
        );
        let exit = run_to_exit(&fx, &spec).await;
        assert_eq!(exit.exit_code, 3);
        let records = log_records(&spec.log_path);
        assert!(records.contains(&("stderr".into(), "F".into(), "oops".into())));
        assert!(records.contains(&("stdout".into(), "P".into(), "partial".into())));
    });
}

#[test]
fn missing_executable_is_a_clear_start_error() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let spec = fx.spec("missing", &["no-such-binary", "arg"]);
        let state = fx.runtime.start(&spec).await.unwrap();
        let exit = exit_info(&state);
        assert_eq!(exit.exit_code, 128);
        assert_eq!(
            exit.message.as_deref(),
            Some("exec: \"no-such-binary\": executable file not found in $PATH")
        );
        // Still listed (the agent reports it), until removed.
        assert!(fx.runtime.list().unwrap().iter().any(|s| s.id == spec.id));

        std::fs::write(
            fx.dir.path().join("layer/bin/not-executable"),
            "#!/bin/sh\n",
        )
        .unwrap();
        let spec = fx.spec("noexec", &["/bin/not-executable"]);
        let state = fx.runtime.start(&spec).await.unwrap();
        assert_eq!(
            exit_info(&state).message.as_deref(),
            Some("exec: \"/bin/not-executable\": permission denied")
        );
    });
}

#[test]
fn stop_uses_sigterm_within_grace_then_sigkill() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let trapping = fx.spec(
            "trap",
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
            ],
        );
        let ignoring = fx.spec("ignore", &["sleep", "1000"]);
        let state = fx.runtime.start(&trapping).await.unwrap();
        assert_eq!(state.status, ContainerStatus::Running);
        assert!(state.pid.is_some() && state.started_at.is_some());
        fx.runtime.start(&ignoring).await.unwrap();
        // The trap must be installed before SIGTERM arrives.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log_lines(&trapping.log_path).contains(&"ready".to_owned()) {
            assert!(Instant::now() < deadline, "trap container never got ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let t = Instant::now();
        let stopped = fx
            .runtime
            .stop(&trapping.id, Duration::from_secs(10))
            .await
            .unwrap();
        let exit = exit_info(&stopped);
        assert_eq!((exit.exit_code, exit.signal), (0, None), "{exit:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );

        let grace = Duration::from_millis(500);
        let t = Instant::now();
        let stopped = fx.runtime.stop(&ignoring.id, grace).await.unwrap();
        let exit = exit_info(&stopped);
        assert_eq!((exit.exit_code, exit.signal), (137, Some(9)), "{exit:?}");
        assert!(
            t.elapsed() >= grace,
            "SIGKILL before the grace period ended"
        );
        assert!(t.elapsed() < grace + Duration::from_secs(5));
        // Stopping an exited container returns its state again.
        let again = fx.runtime.stop(&ignoring.id, grace).await.unwrap();
        assert_eq!(exit_info(&again).exit_code, 137);
    });
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let mut spec = fx.spec("oom", &["sh", "-c", "tail /dev/zero"]);
        spec.resources.memory_limit_bytes = Some(32 << 20);
        let exit = run_to_exit(&fx, &spec).await;
        assert!(exit.oom_killed, "{exit:?}");
        assert_ne!(exit.exit_code, 0);

        // The same without a limit is not OOM-killed (the flag is not always set).
        let spec = fx.spec(
            "no-oom",
            &[
                "sh",
                "-c",
                "head -c 1000000 /dev/zero | tail -c 10 >/dev/null",
            ],
        );
        let exit = run_to_exit(&fx, &spec).await;
        assert!(!exit.oom_killed);
        assert_eq!(exit.exit_code, 0);
    });
}

#[test]
fn containers_of_one_sandbox_share_hostname_and_network() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let mut server = fx.spec("server", &["sh", "-c", "hostname; nc -l -p 8080"]);
        // No hostname of its own: it sees the sandbox's.
        server.hostname = String::new();
        let client = fx.spec(
            "client",
            &[
                "sh",
                "-c",
                "hostname; for i in $(seq 100); do echo hi-over-lo | nc 127.0.0.1 8080 && exit 0; sleep 0.1; done; exit 1",
            ],
        );
        fx.runtime.start(&server).await.unwrap();
        let client_exit = run_to_exit(&fx, &client).await;
        assert_eq!(client_exit.exit_code, 0, "client could not connect");
        let server_state = wait_exit(&fx.runtime, &server.id, Duration::from_secs(10)).await;
        assert_eq!(exit_info(&server_state).exit_code, 0);
        assert_eq!(log_lines(&server.log_path), [HOSTNAME, "hi-over-lo"]);
        assert_eq!(log_lines(&client.log_path), [HOSTNAME]);
        fx.runtime.remove(&server.id).await.unwrap();
        fx.runtime.remove(&client.id).await.unwrap();
    });
    // Removing the sandbox is idempotent (the fixture removes it again).
    Sandbox::remove(&fx.dir.path().join("sandbox")).unwrap();
    Sandbox::remove(&fx.dir.path().join("sandbox")).unwrap();
    assert_eq!(fx.mounts(), 0);
}

#[test]
fn logs_of_a_running_container_can_be_followed() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        use futures::StreamExt;
        let spec = fx.spec(
            "follow",
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done",
            ],
        );
        fx.runtime.start(&spec).await.unwrap();
        let mut stream = Box::pin(apiary_runtime::logs::read(
            &spec.log_path,
            apiary_runtime::logs::LogOptions {
                follow: true,
                ..Default::default()
            },
        ));
        let mut seen = String::new();
        while !seen.contains("line5\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("follow delivers the container's output")
                .unwrap()
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(seen, "line1\nline2\nline3\nline4\nline5\n");
        wait_exit(&fx.runtime, &spec.id, Duration::from_secs(10)).await;
    });
}

#[test]
fn env_cwd_and_user_are_applied() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let mut spec = fx.spec(
            "env",
            &["sh", "-c", "echo \"$FOO $(pwd) $(id -u):$(id -g)\""],
        );
        spec.env = vec!["FOO=bar baz".into()];
        spec.cwd = "/tmp".into();
        spec.uid = 1000;
        spec.gid = 2000;
        let exit = run_to_exit(&fx, &spec).await;
        assert_eq!(exit.exit_code, 0);
        assert_eq!(log_lines(&spec.log_path), ["bar baz /tmp 1000:2000"]);
    });
}

#[test]
fn read_only_bind_mount_is_read_only() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let volume = fx.dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("data.txt"), "from-the-host\n").unwrap();
        let script = "cat /data/data.txt; if touch /data/new 2>/dev/null; then echo writable; else echo read-only; fi";
        let mut ro = fx.spec("ro", &["sh", "-c", script]);
        ro.mounts = vec![Mount {
            source: volume.clone(),
            destination: "/data".into(),
            read_only: true,
        }];
        let exit = run_to_exit(&fx, &ro).await;
        assert_eq!(exit.exit_code, 0);
        assert_eq!(log_lines(&ro.log_path), ["from-the-host", "read-only"]);
        assert!(!volume.join("new").exists());

        let mut rw = fx.spec("rw", &["sh", "-c", script]);
        rw.mounts = vec![Mount {
            source: volume.clone(),
            destination: "/data".into(),
            read_only: false,
        }];
        run_to_exit(&fx, &rw).await;
        assert_eq!(log_lines(&rw.log_path), ["from-the-host", "writable"]);
        assert!(volume.join("new").exists());
    });
}

#[test]
fn exec_runs_in_the_container_with_stdin_and_tty() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let mut spec = fx.spec("exec", &["sleep", "1000"]);
        spec.env = vec!["IN_CONTAINER=yes".into()];
        // Execs run as the container's user, in its working directory.
        spec.uid = 1000;
        spec.gid = 2000;
        spec.cwd = "/tmp".into();
        fx.runtime.start(&spec).await.unwrap();

        let mut p = fx
            .runtime
            .exec(
                &spec.id,
                &ExecRequest {
                    args: vec![
                        "sh".into(),
                        "-c".into(),
                        "hostname; echo $IN_CONTAINER $EXTRA; echo $(id -u):$(id -g) $(pwd)".into(),
                    ],
                    env: vec!["EXTRA=added".into()],
                    tty: false,
                },
            )
            .await
            .unwrap();
        let mut out = String::new();
        p.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(p.wait().await.unwrap(), 0);
        assert_eq!(out, format!("{HOSTNAME}\nyes added\n1000:2000 /tmp\n"));

        let mut cat = fx
            .runtime
            .exec(
                &spec.id,
                &ExecRequest {
                    args: vec!["cat".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut stdin = cat.stdin.take().unwrap();
        stdin.write_all(b"through stdin\n").await.unwrap();
        drop(stdin);
        let mut out = String::new();
        cat.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(cat.wait().await.unwrap(), 0);
        assert_eq!(out, "through stdin\n");

        let mut failing = fx
            .runtime
            .exec(
                &spec.id,
                &ExecRequest {
                    args: vec!["sh".into(), "-c".into(), "exit 5".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(failing.wait().await.unwrap(), 5);
        let mut missing = fx
            .runtime
            .exec(
                &spec.id,
                &ExecRequest {
                    args: vec!["nope".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut err = String::new();
        missing
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        assert_eq!(missing.wait().await.unwrap(), 127);
        assert!(err.contains("executable file not found"), "{err}");

        let mut tty = fx
            .runtime
            .exec(
                &spec.id,
                &ExecRequest {
                    args: vec![
                        "sh".into(),
                        "-c".into(),
                        "test -t 0 && test -t 1 && echo is-a-tty".into(),
                    ],
                    env: vec![],
                    tty: true,
                },
            )
            .await
            .unwrap();
        tty.resize(40, 100).unwrap();
        let mut master = tty.pty.take().unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        // The master reads EIO once the last slave holder is gone.
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(10), master.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(tty.wait().await.unwrap(), 0);
        assert!(
            String::from_utf8_lossy(&out).contains("is-a-tty"),
            "{out:?}"
        );

        // Dropping an exec ends its process in the container.
        let dropped = fx
            .runtime
            .exec(
                &spec.id,
                &ExecRequest {
                    args: vec!["sleep".into(), "2000".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let count = async || {
            let mut ps = fx
                .runtime
                .exec(
                    &spec.id,
                    &ExecRequest {
                        args: vec![
                            "sh".into(),
                            "-c".into(),
                            "ps -o args | grep -c '^sleep 2000'".into(),
                        ],
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let mut out = String::new();
            ps.stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .await
                .unwrap();
            ps.wait().await.unwrap();
            out.trim().to_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while count().await != "1" {
            assert!(Instant::now() < deadline, "the exec never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(dropped);
        while count().await != "0" {
            assert!(
                Instant::now() < deadline,
                "the dropped exec's process lives on"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        fx.runtime.stop(&spec.id, Duration::ZERO).await.unwrap();
        let err = fx
            .runtime
            .exec(
                &spec.id,
                &ExecRequest {
                    args: vec!["true".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotRunning { .. }), "{err}");
    });
}

/// Started by `container_survives_the_death_of_its_starter` in a child process, which is then
/// SIGKILLed. Does nothing when run on its own.
#[test]
#[ignore = "helper process of container_survives_the_death_of_its_starter"]
fn helper_start_then_hang() {
    let Ok(spec) = std::env::var("APIARY_TEST_SPEC") else {
        return;
    };
    let spec: ContainerSpec = serde_json::from_str(&spec).unwrap();
    let config = RuntimeConfig {
        state_dir: std::env::var("APIARY_TEST_STATE_DIR").unwrap().into(),
        shim_path: shim_path(),
        cgroup_parent: std::env::var("APIARY_TEST_CGROUP_PARENT").unwrap(),
    };
    block_on(async {
        let runtime = Runtime::new(config).unwrap();
        let state = runtime.start(&spec).await.unwrap();
        println!("STARTED {}", state.pid.unwrap());
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

#[test]
fn container_survives_the_death_of_its_starter_and_is_readopted() {
    require_privileges!();
    let fx = Fixture::new();
    let spec = fx.spec("survivor", &["sleep", "1000"]);
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_start_then_hang",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("APIARY_TEST_SPEC", serde_json::to_string(&spec).unwrap())
        .env("APIARY_TEST_STATE_DIR", &fx.config.state_dir)
        .env("APIARY_TEST_CGROUP_PARENT", &fx.config.cgroup_parent)
        .env("APIARY_SHIM", shim_path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pid = None;
    for line in BufReader::new(helper.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints `test helper_start_then_hang ... ` before the helper's own output.
        if let Some((_, p)) = line.split_once("STARTED ") {
            pid = Some(p.parse::<i32>().unwrap());
            break;
        }
    }
    let pid = pid.expect("helper did not start the container");
    helper.kill().unwrap(); // SIGKILL
    helper.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    block_on(async {
        // A new Runtime (a restarted agent) over the same state dir.
        let runtime = Runtime::new(fx.config.clone()).unwrap();
        let listed = runtime.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, spec.id);
        assert_eq!(listed[0].status, ContainerStatus::Running);
        assert_eq!(listed[0].pid, Some(pid));
        assert_eq!(listed[0].labels, spec.labels);
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let stopped = runtime
            .stop(&spec.id, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(exit_info(&stopped).exit_code, 137);
    });
}

#[test]
fn remove_leaves_no_mount_cgroup_or_state() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let sandbox_mounts = fx.mounts();
        let mut spec = fx.spec("removed", &["sleep", "1000"]);
        spec.resources = Resources {
            cpu_shares: Some(256),
            cpu_quota_us: Some(50_000),
            cpu_period_us: Some(100_000),
            memory_limit_bytes: Some(64 << 20),
            pids_limit: Some(64),
        };
        fx.runtime.start(&spec).await.unwrap();
        let cgroup = cgroups::relative_path(&fx.config.cgroup_parent, &spec.id);
        assert!(
            !cgroups::existing_dirs(&cgroup).is_empty(),
            "no cgroup while running"
        );
        assert_eq!(
            fx.mounts(),
            sandbox_mounts + 1,
            "the rootfs overlay is mounted"
        );
        // The limits reached the cgroup.
        let limited = cgroups::existing_dirs(&cgroup).iter().any(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .is_ok_and(|v| v.trim() == (64u64 << 20).to_string())
        });
        assert!(limited, "memory limit not applied");
        let any_file_is = |v1: &str, v2: &str, want: &str| {
            cgroups::existing_dirs(&cgroup).iter().any(|d| {
                std::fs::read_to_string(d.join(v1))
                    .or_else(|_| std::fs::read_to_string(d.join(v2)))
                    .is_ok_and(|v| v.trim() == want)
            })
        };
        assert!(
            any_file_is("pids.max", "pids.max", "64"),
            "pids limit not applied"
        );
        assert!(
            any_file_is("cpu.cfs_quota_us", "cpu.max", "50000")
                || any_file_is("cpu.cfs_quota_us", "cpu.max", "50000 100000"),
            "cpu quota not applied"
        );
        let err = fx.runtime.remove(&spec.id).await.unwrap_err();
        assert!(matches!(err, Error::StillRunning { .. }), "{err}");

        fx.runtime.stop(&spec.id, Duration::ZERO).await.unwrap();
        fx.runtime.remove(&spec.id).await.unwrap();
        assert_eq!(fx.mounts(), sandbox_mounts);
        assert!(cgroups::existing_dirs(&cgroup).is_empty());
        assert!(!fx.config.state_dir.join(&spec.id).exists());
        assert_eq!(fx.runtime.state(&spec.id).unwrap(), None);
        // Idempotent.
        fx.runtime.remove(&spec.id).await.unwrap();

        // A start failure is cleaned up the same way.
        let failed = fx.spec("failed", &["nope"]);
        fx.runtime.start(&failed).await.unwrap();
        fx.runtime.remove(&failed.id).await.unwrap();
        assert_eq!(fx.mounts(), sandbox_mounts);
        assert!(
            cgroups::existing_dirs(&cgroups::relative_path(
                &fx.config.cgroup_parent,
                &failed.id
            ))
            .is_empty()
        );
        assert!(fx.runtime.list().unwrap().is_empty());
    });
}

#[test]
fn start_latency() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let mut samples = Vec::new();
        for i in 0..20 {
            let spec = fx.spec(&format!("lat{i}"), &["sleep", "1000"]);
            let t = Instant::now();
            let state = fx.runtime.start(&spec).await.unwrap();
            samples.push(t.elapsed());
            assert_eq!(state.status, ContainerStatus::Running);
            fx.runtime.stop(&spec.id, Duration::ZERO).await.unwrap();
            fx.runtime.remove(&spec.id).await.unwrap();
        }
        samples.sort();
        let p50 = samples[samples.len() / 2];
        let max = samples[samples.len() - 1];
        eprintln!(
            "start latency over {} starts: p50 {p50:?}, max {max:?}",
            samples.len()
        );
        assert!(p50 < Duration::from_secs(1), "p50 {p50:?}");
    });
}

#[test]
fn a_killed_shim_still_lets_the_container_be_stopped_and_removed() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let spec = fx.spec("orphan", &["sleep", "1000"]);
        let state = fx.runtime.start(&spec).await.unwrap();
        let pid = state.pid.unwrap();
        let shim: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fx.config.state_dir.join(&spec.id).join("shim.json")).unwrap(),
        )
        .unwrap();
        let shim_pid = shim["shim"]["pid"].as_i64().unwrap() as i32;
        // SAFETY: kill(2) on the shim this test started.
        assert_eq!(unsafe { libc::kill(shim_pid, libc::SIGKILL) }, 0);
        std::thread::sleep(Duration::from_millis(200));

        // The container outlives its shim and is still reported running.
        let state = fx.runtime.state(&spec.id).unwrap().unwrap();
        assert_eq!(
            (state.status, state.pid),
            (ContainerStatus::Running, Some(pid))
        );
        let stopped = fx.runtime.stop(&spec.id, Duration::ZERO).await.unwrap();
        let exit = exit_info(&stopped);
        assert_eq!(exit.exit_code, 137);
        assert!(exit.message.as_deref().unwrap().contains("shim was gone"));
        fx.runtime.remove(&spec.id).await.unwrap();
        let cgroup = cgroups::relative_path(&fx.config.cgroup_parent, &spec.id);
        assert!(cgroups::existing_dirs(&cgroup).is_empty());
        assert!(!fx.config.state_dir.join(&spec.id).exists());
    });
}

/// This host is hybrid (v1 controllers + unified v2); the shim sees a pure v2 host when it runs
/// in a mount namespace whose `/sys/fs/cgroup` is the cgroup2 hierarchy. No controller is bound
/// to v2 here, so this covers libcgroups' v2 manager and our cgroup handling, not v2 limits.
#[test]
fn runs_on_a_pure_cgroup_v2_view() {
    require_privileges!();
    if !Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        eprintln!("SKIPPED runs_on_a_pure_cgroup_v2_view: no unified hierarchy next to v1");
        return;
    }
    let mut fx = Fixture::new();
    let wrapper = fx.dir.path().join("shim-on-v2");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare -m --propagation private sh -c \
             'umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" \"$@\"' \
             {} \"$@\"\n",
            shim_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fx.config.shim_path = wrapper;
    fx.runtime = Runtime::new(fx.config.clone()).unwrap();
    block_on(async {
        let spec = fx.spec("v2", &["sh", "-c", "cat /proc/self/cgroup"]);
        let exit = run_to_exit(&fx, &spec).await;
        assert_eq!(exit.exit_code, 0, "{exit:?}");
        let cgroup = cgroups::relative_path(&fx.config.cgroup_parent, &spec.id);
        assert!(
            log_lines(&spec.log_path).contains(&format!("0::/{cgroup}")),
            "{:?}",
            log_lines(&spec.log_path)
        );
        fx.runtime.remove(&spec.id).await.unwrap();
        assert!(cgroups::existing_dirs(&cgroup).is_empty());
    });
}

#[test]
fn container_logs_rotate_at_the_size_limit() {
    require_privileges!();
    let fx = Fixture::new();
    block_on(async {
        let mut spec = fx.spec("rotate", &["seq", "1", "2000"]);
        spec.log_max_bytes = 4096;
        spec.log_max_files = 3;
        let exit = run_to_exit(&fx, &spec).await;
        assert_eq!(exit.exit_code, 0);
        let rotated = |n: u32| apiary_runtime::logs::rotated_path(&spec.log_path, n);
        assert!(rotated(1).exists() && rotated(2).exists());
        assert!(!rotated(3).exists(), "more than log_max_files files kept");
        for path in [spec.log_path.clone(), rotated(1), rotated(2)] {
            assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        }
        assert_eq!(
            log_lines(&spec.log_path).last().map(String::as_str),
            Some("2000")
        );
        // What is kept reads back in order, ending with the last line.
        let text: Vec<u8> = futures::StreamExt::collect::<Vec<_>>(apiary_runtime::logs::read(
            &spec.log_path,
            apiary_runtime::logs::LogOptions::default(),
        ))
        .await
        .into_iter()
        .flat_map(|chunk| chunk.unwrap())
        .collect();
        let numbers: Vec<u32> = String::from_utf8(text)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(numbers.last(), Some(&2000));
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "gap or disorder"
        );
    });
}

/// The output lines of `script` run with `security`.
fn confined(fx: &Fixture, name: &str, security: Security, script: &str) -> (i32, Vec<String>) {
    block_on(async {
        let mut spec = fx.spec(name, &["sh", "-c", script]);
        spec.security = security;
        let exit = run_to_exit(fx, &spec).await;
        assert!(exit.message.is_none(), "{name} did not start: {exit:?}");
        (exit.exit_code, log_lines(&spec.log_path))
    })
}

#[test]
fn a_read_only_root_cannot_be_written() {
    require_privileges!();
    let fx = Fixture::new();
    let script = "if touch /tmp/x 2>/dev/null; then echo writable; else echo read-only; fi";
    let read_only = Security {
        read_only_root: true,
        ..Security::default()
    };
    assert_eq!(confined(&fx, "ro-root", read_only, script).1, ["read-only"]);
    assert_eq!(
        confined(&fx, "rw-root", Security::default(), script).1,
        ["writable"]
    );
}

#[test]
fn without_net_raw_no_raw_socket_opens() {
    require_privileges!();
    let fx = Fixture::new();
    // busybox ping opens a raw ICMP socket; without CAP_NET_RAW that is EPERM.
    let script = "ping -c 1 -W 1 127.0.0.1 2>&1; true";
    let dropped = Security {
        capabilities: Security::capabilities_from(&[], &["NET_RAW".to_owned()]),
        ..Security::default()
    };
    let (_, out) = confined(&fx, "no-raw", dropped, script);
    assert!(
        out.iter().any(|l| l.contains("permission denied")),
        "{out:?}"
    );
    let (_, out) = confined(&fx, "raw", Security::default(), script);
    assert!(
        !out.iter().any(|l| l.contains("permission denied")),
        "{out:?}"
    );
}

#[test]
fn runtime_default_seccomp_blocks_new_user_namespaces() {
    require_privileges!();
    let fx = Fixture::new();
    let script = "if unshare -U true 2>/dev/null; then echo unshared; else echo refused; fi; echo still-runs";
    let (_, out) = confined(&fx, "unconfined", Security::default(), script);
    assert_eq!(out, ["unshared", "still-runs"]);
    let default = Security {
        seccomp: Seccomp::RuntimeDefault,
        ..Security::default()
    };
    let (code, out) = confined(&fx, "runtime-default", default.clone(), script);
    assert_eq!(
        (code, out),
        (0, vec!["refused".to_owned(), "still-runs".to_owned()])
    );
    // With no_new_privs the filter is loaded after the capabilities are dropped: the same.
    let strict = Security {
        no_new_privileges: true,
        ..default
    };
    let (code, out) = confined(&fx, "runtime-default-nnp", strict, script);
    assert_eq!(
        (code, out),
        (0, vec!["refused".to_owned(), "still-runs".to_owned()])
    );
}

#[test]
fn no_new_privileges_capabilities_groups_and_sysctls_are_applied() {
    require_privileges!();
    let fx = Fixture::new();
    let security = Security {
        no_new_privileges: true,
        capabilities: Security::capabilities_from(
            &["NET_BIND_SERVICE".to_owned()],
            &["ALL".to_owned()],
        ),
        supplementary_groups: vec![1234, 5678],
        sysctls: BTreeMap::from([("net.ipv4.tcp_syncookies".to_owned(), "2".to_owned())]),
        ..Security::default()
    };
    let script = "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; id -G; cat /proc/sys/net/ipv4/tcp_syncookies";
    let (code, out) = confined(&fx, "confined", security, script);
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(
        out[0].split_whitespace().collect::<Vec<_>>(),
        ["CapEff:", "0000000000000400"],
        "{out:?}"
    );
    assert_eq!(
        out[1].split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"],
        "{out:?}"
    );
    assert_eq!(out[2], "0 1234 5678");
    assert_eq!(out[3], "2");
}

#[test]
fn a_sub_path_symlink_planted_in_a_volume_does_not_reach_the_host() {
    require_privileges!();
    use apiary_node_agent::agent::pods::subpath;
    let fx = Fixture::new();
    // What an earlier container could leave in an emptyDir: links to the host's root.
    let volume = fx.dir.path().join("empty-dir");
    std::fs::create_dir_all(volume.join("logs")).unwrap();
    std::fs::write(volume.join("inside.txt"), "in the volume\n").unwrap();
    std::os::unix::fs::symlink("/", volume.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", volume.join("logs/up")).unwrap();
    let pod_dir = fx.dir.path().join("pod");
    let mut mounts = Vec::new();
    for (index, sub_path) in ["escape", "logs/up"].iter().enumerate() {
        let target = subpath::target(&pod_dir, "data", "c", index);
        subpath::bind(&volume, sub_path, &target).unwrap();
        mounts.push(Mount {
            source: target,
            destination: format!("/data{index}").into(),
            read_only: true,
        });
    }
    block_on(async {
        let mut spec = fx.spec("subpath", &["sh", "-c", "ls /data0; ls /data1"]);
        spec.mounts = mounts;
        let exit = run_to_exit(&fx, &spec).await;
        assert_eq!(exit.exit_code, 0, "{exit:?}");
        // Both resolve to the volume's own root, never the host's.
        assert_eq!(
            log_lines(&spec.log_path),
            [
                "escape",
                "inside.txt",
                "logs",
                "escape",
                "inside.txt",
                "logs"
            ]
        );
    });
    subpath::unmount_all(&pod_dir);
    // Removing the pod's files after the unmount leaves the volume (and the host) alone.
    std::fs::remove_dir_all(&pod_dir).unwrap();
    assert!(volume.join("inside.txt").exists());
}

#[test]
fn volumes_are_mounted_nosuid_and_nodev() {
    require_privileges!();
    let fx = Fixture::new();
    let volume = fx.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let options = |security: Security, name: &str| {
        block_on(async {
            let mut spec = fx.spec(name, &["sh", "-c", "grep ' /data ' /proc/self/mountinfo"]);
            spec.mounts = vec![Mount {
                source: volume.clone(),
                destination: "/data".into(),
                read_only: false,
            }];
            spec.security = security;
            let exit = run_to_exit(&fx, &spec).await;
            assert_eq!(exit.exit_code, 0, "{name}: {exit:?}");
            let line = log_lines(&spec.log_path).join("");
            // The mount's own options: the sixth field.
            line.split_whitespace()
                .nth(5)
                .unwrap_or_default()
                .to_owned()
        })
    };
    let plain = options(Security::default(), "plain");
    assert!(
        plain.contains("nosuid") && plain.contains("nodev"),
        "{plain}"
    );
    let privileged = options(
        Security {
            privileged: true,
            ..Security::default()
        },
        "privileged",
    );
    assert!(!privileged.contains("nodev"), "{privileged}");
}

/// Kills a process left behind by a test that failed.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn host_pid_sees_the_nodes_processes_and_its_leftovers_die_with_its_init() {
    require_privileges!();
    let fx = Fixture::new();
    let node_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let me = std::process::id();
    let script = format!(
        "readlink /proc/self/ns/pid; if test -d /proc/{me}; then echo sees-the-test; else echo sees-its-own; fi"
    );
    block_on(async {
        let own = fx.spec("own-pid", &["sh", "-c", &script]);
        assert_eq!(run_to_exit(&fx, &own).await.exit_code, 0);
        let out = log_lines(&own.log_path);
        assert_ne!(out[0], node_pid_ns.display().to_string(), "{out:?}");
        assert_eq!(out[1], "sees-its-own");

        let mut host = fx.spec("host-pid", &["sh", "-c", &script]);
        host.namespaces.pid = PidNamespace::Host;
        assert_eq!(run_to_exit(&fx, &host).await.exit_code, 0);
        assert_eq!(
            log_lines(&host.log_path),
            [
                node_pid_ns.display().to_string(),
                "sees-the-test".to_owned()
            ]
        );

        // No PID namespace ends with the init: the runtime kills what it left (as containerd
        // does), else the process lives on and the cgroup cannot be removed.
        let mut leaves = fx.spec("host-pid-leaves", &["sh", "-c", "sleep 1000 & echo $!"]);
        leaves.namespaces.pid = PidNamespace::Host;
        fx.runtime.start(&leaves).await.unwrap();
        let state = wait_exit(&fx.runtime, &leaves.id, Duration::from_secs(20)).await;
        assert_eq!(exit_info(&state).exit_code, 0, "{state:?}");
        let pid: i32 = log_lines(&leaves.log_path)[0].parse().unwrap();
        let _leftover = KillOnDrop(Some(pid));
        fx.runtime.remove(&leaves.id).await.unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) state …`: gone, or a zombie not yet reaped.
        let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
        assert!(
            stat.is_empty() || state.starts_with(['Z', 'X']) || !stat.contains("(sleep)"),
            "{stat}"
        );
    });
}

#[test]
fn host_ipc_shares_the_nodes_ipc_namespace_and_shared_memory() {
    require_privileges!();
    let node_ipc_ns = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    let name = format!("apiary-test-{}", std::process::id());
    let shm = Path::new("/dev/shm").join(&name);
    std::fs::write(&shm, "from the node\n").unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(shm);
    let script =
        format!("readlink /proc/self/ns/ipc; cat /dev/shm/{name} 2>/dev/null || echo no-shm");
    for (host_ipc, expected) in [(false, "no-shm"), (true, "from the node")] {
        let fx = Fixture::with_host_ipc(host_ipc);
        assert_eq!(fx.namespaces.ipc.is_none(), host_ipc);
        block_on(async {
            let spec = fx.spec("ipc", &["sh", "-c", &script]);
            assert_eq!(run_to_exit(&fx, &spec).await.exit_code, 0);
            let out = log_lines(&spec.log_path);
            assert_eq!(
                out[0] == node_ipc_ns.display().to_string(),
                host_ipc,
                "{out:?}"
            );
            assert_eq!(out[1], expected, "host_ipc: {host_ipc}");
        });
    }
}

#[test]
fn fs_group_owns_volume_files_and_lets_a_non_root_container_read_and_share_them() {
    require_privileges!();
    use apiary_api::core_v1::{
        ConfigMap, ConfigMapVolumeSource, EmptyDirVolumeSource, Pod, PodSecurityContext, Volume,
    };
    use apiary_node_agent::agent::{env, volumes};
    const FS_GROUP: u32 = 2345;
    let fx = Fixture::new();
    let mut pod = Pod::default();
    pod.metadata.name = "p".into();
    pod.metadata.namespace = "ns".into();
    pod.spec.security_context = Some(PodSecurityContext {
        fs_group: Some(FS_GROUP.into()),
        ..PodSecurityContext::default()
    });
    pod.spec.volumes = vec![
        Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "cfg".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "app".into(),
                default_mode: Some(0o400),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut cm = ConfigMap::default();
    cm.data.insert("a.conf".into(), "for the group".into());
    let mut sources = env::Sources::default();
    sources.config_maps.insert("app".into(), Some(cm));
    let pod_dir = fx.dir.path().join("pod");
    let prepared = volumes::prepare(
        &pod,
        &pod_dir,
        &env::PodFacts::default(),
        &sources,
        &BTreeMap::new(),
    )
    .unwrap();
    block_on(async {
        let mut spec = fx.spec(
            "fs-group",
            &[
                "sh",
                "-c",
                "cat /cfg/a.conf; echo; touch /data/new && ls -ln /data/new",
            ],
        );
        spec.uid = 1000;
        spec.gid = 1000;
        spec.security.supplementary_groups = vec![FS_GROUP];
        spec.mounts = ["data", "cfg"]
            .iter()
            .map(|name| Mount {
                source: prepared[*name].host_path.clone(),
                destination: format!("/{name}").into(),
                read_only: prepared[*name].read_only,
            })
            .collect();
        let exit = run_to_exit(&fx, &spec).await;
        let out = log_lines(&spec.log_path);
        assert_eq!(exit.exit_code, 0, "{out:?}");
        // A 0400 file of root's that the group may read (0440), and a new file that inherits
        // the group from the setgid emptyDir.
        assert_eq!(out[0], "for the group");
        let fields: Vec<&str> = out[1].split_whitespace().collect();
        assert_eq!((fields[2], fields[3]), ("1000", "2345"), "{out:?}");
    });
    volumes::remove_all(&pod_dir).unwrap();
}
