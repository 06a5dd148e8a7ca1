//! Structural schemas (`openAPIV3Schema` of a CustomResourceDefinition version), as
//! apiextensions-apiserver applies them to custom objects: [`prune`] unknown fields and nulls,
//! [`default`] missing fields, then [`validate`] types, formats and bounds, with Kubernetes'
//! field paths and messages.
//!
//! A structural schema has no `$ref`s and a type at every level, so each walk below follows
//! the schema and the object together and ends with the shallower of the two.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::validation::{BadValue, ErrorList, FieldError};

const PRESERVE_UNKNOWN: &str = "x-kubernetes-preserve-unknown-fields";
const EMBEDDED_RESOURCE: &str = "x-kubernetes-embedded-resource";
const INT_OR_STRING: &str = "x-kubernetes-int-or-string";

/// Fields every object and embedded resource keeps whatever its schema says.
const TYPE_AND_METADATA: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn flag(schema: &Value, name: &str) -> bool {
    schema[name].as_bool() == Some(true)
}

fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// The schema of `object[field]`: its property, or what `additionalProperties` allows.
fn property_schema<'s>(schema: &'s Value, field: &str) -> Option<&'s Value> {
    schema["properties"]
        .get(field)
        .or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()))
}

/// Removes what the schema does not know (unless it preserves unknown fields) and nulls where
/// it is not `nullable`. Returns the paths of the unknown fields removed (for
/// `fieldValidation`), sorted. The root's `apiVersion`, `kind` and `metadata` stay.
pub fn prune(schema: &Value, object: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    prune_at(schema, object, "", true, &mut unknown);
    unknown.sort();
    unknown
}

