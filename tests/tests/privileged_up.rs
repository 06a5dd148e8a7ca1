//! `apiary up`, the README's demo, and `apiary down`, on a lab namespace standing in for a
//! machine.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use apiary_tests::{
    cluster::binary,
    demo::{fetch, manifest, wait_for_demo},
    lab::{ip, tc_programs},
    machine::LabMachine,
    require_privileges,
};

/// `apiary down` for the data dir `.2` on machine `.1` (the first machine's when `None`), even
/// when an assertion fails half-way.
struct Down<'a>(&'a LabMachine, Option<&'a str>, Option<&'a str>);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let done = match (self.1, self.2) {
            (Some(netns), Some(data)) => self.0.apiary_on(netns, &["down", "--data-dir", data]),
            _ => self.0.down(),
        };
        if let Err(e) = done {
            eprintln!("{e:#}");
        }
    }
}

#[test]
fn up_runs_the_demo_and_down_removes_everything() {
    require_privileges!();
    let machine = LabMachine::new().unwrap();
    let data = machine.data_dir().display().to_string();
    let up = machine.apiary(&["up", "--data-dir", &data, "--timeout", "90"]);
    let down = Down(&machine, None, None);
    let said = up.unwrap();
    assert!(said.contains("is Ready"), "{said}");
    assert!(
        said.contains(&machine.kubeconfig().display().to_string()),
        "{said}"
    );
    // `apiary status`: both processes run, the agent is healthy, the node Ready.
    let status = machine.apiary(&["status", "--data-dir", &data]).unwrap();
    eprintln!("{said}\napiary status:\n{status}");
    let row = |what: &str| {
        status
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("a row for the {what}: {status}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let version = env!("CARGO_PKG_VERSION");
    let control_plane = row("control plane");
    assert_eq!(control_plane[3..], ["running", version, "-"], "{status}");
    let agent = row("node agent");
    assert_eq!(agent[3..], ["running", version, "ok"], "{status}");
    let node = status
        .lines()
        .skip_while(|l| !l.starts_with("NODE"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        node.contains(" True ") && node.contains("KubeletReady"),
        "{status}"
    );
    assert_eq!(status.matches("\n  last error: ").count(), 2, "{status}");

    // The README's demo: import the test image, apply the manifest, reach every web pod.
    let archive = machine.dir.path().join("busybox.tar");
    apiary_images::build::busybox_archive(&archive).unwrap();
    let root = machine.data_dir().join("images").display().to_string();
    machine
        .apiary(&[
            "image",
            "import",
            &archive.display().to_string(),
            "--root",
            &root,
        ])
        .unwrap();
    let kubeconfig = machine.kubeconfig().display().to_string();
    machine
        .apiary(&[
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "-f",
            &manifest().display().to_string(),
        ])
        .unwrap();
    let ips = wait_for_demo(&machine, Duration::from_secs(90)).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(machine.data_dir().join("logs/node-agent.log"))
            .unwrap_or_default();
        panic!("{e:#}\n{}", &log[log.len().saturating_sub(4000)..])
    });
    for ip in &ips {
        let page = fetch(&machine, ip).unwrap();
        assert!(
            page.starts_with("Hello from Apiary!\nserved by web-"),
            "{page}"
        );
    }
    // The README's `kubectl logs -l app=web`: the web pods logged the requests they served
    // (readiness probes from the node, the client's requests from its pod IP).
    let logs = machine.kubectl_ok(&["logs", "-l", "app=web"]).unwrap();
    assert!(logs.contains("response:200"), "httpd's request log: {logs}");
    agent_api_is_the_api_servers_only(&machine);

    // Down: nothing of the cluster is left on the machine.
    drop(down);
    let links = ip(&["-n", &machine.netns, "-o", "link", "show"]).unwrap();
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or_default())
        })
        .collect();
    assert_eq!(names, ["lo", "eth0"], "only the machine's own links remain");
    let tc = tc_programs(&machine.netns, "eth0").unwrap_or_default();
    assert!(
        tc.is_empty(),
        "no BPF program on the machine's interface: {tc:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&machine.dir.path().display().to_string()),
        "no mount under the data dir is left"
    );
    let procs = Command::new("pgrep").args(["-f", &data]).output().unwrap();
    assert!(procs.stdout.is_empty(), "no process of the cluster is left");
}

