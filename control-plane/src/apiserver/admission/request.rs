//! One write as admission sees it: what it is, on what, by whom (kube-apiserver's
//! `admission.Attributes`), and the `request` of an `AdmissionReview` that describes it to
//! webhooks and policies.

use std::collections::BTreeMap;

use apiary_api::admissionregistration_v1::{Attributes, labels_of};
use serde_json::{Value, json};

use super::super::{Api, auth::UserInfo, resources::ResourceType};

tokio::task_local! {
    /// Who made the request being handled, for the reviews' `userInfo`.
    static USER: UserInfo;
}

/// Runs `handler` as a request of `user`: the webhooks it calls are told who asked.
pub async fn as_user<F: Future>(user: UserInfo, handler: F) -> F::Output {
    USER.scope(user, handler).await
}

/// The requester: the request's user, or the controllers' own identity for writes the control
/// plane makes itself (kube-controller-manager's user without per-controller credentials).
pub fn requester() -> UserInfo {
    USER.try_with(Clone::clone).unwrap_or_else(|_| UserInfo {
        name: "system:kube-controller-manager".to_owned(),
        groups: vec!["system:authenticated".to_owned()],
        ..UserInfo::default()
    })
}

/// The operation of a request, as rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    /// A stream to a pod (exec, attach, port-forward); the object is its options.
    Connect,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
        }
    }

    fn options_kind(self) -> Option<&'static str> {
        match self {
            Self::Create => Some("CreateOptions"),
            Self::Update => Some("UpdateOptions"),
            Self::Delete => Some("DeleteOptions"),
            Self::Connect => None,
        }
    }
}

/// One write, as the webhooks are told of it.
#[derive(Debug)]
pub struct Request<'a> {
    pub operation: Operation,
    pub resource: &'static ResourceType,
    /// `status`, … (empty for the main resource).
    pub subresource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// The stored object of an update or delete.
    pub old: Option<&'a Value>,
    pub dry_run: bool,
    /// The request's namespace object, if the caller has read it.
    pub namespace_object: Option<&'a Value>,
}

impl Request<'_> {
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            operation: self.operation.as_str(),
            group: self.resource.group,
            version: self.resource.version,
            resource: self.resource.plural,
            subresource: self.subresource,
            namespaced: self.resource.namespaced,
        }
    }

    /// Whether this request is one webhooks and policies never see: those on their own
    /// configurations, so that a broken one can always be fixed or removed.
    pub fn exempt(&self) -> bool {
        self.resource.group == apiary_api::admissionregistration_v1::GROUP
    }

    /// The `request` of an `AdmissionReview`.
    pub fn review(&self, uid: &str, object: Option<&Value>) -> Value {
        let r = self.resource;
        let kind = json!({ "group": r.group, "version": r.version, "kind": r.kind });
        let resource = json!({ "group": r.group, "version": r.version, "resource": r.plural });
        let user = requester();
        let mut user_info = json!({ "username": user.name, "groups": user.groups });
        if !user.uid.is_empty() {
            user_info["uid"] = json!(user.uid);
        }
        if !user.extra.is_empty() {
            user_info["extra"] = json!(user.extra);
        }
        let mut request = json!({
            "uid": uid,
            "kind": kind, "resource": resource,
            "requestKind": kind, "requestResource": resource,
            "name": self.name,
            "operation": self.operation.as_str(),
            "userInfo": user_info,
            "object": object.cloned().unwrap_or(Value::Null),
            "oldObject": self.old.cloned().unwrap_or(Value::Null),
            "dryRun": self.dry_run,
            "options": self.operation.options_kind().map_or(Value::Null, |kind| {
                json!({ "apiVersion": "meta.k8s.io/v1", "kind": kind })
            }),
        });
        if !self.subresource.is_empty() {
            request["subResource"] = json!(self.subresource);
            request["requestSubResource"] = json!(self.subresource);
        }
        if let Some(ns) = self.namespace {
            request["namespace"] = json!(ns);
        }
        request
    }
}

/// The labels the `namespaceSelector` is matched against: the request's namespace's, or the
/// object's own for a Namespace; `None` for other cluster-scoped objects (always matched).
pub async fn namespace_labels(
    api: &Api,
    request: &Request<'_>,
    object: &Value,
) -> Option<BTreeMap<String, String>> {
    if request.resource.group.is_empty() && request.resource.plural == "namespaces" {
        let own = if object.is_object() {
            object
        } else {
            request.old?
        };
        return Some(labels_of(own));
    }
    let ns = request.namespace?;
    if let Some(namespace) = request.namespace_object {
        return Some(labels_of(namespace));
    }
    let namespaces = api.resources.get("", "v1", "namespaces")?;
    let namespace = super::super::objects::get(api, namespaces, None, ns)
        .await
        .ok()?;
    Some(labels_of(&namespace))
}
