//! From a pod's container spec to what the runtime runs: the image (pulled as
//! `imagePullPolicy` says), the command line, user, mounts, cgroup limits and log file; plus the
//! pod's sandbox and the `/etc` files every container of the pod shares.

use std::{
    collections::BTreeMap,
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

use apiary_api::core_v1::{Container, Pod};
use apiary_images::{Image, PullProgress};
use apiary_runtime::{
    ContainerSpec, ContainerState as RuntimeState, Mount, PidNamespace, Resources, Runtime,
    SandboxNamespaces,
};

use crate::agent::{context::Context, env, probes, volumes::PreparedVolume};

/// Labels the agent puts on every container, so a restarted agent knows whose it is.
#[derive(Debug)]
pub struct Labels;

impl Labels {
    pub const POD_UID: &str = "apiary.io/pod-uid";
    pub const POD_NAME: &str = "apiary.io/pod-name";
    pub const POD_NAMESPACE: &str = "apiary.io/pod-namespace";
    pub const CONTAINER: &str = "apiary.io/container-name";
    pub const ATTEMPT: &str = "apiary.io/attempt";

    pub fn pod_of(state: &RuntimeState) -> Option<&str> {
        state.labels.get(Self::POD_UID).map(String::as_str)
    }

    pub fn container_of(state: &RuntimeState) -> Option<String> {
        state.labels.get(Self::CONTAINER).cloned()
    }

    pub fn attempt_of(state: &RuntimeState) -> u32 {
        state
            .labels
            .get(Self::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }
}

/// The kubelet's defaults for container log rotation.
const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
const LOG_MAX_FILES: u32 = 5;

/// The pod's hostname: `spec.hostname` or its name, cut to 63 characters.
pub fn hostname(pod: &Pod) -> String {
    let name = if pod.spec.hostname.is_empty() {
        &pod.metadata.name
    } else {
        &pod.spec.hostname
    };
    name.chars().take(63).collect()
}

/// Which of the node's namespaces a pod shares (`hostNetwork`, `hostPID`, `hostIPC`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostNamespaces {
    pub network: bool,
    pub pid: bool,
    pub ipc: bool,
}

impl HostNamespaces {
    pub fn of(pod: &Pod) -> Self {
        Self {
            network: pod.spec.host_network,
            pid: pod.spec.host_pid,
            ipc: pod.spec.host_ipc,
        }
    }
}

/// Creates the pod's namespaces under `dir`, or finds them there after an agent restart.
/// `hostNetwork` pods share the node's network and UTS namespaces (the agent's own), `hostIPC`
/// pods its IPC namespace, `hostPID` pods its PID namespace.
pub fn ensure_sandbox(
    dir: &Path,
    hostname: &str,
    host: HostNamespaces,
) -> anyhow::Result<SandboxNamespaces> {
    let existing = SandboxNamespaces {
        net: dir.join("net"),
        uts: dir.join("uts"),
        ipc: (!host.ipc).then(|| dir.join("ipc")),
        pid: PidNamespace::Container,
    };
    let mut namespaces = if [
        Some(&existing.net),
        Some(&existing.uts),
        existing.ipc.as_ref(),
    ]
    .into_iter()
    .flatten()
    .all(|p| is_namespace(p))
    {
        existing
    } else {
        let _ = apiary_runtime::Sandbox::remove(dir);
        apiary_runtime::Sandbox::create(dir, hostname, host.ipc)?
    };
    if host.network {
        let me = std::process::id();
        namespaces.net = PathBuf::from(format!("/proc/{me}/ns/net"));
        namespaces.uts = PathBuf::from(format!("/proc/{me}/ns/uts"));
    }
    if host.pid {
        namespaces.pid = PidNamespace::Host;
    }
    Ok(namespaces)
}

/// Whether `path` is a bind-mounted namespace (on nsfs).
fn is_namespace(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` of the pod, in `<pod dir>/etc`.
pub fn write_etc_files(
    pod_dir: &Path,
    pod: &Pod,
    ip: Ipv4Addr,
    dns: &crate::agent::context::DnsSettings,
) -> io::Result<()> {
    let dir = pod_dir.join("etc");
    fs::create_dir_all(&dir)?;
    let name = hostname(pod);
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if pod.spec.subdomain.is_empty() {
        hosts.push_str(&format!("{ip}\t{name}\n"));
    } else {
        hosts.push_str(&format!(
            "{ip}\t{name}.{}.{}.svc.{}\t{name}\n",
            pod.spec.subdomain, pod.metadata.namespace, dns.domain
        ));
    }
    if !pod.spec.host_aliases.is_empty() {
        hosts.push_str("\n# Entries added by HostAliases.\n");
        for alias in &pod.spec.host_aliases {
            hosts.push_str(&format!("{}\t{}\n", alias.ip, alias.hostnames.join("\t")));
        }
    }
    fs::write(dir.join("hosts"), hosts)?;
    fs::write(dir.join("hostname"), format!("{name}\n"))?;
    let resolv =
        crate::dns::pod_resolv_conf(pod, &dns.node_resolv_conf, dns.cluster_dns, &dns.domain);
    fs::write(dir.join("resolv.conf"), resolv)?;
    Ok(())
}

/// Makes the container's image present as its pull policy says. Errors are `(reason, message)`
/// as the kubelet reports them in the container's waiting state.
pub async fn ensure_image(
    ctx: &Context,
    container: &Container,
    event: impl Fn(&str, String, bool),
) -> Result<Image, (String, String)> {
    let reference = apiary_images::normalize_reference(&container.image)
        .map_err(|e| ("InvalidImageName".to_owned(), e.to_string()))?;
    let policy = match container.image_pull_policy.as_str() {
        "" => {
            let tag_latest = !container.image.contains('@')
                && container
                    .image
                    .rsplit('/')
                    .next()
                    .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
            if tag_latest { "Always" } else { "IfNotPresent" }
        }
        p => p,
    };
    let local = ctx
        .images
        .resolve(&reference)
        .map_err(|e| ("ErrImagePull".to_owned(), e.to_string()))?;
    match (policy, local) {
        ("Never", Some(image)) | ("IfNotPresent", Some(image)) => {
            event(
                "Pulled",
                format!(
                    "Container image \"{}\" already present on machine",
                    container.image
                ),
                false,
            );
            Ok(image)
        }
        ("Never", None) => Err((
            "ErrImageNeverPull".to_owned(),
            format!(
                "Container image \"{}\" is not present with pull policy of Never",
                container.image
            ),
        )),
        _ => {
            event(
                "Pulling",
                format!("Pulling image \"{}\"", container.image),
                false,
            );
            let started = Instant::now();
            let mut bytes = 0u64;
            let mut progress = |p: PullProgress| {
                if let PullProgress::Resolved { total_bytes, .. } = p {
                    bytes = total_bytes;
                }
            };
            match ctx
                .images
                .pull(&reference, &ctx.pull_options, &mut progress)
                .await
            {
                Ok(image) => {
                    crate::metrics::AgentMetrics::global().image_pulled(started.elapsed());
                    event(
                        "Pulled",
                        format!(
                            "Successfully pulled image \"{}\" in {:.3}s. Image size: {bytes} bytes.",
                            container.image,
                            started.elapsed().as_secs_f64()
                        ),
                        false,
                    );
                    Ok(image)
                }
                Err(e) => {
                    let message = format!("Failed to pull image \"{}\": {e}", container.image);
                    event("Failed", message.clone(), true);
                    Err(("ErrImagePull".to_owned(), message))
                }
            }
        }
    }
}

/// What [`spec`] needs.
#[derive(Debug)]
pub struct SpecInput<'a> {
    pub ctx: &'a Context,
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub init: bool,
    pub attempt: u32,
    pub image: &'a Image,
    pub env: Vec<String>,
    pub namespaces: &'a SandboxNamespaces,
    pub volumes: &'a BTreeMap<String, PreparedVolume>,
}

/// The runtime's spec for one attempt of a container.
pub fn spec(input: SpecInput<'_>) -> Result<ContainerSpec, String> {
    let SpecInput {
        ctx,
        pod,
        container: c,
        init,
        attempt,
        image,
        env,
        namespaces,
        volumes,
    } = input;
    let uid = &pod.metadata.uid;
    let vars = env::pairs(&env);
    let expand =
        |list: &[String]| -> Vec<String> { list.iter().map(|a| env::expand(a, &vars)).collect() };
    // Kubernetes' rules: `command` replaces the entrypoint (and drops the image's cmd),
    // `args` replaces the cmd.
    let args = if !c.command.is_empty() {
        let mut v = expand(&c.command);
        v.extend(expand(&c.args));
        v
    } else if !c.args.is_empty() {
        let mut v = image.config.entrypoint.clone();
        v.extend(expand(&c.args));
        v
    } else {
        let mut v = image.config.entrypoint.clone();
        v.extend(image.config.cmd.iter().cloned());
        v
    };
    if args.is_empty() {
        return Err(format!(
            "no command specified: container {} sets none and image {} has no entrypoint or cmd",
            c.name, c.image
        ));
    }
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        image
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_owned())
    };
    let security = c.security_context.as_ref();
    let pod_security = pod.spec.security_context.as_ref();
    let (image_uid, image_gid) = image_user(image)?;
    let run_as_user = security
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_security.and_then(|s| s.run_as_user));
    let run_as_group = security
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_security.and_then(|s| s.run_as_group));
    let user = run_as_user.map_or(image_uid, |u| u as u32);
    let group = run_as_group.map_or(image_gid, |g| g as u32);
    if security
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_security.and_then(|s| s.run_as_non_root))
        == Some(true)
        && user == 0
    {
        return Err("container has runAsNonRoot and image will run as root".to_owned());
    }
    let pod_dir = ctx.pod_dir(uid);
    let mut mounts = Vec::new();
    let mut targets = Vec::new();
    for (index, vm) in c.volume_mounts.iter().enumerate() {
        let volume = volumes.get(&vm.name).ok_or_else(|| {
            format!(
                "container {}: volumeMount {:?} names no volume of the pod",
                c.name, vm.name
            )
        })?;
        let mut source = volume.host_path.clone();
        if !vm.sub_path.is_empty() {
            // Resolved inside the volume and bind-mounted by the agent: the runtime never
            // follows a path a container could have changed.
            let target = super::subpath::target(&pod_dir, &vm.name, &c.name, index);
            super::subpath::bind(&source, &vm.sub_path, &target)?;
            source = target;
        }
        targets.push(vm.mount_path.clone());
        mounts.push(Mount {
            source,
            destination: PathBuf::from(&vm.mount_path),
            read_only: vm.read_only || volume.read_only,
        });
    }
    for file in ["hosts", "hostname", "resolv.conf"] {
        let destination = format!("/etc/{file}");
        if !targets.contains(&destination) {
            mounts.push(Mount {
                source: pod_dir.join("etc").join(file),
                destination: PathBuf::from(destination),
                read_only: false,
            });
        }
    }
    let resources = resources(c);
    let mut labels = BTreeMap::from([
        (Labels::POD_UID.to_owned(), uid.clone()),
        (Labels::POD_NAME.to_owned(), pod.metadata.name.clone()),
        (
            Labels::POD_NAMESPACE.to_owned(),
            pod.metadata.namespace.clone(),
        ),
        (Labels::CONTAINER.to_owned(), c.name.clone()),
        (Labels::ATTEMPT.to_owned(), attempt.to_string()),
    ]);
    if init {
        labels.insert("apiary.io/init".to_owned(), "true".to_owned());
    }
    Ok(ContainerSpec {
        id: format!("{uid}-{}-{attempt}", c.name),
        labels,
        layers: image.layers.clone(),
        args,
        env,
        cwd,
        uid: user,
        gid: group,
        hostname: hostname(pod),
        namespaces: namespaces.clone(),
        mounts,
        resources,
        log_path: ctx.log_path(uid, &c.name, attempt),
        log_max_bytes: LOG_MAX_BYTES,
        log_max_files: LOG_MAX_FILES,
        security: super::security::security(pod, c, &ctx.seccomp)?,
        stdin: c.stdin,
        stdin_once: c.stdin && c.stdin_once,
    })
}

/// cgroup limits from the container's requests and limits, converted as the kubelet does:
/// cpu request → shares (1 cpu = 1024), cpu limit → CFS quota per 100 ms period, memory
/// limit → memory limit.
pub fn resources(c: &Container) -> Resources {
    let r = c.resources.clone().unwrap_or_default();
    let cpu_request = r
        .requests
        .get("cpu")
        .or_else(|| r.limits.get("cpu"))
        .and_then(|q| q.milli_value().ok());
    let cpu_limit = r.limits.get("cpu").and_then(|q| q.milli_value().ok());
    const PERIOD_US: u64 = 100_000;
    Resources {
        cpu_shares: Some(cpu_request.map_or(2, |m| ((m * 1024) / 1000).max(2) as u64)),
        cpu_quota_us: cpu_limit.map(|m| (m * PERIOD_US as i64 / 1000).max(1000)),
        cpu_period_us: cpu_limit.map(|_| PERIOD_US),
        memory_limit_bytes: r.limits.get("memory").and_then(|q| q.value().ok()),
        pids_limit: None,
    }
}

/// The image's `User` as numbers: `uid[:gid]`, or names looked up in the image's
/// `/etc/passwd` and `/etc/group`.
fn image_user(image: &Image) -> Result<(u32, u32), String> {
    let Some(user) = image.config.user.as_deref().filter(|u| !u.is_empty()) else {
        return Ok((0, 0));
    };
    let (u, g) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        image.layers.iter().rev().find_map(|layer| {
            // Inside the layer, a regular file, at most 1 MiB: an image's /etc/passwd may be
            // a link to /dev/zero.
            let path = Path::new("etc").join(file);
            let text = super::subpath::read_in_root(layer, &path, 1 << 20).ok()?;
            text.lines().find_map(|l| {
                let cols: Vec<&str> = l.split(':').collect();
                (cols.first() == Some(&name)).then(|| {
                    (
                        cols.get(2).and_then(|v| v.parse().ok()).unwrap_or(0),
                        cols.get(3).and_then(|v| v.parse().ok()).unwrap_or(0),
                    )
                })
            })
        })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(n) => (n, 0),
        Err(_) => lookup("passwd", u)
            .ok_or_else(|| format!("image user {u:?} is not in its /etc/passwd"))?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("group", g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| format!("image group {g:?} is not in its /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// Exec probes and hooks through the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeExec(pub Runtime);

#[async_trait::async_trait]
impl probes::Exec for RuntimeExec {
    async fn exec(&self, container_id: &str, command: &[String]) -> Result<(i32, String), String> {
        let request = apiary_runtime::ExecRequest {
            args: command.to_vec(),
            env: Vec::new(),
            tty: false,
        };
        use tokio::io::AsyncReadExt as _;
        let mut process = self
            .0
            .exec(container_id, &request)
            .await
            .map_err(|e| e.to_string())?;
        // Probes only need the start of the output for their message.
        let mut output = Vec::new();
        let stdout = process.stdout.take();
        let stderr = process.stderr.take();
        let read = async {
            let mut buf = Vec::new();
            if let Some(mut out) = stdout {
                let _ = (&mut out).take(4096).read_to_end(&mut buf).await;
            }
            if let Some(mut err) = stderr {
                let _ = (&mut err).take(4096).read_to_end(&mut buf).await;
            }
            buf
        };
        output.extend(read.await);
        let code = process.wait().await.map_err(|e| e.to_string())?;
        Ok((code, String::from_utf8_lossy(&output).into_owned()))
    }
}
