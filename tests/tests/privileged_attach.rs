//! `kubectl attach` and `kubectl run -i` to real containers (youki, busybox) on a one-node lab
//! cluster: output follows the running container, stdin reaches a container with `stdin: true`.

use std::{
    io::Write as _,
    process::Stdio,
    time::{Duration, Instant},
};

use apiary_tests::{cluster::ClusterLab, require_privileges};

const IMAGE: &str = "localhost/busybox:latest";

fn pod(name: &str, node: &str, container: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
{container}
"#
    )
}

/// A pseudo-terminal: (master, slave).
fn pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd as _;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the integers it is given; the null name,
    // termios and window size are optional.
    let done = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(done, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded: both are open descriptors that nothing else owns.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    }
}

/// kubectl's exit code, stdout and stderr, with `stdin` written and closed.
fn kubectl(cluster: &ClusterLab, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = cluster
        .kubectl_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn privileged_kubectl_attach_follows_output_and_feeds_stdin() {
    require_privileges!();
    let cluster = ClusterLab::start(1).unwrap();
    let node = cluster.nodes()[0].name.clone();
    cluster
        .apply(&pod(
            "ticker",
            &node,
            r#"    command: [sh, -c, "echo started; while true; do echo tick; sleep 0.3; done"]"#,
        ))
        .unwrap();
    cluster
        .apply(&pod(
            "reader",
            &node,
            "    stdin: true\n    stdinOnce: true\n    command: [sh, -c, \"read line; echo got $line\"]",
        ))
        .unwrap();
    cluster
        .apply(&pod(
            "terminal",
            &node,
            "    stdin: true\n    tty: true\n    command: [sh, -c, \"while true; do echo out; echo err >&2; sleep 0.3; done\"]",
        ))
        .unwrap();
    for name in ["ticker", "reader", "terminal"] {
        cluster
            .wait_ready("default", name, Duration::from_secs(60))
            .unwrap();
    }

    // Output from the moment of attaching, for as long as the client stays.
    let mut attached = cluster
        .kubectl_command(&["attach", "ticker"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        attached.try_wait().unwrap().is_none(),
        "attach stays while the container runs"
    );
    attached.kill().unwrap();
    let out = attached.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.matches("tick\n").count() >= 3,
        "{seen:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !seen.contains("started"),
        "only output after attaching: {seen:?}"
    );

    // stdin: the container had been blocked reading it (the pipe stays open until an attach).
    let (code, stdout, stderr) = kubectl(&cluster, &["attach", "-i", "reader"], "hello\n");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "got hello\n", "{stderr}");
    cluster
        .wait_pod(
            "default",
            "reader",
            "the container to finish",
            Duration::from_secs(30),
            |p| p["status"]["phase"] == "Succeeded",
        )
        .unwrap();

    // A terminal session has one output: `attach -it` on a terminal of kubectl's own sees
    // both of the container's streams there.
    let (master, slave) = pty();
    let mut attached = cluster
        .kubectl_command(&["attach", "-it", "terminal"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut master = std::fs::File::from(master);
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        // EIO once kubectl, the last holder of the terminal, has exited.
        while let Ok(n @ 1..) = master.read(&mut buffer) {
            seen.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    std::thread::sleep(Duration::from_secs(4));
    attached.kill().unwrap();
    let out = attached.wait_with_output().unwrap();
    let seen = reader.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        seen.contains("out") && seen.contains("err"),
        "{seen:?}: {stderr}"
    );
    assert!(
        !stderr.contains("err\n"),
        "nothing on kubectl's stderr: {stderr}"
    );

    // `kubectl run -i --rm` creates a pod with stdin and stdinOnce, attaches, then deletes it.
    let started = Instant::now();
    let (code, stdout, stderr) = kubectl(
        &cluster,
        &[
            "run",
            "once",
            "-i",
            "--rm",
            "--restart=Never",
            &format!("--image={IMAGE}"),
            "--image-pull-policy=IfNotPresent",
            &format!("--overrides={{\"spec\":{{\"nodeName\":\"{node}\"}}}}"),
            "--",
            "sh",
            "-c",
            "read line; echo got $line",
        ],
        "from run\n",
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("got from run\n"), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
