//! The HorizontalPodAutoscaler controller (kube-controller-manager's `podautoscaler`): every
//! sync period each HPA reads its target's scale, measures its pods through the API server's
//! own resource metrics (`metrics.k8s.io`, [`crate::apiserver::resource_metrics`]), computes the
//! replicas each metric asks for ([`replicas`]), takes the largest, stabilizes and rate-limits
//! it ([`behavior`]), rescales the target through its `scale` subresource, and reports status,
//! conditions (`AbleToScale`, `ScalingActive`, `ScalingLimited`) and events as Kubernetes does.
//! Resource and ContainerResource metrics are served; Pods, Object and External metrics need a
//! custom or external metrics API, which Apiary does not serve: they fail as they would in a
//! cluster without one.

pub mod behavior;
pub mod replicas;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use apiary_api::{
    autoscaling_v2::{HorizontalPodAutoscaler, MetricSpec},
    meta::ObjectRef,
    quantity::Quantity,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;

use self::{
    behavior::{History, Rules},
    replicas::{PodSample, Proposal, Readiness, Target},
};
use super::{
    Pin, get_fresh, parse_time, put_status, record_event, record_warning, resource,
    runtime::{self, Action, Cache, Reconciler, Result},
};
use crate::apiserver::{Api, objects, path::Target as PathTarget, resources::ResourceType};

const COMPONENT: &str = "horizontal-pod-autoscaler";
const KIND: (&str, &str) = ("autoscaling/v2", "HorizontalPodAutoscaler");

/// The controller's flags (kube-controller-manager's names).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`.
    pub downscale_stabilization: Duration,
    pub readiness: Readiness,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
            readiness: Readiness::default(),
        }
    }
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, config: Config, shutdown: watch::Receiver<bool>) {
    let hpas = resource(&api, "autoscaling", "v2", "horizontalpodautoscalers");
    let cache = Cache::new(hpas);
    let reconciler = Arc::new(Autoscaler {
        api: Arc::clone(&api),
        resource: hpas,
        config,
        histories: Mutex::default(),
    });
    runtime::run_single(
        api,
        cache,
        |_| true,
        reconciler,
        4,
        config.sync_period,
        shutdown,
    )
    .await;
}

struct Autoscaler {
    api: Arc<Api>,
    resource: &'static ResourceType,
    config: Config,
    /// Recommendations and scale events by HPA (namespace, name).
    histories: Mutex<HashMap<(String, String), History>>,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler").finish_non_exhaustive()
    }
}

/// A condition of the HPA's status.
struct Condition {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

/// What one metric measured.
struct Measured {
    /// Its name in events and conditions: `cpu resource utilization (percentage of request)`.
    name: String,
    proposal: Proposal,
    status: Value,
}

#[async_trait::async_trait]
impl Reconciler for Autoscaler {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let id = (key.namespace.clone(), key.name.clone());
        let Some(object) = get_fresh(&self.api, self.resource, key).await? else {
            self.lock().remove(&id);
            return Ok(Action::Done);
        };
        if object["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let Ok(hpa) = apiary_api::meta::from_json::<HorizontalPodAutoscaler>(object.clone()) else {
            return Ok(Action::Done);
        };
        self.sync(&object, &hpa, &id).await?;
        Ok(Action::RequeueAfter(self.config.sync_period))
    }
}

