#![recursion_limit = "512"]
//! Realistic manifests (as kubectl sends them, YAML converted to JSON) round-trip through the
//! typed structs unchanged, and are valid.

use apiary_api::{
    apps_v1::Deployment,
    core_v1::{Pod, Service},
    networking_v1::NetworkPolicy,
    resource::{self, Resource},
    validation::{validate_object, validate_object_update},
};
use serde_json::{Value, json};

fn deployment() -> Value {
    json!({
      "apiVersion": "apps/v1",
      "kind": "Deployment",
      "metadata": {
        "name": "web",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/name": "web", "tier": "frontend"},
        "annotations": {"deployment.kubernetes.io/revision": "3"}
      },
      "spec": {
        "replicas": 3,
        "selector": {
          "matchLabels": {"app.kubernetes.io/name": "web"},
          "matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend", "edge"]}]
        },
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
        "minReadySeconds": 5,
        "revisionHistoryLimit": 10,
        "progressDeadlineSeconds": 600,
        "template": {
          "metadata": {"labels": {"app.kubernetes.io/name": "web", "tier": "frontend"}},
          "spec": {
            "serviceAccountName": "web",
            "terminationGracePeriodSeconds": 30,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
              {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "affinity": {
              "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                  "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}]}]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [
                  {"weight": 50, "preference": {"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["ssd"]}]}}
                ]
              },
              "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                  "weight": 100,
                  "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "web"}},
                    "topologyKey": "kubernetes.io/hostname"
                  }
                }]
              }
            },
            "initContainers": [{
              "name": "migrate",
              "image": "registry.example.com/shop/web:1.4.2",
              "command": ["/app/migrate"],
              "args": ["--wait"],
              "envFrom": [{"secretRef": {"name": "db"}}]
            }],
            "containers": [{
              "name": "web",
              "image": "registry.example.com/shop/web:1.4.2",
              "imagePullPolicy": "IfNotPresent",
              "workingDir": "/app",
              "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
              "env": [
                {"name": "LOG_LEVEL", "value": "info"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "FEATURES", "valueFrom": {"configMapKeyRef": {"name": "web", "key": "features", "optional": true}}},
                {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}
              ],
              "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "1", "memory": "512Mi"}
              },
              "volumeMounts": [
                {"name": "config", "mountPath": "/etc/web", "readOnly": true},
                {"name": "cache", "mountPath": "/var/cache/web"},
                {"name": "podinfo", "mountPath": "/etc/podinfo"}
              ],
              "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3, "successThreshold": 1
              },
              "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
              "startupProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "failureThreshold": 30, "periodSeconds": 2},
              "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 5"]}}},
              "securityContext": {
                "runAsNonRoot": true, "runAsUser": 1000, "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}
              }
            }],
            "volumes": [
              {"name": "config", "configMap": {"name": "web", "items": [{"key": "app.yaml", "path": "app.yaml"}], "defaultMode": 420}},
              {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
              {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
            ]
          }
        }
      },
      "status": {
        "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3,
        "conditions": [
          {"type": "Available", "status": "True", "lastUpdateTime": "2024-05-01T10:00:00Z",
           "lastTransitionTime": "2024-05-01T10:00:00Z", "reason": "MinimumReplicasAvailable",
           "message": "Deployment has minimum availability."}
        ]
      }
    })
}

