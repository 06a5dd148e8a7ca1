//! The embedded store's disk filling up, under the write load and the data plane's request
//! loops: a lab cluster whose single control plane keeps its data on a 48 MiB tmpfs with a
//! 16 MiB filler file is written to until the store refuses writes (507); reads go on; then the
//! filler goes and writes must resume by themselves. The pods' requests must not notice.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Outcome, Timing, WHOLE_BOUND, data_plane,
    load::{Api, Load, longest_gap},
    process::Process,
};
use crate::cluster::{CLUSTER_CIDR, CONTROL_PLANE_IP, ClusterLab, ControlPlanes, binary};

/// Unmounts the tmpfs however the step ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The control plane on its tmpfs. Fields drop in order: the process is killed before the
/// tmpfs is unmounted.
struct OnTmpfs {
    process: Process,
    filler: PathBuf,
    data: PathBuf,
    _mount: Mount,
}

/// Mounts the tmpfs under `dir`, fills 16 MiB of it and starts the control plane on the rest
/// at the lab's control plane address; waits for its kubeconfig.
fn start_on_tmpfs(dir: &std::path::Path) -> anyhow::Result<OnTmpfs> {
    let mount = dir.join("disk");
    std::fs::create_dir_all(&mount)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "apiary-faults"])
        .arg(&mount)
        .status()
        .context("mount")?;
    anyhow::ensure!(status.success(), "mounting a tmpfs failed: {status}");
    let guard = Mount(mount.clone());
    let filler = mount.join("filler");
    std::fs::write(&filler, vec![0u8; 16 << 20])?;
    let data = mount.join("cp");
    let args = vec![
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--listen".to_owned(),
        format!("{CONTROL_PLANE_IP}:6443"),
        "--cluster-cidr".to_owned(),
        CLUSTER_CIDR.to_owned(),
    ];
    let process = Process::start(
        binary("apiary-control-plane"),
        args,
        dir.join("control-plane.log"),
    )?;
    let since = Instant::now();
    while !data.join("kubeconfig").exists() {
        anyhow::ensure!(
            since.elapsed() < WHOLE_BOUND,
            "the control plane did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(OnTmpfs {
        process,
        filler,
        data,
        _mount: guard,
    })
}

/// Runs the step in a lab of its own.
pub fn full(timing: Timing) -> anyhow::Result<Outcome> {
    let mut started = None;
    let cluster = ClusterLab::start_on(
        2,
        ControlPlanes::Started(Box::new(|underlay, dir| {
            crate::lab::enter(underlay)?;
            let on_tmpfs = start_on_tmpfs(dir)?;
            let data = on_tmpfs.data.clone();
            started = Some(on_tmpfs);
            Ok(data)
        })),
        &[],
    )?;
    let mut on_tmpfs = started.context("the control plane did not start")?;
    data_plane::start(&cluster, "node1").map_err(|e| e.context(cluster.logs()))?;
    // The runtime's threads are born in this lab's underlay, which the thread entered.
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(fill(&cluster, &on_tmpfs, timing));
    on_tmpfs.process.kill();
    drop(cluster);
    outcome
}

async fn fill(cluster: &ClusterLab, on_tmpfs: &OnTmpfs, timing: Timing) -> anyhow::Result<Outcome> {
    let api = Api::new(&on_tmpfs.data.join("pki"))?;
    let base = format!("https://{CONTROL_PLANE_IP}:6443");
    let bases = vec![base.clone()];
    let from = data_plane::uptime();
    // 16 KiB ConfigMaps fill 32 MiB in about 2,000 writes.
    let load = Load::start(&api, &bases, "disk", 16 << 10);
    let filling = Instant::now();
    while !load.failed_with("507") {
        if filling.elapsed() > WHOLE_BOUND {
            bail!("writes never failed with 507");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let broken = Instant::now();
    println!("disk full after {:.1?}", filling.elapsed());
    anyhow::ensure!(!api.ready(&base).await, "/readyz said ready on a full disk");
    tokio::time::sleep(timing.held).await;
    std::fs::remove_file(&on_tmpfs.filler)?;
    let freed = Instant::now();
    let before = load.written();
    let mut whole = None;
    while freed.elapsed() < WHOLE_BOUND {
        if load.written() > before && api.ready(&base).await {
            whole = Some(freed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(timing.after).await;
    let (seen, _, read_outage) = load.stop().await;
    let to = data_plane::uptime();
    let write_outage = longest_gap(&seen.writes, broken, Instant::now());
    let lost = api.lost(&bases, &seen).await;
    let others: Vec<_> = seen.failures.keys().filter(|k| *k != "507").collect();
    anyhow::ensure!(
        others.is_empty(),
        "writes failed other than with 507: {:?}",
        seen.failures
    );
    let requests = |pod| data_plane::requests(cluster, pod, from, to);
    Ok(Outcome {
        fault: "disk full (embedded store)",
        acknowledged: seen.acknowledged.len(),
        lost,
        unanswered_but_applied: seen.unanswered_but_applied,
        write_outage,
        read_outage,
        by_ip: requests("by-ip"),
        by_name: requests("by-name"),
        denied: requests("denied"),
        controllers: None,
        whole: whole.unwrap_or(WHOLE_BOUND + Duration::from_secs(1)),
        failures: seen.failures,
    })
}
