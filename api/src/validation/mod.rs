//! Validation with Kubernetes' messages: every error names the field path, e.g.
//! `metadata.name: Invalid value: "Web": a lowercase RFC 1123 subdomain must consist of …`.
//!
//! `validate_<kind>(&obj)` checks a new object; `validate_update_<kind>(&old, &new)` checks an
//! update: the new object as a whole, metadata that may not change, and the kind's immutable
//! fields. Both expect what the API server has after defaulting, but accept unset optional
//! fields (read as their defaults). [`validate_object`] and [`validate_object_update`] dispatch
//! on the registry for JSON bodies.

mod apiary;
mod apps;
mod batch;
mod core;
mod networking;
mod rbac;
mod security_context;
mod storage;

use std::{collections::BTreeMap, fmt, net::IpAddr};

pub use self::{
    apiary::{validate_security_identity, validate_update_security_identity},
    apps::{
        validate_daemon_set, validate_deployment, validate_replica_set, validate_stateful_set,
        validate_update_daemon_set, validate_update_deployment, validate_update_replica_set,
        validate_update_stateful_set,
    },
    batch::{validate_cron_job, validate_job, validate_update_cron_job, validate_update_job},
    core::{
        validate_config_map, validate_endpoints, validate_event, validate_namespace, validate_node,
        validate_pod, validate_pod_spec, validate_pod_template, validate_secret, validate_service,
        validate_service_account, validate_update_config_map, validate_update_pod,
        validate_update_secret, validate_update_service,
    },
    networking::{validate_endpoint_slice, validate_network_policy},
    rbac::{
        validate_cluster_role, validate_cluster_role_binding, validate_role, validate_role_binding,
        validate_update_cluster_role_binding, validate_update_role_binding,
    },
    storage::{
        storage_bytes, validate_claim_template_spec, validate_csi_driver, validate_csi_node,
        validate_csi_storage_capacity, validate_persistent_volume,
        validate_persistent_volume_claim, validate_storage_class, validate_update_csi_driver,
        validate_update_persistent_volume, validate_update_persistent_volume_claim,
        validate_update_storage_class, validate_update_volume_attachment,
        validate_volume_attachment,
    },
};
use crate::{
    coordination_v1::Lease, intstr::IntOrString, meta::ObjectMeta, resource::ResourceInfo,
    selector::LabelSelector,
};

/// The errors of one validation; empty means valid.
pub type ErrorList = Vec<FieldError>;

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// Dotted path with indexes and keys, e.g. `spec.containers[0].image`, `data[key]`.
    pub path: String,
    pub kind: FieldErrorKind,
    /// The offending value, printed after the kind for most kinds.
    pub value: BadValue,
    /// Why, e.g. `must be between 1 and 65535, inclusive`; may be empty.
    pub detail: String,
}

/// What is wrong with a field (Kubernetes' `field.ErrorType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldErrorKind {
    NotFound,
    Required,
    Duplicate,
    Invalid,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
    Internal,
}

impl FieldErrorKind {
    /// The words Kubernetes prints, e.g. `Required value`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::Internal => "Internal error",
        }
    }

    /// The `reason` of a `Status` cause, e.g. `FieldValueRequired`.
    pub fn cause_reason(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::Internal => "InternalError",
        }
    }
}

/// A value as Go's `%v`/`%q` prints it in a field error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BadValue {
    /// None (printed `null` where a value is expected).
    #[default]
    Omitted,
    /// Printed quoted: `"Web"`.
    Str(String),
    /// Printed bare: `-1`.
    Int(i64),
    /// Printed as is, e.g. `map[string]string{"app":"web"}`.
    Raw(String),
}

impl From<&str> for BadValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}
impl From<&String> for BadValue {
    fn from(s: &String) -> Self {
        Self::Str(s.clone())
    }
}
impl From<String> for BadValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}
impl From<i64> for BadValue {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}
impl From<i32> for BadValue {
    fn from(n: i32) -> Self {
        Self::Int(n.into())
    }
}
impl From<&IntOrString> for BadValue {
    fn from(v: &IntOrString) -> Self {
        match v {
            IntOrString::Int(n) => Self::Int((*n).into()),
            IntOrString::String(s) => Self::Str(s.clone()),
        }
    }
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Omitted => f.write_str("null"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Raw(s) => f.write_str(s),
        }
    }
}