fn service() -> Value {
    json!({
      "apiVersion": "v1",
      "kind": "Service",
      "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
      "spec": {
        "type": "NodePort",
        "selector": {"app.kubernetes.io/name": "web"},
        "ports": [
          {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080},
          {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": 9090}
        ],
        "clusterIP": "10.96.12.34",
        "clusterIPs": ["10.96.12.34"],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
        "externalTrafficPolicy": "Local",
        "internalTrafficPolicy": "Cluster",
        "externalIPs": ["192.0.2.10"]
      },
      "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}]}}
    })
}

fn network_policy() -> Value {
    // The example of the Kubernetes documentation, plus an egress port range.
    json!({
      "apiVersion": "networking.k8s.io/v1",
      "kind": "NetworkPolicy",
      "metadata": {"name": "test-network-policy", "namespace": "default"},
      "spec": {
        "podSelector": {"matchLabels": {"role": "db"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{
          "from": [
            {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
            {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
            {"podSelector": {"matchLabels": {"role": "frontend"}}},
            {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchExpressions": [{"key": "role", "operator": "Exists"}]}}
          ],
          "ports": [{"protocol": "TCP", "port": 6379}, {"port": "metrics"}]
        }],
        "egress": [{
          "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
          "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}]
        }]
      }
    })
}

fn pod() -> Value {
    json!({
      "apiVersion": "v1",
      "kind": "Pod",
      "metadata": {
        "name": "web-5d9c7b6f4-x2k8p",
        "generateName": "web-5d9c7b6f4-",
        "namespace": "shop",
        "uid": "6f1c0a58-6a9e-4d2c-9a5e-1c1f0a8c4b7e",
        "resourceVersion": "48213",
        "creationTimestamp": "2024-05-01T09:59:58Z",
        "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "5d9c7b6f4"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c7b6f4",
          "uid": "0b7a4f3e-1111-4c1d-8a1e-5f2b3c4d5e6f", "controller": true, "blockOwnerDeletion": true}]
      },
      "spec": {
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
        "terminationGracePeriodSeconds": 30,
        "nodeName": "node-1",
        "hostname": "web-0",
        "subdomain": "web",
        "priority": 0,
        "enableServiceLinks": true,
        "containers": [{
          "name": "web",
          "image": "nginx:1.27",
          "ports": [{"containerPort": 80, "protocol": "TCP", "hostPort": 8080}],
          "terminationMessagePath": "/dev/termination-log",
          "terminationMessagePolicy": "File",
          "imagePullPolicy": "IfNotPresent"
        }],
        "volumes": [
          {"name": "host", "hostPath": {"path": "/var/log", "type": "Directory"}},
          {"name": "tls", "secret": {"secretName": "web-tls", "defaultMode": 256}},
          {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
          {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
        ]
      },
      "status": {
        "phase": "Running",
        "conditions": [
          {"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T10:00:05Z"},
          {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-05-01T09:59:58Z"}
        ],
        "hostIP": "10.123.0.1",
        "hostIPs": [{"ip": "10.123.0.1"}],
        "podIP": "10.123.1.7",
        "podIPs": [{"ip": "10.123.1.7"}],
        "startTime": "2024-05-01T09:59:58Z",
        "qosClass": "BestEffort",
        "containerStatuses": [{
          "name": "web",
          "state": {"running": {"startedAt": "2024-05-01T10:00:01Z"}},
          "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
            "startedAt": "2024-05-01T09:59:59Z", "finishedAt": "2024-05-01T10:00:00Z",
            "containerID": "apiary://3c4d"}},
          "ready": true,
          "restartCount": 1,
          "image": "docker.io/library/nginx:1.27",
          "imageID": "docker.io/library/nginx@sha256:0123",
          "containerID": "apiary://9a8b",
          "started": true
        }]
      }
    })
}

fn horizontal_pod_autoscaler() -> Value {
    json!({
      "apiVersion": "autoscaling/v2",
      "kind": "HorizontalPodAutoscaler",
      "metadata": {"name": "web", "namespace": "shop"},
      "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 2,
        "maxReplicas": 10,
        "metrics": [
          {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
          {"type": "ContainerResource", "containerResource": {"name": "memory", "container": "app",
            "target": {"type": "AverageValue", "averageValue": "500Mi"}}},
          {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
            "target": {"type": "AverageValue", "averageValue": "1k"}}}
        ],
        "behavior": {
          "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]},
          "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Min",
            "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]}
        }
      },
      "status": {
        "observedGeneration": 3,
        "lastScaleTime": "2024-05-01T10:00:00Z",
        "currentReplicas": 3,
        "desiredReplicas": 4,
        "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75, "averageValue": "75m"}}}],
        "conditions": [{"type": "AbleToScale", "status": "True", "lastTransitionTime": "2024-05-01T10:00:00Z",
          "reason": "SucceededRescale", "message": "the HPA controller was able to update the target scale to 4"}]
      }
    })
}

fn others() -> Vec<Value> {
    let webhook = |mutating: bool| {
        let mut hook = json!({"name": "labels.example.com",
            "clientConfig": {"service": {"namespace": "hooks", "name": "labels", "path": "/mutate", "port": 443},
                "caBundle": "Y2VydA=="},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods", "pods/status"], "scope": "Namespaced"}],
            "failurePolicy": "Ignore", "matchPolicy": "Equivalent",
            "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
            "objectSelector": {"matchLabels": {"inject": "true"}},
            "sideEffects": "None", "timeoutSeconds": 5, "admissionReviewVersions": ["v1", "v1beta1"],
            "matchConditions": [{"name": "not-system", "expression": "!request.userInfo.username.startsWith('system:')"}]});
        if mutating {
            hook["reinvocationPolicy"] = json!("IfNeeded");
        }
        hook
    };
    let rules = json!({"namespaceSelector": {}, "objectSelector": {}, "matchPolicy": "Equivalent",
        "resourceRules": [{"operations": ["CREATE"], "apiGroups": ["apps"], "apiVersions": ["v1"],
            "resources": ["deployments"], "scope": "*"}]});
    vec![
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "labels"}, "webhooks": [webhook(true)]}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "labels"}, "webhooks": [webhook(false)]}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": "replica-limit"},
            "spec": {"paramKind": {"apiVersion": "v1", "kind": "ConfigMap"}, "matchConstraints": rules,
                "validations": [{"expression": "object.spec.replicas <= variables.limit",
                    "message": "too many", "reason": "Forbidden",
                    "messageExpression": "'at most ' + string(variables.limit)"}],
                "failurePolicy": "Fail",
                "auditAnnotations": [{"key": "replicas", "valueExpression": "string(object.spec.replicas)"}],
                "matchConditions": [{"name": "labelled", "expression": "has(object.metadata.labels)"}],
                "variables": [{"name": "limit", "expression": "int(params.data.max)"}]}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": "replica-limit"},
            "spec": {"policyName": "replica-limit",
                "paramRef": {"name": "limits", "namespace": "shop", "parameterNotFoundAction": "Deny"},
                "matchResources": rules, "validationActions": ["Deny", "Audit"]}}),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                    "listKind": "WidgetList", "shortNames": ["wd"], "categories": ["all"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}},
                    "subresources": {"status": {}, "scale": {
                        "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]}],
                "conversion": {"strategy": "None"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "shop"},
            "data": {"app.yaml": "port: 8080\n", "features": "a,b"}, "binaryData": {"logo.png": "iVBORw0KGgo="}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-tls", "namespace": "shop"},
            "type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "shop"},
            "imagePullSecrets": [{"name": "registry"}], "automountServiceAccountToken": false}),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"},
            "subsets": [{"addresses": [{"ip": "10.123.1.7", "nodeName": "node-1",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "u1"}}],
              "notReadyAddresses": [{"ip": "10.123.1.8"}],
              "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1",
              "labels": {"kubernetes.io/hostname": "node-1"}},
            "spec": {"podCIDR": "10.123.1.0/24", "podCIDRs": ["10.123.1.0/24"],
              "taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "4", "memory": "16318780Ki", "pods": "110"},
              "allocatable": {"cpu": "3800m", "memory": "15718780Ki", "pods": "110"},
              "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-05-01T10:00:00Z",
                "lastTransitionTime": "2024-05-01T09:00:00Z", "reason": "KubeletReady", "message": "ready"}],
              "addresses": [{"type": "InternalIP", "address": "10.123.0.1"}, {"type": "Hostname", "address": "node-1"}],
              "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
              "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "apiary://0.1.0",
                "kubeletVersion": "v1.32.0", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}}),
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web-0.17c4a1b2", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "u1",
              "apiVersion": "v1", "resourceVersion": "48213", "fieldPath": "spec.containers{web}"},
            "reason": "Pulled", "message": "Container image \"nginx:1.27\" already present on machine",
            "source": {"component": "apiary-node-agent", "host": "node-1"},
            "firstTimestamp": "2024-05-01T10:00:00Z", "lastTimestamp": "2024-05-01T10:00:00Z",
            "count": 1, "type": "Normal", "reportingComponent": "apiary-node-agent", "reportingInstance": "node-1"}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"serviceName": "db", "replicas": 3, "podManagementPolicy": "Parallel",
              "selector": {"matchLabels": {"app": "db"}},
              "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
              "ordinals": {"start": 1},
              "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "pg", "image": "postgres:16",
                  "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}],
                  "volumes": [{"name": "data", "emptyDir": {}}]}},
              "volumeClaimTemplates": [{"metadata": {"name": "pgdata"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]},
            "status": {"replicas": 3, "readyReplicas": 3, "currentRevision": "db-7f9", "updateRevision": "db-7f9"}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
              "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
              "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"hostNetwork": true, "containers": [{"name": "agent", "image": "apiary/agent:0.1",
                  "ports": [{"containerPort": 9100, "hostPort": 9100}],
                  "securityContext": {"privileged": true}}]}}},
            "status": {"currentNumberScheduled": 2, "numberMisscheduled": 0, "desiredNumberScheduled": 2, "numberReady": 2}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-5d9c7b6f4", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d9c7b6f4"}},
              "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "5d9c7b6f4"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
            "status": {"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 2, "observedGeneration": 1}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "namespace": "default"},
            "spec": {"backoffLimit": 4, "completions": 5, "parallelism": 2, "completionMode": "Indexed",
              "activeDeadlineSeconds": 100, "ttlSecondsAfterFinished": 60, "suspend": false,
              "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "pi", "image": "perl:5.34", "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]}]}}},
            "status": {"startTime": "2024-05-01T10:00:00Z", "active": 2, "succeeded": 1, "completedIndexes": "0",
              "ready": 2, "uncountedTerminatedPods": {}}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"schedule": "*/5 * * * *", "timeZone": "Etc/UTC", "concurrencyPolicy": "Forbid",
              "startingDeadlineSeconds": 200, "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1, "suspend": false,
              "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "hello", "image": "busybox:1.36", "args": ["date"]}]}}}}},
            "status": {"active": [{"kind": "Job", "namespace": "default", "name": "hello-28571234",
              "uid": "u2", "apiVersion": "batch/v1", "resourceVersion": "9"}],
              "lastScheduleTime": "2024-05-01T10:00:00Z", "lastSuccessfulTime": "2024-05-01T09:55:07Z"}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc12", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.123.1.7"], "conditions": {"ready": true, "serving": true, "terminating": false},
              "nodeName": "node-1", "zone": "a", "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "u1"}}],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "node-1", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40,
              "acquireTime": "2024-05-01T09:00:00.000000Z", "renewTime": "2024-05-01T10:00:00.123456Z", "leaseTransitions": 0}}),
        json!({"apiVersion": "apiary.dev/v1", "kind": "SecurityIdentity",
            "metadata": {"name": "256"},
            "labels": {"apiary:namespace": "shop", "k8s-ns:team": "a", "k8s:app": "web"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pod-reader", "namespace": "shop"},
            "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"],
              "resourceNames": ["web-0"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "monitoring"},
            "rules": [{"verbs": ["get"], "nonResourceURLs": ["/metrics", "/healthz/*"]}],
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate-to-monitoring": "true"}}]}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "read-pods", "namespace": "shop"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane"},
              {"kind": "ServiceAccount", "name": "default", "namespace": "shop"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "read-secrets-global"},
            "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "manager"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "secret-reader"}}),
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": "node-csr-abcde"},
            "spec": {"request": "LS0tLS1CRUdJTi4uLg==", "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
              "expirationSeconds": 86400, "usages": ["digital signature", "client auth"],
              "username": "system:bootstrap:abcdef", "groups": ["system:bootstrappers", "system:authenticated"]},
            "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved",
              "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
              "lastUpdateTime": "2024-05-01T10:00:00Z", "lastTransitionTime": "2024-05-01T10:00:00Z"}],
              "certificate": "LS0tLS1CRUdJTi4uLg=="}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pvc-0b5e", "annotations": {"pv.kubernetes.io/provisioned-by": "local.csi.apiary.dev"},
                "finalizers": ["kubernetes.io/pv-protection"]},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data",
                    "uid": "0b5e", "apiVersion": "v1", "resourceVersion": "12"},
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "local-path",
                "volumeMode": "Filesystem",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "topology.local.csi.apiary.dev/node", "operator": "In", "values": ["n1"]}]}]}},
                "csi": {"driver": "local.csi.apiary.dev", "volumeHandle": "pvc-0b5e", "fsType": "ext4",
                    "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "1-n1"}}},
            "status": {"phase": "Bound", "lastPhaseTransitionTime": "2024-05-01T10:00:00Z"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "nfs"},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain", "mountOptions": ["hard"],
                "nfs": {"server": "nfs.example.com", "path": "/exports"}},
            "status": {"phase": "Available"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "shop",
                "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                    "volume.kubernetes.io/selected-node": "n1"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "local-path", "volumeMode": "Filesystem", "volumeName": "pvc-0b5e",
                "selector": {"matchLabels": {"tier": "fast"}}},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                "allocatedResources": {"storage": "1Gi"}}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "local.csi.apiary.dev", "parameters": {"fsType": "ext4"},
            "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer",
            "allowVolumeExpansion": true, "mountOptions": ["noatime"],
            "allowedTopologies": [{"matchLabelExpressions": [{"key": "topology.local.csi.apiary.dev/node", "values": ["n1"]}]}]}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
            "metadata": {"name": "local.csi.apiary.dev"},
            "spec": {"attachRequired": false, "podInfoOnMount": false, "storageCapacity": true,
                "fsGroupPolicy": "File", "requiresRepublish": false, "seLinuxMount": false,
                "volumeLifecycleModes": ["Persistent"]}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
            "metadata": {"name": "n1"},
            "spec": {"drivers": [{"name": "local.csi.apiary.dev", "nodeID": "n1",
                "topologyKeys": ["topology.local.csi.apiary.dev/node"], "allocatable": {"count": 100}}]}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
            "metadata": {"name": "csisc-n1", "namespace": "kube-system"},
            "nodeTopology": {"matchLabels": {"topology.local.csi.apiary.dev/node": "n1"}},
            "storageClassName": "local-path", "capacity": "100Gi", "maximumVolumeSize": "100Gi"}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": "csi-0b5e"},
            "spec": {"attacher": "example.csi.io", "nodeName": "n1", "source": {"persistentVolumeName": "pvc-0b5e"}},
            "status": {"attached": true, "attachmentMetadata": {"device": "/dev/sdb"}}}),
    ]
}

