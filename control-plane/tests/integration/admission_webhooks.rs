//! Admission webhooks through the real kubectl: a mutating webhook changes what is created and
//! updated (also by controllers), a validating one refuses with its own code and message, the
//! rules and selectors decide what each sees, and `failurePolicy` what a webhook that cannot
//! answer means. The webhooks are HTTPS servers of the test, at a URL with a `caBundle`.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    ControlPlane,
    webhook::{Webhook, patch},
};

fn allowed() -> Value {
    json!({ "allowed": true })
}

/// A configuration of one webhook of `kind` at `url`, for `rules`, with `extra` fields.
fn configuration(kind: &str, name: &str, client: Value, rules: Value, extra: Value) -> String {
    let mut hook = json!({
        "name": name,
        "clientConfig": client,
        "rules": rules,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    });
    for (k, v) in extra.as_object().unwrap() {
        hook[k] = v.clone();
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": { "name": name },
        "webhooks": [hook],
    })
    .to_string()
}

fn url_client(webhook: &Webhook, path: &str) -> Value {
    json!({ "url": webhook.url(path), "caBundle": webhook.ca_bundle })
}

fn rule(operations: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!([{ "operations": operations, "apiGroups": groups, "apiVersions": ["v1"], "resources": resources }])
}

/// Applies a configuration and waits until the webhook is called (every API server learns of
/// configurations from a watch).
fn install(cp: &ControlPlane, manifest: &str, mut probe: impl FnMut() -> bool) {
    cp.kubectl_stdin(&["apply", "-f", "-"], manifest).success();
    support::wait_for("the webhook to be called", Duration::from_secs(10), || {
        probe().then_some(())
    });
}

#[test]
fn a_mutating_webhook_changes_what_clients_and_controllers_write() {
    let cp = ControlPlane::start();
    let hook = Webhook::start(Box::new(|request| {
        let mut ops = Vec::new();
        if request["object"]["metadata"]["labels"].is_null() {
            ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {}}));
        }
        ops.push(json!({"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}));
        let response = json!({
            "allowed": true, "patchType": "JSONPatch", "patch": patch(json!(ops)),
            "warnings": ["the webhook was here"],
        });
        (response, Duration::ZERO)
    }));
    let manifest = configuration(
        "MutatingWebhookConfiguration",
        "labels.apiary.test",
        url_client(&hook, "/mutate"),
        rule(
            &["CREATE", "UPDATE"],
            &["", "apps"],
            &["configmaps", "pods"],
        ),
        json!({}),
    );
    let mut n = 0;
    install(&cp, &manifest, || {
        n += 1;
        let name = format!("probe{n}");
        cp.kubectl(&["create", "configmap", &name]).success();
        !hook.reviews().is_empty()
    });
    let created = cp
        .kubectl(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
        ])
        .success_log();
    assert!(
        created.contains("Warning: the webhook was here"),
        "{created}"
    );
    let settings = cp.kubectl_json(&["get", "configmap", "settings", "-o", "json"]);
    assert_eq!(
        settings["metadata"]["labels"]["mutated"], "yes",
        "{settings}"
    );
    assert_eq!(settings["data"]["mode"], "fast");

    let review = hook
        .reviews()
        .into_iter()
        .rev()
        .find(|r| r["request"]["name"] == "settings")
        .expect("the webhook saw the create");
    let request = &review["request"];
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(request["operation"], "CREATE");
    assert_eq!(
        request["kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(
        request["resource"],
        json!({"group": "", "version": "v1", "resource": "configmaps"})
    );
    assert_eq!(request["namespace"], "default");
    assert_eq!(request["dryRun"], false);
    assert_eq!(request["options"]["kind"], "CreateOptions");
    assert!(request["oldObject"].is_null());
    let groups = request["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:masters"), "{request}");

    // An update is reviewed with the stored object as oldObject.
    cp.kubectl(&["label", "configmap", "settings", "tier=web"])
        .success();
    let update = hook
        .reviews()
        .into_iter()
        .rev()
        .find(|r| r["request"]["operation"] == "UPDATE")
        .expect("the webhook saw the update");
    assert_eq!(
        update["request"]["oldObject"]["metadata"]["labels"]["mutated"],
        "yes"
    );
    assert_eq!(
        update["request"]["object"]["metadata"]["labels"]["tier"],
        "web"
    );

    // A dry run is reviewed as one, and nothing is stored.
    let shown = cp.kubectl_json(&[
        "create",
        "configmap",
        "preview",
        "--dry-run=server",
        "-o",
        "json",
    ]);
    assert_eq!(shown["metadata"]["labels"]["mutated"], "yes");
    assert!(
        hook.reviews()
            .iter()
            .any(|r| r["request"]["name"] == "preview" && r["request"]["dryRun"] == true)
    );
    assert!(
        cp.kubectl(&["get", "configmap", "preview"])
            .failure()
            .contains("NotFound")
    );

    // Pods a ReplicaSet creates go through the webhook too, as the controllers' user.
    cp.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=localhost/busybox:latest",
    ])
    .success();
    let pod = support::wait_for("the deployment's pod", Duration::from_secs(20), || {
        support::pods(&cp, "app=web").into_iter().next()
    });
    assert_eq!(pod["metadata"]["labels"]["mutated"], "yes", "{pod}");
    let pod_review = hook
        .reviews()
        .into_iter()
        .find(|r| r["request"]["kind"]["kind"] == "Pod")
        .unwrap();
    assert_eq!(
        pod_review["request"]["userInfo"]["username"],
        "system:kube-controller-manager"
    );
}