impl Autoscaler {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), History>> {
        self.histories.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sync(
        &self,
        object: &Value,
        hpa: &HorizontalPodAutoscaler,
        id: &(String, String),
    ) -> Result<()> {
        let now = Utc::now();
        let namespace = &id.0;
        let reference = &hpa.spec.scale_target_ref;
        let mut status = hpa.status.clone().unwrap_or_default();
        status.observed_generation = Some(hpa.metadata.generation);
        let mut conditions = Vec::new();
        let scale = match self.target(namespace, reference).await {
            Ok((target, scale)) => Some((target, scale)),
            Err(message) => {
                let message = format!(
                    "the HPA controller was unable to get the target's current scale: {message}"
                );
                record_warning(
                    &self.api,
                    COMPONENT,
                    object,
                    KIND,
                    "FailedGetScale",
                    &message,
                )
                .await;
                conditions.push(Condition {
                    type_: "AbleToScale",
                    status: false,
                    reason: "FailedGetScale",
                    message,
                });
                None
            }
        };
        let Some((target, scale)) = scale else {
            return self.write_status(object, status, conditions, now).await;
        };
        let current = scale["spec"]["replicas"].as_i64().unwrap_or(0);
        status.current_replicas = scale["status"]["replicas"]
            .as_i64()
            .and_then(|r| i32::try_from(r).ok())
            .unwrap_or(0);
        let min = i64::from(hpa.spec.min_replicas.unwrap_or(1));
        let max = i64::from(hpa.spec.max_replicas);
        let (desired, reason) = if current == 0 && min != 0 {
            conditions.push(Condition {
                type_: "ScalingActive",
                status: false,
                reason: "ScalingDisabled",
                message: "scaling is disabled since the replica count of the target is zero".into(),
            });
            (0, String::new())
        } else if current > max {
            (
                max,
                "Current number of replicas above Spec.MaxReplicas".to_owned(),
            )
        } else if current < min {
            (
                min,
                "Current number of replicas below Spec.MinReplicas".to_owned(),
            )
        } else {
            let selector = scale["status"]["selector"].as_str().unwrap_or_default();
            let measured = match self.measure(hpa, namespace, selector, current, now).await {
                Ok(measured) => measured,
                Err((reason, message)) => {
                    record_warning(&self.api, COMPONENT, object, KIND, reason, &message).await;
                    conditions.push(Condition {
                        type_: "AbleToScale",
                        status: true,
                        reason: "SucceededGetScale",
                        message: "the HPA controller was able to get the target's current scale"
                            .into(),
                    });
                    conditions.push(Condition {
                        type_: "ScalingActive",
                        status: false,
                        reason,
                        message: format!(
                            "the HPA was unable to compute the replica count: {message}"
                        ),
                    });
                    return self.write_status(object, status, conditions, now).await;
                }
            };
            status.current_metrics = measured.iter().map(|m| m.status.clone()).collect();
            let best = measured
                .iter()
                .max_by_key(|m| m.proposal.replicas)
                .expect("measure returns at least one metric");
            conditions.push(Condition {
                type_: "ScalingActive",
                status: true,
                reason: "ValidMetricFound",
                message: format!(
                    "the HPA was able to successfully calculate a replica count from {}",
                    best.name
                ),
            });
            let rules = Rules::of(
                hpa.spec.behavior.as_ref(),
                chrono::Duration::from_std(self.config.downscale_stabilization)
                    .unwrap_or(chrono::Duration::minutes(5)),
            );
            let normalized = {
                let mut histories = self.lock();
                let history = histories.entry(id.clone()).or_default();
                behavior::normalize(
                    history,
                    &rules,
                    current,
                    best.proposal.replicas,
                    (min, max),
                    now,
                )
            };
            conditions.push(Condition {
                type_: "AbleToScale",
                status: true,
                reason: normalized.stabilized.0,
                message: normalized.stabilized.1.into(),
            });
            conditions.push(match normalized.limited {
                Some((reason, message)) => Condition {
                    type_: "ScalingLimited",
                    status: true,
                    reason,
                    message: message.into(),
                },
                None => Condition {
                    type_: "ScalingLimited",
                    status: false,
                    reason: "DesiredWithinRange",
                    message: "the desired count is within the acceptable range".into(),
                },
            });
            let reason = if normalized.replicas > current {
                format!("{} above target", best.name)
            } else {
                "All metrics below target".to_owned()
            };
            if normalized.replicas != current {
                let mut histories = self.lock();
                let history = histories.entry(id.clone()).or_default();
                behavior::record_scale(history, &rules, current, normalized.replicas, now);
            }
            (normalized.replicas, reason)
        };
        let reference_name = reference.name.as_str();
        if desired != current {
            match objects::set_replicas(&self.api, &target, reference_name, desired).await {
                Ok(_) => {
                    record_event(
                        &self.api,
                        COMPONENT,
                        object,
                        KIND,
                        "SuccessfulRescale",
                        &format!("New size: {desired}; reason: {reason}"),
                    )
                    .await;
                    status.last_scale_time = Some(super::now());
                    if !conditions.iter().any(|c| c.type_ == "AbleToScale") {
                        conditions.push(Condition {
                            type_: "AbleToScale",
                            status: true,
                            reason: "SucceededRescale",
                            message: format!("the HPA controller was able to update the target scale to {desired}"),
                        });
                    }
                }
                Err(e) => {
                    let message = format!("failed to rescale {}: {}", reference_name, e.message);
                    record_warning(
                        &self.api,
                        COMPONENT,
                        object,
                        KIND,
                        "FailedRescale",
                        &message,
                    )
                    .await;
                    conditions.retain(|c| c.type_ != "AbleToScale");
                    conditions.push(Condition {
                        type_: "AbleToScale",
                        status: false,
                        reason: "FailedUpdateScale",
                        message: format!(
                            "the HPA controller was unable to update the target scale: {}",
                            e.message
                        ),
                    });
                }
            }
        }
        status.desired_replicas = i32::try_from(desired).unwrap_or(i32::MAX);
        self.write_status(object, status, conditions, now).await
    }

