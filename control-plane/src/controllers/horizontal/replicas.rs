//! The replica calculator (kube-controller-manager's `replica_calculator.go`): how many pods a
//! resource metric asks for, from each pod's usage and requests. Pods being deleted or failed
//! are ignored; for CPU, pods not yet ready (or whose usage was measured before they became
//! ready, within the initialization period) are left out; pods without a measurement count as
//! at the target when that would hold a scale-down back, as idle when it would hold a scale-up
//! back, and unready pods as idle in a scale-up: the calculator never overreacts to what it
//! cannot see.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// How far from the target the ratio may be without a change (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

/// One pod as the calculator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSample {
    pub name: String,
    /// What the metric measures (millicores or bytes); `None`: no measurement.
    pub usage: Option<i64>,
    /// When the measurement was taken, and over what window (seconds).
    pub measured: Option<(DateTime<Utc>, i64)>,
    /// The sum of the containers' requests of the resource; `None`: one has none.
    pub request: Option<i64>,
    /// Deleted or failed: not counted at all.
    pub ignored: bool,
    /// Whether the pod is Ready, and since when.
    pub ready: Option<(bool, DateTime<Utc>)>,
    pub start_time: Option<DateTime<Utc>>,
}

/// The CPU-specific readiness rules (`groupPods`).
#[derive(Clone, Copy, Debug)]
pub struct Readiness {
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`.
    pub cpu_initialization_period: chrono::Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`.
    pub initial_readiness_delay: chrono::Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            cpu_initialization_period: chrono::Duration::minutes(5),
            initial_readiness_delay: chrono::Duration::seconds(30),
        }
    }
}

/// The target of one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i64),
    /// Per pod, in the metric's unit.
    AverageValue(i64),
}

/// What a metric says.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub replicas: i64,
    /// The measured utilization in percent (utilization targets only).
    pub utilization: Option<i64>,
    /// The measured average per pod, in the metric's unit.
    pub average: i64,
}

/// Why no proposal could be made, in Kubernetes' words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoMetrics,
    #[error("missing request for {resource} in container of Pod {pod}")]
    MissingRequest { resource: String, pod: String },
}

/// `GetResourceReplicas` / `GetRawResourceReplicas`.
pub fn replicas(
    current: i64,
    pods: &[PodSample],
    target: Target,
    resource: &str,
    readiness: Readiness,
    now: DateTime<Utc>,
) -> Result<Proposal, Error> {
    if pods.is_empty() {
        return Err(Error::NoPods);
    }
    let mut metrics: BTreeMap<&str, i64> = BTreeMap::new();
    let mut unready = Vec::new();
    let mut missing = Vec::new();
    let mut ready_count = 0i64;
    for pod in pods.iter().filter(|p| !p.ignored) {
        let Some(usage) = pod.usage else {
            missing.push(pod);
            continue;
        };
        if resource == "cpu" && is_unready(pod, readiness, now) {
            unready.push(pod);
            continue;
        }
        metrics.insert(&pod.name, usage);
        ready_count += 1;
    }
    if metrics.is_empty() {
        return Err(Error::NoMetrics);
    }
    let requests: BTreeMap<&str, i64> = match target {
        Target::Utilization(_) => pods
            .iter()
            .filter(|p| !p.ignored)
            .map(|p| {
                p.request
                    .filter(|r| *r > 0)
                    .map(|r| (p.name.as_str(), r))
                    .ok_or_else(|| Error::MissingRequest {
                        resource: resource.to_owned(),
                        pod: p.name.clone(),
                    })
            })
            .collect::<Result<_, _>>()?,
        Target::AverageValue(_) => BTreeMap::new(),
    };
    let ratio_of = |metrics: &BTreeMap<&str, i64>| -> (f64, Option<i64>, i64) {
        let total: i64 = metrics.values().sum();
        let average = total / metrics.len().max(1) as i64;
        match target {
            Target::Utilization(want) => {
                let requested: i64 = metrics.keys().map(|p| requests[p]).sum();
                let utilization = total * 100 / requested.max(1);
                (utilization as f64 / want as f64, Some(utilization), average)
            }
            Target::AverageValue(want) => (average as f64 / want as f64, None, average),
        }
    };
    let (ratio, utilization, average) = ratio_of(&metrics);
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average,
    };
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(proposal(current));
        }
        return Ok(proposal((ratio * ready_count as f64).ceil() as i64));
    }
    if !missing.is_empty() {
        for pod in &missing {
            let assumed = match (ratio < 1.0, target) {
                // Missing pods count as at the target (at least fully used) when scaling down…
                (true, Target::Utilization(want)) => {
                    requests[pod.name.as_str()] * want.max(100) / 100
                }
                (true, Target::AverageValue(want)) => want,
                // …and as idle when scaling up.
                (false, _) => 0,
            };
            if ratio != 1.0 {
                metrics.insert(&pod.name, assumed);
            }
        }
    }
    if scale_up_with_unready {
        for pod in &unready {
            metrics.insert(&pod.name, 0);
        }
    }
    let (new_ratio, _, _) = ratio_of(&metrics);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i64;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// `groupPods`' CPU rule: a pod still initializing counts only once its usage was measured
