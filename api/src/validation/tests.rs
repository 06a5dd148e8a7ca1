//! Validation tests: messages and paths as Kubernetes prints them.

use serde_json::json;

use super::*;
use crate::{
    apps_v1::{DaemonSet, Deployment, StatefulSet},
    batch_v1::{CronJob, Job},
    core_v1::{ConfigMap, Namespace, Node, Pod, Secret, Service},
    discovery_v1::EndpointSlice,
    networking_v1::NetworkPolicy,
    status::Status,
};

/// The errors as Kubernetes prints them, one per line.
fn messages(errs: &[FieldError]) -> Vec<String> {
    errs.iter().map(ToString::to_string).collect()
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}))
        .unwrap()
}

fn deployment(spec: serde_json::Value) -> Deployment {
    serde_json::from_value(
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
    )
    .unwrap()
}

fn web_template() -> serde_json::Value {
    json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
}

#[test]
fn labels_accept_kubernetes_examples_and_reject_the_rest() {
    for ok in ["my-name", "123-abc", "a", &"a".repeat(63)] {
        dns1123_label("metadata.name", ok).unwrap();
    }
    for bad in ["My-Name", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
        assert!(dns1123_label("metadata.name", bad).is_err(), "{bad}");
    }
    assert_eq!(is_dns1123_label("a.b"), ["must not contain dots"]);
}

#[test]
fn subdomains_allow_dots_but_not_empty_labels() {
    dns1123_subdomain("metadata.name", "web.example.com").unwrap();
    assert!(dns1123_subdomain("metadata.name", "web..com").is_err());
    assert!(dns1123_subdomain("metadata.name", ".web").is_err());
}

#[test]
fn errors_name_the_field_path() {
    let err = dns1123_subdomain("metadata.name", "Web").unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata.name: Invalid value: \"Web\": a lowercase RFC 1123 subdomain must consist of \
         lower case alphanumeric characters, '-' or '.', and must start and end with an \
         alphanumeric character (e.g. 'example.com', regex used for validation is \
         '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    assert_eq!(
        dns1123_label("spec.containers[0].name", "")
            .unwrap_err()
            .to_string(),
        "spec.containers[0].name: Required value"
    );
    assert_eq!(
        is_dns1123_label("Web")[0],
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', \
         regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    );
}

#[test]
fn error_kinds_print_like_field_errors() {
    assert_eq!(
        FieldError::not_supported(
            "spec.restartPolicy",
            "Sometimes",
            &["Always", "OnFailure", "Never"]
        )
        .to_string(),
        "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \
         \"OnFailure\", \"Never\""
    );
    assert_eq!(
        FieldError::duplicate("spec.containers[1].name", "web").to_string(),
        "spec.containers[1].name: Duplicate value: \"web\""
    );
    assert_eq!(
        FieldError::forbidden("spec", "nope").to_string(),
        "spec: Forbidden: nope"
    );
    assert_eq!(
        FieldError::too_long("metadata.annotations", 262144).to_string(),
        "metadata.annotations: Too long: may not be more than 262144 bytes"
    );
    assert_eq!(
        FieldError::too_many("endpoints", 1001, 1000).to_string(),
        "endpoints: Too many: 1001: must have at most 1000 items"
    );
    assert_eq!(
        FieldError::invalid("spec.replicas", -1, "must be greater than or equal to 0").to_string(),
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    );
    assert_eq!(
        FieldError::required("x").kind.cause_reason(),
        "FieldValueRequired"
    );
}

