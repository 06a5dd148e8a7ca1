//! CertificateSigningRequests through the real kubectl: `kubectl get csr` (Kubernetes'
//! columns), `kubectl certificate approve|deny`, the signer issuing a certificate the API
//! server then accepts as that user, and what is refused (the client signer for
//! `system:masters`, a body naming another requester, approval without the signer verb).

use crate::support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::{ControlPlane, wait_for};

/// A PEM request for `cn` in `orgs` and its key (PEM).
fn request(cn: &str, orgs: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for o in orgs {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *o);
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key.serialize_pem())
}

fn csr_object(name: &str, pem: &str, signer: &str, extra: Value) -> Value {
    let mut csr = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer,
            "usages": ["digital signature", "client auth"],
        },
    });
    if let Some(fields) = extra.as_object() {
        for (k, v) in fields {
            csr["spec"][k] = v.clone();
        }
    }
    csr
}

#[test]
fn kubectl_approves_a_request_the_signer_issues_and_the_certificate_authenticates() {
    let cp = ControlPlane::start();
    let (pem, key) = request("jane", &["dev"]);
    let csr = csr_object(
        "jane",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        json!({"expirationSeconds": 3600, "username": "someone-else", "groups": ["system:masters"]}),
    );
    cp.kubectl_stdin(&["create", "-f", "-"], &csr.to_string())
        .success();
    let table = cp.kubectl(&["get", "csr"]).success();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "AGE",
            "SIGNERNAME",
            "REQUESTOR",
            "REQUESTEDDURATION",
            "CONDITION"
        ]
    );
    let row = table.lines().find(|l| l.starts_with("jane ")).unwrap();
    assert!(row.contains("kubernetes.io/kube-apiserver-client"), "{row}");
    // The requester is who authenticated, not what the body claimed.
    assert!(row.contains(" admin "), "{row}");
    assert!(row.contains("60m"), "{row}");
    assert!(row.trim_end().ends_with("Pending"), "{row}");
    let stored = cp.kubectl_json(&["get", "csr", "jane", "-o", "json"]);
    assert_eq!(stored["spec"]["username"], "admin");
    assert_eq!(
        stored["spec"]["groups"],
        json!(["system:masters", "system:authenticated"])
    );

    cp.kubectl(&["certificate", "approve", "jane"]).success();
    let issued = wait_for("the certificate", Duration::from_secs(20), || {
        let csr = cp.kubectl_json(&["get", "csr", "jane", "-o", "json"]);
        csr["status"]["certificate"].as_str().map(str::to_owned)
    });
    let approved = cp.kubectl_json(&["get", "csr", "jane", "-o", "json"]);
    assert_eq!(approved["status"]["conditions"][0]["type"], "Approved");
    assert_eq!(
        approved["status"]["conditions"][0]["reason"],
        "KubectlApprove"
    );
    let row = cp.kubectl(&["get", "csr", "jane"]).success();
    assert!(row.contains("Approved,Issued"), "{row}");

    // The issued certificate is jane's identity.
    let cert = base64::engine::general_purpose::STANDARD
        .decode(issued)
        .unwrap();
    let mut config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    config["users"][0]["user"] = json!({
        "client-certificate-data": b64(&cert),
        "client-key-data": b64(key.as_bytes()),
    });
    let path = cp.data_path().join("jane.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&path)
        .args(["auth", "whoami", "-o", "json"])
        .output()
        .unwrap();
    let whoami: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(whoami["status"]["userInfo"]["username"], "jane");
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        json!(["dev", "system:authenticated"])
    );
}

