//! `Status`: the body of every API error (and of some successes), with the constructors of
//! `k8s.io/apimachinery/pkg/api/errors` and their exact messages.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    meta::{ListMeta, TypeMeta, is_zero},
    resource::ResourceInfo,
    validation::FieldError,
};

/// `kind: Status`, `apiVersion: v1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ListMeta,
    /// `Success` or `Failure`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Machine-readable: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, …
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// The HTTP status code.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: u16,
}

/// Which object the status is about, and why, field by field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// A kind (`Deployment`) for `Invalid`, a resource (`deployments`) for the others.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(skip_serializing_if = "is_zero")]
    pub retry_after_seconds: i32,
}

/// One cause of a failure, e.g. one invalid field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusCause {
    /// `FieldValueRequired`, `FieldValueInvalid`, …
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// A group and a kind or resource, printed as Kubernetes prints `GroupKind`/`GroupResource`:
/// `Deployment.apps`, `pods`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupKind {
    pub group: String,
    /// A kind (`Deployment`) or a plural resource (`deployments`), depending on use.
    pub kind: String,
}

impl GroupKind {
    /// `GroupKind::new("apps", "Deployment")`.
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            kind: kind.into(),
        }
    }

    /// The resource's kind, e.g. `Deployment.apps` (what `Invalid` names).
    pub fn kind_of(info: &ResourceInfo) -> Self {
        Self::new(info.group, info.kind)
    }

    /// The resource's plural, e.g. `deployments.apps` (what `NotFound`, `AlreadyExists`,
    /// `Conflict` and `Forbidden` name).
    pub fn resource_of(info: &ResourceInfo) -> Self {
        Self::new(info.group, info.plural)
    }
}

impl From<&ResourceInfo> for GroupKind {
    /// The kind, as [`Status::invalid`] wants.
    fn from(info: &ResourceInfo) -> Self {
        Self::kind_of(info)
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Status {}

impl Status {
    fn failure(code: u16, reason: &str, message: String, details: Option<StatusDetails>) -> Self {
        Self {
            type_meta: TypeMeta::new("v1", "Status"),
            metadata: ListMeta::default(),
            status: "Failure".into(),
            message,
            reason: reason.into(),
            details,
            code,
        }
    }

    fn named(gk: &GroupKind, name: &str) -> Option<StatusDetails> {
        Some(StatusDetails {
            name: name.into(),
            group: gk.group.clone(),
            kind: gk.kind.clone(),
            ..Default::default()
        })
    }

    /// `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"}`, e.g. for a
    /// DELETE of a collection.
    pub fn success() -> Self {
        Self {
            type_meta: TypeMeta::new("v1", "Status"),
            status: "Success".into(),
            ..Default::default()
        }
    }

    /// 422 `Invalid`: `Deployment.apps "web" is invalid: spec.selector: Required value`, with
    /// one cause per error (`[e1, e2]` in the message when there are several).
    pub fn invalid(kind: impl Into<GroupKind>, name: &str, errors: &[FieldError]) -> Self {
        let gk = kind.into();
        let mut messages: Vec<String> = Vec::new();
        for e in errors {
            let m = e.to_string();
            if !messages.contains(&m) {
                messages.push(m);
            }
        }
        let aggregate = match &messages[..] {
            [] => String::new(),
            [one] => format!(": {one}"),
            many => format!(": [{}]", many.join(", ")),
        };
        let causes = errors
            .iter()
            .map(|e| StatusCause {
                reason: e.kind.cause_reason().into(),
                message: e.body(),
                field: e.path.clone(),
            })
            .collect();
        let mut details = Self::named(&gk, name);
        if let Some(d) = &mut details {
            d.causes = causes;
        }
        Self::failure(
            422,
            "Invalid",
            format!("{gk} {name:?} is invalid{aggregate}"),
            details,
        )
    }

    /// 404 `NotFound`: `deployments.apps "web" not found`.
    pub fn not_found(resource: impl Into<GroupKind>, name: &str) -> Self {
        let gr = resource.into();
        Self::failure(
            404,
            "NotFound",
            format!("{gr} {name:?} not found"),
            Self::named(&gr, name),
        )
    }

    /// 409 `AlreadyExists`: `pods "web" already exists`.
    pub fn already_exists(resource: impl Into<GroupKind>, name: &str) -> Self {
        let gr = resource.into();
        let message = format!("{gr} {name:?} already exists");
        Self::failure(409, "AlreadyExists", message, Self::named(&gr, name))
    }

    /// 409 `Conflict` on a stale `resourceVersion`: `Operation cannot be fulfilled on
    /// deployments.apps "web": the object has been modified; please apply your changes to the
    /// latest version and try again`.
    pub fn conflict(resource: impl Into<GroupKind>, name: &str) -> Self {
        Self::conflict_because(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and \
             try again",
        )
    }

    /// 409 `Conflict` with another reason, e.g. a failed precondition.
    pub fn conflict_because(resource: impl Into<GroupKind>, name: &str, why: &str) -> Self {
        let gr = resource.into();
        let message = format!("Operation cannot be fulfilled on {gr} {name:?}: {why}");
        Self::failure(409, "Conflict", message, Self::named(&gr, name))
    }

    /// 400 `BadRequest` with the message as given.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(400, "BadRequest", message.into(), None)
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::failure(401, "Unauthorized", "Unauthorized".into(), None)
    }

    /// 403 `Forbidden`: `pods "web" is forbidden: why`.
    pub fn forbidden(resource: impl Into<GroupKind>, name: &str, why: &str) -> Self {
        let gr = resource.into();
        let message = if name.is_empty() {
            format!("{gr} is forbidden: {why}")
        } else {
            format!("{gr} {name:?} is forbidden: {why}")
        };
        Self::failure(403, "Forbidden", message, Self::named(&gr, name))
    }

    /// 405 `MethodNotAllowed`.
    pub fn method_not_allowed(resource: impl Into<GroupKind>, action: &str) -> Self {
        let gr = resource.into();
        let message = format!(
            "{action} is not supported on resources of kind {:?}",
            gr.to_string()
        );
        Self::failure(405, "MethodNotAllowed", message, Self::named(&gr, ""))
    }

    /// 410 `Gone` with the message as given.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::failure(410, "Gone", message.into(), None)
    }

