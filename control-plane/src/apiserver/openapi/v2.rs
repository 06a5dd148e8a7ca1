//! OpenAPI v2 (Swagger 2.0): one document with every definition and the write paths of every
//! resource. kubectl validates a `kind: List` against it on the client (each item by its
//! kind's definition), since a List has no endpoint whose `fieldValidation` it could rely on.

use serde_json::{Map, Value, json};

use apiary_api::resource::RESOURCES;

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
        let reference = json!({ "$ref": format!("{REF_PREFIX}{kind}") });
        let gvk = json!({ "group": r.group, "kind": r.kind, "version": r.version });
        let mut parameters = vec![
            json!({ "name": "body", "in": "body", "required": true, "schema": { "type": "object" } }),
        ];
        parameters.extend(WRITE_QUERY_PARAMETERS.iter().map(
            |name| json!({ "name": name, "in": "query", "type": "string", "uniqueItems": true }),
        ));
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
        paths.insert(
            item_path(r),
            json!({
                "parameters": path_parameters,
                "patch": operation("patch", "patch", PATCH_CONTENT_TYPES),
                "put": operation("replace", "put", &["application/json"]),
            }),
        );
    }
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": "v1.32.0" },
        "paths": paths,
        "definitions": definitions,
    })
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