/// Decodes `manifest` as the type its `apiVersion`/`kind` name, re-encodes it, and checks the
/// JSON is unchanged; then checks it is valid.
fn round_trip(manifest: &Value) {
    let api_version = manifest["apiVersion"].as_str().unwrap();
    let kind = manifest["kind"].as_str().unwrap();
    let info = resource::by_api_version_kind(api_version, kind).expect(kind);
    macro_rules! via {
        ($($plural:literal => $ty:ty),* $(,)?) => {
            match info.plural {
                $($plural => {
                    assert_eq!(<$ty as Resource>::INFO, info);
                    serde_json::to_value(serde_json::from_value::<$ty>(manifest.clone()).unwrap()).unwrap()
                })*
                other => panic!("no type for {other}"),
            }
        };
    }
    use apiary_api::{
        admissionregistration_v1::*, apiary_v1::*, apiextensions_v1::*, apps_v1::*,
        autoscaling_v2::*, batch_v1::*, certificates_v1::*, coordination_v1::*, core_v1::*,
        discovery_v1::*, rbac_v1::*, storage_v1::*,
    };
    let back = via!(
        "namespaces" => Namespace, "pods" => Pod, "services" => Service, "endpoints" => Endpoints,
        "configmaps" => ConfigMap, "secrets" => Secret, "nodes" => Node, "events" => Event,
        "serviceaccounts" => ServiceAccount, "deployments" => Deployment,
        "replicasets" => ReplicaSet, "statefulsets" => StatefulSet, "daemonsets" => DaemonSet,
        "jobs" => Job, "cronjobs" => CronJob, "networkpolicies" => NetworkPolicy,
        "horizontalpodautoscalers" => HorizontalPodAutoscaler,
        "endpointslices" => EndpointSlice, "leases" => Lease,
        "securityidentities" => SecurityIdentity, "roles" => Role, "clusterroles" => ClusterRole,
        "rolebindings" => RoleBinding, "clusterrolebindings" => ClusterRoleBinding,
        "certificatesigningrequests" => CertificateSigningRequest,
        "customresourcedefinitions" => CustomResourceDefinition,
        "persistentvolumes" => PersistentVolume,
        "persistentvolumeclaims" => PersistentVolumeClaim,
        "storageclasses" => StorageClass, "csidrivers" => CsiDriver, "csinodes" => CsiNode,
        "csistoragecapacities" => CsiStorageCapacity, "volumeattachments" => VolumeAttachment,
        "mutatingwebhookconfigurations" => MutatingWebhookConfiguration,
        "validatingwebhookconfigurations" => ValidatingWebhookConfiguration,
        "validatingadmissionpolicies" => ValidatingAdmissionPolicy,
        "validatingadmissionpolicybindings" => ValidatingAdmissionPolicyBinding,
    );
    assert_eq!(&back, manifest, "{kind} did not round-trip");
    let errs = validate_object(info, manifest).unwrap();
    assert!(errs.is_empty(), "{kind}: {errs:#?}");
}

