//! `autoscaling/v2` HorizontalPodAutoscaler: its types, Kubernetes' defaults
//! (`pkg/apis/autoscaling/v2/defaults.go`), validation (`pkg/apis/autoscaling/validation`), and
//! the conversion to and from `autoscaling/v1`, which is served from the same stored objects
//! (`kubectl autoscale` creates v1 objects; v2 is the storage version). What v1 has no field
//! for travels in annotations, as Kubernetes keeps it (`autoscaling.alpha.kubernetes.io/*`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    meta::Object,
    quantity::Quantity,
    validation::{
        ErrorList, FieldError, NameRule, validate_object_meta, validate_object_meta_update,
    },
};

pub type HorizontalPodAutoscaler =
    Object<HorizontalPodAutoscalerSpec, HorizontalPodAutoscalerStatus>;

/// `DefaultCPUUtilization`: the target of an HPA without metrics.
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HorizontalPodAutoscalerSpec {
    pub scale_target_ref: CrossVersionObjectReference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    pub max_replicas: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<Behavior>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CrossVersionObjectReference {
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricSpec {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceMetricSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_resource: Option<ResourceMetricSource>,
    /// Pods, Object and External metrics need a custom or external metrics API: kept as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Value>,
}

/// A `resource` metric source, or (with `container`) a `containerResource` one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceMetricSource {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container: String,
    pub target: MetricTarget,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricTarget {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_value: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Behavior {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScalingRules {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stabilization_window_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<ScalingPolicy>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScalingPolicy {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: i32,
    pub period_seconds: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HorizontalPodAutoscalerStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    #[serde(skip_serializing_if = "crate::meta::is_zero")]
    pub current_replicas: i32,
    pub desired_replicas: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Value>,
}

// ---------------------------------------------------------------------------------------------
// Defaults

/// kube-controller-manager's defaults for `behavior.scaleUp`: the faster of 4 pods or 100 %
/// per 15 s, at once.
pub fn default_scale_up() -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: Some(0),
        select_policy: Some("Max".into()),
        policies: Some(vec![
            ScalingPolicy {
                type_: "Pods".into(),
                value: 4,
                period_seconds: 15,
            },
            ScalingPolicy {
                type_: "Percent".into(),
                value: 100,
                period_seconds: 15,
            },
        ]),
    }
}

/// The defaults for `behavior.scaleDown`: down to the highest recommendation of the last
/// 5 minutes, by up to 100 % per 15 s.
pub fn default_scale_down() -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: Some(300),
        select_policy: Some("Max".into()),
        policies: Some(vec![ScalingPolicy {
            type_: "Percent".into(),
            value: 100,
            period_seconds: 15,
        }]),
    }
}

/// `rules` with what it leaves unset taken from `defaults` (`GenerateHPAScale*Rules`).
fn filled(rules: Option<&Value>, defaults: ScalingRules) -> Value {
    let mut out = serde_json::to_value(&defaults).expect("rules serialize");
    if let Some(Value::Object(given)) = rules {
        for (field, value) in given {
            if !value.is_null() {
                out[field] = value.clone();
            }
        }
    }
    out
}

/// `SetDefaults_HorizontalPodAutoscaler` on the JSON object: `minReplicas` 1, a CPU target of
/// 80 % without metrics, and a given `behavior`'s unset rules filled in.
pub fn default(object: &mut Value) {
    let spec = &mut object["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["minReplicas"].is_null() {
        spec["minReplicas"] = json!(1);
    }
    if spec["metrics"].as_array().is_none_or(Vec::is_empty) {
        spec["metrics"] = json!([cpu_utilization_metric(DEFAULT_CPU_UTILIZATION)]);
    }
    if spec["behavior"].is_object() {
        let up = filled(spec["behavior"].get("scaleUp"), default_scale_up());
        let down = filled(spec["behavior"].get("scaleDown"), default_scale_down());
        spec["behavior"] = json!({"scaleUp": up, "scaleDown": down});
    }
}

fn cpu_utilization_metric(percent: i64) -> Value {
    json!({
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}},
    })
}

