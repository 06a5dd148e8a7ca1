use serde_json::{Value, json};

use super::{
    Error, MAX_DEPTH, decode, encode,
    envelope::MAGIC,
    special::{go_duration, parse_go_duration},
    wire::Writer,
};
use crate::resource::RESOURCES;

fn round_trip(object: Value) {
    let bytes = encode(&object).unwrap_or_else(|e| panic!("encoding {object}: {e}"));
    assert!(bytes.starts_with(MAGIC));
    assert_eq!(decode(&bytes).unwrap(), object);
}

/// A body as Go clients send it: the envelope around `raw`, a message built by hand.
fn enveloped(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Writer::default();
    type_meta.bytes_field(1, api_version.as_bytes());
    type_meta.bytes_field(2, kind.as_bytes());
    let mut unknown = Writer {
        buf: MAGIC.to_vec(),
    };
    unknown.bytes_field(1, &type_meta.buf);
    unknown.bytes_field(2, raw);
    unknown.bytes_field(3, b"");
    unknown.bytes_field(4, b"");
    unknown.buf
}

fn message(build: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::default();
    build(&mut w);
    w.buf
}

#[test]
fn every_served_kind_and_its_list_has_a_message() {
    // Apiary's own kinds have no message; CustomResourceDefinitions travel as JSON (what kubectl
    // and the client libraries send them as), their schemas' special forms not being in the table.
    // Resource metrics are read-only and answered as JSON (kubectl top asks for JSON).
    let without_message = ["apiary.dev", "apiextensions.k8s.io", "metrics.k8s.io"];
    for resource in RESOURCES
        .iter()
        .filter(|r| !without_message.contains(&r.group))
    {
        let api_version = resource.api_version();
        assert!(
            super::has_message(&api_version, resource.kind),
            "{api_version} {}",
            resource.kind
        );
        if resource.verbs.contains(&"list") {
            assert!(
                super::has_message(&api_version, &resource.list_kind()),
                "{api_version} {}",
                resource.list_kind()
            );
        }
    }
    // Option bodies are meta/v1's in every group version.
    assert_eq!(
        super::message_name("apps/v1", "DeleteOptions"),
        Some("k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions")
    );
    assert!(!super::has_message("apiary.dev/v1", "SecurityIdentity"));
}

#[test]
fn a_pod_round_trips() {
    round_trip(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": "shop",
            "labels": { "app": "web" },
            "creationTimestamp": "2024-01-02T03:04:05Z",
            "generation": 1,
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u-1", "controller": true }],
            "managedFields": [{ "manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": { "f:spec": {} }, "time": "2024-01-02T03:04:05Z" }],
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "localhost/busybox:latest",
                "command": ["httpd", "-f"],
                "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }],
                "readinessProbe": { "httpGet": { "path": "/", "port": "http" }, "periodSeconds": 5 },
                "livenessProbe": { "tcpSocket": { "port": 8080 }, "failureThreshold": 0 },
                "resources": { "limits": { "cpu": "500m", "memory": "128Mi" }, "requests": { "cpu": "100m" } },
                "env": [{ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                        { "name": "KEY", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "k", "optional": false } } }],
                "securityContext": { "runAsUser": 0, "allowPrivilegeEscalation": false },
            }],
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "volumes": [{ "name": "cfg", "configMap": { "name": "settings", "defaultMode": 420 } }],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.5",
            "podIPs": [{ "ip": "10.0.0.5" }],
            "hostIPs": [{ "ip": "192.168.1.2" }],
            "startTime": "2024-01-02T03:04:06Z",
        },
    }));
}

#[test]
fn secrets_configmaps_and_services_round_trip() {
    round_trip(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "creds" },
        "type": "Opaque",
        "data": { "password": "czNjcmV0", "empty": "" },
        "immutable": true,
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "settings" },
        "data": { "a": "b" },
        "binaryData": { "blob": "AAEC" },
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web" },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "selector": { "app": "web" },
            "ports": [{ "port": 80, "targetPort": "http", "protocol": "TCP" }, { "port": 443, "targetPort": 8443 }],
        },
        "status": { "loadBalancer": {} },
    }));
}

