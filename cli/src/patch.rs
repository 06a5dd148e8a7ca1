//! The three-way strategic merge patch of `apply`, as kubectl computes it: from the configuration
//! applied last time (`original`), the manifest now (`modified`) and the object on the server
//! (`current`), a patch that sets what the manifest sets, removes what the manifest no longer
//! has, and leaves alone what others (controllers, defaulting, other writers) added.

use apiary_api::strategic::{merge_key, merges_as_set};
use serde_json::{Map, Value};

/// The patch taking `current` to what `modified` asks for; an empty object if nothing changes.
/// `original` is the last applied configuration, if the object has one.
pub fn three_way(original: Option<&Value>, modified: &Value, current: &Value) -> Value {
    let empty = Map::new();
    let modified = modified.as_object().unwrap_or(&empty);
    let current = current.as_object().unwrap_or(&empty);
    Value::Object(diff_maps(
        original.and_then(Value::as_object),
        modified,
        current,
        "",
    ))
}

/// The patch of an object that is the value of the field `parent` (or an item of the list
/// `parent`).
fn diff_maps(
    original: Option<&Map<String, Value>>,
    modified: &Map<String, Value>,
    current: &Map<String, Value>,
    parent: &str,
) -> Map<String, Value> {
    let mut patch = Map::new();
    // Fields the last apply set that the manifest dropped: remove them, if they are still there.
    if let Some(original) = original {
        for key in original.keys() {
            if !modified.contains_key(key) && current.get(key).is_some_and(|v| !v.is_null()) {
                patch.insert(key.clone(), Value::Null);
            }
        }
    }
    for (key, want) in modified {
        let have = current.get(key);
        let had = original.and_then(|o| o.get(key));
        match (want, have) {
            (Value::Object(want), Some(Value::Object(have))) => {
                let sub = diff_maps(had.and_then(Value::as_object), want, have, key);
                if !sub.is_empty() {
                    patch.insert(key.clone(), Value::Object(sub));
                }
            }
            (Value::Array(want), Some(Value::Array(have))) => {
                diff_lists(
                    &mut patch,
                    key,
                    parent,
                    had.and_then(Value::as_array),
                    want,
                    have,
                );
            }
            (Value::Null, None | Some(Value::Null)) => {}
            (want, Some(have)) if equivalent(want, have) => {}
            (want, _) => {
                patch.insert(key.clone(), want.clone());
            }
        }
    }
    patch
}

/// Whether two values are the same once fields set to `null` are taken as absent (servers may
/// write out empty optional fields as `null`).
fn equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let set = |m: &Map<String, Value>| m.iter().filter(|(_, v)| !v.is_null()).count();
            set(a) == set(b)
                && a.iter()
                    .filter(|(_, v)| !v.is_null())
                    .all(|(k, v)| b.get(k).is_some_and(|w| equivalent(v, w)))
        }
        (Value::Array(a), Value::Array(b)) => equivalent_lists(a, b),
        _ => a == b,
    }
}

fn equivalent_lists(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equivalent(x, y))
}

