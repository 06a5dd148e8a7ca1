//! Apiary's built-in local-path CSI driver (`local.csi.apiary.dev`): a directory per volume
//! under the node's volume directory, with a project quota where the filesystem has them, bind
//! mounted into pods. It is a whole CSI plugin — Identity, Controller and Node services on its
//! own unix socket — run by the node agent and driven through the same CSI client as any
//! third-party driver; its controller runs on every node, for that node's volumes only (CSI's
//! distributed provisioning, as `external-provisioner --node-deployment` runs it).
//!
//! It lives here rather than in the agent so that it depends only on the protocol (no API
//! client, no runtime): what it does is tested through its gRPC surface alone.

pub mod controller;
pub mod identity;
pub mod mount;
pub mod node;
pub mod quota;
pub mod store;

use std::{path::PathBuf, sync::Arc};

use crate::v1::{
    Topology, controller_server::ControllerServer, identity_server::IdentityServer,
    node_server::NodeServer,
};

/// The driver's name (`apiary_api::storage_v1::LOCAL_PATH_DRIVER`).
pub const DRIVER_NAME: &str = "local.csi.apiary.dev";
/// Its topology key: volumes are reachable from the node of this label's value
/// (`apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY`).
pub const TOPOLOGY_KEY: &str = "topology.local.csi.apiary.dev/node";

/// How the driver is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node it runs on: its node id and topology segment.
    pub node: String,
    /// Where volume directories are made.
    pub volume_dir: PathBuf,
    /// A fixed capacity instead of the filesystem's free space.
    pub capacity: Option<u64>,
}

/// The driver's state, shared by its three services.
#[derive(Debug)]
pub struct Driver {
    pub node: String,
    pub store: store::Store,
    /// Whether the volume directory's filesystem enforces project quotas.
    pub quotas: bool,
}

impl Driver {
    /// Opens the volume directory and finds out whether it can have quotas.
    pub fn new(config: Config) -> Result<Arc<Self>, store::Error> {
        let store = store::Store::open(&config.volume_dir, config.capacity)?;
        let quotas = match quota::supported(&config.volume_dir) {
            Ok(()) => {
                tracing::info!(dir = %config.volume_dir.display(), "local-path volumes get project quotas");
                true
            }
            Err(e) => {
                tracing::info!(
                    dir = %config.volume_dir.display(),
                    reason = %e,
                    "no project quotas on the volume directory's filesystem; local-path volumes go without"
                );
                false
            }
        };
        Ok(Arc::new(Self {
            node: config.node,
            store,
            quotas,
        }))
    }

    /// The topology segment of this node's volumes.
    pub fn topology(&self) -> Topology {
        Topology {
            segments: [(TOPOLOGY_KEY.to_owned(), self.node.clone())].into(),
        }
    }

    /// The gRPC router of the driver's Identity, Controller and Node services.
    pub fn router(self: &Arc<Self>) -> tonic::transport::server::Router {
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(identity::Identity))
            .add_service(ControllerServer::new(controller::Controller(Arc::clone(
                self,
            ))))
            .add_service(NodeServer::new(node::Node(Arc::clone(self))))
    }
}

/// The socket of a driver under the agent's run directory (`<run-dir>/plugins/<driver>/csi.sock`,
/// as the kubelet's CSI drivers place theirs).
pub fn socket_path(run_dir: &std::path::Path, driver: &str) -> PathBuf {
    run_dir.join("plugins").join(driver).join("csi.sock")
}
