//! Impersonation (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`; kubectl's `--as`,
//! `--as-group`): allowed when the requester may `impersonate` each of them, as kube-apiserver's
//! impersonation filter; the request then runs as the impersonated user.

use axum::http::HeaderMap;

use super::{Authz, request_info::RequestInfo};
use crate::apiserver::{auth::UserInfo, error::ApiError};

const USER: &str = "impersonate-user";
const UID: &str = "impersonate-uid";
const GROUP: &str = "impersonate-group";
const EXTRA_PREFIX: &str = "impersonate-extra-";

/// Whether the request asks to impersonate anyone.
pub fn requested(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
}

fn attributes(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> RequestInfo {
    RequestInfo {
        is_resource_request: true,
        verb: verb.to_owned(),
        api_group: group.to_owned(),
        resource: resource.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ..RequestInfo::default()
    }
}

/// The user `requester` acts as, or a 403 naming the first thing it may not impersonate.
pub fn impersonate(
    authz: &Authz,
    requester: &UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let name = values(USER).into_iter().next().unwrap_or_default();
    let groups = values(GROUP);
    let uid = values(UID).into_iter().next().unwrap_or_default();
    let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix(EXTRA_PREFIX)
            && let Ok(v) = v.to_str()
        {
            let key = percent_decode(key);
            extra.entry(key).or_default().push(v.to_owned());
        }
    }
    if name.is_empty() {
        return Err(ApiError::internal(
            "requested impersonation without specifying a user to impersonate",
        ));
    }
    let mut checks = Vec::new();
    let mut impersonated_groups = groups.clone();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|sa| sa.split_once(':'))
    {
        Some((ns, sa)) => {
            checks.push(attributes("impersonate", "", "serviceaccounts", ns, sa));
            if groups.is_empty() {
                impersonated_groups = vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => checks.push(attributes("impersonate", "", "users", "", &name)),
    }
    for g in &groups {
        checks.push(attributes("impersonate", "", "groups", "", g));
    }
    if !uid.is_empty() {
        checks.push(attributes(
            "impersonate",
            "authentication.k8s.io",
            "uids",
            "",
            &uid,
        ));
    }
    for (key, vs) in &extra {
        for v in vs {
            checks.push(attributes(
                "impersonate",
                "authentication.k8s.io",
                &format!("userextras/{key}"),
                "",
                v,
            ));
        }
    }
    for check in checks {
        if let Err(reason) = authz.decide(requester, &check) {
            return Err(super::forbidden(requester, &check, &reason));
        }
    }
    if name == "system:anonymous" {
        if !impersonated_groups
            .iter()
            .any(|g| g == "system:unauthenticated")
        {
            impersonated_groups.push("system:unauthenticated".to_owned());
        }
    } else if !impersonated_groups
        .iter()
        .any(|g| g == "system:authenticated" || g == "system:unauthenticated")
    {
        impersonated_groups.push("system:authenticated".to_owned());
    }
    Ok(UserInfo {
        name,
        uid,
        groups: impersonated_groups,
        extra,
    })
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}
