//! The bootstrap policy (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`), reconciled
//! at startup as kube-apiserver's `rbac/bootstrap-roles` post-start hook does: what is missing is
//! created, and roles and bindings annotated `rbac.authorization.kubernetes.io/autoupdate: "true"`
//! get the rules and subjects they lack (nothing is removed).

use std::sync::Arc;

use apiary_api::rbac_v1::PolicyRule;
use serde_json::{Value, json};

use crate::apiserver::{Api, error::ApiError, objects, path::Target};

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
/// policy.go's `ReadWrite`: every verb of an ordinary resource.
const READ_WRITE: &[&str] = apiary_api::resource::ALL_VERBS;

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule::resources(verbs, groups, resources)
}

fn aggregate_to(role: &str) -> Value {
    json!({"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{role}"): "true"}}]})
}

/// A role that may approve CertificateSigningRequests for `signer` (policy.go's
/// `system:certificates.k8s.io:*-approver`).
fn signer_approver(
    name: &'static str,
    signer: &str,
) -> (&'static str, Value, Vec<PolicyRule>, Option<Value>) {
    let rule = PolicyRule {
        resource_names: vec![signer.to_owned()],
        ..r(&["approve"], &["certificates.k8s.io"], &["signers"])
    };
    (name, json!({}), vec![rule], None)
}

