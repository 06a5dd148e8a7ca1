//! Validation with Kubernetes' messages: every error names the field path, e.g.
//! `metadata.name: Invalid value: "Web": a lowercase RFC 1123 subdomain must consist of …`.

use std::fmt;

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// Dotted path with indexes, e.g. `spec.containers[0].image`.
    pub path: String,
    pub kind: FieldErrorKind,
}

/// What is wrong with a field, with Kubernetes' wording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid { value: String, detail: String },
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FieldErrorKind::Required => write!(f, "{}: Required value", self.path),
            FieldErrorKind::Invalid { value, detail } => {
                write!(f, "{}: Invalid value: {value:?}: {detail}", self.path)
            }
        }
    }
}

impl FieldError {
    pub fn required(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Required,
        }
    }

    pub fn invalid(path: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Invalid {
                value: value.to_owned(),
                detail: detail.into(),
            },
        }
    }
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= DNS1123_LABEL_MAX
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1123 label (namespaces, services): at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns1123_label(path: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::required(path));
    }
    if value.len() > DNS1123_LABEL_MAX {
        return Err(FieldError::invalid(
            path,
            value,
            format!("must be no more than {DNS1123_LABEL_MAX} characters"),
        ));
    }
    if !is_label(value) {
        return Err(FieldError::invalid(
            path,
            value,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or \
             '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain (most object names): dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(path: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::required(path));
    }
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(FieldError::invalid(
            path,
            value,
            format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"),
        ));
    }
    if !value.split('.').all(is_label) {
        return Err(FieldError::invalid(
            path,
            value,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_accept_kubernetes_examples_and_reject_the_rest() {
        for ok in ["my-name", "123-abc", "a", &"a".repeat(63)] {
            dns1123_label("metadata.name", ok).unwrap();
        }
        for bad in ["My-Name", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(dns1123_label("metadata.name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomains_allow_dots_but_not_empty_labels() {
        dns1123_subdomain("metadata.name", "web.example.com").unwrap();
        assert!(dns1123_subdomain("metadata.name", "web..com").is_err());
        assert!(dns1123_subdomain("metadata.name", ".web").is_err());
    }

    #[test]
    fn errors_name_the_field_path() {
        let err = dns1123_subdomain("metadata.name", "Web").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("metadata.name: Invalid value: \"Web\": a lowercase RFC 1123"),
            "{err}"
        );
        assert_eq!(
            dns1123_label("spec.containers[0].name", "")
                .unwrap_err()
                .to_string(),
            "spec.containers[0].name: Required value"
        );
    }
}
