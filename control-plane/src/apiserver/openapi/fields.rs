//! The fields of a built-in object its kind's schema does not know: what `fieldValidation`
//! reports for the built-in kinds (kube-apiserver finds them decoding into its Go types).

use serde_json::Value;

use super::schemas::{Catalog, Gvk, REF_PREFIX};
use crate::apiserver::resources::ResourceType;

/// The paths (`spec.replicasx`, `spec.template.spec.containers[0].imagex`) of the fields in
/// `object` that `resource`'s schema has no place for, sorted; none for kinds without one.
pub fn unknown(catalog: &Catalog, resource: &ResourceType, object: &Value) -> Vec<String> {
    let gvk = Gvk {
        group: resource.group,
        version: resource.version,
        kind: resource.kind,
    };
    let Some(schema) = catalog
        .kinds
        .get(&gvk)
        .and_then(|published| catalog.definitions.get(&published.name))
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    walk(catalog, schema, object, "", &mut found);
    found.sort();
    found
}

/// The schema a reference (or an `allOf` of one, as described references are wrapped) names.
fn resolve<'c>(catalog: &'c Catalog, mut schema: &'c Value) -> &'c Value {
    // Definitions do not reference themselves directly: a few steps reach the target.
    for _ in 0..8 {
        let reference = schema["$ref"].as_str().or_else(|| {
            schema["allOf"]
                .as_array()
                .and_then(|all| all.first())
                .and_then(|first| first["$ref"].as_str())
        });
        let Some(target) = reference
            .and_then(|r| r.strip_prefix(REF_PREFIX))
            .and_then(|name| catalog.definitions.get(name))
        else {
            break;
        };
        schema = target;
    }
    schema
}

fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn walk(catalog: &Catalog, schema: &Value, value: &Value, path: &str, found: &mut Vec<String>) {
    let schema = resolve(catalog, schema);
    match value {
        Value::Object(fields) => {
            let additional = schema.get("additionalProperties");
            let Some(properties) = schema["properties"].as_object() else {
                // A map: its values have a schema of their own; anything else is free-form.
                if let Some(values) = additional.filter(|a| a.is_object()) {
                    for (name, v) in fields {
                        walk(catalog, values, v, &child(path, name), found);
                    }
                }
                return;
            };
            for (name, v) in fields {
                match properties.get(name) {
                    Some(sub) => walk(catalog, sub, v, &child(path, name), found),
                    None if additional.is_some_and(|a| a != &Value::Bool(false)) => {}
                    None => found.push(child(path, name)),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    walk(catalog, item_schema, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_are_found_at_any_depth_and_known_ones_are_not() {
        let catalog = Catalog::generate();
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "b"}, "annotations": {"x": "y"}},
            "spec": {
                "replicas": 1, "replicasx": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "web", "image": "busybox", "imagex": "typo",
                     "resources": {"limits": {"cpu": "1"}},
                     "ports": [{"containerPort": 80}]},
                ]}},
            },
        });
        let resource = &apiary_api::resource::DEPLOYMENTS;
        assert_eq!(
            unknown(&catalog, resource, &deployment),
            ["spec.replicasx", "spec.template.spec.containers[0].imagex"]
        );
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                         "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                             "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                      "default": {"anything": 1}}}}}}]},
        });
        let crds = &apiary_api::resource::CUSTOM_RESOURCE_DEFINITIONS;
        assert!(
            unknown(&catalog, crds, &crd).is_empty(),
            "{:?}",
            unknown(&catalog, crds, &crd)
        );
    }
}
