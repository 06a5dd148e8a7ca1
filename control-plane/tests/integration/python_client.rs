//! End-to-end with the official Kubernetes Python client (`pip install kubernetes`, installed
//! by `cargo xtask setup`): a second real client beside kubectl, which reads what kubectl
//! does not (`/version/`, the status of a new object) and fails differently on what it misses.

use crate::support;

use std::process::Command;

use support::ControlPlane;

/// Runs `script` with the Python client configured from the test control plane's kubeconfig
/// (as `sys.argv[1]`); panics with its output unless it exits 0.
fn run_python(cp: &ControlPlane, script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(cp.kubeconfig())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    stdout
}

const PRELUDE: &str = r#"
import sys, time
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
config.load_kube_config(sys.argv[1])
core, apps = client.CoreV1Api(), client.AppsV1Api()

def eventually(what, check, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)
"#;

#[test]
fn the_official_python_client_works_against_the_api() {
    let cp = ControlPlane::start();
    let script = format!(
        "{PRELUDE}{}",
        r#"
# /version/ (with its slash) and discovery.
assert client.VersionApi().get_code().major == "1"
assert any(r.name == "pods" for r in core.get_api_resources().resources)
assert "apps" in [g.name for g in client.ApisApi().get_api_versions().groups]

core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
eventually("the default service account", lambda: [
    sa.metadata.name for sa in core.list_namespaced_service_account("py").items] == ["default"])

# A new object has a status, so reading a field of it works.
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[
                client.V1Container(name="web", image="localhost/busybox:latest")]))))
created = apps.create_namespaced_deployment("py", dep)
assert created.status is not None and created.status.available_replicas is None, created.status

# stringData is folded into data and not returned.
secret = core.create_namespaced_secret("py", client.V1Secret(
    metadata=client.V1ObjectMeta(name="s"), string_data={"password": "hunter2"}))
assert secret.data == {"password": "aHVudGVyMg=="} and secret.string_data is None, secret
assert core.read_namespaced_secret("s", "py").data == {"password": "aHVudGVyMg=="}

# Errors come back with Kubernetes' codes.
try:
    core.read_namespaced_config_map("nope", "py")
    raise AssertionError("no 404")
except ApiException as e:
    assert e.status == 404, e
try:
    core.create_namespaced_config_map("py", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="Bad_Name")))
    raise AssertionError("no 422")
except ApiException as e:
    assert e.status == 422 and "metadata.name" in e.body, e

# Patch, scale and watch.
core.create_namespaced_config_map("py", client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="c"), data={"a": "1"}))
core.patch_namespaced_config_map("c", "py", {"data": {"b": "2"}})
assert core.read_namespaced_config_map("c", "py").data == {"a": "1", "b": "2"}
assert apps.patch_namespaced_deployment_scale("web", "py", {"spec": {"replicas": 3}}).spec.replicas == 3
seen = [(e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core.list_namespaced_config_map, "py", timeout_seconds=1)]
assert ("ADDED", "c") in seen, seen
print("ok")
"#
    );
    assert!(run_python(&cp, &script).contains("ok"));
}

#[test]
fn the_python_client_drives_custom_resources_and_server_side_apply() {
    let cp = ControlPlane::start();
    let script = format!(
        "{PRELUDE}{}",
        r#"
ext = client.ApiextensionsV1Api()
custom = client.CustomObjectsApi()
ext.create_custom_resource_definition({
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "gadgets", "kind": "Gadget"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                 "subresources": {"status": {}},
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                     "spec": {"type": "object", "properties": {
                         "size": {"type": "integer", "maximum": 5},
                         "color": {"type": "string", "default": "red"}}},
                     "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}}}}]}})

def established():
    crd = ext.read_custom_resource_definition("gadgets.example.com")
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)
eventually("the CRD to be established", established)

args = ("example.com", "v1", "default", "gadgets")
created = custom.create_namespaced_custom_object(*args, {
    "apiVersion": "example.com/v1", "kind": "Gadget",
    "metadata": {"name": "g1", "labels": {"team": "a"}}, "spec": {"size": 2}})
assert created["spec"]["color"] == "red", created
try:
    custom.create_namespaced_custom_object(*args, {
        "apiVersion": "example.com/v1", "kind": "Gadget",
        "metadata": {"name": "g2"}, "spec": {"size": 9}})
    raise AssertionError("a size over the maximum was accepted")
except ApiException as e:
    assert e.status == 422 and "spec.size" in e.body, e.body

listed = custom.list_namespaced_custom_object(*args, label_selector="team=a")
assert [o["metadata"]["name"] for o in listed["items"]] == ["g1"]

custom.patch_namespaced_custom_object_status(*args, "g1", {"status": {"ok": True}})
assert custom.get_namespaced_custom_object(*args, "g1")["status"] == {"ok": True}

# A watch sees changes to custom objects.
w = watch.Watch()
seen = []
rv = listed["metadata"]["resourceVersion"]
custom.patch_namespaced_custom_object(*args, "g1", {"spec": {"size": 3}})
for event in w.stream(custom.list_namespaced_custom_object, *args,
                      resource_version=rv, timeout_seconds=5):
    seen.append((event["type"], event["object"]["spec"]["size"]))
    if event["object"]["spec"]["size"] == 3:
        w.stop()
assert ("MODIFIED", 3) in seen, seen

# Server-side apply from the Python client: a ConfigMap applied by two managers.
body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "1"}}
core.patch_namespaced_config_map("cfg", "default", body, field_manager="py-a",
    _content_type="application/apply-patch+yaml")
body["data"]["k"] = "2"
try:
    core.patch_namespaced_config_map("cfg", "default", body, field_manager="py-b",
        _content_type="application/apply-patch+yaml")
    raise AssertionError("a conflicting apply succeeded")
except ApiException as e:
    import json
    message = json.loads(e.body)["message"]
    assert e.status == 409 and 'conflict with "py-a" using v1: .data.k' in message, e.body
core.patch_namespaced_config_map("cfg", "default", body, field_manager="py-b", force=True,
    _content_type="application/apply-patch+yaml")
cm = core.read_namespaced_config_map("cfg", "default")
assert cm.data == {"k": "2"}
# py-a owned nothing else: its entry is gone.
assert [m.manager for m in cm.metadata.managed_fields] == ["py-b"], cm.metadata.managed_fields

ext.delete_custom_resource_definition("gadgets.example.com")
def gone():
    try:
        custom.list_namespaced_custom_object(*args)
        return False
    except ApiException as e:
        return e.status == 404
eventually("the custom resource to be gone", gone)
print("ok")
"#
    );
    assert!(run_python(&cp, &script).contains("ok"));
}

