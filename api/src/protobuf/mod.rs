//! Kubernetes' protobuf serialization (`application/vnd.kubernetes.protobuf`), read into and
//! written from the same JSON the rest of Apiary handles.
//!
//! Dynamic, not generated structs: one schema table ([`table`], written by `cargo xtask
//! gen-protobuf` from the k8s-pb and k8s-openapi sources) says, for every message, each field's
//! number, JSON name and type; [`decode`] and [`encode`] walk it.
//!
//! - [`wire`]: varints, tags and length-delimited fields.
//! - [`schema`]: the table's types and the lookup of a kind's message.
//! - [`json`]: a message ↔ its Kubernetes JSON, with the special types (`Time`, `Quantity`,
//!   `IntOrString`, `RawExtension`, …) in [`special`].
//! - [`envelope`]: the `k8s\0` magic and the `runtime.Unknown` around every object.

mod envelope;
mod json;
mod schema;
mod special;
#[rustfmt::skip]
mod table;
pub mod wire;

#[cfg(test)]
mod tests;

pub use envelope::{decode, encode};
pub use schema::{has_message, message_name};
pub use special::go_duration;

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// How deep messages may nest: Kubernetes objects nest a few dozen levels at most (a pod
/// template's affinity terms), so more is an attack on the decoder's stack.
pub const MAX_DEPTH: usize = 64;

/// Why a body does not decode or an object does not encode. Not retryable: the input is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the body does not start with Kubernetes' protobuf magic number")]
    NoMagic,
    #[error("truncated protobuf: {0}")]
    Truncated(&'static str),
    #[error("protobuf varint longer than 10 bytes")]
    VarintTooLong,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u8),
    #[error("field {field}: wire type {wire} where {expected} was expected")]
    WrongWireType {
        field: String,
        wire: u8,
        expected: &'static str,
    },
    #[error("messages nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("no protobuf message for kind {kind} in {api_version}")]
    UnknownKind { api_version: String, kind: String },
    #[error("unsupported content encoding {0:?}")]
    ContentEncoding(String),
    #[error("field {field}: {reason}")]
    InvalidValue { field: String, reason: String },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
