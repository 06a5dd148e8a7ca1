//! Admission webhooks (kube-apiserver's `MutatingAdmissionWebhook` and
//! `ValidatingAdmissionWebhook` plugins): the webhooks of the stored
//! Mutating/ValidatingWebhookConfigurations are called on the writes their rules match.
//!
//! - Mutating webhooks run one after another, in the order of their configurations' names and
//!   then their order within it; a JSON patch in an answer changes the object the next one
//!   sees. Those with `reinvocationPolicy: IfNeeded` run once more if a later one changed it.
//! - Validating webhooks run in parallel on the object as it will be stored; any refusal
//!   refuses the request.
//! - A webhook is called only if its rules, `namespaceSelector`, `objectSelector` and
//!   `matchConditions` match; a call that fails counts as a refusal under `failurePolicy: Fail`
//!   and is skipped under `Ignore`.
//! - Requests on the configurations themselves never go to webhooks, so that a broken webhook
//!   can always be removed.

mod call;
mod tunnel;

use std::sync::{Arc, RwLock};

use apiary_api::{
    admissionregistration_v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration, Webhook,
    },
    cel_rules::Activation,
    resource,
};
use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    super::{Api, error::ApiError, objects::Result},
    Operation, Request, namespace_object,
};

pub use call::CallError;

/// The webhooks of every stored configuration, in calling order; kept by a watch ([`start`]).
#[derive(Debug, Default)]
pub struct Webhooks {
    mutating: RwLock<Arc<Vec<Webhook>>>,
    validating: RwLock<Arc<Vec<Webhook>>>,
}

/// Follows the webhook configurations for the life of the process. Returns once those stored
/// at start are known (or `timeout` passed).
pub async fn start(
    api: Arc<Api>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    timeout: std::time::Duration,
) {
    use crate::controllers::runtime::{self, Cache};
    let mut caches = Vec::new();
    for (info, mutating) in [
        (&resource::MUTATING_WEBHOOK_CONFIGURATIONS, true),
        (&resource::VALIDATING_WEBHOOK_CONFIGURATIONS, false),
    ] {
        let cache = Cache::new(info);
        let changed = {
            let (api, cache) = (Arc::clone(&api), cache.clone());
            move |_: &Value| api.webhooks.replace(mutating, &cache.all())
        };
        tokio::spawn(runtime::reflect(
            Arc::clone(&api),
            cache.clone(),
            changed,
            shutdown.clone(),
        ));
        caches.push(cache);
    }
    runtime::wait_synced(&caches.iter().collect::<Vec<_>>(), timeout).await;
}

impl Webhooks {
    /// Replaces the webhooks of one kind with those of `configurations` (sorted by name, as
    /// kube-apiserver calls them).
    fn replace(&self, mutating: bool, configurations: &[Arc<Value>]) {
        let mut sorted: Vec<&Arc<Value>> = configurations.iter().collect();
        sorted.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        let mut hooks = Vec::new();
        for object in sorted {
            let webhooks = if mutating {
                serde_json::from_value::<MutatingWebhookConfiguration>((**object).clone())
                    .map(|c| c.webhooks)
            } else {
                serde_json::from_value::<ValidatingWebhookConfiguration>((**object).clone())
                    .map(|c| c.webhooks)
            };
            match webhooks {
                Ok(webhooks) => hooks.extend(webhooks),
                Err(e) => tracing::warn!(
                    configuration = %object["metadata"]["name"], error = %e,
                    "unreadable webhook configuration"
                ),
            }
        }
        let slot = if mutating {
            &self.mutating
        } else {
            &self.validating
        };
        *slot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(hooks);
    }

