//! Persistent storage on this node through CSI: the built-in local-path driver served on its
//! socket, every driver registered as the kubelet registers them ([`registration`]), and, for
//! drivers whose controller runs on this node, what Kubernetes' CSI sidecars do —
//! external-provisioner and external-resizer ([`provisioner`]) and the capacity publisher
//! ([`capacity`]). Third-party drivers announce themselves through the kubelet's plugin
//! registry ([`plugins`]). Pods' claims are mounted by `volumes::csi` through the same clients.

pub mod capacity;
pub mod plugins;
pub mod provisioner;
pub mod registration;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use apiary_csi::{
    Channel,
    local::{self, Driver},
};

use super::context::Context;

/// The CSI drivers registered on this node, by name: a channel to each one's socket.
#[derive(Clone, Debug, Default)]
pub struct Drivers(Arc<RwLock<BTreeMap<String, Channel>>>);

impl Drivers {
    pub fn get(&self, name: &str) -> Option<Channel> {
        self.0.read().expect("drivers lock").get(name).cloned()
    }

    pub fn insert(&self, name: &str, channel: Channel) {
        self.0
            .write()
            .expect("drivers lock")
            .insert(name.to_owned(), channel);
    }

    pub fn remove(&self, name: &str) {
        self.0.write().expect("drivers lock").remove(name);
    }

    pub fn names(&self) -> Vec<String> {
        self.0
            .read()
            .expect("drivers lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// How the node's storage is set up (`--volume-dir`, `--volume-capacity`).
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub run_dir: PathBuf,
    pub volume_dir: PathBuf,
    pub capacity: Option<u64>,
}

/// Serves the local-path driver, registers it, and runs its provisioner; returns once the
/// driver answers (its volumes can be mounted from then on), the rest runs in the background.
pub async fn start(ctx: &Arc<Context>, config: StorageConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let driver = Driver::new(local::Config {
        node: ctx.node.name.clone(),
        volume_dir: config.volume_dir.clone(),
        capacity: config.capacity,
    })
    .with_context(|| {
        format!(
            "opening the volume directory {}",
            config.volume_dir.display()
        )
    })?;
    let socket = local::socket_path(&config.run_dir, local::DRIVER_NAME);
    let router = driver.router();
    {
        let socket = socket.clone();
        // Never stopped: volumes stay mounted across agent restarts, and the driver is only
        // needed while the agent runs.
        tokio::spawn(async move {
            if let Err(e) = apiary_csi::serve(router, &socket, std::future::pending()).await {
                tracing::error!(error = %e, "the local-path CSI driver stopped");
            }
        });
    }
    let channel = connect(&socket).await?;
    let info = registration::register(ctx, &channel).await?;
    ctx.csi.insert(&info.name, channel.clone());
    tokio::spawn(provisioner::Provisioner::new(Arc::clone(ctx), info.name.clone(), channel).run());
    // Third-party drivers register through the kubelet's plugin registry.
    tokio::spawn(plugins::watch(
        Arc::clone(ctx),
        plugins::registry_dir(&config.run_dir),
    ));
    Ok(())
}

/// Connects to the driver at `socket`, waiting for it to come up (10 s at most).
async fn connect(socket: &std::path::Path) -> anyhow::Result<Channel> {
    let mut last = None;
    for _ in 0..100 {
        match apiary_csi::connect(socket).await {
            Ok(channel) => return Ok(channel),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!(
        "the CSI driver on {} did not answer: {}",
        socket.display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}
