//! The JSON forms of Kubernetes' special messages: times, durations, quantities, int-or-strings,
//! and embedded JSON.

use base64::Engine as _;
use chrono::{DateTime, Datelike as _, SecondsFormat};
use serde_json::{Value, json};

use super::{
    Error, Result,
    schema::Kind,
    wire::{Reader, WireValue, Writer},
};

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidValue {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// The fields of a special message by number, last occurrence winning (proto2 semantics).
fn read_fields<'a>(bytes: &'a [u8]) -> Result<Vec<(u64, WireValue<'a>)>> {
    let mut reader = Reader::new(bytes);
    let mut fields = Vec::new();
    while let Some(field) = reader.field() {
        fields.push(field?);
    }
    Ok(fields)
}

fn varint_of(fields: &[(u64, WireValue<'_>)], number: u64, field: &str) -> Result<Option<u64>> {
    match fields.iter().rev().find(|(n, _)| *n == number) {
        None => Ok(None),
        Some((_, WireValue::Varint(v))) => Ok(Some(*v)),
        Some((_, other)) => Err(Error::WrongWireType {
            field: field.to_owned(),
            wire: other.wire_type(),
            expected: "a varint",
        }),
    }
}

fn bytes_of<'a>(fields: &[(u64, WireValue<'a>)], number: u64) -> Result<Option<&'a [u8]>> {
    match fields.iter().rev().find(|(n, _)| *n == number) {
        None => Ok(None),
        Some((_, WireValue::Bytes(b))) => Ok(Some(b)),
        Some((_, other)) => Err(Error::WrongWireType {
            field: "special message".to_owned(),
            wire: other.wire_type(),
            expected: "length-delimited bytes",
        }),
    }
}

pub fn utf8(bytes: &[u8], field: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid(field, "invalid UTF-8 in a string"))
}

/// Reads a special message (`kind` is not a plain scalar or message).
pub fn decode(kind: Kind, bytes: &[u8], field: &str, depth: usize) -> Result<Value> {
    let fields = read_fields(bytes)?;
    match kind {
        Kind::Time | Kind::MicroTime => {
            // Go writes its zero time as an empty message and reads one back as zero: `null`.
            if fields.is_empty() {
                return Ok(Value::Null);
            }
            let seconds = varint_of(&fields, 1, field)?.unwrap_or(0) as i64;
            let nanos = varint_of(&fields, 2, field)?.unwrap_or(0) as i32;
            let nanos = u32::try_from(nanos)
                .ok()
                .filter(|n| *n < 1_000_000_000)
                .ok_or_else(|| invalid(field, "nanos out of range"))?;
            // Go's JSON refuses years outside 0000–9999, and RFC 3339 cannot write them.
            let time = DateTime::from_timestamp(seconds, nanos)
                .filter(|t| (0..=9999).contains(&t.year()))
                .ok_or_else(|| invalid(field, "time out of range"))?;
            Ok(json!(if kind == Kind::Time {
                time.to_rfc3339_opts(SecondsFormat::Secs, true)
            } else {
                time.to_rfc3339_opts(SecondsFormat::Micros, true)
            }))
        }
        Kind::Duration => Ok(json!(go_duration(
            varint_of(&fields, 1, field)?.unwrap_or(0) as i64
        ))),
        Kind::Quantity => Ok(json!(utf8(
            bytes_of(&fields, 1)?.unwrap_or_default(),
            field
        )?)),
        Kind::IntOrString => match varint_of(&fields, 1, field)?.unwrap_or(0) {
            0 => Ok(json!(varint_of(&fields, 2, field)?.unwrap_or(0) as i32)),
            1 => Ok(json!(utf8(
                bytes_of(&fields, 3)?.unwrap_or_default(),
                field
            )?)),
            other => Err(invalid(field, format!("IntOrString type {other}"))),
        },
        Kind::RawExtension | Kind::FieldsV1 => {
            let raw = bytes_of(&fields, 1)?.unwrap_or_default();
            if raw.is_empty() {
                Ok(Value::Null)
            } else if raw.starts_with(super::envelope::MAGIC) {
                super::envelope::decode_at(raw, depth + 1)
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| invalid(field, format!("embedded JSON: {e}")))
            }
        }
        Kind::StringList => fields
            .iter()
            .filter(|(n, _)| *n == 1)
            .map(|(_, value)| match value {
                WireValue::Bytes(b) => utf8(b, field).map(Value::String),
                other => Err(Error::WrongWireType {
                    field: "string list".to_owned(),
                    wire: other.wire_type(),
                    expected: "length-delimited bytes",
                }),
            })
            .collect::<Result<Vec<_>>>()
            .map(Value::Array),
        _ => unreachable!("{kind:?} is not a special message"),
    }
}

