//! CertificateSigningRequests: each write path (the object, `approval`, `status`) changes only
//! its own part, and the request is validated for the path it comes through (the PKI rules are
//! in [`crate::apiserver::certificates`]).

use serde_json::Value;

use super::{KindStrategy, built_in_errors, invalid, object_name};
use crate::apiserver::{objects::Result, resources::ResourceType};

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
        crate::apiserver::certificates::merge_update(sub, old, new)
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
