//! Cluster DNS: the names of Services and Pods (`<svc>.<ns>.svc.cluster.local`), served on every
//! node by the node agent itself rather than by a CoreDNS deployment, so that name resolution
//! needs no pod networking of its own and keeps working on a node cut off from the others.
//!
//! - [`records`]: the names, computed from Services, EndpointSlices and Pods (no I/O).
//! - [`server`]: the UDP/TCP server that answers them and forwards other questions upstream.
//! - [`resolv_conf`]: a pod's `/etc/resolv.conf`, pointing it at the cluster DNS server.
//!
//! Feeding the records from the API and choosing the server's address is the agent's job.

pub mod records;
pub mod resolv_conf;
pub mod server;

/// The port cluster DNS is served on.
pub const PORT: u16 = 53;

pub use records::{Answer, ClusterRecords, DEFAULT_DOMAIN, TTL};
pub use resolv_conf::{pod_resolv_conf, upstreams_from_resolv_conf};
pub use server::{Clients, DnsServer, Error, Result, SharedRecords, serve};
