//! What becomes of the metrics' proposal (kube-controller-manager's
//! `normalizeDesiredReplicas[WithBehaviors]`): stabilized over the recent recommendations (the
//! lowest of the scale-up window, the highest of the scale-down window), then limited by the
//! scaling policies' rates over the scale events of their periods, and by min/max.

use std::collections::VecDeque;

use apiary_api::autoscaling_v2::{
    ScalingPolicy, ScalingRules, default_scale_down, default_scale_up,
};
use chrono::{DateTime, Duration, Utc};

/// One recommendation or scale event, with when it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamped {
    pub at: DateTime<Utc>,
    pub value: i64,
}

/// What the controller remembers of one HPA between syncs.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub recommendations: VecDeque<Stamped>,
    /// Replicas added (scale-ups) and removed (scale-downs), by when.
    pub scale_ups: VecDeque<Stamped>,
    pub scale_downs: VecDeque<Stamped>,
}

/// The outcome, with the conditions' reasons and messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    pub replicas: i64,
    /// `AbleToScale`: why the stabilized recommendation is what it is.
    pub stabilized: (&'static str, &'static str),
    /// `ScalingLimited`: `True` with a reason when a limit applied.
    pub limited: Option<(&'static str, &'static str)>,
}

/// The rules in force: an HPA's behavior, or without one the controller's old algorithm
/// (scale up to at most twice the replicas or 4, scale down after `downscale_window`).
#[derive(Clone, Debug)]
pub struct Rules {
    pub up: ScalingRules,
    pub down: ScalingRules,
    /// Without a behavior the scale-up limit is `max(2 × current, 4)`.
    pub legacy: bool,
}

impl Rules {
    pub fn of(
        behavior: Option<&apiary_api::autoscaling_v2::Behavior>,
        downscale_window: Duration,
    ) -> Self {
        let window = i32::try_from(downscale_window.num_seconds()).unwrap_or(300);
        let with_window = |mut rules: ScalingRules| {
            rules.stabilization_window_seconds.get_or_insert(window);
            rules
        };
        match behavior {
            Some(b) => Self {
                up: b.scale_up.clone().unwrap_or_else(default_scale_up),
                down: with_window(b.scale_down.clone().unwrap_or_else(default_scale_down)),
                legacy: false,
            },
            None => Self {
                up: ScalingRules {
                    stabilization_window_seconds: Some(0),
                    ..default_scale_up()
                },
                down: ScalingRules {
                    stabilization_window_seconds: Some(window),
                    ..default_scale_down()
                },
                legacy: true,
            },
        }
    }
}

fn window(rules: &ScalingRules) -> Duration {
    Duration::seconds(i64::from(rules.stabilization_window_seconds.unwrap_or(0)))
}

/// Normalizes `desired` for an HPA at `current` replicas within `min..=max`, recording the
/// recommendation in `history`.
pub fn normalize(
    history: &mut History,
    rules: &Rules,
    current: i64,
    desired: i64,
    (min, max): (i64, i64),
    now: DateTime<Utc>,
) -> Normalized {
    // Stabilization: the lowest recommendation of the scale-up window bounds a scale-up, the
    // highest of the scale-down window a scale-down.
    let (up_cutoff, down_cutoff) = (now - window(&rules.up), now - window(&rules.down));
    let mut up = desired;
    let mut down = desired;
    for r in &history.recommendations {
        if r.at > up_cutoff {
            up = up.min(r.value);
        }
        if r.at > down_cutoff {
            down = down.max(r.value);
        }
    }
    let oldest = up_cutoff.min(down_cutoff);
    history.recommendations.retain(|r| r.at > oldest);
    history.recommendations.push_back(Stamped {
        at: now,
        value: desired,
    });
    let stabilized = current.max(up).min(down);
    let reason = if stabilized < desired {
        (
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation",
        )
    } else if stabilized > desired {
        (
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        )
    } else {
        ("ReadyForNewScale", "recommended size matches current size")
    };
    let (replicas, limited) = limit(history, rules, current, stabilized, (min, max), now);
    Normalized {
        replicas,
        stabilized: reason,
        limited,
    }
}