/// The node agent's API on a real agent: `kubectl exec` and `logs` go through the API server
/// (which the agent lets in by its client certificate, after verifying the agent's serving
/// certificate, issued through an automatically approved CSR); straight to the agent's port,
/// no credential and a viewer's token are refused.
fn agent_api_is_the_api_servers_only(machine: &LabMachine) {
    let said = machine
        .kubectl_ok(&["exec", "client", "--", "echo", "through the API server"])
        .unwrap();
    assert_eq!(said, "through the API server\n");
    let csrs: serde_json::Value =
        serde_json::from_str(&machine.kubectl_ok(&["get", "csr", "-o", "json"]).unwrap()).unwrap();
    let serving = csrs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|csr| csr["spec"]["signerName"] == "kubernetes.io/kubelet-serving")
        .unwrap_or_else(|| panic!("the agent asked for its serving certificate: {csrs}"));
    assert!(
        serving["spec"]["username"]
            .as_str()
            .unwrap()
            .starts_with("system:node:"),
        "{serving}"
    );
    assert_eq!(
        serving["status"]["conditions"][0]["type"], "Approved",
        "{serving}"
    );
    assert!(serving["status"]["certificate"].is_string(), "{serving}");

    let node_ip = machine
        .kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}",
        ])
        .unwrap();
    let web = machine
        .kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .unwrap();
    let url = format!("https://{node_ip}:10250/containerLogs/default/{web}/httpd");
    let curl = |extra: &[&str]| {
        let mut args = vec!["-sk", "-w", "\n%{http_code}", url.as_str()];
        args.extend_from_slice(extra);
        let out = machine.run(Path::new("curl"), &args).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "Unauthorized\n401");
    assert_eq!(
        curl(&["-H", "Authorization: Bearer not-a-token"]),
        "Unauthorized\n401"
    );
    // (From a manifest: `kubectl create serviceaccount` sends protobuf, which is not served.)
    let viewer = machine.dir.path().join("viewer.yaml");
    std::fs::write(
        &viewer,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: viewer, namespace: default}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: viewer-view}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{kind: ServiceAccount, name: viewer, namespace: default}]\n",
    )
    .unwrap();
    machine
        .kubectl_ok(&["apply", "-f", &viewer.display().to_string()])
        .unwrap();
    let token = machine.kubectl_ok(&["create", "token", "viewer"]).unwrap();
    let bearer = format!("Authorization: Bearer {}", token.trim());
    assert_eq!(
        curl(&["-H", &bearer]),
        "Forbidden (user=system:serviceaccount:default:viewer, verb=get, resource=nodes, subresource=proxy)\n403"
    );
    // The same viewer reads the same log through the API server (pods/log is in view).
    let kubeconfig = machine.kubeconfig().display().to_string();
    let out = machine
        .run(
            Path::new("kubectl"),
            &[
                "--kubeconfig",
                &kubeconfig,
                "--token",
                token.trim(),
                "logs",
                &web,
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 12: an agent that registered and then died (no cgroup v2 hierarchy here) left `apiary up`
/// saying "node vm is Ready" and the node Ready for 40 s.
#[test]
fn up_fails_with_the_agents_error_when_the_agent_cannot_start() {
    require_privileges!();
    let machine = LabMachine::new().unwrap();
    let data = machine.data_dir().display().to_string();
    // A machine without cgroup v2: `apiary up` in a mount namespace of its own where every
    // cgroup2 mount is gone and /sys/fs/cgroup is an empty tmpfs (the host keeps its own).
    let script = r#"set -e
for m in $(grep ' - cgroup2 ' /proc/self/mountinfo | cut -d' ' -f5); do
    umount -l "$m" 2>/dev/null || true
done
mount -t tmpfs none /sys/fs/cgroup
exec nsenter --net="/run/netns/$1" "$2" up --data-dir "$3" --timeout 90"#;
    let started = Instant::now();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&machine.netns)
        .arg(binary("apiary"))
        .arg(&data)
        .output()
        .unwrap();
    let _down = Down(&machine, None, None);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("apiary up failed after {took:?}:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("is Ready"), "{stdout}");
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        error.starts_with("error: the node agent exited: no cgroup v2 hierarchy is mounted"),
        "the agent's error line: {stderr}"
    );
    assert!(error.contains("apiary down --data-dir"), "{error}");

    // Before exiting, the agent said why: the node is NotReady at once, not after 40 s.
    let ready = machine
        .kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].status.conditions[?(@.type=='Ready')].status} {.items[0].status.conditions[?(@.type=='Ready')].message}",
        ])
        .unwrap();
    assert!(
        ready.starts_with("False the node agent stopped: no cgroup v2 hierarchy is mounted"),
        "{ready}"
    );
    // `apiary status` shows the same, and fails.
    let status = machine
        .run(&binary("apiary"), &["status", "--data-dir", &data])
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    eprintln!("apiary status:\n{said}");
    assert_eq!(status.status.code(), Some(1), "{said}");
    let agent = said
        .lines()
        .find(|l| l.starts_with("node agent "))
        .unwrap_or_default();
    assert!(agent.contains(" exited "), "{said}");
    assert!(
        said.contains("last error: no cgroup v2 hierarchy is mounted"),
        "{said}"
    );
    assert!(said.contains("False"), "{said}");
}

