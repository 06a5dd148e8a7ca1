//! NodeRestriction (`plugin/pkg/admission/noderestriction`): what the Node authorizer lets a
//! node write, narrowed to its own objects. A node may create only mirror pods bound to itself
//! that reference no Secrets, ConfigMaps, PVCs or ServiceAccount; delete and update the status
//! of only pods bound to itself; modify only its own Node and Lease; request tokens only bound
//! to a pod on itself; and (Apiary's agent being its node's DNS) write only its own
//! `kube-system/kube-dns-<node>` EndpointSlice.

use axum::http::{HeaderMap, Method};
use serde_json::Value;

use super::node::{Kind, NODE_LEASE_NAMESPACE, references};
use crate::apiserver::{Api, error::ApiError, objects, path::Target};

/// The annotation that marks a mirror pod (of a static pod).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Admits a write by node `node` (its name) to `target`, whose body is `body`.
pub async fn admit(
    api: &Api,
    node: &str,
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    if *method == Method::GET {
        return Ok(());
    }
    let resource = target.resource;
    let sub = target.subresource.as_deref();
    let name = target.name.as_deref().unwrap_or_default();
    let namespace = target.namespace.as_deref();
    let stored = async || objects::get(api, resource, namespace, name).await;
    match (resource.group, resource.plural, sub) {
        ("", "pods", None) if *method == Method::POST => {
            let pod = objects::decode(headers, body)?;
            admit_mirror_pod(node, &pod)
        }
        ("", "pods", None) if *method == Method::DELETE => {
            let pod = stored().await?;
            bound_to(
                node,
                &pod,
                "can only delete pods with spec.nodeName set to itself",
            )
        }
        ("", "pods", Some("status")) => {
            let pod = stored().await?;
            bound_to(
                node,
                &pod,
                "can only update pod status for pods with spec.nodeName set to itself",
            )
        }
        ("", "nodes", _) => {
            let named = if *method == Method::POST {
                objects::decode(headers, body)?["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            } else {
                name.to_owned()
            };
            if named != node {
                return Err(forbidden(format!(
                    "node {node:?} is not allowed to modify node {named:?}"
                )));
            }
            Ok(())
        }
        ("coordination.k8s.io", "leases", _) if *method == Method::POST => {
            let lease = objects::decode(headers, body)?;
            if namespace != Some(NODE_LEASE_NAMESPACE) || lease["metadata"]["name"] != node {
                return Err(forbidden(
                    "can only access node lease with the same name as the requesting node",
                ));
            }
            Ok(())
        }
        ("", "serviceaccounts", Some("token")) => {
            let request = objects::decode(headers, body)?;
            admit_token_request(api, node, namespace.unwrap_or_default(), &request).await
        }
        ("discovery.k8s.io", "endpointslices", _) => {
            let named = if *method == Method::POST {
                objects::decode(headers, body)?["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            } else {
                name.to_owned()
            };
            if namespace != Some("kube-system") || named != format!("kube-dns-{node}") {
                return Err(forbidden(format!(
                    "node {node:?} may only write its own EndpointSlice kube-system/kube-dns-{node}"
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A pod a node creates: a mirror pod, bound to itself, referencing nothing it could not read
/// otherwise (`admitPodCreate`).
pub fn admit_mirror_pod(node: &str, pod: &Value) -> Result<(), ApiError> {
    if pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_null() {
        return Err(forbidden(format!(
            "pod does not have {MIRROR_ANNOTATION:?} annotation, node {node:?} can only create mirror pods"
        )));
    }
    if pod["spec"]["nodeName"] != node {
        return Err(forbidden(format!(
            "node {node:?} can only create pods with spec.nodeName set to itself"
        )));
    }
    let refs = references(pod);
    for (kind, what) in [
        (Kind::ServiceAccount, "use service accounts"),
        (Kind::Secret, "reference secrets"),
        (Kind::ConfigMap, "reference configmaps"),
        (
            Kind::PersistentVolumeClaim,
            "reference persistentvolumeclaims",
        ),
    ] {
        if refs.iter().any(|(k, _, _)| *k == kind) {
            return Err(forbidden(format!(
                "node {node:?} can not create pods that {what}"
            )));
        }
    }
    Ok(())
}

fn bound_to(node: &str, pod: &Value, what: &str) -> Result<(), ApiError> {
    if pod["spec"]["nodeName"] != node {
        return Err(forbidden(format!("node {node:?} {what}")));
    }
    Ok(())
}

/// `admitServiceAccount`: a token a node asks for is bound to a pod on that node.
async fn admit_token_request(
    api: &Api,
    node: &str,
    namespace: &str,
    request: &Value,
) -> Result<(), ApiError> {
    let bound = &request["spec"]["boundObjectRef"];
    if bound["kind"] != "Pod" {
        return Err(forbidden("node requested token not bound to a pod"));
    }
    let pods = api
        .resources
        .get("", "v1", "pods")
        .expect("pods are served");
    let pod_name = bound["name"].as_str().unwrap_or_default();
    let pod = objects::get(api, pods, Some(namespace), pod_name).await?;
    if bound["uid"].as_str().is_some_and(|uid| !uid.is_empty())
        && bound["uid"] != pod["metadata"]["uid"]
    {
        return Err(forbidden(
            "the UID in the bound object reference does not match the pod's",
        ));
    }
    if pod["spec"]["nodeName"] != node {
        return Err(forbidden(
            "node requested token bound to a pod scheduled on a different node",
        ));
    }
    Ok(())
}

fn forbidden(why: impl std::fmt::Display) -> ApiError {
    ApiError::forbidden(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_creates_only_plain_mirror_pods_of_its_own() {
        let mirror = |node: &str| {
            json!({"metadata": {"name": "p", "namespace": "default",
                "annotations": {MIRROR_ANNOTATION: "hash"}},
              "spec": {"nodeName": node, "containers": [{"name": "c"}]}})
        };
        assert!(admit_mirror_pod("n1", &mirror("n1")).is_ok());
        let e = admit_mirror_pod("n1", &mirror("n2")).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message
                .contains("can only create pods with spec.nodeName set to itself")
        );
        let mut plain = mirror("n1");
        plain["metadata"]["annotations"] = json!({});
        assert!(
            admit_mirror_pod("n1", &plain)
                .unwrap_err()
                .message
                .contains("can only create mirror pods")
        );
        let mut secret = mirror("n1");
        secret["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "db"}}]);
        assert!(
            admit_mirror_pod("n1", &secret)
                .unwrap_err()
                .message
                .contains("reference secrets")
        );
        let mut sa = mirror("n1");
        sa["spec"]["serviceAccountName"] = json!("admin");
        assert!(
            admit_mirror_pod("n1", &sa)
                .unwrap_err()
                .message
                .contains("use service accounts")
        );
    }
}
