//! Authorization through the real kubectl: RBAC roles and bindings, kube-apiserver's 403s,
//! `kubectl auth can-i`, impersonation, escalation prevention, anonymous requests and ClusterRole
//! aggregation. Non-admin users are reached with `kubectl --as` (the admin is in
//! `system:masters`, which may impersonate anyone).

use crate::support;

use std::{process::Command, time::Duration};

use support::{ControlPlane, wait_for};

const ALICE_VIEWS_DEV: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-view, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
- {kind: User, name: alice}
"#;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev}
spec:
  containers: [{name: web, image: localhost/busybox:latest}]
"#;

fn setup() -> ControlPlane {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], ALICE_VIEWS_DEV)
        .success();
    cp
}

#[test]
fn a_viewer_lists_pods_in_its_namespace_only() {
    let cp = setup();
    let out = cp.kubectl(&["get", "rolebindings", "-n", "dev"]).success();
    assert!(
        out.contains("ROLE") && out.contains("ClusterRole/view"),
        "{out}"
    );
    let out = cp.kubectl(&["get", "clusterroles", "view"]).success();
    assert!(out.contains("CREATED AT"), "{out}");
    cp.kubectl_stdin(&["apply", "-f", "-"], POD).success();

    let out = cp
        .kubectl(&["get", "pods", "-n", "dev", "--as", "alice"])
        .success();
    assert!(out.contains("web"), "{out}");
    let out = cp
        .kubectl_stdin(
            &["apply", "-f", "-", "--as", "alice"],
            &POD.replace("name: web,", "name: web2,"),
        )
        .failure();
    assert!(
        out.contains(r#"pods "web2" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "dev""#)
            || out.contains(r#"is forbidden: User "alice" cannot create resource "pods" in API group "" in the namespace "dev""#),
        "{out}"
    );
    let out = cp
        .kubectl(&["delete", "pod", "web", "-n", "dev", "--as", "alice"])
        .failure();
    assert!(
        out.contains(r#"pods "web" is forbidden: User "alice" cannot delete resource "pods" in API group "" in the namespace "dev""#),
        "{out}"
    );
    let out = cp
        .kubectl(&["get", "secrets", "-n", "dev", "--as", "alice"])
        .failure();
    assert!(
        out.contains(r#"secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "dev""#),
        "{out}"
    );
    let out = cp
        .kubectl(&["get", "pods", "-n", "prod", "--as", "alice"])
        .failure();
    assert!(
        out.contains(r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "prod""#),
        "{out}"
    );
    let out = cp
        .kubectl(&["get", "pods", "-A", "--as", "alice"])
        .failure();
    assert!(
        out.contains(r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" at the cluster scope"#),
        "{out}"
    );
    let out = cp
        .kubectl(&["exec", "web", "-n", "dev", "--as", "alice", "--", "true"])
        .failure();
    assert!(
        out.contains(
            r#"cannot create resource "pods/exec" in API group "" in the namespace "dev""#
        ),
        "{out}"
    );
    // The raw Status is kube-apiserver's.
    let out = cp
        .kubectl(&[
            "get",
            "--raw",
            "/api/v1/namespaces/prod/pods",
            "--as",
            "alice",
        ])
        .failure();
    assert!(out.contains("Forbidden"), "{out}");
}

#[test]
fn can_i_answers_yes_and_no_and_lists_rules() {
    let cp = setup();
    let can_i = |args: &[&str]| {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        // kubectl exits 1 on "no".
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args(&full)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim()
        .to_owned()
    };
    assert_eq!(
        can_i(&["list", "pods", "-n", "dev", "--as", "alice"]),
        "yes"
    );
    assert_eq!(
        can_i(&["create", "pods", "-n", "dev", "--as", "alice"]),
        "no"
    );
    assert_eq!(
        can_i(&["get", "secrets", "-n", "dev", "--as", "alice"]),
        "no"
    );
    assert_eq!(
        can_i(&["list", "pods", "-n", "prod", "--as", "alice"]),
        "no"
    );
    assert_eq!(can_i(&["create", "pods", "-n", "prod"]), "yes");
    assert_eq!(can_i(&["get", "/healthz", "--as", "bob"]), "yes");
    let out = cp
        .kubectl(&["auth", "can-i", "--list", "-n", "dev", "--as", "alice"])
        .success();
    assert!(
        out.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("secrets ")), "{out}");
}

#[test]
fn an_editor_cannot_bind_cluster_admin_or_escalate() {
    let cp = setup();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: eve-edit, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects:
- {kind: User, name: eve}
"#,
    )
    .success();
    // edit holds no RBAC rights at all: aggregate admin so eve may write RoleBindings.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: eve-admin, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects:
- {kind: User, name: eve}
"#,
    )
    .success();
    let out = cp
        .kubectl_stdin(
            &["apply", "-f", "-", "--as", "eve"],
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: eve-root, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects:
- {kind: User, name: eve}
"#,
        )
        .failure();
    assert!(
        out.contains(r#"rolebindings.rbac.authorization.k8s.io "eve-root" is forbidden: user "eve" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#),
        "{out}"
    );
    assert!(
        out.contains(r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#),
        "{out}"
    );
    // A Role with rules she holds is fine; one with more is not.
    let role = |verbs: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: r, namespace: dev}}\nrules:\n- {{apiGroups: [\"\"], resources: [nodes, pods], verbs: [{verbs}]}}\n"
        )
    };
    let out = cp
        .kubectl_stdin(&["apply", "-f", "-", "--as", "eve"], &role("get"))
        .failure();
    assert!(
        out.contains(r#"{APIGroups:[""], Resources:["nodes"], Verbs:["get"]}"#),
        "{out}"
    );
    cp.kubectl_stdin(
        &["apply", "-f", "-", "--as", "eve"],
        &role("get").replace("nodes, ", ""),
    )
    .success();
    // A binding's role cannot change.
    let out = cp
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &ALICE_VIEWS_DEV[ALICE_VIEWS_DEV.find("apiVersion: rbac").unwrap()..]
                .replace("name: view", "name: edit"),
        )
        .failure();
    assert!(out.contains("cannot change roleRef"), "{out}");
}

fn server(cp: &ControlPlane) -> String {
    let out = cp
        .kubectl(&[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])
        .success();
    out.trim().to_owned()
}

fn curl(url: &str, headers: &[&str]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-k", "-s", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (body.to_owned(), code.to_owned())
}

#[test]
fn anonymous_requests_see_only_public_info() {
    let cp = ControlPlane::start();
    let server = server(&cp);
    let (body, code) = curl(&format!("{server}/version"), &[]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("gitVersion"), "{body}");
    let (body, code) = curl(&format!("{server}/healthz"), &[]);
    assert_eq!((code.as_str(), body.as_str()), ("200", "ok"));
    let (body, code) = curl(&format!("{server}/api/v1/pods"), &[]);
    assert_eq!(code, "403", "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
            "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403})
    );
    let (body, code) = curl(&format!("{server}/foo"), &[]);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains(r#"forbidden: User \"system:anonymous\" cannot get path \"/foo\""#),
        "{body}"
    );
    // A wrong token is still a 401, as on Kubernetes.
    let (body, code) = curl(
        &format!("{server}/version"),
        &["Authorization: Bearer nope"],
    );
    assert_eq!(code, "401", "{body}");
}

#[test]
fn impersonating_without_the_verb_is_forbidden() {
    // Only the admin has credentials (and may impersonate anyone), so the requester without
    // the `impersonate` verb is an anonymous one.
    let cp = setup();
    let server = server(&cp);
    let (body, code) = curl(
        &format!("{server}/api/v1/namespaces/dev/pods"),
        &["Impersonate-User: alice"],
    );
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains(r#"users \"alice\" is forbidden: User \"system:anonymous\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"#),
        "{body}"
    );
    // Granted the verb on users, a group may impersonate.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: impersonate-alice}
rules:
- {apiGroups: [""], resources: [users], verbs: [impersonate], resourceNames: [alice]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: anyone-impersonates-alice}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: impersonate-alice}
subjects:
- {kind: Group, name: "system:unauthenticated"}
"#,
    )
    .success();
    wait_for(
        "the binding to take effect",
        Duration::from_secs(10),
        || {
            let (_, code) = curl(
                &format!("{server}/api/v1/namespaces/dev/pods"),
                &["Impersonate-User: alice"],
            );
            (code == "200").then_some(())
        },
    );
    let (body, code) = curl(
        &format!("{server}/api/v1/namespaces/dev/pods"),
        &["Impersonate-User: bob"],
    );
    assert_eq!(code, "403", "{body}");
}

#[test]
fn aggregate_to_view_roles_add_to_view() {
    let cp = setup();
    let out = cp
        .kubectl(&["get", "pods", "-n", "dev", "--as", "alice"])
        .success();
    let _ = out;
    assert!(!cp.kubectl(&["get", "nodes", "--as", "alice"]).ok());
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: secrets-reader
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
- {apiGroups: [""], resources: [secrets], verbs: [list]}
"#,
    )
    .success();
    wait_for(
        "view to aggregate the new rules",
        Duration::from_secs(15),
        || {
            cp.kubectl(&["get", "secrets", "-n", "dev", "--as", "alice"])
                .ok()
                .then_some(())
        },
    );
    let view = cp.kubectl_json(&["get", "clusterrole", "view", "-o", "json"]);
    assert!(
        view["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"][0] == "secrets"),
        "{view}"
    );
    // Still only in dev.
    assert!(
        !cp.kubectl(&["get", "secrets", "-n", "prod", "--as", "alice"])
            .ok()
    );
}

