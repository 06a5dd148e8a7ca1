//! The audit log (`--audit-log-path`, `--audit-policy-file`), read back after requests made with
//! the real kubectl and a plain HTTPS client: one `audit.k8s.io/v1` Event per request stage the
//! policy keeps, naming the authenticated user (and the impersonated one), the object, the
//! response code and the authorization decision; refused and unauthenticated requests included.

use crate::support;

use std::{path::Path, process::Command, time::Duration};

use serde_json::{Value, json};
use support::{ControlPlane, wait_for};

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*"]
- level: RequestResponse
  resources:
  - group: ""
    resources: [configmaps]
- level: Metadata
"#;

const TOKENS: &str = "jane-token,jane,1001,dev\n";

struct Audited {
    cp: ControlPlane,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start() -> Audited {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, TOKENS).unwrap();
    let log = dir.path().join("audit/audit.log");
    let cp = ControlPlane::start_with(&[
        "--audit-policy-file",
        policy.to_str().unwrap(),
        "--audit-log-path",
        log.to_str().unwrap(),
        "--token-auth-file",
        tokens.to_str().unwrap(),
    ]);
    Audited { cp, log, _dir: dir }
}

fn events(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The events whose request URI starts with `uri` and whose user is `user`, once there are
/// `count` of them (they are written as responses complete, by a thread of their own).
fn wait_events(log: &Path, uri: &str, user: &str, count: usize) -> Vec<Value> {
    wait_for(
        &format!("{count} audit events of {user} on {uri}"),
        Duration::from_secs(10),
        || {
            let found: Vec<Value> = events(log)
                .into_iter()
                .filter(|e| {
                    e["requestURI"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(uri)
                        && e["user"]["username"].as_str().unwrap_or_default() == user
                })
                .collect();
            (found.len() >= count).then_some(found)
        },
    )
}

fn kubectl_as_token(cp: &ControlPlane, token: &str, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_with_token(token))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_request_is_recorded_with_its_user_object_and_outcome() {
    let a = start();
    a.cp.kubectl(&["get", "pods", "-n", "default"]).success();
    let list = wait_events(&a.log, "/api/v1/namespaces/default/pods", "admin", 1);
    let event = &list[0];
    assert_eq!(event["apiVersion"], "audit.k8s.io/v1", "{event}");
    assert_eq!(event["kind"], "Event");
    assert_eq!(event["level"], "Metadata");
    assert_eq!(event["stage"], "ResponseComplete");
    assert_eq!(event["verb"], "list");
    assert_eq!(
        event["user"],
        json!({"username": "admin", "groups": ["system:masters", "system:authenticated"]})
    );
    assert_eq!(
        event["objectRef"],
        json!({"resource": "pods", "namespace": "default", "apiVersion": "v1"})
    );
    assert_eq!(
        event["responseStatus"],
        json!({"metadata": {}, "code": 200})
    );
    assert_eq!(event["sourceIPs"], json!(["127.0.0.1"]));
    assert!(
        event["userAgent"].as_str().unwrap().starts_with("kubectl"),
        "{event}"
    );
    assert_eq!(
        event["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert!(uuid::Uuid::parse_str(event["auditID"].as_str().unwrap()).is_ok());
    assert!(event.get("requestObject").is_none() && event.get("responseObject").is_none());
    // omitStages: RequestReceived is left out.
    assert!(
        events(&a.log)
            .iter()
            .all(|e| e["stage"] != "RequestReceived")
    );
    // The policy's None rule: health checks are not recorded.
    assert!(a.cp.kubectl(&["get", "--raw", "/healthz"]).ok());
    a.cp.kubectl(&["get", "namespaces"]).success();
    wait_events(&a.log, "/api/v1/namespaces", "admin", 2);
    assert!(events(&a.log).iter().all(|e| e["requestURI"] != "/healthz"));
}

#[test]
fn the_request_and_response_levels_copy_the_objects() {
    let a = start();
    a.cp.kubectl_stdin(
        &["apply", "-n", "default", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: audited\ndata:\n  k: v\n",
    )
    .success();
    a.cp.kubectl(&["get", "configmap", "audited", "-n", "default", "-o", "json"])
        .success();
    // apply asks for the object first (404), then creates it.
    let events = wait_events(&a.log, "/api/v1/namespaces/default/configmaps", "admin", 3);
    let create = events
        .iter()
        .find(|e| e["verb"] == "create")
        .expect("the create");
    assert_eq!(create["level"], "RequestResponse");
    assert_eq!(
        create["requestObject"]["data"],
        json!({"k": "v"}),
        "{create}"
    );
    assert_eq!(create["responseObject"]["metadata"]["name"], "audited");
    assert_eq!(create["responseStatus"]["code"], 201);
    let get = events
        .iter()
        .find(|e| e["verb"] == "get" && e["responseStatus"]["code"] == 200)
        .expect("the get");
    assert_eq!(get["objectRef"]["name"], "audited");
    assert_eq!(get["responseObject"]["data"], json!({"k": "v"}), "{get}");
}

/// kubectl's typed clients write and read protobuf: the log still holds the objects, as JSON.
#[test]
fn protobuf_requests_and_responses_are_recorded_as_objects() {
    let a = start();
    a.cp.kubectl(&["create", "configmap", "typed", "--from-literal=k=v"])
        .success();
    a.cp.kubectl(&["create", "configmap", "typed", "--from-literal=k=v"])
        .failure();
    let events = wait_events(&a.log, "/api/v1/namespaces/default/configmaps", "admin", 2);
    let created = events
        .iter()
        .find(|e| e["responseStatus"]["code"] == 201)
        .expect("the create");
    assert_eq!(
        created["requestObject"]["data"],
        json!({"k": "v"}),
        "{created}"
    );
    assert_eq!(created["responseObject"]["metadata"]["name"], "typed");
    let conflict = events
        .iter()
        .find(|e| e["responseStatus"]["code"] == 409)
        .expect("the second create");
    assert_eq!(
        conflict["responseStatus"]["reason"], "AlreadyExists",
        "{conflict}"
    );
    assert_eq!(conflict["responseObject"]["kind"], "Status");
}

#[test]
fn refused_and_unauthenticated_requests_are_recorded_with_the_reason() {
    let a = start();
    // jane is authenticated but holds no role: 403.
    let out = kubectl_as_token(&a.cp, "jane-token", &["get", "secrets", "-n", "default"]);
    assert!(!out.status.success());
    let refused = wait_events(&a.log, "/api/v1/namespaces/default/secrets", "jane", 1);
    let event = &refused[0];
    assert_eq!(
        event["user"],
        json!({"username": "jane", "uid": "1001", "groups": ["dev", "system:authenticated"]})
    );
    assert_eq!(event["responseStatus"]["code"], 403, "{event}");
    assert_eq!(event["responseStatus"]["reason"], "Forbidden");
    assert!(
        event["responseStatus"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot list resource \"secrets\"")
    );
    assert_eq!(
        event["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );

    // A token nobody owns: 401, and the event has no user.
    let out = kubectl_as_token(&a.cp, "no-such-token", &["get", "pods", "-n", "default"]);
    assert!(!out.status.success());
    let failed = wait_for("the 401's event", Duration::from_secs(10), || {
        events(&a.log)
            .into_iter()
            .find(|e| e["responseStatus"]["code"] == 401)
    });
    assert_eq!(failed["user"], json!({}), "{failed}");
    assert_eq!(failed["responseStatus"]["reason"], "Unauthorized");
    assert!(failed.get("annotations").is_none(), "{failed}");
}

#[test]
fn impersonation_records_both_users() {
    let a = start();
    // The admin acts as jane, who may not list pods.
    let out = a.cp.kubectl(&[
        "get",
        "pods",
        "-n",
        "default",
        "--as",
        "jane",
        "--as-group",
        "dev",
    ]);
    assert!(!out.ok());
    let events = wait_events(&a.log, "/api/v1/namespaces/default/pods", "admin", 1);
    let event = &events[0];
    assert_eq!(event["user"]["username"], "admin");
    assert_eq!(event["impersonatedUser"]["username"], "jane", "{event}");
    assert_eq!(event["responseStatus"]["code"], 403);
}

#[test]
fn the_audit_id_is_the_response_header_and_the_log_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let a = start();
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(a.cp.kubeconfig())
        .args(["get", "nodes", "-v=8"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let headers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("Audit-Id: ").nth(1))
        .map(str::trim)
        .collect();
    let events = wait_events(&a.log, "/api/v1/nodes", "admin", 1);
    let id = events[0]["auditID"].as_str().unwrap();
    assert!(headers.contains(&id), "{id} not among {headers:?}:\n{text}");
    let mode = std::fs::metadata(&a.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_bad_policy_stops_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_apiary-control-plane"))
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--audit-policy-file", policy.to_str().unwrap()])
        .args([
            "--audit-log-path",
            dir.path().join("audit.log").to_str().unwrap(),
        ])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--audit-policy-file") && text.contains("Loud"),
        "{text}"
    );
    assert!(
        !dir.path().join("data/store.redb").exists(),
        "nothing was started"
    );
}

#[test]
fn a_watch_is_recorded_when_it_starts_and_when_it_ends() {
    let a = start();
    let watch =
        a.cp.kubectl_spawn(&["get", "configmaps", "-n", "kube-system", "-w"]);
    let started = wait_for("ResponseStarted", Duration::from_secs(10), || {
        events(&a.log)
            .into_iter()
            .find(|e| e["verb"] == "watch" && e["stage"] == "ResponseStarted")
    });
    assert_eq!(started["responseStatus"]["code"], 200, "{started}");
    let id = started["auditID"].clone();
    assert!(
        !events(&a.log)
            .iter()
            .any(|e| e["auditID"] == id && e["stage"] == "ResponseComplete"),
        "the watch is still open"
    );
    // The client goes away: the watch is complete.
    drop(watch);
    wait_for(
        "ResponseComplete of the watch",
        Duration::from_secs(10),
        || {
            events(&a.log)
                .into_iter()
                .find(|e| e["auditID"] == id && e["stage"] == "ResponseComplete")
        },
    );
}

#[test]
fn pod_security_audit_mode_annotates_the_event() {
    let a = start();
    a.cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: watched\n  labels:\n    pod-security.kubernetes.io/audit: baseline\n",
    )
    .success();
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || {
            a.cp.kubectl(&["get", "serviceaccount", "default", "-n", "watched"])
                .ok()
                .then_some(())
        },
    );
    a.cp.kubectl_stdin(
        &["apply", "-n", "watched", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  hostNetwork: true\n  containers:\n  - name: c\n    image: busybox\n",
    )
    .success();
    let created = wait_for("the pod's create event", Duration::from_secs(10), || {
        events(&a.log).into_iter().find(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "pods"
                && e["objectRef"]["namespace"] == "watched"
        })
    });
    assert_eq!(
        created["annotations"]["pod-security.kubernetes.io/audit-violations"],
        "would violate PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)",
        "{created}"
    );
}

#[test]
fn admission_policies_annotate_audit_events() {
    let a = start();
    a.cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: sizes}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}
  validations:
  - {expression: "size(object.data) <= 1", message: "one key at most"}
  auditAnnotations:
  - {key: keys, valueExpression: "string(size(object.data))"}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: sizes}
spec:
  policyName: sizes
  validationActions: [Audit]
"#,
    )
    .success();
    // An Audit binding lets a violation through and records it, with the annotation.
    let event = wait_for("an annotated create", Duration::from_secs(10), || {
        let name = format!("c{}", events(&a.log).len());
        a.cp.kubectl(&[
            "create",
            "configmap",
            &name,
            "--from-literal=a=1",
            "--from-literal=b=2",
        ])
        .success();
        events(&a.log).into_iter().find(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "configmaps"
                && e["annotations"]["sizes/keys"].is_string()
        })
    });
    assert_eq!(event["annotations"]["sizes/keys"], "2", "{event}");
    let failure = event["annotations"]["validation.policy.admission.k8s.io/validation_failure"]
        .as_str()
        .unwrap_or_default();
    assert!(failure.contains("one key at most"), "{event}");
}