#[test]
fn a_validating_webhook_refuses_with_its_code_and_message() {
    let cp = ControlPlane::start();
    let hook = Webhook::start(Box::new(|request| {
        let object = if request["operation"] == "DELETE" {
            &request["oldObject"]
        } else {
            &request["object"]
        };
        let response = if object["data"]["forbidden"].is_string() {
            json!({"allowed": false, "status": {"code": 403, "reason": "Forbidden",
                "message": "the key forbidden is not allowed"}})
        } else if request["operation"] == "DELETE"
            && object["metadata"]["labels"]["protected"] == "true"
        {
            json!({"allowed": false, "status": {"message": "protected objects stay"}})
        } else {
            allowed()
        };
        (response, Duration::ZERO)
    }));
    let manifest = configuration(
        "ValidatingWebhookConfiguration",
        "guard.apiary.test",
        url_client(&hook, "/validate"),
        rule(&["CREATE", "UPDATE", "DELETE"], &[""], &["configmaps"]),
        json!({"namespaceSelector": {"matchLabels": {"guarded": "yes"}}}),
    );
    cp.kubectl(&["create", "namespace", "guarded"]).success();
    cp.kubectl(&["label", "namespace", "guarded", "guarded=yes"])
        .success();
    install(&cp, &manifest, || {
        let _ = cp
            .kubectl(&["-n", "guarded", "create", "configmap", "probe"])
            .ok();
        !hook.reviews().is_empty()
    });

    let refused = cp
        .kubectl(&[
            "-n",
            "guarded",
            "create",
            "configmap",
            "bad",
            "--from-literal=forbidden=1",
        ])
        .failure();
    assert!(
        refused.contains(
            "admission webhook \"guard.apiary.test\" denied the request: the key forbidden is not allowed"
        ),
        "{refused}"
    );
    assert!(
        refused.contains("Forbidden") || refused.contains("forbidden"),
        "{refused}"
    );
    let status = cp
        .kubectl(&[
            "-n",
            "guarded",
            "get",
            "--raw",
            "/api/v1/namespaces/guarded/configmaps/bad",
        ])
        .failure();
    assert!(status.contains("NotFound"), "{status}");

    // The refusal's code reaches raw clients: 403, with the webhook's reason.
    let raw = cp
        .kubectl_stdin(
            &["create", "-f", "-", "-v=8"],
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "bad2", "namespace": "guarded"}, "data": {"forbidden": "x"}})
            .to_string(),
        )
        .failure();
    assert!(raw.contains("403 Forbidden"), "{raw}");

    // The namespace selector: an unlabelled namespace's objects are not sent.
    let before = hook.reviews().len();
    cp.kubectl(&["create", "configmap", "free", "--from-literal=forbidden=1"])
        .success();
    assert_eq!(hook.reviews().len(), before);

    // A delete is reviewed with the object as oldObject, and may be refused.
    cp.kubectl(&["-n", "guarded", "create", "configmap", "keep"])
        .success();
    cp.kubectl(&[
        "-n",
        "guarded",
        "label",
        "configmap",
        "keep",
        "protected=true",
    ])
    .success();
    let refused = cp
        .kubectl(&["-n", "guarded", "delete", "configmap", "keep"])
        .failure();
    assert!(
        refused.contains(
            "admission webhook \"guard.apiary.test\" denied the request: protected objects stay"
        ),
        "{refused}"
    );
    cp.kubectl(&["-n", "guarded", "get", "configmap", "keep"])
        .success();
    cp.kubectl(&["-n", "guarded", "label", "configmap", "keep", "protected-"])
        .success();
    cp.kubectl(&["-n", "guarded", "delete", "configmap", "keep"])
        .success();
}

