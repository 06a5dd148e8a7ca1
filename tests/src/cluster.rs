//! A real cluster in a lab: the control plane in the lab's underlay namespace (on the underlay
//! bridge, at [`CONTROL_PLANE_IP`]), and one node agent per node namespace, each started with
//! `nsenter --net` so that it lives in its node's network namespace but shares the machine's
//! mounts (bpffs, cgroups, the container rootfs mounts), as agents on separate machines would
//! each see their own.
//!
//! kubectl runs in the underlay namespace too. Everything is removed on drop: processes are
//! killed, each node is reset (`apiary-node-agent reset`: containers, sandboxes, veths, IP
//! leases, BPF pins, cgroups), then the lab's namespaces go.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::lab::{Lab, Node, ip, nsenter};

/// The control plane's address on the underlay.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(10, 123, 0, 254);
/// Where [`ClusterLab::start_registry`] serves images: the control plane's address, port 5000.
pub const REGISTRY: &str = "10.123.0.254:5000";
/// Addresses for LoadBalancer Services of lab clusters (clients route them to a node).
pub const LOADBALANCER_POOL: &str = "10.123.64.0/24";
/// Pod CIDRs of lab clusters: node *k* gets `10.123.(127+k).0/24`, inside the lab's range.
pub const CLUSTER_CIDR: &str = "10.123.128.0/17";

/// Where `cargo build` put the workspace's binaries: `target/<profile>/`, which holds the
/// running executable's `deps` directory (tests) or the executable itself (`apiary-lab`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target/<profile>[/deps]");
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>/deps")
    } else {
        dir
    };
    dir.join(name)
}

/// Who runs the lab's API servers.
pub enum ControlPlanes<'a> {
    /// One `apiary-control-plane` on the embedded store at [`CONTROL_PLANE_IP`], given these
    /// flags besides the lab's own; the lab kills and restarts it.
    One(&'a [&'a str]),
    /// The caller starts them in the underlay namespace (named first) with the lab's
    /// directory (second) at hand, and returns the first one's data dir (its `kubeconfig` and
    /// `pki/` are the cluster's). They must use [`CLUSTER_CIDR`]; the caller stops them.
    #[allow(clippy::type_complexity, reason = "a one-off callback")]
    Started(Box<dyn FnOnce(&str, &Path) -> anyhow::Result<PathBuf> + 'a>),
}

impl std::fmt::Debug for ControlPlanes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::One(flags) => f.debug_tuple("One").field(flags).finish(),
            Self::Started(_) => f.write_str("Started(..)"),
        }
    }
}

/// A node of the cluster: its namespace and its agent.
#[derive(Debug)]
pub struct ClusterNode {
    pub node: Node,
    pub name: String,
    agent: Option<Child>,
    args: Vec<String>,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub cgroup_parent: String,
    /// The agent's static pod manifests (`--manifests`).
    pub manifests: PathBuf,
    pub log: PathBuf,
}

/// A control plane and node agents in a lab.
#[derive(Debug)]
pub struct ClusterLab {
    // Dropped last (fields drop in order): processes and node state go first.
    nodes: Vec<ClusterNode>,
    registry: Option<Child>,
    control_plane: Option<Child>,
    control_plane_args: Vec<String>,
    /// Flags every agent gets besides the lab's own.
    agent_flags: Vec<String>,
    pub kubeconfig: PathBuf,
    /// The admin kubeconfig with the cluster token (for tools that want a token; the admin
    /// kubeconfig holds a client certificate).
    pub node_kubeconfig: PathBuf,
    /// What agents start from: a bootstrap token, with which each gets its own client
    /// certificate (`system:node:<name>`), as on a node that joined.
    pub bootstrap_kubeconfig: PathBuf,
    pub underlay: String,
    pub dir: tempfile::TempDir,
    pub lab: Lab,
}

impl ClusterLab {
    /// Starts a control plane and `nodes` agents, with the busybox test image in a store all
    /// agents share, and waits until every node is Ready.
    pub fn start(nodes: usize) -> anyhow::Result<Self> {
        Self::start_with(nodes, &[])
    }

    /// [`ClusterLab::start`] with more flags for the control plane (shorter grace periods…).
    pub fn start_with(nodes: usize, control_plane_flags: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_agents(nodes, control_plane_flags, &[])
    }

