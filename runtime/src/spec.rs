//! What the node agent asks for: [`ContainerSpec`], validated before anything touches the node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::security::Security;

/// The PATH a container gets when its env has none (containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One container to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Unique on the node, `[a-z0-9-]`, at most 128 characters.
    pub id: String,
    /// Stored with the state and returned by [`crate::Runtime::list`].
    pub labels: BTreeMap<String, String>,
    /// Image layer directories, bottom first: the overlayfs lower dirs.
    pub layers: Vec<PathBuf>,
    pub args: Vec<String>,
    /// `KEY=value`; a default `PATH` is added when missing.
    pub env: Vec<String>,
    /// Absolute working directory inside the container (`/` when empty).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// The pod sandbox's namespaces to join.
    pub namespaces: SandboxNamespaces,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    /// CRI-format log file; rotated to `<log_path>.1` … `<log_path>.<log_max_files - 1>`.
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// Capabilities, seccomp and the rest of the container's confinement.
    #[serde(default)]
    pub security: Security,
    /// Whether stdin is a pipe that attached clients feed ([`crate::stdin`]), not `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// With `stdin`: close it when the first attached client leaves.
    #[serde(default)]
    pub stdin_once: bool,
}

/// The namespaces a pod's containers share: paths of the sandbox's bind-mounted ones (see
/// [`crate::Sandbox`]) or the node's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNamespaces {
    pub net: PathBuf,
    pub uts: PathBuf,
    /// `None`: the node's IPC namespace (`hostIPC`), with the node's `/dev/shm`.
    pub ipc: Option<PathBuf>,
    #[serde(default)]
    pub pid: PidNamespace,
}

/// The PID namespace a container runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNamespace {
    /// A new one of its own, where its process is pid 1 (Kubernetes' default).
    #[default]
    Container,
    /// The node's (`hostPID`): it sees, and with the capabilities may signal, every process of
    /// the node.
    Host,
}

/// A bind mount (a volume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

/// cgroup limits; `None` leaves the kernel default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub memory_limit_bytes: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// Checks a container id: it names directories and cgroups, so it must be a plain name.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 {
        return Err(Error::invalid("id", "must be 1 to 128 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::invalid(
            "id",
            format!("{id:?} may only contain [a-z0-9-]"),
        ));
    }
    Ok(())
}

fn absolute(field: &str, path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("{} is not absolute", path.display()),
        ));
    }
    Ok(())
}