fn prune_at(schema: &Value, value: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            let keeps_type_meta = root || flag(schema, EMBEDDED_RESOURCE);
            let preserve = flag(schema, PRESERVE_UNKNOWN);
            let additional = schema.get("additionalProperties");
            fields.retain(|name, field_value| {
                if keeps_type_meta && TYPE_AND_METADATA.contains(&name.as_str()) {
                    return true;
                }
                match property_schema(schema, name) {
                    Some(sub) => !field_value.is_null() || flag(sub, "nullable"),
                    // `additionalProperties: true` keeps anything, as preserving does.
                    None if preserve || additional == Some(&Value::Bool(true)) => true,
                    None => {
                        unknown.push(child(path, name));
                        false
                    }
                }
            });
            for (name, field_value) in fields.iter_mut() {
                if keeps_type_meta && TYPE_AND_METADATA.contains(&name.as_str()) {
                    continue;
                }
                if let Some(sub) = property_schema(schema, name) {
                    prune_at(sub, field_value, &child(path, name), false, unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(items_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(items_schema, item, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in the `default` of every property missing from an object that is present, at every
/// depth (defaults of the default's own fields too, as apiextensions-apiserver does).
pub fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(fields) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (name, sub) in properties {
                    if !fields.contains_key(name)
                        && let Some(default) = sub.get("default")
                    {
                        fields.insert(name.clone(), default.clone());
                    }
                }
            }
            for (name, field_value) in fields.iter_mut() {
                if let Some(sub) = property_schema(schema, name) {
                    default(sub, field_value);
                }
            }
        }
        Value::Array(items) => {
            if let Some(items_schema) = schema.get("items").filter(|s| s.is_object()) {
                for item in items {
                    default(items_schema, item);
                }
            }
        }
        _ => {}
    }
}

/// Validates `object` against `schema`; the root's `apiVersion`, `kind` and `metadata` are the
/// API server's to check.
pub fn validate(schema: &Value, object: &Value, old: Option<&Value>) -> ErrorList {
    let mut errs = Vec::new();
    validate_at(schema, object, old, "", true, &mut errs);
    errs
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(value: &Value) -> BadValue {
    match value {
        Value::String(s) => BadValue::Str(s.clone()),
        Value::Number(n) if n.is_i64() => BadValue::Int(n.as_i64().unwrap_or_default()),
        other => BadValue::Raw(other.to_string()),
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match (expected, value) {
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        (expected, value) => expected == type_name(value),
    }
}

fn validate_at(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    root: bool,
    errs: &mut ErrorList,
) {
    let shown_path = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if !flag(schema, "nullable") && !root {
            errs.push(FieldError::invalid(
                path,
                BadValue::Str("null".into()),
                format!(
                    "{shown_path} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    if flag(schema, INT_OR_STRING) {
        if !matches!(type_name(value), "integer" | "string") {
            errs.push(FieldError::invalid(
                path,
                BadValue::Str(type_name(value).into()),
                format!(
                    "{shown_path} in body must be of type integer,string: \"{}\"",
                    type_name(value)
                ),
            ));
            return;
        }
    } else if let Some(expected) = schema["type"].as_str()
        && !type_matches(expected, value)
    {
        errs.push(FieldError::invalid(
            path,
            BadValue::Str(type_name(value).into()),
            format!(
                "{shown_path} in body must be of type {expected}: \"{}\"",
                type_name(value)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        errs.push(FieldError::not_supported(path, shown(value), &names));
    }
    match value {
        Value::Object(fields) => validate_object(schema, fields, old, path, root, errs),
        Value::Array(items) => validate_array(schema, items, old, path, errs),
        Value::String(s) => validate_string(schema, s, path, shown_path, errs),
        Value::Number(n) => validate_number(schema, n, value, path, shown_path, errs),
        _ => {}
    }
    // CEL rules run where the value is otherwise valid, as kube-apiserver's do.
    errs.extend(crate::cel_rules::check(schema, value, old, path));
}

/// The previous value of `item` in a map list: the old item with the same keys.
fn correlated<'o>(schema: &Value, item: &Value, old: Option<&'o Value>) -> Option<&'o Value> {
    if schema["x-kubernetes-list-type"].as_str() != Some("map") {
        return None;
    }
    let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    old?.as_array()?
        .iter()
        .find(|o| keys.iter().all(|k| o.get(*k) == item.get(*k)))
}

fn validate_object(
    schema: &Value,
    fields: &Map<String, Value>,
    old: Option<&Value>,
    path: &str,
    root: bool,
    errs: &mut ErrorList,
) {
    let embedded = flag(schema, EMBEDDED_RESOURCE);
    if embedded {
        for field in ["apiVersion", "kind"] {
            if fields
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errs.push(FieldError::required(child(path, field)));
            }
        }
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !fields.contains_key(name)
        {
            errs.push(FieldError::required(child(path, name)));
        }
    }
    let count = fields.len();
    if let Some(max) = schema["maxProperties"].as_u64()
        && count as u64 > max
    {
        errs.push(FieldError::too_many(path, count, max as usize));
    }
    if let Some(min) = schema["minProperties"].as_u64()
        && (count as u64) < min
    {
        errs.push(FieldError::invalid(
            path,
            BadValue::Int(count as i64),
            format!("{path} in body should have at least {min} properties"),
        ));
    }
    for (name, field_value) in fields {
        if (root || embedded) && TYPE_AND_METADATA.contains(&name.as_str()) {
            continue;
        }
        if let Some(sub) = property_schema(schema, name) {
            let old_value = old.and_then(|o| o.get(name));
            validate_at(sub, field_value, old_value, &child(path, name), false, errs);
        }
    }
}

fn validate_array(
    schema: &Value,
    items: &[Value],
    old: Option<&Value>,
    path: &str,
    errs: &mut ErrorList,
) {
    if let Some(max) = schema["maxItems"].as_u64()
        && items.len() as u64 > max
    {
        errs.push(FieldError::too_many(path, items.len(), max as usize));
    }
    if let Some(min) = schema["minItems"].as_u64()
        && (items.len() as u64) < min
    {
        errs.push(FieldError::invalid(
            path,
            BadValue::Int(items.len() as i64),
            format!("{path} in body should have at least {min} items"),
        ));
    }
    let list_type = schema["x-kubernetes-list-type"].as_str();
    if list_type == Some("set") || flag(schema, "uniqueItems") {
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item.to_string()) {
                errs.push(FieldError::duplicate(format!("{path}[{i}]"), shown(item)));
            }
        }
    }
    if list_type == Some("map") {
        let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let key: Map<String, Value> = keys
                .iter()
                .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                .collect();
            let key = Value::Object(key);
            if !seen.insert(key.to_string()) {
                errs.push(FieldError::duplicate(
                    format!("{path}[{i}]"),
                    BadValue::Raw(key.to_string()),
                ));
            }
        }
    }
    if let Some(items_schema) = schema.get("items").filter(|s| s.is_object()) {
        for (i, item) in items.iter().enumerate() {
            // Items have a previous value only where a map list's keys say which it was.
            let old_item = correlated(schema, item, old);
            validate_at(
                items_schema,
                item,
                old_item,
                &format!("{path}[{i}]"),
                false,
                errs,
            );
        }
    }
}

fn validate_string(schema: &Value, s: &str, path: &str, shown_path: &str, errs: &mut ErrorList) {
    let length = s.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && length > max
    {
        errs.push(FieldError::too_long(path, max as usize));
    }
    if let Some(min) = schema["minLength"].as_u64()
        && length < min
    {
        errs.push(FieldError::invalid(
            path,
            BadValue::Str(s.to_owned()),
            format!("{shown_path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        // Kubernetes matches with Go's RE2; the regex crate is RE2's dialect. A pattern that
        // does not compile was refused when the CRD was written.
        if let Ok(re) = regex::Regex::new(pattern)
            && !re.is_match(s)
        {
            errs.push(FieldError::invalid(
                path,
                BadValue::Str(s.to_owned()),
                format!("{shown_path} in body should match '{pattern}'"),
            ));
        }
    }
}

fn validate_number(
    schema: &Value,
    n: &serde_json::Number,
    value: &Value,
    path: &str,
    shown_path: &str,
    errs: &mut ErrorList,
) {
    let Some(x) = n.as_f64() else { return };
    let exclusive = |name: &str| flag(schema, name);
    if let Some(max) = schema["maximum"].as_f64() {
        let (bad, words) = if exclusive("exclusiveMaximum") {
            (x >= max, "less than")
        } else {
            (x > max, "less than or equal to")
        };
        if bad {
            errs.push(FieldError::invalid(
                path,
                shown(value),
                format!(
                    "{shown_path} in body should be {words} {}",
                    schema["maximum"]
                ),
            ));
        }
    }
    if let Some(min) = schema["minimum"].as_f64() {
        let (bad, words) = if exclusive("exclusiveMinimum") {
            (x <= min, "greater than")
        } else {
            (x < min, "greater than or equal to")
        };
        if bad {
            errs.push(FieldError::invalid(
                path,
                shown(value),
                format!(
                    "{shown_path} in body should be {words} {}",
                    schema["minimum"]
                ),
            ));
        }
    }
    if let Some(factor) = schema["multipleOf"].as_f64()
        && factor > 0.0
        && (x / factor).fract() != 0.0
    {
        errs.push(FieldError::invalid(
            path,
            shown(value),
            format!(
                "{shown_path} in body should be a multiple of {}",
                schema["multipleOf"]
            ),
        ));
    }
}

/// Whether `schema` is structural enough to serve: a type at every level (or int-or-string or
/// preserve-unknown-fields), no `$ref`, and patterns that compile. The errors name the schema's
/// own path (`spec.versions[0].schema.openAPIV3Schema.properties[spec]...`).
pub fn check_schema(schema: &Value, path: &str) -> ErrorList {
    let mut errs = Vec::new();
    check_schema_at(schema, path, &mut errs);
    errs
}

fn check_schema_at(schema: &Value, path: &str, errs: &mut ErrorList) {
    let Some(fields) = schema.as_object() else {
        errs.push(FieldError::invalid(
            path,
            BadValue::Raw(schema.to_string()),
            "must be an object",
        ));
        return;
    };
    if fields.contains_key("$ref") {
        errs.push(FieldError::forbidden(
            child(path, "$ref"),
            "$ref is not supported",
        ));
    }
    let typed = fields.get("type").and_then(Value::as_str);
    if typed.is_none() && !flag(schema, INT_OR_STRING) && !flag(schema, PRESERVE_UNKNOWN) {
        errs.push(
            FieldError::required(child(path, "type"))
                .with_detail("must not be empty for specified object fields"),
        );
    }
    if let Some(t) = typed
        && !["object", "array", "string", "integer", "number", "boolean"].contains(&t)
    {
        errs.push(FieldError::not_supported(
            child(path, "type"),
            t,
            &["array", "boolean", "integer", "number", "object", "string"],
        ));
    }
    if let Some(pattern) = fields.get("pattern").and_then(Value::as_str)
        && let Err(e) = regex::Regex::new(pattern)
    {
        errs.push(FieldError::invalid(
            child(path, "pattern"),
            pattern,
            format!("must be a valid regular expression, but isn't: {e}"),
        ));
    }
    for (i, rule) in crate::cel_rules::rules(schema).iter().enumerate() {
        if let Some(e) = crate::cel_rules::compile_error(rule.rule) {
            errs.push(FieldError::invalid(
                format!("{path}.x-kubernetes-validations[{i}].rule"),
                rule.rule,
                format!("compilation failed: {e}"),
            ));
        }
    }
    if let Some(properties) = fields.get("properties").and_then(Value::as_object) {
        for (name, sub) in properties {
            check_schema_at(sub, &format!("{path}.properties[{name}]"), errs);
        }
    }
    if let Some(items) = fields.get("items") {
        check_schema_at(items, &child(path, "items"), errs);
    }
    if let Some(additional) = fields.get("additionalProperties").filter(|a| a.is_object()) {
        check_schema_at(additional, &child(path, "additionalProperties"), errs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "mode": {"type": "string", "enum": ["fast", "safe"], "default": "safe"},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                        "port": {"x-kubernetes-int-or-string": true},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "tags": {"type": "array", "x-kubernetes-list-type": "set",
                                 "items": {"type": "string"}},
                        "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                  "x-kubernetes-list-map-keys": ["name"],
                                  "items": {"type": "object", "properties": {
                                      "name": {"type": "string"},
                                      "number": {"type": "integer", "default": 80}}}},
                        "note": {"type": "string", "nullable": true},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                     "x-kubernetes-preserve-unknown-fields": true},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        })
    }

    fn messages(errs: &ErrorList) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn pruning_drops_unknown_fields_and_nulls_but_keeps_type_meta_and_preserved_trees() {
        let mut object = json!({
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 1, "bogus": true, "extra": {"anything": {"goes": 1}},
                     "labels": {"a": "b"}, "note": null, "mode": null,
                     "ports": [{"name": "http", "stray": 1}]},
            "unknownTop": 1,
        });
        let unknown = prune(&schema(), &mut object);
        assert_eq!(unknown, ["spec.bogus", "spec.ports[0].stray", "unknownTop"]);
        assert_eq!(object["spec"]["extra"]["anything"]["goes"], 1);
        assert_eq!(object["spec"]["labels"]["a"], "b");
        assert!(object["spec"]["note"].is_null() && object["spec"].get("note").is_some());
        assert!(
            object["spec"].get("mode").is_none(),
            "null of a non-nullable field pruned"
        );
        assert_eq!(object["metadata"]["name"], "w");
    }

    #[test]
    fn defaults_fill_missing_fields_at_every_depth() {
        let mut object =
            json!({"spec": {"size": 2, "ports": [{"name": "a"}, {"name": "b", "number": 8080}]}});
        default(&schema(), &mut object);
        assert_eq!(object["spec"]["mode"], "safe");
        assert_eq!(object["spec"]["ports"][0]["number"], 80);
        assert_eq!(object["spec"]["ports"][1]["number"], 8080);
        // No parent, no default: `status` is not conjured.
        assert!(object.get("status").is_none());
    }

    #[test]
    fn validation_reports_kubernetes_messages_with_field_paths() {
        let object = json!({"spec": {
            "size": 11, "mode": "turbo", "name": "Abcdefg", "port": true,
            "tags": ["a", "a"], "ports": [{"name": "x"}, {"name": "x"}],
            "template": {"spec": {}},
        }, "status": {"ready": "yes"}});
        let got = messages(&validate(&schema(), &object, None));
        for want in [
            "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
            r#"spec.mode: Unsupported value: "turbo": supported values: "fast", "safe""#,
            "spec.name: Too long: may not be more than 5 bytes",
            r#"spec.name: Invalid value: "Abcdefg": spec.name in body should match '^[a-z]+$'"#,
            r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#,
            r#"spec.tags[1]: Duplicate value: "a""#,
            r#"spec.ports[1]: Duplicate value: {"name":"x"}"#,
            "spec.template.apiVersion: Required value",
            "spec.template.kind: Required value",
            r#"status.ready: Invalid value: "string": status.ready in body must be of type boolean: "string""#,
        ] {
            assert!(
                got.iter().any(|g| g == want),
                "missing {want:?} in {got:#?}"
            );
        }
        let missing = messages(&validate(&schema(), &json!({"spec": {}}), None));
        assert_eq!(missing, ["spec.size: Required value"]);
        let fine = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
                          "spec": {"size": 3, "port": "http", "note": null}});
        assert!(validate(&schema(), &fine, None).is_empty());
    }

    #[test]
    fn schemas_must_be_structural() {
        let errs = check_schema(
            &json!({"type": "object", "properties": {
                "a": {"properties": {}},
                "b": {"$ref": "#/x", "type": "string"},
                "c": {"type": "string", "pattern": "("},
                "d": {"type": "map"},
            }}),
            "schema",
        );
        let got = messages(&errs);
        assert!(
            got.iter()
                .any(|m| m.starts_with("schema.properties[a].type: Required value")),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|m| m.starts_with("schema.properties[b].$ref: Forbidden")),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|m| m.starts_with("schema.properties[c].pattern: Invalid value")),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|m| m.starts_with("schema.properties[d].type: Unsupported value")),
            "{got:#?}"
        );
        assert!(check_schema(&schema(), "schema").is_empty());
    }
}
