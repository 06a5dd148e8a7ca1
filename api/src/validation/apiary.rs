//! Validation of `apiary.dev/v1` SecurityIdentity.

use super::{
    ErrorList, FieldError, NameRule, go_map, validate_object_meta, validate_object_meta_update,
};
use crate::apiary_v1::{MAX_IDENTITY, MIN_IDENTITY, SOURCES, SecurityIdentity, parse_id};

/// A SecurityIdentity: named after a number in the allocated range, with labels whose every
/// key is `<source>:<key>` of a known source.
pub fn validate_security_identity(identity: &SecurityIdentity) -> ErrorList {
    let mut errs = validate_object_meta(&identity.metadata, false, NameRule::Subdomain);
    let name = &identity.metadata.name;
    if !name.is_empty() && parse_id(name).is_none() {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            format!(
                "must be a decimal number between {MIN_IDENTITY} and {}, inclusive, without \
                 leading zeros",
                MAX_IDENTITY - 1
            ),
        ));
    }
    if identity.labels.is_empty() {
        errs.push(FieldError::required("labels"));
    }
    for key in identity.labels.keys() {
        let known = key
            .split_once(':')
            .is_some_and(|(source, rest)| SOURCES.contains(&source) && !rest.is_empty());
        if !known {
            let sources: Vec<String> = SOURCES.iter().map(|s| format!("{s}:<key>")).collect();
            errs.push(FieldError::invalid(
                format!("labels[{key}]"),
                key,
                format!("a key must have the form {}", sources.join(", ")),
            ));
        }
    }
    errs
}

/// An update of a SecurityIdentity: its labels are what its number means to every node, so
/// they never change.
pub fn validate_update_security_identity(
    old: &SecurityIdentity,
    new: &SecurityIdentity,
) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_security_identity(new));
    if old.labels != new.labels {
        errs.push(FieldError::invalid(
            "labels",
            go_map(&new.labels),
            "field is immutable",
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn identity(name: &str, labels: &[(&str, &str)]) -> SecurityIdentity {
        let mut id = SecurityIdentity::new(
            256,
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        id.metadata.name = name.to_owned();
        id
    }

    fn messages(errs: &ErrorList) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_identity_passes() {
        let id = identity("256", &[("apiary:namespace", "a"), ("k8s:app", "web")]);
        assert_eq!(validate_security_identity(&id), vec![]);
    }

    #[test]
    fn names_outside_the_range_are_invalid() {
        for name in ["255", "16777216", "web", "0300"] {
            let errs = validate_security_identity(&identity(name, &[("apiary:namespace", "a")]));
            assert_eq!(errs.len(), 1, "{name}: {errs:?}");
            assert_eq!(errs[0].path, "metadata.name");
            assert!(
                errs[0].to_string().contains("between 256 and 16777215"),
                "{}",
                errs[0]
            );
        }
    }

    #[test]
    fn labels_are_required_and_keys_need_a_source() {
        let errs = validate_security_identity(&identity("256", &[]));
        assert_eq!(messages(&errs), ["labels: Required value"]);
        let errs = validate_security_identity(&identity("256", &[("app", "web"), ("k8s:", "")]));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].path, "labels[app]");
        assert_eq!(errs[1].path, "labels[k8s:]");
    }

    #[test]
    fn labels_are_immutable() {
        let old = identity("256", &[("apiary:namespace", "a")]);
        let mut new = old.clone();
        assert_eq!(validate_update_security_identity(&old, &new), vec![]);
        new.labels = BTreeMap::from([("apiary:namespace".to_owned(), "b".to_owned())]);
        let errs = validate_update_security_identity(&old, &new);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "labels");
        assert!(errs[0].to_string().ends_with("field is immutable"));
    }
}