#[test]
fn every_kind_round_trips_and_validates() {
    let mut all = vec![
        deployment(),
        service(),
        network_policy(),
        pod(),
        horizontal_pod_autoscaler(),
    ];
    all.extend(others());
    let kinds: std::collections::BTreeSet<_> = all.iter().map(|m| m["kind"].to_string()).collect();
    // Reviews (access, token, self-subject) are answered and resource metrics measured, never
    // stored: no fixture. A kind served in two versions is one kind.
    let stored = resource::RESOURCES
        .iter()
        .filter(|r| r.verbs.contains(&"list") && r.verbs.contains(&"create"))
        .map(|r| r.kind)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(kinds.len(), stored, "a fixture per stored kind");
    for m in &all {
        round_trip(m);
    }
}

#[test]
fn typed_access_to_a_deployment() {
    let d: Deployment = serde_json::from_value(deployment()).unwrap();
    let tpl = &d.spec.template.spec;
    assert_eq!(d.spec.replicas, Some(3));
    assert!(
        d.spec
            .selector
            .as_ref()
            .unwrap()
            .matches(&d.spec.template.metadata.labels)
    );
    let ru = d
        .spec
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(ru.max_surge.as_ref().unwrap().resolve(3, true), Ok(1));
    assert_eq!(
        ru.max_unavailable.as_ref().unwrap().resolve(3, false),
        Ok(1)
    );
    let c = &tpl.containers[0];
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests["cpu"].milli_value(), Ok(100));
    assert_eq!(res.limits["memory"].value(), Ok(512 << 20));
    assert_eq!(
        c.env[3]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .key,
        "password"
    );
    assert!(tpl.volumes[2].downward_api.is_some());
    assert_eq!(
        d.status.unwrap().conditions[0].reason,
        "MinimumReplicasAvailable"
    );
}

