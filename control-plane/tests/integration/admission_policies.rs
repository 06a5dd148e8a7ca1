//! ValidatingAdmissionPolicy through the real kubectl: a bound policy's CEL validations refuse
//! what they fail (with Kubernetes' message and code), parameters come from the binding's
//! `paramRef`, `Warn` turns a violation into a warning, and policies and bindings are validated
//! and defaulted as Kubernetes does.

use crate::support;

use std::time::Duration;

use support::ControlPlane;

const REPLICA_POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: demo-policy.example.com}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [apps], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [deployments]}
  validations:
  - expression: object.spec.replicas <= 5
"#;

const REPLICA_BINDING: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: demo-binding-test.example.com}
spec:
  policyName: demo-policy.example.com
  validationActions: [Deny]
"#;

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: c, image: localhost/busybox:latest}}]
"#
    )
}

/// Waits until creating `manifest` fails (a new policy or binding is known from a watch), and
/// returns what kubectl said.
fn refused(cp: &ControlPlane, manifest: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "-f", "-"];
    args.extend_from_slice(extra);
    support::wait_for("the policy to refuse", Duration::from_secs(10), || {
        let (ok, out) = cp.kubectl_stdin(&args, manifest).outcome();
        (!ok).then_some(out)
    })
}

#[test]
fn a_bound_policy_refuses_what_its_validations_fail() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], REPLICA_POLICY)
        .success();
    // A policy alone does nothing: only bindings put it to work.
    cp.kubectl_stdin(&["create", "-f", "-"], &deployment("unbound", 6))
        .success();
    cp.kubectl_stdin(&["apply", "-f", "-"], REPLICA_BINDING)
        .success();
    let out = refused(&cp, &deployment("web", 6), &["-v=8"]);
    // What kubectl prints for it on Kubernetes too (the policy's documentation shows it).
    assert!(
        out.contains(
            "The deployments \"web\" is invalid: : ValidatingAdmissionPolicy 'demo-policy.example.com' with binding 'demo-binding-test.example.com' denied request: failed expression: object.spec.replicas <= 5"
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"deployments.apps \\\"web\\\" is forbidden: ValidatingAdmissionPolicy"#),
        "{out}"
    );
    assert!(out.contains("422 Unprocessable Entity"), "{out}");
    cp.kubectl_stdin(&["create", "-f", "-"], &deployment("small", 3))
        .success();
    // Updates are validated too.
    let scaled = cp
        .kubectl(&[
            "patch",
            "deployment",
            "small",
            "-p",
            r#"{"spec":{"replicas":9}}"#,
        ])
        .failure();
    assert!(scaled.contains("denied request"), "{scaled}");

    // A binding that only warns lets the write through, with kubectl printing the warning.
    cp.kubectl(&[
        "delete",
        "validatingadmissionpolicybinding",
        "demo-binding-test.example.com",
    ])
    .success();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &REPLICA_BINDING.replace("[Deny]", "[Warn, Audit]"),
    )
    .success();
    let warned = support::wait_for("the warning", Duration::from_secs(10), || {
        let n = rand_suffix();
        let out = cp
            .kubectl_stdin(&["create", "-f", "-"], &deployment(&format!("big{n}"), 7))
            .success_log();
        out.contains("Warning:").then_some(out)
    });
    assert!(
        warned.contains(
            "Warning: Validation failed for ValidatingAdmissionPolicy 'demo-policy.example.com' with binding 'demo-binding-test.example.com': failed expression: object.spec.replicas <= 5"
        ),
        "{warned}"
    );
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

#[test]
fn parameters_variables_and_conditions_shape_a_policy() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: replica-limit}
spec:
  failurePolicy: Fail
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - {apiGroups: [apps], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [deployments]}
  matchConditions:
  - name: not-exempt
    expression: "!has(object.metadata.labels) || !('exempt' in object.metadata.labels)"
  variables:
  - {name: limit, expression: "int(params.data.maxReplicas)"}
  validations:
  - expression: object.spec.replicas <= variables.limit
    messageExpression: "'replicas must be no greater than ' + string(variables.limit)"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: replica-limit-default}
spec:
  policyName: replica-limit
  paramRef: {name: limits, namespace: default}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {limited: "yes"}