    /// 410 `Expired`: what a watch or list from a compacted `resourceVersion` gets
    /// (`too old resource version: 5 (90)`); clients relist.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::failure(410, "Expired", message.into(), None)
    }

    /// 500 `InternalError`: `Internal error occurred: why`.
    pub fn internal(why: impl fmt::Display) -> Self {
        let details = StatusDetails {
            causes: vec![StatusCause {
                reason: String::new(),
                message: why.to_string(),
                field: String::new(),
            }],
            ..Default::default()
        };
        Self::failure(
            500,
            "InternalError",
            format!("Internal error occurred: {why}"),
            Some(details),
        )
    }

    /// 503 `ServiceUnavailable`, with a hint to retry.
    pub fn service_unavailable(message: impl Into<String>, retry_after_seconds: i32) -> Self {
        let details = StatusDetails {
            retry_after_seconds,
            ..Default::default()
        };
        Self::failure(503, "ServiceUnavailable", message.into(), Some(details))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resource::{DEPLOYMENTS, PODS};

    #[test]
    fn invalid_names_the_kind_and_lists_causes() {
        let one = Status::invalid(
            &DEPLOYMENTS,
            "web",
            &[FieldError::required("spec.selector")],
        );
        assert_eq!(
            one.message,
            r#"Deployment.apps "web" is invalid: spec.selector: Required value"#
        );
        assert_eq!(
            serde_json::to_value(&one).unwrap(),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Deployment.apps \"web\" is invalid: spec.selector: Required value",
                "reason": "Invalid",
                "details": {"name": "web", "group": "apps", "kind": "Deployment", "causes": [
                    {"reason": "FieldValueRequired", "message": "Required value",
                        "field": "spec.selector"}]},
                "code": 422
            })
        );

        let errs = [
            FieldError::required("spec.containers[0].image"),
            FieldError::invalid(
                "spec.containers[0].ports[0].containerPort",
                70000,
                "must be between 1 and 65535, inclusive",
            ),
            FieldError::required("spec.containers[0].image"),
        ];
        let many = Status::invalid(&PODS, "p", &errs);
        assert_eq!(
            many.message,
            "Pod \"p\" is invalid: [spec.containers[0].image: Required value, \
             spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 \
             and 65535, inclusive]"
        );
        let causes = &many.details.as_ref().unwrap().causes;
        assert_eq!(causes[1].reason, "FieldValueInvalid");
        assert_eq!(
            causes[1].message,
            "Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        assert_eq!(many.details.unwrap().group, "");
    }

    #[test]
    fn other_failures_name_the_resource() {
        let nf = Status::not_found(GroupKind::resource_of(&DEPLOYMENTS), "web");
        assert_eq!(nf.message, r#"deployments.apps "web" not found"#);
        assert_eq!((nf.code, nf.reason.as_str()), (404, "NotFound"));
        assert_eq!(nf.details.as_ref().unwrap().kind, "deployments");
        let ae = Status::already_exists(GroupKind::resource_of(&PODS), "web");
        assert_eq!(ae.message, r#"pods "web" already exists"#);
        assert_eq!(ae.code, 409);
        let c = Status::conflict(GroupKind::resource_of(&PODS), "web");
        assert!(c.message.starts_with(
            r#"Operation cannot be fulfilled on pods "web": the object has been modified"#
        ));
        assert_eq!(
            Status::expired("too old resource version: 5 (90)").code,
            410
        );
        assert_eq!(Status::gone("gone").reason, "Gone");
        assert_eq!(Status::bad_request("bad").code, 400);
        assert_eq!(Status::unauthorized().message, "Unauthorized");
        assert_eq!(
            Status::internal("disk full").message,
            "Internal error occurred: disk full"
        );
        assert_eq!(
            serde_json::to_value(Status::success()).unwrap(),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        );
    }

    #[test]
    fn statuses_decode() {
        let s: Status = serde_json::from_str(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"pods \"x\" not found","reason":"NotFound",
                "details":{"name":"x","kind":"pods"},"code":404}"#,
        )
        .unwrap();
        assert_eq!(s, Status::not_found(GroupKind::resource_of(&PODS), "x"));
    }
}
