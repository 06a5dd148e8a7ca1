//! Apiary's control plane: the Kubernetes-compatible API server and the storage behind it.
//!
//! - [`store`]: one storage trait, an embedded (redb) and an etcd backend.
//! - [`apiserver`]: HTTPS, authentication, discovery and the verbs on every resource.
//! - [`agents`]: the node agents' gRPC channel, served on the API port.
//! - [`leader`]: Lease-based leader election; only the leader runs the controllers.
//! - [`controllers`]: workload, Endpoints and LoadBalancer-address reconcilers.
//! - [`events`]: the Event recorder of the controllers and the scheduler (repeats counted).
//! - [`scheduler`]: assigns pods to nodes; its `lifecycle` marks silent nodes and evicts.
//! - [`metrics`]: the Prometheus instruments of `GET /metrics`, under Kubernetes' names.

pub mod agents;
pub mod apiserver;
pub mod controllers;
pub mod events;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod scheduler;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
