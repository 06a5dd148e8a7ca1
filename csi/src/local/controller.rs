//! The Controller service: volumes created, grown and deleted in this node's volume directory,
//! and the capacity left for more.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use tonic::{Request, Response, Status};

use crate::v1::{
    ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerServiceCapability, CreateVolumeRequest, CreateVolumeResponse, DeleteVolumeRequest,
    DeleteVolumeResponse, GetCapacityRequest, GetCapacityResponse, Topology, VolumeCapability,
    controller_server::Controller as ControllerService,
    controller_service_capability::{self, rpc},
    volume_capability::AccessType,
};

use super::{Driver, TOPOLOGY_KEY, quota, store};

/// The size of a volume whose claim asks for none (CSI leaves it to the plugin).
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;

/// The Controller service of the local-path driver.
#[derive(Clone, Debug)]
pub struct Controller(pub Arc<Driver>);

/// A store error as CSI's status codes say it.
pub(super) fn status(e: store::Error) -> Status {
    match e {
        store::Error::Exhausted { .. } => Status::resource_exhausted(e.to_string()),
        store::Error::Conflict { .. } => Status::already_exists(e.to_string()),
        store::Error::NotFound(_) => Status::not_found(e.to_string()),
        store::Error::InvalidName(_) => Status::invalid_argument(e.to_string()),
        store::Error::Io { .. } => Status::internal(e.to_string()),
    }
}

/// Directories are mounted, never handed out as block devices.
pub(super) fn check_capabilities(capabilities: &[VolumeCapability]) -> Result<(), Status> {
    for capability in capabilities {
        if let Some(AccessType::Block(_)) = capability.access_type {
            return Err(Status::invalid_argument(
                "local-path volumes are directories: block access is not supported",
            ));
        }
    }
    Ok(())
}

impl Controller {
    /// Whether `topology` (when given) includes this node.
    fn is_ours(&self, topology: &Topology) -> bool {
        topology
            .segments
            .get(TOPOLOGY_KEY)
            .is_none_or(|node| *node == self.0.node)
    }

    /// Sets up a new volume's directory: world-writable as a local-path volume is (the pod's
    /// `fsGroup` narrows it), under its quota where the filesystem has them.
    fn make_dir(&self, path: &Path, record: &store::VolumeRecord) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
        if self.0.quotas {
            quota::apply(path, record.project_id, record.capacity_bytes)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ControllerService for Controller {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("the volume name is required"));
        }
        if request.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume capabilities are required"));
        }
        check_capabilities(&request.volume_capabilities)?;
        if request.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "local-path volumes cannot be created from a snapshot or another volume",
            ));
        }
        if let Some(requirements) = &request.accessibility_requirements {
            let named: Vec<&Topology> = requirements
                .requisite
                .iter()
                .chain(&requirements.preferred)
                .collect();
            if !named.is_empty() && !named.iter().any(|t| self.is_ours(t)) {
                return Err(Status::resource_exhausted(format!(
                    "local-path volumes of node {} cannot be reached from the requested topology",
                    self.0.node
                )));
            }
        }
        let range = request.capacity_range.unwrap_or_default();
        let bytes = match (range.required_bytes, range.limit_bytes) {
            (0, 0) => DEFAULT_VOLUME_BYTES,
            (0, limit) => (limit as u64).min(DEFAULT_VOLUME_BYTES),
            (required, _) => required as u64,
        };
        if range.limit_bytes > 0 && bytes > range.limit_bytes as u64 {
            return Err(Status::out_of_range(format!(
                "required {} bytes exceeds the limit of {}",
                range.required_bytes, range.limit_bytes
            )));
        }
        let parameters: BTreeMap<String, String> = request.parameters.into_iter().collect();
        let driver = Arc::clone(&self.0);
        let this = self.clone();
        let name = request.name.clone();
        let (record, created) = tokio::task::spawn_blocking(move || {
            driver
                .store
                .create(&name, bytes, parameters, |p, r| this.make_dir(p, r))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        if created {
            tracing::info!(volume = %record.name, bytes = record.capacity_bytes, "created a local-path volume");
        }
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(crate::v1::Volume {
                capacity_bytes: record.capacity_bytes as i64,
                volume_id: record.name,
                volume_context: record.parameters.into_iter().collect(),
                content_source: None,
                accessible_topology: vec![self.0.topology()],
            }),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let id = request.into_inner().volume_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("the volume id is required"));
        }
        let driver = Arc::clone(&self.0);
        let quotas = driver.quotas;
        let deleted = tokio::task::spawn_blocking(move || {
            driver.store.delete(&id, |path, record| {
                if quotas && let Err(e) = quota::resize(path, record.project_id, 0) {
                    tracing::warn!(volume = %record.name, error = %e, "lifting a volume's quota");
                }
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        if let Some(record) = deleted {
            tracing::info!(volume = %record.name, "deleted a local-path volume");
        }
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let request = request.into_inner();
        let bytes = request
            .capacity_range
            .map(|r| r.required_bytes.max(r.limit_bytes))
            .filter(|b| *b > 0)
            .ok_or_else(|| Status::invalid_argument("a capacity range is required"))?
            as u64;
        let driver = Arc::clone(&self.0);
        let quotas = driver.quotas;
        let id = request.volume_id;
        let record = tokio::task::spawn_blocking(move || {
            driver.store.expand(&id, bytes, |path, record| {
                if quotas {
                    quota::resize(path, record.project_id, record.capacity_bytes)
                } else {
                    Ok(())
                }
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: record.capacity_bytes as i64,
            // The quota is the whole resize; NodeExpandVolume has nothing left to do, but the
            // CO calls it so that a driver needing a node step is driven the same way.
            node_expansion_required: true,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let request = request.into_inner();
        check_capabilities(&request.volume_capabilities)?;
        if let Some(topology) = &request.accessible_topology
            && !self.is_ours(topology)
        {
            return Ok(Response::new(GetCapacityResponse {
                available_capacity: 0,
                maximum_volume_size: Some(0),
                minimum_volume_size: None,
            }));
        }
        let driver = Arc::clone(&self.0);
        let available = tokio::task::spawn_blocking(move || driver.store.available())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        let available = i64::try_from(available).unwrap_or(i64::MAX);
        Ok(Response::new(GetCapacityResponse {
            available_capacity: available,
            maximum_volume_size: Some(available),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let rpc = |t: rpc::Type| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![
                rpc(rpc::Type::CreateDeleteVolume),
                rpc(rpc::Type::GetCapacity),
                rpc(rpc::Type::ExpandVolume),
            ],
        }))
    }
}
