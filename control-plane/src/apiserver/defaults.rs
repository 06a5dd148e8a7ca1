//! Defaulting, as the Kubernetes API server does it on create and update, so that stored objects
//! are complete: what `kubectl describe` shows and controllers read is never missing.

use serde_json::{Value, json};

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Sets `object[key]` to `value` when it is absent or null.
fn default(object: &mut Value, key: &str, value: Value) {
    if object.get(key).is_none_or(Value::is_null) {
        object[key] = value;
    }
}

/// The status a new object of `kind` starts with: what kube-apiserver serializes for the
/// kind's zero status (Go's JSON encoding never omits a struct, nor a number without
/// `omitempty`), so clients that read `.status` (the official Python client's
/// `status.available_replicas`) find an object. `None`: the kind has no status.
pub fn initial_status(kind: &str) -> Option<Value> {
    Some(match kind {
        "Namespace" => json!({ "phase": "Active" }),
        "Pod" => json!({ "phase": "Pending" }),
        "Service" => json!({ "loadBalancer": {} }),
        "Node" => json!({
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 0 } },
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "",
                "kubeProxyVersion": "", "operatingSystem": "", "architecture": "",
            },
        }),
        "ReplicaSet" => json!({ "replicas": 0 }),
        "HorizontalPodAutoscaler" => json!({ "desiredReplicas": 0 }),
        "StatefulSet" => json!({ "replicas": 0, "availableReplicas": 0 }),
        "DaemonSet" => json!({
            "currentNumberScheduled": 0,
            "numberMisscheduled": 0,
            "desiredNumberScheduled": 0,
            "numberReady": 0,
        }),
        "Deployment" | "Job" | "CronJob" => json!({}),
        // The PV controller makes a new volume Available, or binds it.
        "PersistentVolume" => json!({ "phase": "Pending", "lastPhaseTransitionTime": now() }),
        "PersistentVolumeClaim" => json!({ "phase": "Pending" }),
        _ => return None,
    })
}

/// Fills the defaults of an object of `kind`.
pub fn apply(kind: &str, object: &mut Value) {
    match kind {
        "MutatingWebhookConfiguration" => {
            apiary_api::admissionregistration_v1::default_configuration(object, true);
        }
        "ValidatingWebhookConfiguration" => {
            apiary_api::admissionregistration_v1::default_configuration(object, false);
        }
        "ValidatingAdmissionPolicy" => apiary_api::admissionregistration_v1::default_policy(object),
        "ValidatingAdmissionPolicyBinding" => {
            apiary_api::admissionregistration_v1::default_binding(object);
        }
        "Pod" => pod_spec(&mut object["spec"], "Always"),
        "HorizontalPodAutoscaler" => apiary_api::autoscaling_v2::default(object),
        "Deployment" => {
            let spec = &mut object["spec"];
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(spec, "strategy", json!({ "type": "RollingUpdate" }));
            if spec["strategy"]["type"] == "RollingUpdate" {
                default(&mut spec["strategy"], "rollingUpdate", json!({}));
                default(
                    &mut spec["strategy"]["rollingUpdate"],
                    "maxSurge",
                    json!("25%"),
                );
                default(
                    &mut spec["strategy"]["rollingUpdate"],
                    "maxUnavailable",
                    json!("25%"),
                );
            }
            template(spec, "Always");
        }
        "ReplicaSet" => {
            default(&mut object["spec"], "replicas", json!(1));
            template(&mut object["spec"], "Always");
        }
        "StatefulSet" => {
            let spec = &mut object["spec"];
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(
                spec,
                "updateStrategy",
                json!({ "type": "RollingUpdate", "rollingUpdate": { "partition": 0 } }),
            );
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({ "whenDeleted": "Retain", "whenScaled": "Retain" }),
            );
            if let Some(templates) = spec["volumeClaimTemplates"].as_array_mut() {
                for claim in templates {
                    // SetDefaults_PersistentVolumeClaim, as for a claim (status included).
                    default(&mut claim["spec"], "volumeMode", json!("Filesystem"));
                    default(claim, "status", json!({ "phase": "Pending" }));
                }
            }
            template(spec, "Always");
        }
        "DaemonSet" => {
            let spec = &mut object["spec"];
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "updateStrategy",
                json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1, "maxSurge": 0 } }),
            );
            template(spec, "Always");
        }
        "Job" => {
            job_selector(object);
            job_spec(&mut object["spec"]);
        }
        "CronJob" => {
            let spec = &mut object["spec"];
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            job_spec(&mut spec["jobTemplate"]["spec"]);
        }
        "Service" => service(object),
        "Secret" => default(object, "type", json!("Opaque")),
        "Namespace" => {
            default(&mut object["spec"], "finalizers", json!(["kubernetes"]));
            name_label(object);
        }
        "NetworkPolicy" => network_policy(&mut object["spec"]),
        "PersistentVolume" => {
            let spec = &mut object["spec"];
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
        }
        "PersistentVolumeClaim" => default(&mut object["spec"], "volumeMode", json!("Filesystem")),
        "StorageClass" => {
            default(object, "reclaimPolicy", json!("Delete"));
            default(object, "volumeBindingMode", json!("Immediate"));
        }
        "CSIDriver" => {
            let spec = &mut object["spec"];
            default(spec, "attachRequired", json!(true));
            default(spec, "podInfoOnMount", json!(false));
            default(spec, "storageCapacity", json!(false));
            default(spec, "fsGroupPolicy", json!("ReadWriteOnceWithFSType"));
            default(spec, "requiresRepublish", json!(false));
            default(spec, "seLinuxMount", json!(false));
            default(spec, "volumeLifecycleModes", json!(["Persistent"]));
        }
        _ => {}
    }
}

