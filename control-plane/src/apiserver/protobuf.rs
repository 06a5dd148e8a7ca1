//! Just enough protobuf to read what typed Go clients send for the create-only reviews and
//! requests (kubectl's `auth whoami`, `auth can-i`, `create token`, webhooks' TokenReviews):
//! Kubernetes' `k8s\0` envelope and a message's fields. One reader for all of them.

use axum::http::HeaderMap;

/// Whether the body is Kubernetes protobuf.
pub fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/vnd.kubernetes.protobuf"))
}

/// One field of a protobuf message: its number and a varint or length-delimited value.
#[derive(Debug)]
pub enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of one message, in order; `None` if it is not well-formed.
pub fn fields(mut buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Field::Bytes(bytes)
            }
            1 => {
                buf = buf.get(8..)?;
                continue;
            }
            5 => {
                buf = buf.get(4..)?;
                continue;
            }
            _ => return None,
        };
        out.push((tag >> 3, field));
    }
    Some(out)
}

/// The object inside Kubernetes' protobuf envelope: `k8s\0`, then a `runtime.Unknown` whose
/// `raw` (field 2) is the object's message.
pub fn envelope_raw(body: &[u8]) -> Option<&[u8]> {
    let unknown = body.strip_prefix(b"k8s\0")?;
    fields(unknown)?
        .into_iter()
        .find_map(|(n, f)| match (n, f) {
            (2, Field::Bytes(b)) => Some(b),
            _ => None,
        })
}

/// A length-delimited field (a string or a message of under 128 bytes), as tests build the
/// bodies typed clients send.
#[cfg(test)]
pub fn bytes_field(number: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2, u8::try_from(payload.len()).unwrap()];
    out.extend_from_slice(payload);
    out
}