#[test]
fn metadata_names_labels_and_annotations() {
    let meta: ObjectMeta = serde_json::from_value(json!({
        "namespace": "default",
        "labels": {"app": "web", "example.com/tier": "fe", "bad key": "x", "ok": "-bad-",
            "a/b/c": "v", "/x": "v", "long": "v".repeat(64)},
    }))
    .unwrap();
    let got = messages(&validate_object_meta(&meta, true, NameRule::Subdomain));
    assert_eq!(
        got[0],
        "metadata.name: Required value: name or generateName is required"
    );
    let find = |needle: &str| got.iter().any(|m| m.contains(needle));
    assert!(
        find(
            "metadata.labels: Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        ),
        "{got:#?}"
    );
    assert!(find(
        "metadata.labels: Invalid value: \"-bad-\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
    ));
    assert!(find(
        "metadata.labels: Invalid value: \"a/b/c\": a qualified name must consist of"
    ));
    assert!(find(
        "metadata.labels: Invalid value: \"/x\": prefix part must be non-empty"
    ));
    assert!(find("must be no more than 63 characters"));
    assert_eq!(got.len(), 6, "{got:#?}");

    // The API server generates the name from `generateName` before validating.
    let mut meta = ObjectMeta {
        generate_name: "web-".into(),
        name: "web-x7k2q".into(),
        ..Default::default()
    };
    assert_eq!(
        messages(&validate_object_meta(&meta, false, NameRule::Subdomain)),
        Vec::<String>::new()
    );
    meta.namespace = "default".into();
    assert_eq!(
        messages(&validate_object_meta(&meta, false, NameRule::Subdomain)),
        ["metadata.namespace: Forbidden: not allowed on this type"]
    );
    meta.annotations
        .insert("big".into(), "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT));
    assert_eq!(
        messages(&validate_object_meta(&meta, true, NameRule::Subdomain)),
        ["metadata.annotations: Too long: may not be more than 262144 bytes"]
    );
}

#[test]
fn namespaces_and_services_use_label_names() {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "a.b"}})).unwrap();
    assert_eq!(
        messages(&validate_namespace(&ns)),
        ["metadata.name: Invalid value: \"a.b\": must not contain dots"]
    );
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "1web", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_service(&svc)),
        [
            "metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case \
          alphanumeric characters or '-', start with an alphabetic character, and end with an \
          alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is \
          '[a-z]([-a-z0-9]*[a-z0-9])?')"
        ]
    );
}

