//! A message's fields ↔ its Kubernetes JSON object, driven by the schema table.

use serde_json::{Map, Value, json};

use super::{
    Error, MAX_DEPTH, Result,
    schema::{self, Field, Kind, Label, Message},
    special,
    wire::{Reader, WireValue, Writer},
};

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidValue {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn wrong_wire(field: &Field, value: &WireValue<'_>, expected: &'static str) -> Error {
    Error::WrongWireType {
        field: field.json.to_owned(),
        wire: value.wire_type(),
        expected,
    }
}

/// Decodes `bytes` as `message` into a JSON object. Unknown fields are skipped, as Go does.
pub fn decode(message: &Message, bytes: &[u8], depth: usize) -> Result<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep);
    }
    let mut object = Map::new();
    let mut reader = Reader::new(bytes);
    while let Some(next) = reader.field() {
        let (number, value) = next?;
        let Some(field) = message.field(number) else {
            continue;
        };
        match field.label {
            Label::Optional => {
                if let Some(v) = optional(field, &value, depth)? {
                    object.insert(field.json.to_owned(), v);
                } else {
                    object.remove(field.json);
                }
            }
            Label::Repeated => {
                let items = object
                    .entry(field.json)
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !items.is_array() {
                    // Only an inlined message's key could be here; the repeated field wins.
                    *items = Value::Array(Vec::new());
                }
                if let Value::Array(items) = items {
                    repeated(field, &value, depth, items)?;
                }
            }
            Label::Map => {
                let WireValue::Bytes(entry) = value else {
                    return Err(wrong_wire(field, &value, "a map entry"));
                };
                let (key, v) = map_entry(field, entry, depth)?;
                let entries = object
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(entries) = entries {
                    entries.insert(key, v);
                }
            }
            Label::Inline => {
                let (WireValue::Bytes(bytes), Kind::Message(index)) = (value, field.kind) else {
                    return Err(wrong_wire(field, &value, "an inlined message"));
                };
                object.extend(decode(schema::message(index), bytes, depth + 1)?);
            }
        }
    }
    Ok(object)
}

/// An optional field's JSON value; `None` for Go's omitted empty strings.
fn optional(field: &Field, value: &WireValue<'_>, depth: usize) -> Result<Option<Value>> {
    let v = scalar_or_message(field, field.kind, value, depth)?;
    // Go's non-pointer strings are always on the wire and `omitempty` in JSON: an empty one is
    // an absent one. Zero numbers and `false` stay, as pointer fields (`replicas: 0`,
    // `automountServiceAccountToken: false`) mean them.
    let empty_string = field.kind == Kind::String && v.as_str() == Some("");
    Ok((!empty_string).then_some(v))
}

fn repeated(
    field: &Field,
    value: &WireValue<'_>,
    depth: usize,
    items: &mut Vec<Value>,
) -> Result<()> {
    // Numbers and bools may come packed: one length-delimited run of values.
    if let (WireValue::Bytes(bytes), Kind::Bool | Kind::Int32 | Kind::Int64 | Kind::Double) =
        (value, field.kind)
    {
        let mut reader = Reader::new(bytes);
        while !reader.is_empty() {
            let element = if field.kind == Kind::Double {
                WireValue::Fixed64(reader.fixed64()?)
            } else {
                WireValue::Varint(reader.varint()?)
            };
            items.push(scalar_or_message(field, field.kind, &element, depth)?);
        }
        return Ok(());
    }
    items.push(scalar_or_message(field, field.kind, value, depth)?);
    Ok(())
}

fn map_entry(field: &Field, entry: &[u8], depth: usize) -> Result<(String, Value)> {
    let mut reader = Reader::new(entry);
    let (mut key, mut value) = (String::new(), None);
    while let Some(next) = reader.field() {
        match next? {
            (1, WireValue::Bytes(k)) => key = special::utf8(k, field.json)?,
            (1, other) => return Err(wrong_wire(field, &other, "a string map key")),
            (2, v) => value = Some(scalar_or_message(field, field.kind, &v, depth)?),
            _ => {}
        }
    }
    // A missing value is the zero value of its type: an empty string, bytes or message
    // (Kubernetes' maps hold nothing else).
    let value = match value {
        Some(v) => v,
        None => scalar_or_message(field, field.kind, &WireValue::Bytes(&[]), depth)?,
    };
    Ok((key, value))
}

