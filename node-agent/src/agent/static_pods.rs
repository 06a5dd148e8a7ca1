//! Static pods: Pod manifests in a directory of the node (`--manifests DIR`) that the node runs
//! on its own. As with the kubelet, each gets a mirror pod in the API — named
//! `<name>-<node>`, bound to this node, annotated with its source — so that it shows up in
//! `kubectl get pods`; the agent then runs it like any pod bound here. Editing a manifest
//! replaces the pod; removing it deletes the pod.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use apiary_api::core_v1::Pod;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::context::Context;
use crate::api_client::Found;

const SOURCE: &str = "kubernetes.io/config.source";
const MIRROR: &str = "kubernetes.io/config.mirror";
const RESCAN: Duration = Duration::from_secs(10);

/// Keeps the mirror pods equal to the manifests in `dir`, for ever.
pub async fn run(ctx: Arc<Context>, dir: std::path::PathBuf) {
    loop {
        if let Err(e) = sync(&ctx, &dir).await {
            tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "static pods");
        }
        tokio::time::sleep(RESCAN).await;
    }
}

/// The manifests of `dir` as mirror pods of `node`, by pod name and namespace.
pub fn read_manifests(dir: &Path, node: &str) -> anyhow::Result<BTreeMap<(String, String), Value>> {
    let mut pods = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(pods);
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if !matches!(ext, "yaml" | "yml" | "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let mut pod: Value = match serde_yaml::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "not a manifest; skipped");
                continue;
            }
        };
        if pod["kind"] != "Pod" {
            tracing::warn!(file = %path.display(), "static manifests must be Pods; skipped");
            continue;
        }
        let hash = hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8]);
        let name = format!(
            "{}-{node}",
            pod["metadata"]["name"].as_str().unwrap_or("static")
        );
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["namespace"] = json!(namespace);
        pod["metadata"]["annotations"][SOURCE] = json!("file");
        pod["metadata"]["annotations"][MIRROR] = json!(hash);
        pod["spec"]["nodeName"] = json!(node);
        pods.insert((namespace, name), pod);
    }
    Ok(pods)
}

async fn sync(ctx: &Context, dir: &Path) -> anyhow::Result<()> {
    let node = &ctx.node.name;
    let wanted = read_manifests(dir, node)?;
    let listing: Found<Value> = ctx
        .api
        .get(&format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"
        ))
        .await?;
    let existing: Vec<Pod> = match listing {
        Found::Object(list) => serde_json::from_value(list["items"].clone()).unwrap_or_default(),
        Found::Missing => Vec::new(),
    };
    for pod in &existing {
        let annotations = &pod.metadata.annotations;
        if annotations.get(SOURCE).map(String::as_str) != Some("file") {
            continue;
        }
        let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        let current = wanted
            .get(&key)
            .and_then(|w| w["metadata"]["annotations"][MIRROR].as_str());
        if current != annotations.get(MIRROR).map(String::as_str) {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}",
                pod.metadata.namespace, pod.metadata.name
            );
            ctx.api
                .delete(
                    &path,
                    &json!({ "preconditions": { "uid": pod.metadata.uid } }),
                )
                .await?;
        }
    }
    for ((namespace, name), pod) in &wanted {
        let up_to_date = existing.iter().any(|p| {
            p.metadata.namespace == *namespace
                && p.metadata.name == *name
                && p.metadata.annotations.get(MIRROR).map(String::as_str)
                    == pod["metadata"]["annotations"][MIRROR].as_str()
        });
        if !up_to_date
            && let Err(e) = ctx
                .api
                .post(&format!("/api/v1/namespaces/{namespace}/pods"), pod)
                .await
        {
            // AlreadyExists while the old one terminates: the next scan creates it.
            tracing::debug!(pod = %name, error = %format!("{e:#}"), "creating a mirror pod");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_mirror_pods_bound_to_the_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::write(
            dir.path().join("svc.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n",
        )
        .unwrap();
        let pods = read_manifests(dir.path(), "n1").unwrap();
        assert_eq!(pods.len(), 1);
        let pod = &pods[&("default".to_owned(), "web-n1".to_owned())];
        assert_eq!(pod["spec"]["nodeName"], "n1");
        assert_eq!(pod["metadata"]["annotations"][SOURCE], "file");
        assert_eq!(
            pod["metadata"]["annotations"][MIRROR]
                .as_str()
                .unwrap()
                .len(),
            16
        );
    }
}