#[test]
fn server_style_json_with_nulls_and_unknown_fields_decodes() {
    // What `kubectl get -o json` prints from a real cluster: nulls, managedFields, fields Apiary
    // does not model. They are tolerated (and dropped).
    let mut d = deployment();
    d["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Update"}]);
    d["metadata"]["selfLink"] = json!("/apis/apps/v1/namespaces/shop/deployments/web");
    d["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
    d["spec"]["template"]["spec"]["containers"][0]["resizePolicy"] = json!([]);
    d["spec"]["template"]["spec"]["someFutureField"] = json!({"x": 1});
    let typed: Deployment = serde_json::from_value(d).unwrap();
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(back, deployment());

    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns", "namespace": "kube-system"},
        "spec": {"ports": [{"port": 53, "protocol": "UDP", "targetPort": 53}], "clusterIP": "None"}
    }))
    .unwrap();
    assert_eq!(
        svc.spec.ports[0].target_port,
        Some(apiary_api::IntOrString::Int(53))
    );
}

#[test]
fn network_policy_peers() {
    let np: NetworkPolicy = serde_json::from_value(network_policy()).unwrap();
    let from = &np.spec.ingress[0].from;
    assert!(
        from[0]
            .ip_block
            .as_ref()
            .unwrap()
            .contains("172.17.0.5".parse().unwrap())
    );
    assert!(
        !from[0]
            .ip_block
            .as_ref()
            .unwrap()
            .contains("172.17.1.5".parse().unwrap())
    );
    assert!(from[3].namespace_selector.is_some() && from[3].pod_selector.is_some());
    assert_eq!(np.spec.effective_policy_types(), ["Ingress", "Egress"]);
    assert_eq!(np.spec.egress[0].ports[0].end_port, Some(32768));
}

