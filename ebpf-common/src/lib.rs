//! The data-plane ABI: names and `#[repr(C)]` layouts of the maps that `ebpf/` programs and the
//! node agent share.
//!
//! Pinned maps outlive the agent that created them (the data plane keeps forwarding while the
//! agent restarts), so every layout here is append-only: never reorder or resize a field.
#![cfg_attr(not(test), no_std)]

/// Name of the per-pod traffic counters map (`PERCPU_HASH`, key: host-side veth ifindex as `u32`,
/// value: [`PodTraffic`]).
///
/// Entries are created by the node agent when it attaches to a pod's veth and removed when the pod
/// goes away; the programs only count for interfaces the agent registered, so a stray interface can
/// never fill the map.
pub const POD_TRAFFIC: &str = "POD_TRAFFIC";

/// Every map the programs pin by name: what `unpin` removes.
pub const PINNED_MAPS: &[&str] = &[POD_TRAFFIC];

/// Capacity of [`POD_TRAFFIC`]: well above the 110 pods a node runs.
pub const POD_TRAFFIC_MAX_ENTRIES: u32 = 4096;

/// Packets and bytes seen on one pod's host-side veth, per CPU in the map.
///
/// "From pod" is what the pod sent (TC ingress on the host side), "to pod" what it was sent (TC
/// egress on the host side). Bytes are `skb->len`: the Ethernet frame without FCS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PodTraffic>() == 32);

impl PodTraffic {
    /// Adds another CPU's counters to these (user space sums the per-CPU values).
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            from_pod_packets: self.from_pod_packets + other.from_pod_packets,
            from_pod_bytes: self.from_pod_bytes + other.from_pod_bytes,
            to_pod_packets: self.to_pod_packets + other.to_pod_packets,
            to_pod_bytes: self.to_pod_bytes + other.to_pod_bytes,
        }
    }
}

// SAFETY: `PodTraffic` is `repr(C)`, made only of `u64`s, has no padding and is valid for any bit
// pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PodTraffic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_adds_every_counter() {
        let a = PodTraffic {
            from_pod_packets: 1,
            from_pod_bytes: 100,
            to_pod_packets: 2,
            to_pod_bytes: 200,
        };
        let b = PodTraffic {
            from_pod_packets: 10,
            from_pod_bytes: 1000,
            to_pod_packets: 20,
            to_pod_bytes: 2000,
        };
        assert_eq!(
            a.merged(b),
            PodTraffic {
                from_pod_packets: 11,
                from_pod_bytes: 1100,
                to_pod_packets: 22,
                to_pod_bytes: 2200,
            }
        );
    }
}