impl ContainerSpec {
    /// Checks every field the shim relies on; errors name the field.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        if self.layers.is_empty() {
            return Err(Error::invalid("layers", "at least one layer is required"));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let field = format!("layers[{i}]");
            absolute(&field, layer)?;
            // overlayfs separates lower dirs with ':' and options with ','.
            let text = layer.to_string_lossy();
            if text.contains([':', ',']) {
                return Err(Error::invalid(field, "may not contain ':' or ','"));
            }
            if !layer.is_dir() {
                return Err(Error::invalid(field, format!("{text} is not a directory")));
            }
        }
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(Error::invalid("args", "a command is required"));
        }
        for (i, env) in self.env.iter().enumerate() {
            if !env.contains('=') || env.starts_with('=') {
                return Err(Error::invalid(format!("env[{i}]"), "must be KEY=value"));
            }
        }
        if !self.cwd.is_empty() && !self.cwd.starts_with('/') {
            return Err(Error::invalid("cwd", "must be absolute"));
        }
        absolute("namespaces.net", &self.namespaces.net)?;
        absolute("namespaces.uts", &self.namespaces.uts)?;
        if let Some(ipc) = &self.namespaces.ipc {
            absolute("namespaces.ipc", ipc)?;
        }
        for (i, mount) in self.mounts.iter().enumerate() {
            absolute(&format!("mounts[{i}].source"), &mount.source)?;
            absolute(&format!("mounts[{i}].destination"), &mount.destination)?;
            if !mount.source.exists() {
                return Err(Error::invalid(
                    format!("mounts[{i}].source"),
                    format!("{} does not exist", mount.source.display()),
                ));
            }
        }
        let r = &self.resources;
        if r.memory_limit_bytes.is_some_and(|m| m < 4096 * 1024) {
            return Err(Error::invalid(
                "resources.memory_limit_bytes",
                "must be at least 4 MiB",
            ));
        }
        if r.cpu_quota_us.is_some_and(|q| q < 1000 && q != -1) {
            return Err(Error::invalid(
                "resources.cpu_quota_us",
                "must be at least 1000 or -1",
            ));
        }
        if r.cpu_period_us
            .is_some_and(|p| !(1000..=1_000_000).contains(&p))
        {
            return Err(Error::invalid(
                "resources.cpu_period_us",
                "must be between 1000 and 1000000",
            ));
        }
        if r.cpu_shares.is_some_and(|s| s < 2) {
            return Err(Error::invalid("resources.cpu_shares", "must be at least 2"));
        }
        if r.pids_limit.is_some_and(|p| p < 1 && p != -1) {
            return Err(Error::invalid(
                "resources.pids_limit",
                "must be positive or -1",
            ));
        }
        absolute("log_path", &self.log_path)?;
        if self.log_max_bytes < 1024 {
            return Err(Error::invalid("log_max_bytes", "must be at least 1024"));
        }
        if self.log_max_files < 1 {
            return Err(Error::invalid("log_max_files", "must be at least 1"));
        }
        for name in self.security.sysctls.keys() {
            // They are written under /proc/sys: a name must not climb out of it.
            if name
                .split(['.', '/'])
                .any(|part| part.is_empty() || part == "..")
            {
                return Err(Error::invalid(
                    "security.sysctls",
                    format!("{name:?} is not a sysctl"),
                ));
            }
        }
        Ok(())
    }

    /// The environment the process gets: the spec's, with a default `PATH` when it has none.
    pub fn effective_env(&self) -> Vec<String> {
        let mut env = self.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        env
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(layer: &Path) -> ContainerSpec {
        ContainerSpec {
            id: "pod-c-0".into(),
            labels: BTreeMap::new(),
            layers: vec![layer.to_path_buf()],
            args: vec!["sh".into()],
            env: vec!["A=b".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            hostname: "h".into(),
            namespaces: SandboxNamespaces {
                net: "/run/x/net".into(),
                uts: "/run/x/uts".into(),
                ipc: Some("/run/x/ipc".into()),
                pid: PidNamespace::Container,
            },
            mounts: vec![],
            resources: Resources::default(),
            log_path: "/var/log/x.log".into(),
            log_max_bytes: 1 << 20,
            log_max_files: 2,
            security: Security::default(),
            stdin: false,
            stdin_once: false,
        }
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample(dir.path());
        good.validate().unwrap();

        let mut s = good.clone();
        s.id = "Bad_Id".into();
        assert!(s.validate().unwrap_err().to_string().starts_with("id:"));
        let mut s = good.clone();
        s.layers = vec!["relative".into()];
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .starts_with("layers[0]:")
        );
        let mut s = good.clone();
        s.args.clear();
        assert!(s.validate().unwrap_err().to_string().starts_with("args:"));
        let mut s = good.clone();
        s.env.push("NOVALUE".into());
        assert!(s.validate().unwrap_err().to_string().starts_with("env[1]:"));
        let mut s = good.clone();
        s.resources.memory_limit_bytes = Some(10);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .starts_with("resources.memory_limit_bytes:")
        );
        let mut s = good.clone();
        s.mounts.push(Mount {
            source: dir.path().join("missing"),
            destination: "/data".into(),
            read_only: true,
        });
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .starts_with("mounts[0].source:")
        );
    }

    #[test]
    fn default_path_is_added_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sample(dir.path());
        assert!(
            s.effective_env()
                .iter()
                .any(|e| e == &format!("PATH={DEFAULT_PATH}"))
        );
        s.env.push("PATH=/bin".into());
        assert_eq!(
            s.effective_env()
                .iter()
                .filter(|e| e.starts_with("PATH="))
                .count(),
            1
        );
    }
}
