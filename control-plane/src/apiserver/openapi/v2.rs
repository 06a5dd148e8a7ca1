//! OpenAPI v2 (Swagger 2.0): one document with every definition and the write paths of every
//! resource. kubectl validates a `kind: List` against it on the client (each item by its
//! kind's definition), since a List has no endpoint whose `fieldValidation` it could rely on.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use apiary_api::resource::{RESOURCES, ResourceInfo as ResourceType};

use crate::apiserver::custom_resources::CustomVersion;

use super::{
    PATCH_CONTENT_TYPES, WRITE_QUERY_PARAMETERS, item_path, operation_id,
    schemas::{Catalog, Gvk, REF_PREFIX},
};

/// The Swagger 2.0 document.
pub fn document(catalog: &Catalog) -> Value {
    let definitions: Map<String, Value> = catalog
        .definitions
        .iter()
        .map(|(name, schema)| {
            let schema = special_format(name, schema).unwrap_or_else(|| schema.clone());
            (name.clone(), schema)
        })
        .collect();
    let mut paths = Map::new();
    for r in RESOURCES {
        let kind = &catalog.kinds[&Gvk {
            group: r.group,
            version: r.version,
            kind: r.kind,
        }]
            .name;
        paths.insert(item_path(r), path_item(r, kind));
    }
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": "v1.32.0" },
        "paths": paths,
        "definitions": definitions,
    })
}

/// The write operations of one object of `r`, whose definition is `definition`.
fn path_item(r: &ResourceType, definition: &str) -> Value {
    let reference = json!({ "$ref": format!("{REF_PREFIX}{definition}") });
    let gvk = json!({ "group": r.group, "kind": r.kind, "version": r.version });
    let mut parameters = vec![
        json!({ "name": "body", "in": "body", "required": true, "schema": { "type": "object" } }),
    ];
    parameters.extend(
        WRITE_QUERY_PARAMETERS.iter().map(
            |name| json!({ "name": name, "in": "query", "type": "string", "uniqueItems": true }),
        ),
    );
    let operation = |verb: &str, action: &str, consumes: &[&str]| {
        json!({
            "consumes": consumes,
            "operationId": operation_id(verb, r),
            "parameters": parameters,
            "produces": ["application/json", "application/yaml"],
            "responses": { "200": { "description": "OK", "schema": reference } },
            "schemes": ["https"],
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    let mut path_parameters = vec![
        json!({ "name": "name", "in": "path", "required": true, "type": "string", "uniqueItems": true }),
    ];
    if r.namespaced {
        path_parameters.push(json!({ "name": "namespace", "in": "path", "required": true, "type": "string", "uniqueItems": true }));
    }
    json!({
        "parameters": path_parameters,
        "patch": operation("patch", "patch", PATCH_CONTENT_TYPES),
        "put": operation("replace", "put", &["application/json"]),
    })
}

/// The built-in document `base` with the custom kinds served now: each kind's schema from its
/// CRD in the form kube-apiserver publishes in v2 (what Swagger 2.0 cannot say dropped), with
/// `apiVersion`, `kind` and `metadata`.
pub fn with_custom(base: &Value, kinds: &[Arc<CustomVersion>]) -> Value {
    let mut document = base.clone();
    for custom in kinds {
        let r = custom.info;
        let name = super::v3::custom_schema_name(r.group, r.version, r.kind);
        let mut schema = custom.schema.clone();
        to_v2(&mut schema);
        let metadata = json!({ "$ref": format!("{REF_PREFIX}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta") });
        super::v3::as_object_of(&mut schema, r, metadata);
        document["paths"][item_path(r)] = path_item(r, &name);
        document["definitions"][name] = schema;
    }
    document
}

/// A structural schema in Swagger 2.0's terms, as kube-apiserver's `ToStructuralOpenAPIV2`:
/// no `nullable`, no `oneOf`/`anyOf`/`allOf`/`not`, and no type on an int-or-string node (it
/// may be either).
fn to_v2(schema: &mut Value) {
    let Some(node) = schema.as_object_mut() else {
        return;
    };
    for keyword in ["nullable", "oneOf", "anyOf", "allOf", "not"] {
        node.remove(keyword);
    }
    if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        node.remove("type");
    }
    if let Some(properties) = node.get_mut("properties").and_then(Value::as_object_mut) {
        properties.values_mut().for_each(to_v2);
    }
    for child in ["items", "additionalProperties"] {
        if let Some(child) = node.get_mut(child) {
            to_v2(child);
        }
    }
}

/// kube-openapi's v2 form of the types that hold a number or a string: a string.
fn special_format(name: &str, schema: &Value) -> Option<Value> {
    let mut out = match name {
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => json!({ "type": "string" }),
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            json!({ "format": "int-or-string", "type": "string" })
        }
        _ => return None,
    };
    if let Some(description) = schema.get("description") {
        out["description"] = description.clone();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_schemas_lose_what_swagger_2_cannot_say() {
        let mut schema = json!({"type": "object", "properties": {
            "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}], "type": "string"},
            "note": {"type": "string", "nullable": true},
            "items": {"type": "array", "items": {"type": "object", "oneOf": [{"required": ["a"]}],
                "properties": {"a": {"type": "string", "nullable": true}}}},
        }});
        to_v2(&mut schema);
        assert_eq!(
            schema,
            json!({"type": "object", "properties": {
                "port": {"x-kubernetes-int-or-string": true},
                "note": {"type": "string"},
                "items": {"type": "array", "items": {"type": "object",
                    "properties": {"a": {"type": "string"}}}},
            }})
        );
    }

    #[test]
    fn every_kind_is_defined_with_its_gvk_and_every_reference_resolves() {
        let doc = document(super::super::catalog());
        let definitions = doc["definitions"].as_object().unwrap();
        let pod = &definitions["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{ "group": "", "kind": "Pod", "version": "v1" }])
        );
        assert_eq!(
            pod["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.PodSpec"
        );
        for r in RESOURCES {
            let gvk = json!([{ "group": r.group, "kind": r.kind, "version": r.version }]);
            assert!(
                definitions
                    .values()
                    .any(|d| d["x-kubernetes-group-version-kind"] == gvk),
                "{}",
                r.kind
            );
        }
        super::super::schemas::for_each_ref(&doc, &mut |target| {
            assert!(definitions.contains_key(target), "dangling {target}");
        });
        assert_eq!(
            definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"]["type"],
            "string"
        );
    }
}
