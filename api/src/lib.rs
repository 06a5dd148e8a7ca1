//! Kubernetes-shaped API types, shared by the control plane, the node agent and the CLI.
//!
//! Serde and validation only: no I/O, no async runtime.

pub mod meta;
pub mod validation;

pub use meta::{ObjectMeta, ObjectRef, TypeMeta};
