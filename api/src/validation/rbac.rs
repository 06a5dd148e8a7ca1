//! `rbac.authorization.k8s.io`: Kubernetes' `pkg/apis/rbac/validation`.

use super::{
    BadValue, ErrorList, FieldError, NameRule, is_valid_path_segment_name, validate_label_selector,
    validate_object_meta, validate_object_meta_update,
};
use crate::rbac_v1::{
    ClusterRole, ClusterRoleBinding, GROUP, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

fn validate_rule(rule: &PolicyRule, namespaced: bool, path: &str) -> ErrorList {
    let mut errs = Vec::new();
    if rule.verbs.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.verbs"))
                .with_detail("verbs must contain at least one value"),
        );
    }
    if !rule.non_resource_urls.is_empty() {
        let urls = super::go_strings(&rule.non_resource_urls);
        if namespaced {
            errs.push(FieldError::invalid(
                format!("{path}.nonResourceURLs"),
                urls.clone(),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !rule.api_groups.is_empty()
            || !rule.resources.is_empty()
            || !rule.resource_names.is_empty()
        {
            errs.push(FieldError::invalid(
                format!("{path}.nonResourceURLs"),
                urls,
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return errs;
    }
    if rule.api_groups.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.apiGroups"))
                .with_detail("resource rules must supply at least one api group"),
        );
    }
    if rule.resources.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.resources"))
                .with_detail("resource rules must supply at least one resource"),
        );
    }
    errs
}

/// A new or updated Role.
pub fn validate_role(role: &Role) -> ErrorList {
    let mut errs = validate_object_meta(&role.metadata, true, NameRule::PathSegment);
    for (i, rule) in role.rules.iter().enumerate() {
        errs.extend(validate_rule(rule, true, &format!("rules[{i}]")));
    }
    errs
}

/// A new or updated ClusterRole.
pub fn validate_cluster_role(role: &ClusterRole) -> ErrorList {
    let mut errs = validate_object_meta(&role.metadata, false, NameRule::PathSegment);
    for (i, rule) in role.rules.iter().enumerate() {
        errs.extend(validate_rule(rule, false, &format!("rules[{i}]")));
    }
    if let Some(aggregation) = &role.aggregation_rule {
        if aggregation.cluster_role_selectors.is_empty() {
            errs.push(
                FieldError::required("aggregationRule.clusterRoleSelectors").with_detail(
                    "at least one clusterRoleSelector required if aggregationRule is non-nil",
                ),
            );
        }
        for (i, selector) in aggregation.cluster_role_selectors.iter().enumerate() {
            errs.extend(validate_label_selector(
                selector,
                &format!("aggregationRule.clusterRoleSelectors[{i}]"),
            ));
        }
    }
    errs
}

fn validate_role_ref(role_ref: &RoleRef, errs: &mut ErrorList) {
    if role_ref.api_group != GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            role_ref.api_group.as_str(),
            &[GROUP],
        ));
    }
    if role_ref.kind != "Role" && role_ref.kind != "ClusterRole" {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            role_ref.kind.as_str(),
            &["Role", "ClusterRole"],
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name"));
    } else {
        for msg in is_valid_path_segment_name(&role_ref.name) {
            errs.push(FieldError::invalid(
                "roleRef.name",
                role_ref.name.as_str(),
                msg,
            ));
        }
    }
}

fn validate_subject(subject: &Subject, namespaced: bool, path: &str, errs: &mut ErrorList) {
    if subject.name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name")));
    }
    match subject.kind.as_str() {
        "ServiceAccount" => {
            if !subject.name.is_empty() {
                for msg in super::is_dns1123_subdomain(&subject.name) {
                    errs.push(FieldError::invalid(
                        format!("{path}.name"),
                        subject.name.as_str(),
                        msg,
                    ));
                }
            }
            if !subject.api_group.is_empty() {
                errs.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    subject.api_group.as_str(),
                    &[""],
                ));
            }
            if !namespaced && subject.namespace.is_empty() {
                errs.push(FieldError::required(format!("{path}.namespace")));
            }
        }
        "User" | "Group" => {
            if subject.api_group != GROUP {
                errs.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    subject.api_group.as_str(),
                    &[GROUP],
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            format!("{path}.kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

fn validate_binding(binding: &RoleBinding, namespaced: bool) -> ErrorList {
    let mut errs = validate_object_meta(&binding.metadata, namespaced, NameRule::PathSegment);
    validate_role_ref(&binding.role_ref, &mut errs);
    if !namespaced && binding.role_ref.kind == "Role" {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            "Role",
            &["ClusterRole"],
        ));
    }
    for (i, subject) in binding.subjects.iter().enumerate() {
        validate_subject(subject, namespaced, &format!("subjects[{i}]"), &mut errs);
    }
    errs
}

/// A new RoleBinding.
pub fn validate_role_binding(binding: &RoleBinding) -> ErrorList {
    validate_binding(binding, true)
}

/// A new ClusterRoleBinding.
pub fn validate_cluster_role_binding(binding: &ClusterRoleBinding) -> ErrorList {
    validate_binding(&binding.into(), false)
}

/// `roleRef` is immutable: a binding to another role is a new binding.
fn role_ref_unchanged(old: &RoleBinding, new: &RoleBinding, errs: &mut ErrorList) {
    if old.role_ref != new.role_ref {
        let r = &new.role_ref;
        errs.push(FieldError::invalid(
            "roleRef",
            BadValue::Raw(format!(
                "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
                r.api_group, r.kind, r.name
            )),
            "cannot change roleRef",
        ));
    }
}

/// An update of a RoleBinding.
pub fn validate_update_role_binding(old: &RoleBinding, new: &RoleBinding) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    role_ref_unchanged(old, new, &mut errs);
    errs.extend(validate_role_binding(new));
    errs
}

/// An update of a ClusterRoleBinding.
pub fn validate_update_cluster_role_binding(
    old: &ClusterRoleBinding,
    new: &ClusterRoleBinding,
) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    role_ref_unchanged(&old.into(), &new.into(), &mut errs);
    errs.extend(validate_cluster_role_binding(new));
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(json: serde_json::Value) -> RoleBinding {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn role_ref_cannot_change() {
        let old = binding(
            serde_json::json!({"metadata": {"name": "b", "namespace": "ns"},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"}}),
        );
        let mut new = old.clone();
        new.role_ref.name = "edit".into();
        let errs = validate_update_role_binding(&old, &new);
        assert_eq!(
            errs[0].to_string(),
            r#"roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"edit"}: cannot change roleRef"#
        );
        assert!(validate_update_role_binding(&old, &old).is_empty());
    }

    #[test]
    fn rules_and_subjects_are_checked() {
        let role: Role = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r", "namespace": "ns"},
            "rules": [{"verbs": []}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}],
        }))
        .unwrap();
        let msgs: Vec<String> = validate_role(&role)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            msgs,
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[0].resources: Required value: resource rules must supply at least one resource",
                r#"rules[1].nonResourceURLs: Invalid value: []string{"/x"}: namespaced rules cannot apply to non-resource URLs"#,
            ]
        );
        let b = binding(
            serde_json::json!({"metadata": {"name": "b", "namespace": "ns"},
            "roleRef": {"apiGroup": GROUP, "kind": "Thing", "name": "view"},
            "subjects": [{"kind": "Robot", "name": "r2"}]}),
        );
        let msgs: Vec<String> = validate_role_binding(&b)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            msgs,
            [
                r#"roleRef.kind: Unsupported value: "Thing": supported values: "Role", "ClusterRole""#,
                r#"subjects[0].kind: Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group""#,
            ]
        );
    }
}
