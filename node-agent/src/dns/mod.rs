//! Cluster DNS: the names of Services and Pods (`<svc>.<ns>.svc.cluster.local`), served on every
//! node by a process the node agent starts rather than by a CoreDNS deployment, so that name
//! resolution needs no pod networking of its own and keeps working on a node cut off from the
//! others; and, that process outliving the agent, while the agent is down.
//!
//! - [`records`]: the names, computed from Services, EndpointSlices and Pods (no I/O).
//! - [`server`]: the UDP/TCP server that answers them and forwards other questions upstream.
//! - [`standalone`]: `apiary-node-agent dns`, the process that runs the server.
//! - [`feed`]: the protocol on which the agent sends that process the records.
//! - [`supervisor`]: the agent's side: starts, keeps or replaces the process, and feeds it.
//! - [`resolv_conf`]: a pod's `/etc/resolv.conf`, pointing it at the cluster DNS server.
//!
//! Feeding the records from the API and choosing the server's address is the agent's job.

pub mod feed;
pub mod records;
pub mod resolv_conf;
pub mod server;
pub mod standalone;
pub mod supervisor;

/// The port cluster DNS is served on.
pub const PORT: u16 = 53;

pub use records::{Answer, ClusterRecords, DEFAULT_DOMAIN, TTL};
pub use resolv_conf::{pod_resolv_conf, upstreams_from_resolv_conf};
pub use server::{AnswerCounts, Clients, DnsServer, Error, Result, SharedRecords, serve};
pub use standalone::{DnsArgs, DnsConfig};
pub use supervisor::Supervisor;
