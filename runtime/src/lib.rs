//! Apiary's container runtime: each container runs under its own single-threaded
//! `apiary-shim` process, which drives youki's libcontainer (it forks, so it must not run inside
//! the multi-threaded agent), pumps the output into a CRI log and records the exit in the
//! container's state dir. [`Runtime`] is the agent's side; [`Sandbox`] makes the namespaces a
//! pod's containers share; [`logs`] writes and reads the CRI logs.

pub mod bundle;
pub mod cgroups;
mod error;
pub mod logs;
mod runtime;
mod sandbox;
pub mod security;
pub mod shim;
mod spec;
pub mod state;
pub mod stdin;

pub use error::{Error, Result};
pub use runtime::{ExecProcess, ExecRequest, Runtime, RuntimeConfig};
pub use sandbox::Sandbox;
pub use security::{Seccomp, Security};
pub use spec::{
    ContainerSpec, DEFAULT_PATH, Mount, PidNamespace, Resources, SandboxNamespaces, validate_id,
};
pub use state::{ContainerState, ContainerStatus, ExitInfo};
