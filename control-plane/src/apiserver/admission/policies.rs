//! ValidatingAdmissionPolicy (kube-apiserver's `ValidatingAdmissionPolicy` plugin): CEL
//! validations of the writes a policy's `matchConstraints` and a binding's `matchResources`
//! select, with the binding's parameters, evaluated in-process with the `cel` crate.
//!
//! - Each binding of an existing policy whose rules and selectors match the request is
//!   evaluated once per parameter object (`paramRef` by name or selector; `params` is null for
//!   a policy without `paramKind`).
//! - `matchConditions` must all hold, then every `validations` expression must be true;
//!   `variables` are bound as `variables.<name>`.
//! - `auditAnnotations` add `<policy>/<key>` annotations to the request's audit events.
//! - A violation is denied (`Deny`: 422, or the validation's `reason`), turned into a warning
//!   (`Warn`) or an audit annotation (`Audit`), as the binding's `validationActions` say. An
//!   expression that cannot be evaluated is a violation under `failurePolicy: Fail`.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use apiary_api::{
    admissionregistration_v1::{
        MatchResources, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, labels_of,
    },
    cel_rules::Activation,
    resource,
};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{
    super::{Api, audit, error::ApiError, objects, objects::Result, warnings},
    Request, namespace_object,
};

/// The stored policies and bindings; kept by a watch ([`start`]).
#[derive(Debug, Default)]
pub struct Policies {
    state: RwLock<Arc<State>>,
}

#[derive(Debug, Default)]
struct State {
    policies: BTreeMap<String, ValidatingAdmissionPolicy>,
    /// Sorted by name.
    bindings: Vec<ValidatingAdmissionPolicyBinding>,
}

/// Follows the policies and their bindings for the life of the process. Returns once those
/// stored at start are known (or `timeout` passed).
pub async fn start(
    api: Arc<Api>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    timeout: std::time::Duration,
) {
    use crate::controllers::runtime::{self, Cache};
    let policies = Cache::new(&resource::VALIDATING_ADMISSION_POLICIES);
    let bindings = Cache::new(&resource::VALIDATING_ADMISSION_POLICY_BINDINGS);
    for cache in [&policies, &bindings] {
        let changed = {
            let (api, policies, bindings) = (Arc::clone(&api), policies.clone(), bindings.clone());
            move |_: &Value| api.policies.replace(&policies.all(), &bindings.all())
        };
        tokio::spawn(runtime::reflect(
            Arc::clone(&api),
            cache.clone(),
            changed,
            shutdown.clone(),
        ));
    }
    runtime::wait_synced(&[&policies, &bindings], timeout).await;
}

impl Policies {
    fn replace(&self, policies: &[Arc<Value>], bindings: &[Arc<Value>]) {
        fn read<T: serde::de::DeserializeOwned>(objects: &[Arc<Value>]) -> Vec<T> {
            objects
                .iter()
                .filter_map(|o| match serde_json::from_value((**o).clone()) {
                    Ok(typed) => Some(typed),
                    Err(e) => {
                        tracing::warn!(name = %o["metadata"]["name"], error = %e, "unreadable admission policy object");
                        None
                    }
                })
                .collect()
        }
        let policies = read::<ValidatingAdmissionPolicy>(policies)
            .into_iter()
            .map(|p| (p.metadata.name.clone(), p))
            .collect();
        let mut bindings = read::<ValidatingAdmissionPolicyBinding>(bindings);
        bindings.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        *self.state.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(State { policies, bindings });
    }

