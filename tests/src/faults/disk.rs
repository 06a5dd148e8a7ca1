//! The embedded store's disk filling up: a single control plane whose data dir is a 48 MiB
//! tmpfs with a 16 MiB filler file, written to until the store refuses writes (507), read
//! meanwhile; then the filler goes and writes must resume by themselves.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Outcome, Timing, WHOLE_BOUND,
    load::{Api, Load, longest_gap},
    process::Process,
};
use crate::cluster::binary;

/// Where the control plane listens (loopback of the suite's namespace).
const LISTEN: &str = "127.0.0.1:26443";

/// Unmounts the tmpfs however the step ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub async fn full(timing: Timing) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new().prefix("apiary-disk-").tempdir()?;
    let mount = dir.path().join("disk");
    std::fs::create_dir_all(&mount)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "apiary-faults"])
        .arg(&mount)
        .status()
        .context("mount")?;
    anyhow::ensure!(status.success(), "mounting a tmpfs failed: {status}");
    let _mount = Mount(mount.clone());
    let filler = mount.join("filler");
    std::fs::write(&filler, vec![0u8; 16 << 20])?;
    let data = mount.join("cp");
    let args = vec![
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--listen".to_owned(),
        LISTEN.to_owned(),
    ];
    let mut cp = Process::start(
        binary("apiary-control-plane"),
        args,
        dir.path().join("cp.log"),
    )?;
    let since = Instant::now();
    while !data.join("kubeconfig").exists() {
        anyhow::ensure!(
            since.elapsed() < WHOLE_BOUND,
            "the control plane did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api = Api::new(&data.join("pki"))?;
    let base = format!("https://{LISTEN}");
    let bases = vec![base.clone()];
    while !api.ready(&base).await {
        anyhow::ensure!(
            since.elapsed() < WHOLE_BOUND,
            "the control plane never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    std::fs::remove_file(&filler)?;
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
    let write_outage = longest_gap(&seen.writes, broken, Instant::now());
    let lost = api.lost(&bases, &seen).await;
    cp.kill();
    let others: Vec<_> = seen.failures.keys().filter(|k| *k != "507").collect();
    anyhow::ensure!(
        others.is_empty(),
        "writes failed other than with 507: {:?}",
        seen.failures
    );
    Ok(Outcome {
        fault: "disk full (embedded store)",
        acknowledged: seen.acknowledged.len(),
        lost,
        unanswered_but_applied: seen.unanswered_but_applied,
        write_outage,
        read_outage,
        by_ip: Default::default(),
        by_name: Default::default(),
        denied: Default::default(),
        leader_back: None,
        whole: whole.unwrap_or(WHOLE_BOUND + Duration::from_secs(1)),
        failures: seen.failures,
    })
}
