//! CustomResourceDefinitions through the real kubectl: a CRD's kind is served once it is
//! written (discovery, short names, categories), its objects are pruned, defaulted and
//! validated by its schema, shown with its printer columns, and removed with it.

use crate::support;

use serde_json::Value;
use support::ControlPlane;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Mode, type: string, jsonPath: .spec.mode}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              mode: {type: string, enum: [fast, safe], default: safe}
              labels:
                type: object
                additionalProperties: {type: string}
          status:
            type: object
            properties:
              ready: {type: boolean}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

fn widget(name: &str, spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// Whether `kubectl <get>` stops finding the object within 10 s.
fn gone_within_10s(cp: &ControlPlane, get: &[&str]) -> bool {
    (0..100).any(|_| {
        let gone = !cp.kubectl(get).ok();
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        gone
    })
}

fn install(cp: &ControlPlane) {
    cp.kubectl_stdin(&["apply", "-f", "-"], CRD).success();
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ])
    .success();
}

#[test]
fn a_crd_is_established_and_its_kind_served_with_discovery_names() {
    let cp = ControlPlane::start();
    install(&cp);
    let crd = cp.kubectl_json(&["get", "crd", "widgets.example.com", "-o", "json"]);
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "Widget", "{crd}");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));
    assert!(
        crd["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "customresourcecleanup.apiextensions.k8s.io")
    );

    cp.kubectl_stdin(&["apply", "-f", "-"], &widget("w1", "{size: 3}"))
        .success();
    // Plural, singular, short name and category all reach it.
    for name in ["widgets", "widget", "wd", "widgets.example.com"] {
        let out = cp.kubectl(&["get", name, "-o", "name"]).success();
        assert_eq!(out.trim(), "widget.example.com/w1", "kubectl get {name}");
    }
    let all = cp.kubectl(&["get", "all", "-o", "name"]).success();
    assert!(all.contains("widget.example.com/w1"), "{all}");
    // Printer columns in the server's table; `date` columns become ages.
    let table = cp.kubectl(&["get", "widgets"]).success();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "MODE", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["w1", "3", "safe"], "{table}");
    // Every served version presents the same object as its own apiVersion.
    let beta = cp.kubectl_json(&["get", "widgets.v1beta1.example.com", "w1", "-o", "json"]);
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");
    assert_eq!(beta["spec"]["size"], 3);
    // Label selectors work as for built-ins.
    cp.kubectl(&["label", "widget", "w1", "tier=front"])
        .success();
    let selected = cp
        .kubectl(&["get", "wd", "-l", "tier=front", "-o", "name"])
        .success();
    assert_eq!(selected.trim(), "widget.example.com/w1");
    assert!(
        cp.kubectl(&["get", "wd", "-l", "tier=back", "-o", "name"])
            .success()
            .trim()
            .is_empty()
    );
}

#[test]
fn the_schema_prunes_defaults_and_refuses_with_field_paths() {
    let cp = ControlPlane::start();
    install(&cp);
    // kubectl validates strictly by default (fieldValidation=Strict): the unknown field fails.
    let out = cp
        .kubectl_stdin(&["apply", "-f", "-"], &widget("w1", "{size: 2, bogus: 1}"))
        .failure();
    assert!(out.contains(r#"unknown field "spec.bogus""#), "{out}");
    // Without validation it is pruned, and the default is filled in.
    cp.kubectl_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &widget("w1", "{size: 2, bogus: 1}"),
    )
    .success();
    let stored = cp.kubectl_json(&["get", "widget", "w1", "-o", "json"]);
    assert!(stored["spec"].get("bogus").is_none(), "{stored}");
    assert_eq!(stored["spec"]["mode"], "safe");

    let out = cp
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &widget("w2", "{size: 11, mode: turbo}"),
        )
        .failure();
    assert!(
        out.contains(
            "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"spec.mode: Unsupported value: "turbo""#),
        "{out}"
    );
    let out = cp
        .kubectl_stdin(&["apply", "-f", "-"], &widget("w3", "{mode: fast}"))
        .failure();
    assert!(out.contains("spec.size: Required value"), "{out}");
    assert!(!cp.kubectl(&["get", "widget", "w2"]).ok());
}

#[test]
fn status_is_a_subresource_and_generation_counts_spec_changes() {
    let cp = ControlPlane::start();
    install(&cp);
    // Status sent on create is dropped: it is the status subresource's.
    cp.kubectl_stdin(
        &["create", "-f", "-"],
        &format!("{}status: {{ready: true}}\n", widget("w1", "{size: 1}")),
    )
    .success();
    let created = cp.kubectl_json(&["get", "widget", "w1", "-o", "json"]);
    assert!(created.get("status").is_none(), "{created}");
    assert_eq!(created["metadata"]["generation"], 1);

    cp.kubectl(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":true}}"#,
    ])
    .success();
    let patched = cp.kubectl_json(&["get", "widget", "w1", "-o", "json"]);
    assert_eq!(patched["status"]["ready"], true);
    assert_eq!(
        patched["metadata"]["generation"], 1,
        "a status write is no new generation"
    );

    // A main-resource write keeps status and bumps the generation.
    cp.kubectl(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":5},"status":{"ready":false}}"#,
    ])
    .success();
    let updated = cp.kubectl_json(&["get", "widget", "w1", "-o", "json"]);
    assert_eq!(updated["spec"]["size"], 5);
    assert_eq!(updated["status"]["ready"], true);
    assert_eq!(updated["metadata"]["generation"], 2);
    // A label is metadata: no new generation.
    cp.kubectl(&["label", "widget", "w1", "a=b"]).success();
    let labelled = cp.kubectl_json(&["get", "widget", "w1", "-o", "json"]);
    assert_eq!(labelled["metadata"]["generation"], 2);
}

