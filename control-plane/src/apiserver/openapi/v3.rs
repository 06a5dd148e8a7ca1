//! OpenAPI v3: the index (`/openapi/v3`) and one document per group version, each with the
//! paths of its resources and the schemas of its kinds and of every type they reference
//! (`components.schemas`), which `kubectl explain` reads.

use serde_json::{Map, Value, json};

use apiary_api::resource::RESOURCES;

use super::{
    PATCH_CONTENT_TYPES, WRITE_QUERY_PARAMETERS, item_path, operation_id,
    schemas::{Catalog, Gvk, REF_PREFIX},
};

const COMPONENTS_PREFIX: &str = "#/components/schemas/";

/// The served group versions, core first, in discovery order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// `api/v1`, `apis/apps/v1`: the document's path under `/openapi/v3/`.
pub fn path_of(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The URL of a document that names its hash.
pub fn url_of(path: &str, etag: &str) -> String {
    format!("/openapi/v3/{path}?hash={etag}")
}

/// The index: each document's URL with its hash.
pub fn index<'a>(documents: impl Iterator<Item = (&'a str, &'a str)>) -> Value {
    let paths: Map<String, Value> = documents
        .map(|(path, etag)| {
            (
                path.to_owned(),
                json!({ "serverRelativeURL": url_of(path, etag) }),
            )
        })
        .collect();
    json!({ "paths": paths })
}

/// The document of one group version.
pub fn document(catalog: &Catalog, group: &str, version: &str) -> Value {
    let kinds: Vec<(&Gvk, &str)> = catalog
        .kinds
        .iter()
        .filter(|(_, published)| published.served_in == (group, version))
        .map(|(gvk, published)| (gvk, published.name.as_str()))
        .collect();
    let schemas = components(catalog, kinds.iter().map(|(_, name)| *name));
    let mut paths = Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let kind = &catalog.kinds[&Gvk {
            group: r.group,
            version: r.version,
            kind: r.kind,
        }]
            .name;
        paths.insert(item_path(r), path_item(r, kind));
    }
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": "v1.32.0" },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

/// The v3 schemas of `roots` and of everything they reference.
fn components<'a>(
    catalog: &Catalog,
    roots: impl IntoIterator<Item = &'a str>,
) -> Map<String, Value> {
    catalog
        .closure(roots)
        .into_iter()
        .map(|name| {
            let schema =
                special_format(&name).unwrap_or_else(|| converted(&catalog.definitions[&name]));
            (name, schema)
        })
        .collect()
}

/// The operations of one object's path: PATCH (with every patch type and `fieldValidation`,
/// which tells kubectl the server validates fields) and PUT, with their kind's schema.
fn path_item(r: &apiary_api::resource::ResourceInfo, kind: &str) -> Value {
    let gvk = json!({ "group": r.group, "kind": r.kind, "version": r.version });
    let body = json!({ "schema": { "$ref": format!("{COMPONENTS_PREFIX}{kind}") } });
    let parameters: Vec<Value> = WRITE_QUERY_PARAMETERS
        .iter()
        .map(|name| json!({ "name": name, "in": "query", "schema": { "type": "string", "uniqueItems": true } }))
        .collect();
    let operation = |verb: &str, action: &str, content: Value| {
        json!({
            "operationId": operation_id(verb, r),
            "parameters": parameters,
            "requestBody": { "content": content, "required": true },
            "responses": { "200": { "description": "OK", "content": { "application/json": body } } },
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    let patch_content: Map<String, Value> = PATCH_CONTENT_TYPES
        .iter()
        .map(|ct| ((*ct).to_owned(), json!({ "schema": { "type": "object" } })))
        .collect();
    let mut path_parameters = vec![
        json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "uniqueItems": true } }),
    ];
    if r.namespaced {
        path_parameters.push(json!({ "name": "namespace", "in": "path", "required": true, "schema": { "type": "string", "uniqueItems": true } }));
    }
    json!({
        "parameters": path_parameters,
        "patch": operation("patch", "patch", Value::Object(patch_content)),
        "put": operation("replace", "put", json!({ "application/json": body })),
    })
}

