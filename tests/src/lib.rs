//! Support for Apiary's privileged tests: a network-namespace [`lab`] of nodes and pods, a
//! [`cluster`] of real agents in such a lab, a lab [`machine`] for `apiary up` and the [`demo`],
//! the [`privileges`] gate, [`packets`] to feed `BPF_PROG_RUN`, the `bench-pods` benchmark
//! ([`bench_net`], [`bench_pods`], [`bench_report`]) and the `bench-services` one
//! ([`bench_services`]), the `bench-policy` one ([`bench_policy`]) and the `bench-storage` one
//! ([`bench_storage`]), and the HA fault suite
//! ([`faults`]).

pub mod bench_net;
pub mod bench_pods;
pub mod bench_policy;
pub mod bench_report;
pub mod bench_services;
pub mod bench_storage;
pub mod cluster;
pub mod demo;
pub mod faults;
pub mod lab;
pub mod machine;
pub mod netpol;
pub mod packets;
pub mod privileges;