#[test]
fn pod_status_is_typed() {
    let p: Pod = serde_json::from_value(pod()).unwrap();
    let status = p.status.unwrap();
    let cs = &status.container_statuses[0];
    assert!(cs.state.as_ref().unwrap().running.is_some());
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_str()), (137, "OOMKilled"));
    assert_eq!(status.pod_ips[0].ip, "10.123.1.7");
    assert_eq!(p.metadata.owner_references[0].controller, Some(true));
}

#[test]
fn updates_dispatch_on_the_registry() {
    let old = deployment();
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(5);
    let info = resource::resolve("deploy").unwrap();
    assert!(validate_object_update(info, &old, &new).unwrap().is_empty());
    new["spec"]["selector"] =
        json!({"matchLabels": {"app.kubernetes.io/name": "web", "tier": "frontend"}});
    let errs = validate_object_update(info, &old, &new).unwrap();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .to_string()
            .starts_with("spec.selector: Invalid value: v1.LabelSelector{")
    );
    assert!(errs[0].to_string().ends_with(": field is immutable"));

    // Kinds without their own update rules still get metadata immutability.
    let cm = &others()[1];
    let mut renamed = cm.clone();
    renamed["metadata"]["name"] = json!("other");
    let errs = validate_object_update(&resource::CONFIG_MAPS, cm, &renamed).unwrap();
    assert_eq!(
        errs[0].to_string(),
        "metadata.name: Invalid value: \"other\": field is immutable"
    );
    let lease = &others()[13];
    let errs = validate_object_update(&resource::LEASES, lease, lease).unwrap();
    assert!(errs.is_empty());

    // CronJobs: a legacy `TZ=` prefix may stay on update, though a new object may not have one.
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "legacy", "namespace": "default"},
        "spec": {"schedule": "TZ=Europe/Paris 0 3 * * *",
          "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}}}});
    let cron_jobs = resource::resolve("cronjobs").unwrap();
    assert_eq!(validate_object(cron_jobs, &cj).unwrap().len(), 1);
    let mut new = cj.clone();
    new["spec"]["schedule"] = json!("TZ=Europe/Paris @daily");
    assert!(
        validate_object_update(cron_jobs, &cj, &new)
            .unwrap()
            .is_empty()
    );

    let svc = service();
    assert!(validate_object(&resource::SERVICES, &json!({"spec": "nonsense"})).is_err());
    assert!(
        validate_object_update(&resource::SERVICES, &svc, &svc)
            .unwrap()
            .is_empty()
    );
}