/// Adds to `patch` what the list field `field` needs.
fn diff_lists(
    patch: &mut Map<String, Value>,
    field: &str,
    parent: &str,
    original: Option<&Vec<Value>>,
    modified: &[Value],
    current: &[Value],
) {
    if merges_as_set(field) {
        let removed: Vec<Value> = original
            .into_iter()
            .flatten()
            .filter(|item| !modified.contains(item) && current.contains(item))
            .cloned()
            .collect();
        if !removed.is_empty() {
            patch.insert(
                format!("$deleteFromPrimitiveList/{field}"),
                Value::Array(removed),
            );
        }
        if modified.iter().any(|item| !current.contains(item)) {
            patch.insert(field.to_owned(), Value::Array(modified.to_vec()));
        }
        return;
    }
    let keyed = merge_key(field, parent).filter(|key| {
        modified
            .iter()
            .chain(current)
            .all(|item| item.get(*key).is_some_and(|id| !id.is_null()))
    });
    let Some(key) = keyed else {
        if !equivalent_lists(modified, current) {
            patch.insert(field.to_owned(), Value::Array(modified.to_vec()));
        }
        return;
    };
    let find = |items: &[Value], id: &Value| items.iter().find(|i| &i[key] == id).cloned();
    let mut items = Vec::new();
    for gone in original.into_iter().flatten() {
        let id = &gone[key];
        if !id.is_null() && find(modified, id).is_none() && find(current, id).is_some() {
            items.push(serde_json::json!({ key: id, "$patch": "delete" }));
        }
    }
    for want in modified {
        let id = &want[key];
        let had = original.and_then(|o| find(o, id));
        match (want.as_object(), find(current, id)) {
            (Some(want_map), Some(Value::Object(have))) => {
                let mut sub = diff_maps(
                    had.as_ref().and_then(Value::as_object),
                    want_map,
                    &have,
                    field,
                );
                if !sub.is_empty() {
                    sub.insert(key.to_owned(), id.clone());
                    items.push(Value::Object(sub));
                }
            }
            _ => items.push(want.clone()),
        }
    }
    if !items.is_empty() {
        patch.insert(field.to_owned(), Value::Array(items));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nothing_to_do_gives_an_empty_patch() {
        let applied =
            json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"replicas": 2}});
        let mut current = applied.clone();
        current["metadata"]["uid"] = json!("123");
        current["status"] = json!({"replicas": 2});
        assert_eq!(three_way(Some(&applied), &applied, &current), json!({}));
    }

    #[test]
    fn changed_and_new_fields_are_set() {
        let original = json!({"spec": {"replicas": 2}});
        let modified =
            json!({"spec": {"replicas": 3, "paused": false}, "metadata": {"labels": {"a": "b"}}});
        let current =
            json!({"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"}}, "metadata": {}});
        assert_eq!(
            three_way(Some(&original), &modified, &current),
            json!({"spec": {"replicas": 3, "paused": false}, "metadata": {"labels": {"a": "b"}}})
        );
    }

    #[test]
    fn fields_dropped_from_the_manifest_are_removed_but_others_fields_are_kept() {
        let original = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let modified = json!({"metadata": {"labels": {"app": "web"}}});
        // `team` was added by someone else: apply leaves it.
        let current = json!({"metadata": {"labels": {"app": "web", "tier": "front", "team": "x"}}});
        assert_eq!(
            three_way(Some(&original), &modified, &current),
            json!({"metadata": {"labels": {"tier": null}}})
        );
        // Without a last-applied configuration nothing is known to remove.
        assert_eq!(three_way(None, &modified, &current), json!({}));
    }

    #[test]
    fn a_whole_map_dropped_is_removed() {
        let original = json!({"data": {"a": "1"}, "metadata": {"annotations": {"x": "y"}}});
        let modified = json!({"metadata": {}});
        let current = json!({"data": {"a": "1"}, "metadata": {"annotations": {"x": "y"}}});
        assert_eq!(
            three_way(Some(&original), &modified, &current),
            json!({"data": null, "metadata": {"annotations": null}})
        );
    }

    #[test]
    fn containers_merge_by_name_keeping_defaults_the_server_added() {
        let original = json!({"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "args": ["a"]},
            {"name": "sidecar", "image": "busybox"}]}});
        let modified = json!({"spec": {"containers": [
            {"name": "web", "image": "nginx:2"}]}});
        let current = json!({"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "args": ["a"], "imagePullPolicy": "IfNotPresent"},
            {"name": "sidecar", "image": "busybox", "imagePullPolicy": "Always"}]}});
        assert_eq!(
            three_way(Some(&original), &modified, &current),
            json!({"spec": {"containers": [
                {"name": "sidecar", "$patch": "delete"},
                {"name": "web", "image": "nginx:2", "args": null}]}})
        );
    }

    #[test]
    fn container_ports_merge_by_container_port_and_service_ports_by_port() {
        let modified = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let current =
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}});
        assert_eq!(three_way(Some(&modified), &modified, &current), json!({}));
        let modified = json!({"containers": [{"name": "a", "ports": [{"containerPort": 81}]}]});
        let current = json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]});
        assert_eq!(
            three_way(None, &modified, &current),
            json!({"containers": [{"name": "a", "ports": [{"containerPort": 81}]}]})
        );
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced_when_they_differ() {
        let original = json!({"spec": {"args": ["a", "b"]}});
        let modified = json!({"spec": {"args": ["a"]}});
        let current = json!({"spec": {"args": ["a", "b"]}});
        assert_eq!(
            three_way(Some(&original), &modified, &current),
            json!({"spec": {"args": ["a"]}})
        );
    }

    #[test]
    fn fields_the_server_writes_as_null_count_as_absent() {
        let modified = json!({"spec": {"ingress": [{"from": [{"podSelector": {}}]}]}});
        let current = json!({"spec": {"ingress": [{"from": [{"podSelector": {}}], "ports": null}], "egress": null}});
        assert_eq!(three_way(Some(&modified), &modified, &current), json!({}));
        let changed = json!({"spec": {"ingress": [{"from": [{"podSelector": {"matchLabels": {"a": "b"}}}]}]}});
        assert_eq!(
            three_way(Some(&modified), &changed, &current),
            json!({"spec": {"ingress": changed["spec"]["ingress"]}})
        );
    }

    #[test]
    fn finalizers_are_a_set() {
        let original = json!({"metadata": {"finalizers": ["a", "b"]}});
        let modified = json!({"metadata": {"finalizers": ["a"]}});
        let current = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
        assert_eq!(
            three_way(Some(&original), &modified, &current),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}})
        );
    }
}
