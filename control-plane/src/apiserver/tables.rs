//! Server-side `Table` output, which `kubectl get` asks for (`Accept: …;as=Table;g=meta.k8s.io`):
//! the columns kubectl users know for each kind, wide columns at priority 1.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::resources::ResourceType;

/// Whether the client asked for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

type Cell = fn(&Value) -> Value;

/// (name, type, priority, cell)
type Column = (&'static str, &'static str, u8, Cell);

/// A column; a function so that closures coerce to [`Cell`].
fn col(name: &'static str, kind: &'static str, priority: u8, cell: Cell) -> Column {
    (name, kind, priority, cell)
}

fn columns(kind: &str) -> Vec<Column> {
    let name = col("Name", "string", 0, |o| json!(o["metadata"]["name"]));
    let age_col = col("Age", "string", 0, |o| {
        json!(age(&o["metadata"]["creationTimestamp"]))
    });
    let mut cols = vec![name];
    match kind {
        // metrics-server's columns; a pod's figures are its containers' sums.
        "NodeMetrics" | "PodMetrics" => cols.extend([
            col("CPU", "string", 0, |o| json!(metrics_totals(o).0)),
            col("Memory", "string", 0, |o| json!(metrics_totals(o).1)),
            col("Window", "string", 0, |o| json!(o["window"])),
        ]),
        "HorizontalPodAutoscaler" => cols.extend([
            col("Reference", "string", 0, |o| {
                let target = &o["spec"]["scaleTargetRef"];
                json!(format!(
                    "{}/{}",
                    target["kind"].as_str().unwrap_or_default(),
                    target["name"].as_str().unwrap_or_default()
                ))
            }),
            col("Targets", "string", 0, |o| json!(hpa_targets(o))),
            col("MinPods", "string", 0, |o| {
                json!(
                    o["spec"]["minReplicas"]
                        .as_i64()
                        .map_or("<unset>".to_owned(), |m| m.to_string())
                )
            }),
            col("MaxPods", "string", 0, |o| {
                json!(int(&o["spec"]["maxReplicas"]))
            }),
            col("Replicas", "string", 0, |o| {
                json!(int(&o["status"]["currentReplicas"]))
            }),
            age_col,
        ]),
        "Pod" => cols.extend([
            col("Ready", "string", 0, pod_ready),
            col("Status", "string", 0, pod_status),
            col("Restarts", "string", 0, pod_restarts),
            age_col,
            col("IP", "string", 1, |o| {
                json!(o["status"]["podIP"].as_str().unwrap_or("<none>"))
            }),
            col("Node", "string", 1, |o| {
                json!(o["spec"]["nodeName"].as_str().unwrap_or("<none>"))
            }),
            col("Nominated Node", "string", 1, |o| {
                json!(
                    o["status"]["nominatedNodeName"]
                        .as_str()
                        .unwrap_or("<none>")
                )
            }),
            col("Readiness Gates", "string", 1, |_| json!("<none>")),
        ]),
        "Deployment" => cols.extend([
            col("Ready", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int(&o["status"]["readyReplicas"]),
                    int(&o["spec"]["replicas"])
                ))
            }),
            col("Up-to-date", "integer", 0, |o| {
                json!(int(&o["status"]["updatedReplicas"]))
            }),
            col("Available", "integer", 0, |o| {
                json!(int(&o["status"]["availableReplicas"]))
            }),
            age_col,
            col("Containers", "string", 1, containers),
            col("Images", "string", 1, images),
            col("Selector", "string", 1, |o| {
                json!(selector(&o["spec"]["selector"]))
            }),
        ]),
        "ReplicaSet" => cols.extend([
            col("Desired", "integer", 0, |o| {
                json!(int(&o["spec"]["replicas"]))
            }),
            col("Current", "integer", 0, |o| {
                json!(int(&o["status"]["replicas"]))
            }),
            col("Ready", "integer", 0, |o| {
                json!(int(&o["status"]["readyReplicas"]))
            }),
            age_col,
            col("Containers", "string", 1, containers),
            col("Images", "string", 1, images),
            col("Selector", "string", 1, |o| {
                json!(selector(&o["spec"]["selector"]))
            }),
        ]),
        "StatefulSet" => cols.extend([
            col("Ready", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int(&o["status"]["readyReplicas"]),
                    int(&o["spec"]["replicas"])
                ))
            }),
            age_col,
            col("Containers", "string", 1, containers),
            col("Images", "string", 1, images),
        ]),
        "DaemonSet" => cols.extend([
            col("Desired", "integer", 0, |o| {
                json!(int(&o["status"]["desiredNumberScheduled"]))
            }),
            col("Current", "integer", 0, |o| {
                json!(int(&o["status"]["currentNumberScheduled"]))
            }),
            col("Ready", "integer", 0, |o| {
                json!(int(&o["status"]["numberReady"]))
            }),
            col("Up-to-date", "integer", 0, |o| {
                json!(int(&o["status"]["updatedNumberScheduled"]))
            }),
            col("Available", "integer", 0, |o| {
                json!(int(&o["status"]["numberAvailable"]))
            }),
            col("Node Selector", "string", 0, |o| {
                json!(map_or_none(&o["spec"]["template"]["spec"]["nodeSelector"]))
            }),
            age_col,
            col("Containers", "string", 1, containers),
            col("Images", "string", 1, images),
            col("Selector", "string", 1, |o| {
                json!(selector(&o["spec"]["selector"]))
            }),
        ]),
        "Job" => cols.extend([
            col("Status", "string", 0, job_status),
            col("Completions", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int(&o["status"]["succeeded"]),
                    o["spec"]["completions"].as_i64().unwrap_or(1)
                ))
            }),
            col("Duration", "string", 0, job_duration),
            age_col,
            col("Containers", "string", 1, containers),
            col("Images", "string", 1, images),
            col("Selector", "string", 1, |o| {
                json!(selector(&o["spec"]["selector"]))
            }),
        ]),
        "CronJob" => cols.extend([
            col("Schedule", "string", 0, |o| json!(o["spec"]["schedule"])),
            col("Timezone", "string", 0, |o| {
                json!(o["spec"]["timeZone"].as_str().unwrap_or("<none>"))
            }),
            col("Suspend", "boolean", 0, |o| {
                json!(o["spec"]["suspend"].as_bool().unwrap_or(false))
            }),
            col("Active", "integer", 0, |o| {
                json!(o["status"]["active"].as_array().map_or(0, Vec::len))
            }),
            col("Last Schedule", "string", 0, |o| {
                json!(
                    o["status"]["lastScheduleTime"]
                        .as_str()
                        .map_or("<none>".to_owned(), |_| age(
                            &o["status"]["lastScheduleTime"]
                        ))
                )
            }),
            age_col,
        ]),
        "Service" => cols.extend([
            col("Type", "string", 0, |o| {
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP"))
            }),
            col("Cluster-IP", "string", 0, |o| {
                json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>"))
            }),
            col("External-IP", "string", 0, service_external_ip),
            col("Port(s)", "string", 0, service_ports),
            age_col,
            col("Selector", "string", 1, |o| {
                json!(map_or_none(&o["spec"]["selector"]))
            }),
        ]),
        "Endpoints" => cols.extend([col("Endpoints", "string", 0, endpoints), age_col]),
        "Namespace" => cols.extend([
            col("Status", "string", 0, |o| {
                json!(o["status"]["phase"].as_str().unwrap_or("Active"))
            }),
            age_col,
        ]),
        "ConfigMap" => cols.extend([
            col("Data", "integer", 0, |o| {
                json!(len(&o["data"]) + len(&o["binaryData"]))
            }),
            age_col,
        ]),
        "Secret" => cols.extend([
            col("Type", "string", 0, |o| {
                json!(o["type"].as_str().unwrap_or("Opaque"))
            }),
            col("Data", "integer", 0, |o| json!(len(&o["data"]))),
            age_col,
        ]),
        "Node" => cols.extend([
            col("Status", "string", 0, node_status),
            col("Roles", "string", 0, |_| json!("<none>")),
            age_col,
            col("Version", "string", 0, |o| {
                json!(
                    o["status"]["nodeInfo"]["kubeletVersion"]
                        .as_str()
                        .unwrap_or("")
                )
            }),
            col("Internal-IP", "string", 1, |o| {
                json!(node_address(o, "InternalIP"))
            }),
            col("External-IP", "string", 1, |o| {
                json!(node_address(o, "ExternalIP"))
            }),
            col("OS-Image", "string", 1, |o| {
                json!(o["status"]["nodeInfo"]["osImage"].as_str().unwrap_or(""))
            }),
            col("Kernel-Version", "string", 1, |o| {
                json!(
                    o["status"]["nodeInfo"]["kernelVersion"]
                        .as_str()
                        .unwrap_or("")
                )
            }),
            col("Container-Runtime", "string", 1, |o| {
                json!(
                    o["status"]["nodeInfo"]["containerRuntimeVersion"]
                        .as_str()
                        .unwrap_or("")
                )
            }),
        ]),
        "ServiceAccount" => cols.extend([
            col("Secrets", "integer", 0, |o| {
                json!(o["secrets"].as_array().map_or(0, Vec::len))
            }),
            age_col,
        ]),
        "CertificateSigningRequest" => cols.extend([
            age_col,
            col("SignerName", "string", 0, |o| {
                json!(o["spec"]["signerName"])
            }),
            col("Requestor", "string", 0, |o| json!(o["spec"]["username"])),
            col("RequestedDuration", "string", 0, |o| {
                json!(
                    o["spec"]["expirationSeconds"]
                        .as_i64()
                        .map_or_else(|| "<none>".to_owned(), human_duration)
                )
            }),
            col("Condition", "string", 0, |o| {
                json!(super::certificates::condition_summary(o))
            }),
        ]),
        // pkg/printers/internalversion's storage columns.
        "PersistentVolume" => cols.extend([
            col("Capacity", "string", 0, |o| {
                json!(o["spec"]["capacity"]["storage"].as_str().unwrap_or("0"))
            }),
            col("Access Modes", "string", 0, |o| {
                json!(access_modes(&o["spec"]["accessModes"]))
            }),
            col("Reclaim Policy", "string", 0, |o| {
                json!(
                    o["spec"]["persistentVolumeReclaimPolicy"]
                        .as_str()
                        .unwrap_or_default()
                )
            }),
            col("Status", "string", 0, |o| {
                json!(terminating_or(
                    o,
                    o["status"]["phase"].as_str().unwrap_or_default()
                ))
            }),
            col("Claim", "string", 0, |o| {
                let claim = &o["spec"]["claimRef"];
                json!(if claim.is_object() {
                    format!(
                        "{}/{}",
                        claim["namespace"].as_str().unwrap_or_default(),
                        claim["name"].as_str().unwrap_or_default()
                    )
                } else {
                    String::new()
                })
            }),
            col("StorageClass", "string", 0, |o| json!(volume_class(o))),
            col("VolumeAttributesClass", "string", 0, |o| {
                json!(
                    o["spec"]["volumeAttributesClassName"]
                        .as_str()
                        .unwrap_or("<unset>")
                )
            }),
            col("Reason", "string", 0, |o| {
                json!(o["status"]["reason"].as_str().unwrap_or_default())
            }),
            age_col,
            col("VolumeMode", "string", 1, |o| {
                json!(o["spec"]["volumeMode"].as_str().unwrap_or("<unset>"))
            }),
        ]),
        "PersistentVolumeClaim" => cols.extend([
            col("Status", "string", 0, |o| {
                json!(terminating_or(
                    o,
                    o["status"]["phase"].as_str().unwrap_or_default()
                ))
            }),
            col("Volume", "string", 0, |o| {
                json!(o["spec"]["volumeName"].as_str().unwrap_or_default())
            }),
            col("Capacity", "string", 0, |o| {
                json!(if bound_claim(o) {
                    o["status"]["capacity"]["storage"].as_str().unwrap_or("0")
                } else {
                    ""
                })
            }),
            col("Access Modes", "string", 0, |o| {
                json!(if bound_claim(o) {
                    access_modes(&o["status"]["accessModes"])
                } else {
                    String::new()
                })
            }),
            col("StorageClass", "string", 0, |o| json!(volume_class(o))),
            col("VolumeAttributesClass", "string", 0, |o| {
                json!(match o["spec"]["volumeAttributesClassName"].as_str() {
                    Some(c) if !c.is_empty() => c,
                    _ => "<unset>",
                })
            }),
            age_col,
            col("VolumeMode", "string", 1, |o| {
                json!(o["spec"]["volumeMode"].as_str().unwrap_or("<unset>"))
            }),
        ]),
        // The printer, not kubectl, marks the default class.
        "StorageClass" => {
            cols[0] = col("Name", "string", 0, |o| {
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                let annotations = &o["metadata"]["annotations"];
                let default = [
                    apiary_api::storage_v1::IS_DEFAULT_CLASS_ANNOTATION,
                    apiary_api::storage_v1::BETA_IS_DEFAULT_CLASS_ANNOTATION,
                ]
                .iter()
                .any(|a| annotations[*a] == "true");
                json!(if default {
                    format!("{name} (default)")
                } else {
                    name.to_owned()
                })
            });
            cols.extend([
                col("Provisioner", "string", 0, |o| json!(o["provisioner"])),
                col("ReclaimPolicy", "string", 0, |o| {
                    json!(o["reclaimPolicy"].as_str().unwrap_or("Delete"))
                }),
                col("VolumeBindingMode", "string", 0, |o| {
                    json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate"))
                }),
                col("AllowVolumeExpansion", "string", 0, |o| {
                    json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false))
                }),
                age_col,
            ]);
        }
        "CSIDriver" => cols.extend([
            col("AttachRequired", "boolean", 0, |o| {
                json!(o["spec"]["attachRequired"].as_bool().unwrap_or(true))
            }),
            col("PodInfoOnMount", "boolean", 0, |o| {
                json!(o["spec"]["podInfoOnMount"].as_bool().unwrap_or(false))
            }),
            col("StorageCapacity", "boolean", 0, |o| {
                json!(o["spec"]["storageCapacity"].as_bool().unwrap_or(false))
            }),
            col("TokenRequests", "string", 0, |o| {
                let audiences: Vec<&str> = o["spec"]["tokenRequests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| t["audience"].as_str().unwrap_or_default())
                    .collect();
                json!(if audiences.is_empty() {
                    "<unset>".to_owned()
                } else {
                    audiences.join(",")
                })
            }),
            col("RequiresRepublish", "boolean", 0, |o| {
                json!(o["spec"]["requiresRepublish"].as_bool().unwrap_or(false))
            }),
            col("Modes", "string", 0, |o| {
                let modes: Vec<&str> = o["spec"]["volumeLifecycleModes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                json!(if modes.is_empty() {
                    "<none>".to_owned()
                } else {
                    modes.join(",")
                })
            }),
            age_col,
        ]),
        "CSINode" => cols.extend([
            col("Drivers", "integer", 0, |o| {
                json!(len(&o["spec"]["drivers"]))
            }),
            age_col,
        ]),
        "CSIStorageCapacity" => cols.extend([
            col("StorageClassName", "string", 0, |o| {
                json!(o["storageClassName"])
            }),
            col("Capacity", "string", 0, |o| {
                json!(o["capacity"].as_str().unwrap_or("<unset>"))
            }),
            age_col,
        ]),
        "VolumeAttachment" => cols.extend([
            col("Attacher", "string", 0, |o| json!(o["spec"]["attacher"])),
            col("PV", "string", 0, |o| {
                json!(
                    o["spec"]["source"]["persistentVolumeName"]
                        .as_str()
                        .unwrap_or_default()
                )
            }),
            col("Node", "string", 0, |o| json!(o["spec"]["nodeName"])),
            col("Attached", "boolean", 0, |o| {
                json!(o["status"]["attached"].as_bool().unwrap_or(false))
            }),
            age_col,
        ]),
        "NetworkPolicy" => cols.extend([
            col("Pod-Selector", "string", 0, |o| {
                json!(selector(&o["spec"]["podSelector"]))
            }),
            age_col,
        ]),
        "EndpointSlice" => cols.extend([
            col("AddressType", "string", 0, |o| json!(o["addressType"])),
            col("Ports", "string", 0, |o| {
                json!(join_or_unset(
                    o["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_i64().map(|p| p.to_string()))
                ))
            }),
            col("Endpoints", "string", 0, |o| {
                json!(join_or_unset(
                    o["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|e| e["addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str().map(str::to_owned)))
                ))
            }),
            age_col,
        ]),
        "SecurityIdentity" => cols.extend([
            col("Namespace", "string", 0, |o| {
                json!(o["labels"]["apiary:namespace"].as_str().unwrap_or("<none>"))
            }),
            col("Labels", "string", 0, |o| {
                json!(security_labels(&o["labels"], "k8s:"))
            }),
            age_col,
            col("Namespace Labels", "string", 1, |o| {
                json!(security_labels(&o["labels"], "k8s-ns:"))
            }),
        ]),
        // printMutatingWebhook / printValidatingWebhook.
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => cols.extend([
            col("Webhooks", "integer", 0, |o| {
                json!(o["webhooks"].as_array().map_or(0, Vec::len))
            }),
            age_col,
        ]),
        // printValidatingAdmissionPolicy.
        "ValidatingAdmissionPolicy" => cols.extend([
            col("Validations", "integer", 0, |o| {
                json!(o["spec"]["validations"].as_array().map_or(0, Vec::len))
            }),
            col("ParamKind", "string", 0, |o| {
                let kind = &o["spec"]["paramKind"];
                json!(match kind["kind"].as_str() {
                    Some(k) => format!("{}/{k}", kind["apiVersion"].as_str().unwrap_or_default()),
                    None => "<unset>".to_owned(),
                })
            }),
            age_col,
        ]),
        // printValidatingAdmissionPolicyBinding.
        "ValidatingAdmissionPolicyBinding" => cols.extend([
            col("PolicyName", "string", 0, |o| {
                json!(o["spec"]["policyName"])
            }),
            col("ParamRef", "string", 0, |o| {
                let r = &o["spec"]["paramRef"];
                json!(match (r["namespace"].as_str(), r["name"].as_str()) {
                    (Some(ns), Some(n)) if !ns.is_empty() => format!("{ns}/{n}"),
                    (_, Some(n)) => format!("*/{n}"),
                    _ if r["selector"].is_object() => "*/*".to_owned(),
                    _ => "<unset>".to_owned(),
                })
            }),
            age_col,
        ]),
        // kube-apiserver's printRole / printClusterRole.
        "Role" | "ClusterRole" => cols.push(col("Created At", "date", 0, |o| {
            json!(o["metadata"]["creationTimestamp"])
        })),
        // printRoleBinding / printClusterRoleBinding.
        "RoleBinding" | "ClusterRoleBinding" => cols.extend([
            col("Role", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    o["roleRef"]["kind"].as_str().unwrap_or_default(),
                    o["roleRef"]["name"].as_str().unwrap_or_default()
                ))
            }),
            age_col,
            col("Users", "string", 1, |o| json!(subjects(o, "User"))),
            col("Groups", "string", 1, |o| json!(subjects(o, "Group"))),
            col("ServiceAccounts", "string", 1, |o| {
                json!(subjects(o, "ServiceAccount"))
            }),
        ]),
        "Lease" => cols.extend([
            col("Holder", "string", 0, |o| {
                json!(o["spec"]["holderIdentity"].as_str().unwrap_or(""))
            }),
            age_col,
        ]),
        // kube-apiserver's printEvent (pkg/printers/internalversion), wide as served.
        "Event" => {
            return vec![
                col("Last Seen", "string", 0, |o| json!(event_last_seen(o))),
                col("Type", "string", 0, |o| json!(o["type"])),
                col("Reason", "string", 0, |o| json!(o["reason"])),
                col("Object", "string", 0, event_object),
                col("Subobject", "string", 1, |o| {
                    json!(o["involvedObject"]["fieldPath"].as_str().unwrap_or(""))
                }),
                col("Source", "string", 1, event_source),
                col("Message", "string", 0, |o| {
                    json!(o["message"].as_str().unwrap_or("").trim())
                }),
                col("First Seen", "string", 1, |o| json!(event_first_seen(o))),
                col("Count", "string", 1, |o| json!(event_count(o))),
                col("Name", "string", 1, |o| json!(o["metadata"]["name"])),
            ];
        }
        _ => cols.push(age_col),
    }
    cols
}