fn scalar_or_message(
    field: &Field,
    kind: Kind,
    value: &WireValue<'_>,
    depth: usize,
) -> Result<Value> {
    Ok(match (kind, *value) {
        (Kind::String, WireValue::Bytes(b)) => Value::String(special::utf8(b, field.json)?),
        (Kind::Bytes, WireValue::Bytes(b)) => special::base64(b),
        (Kind::Bool, WireValue::Varint(v)) => json!(v != 0),
        // Negative int32s are sign-extended to 64 bits on the wire.
        (Kind::Int32, WireValue::Varint(v)) => json!(v as i64 as i32),
        (Kind::Int64, WireValue::Varint(v)) => json!(v as i64),
        (Kind::Double, WireValue::Fixed64(v)) => serde_json::Number::from_f64(f64::from_bits(v))
            .map(Value::Number)
            .ok_or_else(|| invalid(field.json, "not a finite number"))?,
        (Kind::Message(index), WireValue::Bytes(b)) => {
            Value::Object(decode(schema::message(index), b, depth + 1)?)
        }
        (
            Kind::Time
            | Kind::MicroTime
            | Kind::Duration
            | Kind::FieldsV1
            | Kind::Quantity
            | Kind::IntOrString
            | Kind::RawExtension
            | Kind::StringList,
            WireValue::Bytes(b),
        ) => {
            if depth >= MAX_DEPTH {
                return Err(Error::TooDeep);
            }
            special::decode(kind, b, field.json, depth + 1)?
        }
        (Kind::Bool | Kind::Int32 | Kind::Int64, other) => {
            return Err(wrong_wire(field, &other, "a varint"));
        }
        (Kind::Double, other) => return Err(wrong_wire(field, &other, "a fixed64")),
        (_, other) => return Err(wrong_wire(field, &other, "length-delimited bytes")),
    })
}

/// Encodes a JSON object as `message`. Keys the message has no field for are left out, as Go's
/// JSON decoding drops them before the protobuf encoding.
pub fn encode(message: &Message, object: &Map<String, Value>, depth: usize) -> Result<Vec<u8>> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep);
    }
    let mut out = Writer::default();
    for field in message.fields {
        if field.label == Label::Inline {
            let Kind::Message(index) = field.kind else {
                continue;
            };
            out.bytes_field(
                field.number,
                &encode(schema::message(index), object, depth + 1)?,
            );
            continue;
        }
        let Some(value) = object.get(field.json) else {
            continue;
        };
        match (field.label, value) {
            (_, Value::Null) => {}
            (Label::Repeated, Value::Array(items)) => {
                for item in items {
                    encode_value(&mut out, field, item, depth)?;
                }
            }
            (Label::Map, Value::Object(entries)) => {
                for (key, v) in entries {
                    let mut entry = Writer::default();
                    entry.bytes_field(1, key.as_bytes());
                    encode_value(
                        &mut entry,
                        &Field {
                            number: 2,
                            ..*field
                        },
                        v,
                        depth,
                    )?;
                    out.bytes_field(field.number, &entry.buf);
                }
            }
            (Label::Optional, v) => encode_value(&mut out, field, v, depth)?,
            (_, other) => return Err(invalid(field.json, format!("unexpected {other}"))),
        }
    }
    Ok(out.buf)
}

fn encode_value(out: &mut Writer, field: &Field, value: &Value, depth: usize) -> Result<()> {
    let n = field.number;
    match (field.kind, value) {
        (_, Value::Null) => {}
        (Kind::String, Value::String(s)) => out.bytes_field(n, s.as_bytes()),
        (Kind::Bytes, Value::String(s)) => out.bytes_field(n, &special::unbase64(s, field.json)?),
        (Kind::Bool, Value::Bool(b)) => out.varint_field(n, u64::from(*b)),
        (Kind::Int32 | Kind::Int64, Value::Number(number)) => {
            let int = number
                .as_i64()
                .ok_or_else(|| invalid(field.json, format!("{number} is not an integer")))?;
            if field.kind == Kind::Int32 && i32::try_from(int).is_err() {
                return Err(invalid(field.json, format!("{int} is out of int32 range")));
            }
            out.varint_field(n, int as u64);
        }
        (Kind::Double, Value::Number(number)) => {
            out.fixed64_field(n, number.as_f64().unwrap_or_default().to_bits());
        }
        (Kind::Message(index), Value::Object(object)) => {
            out.bytes_field(n, &encode(schema::message(index), object, depth + 1)?);
        }
        (Kind::Message(_), other) => {
            return Err(invalid(field.json, format!("{other} is not an object")));
        }
        (
            Kind::Time
            | Kind::MicroTime
            | Kind::Duration
            | Kind::FieldsV1
            | Kind::Quantity
            | Kind::IntOrString
            | Kind::RawExtension
            | Kind::StringList,
            v,
        ) => out.bytes_field(n, &special::encode(field.kind, v, field.json)?),
        (kind, other) => {
            return Err(invalid(field.json, format!("{other} is not a {kind:?}")));
        }
    }
    Ok(())
}
