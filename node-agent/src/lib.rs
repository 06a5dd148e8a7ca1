//! The node agent: keeps a machine's pods and its eBPF data plane equal to what the control plane
//! wants.
//!
//! - [`certificates`]: certificates from the cluster CA through CertificateSigningRequests
//!   (the agent's client and serving certificates).
//! - [`dataplane`]: loads the BPF programs from `ebpf/`, attaches them to pod veths and wraps each
//!   map in a typed struct.
//! - [`dns`]: the cluster DNS server (`<svc>.<ns>.svc.cluster.local`) and pods' resolv.conf.
//! - [`metrics`]: the agent's own instruments (pod starts, image pulls, probes, DNS answers).
//! - [`netns`]: runs work inside another network namespace.
//! - [`policy`]: NetworkPolicy compiled to per-pod allow entries over security identities.
//! - [`network`]: pod networking — IPAM, veth plumbing over rtnetlink, routes to other nodes.
//! - [`services`]: the Service load-balancing state (frontends, Maglev tables, map writes).
//! - [`server`]: the kubelet-style HTTPS server behind `kubectl logs` and `kubectl exec`.
//! - [`stats`]: resource usage of the node, its pods and containers (cgroups, `/proc`).

pub mod agent;
pub mod api_client;
pub mod certificates;
pub mod dataplane;
pub mod dns;
pub mod kubeconfig;
pub mod metrics;
pub mod netns;
pub mod network;
pub mod policy;
pub mod server;
pub mod services;
pub mod stats;
