//! Pod Security admission through the real kubectl: a namespace's
//! `pod-security.kubernetes.io/*` labels refuse (enforce), warn about (warn) or annotate the
//! audit events of (audit) pods that break the level, with Kubernetes' messages; workloads are
//! only warned about.

use crate::support;

use std::time::Duration;

use support::{ControlPlane, wait_for};

fn namespace(cp: &ControlPlane, name: &str, labels: &[(&str, &str)]) {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("    pod-security.kubernetes.io/{k}: {v}\n"))
        .collect();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n{labels}"),
    )
    .success();
    // Pods need the namespace's default ServiceAccount, which a controller creates.
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || {
            cp.kubectl(&["get", "serviceaccount", "default", "-n", name])
                .ok()
                .then_some(())
        },
    );
}

const PRIVILEGED: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: priv\nspec:\n  containers:\n  - name: c\n    image: busybox\n    securityContext:\n      privileged: true\n";

const RESTRICTED: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: tight
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: c
    image: busybox
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
"#;

#[test]
fn a_restricted_namespace_refuses_a_privileged_pod_with_kubernetes_message() {
    let cp = ControlPlane::start();
    namespace(&cp, "locked", &[("enforce", "restricted")]);
    let out = cp
        .kubectl_stdin(&["apply", "-n", "locked", "-f", "-"], PRIVILEGED)
        .failure();
    assert!(
        out.contains("Error from server (Forbidden)")
            && out.contains(r#"pods "priv" is forbidden: violates PodSecurity "restricted:latest": privileged (container "c" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{out}"
    );
    assert!(!cp.kubectl(&["get", "pod", "priv", "-n", "locked"]).ok());
    // A pod that meets the level is admitted.
    cp.kubectl_stdin(&["apply", "-n", "locked", "-f", "-"], RESTRICTED)
        .success();
    // Relabelling an admitted pod is not judged again.
    cp.kubectl(&["label", "pod", "tight", "-n", "locked", "tier=web"])
        .success();
}

#[test]
fn warn_lets_the_pod_in_and_kubectl_prints_the_warning() {
    let cp = ControlPlane::start();
    namespace(&cp, "loose", &[("warn", "baseline")]);
    cp.kubectl_stdin(&["apply", "-n", "loose", "-f", "-"], PRIVILEGED)
        .success();
    let run = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["apply", "-n", "loose", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(PRIVILEGED.replace("name: priv", "name: priv2").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"Warning: would violate PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#),
        "{stderr}"
    );
    cp.kubectl(&["get", "pod", "priv2", "-n", "loose"])
        .success();
}

#[test]
fn workloads_are_warned_about_not_refused() {
    let cp = ControlPlane::start();
    namespace(
        &cp,
        "apps",
        &[("enforce", "restricted"), ("warn", "restricted")],
    );
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        securityContext: {privileged: true}\n";
    let run = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '%s' \"$0\" | kubectl --kubeconfig {} apply -n apps -f -",
            cp.kubeconfig().display()
        ))
        .arg(deployment)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"Warning: would violate PodSecurity "restricted:latest": "#),
        "{stderr}"
    );
    cp.kubectl(&["get", "deployment", "web", "-n", "apps"])
        .success();
}

#[test]
fn an_unknown_level_is_refused_on_the_namespace() {
    let cp = ControlPlane::start();
    let out = cp
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: odd\n  labels:\n    pod-security.kubernetes.io/enforce: strict\n",
        )
        .failure();
    assert!(
        out.contains("metadata.labels[pod-security.kubernetes.io/enforce]")
            && out.contains("\"strict\""),
        "{out}"
    );
    assert!(!cp.kubectl(&["get", "namespace", "odd"]).ok());
}