#[test]
fn deleting_a_crd_removes_its_objects_and_its_kind() {
    let cp = ControlPlane::start();
    install(&cp);
    cp.kubectl(&["create", "namespace", "other"]).ok();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n",
    )
    .success();
    cp.kubectl_stdin(&["apply", "-f", "-"], &widget("w1", "{size: 1}"))
        .success();
    cp.kubectl_stdin(
        &["apply", "-n", "other", "-f", "-"],
        &widget("w2", "{size: 2}"),
    )
    .success();
    cp.kubectl(&["delete", "crd", "widgets.example.com", "--timeout=30s"])
        .success();
    // kubectl names the resource from its discovery cache or finds it gone from discovery;
    // either way the server serves it no more.
    let out = cp.kubectl(&["get", "widgets"]).failure();
    assert!(
        out.contains("the server could not find the requested resource")
            || out.contains("the server doesn't have a resource type"),
        "{out}"
    );
    // Created again, it starts empty: the objects went with it, in every namespace.
    install(&cp);
    let listed: Value = cp.kubectl_json(&["get", "widgets", "-A", "-o", "json"]);
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");
}

#[test]
fn bad_crds_are_refused() {
    let cp = ControlPlane::start();
    let wrong_name = CRD.replace("name: widgets.example.com", "name: gadgets.example.com");
    let out = cp
        .kubectl_stdin(&["apply", "-f", "-"], &wrong_name)
        .failure();
    assert!(out.contains("metadata.name: Invalid value"), "{out}");
    let untyped = CRD.replace(
        "              size: {type: integer,",
        "              size: {",
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &untyped).failure();
    assert!(
        out.contains("openAPIV3Schema.properties[spec].properties[size].type: Required value"),
        "{out}"
    );
    let shadowing = CRD
        .replace("widgets.example.com", "pods.example.com")
        .replace("plural: widgets", "plural: pods");
    let out = cp
        .kubectl_stdin(&["apply", "-f", "-"], &shadowing)
        .failure();
    assert!(out.contains("built-in resource"), "{out}");
    assert!(!cp.kubectl(&["get", "crd", "gadgets.example.com"]).ok());
}

#[test]
fn kubectl_explain_reads_a_custom_kinds_schema() {
    let cp = ControlPlane::start();
    install(&cp);
    let out = cp.kubectl(&["explain", "widget.spec"]).success();
    assert!(out.contains("GROUP:      example.com"), "{out}");
    assert!(out.contains("size") && out.contains("mode"), "{out}");
    let out = cp.kubectl(&["explain", "widgets.spec.mode"]).success();
    assert!(
        out.contains("enum: fast, safe") || out.contains("<string>"),
        "{out}"
    );
}

