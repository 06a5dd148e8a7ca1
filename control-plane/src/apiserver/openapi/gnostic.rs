//! The protobuf form of the v2 document, gnostic's `openapi.v2.Document`
//! (`github.com/google/gnostic-models/openapiv2/OpenAPIv2.proto`), which is what kubectl asks
//! `/openapi/v2` for. Hand-written over the proto's field numbers: the document is only ever
//! written, from a JSON tree, and the few messages it needs are simpler to encode directly than
//! to generate (and compile) the whole proto for. Vendor extensions and defaults are gnostic
//! `Any`s holding YAML; JSON is YAML, so they hold their JSON text.

use serde_json::Value;

/// A message being written: fields appended in order.
#[derive(Debug, Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            // Truncation intended: the low seven bits, with the continuation bit.
            self.0.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A string field; proto3 leaves empty strings out.
    fn string(&mut self, field: u32, value: &str) {
        if !value.is_empty() {
            self.bytes(field, value.as_bytes());
        }
    }

    fn message(&mut self, field: u32, message: Message) {
        self.bytes(field, &message.0);
    }

    fn bool(&mut self, field: u32, value: bool) {
        if value {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, value: i64) {
        if value != 0 {
            self.key(field, 0);
            // Two's complement, as protobuf writes a negative int64.
            self.varint(value as u64);
        }
    }

    fn double(&mut self, field: u32, value: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    /// `Any { yaml = 2 }`.
    fn any(&mut self, field: u32, value: &Value) {
        let mut any = Message::default();
        any.string(2, &value.to_string());
        self.message(field, any);
    }

    /// `NamedAny { name = 1; value = 2 }` for each `x-` key of `object`.
    fn vendor_extensions(&mut self, field: u32, object: &serde_json::Map<String, Value>) {
        for (name, value) in object.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Message::default();
            named.string(1, name);
            named.any(2, value);
            self.message(field, named);
        }
    }
}

fn str_of<'a>(object: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// `openapi.v2.Document` of a Swagger 2.0 JSON document.
pub fn document(swagger: &Value) -> Vec<u8> {
    let mut doc = Message::default();
    doc.string(1, swagger["swagger"].as_str().unwrap_or("2.0"));
    if let Some(info) = swagger["info"].as_object() {
        let mut message = Message::default();
        message.string(1, str_of(info, "title"));
        message.string(2, str_of(info, "version"));
        doc.message(2, message);
    }
    if let Some(paths) = swagger["paths"].as_object() {
        let mut message = Message::default();
        for (path, item) in paths {
            let mut named = Message::default();
            named.string(1, path);
            named.message(2, path_item(item));
            // `Paths.path` is field 2 (1 is its vendor extensions).
            message.message(2, named);
        }
        doc.message(8, message);
    }
    if let Some(definitions) = swagger["definitions"].as_object() {
        let mut message = Message::default();
        for (name, definition) in definitions {
            message.message(1, named_schema(name, definition));
        }
        doc.message(9, message);
    }
    doc.0
}

/// `NamedSchema { name = 1; value = 2 }`.
fn named_schema(name: &str, value: &Value) -> Message {
    let mut named = Message::default();
    named.string(1, name);
    named.message(2, schema(value));
    named
}

