//! `admissionregistration.k8s.io/v1`: MutatingWebhookConfiguration,
//! ValidatingWebhookConfiguration, ValidatingAdmissionPolicy and its bindings, their defaults
//! and validation as kube-apiserver's, and the rule matching that decides which requests a
//! webhook or policy sees.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    meta::{ObjectMeta, TypeMeta},
    selector::LabelSelector,
    validation::{self, ErrorList, FieldError, NameRule},
};

/// The API group of the admission registration kinds.
pub const GROUP: &str = "admissionregistration.k8s.io";

/// Webhooks that may change an object before it is validated and stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MutatingWebhookConfiguration {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
}

/// Webhooks that may refuse a request; they see the object as it will be stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatingWebhookConfiguration {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
}

/// One webhook (`MutatingWebhook` or `ValidatingWebhook`; only mutating ones have a
/// `reinvocationPolicy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Webhook {
    pub name: String,
    pub client_config: ClientConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleWithOperations>,
    /// `Fail` (the default) or `Ignore`: what a call that fails (unreachable, timed out, an
    /// unreadable answer) means.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<String>,
    /// `Equivalent` (the default) or `Exact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<LabelSelector>,
    /// `None` or `NoneOnDryRun` (v1 allows no others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side_effects: Option<String>,
    /// 1 to 30; 10 by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    pub admission_review_versions: Vec<String>,
    /// `Never` (the default) or `IfNeeded`; mutating webhooks only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reinvocation_policy: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_conditions: Vec<MatchCondition>,
}

/// Where a webhook is: a URL, or a Service in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceReference>,
    /// PEM certificates that sign the webhook's serving certificate (base64 in JSON); the
    /// system's roots when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_bundle: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceReference {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 443 by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// A CEL expression that must hold for the webhook to be called.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MatchCondition {
    pub name: String,
    pub expression: String,
}

/// Operations on resources of API groups and versions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RuleWithOperations {
    pub operations: Vec<String>,
    pub api_groups: Vec<String>,
    pub api_versions: Vec<String>,
    /// `pods`, `pods/status`, `pods/*`, `*/scale`, `*` (no subresources) or `*/*`.
    pub resources: Vec<String>,
    /// `Cluster`, `Namespaced` or `*` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// What a request is, as rules match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    /// Empty for the main resource.
    pub subresource: &'a str,
    pub namespaced: bool,
}

impl RuleWithOperations {
    /// Whether the rule covers the request (kube-apiserver's `rules.Matcher`).
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        let any = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        any(&self.operations, a.operation)
            && any(&self.api_groups, a.group)
            && any(&self.api_versions, a.version)
            && self.matches_resource(a.resource, a.subresource)
            && match self.scope.as_deref().unwrap_or("*") {
                "Cluster" => !a.namespaced,
                // A Namespace is cluster-scoped, but its own rule is `Namespaced`'s business
                // in Kubernetes too only for namespaced kinds.
                "Namespaced" => a.namespaced,
                _ => true,
            }
    }

    fn matches_resource(&self, resource: &str, subresource: &str) -> bool {
        let wanted = if subresource.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}/{subresource}")
        };
        self.resources.iter().any(|r| {
            if r == "*/*" || *r == wanted {
                return true;
            }
            match r.split_once('/') {
                None => r == "*" && subresource.is_empty(),
                Some((res, sub)) => {
                    (res == "*" || res == resource)
                        && (sub == "*" || sub == subresource)
                        && !subresource.is_empty()
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// ValidatingAdmissionPolicy and its bindings

/// CEL validations of the requests a policy matches; bindings put it to work.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatingAdmissionPolicy {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PolicySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param_kind: Option<ParamKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_constraints: Option<MatchResources>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub validations: Vec<Validation>,
    /// `Fail` (the default) or `Ignore`: what an expression that cannot be evaluated means.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit_annotations: Vec<AuditAnnotation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_conditions: Vec<MatchCondition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<Variable>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ParamKind {
    pub api_version: String,
    pub kind: String,
}

/// Which requests a policy (or binding) is for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MatchResources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_rules: Vec<NamedRule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_resource_rules: Vec<NamedRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_policy: Option<String>,
}

/// A rule, optionally only for objects of some names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NamedRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(flatten)]
    pub rule: RuleWithOperations,
}

impl NamedRule {
    fn matches(&self, attributes: &Attributes<'_>, name: &str) -> bool {
        self.rule.matches(attributes)
            && (self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == name))
    }
}