#[test]
fn node_join_adds_a_second_machine() {
    require_privileges!();
    let mut machine = LabMachine::new().unwrap();
    let second = machine.add_machine().unwrap();
    let data = machine.data_dir().display().to_string();
    let up = machine.apiary(&["up", "--data-dir", &data, "--timeout", "90"]);
    let _down = Down(&machine, None, None);
    up.unwrap();
    let second_data = machine.dir.path().join("second").display().to_string();
    // The local agent is its own node, not the admin.
    let local_node = machine.data_dir().join("node.kubeconfig");
    let whoami = machine
        .run(
            std::path::Path::new("/usr/bin/kubectl"),
            &[
                "--kubeconfig",
                &local_node.display().to_string(),
                "auth",
                "whoami",
                "-o",
                "json",
            ],
        )
        .unwrap();
    let whoami: serde_json::Value = serde_json::from_slice(&whoami.stdout).unwrap();
    let user = whoami["status"]["userInfo"]["username"]
        .as_str()
        .unwrap_or_default();
    assert!(user.starts_with("system:node:"), "{whoami}");
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        serde_json::json!(["system:nodes", "system:authenticated"])
    );
    // `token create` prints the join command: the token on stdin, the CA pinned by hash.
    let admin = machine.kubeconfig().display().to_string();
    let command = machine
        .apiary(&["--kubeconfig", &admin, "token", "create", "--ttl", "1h"])
        .unwrap();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[0], "echo", "{command}");
    let token = words[1];
    let after = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
    assert_eq!(after("--token-file"), "-", "{command}");
    let hash = after("--ca-cert-hash");
    let token_file = machine.dir.path().join("join.token");
    std::fs::write(&token_file, token).unwrap();
    let token_file = token_file.display().to_string();
    let join = |hash: &str, token_file: &str| {
        machine.apiary_on(
            &second,
            &[
                "node",
                "join",
                "--server",
                "https://10.123.0.1:6443",
                "--token-file",
                token_file,
                "--ca-cert-hash",
                hash,
                "--data-dir",
                &second_data,
                "--node-name",
                "second",
                "--timeout",
                "90",
            ],
        )
    };
    // A wrong CA hash fails closed, before the token is used: no CSR is made.
    let csrs_before = machine.kubectl_ok(&["get", "csr", "-o", "name"]).unwrap();
    let wrong = join(&format!("sha256:{}", "0".repeat(64)), &token_file).unwrap_err();
    assert!(
        format!("{wrong:#}").contains("refusing to join"),
        "{wrong:#}"
    );
    assert_eq!(
        machine.kubectl_ok(&["get", "csr", "-o", "name"]).unwrap(),
        csrs_before
    );
    // An expired token joins nothing.
    let short = machine
        .apiary(&["--kubeconfig", &admin, "token", "create", "--ttl", "1s"])
        .unwrap();
    let expired_file = machine.dir.path().join("expired.token");
    std::fs::write(&expired_file, short.split_whitespace().nth(1).unwrap()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let refused = join(hash, &expired_file.display().to_string()).unwrap_err();
    eprintln!("join with an expired token: {refused:#}");
    let _ = machine.apiary_on(&second, &["down", "--data-dir", &second_data]);
    let joined = join(hash, &token_file);
    let leave = Down(&machine, Some(&second), Some(&second_data));
    let said = joined.unwrap();
    assert!(said.contains("node second joined"), "{said}");

    // The archive goes into both machines' stores; pods on both reach each other.
    let archive = machine.dir.path().join("busybox.tar");
    apiary_images::build::busybox_archive(&archive).unwrap();
    for root in [
        machine.data_dir().join("images"),
        machine.dir.path().join("second/images"),
    ] {
        machine
            .apiary(&[
                "image",
                "import",
                &archive.display().to_string(),
                "--root",
                &root.display().to_string(),
            ])
            .unwrap();
    }
    let first = machine
        .kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[?(@.metadata.name!='second')].metadata.name}",
        ])
        .unwrap();
    for (pod, node) in [("on-first", first.trim()), ("on-second", "second")] {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, 'hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']\n"
        );
        let path = machine.dir.path().join(format!("{pod}.yaml"));
        std::fs::write(&path, manifest).unwrap();
        machine
            .kubectl_ok(&["apply", "-f", &path.display().to_string()])
            .unwrap();
    }
    let ip_of = |pod: &str| {
        apiary_tests::cluster::wait("a running pod", Duration::from_secs(60), || {
            let ip = machine
                .kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
                .ok()?;
            let ready = machine
                .kubectl_ok(&[
                    "get",
                    "pod",
                    pod,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                ])
                .ok()?;
            (ready == "True" && !ip.is_empty()).then_some(ip)
        })
        .unwrap()
    };
    let second_ip = ip_of("on-second");
    ip_of("on-first");
    let page = machine
        .kubectl_ok(&[
            "exec",
            "on-first",
            "--",
            "timeout",
            "5",
            "wget",
            "-qO-",
            &format!("http://{second_ip}:8080/"),
        ])
        .unwrap();
    assert_eq!(page.trim(), "on-second");
    drop(leave);
}

