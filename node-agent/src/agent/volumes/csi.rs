//! Pod volumes backed by PersistentVolumeClaims — `persistentVolumeClaim` sources and generic
//! `ephemeral` ones (whose claim is `<pod>-<volume>`, created by the control plane for the
//! pod) — mounted through their CSI driver as the kubelet's `csi` volume plugin does:
//! NodePublishVolume onto `<pod dir>/volumes/kubernetes.io~csi/<volume>/mount` — first
//! NodeStageVolume onto the volume's node-wide staging directory for drivers with the
//! `STAGE_UNSTAGE_VOLUME` capability, and NodeUnstageVolume once the node's last pod using it is
//! gone — with the driver and handle kept beside it (`vol_data.json`) so that a restarted agent, or the cleanup
//! of a pod that is gone, can unpublish it without the API. Mounts are never undone when the
//! agent exits: a published volume is recognised by its mount and kept.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use apiary_api::core_v1::{PersistentVolume, PersistentVolumeClaim, Pod, Volume};
use apiary_csi::{
    local::mount,
    v1::{
        NodeGetCapabilitiesRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
        NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
        node_client::NodeClient, node_service_capability, volume_capability,
    },
};
use serde::{Deserialize, Serialize};

use super::{
    PreparedVolume,
    ownership::{self, ChangePolicy},
};
use crate::{agent::context::Context, api_client::Found};

/// The kubelet's directory of CSI volumes in a pod's volume directory.
pub const KIND_DIR: &str = "kubernetes.io~csi";

/// What the kubelet records beside a published CSI volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeData {
    pub driver_name: String,
    pub volume_handle: String,
    #[serde(rename = "specVolID")]
    pub spec_volume_id: String,
    /// Where the volume was staged for the node (drivers that stage), to unstage it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging_target_path: Option<String>,
}

/// The node-wide staging directory of a volume, as the kubelet places it:
/// `<agent root>/plugins/kubernetes.io/csi/<driver>/<sha256 of the handle>/globalmount`, the
/// agent root being the directory of `pods/` that holds `pod_dir`.
pub fn staging_path(pod_dir: &Path, driver: &str, handle: &str) -> PathBuf {
    use sha2::Digest as _;
    let root = pod_dir.parent().and_then(Path::parent).unwrap_or(pod_dir);
    root.join("plugins/kubernetes.io/csi")
        .join(driver)
        .join(hex::encode(sha2::Sha256::digest(handle.as_bytes())))
        .join("globalmount")
}