// ---------------------------------------------------------------------------------------------
// Validation

const METRIC_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];
const TARGET_TYPES: &[&str] = &["AverageValue", "Utilization", "Value"];
const POLICY_TYPES: &[&str] = &["Percent", "Pods"];
const SELECT_POLICIES: &[&str] = &["Disabled", "Max", "Min"];
/// `MaxPeriodSeconds` and `MaxStabilizationWindowSeconds` of the validation.
const MAX_PERIOD_SECONDS: i32 = 1800;
const MAX_STABILIZATION_WINDOW_SECONDS: i32 = 3600;

pub fn validate_hpa(hpa: &HorizontalPodAutoscaler) -> ErrorList {
    let mut errs = validate_object_meta(&hpa.metadata, true, NameRule::Subdomain);
    validate_spec(&hpa.spec, &mut errs);
    errs
}

pub fn validate_update_hpa(
    old: &HorizontalPodAutoscaler,
    new: &HorizontalPodAutoscaler,
) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_object_meta(
        &new.metadata,
        true,
        NameRule::Subdomain,
    ));
    validate_spec(&new.spec, &mut errs);
    errs
}

fn validate_spec(spec: &HorizontalPodAutoscalerSpec, errs: &mut ErrorList) {
    let min = spec.min_replicas.unwrap_or(1);
    if min < 1 {
        errs.push(FieldError::invalid(
            "spec.minReplicas",
            i64::from(min),
            "must be greater than or equal to 1",
        ));
    }
    if spec.max_replicas < 1 {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            i64::from(spec.max_replicas),
            "must be greater than 0",
        ));
    }
    if spec.max_replicas < min {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            i64::from(spec.max_replicas),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    let reference = &spec.scale_target_ref;
    if reference.kind.is_empty() {
        errs.push(FieldError::required("spec.scaleTargetRef.kind"));
    }
    if reference.name.is_empty() {
        errs.push(FieldError::required("spec.scaleTargetRef.name"));
    } else {
        for message in crate::validation::is_valid_path_segment_name(&reference.name) {
            errs.push(FieldError::invalid(
                "spec.scaleTargetRef.name",
                reference.name.as_str(),
                message,
            ));
        }
    }
    for (i, metric) in spec.metrics.iter().enumerate() {
        validate_metric(metric, &format!("spec.metrics[{i}]"), errs);
    }
    if let Some(behavior) = &spec.behavior {
        for (rules, field) in [
            (&behavior.scale_up, "scaleUp"),
            (&behavior.scale_down, "scaleDown"),
        ] {
            if let Some(rules) = rules {
                validate_rules(rules, &format!("spec.behavior.{field}"), errs);
            }
        }
    }
}

fn validate_metric(metric: &MetricSpec, path: &str, errs: &mut ErrorList) {
    if !METRIC_TYPES.contains(&metric.type_.as_str()) {
        errs.push(FieldError::not_supported(
            format!("{path}.type"),
            metric.type_.as_str(),
            METRIC_TYPES,
        ));
        return;
    }
    let (source, field) = match metric.type_.as_str() {
        "Resource" => (metric.resource.as_ref(), "resource"),
        "ContainerResource" => (metric.container_resource.as_ref(), "containerResource"),
        other => {
            let given = match other {
                "Pods" => &metric.pods,
                "Object" => &metric.object,
                _ => &metric.external,
            };
            if given.is_none() {
                errs.push(
                    FieldError::required(format!("{path}.{}", lower_first(other)))
                        .with_detail("must populate information for the given metric source"),
                );
            }
            return;
        }
    };
    let Some(source) = source else {
        errs.push(
            FieldError::required(format!("{path}.{field}"))
                .with_detail("must populate information for the given metric source"),
        );
        return;
    };
    let path = format!("{path}.{field}");
    if source.name.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.name"))
                .with_detail("must specify a resource name"),
        );
    }
    if field == "containerResource" && source.container.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.container"))
                .with_detail("must specify a container"),
        );
    }
    let target = &source.target;
    let target_path = format!("{path}.target");
    if !TARGET_TYPES.contains(&target.type_.as_str()) {
        errs.push(FieldError::not_supported(
            format!("{target_path}.type"),
            target.type_.as_str(),
            TARGET_TYPES,
        ));
        return;
    }
    match target.type_.as_str() {
        "Utilization" => match target.average_utilization {
            None => errs.push(
                FieldError::required(format!("{target_path}.averageUtilization"))
                    .with_detail("must set either a target raw value or a target utilization"),
            ),
            Some(u) if u <= 0 => errs.push(FieldError::invalid(
                format!("{target_path}.averageUtilization"),
                i64::from(u),
                "must be greater than 0",
            )),
            Some(_) => {}
        },
        "AverageValue" => match &target.average_value {
            None => errs.push(
                FieldError::required(format!("{target_path}.averageValue"))
                    .with_detail("must set either a target raw value or a target utilization"),
            ),
            Some(q) if q.milli_value().is_ok_and(|m| m <= 0) => errs.push(FieldError::invalid(
                format!("{target_path}.averageValue"),
                q.as_str(),
                "must be positive",
            )),
            Some(_) => {}
        },
        _ => errs.push(FieldError::invalid(
            format!("{target_path}.type"),
            target.type_.as_str(),
            "must be either Utilization or AverageValue",
        )),
    }
}