#[test]
fn workloads_rbac_and_csrs_round_trip() {
    round_trip(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": "web" }, "matchExpressions": [{ "key": "tier", "operator": "In", "values": ["a", "b"] }] },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": 0 } },
            "template": { "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [{ "name": "web", "image": "img" }] } },
        },
        "status": { "replicas": 2, "conditions": [{ "type": "Available", "status": "True", "lastUpdateTime": "2024-01-02T03:04:05Z" }] },
    }));
    round_trip(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": { "name": "nightly" },
        "spec": {
            "schedule": "0 3 * * *",
            "timeZone": "Etc/UTC",
            "suspend": false,
            "jobTemplate": { "spec": { "backoffLimit": 0, "template": { "spec": { "restartPolicy": "OnFailure", "containers": [{ "name": "c", "image": "img" }] } } } },
        },
        "status": { "lastScheduleTime": "2024-01-02T03:00:00Z" },
    }));
    round_trip(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": { "name": "reader" },
        "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["get"] }, { "nonResourceURLs": ["/healthz"], "verbs": ["get"] }],
        "aggregationRule": { "clusterRoleSelectors": [{ "matchLabels": { "x": "y" } }] },
    }));
    round_trip(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "read", "namespace": "default" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "builder", "namespace": "default" }],
    }));
    round_trip(json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": { "name": "node-csr" },
        "spec": {
            "request": "LS0tLS1CRUdJTg==",
            "signerName": "kubernetes.io/kube-apiserver-client",
            "usages": ["client auth"],
            "expirationSeconds": 3600,
            "extra": { "scopes": ["a", "b"] },
        },
        "status": { "certificate": "Y2VydA==", "conditions": [{ "type": "Approved", "status": "True", "lastTransitionTime": "2024-01-02T03:04:05Z" }] },
    }));
    round_trip(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "node-1" },
        "spec": { "holderIdentity": "node-1", "leaseDurationSeconds": 40, "renewTime": "2024-01-02T03:04:05.123456Z" },
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": { "resourceVersion": "7", "continue": "abc" },
        "items": [{ "metadata": { "name": "a" } }, { "metadata": { "name": "b" } }],
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "Status",
        "metadata": {}, "status": "Failure", "message": "pods \"x\" not found", "reason": "NotFound",
        "details": { "name": "x", "kind": "pods" }, "code": 404,
    }));
}

