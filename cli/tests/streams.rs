//! `apiary logs` and `apiary exec` against the real control plane, proxying to a node agent's
//! server that runs in this process with local files and processes as its containers.

#[path = "../../control-plane/tests/integration/local_pods/mod.rs"]
mod local_pods;
mod support;

use std::process::Command;

use local_pods::{Agent, node, pod};
use support::Cluster;

fn kubectl(cluster: &Cluster, args: &[&str], stdin: &str) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster with node `n1` served by an in-process agent, and pods `web` (one container,
/// `app`), `duo` (`a`, `b`) on it and `lost` on no node.
fn setup() -> (Cluster, Agent) {
    let cluster = Cluster::start();
    let agent = Agent::start("n1", &cluster.kubeconfig(), &cluster.token());
    let node = node("n1", agent.addr.port());
    kubectl(&cluster, &["create", "-f", "-"], &node);
    let status: serde_json::Value = serde_json::from_str(&node).unwrap();
    let patch = serde_json::json!({ "status": status["status"] }).to_string();
    kubectl(
        &cluster,
        &[
            "patch",
            "node",
            "n1",
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
        "",
    );
    for (name, node, containers) in [
        ("web", Some("n1"), &["app"][..]),
        ("duo", Some("n1"), &["a", "b"][..]),
        ("lost", None, &["app"][..]),
    ] {
        kubectl(
            &cluster,
            &["create", "-f", "-"],
            &pod(name, node, containers),
        );
        agent.pods.add_pod("default", name, containers);
    }
    (cluster, agent)
}

#[test]
fn apiary_logs_tail_follow_and_errors() {
    let (cluster, agent) = setup();
    agent
        .pods
        .append("default", "web", "app", "one\ntwo\nthree\n");
    agent.pods.append("default", "duo", "b", "from b\n");
    assert_eq!(cluster.ok(&["logs", "web"]), "one\ntwo\nthree\n");
    assert_eq!(cluster.ok(&["logs", "pod/web", "--tail", "1"]), "three\n");
    assert_eq!(cluster.ok(&["logs", "duo", "-c", "b"]), "from b\n");
    let stamped = cluster.ok(&["logs", "web", "--timestamps"]);
    assert!(stamped.ends_with("Z three\n"), "{stamped}");

    let mut follow = cluster.spawn(&["logs", "-f", "web"]);
    follow.read_until(|s| s.ends_with("three\n"), 20);
    agent.pods.append("default", "web", "app", "four\n");
    follow.read_until(|s| s == "one\ntwo\nthree\nfour\n", 20);

    assert_eq!(
        cluster.fails(&["logs", "duo"], None),
        "Error from server (BadRequest): a container name must be specified for pod duo, choose one of: [a b]"
    );
    assert_eq!(
        cluster.fails(&["logs", "duo", "-c", "c"], None),
        "Error from server (BadRequest): container c is not valid for pod duo"
    );
    assert_eq!(
        cluster.fails(&["logs", "lost"], None),
        "Error from server (BadRequest): pod lost does not have a host assigned"
    );
}

#[test]
fn apiary_exec_streams_stdin_and_exit_codes() {
    let (cluster, _agent) = setup();
    let out = cluster.run(
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
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let input = "line\n".repeat(10_000);
    let out = cluster.run(&["exec", "-i", "web", "--", "wc", "-l"], Some(&input));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10000");

    let out = cluster.run(&["exec", "-c", "b", "duo", "--", "echo", "in b"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in b\n");

    assert_eq!(
        cluster.fails(&["exec", "duo", "-c", "c", "--", "true"], None),
        "Error from server (BadRequest): container c is not valid for pod duo"
    );
    assert_eq!(
        cluster.fails(&["exec", "lost", "--", "true"], None),
        "Error from server (BadRequest): pod lost does not have a host assigned"
    );
    // Measured: the round trip of a trivial exec through apiary, API server and agent.
    let runs = 5;
    let started = std::time::Instant::now();
    for _ in 0..runs {
        assert_eq!(
            cluster
                .run(&["exec", "web", "--", "true"], None)
                .status
                .code(),
            Some(0)
        );
    }
    eprintln!(
        "apiary exec web -- true: {:?} per run (mean of {runs})",
        started.elapsed() / runs
    );

    // A pod the agent does not run.
    kubectl(
        &cluster,
        &["create", "-f", "-"],
        &pod("ghost", Some("n1"), &["app"]),
    );
    assert_eq!(
        cluster.fails(&["exec", "ghost", "--", "true"], None),
        r#"error: pods "ghost" not found"#
    );

    // -t without a terminal on stdin: warned, then run without one.
    let out = cluster.run(&["exec", "-t", "web", "--", "echo", "plain"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n");
}

#[test]
fn apiary_exec_t_runs_on_a_remote_terminal_of_the_local_size() {
    use std::{io::Read as _, process::Stdio};
    let (cluster, _agent) = setup();
    let size = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 77,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let on_pty = || Stdio::from(pty.slave.try_clone().unwrap());
    // The command starts before the first resize can arrive: wait for it.
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do s=$(stty size); [ \"$s\" != '0 0' ] && break; sleep 0.2; done; echo \"size $s\"; test -t 0 && echo on-a-tty; exit 4";
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["exec", "-i", "-t", "web", "--", "sh", "-c", script])
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
        // EIO once apiary, the last holder of the terminal, has exited.
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
    assert_eq!(status.code(), Some(4), "{seen:?} {stderr}");
    assert!(seen.contains("size 33 77"), "{seen:?}");
    assert!(seen.contains("on-a-tty"), "{seen:?}");
}
