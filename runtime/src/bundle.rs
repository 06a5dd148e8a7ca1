//! The OCI bundle's `config.json`, built from a [`ContainerSpec`].

use serde_json::{Value, json};

use crate::{
    security::{self, Seccomp},
    spec::{ContainerSpec, PidNamespace},
};

/// Paths hidden from containers (as containerd does).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The runtime spec for `spec`, its cgroup at `cgroups_path` (absolute, cgroupfs style).
/// `swap_limit` says whether the host can limit swap (v1 needs `swapaccount`).
pub fn config(spec: &ContainerSpec, cgroups_path: &str, swap_limit: bool) -> Value {
    let security = &spec.security;
    let caps: Vec<String> = if security.privileged {
        security::available_capabilities()
    } else {
        security.capabilities.clone()
    };
    // A privileged container may write /sys (as containerd's).
    let sys_options: &[&str] = if security.privileged {
        &["nosuid", "noexec", "nodev", "rw"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        dev_shm(spec),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": sys_options}),
    ];
    for m in &spec.mounts {
        let mut options = vec!["rbind", "rprivate"];
        // A volume's setuid files and device nodes grant nothing (a ConfigMap or an emptyDir
        // another container wrote); a privileged container may use a host's devices.
        if !security.privileged {
            options.extend(["nosuid", "nodev"]);
        }
        if m.read_only {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": m.destination, "type": "bind", "source": m.source, "options": options,
        }));
    }

    let r = &spec.resources;
    let mut resources = json!({
        // Containers may only create the usual character devices (as runc's defaults); a
        // privileged one any device.
        "devices": [{"allow": security.privileged, "access": "rwm"}],
    });
    let mut cpu = serde_json::Map::new();
    if let Some(shares) = r.cpu_shares {
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(quota) = r.cpu_quota_us {
        cpu.insert("quota".into(), json!(quota));
    }
    if let Some(period) = r.cpu_period_us {
        cpu.insert("period".into(), json!(period));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(limit) = r.memory_limit_bytes {
        resources["memory"] = if swap_limit {
            // Swap equal to the limit: no swap on top of it, so the OOM killer acts at the limit.
            json!({"limit": limit, "swap": limit})
        } else {
            json!({"limit": limit})
        };
    }
    if let Some(pids) = r.pids_limit {
        resources["pids"] = json!({"limit": pids});
    }
    let devices = [
        ("c", 1, 3, "/dev/null"),
        ("c", 1, 5, "/dev/zero"),
        ("c", 1, 7, "/dev/full"),
        ("c", 1, 8, "/dev/random"),
        ("c", 1, 9, "/dev/urandom"),
        ("c", 5, 0, "/dev/tty"),
        ("c", 5, 2, "/dev/ptmx"),
        ("c", 136, -1, "/dev/pts"),
    ];
    let allowed: Vec<Value> = devices
        .iter()
        .map(|(kind, major, minor, _)| {
            let minor = if *minor < 0 {
                Value::Null
            } else {
                json!(minor)
            };
            json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": "rwm"})
        })
        .collect();
    resources["devices"]
        .as_array_mut()
        .expect("devices is an array")
        .extend(allowed);

    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": security.supplementary_groups},
            "args": spec.args,
            "env": spec.effective_env(),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
        },
        "root": {"path": "rootfs", "readonly": security.read_only_root},
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces(spec),
            "cgroupsPath": cgroups_path,
            "resources": resources,
        },
    });
    // Only when set: youki loads a seccomp filter before dropping capabilities only when the
    // field is absent, and an explicit `false` would leave it unable to load one.
    if security.no_new_privileges {
        config["process"]["noNewPrivileges"] = json!(true);
    }
    if security.mask_proc && !security.privileged {
        config["linux"]["maskedPaths"] = json!(MASKED);
        config["linux"]["readonlyPaths"] = json!(READONLY);
    }
    if !security.sysctls.is_empty() {
        config["linux"]["sysctl"] = json!(security.sysctls);
    }
    // Privileged containers run unconfined, as the kubelet asks containerd.
    match &security.seccomp {
        _ if security.privileged => {}
        Seccomp::Unconfined => {}
        Seccomp::RuntimeDefault => config["linux"]["seccomp"] = security::runtime_default(&caps),
        Seccomp::Profile(profile) => config["linux"]["seccomp"] = profile.clone(),
    }
    if !spec.hostname.is_empty() {
        config["hostname"] = json!(spec.hostname);
    }
    config
}

