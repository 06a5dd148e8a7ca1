//! The Container Storage Interface (CSI) as Apiary's node agent speaks it: the spec's gRPC
//! services ([`v1`]), serving and reaching a plugin over its unix socket ([`socket`]), and the
//! built-in local-path driver ([`local`]), which the agent talks to through the same client as
//! it would to any third-party driver, and the kubelet's plugin registration protocol
//! ([`registration`]) through which third-party drivers announce themselves.

pub mod local;
pub mod socket;

/// The CSI spec's messages, clients and servers (`csi.v1`, spec v1.13.0).
#[allow(
    clippy::all,
    missing_debug_implementations,
    reason = "generated code: prost and tonic decide its shape"
)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

/// The kubelet's plugin registration (`pluginregistration`, v1): a plugin puts a socket serving
/// `Registration` in the node's registry directory; the kubelet (here the agent) asks it who it
/// is and tells it whether it was registered.
#[allow(
    clippy::all,
    missing_debug_implementations,
    reason = "generated code: prost and tonic decide its shape"
)]
pub mod registration {
    tonic::include_proto!("pluginregistration");
}

pub use socket::{Channel, connect, serve};
