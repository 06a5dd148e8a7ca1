//! Apiary's control plane: the Kubernetes-compatible API server and the storage behind it.
//!
//! - [`store`]: one storage trait, an embedded (redb) and an etcd backend.
//! - [`apiserver`]: HTTPS, authentication, discovery and the verbs on every resource.
//! - [`agents`]: the node agents' gRPC channel, served on the API port.

pub mod agents;
pub mod apiserver;
pub mod store;
