//! The resource registry: every kind Apiary serves, with the names kubectl resolves, and the
//! discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/apps/v1`, aggregated discovery)
//! rendered from it exactly as Kubernetes renders them.

use serde_json::{Value, json};

use crate::{
    apiary_v1, apps_v1, batch_v1, certificates_v1, coordination_v1, core_v1, discovery_v1,
    meta::{ObjectMeta, TypeMeta},
    networking_v1, rbac_v1, storage_v1,
};

/// Everything the API server and kubectl need to know about one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The URL segment, e.g. `pods`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    /// `["all"]` for the kinds `kubectl get all` lists.
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Fields usable in `?fieldSelector=` besides `metadata.name` and `metadata.namespace`.
    pub field_selectors: &'static [&'static str],
}

/// A subresource such as `status`, `scale` or `binding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    /// The kind of its request and response bodies.
    pub kind: &'static str,
    /// `(group, version)` of `kind` when it is not the parent's (`autoscaling`, `v1` for scale).
    pub group_version: Option<(&'static str, &'static str)>,
    pub verbs: &'static [&'static str],
}

/// The verbs of an ordinary resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];
const ALL: &[&str] = &["all"];

const fn status(kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        kind,
        group_version: None,
        verbs: GET_PATCH_UPDATE,
    }
}

const SCALE: Subresource = Subresource {
    name: "scale",
    kind: "Scale",
    group_version: Some(("autoscaling", "v1")),
    verbs: GET_PATCH_UPDATE,
};

const fn resource(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        namespaced,
        verbs: ALL_VERBS,
        categories: &[],
        subresources: &[],
        field_selectors: &[],
    }
}

/// `v1` `Namespace`.
pub const NAMESPACES: ResourceInfo = ResourceInfo {
    verbs: NAMESPACE_VERBS,
    subresources: &[
        Subresource {
            name: "finalize",
            kind: "Namespace",
            group_version: None,
            verbs: &["update"],
        },
        status("Namespace"),
    ],
    field_selectors: &["status.phase"],
    ..resource("", "Namespace", "namespaces", "namespace", &["ns"], false)
};
/// `v1` `Pod`.
pub const PODS: ResourceInfo = ResourceInfo {
    categories: ALL,
    subresources: &[
        Subresource {
            name: "attach",
            kind: "PodAttachOptions",
            group_version: None,
            verbs: &["create", "get"],
        },
        Subresource {
            name: "binding",
            kind: "Binding",
            group_version: None,
            verbs: &["create"],
        },
        Subresource {
            name: "exec",
            kind: "PodExecOptions",
            group_version: None,
            verbs: &["create", "get"],
        },
        Subresource {
            name: "log",
            kind: "Pod",
            group_version: None,
            verbs: &["get"],
        },
        Subresource {
            name: "portforward",
            kind: "PodPortForwardOptions",
            group_version: None,
            verbs: &["create", "get"],
        },
        status("Pod"),
    ],
    field_selectors: &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
    ],
    ..resource("", "Pod", "pods", "pod", &["po"], true)
};
/// `v1` `Service`.
pub const SERVICES: ResourceInfo = ResourceInfo {
    categories: ALL,
    subresources: &[status("Service")],
    ..resource("", "Service", "services", "service", &["svc"], true)
};
/// `v1` `Endpoints`.
pub const ENDPOINTS: ResourceInfo =
    resource("", "Endpoints", "endpoints", "endpoints", &["ep"], true);
/// `v1` `ConfigMap`.
pub const CONFIG_MAPS: ResourceInfo =
    resource("", "ConfigMap", "configmaps", "configmap", &["cm"], true);