#[test]
fn the_failure_policy_decides_what_an_unreachable_or_slow_webhook_means() {
    let cp = ControlPlane::start();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("https://{}/", closed.local_addr().unwrap());
    drop(closed);
    let fail = configuration(
        "ValidatingWebhookConfiguration",
        "down.apiary.test",
        json!({"url": closed_url}),
        rule(&["CREATE"], &[""], &["configmaps"]),
        json!({"failurePolicy": "Fail"}),
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &fail).success();
    let refused = support::wait_for(
        "the webhook to fail writes",
        Duration::from_secs(10),
        || {
            let out = cp.kubectl(&["create", "configmap", "x"]).outcome();
            (!out.0).then_some(out.1)
        },
    );
    assert!(
        refused.contains("Internal error occurred: failed calling webhook \"down.apiary.test\""),
        "{refused}"
    );
    // Under Ignore, the same webhook is skipped.
    let ignore = fail.replace("\"Fail\"", "\"Ignore\"");
    cp.kubectl_stdin(&["apply", "-f", "-"], &ignore).success();
    support::wait_for("the webhook to be ignored", Duration::from_secs(10), || {
        cp.kubectl(&["create", "configmap", "y"]).ok().then_some(())
    });
    // The configurations themselves are never sent to webhooks: a broken one can go.
    cp.kubectl_stdin(&["apply", "-f", "-"], &fail).success();
    cp.kubectl(&[
        "delete",
        "validatingwebhookconfiguration",
        "down.apiary.test",
    ])
    .success();

    // A webhook slower than its timeout fails the call once the timeout has passed.
    let slow = Webhook::start(Box::new(|_| (allowed(), Duration::from_secs(5))));
    let slow_config = configuration(
        "ValidatingWebhookConfiguration",
        "slow.apiary.test",
        url_client(&slow, "/"),
        rule(&["CREATE"], &[""], &["secrets"]),
        json!({"timeoutSeconds": 1}),
    );
    install(&cp, &slow_config, || {
        let _ = cp.kubectl(&["create", "secret", "generic", "probe"]).ok();
        !slow.reviews().is_empty()
    });
    let started = Instant::now();
    let refused = cp
        .kubectl(&["create", "secret", "generic", "late", "--from-literal=a=b"])
        .failure();
    let took = started.elapsed();
    assert!(refused.contains("context deadline exceeded"), "{refused}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn webhook_configurations_are_validated_as_kubernetes_validates_them() {
    let cp = ControlPlane::start();
    let bad = configuration(
        "MutatingWebhookConfiguration",
        "short",
        json!({"url": "http://example.invalid/"}),
        rule(&["PATCH"], &[""], &["pods"]),
        json!({"timeoutSeconds": 60, "sideEffects": "Some"}),
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &bad).failure();
    for want in [
        "webhooks[0].name: Invalid value: \"short\": should be a domain with at least three segments separated by dots",
        "webhooks[0].rules[0].operations[0]: Unsupported value: \"PATCH\"",
        "webhooks[0].timeoutSeconds: Invalid value: 60: the timeout value must be between 1 and 30 seconds",
        "webhooks[0].clientConfig.url: Invalid value: \"http://example.invalid/\": 'https' is the only allowed URL scheme",
        "webhooks[0].sideEffects: Unsupported value: \"Some\"",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    // Defaults as Kubernetes fills them in, and the table kubectl prints.
    let good = configuration(
        "MutatingWebhookConfiguration",
        "labels.apiary.test",
        json!({"service": {"namespace": "default", "name": "hook"}}),
        rule(&["CREATE"], &[""], &["nothing"]),
        json!({}),
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &good).success();
    let stored = cp.kubectl_json(&[
        "get",
        "mutatingwebhookconfiguration",
        "labels.apiary.test",
        "-o",
        "json",
    ]);
    let hook = &stored["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["matchPolicy"], "Equivalent");
    assert_eq!(hook["timeoutSeconds"], 10);
    assert_eq!(hook["reinvocationPolicy"], "Never");
    assert_eq!(hook["namespaceSelector"], json!({}));
    assert_eq!(hook["clientConfig"]["service"]["port"], 443);
    assert_eq!(hook["rules"][0]["scope"], "*");
    let table = cp
        .kubectl(&["get", "mutatingwebhookconfigurations"])
        .success();
    assert!(table.contains("WEBHOOKS"), "{table}");
    assert!(table.contains("labels.apiary.test   1"), "{table}");
}

#[test]
fn a_self_signed_ca_certificate_in_the_ca_bundle_is_trusted_as_kubernetes_trusts_it() {
    // What `openssl req -x509` makes: a certificate that is its own CA (basic constraints
    // CA:TRUE), served by the webhook and given as its caBundle.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        std::net::Ipv4Addr::LOCALHOST.into(),
    ));
    let cert = params.self_signed(&key).unwrap();
    let cp = ControlPlane::start();
    let hook = Webhook::start_with_certificate(
        Box::new(|_| (allowed(), Duration::ZERO)),
        &cert.pem(),
        &key.serialize_pem(),
    );
    let manifest = configuration(
        "ValidatingWebhookConfiguration",
        "self-signed.apiary.test",
        url_client(&hook, "/"),
        rule(&["CREATE"], &[""], &["configmaps"]),
        json!({}),
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &manifest).success();
    support::wait_for("the webhook to be called", Duration::from_secs(10), || {
        let (ok, out) = cp.kubectl(&["create", "configmap", "probe"]).outcome();
        assert!(ok || out.contains("AlreadyExists"), "{out}");
        (!hook.reviews().is_empty()).then_some(())
    });
    // Another certificate of the same name is not trusted.
    let other = Webhook::start(Box::new(|_| (allowed(), Duration::ZERO)));
    let pinned_elsewhere = json!({ "url": other.url("/"), "caBundle": hook.ca_bundle });
    let manifest = configuration(
        "ValidatingWebhookConfiguration",
        "self-signed.apiary.test",
        pinned_elsewhere,
        rule(&["CREATE"], &[""], &["configmaps"]),
        json!({}),
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &manifest).success();
    let refused = support::wait_for(
        "the untrusted webhook to fail",
        Duration::from_secs(10),
        || {
            let (ok, out) = cp.kubectl(&["create", "configmap", "untrusted"]).outcome();
            (!ok).then_some(out)
        },
    );
    assert!(refused.contains("failed calling webhook"), "{refused}");
    assert!(other.reviews().is_empty());
}