#[test]
fn pods_need_containers_with_names_and_images() {
    assert_eq!(
        messages(&validate_pod(&pod(json!({})))),
        ["spec.containers: Required value"]
    );
    let p = pod(json!({"restartPolicy": "Sometimes", "containers": [
        {"name": "web"},
        {"name": "web", "image": "nginx", "imagePullPolicy": "Sometimes",
         "ports": [{"containerPort": 70000, "protocol": "ICMP"}, {"containerPort": 0, "name": "HTTP"}]},
        {"name": "Side_car", "image": "busybox"}
    ]}));
    assert_eq!(
        messages(&validate_pod(&p)),
        [
            "spec.containers[0].image: Required value",
            "spec.containers[1].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\"",
            "spec.containers[1].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[1].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.containers[1].ports[1].name: Invalid value: \"HTTP\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            "spec.containers[1].ports[1].name: Invalid value: \"HTTP\": must contain at least one letter (a-z)",
            "spec.containers[1].ports[1].containerPort: Required value",
            "spec.containers[1].name: Duplicate value: \"web\"",
            "spec.containers[2].name: Invalid value: \"Side_car\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        ]
    );
}

#[test]
fn pod_volumes_env_probes_and_resources() {
    let p = pod(json!({
        "volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}, "hostPath": {"path": "/x"}}, {"name": "b"}],
        "containers": [{
            "name": "c", "image": "i",
            "volumeMounts": [{"name": "missing", "mountPath": "/m"}, {"name": "a", "mountPath": ""}],
            "env": [
                {"name": "", "value": "x"},
                {"name": "A", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "B", "valueFrom": {}},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": ""}}},
                {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers"}}}
            ],
            "livenessProbe": {"periodSeconds": -1},
            "readinessProbe": {"httpGet": {"port": 0}, "exec": {"command": ["x"]}},
            "startupProbe": {"tcpSocket": {"port": "http"}, "successThreshold": 2},
            "lifecycle": {"preStop": {}},
            "resources": {"requests": {"cpu": "2", "memory": "lots"}, "limits": {"cpu": "1"}}
        }]
    }));
    let got = messages(&validate_pod(&p));
    let expected = [
        "spec.volumes[1].name: Duplicate value: \"a\"",
        "spec.volumes[1].hostPath: Forbidden: may not specify more than 1 volume type",
        "spec.volumes[2]: Required value: must specify a volume type",
        "spec.containers[0].env[0].name: Required value",
        "spec.containers[0].env[1].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty",
        "spec.containers[0].env[2].valueFrom: Invalid value: \"\": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        "spec.containers[0].env[3].valueFrom.secretKeyRef.key: Required value",
        "spec.containers[0].env[4].valueFrom.fieldRef.fieldPath: Unsupported value: \"spec.containers\": supported values: \"metadata.name\", \"metadata.namespace\", \"metadata.uid\", \"spec.nodeName\", \"spec.serviceAccountName\", \"status.hostIP\", \"status.hostIPs\", \"status.podIP\", \"status.podIPs\"",
        "spec.containers[0].volumeMounts[0].name: Not found: \"missing\"",
        "spec.containers[0].volumeMounts[1].mountPath: Required value",
        "spec.containers[0].livenessProbe: Required value: must specify a handler type",
        "spec.containers[0].livenessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0",
        "spec.containers[0].readinessProbe.httpGet: Forbidden: may not specify more than 1 handler type",
        "spec.containers[0].readinessProbe.httpGet.port: Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.containers[0].startupProbe.successThreshold: Invalid value: 2: must be 1",
        "spec.containers[0].lifecycle.preStop: Required value: must specify a handler type",
        "spec.containers[0].resources.requests[memory]: Invalid value: \"lots\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        "spec.containers[0].resources.requests[cpu]: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
    ];
    assert_eq!(got, expected);
}

#[test]
fn projected_volumes_are_validated_as_kubernetes_does() {
    let p = pod(json!({
        "volumes": [{"name": "v", "projected": {"defaultMode": 1000, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 599}},
            {"serviceAccountToken": {"path": "", "expirationSeconds": 5_000_000_000_i64}},
            {"configMap": {"name": "", "items": [{"key": "", "path": "../up", "mode": -1}]}},
            {"secret": {"name": "s", "items": [{"key": "k", "path": "a"}, {"key": "k2", "path": "a"}]}},
            {"downwardAPI": {"items": [{"path": "..data", "fieldRef": {"fieldPath": "spec.nodeName"}}, {"path": "/abs"}]}},
            {"configMap": {"name": "c"}, "secret": {"name": "s"}},
        ]}}],
        "containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]
    }));
    let got = messages(&validate_pod(&p));
    let v = "spec.volumes[0].projected";
    let expected = [
        format!(
            "{v}.defaultMode: Invalid value: 1000: must be a number between 0 and 0777 (octal), both inclusive"
        ),
        format!(
            "{v}.sources[0].serviceAccountToken.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"
        ),
        format!(
            "{v}.sources[1].serviceAccountToken.expirationSeconds: Invalid value: 5000000000: may not specify a duration larger than 2^32 seconds"
        ),
        format!("{v}.path: Required value"),
        format!("{v}.sources[2].configMap.name: Required value"),
        format!("{v}.sources[2].configMap.items[0].key: Required value"),
        format!(
            "{v}.sources[2].configMap.items[0].path: Invalid value: \"../up\": must not contain '..'"
        ),
        format!(
            "{v}.sources[2].configMap.items[0].mode: Invalid value: -1: must be a number between 0 and 0777 (octal), both inclusive"
        ),
        format!("{v}: Invalid value: \"s\": conflicting duplicate paths"),
        format!(
            "{v}.sources[4].downwardAPI.path: Invalid value: \"..data\": must not start with '..'"
        ),
        format!(
            "{v}.sources[4].downwardAPI.fieldRef.fieldPath: Unsupported value: \"spec.nodeName\": supported values: \"metadata.annotations\", \"metadata.labels\", \"metadata.name\", \"metadata.namespace\", \"metadata.uid\""
        ),
        format!(
            "{v}.sources[4].downwardAPI.path: Invalid value: \"/abs\": must be a relative path"
        ),
        format!(
            "{v}.sources[4].downwardAPI: Required value: one of fieldRef and resourceFieldRef is required"
        ),
        format!("{v}.sources[5]: Forbidden: may not specify more than 1 volume type"),
    ];
    assert_eq!(got, expected);
    // The kube-api-access volume every pod gets is valid.
    let p = pod(json!({
        "volumes": [{"name": "kube-api-access-x1y2z", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}],
        "containers": [{"name": "c", "image": "i"}]
    }));
    assert_eq!(messages(&validate_pod(&p)), Vec::<String>::new());
}