    fn state(&self) -> Arc<State> {
        Arc::clone(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One failed validation of one binding.
struct Violation {
    message: String,
    /// Kubernetes' `StatusReason` (`Invalid` unless the validation names another).
    reason: String,
}

/// Evaluates the bindings that match the request on `object` as it will be stored
/// (`Value::Null` for a delete).
pub async fn validate(api: &Api, request: &Request<'_>, object: &Value) -> Result<()> {
    let state = api.policies.state();
    if request.exempt() || state.bindings.is_empty() {
        return Ok(());
    }
    let attributes = request.attributes();
    let mut namespace: Option<Option<Value>> = None;
    for binding in &state.bindings {
        let Some(policy) = state.policies.get(&binding.spec.policy_name) else {
            continue;
        };
        let Some(constraints) = &policy.spec.match_constraints else {
            continue;
        };
        if !constraints.matches_rules(&attributes, request.name) {
            continue;
        }
        if let Some(resources) = &binding.spec.match_resources
            && !resources.resource_rules.is_empty()
            && !resources.matches_rules(&attributes, request.name)
        {
            continue;
        }
        // The namespace is read once, for the first binding whose rules match.
        if namespace.is_none() {
            namespace = Some(namespace_object(api, request).await);
        }
        let namespace_object = namespace.as_ref().and_then(Option::as_ref);
        let selected = |r: &MatchResources| {
            request.selected(
                r.namespace_selector.as_ref(),
                r.object_selector.as_ref(),
                object,
                namespace_object,
            )
        };
        if !selected(constraints)
            || binding
                .spec
                .match_resources
                .as_ref()
                .is_some_and(|r| !selected(r))
        {
            continue;
        }
        let violations = match params(api, request, policy, binding).await {
            Ok(params) => {
                let mut all = Vec::new();
                for param in params {
                    all.extend(evaluate(policy, request, object, &param, namespace_object));
                }
                all
            }
            Err(reason) if policy.spec.failure_policy.as_deref() == Some("Ignore") => {
                tracing::warn!(policy = %policy.metadata.name, %reason, "admission policy not evaluated");
                Vec::new()
            }
            Err(reason) => vec![Violation {
                message: reason,
                reason: "Invalid".to_owned(),
            }],
        };
        act(request, policy, binding, violations)?;
    }
    Ok(())
}

/// The parameter objects a binding evaluates its policy with: `[null]` for a policy without
/// `paramKind`, none when they are missing and the binding says `Allow`.
async fn params(
    api: &Api,
    request: &Request<'_>,
    policy: &ValidatingAdmissionPolicy,
    binding: &ValidatingAdmissionPolicyBinding,
) -> Result<Vec<Value>, String> {
    let Some(kind) = &policy.spec.param_kind else {
        return Ok(vec![Value::Null]);
    };
    let Some(param_ref) = &binding.spec.param_ref else {
        return Err(format!(
            "failed to configure binding: paramRef is required when policy {} has paramKind",
            policy.metadata.name
        ));
    };
    let (group, version) = kind
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", kind.api_version.as_str()));
    let Some(resource) = api
        .resources
        .all()
        .into_iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind.kind)
    else {
        return Err(format!(
            "failed to configure policy: paramKind {}, Kind={} is not served",
            kind.api_version, kind.kind
        ));
    };
    let namespace = match (resource.namespaced, param_ref.namespace.as_str()) {
        (false, _) => None,
        (true, "") => match request.namespace {
            Some(ns) => Some(ns.to_owned()),
            None => {
                return Err(
                    "failed to configure binding: cannot use a namespaced paramRef in a cluster-scoped request without paramRef.namespace"
                        .to_owned(),
                );
            }
        },
        (true, ns) => Some(ns.to_owned()),
    };
    let found = if param_ref.name.is_empty() {
        let target = super::super::path::Target {
            resource,
            namespace: namespace.clone(),
            name: None,
            subresource: None,
        };
        let listing = objects::list(api, &target, &Default::default())
            .await
            .map_err(|e| e.message)?;
        let selector = param_ref.selector.clone().unwrap_or_default();
        listing["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| selector.matches(&labels_of(o)))
            .cloned()
            .collect()
    } else {
        match objects::get(api, resource, namespace.as_deref(), &param_ref.name).await {
            Ok(param) => vec![param],
            Err(e) if e.code == StatusCode::NOT_FOUND => Vec::new(),
            Err(e) => return Err(e.message),
        }
    };
    if found.is_empty() && param_ref.parameter_not_found_action.as_deref() != Some("Allow") {
        return Err(
            "no params found for policy binding with `Deny` parameterNotFoundAction".to_owned(),
        );
    }
    Ok(found)
}

/// The violations of one policy on one parameter.
fn evaluate(
    policy: &ValidatingAdmissionPolicy,
    request: &Request<'_>,
    object: &Value,
    param: &Value,
    namespace_object: Option<&Value>,
) -> Vec<Violation> {
    let fail_open = policy.spec.failure_policy.as_deref() == Some("Ignore");
    let error = |expression: &str, e: String| {
        (!fail_open).then(|| Violation {
            message: format!("expression '{expression}' resulted in error: {e}"),
            reason: "Invalid".to_owned(),
        })
    };
    let mut described = request.review("", None);
    if let Some(fields) = described.as_object_mut() {
        fields.remove("object");
        fields.remove("oldObject");
    }
    let old = request.old.cloned().unwrap_or(Value::Null);
    let namespace = namespace_object.cloned().unwrap_or(Value::Null);
    let mut activation = match Activation::new(&[
        ("object", object),
        ("oldObject", &old),
        ("request", &described),
        ("params", param),
        ("namespaceObject", &namespace),
    ]) {
        Ok(activation) => activation,
        Err(e) => return error("<variables>", e).into_iter().collect(),
    };
    for condition in &policy.spec.match_conditions {
        match activation.condition(&condition.expression) {
            Ok(true) => {}
            Ok(false) => return Vec::new(),
            Err(e) => return error(&condition.expression, e).into_iter().collect(),
        }
    }
    for variable in &policy.spec.variables {
        if let Err(e) = activation.define(&variable.name, &variable.expression) {
            tracing::debug!(variable = %variable.name, error = %e, "policy variable not bound");
        }
    }
    let mut violations = Vec::new();
    for validation in &policy.spec.validations {
        match activation.condition(&validation.expression) {
            Ok(true) => {}
            Ok(false) => {
                let message = Some(validation.message_expression.as_str())
                    .filter(|e| !e.is_empty())
                    .and_then(|e| activation.string(e).ok())
                    .filter(|m| !m.trim().is_empty() && !m.contains('\n'))
                    .or_else(|| Some(validation.message.clone()).filter(|m| !m.is_empty()))
                    .unwrap_or_else(|| format!("failed expression: {}", validation.expression));
                violations.push(Violation {
                    message,
                    reason: validation
                        .reason
                        .clone()
                        .unwrap_or_else(|| "Invalid".to_owned()),
                });
            }
            Err(e) => violations.extend(error(&validation.expression, e)),
        }
    }
    // Each audit annotation's value, as `<policy>/<key>` on the request's audit events (a
    // null value adds nothing).
    for annotation in &policy.spec.audit_annotations {
        if let Ok(value) = activation.string(&annotation.value_expression) {
            audit::annotate(
                &format!("{}/{}", policy.metadata.name, annotation.key),
                value,
            );
        }
    }
    violations
}

/// What a binding's violations do: deny, warn, audit.
fn act(
    request: &Request<'_>,
    policy: &ValidatingAdmissionPolicy,
    binding: &ValidatingAdmissionPolicyBinding,
    violations: Vec<Violation>,
) -> Result<()> {
    let Some(first) = violations.first() else {
        return Ok(());
    };
    let (policy_name, binding_name) = (&policy.metadata.name, &binding.metadata.name);
    let actions = &binding.spec.validation_actions;
    if actions.iter().any(|a| a == "Warn") {
        for v in &violations {
            warnings::add(format!(
                "Validation failed for ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}': {}",
                v.message
            ));
        }
    }
    if actions.iter().any(|a| a == "Audit") {
        let failures: Vec<Value> = violations
            .iter()
            .map(|v| {
                json!({"message": v.message, "policy": policy_name, "binding": binding_name,
                    "expressionIndex": 0, "validationActions": actions})
            })
            .collect();
        audit::annotate(
            "validation.policy.admission.k8s.io/validation_failure",
            Value::Array(failures).to_string(),
        );
    }
    if !actions.iter().any(|a| a == "Deny") {
        return Ok(());
    }
    let message = format!(
        "ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request: {}",
        first.message
    );
    let code = match first.reason.as_str() {
        "Forbidden" => StatusCode::FORBIDDEN,
        "Invalid" => StatusCode::UNPROCESSABLE_ENTITY,
        "RequestEntityTooLarge" => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let resource = request.resource;
    let qualified = super::super::error::qualified(resource.plural, resource.group);
    let mut error = ApiError::from_status(
        code,
        &first.reason,
        format!("{qualified} \"{}\" is forbidden: {message}", request.name),
    );
    let mut details = json!({ "name": request.name, "kind": resource.plural,
        "causes": [{ "message": message }] });
    if !resource.group.is_empty() {
        details["group"] = json!(resource.group);
    }
    error.details = Some(details);
    Err(error)
}
