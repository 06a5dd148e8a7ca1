//! `apiary-node-agent reset`: removes everything an agent made on its node — the cluster DNS
//! process, containers (and their shims, mounts and cgroups), pod sandboxes, pod volumes, veths
//! and IP leases, the BPF programs and pinned maps. `apiary down` runs it after stopping the
//! agent.

use std::path::{Path, PathBuf};

/// `apiary-node-agent reset`.
#[derive(Clone, Debug, clap::Args)]
pub struct ResetArgs {
    #[arg(long, default_value = "/var/lib/apiary/agent")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "/run/apiary/agent")]
    pub run_dir: PathBuf,
    #[arg(long, default_value = crate::dataplane::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[arg(long, default_value = "apiary")]
    pub cgroup_parent: String,
    /// The shim binary [default: apiary-shim next to this executable].
    #[arg(long)]
    pub shim: Option<PathBuf>,
}

pub async fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let shim = super::run::shim_path(args.shim.as_deref())?;
    // First, as it outlives the agent: it holds the node's address, port 53.
    let mut problems = crate::dns::supervisor::stop(
        &crate::dns::standalone::Layout::new(&args.run_dir),
        Some(&args.cgroup_parent),
    )
    .await;
    let _ = std::fs::remove_dir_all(crate::dns::standalone::Layout::new(&args.run_dir).dir);
    let state_dir = args.run_dir.join("containers");
    if state_dir.exists() {
        let runtime = apiary_runtime::Runtime::new(apiary_runtime::RuntimeConfig {
            state_dir,
            shim_path: shim,
            cgroup_parent: args.cgroup_parent.clone(),
        })?;
        for state in runtime.list()? {
            if matches!(state.status, apiary_runtime::ContainerStatus::Running) {
                let _ = runtime.stop(&state.id, std::time::Duration::ZERO).await;
            }
            if let Err(e) = runtime.remove(&state.id).await {
                problems.push(format!("container {}: {e}", state.id));
            }
        }
    }
    for dir in entries(&args.run_dir.join("pods")) {
        if let Err(e) = apiary_runtime::Sandbox::remove(&dir) {
            problems.push(format!("sandbox {}: {e}", dir.display()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    for dir in entries(&args.data_dir.join("pods")) {
        // Claims' volumes are unmounted, never removed: their data lives in the volume
        // directory, and a tree removed through a mount would take it along.
        if let Err(e) = super::volumes::csi::unmount_all(&dir) {
            problems.push(format!("CSI volumes of {}: {e}", dir.display()));
            continue;
        }
        if let Err(e) = super::volumes::remove_all(&dir) {
            problems.push(format!("volumes of {}: {e}", dir.display()));
            continue;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) =
        crate::network::PodNetwork::reset(&args.data_dir.join("network"), &args.pin_dir).await
    {
        problems.push(format!("pod network: {e:#}"));
    }
    remove_cgroup_parent(&args.cgroup_parent);
    if !problems.is_empty() {
        anyhow::bail!("reset left things behind:\n{}", problems.join("\n"));
    }
    Ok(())
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The (now empty) parent cgroup in every hierarchy.
fn remove_cgroup_parent(parent: &str) {
    let mut roots = entries(Path::new("/sys/fs/cgroup"));
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let dir = root.join(parent);
        if dir.is_dir() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
