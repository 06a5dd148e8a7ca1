//! Errors as Kubernetes reports them: an HTTP status and a `Status` body whose message names the
//! object (and the field, for invalid input). Bad input never becomes a 5xx.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::store;

/// A failed API request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: StatusCode,
    /// Kubernetes' `StatusReason`, e.g. `NotFound`.
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// `deployments.apps` for grouped resources, `pods` for the core group: how Kubernetes names a
/// resource in messages.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_object(mut self, resource: &str, group: &str, name: &str) -> Self {
        let mut details = json!({ "name": name, "kind": resource });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        self.details = Some(details);
        self
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// The server failed for a reason that is not the request's fault (e.g. a node agent it
    /// proxies to is unreachable).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The server cannot serve the request now, e.g. a node agent it proxies to cannot be
    /// reached; retryable.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    /// A node agent's refusal, passed on with its code (as kube-apiserver does for the kubelet).
    pub fn from_agent(code: StatusCode, message: String) -> Self {
        let reason = match code {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            _ => "InternalError",
        };
        Self::new(code, reason, message)
    }

    /// A refusal whose code, reason and message another party chose (an admission webhook's
    /// `Status`): reasons Kubernetes defines keep their name, others are left empty.
    pub fn from_status(code: StatusCode, reason: &str, message: String) -> Self {
        const REASONS: &[&str] = &[
            "Unauthorized",
            "Forbidden",
            "NotFound",
            "AlreadyExists",
            "Conflict",
            "Gone",
            "Invalid",
            "ServerTimeout",
            "Timeout",
            "TooManyRequests",
            "BadRequest",
            "MethodNotAllowed",
            "NotAcceptable",
            "RequestEntityTooLarge",
            "UnsupportedMediaType",
            "InternalError",
            "Expired",
            "ServiceUnavailable",
        ];
        let reason = REASONS
            .iter()
            .find(|r| **r == reason)
            .copied()
            .unwrap_or("");
        Self::new(code, reason, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {name:?} not found", qualified(resource, group)),
        )
        .with_object(resource, group, name)
    }

    /// A path or resource type the server does not serve.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} {name:?} already exists", qualified(resource, group)),
        )
        .with_object(resource, group, name)
    }

    pub fn conflict(resource: &str, group: &str, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                qualified(resource, group)
            ),
        )
        .with_object(resource, group, name)
    }

    /// Server-side apply's 409: the fields other managers own with other values.
    pub fn apply_conflicts(conflicts: &[apiary_api::apply::Conflict]) -> Self {
        let mut error = Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            apiary_api::apply::conflict_message(conflicts),
        );
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|c| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {:?} using {}", c.manager, c.api_version),
                    "field": c.field,
                })
            })
            .collect();
        error.details = Some(json!({ "causes": causes }));
        error
    }

    /// 422 with one cause per invalid field, as `Deployment.apps "web" is invalid: …`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[(String, String)]) -> Self {
        let messages: Vec<&str> = causes.iter().map(|(_, m)| m.as_str()).collect();
        let summary = match messages.as_slice() {
            [one] => (*one).to_owned(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} {name:?} is invalid: {summary}", qualified(kind, group)),
        );
        let mut details = json!({
            "name": name,
            "kind": kind,
        "causes": causes.iter().map(|(field, message)| cause(field, message)).collect::<Vec<_>>(),
        });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        error.details = Some(details);
        error
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// A well-formed request that cannot be applied (e.g. a JSON patch whose `test` fails).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    /// A request body or a patched object over the server's limit
    /// (`NewRequestEntityTooLargeError`).
    pub fn request_entity_too_large(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request entity too large: {message}"),
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub fn method_not_allowed(verb: &str, resource: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({verb} {resource})"
            ),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// The store failed for a reason that is not the request's fault.
    pub fn storage(error: &store::Error) -> Self {
        match error {
            store::Error::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("storage is unavailable, retry: {error}"),
            ),
            // What kube-apiserver answers for an error that is no API Status of its own: 500,
            // no reason, the error's words (kubectl: "Error from server: etcdserver: request is
            // too large").
            store::Error::Rejected(message) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "", message.clone())
            }
            // 507, which no client retries on its own: the disk has to be freed first.
            store::Error::NoSpace(message) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "", message.clone())
            }
            store::Error::Compacted {
                requested,
                compacted,
            } => Self::gone(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("Internal error occurred: {error}"),
            ),
        }
    }

    /// The `Status` object Kubernetes sends for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        // `omitempty`, as Kubernetes: a Status without a reason has no field.
        if self.reason.is_empty()
            && let Some(status) = status.as_object_mut()
        {
            status.remove("reason");
        }
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// One `StatusCause`: the message without its field path (kubectl prints `* field: message`),
/// and the reason its wording stands for.
fn cause(field: &str, message: &str) -> Value {
    let message = message
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(message);
    let reason = [
        ("Required value", "FieldValueRequired"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Forbidden", "FieldValueForbidden"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Not found", "FieldValueNotFound"),
    ]
    .iter()
    .find(|(prefix, _)| message.starts_with(prefix))
    .map_or("FieldValueInvalid", |(_, reason)| reason);
    json!({ "reason": reason, "message": message, "field": field })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, Json(self.status())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object_like_kubernetes() {
        assert_eq!(
            ApiError::not_found("deployments", "apps", "web").message,
            r#"deployments.apps "web" not found"#
        );
        assert_eq!(
            ApiError::already_exists("pods", "", "web").status()["code"],
            409
        );
        let invalid = ApiError::invalid(
            "Deployment",
            "apps",
            "web",
            &[(
                "spec.selector".into(),
                "spec.selector: Required value".into(),
            )],
        );
        assert_eq!(
            invalid.message,
            r#"Deployment.apps "web" is invalid: spec.selector: Required value"#
        );
        assert_eq!(
            invalid.status()["details"]["causes"][0]["field"],
            "spec.selector"
        );
    }
}