fn validate_rules(rules: &ScalingRules, path: &str, errs: &mut ErrorList) {
    if let Some(window) = rules.stabilization_window_seconds
        && !(0..=MAX_STABILIZATION_WINDOW_SECONDS).contains(&window)
    {
        errs.push(FieldError::invalid(
            format!("{path}.stabilizationWindowSeconds"),
            i64::from(window),
            format!("must be less than or equal to {MAX_STABILIZATION_WINDOW_SECONDS} and greater than or equal to 0"),
        ));
    }
    if let Some(select) = &rules.select_policy
        && !SELECT_POLICIES.contains(&select.as_str())
    {
        errs.push(FieldError::not_supported(
            format!("{path}.selectPolicy"),
            select.as_str(),
            SELECT_POLICIES,
        ));
    }
    let policies = rules.policies.as_deref().unwrap_or_default();
    if rules.policies.is_some() && policies.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.policies"))
                .with_detail("must specify at least one Policy"),
        );
    }
    for (i, policy) in policies.iter().enumerate() {
        let path = format!("{path}.policies[{i}]");
        if !POLICY_TYPES.contains(&policy.type_.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}.type"),
                policy.type_.as_str(),
                POLICY_TYPES,
            ));
        }
        if policy.value <= 0 {
            errs.push(FieldError::invalid(
                format!("{path}.value"),
                i64::from(policy.value),
                "must be greater than zero",
            ));
        }
        if !(1..=MAX_PERIOD_SECONDS).contains(&policy.period_seconds) {
            errs.push(FieldError::invalid(
                format!("{path}.periodSeconds"),
                i64::from(policy.period_seconds),
                format!("must be greater than zero and less than or equal to {MAX_PERIOD_SECONDS}"),
            ));
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// autoscaling/v1

const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// Whether `metric` is a Resource CPU utilization target: the one metric v1 has a field for.
fn cpu_utilization(metric: &Value) -> Option<i64> {
    (metric["type"] == "Resource"
        && metric["resource"]["name"] == "cpu"
        && metric["resource"]["target"]["type"] == "Utilization")
        .then(|| metric["resource"]["target"]["averageUtilization"].as_i64())
        .flatten()
}

/// The stored (v2) HPA as `autoscaling/v1` shows it.
pub fn to_v1(object: &mut Value) {
    let mut annotations = object["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut spec = json!({
        "scaleTargetRef": object["spec"]["scaleTargetRef"],
        "maxReplicas": object["spec"]["maxReplicas"],
    });
    if !object["spec"]["minReplicas"].is_null() {
        spec["minReplicas"] = object["spec"]["minReplicas"].clone();
    }
    let metrics = object["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cpu = metrics.iter().position(|m| cpu_utilization(m).is_some());
    if let Some(i) = cpu {
        spec["targetCPUUtilizationPercentage"] = json!(cpu_utilization(&metrics[i]));
    }
    let others: Vec<&Value> = metrics
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != cpu)
        .map(|(_, m)| m)
        .collect();
    if !others.is_empty() {
        annotations.insert(METRICS_ANNOTATION.into(), json!(json!(others).to_string()));
    }
    if object["spec"]["behavior"].is_object() {
        annotations.insert(
            BEHAVIOR_ANNOTATION.into(),
            json!(object["spec"]["behavior"].to_string()),
        );
    }
    let status = &object["status"];
    let mut v1_status = json!({
        "currentReplicas": status["currentReplicas"].as_i64().unwrap_or(0),
        "desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0),
    });
    for field in ["observedGeneration", "lastScaleTime"] {
        if !status[field].is_null() {
            v1_status[field] = status[field].clone();
        }
    }
    let current = status["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current_cpu = current.iter().position(|m| {
        m["type"] == "Resource"
            && m["resource"]["name"] == "cpu"
            && !m["resource"]["current"]["averageUtilization"].is_null()
    });
    if let Some(i) = current_cpu {
        v1_status["currentCPUUtilizationPercentage"] =
            current[i]["resource"]["current"]["averageUtilization"].clone();
    }
    let other_current: Vec<&Value> = current
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != current_cpu)
        .map(|(_, m)| m)
        .collect();
    if !other_current.is_empty() {
        annotations.insert(
            CURRENT_METRICS_ANNOTATION.into(),
            json!(json!(other_current).to_string()),
        );
    }
    if status["conditions"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
    {
        annotations.insert(
            CONDITIONS_ANNOTATION.into(),
            json!(status["conditions"].to_string()),
        );
    }
    if !annotations.is_empty() {
        object["metadata"]["annotations"] = Value::Object(annotations);
    }
    object["spec"] = spec;
    object["status"] = v1_status;
}

