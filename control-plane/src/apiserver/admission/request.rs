//! One write as admission sees it: what it is, on what, by whom (kube-apiserver's
//! `admission.Attributes`), and the `request` of an `AdmissionReview` that describes it to
//! webhooks and policies.

use apiary_api::{
    admissionregistration_v1::{Attributes, labels_of},
    selector::LabelSelector,
};
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

/// The request's namespace object (what `namespaceSelector` matches and policies see as
/// `namespaceObject`), read once: the caller's if it has it, none for cluster-scoped requests.
pub async fn namespace_object(api: &Api, request: &Request<'_>) -> Option<Value> {
    if let Some(namespace) = request.namespace_object {
        return Some(namespace.clone());
    }
    let ns = request.namespace?;
    super::super::objects::get(api, &apiary_api::resource::NAMESPACES, None, ns)
        .await
        .ok()
}

impl Request<'_> {
    /// Whether a webhook's or policy's selectors select the request: `namespaceSelector` by the
    /// labels of its `namespace` (of the object itself for a Namespace; other cluster-scoped
    /// objects always match), `objectSelector` by the labels of the new or the old object.
    pub fn selected(
        &self,
        namespace_selector: Option<&LabelSelector>,
        object_selector: Option<&LabelSelector>,
        object: &Value,
        namespace: Option<&Value>,
    ) -> bool {
        let is_namespace = self.resource.group.is_empty() && self.resource.plural == "namespaces";
        let namespace_labels = if is_namespace {
            let own = if object.is_object() {
                Some(object)
            } else {
                self.old
            };
            own.map(labels_of)
        } else {
            namespace.map(labels_of)
        };
        if let (Some(selector), Some(labels)) = (namespace_selector, &namespace_labels)
            && !selector.matches(labels)
        {
            return false;
        }
        match object_selector {
            Some(selector) if !selector.is_empty() => {
                let matches = |o: Option<&Value>| {
                    o.is_some_and(|o| o.is_object() && selector.matches(&labels_of(o)))
                };
                matches(Some(object)) || matches(self.old)
            }
            _ => true,
        }
    }
}