impl MatchResources {
    /// Whether the request is among the rules' and not among the exclusions (selectors are
    /// the caller's: they need the namespace).
    pub fn matches_rules(&self, attributes: &Attributes<'_>, name: &str) -> bool {
        self.resource_rules
            .iter()
            .any(|r| r.matches(attributes, name))
            && !self
                .exclude_resource_rules
                .iter()
                .any(|r| r.matches(attributes, name))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Validation {
    pub expression: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `Invalid` when empty; or `Forbidden`, `RequestEntityTooLarge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message_expression: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuditAnnotation {
    pub key: String,
    pub value_expression: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Variable {
    pub name: String,
    pub expression: String,
}

/// Puts a policy to work, with its parameters and what a violation does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatingAdmissionPolicyBinding {
    #[serde(flatten)]
    pub type_meta: TypeMeta,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BindingSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BindingSpec {
    pub policy_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param_ref: Option<ParamRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_resources: Option<MatchResources>,
    /// `Deny`, `Warn`, `Audit`.
    pub validation_actions: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ParamRef {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// `Allow` or `Deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter_not_found_action: Option<String>,
}

const VALIDATION_ACTIONS: &[&str] = &["Audit", "Deny", "Warn"];
const VALIDATION_REASONS: &[&str] = &["Forbidden", "Invalid", "RequestEntityTooLarge"];
const NOT_FOUND_ACTIONS: &[&str] = &["Allow", "Deny"];

/// kube-apiserver's `SetDefaults_ValidatingAdmissionPolicySpec` and `SetDefaults_MatchResources`.
pub fn default_policy(object: &mut serde_json::Value) {
    use serde_json::json;
    let spec = &mut object["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["failurePolicy"].is_null() {
        spec["failurePolicy"] = json!("Fail");
    }
    default_match_resources(&mut spec["matchConstraints"]);
}

/// kube-apiserver's `SetDefaults_ValidatingAdmissionPolicyBindingSpec`.
pub fn default_binding(object: &mut serde_json::Value) {
    use serde_json::json;
    let spec = &mut object["spec"];
    if !spec.is_object() {
        return;
    }
    default_match_resources(&mut spec["matchResources"]);
    let param_ref = &mut spec["paramRef"];
    if param_ref.is_object() && param_ref["parameterNotFoundAction"].is_null() {
        param_ref["parameterNotFoundAction"] = json!("Deny");
    }
}

fn default_match_resources(resources: &mut serde_json::Value) {
    use serde_json::json;
    let Some(fields) = resources.as_object_mut() else {
        return;
    };
    for (field, value) in [
        ("matchPolicy", json!("Equivalent")),
        ("namespaceSelector", json!({})),
        ("objectSelector", json!({})),
    ] {
        if fields.get(field).is_none_or(serde_json::Value::is_null) {
            fields.insert(field.to_owned(), value);
        }
    }
    for list in ["resourceRules", "excludeResourceRules"] {
        if let Some(rules) = fields.get_mut(list).and_then(|r| r.as_array_mut()) {
            for rule in rules.iter_mut().filter_map(|r| r.as_object_mut()) {
                if rule.get("scope").is_none_or(serde_json::Value::is_null) {
                    rule.insert("scope".to_owned(), json!("*"));
                }
            }
        }
    }
}

pub fn validate_policy(policy: &ValidatingAdmissionPolicy) -> ErrorList {
    let mut errs = validation::validate_object_meta(&policy.metadata, false, NameRule::Subdomain);
    let spec = &policy.spec;
    match spec.failure_policy.as_deref() {
        None => errs.push(FieldError::required("spec.failurePolicy")),
        Some(p) if !FAILURE_POLICIES.contains(&p) => {
            errs.push(FieldError::not_supported(
                "spec.failurePolicy",
                p,
                FAILURE_POLICIES,
            ));
        }
        Some(_) => {}
    }
    if let Some(kind) = &spec.param_kind {
        if kind.kind.is_empty() {
            errs.push(FieldError::required("spec.paramKind.kind"));
        }
        if kind.api_version.is_empty() {
            errs.push(FieldError::required("spec.paramKind.apiVersion"));
        }
    }
    match &spec.match_constraints {
        None => errs.push(FieldError::required("spec.matchConstraints")),
        Some(constraints) => {
            if constraints.resource_rules.is_empty() {
                errs.push(FieldError::required("spec.matchConstraints.resourceRules"));
            }
            errs.extend(validate_match_resources(
                constraints,
                "spec.matchConstraints",
            ));
        }
    }
    if spec.validations.is_empty() && spec.audit_annotations.is_empty() {
        errs.push(
            FieldError::required("spec.validations")
                .with_detail("validations or auditAnnotations must contain at least one item"),
        );
    }
    for (i, v) in spec.validations.iter().enumerate() {
        let at = format!("spec.validations[{i}]");
        expression(&mut errs, &format!("{at}.expression"), &v.expression);
        if !v.message_expression.is_empty() {
            expression(
                &mut errs,
                &format!("{at}.messageExpression"),
                &v.message_expression,
            );
        }
        if v.message.contains('\n') {
            errs.push(FieldError::invalid(
                format!("{at}.message"),
                v.message.as_str(),
                "message must not contain line breaks",
            ));
        }
        if let Some(reason) = &v.reason
            && !VALIDATION_REASONS.contains(&reason.as_str())
        {
            errs.push(FieldError::not_supported(
                format!("{at}.reason"),
                reason.as_str(),
                VALIDATION_REASONS,
            ));
        }
    }
    for (i, a) in spec.audit_annotations.iter().enumerate() {
        let at = format!("spec.auditAnnotations[{i}]");
        if a.key.is_empty() {
            errs.push(FieldError::required(format!("{at}.key")));
        }
        expression(
            &mut errs,
            &format!("{at}.valueExpression"),
            &a.value_expression,
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in spec.match_conditions.iter().enumerate() {
        let at = format!("spec.matchConditions[{i}]");
        if c.name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name")));
        } else if !names.insert(c.name.as_str()) {
            errs.push(FieldError::duplicate(format!("{at}.name"), c.name.as_str()));
        }
        expression(&mut errs, &format!("{at}.expression"), &c.expression);
    }
    for (i, v) in spec.variables.iter().enumerate() {
        let at = format!("spec.variables[{i}]");
        if v.name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name")));
        }
        expression(&mut errs, &format!("{at}.expression"), &v.expression);
    }
    errs
}

pub fn validate_policy_binding(binding: &ValidatingAdmissionPolicyBinding) -> ErrorList {
    let mut errs = validation::validate_object_meta(&binding.metadata, false, NameRule::Subdomain);
    let spec = &binding.spec;
    if spec.policy_name.is_empty() {
        errs.push(FieldError::required("spec.policyName"));
    } else {
        for problem in validation::is_dns1123_subdomain(&spec.policy_name) {
            errs.push(FieldError::invalid(
                "spec.policyName",
                spec.policy_name.as_str(),
                problem,
            ));
        }
    }
    if let Some(param_ref) = &spec.param_ref {
        if param_ref.name.is_empty() == param_ref.selector.is_none() {
            errs.push(FieldError::forbidden(
                "spec.paramRef.name",
                "name and selector are mutually exclusive",
            ));
        }
        match param_ref.parameter_not_found_action.as_deref() {
            None => errs.push(FieldError::required(
                "spec.paramRef.parameterNotFoundAction",
            )),
            Some(a) if !NOT_FOUND_ACTIONS.contains(&a) => errs.push(FieldError::not_supported(
                "spec.paramRef.parameterNotFoundAction",
                a,
                NOT_FOUND_ACTIONS,
            )),
            Some(_) => {}
        }
    }
    if let Some(resources) = &spec.match_resources {
        errs.extend(validate_match_resources(resources, "spec.matchResources"));
    }
    if spec.validation_actions.is_empty() {
        errs.push(
            FieldError::required("spec.validationActions")
                .with_detail("at least one validation action is required"),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, action) in spec.validation_actions.iter().enumerate() {
        let at = format!("spec.validationActions[{i}]");
        if !seen.insert(action.as_str()) {
            errs.push(FieldError::duplicate(&at, action.as_str()));
        } else if !VALIDATION_ACTIONS.contains(&action.as_str()) {
            errs.push(FieldError::not_supported(
                &at,
                action.as_str(),
                VALIDATION_ACTIONS,
            ));
        }
    }
    if seen.contains("Deny") && seen.contains("Warn") {
        errs.push(FieldError::invalid(
            "spec.validationActions",
            spec.validation_actions.join(", "),
            "must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
        ));
    }
    errs
}

fn validate_match_resources(resources: &MatchResources, path: &str) -> ErrorList {
    let mut errs = ErrorList::new();
    if let Some(policy) = &resources.match_policy
        && !MATCH_POLICIES.contains(&policy.as_str())
    {
        errs.push(FieldError::not_supported(
            format!("{path}.matchPolicy"),
            policy.as_str(),
            MATCH_POLICIES,
        ));
    }
    for (field, selector) in [
        ("namespaceSelector", &resources.namespace_selector),
        ("objectSelector", &resources.object_selector),
    ] {
        if let Some(selector) = selector {
            errs.extend(validation::validate_label_selector(
                selector,
                &format!("{path}.{field}"),
            ));
        }
    }
    for (list, rules) in [
        ("resourceRules", &resources.resource_rules),
        ("excludeResourceRules", &resources.exclude_resource_rules),
    ] {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            errs.extend(validate_rule(&rule.rule, &at));
            for (j, name) in rule.resource_names.iter().enumerate() {
                for problem in validation::is_dns1123_subdomain(name) {
                    errs.push(FieldError::invalid(
                        format!("{at}.resourceNames[{j}]"),
                        name.as_str(),
                        problem,
                    ));
                }
            }
        }
    }
    errs
}

/// A required CEL expression that must compile.
fn expression(errs: &mut ErrorList, path: &str, expression: &str) {
    if expression.is_empty() {
        errs.push(FieldError::required(path));
    } else if let Some(e) = crate::cel_rules::compile_error(expression) {
        errs.push(FieldError::invalid(
            path,
            expression,
            format!("compilation failed: {e}"),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults (kube-apiserver's `SetDefaults_*Webhook`)

/// Fills in a webhook configuration's defaults, for either kind (`mutating` adds
/// `reinvocationPolicy`).
pub fn default_configuration(object: &mut serde_json::Value, mutating: bool) {
    use serde_json::json;
    let Some(webhooks) = object["webhooks"].as_array_mut() else {
        return;
    };
    for hook in webhooks {
        let Some(fields) = hook.as_object_mut() else {
            continue;
        };
        for (field, value) in [
            ("failurePolicy", json!("Fail")),
            ("matchPolicy", json!("Equivalent")),
            ("namespaceSelector", json!({})),
            ("objectSelector", json!({})),
            ("timeoutSeconds", json!(10)),
        ] {
            if fields.get(field).is_none_or(serde_json::Value::is_null) {
                fields.insert(field.to_owned(), value);
            }
        }
        if mutating && fields.get("reinvocationPolicy").is_none_or(|v| v.is_null()) {
            fields.insert("reinvocationPolicy".to_owned(), json!("Never"));
        }
        if let Some(port) = fields
            .get_mut("clientConfig")
            .and_then(|c| c.get_mut("service"))
            .and_then(|s| s.as_object_mut())
            && port.get("port").is_none_or(serde_json::Value::is_null)
        {
            port.insert("port".to_owned(), json!(443));
        }
        if let Some(rules) = fields.get_mut("rules").and_then(|r| r.as_array_mut()) {
            for rule in rules.iter_mut().filter_map(|r| r.as_object_mut()) {
                if rule.get("scope").is_none_or(serde_json::Value::is_null) {
                    rule.insert("scope".to_owned(), json!("*"));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation (kube-apiserver's `pkg/apis/admissionregistration/validation`)

const FAILURE_POLICIES: &[&str] = &["Fail", "Ignore"];
const MATCH_POLICIES: &[&str] = &["Equivalent", "Exact"];
const NO_SIDE_EFFECTS: &[&str] = &["None", "NoneOnDryRun"];
const OPERATIONS: &[&str] = &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"];
const REINVOCATION_POLICIES: &[&str] = &["IfNeeded", "Never"];
const SCOPES: &[&str] = &["*", "Cluster", "Namespaced"];
/// The AdmissionReview versions the server speaks.
pub const REVIEW_VERSIONS: &[&str] = &["v1", "v1beta1"];

pub fn validate_mutating(config: &MutatingWebhookConfiguration) -> ErrorList {
    validate_configuration(&config.metadata, &config.webhooks, true)
}

pub fn validate_validating(config: &ValidatingWebhookConfiguration) -> ErrorList {
    validate_configuration(&config.metadata, &config.webhooks, false)
}

fn validate_configuration(meta: &ObjectMeta, webhooks: &[Webhook], mutating: bool) -> ErrorList {
    let mut errs = validation::validate_object_meta(meta, false, NameRule::Subdomain);
    let mut names = std::collections::BTreeSet::new();
    for (i, hook) in webhooks.iter().enumerate() {
        let path = format!("webhooks[{i}]");
        errs.extend(validate_webhook(hook, mutating, &path));
        errs.extend(validate_review_versions(
            &hook.admission_review_versions,
            &format!("{path}.admissionReviewVersions"),
        ));
        if !hook.name.is_empty() && !names.insert(hook.name.as_str()) {
            errs.push(FieldError::duplicate(
                format!("{path}.name"),
                hook.name.as_str(),
            ));
        }
    }
    errs
}

fn validate_webhook(hook: &Webhook, mutating: bool, path: &str) -> ErrorList {
    let mut errs = ErrorList::new();
    errs.extend(fully_qualified_name(&format!("{path}.name"), &hook.name));
    for (i, rule) in hook.rules.iter().enumerate() {
        errs.extend(validate_rule(rule, &format!("{path}.rules[{i}]")));
    }
    let one_of = |errs: &mut ErrorList, field: &str, value: &Option<String>, valid: &[&str]| {
        if let Some(value) = value
            && !valid.contains(&value.as_str())
        {
            errs.push(FieldError::not_supported(
                format!("{path}.{field}"),
                value.as_str(),
                valid,
            ));
        }
    };
    one_of(
        &mut errs,
        "failurePolicy",
        &hook.failure_policy,
        FAILURE_POLICIES,
    );
    one_of(&mut errs, "matchPolicy", &hook.match_policy, MATCH_POLICIES);
    match &hook.side_effects {
        None => errs.push(
            FieldError::required(format!("{path}.sideEffects")).with_detail(format!(
                "must specify one of {}",
                NO_SIDE_EFFECTS.join(", ")
            )),
        ),
        Some(_) => one_of(
            &mut errs,
            "sideEffects",
            &hook.side_effects,
            NO_SIDE_EFFECTS,
        ),
    }
    if let Some(timeout) = hook.timeout_seconds
        && !(1..=30).contains(&timeout)
    {
        errs.push(FieldError::invalid(
            format!("{path}.timeoutSeconds"),
            i64::from(timeout),
            "the timeout value must be between 1 and 30 seconds",
        ));
    }
    for (field, selector) in [
        ("namespaceSelector", &hook.namespace_selector),
        ("objectSelector", &hook.object_selector),
    ] {
        if let Some(selector) = selector {
            errs.extend(validation::validate_label_selector(
                selector,
                &format!("{path}.{field}"),
            ));
        }
    }
    if mutating {
        one_of(
            &mut errs,
            "reinvocationPolicy",
            &hook.reinvocation_policy,
            REINVOCATION_POLICIES,
        );
    }
    let config = &hook.client_config;
    if !config.ca_bundle.is_empty() {
        use base64::Engine as _;
        if base64::engine::general_purpose::STANDARD
            .decode(&config.ca_bundle)
            .is_err()
        {
            errs.push(FieldError::invalid(
                format!("{path}.clientConfig.caBundle"),
                "<bytes>",
                "illegal base64 data",
            ));
        }
    }
    match (&config.url, &config.service) {
        (Some(url), None) => errs.extend(validate_url(url, &format!("{path}.clientConfig.url"))),
        (None, Some(service)) => errs.extend(validate_service(
            service,
            &format!("{path}.clientConfig.service"),
        )),
        _ => errs.push(
            FieldError::required(format!("{path}.clientConfig"))
                .with_detail("exactly one of url or service is required"),
        ),
    }
    let mut condition_names = std::collections::BTreeSet::new();
    for (i, condition) in hook.match_conditions.iter().enumerate() {
        let at = format!("{path}.matchConditions[{i}]");
        if condition.name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name")));
        } else if !condition_names.insert(condition.name.as_str()) {
            errs.push(FieldError::duplicate(
                format!("{at}.name"),
                condition.name.as_str(),
            ));
        }
        if condition.expression.is_empty() {
            errs.push(FieldError::required(format!("{at}.expression")));
        } else if let Some(e) = crate::cel_rules::compile_error(&condition.expression) {
            errs.push(FieldError::invalid(
                format!("{at}.expression"),
                condition.expression.as_str(),
                format!("compilation failed: {e}"),
            ));
        }
    }
    errs
}

/// kube-apiserver's `IsFullyQualifiedName`: a DNS subdomain of at least three labels.
fn fully_qualified_name(path: &str, name: &str) -> ErrorList {
    if name.is_empty() {
        return vec![FieldError::required(path)];
    }
    let mut errs: ErrorList = validation::is_dns1123_subdomain(name)
        .into_iter()
        .map(|problem| FieldError::invalid(path, name, problem))
        .collect();
    if errs.is_empty() && name.split('.').count() < 3 {
        errs.push(FieldError::invalid(
            path,
            name,
            "should be a domain with at least three segments separated by dots",
        ));
    }
    errs
}

fn validate_rule(rule: &RuleWithOperations, path: &str) -> ErrorList {
    let mut errs = ErrorList::new();
    let wildcard_alone = |errs: &mut ErrorList, field: &str, list: &[String], what: &str| {
        if list.len() > 1 && list.iter().any(|v| v == "*") {
            errs.push(FieldError::invalid(
                format!("{path}.{field}"),
                list.join(", "),
                format!("if '*' is present, must not specify other {what}"),
            ));
        }
    };
    if rule.operations.is_empty() {
        errs.push(FieldError::required(format!("{path}.operations")));
    }
    wildcard_alone(&mut errs, "operations", &rule.operations, "operations");
    for (i, op) in rule.operations.iter().enumerate() {
        if !OPERATIONS.contains(&op.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}.operations[{i}]"),
                op.as_str(),
                OPERATIONS,
            ));
        }
    }
    if rule.api_groups.is_empty() {
        errs.push(FieldError::required(format!("{path}.apiGroups")));
    }
    wildcard_alone(&mut errs, "apiGroups", &rule.api_groups, "API groups");
    if rule.api_versions.is_empty() {
        errs.push(FieldError::required(format!("{path}.apiVersions")));
    }
    wildcard_alone(&mut errs, "apiVersions", &rule.api_versions, "API versions");
    for (i, version) in rule.api_versions.iter().enumerate() {
        if version.is_empty() {
            errs.push(FieldError::required(format!("{path}.apiVersions[{i}]")));
        }
    }
    errs.extend(validate_resources(
        &rule.resources,
        &format!("{path}.resources"),
    ));
    if let Some(scope) = &rule.scope
        && !SCOPES.contains(&scope.as_str())
    {
        errs.push(FieldError::not_supported(
            format!("{path}.scope"),
            scope.as_str(),
            SCOPES,
        ));
    }
    errs
}

fn validate_resources(resources: &[String], path: &str) -> ErrorList {
    let mut errs = ErrorList::new();
    if resources.is_empty() {
        errs.push(FieldError::required(path));
    }
    let mut with_wildcard_sub = std::collections::BTreeSet::new();
    let mut sub_with_wildcard_res = std::collections::BTreeSet::new();
    let (mut double, mut single, mut plain) = (false, false, false);
    for (i, entry) in resources.iter().enumerate() {
        if entry.is_empty() {
            errs.push(FieldError::required(format!("{path}[{i}]")));
            continue;
        }
        double |= entry == "*/*";
        single |= entry == "*";
        let Some((res, sub)) = entry.split_once('/') else {
            plain = entry != "*";
            continue;
        };
        if with_wildcard_sub.contains(res) {
            errs.push(FieldError::invalid(
                format!("{path}[{i}]"),
                entry.as_str(),
                format!("if '{res}/*' is present, must not specify {entry}"),
            ));
        }
        if sub_with_wildcard_res.contains(sub) {
            errs.push(FieldError::invalid(
                format!("{path}[{i}]"),
                entry.as_str(),
                format!("if '*/{sub}' is present, must not specify {entry}"),
            ));
        }
        if sub == "*" {
            with_wildcard_sub.insert(res);
        }
        if res == "*" {
            sub_with_wildcard_res.insert(sub);
        }
    }
    if resources.len() > 1 && double {
        errs.push(FieldError::invalid(
            path,
            resources.join(", "),
            "if '*/*' is present, must not specify other resources",
        ));
    }
    if single && plain {
        errs.push(FieldError::invalid(
            path,
            resources.join(", "),
            "if '*' is present, must not specify other resources without subresources",
        ));
    }
    errs
}

fn validate_review_versions(versions: &[String], path: &str) -> ErrorList {
    let mut errs = ErrorList::new();
    if versions.is_empty() {
        errs.push(FieldError::required(path).with_detail(format!(
            "must specify one of {}",
            REVIEW_VERSIONS.join(", ")
        )));
        return errs;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, version) in versions.iter().enumerate() {
        if !seen.insert(version.as_str()) {
            errs.push(FieldError::invalid(
                format!("{path}[{i}]"),
                version.as_str(),
                "duplicate version",
            ));
            continue;
        }
        for problem in validation::is_dns1035_label(version) {
            errs.push(FieldError::invalid(
                format!("{path}[{i}]"),
                version.as_str(),
                problem,
            ));
        }
    }
    if !versions
        .iter()
        .any(|v| REVIEW_VERSIONS.contains(&v.as_str()))
    {
        errs.push(FieldError::invalid(
            path,
            versions.join(", "),
            format!(
                "must include at least one of {}",
                REVIEW_VERSIONS.join(", ")
            ),
        ));
    }
    errs
}

/// kube-apiserver's `ValidateWebhookURL` (for webhooks, which must be https).
fn validate_url(url: &str, path: &str) -> ErrorList {
    let invalid = |detail: &str| vec![FieldError::invalid(path, url, detail)];
    let Some(rest) = url.strip_prefix("https://") else {
        return if url.contains("://") {
            invalid("'https' is the only allowed URL scheme")
        } else {
            invalid("host must be specified")
        };
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return invalid("user information is not permitted in the URL");
    }
    if authority.is_empty() {
        return invalid("host must be specified");
    }
    if rest.contains('#') {
        return invalid("fragments are not permitted in the URL");
    }
    if rest.contains('?') {
        return invalid("query parameters are not permitted in the URL");
    }
    ErrorList::new()
}

/// kube-apiserver's `ValidateWebhookService`.
fn validate_service(service: &ServiceReference, path: &str) -> ErrorList {
    let mut errs = ErrorList::new();
    if service.name.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.name")).with_detail("service name is required"),
        );
    }
    if service.namespace.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.namespace"))
                .with_detail("service namespace is required"),
        );
    }
    if let Some(port) = service.port
        && !(1..=65535).contains(&port)
    {
        errs.push(FieldError::invalid(
            format!("{path}.port"),
            i64::from(port),
            "port is not valid: must be between 1 and 65535, inclusive",
        ));
    }
    let Some(service_path) = service.path.as_deref() else {
        return errs;
    };
    let at = format!("{path}.path");
    if service_path == "/" {
        return errs;
    }
    if !service_path.starts_with('/') {
        errs.push(FieldError::invalid(
            &at,
            service_path,
            "must start with a '/'",
        ));
    }
    if service_path.contains("//") {
        errs.push(FieldError::invalid(
            &at,
            service_path,
            "segment[0] may not be empty",
        ));
    }
    errs
}

/// The labels of an object (its `metadata.labels`), for selectors.
pub fn labels_of(object: &serde_json::Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs<'a>(op: &'a str, resource: &'a str, sub: &'a str) -> Attributes<'a> {
        Attributes {
            operation: op,
            group: "",
            version: "v1",
            resource,
            subresource: sub,
            namespaced: true,
        }
    }

    fn rule(resources: &[&str]) -> RuleWithOperations {
        RuleWithOperations {
            operations: vec!["CREATE".into(), "UPDATE".into()],
            api_groups: vec![String::new()],
            api_versions: vec!["v1".into()],
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            scope: None,
        }
    }

    #[test]
    fn rules_match_resources_and_subresources_as_kubernetes() {
        let pods = rule(&["pods"]);
        assert!(pods.matches(&attrs("CREATE", "pods", "")));
        assert!(!pods.matches(&attrs("CREATE", "pods", "status")));
        assert!(!pods.matches(&attrs("DELETE", "pods", "")));
        assert!(!pods.matches(&attrs("CREATE", "services", "")));
        let star = rule(&["*"]);
        assert!(star.matches(&attrs("CREATE", "services", "")));
        assert!(!star.matches(&attrs("UPDATE", "pods", "status")));
        assert!(rule(&["*/*"]).matches(&attrs("UPDATE", "pods", "status")));
        assert!(rule(&["pods/*"]).matches(&attrs("UPDATE", "pods", "status")));
        assert!(!rule(&["pods/*"]).matches(&attrs("UPDATE", "pods", "")));
        assert!(rule(&["*/status"]).matches(&attrs("UPDATE", "services", "status")));
        assert!(rule(&["pods/status"]).matches(&attrs("UPDATE", "pods", "status")));
        let mut apps = rule(&["deployments"]);
        assert!(!apps.matches(&Attributes {
            group: "apps",
            ..attrs("CREATE", "deployments", "")
        }));
        apps.api_groups = vec!["apps".into()];
        assert!(apps.matches(&Attributes {
            group: "apps",
            ..attrs("CREATE", "deployments", "")
        }));
        let mut cluster = rule(&["*"]);
        cluster.scope = Some("Cluster".into());
        assert!(!cluster.matches(&attrs("CREATE", "pods", "")));
        assert!(cluster.matches(&Attributes {
            namespaced: false,
            ..attrs("CREATE", "namespaces", "")
        }));
    }

    fn configuration(webhook: serde_json::Value) -> MutatingWebhookConfiguration {
        let mut object = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "labels"},
            "webhooks": [webhook],
        });
        default_configuration(&mut object, true);
        serde_json::from_value(object).unwrap()
    }

