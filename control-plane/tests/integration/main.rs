//! The control plane's integration tests, one module per area, in one test binary: each binary
//! links the whole control plane, and 43 of them spent CI minutes linking; in one, the tests of
//! every area also share the test threads instead of waiting for the slowest of each file.
//!
//! Tests share this process: a test gives its control plane the environment it needs
//! ([`support::ControlPlane::start_with_env`]) instead of setting variables of this process.

mod local_pods;
mod store_support;
mod support;

mod access_sweep;
mod admission_policies;
mod admission_webhooks;
mod agents;
mod audit;
mod authn;
mod bench_helpers;
mod certificates;
mod controllers;
mod controllers_more;
mod cronjob;
mod custom_resources;
mod daemonset;
mod dry_run;
mod etcd_tls;
mod ha;
mod health;
mod hpa;
mod identity;
mod kubectl;
mod kubectl_create;
mod kubectl_openapi;
mod kubelet_api;
mod leader;
mod limits;
mod loadbalancer;
mod main_errors;
mod metrics;
mod node_proxy;
mod nodes;
mod operator;
mod pod_security;
mod protobuf_bodies;
mod python_client;
mod rbac;
mod resource_metrics;
mod scheduler;
mod server_side_apply;
mod statefulset;
mod storage;
mod store_conformance;
mod streams;
mod watch_list;