/// The table of `objects` (one row each) of `resource`'s kind.
pub fn table(resource: &ResourceType, objects: &[Value], list_metadata: Value) -> Value {
    let cols = columns(resource.kind);
    let definitions: Vec<Value> = cols
        .iter()
        .map(|(name, kind, priority, _)| {
            let mut def = json!({ "name": name, "type": kind, "format": "", "description": "", "priority": priority });
            if *name == "Name" {
                def["format"] = json!("name");
            }
            def
        })
        .collect();
    let cells = |o: &Value| cols.iter().map(|(_, _, _, cell)| cell(o)).collect();
    table_of(definitions, objects, cells, list_metadata)
}

/// A `meta.k8s.io/v1` Table: the column definitions, and a row of `cells` per object with the
/// object's metadata (kubectl's `PartialObjectMetadata`).
fn table_of(
    definitions: Vec<Value>,
    objects: &[Value],
    cells: impl Fn(&Value) -> Vec<Value>,
    list_metadata: Value,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": cells(o),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// `GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that order, each once.
fn access_modes(modes: &Value) -> String {
    let modes: Vec<&str> = modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| modes.contains(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// A volume's or claim's class: `spec.storageClassName`, else the beta annotation.
fn volume_class(o: &Value) -> String {
    match o["spec"]["storageClassName"].as_str() {
        Some(class) if !class.is_empty() => class.to_owned(),
        _ => o["metadata"]["annotations"][apiary_api::core_v1::ANN_BETA_STORAGE_CLASS]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// `Terminating` for an object marked for deletion, else `phase`.
fn terminating_or(o: &Value, phase: &str) -> String {
    if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating".to_owned()
    } else {
        phase.to_owned()
    }
}

/// Whether a claim names its volume (the printer then shows the status' capacity and modes).
fn bound_claim(o: &Value) -> bool {
    o["spec"]["volumeName"]
        .as_str()
        .is_some_and(|v| !v.is_empty())
}

/// A NodeMetrics' usage, or a PodMetrics' containers' summed, as quantities.
fn metrics_totals(o: &Value) -> (String, String) {
    if o["kind"] == "NodeMetrics" {
        let usage = |r: &str| o["usage"][r].as_str().unwrap_or("0").to_owned();
        return (usage("cpu"), usage("memory"));
    }
    let (nanocores, bytes) = super::resource_metrics::pod_totals(o);
    (
        apiary_api::quantity::Quantity::from_nano(nanocores).0,
        apiary_api::quantity::Quantity::from_bytes(bytes).0,
    )
}

/// An HPA's targets as kubectl prints them (`formatHPAMetrics`): `cpu: 40%/50%` for each of the
/// first two metrics, `<unknown>` before the first measurement. An autoscaling/v1 object's CPU
/// target is its one metric.
fn hpa_targets(o: &Value) -> String {
    let (specs, statuses) = match o["spec"]["targetCPUUtilizationPercentage"].as_i64() {
        Some(target) => {
            let current = &o["status"]["currentCPUUtilizationPercentage"];
            (
                vec![
                    json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}}),
                ],
                vec![
                    json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": current}}}),
                ],
            )
        }
        None => (
            o["spec"]["metrics"].as_array().cloned().unwrap_or_default(),
            o["status"]["currentMetrics"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        ),
    };
    if specs.is_empty() {
        return "<none>".to_owned();
    }
    let shown: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let kind = spec["type"].as_str().unwrap_or_default();
            let field = match kind {
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                "External" => "external",
                _ => "resource",
            };
            let source = &spec[field];
            let current = &statuses.get(i).map_or(&Value::Null, |s| &s[field])["current"];
            let name = match kind {
                "Resource" | "ContainerResource" => source["name"].as_str().unwrap_or_default(),
                _ => source["metric"]["name"].as_str().unwrap_or_default(),
            };
            let target = &source["target"];
            let (now, want) = match target["averageUtilization"].as_i64() {
                Some(want) if target["averageValue"].is_null() => (
                    current["averageUtilization"]
                        .as_i64()
                        .map_or("<unknown>".to_owned(), |c| format!("{c}%")),
                    format!("{want}%"),
                ),
                _ => {
                    let field = if target["averageValue"].is_null() {
                        "value"
                    } else {
                        "averageValue"
                    };
                    (
                        current[field].as_str().unwrap_or("<unknown>").to_owned(),
                        target[field].as_str().unwrap_or("<auto>").to_owned(),
                    )
                }
            };
            format!("{name}: {now}/{want}")
        })
        .collect();
    match shown.len() {
        n if n > 2 => format!("{} + {} more...", shown[..2].join(", "), n - 2),
        _ => shown.join(", "),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn len(v: &Value) -> usize {
    v.as_object().map_or(0, serde_json::Map::len)
}

fn join_or_unset(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "<unset>".to_owned()
    } else {
        items.join(",")
    }
}

fn map_or_none(v: &Value) -> String {
    match v.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".to_owned(),
    }
}

