//! Authorization, after authentication: every request's attributes (`request_info`) are decided
//! by the privileged group (`system:masters` may do anything), the Node authorizer for node
//! identities (`node`, over a graph of what their pods reference) and then RBAC (`rbac`), over
//! a watch-fed index of roles and bindings; denials are kube-apiserver's 403s. NodeRestriction
//! (`node_restriction`) narrows what nodes may write. Also here:
//! impersonation, the bootstrap policy, escalation prevention on RBAC writes, and access
//! reviews.

pub mod bootstrap;
pub mod impersonation;
pub mod node;
pub mod node_restriction;
pub mod rbac;
pub mod request_info;
pub mod reviews;

use std::{sync::Arc, time::Duration};

use apiary_api::rbac_v1::{PolicyRule, RoleRef};
use axum::{
    extract::{Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Api, auth::UserInfo, error::ApiError, path::Target};
use crate::controllers::runtime::{self, Cache};
use rbac::{Decision, Kind, PRIVILEGED_GROUP, Rbac};
use request_info::RequestInfo;

/// The authorizer: the privileged group, the Node authorizer, then RBAC.
#[derive(Debug, Default)]
pub struct Authz {
    pub rbac: Rbac,
    /// What the pods bound to each node reference.
    pub nodes: node::Graph,
}

impl Authz {
    /// `Ok(reason)` when `user` may do `info`, else `Err(reason)`; reasons may be empty.
    pub fn decide(&self, user: &UserInfo, info: &RequestInfo) -> Result<String, String> {
        if is_privileged(user) {
            return Ok(String::new());
        }
        // Kubernetes' union authorizer: the first to allow wins; the others' reasons explain
        // a denial.
        let mut reasons = Vec::new();
        if let Some(node) = node::node_identity(user) {
            match node::authorize(&self.nodes, node, info) {
                Ok(()) => return Ok(String::new()),
                Err(reason) => reasons.push(reason),
            }
        }
        match self.rbac.authorize(user, info) {
            Decision::Allow(reason) => Ok(reason),
            Decision::NoOpinion(reason) => {
                reasons.push(reason);
                reasons.retain(|r| !r.is_empty());
                Err(reasons.join("\n"))
            }
        }
    }
}

fn is_privileged(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == PRIVILEGED_GROUP)
}

/// kube-apiserver's 403 for a denied request (`responsewriters.Forbidden`).
pub fn forbidden(user: &UserInfo, info: &RequestInfo, reason: &str) -> ApiError {
    let what = if !info.is_resource_request {
        format!(
            "User {:?} cannot {} path {:?}",
            user.name, info.verb, info.path
        )
    } else {
        let resource = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        let scope = if info.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {:?}", info.namespace)
        };
        format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            user.name, info.verb, info.api_group
        )
    };
    let why = if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    };
    forbidden_on(&info.resource, &info.api_group, &info.name, &why)
}

/// `apierrors.NewForbidden(group resource, name, err)`.
pub(crate) fn forbidden_on(resource: &str, group: &str, name: &str, why: &str) -> ApiError {
    let qualified = super::error::qualified(resource, group);
    let message = match (resource.is_empty(), name.is_empty()) {
        (true, _) => format!("forbidden: {why}"),
        (false, true) => format!("{qualified} is forbidden: {why}"),
        (false, false) => format!("{qualified} {name:?} is forbidden: {why}"),
    };
    let mut error = ApiError::forbidden(message);
    let mut details = json!({});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if !resource.is_empty() {
        details["kind"] = json!(resource);
    }
    error.details = Some(details);
    error
}

/// The middleware: impersonation, then the decision on the (possibly impersonated) user. The
/// node agents' gRPC service is token-authenticated only.
pub async fn authorize(State(api): State<Arc<Api>>, mut request: Request, next: Next) -> Response {
    if request
        .uri()
        .path()
        .starts_with("/apiary.agent.v1.NodeAgent/")
    {
        return next.run(request).await;
    }
    let Some(mut user) = request.extensions().get::<UserInfo>().cloned() else {
        return ApiError::unauthorized().into_response();
    };
    if impersonation::requested(request.headers()) {
        match impersonation::impersonate(&api.authz, &user, request.headers()) {
            Ok(impersonated) => {
                super::audit::note_impersonated(&request, &impersonated);
                user = impersonated;
                request.extensions_mut().insert(user.clone());
            }
            Err(e) => return e.into_response(),
        }
    }
    let info = request_info::of(&mut request);
    match api.authz.decide(&user, &info) {
        Ok(_) => next.run(request).await,
        Err(reason) => {
            tracing::debug!(
                user = user.name,
                verb = info.verb,
                resource = info.resource,
                path = info.path,
                "forbidden"
            );
            forbidden(&user, &info, &reason).into_response()
        }
    }
}