#[test]
fn service_accounts_may_read_the_issuer_discovery_documents_and_delegators_review() {
    let cp = ControlPlane::start();
    support::wait_for(
        "the default ServiceAccount",
        std::time::Duration::from_secs(30),
        || {
            cp.kubectl(&["get", "serviceaccount", "default"])
                .ok()
                .then_some(())
        },
    );
    let token = cp.kubectl(&["create", "token", "default"]).success();
    let server = server(&cp);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    // As Kubernetes: system:serviceaccounts may read the OIDC discovery documents.
    let (body, code) = curl(&format!("{server}/openid/v1/jwks"), &[&bearer]);
    assert_eq!(code, "200", "{body}");
    let (body, code) = curl(&format!("{server}/openid/v1/jwks"), &[]);
    assert_eq!(code, "403", "{body}");
    // system:auth-delegator is what metrics-server and aggregated API servers get bound to.
    let roles = cp.kubectl(&["get", "clusterroles", "-o", "name"]).success();
    for role in [
        "system:auth-delegator",
        "system:monitoring",
        "system:certificates.k8s.io:kubelet-serving-approver",
    ] {
        assert!(
            roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role}")),
            "{roles}"
        );
    }
    // ...and nothing binds it by default.
    let answer = cp
        .kubectl(&[
            "auth",
            "can-i",
            "create",
            "tokenreviews.authentication.k8s.io",
            "--as",
            "system:serviceaccount:default:default",
        ])
        .failure();
    assert!(answer.starts_with("no"), "{answer}");
}
