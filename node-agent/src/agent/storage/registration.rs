//! CSI node registration as the kubelet does it (`nodeinfomanager`): the driver's name from
//! GetPluginInfo, its node id and topology from NodeGetInfo, written to the node's CSINode
//! object (one entry per driver, owned by the Node) and to the Node's labels (the topology
//! keys, so that volumes' node affinity and CSIStorageCapacity selectors match it).

use std::collections::BTreeMap;

use anyhow::Context as _;
use apiary_api::storage_v1::{CsiNode, CsiNodeDriver};
use apiary_csi::{
    Channel,
    v1::{
        GetPluginInfoRequest, NodeGetInfoRequest, identity_client::IdentityClient,
        node_client::NodeClient,
    },
};
use serde_json::{Value, json};

use crate::{agent::context::Context, api_client::Found};

/// What a driver said about itself at registration.
#[derive(Clone, Debug)]
pub struct DriverInfo {
    pub name: String,
    pub node_id: String,
    pub topology: BTreeMap<String, String>,
}

/// Asks the driver behind `channel` who it is and records it on the node; retries the API
/// until it answers.
pub async fn register(ctx: &Context, channel: &Channel) -> anyhow::Result<DriverInfo> {
    let name = IdentityClient::new(channel.clone())
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .context("GetPluginInfo")?
        .into_inner()
        .name;
    let node = NodeClient::new(channel.clone())
        .node_get_info(NodeGetInfoRequest {})
        .await
        .context("NodeGetInfo")?
        .into_inner();
    let info = DriverInfo {
        name,
        node_id: node.node_id,
        topology: node
            .accessible_topology
            .map(|t| t.segments.into_iter().collect())
            .unwrap_or_default(),
    };
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match record(ctx, &info).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(driver = %info.name, error = %format!("{e:#}"), "registering a CSI driver; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
    tracing::info!(driver = %info.name, node_id = %info.node_id, "registered a CSI driver");
    Ok(info)
}

async fn record(ctx: &Context, info: &DriverInfo) -> anyhow::Result<()> {
    let node_name = &ctx.node.name;
    let node_path = format!("/api/v1/nodes/{node_name}");
    if !info.topology.is_empty() {
        let patch = json!({ "metadata": { "labels": info.topology } });
        ctx.api.merge_patch(&node_path, &patch).await?;
    }
    let entry = CsiNodeDriver {
        name: info.name.clone(),
        node_id: info.node_id.clone(),
        topology_keys: info.topology.keys().cloned().collect(),
        allocatable: None,
    };
    let path = format!("/apis/storage.k8s.io/v1/csinodes/{node_name}");
    match ctx.api.get::<CsiNode>(&path).await? {
        Found::Object(mut existing) => {
            let drivers = &mut existing.spec.drivers;
            if drivers.contains(&entry) {
                return Ok(());
            }
            drivers.retain(|d| d.name != entry.name);
            drivers.push(entry);
            ctx.api
                .put(&path, &serde_json::to_value(&existing)?)
                .await?;
        }
        Found::Missing => {
            let node_uid = match ctx.api.get::<Value>(&node_path).await? {
                Found::Object(node) => node["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                Found::Missing => String::new(),
            };
            let body = json!({
                "apiVersion": "storage.k8s.io/v1",
                "kind": "CSINode",
                "metadata": {
                    "name": node_name,
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid,
                    }],
                },
                "spec": { "drivers": [entry] },
            });
            ctx.api
                .post("/apis/storage.k8s.io/v1/csinodes", &body)
                .await?;
        }
    }
    Ok(())
}

/// Takes the driver `name` out of the node's CSINode (its socket is gone), as the kubelet's
/// `UninstallCSIDriver` does; the Node's topology labels stay, as the kubelet leaves them.
pub async fn deregister(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let path = format!("/apis/storage.k8s.io/v1/csinodes/{}", ctx.node.name);
    let mut last = None;
    // The PUT carries the resourceVersion read: a concurrent writer makes it fail, and the
    // next round reads again.
    for _ in 0..5 {
        let Found::Object(mut existing) = ctx.api.get::<CsiNode>(&path).await? else {
            return Ok(());
        };
        let before = existing.spec.drivers.len();
        existing.spec.drivers.retain(|d| d.name != name);
        if existing.spec.drivers.len() == before {
            return Ok(());
        }
        match ctx.api.put(&path, &serde_json::to_value(&existing)?).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("five attempts failed"))
}
