//! CertificateSigningRequests: each write path (the object, `approval`, `status`) changes only
//! its own part, and the request is validated for the path it comes through (the PKI rules, and
//! what is filled in from the requester on create, are in [`crate::apiserver::certificates`]).

use serde_json::{Value, json};

use super::{KindStrategy, built_in_errors, invalid, object_name};
use crate::apiserver::{certificates::conditions, objects::Result, resources::ResourceType};

/// The strategy of `certificates.k8s.io/v1` `CertificateSigningRequest`.
#[derive(Debug)]
pub struct CertificateSigningRequests;

impl KindStrategy for CertificateSigningRequests {
    fn prepare_for_update(
        &self,
        _resource: &ResourceType,
        sub: Option<&str>,
        old: &Value,
        new: Value,
    ) -> Value {
        merge_update(sub, old, new)
    }

    fn validate(
        &self,
        resource: &ResourceType,
        sub: Option<&str>,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<()> {
        // A request that does not decode is reported by the PKI checks, as a 422.
        let mut errors = built_in_errors(resource, object, old).unwrap_or_default();
        errors.extend(crate::apiserver::certificates::validate(object, old, sub));
        invalid(resource, object_name(object), &errors)
    }
}

/// `PrepareForUpdate` of each path: `old` with what that path may change taken from `new`.
fn merge_update(sub: Option<&str>, old: &Value, new: Value) -> Value {
    let mut merged = new;
    merged["spec"] = old["spec"].clone();
    match sub {
        // Only the conditions.
        Some("approval") => {
            let conditions = merged["status"]["conditions"].take();
            merged["status"] = old["status"].clone();
            merged["status"]["conditions"] = conditions;
        }
        Some("status") => {}
        _ => merged["status"] = old["status"].clone(),
    }
    stamp_conditions(&mut merged, old);
    merged
}

/// `populateConditionTimestamps`: a new or changed condition gets `lastUpdateTime` (and
/// `lastTransitionTime` when its status changed) of now unless the writer set them.
fn stamp_conditions(new: &mut Value, old: &Value) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let Some(list) = new["status"]["conditions"].as_array_mut() else {
        return;
    };
    for condition in list {
        let before = conditions(old, condition["type"].as_str().unwrap_or_default())
            .first()
            .map(|c| (*c).clone());
        if condition["lastUpdateTime"].is_null() {
            condition["lastUpdateTime"] = json!(now);
        }
        if condition["lastTransitionTime"].is_null() {
            condition["lastTransitionTime"] = match before {
                Some(b)
                    if b["status"] == condition["status"]
                        && b["lastTransitionTime"].is_string() =>
                {
                    b["lastTransitionTime"].clone()
                }
                _ => json!(now),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use apiary_api::validation::ErrorList;

    use super::*;
    use crate::apiserver::certificates::{
        KUBE_APISERVER_CLIENT, has_condition,
        tests::{approved, csr},
        validate,
    };

    fn paths(errors: &ErrorList) -> Vec<String> {
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn only_the_approval_path_changes_approval_and_only_status_sets_the_certificate() {
        let old = csr("u", &[], &[], &[], KUBE_APISERVER_CLIENT, &["client auth"]);
        // The main resource keeps status whatever is sent.
        let merged = merge_update(None, &old, approved(old.clone()));
        assert!(!has_condition(&merged, "Approved"));
        // The status path may not approve.
        let merged = merge_update(Some("status"), &old, approved(old.clone()));
        let errors = paths(&validate(&merged, Some(&old), Some("status")));
        assert!(
            errors.contains(&"status.conditions: Forbidden: updates may not add a condition of type \"Approved\"".to_owned()),
            "{errors:?}"
        );
        // The approval path may, and keeps the spec.
        let mut sent = approved(old.clone());
        sent["spec"]["signerName"] = json!("example.com/other");
        let merged = merge_update(Some("approval"), &old, sent);
        assert!(validate(&merged, Some(&old), Some("approval")).is_empty());
        assert_eq!(merged["spec"]["signerName"], KUBE_APISERVER_CLIENT);
        // Approved and Denied exclude each other, and neither comes off again.
        let mut both = merged.clone();
        both["status"]["conditions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "Denied", "status": "True"}));
        assert!(
            paths(&validate(&both, Some(&merged), Some("approval")))
                .iter()
                .any(|e| e.contains("mutually exclusive"))
        );
        let mut removed = merged.clone();
        removed["status"]["conditions"] = json!([]);
        assert!(
            paths(&validate(&removed, Some(&merged), Some("approval")))
                .iter()
                .any(|e| e.contains("may not remove a condition of type \"Approved\""))
        );
        // The approval path may not set the certificate.
        let mut with_cert = merged.clone();
        with_cert["status"]["certificate"] = json!("eA==");
        let again = merge_update(Some("approval"), &merged, with_cert);
        assert!(again["status"]["certificate"].is_null());
    }
}
