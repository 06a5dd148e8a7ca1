//! The node agent: keeps a machine's pods and its eBPF data plane equal to what the control plane
//! wants.
//!
//! - [`dataplane`]: loads the BPF programs from `ebpf/`, attaches them to pod veths and wraps each
//!   map in a typed struct.
//! - [`netns`]: runs work inside another network namespace.
//! - [`server`]: the kubelet-style HTTPS server behind `kubectl logs` and `kubectl exec`.

pub mod dataplane;
pub mod netns;
pub mod server;