/// `v1` `Secret`.
pub const SECRETS: ResourceInfo = ResourceInfo {
    field_selectors: &["type"],
    ..resource("", "Secret", "secrets", "secret", &[], true)
};
/// `v1` `Node`.
pub const NODES: ResourceInfo = ResourceInfo {
    subresources: &[status("Node")],
    field_selectors: &["spec.unschedulable"],
    ..resource("", "Node", "nodes", "node", &["no"], false)
};
/// `v1` `Event`.
pub const EVENTS: ResourceInfo = ResourceInfo {
    field_selectors: &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
    ..resource("", "Event", "events", "event", &["ev"], true)
};
/// `v1` `ServiceAccount`.
pub const SERVICE_ACCOUNTS: ResourceInfo = ResourceInfo {
    subresources: &[Subresource {
        name: "token",
        kind: "TokenRequest",
        group_version: Some(("authentication.k8s.io", "v1")),
        verbs: &["create"],
    }],
    ..resource(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        &["sa"],
        true,
    )
};
/// `v1` `PersistentVolume`: cluster-scoped. Kubernetes selects them by the bare field `name`
/// too (a bug kept for compatibility).
pub const PERSISTENT_VOLUMES: ResourceInfo = ResourceInfo {
    subresources: &[status("PersistentVolume")],
    field_selectors: &["name"],
    ..resource(
        "",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        &["pv"],
        false,
    )
};
/// `v1` `PersistentVolumeClaim`.
pub const PERSISTENT_VOLUME_CLAIMS: ResourceInfo = ResourceInfo {
    subresources: &[status("PersistentVolumeClaim")],
    field_selectors: &["name"],
    ..resource(
        "",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        &["pvc"],
        true,
    )
};
/// `apps/v1` `Deployment`.
pub const DEPLOYMENTS: ResourceInfo = ResourceInfo {
    categories: ALL,
    subresources: &[SCALE, status("Deployment")],
    ..resource(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        &["deploy"],
        true,
    )
};
/// `apps/v1` `ReplicaSet`.
pub const REPLICA_SETS: ResourceInfo = ResourceInfo {
    categories: ALL,
    subresources: &[SCALE, status("ReplicaSet")],
    field_selectors: &["status.replicas"],
    ..resource(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        &["rs"],
        true,
    )
};
/// `apps/v1` `StatefulSet`.
pub const STATEFUL_SETS: ResourceInfo = ResourceInfo {
    categories: ALL,
    subresources: &[SCALE, status("StatefulSet")],
    ..resource(
        "apps",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        &["sts"],
        true,
    )
};
/// `apps/v1` `DaemonSet`.
pub const DAEMON_SETS: ResourceInfo = ResourceInfo {
    categories: ALL,
    subresources: &[status("DaemonSet")],
    ..resource(
        "apps",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        &["ds"],
        true,
    )
};
/// `batch/v1` `Job`.
pub const JOBS: ResourceInfo = ResourceInfo {
    categories: ALL,
    subresources: &[status("Job")],
    field_selectors: &["status.successful"],
    ..resource("batch", "Job", "jobs", "job", &[], true)
};
/// `batch/v1` `CronJob`.
pub const CRON_JOBS: ResourceInfo = ResourceInfo {
    categories: ALL,
    subresources: &[status("CronJob")],
    ..resource("batch", "CronJob", "cronjobs", "cronjob", &["cj"], true)
};
/// `networking.k8s.io/v1` `NetworkPolicy`.
pub const NETWORK_POLICIES: ResourceInfo = resource(
    "networking.k8s.io",
    "NetworkPolicy",
    "networkpolicies",
    "networkpolicy",
    &["netpol"],
    true,
);
/// `discovery.k8s.io/v1` `EndpointSlice`.
pub const ENDPOINT_SLICES: ResourceInfo = resource(
    "discovery.k8s.io",
    "EndpointSlice",
    "endpointslices",
    "endpointslice",
    &[],
    true,
);
/// `coordination.k8s.io/v1` `Lease`.
pub const LEASES: ResourceInfo =
    resource("coordination.k8s.io", "Lease", "leases", "lease", &[], true);

/// `storage.k8s.io/v1` `StorageClass`.
pub const STORAGE_CLASSES: ResourceInfo = resource(
    "storage.k8s.io",
    "StorageClass",
    "storageclasses",
    "storageclass",
    &["sc"],
    false,
);
/// `storage.k8s.io/v1` `CSIDriver`.
pub const CSI_DRIVERS: ResourceInfo = resource(
    "storage.k8s.io",
    "CSIDriver",
    "csidrivers",
    "csidriver",
    &[],
    false,
);
/// `storage.k8s.io/v1` `CSINode`.
pub const CSI_NODES: ResourceInfo = resource(
    "storage.k8s.io",
    "CSINode",
    "csinodes",
    "csinode",
    &[],
    false,
);
/// `storage.k8s.io/v1` `CSIStorageCapacity`.
pub const CSI_STORAGE_CAPACITIES: ResourceInfo = resource(
    "storage.k8s.io",
    "CSIStorageCapacity",
    "csistoragecapacities",
    "csistoragecapacity",
    &[],
    true,
);
/// `storage.k8s.io/v1` `VolumeAttachment`.
pub const VOLUME_ATTACHMENTS: ResourceInfo = ResourceInfo {
    subresources: &[status("VolumeAttachment")],
    ..resource(
        "storage.k8s.io",
        "VolumeAttachment",
        "volumeattachments",
        "volumeattachment",
        &[],
        false,
    )
};

/// `admissionregistration.k8s.io/v1` `MutatingWebhookConfiguration`.
pub const MUTATING_WEBHOOK_CONFIGURATIONS: ResourceInfo = ResourceInfo {
    categories: &["api-extensions"],
    ..resource(
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        &[],
        false,
    )
};
/// `admissionregistration.k8s.io/v1` `ValidatingWebhookConfiguration`.
pub const VALIDATING_WEBHOOK_CONFIGURATIONS: ResourceInfo = ResourceInfo {
    categories: &["api-extensions"],
    ..resource(
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        &[],
        false,
    )
};

