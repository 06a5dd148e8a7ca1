//! The node agent proper: registers the machine as a Node, keeps its Lease renewed, runs the
//! pods bound to it ([`pods`]) and keeps the pod network's routes to other nodes current.

pub mod client_certificate;
pub mod context;
pub mod dns_endpoint;
pub mod env;
pub mod flow_sweep;
pub mod flows;
pub mod health;
pub mod identities;
pub mod node;
pub mod pods;
pub mod policies;
pub mod policy_maps;
pub mod probes;
pub mod reset;
pub mod run;
pub mod services;
pub mod serving_certificate;
pub mod static_pods;
pub mod storage;
pub mod streams;
pub mod tokens;
pub mod volumes;

pub use run::{AgentConfig, run};
