//! `BPF_PROG_RUN` tests: the pod programs run on crafted frames, with no network at all.
//!
//! The kernel runs a test skb on the loopback device of the caller's namespace, so the program
//! sees ifindex 1.

use std::net::Ipv4Addr;

use apiary_ebpf_common::PodTraffic;
use apiary_node_agent::dataplane::{Dataplane, PodProgram};
use apiary_tests::{lab::Lab, packets::udp_frame, require_privileges};
use aya::programs::{TestRun as _, TestRunOptions};

const LOOPBACK_IFINDEX: u32 = 1;
const TC_ACT_OK: u32 = 0;

fn run(dp: &Dataplane, program: PodProgram, frame: &[u8], repeat: u32) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    };
    dp.program(program)
        .unwrap()
        .test_run(opts)
        .unwrap()
        .return_value
}

fn frame(payload: usize) -> Vec<u8> {
    udp_frame(
        Ipv4Addr::new(10, 123, 1, 2),
        Ipv4Addr::new(10, 123, 1, 3),
        40000,
        53,
        payload,
    )
}

#[test]
fn from_pod_counts_every_run_into_the_from_pod_counters() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = Dataplane::load(&lab.pin_dir("dp")).unwrap();
    dp.pod_traffic()
        .unwrap()
        .register(LOOPBACK_IFINDEX)
        .unwrap();

    let frame = frame(100);
    assert_eq!(run(&dp, PodProgram::FromPod, &frame, 3), TC_ACT_OK);

    let counted = dp.pod_traffic().unwrap().get(LOOPBACK_IFINDEX).unwrap();
    assert_eq!(
        counted,
        Some(PodTraffic {
            from_pod_packets: 3,
            from_pod_bytes: 3 * 142,
            ..PodTraffic::default()
        })
    );
}

#[test]
fn to_pod_counts_into_the_to_pod_counters() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = Dataplane::load(&lab.pin_dir("dp")).unwrap();
    dp.pod_traffic()
        .unwrap()
        .register(LOOPBACK_IFINDEX)
        .unwrap();

    assert_eq!(run(&dp, PodProgram::ToPod, &frame(0), 1), TC_ACT_OK);
    assert_eq!(run(&dp, PodProgram::ToPod, &frame(1000), 1), TC_ACT_OK);

    let counted = dp.pod_traffic().unwrap().get(LOOPBACK_IFINDEX).unwrap();
    assert_eq!(
        counted,
        Some(PodTraffic {
            to_pod_packets: 2,
            to_pod_bytes: 42 + 1042,
            ..PodTraffic::default()
        })
    );
}

#[test]
fn interfaces_the_agent_did_not_register_are_passed_but_not_counted() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let dp = Dataplane::load(&lab.pin_dir("dp")).unwrap();

    assert_eq!(run(&dp, PodProgram::FromPod, &frame(10), 5), TC_ACT_OK);

    let traffic = dp.pod_traffic().unwrap();
    assert_eq!(traffic.get(LOOPBACK_IFINDEX).unwrap(), None);
    assert!(traffic.all().unwrap().is_empty(), "nothing may be inserted");
}