/// `admissionregistration.k8s.io/v1` `ValidatingAdmissionPolicy`.
pub const VALIDATING_ADMISSION_POLICIES: ResourceInfo = ResourceInfo {
    categories: &["api-extensions"],
    subresources: &[status("ValidatingAdmissionPolicy")],
    ..resource(
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        "validatingadmissionpolicy",
        &[],
        false,
    )
};
/// `admissionregistration.k8s.io/v1` `ValidatingAdmissionPolicyBinding`.
pub const VALIDATING_ADMISSION_POLICY_BINDINGS: ResourceInfo = ResourceInfo {
    categories: &["api-extensions"],
    ..resource(
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        "validatingadmissionpolicybinding",
        &[],
        false,
    )
};

/// `apiextensions.k8s.io/v1` `CustomResourceDefinition`.
pub const CUSTOM_RESOURCE_DEFINITIONS: ResourceInfo = ResourceInfo {
    categories: &["api-extensions"],
    subresources: &[status("CustomResourceDefinition")],
    ..resource(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        &["crd", "crds"],
        false,
    )
};

/// The `status` subresource of a custom kind.
pub const fn status_of(kind: &'static str) -> Subresource {
    status(kind)
}

/// The `scale` subresource (an `autoscaling/v1` Scale), as custom kinds serve it too.
pub const SCALE_SUBRESOURCE: Subresource = SCALE;

/// `apiary.dev/v1` `SecurityIdentity`: cluster-scoped, named after its number.
pub const SECURITY_IDENTITIES: ResourceInfo = resource(
    "apiary.dev",
    "SecurityIdentity",
    "securityidentities",
    "securityidentity",
    &["secid"],
    false,
);

/// `rbac.authorization.k8s.io/v1` `Role`.
pub const ROLES: ResourceInfo = resource(
    "rbac.authorization.k8s.io",
    "Role",
    "roles",
    "role",
    &[],
    true,
);
/// `rbac.authorization.k8s.io/v1` `ClusterRole`.
pub const CLUSTER_ROLES: ResourceInfo = resource(
    "rbac.authorization.k8s.io",
    "ClusterRole",
    "clusterroles",
    "clusterrole",
    &[],
    false,
);
/// `rbac.authorization.k8s.io/v1` `RoleBinding`.
pub const ROLE_BINDINGS: ResourceInfo = resource(
    "rbac.authorization.k8s.io",
    "RoleBinding",
    "rolebindings",
    "rolebinding",
    &[],
    true,
);
/// `rbac.authorization.k8s.io/v1` `ClusterRoleBinding`.
pub const CLUSTER_ROLE_BINDINGS: ResourceInfo = resource(
    "rbac.authorization.k8s.io",
    "ClusterRoleBinding",
    "clusterrolebindings",
    "clusterrolebinding",
    &[],
    false,
);

/// `certificates.k8s.io/v1` `CertificateSigningRequest`: cluster-scoped; `approval` carries the
/// Approved/Denied conditions (approvers), `status` the issued certificate (signers).
pub const CERTIFICATE_SIGNING_REQUESTS: ResourceInfo = ResourceInfo {
    subresources: &[
        Subresource {
            name: "approval",
            kind: "CertificateSigningRequest",
            group_version: None,
            verbs: GET_PATCH_UPDATE,
        },
        status("CertificateSigningRequest"),
    ],
    field_selectors: &["spec.signerName"],
    ..resource(
        "certificates.k8s.io",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        &["csr"],
        false,
    )
};

const CREATE: &[&str] = &["create"];

/// An `authorization.k8s.io/v1` review: create-only, answered and never stored.
const fn review(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        verbs: CREATE,
        ..resource(
            "authorization.k8s.io",
            kind,
            plural,
            singular,
            &[],
            namespaced,
        )
    }
}
/// `authorization.k8s.io/v1` `LocalSubjectAccessReview`.
pub const LOCAL_SUBJECT_ACCESS_REVIEWS: ResourceInfo = review(
    "LocalSubjectAccessReview",
    "localsubjectaccessreviews",
    "localsubjectaccessreview",
    true,
);
/// `authorization.k8s.io/v1` `SelfSubjectAccessReview`.
pub const SELF_SUBJECT_ACCESS_REVIEWS: ResourceInfo = review(
    "SelfSubjectAccessReview",
    "selfsubjectaccessreviews",
    "selfsubjectaccessreview",
    false,
);
/// `authorization.k8s.io/v1` `SelfSubjectRulesReview`.
pub const SELF_SUBJECT_RULES_REVIEWS: ResourceInfo = review(
    "SelfSubjectRulesReview",
    "selfsubjectrulesreviews",
    "selfsubjectrulesreview",
    false,
);
/// `authorization.k8s.io/v1` `SubjectAccessReview`.
pub const SUBJECT_ACCESS_REVIEWS: ResourceInfo = review(
    "SubjectAccessReview",
    "subjectaccessreviews",
    "subjectaccessreview",
    false,
);
/// `authentication.k8s.io/v1` `TokenReview`: create-only, never stored.
pub const TOKEN_REVIEWS: ResourceInfo = ResourceInfo {
    verbs: &["create"],
    ..resource(
        "authentication.k8s.io",
        "TokenReview",
        "tokenreviews",
        "tokenreview",
        &[],
        false,
    )
};