/// Whether the driver behind `node` stages volumes (NodeGetCapabilities).
async fn stages(node: &mut NodeClient<apiary_csi::Channel>) -> Result<bool, tonic::Status> {
    let capabilities = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await?
        .into_inner()
        .capabilities;
    Ok(capabilities.iter().any(|c| {
        matches!(
            c.r#type,
            Some(node_service_capability::Type::Rpc(node_service_capability::Rpc { r#type }))
                if r#type == node_service_capability::rpc::Type::StageUnstageVolume as i32
        )
    }))
}

/// Whether another pod on this node (beside `pod_dir`) has `data`'s volume published.
fn published_elsewhere(pod_dir: &Path, data: &VolumeData) -> bool {
    let Some(pods) = pod_dir.parent() else {
        return false;
    };
    let Ok(entries) = fs::read_dir(pods) else {
        return false;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|other| other != pod_dir)
        .any(|other| {
            let Ok(volumes) = fs::read_dir(other.join("volumes").join(KIND_DIR)) else {
                return false;
            };
            volumes.flatten().any(|v| {
                read_volume_data(&v.path()).is_some_and(|d| {
                    d.driver_name == data.driver_name && d.volume_handle == data.volume_handle
                })
            })
        })
}

/// The claim a pod volume uses and whether the pod asks for it read-only; `None`: not a claim
/// volume.
pub fn claim_of(pod: &Pod, volume: &Volume) -> Option<(String, bool)> {
    if let Some(source) = &volume.persistent_volume_claim {
        return Some((source.claim_name.clone(), source.read_only));
    }
    volume
        .ephemeral
        .as_ref()
        .map(|_| (format!("{}-{}", pod.metadata.name, volume.name), false))
}

/// Why a claim cannot be mounted (yet): the FailedMount message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("persistentvolumeclaim \"{0}\" not found")]
    NotFound(String),
    #[error("PVC {namespace}/{claim} was not created for pod {namespace}/{pod} (pod is not owner)")]
    NotOwned {
        namespace: String,
        claim: String,
        pod: String,
    },
    #[error("persistentvolumeclaim \"{0}\" is being deleted")]
    Deleting(String),
    #[error("persistentvolumeclaim \"{0}\" is not bound")]
    NotBound(String),
    #[error("persistentvolume \"{0}\" not found")]
    VolumeNotFound(String),
    #[error("persistentvolume \"{0}\" is not a CSI volume; only CSI volumes can be mounted here")]
    NotCsi(String),
}

/// The volume name a claim is bound to, after the kubelet's checks (`getPVCExtractPV`): the
/// claim exists, is the pod's own for an ephemeral volume, is not being deleted, and is Bound.
pub fn bound_volume(
    pod: &Pod,
    volume: &Volume,
    claim_name: &str,
    claim: Option<&PersistentVolumeClaim>,
) -> Result<String, ClaimError> {
    let claim = claim.ok_or_else(|| ClaimError::NotFound(claim_name.to_owned()))?;
    if volume.ephemeral.is_some()
        && !claim
            .metadata
            .owner_references
            .iter()
            .any(|o| o.uid == pod.metadata.uid && o.controller == Some(true))
    {
        return Err(ClaimError::NotOwned {
            namespace: pod.metadata.namespace.clone(),
            claim: claim_name.to_owned(),
            pod: pod.metadata.name.clone(),
        });
    }
    if claim.metadata.deletion_timestamp.is_some() {
        return Err(ClaimError::Deleting(claim_name.to_owned()));
    }
    let bound = claim.status.as_ref().is_some_and(|s| s.phase == "Bound");
    if !bound || claim.spec.volume_name.is_empty() {
        return Err(ClaimError::NotBound(claim_name.to_owned()));
    }
    Ok(claim.spec.volume_name.clone())
}

/// `<pod dir>/volumes/kubernetes.io~csi/<volume>`.
pub fn volume_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_dir.join("volumes").join(KIND_DIR).join(volume)
}

/// Publishes the claim volume `volume` of `pod` (idempotent: already mounted, it is kept as
/// it is, without asking the API).
pub async fn publish(
    ctx: &Context,
    pod: &Pod,
    pod_dir: &Path,
    volume: &Volume,
) -> Result<PreparedVolume, String> {
    let (claim_name, pod_read_only) = claim_of(pod, volume).expect("a claim volume");
    let dir = volume_dir(pod_dir, &volume.name);
    let target = dir.join("mount");
    let read_only_recorded = dir.join("readonly");
    if mount::is_mounted(&target).unwrap_or(false) {
        return Ok(PreparedVolume {
            host_path: target,
            read_only: pod_read_only || read_only_recorded.exists(),
        });
    }
    let ns = &pod.metadata.namespace;
    let claim = match ctx
        .api
        .get::<PersistentVolumeClaim>(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim_name}"
        ))
        .await
        .map_err(|e| format!("{e:#}"))?
    {
        Found::Object(claim) => Some(claim),
        Found::Missing => None,
    };
    let pv_name =
        bound_volume(pod, volume, &claim_name, claim.as_ref()).map_err(|e| e.to_string())?;
    let pv = match ctx
        .api
        .get::<PersistentVolume>(&format!("/api/v1/persistentvolumes/{pv_name}"))
        .await
        .map_err(|e| format!("{e:#}"))?
    {
        Found::Object(pv) => pv,
        Found::Missing => return Err(ClaimError::VolumeNotFound(pv_name).to_string()),
    };
    let csi = pv
        .spec
        .csi
        .clone()
        .ok_or_else(|| ClaimError::NotCsi(pv_name.clone()).to_string())?;
    let channel = ctx.csi.get(&csi.driver).ok_or_else(|| {
        format!(
            "kubernetes.io/csi: mounter.SetUpAt failed to get CSI client: driver name {} not found in the list of registered CSI drivers",
            csi.driver
        )
    })?;
    let read_only = pod_read_only || csi.read_only;
    let rpc_error = |step: &str, s: tonic::Status| {
        format!(
            "{step} failed for volume \"{pv_name}\" : rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        )
    };
    let mut node = NodeClient::new(channel);
    let staging = if stages(&mut node)
        .await
        .map_err(|s| rpc_error("MountVolume.MountDevice", s))?
    {
        Some(staging_path(pod_dir, &csi.driver, &csi.volume_handle))
    } else {
        None
    };
    let data = VolumeData {
        driver_name: csi.driver.clone(),
        volume_handle: csi.volume_handle.clone(),
        spec_volume_id: pv_name.clone(),
        staging_target_path: staging.as_ref().map(|p| p.display().to_string()),
    };
    write_volume_data(&dir, &data, read_only)
        .map_err(|e| format!("writing {}: {e}", dir.display()))?;
    let mode = match pv.spec.access_modes.first().map(String::as_str) {
        Some("ReadOnlyMany") => volume_capability::access_mode::Mode::MultiNodeReaderOnly,
        Some("ReadWriteMany") => volume_capability::access_mode::Mode::MultiNodeMultiWriter,
        Some("ReadWriteOncePod") => volume_capability::access_mode::Mode::SingleNodeSingleWriter,
        _ => volume_capability::access_mode::Mode::SingleNodeWriter,
    };
    let capability = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: csi.fs_type.clone(),
                mount_flags: pv.spec.mount_options.clone(),
                ..Default::default()
            },
        )),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    };
    let volume_context: std::collections::HashMap<String, String> =
        csi.volume_attributes.clone().into_iter().collect();
    // The kubelet's MountDevice: staged once per node (idempotent for a volume staged already).
    if let Some(staging) = &staging {
        fs::create_dir_all(staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: csi.volume_handle.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(capability.clone()),
            volume_context: volume_context.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| rpc_error("MountVolume.MountDevice", s))?;
    }
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: csi.volume_handle.clone(),
        staging_target_path: staging
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability),
        readonly: read_only,
        volume_context,
        ..Default::default()
    })
    .await
    .map_err(|s| rpc_error("MountVolume.SetUp", s))?;
    // The pod's fsGroup, on the first mount only (`fsGroupChangePolicy` decides whether a
    // root that already matches is walked).
    if let Some(group) = ownership::fs_group(pod)
        && !read_only
    {
        let policy = ChangePolicy::of(pod);
        let path = target.clone();
        tokio::task::spawn_blocking(move || {
            ownership::set_volume_ownership(&path, group, policy, false)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("applying fsGroup {group} to volume \"{pv_name}\": {e}"))?;
    }
    Ok(PreparedVolume {
        host_path: target,
        read_only,
    })
}

