//! Pods get an identity, on a one-node lab cluster: the ServiceAccount admission gives a pod the
//! `kube-api-access-*` projected volume, the agent fills it (a token asked of the API server,
//! bound to the pod; the namespace's `kube-root-ca.crt`; the namespace) and mounts it in the
//! container, and the official Python client's in-cluster configuration — the pod's
//! `KUBERNETES_SERVICE_HOST`/`PORT`, its token and CA, from inside the pod's network
//! namespace — reaches the API server as the pod's ServiceAccount: refused without a Role,
//! allowed with one.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use apiary_tests::{
    cluster::{ClusterLab, wait},
    require_privileges,
};
use serde_json::Value;

const NAMESPACE: &str = "ident";
const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn pod_manifest(name: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
{extra_spec}
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#
    )
}

/// The official Python client, configured in-cluster from the pod's files and environment,
/// lists the ConfigMaps of the namespace from inside the pod's network namespace: prints their
/// names, or `status <code>` when the API server refuses.
const IN_CLUSTER_CLIENT: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.client.rest import ApiException
# What config.load_incluster_config() does, with the pod's files where the host has them.
config.incluster_config.InClusterConfigLoader(
    token_filename=sys.argv[1], cert_filename=sys.argv[2]).load_and_set()
try:
    names = [cm.metadata.name for cm in client.CoreV1Api().list_namespaced_config_map(sys.argv[3]).items]
    print("listed " + ",".join(sorted(names)))
except ApiException as e:
    print("status %d %s" % (e.status, e.body))
"#;

struct PodOnHost {
    volume_dir: PathBuf,
    netns: PathBuf,
    env: Vec<(String, String)>,
}

fn pod_on_host(cluster: &ClusterLab, pod: &Value, volume: &str) -> PodOnHost {
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let node = &cluster.nodes()[0];
    let name = pod["metadata"]["name"].as_str().unwrap();
    let env = cluster
        .kubectl_ok(&["exec", "-n", NAMESPACE, name, "--", "env"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("KUBERNETES_SERVICE_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    PodOnHost {
        volume_dir: node
            .data_dir
            .join("pods")
            .join(uid)
            .join("volumes/projected")
            .join(volume),
        netns: node.run_dir.join("pods").join(uid).join("net"),
        env,
    }
}

fn in_cluster_list(pod: &PodOnHost) -> String {
    let output = Command::new("nsenter")
        .arg(format!("--net={}", pod.netns.display()))
        .args(["python3", "-c", IN_CLUSTER_CLIENT])
        .arg(pod.volume_dir.join("token"))
        .arg(pod.volume_dir.join("ca.crt"))
        .arg(NAMESPACE)
        // The machine's PATH finds the Python the client is installed in; the rest of what
        // the client reads comes from the pod.
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .envs(pod.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the in-cluster client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn a_pods_in_cluster_client_is_its_service_account_and_needs_a_role() {
    require_privileges!();
    let cluster = ClusterLab::start(1).unwrap();
    // Manifests rather than `kubectl create namespace`: kubectl's typed create commands send
    // protobuf, which the API server does not read.
    cluster
        .apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"
        ))
        .unwrap();
    cluster.apply(&pod_manifest("client", "")).unwrap();
    let pod = cluster
        .wait_ready(NAMESPACE, "client", Duration::from_secs(90))
        .unwrap();

    // The admission's volume and mount, as Kubernetes makes them.
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let volume = pod["spec"]["volumes"][0].clone();
    let name = volume["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("kube-api-access-"), "{volume}");
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3607
    );
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"],
        serde_json::json!([{"name": name, "readOnly": true, "mountPath": MOUNT_PATH}])
    );

    // Inside the container: the namespace, the cluster CA and a token.
    let in_container = |file: &str| {
        cluster
            .kubectl_ok(&[
                "exec",
                "-n",
                NAMESPACE,
                "client",
                "--",
                "cat",
                &format!("{MOUNT_PATH}/{file}"),
            ])
            .unwrap()
    };
    assert_eq!(in_container("namespace"), NAMESPACE);
    let ca = std::fs::read_to_string(cluster.dir.path().join("control-plane/pki/ca.crt")).unwrap();
    assert_eq!(in_container("ca.crt"), ca);
    let on_host = pod_on_host(&cluster, &pod, &name);
    assert_eq!(in_container("token"), read(&on_host.volume_dir, "token"));
    // The kubelet's layout: every name links through `..data`.
    assert_eq!(
        std::fs::read_link(on_host.volume_dir.join("token")).unwrap(),
        Path::new("..data/token")
    );
    // The service variables of `default/kubernetes` the in-cluster configuration reads.
    let host = on_host
        .env
        .iter()
        .find(|(k, _)| k == "KUBERNETES_SERVICE_HOST");
    assert_eq!(
        host.map(|(_, v)| v.as_str()),
        Some("10.96.0.1"),
        "{:?}",
        on_host.env
    );

    // The token is the pod's ServiceAccount's, bound to this pod.
    let review = cluster
        .kubectl_with_stdin(
            &["create", "-o", "json", "-f", "-"],
            Some(&format!(
                r#"{{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "spec": {{"token": "{}"}}}}"#,
                read(&on_host.volume_dir, "token")
            )),
        )
        .unwrap();
    let review: Value = serde_json::from_slice(&review.stdout).unwrap();
    assert_eq!(
        review["status"]["user"]["username"],
        format!("system:serviceaccount:{NAMESPACE}:default"),
        "{review}"
    );
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-uid"][0],
        pod["metadata"]["uid"],
        "{review}"
    );

    // Without a Role: refused, with Kubernetes' message.
    let refused = in_cluster_list(&on_host);
    assert!(refused.starts_with("status 403"), "{refused}");
    assert!(
        refused.contains(&format!(
            "configmaps is forbidden: User \\\"system:serviceaccount:{NAMESPACE}:default\\\" cannot list resource \\\"configmaps\\\" in API group \\\"\\\" in the namespace \\\"{NAMESPACE}\\\""
        )),
        "{refused}"
    );

    // With one: allowed, and the namespace's CA ConfigMap is among what it lists.
    cluster
        .apply(&format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: cm-reader, namespace: {NAMESPACE}}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: cm-reader, namespace: {NAMESPACE}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {NAMESPACE}}}]