/// The name kube-apiserver gives a custom kind's schema: the group reversed, the version and
/// the kind (`com.example.v1.Widget`).
pub fn custom_schema_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// The document of a custom group version: each kind's schema from its CRD, with `apiVersion`,
/// `kind` and `metadata` (ObjectMeta and what it references) as kube-apiserver adds them.
pub fn custom_document(
    catalog: &Catalog,
    kinds: &[std::sync::Arc<crate::apiserver::custom_resources::CustomVersion>],
) -> Value {
    const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
    let mut schemas = components(catalog, [OBJECT_META]);
    let mut paths = Map::new();
    for custom in kinds {
        let r = custom.info;
        let name = custom_schema_name(r.group, r.version, r.kind);
        let mut schema = custom.schema.clone();
        let metadata =
            json!({ "allOf": [{ "$ref": format!("{COMPONENTS_PREFIX}{OBJECT_META}") }] });
        as_object_of(&mut schema, r, metadata);
        paths.insert(item_path(r), path_item(r, &name));
        schemas.insert(name, schema);
    }
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes CRD Swagger", "version": "v0.1.0" },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

/// A custom kind's schema as kube-apiserver publishes it (v2 and v3 alike): with `apiVersion`,
/// `kind`, `metadata` (`metadata`: the document version's reference to ObjectMeta) and the
/// kind's group version kind.
pub(super) fn as_object_of(
    schema: &mut Value,
    r: &apiary_api::resource::ResourceInfo,
    mut metadata: Value,
) {
    if !schema["properties"].is_object() {
        schema["properties"] = json!({});
    }
    metadata["description"] = json!("Standard object's metadata.");
    let properties = &mut schema["properties"];
    properties["apiVersion"] = json!({ "type": "string", "description": "APIVersion defines the versioned schema of this representation of an object." });
    properties["kind"] = json!({ "type": "string", "description": "Kind is a string value representing the REST resource this object represents." });
    properties["metadata"] = metadata;
    schema["x-kubernetes-group-version-kind"] =
        json!([{ "group": r.group, "kind": r.kind, "version": r.version }]);
}

/// The types kube-openapi publishes with `oneOf` in v3 (their v2 form is a plain string).
fn special_format(name: &str) -> Option<Value> {
    let one_of = match name {
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            json!([{ "type": "string" }, { "type": "number" }])
        }
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            json!([{ "type": "integer" }, { "type": "string" }])
        }
        _ => return None,
    };
    let mut schema = Map::new();
    if let Some(description) = super::catalog().definitions[name].get("description") {
        schema.insert("description".to_owned(), description.clone());
    }
    if name.ends_with("IntOrString") {
        schema.insert("format".to_owned(), "int-or-string".into());
    }
    schema.insert("oneOf".to_owned(), one_of);
    Some(Value::Object(schema))
}

/// A stored (v2-form) schema in v3 form: references point into `components.schemas`, and a
/// reference with siblings (a field's own description) is wrapped in `allOf`, since OpenAPI
/// 3.0 ignores a `$ref`'s siblings, as kube-openapi wraps it.
fn converted(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: Map<String, Value> = map
                .iter()
                .filter(|(key, _)| key.as_str() != "$ref")
                .map(|(key, value)| (key.clone(), converted(value)))
                .collect();
            if let Some(Value::String(target)) = map.get("$ref") {
                let name = target.strip_prefix(REF_PREFIX).unwrap_or(target);
                let reference = json!({ "$ref": format!("{COMPONENTS_PREFIX}{name}") });
                if out.is_empty() {
                    return reference;
                }
                out.insert("allOf".to_owned(), json!([reference]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(converted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps() -> Value {
        document(super::super::catalog(), "apps", "v1")
    }

    #[test]
    fn documents_hold_their_kinds_and_only_resolvable_references() {
        for (group, version) in group_versions() {
            let doc = document(super::super::catalog(), group, version);
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            for r in RESOURCES
                .iter()
                .filter(|r| r.group == group && r.version == version)
            {
                let gvk = json!([{ "group": r.group, "kind": r.kind, "version": r.version }]);
                assert!(
                    schemas
                        .values()
                        .any(|s| s["x-kubernetes-group-version-kind"] == gvk),
                    "{group}/{version} {} has no schema",
                    r.kind
                );
            }
            let text = doc.to_string();
            assert!(!text.contains(REF_PREFIX), "v2 references left in {group}");
            let mut refs = Vec::new();
            collect_refs(&doc, &mut refs);
            for target in refs {
                let name = target
                    .strip_prefix(COMPONENTS_PREFIX)
                    .unwrap_or_else(|| panic!("{target} is not a component"));
                assert!(
                    schemas.contains_key(name),
                    "{group}/{version}: dangling {target}"
                );
            }
        }
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(target)) => out.push(target.clone()),
                        _ => collect_refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
            _ => {}
        }
    }

    #[test]
    fn described_references_are_wrapped_in_all_of() {
        let doc = apps();
        let spec =
            &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"];
        assert_eq!(
            spec["allOf"],
            json!([{ "$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec" }])
        );
        assert!(spec["description"].is_string());
        let strategy = &doc["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentStrategy"];
        assert!(strategy["properties"]["rollingUpdate"].is_object());
        assert!(strategy["properties"]["type"].is_object());
        // apps/v1 holds the kind of deployments' `scale` subresource.
        assert_eq!(
            doc["components"]["schemas"]["io.k8s.api.autoscaling.v1.Scale"]["x-kubernetes-group-version-kind"],
            json!([{ "group": "autoscaling", "kind": "Scale", "version": "v1" }])
        );
        let int_or_string =
            &doc["components"]["schemas"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
        assert_eq!(int_or_string["format"], "int-or-string");
        assert_eq!(int_or_string["oneOf"][0]["type"], "integer");
    }

    #[test]
    fn patch_operations_advertise_field_validation_for_their_kind() {
        let doc = apps();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({ "group": "apps", "kind": "Deployment", "version": "v1" })
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
    }
}
