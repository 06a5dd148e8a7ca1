//! The node's image store: content-addressed blobs, layers unpacked once and shared as overlayfs
//! lowerdirs, imports of OCI and `docker save` archives, and pulls from registries.

mod archive;
pub mod build;
pub mod digest;
mod error;
mod layer;
pub mod manifest;
mod reference;
mod registry;
mod store;

pub use error::{Error, Result};
pub use layer::{EntryKind, classify as classify_layer_entry};
pub use reference::{Reference, normalize_reference};
pub use registry::{PullOptions, PullProgress};
pub use store::{Image, ImageConfig, ImageStore, ImageSummary};