/// An `autoscaling/v1` HPA as it is stored (v2): the CPU target becomes a metric, and what
/// [`to_v1`] put in annotations goes back where it came from.
pub fn from_v1(object: &mut Value) {
    let mut annotations = object["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut take = |name: &str| -> Option<Value> {
        let raw = annotations.remove(name)?;
        serde_json::from_str(raw.as_str()?).ok()
    };
    let extra_metrics = take(METRICS_ANNOTATION);
    let behavior = take(BEHAVIOR_ANNOTATION);
    let conditions = take(CONDITIONS_ANNOTATION);
    let current_metrics = take(CURRENT_METRICS_ANNOTATION);
    let v1 = object["spec"].clone();
    let mut spec = json!({
        "scaleTargetRef": v1["scaleTargetRef"],
        "maxReplicas": v1["maxReplicas"],
    });
    if !v1["minReplicas"].is_null() {
        spec["minReplicas"] = v1["minReplicas"].clone();
    }
    let mut metrics = Vec::new();
    if let Some(percent) = v1["targetCPUUtilizationPercentage"].as_i64() {
        metrics.push(cpu_utilization_metric(percent));
    }
    if let Some(Value::Array(extra)) = extra_metrics {
        metrics.extend(extra);
    }
    if !metrics.is_empty() {
        spec["metrics"] = json!(metrics);
    }
    if let Some(behavior) = behavior {
        spec["behavior"] = behavior;
    }
    let v1_status = object["status"].clone();
    let mut status = json!({
        "desiredReplicas": v1_status["desiredReplicas"].as_i64().unwrap_or(0),
    });
    if let Some(current) = v1_status["currentReplicas"].as_i64().filter(|c| *c != 0) {
        status["currentReplicas"] = json!(current);
    }
    for field in ["observedGeneration", "lastScaleTime"] {
        if !v1_status[field].is_null() {
            status[field] = v1_status[field].clone();
        }
    }
    let mut current = Vec::new();
    if let Some(percent) = v1_status["currentCPUUtilizationPercentage"].as_i64() {
        current.push(json!({
            "type": "Resource",
            "resource": {"name": "cpu", "current": {"averageUtilization": percent}},
        }));
    }
    if let Some(Value::Array(extra)) = current_metrics {
        current.extend(extra);
    }
    if !current.is_empty() {
        status["currentMetrics"] = json!(current);
    }
    if let Some(conditions) = conditions {
        status["conditions"] = conditions;
    }
    object["metadata"]["annotations"] = if annotations.is_empty() {
        Value::Null
    } else {
        Value::Object(annotations)
    };
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.retain(|_, v| !v.is_null());
    }
    object["spec"] = spec;
    object["status"] = status;
    object["apiVersion"] = json!("autoscaling/v2");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    cpu_utilization_metric(50),
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70, "averageValue": "70m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}],
            },
        })
    }

    #[test]
    fn v1_shows_the_cpu_target_and_keeps_the_rest_in_annotations() {
        let mut object = v2();
        to_v1(&mut object);
        assert_eq!(object["spec"]["targetCPUUtilizationPercentage"], 50);
        assert!(object["spec"]["metrics"].is_null());
        assert_eq!(object["status"]["currentCPUUtilizationPercentage"], 70);
        assert_eq!(object["status"]["currentReplicas"], 2);
        let annotations = &object["metadata"]["annotations"];
        assert!(
            annotations[METRICS_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("memory")
        );
        assert!(annotations[BEHAVIOR_ANNOTATION].is_string());
        assert!(annotations[CONDITIONS_ANNOTATION].is_string());
        // And back: nothing lost but the order of the metrics (CPU first, as Kubernetes).
        from_v1(&mut object);
        let original = v2();
        assert_eq!(object["spec"]["behavior"], original["spec"]["behavior"]);
        assert_eq!(object["spec"]["metrics"][0], cpu_utilization_metric(50));
        assert_eq!(object["spec"]["metrics"][1], original["spec"]["metrics"][0]);
        assert_eq!(
            object["status"]["conditions"],
            original["status"]["conditions"]
        );
        assert!(object["metadata"]["annotations"].is_null());
    }

    #[test]
    fn defaults_fill_what_kubernetes_fills() {
        let mut object = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3, "behavior": {"scaleUp": {"stabilizationWindowSeconds": 5}}}});
        default(&mut object);
        assert_eq!(object["spec"]["minReplicas"], 1);
        assert_eq!(
            object["spec"]["metrics"],
            json!([cpu_utilization_metric(80)])
        );
        let up = &object["spec"]["behavior"]["scaleUp"];
        assert_eq!(up["stabilizationWindowSeconds"], 5);
        assert_eq!(up["selectPolicy"], "Max");
        assert_eq!(up["policies"].as_array().unwrap().len(), 2);
        assert_eq!(
            object["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            300
        );
        // Without a behavior none is made up.
        let mut plain = json!({"spec": {"maxReplicas": 3}});
        default(&mut plain);
        assert!(plain["spec"]["behavior"].is_null());
    }

    #[test]
    fn validation_refuses_what_kubernetes_refuses() {
        let hpa = |spec: Value| -> HorizontalPodAutoscaler {
            crate::meta::from_json(
                json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
            )
            .unwrap()
        };
        let messages = |spec: Value| -> Vec<String> {
            validate_hpa(&hpa(spec))
                .iter()
                .map(|e| format!("{}: {}", e.path, e.body()))
                .collect()
        };
        assert!(messages(v2()["spec"].clone()).is_empty());
        assert_eq!(
            messages(
                json!({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 3, "maxReplicas": 2})
            ),
            ["spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"]
        );
        assert_eq!(
            messages(
                json!({"scaleTargetRef": {"name": "web"}, "minReplicas": 0, "maxReplicas": 2})
            ),
            [
                "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
                "spec.scaleTargetRef.kind: Required value",
            ]
        );
        assert_eq!(
            messages(
                json!({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 2,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}}]})
            ),
            [
                "spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0"
            ]
        );
        assert_eq!(
            messages(
                json!({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 2,
                "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 4000}]}}})
            ),
            [
                "spec.behavior.scaleUp.policies[0].value: Invalid value: 0: must be greater than zero",
                "spec.behavior.scaleUp.policies[0].periodSeconds: Invalid value: 4000: must be greater than zero and less than or equal to 1800",
            ]
        );
    }
}