#[test]
fn pod_scheduling_fields() {
    let p = pod(json!({
        "containers": [{"name": "c", "image": "i"}],
        "hostNetwork": true,
        "nodeSelector": {"disk": "ssd!"},
        "tolerations": [
            {"operator": "Equal", "value": "x"},
            {"key": "k", "operator": "Exists", "value": "v"},
            {"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5},
            {"key": "k", "operator": "Maybe", "effect": "Sometimes"}
        ],
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In"}, {"key": "n", "operator": "Gt", "values": ["x"]}]}
            ]}},
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["a"]}]}}
            ], "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 0, "podAffinityTerm": {"topologyKey": "zone"}}
            ]}
        }
    }));
    let got = messages(&validate_pod(&p));
    let expected = [
        "spec.nodeSelector: Invalid value: \"ssd!\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        "spec.tolerations[0].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        "spec.tolerations[1].operator: Invalid value: \"v\": value must be empty when `operator` is 'Exists'",
        "spec.tolerations[2].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set",
        "spec.tolerations[3].operator: Unsupported value: \"Maybe\": supported values: \"Equal\", \"Exists\"",
        "spec.tolerations[3].effect: Unsupported value: \"Sometimes\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[1].values: Required value: must be specified single value when `operator` is 'Lt' or 'Gt'",
        "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Required value: can not be empty",
        "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].operator: Invalid value: \"Equals\": not a valid selector operator",
        "spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 0: must be in the range 1-100",
    ];
    assert_eq!(got, expected);

    let hostnet = pod(json!({"hostNetwork": true, "containers": [
        {"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}));
    assert_eq!(
        messages(&validate_pod(&hostnet)),
        [
            "spec.containers[0].ports[0].hostPort: Invalid value: 8080: must match `containerPort` when `hostNetwork` is true"
        ]
    );
}

#[test]
fn pod_updates_may_only_change_images_and_a_few_fields() {
    let old = pod(json!({"containers": [{"name": "c", "image": "nginx:1"}],
        "tolerations": [{"key": "a", "operator": "Exists"}]}));
    let mut new = old.clone();
    new.spec.containers[0].image = "nginx:2".into();
    new.spec.tolerations.push(crate::core_v1::Toleration {
        key: "b".into(),
        operator: "Exists".into(),
        ..Default::default()
    });
    new.spec.active_deadline_seconds = Some(60);
    assert_eq!(
        messages(&validate_update_pod(&old, &new)),
        Vec::<String>::new()
    );
    new.spec.node_name = "n1".into();
    new.spec.containers[0].args = vec!["x".into()];
    let got = messages(&validate_update_pod(&old, &new));
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with(
        "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
    ));
}

#[test]
fn deployment_selector_rules() {
    let no_selector = deployment(json!({"template": web_template()}));
    let errs = validate_deployment(&no_selector);
    assert_eq!(
        messages(&errs),
        [
            "spec.selector: Required value",
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
        ]
    );
    assert_eq!(
        Status::invalid(&crate::resource::DEPLOYMENTS, "web", &errs[..1]).message,
        "Deployment.apps \"web\" is invalid: spec.selector: Required value"
    );

    let mismatch = deployment(
        json!({"replicas": -1, "selector": {"matchLabels": {"app": "api"}},
        "template": web_template()}),
    );
    assert_eq!(
        messages(&validate_deployment(&mismatch)),
        [
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
        ]
    );

    let empty = deployment(json!({"selector": {}, "template": web_template()}));
    assert_eq!(
        messages(&validate_deployment(&empty)),
        [
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment"
        ]
    );
}

#[test]
fn deployment_strategy_and_template() {
    let mut template = web_template();
    template["spec"]["restartPolicy"] = json!("Never");
    let d = deployment(json!({
        "selector": {"matchLabels": {"app": "web"}},
        "template": template,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "200%", "maxSurge": "x"}},
        "minReadySeconds": 10,
        "progressDeadlineSeconds": 10
    }));
    assert_eq!(
        messages(&validate_deployment(&d)),
        [
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"200%\": must not be greater than 100%",
            "spec.strategy.rollingUpdate.maxSurge: Invalid value: \"x\": a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
            "spec.progressDeadlineSeconds: Invalid value: 10: must be greater than minReadySeconds",
        ]
    );
    let zero = deployment(json!({
        "selector": {"matchLabels": {"app": "web"}}, "template": web_template(),
        "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "0%"}}
    }));
    assert_eq!(
        messages(&validate_deployment(&zero)),
        [
            "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"
        ]
    );
    let recreate = deployment(json!({
        "selector": {"matchLabels": {"app": "web"}}, "template": web_template(),
        "strategy": {"type": "Recreate", "rollingUpdate": {}}
    }));
    assert_eq!(
        messages(&validate_deployment(&recreate)),
        [
            "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"
        ]
    );
}

#[test]
fn deployment_selector_is_immutable() {
    let old = deployment(
        json!({"selector": {"matchLabels": {"app": "web"}}, "template": web_template()}),
    );
    let mut new = old.clone();
    new.spec.replicas = Some(4);
    assert!(validate_update_deployment(&old, &new).is_empty());
    new.spec.selector = Some(crate::LabelSelector::from_labels([
        ("app", "web"),
        ("v", "2"),
    ]));
    new.spec
        .template
        .metadata
        .labels
        .insert("v".into(), "2".into());
    assert_eq!(
        messages(&validate_update_deployment(&old, &new)),
        [
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        ]
    );
}

#[test]
fn stateful_set_and_daemon_set_rules() {
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "web"}}, "template": web_template(),
            "podManagementPolicy": "Sometimes", "updateStrategy": {"type": "Whenever"}}
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_stateful_set(&sts)),
        [
            "spec.podManagementPolicy: Invalid value: \"Sometimes\": must be 'OrderedReady' or 'Parallel'",
            "spec.updateStrategy: Invalid value: \"Whenever\": must be 'RollingUpdate' or 'OnDelete'",
        ]
    );
    let mut old = sts.clone();
    old.spec.pod_management_policy = "Parallel".into();
    old.spec.update_strategy = None;
    let mut new = old.clone();
    new.spec.replicas = Some(5);
    new.spec.template.spec.containers[0].image = "nginx:2".into();
    assert!(validate_update_stateful_set(&old, &new).is_empty());
    new.spec.service_name = "other".into();
    assert_eq!(
        messages(&validate_update_stateful_set(&old, &new)),
        [
            "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
        ]
    );

    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": web_template(),
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}}}
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_daemon_set(&ds)),
        [
            "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"
        ]
    );
    let mut new = ds.clone();
    new.spec.update_strategy = None;
    new.spec.selector = Some(crate::LabelSelector::default());
    let got = messages(&validate_update_daemon_set(&ds, &new));
    assert!(
        got.iter()
            .any(|m| m.ends_with("empty selector is invalid for daemonset")),
        "{got:?}"
    );
    assert!(got.iter().any(
        |m| m.starts_with("spec.selector: Invalid value: v1.LabelSelector{")
            && m.ends_with("field is immutable")
    ));
}

