//! Kubernetes' protobuf envelope: the magic `k8s\0`, then a `runtime.Unknown` whose `typeMeta`
//! (1) names the kind and whose `raw` (2) is the object's message; `contentEncoding` (3) and
//! `contentType` (4) are empty for the objects clients send.

use serde_json::{Map, Value, json};

use super::{
    Error, MAX_DEPTH, Result, json, schema,
    wire::{Reader, WireValue, Writer},
};

/// The first four bytes of every Kubernetes protobuf body.
pub const MAGIC: &[u8] = b"k8s\0";

/// The fields of a `runtime.Unknown`.
#[derive(Debug, Default)]
struct Unknown<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
}

fn string(bytes: &[u8], field: &str) -> Result<String> {
    super::special::utf8(bytes, field)
}

fn read_unknown(body: &[u8]) -> Result<Unknown<'_>> {
    let mut unknown = Unknown::default();
    let mut reader = Reader::new(body.strip_prefix(MAGIC).ok_or(Error::NoMagic)?);
    while let Some(field) = reader.field() {
        match field? {
            (1, WireValue::Bytes(type_meta)) => {
                let mut reader = Reader::new(type_meta);
                while let Some(field) = reader.field() {
                    match field? {
                        (1, WireValue::Bytes(v)) => unknown.api_version = string(v, "apiVersion")?,
                        (2, WireValue::Bytes(v)) => unknown.kind = string(v, "kind")?,
                        _ => {}
                    }
                }
            }
            (2, WireValue::Bytes(raw)) => unknown.raw = raw,
            (3, WireValue::Bytes(v)) => unknown.content_encoding = string(v, "contentEncoding")?,
            // contentType: the raw bytes are always protobuf in a protobuf body.
            (4, WireValue::Bytes(_)) => {}
            (n @ 1..=4, other) => {
                return Err(Error::WrongWireType {
                    field: format!("runtime.Unknown field {n}"),
                    wire: other.wire_type(),
                    expected: "length-delimited bytes",
                });
            }
            _ => {}
        }
    }
    Ok(unknown)
}

/// Decodes a protobuf body into the JSON object the same body in JSON would be, `apiVersion`
/// and `kind` included.
pub fn decode(body: &[u8]) -> Result<Value> {
    decode_at(body, 0)
}

/// [`decode`] at a nesting depth: objects embedded in a `RawExtension` are enveloped too.
pub(super) fn decode_at(body: &[u8], depth: usize) -> Result<Value> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep);
    }
    let unknown = read_unknown(body)?;
    if !unknown.content_encoding.is_empty() {
        return Err(Error::ContentEncoding(unknown.content_encoding));
    }
    let message = schema::for_kind(&unknown.api_version, &unknown.kind).ok_or_else(|| {
        Error::UnknownKind {
            api_version: unknown.api_version.clone(),
            kind: unknown.kind.clone(),
        }
    })?;
    let mut object = Map::new();
    object.insert("kind".to_owned(), json!(unknown.kind));
    object.insert("apiVersion".to_owned(), json!(unknown.api_version));
    object.extend(json::decode(message, unknown.raw, depth + 1)?);
    Ok(Value::Object(object))
}

/// Encodes a JSON object (with its `apiVersion` and `kind`) as a protobuf body.
pub fn encode(object: &Value) -> Result<Vec<u8>> {
    let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let message = schema::for_kind(api_version, kind).ok_or_else(|| Error::UnknownKind {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
    })?;
    let Value::Object(fields) = object else {
        return Err(Error::InvalidValue {
            field: String::new(),
            reason: "not a JSON object".to_owned(),
        });
    };
    let mut type_meta = Writer::default();
    type_meta.bytes_field(1, api_version.as_bytes());
    type_meta.bytes_field(2, kind.as_bytes());
    let mut unknown = Writer {
        buf: MAGIC.to_vec(),
    };
    unknown.bytes_field(1, &type_meta.buf);
    unknown.bytes_field(2, &json::encode(message, fields, 1)?);
    // Go writes its non-pointer strings even when empty.
    unknown.bytes_field(3, b"");
    unknown.bytes_field(4, b"");
    Ok(unknown.buf)
}
