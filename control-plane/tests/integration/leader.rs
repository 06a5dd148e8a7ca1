//! Leader election: two control planes on one etcd; the second takes over within 15 s of the
//! first one's death.

use crate::support;

use std::time::{Duration, Instant};

use support::{ControlPlane, Etcd};

fn holder(cp: &ControlPlane) -> Option<String> {
    let out = cp
        .kubectl(&[
            "-n",
            "kube-system",
            "get",
            "lease",
            "apiary-controllers",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .output();
    out.filter(|h| !h.is_empty())
}

fn wait_for_holder(cp: &ControlPlane, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if holder(cp).as_deref() == Some(want) {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{want} did not hold the lease within {within:?}; holder: {:?}",
        holder(cp)
    );
}

#[test]
fn the_follower_takes_over_within_15_seconds_of_the_leaders_death() {
    let etcd = Etcd::start();
    let first =
        ControlPlane::start_with(&["--etcd-endpoints", &etcd.endpoint, "--identity", "cp-1"]);
    wait_for_holder(&first, "cp-1", Duration::from_secs(20));
    let second =
        ControlPlane::start_with(&["--etcd-endpoints", &etcd.endpoint, "--identity", "cp-2"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        holder(&second).as_deref(),
        Some("cp-1"),
        "the leader keeps its lease"
    );

    drop(first);
    let took = wait_for_holder(&second, "cp-2", Duration::from_secs(15));
    eprintln!("cp-2 took over {took:?} after cp-1 died");
    let transitions = second
        .kubectl(&[
            "-n",
            "kube-system",
            "get",
            "lease",
            "apiary-controllers",
            "-o",
            "jsonpath={.spec.leaseTransitions}",
        ])
        .success();
    assert_eq!(transitions.trim(), "1");
}
