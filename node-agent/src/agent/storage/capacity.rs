//! CSIStorageCapacity objects, as external-provisioner's capacity controller publishes them in
//! node deployment: one per StorageClass of the driver for this node's topology segment, in
//! `kube-system`, with GetCapacity's answer; the scheduler reads them to place
//! WaitForFirstConsumer claims where they fit.

use apiary_api::{
    quantity::Quantity,
    storage_v1::{CsiStorageCapacity, LOCAL_PATH_TOPOLOGY_KEY, StorageClass},
};
use apiary_csi::{
    Channel,
    v1::{GetCapacityRequest, Topology, controller_client::ControllerClient},
};
use serde_json::{Value, json};

use super::provisioner::list;
use crate::{agent::context::Context, api_client::Found};

/// Where the objects live.
pub const NAMESPACE: &str = "kube-system";
/// Their labels (the sidecar's).
pub const DRIVER_LABEL: &str = "csi.storage.k8s.io/drivername";
pub const MANAGED_BY_LABEL: &str = "csi.storage.k8s.io/managed-by";

/// The object of `class` on `node` (deterministic, so that each pass updates the same one).
pub fn object_name(node: &str, class: &str) -> String {
    let name = format!("csisc-{node}-{class}");
    name.chars().take(253).collect()
}

/// Who manages this node's objects (`external-provisioner-<node>`, as the sidecar names itself
/// in node deployment).
pub fn managed_by(node: &str) -> String {
    format!("external-provisioner-{node}")
}

/// The object for `class` with `available` and `maximum` bytes.
pub fn capacity_object(
    driver: &str,
    node: &str,
    class: &str,
    available: i64,
    maximum: Option<i64>,
) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIStorageCapacity",
        "metadata": {
            "name": object_name(node, class),
            "namespace": NAMESPACE,
            "labels": { DRIVER_LABEL: driver, MANAGED_BY_LABEL: managed_by(node) },
        },
        "nodeTopology": { "matchLabels": { LOCAL_PATH_TOPOLOGY_KEY: node } },
        "storageClassName": class,
        "capacity": Quantity::from_bytes(available),
        "maximumVolumeSize": maximum.map(Quantity::from_bytes),
    })
}

/// Asks the driver for each class's capacity and writes the objects; removes those of classes
/// that are gone.
pub async fn publish(
    ctx: &Context,
    driver: &str,
    controller: &mut ControllerClient<Channel>,
) -> anyhow::Result<()> {
    let node = &ctx.node.name;
    let classes: Vec<StorageClass> = list(ctx, "/apis/storage.k8s.io/v1/storageclasses").await?;
    let ours: Vec<&StorageClass> = classes.iter().filter(|c| c.provisioner == driver).collect();
    let base = format!("/apis/storage.k8s.io/v1/namespaces/{NAMESPACE}/csistoragecapacities");
    for class in &ours {
        let answer = controller
            .get_capacity(GetCapacityRequest {
                parameters: class.parameters.clone().into_iter().collect(),
                accessible_topology: Some(Topology {
                    segments: [(LOCAL_PATH_TOPOLOGY_KEY.to_owned(), node.clone())].into(),
                }),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("GetCapacity: {}", s.message()))?
            .into_inner();
        let mut object = capacity_object(
            driver,
            node,
            &class.metadata.name,
            answer.available_capacity,
            answer.maximum_volume_size,
        );
        let path = format!("{base}/{}", object_name(node, &class.metadata.name));
        match ctx.api.get::<CsiStorageCapacity>(&path).await? {
            Found::Object(existing) => {
                let same = existing.capacity.as_ref().map(Quantity::as_str)
                    == object["capacity"].as_str()
                    && existing.maximum_volume_size.as_ref().map(Quantity::as_str)
                        == object["maximumVolumeSize"].as_str();
                if !same {
                    object["metadata"]["resourceVersion"] =
                        json!(existing.metadata.resource_version);
                    ctx.api.put(&path, &object).await?;
                }
            }
            Found::Missing => {
                ctx.api.post(&base, &object).await?;
            }
        }
    }
    let mine: Vec<CsiStorageCapacity> = list(
        ctx,
        &format!(
            "{base}?labelSelector={MANAGED_BY_LABEL}%3D{}",
            managed_by(node)
        ),
    )
    .await?;
    for stale in mine.iter().filter(|c| {
        c.metadata
            .labels
            .get(DRIVER_LABEL)
            .is_some_and(|d| d == driver)
            && !ours
                .iter()
                .any(|class| class.metadata.name == c.storage_class_name)
    }) {
        ctx.api
            .delete(&format!("{base}/{}", stale.metadata.name), &json!({}))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_published_for_the_nodes_topology_segment() {
        let object = capacity_object(
            "local.csi.apiary.dev",
            "node-a",
            "local-path",
            5 << 30,
            Some(5 << 30),
        );
        assert_eq!(object["metadata"]["namespace"], "kube-system");
        assert_eq!(
            object["metadata"]["labels"]["csi.storage.k8s.io/drivername"],
            "local.csi.apiary.dev"
        );
        assert_eq!(
            object["metadata"]["labels"]["csi.storage.k8s.io/managed-by"],
            "external-provisioner-node-a"
        );
        assert_eq!(
            object["nodeTopology"],
            json!({"matchLabels": {"topology.local.csi.apiary.dev/node": "node-a"}})
        );
        assert_eq!(object["capacity"], "5Gi");
        assert_eq!(object["maximumVolumeSize"], "5Gi");
        let typed: CsiStorageCapacity = serde_json::from_value(object).unwrap();
        assert_eq!(typed.storage_class_name, "local-path");
    }
}