/// `(name, extra labels, rules, aggregationRule)` of every bootstrap ClusterRole.
fn cluster_roles() -> Vec<(&'static str, Value, Vec<PolicyRule>, Option<Value>)> {
    let label =
        |role: &str| json!({format!("rbac.authorization.k8s.io/aggregate-to-{role}"): "true"});
    vec![
        (
            "cluster-admin",
            json!({}),
            vec![r(&["*"], &["*"], &["*"]), PolicyRule::urls(&["*"], &["*"])],
            None,
        ),
        (
            "system:discovery",
            json!({}),
            vec![PolicyRule::urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
            None,
        ),
        (
            "system:basic-user",
            json!({}),
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
            None,
        ),
        (
            "system:public-info-viewer",
            json!({}),
            vec![PolicyRule::urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
            None,
        ),
        (
            // Full use of the node agents' API (kubelet's): what the API server needs to
            // proxy logs, exec and `nodes/proxy` to them.
            "system:kubelet-api-admin",
            json!({}),
            vec![
                r(READ, &[""], &["nodes"]),
                r(&["proxy"], &[""], &["nodes"]),
                r(
                    &["*"],
                    &[""],
                    &[
                        "nodes/proxy",
                        "nodes/metrics",
                        "nodes/spec",
                        "nodes/stats",
                        "nodes/log",
                    ],
                ),
            ],
            None,
        ),
        (
            "system:node-bootstrapper",
            json!({}),
            vec![r(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
            None,
        ),
        (
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!({}),
            vec![r(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
            None,
        ),
        (
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!({}),
            vec![r(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
            None,
        ),
        (
            // What a component that delegates authentication and authorization to the API
            // server needs (metrics-server, aggregated API servers).
            "system:auth-delegator",
            json!({}),
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
            None,
        ),
        (
            "system:monitoring",
            json!({}),
            vec![PolicyRule::urls(
                &["get"],
                &[
                    "/metrics",
                    "/metrics/slis",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
            )],
            None,
        ),
        (
            "system:service-account-issuer-discovery",
            json!({}),
            vec![PolicyRule::urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
            None,
        ),
        signer_approver(
            "system:certificates.k8s.io:kube-apiserver-client-approver",
            "kubernetes.io/kube-apiserver-client",
        ),
        signer_approver(
            "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
            "kubernetes.io/kube-apiserver-client-kubelet",
        ),
        signer_approver(
            "system:certificates.k8s.io:kubelet-serving-approver",
            "kubernetes.io/kubelet-serving",
        ),
        signer_approver(
            "system:certificates.k8s.io:legacy-unknown-approver",
            "kubernetes.io/legacy-unknown",
        ),
        ("system:node", json!({}), super::node::node_rules(), None),
        // The built-in local-path CSI driver runs in every node agent, as its own
        // external-provisioner, external-resizer and capacity publisher: the rules of those
        // sidecars' ClusterRoles (kubernetes-csi's deploy/kubernetes/rbac.yaml), for nodes.
        (
            "system:apiary:local-path-provisioner",
            json!({}),
            vec![
                r(
                    &["get", "list", "watch", "create", "patch", "delete"],
                    &[""],
                    &["persistentvolumes"],
                ),
                r(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                r(
                    &["patch", "update"],
                    &[""],
                    &["persistentvolumeclaims/status"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses", "csinodes"]),
                r(READ, &[""], &["nodes"]),
                r(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                    &["storage.k8s.io"],
                    &["csistoragecapacities"],
                ),
                r(
                    &["list", "watch", "create", "update", "patch"],
                    &[""],
                    &["events"],
                ),
            ],
            None,
        ),
        ("admin", json!({}), vec![], Some(aggregate_to("admin"))),
        ("edit", label("admin"), vec![], Some(aggregate_to("edit"))),
        ("view", label("edit"), vec![], Some(aggregate_to("view"))),
        (
            "system:aggregate-to-admin",
            label("admin"),
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                r(
                    READ_WRITE,
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                ),
            ],
            None,
        ),
        (
            "system:aggregate-to-edit",
            label("edit"),
            vec![
                r(
                    READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                r(&["impersonate"], &[""], &["serviceaccounts"]),
                r(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                r(&["create"], &[""], &["pods/eviction"]),
                r(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                r(&["create"], &[""], &["serviceaccounts/token"]),
                r(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                r(WRITE, &["batch"], &["cronjobs", "jobs"]),
                r(
                    WRITE,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(WRITE, &["policy"], &["poddisruptionbudgets"]),
                r(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
            ],
            None,
        ),
        (
            "system:aggregate-to-view",
            label("view"),
            vec![
                r(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                r(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                r(READ, &[""], &["namespaces"]),
                r(READ, &["discovery.k8s.io"], &["endpointslices"]),
                r(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                r(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                r(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                r(
                    READ,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                r(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
            None,
        ),
        // metrics-server's role, which the API server's own `metrics.k8s.io` takes over: who
        // may view a namespace may `kubectl top` it.
        (
            "system:aggregated-metrics-reader",
            json!({
                "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                "rbac.authorization.k8s.io/aggregate-to-view": "true",
            }),
            vec![r(READ, &["metrics.k8s.io"], &["pods", "nodes"])],
            None,
        ),
    ]
}

/// `(name, role, groups)` of every bootstrap ClusterRoleBinding.
const CLUSTER_ROLE_BINDINGS: &[(&str, &str, &[&str])] = &[
    ("cluster-admin", "cluster-admin", &["system:masters"]),
    (
        "system:discovery",
        "system:discovery",
        &["system:authenticated"],
    ),
    (
        "system:basic-user",
        "system:basic-user",
        &["system:authenticated"],
    ),
    (
        "system:public-info-viewer",
        "system:public-info-viewer",
        &["system:authenticated", "system:unauthenticated"],
    ),
    (
        "system:monitoring",
        "system:monitoring",
        &["system:monitoring"],
    ),
    (
        "system:service-account-issuer-discovery",
        "system:service-account-issuer-discovery",
        &["system:serviceaccounts"],
    ),
    // What kubeadm binds at `init` for TLS bootstrapping (`kubeadm:kubelet-bootstrap`,
    // `kubeadm:node-autoapprove-bootstrap`, `kubeadm:node-autoapprove-certificate-rotation`):
    // a bootstrap token may ask for a node's client certificate and have it approved, a node
    // may renew its own. `system:node` stays unbound: the Node authorizer grants it.
    (
        "apiary:kubelet-bootstrap",
        "system:node-bootstrapper",
        &["system:bootstrappers"],
    ),
    (
        "apiary:node-autoapprove-bootstrap",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        &["system:bootstrappers"],
    ),
    (
        "apiary:node-autoapprove-certificate-rotation",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        &["system:nodes"],
    ),
    (
        "system:apiary:local-path-provisioner",
        "system:apiary:local-path-provisioner",
        &["system:nodes"],
    ),
];

/// `(name, role, users)` of the ClusterRoleBindings to users: Kubernetes ships
/// `system:kubelet-api-admin` unbound, kubeadm-style clusters bind it to the API server's
/// client certificate user, which is how the API server is authorized by node agents.
const USER_BINDINGS: &[(&str, &str, &[&str])] = &[(
    "kube-apiserver-kubelet-client",
    "system:kubelet-api-admin",
    &[crate::apiserver::pki::KUBELET_CLIENT_USER],
)];

fn meta(name: &str, labels: &Value) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let Some(extra) = labels.as_object() {
        for (k, v) in extra {
            l[k] = v.clone();
        }
    }
    json!({"name": name, "labels": l, "annotations": {AUTOUPDATE: "true"}})
}

/// The bootstrap ClusterRoles as objects.
pub fn cluster_role_objects() -> Vec<Value> {
    cluster_roles()
        .into_iter()
        .map(|(name, labels, rules, aggregation)| {
            let mut o = json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": meta(name, &labels),
                "rules": rules,
            });
            if let Some(a) = aggregation {
                o["aggregationRule"] = a;
            }
            o
        })
        .collect()
}

/// The bootstrap ClusterRoleBindings as objects.
pub fn cluster_role_binding_objects() -> Vec<Value> {
    let groups = CLUSTER_ROLE_BINDINGS.iter().map(|b| (b, "Group"));
    let users = USER_BINDINGS.iter().map(|b| (b, "User"));
    groups
        .chain(users)
        .map(|((name, role, subjects), kind)| {
            let subjects: Vec<Value> = subjects
                .iter()
                .map(|s| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": s}))
                .collect();
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": meta(name, &json!({})),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": subjects,
            })
        })
        .collect()
}

/// Adds to `existing[field]` the array items of `wanted[field]` it lacks; whether it changed.
fn add_missing(existing: &mut Value, wanted: &Value, field: &str) -> bool {
    let Some(want) = wanted[field].as_array() else {
        return false;
    };
    if !existing[field].is_array() {
        existing[field] = json!([]);
    }
    let have = existing[field].as_array_mut().expect("just made an array");
    let mut changed = false;
    for item in want {
        if !have.contains(item) {
            have.push(item.clone());
            changed = true;
        }
    }
    changed
}

async fn reconcile_one(api: &Arc<Api>, plural: &str, wanted: Value) -> Result<(), ApiError> {
    let resource = api
        .resources
        .get("rbac.authorization.k8s.io", "v1", plural)
        .expect("RBAC is served");
    let name = wanted["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let target = Target {
        resource,
        namespace: None,
        name: None,
        subresource: None,
    };
    let mut existing = match objects::get(api, resource, None, &name).await {
        Ok(o) => o,
        Err(e) if e.reason == "NotFound" => {
            return match objects::create(api, &target, wanted).await {
                Ok(_) => {
                    tracing::info!(kind = resource.kind, name, "created bootstrap policy");
                    Ok(())
                }
                // Another control plane sharing the store was first.
                Err(e) if e.reason == "AlreadyExists" => Ok(()),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    if existing["metadata"]["annotations"][AUTOUPDATE] == "false" {
        return Ok(());
    }
    let mut changed = false;
    if existing["aggregationRule"].is_null() && wanted["aggregationRule"].is_object() {
        existing["aggregationRule"] = wanted["aggregationRule"].clone();
        changed = true;
    }
    // Aggregated roles get their rules from the aggregation controller.
    if wanted["aggregationRule"].is_null() {
        changed |= add_missing(&mut existing, &wanted, "rules");
    }
    changed |= add_missing(&mut existing, &wanted, "subjects");
    for field in ["labels", "annotations"] {
        if let Some(want) = wanted["metadata"][field].as_object() {
            for (k, v) in want {
                if existing["metadata"][field][k].is_null() {
                    if !existing["metadata"][field].is_object() {
                        existing["metadata"][field] = json!({});
                    }
                    existing["metadata"][field][k] = v.clone();
                    changed = true;
                }
            }
        }
    }
    if changed {
        let target = Target {
            name: Some(name.clone()),
            ..target
        };
        objects::update(api, &target, &name, existing).await?;
        tracing::info!(kind = resource.kind, name, "reconciled bootstrap policy");
    }
    Ok(())
}

/// Creates or completes the bootstrap ClusterRoles and ClusterRoleBindings.
pub async fn reconcile(api: &Arc<Api>) -> Result<(), ApiError> {
    for role in cluster_role_objects() {
        reconcile_one(api, "clusterroles", role).await?;
    }
    for binding in cluster_role_binding_objects() {
        reconcile_one(api, "clusterrolebindings", binding).await?;
    }
    Ok(())
}
