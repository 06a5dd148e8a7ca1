//! The Node authorizer (`plugin/pkg/auth/authorizer/node`): what a node agent's identity,
//! `system:node:<name>` in `system:nodes`, may do. Secrets, ConfigMaps, PVCs and ServiceAccount
//! tokens only when a pod bound to that node references them (a graph kept from the pods, as
//! Kubernetes' node authorizer keeps one), its own Lease, and otherwise what the `system:node`
//! role's rules ([`node_rules`]) allow; writes are narrowed further by NodeRestriction
//! ([`super::node_restriction`]). The `system:node` ClusterRole itself stays unbound, as in
//! Kubernetes: this authorizer grants it, to nodes only, with those checks.

use std::{
    collections::{HashMap, HashSet},
    sync::RwLock,
};

use apiary_api::rbac_v1::PolicyRule;
use serde_json::Value;

use super::{rbac, request_info::RequestInfo};
use crate::apiserver::auth::UserInfo;

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule::resources(verbs, groups, resources)
}

const READ: &[&str] = &["get", "list", "watch"];
/// The group of every node identity.
pub const NODES_GROUP: &str = "system:nodes";
/// Where node Leases live.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The rules of the `system:node` ClusterRole (Kubernetes' `NodeRules`), which the Node
/// authorizer applies to every node after its own checks. Besides the kubelet's, Apiary's agent
/// is its node's kube-proxy and CNI: it reads what they read (namespaces, EndpointSlices,
/// NetworkPolicies, SecurityIdentities) and publishes its DNS EndpointSlice.
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        r(READ, &[""], &["services"]),
        r(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        r(&["update", "patch"], &[""], &["nodes/status"]),
        r(&["update", "patch"], &[""], &["nodes"]),
        r(&["create", "update", "patch"], &[""], &["events"]),
        r(READ, &[""], &["pods"]),
        r(&["create", "delete"], &[""], &["pods"]),
        r(&["update", "patch"], &[""], &["pods/status"]),
        r(&["create"], &[""], &["pods/eviction"]),
        r(READ, &[""], &["secrets", "configmaps"]),
        r(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        r(&["get"], &[""], &["endpoints"]),
        r(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        r(
            &["get", "create", "update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        r(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        // ExpandPersistentVolumes, CSI (policy.go appends these to the node rules).
        r(
            &["get", "update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        r(
            &["get", "watch", "list"],
            &["storage.k8s.io"],
            &["csidrivers"],
        ),
        r(
            &["get", "create", "update", "patch", "delete"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        // kube-proxy's and the CNI's reads (`system:node-proxier`, Cilium's agent).
        r(READ, &[""], &["namespaces", "endpoints"]),
        r(READ, &["discovery.k8s.io"], &["endpointslices"]),
        r(READ, &["networking.k8s.io"], &["networkpolicies"]),
        r(READ, &["apiary.dev"], &["securityidentities"]),
        // The node's own cluster-DNS EndpointSlice (NodeRestriction keeps it to its own).
        r(
            &["create", "update", "patch"],
            &["discovery.k8s.io"],
            &["endpointslices"],
        ),
    ]
}

/// The node `user` is (`nodeidentifier.NodeIdentity`): `system:node:<name>` in
/// `system:nodes`. `Some("")` is a node identity without a name (refused everything).
pub fn node_identity(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES_GROUP) {
        return None;
    }
    user.name.strip_prefix("system:node:")
}

/// What a pod bound to a node references, by the kind the graph knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
    ServiceAccount,
}

/// `(kind, namespace, name)`.
type Vertex = (Kind, String, String);

/// The references of every pod bound to a node, and their reverse: which nodes may reach an
/// object (with how many of their pods reference it).
#[derive(Debug, Default)]
pub struct Graph {
    inner: RwLock<GraphInner>,
}

#[derive(Debug, Default)]
struct GraphInner {
    /// `namespace/name` of a pod → its node and references.
    pods: HashMap<String, (String, HashSet<Vertex>)>,
    /// An object → node → how many of its pods reference it.
    reachable: HashMap<Vertex, HashMap<String, usize>>,
}

impl Graph {
    /// Takes in a pod as it is now (added or changed).
    pub fn apply(&self, pod: &Value) {
        let key = pod_key(pod);
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let mut inner = self.inner.write().expect("not poisoned");
        inner.remove(&key);
        if node.is_empty() {
            return;
        }
        let refs = references(pod);
        for vertex in &refs {
            *inner
                .reachable
                .entry(vertex.clone())
                .or_default()
                .entry(node.to_owned())
                .or_default() += 1;
        }
        inner.pods.insert(key, (node.to_owned(), refs));
    }

    /// Forgets a deleted pod.
    pub fn remove(&self, pod: &Value) {
        let key = pod_key(pod);
        self.inner.write().expect("not poisoned").remove(&key);
    }

    /// Whether a pod bound to `node` references the object.
    pub fn reaches(&self, node: &str, kind: Kind, namespace: &str, name: &str) -> bool {
        let inner = self.inner.read().expect("not poisoned");
        inner
            .reachable
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .is_some_and(|nodes| nodes.contains_key(node))
    }
}

impl GraphInner {
    fn remove(&mut self, key: &str) {
        let Some((node, refs)) = self.pods.remove(key) else {
            return;
        };
        for vertex in refs {
            if let Some(nodes) = self.reachable.get_mut(&vertex) {
                if let Some(count) = nodes.get_mut(&node) {
                    *count -= 1;
                    if *count == 0 {
                        nodes.remove(&node);
                    }
                }
                if nodes.is_empty() {
                    self.reachable.remove(&vertex);
                }
            }
        }
    }
}

fn pod_key(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// What a pod references (`podutil.VisitPodSecretNames`, `VisitPodConfigmapNames`, its PVCs
/// and its ServiceAccount).
pub fn references(pod: &Value) -> HashSet<Vertex> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut refs = HashSet::new();
    let mut add = |kind: Kind, name: &Value| {
        if let Some(name) = name.as_str().filter(|n| !n.is_empty()) {
            refs.insert((kind, namespace.to_owned(), name.to_owned()));
        }
    };
    let spec = &pod["spec"];
    add(Kind::ServiceAccount, &spec["serviceAccountName"]);
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(Kind::Secret, &s["name"]);
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add(Kind::Secret, &e["valueFrom"]["secretKeyRef"]["name"]);
                add(Kind::ConfigMap, &e["valueFrom"]["configMapKeyRef"]["name"]);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add(Kind::Secret, &e["secretRef"]["name"]);
                add(Kind::ConfigMap, &e["configMapRef"]["name"]);
            }
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(Kind::Secret, &v["secret"]["secretName"]);
        add(Kind::ConfigMap, &v["configMap"]["name"]);
        add(
            Kind::PersistentVolumeClaim,
            &v["persistentVolumeClaim"]["claimName"],
        );
        // A generic ephemeral volume's claim is `<pod>-<volume>` (the graph's `ephemeral`).
        if v["ephemeral"].is_object() {
            let claim = format!(
                "{}-{}",
                pod["metadata"]["name"].as_str().unwrap_or_default(),
                v["name"].as_str().unwrap_or_default()
            );
            add(
                Kind::PersistentVolumeClaim,
                &serde_json::Value::String(claim),
            );
        }
        for source in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(Kind::Secret, &source["secret"]["name"]);
            add(Kind::ConfigMap, &source["configMap"]["name"]);
        }
        // Volume plugins that take credentials from a Secret (cephfs, rbd, iscsi, …).
        if let Some(fields) = v.as_object() {
            for source in fields.values() {
                add(Kind::Secret, &source["secretRef"]["name"]);
            }
        }
    }
    refs
}

/// The Node authorizer's decision: `Ok(())` allows; `Err(reason)` has no opinion (RBAC is
/// asked next), with why, for the 403.
pub fn authorize(graph: &Graph, node: &str, info: &RequestInfo) -> Result<(), String> {
    if node.is_empty() {
        return Err("unknown node".to_owned());
    }
    if info.is_resource_request {
        match (info.api_group.as_str(), info.resource.as_str()) {
            ("", "secrets") => return read_referenced(graph, node, Kind::Secret, info),
            ("", "configmaps") => return read_referenced(graph, node, Kind::ConfigMap, info),
            ("", "persistentvolumeclaims") => {
                if info.verb != "get" {
                    return Err("can only get individual resources of this type".to_owned());
                }
                return read_referenced(graph, node, Kind::PersistentVolumeClaim, info);
            }
            ("", "serviceaccounts") => return create_token(graph, node, info),
            ("coordination.k8s.io", "leases") => return lease(node, info),
            _ => {}
        }
    }
    if node_rules()
        .iter()
        .any(|rule| rbac::rule_allows(info, rule))
    {
        Ok(())
    } else {
        Err(String::new())
    }
}

/// `authorizeReadNamespacedObject`.
fn read_referenced(
    graph: &Graph,
    node: &str,
    kind: Kind,
    info: &RequestInfo,
) -> Result<(), String> {
    if !matches!(info.verb.as_str(), "get" | "list" | "watch") {
        return Err("can only read resources of this type".to_owned());
    }
    if !info.subresource.is_empty() {
        return Err(format!("cannot read subresource {:?}", info.subresource));
    }
    if info.namespace.is_empty() {
        return Err("can only read namespaced object of this type".to_owned());
    }
    if info.name.is_empty() {
        return Err("can only get individual resources of this type".to_owned());
    }
    reachable(graph, node, kind, info)
}

/// `authorizeCreateToken`.
fn create_token(graph: &Graph, node: &str, info: &RequestInfo) -> Result<(), String> {
    if info.verb != "create" || info.name.is_empty() {
        return Err("can only create tokens for individual service accounts".to_owned());
    }
    if info.subresource != "token" {
        return Err("can only create token subresource of serviceaccount".to_owned());
    }
    reachable(graph, node, Kind::ServiceAccount, info)
}

/// `authorizeLease`: its own Lease in kube-node-lease.
fn lease(node: &str, info: &RequestInfo) -> Result<(), String> {
    if !matches!(
        info.verb.as_str(),
        "get" | "create" | "update" | "patch" | "delete"
    ) {
        return Err("can only get, create, update, patch, or delete a node lease".to_owned());
    }
    if info.namespace != NODE_LEASE_NAMESPACE {
        return Err(format!(
            "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
        ));
    }
    if info.verb != "create" && info.name != node {
        return Err(
            "can only access node lease with the same name as the requesting node".to_owned(),
        );
    }
    Ok(())
}

fn reachable(graph: &Graph, node: &str, kind: Kind, info: &RequestInfo) -> Result<(), String> {
    if graph.reaches(node, kind, &info.namespace, &info.name) {
        Ok(())
    } else {
        Err(format!(
            "no relationship found between node '{node}' and this object"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(verb: &str, resource: &str, namespace: &str, name: &str) -> RequestInfo {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let api_group = match resource {
            "leases" => "coordination.k8s.io",
            "endpointslices" => "discovery.k8s.io",
            "clusterroles" => "rbac.authorization.k8s.io",
            _ => "",
        };
        RequestInfo {
            is_resource_request: true,
            verb: verb.to_owned(),
            api_group: api_group.to_owned(),
            api_version: "v1".to_owned(),
            namespace: namespace.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            name: name.to_owned(),
            ..RequestInfo::default()
        }
    }

    fn pod(name: &str, node: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "nodeName": node,
                "serviceAccountName": format!("{name}-sa"),
                "imagePullSecrets": [{"name": format!("{name}-pull")}],
                "containers": [{"name": "c",
                    "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": format!("{name}-env"), "key": "k"}}}],
                    "envFrom": [{"configMapRef": {"name": format!("{name}-cm")}}]}],
                "volumes": [
                    {"name": "s", "secret": {"secretName": format!("{name}-vol")}},
                    {"name": "p", "persistentVolumeClaim": {"claimName": format!("{name}-pvc")}},
                    {"name": "j", "projected": {"sources": [{"configMap": {"name": format!("{name}-proj")}}]}},
                ],
            },
        })
    }

    #[test]
    fn a_node_identity_is_a_node_user_in_system_nodes() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        };
        assert_eq!(
            node_identity(&user("system:node:n1", &["system:nodes"])),
            Some("n1")
        );
        assert_eq!(node_identity(&user("system:node:n1", &["dev"])), None);
        assert_eq!(node_identity(&user("n1", &["system:nodes"])), None);
    }

    #[test]
    fn a_node_reads_what_its_pods_reference_and_nothing_of_other_nodes_pods() {
        let graph = Graph::default();
        graph.apply(&pod("a", "n1"));
        graph.apply(&pod("b", "n2"));
        graph.apply(&pod("unbound", ""));
        for (resource, name) in [
            ("secrets", "a-vol"),
            ("secrets", "a-env"),
            ("secrets", "a-pull"),
            ("configmaps", "a-cm"),
            ("configmaps", "a-proj"),
            ("persistentvolumeclaims", "a-pvc"),
        ] {
            assert_eq!(
                authorize(&graph, "n1", &info("get", resource, "default", name)),
                Ok(()),
                "{resource}/{name}"
            );
            let other = name.replacen("a-", "b-", 1);
            assert_eq!(
                authorize(&graph, "n1", &info("get", resource, "default", &other)),
                Err("no relationship found between node 'n1' and this object".to_owned()),
                "{resource}/{other}"
            );
        }
        // Same name in another namespace is another object.
        assert!(
            authorize(
                &graph,
                "n1",
                &info("get", "secrets", "kube-system", "a-vol")
            )
            .is_err()
        );
        // Nothing of an unbound pod.
        assert!(
            authorize(
                &graph,
                "n1",
                &info("get", "secrets", "default", "unbound-vol")
            )
            .is_err()
        );
        // No listing, no writing.
        assert_eq!(
            authorize(&graph, "n1", &info("list", "secrets", "default", "")),
            Err("can only get individual resources of this type".to_owned())
        );
        assert_eq!(
            authorize(&graph, "n1", &info("update", "secrets", "default", "a-vol")),
            Err("can only read resources of this type".to_owned())
        );
        // A watch of one referenced object by name is a read of it.
        assert_eq!(
            authorize(&graph, "n1", &info("watch", "secrets", "default", "a-vol")),
            Ok(())
        );
    }

    #[test]
    fn tokens_only_for_the_service_accounts_of_its_pods() {
        let graph = Graph::default();
        graph.apply(&pod("a", "n1"));
        graph.apply(&pod("b", "n2"));
        assert_eq!(
            authorize(
                &graph,
                "n1",
                &info("create", "serviceaccounts/token", "default", "a-sa")
            ),
            Ok(())
        );
        assert!(
            authorize(
                &graph,
                "n1",
                &info("create", "serviceaccounts/token", "default", "b-sa")
            )
            .is_err()
        );
        assert!(
            authorize(
                &graph,
                "n1",
                &info("get", "serviceaccounts", "default", "a-sa")
            )
            .is_err()
        );
    }

    #[test]
    fn a_pod_that_moves_or_goes_takes_its_references_along() {
        let graph = Graph::default();
        graph.apply(&pod("a", "n1"));
        let mut moved = pod("a", "n2");
        moved["metadata"]["namespace"] = json!("default");
        graph.apply(&moved);
        assert!(authorize(&graph, "n1", &info("get", "secrets", "default", "a-vol")).is_err());
        assert!(authorize(&graph, "n2", &info("get", "secrets", "default", "a-vol")).is_ok());
        // Two pods referencing one Secret: it stays reachable until both are gone.
        let mut twin = pod("twin", "n2");
        twin["spec"]["volumes"][0]["secret"]["secretName"] = json!("a-vol");
        graph.apply(&twin);
        graph.remove(&moved);
        assert!(authorize(&graph, "n2", &info("get", "secrets", "default", "a-vol")).is_ok());
        graph.remove(&twin);
        assert!(authorize(&graph, "n2", &info("get", "secrets", "default", "a-vol")).is_err());
    }

    #[test]
    fn its_own_lease_only_and_the_kubelets_reads_but_no_cluster_administration() {
        let graph = Graph::default();
        assert_eq!(
            authorize(
                &graph,
                "n1",
                &info("update", "leases", NODE_LEASE_NAMESPACE, "n1")
            ),
            Ok(())
        );
        assert!(
            authorize(
                &graph,
                "n1",
                &info("update", "leases", NODE_LEASE_NAMESPACE, "n2")
            )
            .is_err()
        );
        assert!(
            authorize(
                &graph,
                "n1",
                &info("get", "leases", "kube-system", "apiary-controllers")
            )
            .is_err()
        );
        assert!(
            authorize(
                &graph,
                "n1",
                &info("list", "leases", NODE_LEASE_NAMESPACE, "")
            )
            .is_err()
        );
        for (verb, resource, ns) in [
            ("list", "pods", ""),
            ("watch", "nodes", ""),
            ("list", "services", ""),
            ("update", "pods/status", "default"),
            ("create", "events", "default"),
            ("list", "endpointslices", ""),
        ] {
            assert_eq!(
                authorize(&graph, "n1", &info(verb, resource, ns, "")),
                Ok(()),
                "{verb} {resource}"
            );
        }
        for (verb, resource, ns) in [
            ("create", "secrets", "default"),
            ("delete", "nodes", ""),
            ("update", "pods", "default"),
            ("create", "clusterroles", ""),
            ("create", "pods/exec", "default"),
            ("delete", "services", "default"),
        ] {
            assert!(
                authorize(&graph, "n1", &info(verb, resource, ns, "x")).is_err(),
                "{verb} {resource}"
            );
        }
        assert_eq!(
            authorize(&graph, "", &info("get", "nodes", "", "n1")),
            Err("unknown node".to_owned())
        );
    }
}