#[test]
fn services() {
    let svc = |spec: serde_json::Value| -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    };
    assert_eq!(
        messages(&validate_service(&svc(json!({})))),
        ["spec.ports: Required value"]
    );
    assert!(
        validate_service(&svc(json!({"clusterIP": "None"}))).is_empty(),
        "headless"
    );
    assert_eq!(
        messages(&validate_service(&svc(json!({"type": "ExternalName"})))),
        ["spec.externalName: Required value"]
    );
    assert!(
        validate_service(&svc(
            json!({"type": "ExternalName", "externalName": "db.example.com."})
        ))
        .is_empty()
    );
    let bad = svc(json!({
        "type": "Balanced",
        "ports": [
            {"port": 0, "protocol": "ICMP", "targetPort": "HTTP"},
            {"name": "a", "port": 80, "nodePort": 80},
            {"name": "a", "port": 80}
        ],
        "clusterIP": "10.0.0.300",
        "sessionAffinity": "Sticky",
        "externalTrafficPolicy": "Local"
    }));
    assert_eq!(
        messages(&validate_service(&bad)),
        [
            "spec.type: Unsupported value: \"Balanced\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
            "spec.ports[0].name: Required value",
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.ports[0].targetPort: Invalid value: \"HTTP\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            "spec.ports[0].targetPort: Invalid value: \"HTTP\": must contain at least one letter (a-z)",
            "spec.ports[1].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767",
            "spec.ports[2].name: Duplicate value: \"a\"",
            "spec.ports[2]: Duplicate value: core.ServicePort{Port:80, Protocol:\"TCP\"}",
            "spec.clusterIP: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            "spec.sessionAffinity: Unsupported value: \"Sticky\": supported values: \"ClientIP\", \"None\"",
        ]
    );
    let cluster_ip_node_port = svc(json!({"ports": [{"port": 80, "nodePort": 30080}]}));
    assert_eq!(
        messages(&validate_service(&cluster_ip_node_port)),
        ["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"]
    );
    let affinity = svc(
        json!({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
    );
    assert_eq!(
        messages(&validate_service(&affinity)),
        [
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"
        ]
    );
}

#[test]
fn service_cluster_ip_is_immutable_once_set() {
    let svc = |ip: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": [{"port": 80}], "clusterIP": ip}}))
        .unwrap()
    };
    assert!(
        validate_update_service(&svc("10.96.0.10"), &svc("")).is_empty(),
        "empty keeps"
    );
    assert!(
        validate_update_service(&svc(""), &svc("10.96.0.10")).is_empty(),
        "allocation"
    );
    assert_eq!(
        messages(&validate_update_service(
            &svc("10.96.0.10"),
            &svc("10.96.0.11")
        )),
        ["spec.clusterIP: Invalid value: \"10.96.0.11\": field is immutable"]
    );
}

