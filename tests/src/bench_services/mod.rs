//! `apiary-lab bench-services` (issue 6): what a Service costs a connection, and how fast the
//! agent programs Services.
//!
//! - [`latency`]: per-request latency to a pod directly, through a ClusterIP (socket LB) and
//!   through a kube-proxy-shaped iptables DNAT chain ([`kube_proxy`]), with 1, 1,000 and 10,000
//!   services present;
//! - [`programming`]: a real one-node cluster, 10,000 Services created at once until the node's
//!   map holds them all, then one more at a time;
//! - [`report`]: the table and the JSON document.

pub mod kube_proxy;
pub mod latency;
pub mod programming;
pub mod report;
