//! Leader election through a Lease, as kube-controller-manager does it: several control planes
//! share one etcd and all serve the API, but only the holder of `kube-system/apiary-controllers`
//! runs the scheduler and the controllers. A leader that cannot renew steps down; a follower
//! takes over once the lease has gone unrenewed for its duration.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    apiserver::{Api, error::ApiError, objects, path::Target},
    lease::{held_until, micro_time},
};

/// The Lease every control plane competes for.
pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "apiary-controllers";

/// Timing of the election.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a follower retries).
    pub retry_period: Duration,
}

impl Default for Timing {
    /// The loser takes over within 15 s of the leader's death.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Whether `lease` is held by someone else whose renewal has not expired.
fn held_by_other(lease: &Value, identity: &str) -> bool {
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return false;
    }
    held_until(lease, 0).is_some_and(|until| until > now())
}

/// One attempt to acquire or renew: `Ok(true)` when `identity` holds the lease afterwards.
/// Conflicts (another control plane wrote first) are a plain `false`.
pub async fn try_acquire(api: &Arc<Api>, identity: &str, timing: Timing) -> Result<bool, ApiError> {
    let leases = api
        .resources
        .get("coordination.k8s.io", "v1", "leases")
        .expect("leases are served");
    let target = Target {
        resource: leases,
        namespace: Some(LEASE_NAMESPACE.into()),
        name: Some(LEASE_NAME.into()),
        subresource: None,
    };
    let renew = micro_time(now());
    let duration = i64::try_from(timing.lease_duration.as_secs()).unwrap_or(i64::MAX);
    let result = match objects::get(api, leases, Some(LEASE_NAMESPACE), LEASE_NAME).await {
        Ok(lease) if held_by_other(&lease, identity) => return Ok(false),
        Ok(mut lease) => {
            let taking_over = lease["spec"]["holderIdentity"].as_str() != Some(identity);
            if taking_over {
                let transitions = lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
                lease["spec"]["leaseTransitions"] = json!(transitions + 1);
                lease["spec"]["acquireTime"] = json!(renew);
                lease["spec"]["holderIdentity"] = json!(identity);
            }
            lease["spec"]["renewTime"] = json!(renew);
            lease["spec"]["leaseDurationSeconds"] = json!(duration);
            // The resourceVersion read above makes this a compare-and-swap.
            objects::update(api, &target, LEASE_NAME, lease)
                .await
                .map(drop)
        }
        Err(e) if e.reason == "NotFound" => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": { "name": LEASE_NAME, "namespace": LEASE_NAMESPACE },
                "spec": {
                    "holderIdentity": identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": renew,
                    "renewTime": renew,
                    "leaseTransitions": 0,
                },
            });
            let target = Target {
                name: None,
                ..target
            };
            objects::create(api, &target, lease).await.map(drop)
        }
        Err(e) => return Err(e),
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.reason, "Conflict" | "AlreadyExists") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Campaigns forever, publishing whether this control plane leads. A leader that fails to
/// renew for a whole lease duration steps down before anyone else can take over.
pub async fn campaign(
    api: Arc<Api>,
    identity: String,
    timing: Timing,
    leading: watch::Sender<bool>,
) {
    let mut last_renewal: Option<tokio::time::Instant> = None;
    crate::metrics::global().leading(false);
    loop {
        match try_acquire(&api, &identity, timing).await {
            Ok(true) => {
                if !*leading.borrow() {
                    tracing::info!(%identity, "became the leader");
                }
                last_renewal = Some(tokio::time::Instant::now());
                leading.send_replace(true);
            }
            Ok(false) => {
                if *leading.borrow() {
                    tracing::warn!(%identity, "lost the lease");
                }
                leading.send_replace(false);
            }
            Err(e) => {
                tracing::warn!(%identity, error = %e.message, "lease renewal failed");
                // Step down with a margin: others may take over once the lease expires.
                let expired =
                    last_renewal.is_none_or(|t| t.elapsed() >= timing.lease_duration * 2 / 3);
                if expired && *leading.borrow() {
                    tracing::warn!(%identity, "stepping down");
                    leading.send_replace(false);
                }
            }
        }
        crate::metrics::global().leading(*leading.borrow());
        tokio::time::sleep(timing.retry_period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_by_another_only_until_it_expires() {
        let fresh = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 10, "renewTime": micro_time(now())}});
        assert!(held_by_other(&fresh, "b"));
        assert!(
            !held_by_other(&fresh, "a"),
            "our own lease is ours to renew"
        );
        let stale = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 10,
            "renewTime": micro_time(now() - chrono::Duration::seconds(11))}});
        assert!(!held_by_other(&stale, "b"));
        assert!(!held_by_other(&json!({"spec": {}}), "b"));
    }
}
