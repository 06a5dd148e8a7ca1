//! A mutating admission webhook served from a pod (youki, on a one-node lab cluster) behind a
//! Service: the API server reaches it through the pod's node agent, verifies it against the
//! configuration's `caBundle` for `webhook.default.svc`, and what it patches is what is stored.

use std::{path::Path, time::Duration};

use apiary_images::build::{LayerEntry, layer_tar, oci_archive};
use apiary_tests::{
    cluster::{ClusterLab, binary, wait},
    require_privileges,
};
use base64::Engine as _;

const IMAGE: &str = "localhost/webhook:test";

/// `(ca, cert, key)` PEM: a CA, and a serving certificate it signs for the Service's name.
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "webhook-ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
    let mut serving = rcgen::CertificateParams::new(vec![
        "webhook.default.svc".to_owned(),
        "webhook.default.svc.cluster.local".to_owned(),
    ])
    .unwrap();
    serving.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = serving.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// An image of the webhook binary, the shared libraries it links (as `ldd` finds them), and
/// its certificate and key.
fn build_image(archive: &Path, cert: &str, key: &str) {
    let webhook = binary("apiary-test-webhook");
    assert!(
        webhook.exists(),
        "{} is missing: run `cargo build --workspace` first",
        webhook.display()
    );
    let ldd = std::process::Command::new("ldd")
        .arg(&webhook)
        .output()
        .unwrap();
    assert!(ldd.status.success(), "ldd {}", webhook.display());
    let libraries: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(str::to_owned)
        .collect();
    let mut dirs = std::collections::BTreeSet::new();
    for library in &libraries {
        let mut parent = Path::new(library.trim_start_matches('/')).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(dir.display().to_string());
            parent = dir.parent();
        }
    }
    let mut entries: Vec<LayerEntry> = dirs
        .into_iter()
        .map(|path| LayerEntry::Dir { path, mode: 0o755 })
        .collect();
    for library in &libraries {
        entries.push(LayerEntry::File {
            path: library.trim_start_matches('/').to_owned(),
            mode: 0o755,
            data: std::fs::read(library).unwrap(),
        });
    }
    for (path, mode, data) in [
        ("webhook", 0o755, std::fs::read(&webhook).unwrap()),
        ("tls.crt", 0o644, cert.as_bytes().to_vec()),
        ("tls.key", 0o600, key.as_bytes().to_vec()),
    ] {
        entries.push(LayerEntry::File {
            path: path.to_owned(),
            mode,
            data,
        });
    }
    let layer = layer_tar(&entries).unwrap();
    oci_archive(
        archive,
        IMAGE,
        &[layer],
        apiary_images::manifest::RunConfig {
            cmd: Some(vec!["/webhook".to_owned()]),
            ..Default::default()
        },
    )
    .unwrap();
}

/// The webhook of the Service `default/webhook` for ConfigMap creates, trusted as `ca_bundle`
/// says (`failurePolicy: Fail`, the default).
fn configuration(ca_bundle: &str) -> String {
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: labels.apiary.test}}
webhooks:
- name: labels.apiary.test
  clientConfig:
    service: {{namespace: default, name: webhook, path: /mutate}}
    caBundle: {ca_bundle}
  rules:
  - {{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}}
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 10
"#
    )
}

#[test]
fn a_mutating_webhook_in_a_pod_changes_created_objects() {
    require_privileges!();
    let cluster = ClusterLab::start(1).unwrap();
    let (ca, cert, key) = certificates();
    let archive = cluster.dir.path().join("webhook.tar");
    build_image(&archive, &cert, &key);
    apiary_images::ImageStore::open(&cluster.dir.path().join("images"))
        .unwrap()
        .import(&archive)
        .unwrap();
    let node = &cluster.nodes()[0].name;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: webhook, labels: {{app: webhook}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: webhook
    image: {IMAGE}
    imagePullPolicy: Never
    command: [/webhook, --port, "8443", --cert, /tls.crt, --key, /tls.key]
    ports: [{{name: https, containerPort: 8443}}]
---
apiVersion: v1
kind: Service
metadata: {{name: webhook}}
spec:
  selector: {{app: webhook}}
  ports: [{{port: 443, targetPort: https}}]
"#
        ))
        .unwrap();
    cluster
        .wait_ready("default", "webhook", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&ca);
    cluster.apply(&configuration(&ca_bundle)).unwrap();
    // The Service's endpoints and the configuration reach the API server through watches.
    let mut n = 0;
    let mutated = wait(
        "a ConfigMap labelled by the webhook",
        Duration::from_secs(30),
        || {
            n += 1;
            let name = format!("settings{n}");
            cluster
                .kubectl_ok(&["create", "configmap", &name, "--from-literal=mode=fast"])
                .ok()?;
            let created = cluster
                .kubectl_json(&["get", "configmap", &name, "-o", "json"])
                .ok()?;
            (created["metadata"]["labels"]["mutated-by"] == "apiary-test-webhook")
                .then_some(created)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    // The pod answered: its hostname is the pod's name.
    assert_eq!(
        mutated["metadata"]["labels"]["mutated-on"], "webhook",
        "{mutated}"
    );
    assert_eq!(mutated["data"]["mode"], "fast");

    // A webhook whose certificate the caBundle does not sign is not trusted: under
    // `failurePolicy: Fail` the create is refused.
    let (other_ca, _, _) = certificates();
    let other_bundle = base64::engine::general_purpose::STANDARD.encode(other_ca);
    cluster.apply(&configuration(&other_bundle)).unwrap();
    let refused = wait(
        "the untrusted webhook to fail creates",
        Duration::from_secs(30),
        || {
            let out = cluster
                .kubectl(&["create", "configmap", "untrusted", "--from-literal=a=b"])
                .ok()?;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (!out.status.success()).then_some(stderr)
        },
    )
    .unwrap();
    assert!(
        refused.contains("failed calling webhook \"labels.apiary.test\""),
        "{refused}"
    );
}