#[test]
fn denied_requests_are_never_signed_and_bad_requests_are_refused() {
    let cp = ControlPlane::start();
    let (pem, _) = request("joe", &[]);
    let csr = csr_object(
        "joe",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        json!({}),
    );
    cp.kubectl_stdin(&["create", "-f", "-"], &csr.to_string())
        .success();
    cp.kubectl(&["certificate", "deny", "joe"]).success();
    std::thread::sleep(Duration::from_secs(2));
    let denied = cp.kubectl_json(&["get", "csr", "joe", "-o", "json"]);
    assert!(denied["status"]["certificate"].is_null());
    assert!(
        cp.kubectl(&["get", "csr", "joe"])
            .success()
            .contains("Denied")
    );
    // Approving a denied request is refused by the server too (Approved and Denied exclude
    // each other), not only by kubectl.
    let mut both = denied.clone();
    both["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "Approved", "status": "True", "reason": "Sneaky"}));
    let again = cp
        .kubectl_stdin(
            &[
                "replace",
                "--raw",
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/joe/approval",
                "-f",
                "-",
            ],
            &both.to_string(),
        )
        .failure();
    assert!(again.contains("mutually exclusive"), "{again}");

    // Nobody gets system:masters from the client signer, not even an admin.
    let (masters, _) = request("root", &["system:masters"]);
    let csr = csr_object(
        "root",
        &masters,
        "kubernetes.io/kube-apiserver-client",
        json!({}),
    );
    let refused = cp
        .kubectl_stdin(&["create", "-f", "-"], &csr.to_string())
        .failure();
    assert!(
        refused.contains(
            "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
        ),
        "{refused}"
    );
    let garbage = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "garbage"},
        "spec": {"request": "bm90IGEgcmVxdWVzdA==", "signerName": "example.com/x", "usages": []},
    });
    let invalid = cp
        .kubectl_stdin(&["create", "-f", "-"], &garbage.to_string())
        .failure();
    assert!(invalid.contains("spec.request: Invalid value"), "{invalid}");
    assert!(invalid.contains("spec.usages: Required value"), "{invalid}");
}

#[test]
fn approving_takes_the_approve_verb_on_the_signer_not_only_the_approval_subresource() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, "approver-token,approver,1001\n").unwrap();
    let cp = ControlPlane::start_with(&["--token-auth-file", file.to_str().unwrap()]);
    let (pem, _) = request("joe", &[]);
    let csr = csr_object(
        "joe",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        json!({}),
    );
    cp.kubectl_stdin(&["create", "-f", "-"], &csr.to_string())
        .success();
    // May read and update the approval subresource, but not approve for the signer.
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "csr-approver"},
        "rules": [{"apiGroups": ["certificates.k8s.io"],
            "resources": ["certificatesigningrequests", "certificatesigningrequests/approval"],
            "verbs": ["get", "list", "update"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "csr-approver"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-approver"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "approver"}]});
    for object in [&role, &binding] {
        cp.kubectl_stdin(&["apply", "-f", "-"], &object.to_string())
            .success();
    }
    // A kubeconfig with only the token: kubectl would present the admin's certificate too.
    let mut config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    config["users"][0]["user"] = json!({"token": "approver-token"});
    let approver = dir.path().join("approver.kubeconfig");
    std::fs::write(&approver, serde_yaml::to_string(&config).unwrap()).unwrap();
    let as_approver = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&approver)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let refused = wait_for("the binding to apply", Duration::from_secs(10), || {
        let (ok, out) = as_approver(&["certificate", "approve", "joe"]);
        (!ok && out.contains("user not permitted to approve")).then_some(out)
    });
    assert!(
        refused.contains(
            "user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""
        ),
        "{refused}"
    );
    assert!(
        cp.kubectl_json(&["get", "csr", "joe", "-o", "json"])["status"]["conditions"].is_null()
    );
    // With `approve` on the signer (by its domain wildcard) it goes through.
    let mut role = role;
    role["rules"].as_array_mut().unwrap().push(json!({
        "apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
        "resourceNames": ["kubernetes.io/*"], "verbs": ["approve"]}));
    cp.kubectl_stdin(&["apply", "-f", "-"], &role.to_string())
        .success();
    wait_for("the approval", Duration::from_secs(10), || {
        as_approver(&["certificate", "approve", "joe"])
            .0
            .then_some(())
    });
    let approved = cp.kubectl_json(&["get", "csr", "joe", "-o", "json"]);
    assert_eq!(approved["status"]["conditions"][0]["type"], "Approved");
}
