//! The Node authorizer (`plugin/pkg/auth/authorizer/node`): what a node agent's identity,
//! `system:node:<name>` in `system:nodes`, may do.

use apiary_api::rbac_v1::PolicyRule;

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule::resources(verbs, groups, resources)
}

const READ: &[&str] = &["get", "list", "watch"];

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
