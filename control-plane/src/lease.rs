//! What the control plane's users of `coordination.k8s.io` Leases share: the leader election,
//! each control plane's own lease behind `default/kubernetes`, and the nodes' leases.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Kubernetes' `MicroTime`, as a Lease's `acquireTime` and `renewTime` hold it: RFC 3339 with
/// microseconds.
pub fn micro_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Until when `lease` holds: its `renewTime` plus its `leaseDurationSeconds` (`default_seconds`
/// when it names none); `None` without a readable renewal.
pub fn held_until(lease: &Value, default_seconds: i64) -> Option<DateTime<Utc>> {
    let renewed = lease["spec"]["renewTime"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())?
        .with_timezone(&Utc);
    let duration = lease["spec"]["leaseDurationSeconds"]
        .as_i64()
        .unwrap_or(default_seconds);
    Some(renewed + chrono::Duration::seconds(duration))
}
