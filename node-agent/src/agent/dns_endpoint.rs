//! This node's endpoint of the `kube-system/kube-dns` Service: an EndpointSlice of its own
//! (`kube-dns-<node>`) naming the node's address, port 53, UDP and TCP. The Service has
//! `internalTrafficPolicy: Local`, so every pod asks its own node's agent.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::context::Context;
use crate::api_client::Found;

const NAMESPACE: &str = "kube-system";
const SERVICE: &str = "kube-dns";
/// Who manages these slices: the EndpointSlice controllers leave slices of other managers alone.
pub const MANAGED_BY: &str = "apiary-node-agent";

/// The slice this node publishes.
pub fn slice(node_name: &str, node_ip: std::net::Ipv4Addr, node_uid: Option<&str>) -> Value {
    let mut metadata = json!({
        "name": format!("{SERVICE}-{node_name}"),
        "namespace": NAMESPACE,
        "labels": {
            "kubernetes.io/service-name": SERVICE,
            "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
        },
    });
    // Owned by the Node: it goes when the Node is deleted.
    if let Some(uid) = node_uid {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Node", "name": node_name, "uid": uid,
        }]);
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [node_ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node_name,
        }],
        "ports": [
            {"name": "dns", "port": crate::dns::PORT, "protocol": "UDP"},
            {"name": "dns-tcp", "port": crate::dns::PORT, "protocol": "TCP"},
        ],
    })
}

/// Publishes the slice, and again whenever it is found missing or different (checked every
/// 30 s), until the agent stops.
pub async fn publish(ctx: Arc<Context>) {
    let path = format!(
        "/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices/{SERVICE}-{}",
        ctx.node.name
    );
    let collection = format!("/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices");
    loop {
        if let Err(e) = ensure(&ctx, &path, &collection).await {
            tracing::warn!(error = %format!("{e:#}"), "publishing the DNS endpoint");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

async fn ensure(ctx: &Context, path: &str, collection: &str) -> anyhow::Result<()> {
    let node: Found<Value> = ctx
        .api
        .get(&format!("/api/v1/nodes/{}", ctx.node.name))
        .await?;
    let uid = match &node {
        Found::Object(node) => node["metadata"]["uid"].as_str().map(str::to_owned),
        Found::Missing => None,
    };
    let wanted = slice(&ctx.node.name, ctx.node.ip, uid.as_deref());
    match ctx.api.get::<Value>(path).await? {
        Found::Missing => {
            ctx.api.post(collection, &wanted).await?;
        }
        Found::Object(current) => {
            if current["endpoints"] != wanted["endpoints"] || current["ports"] != wanted["ports"] {
                let mut replacement = wanted;
                replacement["metadata"]["resourceVersion"] =
                    current["metadata"]["resourceVersion"].clone();
                ctx.api.put(path, &replacement).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_names_the_node_on_port_53_for_udp_and_tcp() {
        let slice = slice("n1", std::net::Ipv4Addr::new(10, 0, 0, 7), Some("u-1"));
        assert_eq!(slice["metadata"]["name"], "kube-dns-n1");
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "kube-dns"
        );
        assert_eq!(slice["endpoints"][0]["addresses"][0], "10.0.0.7");
        assert_eq!(slice["endpoints"][0]["nodeName"], "n1");
        assert_eq!(slice["ports"][0]["protocol"], "UDP");
        assert_eq!(slice["ports"][1]["protocol"], "TCP");
        assert_eq!(slice["metadata"]["ownerReferences"][0]["uid"], "u-1");
    }
}