/// `convertDesiredReplicasWithBehaviorRate` (or, without a behavior, `convertDesiredReplicasWithRules`).
fn limit(
    history: &History,
    rules: &Rules,
    current: i64,
    desired: i64,
    (min, max): (i64, i64),
    now: DateTime<Utc>,
) -> (i64, Option<(&'static str, &'static str)>) {
    const TOO_MANY: (&str, &str) = (
        "TooManyReplicas",
        "the desired replica count is more than the maximum replica count",
    );
    const TOO_FEW: (&str, &str) = (
        "TooFewReplicas",
        "the desired replica count is less than the minimum replica count",
    );
    if desired > current {
        let rate = if rules.legacy {
            (2 * current).max(4)
        } else {
            scale_up_limit(current, &history.scale_ups, &rules.up, now).max(current)
        };
        let allowed = max.min(rate);
        if desired > allowed {
            let why = if allowed == rate && rate < max {
                (
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                TOO_MANY
            };
            return (allowed, Some(why));
        }
    } else if desired < current {
        let rate = if rules.legacy {
            min
        } else {
            scale_down_limit(current, &history.scale_downs, &rules.down, now).min(current)
        };
        let allowed = min.max(rate);
        if desired < allowed {
            let why = if allowed == rate && rate > min {
                (
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                TOO_FEW
            };
            return (allowed, Some(why));
        }
    }
    if desired > max {
        return (max, Some(TOO_MANY));
    }
    if desired < min {
        return (min, Some(TOO_FEW));
    }
    (desired, None)
}

/// Replicas changed within `policy`'s period.
fn changed_in_period(
    policy: &ScalingPolicy,
    events: &VecDeque<Stamped>,
    now: DateTime<Utc>,
) -> i64 {
    let cutoff = now - Duration::seconds(i64::from(policy.period_seconds));
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.value)
        .sum()
}

fn policies(rules: &ScalingRules) -> &[ScalingPolicy] {
    rules.policies.as_deref().unwrap_or_default()
}

/// `calculateScaleUpLimitWithScalingRules`.
fn scale_up_limit(
    current: i64,
    ups: &VecDeque<Stamped>,
    rules: &ScalingRules,
    now: DateTime<Utc>,
) -> i64 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let proposals = policies(rules).iter().map(|policy| {
        let start = current - changed_in_period(policy, ups, now);
        match policy.type_.as_str() {
            "Pods" => start + i64::from(policy.value),
            _ => (start as f64 * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i64,
        }
    });
    match select {
        "Min" => proposals.min(),
        _ => proposals.max(),
    }
    .unwrap_or(current)
}

/// `calculateScaleDownLimitWithBehaviors`: "Max" selects the largest change, the fewest pods.
fn scale_down_limit(
    current: i64,
    downs: &VecDeque<Stamped>,
    rules: &ScalingRules,
    now: DateTime<Utc>,
) -> i64 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let proposals = policies(rules).iter().map(|policy| {
        let start = current + changed_in_period(policy, downs, now);
        match policy.type_.as_str() {
            "Pods" => start - i64::from(policy.value),
            _ => (start as f64 * (1.0 - f64::from(policy.value) / 100.0)) as i64,
        }
    });
    match select {
        "Min" => proposals.max(),
        _ => proposals.min(),
    }
    .unwrap_or(current)
}

/// Records a rescale from `from` to `to`, forgetting events older than every policy's period.
pub fn record_scale(history: &mut History, rules: &Rules, from: i64, to: i64, now: DateTime<Utc>) {
    let longest = policies(&rules.up)
        .iter()
        .chain(policies(&rules.down))
        .map(|p| p.period_seconds)
        .max()
        .unwrap_or(0);
    let cutoff = now - Duration::seconds(i64::from(longest));
    history.scale_ups.retain(|e| e.at > cutoff);
    history.scale_downs.retain(|e| e.at > cutoff);
    match to.cmp(&from) {
        std::cmp::Ordering::Greater => history.scale_ups.push_back(Stamped {
            at: now,
            value: to - from,
        }),
        std::cmp::Ordering::Less => history.scale_downs.push_back(Stamped {
            at: now,
            value: from - to,
        }),
        std::cmp::Ordering::Equal => {}
    }
}

#[cfg(test)]
mod tests {
    use apiary_api::autoscaling_v2::Behavior;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::seconds(seconds)
    }

    #[test]
    fn without_a_behavior_scale_up_doubles_at_most_and_scale_down_waits_for_the_window() {
        let rules = Rules::of(None, Duration::seconds(300));
        let mut history = History::default();
        let n = normalize(&mut history, &rules, 1, 10, (1, 20), at(0));
        assert_eq!(n.replicas, 4, "max(2 × 1, 4)");
        assert_eq!(n.limited.unwrap().0, "ScaleUpLimit");
        // Load gone: the recommendation of 10 made 60 s ago holds the scale-down back.
        let n = normalize(&mut history, &rules, 4, 1, (1, 20), at(60));
        assert_eq!((n.replicas, n.stabilized.0), (4, "ScaleDownStabilized"));
        // Past the window, down to what is recommended now.
        let n = normalize(&mut history, &rules, 4, 1, (1, 20), at(400));
        assert_eq!(
            (n.replicas, n.stabilized.0, n.limited),
            (1, "ReadyForNewScale", None)
        );
    }

    #[test]
    fn policies_limit_the_rate_over_their_periods() {
        let behavior = Behavior {
            scale_up: Some(ScalingRules {
                policies: Some(vec![ScalingPolicy {
                    type_: "Pods".into(),
                    value: 2,
                    period_seconds: 60,
                }]),
                ..default_scale_up()
            }),
            scale_down: Some(ScalingRules {
                stabilization_window_seconds: Some(0),
                policies: Some(vec![ScalingPolicy {
                    type_: "Percent".into(),
                    value: 50,
                    period_seconds: 60,
                }]),
                select_policy: Some("Max".into()),
            }),
        };
        let rules = Rules::of(Some(&behavior), Duration::seconds(300));
        let mut history = History::default();
        let n = normalize(&mut history, &rules, 2, 9, (1, 10), at(0));
        assert_eq!(n.replicas, 4);
        record_scale(&mut history, &rules, 2, 4, at(0));
        // Within the same minute the 2 pods already added use the policy up.
        assert_eq!(
            normalize(&mut history, &rules, 4, 9, (1, 10), at(30)).replicas,
            4
        );
        assert_eq!(
            normalize(&mut history, &rules, 4, 9, (1, 10), at(61)).replicas,
            6
        );
        // Down by half per minute at most; never below min.
        assert_eq!(
            normalize(&mut history, &rules, 8, 1, (1, 10), at(200)).replicas,
            4
        );
        assert_eq!(
            normalize(&mut history, &rules, 8, 0, (3, 10), at(200)).replicas,
            4
        );
        assert_eq!(
            normalize(&mut history, &rules, 4, 0, (3, 10), at(400)).replicas,
            3
        );
        // And max holds whatever the policies allow.
        let n = normalize(&mut history, &rules, 9, 30, (1, 10), at(1000));
        assert_eq!((n.replicas, n.limited.unwrap().0), (10, "TooManyReplicas"));
    }
}