#[test]
fn network_policies() {
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "np", "namespace": "default"},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
            "policyTypes": ["Ingress", "Sideways"],
            "ingress": [{
                "from": [
                    {},
                    {"ipBlock": {"cidr": "10.0.0.0/33"}},
                    {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24", "10.0.0.0/16", "x"]}, "podSelector": {}}
                ],
                "ports": [
                    {"protocol": "ICMP", "port": 80},
                    {"port": 9000, "endPort": 8000},
                    {"port": "http", "endPort": 90},
                    {"endPort": 90},
                    {"port": 70000}
                ]
            }],
            "egress": [{"to": [{"ipBlock": {"cidr": ""}}]}]
        }
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_network_policy(&np)),
        [
            "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
            "spec.ingress[0].ports[1].endPort: Invalid value: 9000: must be greater than or equal to `port`",
            "spec.ingress[0].ports[2].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
            "spec.ingress[0].ports[3].endPort: Invalid value: 90: may not be specified when `port` is not specified",
            "spec.ingress[0].ports[4].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.ingress[0].from[0]: Required value: must specify a peer",
            "spec.ingress[0].from[1].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            "spec.ingress[0].from[2].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
            "spec.ingress[0].from[2].ipBlock.except[1]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`",
            "spec.ingress[0].from[2].ipBlock.except[2]: Invalid value: \"x\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            "spec.ingress[0].from[2]: Forbidden: may not specify both ipBlock and another peer",
            "spec.egress[0].to[0].ipBlock.cidr: Required value",
            "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\"",
        ]
    );
}