    fn mutating(&self) -> Arc<Vec<Webhook>> {
        Arc::clone(&self.mutating.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn validating(&self) -> Arc<Vec<Webhook>> {
        Arc::clone(&self.validating.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether any webhook is configured (writes skip the rest of this module otherwise).
    fn is_empty(&self) -> bool {
        self.mutating().is_empty() && self.validating().is_empty()
    }
}

/// Runs the mutating webhooks that match on `object` (the new object; `Value::Null` for a
/// delete). Returns whether any of them changed it.
pub async fn mutate(api: &Api, request: &Request<'_>, object: &mut Value) -> Result<bool> {
    if request.exempt() || api.webhooks.is_empty() {
        return Ok(false);
    }
    let hooks = api.webhooks.mutating();
    let namespace = namespace_of(api, &hooks, request).await;
    let mut changed_at: Option<usize> = None;
    let mut called = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        if !applies(hook, request, object, namespace.as_ref())? {
            continue;
        }
        called.push(i);
        if admit_one(api, hook, request, object, true).await? {
            changed_at = Some(i);
        }
    }
    // kube-apiserver's reinvocation: an `IfNeeded` webhook called before the last change sees
    // the object once more.
    if let Some(last) = changed_at {
        for &i in called.iter().filter(|&&i| i < last) {
            let hook = &hooks[i];
            if hook.reinvocation_policy.as_deref() == Some("IfNeeded") {
                admit_one(api, hook, request, object, true).await?;
            }
        }
    }
    Ok(changed_at.is_some())
}

/// Runs the validating webhooks that match on `object` as it will be stored (`Value::Null`
/// for a delete), in parallel; the first refusal (in calling order) is the answer.
pub async fn validate(api: &Api, request: &Request<'_>, object: &Value) -> Result<()> {
    if request.exempt() || api.webhooks.is_empty() {
        return Ok(());
    }
    let hooks = api.webhooks.validating();
    let namespace = namespace_of(api, &hooks, request).await;
    let mut calls = Vec::new();
    for hook in hooks.iter() {
        if applies(hook, request, object, namespace.as_ref())? {
            let mut copy = object.clone();
            calls.push(async move { admit_one(api, hook, request, &mut copy, false).await });
        }
    }
    for result in futures::future::join_all(calls).await {
        result?;
    }
    Ok(())
}

/// The request's namespace, read only if some webhook's rules match the request.
async fn namespace_of(api: &Api, hooks: &[Webhook], request: &Request<'_>) -> Option<Value> {
    let attributes = request.attributes();
    let any = hooks
        .iter()
        .any(|hook| hook.rules.iter().any(|rule| rule.matches(&attributes)));
    if any {
        namespace_object(api, request).await
    } else {
        None
    }
}

/// Whether `hook` is called for this request: rules, selectors, match conditions.
fn applies(
    hook: &Webhook,
    request: &Request<'_>,
    object: &Value,
    namespace: Option<&Value>,
) -> Result<bool> {
    let attributes = request.attributes();
    if !hook.rules.iter().any(|rule| rule.matches(&attributes)) {
        return Ok(false);
    }
    if !request.selected(
        hook.namespace_selector.as_ref(),
        hook.object_selector.as_ref(),
        object,
        namespace,
    ) {
        return Ok(false);
    }
    if hook.match_conditions.is_empty() {
        return Ok(true);
    }
    let review = request.review("", Some(object));
    let old = request.old.cloned().unwrap_or(Value::Null);
    let activation = match Activation::new(&[
        ("object", object),
        ("oldObject", &old),
        ("request", &review),
    ]) {
        Ok(activation) => activation,
        Err(e) => return failed(hook, &format!("matchConditions: {e}")).map(|()| false),
    };
    for condition in &hook.match_conditions {
        match activation.condition(&condition.expression) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => {
                return failed(
                    hook,
                    &format!("matchCondition {:?} failed: {e}", condition.name),
                )
                .map(|()| false);
            }
        }
    }
    Ok(true)
}

/// What a failed call means: an error under `failurePolicy: Fail`, nothing under `Ignore`.
fn failed(hook: &Webhook, reason: &str) -> Result<()> {
    if hook.failure_policy.as_deref() == Some("Ignore") {
        tracing::warn!(webhook = %hook.name, %reason, "failed calling webhook, failing open");
        super::super::audit::annotate(
            &format!(
                "failed-open.{}.admission.k8s.io/round_0_index_0",
                hook_kind(hook)
            ),
            hook.name.clone(),
        );
        return Ok(());
    }
    let message = format!("failed calling webhook \"{}\": {reason}", hook.name);
    let mut error = ApiError::internal(format!("Internal error occurred: {message}"));
    error.details = Some(json!({ "causes": [{ "message": message }] }));
    Err(error)
}

fn hook_kind(hook: &Webhook) -> &'static str {
    if hook.reinvocation_policy.is_some() {
        "mutation"
    } else {
        "validation"
    }
}

/// Calls one webhook and applies its answer: a refusal is an error, a patch (mutating only)
/// changes `object`. Returns whether it did.
async fn admit_one(
    api: &Api,
    hook: &Webhook,
    request: &Request<'_>,
    object: &mut Value,
    mutating: bool,
) -> Result<bool> {
    let version = hook
        .admission_review_versions
        .iter()
        .find(|v| *v == "v1" || *v == "v1beta1")
        .map_or("v1", String::as_str);
    let uid = uuid::Uuid::new_v4().to_string();
    let shown = (!object.is_null()).then_some(&*object);
    let review = json!({
        "apiVersion": format!("admission.k8s.io/{version}"),
        "kind": "AdmissionReview",
        "request": request.review(&uid, shown),
    });
    let response = match call::call(api, hook, &review).await {
        Ok(response) => response,
        Err(CallError(reason)) => return failed(hook, &reason).map(|()| false),
    };
    for warning in response["warnings"].as_array().into_iter().flatten() {
        if let Some(text) = warning.as_str() {
            super::super::warnings::add(text);
        }
    }
    if response["allowed"] != true {
        return Err(denied(&hook.name, &response["status"]));
    }
    let Some(patch) = response["patch"].as_str().filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    if !mutating || matches!(request.operation, Operation::Delete | Operation::Connect) {
        return Ok(false);
    }
    if response["patchType"] != "JSONPatch" {
        return failed(
            hook,
            &format!(
                "unsupported patch type {:?}",
                response["patchType"].as_str().unwrap_or_default()
            ),
        )
        .map(|()| false);
    }
    let patched = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            serde_json::from_slice::<json_patch::Patch>(&bytes).map_err(|e| e.to_string())
        })
        .and_then(|ops| {
            let mut copy = object.clone();
            json_patch::patch(&mut copy, &ops)
                .map(|()| copy)
                .map_err(|e| e.to_string())
        });
    match patched {
        Ok(patched) if patched != *object => {
            *object = patched;
            super::super::audit::annotate(
                &format!(
                    "patch.webhook.admission.k8s.io/round_0_index_0.{}",
                    hook.name
                ),
                "JSONPatch",
            );
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) => failed(hook, &format!("JSON patch: {e}")).map(|()| false),
    }
}

