//! The Node service: a volume's directory bind-mounted where the orchestrator asks (no staging:
//! there is no device to attach), its usage, and this node's identity and topology.

use std::{path::PathBuf, sync::Arc};

use tonic::{Request, Response, Status};

use crate::v1::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeUnpublishVolumeRequest,
    NodeUnpublishVolumeResponse, VolumeUsage,
    node_server::Node as NodeService,
    node_service_capability::{self, rpc},
    volume_usage::Unit,
};

use super::{Driver, controller, mount, quota, store};

/// The Node service of the local-path driver.
#[derive(Clone, Debug)]
pub struct Node(pub Arc<Driver>);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
}

impl Node {
    fn record(&self, id: &str) -> Result<store::VolumeRecord, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("the volume id is required"));
        }
        self.0
            .store
            .get(id)
            .map_err(controller::status)?
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist on this node")))
    }
}

#[tonic::async_trait]
impl NodeService for Node {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.target_path.is_empty() {
            return Err(Status::invalid_argument("the target path is required"));
        }
        let capability = request
            .volume_capability
            .ok_or_else(|| Status::invalid_argument("the volume capability is required"))?;
        controller::check_capabilities(&[capability])?;
        let record = self.record(&request.volume_id)?;
        let source = self
            .0
            .store
            .path(&record.name)
            .map_err(controller::status)?;
        let target = PathBuf::from(&request.target_path);
        let read_only = request.readonly;
        blocking(move || {
            mount::bind(&source, &target, read_only).map_err(|e| {
                Status::internal(format!(
                    "bind-mounting {} on {}: {e}",
                    source.display(),
                    target.display()
                ))
            })
        })
        .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() || request.target_path.is_empty() {
            return Err(Status::invalid_argument(
                "the volume id and target path are required",
            ));
        }
        let target = PathBuf::from(&request.target_path);
        blocking(move || {
            mount::unbind(&target)
                .map_err(|e| Status::internal(format!("unmounting {}: {e}", target.display())))
        })
        .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let request = request.into_inner();
        let record = self.record(&request.volume_id)?;
        let path = PathBuf::from(&request.volume_path);
        if !path.is_dir() {
            return Err(Status::not_found(format!(
                "{} is not published",
                request.volume_path
            )));
        }
        let driver = Arc::clone(&self.0);
        let used = blocking(move || {
            let dir = driver
                .store
                .path(&record.name)
                .map_err(controller::status)?;
            let quota_usage = driver
                .quotas
                .then(|| quota::usage(&dir, record.project_id).ok())
                .flatten();
            Ok(quota_usage.unwrap_or_else(|| store::disk_usage(&dir)))
        })
        .await?;
        let record = self.record(&request.volume_id)?;
        let total = record.capacity_bytes as i64;
        let used = used as i64;
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: vec![VolumeUsage {
                available: (total - used).max(0),
                total,
                used,
                unit: Unit::Bytes as i32,
            }],
            volume_condition: None,
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        // The controller's quota change is the resize: a directory has no filesystem to grow.
        let record = self.record(&request.into_inner().volume_id)?;
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: record.capacity_bytes as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let rpc = |t: rpc::Type| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![rpc(rpc::Type::ExpandVolume), rpc(rpc::Type::GetVolumeStats)],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.0.node.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(self.0.topology()),
        }))
    }
}
