//! An HA control plane in the lab's underlay namespace: three etcd members on loopback and
//! three control planes sharing one cluster CA (as kubeadm's joined control planes do), each
//! on an address of its own on the underlay and with its own serving certificate, each
//! reaching the members through a [`Link`] the suite can cut.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{etcd::Etcd, link::Link, load::Api, process::Process};
use crate::cluster::{CLUSTER_CIDR, binary};

/// The control planes' addresses on the underlay, beside the lab's single control plane's
/// (10.123.0.254), which nothing serves in this suite.
pub const ADDRESSES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 123, 0, 251),
    Ipv4Addr::new(10, 123, 0, 252),
    Ipv4Addr::new(10, 123, 0, 253),
];
/// The members' first client port on loopback (client and peer ports alternate from it).
const ETCD_PORTS: u16 = 22379;

pub struct ControlPlane {
    pub identity: String,
    /// `https://<address>:6443`.
    pub base: String,
    pub process: Process,
}

pub struct Ha {
    pub etcd: Etcd,
    pub control_planes: Vec<ControlPlane>,
    /// Each control plane's link to the members.
    pub links: Vec<Link>,
    pub api: Api,
    /// The first control plane's data dir: the cluster's kubeconfig and `pki/`.
    pub first_data: PathBuf,
}

impl Ha {
    /// Starts it all under `dir`, in the caller's network namespace (the underlay, where the
    /// [`ADDRESSES`] are), with `flags` for every control plane besides their own; waits until
    /// it is whole. The first control plane logs to `first_log`.
    pub async fn start(dir: &Path, flags: &[&str], first_log: PathBuf) -> anyhow::Result<Self> {
        let etcd = Etcd::start(&dir.join("etcd"), 3, ETCD_PORTS)?;
        let since = Instant::now();
        while etcd.healthy().await < 3 {
            anyhow::ensure!(
                since.elapsed() < Duration::from_secs(60),
                "etcd did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let members: Vec<u16> = etcd.members.iter().map(|m| m.client).collect();
        let mut links = Vec::new();
        for _ in &ADDRESSES {
            links.push(Link::start(&members).await?);
        }
        let first_data = dir.join("cp0");
        let mut control_planes = Vec::new();
        for (i, (address, link)) in ADDRESSES.iter().zip(&links).enumerate() {
            let identity = format!("cp{i}");
            let data = dir.join(&identity);
            let mut args = vec![
                "--data-dir".to_owned(),
                data.display().to_string(),
                "--listen".to_owned(),
                format!("{address}:6443"),
                "--identity".to_owned(),
                identity.clone(),
                "--cluster-cidr".to_owned(),
                CLUSTER_CIDR.to_owned(),
            ];
            if i > 0 {
                args.extend([
                    "--shared-pki-from".to_owned(),
                    first_data.display().to_string(),
                ]);
            }
            args.extend(etcd.control_plane_flags(&link.endpoints()));
            args.extend(flags.iter().map(|f| (*f).to_owned()));
            let log = if i == 0 {
                first_log.clone()
            } else {
                dir.join(format!("{identity}.log"))
            };
            let process = Process::start(binary("apiary-control-plane"), args, log)?;
            control_planes.push(ControlPlane {
                identity,
                base: format!("https://{address}:6443"),
                process,
            });
            if i == 0 {
                // The others copy its CA: it must be written first.
                let kubeconfig = first_data.join("kubeconfig");
                let since = Instant::now();
                while !kubeconfig.exists() {
                    anyhow::ensure!(
                        since.elapsed() < Duration::from_secs(60),
                        "the first control plane did not start"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let api = Api::new(&first_data.join("pki")).context("the cluster's admin credentials")?;
        let ha = Self {
            etcd,
            control_planes,
            links,
            api,
            first_data,
        };
        let since = Instant::now();
        while let Some(broken) = ha.broken_part().await {
            anyhow::ensure!(
                since.elapsed() < Duration::from_secs(60),
                "the HA control plane did not come up: {broken}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(ha)
    }

    /// The index of the control plane named `leader` (the first when none leads).
    pub fn leading(&self, leader: Option<&str>) -> usize {
        self.control_planes
            .iter()
            .position(|c| Some(c.identity.as_str()) == leader)
            .unwrap_or(0)
    }

    pub fn bases(&self) -> Vec<String> {
        self.control_planes.iter().map(|c| c.base.clone()).collect()
    }

    /// What is not whole: a member not healthy, a control plane not ready, or no leader.
    pub async fn broken_part(&self) -> Option<String> {
        let healthy = self.etcd.healthy().await;
        if healthy < self.etcd.members.len() {
            return Some(format!("{healthy} etcd members healthy"));
        }
        for cp in &self.control_planes {
            if !self.api.ready(&cp.base).await {
                return Some(format!("{} not ready", cp.identity));
            }
        }
        match self.api.leader(&self.bases()).await {
            Some(_) => None,
            None => Some("no control plane leads".into()),
        }
    }
}