/// The record beside a published volume's mount.
const VOLUME_DATA: &str = "vol_data.json";

fn read_volume_data(dir: &Path) -> Option<VolumeData> {
    let bytes = fs::read(dir.join(VOLUME_DATA)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_volume_data(dir: &Path, data: &VolumeData, read_only: bool) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec(data).map_err(io::Error::other)?;
    fs::write(dir.join(VOLUME_DATA), bytes)?;
    if read_only {
        fs::write(dir.join("readonly"), "")?;
    }
    Ok(())
}

/// Unpublishes every CSI volume of a pod that is gone (its `vol_data.json` says from which
/// driver) and removes their directories. A volume whose driver is not registered (yet) stays
/// mounted and is reported: its directory must not be removed with the data under it.
pub async fn unpublish_all(ctx: &Context, pod_dir: &Path) -> io::Result<()> {
    let root = pod_dir.join("volumes").join(KIND_DIR);
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(());
    };
    let mut failed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let target = dir.join("mount");
        let data = read_volume_data(&dir);
        let mounted = mount::is_mounted(&target).unwrap_or(true);
        if mounted {
            let channel = data.as_ref().and_then(|d| ctx.csi.get(&d.driver_name));
            let (Some(data), Some(channel)) = (data, channel) else {
                failed.push(format!(
                    "{}: its driver is not registered",
                    target.display()
                ));
                continue;
            };
            let mut node = NodeClient::new(channel);
            let answer = node
                .node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: data.volume_handle.clone(),
                    target_path: target.display().to_string(),
                })
                .await;
            if let Err(s) = answer {
                failed.push(format!("{}: {}", target.display(), s.message()));
                continue;
            }
            // The kubelet's UnmountDevice: the node's last user of a staged volume unstages it.
            if let Some(staging) = &data.staging_target_path
                && !published_elsewhere(pod_dir, &data)
            {
                let answer = node
                    .node_unstage_volume(NodeUnstageVolumeRequest {
                        volume_id: data.volume_handle.clone(),
                        staging_target_path: staging.clone(),
                    })
                    .await;
                match answer {
                    Ok(_) => {
                        // `globalmount` and the handle's directory, if the driver left them.
                        let staging = Path::new(staging);
                        let _ = fs::remove_dir(staging);
                        if let Some(parent) = staging.parent() {
                            let _ = fs::remove_dir(parent);
                        }
                    }
                    Err(s) => {
                        failed.push(format!("unstaging {staging}: {}", s.message()));
                        continue;
                    }
                }
            }
        }
        if mount::is_mounted(&target).unwrap_or(true) {
            failed.push(format!("{}: still mounted", target.display()));
            continue;
        }
        fs::remove_dir_all(&dir)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "unpublishing CSI volumes: {}",
            failed.join("; ")
        )))
    }
}