/// after it became ready; after that, a pod that never became ready since its start counts not.
fn is_unready(pod: &PodSample, readiness: Readiness, now: DateTime<Utc>) -> bool {
    let (Some((ready, since)), Some(start)) = (pod.ready, pod.start_time) else {
        return true;
    };
    if start + readiness.cpu_initialization_period > now {
        let measured_before_ready = pod
            .measured
            .is_some_and(|(at, window)| at < since + chrono::Duration::seconds(window));
        return !ready || measured_before_ready;
    }
    !ready && start + readiness.initial_readiness_delay > since
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A pod running for an hour, ready since 50 minutes, using `usage` millicores of 100.
    fn pod(name: &str, usage: Option<i64>) -> PodSample {
        PodSample {
            name: name.into(),
            usage,
            measured: Some((now(), 15)),
            request: Some(100),
            ignored: false,
            ready: Some((true, now() - chrono::Duration::minutes(50))),
            start_time: Some(now() - chrono::Duration::hours(1)),
        }
    }

    fn cpu(current: i64, pods: &[PodSample], percent: i64) -> Result<Proposal, Error> {
        replicas(
            current,
            pods,
            Target::Utilization(percent),
            "cpu",
            Readiness::default(),
            now(),
        )
    }

    #[test]
    fn the_ratio_of_usage_to_target_scales_the_ready_pods() {
        // 90m of 100m at a 50 % target: 180 % of it, 2 pods → 4.
        let pods = [pod("a", Some(90)), pod("b", Some(90))];
        let p = cpu(2, &pods, 50).unwrap();
        assert_eq!((p.replicas, p.utilization, p.average), (4, Some(90), 90));
        // Within the 10 % tolerance nothing changes.
        let pods = [pod("a", Some(52)), pod("b", Some(54))];
        assert_eq!(cpu(2, &pods, 50).unwrap().replicas, 2);
        // Idle pods: down to what the usage needs.
        let pods = [pod("a", Some(10)), pod("b", Some(10)), pod("c", Some(10))];
        assert_eq!(cpu(3, &pods, 50).unwrap().replicas, 1);
    }

    #[test]
    fn missing_and_unready_pods_hold_the_change_back() {
        // Scaling up: the pod without metrics counts as idle.
        let pods = [pod("a", Some(100)), pod("b", Some(100)), pod("c", None)];
        assert_eq!(
            cpu(3, &pods, 50).unwrap().replicas,
            4,
            "(200+200+0)/3 % of 50 %, 3 pods"
        );
        // Scaling down: it counts as fully used, which here cancels the change.
        let pods = [pod("a", Some(40)), pod("b", None)];
        assert_eq!(cpu(2, &pods, 50).unwrap().replicas, 2);
        // An unready pod counts as idle when scaling up.
        let mut starting = pod("c", Some(100));
        starting.ready = Some((false, now()));
        starting.start_time = Some(now() - chrono::Duration::seconds(20));
        let pods = [pod("a", Some(100)), pod("b", Some(100)), starting];
        assert_eq!(cpu(3, &pods, 50).unwrap().replicas, 4);
        // Deleted pods do not count at all.
        let mut gone = pod("d", Some(0));
        gone.ignored = true;
        assert_eq!(
            cpu(2, &[pod("a", Some(90)), pod("b", Some(90)), gone], 50)
                .unwrap()
                .replicas,
            4
        );
    }

    #[test]
    fn what_cannot_be_computed_says_why() {
        assert_eq!(cpu(1, &[], 50), Err(Error::NoPods));
        assert_eq!(cpu(1, &[pod("a", None)], 50), Err(Error::NoMetrics));
        let mut no_request = pod("a", Some(10));
        no_request.request = None;
        assert_eq!(
            cpu(1, &[no_request], 50).unwrap_err().to_string(),
            "missing request for cpu in container of Pod a"
        );
        // An average-value target needs no requests.
        let pods = [pod("a", Some(300)), pod("b", Some(100))];
        let p = replicas(
            2,
            &pods,
            Target::AverageValue(100),
            "memory",
            Readiness::default(),
            now(),
        )
        .unwrap();
        assert_eq!((p.replicas, p.average), (4, 200));
    }
}
