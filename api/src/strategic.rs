//! Strategic merge patch (`application/strategic-merge-patch+json`), as `kubectl apply`, `edit`,
//! `label`, `scale` … send for built-in types: a JSON merge patch in which lists of objects that
//! have a merge key (containers by `name`, container ports by `containerPort`, …) are merged item
//! by item instead of replaced, with the `$patch`, `$deleteFromPrimitiveList` and
//! `$setElementOrder` directives.

use serde_json::{Map, Value};

/// The merge key of a list field, given the field and the field that holds it: lists with one
/// merge item by item, the others are replaced whole (the server's patching and `apply`'s
/// three-way diff share this table).
pub fn merge_key(field: &str, parent: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            "containerPort"
        }
        "ports" => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars that merge as sets instead of being replaced.
pub fn merges_as_set(field: &str) -> bool {
    field == "finalizers"
}

/// Applies `patch` to `target` in place.
pub fn merge(target: &mut Value, patch: &Value) {
    merge_value(target, patch, "");
}

/// Merges `patch` into `target`, the value of the field named `field`.
fn merge_value(target: &mut Value, patch: &Value, field: &str) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let object = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(list_field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(remove)) =
                (object.get_mut(list_field), value)
            {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        match value {
            Value::Null => {
                object.remove(key);
            }
            Value::Array(patch_items) => {
                let current = object.entry(key.clone()).or_insert(Value::Null);
                merge_list(current, patch_items, key, field);
            }
            Value::Object(_) => {
                merge_value(object.entry(key.clone()).or_insert(Value::Null), value, key)
            }
            scalar => {
                object.insert(key.clone(), scalar.clone());
            }
        }
    }
}

/// Merges a patch list into the list field `field` of an object that is itself the value of
/// `parent`.
fn merge_list(current: &mut Value, patch_items: &[Value], field: &str, parent: &str) {
    let Value::Array(items) = current else {
        *current = Value::Array(strip_directives(patch_items));
        return;
    };
    if merges_as_set(field) {
        for item in patch_items {
            if !items.contains(item) {
                items.push(item.clone());
            }
        }
        return;
    }
    let Some(key) = merge_key(field, parent) else {
        *current = Value::Array(strip_directives(patch_items));
        return;
    };
    for patch_item in patch_items {
        let id = &patch_item[key];
        let position = items
            .iter()
            .position(|item| &item[key] == id && !id.is_null());
        let delete = patch_item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                items.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => merge_value(&mut items[i], patch_item, field),
            (None, false) => {
                let mut new_item = Value::Null;
                merge_value(&mut new_item, patch_item, field);
                items.push(new_item);
            }
        }
    }
}

fn strip_directives(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .filter(|item| item.get("$patch").and_then(Value::as_str) != Some("delete"))
        .map(|item| {
            let mut item = item.clone();
            if let Some(object) = item.as_object_mut() {
                object.remove("$patch");
            }
            item
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn containers_merge_by_name_and_ports_by_container_port() {
        let mut deployment = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "busybox:1", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "sidecar", "image": "busybox:1"}
        ]}}}});
        merge(
            &mut deployment,
            &json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
                "containers": [{"name": "web", "image": "busybox:2",
                                "ports": [{"containerPort": 8080}]}]
            }}}}),
        );
        let containers = &deployment["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "busybox:2");
        assert_eq!(
            containers[0]["ports"].as_array().unwrap().len(),
            2,
            "ports merged by key"
        );
        assert_eq!(containers[1]["image"], "busybox:1", "sidecar untouched");
    }

    #[test]
    fn directives_delete_items_and_null_removes_fields() {
        let mut pod = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
                             "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        merge(
            &mut pod,
            &json!({
                "metadata": {"labels": {"a": null, "c": "3"}, "$deleteFromPrimitiveList/finalizers": ["x"]},
                "spec": {"containers": [{"name": "b", "$patch": "delete"}]}
            }),
        );
        assert_eq!(pod["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(pod["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(pod["spec"]["containers"], json!([{"name": "a"}]));
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced() {
        let mut pod = json!({"spec": {"tolerations": [{"key": "a"}]}});
        merge(&mut pod, &json!({"spec": {"tolerations": [{"key": "b"}]}}));
        assert_eq!(pod["spec"]["tolerations"], json!([{"key": "b"}]));
    }
}