/// Every namespace carries its name as the label `kubernetes.io/metadata.name` (Kubernetes
/// 1.21+), always its own name whatever the client sent, so that a NetworkPolicy's
/// `namespaceSelector` can name a namespace.
fn name_label(namespace: &mut Value) {
    let Some(name) = namespace["metadata"]["name"].as_str().map(str::to_owned) else {
        return;
    };
    let metadata = &mut namespace["metadata"];
    if !metadata["labels"].is_object() {
        metadata["labels"] = json!({});
    }
    metadata["labels"]["kubernetes.io/metadata.name"] = Value::String(name);
}

fn template(spec: &mut Value, restart_policy: &str) {
    if spec["template"].is_object() {
        pod_spec(&mut spec["template"]["spec"], restart_policy);
    }
}

/// Kubernetes selects a Job's pods by its UID: unless the user chose `manualSelector`, the
/// selector and the template's labels are generated at creation.
fn job_selector(job: &mut Value) {
    let manual = job["spec"]["manualSelector"].as_bool() == Some(true);
    let uid = job["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if manual || uid.is_empty() || !job["spec"]["selector"].is_null() {
        return;
    }
    job["spec"]["selector"] =
        json!({ "matchLabels": { "batch.kubernetes.io/controller-uid": uid } });
    let labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[key] = json!(value);
    }
}

fn job_spec(spec: &mut Value) {
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    if spec["parallelism"].is_null() {
        spec["parallelism"] = json!(1);
    }
    if spec["completions"].is_null() && spec["completionMode"] == "Indexed" {
        spec["completions"] = spec["parallelism"].clone();
    }
    template(spec, "Never");
}

fn pod_spec(spec: &mut Value, restart_policy: &str) {
    if !spec.is_object() {
        return;
    }
    default(spec, "restartPolicy", json!(restart_policy));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            container_defaults(container);
        }
    }
    for volume in spec["volumes"].as_array_mut().into_iter().flatten() {
        volume_defaults(volume);
    }
}

/// File modes 0644 (420) for the volumes made of files, tokens of an hour, and `v1` field
/// references, as kube-apiserver's `SetDefaults_*VolumeSource`.
fn volume_defaults(volume: &mut Value) {
    const MODE: i64 = 0o644;
    for kind in ["configMap", "secret", "downwardAPI", "projected"] {
        if volume[kind].is_object() {
            default(&mut volume[kind], "defaultMode", json!(MODE));
        }
    }
    let field_refs = |items: &mut Value| {
        for item in items.as_array_mut().into_iter().flatten() {
            if item["fieldRef"].is_object() {
                default(&mut item["fieldRef"], "apiVersion", json!("v1"));
            }
        }
    };
    if volume["downwardAPI"].is_object() {
        field_refs(&mut volume["downwardAPI"]["items"]);
    }
    if volume["projected"].is_object() {
        for source in volume["projected"]["sources"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if source["serviceAccountToken"].is_object() {
                default(
                    &mut source["serviceAccountToken"],
                    "expirationSeconds",
                    json!(3600),
                );
            }
            if source["downwardAPI"].is_object() {
                field_refs(&mut source["downwardAPI"]["items"]);
            }
        }
    }
}