#[test]
fn custom_objects_page_and_are_garbage_collected_with_their_owners() {
    let cp = ControlPlane::start();
    install(&cp);
    for i in 0..5 {
        cp.kubectl_stdin(
            &["apply", "-f", "-"],
            &widget(&format!("w{i}"), "{size: 1}"),
        )
        .success();
    }
    // kubectl pages with limit/continue: 5 objects in chunks of 2.
    let out = cp
        .kubectl(&["get", "widgets", "--chunk-size=2", "-o", "name", "-v=6"])
        .success();
    assert_eq!(out.lines().count(), 5, "{out}");

    // A custom object owned by a ConfigMap goes with it, and a ConfigMap owned by a custom
    // object goes with that.
    let owner = cp.kubectl_json(&["get", "widget", "w0", "-o", "json"]);
    let owned_by_widget = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child\n  ownerReferences:\n  - {{apiVersion: example.com/v1, kind: Widget, name: w0, uid: {}}}\n",
        owner["metadata"]["uid"].as_str().unwrap()
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &owned_by_widget)
        .success();
    cp.kubectl(&["delete", "widget", "w0"]).success();
    assert!(
        gone_within_10s(&cp, &["get", "configmap", "child"]),
        "the ConfigMap owned by a deleted Widget was not collected"
    );

    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: parent}\n",
    )
    .success();
    let parent = cp.kubectl_json(&["get", "configmap", "parent", "-o", "json"]);
    let owned_by_configmap = format!(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w9\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: parent, uid: {}}}\nspec: {{size: 1}}\n",
        parent["metadata"]["uid"].as_str().unwrap()
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &owned_by_configmap)
        .success();
    cp.kubectl(&["delete", "configmap", "parent"]).success();
    assert!(
        gone_within_10s(&cp, &["get", "widget", "w9"]),
        "the Widget owned by a deleted ConfigMap was not collected"
    );
}

#[test]
fn cel_validation_rules_are_enforced_with_transition_rules_on_updates() {
    let cp = ControlPlane::start();
    let crd = CRD.replace(
        "            required: [size]\n",
        "            required: [size]\n            x-kubernetes-validations:\n            - {rule: \"self.size <= 5 || self.mode == 'fast'\", message: big widgets must be fast}\n            - {rule: \"self.size >= oldSelf.size\", message: size may not shrink}\n",
    );
    assert_ne!(crd, CRD);
    cp.kubectl_stdin(&["apply", "-f", "-"], &crd).success();
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ])
    .success();
    let out = cp
        .kubectl_stdin(&["apply", "-f", "-"], &widget("w1", "{size: 8}"))
        .failure();
    assert!(
        out.contains(r#"spec: Invalid value: "object": big widgets must be fast"#),
        "{out}"
    );
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &widget("w1", "{size: 8, mode: fast}"),
    )
    .success();
    // A transition rule judges an update against the value it replaces.
    let out = cp
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &widget("w1", "{size: 4, mode: fast}"),
        )
        .failure();
    assert!(out.contains("size may not shrink"), "{out}");
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &widget("w1", "{size: 9, mode: fast}"),
    )
    .success();

    // A rule that does not compile is refused with the CRD.
    let broken = crd.replace("self.size >= oldSelf.size", "self.size >=");
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &broken).failure();
    assert!(out.contains("compilation failed"), "{out}");
}

#[tokio::test]
async fn openapi_v2_describes_custom_kinds_for_kubectl() {
    let cp = ControlPlane::start();
    install(&cp);
    // kubectl validates a List against /openapi/v2 on the client: a custom item in it must be
    // described there, and a typo in it found.
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {{name: c1}}\n",
        serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "listed"}, "spec": {"size": 2}})
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &list).success();
    let widget = cp.kubectl_json(&["get", "widget", "listed", "-o", "json"]);
    assert_eq!(widget["spec"]["size"], 2);

    let client = cp.https_client();
    let swagger: serde_json::Value = client
        .get(format!("https://{}/openapi/v2", cp.server_addr()))
        .bearer_auth(cp.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let definition = &swagger["definitions"]["com.example.v1.Widget"];
    assert_eq!(
        definition["x-kubernetes-group-version-kind"],
        serde_json::json!([{"group": "example.com", "kind": "Widget", "version": "v1"}])
    );
    assert_eq!(
        definition["properties"]["spec"]["properties"]["size"]["type"],
        "integer"
    );
    assert_eq!(
        definition["properties"]["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert!(
        swagger["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["put"]
            .is_object()
    );
    // Built-in kinds are still there.
    assert!(swagger["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
}

#[test]
fn a_watch_shows_the_printer_columns() {
    let cp = ControlPlane::start();
    install(&cp);
    cp.kubectl_stdin(&["apply", "-f", "-"], &widget("w1", "{size: 4}"))
        .success();
    let mut watch = cp.kubectl_spawn(&["get", "widgets", "-w"]);
    let seen = watch.read_until(|out| out.contains("w1"), 20);
    let header: Vec<&str> = seen.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "MODE", "AGE"], "{seen}");
    cp.kubectl(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":7}}"#,
    ])
    .success();
    let seen = watch.read_until(
        |out| {
            out.lines()
                .any(|l| l.starts_with("w1") && l.contains(" 7 "))
        },
        20,
    );
    assert!(seen.contains("safe"), "{seen}");
}