/// `openapi.v2.Schema`.
fn schema(value: &Value) -> Message {
    let mut m = Message::default();
    let Some(object) = value.as_object() else {
        return m;
    };
    m.string(1, str_of(object, "$ref"));
    m.string(2, str_of(object, "format"));
    m.string(3, str_of(object, "title"));
    m.string(4, str_of(object, "description"));
    if let Some(default) = object.get("default") {
        m.any(5, default);
    }
    for (key, field) in [("multipleOf", 6), ("maximum", 7), ("minimum", 9)] {
        if let Some(number) = object.get(key).and_then(Value::as_f64) {
            m.double(field, number);
        }
    }
    for (key, field) in [("exclusiveMaximum", 8), ("exclusiveMinimum", 10)] {
        m.bool(
            field,
            object.get(key).and_then(Value::as_bool).unwrap_or(false),
        );
    }
    for (key, field) in [("maxLength", 11), ("minLength", 12)] {
        if let Some(number) = object.get(key).and_then(Value::as_i64) {
            m.int64(field, number);
        }
    }
    m.string(13, str_of(object, "pattern"));
    for (key, field) in [("maxItems", 14), ("minItems", 15)] {
        if let Some(number) = object.get(key).and_then(Value::as_i64) {
            m.int64(field, number);
        }
    }
    m.bool(
        16,
        object
            .get("uniqueItems")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    );
    for (key, field) in [("maxProperties", 17), ("minProperties", 18)] {
        if let Some(number) = object.get(key).and_then(Value::as_i64) {
            m.int64(field, number);
        }
    }
    for required in strings(object.get("required")) {
        m.string(19, required);
    }
    for value in object
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.any(20, value);
    }
    match object.get("additionalProperties") {
        // `AdditionalPropertiesItem { oneof { Schema schema = 1; bool boolean = 2; } }`
        Some(Value::Bool(allowed)) => {
            let mut item = Message::default();
            item.key(2, 0);
            item.varint(u64::from(*allowed));
            m.message(21, item);
        }
        Some(additional @ Value::Object(_)) => {
            let mut item = Message::default();
            item.message(1, schema(additional));
            m.message(21, item);
        }
        _ => {}
    }
    // `TypeItem { repeated string value = 1; }`
    match object.get("type") {
        Some(Value::String(ty)) => {
            let mut item = Message::default();
            item.string(1, ty);
            m.message(22, item);
        }
        Some(types @ Value::Array(_)) => {
            let mut item = Message::default();
            strings(Some(types)).for_each(|ty| item.string(1, ty));
            m.message(22, item);
        }
        _ => {}
    }
    // `ItemsItem { repeated Schema schema = 1; }`
    match object.get("items") {
        Some(items @ Value::Object(_)) => {
            let mut item = Message::default();
            item.message(1, schema(items));
            m.message(23, item);
        }
        Some(Value::Array(items)) => {
            let mut item = Message::default();
            items.iter().for_each(|i| item.message(1, schema(i)));
            m.message(23, item);
        }
        _ => {}
    }
    for all_of in object
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(24, schema(all_of));
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        // `Properties { repeated NamedSchema additional_properties = 1; }`
        let mut message = Message::default();
        for (name, property) in properties {
            message.message(1, named_schema(name, property));
        }
        m.message(25, message);
    }
    m.string(26, str_of(object, "discriminator"));
    m.bool(
        27,
        object
            .get("readOnly")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    );
    if let Some(example) = object.get("example") {
        m.any(30, example);
    }
    m.vendor_extensions(31, object);
    m
}

/// `openapi.v2.PathItem`: its operations (`put` = 3, `patch` = 8) and path parameters (9).
fn path_item(value: &Value) -> Message {
    let mut m = Message::default();
    let Some(object) = value.as_object() else {
        return m;
    };
    for (verb, field) in [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("patch", 8),
    ] {
        if let Some(operation) = object.get(verb) {
            m.message(field, self::operation(operation));
        }
    }
    for parameter in object
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(9, parameters_item(parameter));
    }
    m.vendor_extensions(10, object);
    m
}

/// `openapi.v2.Operation`.
fn operation(value: &Value) -> Message {
    let mut m = Message::default();
    let Some(object) = value.as_object() else {
        return m;
    };
    strings(object.get("tags")).for_each(|tag| m.string(1, tag));
    m.string(3, str_of(object, "description"));
    m.string(5, str_of(object, "operationId"));
    strings(object.get("produces")).for_each(|p| m.string(6, p));
    strings(object.get("consumes")).for_each(|c| m.string(7, c));
    for parameter in object
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(8, parameters_item(parameter));
    }
    if let Some(responses) = object.get("responses").and_then(Value::as_object) {
        // `Responses { repeated NamedResponseValue response_code = 1; }`, each
        // `ResponseValue { Response response = 1; }`, `Response { description = 1; SchemaItem
        // schema = 2; }`, `SchemaItem { Schema schema = 1; }`.
        let mut message = Message::default();
        for (code, response) in responses {
            let mut body = Message::default();
            body.string(1, response["description"].as_str().unwrap_or_default());
            if let Some(response_schema) = response.get("schema") {
                let mut item = Message::default();
                item.message(1, schema(response_schema));
                body.message(2, item);
            }
            let mut value = Message::default();
            value.message(1, body);
            let mut named = Message::default();
            named.string(1, code);
            named.message(2, value);
            message.message(1, named);
        }
        m.message(9, message);
    }
    strings(object.get("schemes")).for_each(|s| m.string(10, s));
    m.vendor_extensions(13, object);
    m
}