/// The container's namespaces: its own mount namespace, the sandbox's network, UTS and IPC
/// ones, and a PID namespace of its own. As containerd, a namespace of the node's (`hostPID`,
/// `hostIPC`) gets no entry: the container keeps the runtime's, which is the node's.
fn namespaces(spec: &ContainerSpec) -> Vec<Value> {
    let ns = &spec.namespaces;
    let mut namespaces = Vec::new();
    if ns.pid == PidNamespace::Container {
        namespaces.push(json!({"type": "pid"}));
    }
    namespaces.extend([
        json!({"type": "mount"}),
        json!({"type": "network", "path": ns.net}),
        json!({"type": "uts", "path": ns.uts}),
    ]);
    if let Some(ipc) = &ns.ipc {
        namespaces.push(json!({"type": "ipc", "path": ipc}));
    }
    namespaces
}

/// `/dev/shm`: a tmpfs of the container's own, or with `hostIPC` the node's `/dev/shm` (the
/// POSIX shared memory of the IPC namespace it shares), as containerd binds it.
fn dev_shm(spec: &ContainerSpec) -> Value {
    if spec.namespaces.ipc.is_none() {
        json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
               "options": ["rbind", "rprivate", "nosuid", "nodev"]})
    } else {
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Mount, Resources, SandboxNamespaces};
    use std::collections::BTreeMap;

    fn sample() -> ContainerSpec {
        ContainerSpec {
            id: "c".into(),
            labels: BTreeMap::new(),
            layers: vec!["/l".into()],
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec![],
            cwd: String::new(),
            uid: 1000,
            gid: 1000,
            hostname: "pod".into(),
            namespaces: SandboxNamespaces {
                net: "/run/s/net".into(),
                uts: "/run/s/uts".into(),
                ipc: Some("/run/s/ipc".into()),
                pid: PidNamespace::Container,
            },
            mounts: vec![Mount {
                source: "/data".into(),
                destination: "/mnt".into(),
                read_only: true,
            }],
            resources: Resources {
                cpu_shares: Some(512),
                cpu_quota_us: Some(50_000),
                cpu_period_us: Some(100_000),
                memory_limit_bytes: Some(32 << 20),
                pids_limit: Some(100),
            },
            log_path: "/l.log".into(),
            log_max_bytes: 1 << 20,
            log_max_files: 1,
            security: crate::Security::default(),
            stdin: false,
            stdin_once: false,
        }
    }

    #[test]
    fn config_parses_as_an_oci_spec_with_limits_and_joined_namespaces() {
        let spec = sample();
        let json = config(&spec, "/apiary/c", true);
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(json).unwrap();
        let linux = parsed.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(32 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 100);
        let net = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(
            net.path().as_deref(),
            Some(std::path::Path::new("/run/s/net"))
        );
        let process = parsed.process().as_ref().unwrap();
        assert_eq!(process.cwd(), std::path::Path::new("/"));
        assert_eq!(process.user().uid(), 1000);
        assert!(
            process
                .env()
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.starts_with("PATH="))
        );
        let bind = parsed
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == std::path::Path::new("/mnt"))
            .unwrap();
        assert!(bind.options().as_ref().unwrap().iter().any(|o| o == "ro"));
    }

    fn namespaces_of(config: &Value) -> Vec<(String, Option<String>)> {
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(config.clone()).unwrap();
        let linux = parsed.linux().as_ref().unwrap();
        linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    format!("{:?}", n.typ()),
                    n.path().as_ref().map(|p| p.display().to_string()),
                )
            })
            .collect()
    }

    fn shm(config: &Value) -> &Value {
        config["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap()
    }

    #[test]
    fn host_pid_and_host_ipc_leave_out_those_namespaces_as_containerd_does() {
        let own = config(&sample(), "/apiary/c", true);
        assert_eq!(
            namespaces_of(&own),
            [
                ("Pid".to_owned(), None),
                ("Mount".to_owned(), None),
                ("Network".to_owned(), Some("/run/s/net".to_owned())),
                ("Uts".to_owned(), Some("/run/s/uts".to_owned())),
                ("Ipc".to_owned(), Some("/run/s/ipc".to_owned())),
            ]
        );
        assert_eq!(shm(&own)["type"], "tmpfs");

        let mut host = sample();
        host.namespaces.pid = PidNamespace::Host;
        host.namespaces.ipc = None;
        let host = config(&host, "/apiary/c", true);
        assert_eq!(
            namespaces_of(&host),
            [
                ("Mount".to_owned(), None),
                ("Network".to_owned(), Some("/run/s/net".to_owned())),
                ("Uts".to_owned(), Some("/run/s/uts".to_owned())),
            ]
        );
        // The node's POSIX shared memory comes with its IPC namespace.
        assert_eq!(
            (&shm(&host)["type"], &shm(&host)["source"]),
            (&json!("bind"), &json!("/dev/shm"))
        );
    }
}
