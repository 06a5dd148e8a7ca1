//! The core (`""`) group's kinds with behaviour of their own.

pub mod namespaces;
pub mod persistent_volumes;
pub mod pods;
pub mod secrets;
pub mod services;