/// `authentication.k8s.io/v1` `SelfSubjectReview` (`kubectl auth whoami`): create-only, never
/// stored.
pub const SELF_SUBJECT_REVIEWS: ResourceInfo = ResourceInfo {
    verbs: &["create"],
    ..resource(
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
        &[],
        false,
    )
};

/// `autoscaling/v2` `HorizontalPodAutoscaler`, the storage version.
pub const HORIZONTAL_POD_AUTOSCALERS: ResourceInfo = ResourceInfo {
    version: "v2",
    categories: ALL,
    subresources: &[status("HorizontalPodAutoscaler")],
    ..resource(
        "autoscaling",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        &["hpa"],
        true,
    )
};
/// `autoscaling/v1` `HorizontalPodAutoscaler`: the same objects, converted
/// ([`crate::autoscaling_v2::to_v1`]).
pub const HORIZONTAL_POD_AUTOSCALERS_V1: ResourceInfo = ResourceInfo {
    version: "v1",
    ..HORIZONTAL_POD_AUTOSCALERS
};

/// `metrics.k8s.io/v1beta1` `NodeMetrics`: read-only, never stored (metrics-server's API, which
/// the API server serves itself from what it scrapes from the node agents).
pub const NODE_METRICS: ResourceInfo = ResourceInfo {
    version: "v1beta1",
    verbs: &["get", "list"],
    ..resource("metrics.k8s.io", "NodeMetrics", "nodes", "", &[], false)
};
/// `metrics.k8s.io/v1beta1` `PodMetrics`, like [`NODE_METRICS`].
pub const POD_METRICS: ResourceInfo = ResourceInfo {
    version: "v1beta1",
    verbs: &["get", "list"],
    ..resource("metrics.k8s.io", "PodMetrics", "pods", "", &[], true)
};

/// A stored object as `info`'s version shows it: built-in kinds are stored in one version, and
/// served in others by conversion (autoscaling/v1 HorizontalPodAutoscalers from v2).
pub fn stored_to_served(info: &ResourceInfo, object: &mut Value) {
    if *info == HORIZONTAL_POD_AUTOSCALERS_V1 {
        crate::autoscaling_v2::to_v1(object);
    }
}

/// An object sent in `info`'s version as it is stored: the inverse of [`stored_to_served`].
pub fn served_to_stored(info: &ResourceInfo, object: &mut Value) {
    if *info == HORIZONTAL_POD_AUTOSCALERS_V1 {
        crate::autoscaling_v2::from_v1(object);
    }
}

/// Every served resource, core group first, then groups in discovery order.
pub static RESOURCES: &[ResourceInfo] = &[
    NAMESPACES,
    PODS,
    SERVICES,
    ENDPOINTS,
    CONFIG_MAPS,
    SECRETS,
    NODES,
    EVENTS,
    SERVICE_ACCOUNTS,
    PERSISTENT_VOLUMES,
    PERSISTENT_VOLUME_CLAIMS,
    DEPLOYMENTS,
    REPLICA_SETS,
    STATEFUL_SETS,
    DAEMON_SETS,
    LOCAL_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_RULES_REVIEWS,
    SUBJECT_ACCESS_REVIEWS,
    HORIZONTAL_POD_AUTOSCALERS,
    HORIZONTAL_POD_AUTOSCALERS_V1,
    JOBS,
    CRON_JOBS,
    CERTIFICATE_SIGNING_REQUESTS,
    NETWORK_POLICIES,
    ROLES,
    CLUSTER_ROLES,
    ROLE_BINDINGS,
    CLUSTER_ROLE_BINDINGS,
    STORAGE_CLASSES,
    CSI_DRIVERS,
    CSI_NODES,
    CSI_STORAGE_CAPACITIES,
    VOLUME_ATTACHMENTS,
    ENDPOINT_SLICES,
    LEASES,
    SECURITY_IDENTITIES,
    SELF_SUBJECT_REVIEWS,
    TOKEN_REVIEWS,
    MUTATING_WEBHOOK_CONFIGURATIONS,
    VALIDATING_WEBHOOK_CONFIGURATIONS,
    VALIDATING_ADMISSION_POLICIES,
    VALIDATING_ADMISSION_POLICY_BINDINGS,
    CUSTOM_RESOURCE_DEFINITIONS,
    NODE_METRICS,
    POD_METRICS,
];