"#,
    )
    .success();
    cp.kubectl(&["label", "namespace", "default", "limited=yes"])
        .success();
    // The parameter is missing and the binding defaults to `parameterNotFoundAction: Deny`.
    let out = refused(&cp, &deployment("web", 1), &[]);
    assert!(
        out.contains("no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{out}"
    );
    let binding = cp.kubectl_json(&[
        "get",
        "validatingadmissionpolicybinding",
        "replica-limit-default",
        "-o",
        "json",
    ]);
    assert_eq!(
        binding["spec"]["paramRef"]["parameterNotFoundAction"],
        "Deny"
    );

    cp.kubectl(&[
        "create",
        "configmap",
        "limits",
        "--from-literal=maxReplicas=2",
    ])
    .success();
    cp.kubectl_stdin(&["create", "-f", "-"], &deployment("web", 2))
        .success();
    let out = cp
        .kubectl_stdin(&["create", "-f", "-", "-v=8"], &deployment("wide", 3))
        .failure();
    assert!(
        out.contains("denied request: replicas must be no greater than 2"),
        "{out}"
    );
    assert!(out.contains("403 Forbidden"), "{out}");
    // The parameter is read at each request.
    cp.kubectl(&[
        "patch",
        "configmap",
        "limits",
        "-p",
        r#"{"data":{"maxReplicas":"3"}}"#,
    ])
    .success();
    cp.kubectl_stdin(&["create", "-f", "-"], &deployment("wide", 3))
        .success();
    // Match conditions exempt what they exclude; the namespace selector what it does not select.
    let exempt = deployment("exempt", 9).replace(
        "labels: {app: exempt}}",
        "labels: {app: exempt, exempt: \"true\"}}",
    );
    cp.kubectl_stdin(&["create", "-f", "-"], &exempt).success();
    cp.kubectl(&["create", "namespace", "free"]).success();
    cp.kubectl_stdin(&["-n", "free", "create", "-f", "-"], &deployment("huge", 9))
        .success();
}

#[test]
fn policies_and_bindings_are_validated_and_defaulted() {
    let cp = ControlPlane::start();
    let bad = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: broken}
spec:
  failurePolicy: Sometimes
  matchConstraints:
    resourceRules:
    - {apiGroups: [apps], apiVersions: [v1], operations: [PATCH], resources: [deployments]}
  validations:
  - expression: "object.spec.replicas <="
    reason: Teapot
"#;
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], bad).failure();
    for want in [
        "spec.failurePolicy: Unsupported value: \"Sometimes\"",
        "spec.matchConstraints.resourceRules[0].operations[0]: Unsupported value: \"PATCH\"",
        "spec.validations[0].expression: Invalid value: \"object.spec.replicas <=\": compilation failed",
        "spec.validations[0].reason: Unsupported value: \"Teapot\"",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    let bad_binding = REPLICA_BINDING.replace("[Deny]", "[Deny, Warn]");
    let out = cp
        .kubectl_stdin(&["apply", "-f", "-"], &bad_binding)
        .failure();
    assert!(out.contains("must not contain both Deny and Warn"), "{out}");
    let none = REPLICA_BINDING.replace("validationActions: [Deny]", "validationActions: []");
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &none).failure();
    assert!(
        out.contains("spec.validationActions: Required value"),
        "{out}"
    );

    cp.kubectl_stdin(&["apply", "-f", "-"], REPLICA_POLICY)
        .success();
    let policy = cp.kubectl_json(&[
        "get",
        "validatingadmissionpolicy",
        "demo-policy.example.com",
        "-o",
        "json",
    ]);
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConstraints"]["matchPolicy"],
        "Equivalent"
    );
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["scope"],
        "*"
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], REPLICA_BINDING)
        .success();
    let table = cp
        .kubectl(&[
            "get",
            "validatingadmissionpolicies,validatingadmissionpolicybindings",
        ])
        .success();
    assert!(table.contains("VALIDATIONS"), "{table}");
    assert!(table.contains("POLICYNAME"), "{table}");
    assert!(table.contains("demo-policy.example.com"), "{table}");
}

#[test]
fn a_policy_can_refuse_kubectl_exec() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: no-shells}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CONNECT], resources: [pods/exec]}
  validations:
  - expression: "!(object.command[0] in ['sh', 'bash'])"
    messageExpression: "'no shells in ' + request.name + ' for ' + request.userInfo.username"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: no-shells}
spec:
  policyName: no-shells
  validationActions: [Deny]
"#,
    )
    .success();
    cp.kubectl(&["run", "web", "--image=localhost/busybox:latest"])
        .success();
    let refused = support::wait_for("the policy to refuse exec", Duration::from_secs(10), || {
        let (_, out) = cp
            .kubectl(&["exec", "web", "--", "sh", "-c", "id"])
            .outcome();
        out.contains("denied request").then_some(out)
    });
    assert!(
        refused.contains("ValidatingAdmissionPolicy 'no-shells' with binding 'no-shells' denied request: no shells in web for"),
        "{refused}"
    );
    // Other commands pass admission (and then need the pod to be on a node).
    let (ok, out) = cp.kubectl(&["exec", "web", "--", "ls"]).outcome();
    assert!(!ok);
    assert!(!out.contains("denied request"), "{out}");
    assert!(out.contains("does not have a host assigned"), "{out}");
}