fn container_defaults(container: &mut Value) {
    let image = container["image"].as_str().unwrap_or_default();
    // No tag (or `latest`) means "always pull", as in Kubernetes.
    let after_slash = image.rsplit('/').next().unwrap_or(image);
    let latest = !after_slash.contains(':') || after_slash.ends_with(":latest");
    let pull = if latest && !image.contains('@') {
        "Always"
    } else {
        "IfNotPresent"
    };
    default(container, "imagePullPolicy", json!(pull));
    default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    default(container, "terminationMessagePolicy", json!("File"));
    default(container, "resources", json!({}));
    for port in container["ports"].as_array_mut().into_iter().flatten() {
        default(port, "protocol", json!("TCP"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let probe = &mut container[probe];
        if probe.is_object() {
            default(probe, "timeoutSeconds", json!(1));
            default(probe, "periodSeconds", json!(10));
            default(probe, "successThreshold", json!(1));
            default(probe, "failureThreshold", json!(3));
            if probe["httpGet"].is_object() {
                default(&mut probe["httpGet"], "path", json!("/"));
                default(&mut probe["httpGet"], "scheme", json!("HTTP"));
            }
        }
    }
}

fn service(object: &mut Value) {
    let spec = &mut object["spec"];
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    if spec["type"] != "ExternalName" {
        default(spec, "ipFamilies", json!(["IPv4"]));
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer")) {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if spec["sessionAffinity"] == "ClientIP" {
        default(&mut spec["sessionAffinityConfig"], "clientIP", json!({}));
        default(
            &mut spec["sessionAffinityConfig"]["clientIP"],
            "timeoutSeconds",
            json!(10800),
        );
    }
    for port in spec["ports"].as_array_mut().into_iter().flatten() {
        default(port, "protocol", json!("TCP"));
        if port["targetPort"].is_null() {
            port["targetPort"] = port["port"].clone();
        }
    }
}

fn network_policy(spec: &mut Value) {
    if spec["policyTypes"].is_null() {
        let mut types = vec![json!("Ingress")];
        if spec["egress"].is_array() {
            types.push(json!("Egress"));
        }
        spec["policyTypes"] = Value::Array(types);
    }
    for direction in ["ingress", "egress"] {
        for rule in spec[direction].as_array_mut().into_iter().flatten() {
            for port in rule["ports"].as_array_mut().into_iter().flatten() {
                default(port, "protocol", json!("TCP"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_get_the_kubernetes_defaults() {
        let mut d = json!({"spec": {"selector": {}, "template": {"spec": {"containers": [
            {"name": "web", "image": "busybox", "ports": [{"containerPort": 80}]},
            {"name": "pinned", "image": "registry.local:5000/busybox:1.35"}
        ]}}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn explicit_values_are_kept() {
        let mut s = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": "http", "protocol": "UDP"}]}});
        apply("Service", &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
    }

    #[test]
    fn namespaces_carry_their_name_as_a_label() {
        let mut ns = json!({"metadata": {"name": "x", "labels": {"team": "a", "kubernetes.io/metadata.name": "forged"}}});
        apply("Namespace", &mut ns);
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
        assert_eq!(ns["metadata"]["labels"]["team"], "a");
        let mut bare = json!({"metadata": {"name": "y"}});
        apply("Namespace", &mut bare);
        assert_eq!(
            bare["metadata"]["labels"],
            json!({"kubernetes.io/metadata.name": "y"})
        );
    }

    #[test]
    fn network_policies_default_their_policy_types() {
        let mut p = json!({"spec": {"podSelector": {}, "egress": [{}]}});
        apply("NetworkPolicy", &mut p);
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    }
}