"#
        ))
        .unwrap();
    let listed = wait("the Role to be in force", Duration::from_secs(10), || {
        let out = in_cluster_list(&on_host);
        out.starts_with("listed").then_some(out)
    })
    .unwrap();
    assert!(listed.contains("kube-root-ca.crt"), "{listed}");
}

#[test]
fn automount_false_mounts_nothing_and_a_missing_account_is_refused() {
    require_privileges!();
    let cluster = ClusterLab::start(1).unwrap();
    // Manifests rather than `kubectl create namespace`: kubectl's typed create commands send
    // protobuf, which the API server does not read.
    cluster
        .apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"
        ))
        .unwrap();
    cluster
        .apply(&pod_manifest(
            "quiet",
            "  automountServiceAccountToken: false",
        ))
        .unwrap();
    let pod = cluster
        .wait_ready(NAMESPACE, "quiet", Duration::from_secs(90))
        .unwrap();
    assert_eq!(pod["spec"]["volumes"], Value::Null, "{pod}");
    assert_eq!(pod["spec"]["containers"][0]["volumeMounts"], Value::Null);
    let listing = cluster
        .kubectl_ok(&["exec", "-n", NAMESPACE, "quiet", "--", "ls", "/var/run"])
        .unwrap_or_default();
    assert!(!listing.contains("secrets"), "{listing}");
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    assert!(
        !cluster.nodes()[0]
            .data_dir
            .join("pods")
            .join(uid)
            .join("volumes/projected")
            .exists()
    );

    let refused = cluster
        .kubectl_with_stdin(
            &["apply", "-f", "-"],
            Some(&pod_manifest("ghost", "  serviceAccountName: ghost")),
        )
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "pods \"ghost\" is forbidden: error looking up service account {NAMESPACE}/ghost: serviceaccount \"ghost\" not found"
        )),
        "{stderr}"
    );
}