/// `apiary up --ha`: three etcd members and three control planes on the machine; the agent
/// knows every API server, and losing the first control plane loses nothing.
#[test]
fn up_ha_runs_three_control_planes_on_etcd_and_loses_none_with_one() {
    require_privileges!();
    let machine = LabMachine::new().unwrap();
    let data = machine.data_dir().display().to_string();
    let up = machine.apiary(&["up", "--ha", "--data-dir", &data, "--timeout", "120"]);
    let down = Down(&machine, None, None);
    let said = up.unwrap();
    assert!(said.contains("is Ready"), "{said}");
    let status = machine.apiary(&["status", "--data-dir", &data]).unwrap();
    eprintln!("{said}\napiary status:\n{status}");
    let running = |what: &str| {
        status
            .lines()
            .filter(|l| l.starts_with(what) && l.contains(" running "))
            .count()
    };
    assert_eq!(running("control plane"), 3, "{status}");
    assert_eq!(running("etcd member"), 3, "{status}");

    // Every control plane serves, and is an endpoint of default/kubernetes.
    let ports = || -> Vec<u64> {
        let endpoints = machine
            .kubectl_ok(&["get", "endpoints", "kubernetes", "-o", "json"])
            .unwrap_or_default();
        let endpoints: serde_json::Value = serde_json::from_str(&endpoints).unwrap_or_default();
        let mut ports: Vec<u64> = endpoints["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["ports"][0]["port"].as_u64())
            .collect();
        ports.sort_unstable();
        ports
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ports() != [6443, 6444, 6445] {
        assert!(Instant::now() < deadline, "endpoints: {:?}", ports());
        std::thread::sleep(Duration::from_millis(500));
    }

    // The first control plane dies: the others serve, and the node's heartbeats go on.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(machine.data_dir().join("cluster.json")).unwrap(),
    )
    .unwrap();
    let first = state["control_plane_pid"].as_u64().unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let server = |port: u16| {
        let kubeconfig = std::fs::read_to_string(machine.kubeconfig()).unwrap();
        let url = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        format!("{}:{port}", url.rsplit_once(':').unwrap().0)
    };
    let renewed = |port: u16| -> Option<String> {
        let lease = machine
            .kubectl_ok(&[
                "--server",
                &server(port),
                "-n",
                "kube-node-lease",
                "get",
                "leases",
                "-o",
                "jsonpath={.items[0].spec.renewTime}",
            ])
            .ok()?;
        Some(lease.trim().to_owned()).filter(|l| !l.is_empty())
    };
    let before = renewed(6444).expect("the second control plane serves");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = renewed(6445);
        if now.as_ref().is_some_and(|now| *now != before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node's lease was not renewed through the live control planes: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let nodes = machine
        .kubectl_ok(&["--server", &server(6444), "get", "nodes"])
        .unwrap();
    assert!(nodes.contains(" Ready "), "{nodes}");

    drop(down);
    let procs = Command::new("pgrep").args(["-f", &data]).output().unwrap();
    assert!(procs.stdout.is_empty(), "no process of the cluster is left");
}
