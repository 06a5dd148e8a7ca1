//! NodeRestriction (`plugin/pkg/admission/noderestriction`): what the Node authorizer lets a
//! node write, narrowed to its own objects. A node may create only mirror pods bound to itself
//! that reference no Secrets, ConfigMaps, PVCs or ServiceAccount; delete and update the status
//! of only pods bound to itself; modify only its own Node and Lease; request tokens only bound
//! to a pod on itself; and (Apiary's agent being its node's DNS) write only its own
//! `kube-system/kube-dns-<node>` EndpointSlice. For the built-in local-path CSI driver the
//! agents run (Apiary's own: Kubernetes gives nodes no such writes), a node may write only its
//! own CSINode, PersistentVolumes whose node affinity requires it alone (created only for
//! claims selected for it), CSIStorageCapacities whose topology is itself alone, and claims
//! selected for it.

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
            let (new, old) = match *method {
                Method::POST => (objects::decode(headers, body)?, None),
                Method::PUT => (objects::decode(headers, body)?, Some(stored().await?)),
                Method::PATCH => {
                    let old = stored().await?;
                    let new =
                        objects::apply_patch(old.clone(), &objects::content_type(headers), body)?;
                    (new, Some(old))
                }
                _ => (Value::Null, None),
            };
            let named = match *method {
                Method::POST => new["metadata"]["name"].as_str().unwrap_or_default(),
                _ => name,
            };
            if named != node {
                return Err(forbidden(format!(
                    "node {node:?} is not allowed to modify node {named:?}"
                )));
            }
            if sub.is_none() && !new.is_null() {
                admit_node(node, &new, old.as_ref())?;
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
        ("storage.k8s.io", "csinodes", _) => {
            let named = if *method == Method::POST {
                objects::decode(headers, body)?["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            } else {
                name.to_owned()
            };
            if named != node {
                return Err(forbidden(
                    "can only access CSINode with the same name as the requesting node",
                ));
            }
            Ok(())
        }
        // The local-path driver's writes (Apiary's: Kubernetes' nodes have none): only the
        // volumes, claims and capacities of this node.
        ("", "persistentvolumes", _) | ("storage.k8s.io", "csistoragecapacities", _) => {
            let volumes = resource.plural == "persistentvolumes";
            let own = |object: &Value| {
                if volumes {
                    pinned_to(node, object)
                } else {
                    capacity_of(node, object)
                }
            };
            let what = if volumes {
                "can only write persistentvolumes whose nodeAffinity requires itself"
            } else {
                "can only write csistoragecapacities whose nodeTopology selects only itself"
            };
            let refuse = || forbidden(format!("node {node:?} {what}"));
            if *method != Method::POST && !own(&stored().await?) {
                return Err(refuse());
            }
            let new = match *method {
                Method::POST | Method::PUT => objects::decode(headers, body)?,
                Method::PATCH => {
                    objects::apply_patch(stored().await?, &objects::content_type(headers), body)?
                }
                _ => return Ok(()),
            };
            if !own(&new) {
                return Err(refuse());
            }
            // A new volume may only be for a claim handed to this node.
            let claim = &new["spec"]["claimRef"];
            if volumes && *method == Method::POST && claim.is_object() {
                let claims = api
                    .resources
                    .get("", "v1", "persistentvolumeclaims")
                    .expect("claims are served");
                let selected = objects::get(
                    api,
                    claims,
                    claim["namespace"].as_str(),
                    claim["name"].as_str().unwrap_or_default(),
                )
                .await
                .ok()
                .is_some_and(|c| selected_for(node, &c));
                if !selected {
                    return Err(forbidden(format!(
                        "node {node:?} can only provision persistentvolumes for claims selected for itself"
                    )));
                }
            }
            Ok(())
        }
        ("", "persistentvolumeclaims", _) => {
            if !selected_for(node, &stored().await?) {
                return Err(forbidden(format!(
                    "node {node:?} can only write persistentvolumeclaims selected for itself"
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether a claim carries `volume.kubernetes.io/selected-node: <node>`.
fn selected_for(node: &str, claim: &Value) -> bool {
    claim["metadata"]["annotations"][apiary_api::core_v1::ANN_SELECTED_NODE] == node
}

/// Whether every term of a volume's required node affinity requires `node` alone by the
/// local-path topology key (so the volume is reachable from this node only).
fn pinned_to(node: &str, volume: &Value) -> bool {
    let terms = &volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"];
    terms.as_array().is_some_and(|terms| {
        !terms.is_empty()
            && terms.iter().all(|term| {
                term["matchExpressions"].as_array().is_some_and(|exprs| {
                    exprs.iter().any(|e| {
                        e["key"] == apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY
                            && e["operator"] == "In"
                            && e["values"] == serde_json::json!([node])
                    })
                })
            })
    })
}

/// Whether a CSIStorageCapacity's `nodeTopology` is exactly this node's local-path label.
fn capacity_of(node: &str, capacity: &Value) -> bool {
    let topology = &capacity["nodeTopology"];
    topology["matchLabels"]
        == serde_json::json!({ apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY: node })
        && topology["matchExpressions"]
            .as_array()
            .is_none_or(Vec::is_empty)
}

/// Label prefixes (and labels) a node may set on itself: Kubernetes' allowed kubelet labels.
/// Anything else under `kubernetes.io`/`k8s.io` is the cluster's to set (it steers workloads).
const ALLOWED_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];
const ALLOWED_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// The labels of `labels` a node may not set on itself (`getForbiddenLabels`).
pub fn forbidden_labels<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut forbidden: Vec<String> = labels
        .filter(|key| {
            let Some((prefix, _)) = key.split_once('/') else {
                return false;
            };
            let namespace = |ns: &str| prefix == ns || prefix.ends_with(&format!(".{ns}"));
            if namespace("node-restriction.kubernetes.io") {
                return true;
            }
            if !(namespace("kubernetes.io") || namespace("k8s.io")) {
                return false;
            }
            !(ALLOWED_LABELS.contains(key)
                || prefix.starts_with("beta.kubernetes.io")
                || ALLOWED_LABEL_NAMESPACES.iter().any(|ns| namespace(ns)))
        })
        .map(str::to_owned)
        .collect();
    forbidden.sort();
    forbidden
}

/// `admitNode`: a node may not give itself labels that steer workloads, nor change its taints.
pub fn admit_node(node: &str, new: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let labels = |o: &Value| {
        o["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    let (after, before) = (labels(new), old.map(labels).unwrap_or_default());
    let changed = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str())
        .chain(
            before
                .keys()
                .filter(|k| !after.contains_key(*k))
                .map(String::as_str),
        );
    let refused = forbidden_labels(changed);
    if !refused.is_empty() {
        return Err(forbidden(format!(
            "node {node:?} is not allowed to {} the following labels: {}",
            if old.is_some() { "modify" } else { "set" },
            refused.join(", ")
        )));
    }
    // The local-path topology label names the node itself: another node's name would draw
    // that node's volumes' pods (and its capacity's claims) here.
    let topology = &after.get(apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY);
    if topology.is_some_and(|v| v != node) {
        return Err(forbidden(format!(
            "node {node:?} may only set the label {} to its own name",
            apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY
        )));
    }
    if let Some(old) = old
        && old["spec"]["taints"] != new["spec"]["taints"]
    {
        return Err(forbidden(format!(
            "node {node:?} is not allowed to modify taints"
        )));
    }
    Ok(())
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
    fn a_node_may_not_take_another_nodes_local_path_topology() {
        let node = |value: &str| {
            json!({"metadata": {"name": "n1", "labels": {
                apiary_api::storage_v1::LOCAL_PATH_TOPOLOGY_KEY: value}}})
        };
        assert!(admit_node("n1", &node("n1"), None).is_ok());
        let e = admit_node("n1", &node("n2"), Some(&node("n1"))).unwrap_err();
        assert_eq!(
            e.message,
            "node \"n1\" may only set the label topology.local.csi.apiary.dev/node to its own name"
        );
    }

    #[test]
    fn a_node_may_not_label_itself_to_attract_workloads_nor_drop_its_taints() {
        assert!(
            forbidden_labels(
                [
                    "kubernetes.io/hostname",
                    "topology.kubernetes.io/zone",
                    "kubelet.kubernetes.io/x",
                    "team"
                ]
                .into_iter()
            )
            .is_empty()
        );
        assert_eq!(
            forbidden_labels(
                [
                    "node-restriction.kubernetes.io/trusted",
                    "node-role.kubernetes.io/control-plane"
                ]
                .into_iter()
            ),
            [
                "node-restriction.kubernetes.io/trusted",
                "node-role.kubernetes.io/control-plane"
            ]
        );
        let node = |labels: Value, taints: Value| json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}});
        let old = node(
            json!({"kubernetes.io/hostname": "n1"}),
            json!([{"key": "k", "effect": "NoSchedule"}]),
        );
        assert!(admit_node("n1", &old, Some(&old)).is_ok());
        let e = admit_node(
            "n1",
            &node(json!({"kubernetes.io/hostname": "n1"}), json!([])),
            Some(&old),
        )
        .unwrap_err();
        assert!(
            e.message.contains("is not allowed to modify taints"),
            "{}",
            e.message
        );
        let labelled = node(
            json!({"kubernetes.io/hostname": "n1", "node-restriction.kubernetes.io/secure": "true"}),
            json!([{"key": "k", "effect": "NoSchedule"}]),
        );
        let e = admit_node("n1", &labelled, Some(&old)).unwrap_err();
        assert!(
            e.message.contains("node-restriction.kubernetes.io/secure"),
            "{}",
            e.message
        );
        // A label the cluster set long ago is not the node's change.
        assert!(admit_node("n1", &labelled, Some(&labelled)).is_ok());
    }

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