impl FieldError {
    fn new(
        kind: FieldErrorKind,
        path: impl Into<String>,
        value: BadValue,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            kind,
            value,
            detail: detail.into(),
        }
    }

    /// `path: Required value`.
    pub fn required(path: impl Into<String>) -> Self {
        Self::new(FieldErrorKind::Required, path, BadValue::Omitted, "")
    }

    /// `path: Invalid value: "value": detail`.
    pub fn invalid(
        path: impl Into<String>,
        value: impl Into<BadValue>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(FieldErrorKind::Invalid, path, value.into(), detail)
    }

    /// `path: Unsupported value: "value": supported values: "a", "b"`.
    pub fn not_supported(
        path: impl Into<String>,
        value: impl Into<BadValue>,
        valid: &[&str],
    ) -> Self {
        let detail = if valid.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = valid.iter().map(|v| format!("{v:?}")).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(FieldErrorKind::NotSupported, path, value.into(), detail)
    }

    /// `path: Duplicate value: "value"`.
    pub fn duplicate(path: impl Into<String>, value: impl Into<BadValue>) -> Self {
        Self::new(FieldErrorKind::Duplicate, path, value.into(), "")
    }

    /// `path: Not found: "value"`.
    pub fn not_found(path: impl Into<String>, value: impl Into<BadValue>) -> Self {
        Self::new(FieldErrorKind::NotFound, path, value.into(), "")
    }

    /// `path: Forbidden: detail`.
    pub fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(FieldErrorKind::Forbidden, path, BadValue::Omitted, detail)
    }

    /// `path: Too long: may not be more than N bytes`.
    pub fn too_long(path: impl Into<String>, max: usize) -> Self {
        let unit = if max == 1 { "byte" } else { "bytes" };
        let detail = format!("may not be more than {max} {unit}");
        Self::new(FieldErrorKind::TooLong, path, BadValue::Omitted, detail)
    }

    /// `path: Too many: N: must have at most M items`.
    pub fn too_many(path: impl Into<String>, actual: usize, max: usize) -> Self {
        let unit = if max == 1 { "item" } else { "items" };
        let detail = format!("must have at most {max} {unit}");
        Self::new(
            FieldErrorKind::TooMany,
            path,
            BadValue::Int(actual as i64),
            detail,
        )
    }

    /// `path: Internal error: detail`.
    pub fn internal(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(FieldErrorKind::Internal, path, BadValue::Omitted, detail)
    }

    /// The same error with `detail` (e.g. `Required value: must specify a handler type`).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// The message without the path (Kubernetes' `ErrorBody`), as in a `Status` cause.
    pub fn body(&self) -> String {
        let mut s = match self.kind {
            FieldErrorKind::Required
            | FieldErrorKind::Forbidden
            | FieldErrorKind::TooLong
            | FieldErrorKind::Internal => self.kind.as_str().to_owned(),
            _ => format!("{}: {}", self.kind.as_str(), self.value),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.body())
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax checks returning Kubernetes' messages (`k8s.io/apimachinery/pkg/util/validation`)

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
/// The most bytes all annotations of an object may take together.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// The most bytes a ConfigMap's or Secret's data may take.
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case \
    alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric \
    characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and \
    must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric \
    characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// `msg (e.g. 'a',  or 'b', regex used for validation is 'fmt')`, spacing as in Go.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut s = format!("{msg} (");
    if !examples.is_empty() {
        s.push_str("e.g. ");
        for (i, e) in examples.iter().enumerate() {
            if i > 0 {
                s.push_str(" or ");
            }
            s.push_str(&format!("'{e}', "));
        }
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_label_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_subdomain_syntax(s: &str) -> bool {
    s.split('.').all(is_label_syntax)
}

/// Messages for a value that is not a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, ≤ 63).
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errs.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !is_label_syntax(value) {
        if is_subdomain_syntax(value) {
            errs.push("must not contain dots".to_owned());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// Messages for a value that is not a DNS-1123 subdomain (dot-separated labels, ≤ 253).
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    if !is_subdomain_syntax(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Messages for a value that is not a DNS-1035 label (a label starting with a letter): the
/// names of Services.
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errs.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !is_label_syntax(value) || !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        errs.push(regex_error(
            DNS1035_LABEL_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Messages for a value that is not a qualified name (`[prefix/]name`): label and annotation
/// keys, finalizers.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX {
        errs.push(format!("name part {}", max_len_error(QUALIFIED_NAME_MAX)));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Messages for a value that is not a label value (empty, or a qualified name part ≤ 63).
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        errs.push(max_len_error(LABEL_VALUE_MAX));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Messages for a port number outside 1–65535.
pub fn is_valid_port_num(port: i32) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec![inclusive_range_error(1, 65535)]
    }
}

fn inclusive_range_error(lo: i64, hi: i64) -> String {
    format!("must be between {lo} and {hi}, inclusive")
}

/// Messages for a value that is not an IANA service name (a named port).
pub fn is_valid_port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    let b = port.as_bytes();
    if b.is_empty()
        || !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !b.iter().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// Messages for a value that is not a ConfigMap or Secret key.
pub fn is_config_map_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    match value {
        "." => errs.push("must not be '.'".into()),
        ".." => errs.push("must not be '..'".into()),
        v if v.starts_with("..") => errs.push("must not start with '..'".into()),
        _ => {}
    }
    errs
}

/// Messages for a value that is not a percentage (`[0-9]+%`).
pub fn is_valid_percent(value: &str) -> Vec<String> {
    match value.strip_suffix('%') {
        Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => Vec::new(),
        _ => vec![regex_error(
            "a valid percent string must be a numeric string followed by an ending '%'",
            "[0-9]+%",
            &["1%", "93%"],
        )],
    }
}

pub(crate) const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
pub(crate) const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/// Whether `value` is an IPv4 or IPv6 address.
pub fn is_valid_ip(value: &str) -> bool {
    value.parse::<IpAddr>().is_ok()
}

/// A DNS-1123 label (namespaces): returns the first error.
pub fn dns1123_label(path: &str, value: &str) -> Result<(), FieldError> {
    first_error(path, value, is_dns1123_label)
}

/// A DNS-1123 subdomain (most object names): returns the first error.
pub fn dns1123_subdomain(path: &str, value: &str) -> Result<(), FieldError> {
    first_error(path, value, is_dns1123_subdomain)
}

fn first_error(path: &str, value: &str, check: fn(&str) -> Vec<String>) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::required(path));
    }
    match check(value).into_iter().next() {
        None => Ok(()),
        Some(msg) => Err(FieldError::invalid(path, value, msg)),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the kinds

/// Pushes one `Invalid` per message.
pub(crate) fn invalid_each(errs: &mut ErrorList, path: &str, value: &str, msgs: Vec<String>) {
    errs.extend(
        msgs.into_iter()
            .map(|m| FieldError::invalid(path, value, m)),
    );
}

pub(crate) fn non_negative(errs: &mut ErrorList, path: &str, value: i64) {
    if value < 0 {
        errs.push(FieldError::invalid(
            path,
            value,
            "must be greater than or equal to 0",
        ));
    }
}

pub(crate) fn port_num(errs: &mut ErrorList, path: &str, port: i32) {
    errs.extend(
        is_valid_port_num(port)
            .into_iter()
            .map(|m| FieldError::invalid(path, port, m)),
    );
}

/// A port given as number or name (probes, `targetPort`).
pub(crate) fn port_num_or_name(errs: &mut ErrorList, path: &str, port: &IntOrString) {
    match port {
        IntOrString::Int(n) => port_num(errs, path, *n),
        IntOrString::String(s) => invalid_each(errs, path, s, is_valid_port_name(s)),
    }
}

/// Go's `%#v` of a `map[string]string`.
pub(crate) fn go_map(map: &BTreeMap<String, String>) -> BadValue {
    if map.is_empty() {
        return BadValue::Raw("map[string]string(nil)".into());
    }
    let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    BadValue::Raw(format!("map[string]string{{{}}}", pairs.join(", ")))
}

/// Go's `%#v` of a `[]string`.
pub(crate) fn go_strings(list: &[String]) -> BadValue {
    let quoted: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    BadValue::Raw(format!("[]string{{{}}}", quoted.join(", ")))
}

/// Go's `%#v` of a `metav1.LabelSelector`, as immutability errors print it.
pub(crate) fn go_selector(sel: Option<&LabelSelector>) -> BadValue {
    let Some(sel) = sel else {
        return BadValue::Raw("nil".into());
    };
    let labels = match go_map(&sel.match_labels) {
        BadValue::Raw(s) => s,
        _ => unreachable!("go_map returns Raw"),
    };
    let exprs = if sel.match_expressions.is_empty() {
        "[]v1.LabelSelectorRequirement(nil)".to_owned()
    } else {
        let items: Vec<String> = sel
            .match_expressions
            .iter()
            .map(|r| {
                let values = match go_strings(&r.values) {
                    BadValue::Raw(s) => s,
                    _ => unreachable!("go_strings returns Raw"),
                };
                format!(
                    "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{values}}}",
                    r.key, r.operator
                )
            })
            .collect();
        format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
    };
    BadValue::Raw(format!(
        "v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{exprs}}}"
    ))
}

/// `field is immutable` when `old != new`.
pub(crate) fn immutable<T: PartialEq>(
    errs: &mut ErrorList,
    path: &str,
    old: &T,
    new: &T,
    value: impl FnOnce() -> BadValue,
) {
    if old != new {
        errs.push(FieldError::invalid(path, value(), "field is immutable"));
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// How a kind's names are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// Most kinds.
    Subdomain,
    /// Namespaces.
    Label,
    /// Services.
    Dns1035Label,
    /// RBAC kinds: any name that is a valid URL path segment.
    PathSegment,
}

/// Kubernetes' `path.IsValidPathSegmentName`: a name that can be one segment of a URL path.
pub fn is_valid_path_segment_name(name: &str) -> Vec<String> {
    match name {
        "." | ".." => return vec![format!("may not be '{name}'")],
        _ => {}
    }
    ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

impl NameRule {
    fn check(self, name: &str) -> Vec<String> {
        match self {
            Self::Subdomain => is_dns1123_subdomain(name),
            Self::Label => is_dns1123_label(name),
            Self::Dns1035Label => is_dns1035_label(name),
            Self::PathSegment => is_valid_path_segment_name(name),
        }
    }
}

/// `metadata.labels` (or another label map at `path`): keys are qualified names, values
/// label values.
pub fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> ErrorList {
    let mut errs = Vec::new();
    for (k, v) in labels {
        invalid_each(&mut errs, path, k, is_qualified_name(k));
        invalid_each(&mut errs, path, v, is_valid_label_value(v));
    }
    errs
}

/// `metadata.annotations`: keys are qualified names (case-insensitively), 256 KiB in total.
pub fn validate_annotations(annotations: &BTreeMap<String, String>, path: &str) -> ErrorList {
    let mut errs = Vec::new();
    let mut total = 0;
    for (k, v) in annotations {
        invalid_each(
            &mut errs,
            path,
            k,
            is_qualified_name(&k.to_ascii_lowercase()),
        );
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    errs
}

/// The metadata of a new object.
pub fn validate_object_meta(meta: &ObjectMeta, namespaced: bool, rule: NameRule) -> ErrorList {
    let mut errs = Vec::new();
    if !meta.generate_name.is_empty() {
        // A generated name ends in random characters: a trailing '-' is fine.
        let masked = match meta.generate_name.strip_suffix('-') {
            Some(stem) => format!("{stem}a"),
            None => meta.generate_name.clone(),
        };
        invalid_each(
            &mut errs,
            "metadata.generateName",
            &meta.generate_name,
            rule.check(&masked),
        );
    }
    if meta.name.is_empty() {
        errs.push(
            FieldError::required("metadata.name").with_detail("name or generateName is required"),
        );
    } else {
        invalid_each(
            &mut errs,
            "metadata.name",
            &meta.name,
            rule.check(&meta.name),
        );
    }
    if namespaced {
        if meta.namespace.is_empty() {
            errs.push(FieldError::required("metadata.namespace"));
        } else {
            invalid_each(
                &mut errs,
                "metadata.namespace",
                &meta.namespace,
                is_dns1123_label(&meta.namespace),
            );
        }
    } else if !meta.namespace.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    non_negative(&mut errs, "metadata.generation", meta.generation);
    errs.extend(validate_labels(&meta.labels, "metadata.labels"));
    errs.extend(validate_annotations(
        &meta.annotations,
        "metadata.annotations",
    ));
    for (i, owner) in meta.owner_references.iter().enumerate() {
        let p = format!("metadata.ownerReferences[{i}]");
        for (field, value) in [
            ("apiVersion", &owner.api_version),
            ("kind", &owner.kind),
            ("name", &owner.name),
            ("uid", &owner.uid),
        ] {
            if value.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{p}.{field}"),
                    value,
                    format!("{field} must not be empty"),
                ));
            }
        }
    }
    if meta
        .owner_references
        .iter()
        .filter(|o| o.controller == Some(true))
        .count()
        > 1
    {
        errs.push(FieldError::invalid(
            "metadata.ownerReferences",
            BadValue::Omitted,
            "Only one reference can have Controller set to true",
        ));
    }
    for (i, f) in meta.finalizers.iter().enumerate() {
        let p = format!("metadata.finalizers[{i}]");
        invalid_each(&mut errs, &p, f, is_qualified_name(f));
    }
    errs
}

/// The metadata of an update: `name`, `namespace`, `uid` and `creationTimestamp` may not
/// change, and no finalizer may be added to an object being deleted.
pub fn validate_object_meta_update(old: &ObjectMeta, new: &ObjectMeta) -> ErrorList {
    let mut errs = Vec::new();
    immutable(&mut errs, "metadata.name", &old.name, &new.name, || {
        (&new.name).into()
    });
    immutable(
        &mut errs,
        "metadata.namespace",
        &old.namespace,
        &new.namespace,
        || (&new.namespace).into(),
    );
    if !old.uid.is_empty() && !new.uid.is_empty() {
        immutable(&mut errs, "metadata.uid", &old.uid, &new.uid, || {
            (&new.uid).into()
        });
    }
    if let (Some(o), Some(n)) = (&old.creation_timestamp, &new.creation_timestamp) {
        immutable(&mut errs, "metadata.creationTimestamp", o, n, || n.into());
    }
    if old.deletion_timestamp.is_some() {
        let added: Vec<String> = new
            .finalizers
            .iter()
            .filter(|f| !old.finalizers.contains(f))
            .cloned()
            .collect();
        if !added.is_empty() {
            errs.push(FieldError::forbidden(
                "metadata.finalizers",
                format!(
                    "no new finalizers can be added if the object is being deleted, found new \
                     finalizers {}",
                    go_strings(&added)
                ),
            ));
        }
    }
    errs
}

/// A structured label selector at `path` (`spec.selector`, `spec.podSelector`, …).
pub fn validate_label_selector(sel: &LabelSelector, path: &str) -> ErrorList {
    let mut errs = Vec::new();
    for (i, r) in sel.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        match r.operator.as_str() {
            "In" | "NotIn" => {
                if r.values.is_empty() {
                    errs.push(
                        FieldError::required(format!("{p}.values"))
                            .with_detail("must be specified when `operator` is 'In' or 'NotIn'"),
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !r.values.is_empty() {
                    errs.push(FieldError::forbidden(
                        format!("{p}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            op => errs.push(FieldError::invalid(
                format!("{p}.operator"),
                op,
                "not a valid selector operator",
            )),
        }
        invalid_each(
            &mut errs,
            &format!("{p}.key"),
            &r.key,
            is_qualified_name(&r.key),
        );
        for v in &r.values {
            invalid_each(
                &mut errs,
                &format!("{p}.values"),
                v,
                is_valid_label_value(v),
            );
        }
    }
    errs.extend(validate_labels(
        &sel.match_labels,
        &format!("{path}.matchLabels"),
    ));
    errs
}

// ---------------------------------------------------------------------------------------------
// Lease and dispatch

/// A `coordination.k8s.io/v1` Lease.
pub fn validate_lease(lease: &Lease) -> ErrorList {
    let mut errs = validate_object_meta(&lease.metadata, true, NameRule::Subdomain);
    if let Some(d) = lease.spec.lease_duration_seconds
        && d <= 0
    {
        errs.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            d,
            "must be greater than 0",
        ));
    }
    if let Some(t) = lease.spec.lease_transitions {
        non_negative(&mut errs, "spec.leaseTransitions", t.into());
    }
    errs
}

/// Validates a JSON object of the kind `info` describes; `Err` if it does not even decode.
pub fn validate_object(
    info: &ResourceInfo,
    object: &serde_json::Value,
) -> Result<ErrorList, serde_json::Error> {
    // Custom resources are validated against their schemas by the API server; a custom
    // plural shared with a built-in one is not the built-in.
    if !crate::resource::RESOURCES.contains(info) {
        return Ok(Vec::new());
    }
    macro_rules! check {
        ($($plural:literal => $f:path),* $(,)?) => {
            match info.plural {
                $($plural => $f(&crate::meta::from_json(object.clone())?),)*
                _ => Vec::new(),
            }
        };
    }
    Ok(check!(
        "namespaces" => validate_namespace,
        "pods" => validate_pod,
        "services" => validate_service,
        "endpoints" => validate_endpoints,
        "configmaps" => validate_config_map,
        "secrets" => validate_secret,
        "nodes" => validate_node,
        "events" => validate_event,
        "serviceaccounts" => validate_service_account,
        "persistentvolumes" => validate_persistent_volume,
        "persistentvolumeclaims" => validate_persistent_volume_claim,
        "storageclasses" => validate_storage_class,
        "csidrivers" => validate_csi_driver,
        "csinodes" => validate_csi_node,
        "csistoragecapacities" => validate_csi_storage_capacity,
        "volumeattachments" => validate_volume_attachment,
        "deployments" => validate_deployment,
        "replicasets" => validate_replica_set,
        "statefulsets" => validate_stateful_set,
        "daemonsets" => validate_daemon_set,
        "jobs" => validate_job,
        "cronjobs" => validate_cron_job,
        "horizontalpodautoscalers" => crate::autoscaling_v2::validate_hpa,
        "networkpolicies" => validate_network_policy,
        "endpointslices" => validate_endpoint_slice,
        "leases" => validate_lease,
        "securityidentities" => validate_security_identity,
        "roles" => validate_role,
        "clusterroles" => validate_cluster_role,
        "rolebindings" => validate_role_binding,
        "clusterrolebindings" => validate_cluster_role_binding,
        "customresourcedefinitions" => crate::apiextensions_v1::validate_crd,
        "mutatingwebhookconfigurations" => crate::admissionregistration_v1::validate_mutating,
        "validatingwebhookconfigurations" => crate::admissionregistration_v1::validate_validating,
        "validatingadmissionpolicies" => crate::admissionregistration_v1::validate_policy,
        "validatingadmissionpolicybindings" => crate::admissionregistration_v1::validate_policy_binding,
    ))
}

/// Validates an update of a JSON object: the kind's `validate_update_*` where it has one,
/// else metadata immutability plus [`validate_object`] of the new object.
pub fn validate_object_update(
    info: &ResourceInfo,
    old: &serde_json::Value,
    new: &serde_json::Value,
) -> Result<ErrorList, serde_json::Error> {
    macro_rules! check {
        ($($plural:literal => $f:path),* $(,)?) => {
            match info.plural {
                $($plural => return Ok($f(
                    &crate::meta::from_json(old.clone())?,
                    &crate::meta::from_json(new.clone())?,
                )),)*
                _ => {}
            }
        };
    }
    let built_in = crate::resource::RESOURCES.contains(info);
    if built_in {
        check!(
        "customresourcedefinitions" => crate::apiextensions_v1::validate_crd_update,
        "pods" => validate_update_pod,
        "persistentvolumes" => validate_update_persistent_volume,
        "persistentvolumeclaims" => validate_update_persistent_volume_claim,
        "storageclasses" => validate_update_storage_class,
        "csidrivers" => validate_update_csi_driver,
        "volumeattachments" => validate_update_volume_attachment,
        "services" => validate_update_service,
        "configmaps" => validate_update_config_map,
        "secrets" => validate_update_secret,
        "deployments" => validate_update_deployment,
        "horizontalpodautoscalers" => crate::autoscaling_v2::validate_update_hpa,
        "replicasets" => validate_update_replica_set,
        "statefulsets" => validate_update_stateful_set,
        "daemonsets" => validate_update_daemon_set,
        "jobs" => validate_update_job,
        "cronjobs" => validate_update_cron_job,
        "securityidentities" => validate_update_security_identity,
        "rolebindings" => validate_update_role_binding,
        "clusterrolebindings" => validate_update_cluster_role_binding,
        );
    }
    let meta = |v: &serde_json::Value| match v.get("metadata") {
        Some(m) => crate::meta::from_json::<ObjectMeta>(m.clone()),
        None => Ok(ObjectMeta::default()),
    };
    let (old_meta, new_meta) = (meta(old)?, meta(new)?);
    let mut errs = validate_object_meta_update(&old_meta, &new_meta);
    errs.extend(validate_object(info, new)?);
    Ok(errs)
}

#[cfg(test)]
mod tests;
