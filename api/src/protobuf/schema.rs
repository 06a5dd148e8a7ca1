//! The schema table's types, and which message a kind is.

use super::table::{MESSAGES, PACKAGES};

/// A protobuf message: its full name and its fields, sorted by number.
#[derive(Debug)]
pub struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    pub number: u32,
    /// The field's name in Kubernetes' JSON; empty for an inlined message.
    pub json: &'static str,
    pub label: Label,
    pub kind: Kind,
}

/// How often a field occurs (Kubernetes' protos are proto2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    Optional,
    Repeated,
    /// `map<string, kind>`: entries of key 1 and value 2, a JSON object.
    Map,
    /// A Go struct embedded with `json:",inline"`: a message in protobuf whose fields are the
    /// parent's in JSON.
    Inline,
}

/// A field's type, and with it its JSON form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Bool,
    Int32,
    Int64,
    Double,
    /// Base64 in JSON.
    Bytes,
    /// An index into the table.
    Message(usize),
    /// `meta.v1.Time`: RFC 3339 to the second.
    Time,
    /// `meta.v1.MicroTime`: RFC 3339 to the microsecond.
    MicroTime,
    /// `meta.v1.Duration`: a Go duration string (`1h0m0s`).
    #[allow(
        dead_code,
        reason = "no message of the served group versions has one today; the generator writes it for one that does"
    )]
    Duration,
    /// `meta.v1.FieldsV1`: JSON bytes, embedded.
    FieldsV1,
    /// `resource.Quantity`: a string.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `runtime.RawExtension`: JSON bytes (or an enveloped protobuf object), embedded.
    RawExtension,
    /// Go's `type ExtraValue []string`: a message of `repeated string items = 1`, a JSON array.
    StringList,
}

impl Message {
    /// The field numbered `number`.
    pub fn field(&self, number: u64) -> Option<&'static Field> {
        self.fields
            .binary_search_by_key(&number, |f| u64::from(f.number))
            .ok()
            .map(|i| &self.fields[i])
    }
}

pub fn message(index: usize) -> &'static Message {
    &MESSAGES[index]
}

const META_PACKAGE: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.";

/// The protobuf message of `kind` in `api_version`. The option and status kinds
/// (`DeleteOptions`, `Status`) are `meta/v1`'s in every group version, as Go's scheme registers
/// them.
pub fn for_kind(api_version: &str, kind: &str) -> Option<&'static Message> {
    let find = |package: &str| {
        let name = format!("{package}{kind}");
        MESSAGES
            .binary_search_by(|m| m.name.cmp(name.as_str()))
            .ok()
            .map(|i| &MESSAGES[i])
    };
    PACKAGES
        .iter()
        .find(|(version, _)| *version == api_version)
        .and_then(|(_, package)| find(package))
        .or_else(|| find(META_PACKAGE))
}

/// Whether objects of `kind` in `api_version` have a protobuf message (Apiary's own kinds, like
/// custom resources in Kubernetes, are JSON only).
pub fn has_message(api_version: &str, kind: &str) -> bool {
    for_kind(api_version, kind).is_some()
}

/// The full protobuf name of `kind`'s message (`k8s.io.api.core.v1.Pod`).
pub fn message_name(api_version: &str, kind: &str) -> Option<&'static str> {
    for_kind(api_version, kind).map(|m| m.name)
}