    /// The resource type and Scale of the HPA's target.
    async fn target(
        &self,
        namespace: &str,
        reference: &apiary_api::autoscaling_v2::CrossVersionObjectReference,
    ) -> std::result::Result<(PathTarget, Value), String> {
        let (group, version) = reference
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", reference.api_version.as_str()));
        let resource = self
            .api
            .resources
            .all()
            .into_iter()
            .find(|r| {
                r.group == group
                    && (version.is_empty() || r.version == version)
                    && r.kind == reference.kind
                    && r.subresource("scale").is_some()
            })
            .ok_or_else(|| {
                format!(
                    "no matches for kind \"{}\" in group \"{group}\"",
                    reference.kind
                )
            })?;
        let target = PathTarget {
            resource,
            namespace: Some(namespace.to_owned()),
            name: Some(reference.name.clone()),
            subresource: None,
        };
        let scale = objects::get_scale(&self.api, &target, &reference.name)
            .await
            .map_err(|e| e.message)?;
        Ok((target, scale))
    }

    /// Every metric's proposal; `Err` (reason, message) when none could be computed.
    async fn measure(
        &self,
        hpa: &HorizontalPodAutoscaler,
        namespace: &str,
        selector: &str,
        current: i64,
        now: DateTime<Utc>,
    ) -> std::result::Result<Vec<Measured>, (&'static str, String)> {
        let pods = self
            .pods(namespace, selector)
            .await
            .map_err(|e| ("FailedGetResourceMetric", e))?;
        let mut measured = Vec::new();
        let mut first_error = None;
        let mut invalid = 0;
        for metric in &hpa.spec.metrics {
            match self.measure_one(metric, &pods, current, now) {
                Ok(m) => measured.push(m),
                Err(e) => {
                    invalid += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        match (measured.is_empty(), first_error) {
            (false, _) => Ok(measured),
            (true, Some((reason, message))) if invalid == 1 => Err((reason, message)),
            (true, Some((_, message))) => Err((
                "FailedComputeMetricsReplicas",
                format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {message}",
                    hpa.spec.metrics.len()
                ),
            )),
            (true, None) => Err((
                "FailedComputeMetricsReplicas",
                "no metrics to compute the replica count from".into(),
            )),
        }
    }

    fn measure_one(
        &self,
        metric: &MetricSpec,
        pods: &[Value],
        current: i64,
        now: DateTime<Utc>,
    ) -> std::result::Result<Measured, (&'static str, String)> {
        let (source, container, reason) = match metric.type_.as_str() {
            "Resource" => (metric.resource.as_ref(), None, "FailedGetResourceMetric"),
            "ContainerResource" => (
                metric.container_resource.as_ref(),
                metric
                    .container_resource
                    .as_ref()
                    .map(|c| c.container.as_str()),
                "FailedGetContainerResourceMetric",
            ),
            other => {
                let reason = match other {
                    "Pods" => "FailedGetPodsMetric",
                    "Object" => "FailedGetObjectMetric",
                    _ => "FailedGetExternalMetric",
                };
                let api = if other == "External" {
                    "external.metrics.k8s.io"
                } else {
                    "custom.metrics.k8s.io"
                };
                return Err((
                    reason,
                    format!(
                        "unable to get {} metric: no {api} API is registered",
                        other.to_lowercase()
                    ),
                ));
            }
        };
        let source = source.ok_or((reason, "the metric has no source".to_owned()))?;
        let resource = source.name.as_str();
        let target = match (source.target.type_.as_str(), &source.target) {
            ("Utilization", t) => {
                Target::Utilization(i64::from(t.average_utilization.unwrap_or(0)))
            }
            (_, t) => Target::AverageValue(
                t.average_value
                    .as_ref()
                    .and_then(|q| amount(resource, q))
                    .unwrap_or(0),
            ),
        };
        let samples: Vec<PodSample> = pods
            .iter()
            .map(|pod| self.sample(pod, resource, container))
            .collect();
        let proposal = replicas::replicas(current, &samples, target, resource, self.config.readiness, now)
            .map_err(|e| {
                (
                    reason,
                    match e {
                        replicas::Error::MissingRequest { .. } => {
                            format!("failed to get {resource} utilization: {e}")
                        }
                        _ => format!("failed to get {resource} utilization: unable to get metrics for resource {resource}: {e}"),
                    },
                )
            })?;
        let field = if container.is_some() {
            "containerResource"
        } else {
            "resource"
        };
        let mut current_value = json!({ "averageValue": quantity(resource, proposal.average) });
        let name = match target {
            Target::Utilization(_) => {
                current_value["averageUtilization"] = json!(proposal.utilization);
                format!(
                    "{resource} {}utilization (percentage of request)",
                    if container.is_some() {
                        "container resource "
                    } else {
                        "resource "
                    }
                )
            }
            Target::AverageValue(_) => format!(
                "{resource} {}",
                if container.is_some() {
                    "container resource"
                } else {
                    "resource"
                }
            ),
        };
        let mut status_source = json!({ "name": resource, "current": current_value });
        if let Some(container) = container {
            status_source["container"] = json!(container);
        }
        Ok(Measured {
            name,
            status: json!({ "type": metric.type_, field: status_source }),
            proposal,
        })
    }

    /// The pods of the scale's selector.
    async fn pods(
        &self,
        namespace: &str,
        selector: &str,
    ) -> std::result::Result<Vec<Value>, String> {
        let pods = resource(&self.api, "", "v1", "pods");
        let target = PathTarget {
            resource: pods,
            namespace: Some(namespace.to_owned()),
            name: None,
            subresource: None,
        };
        let query = HashMap::from([("labelSelector".to_owned(), selector.to_owned())]);
        let mut list = objects::list(&self.api, &target, &query)
            .await
            .map_err(|e| e.message)?;
        Ok(list["items"]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default())
    }

    /// What the calculator needs of one pod, for `resource` (of `container` alone, if given).
    fn sample(&self, pod: &Value, resource: &str, container: Option<&str>) -> PodSample {
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let usages = self.api.resource_metrics.pod(node, namespace, &name);
        let chosen = |c: &&String| container.is_none_or(|want| c.as_str() == want);
        let usage = usages.as_ref().and_then(|u| {
            let picked: Vec<_> = u.iter().filter(|(c, _)| chosen(c)).collect();
            (!picked.is_empty()).then(|| {
                picked
                    .iter()
                    .map(|(_, u)| match resource {
                        "cpu" => u.nanocores / 1_000_000,
                        _ => u.memory_bytes,
                    })
                    .sum()
            })
        });
        let measured = usages
            .as_ref()
            .and_then(|u| u.values().next())
            .map(|u| (u.timestamp, u.window_nanos / 1_000_000_000));
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let request = containers
            .iter()
            .filter(|c| container.is_none_or(|want| c["name"] == want))
            .map(|c| {
                c["resources"]["requests"][resource]
                    .as_str()
                    .and_then(|q| amount(resource, &Quantity(q.to_owned())))
            })
            .sum::<Option<i64>>();
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| {
                (
                    c["status"] == "True",
                    parse_time(&c["lastTransitionTime"]).unwrap_or_default(),
                )
            });
        PodSample {
            name,
            usage,
            measured,
            request,
            ignored: pod["metadata"]["deletionTimestamp"].is_string()
                || pod["status"]["phase"] == "Failed",
            ready,
            start_time: parse_time(&pod["status"]["startTime"]),
        }
    }

    async fn write_status(
        &self,
        object: &Value,
        status: apiary_api::autoscaling_v2::HorizontalPodAutoscalerStatus,
        conditions: Vec<Condition>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let old = object["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut status = serde_json::to_value(&status).unwrap_or_default();
        let mut merged: Vec<Value> = Vec::new();
        for kind in ["AbleToScale", "ScalingActive", "ScalingLimited"] {
            let Some(c) = conditions.iter().rev().find(|c| c.type_ == kind) else {
                // Not judged this time: what was said before stands.
                if let Some(previous) = old.iter().find(|o| o["type"] == kind) {
                    merged.push(previous.clone());
                }
                continue;
            };
            let value = if c.status { "True" } else { "False" };
            let since = old
                .iter()
                .find(|o| o["type"] == kind && o["status"] == value)
                .map_or_else(
                    || now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    |o| {
                        o["lastTransitionTime"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    },
                );
            merged.push(json!({
                "type": kind,
                "status": value,
                "lastTransitionTime": since,
                "reason": c.reason,
                "message": c.message,
            }));
        }
        status["conditions"] = json!(merged);
        if status == object["status"] {
            return Ok(());
        }
        put_status(&self.api, self.resource, object, status, Pin::AsRead).await
    }
}

/// A quantity of `resource` in the calculator's unit: millicores for CPU, bytes otherwise.
fn amount(resource: &str, quantity: &Quantity) -> Option<i64> {
    match resource {
        "cpu" => quantity.milli_value().ok(),
        _ => quantity.value().ok(),
    }
}

fn quantity(resource: &str, amount: i64) -> Quantity {
    match resource {
        "cpu" => Quantity::from_milli(amount),
        _ => Quantity::from_bytes(amount),
    }
}