/// A label selector as kubectl prints it: `app=web,tier in (a,b)`.
/// The entries of a SecurityIdentity's `labels` from one source (`k8s:`, `k8s-ns:`), without
/// the prefix: `app=web,tier=front`, or `<none>`.
fn security_labels(labels: &Value, prefix: &str) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some(format!("{}={}", k.strip_prefix(prefix)?, v.as_str()?)))
        .collect();
    if pairs.is_empty() {
        "<none>".to_owned()
    } else {
        pairs.join(",")
    }
}

fn selector(v: &Value) -> String {
    let mut parts: Vec<String> = v["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for expr in v["matchExpressions"].as_array().into_iter().flatten() {
        let key = expr["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = expr["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match expr["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    if parts.is_empty() {
        "<none>".to_owned()
    } else {
        parts.join(",")
    }
}

fn template_containers(o: &Value) -> Vec<&Value> {
    let spec = if o["spec"]["template"]["spec"].is_object() {
        &o["spec"]["template"]["spec"]
    } else {
        &o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    };
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect()
}

fn containers(o: &Value) -> Value {
    json!(
        template_containers(o)
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn images(o: &Value) -> Value {
    json!(
        template_containers(o)
            .iter()
            .filter_map(|c| c["image"].as_str())
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn pod_ready(o: &Value) -> Value {
    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = o["status"]["containerStatuses"].as_array().map_or(0, |s| {
        s.iter()
            .filter(|c| c["ready"].as_bool() == Some(true))
            .count()
    });
    json!(format!("{ready}/{total}"))
}

/// The STATUS column: a waiting or terminated container's reason wins over the phase, and a pod
/// being deleted shows `Terminating`, as in kubectl.
fn pod_status(o: &Value) -> Value {
    if o["metadata"]["deletionTimestamp"].is_string() {
        return json!("Terminating");
    }
    let mut status = o["status"]["reason"]
        .as_str()
        .or_else(|| o["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_owned();
    for c in o["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(reason) = c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            status = reason.to_owned();
        } else if let Some(reason) = c["state"]["terminated"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            status = reason.to_owned();
        }
    }
    json!(status)
}

fn pod_restarts(o: &Value) -> Value {
    let restarts: i64 = o["status"]["containerStatuses"]
        .as_array()
        .map_or(0, |s| s.iter().map(|c| int(&c["restartCount"])).sum());
    json!(restarts.to_string())
}

fn job_status(o: &Value) -> Value {
    let conditions = o["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| {
        conditions
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    json!(if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else {
        "Running"
    })
}

fn job_duration(o: &Value) -> Value {
    let start = o["status"]["startTime"].as_str().and_then(parse_time);
    let end = o["status"]["completionTime"]
        .as_str()
        .and_then(parse_time)
        .unwrap_or_else(chrono::Utc::now);
    json!(start.map_or(String::new(), |s| human_duration((end - s).num_seconds())))
}

fn service_external_ip(o: &Value) -> Value {
    let mut ips: Vec<String> = o["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i["ip"]
                .as_str()
                .or_else(|| i["hostname"].as_str())
                .map(str::to_owned)
        })
        .collect();
    ips.extend(
        o["spec"]["externalIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_str().map(str::to_owned)),
    );
    json!(match o["spec"]["type"].as_str() {
        Some("ExternalName") => o["spec"]["externalName"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned(),
        Some("LoadBalancer") if ips.is_empty() => "<pending>".to_owned(),
        _ if ips.is_empty() => "<none>".to_owned(),
        _ => ips.join(","),
    })
}

fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = o["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let mut s = p["port"].as_i64().unwrap_or(0).to_string();
            if let Some(node_port) = p["nodePort"].as_i64() {
                let _ = write!(s, ":{node_port}");
            }
            let _ = write!(s, "/{}", p["protocol"].as_str().unwrap_or("TCP"));
            s
        })
        .collect();
    json!(if ports.is_empty() {
        "<none>".to_owned()
    } else {
        ports.join(",")
    })
}

fn endpoints(o: &Value) -> Value {
    let mut list = Vec::new();
    for subset in o["subsets"].as_array().into_iter().flatten() {
        for address in subset["addresses"].as_array().into_iter().flatten() {
            let ip = address["ip"].as_str().unwrap_or_default();
            let ports = subset["ports"].as_array().cloned().unwrap_or_default();
            if ports.is_empty() {
                list.push(ip.to_owned());
            }
            for port in ports {
                list.push(format!("{ip}:{}", port["port"].as_i64().unwrap_or(0)));
            }
        }
    }
    json!(match list.len() {
        0 => "<none>".to_owned(),
        1..=3 => list.join(","),
        n => format!("{} + {} more...", list[..3].join(","), n - 3),
    })
}

fn node_status(o: &Value) -> Value {
    let ready = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready");
    let mut status = match ready {
        Some(c) if c["status"] == "True" => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if o["spec"]["unschedulable"].as_bool() == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_address(o: &Value, kind: &str) -> String {
    o["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == kind)
        .and_then(|a| a["address"].as_str())
        .unwrap_or("<none>")
        .to_owned()
}

/// When an Event was first seen: `firstTimestamp`, else `eventTime` (events.k8s.io's).
fn event_first_seen(o: &Value) -> String {
    if o["firstTimestamp"].is_string() {
        age(&o["firstTimestamp"])
    } else {
        age(&o["eventTime"])
    }
}

/// When an Event was last seen: its series' last observation, else `lastTimestamp`, else when
/// first seen. Only the age: the count has its own (wide) column, as kube-apiserver prints it;
/// the `(x3 over 5m)` form is kubectl's own, in `describe` and `kubectl events`.
fn event_last_seen(o: &Value) -> String {
    if o["series"].is_object() {
        age(&o["series"]["lastObservedTime"])
    } else if o["lastTimestamp"].is_string() {
        age(&o["lastTimestamp"])
    } else {
        event_first_seen(o)
    }
}

/// How often an Event happened: its series' count, else `count`, else once.
fn event_count(o: &Value) -> i64 {
    if o["series"].is_object() {
        return int(&o["series"]["count"]);
    }
    match int(&o["count"]) {
        0 => 1,
        n => n,
    }
}

/// `pod/web-1`, or only the kind when the Event names no object.
fn event_object(o: &Value) -> Value {
    let kind = o["involvedObject"]["kind"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    match o["involvedObject"]["name"].as_str().unwrap_or("") {
        "" => json!(kind),
        name => json!(format!("{kind}/{name}")),
    }
}

/// `kubelet, node-1`: the component and host, falling back to the reporting controller and
/// instance (kube-apiserver's formatEventSource).
fn event_source(o: &Value) -> Value {
    let first_non_empty = |a: &Value, b: &Value| {
        [a, b]
            .into_iter()
            .filter_map(Value::as_str)
            .find(|s| !s.is_empty())
            .unwrap_or("")
            .to_owned()
    };
    let component = first_non_empty(&o["source"]["component"], &o["reportingComponent"]);
    let instance = first_non_empty(&o["source"]["host"], &o["reportingInstance"]);
    if instance.is_empty() {
        json!(component)
    } else {
        json!(format!("{component}, {instance}"))
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A binding's subjects of `kind`, joined as kubectl shows them (`namespace:name` for service
/// accounts).
fn subjects(binding: &Value, kind: &str) -> String {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind)
        .map(|s| {
            let name = s["name"].as_str().unwrap_or_default();
            match s["namespace"].as_str() {
                Some(ns) if kind == "ServiceAccount" => format!("{ns}:{name}"),
                _ => name.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table of custom objects: `Name`, then the version's `additionalPrinterColumns` (or
/// `Age` when it has none), as apiextensions-apiserver's table convertor renders them.
pub fn custom_table(
    columns: &[apiary_api::apiextensions_v1::PrinterColumn],
    objects: &[Value],
    list_metadata: Value,
) -> Value {
    use apiary_api::apiextensions_v1::PrinterColumn;
    let age_column = [PrinterColumn {
        name: "Age".into(),
        type_: "date".into(),
        json_path: ".metadata.creationTimestamp".into(),
        ..PrinterColumn::default()
    }];
    let columns = if columns.is_empty() {
        &age_column[..]
    } else {
        columns
    };
    let mut definitions = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    definitions.extend(columns.iter().map(|c| {
        json!({
            "name": c.name, "type": c.type_, "format": c.format,
            "description": c.description, "priority": c.priority,
        })
    }));
    let cells = |o: &Value| {
        let mut cells = vec![o["metadata"]["name"].clone()];
        cells.extend(columns.iter().map(|c| {
            match super::custom_resources::json_path(o, &c.json_path) {
                None | Some(Value::Null) => Value::Null,
                Some(v) if c.type_ == "date" => json!(age(v)),
                Some(v) if matches!(v, Value::Array(_) | Value::Object(_)) => {
                    json!(v.to_string())
                }
                Some(v) => v.clone(),
            }
        }));
        cells
    };
    table_of(definitions, objects, cells, list_metadata)
}

fn age(timestamp: &Value) -> String {
    match timestamp.as_str().and_then(parse_time) {
        Some(t) => human_duration((chrono::Utc::now() - t).num_seconds()),
        None => "<unknown>".to_owned(),
    }
}

/// Kubernetes' `duration.HumanDuration`: `45s`, `3m20s`, `2h5m`, `3d4h`, `2y10d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(2 * 3600 + 5 * 60), "125m");
        assert_eq!(human_duration(5 * 3600 + 5 * 60), "5h5m");
        assert_eq!(human_duration(76 * 3600), "3d4h");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn pod_rows_have_the_kubectl_columns() {
        let pods = [json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2},
                {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        })];
        let pods_type = &apiary_api::resource::PODS;
        let t = table(pods_type, &pods, json!({}));
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(&names[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.0.0.5");
    }

    #[test]
    fn security_identity_rows_show_namespace_and_labels() {
        let ids = [json!({
            "metadata": {"name": "256", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "labels": {"apiary:namespace": "shop", "k8s:app": "web", "k8s:tier": "front",
                "k8s-ns:team": "a"}
        })];
        let t = table(&apiary_api::resource::SECURITY_IDENTITIES, &ids, json!({}));
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["Name", "Namespace", "Labels", "Age", "Namespace Labels"]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "256");
        assert_eq!(cells[1], "shop");
        assert_eq!(cells[2], "app=web,tier=front");
        assert_eq!(cells[4], "team=a");
    }

    #[test]
    fn service_ports_and_external_ips() {
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        assert_eq!(service_ports(&svc), "80:30080/TCP,53/UDP");
        assert_eq!(service_external_ip(&svc), "<none>");
    }

    fn ago(minutes: i64, seconds: i64) -> String {
        (chrono::Utc::now() - chrono::Duration::seconds(minutes * 60 + seconds))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn event_rows_are_kube_apiservers() {
        let events = [
            json!({
                "metadata": {"name": "web-1.17a2b3c4d5e6f708", "creationTimestamp": ago(40, 0)},
                "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{web}"},
                "reason": "BackOff", "message": " Back-off restarting failed container\n", "type": "Warning",
                "source": {"component": "kubelet", "host": "node-1"},
                "firstTimestamp": ago(30, 5), "lastTimestamp": ago(12, 0), "count": 7,
            }),
            // events.k8s.io-style: a series, no first/last timestamps or count.
            json!({
                "metadata": {"name": "e2"},
                "involvedObject": {"kind": "Node"},
                "reason": "Ready", "type": "Normal",
                "reportingComponent": "node-controller", "reportingInstance": "cp-1",
                "eventTime": ago(50, 0),
                "series": {"count": 3, "lastObservedTime": ago(20, 0)},
            }),
            json!({
                "metadata": {"name": "e3"},
                "involvedObject": {"kind": "Pod", "name": "p"},
                "reason": "Scheduled", "type": "Normal", "source": {"component": "default-scheduler"},
                "firstTimestamp": ago(15, 0),
            }),
        ];
        let t = table(&apiary_api::resource::EVENTS, &events, json!({}));
        let columns: Vec<(&str, i64)> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Last Seen", 0),
                ("Type", 0),
                ("Reason", 0),
                ("Object", 0),
                ("Subobject", 1),
                ("Source", 1),
                ("Message", 0),
                ("First Seen", 1),
                ("Count", 1),
                ("Name", 1),
            ]
        );
        let cells = |i: usize| t["rows"][i]["cells"].clone();
        assert_eq!(
            cells(0),
            json!([
                "12m",
                "Warning",
                "BackOff",
                "pod/web-1",
                "spec.containers{web}",
                "kubelet, node-1",
                "Back-off restarting failed container",
                "30m",
                7,
                "web-1.17a2b3c4d5e6f708"
            ])
        );
        assert_eq!(
            cells(1),
            json!([
                "20m",
                "Normal",
                "Ready",
                "node",
                "",
                "node-controller, cp-1",
                "",
                "50m",
                3,
                "e2"
            ])
        );
        // No lastTimestamp: last seen is first seen; no count: once.
        assert_eq!(
            cells(2),
            json!([
                "15m",
                "Normal",
                "Scheduled",
                "pod/p",
                "",
                "default-scheduler",
                "",
                "15m",
                1,
                "e3"
            ])
        );
    }
}
