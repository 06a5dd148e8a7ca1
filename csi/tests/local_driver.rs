//! The local-path driver through its gRPC surface, over a unix socket as the node agent reaches
//! it (no root needed: publish/unpublish with real mounts are in `tests/`).

use std::{path::Path, time::Duration};

use apiary_csi::{
    local::{self, Driver},
    v1::{
        CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, GetCapacityRequest,
        GetPluginInfoRequest, NodeGetInfoRequest, ProbeRequest, Topology, VolumeCapability,
        controller_client::ControllerClient, identity_client::IdentityClient,
        node_client::NodeClient, volume_capability,
    },
};

const MIB: i64 = 1 << 20;

fn mount_capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume::default(),
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_capability()],
        ..Default::default()
    }
}

/// Serves a driver on `<dir>/csi.sock` with 10 MiB of capacity; returns its channel and a
/// handle that stops it when dropped.
async fn start(dir: &Path) -> (apiary_csi::Channel, tokio::sync::oneshot::Sender<()>) {
    let driver = Driver::new(local::Config {
        node: "node-a".into(),
        volume_dir: dir.join("volumes"),
        capacity: Some(10 * MIB as u64),
    })
    .unwrap();
    let socket = dir.join("plugins/local.csi.apiary.dev/csi.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = driver.router();
    let path = socket.clone();
    tokio::spawn(async move {
        apiary_csi::serve(router, &path, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    for _ in 0..100 {
        if let Ok(channel) = apiary_csi::connect(&socket).await {
            return (channel, stop);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the driver did not come up on {}", socket.display());
}

#[tokio::test]
async fn identity_and_node_info_name_the_driver_and_its_node() {
    let tmp = tempfile::tempdir().unwrap();
    let (channel, _stop) = start(tmp.path()).await;
    let mut identity = IdentityClient::new(channel.clone());
    let info = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "local.csi.apiary.dev");
    assert!(!info.vendor_version.is_empty());
    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let node = NodeClient::new(channel)
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.node_id, "node-a");
    assert_eq!(
        node.accessible_topology.unwrap().segments["topology.local.csi.apiary.dev/node"],
        "node-a"
    );
}

#[tokio::test]
async fn volumes_are_created_once_counted_against_capacity_and_refused_past_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (channel, _stop) = start(tmp.path()).await;
    let mut controller = ControllerClient::new(channel);
    let volume = controller
        .create_volume(create("pvc-1", 4 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(volume.volume_id, "pvc-1");
    assert_eq!(volume.capacity_bytes, 4 * MIB);
    assert_eq!(
        volume.accessible_topology[0].segments["topology.local.csi.apiary.dev/node"],
        "node-a"
    );
    assert!(tmp.path().join("volumes/pvc-1").is_dir());
    // The same request again (a provisioner retrying after a lost answer) is the same volume.
    let again = controller
        .create_volume(create("pvc-1", 4 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, "pvc-1");
    let capacity = controller
        .get_capacity(GetCapacityRequest {
            volume_capabilities: vec![mount_capability()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capacity.available_capacity, 6 * MIB);
    assert_eq!(capacity.maximum_volume_size, Some(6 * MIB));
    let elsewhere = controller
        .get_capacity(GetCapacityRequest {
            accessible_topology: Some(Topology {
                segments: [(
                    "topology.local.csi.apiary.dev/node".to_owned(),
                    "node-b".to_owned(),
                )]
                .into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(elsewhere.available_capacity, 0, "another node's segment");
    let refused = controller
        .create_volume(create("pvc-2", 7 * MIB))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("not enough capacity"),
        "{}",
        refused.message()
    );
    let conflict = controller
        .create_volume(create("pvc-1", 5 * MIB))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
    for _ in 0..2 {
        controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: "pvc-1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert!(!tmp.path().join("volumes/pvc-1").exists());
    let capacity = controller
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capacity.available_capacity, 10 * MIB);
}

#[tokio::test]
async fn volumes_outlive_the_driver() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (channel, stop) = start(tmp.path()).await;
        ControllerClient::new(channel)
            .create_volume(create("pvc-kept", 3 * MIB))
            .await
            .unwrap();
        drop(stop);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (channel, _stop) = start(tmp.path()).await;
    let mut controller = ControllerClient::new(channel);
    let capacity = controller
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capacity.available_capacity, 7 * MIB);
    let volume = controller
        .create_volume(create("pvc-kept", 3 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(volume.capacity_bytes, 3 * MIB);
}