#[test]
fn special_types_decode_from_hand_built_bytes() {
    let time = message(|w| {
        w.varint_field(1, 1_704_164_645);
        w.varint_field(2, 123_456_789);
    });
    let lease = message(|w| {
        w.bytes_field(
            2,
            &message(|spec| {
                spec.bytes_field(4, &time); // renewTime: MicroTime
            }),
        );
    });
    let decoded = decode(&enveloped("coordination.k8s.io/v1", "Lease", &lease)).unwrap();
    assert_eq!(decoded["spec"]["renewTime"], "2024-01-02T03:04:05.123456Z");

    // ObjectMeta.creationTimestamp is a Time (second precision); Go's zero time is an empty
    // message and `null`.
    let meta = message(|w| {
        w.bytes_field(1, b"web");
        w.bytes_field(2, b""); // generateName: empty, so absent
        w.bytes_field(8, &time);
        w.bytes_field(9, b""); // deletionTimestamp: zero time
        w.bytes_field(
            11,
            &message(|e| {
                e.bytes_field(1, b"app");
                e.bytes_field(2, b"web");
            }),
        );
        w.varint_field(99, 7); // unknown field: skipped
    });
    let pod = decode(&enveloped(
        "v1",
        "Pod",
        &message(|w| w.bytes_field(1, &meta)),
    ))
    .unwrap();
    assert_eq!(
        pod,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "web", "creationTimestamp": "2024-01-02T03:04:05Z", "deletionTimestamp": null, "labels": { "app": "web" } },
        })
    );

    // ServicePort: port, targetPort as an int and as a string.
    let port = |target: Vec<u8>| {
        message(|w| {
            w.bytes_field(
                2,
                &message(|spec| {
                    spec.bytes_field(
                        1,
                        &message(|p| {
                            p.varint_field(3, 80);
                            p.bytes_field(4, &target);
                        }),
                    );
                }),
            );
        })
    };
    let int = message(|w| {
        w.varint_field(1, 0);
        w.varint_field(2, 8080);
    });
    let string = message(|w| {
        w.varint_field(1, 1);
        w.bytes_field(3, b"http");
    });
    let by_number = decode(&enveloped("v1", "Service", &port(int))).unwrap();
    assert_eq!(
        by_number["spec"]["ports"][0],
        json!({ "port": 80, "targetPort": 8080 })
    );
    let by_name = decode(&enveloped("v1", "Service", &port(string))).unwrap();
    assert_eq!(by_name["spec"]["ports"][0]["targetPort"], "http");

    // Secret data: map<string, bytes> as base64; a value-less entry is empty bytes.
    let secret = message(|w| {
        w.bytes_field(
            2,
            &message(|e| {
                e.bytes_field(1, b"k");
                e.bytes_field(2, &[0, 1, 2]);
            }),
        );
        w.bytes_field(2, &message(|e| e.bytes_field(1, b"none")));
    });
    let decoded = decode(&enveloped("v1", "Secret", &secret)).unwrap();
    assert_eq!(decoded["data"], json!({ "k": "AAEC", "none": "" }));

    // Resource quantities, and negative int32s sign-extended to ten bytes.
    let container = message(|w| {
        w.bytes_field(1, b"c");
        w.bytes_field(
            8,
            &message(|r| {
                r.bytes_field(
                    1,
                    &message(|e| {
                        e.bytes_field(1, b"cpu");
                        e.bytes_field(2, &message(|q| q.bytes_field(1, b"250m")));
                    }),
                );
            }),
        );
    });
    let spec = message(|w| {
        w.bytes_field(2, &container);
        w.varint_field(4, 0); // terminationGracePeriodSeconds: 0 is present
        w.varint_field(5, -1i64 as u64); // activeDeadlineSeconds (int64)
    });
    let pod = decode(&enveloped(
        "v1",
        "Pod",
        &message(|w| w.bytes_field(2, &spec)),
    ))
    .unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "250m"
    );
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 0);
    assert_eq!(pod["spec"]["activeDeadlineSeconds"], -1);
}

#[test]
fn repeated_numbers_decode_packed_and_unpacked() {
    // PodSecurityContext.supplementalGroups (repeated int64), field 4.
    let unpacked = message(|w| {
        w.varint_field(4, 1000);
        w.varint_field(4, 2000);
    });
    let mut packed_values = Writer::default();
    packed_values.varint(1000);
    packed_values.varint(2000);
    let packed = message(|w| w.bytes_field(4, &packed_values.buf));
    for context in [unpacked, packed] {
        let spec = message(|w| w.bytes_field(14, &context));
        let pod = decode(&enveloped(
            "v1",
            "Pod",
            &message(|w| w.bytes_field(2, &spec)),
        ))
        .unwrap();
        assert_eq!(
            pod["spec"]["securityContext"]["supplementalGroups"],
            json!([1000, 2000])
        );
    }
}