/// A webhook's refusal as kube-apiserver words it (`webhookerrors.ToStatusErr`): its code
/// (400 when it gave none below 400), its reason, and its message after who denied it.
fn denied(name: &str, status: &Value) -> ApiError {
    let by = format!("admission webhook \"{name}\" denied the request");
    let code = status["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let reason = status["reason"].as_str().unwrap_or_default();
    let message = match status["message"].as_str().filter(|m| !m.is_empty()) {
        Some(message) => format!("{by}: {message}"),
        None if !reason.is_empty() => format!("{by}: {reason}"),
        None => format!("{by} without explanation"),
    };
    let mut error = ApiError::from_status(code, reason, message);
    if status["details"].is_object() {
        error.details = Some(status["details"].clone());
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_worded_as_kubernetes_words_them() {
        let e = denied(
            "deny.example.com",
            &json!({"message": "no", "code": 403, "reason": "Forbidden"}),
        );
        assert_eq!(e.code, StatusCode::FORBIDDEN);
        assert_eq!(e.reason, "Forbidden");
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request: no"
        );
        let e = denied("deny.example.com", &json!({"code": 200}));
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request without explanation"
        );
        let e = denied("d.e.f", &json!({"reason": "Custom"}));
        assert_eq!(
            e.message,
            "admission webhook \"d.e.f\" denied the request: Custom"
        );
    }

    #[test]
    fn configurations_are_exempt_from_webhooks() {
        let request = Request {
            operation: Operation::Create,
            resource: &resource::VALIDATING_WEBHOOK_CONFIGURATIONS,
            subresource: "",
            namespace: None,
            name: "x",
            old: None,
            dry_run: false,
            namespace_object: None,
        };
        assert!(request.exempt());
    }
}