#[test]
fn the_python_client_manages_admission_policies_and_webhook_configurations() {
    let cp = ControlPlane::start();
    let script = format!(
        "{PRELUDE}{}",
        r#"
adm = client.AdmissionregistrationV1Api()
assert "admissionregistration.k8s.io" in [g.name for g in client.ApisApi().get_api_versions().groups]

policy = client.V1ValidatingAdmissionPolicy(
    metadata=client.V1ObjectMeta(name="max-replicas"),
    spec=client.V1ValidatingAdmissionPolicySpec(
        match_constraints=client.V1MatchResources(resource_rules=[client.V1NamedRuleWithOperations(
            api_groups=["apps"], api_versions=["v1"], operations=["CREATE"], resources=["deployments"])]),
        validations=[client.V1Validation(expression="object.spec.replicas <= 3",
            message="at most 3 replicas")]))
created = adm.create_validating_admission_policy(policy)
assert created.spec.failure_policy == "Fail", created.spec
adm.create_validating_admission_policy_binding(client.V1ValidatingAdmissionPolicyBinding(
    metadata=client.V1ObjectMeta(name="max-replicas"),
    spec=client.V1ValidatingAdmissionPolicyBindingSpec(policy_name="max-replicas",
        validation_actions=["Deny"])))
assert [p.metadata.name for p in adm.list_validating_admission_policy().items] == ["max-replicas"]

def deployment(name, replicas):
    labels = {"app": name}
    return client.V1Deployment(metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="localhost/busybox:latest")]))))

refusal = {}
def refused():
    try:
        apps.create_namespaced_deployment("default", deployment("big", 5))
        apps.delete_namespaced_deployment("big", "default")
        return False
    except ApiException as e:
        refusal["e"] = e
        return True
eventually("the policy to refuse", refused)
e = refusal["e"]
assert e.status == 422, e
assert "at most 3 replicas" in e.body, e.body
apps.create_namespaced_deployment("default", deployment("small", 2))

# A webhook configuration round-trips with Kubernetes' defaults.
hook = adm.create_mutating_webhook_configuration(client.V1MutatingWebhookConfiguration(
    metadata=client.V1ObjectMeta(name="labels.example.com"),
    webhooks=[client.V1MutatingWebhook(name="labels.example.com",
        client_config=client.AdmissionregistrationV1WebhookClientConfig(
            service=client.AdmissionregistrationV1ServiceReference(namespace="default", name="none")),
        rules=[client.V1RuleWithOperations(operations=["CREATE"], api_groups=[""],
            api_versions=["v1"], resources=["nothing"])],
        side_effects="None", admission_review_versions=["v1"])]))
w = hook.webhooks[0]
assert (w.failure_policy, w.timeout_seconds, w.reinvocation_policy) == ("Fail", 10, "Never"), w
assert w.client_config.service.port == 443
try:
    adm.create_validating_webhook_configuration(client.V1ValidatingWebhookConfiguration(
        metadata=client.V1ObjectMeta(name="bad"),
        webhooks=[client.V1ValidatingWebhook(name="bad",
            client_config=client.AdmissionregistrationV1WebhookClientConfig(url="http://x"),
            side_effects="None", admission_review_versions=["v1"])]))
    raise AssertionError("an invalid configuration was stored")
except ApiException as e:
    assert e.status == 422, e
    assert "'https' is the only allowed URL scheme" in e.body, e.body
print("ok")
"#
    );
    assert_eq!(run_python(&cp, &script).trim(), "ok");
}
