//! `kube-public/cluster-info`, as `kubeadm init` publishes it: a kubeconfig with the cluster's
//! server and CA (no credentials) that anyone may read, so that a joining node can fetch the CA
//! and check it against the hash it was given (`--ca-cert-hash`), and the bootstrap signer's
//! JWS of it against its token.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Api, error::ApiError, objects, path::Target};

pub const NAMESPACE: &str = "kube-public";
pub const NAME: &str = "cluster-info";
/// The data key holding the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// The Role (and RoleBinding) that lets `system:anonymous` read it (kubeadm's
/// `kubeadm:bootstrap-signer-clusterinfo`).
const ROLE: &str = "apiary:bootstrap-signer-clusterinfo";

/// The kubeconfig cluster-info carries.
pub fn kubeconfig(server: &str, ca_pem: &str) -> String {
    use base64::Engine as _;
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
        base64::engine::general_purpose::STANDARD.encode(ca_pem)
    )
}

/// Creates or updates cluster-info for `server` and the CA, and the anonymous read of it.
pub async fn publish(api: &Arc<Api>, server: &str, ca_pem: &str) -> Result<(), ApiError> {
    let config_maps = api
        .resources
        .get("", "v1", "configmaps")
        .expect("configmaps are served");
    let wanted = kubeconfig(server, ca_pem);
    let target = Target {
        resource: config_maps,
        namespace: Some(NAMESPACE.to_owned()),
        name: None,
        subresource: None,
    };
    // Control planes starting together race to write it: the loser reads it again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match write_kubeconfig(api, &target, &wanted).await {
            Err(e) if e.reason == "Conflict" && attempts < 10 => continue,
            result => break result?,
        }
    }
    for (plural, object) in anonymous_read() {
        let resource = api
            .resources
            .get("rbac.authorization.k8s.io", "v1", plural)
            .expect("RBAC is served");
        let target = Target {
            resource,
            namespace: Some(NAMESPACE.to_owned()),
            name: None,
            subresource: None,
        };
        match objects::create(api, &target, object).await {
            Ok(_)
            | Err(ApiError {
                reason: "AlreadyExists",
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// kubeadm's Role and RoleBinding: `get` of `configmaps/cluster-info` for `system:anonymous`.
fn anonymous_read() -> [(&'static str, Value); 2] {
    [
        (
            "roles",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": ROLE, "namespace": NAMESPACE},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [NAME], "verbs": ["get"]}],
            }),
        ),
        (
            "rolebindings",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": ROLE, "namespace": NAMESPACE},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}],
            }),
        ),
    ]
}

/// Creates or updates the ConfigMap to hold `wanted`.
async fn write_kubeconfig(api: &Arc<Api>, target: &Target, wanted: &str) -> Result<(), ApiError> {
    let config_maps = target.resource;
    match objects::get(api, config_maps, Some(NAMESPACE), NAME).await {
        Ok(mut existing) => {
            if existing["data"][KUBECONFIG_KEY] != wanted {
                // The signatures are of the old content: the signer makes new ones.
                existing["data"] = json!({ KUBECONFIG_KEY: wanted });
                let target = Target {
                    name: Some(NAME.to_owned()),
                    ..target.clone()
                };
                objects::update(api, &target, NAME, existing).await?;
            }
        }
        Err(e) if e.reason == "NotFound" => {
            let object = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "data": { KUBECONFIG_KEY: wanted },
            });
            match objects::create(api, target, object).await {
                Ok(_)
                | Err(ApiError {
                    reason: "AlreadyExists",
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}