#[test]
fn raw_extensions_hold_json_or_an_enveloped_object() {
    // WatchEvent { type, object: RawExtension }.
    let json_object = message(|w| {
        w.bytes_field(1, b"ADDED");
        w.bytes_field(2, &message(|r| r.bytes_field(1, br#"{"kind":"Pod"}"#)));
    });
    let event = decode(&enveloped("meta.k8s.io/v1", "WatchEvent", &json_object)).unwrap();
    assert_eq!(event["object"], json!({ "kind": "Pod" }));

    let inner = enveloped(
        "v1",
        "ConfigMap",
        &message(|w| w.bytes_field(1, &message(|m| m.bytes_field(1, b"c")))),
    );
    let proto_object = message(|w| {
        w.bytes_field(1, b"ADDED");
        w.bytes_field(2, &message(|r| r.bytes_field(1, &inner)));
    });
    let event = decode(&enveloped("meta.k8s.io/v1", "WatchEvent", &proto_object)).unwrap();
    assert_eq!(
        event["object"],
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c" } })
    );
}

#[test]
fn go_durations_format_and_parse_as_go_does() {
    for (nanos, text) in [
        (0, "0s"),
        (3_600_000_000_000, "1h0m0s"),
        (5_400_000_000_000, "1h30m0s"),
        (90_000_000_000, "1m30s"),
        (1_500_000_000, "1.5s"),
        (300_000_000, "300ms"),
        (1_500, "1.5µs"),
        (7, "7ns"),
        (-2_000_000_000, "-2s"),
    ] {
        assert_eq!(go_duration(nanos), text);
        assert_eq!(parse_go_duration(text), Some(nanos), "{text}");
    }
    assert_eq!(parse_go_duration("1h30m"), Some(5_400_000_000_000));
    assert_eq!(parse_go_duration("5"), None);
    assert_eq!(parse_go_duration("1x"), None);
    assert_eq!(parse_go_duration(""), None);
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    let pod = |raw: &[u8]| decode(&enveloped("v1", "Pod", raw));
    assert_eq!(decode(b"{}"), Err(Error::NoMagic));
    assert!(matches!(
        decode(&enveloped("v1", "Gizmo", b"")),
        Err(Error::UnknownKind { .. })
    ));
    // A varint cut short, a length past the end, an over-long varint.
    assert!(matches!(pod(&[0x0a, 0x80]), Err(Error::Truncated(_))));
    assert!(matches!(pod(&[0x0a, 0x05, 0x0a]), Err(Error::Truncated(_))));
    assert_eq!(
        pod(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ]),
        Err(Error::VarintTooLong)
    );
    // metadata (1) as a varint; a group wire type.
    assert!(matches!(
        pod(&[0x08, 0x01]),
        Err(Error::WrongWireType { .. })
    ));
    assert_eq!(pod(&[0x0b]), Err(Error::WireType(3)));
    // A time past the year 9999, which RFC 3339 cannot write.
    let far = message(|w| w.varint_field(1, 300_000_000_000));
    let meta = message(|w| w.bytes_field(8, &far));
    assert!(matches!(
        pod(&message(|w| w.bytes_field(1, &meta))),
        Err(Error::InvalidValue { .. })
    ));
    // A name that is not UTF-8.
    let meta = message(|w| w.bytes_field(1, &[0xff, 0xfe]));
    assert!(matches!(
        pod(&message(|w| w.bytes_field(1, &meta))),
        Err(Error::InvalidValue { .. })
    ));
    // Every prefix of a body decodes or fails without panicking; one cut inside its last
    // field fails.
    let body = enveloped("v1", "Pod", &message(|w| w.bytes_field(1, &meta)));
    for len in 0..body.len() {
        let _ = decode(&body[..len]);
    }
    assert!(matches!(
        decode(&body[..body.len() - 1]),
        Err(Error::Truncated(_))
    ));
}

#[test]
fn nesting_past_the_depth_limit_is_refused() {
    // WatchEvents whose object is an enveloped WatchEvent, far deeper than any real object.
    let mut body = enveloped("v1", "ConfigMap", b"");
    for _ in 0..MAX_DEPTH * 4 {
        let event = message(|w| w.bytes_field(2, &message(|r| r.bytes_field(1, &body))));
        body = enveloped("meta.k8s.io/v1", "WatchEvent", &event);
    }
    assert_eq!(decode(&body), Err(Error::TooDeep));
    let mut shallow = enveloped("v1", "ConfigMap", b"");
    for _ in 0..3 {
        let event = message(|w| w.bytes_field(2, &message(|r| r.bytes_field(1, &shallow))));
        shallow = enveloped("meta.k8s.io/v1", "WatchEvent", &event);
    }
    assert!(decode(&shallow).is_ok());
}