/// Writes a special message from its JSON form.
pub fn encode(kind: Kind, value: &Value, field: &str) -> Result<Vec<u8>> {
    let mut out = Writer::default();
    match (kind, value) {
        (Kind::Time | Kind::MicroTime, Value::String(s)) => {
            let time = DateTime::parse_from_rfc3339(s)
                .map_err(|e| invalid(field, format!("not an RFC 3339 time: {e}")))?;
            out.varint_field(1, time.timestamp() as u64);
            // Go writes nanos even when zero: a non-pointer field.
            out.varint_field(2, u64::from(time.timestamp_subsec_nanos()));
        }
        (Kind::Duration, Value::String(s)) => {
            let nanos = parse_go_duration(s).ok_or_else(|| invalid(field, "not a duration"))?;
            out.varint_field(1, nanos as u64);
        }
        (Kind::Quantity, Value::String(s)) => out.bytes_field(1, s.as_bytes()),
        (Kind::Quantity, Value::Number(n)) => out.bytes_field(1, n.to_string().as_bytes()),
        (Kind::IntOrString, Value::Number(n)) => {
            let int = n
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(|| invalid(field, "not a 32-bit integer"))?;
            out.varint_field(1, 0);
            out.varint_field(2, i64::from(int) as u64);
            out.bytes_field(3, b"");
        }
        (Kind::IntOrString, Value::String(s)) => {
            out.varint_field(1, 1);
            out.varint_field(2, 0);
            out.bytes_field(3, s.as_bytes());
        }
        (Kind::RawExtension | Kind::FieldsV1, value) => {
            let raw = serde_json::to_vec(value).map_err(|e| invalid(field, e.to_string()))?;
            out.bytes_field(1, &raw);
        }
        (Kind::StringList, Value::Array(items)) => {
            for item in items {
                let s = item
                    .as_str()
                    .ok_or_else(|| invalid(field, "expected a string"))?;
                out.bytes_field(1, s.as_bytes());
            }
        }
        (kind, other) => {
            return Err(invalid(field, format!("{other} is not a {kind:?}")));
        }
    }
    Ok(out.buf)
}

/// Base64, as Go's JSON writes `[]byte`.
pub fn base64(bytes: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn unbase64(s: &str, field: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| invalid(field, format!("invalid base64: {e}")))
}

/// Go's `time.Duration.String()`: `1h0m0s`, `1.5s`, `300ms`, `0s`.
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        // Under a second: the largest unit that keeps an integer part.
        let (unit, scale) = match n {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", fraction(n, scale));
    }
    let hours = n / 3_600_000_000_000;
    let minutes = n / 60_000_000_000 % 60;
    let seconds = fraction(n % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

/// `value / scale` with the fraction's trailing zeros dropped, as Go prints it.
fn fraction(value: u64, scale: u64) -> String {
    let (int, frac) = (value / scale, value % scale);
    if frac == 0 {
        return int.to_string();
    }
    let digits = scale.ilog10() as usize;
    let frac = format!("{frac:0digits$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// Go's `time.ParseDuration`: signed decimal numbers with units `ns`, `us`/`µs`, `ms`, `s`,
/// `m`, `h` (`1h30m`, `1.5s`, `-2m`). `None` if malformed or out of range.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    let total = if negative { -total } else { total };
    (total.abs() <= i64::MAX as f64).then_some(total.round() as i64)
}