/// Unmounts every CSI volume of a pod directly, without its driver (the node's reset: the
/// agent and its drivers are gone). Bind-mount drivers such as local-path need nothing more.
pub fn unmount_all(pod_dir: &Path) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(pod_dir.join("volumes").join(KIND_DIR)) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        mount::unbind(&entry.path().join("mount"))?;
    }
    Ok(())
}

/// Whether anything is still mounted under the pod's CSI volumes (their directories must then
/// stay).
pub fn any_mounted(pod_dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(pod_dir.join("volumes").join(KIND_DIR)) else {
        return false;
    };
    entries
        .flatten()
        .any(|e| mount::is_mounted(&e.path().join("mount")).unwrap_or(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "web", "namespace": "ns", "uid": "pod-uid" },
            "spec": { "containers": [] },
        }))
        .unwrap()
    }

    fn claim(phase: &str, volume: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": { "name": "data", "namespace": "ns", "uid": "c" },
            "spec": { "volumeName": volume },
            "status": { "phase": phase },
        }))
        .unwrap()
    }

    #[test]
    fn claim_volumes_name_their_claim() {
        let pvc: Volume = serde_json::from_value(json!({
            "name": "v", "persistentVolumeClaim": { "claimName": "data", "readOnly": true }
        }))
        .unwrap();
        assert_eq!(claim_of(&pod(), &pvc), Some(("data".into(), true)));
        let ephemeral: Volume = serde_json::from_value(json!({
            "name": "scratch", "ephemeral": { "volumeClaimTemplate": { "spec": {} } }
        }))
        .unwrap();
        assert_eq!(
            claim_of(&pod(), &ephemeral),
            Some(("web-scratch".into(), false))
        );
        let empty: Volume = serde_json::from_value(json!({ "name": "e", "emptyDir": {} })).unwrap();
        assert_eq!(claim_of(&pod(), &empty), None);
    }

    #[test]
    fn only_a_bound_claim_resolves_to_its_volume() {
        let pvc: Volume = serde_json::from_value(json!({
            "name": "v", "persistentVolumeClaim": { "claimName": "data" }
        }))
        .unwrap();
        assert_eq!(
            bound_volume(&pod(), &pvc, "data", None),
            Err(ClaimError::NotFound("data".into()))
        );
        assert_eq!(
            bound_volume(&pod(), &pvc, "data", Some(&claim("Pending", ""))),
            Err(ClaimError::NotBound("data".into()))
        );
        assert_eq!(
            bound_volume(&pod(), &pvc, "data", Some(&claim("Bound", "pvc-c"))).unwrap(),
            "pvc-c"
        );
        assert_eq!(
            ClaimError::NotBound("data".into()).to_string(),
            "persistentvolumeclaim \"data\" is not bound"
        );
    }

    #[test]
    fn an_ephemeral_volume_uses_only_the_claim_made_for_its_pod() {
        let ephemeral: Volume = serde_json::from_value(json!({
            "name": "scratch", "ephemeral": { "volumeClaimTemplate": { "spec": {} } }
        }))
        .unwrap();
        let mut stranger = claim("Bound", "pvc-c");
        assert!(matches!(
            bound_volume(&pod(), &ephemeral, "web-scratch", Some(&stranger)),
            Err(ClaimError::NotOwned { .. })
        ));
        stranger.metadata.owner_references = serde_json::from_value(json!([{
            "apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "pod-uid", "controller": true
        }]))
        .unwrap();
        assert_eq!(
            bound_volume(&pod(), &ephemeral, "web-scratch", Some(&stranger)).unwrap(),
            "pvc-c"
        );
    }

    #[test]
    fn volumes_without_a_mount_are_cleaned_up_without_a_driver() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = volume_dir(tmp.path(), "v");
        fs::create_dir_all(dir.join("mount")).unwrap();
        assert!(!any_mounted(tmp.path()));
    }
}
