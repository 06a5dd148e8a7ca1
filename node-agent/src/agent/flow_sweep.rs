//! Forgets the flows NetworkPolicy remembered (`POLICY_FLOWS`) once they go idle, as Cilium's
//! connection-tracking GC does, and keeps each endpoint's count (`POLICY_FLOW_USE`) true. The
//! table is no LRU (one pod's flood would evict everyone's flows), so nothing else frees it.

use std::{path::PathBuf, time::Duration};

use nix::time::{ClockId, clock_gettime};

use crate::dataplane::PolicyMaps;

/// How often the table is swept: well under the shortest lifetime that matters (a closing TCP
/// connection's 10 s is a floor, not a deadline).
const INTERVAL: Duration = Duration::from_secs(15);

/// Sweeps until the agent stops.
pub async fn run(pin_dir: PathBuf) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pin_dir = pin_dir.clone();
        let swept = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut maps = PolicyMaps::open(&pin_dir)?;
            Ok(maps.sweep_flows(now_seconds()?)?)
        })
        .await;
        match swept {
            Ok(Ok(sweep)) if sweep.removed > 0 => {
                tracing::debug!(
                    kept = sweep.kept,
                    removed = sweep.removed,
                    "policy flows swept"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "sweeping policy flows"),
            Err(e) => tracing::warn!(error = %e, "sweeping policy flows"),
        }
    }
}

/// Seconds of the programs' clock (`bpf_ktime_get_coarse_ns`: `CLOCK_MONOTONIC_COARSE`).
pub fn now_seconds() -> nix::Result<u32> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)?;
    Ok(u32::try_from(now.tv_sec()).unwrap_or(u32::MAX))
}