/// Follows Roles, ClusterRoles and their bindings into the authorizer's index; resolves once
/// every kind is listed (or after `timeout`), and keeps following until `shutdown`.
pub async fn start(api: Arc<Api>, shutdown: watch::Receiver<bool>, timeout: Duration) {
    let kinds = [
        ("roles", Kind::Role),
        ("clusterroles", Kind::ClusterRole),
        ("rolebindings", Kind::RoleBinding),
        ("clusterrolebindings", Kind::ClusterRoleBinding),
    ];
    let mut caches = Vec::new();
    for (plural, kind) in kinds {
        let resource = api
            .resources
            .get("rbac.authorization.k8s.io", "v1", plural)
            .expect("RBAC is served");
        let cache = Cache::new(resource);
        caches.push(cache.clone());
        let changed = {
            let (api, cache) = (Arc::clone(&api), cache.clone());
            move |object: &Value| {
                let meta = &object["metadata"];
                let ns = meta["namespace"].as_str().unwrap_or_default();
                let name = meta["name"].as_str().unwrap_or_default();
                match cache.get(ns, name) {
                    Some(current) => api.authz.rbac.apply(kind, &current),
                    None => api.authz.rbac.remove(kind, object),
                }
            }
        };
        tokio::spawn(runtime::reflect(
            Arc::clone(&api),
            cache,
            changed,
            shutdown.clone(),
        ));
    }
    // The Node authorizer's graph follows the pods.
    let pods = Cache::new(
        api.resources
            .get("", "v1", "pods")
            .expect("pods are served"),
    );
    caches.push(pods.clone());
    let pod_changed = {
        let (api, cache) = (Arc::clone(&api), pods.clone());
        move |object: &Value| {
            let meta = &object["metadata"];
            let ns = meta["namespace"].as_str().unwrap_or_default();
            let name = meta["name"].as_str().unwrap_or_default();
            match cache.get(ns, name) {
                Some(current) => api.authz.nodes.apply(&current),
                None => api.authz.nodes.remove(object),
            }
        }
    };
    tokio::spawn(runtime::reflect(
        Arc::clone(&api),
        pods,
        pod_changed,
        shutdown.clone(),
    ));
    runtime::wait_synced(&caches.iter().collect::<Vec<_>>(), timeout).await;
}

// ---------------------------------------------------------------------------------------------
// Escalation prevention (`pkg/registry/rbac/{role,clusterrole,rolebinding,clusterrolebinding}/policybased`)

/// Checks a write of an RBAC object by `user`: a role may only hold rules its writer holds
/// (unless the writer may `escalate` it), a binding may only grant a role whose permissions its
/// writer holds (unless the writer may `bind` it). `object` is the object as it will be
/// written, `old` the stored one on updates.
pub fn check_escalation(
    authz: &Authz,
    user: &UserInfo,
    target: &Target,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if is_privileged(user) {
        return Ok(());
    }
    let resource = target.resource;
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let may = |verb: &str, resource: &str, name: &str| {
        let info = RequestInfo {
            is_resource_request: true,
            verb: verb.to_owned(),
            api_group: "rbac.authorization.k8s.io".to_owned(),
            api_version: "v1".to_owned(),
            namespace: namespace.clone(),
            resource: resource.to_owned(),
            name: name.to_owned(),
            ..RequestInfo::default()
        };
        authz.decide(user, &info).is_ok()
    };
    let rules: Vec<PolicyRule> = match resource.plural {
        "roles" | "clusterroles" => {
            // Kubernetes skips the check only when no more than GC fields change; labels
            // count (they feed aggregation).
            let same = |o: &Value| {
                o["rules"] == object["rules"]
                    && o["aggregationRule"] == object["aggregationRule"]
                    && o["metadata"]["labels"] == object["metadata"]["labels"]
            };
            if old.is_some_and(same) || may("escalate", resource.plural, &name) {
                return Ok(());
            }
            serde_json::from_value(object["rules"].clone()).unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref: RoleRef =
                serde_json::from_value(object["roleRef"].clone()).unwrap_or_default();
            // Adding subjects grants the role too: only an unchanged grant skips the check.
            if old.is_some_and(|o| {
                o["roleRef"] == object["roleRef"] && o["subjects"] == object["subjects"]
            }) {
                return Ok(());
            }
            let role_resource = if role_ref.kind == "ClusterRole" {
                "clusterroles"
            } else {
                "roles"
            };
            if may("bind", role_resource, &role_ref.name) {
                return Ok(());
            }
            match authz.rbac.role_rules(&role_ref, &namespace) {
                Some(rules) => rules,
                None => {
                    return Err(ApiError::not_found(
                        role_resource,
                        "rbac.authorization.k8s.io",
                        &role_ref.name,
                    ));
                }
            }
        }
        _ => return Ok(()),
    };
    let (owned, errors) = authz.rbac.rules_for(user, &namespace);
    let missing = rbac::uncovered(&owned, &rules);
    if missing.is_empty() {
        return Ok(());
    }
    let mut descriptions: Vec<String> = missing.iter().map(rbac::compact_string).collect();
    descriptions.sort();
    descriptions.dedup();
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let mut why = format!(
        "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        groups.join(" "),
        descriptions.join("\n")
    );
    if !errors.is_empty() {
        why.push_str(&format!("; resolution errors: [{}]", errors.join(", ")));
    }
    Err(forbidden_on(resource.plural, resource.group, &name, &why))
}

/// Whether `method` on `target` writes an RBAC object whose grants must be checked.
pub fn needs_escalation_check(method: &Method, target: &Target) -> bool {
    target.resource.group == "rbac.authorization.k8s.io"
        && target.subresource.is_none()
        && matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}