/// The non-core groups, in the order `/apis` lists them (Kubernetes' order).
pub const GROUPS: &[&str] = &[
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "apiary.dev",
    "metrics.k8s.io",
];

impl ResourceInfo {
    /// `v1` or `group/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `PodList`, `DeploymentList`, …
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The `TypeMeta` of an object of this kind.
    pub fn type_meta(&self) -> TypeMeta {
        TypeMeta::new(self.api_version(), self.kind)
    }

    /// The `TypeMeta` of a list of this kind.
    pub fn list_type_meta(&self) -> TypeMeta {
        TypeMeta::new(self.api_version(), self.list_kind())
    }

    /// `pods` or `deployments.apps`: how errors name the resource, and the `resource` of
    /// [`crate::ObjectRef`].
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The subresource called `name`.
    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether `?fieldSelector=` may name `field`.
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (self.namespaced && field == "metadata.namespace")
            || self.field_selectors.contains(&field)
    }
}

/// The resource at `/api/{version}/{plural}` (`group` empty) or `/apis/{group}/{version}/{plural}`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of `kind` in `group`.
pub fn by_kind(group: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// The resource of a manifest's `apiVersion` and `kind`, e.g. (`apps/v1`, `Deployment`).
pub fn by_api_version_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// What `kubectl get NAME` means by NAME: a plural (`deployments`), singular (`deployment`),
/// short name (`deploy`) or kind (`Deployment`), case-insensitively, optionally qualified by
/// group (`deployments.apps`) or version and group (`deployments.v1.apps`).
pub fn resolve(name: &str) -> Option<&'static ResourceInfo> {
    let name = name.to_ascii_lowercase();
    let (resource, qualifier) = name.split_once('.').unwrap_or((&name, ""));
    let (version, group) = match qualifier.split_once('.') {
        Some((v, g)) if v.starts_with('v') && v[1..].starts_with(|c: char| c.is_ascii_digit()) => {
            (Some(v), g)
        }
        _ => (None, qualifier),
    };
    RESOURCES.iter().find(|r| {
        (qualifier.is_empty() || r.group == group)
            && version.is_none_or(|v| r.version == v)
            && (r.plural == resource
                || r.singular == resource
                || r.short_names.contains(&resource)
                || r.kind.eq_ignore_ascii_case(resource))
    })
}

/// The resources in a category, e.g. `all` for `kubectl get all`.
pub fn in_category(category: &str) -> impl Iterator<Item = &'static ResourceInfo> {
    // Each resource once, in its preferred (first listed) version, as kubectl expands it.
    RESOURCES
        .iter()
        .enumerate()
        .filter(move |(i, r)| {
            r.categories.contains(&category)
                && !RESOURCES[..*i]
                    .iter()
                    .any(|earlier| earlier.group == r.group && earlier.plural == r.plural)
        })
        .map(|(_, r)| r)
}

// ---------------------------------------------------------------------------------------------
// Typed access

/// A Rust type that is the body of a served resource.
pub trait Resource {
    /// Its registry entry.
    const INFO: &'static ResourceInfo;

    /// The object's metadata.
    fn metadata(&self) -> &ObjectMeta;

    /// The object's metadata, mutably.
    fn metadata_mut(&mut self) -> &mut ObjectMeta;

    /// `apiVersion` and `kind` of this type.
    fn type_meta() -> TypeMeta {
        Self::INFO.type_meta()
    }
}

