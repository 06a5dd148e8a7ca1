//! `kubectl port-forward` to real pods (youki, busybox `httpd`) on a one-node lab cluster: kubectl
//! listens in the lab's underlay namespace, the agent dials inside the pod's network namespace.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use apiary_tests::{cluster::ClusterLab, lab::nsenter, require_privileges};

const IMAGE: &str = "localhost/busybox:latest";

fn httpd_pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#
    )
}

/// `kubectl port-forward` in the underlay namespace until dropped; stderr in a file.
struct PortForward {
    child: Child,
    stderr: tempfile::NamedTempFile,
}

impl PortForward {
    fn start(cluster: &ClusterLab, pod: &str, ports: &str) -> Self {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let child = cluster
            .kubectl_command(&["port-forward", pod, ports])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap()
    }

    /// Fails the test, with kubectl's words, if kubectl has given up.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("kubectl port-forward exited ({status}): {}", self.stderr());
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET of `url` from the underlay namespace (where kubectl listens), with the busybox that
/// `cargo xtask setup` installs: the body, or why not.
fn http_get(cluster: &ClusterLab, url: &str) -> Result<String, String> {
    let out = get_command(cluster, url).output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn get_command(cluster: &ClusterLab, url: &str) -> std::process::Command {
    // coreutils' timeout, not wget's -T: Debian's busybox 1.35 crashes on it.
    let mut command = nsenter(&cluster.underlay, "timeout");
    command.args(["20", "busybox", "wget", "-q", "-O", "-", url]);
    command
}

/// Polls `check` until it holds, for at most `seconds`.
fn eventually(what: &str, seconds: u64, mut check: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn privileged_kubectl_port_forward_reaches_httpd_in_the_pod() {
    require_privileges!();
    let cluster = ClusterLab::start(1).unwrap();
    let node = cluster.nodes()[0].name.clone();
    cluster.apply(&httpd_pod("web", &node)).unwrap();
    let pod = cluster
        .wait_ready("default", "web", Duration::from_secs(60))
        .unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();

    let mut forward = PortForward::start(&cluster, "pod/web", "18080:8080");
    let page = eventually("the forwarded port to answer", 30, || {
        forward.assert_running();
        http_get(&cluster, "http://127.0.0.1:18080/index.html").ok()
    });
    assert_eq!(page, "hello from web\n", "kubectl: {}", forward.stderr());

    // Connections at once, each its own pair of streams.
    let parallel: Vec<_> = (0..4)
        .map(|_| {
            get_command(&cluster, "http://127.0.0.1:18080/index.html")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in parallel {
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from web\n");
    }

    // A port nothing listens on: the kubelet's error, naming the pod's network namespace.
    let refused = PortForward::start(&cluster, "pod/web", "18081:9999");
    eventually("kubectl to listen", 30, || {
        match http_get(&cluster, "http://127.0.0.1:18081/") {
            Err(e) if e.contains("can't connect") => None,
            _ => Some(String::new()),
        }
    });
    let stderr = eventually("kubectl's error", 30, || {
        let stderr = refused.stderr();
        stderr.contains("lost connection to pod").then_some(stderr)
    });
    for expected in [
        format!(
            "an error occurred forwarding 18081 -> 9999: error forwarding port 9999 to pod {uid}, uid : failed to execute portforward in network namespace"
        ),
        format!(
            r#"failed to connect to localhost:9999 inside namespace \"{uid}\", IPv4: dial tcp4 127.0.0.1:9999: connect: connection refused IPv6 dial tcp6 [::1]:9999: connect: "#
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nnot in: {stderr}");
    }
    // The first session is untouched by the other's failure.
    assert_eq!(
        http_get(&cluster, "http://127.0.0.1:18080/index.html").unwrap(),
        "hello from web\n"
    );
}