    fn messages(errs: &ErrorList) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_well_formed_configuration_is_defaulted_and_valid() {
        let config = configuration(json!({
            "name": "labels.example.com",
            "clientConfig": {"service": {"namespace": "default", "name": "hook"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["configmaps"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }));
        assert_eq!(messages(&validate_mutating(&config)), Vec::<String>::new());
        let hook = &config.webhooks[0];
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hook.timeout_seconds, Some(10));
        assert_eq!(hook.reinvocation_policy.as_deref(), Some("Never"));
        assert_eq!(hook.client_config.service.as_ref().unwrap().port, Some(443));
        assert_eq!(hook.rules[0].scope.as_deref(), Some("*"));
    }

    #[test]
    fn bad_webhooks_are_refused_with_kubernetes_messages() {
        let config = configuration(json!({
            "name": "labels",
            "clientConfig": {"url": "http://hook.example.com/x?y=1"},
            "rules": [{"operations": ["PATCH"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["*", "pods"]}],
            "sideEffects": "Some",
            "timeoutSeconds": 31,
            "admissionReviewVersions": ["v2"],
        }));
        let got = messages(&validate_mutating(&config)).join("\n");
        for want in [
            "webhooks[0].name: Invalid value: \"labels\": should be a domain with at least three segments separated by dots",
            "webhooks[0].rules[0].operations[0]: Unsupported value: \"PATCH\"",
            "webhooks[0].rules[0].resources: Invalid value: \"*, pods\": if '*' is present, must not specify other resources without subresources",
            "webhooks[0].sideEffects: Unsupported value: \"Some\": supported values: \"None\", \"NoneOnDryRun\"",
            "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
            "webhooks[0].clientConfig.url: Invalid value: \"http://hook.example.com/x?y=1\": 'https' is the only allowed URL scheme",
            "webhooks[0].admissionReviewVersions: Invalid value: \"v2\": must include at least one of v1, v1beta1",
        ] {
            assert!(got.contains(want), "missing {want:?} in\n{got}");
        }
        let no_side_effects = configuration(json!({
            "name": "a.b.c", "clientConfig": {"service": {"namespace": "", "name": "x"}},
            "admissionReviewVersions": ["v1"],
        }));
        let got = messages(&validate_mutating(&no_side_effects)).join("\n");
        assert!(
            got.contains(
                "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun"
            ),
            "{got}"
        );
        assert!(
            got.contains("clientConfig.service.namespace: Required value"),
            "{got}"
        );
    }
}