macro_rules! impl_resource {
    ($($ty:ty => $info:ident),* $(,)?) => {$(
        impl Resource for $ty {
            const INFO: &'static ResourceInfo = &$info;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    )*};
}

impl_resource!(
    core_v1::Namespace => NAMESPACES,
    crate::autoscaling_v2::HorizontalPodAutoscaler => HORIZONTAL_POD_AUTOSCALERS,
    core_v1::Pod => PODS,
    core_v1::Service => SERVICES,
    core_v1::Endpoints => ENDPOINTS,
    core_v1::ConfigMap => CONFIG_MAPS,
    core_v1::Secret => SECRETS,
    core_v1::Node => NODES,
    core_v1::Event => EVENTS,
    core_v1::ServiceAccount => SERVICE_ACCOUNTS,
    core_v1::PersistentVolume => PERSISTENT_VOLUMES,
    core_v1::PersistentVolumeClaim => PERSISTENT_VOLUME_CLAIMS,
    storage_v1::StorageClass => STORAGE_CLASSES,
    storage_v1::CsiDriver => CSI_DRIVERS,
    storage_v1::CsiNode => CSI_NODES,
    storage_v1::CsiStorageCapacity => CSI_STORAGE_CAPACITIES,
    storage_v1::VolumeAttachment => VOLUME_ATTACHMENTS,
    apps_v1::Deployment => DEPLOYMENTS,
    apps_v1::ReplicaSet => REPLICA_SETS,
    apps_v1::StatefulSet => STATEFUL_SETS,
    apps_v1::DaemonSet => DAEMON_SETS,
    batch_v1::Job => JOBS,
    batch_v1::CronJob => CRON_JOBS,
    certificates_v1::CertificateSigningRequest => CERTIFICATE_SIGNING_REQUESTS,
    networking_v1::NetworkPolicy => NETWORK_POLICIES,
    discovery_v1::EndpointSlice => ENDPOINT_SLICES,
    coordination_v1::Lease => LEASES,
    apiary_v1::SecurityIdentity => SECURITY_IDENTITIES,
    rbac_v1::Role => ROLES,
    rbac_v1::ClusterRole => CLUSTER_ROLES,
    rbac_v1::RoleBinding => ROLE_BINDINGS,
    rbac_v1::ClusterRoleBinding => CLUSTER_ROLE_BINDINGS,
    crate::apiextensions_v1::CustomResourceDefinition => CUSTOM_RESOURCE_DEFINITIONS,
    crate::admissionregistration_v1::MutatingWebhookConfiguration => MUTATING_WEBHOOK_CONFIGURATIONS,
    crate::admissionregistration_v1::ValidatingWebhookConfiguration => VALIDATING_WEBHOOK_CONFIGURATIONS,
    crate::admissionregistration_v1::ValidatingAdmissionPolicy => VALIDATING_ADMISSION_POLICIES,
    crate::admissionregistration_v1::ValidatingAdmissionPolicyBinding => VALIDATING_ADMISSION_POLICY_BINDINGS,
);

impl crate::ObjectRef {
    /// The key of `obj`: its group resource, namespace and name.
    pub fn of<R: Resource>(obj: &R) -> Self {
        let meta = obj.metadata();
        Self {
            resource: R::INFO.group_resource(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        }
    }
}

impl<Spec: Default, Status> crate::meta::Object<Spec, Status>
where
    Self: Resource,
{
    /// An empty object of this kind named `name`, with `apiVersion` and `kind` set.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            type_meta: Self::type_meta(),
            metadata: ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            spec: Spec::default(),
            status: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery

/// The `Content-Type` of an aggregated discovery response, which clients check before
/// decoding one (otherwise they fall back to the legacy documents).
pub const AGGREGATED_DISCOVERY_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The built-in resources, as the discovery renderers take what is served (the API server adds
/// its custom resources).
pub fn built_in() -> Vec<&'static ResourceInfo> {
    RESOURCES.iter().collect()
}

/// Kubernetes' version priority (`version.CompareKubeAwareVersionStrings`): GA before beta
/// before alpha, higher numbers first, anything else last in lexical order.
pub fn version_priority(
    version: &str,
) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    use std::cmp::Reverse;
    let parsed = version.strip_prefix('v').and_then(|rest| {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        match &rest[digits..] {
            "" => Some((0, major, 0)),
            tail => {
                let (stage, minor) = if let Some(n) = tail.strip_prefix("beta") {
                    (1, n)
                } else {
                    (2, tail.strip_prefix("alpha")?)
                };
                Some((stage, major, minor.parse().ok()?))
            }
        }
    });
    match parsed {
        Some((stage, major, minor)) => (stage, Reverse(major), Reverse(minor), String::new()),
        None => (3, Reverse(0), Reverse(0), version.to_owned()),
    }
}

fn versions_of(served: &[&'static ResourceInfo], group: &str) -> Vec<&'static str> {
    let mut versions: Vec<&'static str> = Vec::new();
    for r in served.iter().filter(|r| r.group == group) {
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    versions.sort_by_key(|v| version_priority(v));
    versions
}

/// The named groups in `/apis` order: Kubernetes' for the built-ins, then the others by name.
fn groups_of(served: &[&'static ResourceInfo]) -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = GROUPS.to_vec();
    let mut added: Vec<&'static str> = served
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty() && !GROUPS.contains(g))
        .collect();
    added.sort_unstable();
    added.dedup();
    groups.extend(added);
    groups
}

/// `GET /api`: the core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": versions_of(&built_in(), ""),
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(served: &[&'static ResourceInfo], group: &str) -> Value {
    let versions: Vec<Value> = versions_of(served, group)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

/// `GET /apis`: the named groups.
pub fn api_group_list(served: &[&'static ResourceInfo]) -> Value {
    let groups: Vec<Value> = groups_of(served)
        .into_iter()
        .map(|g| group_json(served, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`, or `None` for an unknown group.
pub fn api_group(served: &[&'static ResourceInfo], group: &str) -> Option<Value> {
    if group.is_empty() || !served.iter().any(|r| r.group == group) {
        return None;
    }
    let mut g = group_json(served, group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `GET /api/v1` (`group` empty) or `/apis/{group}/{version}`: the `APIResourceList`, or `None`
/// for an unknown group version.
pub fn api_resource_list(
    served: &[&'static ResourceInfo],
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut resources = Vec::new();
    for r in served
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for s in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if let Some((g, v)) = s.group_version {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            resources.push(entry);
        }
    }
    if resources.is_empty() {
        return None;
    }
    resources.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let mut list =
        json!({"kind": "APIResourceList", "groupVersion": group_version, "resources": resources});
    if !group.is_empty() {
        // Kubernetes sets `apiVersion` on the named groups' lists but not on `/api/v1`'s.
        list["apiVersion"] = json!("v1");
    }
    Some(list)
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`), served at `/api`
/// (`legacy`: the core group) or `/apis` (the named groups) when the client's `Accept` asks for
/// it; answer with [`AGGREGATED_DISCOVERY_CONTENT_TYPE`]. kubectl then needs no per-group
/// requests.
pub fn aggregated_discovery(served: &[&'static ResourceInfo], legacy: bool) -> Value {
    let groups: Vec<&str> = if legacy { vec![""] } else { groups_of(served) };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|group| {
            let versions: Vec<Value> = versions_of(served, group)
                .into_iter()
                .map(|version| {
                    let resources: Vec<Value> = served
                        .iter()
                        .filter(|r| r.group == group && r.version == version)
                        .map(|r| resource_discovery(r))
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = json!(group);
            }
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn resource_discovery(r: &ResourceInfo) -> Value {
    let gvk = |g: &str, v: &str, k: &str| json!({"group": g, "version": v, "kind": k});
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": gvk(r.group, r.version, r.kind),
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        let subs: Vec<Value> = r
            .subresources
            .iter()
            .map(|s| {
                let (g, v) = s.group_version.unwrap_or((r.group, r.version));
                json!({"subresource": s.name, "responseKind": gvk(g, v, s.kind), "verbs": s.verbs})
            })
            .collect();
        entry["subresources"] = json!(subs);
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apps_v1::Deployment, core_v1::Pod};

    #[test]
    fn kubectl_names_resolve() {
        for (name, plural) in [
            ("po", "pods"),
            ("pod", "pods"),
            ("pods", "pods"),
            ("Pod", "pods"),
            ("svc", "services"),
            ("deploy", "deployments"),
            ("Deployment", "deployments"),
            ("deployments.apps", "deployments"),
            ("deploy.apps", "deployments"),
            ("deployments.v1.apps", "deployments"),
            ("rs", "replicasets"),
            ("sts", "statefulsets"),
            ("ds", "daemonsets"),
            ("cj", "cronjobs"),
            ("jobs.batch", "jobs"),
            ("netpol", "networkpolicies"),
            ("networkpolicies.networking.k8s.io", "networkpolicies"),
            ("ns", "namespaces"),
            ("cm", "configmaps"),
            ("ev", "events"),
            ("sa", "serviceaccounts"),
            ("no", "nodes"),
            ("ep", "endpoints"),
            ("endpointslices.discovery.k8s.io", "endpointslices"),
            ("lease", "leases"),
            ("secid", "securityidentities"),
            ("pv", "persistentvolumes"),
            ("pvc", "persistentvolumeclaims"),
            ("sc", "storageclasses"),
            ("storageclasses.storage.k8s.io", "storageclasses"),
            ("csistoragecapacities", "csistoragecapacities"),
            ("securityidentities.apiary.dev", "securityidentities"),
        ] {
            assert_eq!(resolve(name).map(|r| r.plural), Some(plural), "{name}");
        }
        assert!(resolve("deployments.batch").is_none());
        assert!(resolve("deployments.v2.apps").is_none());
        assert!(resolve("widgets").is_none());
    }

    #[test]
    fn lookups_by_path_and_kind() {
        assert_eq!(lookup("apps", "v1", "deployments"), Some(&DEPLOYMENTS));
        assert_eq!(lookup("", "v1", "pods").unwrap().kind, "Pod");
        assert!(lookup("", "v1", "deployments").is_none());
        assert_eq!(by_kind("batch", "CronJob").unwrap().plural, "cronjobs");
        assert_eq!(
            by_api_version_kind("networking.k8s.io/v1", "NetworkPolicy"),
            Some(&NETWORK_POLICIES)
        );
        assert_eq!(by_api_version_kind("v1", "Secret"), Some(&SECRETS));
        assert!(by_api_version_kind("apps/v1beta1", "Deployment").is_none());
        assert_eq!(DEPLOYMENTS.api_version(), "apps/v1");
        assert_eq!(PODS.list_kind(), "PodList");
        assert_eq!(DEPLOYMENTS.group_resource(), "deployments.apps");
        assert_eq!(PODS.subresource("binding").unwrap().kind, "Binding");
        assert_eq!(
            DEPLOYMENTS.subresource("scale").unwrap().group_version,
            Some(("autoscaling", "v1"))
        );
        assert!(PODS.supports_field("spec.nodeName"));
        assert!(!NODES.supports_field("metadata.namespace"));
        assert!(!SERVICES.supports_field("spec.clusterIP"));
        let all: Vec<_> = in_category("all").map(|r| r.plural).collect();
        assert_eq!(
            all,
            [
                "pods",
                "services",
                "deployments",
                "replicasets",
                "statefulsets",
                "daemonsets",
                "horizontalpodautoscalers",
                "jobs",
                "cronjobs"
            ]
        );
    }

    #[test]
    fn typed_objects_know_their_kind() {
        let d = Deployment::new("web");
        assert_eq!(d.type_meta, TypeMeta::new("apps/v1", "Deployment"));
        assert_eq!(d.metadata().name, "web");
        assert_eq!(Pod::INFO.plural, "pods");
        let mut d = d;
        d.metadata_mut().namespace = "shop".into();
        assert_eq!(
            crate::ObjectRef::of(&d).to_string(),
            "deployments.apps/shop/web"
        );
        let v = serde_json::to_value(Pod::new("p")).unwrap();
        assert_eq!(v["kind"], "Pod");
        assert_eq!(v["apiVersion"], "v1");
    }

    #[test]
    fn core_resource_list_is_shaped_like_kubernetes() {
        let list = api_resource_list(&built_in(), "", "v1").unwrap();
        assert_eq!(list["kind"], "APIResourceList");
        assert_eq!(list["groupVersion"], "v1");
        assert!(list.get("apiVersion").is_none());
        let find = |name: &str| {
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(
            find("pods"),
            json!({"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch",
                    "update", "watch"],
                "shortNames": ["po"], "categories": ["all"]})
        );
        assert_eq!(
            find("pods/binding"),
            json!({"name": "pods/binding", "singularName": "", "namespaced": true,
                "kind": "Binding", "verbs": ["create"]})
        );
        assert_eq!(find("namespaces")["namespaced"], false);
        assert_eq!(find("namespaces")["verbs"].as_array().unwrap().len(), 7);
        assert!(find("configmaps").get("categories").is_none());
        let names: Vec<_> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn group_documents() {
        let apps = api_resource_list(&built_in(), "apps", "v1").unwrap();
        assert_eq!(apps["apiVersion"], "v1");
        assert_eq!(apps["groupVersion"], "apps/v1");
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
        assert!(api_resource_list(&built_in(), "apps", "v2").is_none());

        let groups = api_group_list(&built_in());
        assert_eq!(groups["kind"], "APIGroupList");
        assert_eq!(
            groups["groups"][0],
            json!({"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}})
        );
        assert_eq!(groups["groups"].as_array().unwrap().len(), GROUPS.len());
        assert_eq!(api_group(&built_in(), "batch").unwrap()["kind"], "APIGroup");
        assert!(api_group(&built_in(), "extensions").is_none());
        assert_eq!(
            api_versions("10.0.0.1:6443"),
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs":
                [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]})
        );
    }

    #[test]
    fn aggregated_discovery_lists_every_resource() {
        let core = aggregated_discovery(&built_in(), true);
        assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2");
        assert!(core["items"][0]["metadata"].get("name").is_none());
        let v1 = &core["items"][0]["versions"][0];
        assert_eq!(v1["version"], "v1");
        let pods = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(
            pods["responseKind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        let apis = aggregated_discovery(&built_in(), false);
        let apps = &apis["items"][0];
        assert_eq!(apps["metadata"]["name"], "apps");
        let deploy = &apps["versions"][0]["resources"][0];
        assert_eq!(deploy["resource"], "deployments");
        assert_eq!(
            deploy["subresources"][0]["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        let total: usize = [core, apis]
            .iter()
            .flat_map(|l| l["items"].as_array().unwrap().clone())
            .flat_map(|i| i["versions"].as_array().unwrap().clone())
            .map(|v| v["resources"].as_array().unwrap().len())
            .sum();
        assert_eq!(total, RESOURCES.len());
    }
}
