//! `authorization.k8s.io/v1` access reviews: answered from the authorizer, never stored
//! (`pkg/registry/authorization`). `kubectl auth can-i` sends SelfSubjectAccessReviews (and
//! SelfSubjectRulesReviews for `--list`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Authz, request_info::RequestInfo};
use crate::apiserver::{auth::UserInfo, error::ApiError, path::Target};

fn attributes(spec: &Value, namespace: Option<&str>) -> Result<RequestInfo, ApiError> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let resource = &spec["resourceAttributes"];
    let non_resource = &spec["nonResourceAttributes"];
    match (resource.is_object(), non_resource.is_object()) {
        (true, false) => Ok(RequestInfo {
            is_resource_request: true,
            verb: s(&resource["verb"]),
            api_group: s(&resource["group"]),
            api_version: s(&resource["version"]),
            namespace: namespace.map_or_else(|| s(&resource["namespace"]), str::to_owned),
            resource: s(&resource["resource"]),
            subresource: s(&resource["subresource"]),
            name: s(&resource["name"]),
            ..RequestInfo::default()
        }),
        (false, true) => Ok(RequestInfo {
            path: s(&non_resource["path"]),
            verb: s(&non_resource["verb"]),
            ..RequestInfo::default()
        }),
        (true, true) => Err(invalid(
            "spec.nonResourceAttributes",
            "Invalid value: \"\": cannot be specified in combination with resourceAttributes",
        )),
        (false, false) => Err(invalid(
            "spec.resourceAttributes",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        "SubjectAccessReview",
        "authorization.k8s.io",
        "",
        &[(field.to_owned(), format!("{field}: {message}"))],
    )
}

fn user_of(spec: &Value) -> UserInfo {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let extra: BTreeMap<String, Vec<String>> = spec["extra"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
        .unwrap_or_default();
    UserInfo {
        name: spec["user"].as_str().unwrap_or_default().to_owned(),
        uid: spec["uid"].as_str().unwrap_or_default().to_owned(),
        groups: strings(&spec["groups"]),
        extra,
    }
}

/// Answers a review created at `target` by `requester` with the body `review`.
pub fn answer(
    authz: &Authz,
    requester: &UserInfo,
    target: &Target,
    mut review: Value,
) -> Result<Value, ApiError> {
    let kind = target.resource.kind;
    let spec = review["spec"].clone();
    let status = match target.resource.plural {
        "selfsubjectrulesreviews" => {
            let namespace = spec["namespace"].as_str().unwrap_or_default();
            rules_status(authz, requester, namespace)
        }
        plural => {
            let (user, namespace) = match plural {
                "selfsubjectaccessreviews" => (requester.clone(), None),
                "localsubjectaccessreviews" => {
                    let ns = target.namespace.as_deref().unwrap_or_default();
                    let spec_ns = spec["resourceAttributes"]["namespace"]
                        .as_str()
                        .unwrap_or_default();
                    if !spec_ns.is_empty() && spec_ns != ns {
                        return Err(ApiError::invalid(
                            kind,
                            "authorization.k8s.io",
                            "",
                            &[(
                                "spec.resourceAttributes.namespace".into(),
                                format!(
                                    "spec.resourceAttributes.namespace: Invalid value: {spec_ns:?}: must match metadata.namespace"
                                ),
                            )],
                        ));
                    }
                    (user_of(&spec), Some(ns))
                }
                _ => (user_of(&spec), None),
            };
            if plural != "selfsubjectaccessreviews"
                && user.name.is_empty()
                && user.groups.is_empty()
            {
                return Err(ApiError::invalid(
                    kind,
                    "authorization.k8s.io",
                    "",
                    &[(
                        "spec.user".into(),
                        "spec.user: Invalid value: \"\": at least one of user or group must be specified".into(),
                    )],
                ));
            }
            let info = attributes(&spec, namespace)?;
            match authz.decide(&user, &info) {
                Ok(reason) if reason.is_empty() => json!({"allowed": true}),
                Ok(reason) => json!({"allowed": true, "reason": reason}),
                Err(reason) if reason.is_empty() => json!({"allowed": false}),
                Err(reason) => json!({"allowed": false, "reason": reason}),
            }
        }
    };
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!(kind);
    if let Some(ns) = target.namespace.as_deref() {
        review["metadata"]["namespace"] = json!(ns);
    }
    review["status"] = status;
    Ok(review)
}

fn rules_status(authz: &Authz, user: &UserInfo, namespace: &str) -> Value {
    let (rules, errors) = authz.rbac.rules_for(user, namespace);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in rules {
        if rule.non_resource_urls.is_empty() {
            let mut r = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups, "resources": rule.resources});
            if !rule.resource_names.is_empty() {
                r["resourceNames"] = json!(rule.resource_names);
            }
            resource_rules.push(r);
        } else {
            non_resource_rules
                .push(json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}));
        }
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": !errors.is_empty(),
    });
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join(", "));
    }
    status
}