/// `ParametersItem { Parameter parameter = 1; }`, `Parameter { BodyParameter body_parameter = 1;
/// NonBodyParameter non_body_parameter = 2; }`, and a `NonBodyParameter`'s query (3) or path
/// (4) sub-schema.
fn parameters_item(value: &Value) -> Message {
    let mut parameter = Message::default();
    let object = value.as_object().cloned().unwrap_or_default();
    let location = str_of(&object, "in");
    let required = object
        .get("required")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let unique = object
        .get("uniqueItems")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if location == "body" {
        // `BodyParameter { description = 1; name = 2; in = 3; required = 4; schema = 5; }`
        let mut body = Message::default();
        body.string(1, str_of(&object, "description"));
        body.string(2, str_of(&object, "name"));
        body.string(3, location);
        body.bool(4, required);
        if let Some(body_schema) = object.get("schema") {
            body.message(5, schema(body_schema));
        }
        parameter.message(1, body);
    } else {
        // Query: `required = 1; in = 2; description = 3; name = 4; type = 6; format = 7;
        // unique_items = 20`; path: the same up to `name`, then `type = 5; format = 6;
        // unique_items = 19`.
        let (variant, ty, format, unique_items) = match location {
            "path" => (4, 5, 6, 19),
            _ => (3, 6, 7, 20),
        };
        let mut sub = Message::default();
        sub.bool(1, required);
        sub.string(2, location);
        sub.string(3, str_of(&object, "description"));
        sub.string(4, str_of(&object, "name"));
        sub.string(ty, str_of(&object, "type"));
        sub.string(format, str_of(&object, "format"));
        sub.bool(unique_items, unique);
        let mut non_body = Message::default();
        non_body.message(variant, sub);
        parameter.message(2, non_body);
    }
    let mut item = Message::default();
    item.message(1, parameter);
    item
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::protobuf::wire::{Reader, WireValue};
    use serde_json::json;

    /// The length-delimited fields numbered `number` of a message, read back with the API
    /// server's one protobuf reader.
    fn bytes_of(message: &[u8], number: u64) -> Vec<&[u8]> {
        let mut reader = Reader::new(message);
        std::iter::from_fn(|| reader.field())
            .map(|field| field.expect("well-formed"))
            .filter_map(|(n, value)| match value {
                WireValue::Bytes(b) if n == number => Some(b),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn definitions_are_encoded_with_gnostic_field_numbers() {
        let swagger = json!({
            "swagger": "2.0",
            "definitions": {
                "io.k8s.api.core.v1.Pod": {
                    "type": "object",
                    "description": "A pod.",
                    "properties": {
                        "spec": { "$ref": "#/definitions/io.k8s.api.core.v1.PodSpec" },
                        "names": { "type": "array", "items": { "type": "string" } },
                    },
                    "x-kubernetes-group-version-kind": [{ "group": "", "kind": "Pod", "version": "v1" }],
                },
            },
        });
        let doc = document(&swagger);
        assert_eq!(bytes_of(&doc, 1), [b"2.0"]);
        let definitions = bytes_of(&doc, 9)[0];
        let named = bytes_of(definitions, 1)[0];
        assert_eq!(bytes_of(named, 1), [b"io.k8s.api.core.v1.Pod".as_slice()]);
        let pod = bytes_of(named, 2)[0];
        assert_eq!(bytes_of(pod, 4), [b"A pod.".as_slice()]);
        assert_eq!(bytes_of(bytes_of(pod, 22)[0], 1), [b"object".as_slice()]);
        let extension = bytes_of(pod, 31)[0];
        assert_eq!(
            bytes_of(extension, 1),
            [b"x-kubernetes-group-version-kind".as_slice()]
        );
        let yaml = bytes_of(bytes_of(extension, 2)[0], 2)[0];
        assert_eq!(
            serde_json::from_slice::<Value>(yaml).unwrap(),
            swagger["definitions"]["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"]
        );
        let properties: Vec<&[u8]> = bytes_of(bytes_of(pod, 25)[0], 1);
        assert_eq!(properties.len(), 2);
        let names = properties
            .iter()
            .find(|p| bytes_of(p, 1) == [b"names".as_slice()])
            .unwrap();
        let array = bytes_of(names, 2)[0];
        let item = bytes_of(bytes_of(array, 23)[0], 1)[0];
        assert_eq!(bytes_of(bytes_of(item, 22)[0], 1), [b"string".as_slice()]);
        let spec = properties
            .iter()
            .find(|p| bytes_of(p, 1) == [b"spec".as_slice()])
            .unwrap();
        assert_eq!(
            bytes_of(bytes_of(spec, 2)[0], 1),
            [b"#/definitions/io.k8s.api.core.v1.PodSpec".as_slice()]
        );
    }

    #[test]
    fn long_fields_use_multi_byte_lengths() {
        let description = "d".repeat(300);
        let encoded = schema(&json!({ "description": description }));
        assert_eq!(&encoded.0[..3], &[4 << 3 | 2, 0xac, 0x02]);
        assert_eq!(bytes_of(&encoded.0, 4), [description.as_bytes()]);
    }
}