    /// [`ClusterLab::start_with`], and more flags for every agent.
    pub fn start_with_agents(
        nodes: usize,
        control_plane_flags: &[&str],
        agent_flags: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_on(nodes, ControlPlanes::One(control_plane_flags), agent_flags)
    }

    /// Starts the lab, its control plane(s) as `control_planes` says, and `nodes` agents given
    /// `agent_flags` besides the lab's own.
    pub fn start_on(
        nodes: usize,
        control_planes: ControlPlanes<'_>,
        agent_flags: &[&str],
    ) -> anyhow::Result<Self> {
        for bin in ["apiary-control-plane", "apiary-node-agent", "apiary-shim"] {
            if !binary(bin).exists() {
                bail!(
                    "{} is missing: run `cargo build --workspace` first",
                    binary(bin).display()
                );
            }
        }
        let mut lab = Lab::new()?;
        let underlay = lab.underlay_netns()?;
        ip(&[
            "-n",
            &underlay,
            "addr",
            "add",
            &format!("{CONTROL_PLANE_IP}/24"),
            "dev",
            "ul0",
        ])?;
        let dir = tempfile::Builder::new()
            .prefix("apiary-cluster-")
            .tempdir()?;
        let images = dir.path().join("images");
        let archive = dir.path().join("busybox.tar");
        apiary_images::build::busybox_archive(&archive).context("building the busybox image")?;
        apiary_images::ImageStore::open(&images)?
            .import(&archive)
            .context("importing the busybox image")?;
        let (cp_dir, control_plane, control_plane_args) = match control_planes {
            ControlPlanes::One(flags) => {
                let cp_dir = dir.path().join("control-plane");
                let mut args: Vec<String> = vec![
                    "--data-dir".into(),
                    cp_dir.display().to_string(),
                    "--listen".into(),
                    format!("{CONTROL_PLANE_IP}:6443"),
                    "--cluster-cidr".into(),
                    CLUSTER_CIDR.into(),
                    "--loadbalancer-pool".into(),
                    LOADBALANCER_POOL.into(),
                ];
                args.extend(flags.iter().map(|f| (*f).to_owned()));
                let child = spawn_in(
                    &underlay,
                    &binary("apiary-control-plane"),
                    &args,
                    &dir.path().join("control-plane.log"),
                )?;
                (cp_dir, Some(child), args)
            }
            ControlPlanes::Started(start) => (start(&underlay, dir.path())?, None, Vec::new()),
        };
        let kubeconfig = cp_dir.join("kubeconfig");
        let mut cluster = Self {
            nodes: Vec::new(),
            registry: None,
            control_plane,
            control_plane_args,
            agent_flags: agent_flags.iter().map(|f| (*f).to_owned()).collect(),
            kubeconfig: kubeconfig.clone(),
            node_kubeconfig: cp_dir.join("node.kubeconfig"),
            bootstrap_kubeconfig: cp_dir.join("bootstrap.kubeconfig"),
            underlay,
            dir,
            lab,
        };
        wait(
            "the control plane's kubeconfig",
            Duration::from_secs(30),
            || kubeconfig.exists().then_some(()),
        )?;
        cluster.write_node_kubeconfig(&cp_dir)?;
        for _ in 0..nodes {
            cluster.add_node()?;
        }
        let want = nodes;
        wait("every node Ready", Duration::from_secs(60), || {
            let list = cluster.kubectl_json(&["get", "nodes", "-o", "json"]).ok()?;
            let ready = list["items"]
                .as_array()?
                .iter()
                .filter(|n| {
                    n["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            (ready == want).then_some(())
        })
        .map_err(|e| e.context(cluster.logs()))?;
        // A node is Ready before its serving certificate is approved (as a kubelet's), and
        // until then logs, exec and port-forward to it fail: wait until the API server reaches
        // every agent.
        for node in cluster
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
        {
            let path = format!("/api/v1/nodes/{node}/proxy/metrics");
            wait(
                "every agent's serving certificate",
                Duration::from_secs(60),
                || {
                    let out = cluster.kubectl(&["get", "--raw", &path]).ok()?;
                    out.status.success().then_some(())
                },
            )
            .map_err(|e| e.context(cluster.logs()))?;
        }
        Ok(cluster)
    }

    /// The admin kubeconfig with the cluster token instead of the admin's certificate.
    fn write_node_kubeconfig(&self, cp_dir: &std::path::Path) -> anyhow::Result<()> {
        let mut config: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&self.kubeconfig)?)?;
        let token = std::fs::read_to_string(cp_dir.join("pki/admin.token"))?;
        config["users"][0]["user"] = serde_json::json!({ "token": token.trim() });
        std::fs::write(&self.node_kubeconfig, serde_yaml::to_string(&config)?)?;
        // A bootstrap token for the agents, without expiry: it goes with the lab.
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let (id, secret) = ("labtok", "0123456789abcdef");
        let token_secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "data": {"token-id": b64(id), "token-secret": b64(secret),
                "usage-bootstrap-authentication": b64("true")},
        });
        // The kubeconfig is written just before the server answers.
        wait("the bootstrap token", Duration::from_secs(30), || {
            let created = self
                .kubectl_with_stdin(&["apply", "-f", "-"], Some(&token_secret.to_string()))
                .ok()?;
            created.status.success().then_some(())
        })?;
        config["users"][0]["user"] = serde_json::json!({ "token": format!("{id}.{secret}") });
        std::fs::write(&self.bootstrap_kubeconfig, serde_yaml::to_string(&config)?)?;
        Ok(())
    }

    fn add_node(&mut self) -> anyhow::Result<()> {
        let node = self.lab.add_bare_node(1500)?;
        let name = format!("node{}", node.index);
        let base = self.dir.path().join(&name);
        let data_dir = base.join("data");
        let run_dir = base.join("run");
        let pin_dir = self.lab.pin_dir(&name);
        let cgroup_parent = format!("{}-{name}", self.lab.prefix());
        let args: Vec<String> = vec![
            "run".into(),
            "--kubeconfig".into(),
            base.join("node.kubeconfig").display().to_string(),
            "--bootstrap-kubeconfig".into(),
            self.bootstrap_kubeconfig.display().to_string(),
            "--node-name".into(),
            name.clone(),
            "--node-ip".into(),
            node.underlay_ip.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--pin-dir".into(),
            pin_dir.display().to_string(),
            "--image-root".into(),
            self.dir.path().join("images").display().to_string(),
            "--cgroup-parent".into(),
            cgroup_parent.clone(),
            "--heartbeat-seconds".into(),
            "2".into(),
            "--insecure-registry".into(),
            REGISTRY.into(),
        ];
        let manifests = base.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        // The node's resolver: the lab's own address, never the machine's (lab traffic stays
        // in the lab).
        let resolv_conf = base.join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            format!("nameserver {CONTROL_PLANE_IP}\nsearch lab.test\n"),
        )?;
        let mut args = args;
        args.extend(["--manifests".into(), manifests.display().to_string()]);
        args.extend(["--resolv-conf".into(), resolv_conf.display().to_string()]);
        args.extend(self.agent_flags.iter().cloned());
        let log = base.join("agent.log");
        let agent = spawn_in(&node.netns, &binary("apiary-node-agent"), &args, &log)?;
        self.nodes.push(ClusterNode {
            node,
            name,
            agent: Some(agent),
            args,
            data_dir,
            run_dir,
            pin_dir,
            cgroup_parent,
            manifests,
            log,
        });
        Ok(())
    }

    /// Starts Debian's `docker-registry` in the underlay namespace at [`REGISTRY`] (plain HTTP;
    /// the agents trust it as an insecure registry) and pushes the busybox test image there as
    /// `<REGISTRY>/<repository>`.
    pub fn start_registry(&mut self, repository: &str) -> anyhow::Result<String> {
        let dir = self.dir.path().join("registry");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {REGISTRY}\n",
                dir.join("data").display()
            ),
        )?;
        self.registry = Some(spawn_in(
            &self.underlay,
            Path::new("/usr/bin/docker-registry"),
            &["serve".into(), config.display().to_string()],
            &dir.join("registry.log"),
        )?);
        let target = format!("{REGISTRY}/{repository}");
        let root = self.dir.path().join("images").display().to_string();
        wait(
            "the registry to take the image",
            Duration::from_secs(20),
            || {
                let out = nsenter(&self.underlay, binary("apiary"))
                    .args([
                        "image",
                        "push",
                        "localhost/busybox:latest",
                        &target,
                        "--root",
                        &root,
                    ])
                    .args(["--insecure-registry", REGISTRY])
                    .output()
                    .ok()?;
                out.status.success().then_some(())
            },
        )?;
        Ok(target)
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The process id of node `i`'s agent (`nsenter` execs it, so it is the child's), while it
    /// runs.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].agent.as_ref().map(Child::id)
    }

    /// Kills node `i`'s agent with SIGKILL: its pods keep running.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i`'s agent again with the same arguments.
    pub fn restart_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_agent(i);
        let n = &mut self.nodes[i];
        n.agent = Some(spawn_in(
            &n.node.netns,
            &binary("apiary-node-agent"),
            &n.args,
            &n.log,
        )?);
        Ok(())
    }

    /// Kills the control plane with SIGKILL (pods and the data plane go on without it).
    pub fn kill_control_plane(&mut self) {
        if let Some(mut child) = self.control_plane.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the control plane again on its data dir, appending to its log, and waits until it
    /// answers.
    pub fn restart_control_plane(&mut self) -> anyhow::Result<()> {
        if self.control_plane_args.is_empty() {
            bail!("the lab did not start the control planes: their starter restarts them");
        }
        self.kill_control_plane();
        self.control_plane = Some(spawn_in(
            &self.underlay,
            &binary("apiary-control-plane"),
            &self.control_plane_args,
            &self.dir.path().join("control-plane.log"),
        )?);
        wait(
            "the control plane to answer",
            Duration::from_secs(30),
            || {
                self.kubectl(&["get", "--raw", "/readyz"])
                    .ok()
                    .filter(|o| o.status.success())
                    .map(drop)
            },
        )
    }

    /// Node `i` is lost as a machine that dies is: its agent is killed and its link to the
    /// underlay goes down, so its pods, still running, can no longer be reached.
    pub fn lose_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_agent(i);
        let port = format!("n{}", self.nodes[i].node.index);
        ip(&["-n", &self.underlay, "link", "set", &port, "down"])?;
        Ok(())
    }

    /// Node `i` comes back after [`ClusterLab::lose_node`]: its link up, its agent started.
    pub fn restore_node(&mut self, i: usize) -> anyhow::Result<()> {
        let port = format!("n{}", self.nodes[i].node.index);
        ip(&["-n", &self.underlay, "link", "set", &port, "up"])?;
        self.restart_agent(i)
    }

    /// Runs the `apiary` CLI against the cluster (from the underlay namespace) and returns its
    /// stdout; the error carries its stderr.
    pub fn apiary(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = nsenter(&self.underlay, binary("apiary"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "apiary {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs kubectl against the cluster (from the underlay namespace).
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_with_stdin(args, None)
    }

    /// kubectl against the cluster, to spawn as the caller needs (e.g. a watch to read from).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = nsenter(&self.underlay, "kubectl");
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
    }

    pub fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        use std::io::Write as _;
        let mut child = self
            .kubectl_command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh -c script` in `pod` (default namespace) through kubectl exec: its stdout. Panics,
    /// with the processes' logs, when it fails.
    pub fn sh(&self, pod: &str, script: &str) -> String {
        self.kubectl_ok(&["exec", pod, "--", "sh", "-c", script])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }

    pub fn kubectl_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.kubectl_ok(args)?)?)
    }

    /// `kubectl apply -f -` of `manifest`.
    pub fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        let out = self.kubectl_with_stdin(&["apply", "-f", "-"], Some(manifest))?;
        if !out.status.success() {
            bail!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    pub fn pod(&self, namespace: &str, name: &str) -> anyhow::Result<Value> {
        self.kubectl_json(&["get", "pod", "-n", namespace, name, "-o", "json"])
    }

    /// Waits until `check` says yes about the pod, or fails with the pod and the agents' logs.
    pub fn wait_pod(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        let found = wait(what, timeout, || {
            let pod = self.pod(namespace, name).ok()?;
            let done = check(&pod);
            last = pod.clone();
            done.then_some(pod)
        });
        found.map_err(|e| {
            e.context(format!(
                "pod {namespace}/{name}: {}\n{}",
                serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
                self.logs()
            ))
        })
    }

    pub fn wait_ready(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_pod(namespace, name, "pod Ready", timeout, is_ready)
    }

    /// The last lines of every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        out.push_str(&format!(
            "--- control plane ---\n{}\n",
            tail(&self.dir.path().join("control-plane.log"))
        ));
        for n in &self.nodes {
            out.push_str(&format!("--- agent {} ---\n{}\n", n.name, tail(&n.log)));
            // The cluster DNS process outlives agent restarts and logs apart.
            let dns = apiary_node_agent::dns::standalone::Layout::new(&n.run_dir).log();
            if dns.exists() {
                out.push_str(&format!("--- cluster DNS {} ---\n{}\n", n.name, tail(&dns)));
            }
        }
        out
    }

    /// The IP leases node `i`'s agent holds, read from its IPAM database after stopping the agent
    /// (the database is the agent's while it runs).
    pub fn leases_after_stopping(&mut self, i: usize) -> anyhow::Result<Vec<(String, Ipv4Addr)>> {
        self.kill_agent(i);
        let db = self.nodes[i]
            .data_dir
            .join("network")
            .join(apiary_node_agent::network::IPAM_DB);
        let any: apiary_node_agent::network::Ipv4Net = "0.0.0.0/0".parse()?;
        let ipam = apiary_node_agent::network::ipam::Ipam::open(&db, any)?;
        Ok(ipam.leases()?)
    }

    /// What node `i` holds for pods: (veths, sandbox dirs, container state dirs, cgroup dirs).
    pub fn leftovers(&self, i: usize) -> anyhow::Result<Leftovers> {
        let n = &self.nodes[i];
        let links = ip(&["-n", &n.node.netns, "-j", "link", "show", "type", "veth"])?;
        let links: Value = serde_json::from_str(if links.trim().is_empty() {
            "[]"
        } else {
            &links
        })?;
        let veths = links
            .as_array()
            .map_or(0, |l| l.iter().filter(|l| l["ifname"] != "eth0").count());
        let count = |dir: PathBuf| std::fs::read_dir(dir).map_or(0, |d| d.count());
        let cgroups = cgroup_dirs(&n.cgroup_parent);
        Ok(Leftovers {
            veths,
            sandboxes: count(n.run_dir.join("pods")),
            containers: count(n.run_dir.join("containers")),
            pod_dirs: count(n.data_dir.join("pods")),
            cgroups,
        })
    }
}

/// What a node still holds for pods.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub veths: usize,
    pub sandboxes: usize,
    pub containers: usize,
    pub pod_dirs: usize,
    /// Directories below the node's cgroup parent, in every hierarchy.
    pub cgroups: usize,
}

/// Container cgroups under `parent` in every mounted hierarchy.
fn cgroup_dirs(parent: &str) -> usize {
    let mut count = 0;
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return 0;
    };
    let mut roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        if let Ok(children) = std::fs::read_dir(root.join(parent)) {
            // The node's cluster DNS process has its cgroup there too; it is not a pod's.
            let dns = apiary_node_agent::dns::standalone::CGROUP;
            count += children
                .flatten()
                .filter(|e| e.path().is_dir() && e.file_name() != dns)
                .count();
        }
    }
    count
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.agent.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut child) = self.registry.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_control_plane();
        for n in &self.nodes {
            let status = nsenter(&n.node.netns, binary("apiary-node-agent"))
                .args(["reset", "--data-dir"])
                .arg(&n.data_dir)
                .arg("--run-dir")
                .arg(&n.run_dir)
                .arg("--pin-dir")
                .arg(&n.pin_dir)
                .arg("--cgroup-parent")
                .arg(&n.cgroup_parent)
                .status();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!("cluster lab teardown: resetting {} failed", n.name);
            }
        }
    }
}

/// Starts `program` inside network namespace `netns` (and nothing else), logging to `log` (after
/// what an earlier run of it logged there).
fn spawn_in(netns: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    nsenter(netns, program)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {} in {netns}", program.display()))
}

/// A pod of the busybox test image that only sleeps, bound to `node` (a client to exec in).
pub fn sleeper_pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#
    )
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`.
pub fn wait<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