#[test]
fn jobs_and_cron_jobs() {
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "pi", "namespace": "default"},
        "spec": {"backoffLimit": -1, "completionMode": "Indexed", "template": web_template()}
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_job(&job)),
        [
            "spec.backoffLimit: Invalid value: -1: must be greater than or equal to 0",
            "spec.completions: Required value: when completion mode is Indexed",
            "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
        ]
    );
    let mut ok = job.clone();
    ok.spec.backoff_limit = Some(6);
    ok.spec.completions = Some(3);
    ok.spec.template.spec.restart_policy = "Never".into();
    assert!(validate_job(&ok).is_empty());
    let mut changed = ok.clone();
    changed.spec.template.spec.containers[0].image = "perl".into();
    changed.spec.parallelism = Some(2);
    let got = messages(&validate_update_job(&ok, &changed));
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("spec.template: Invalid value: {")
            && got[0].ends_with("field is immutable")
    );

    let cj: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "x".repeat(53), "namespace": "default"},
        "spec": {"schedule": "* * *", "concurrencyPolicy": "Sometimes", "failedJobsHistoryLimit": -1,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_cron_job(&cj)),
        [
            format!("metadata.name: Invalid value: \"{}\": must be no more than 52 characters", "x".repeat(53)),
            "spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields, found 3: [* * *]".into(),
            "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"".into(),
            "spec.failedJobsHistoryLimit: Invalid value: -1: must be greater than or equal to 0".into(),
        ]
    );
    let empty: CronJob =
        serde_json::from_value(json!({"metadata": {"name": "c", "namespace": "d"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}}}}))
        .unwrap();
    assert_eq!(
        messages(&validate_cron_job(&empty)),
        ["spec.schedule: Required value"]
    );
}

#[test]
fn config_maps_and_secrets() {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "c", "namespace": "d"},
        "data": {"ok.key": "v", "bad key": "v", "..x": "v", "dup": "v"},
        "binaryData": {"dup": "dg=="}
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_config_map(&cm)),
        [
            "data[..x]: Invalid value: \"..x\": must not start with '..'",
            "data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            "data[dup]: Invalid value: \"dup\": duplicate of key present in binaryData",
        ]
    );
    let mut immutable_cm = cm.clone();
    immutable_cm.data.clear();
    immutable_cm.immutable = Some(true);
    let mut changed = immutable_cm.clone();
    changed.data.insert("k".into(), "v".into());
    assert_eq!(
        messages(&validate_update_config_map(&immutable_cm, &changed)),
        ["data: Forbidden: field is immutable when `immutable` is set"]
    );

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s", "namespace": "d"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": "not base64!"}
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_secret(&secret)),
        [
            "data[tls.crt]: Invalid value: <secret contents redacted>: illegal base64 data",
            "data[tls.key]: Required value",
        ]
    );
    let mut opaque = secret.clone();
    opaque.type_ = "Opaque".into();
    opaque.data.clear();
    let mut retyped = opaque.clone();
    retyped.type_ = "kubernetes.io/basic-auth".into();
    assert_eq!(
        messages(&validate_update_secret(&opaque, &retyped)),
        ["type: Invalid value: \"kubernetes.io/basic-auth\": field is immutable"]
    );
}

#[test]
fn nodes_and_endpoint_slices() {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.1.0.0", "taints": [
            {"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"}, {"key": "b"}
        ]}
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_node(&node)),
        [
            "spec.podCIDR: Invalid value: \"10.1.0.0\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            "spec.taints[1]: Duplicate value: core.Taint{Key:\"a\", Value:\"\", Effect:\"NoSchedule\"}: taints must be unique by key and effect pair",
            "spec.taints[2].effect: Required value",
        ]
    );
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "s", "namespace": "d"}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["fe80::1"]}, {"addresses": []}],
        "ports": [{"name": "http", "port": 80}, {"name": "http", "port": 0}]
    }))
    .unwrap();
    assert_eq!(
        messages(&validate_endpoint_slice(&slice)),
        [
            "endpoints[1].addresses[0]: Invalid value: \"fe80::1\": must be a valid IPv4 address",
            "endpoints[2].addresses: Required value: must contain at least 1 address",
            "ports[1].name: Duplicate value: \"http\"",
            "ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        ]
    );
}

#[test]
fn dispatch_reports_decode_errors() {
    let info = crate::resource::resolve("po").unwrap();
    assert!(validate_object(info, &json!({"spec": {"containers": "x"}})).is_err());
    let errs = validate_object(
        info,
        &json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {}}),
    )
    .unwrap();
    assert_eq!(messages(&errs), ["spec.containers: Required value"]);
}
