//! Kubernetes-shaped API types, shared by the control plane, the node agent and the CLI.
//!
//! Serde and validation only: no I/O, no async runtime.
//!
//! - [`meta`]: `TypeMeta`, `ObjectMeta`, the generic [`Object`] and [`List`], conditions,
//!   watch events.
//! - One module per API group version: [`core_v1`], [`apps_v1`], [`batch_v1`],
//!   [`networking_v1`], [`discovery_v1`], [`coordination_v1`], [`rbac_v1`], [`autoscaling_v1`],
//!   [`storage_v1`], and Apiary's
//!   own [`apiary_v1`] (SecurityIdentity).
//! - Shared value types: [`selector`] (label and field selectors), [`intstr`], [`quantity`].
//! - [`cron`]: CronJob schedules (robfig/cron's syntax, as Kubernetes reads it) and their run
//!   times.
//! - [`resource`]: the registry of served resources and the discovery documents.
//! - [`events`]: correlating repeated Events into one with a count, as client-go's recorder.
//! - [`remotecommand`]: the channels and exit statuses of `kubectl exec` over WebSocket.
//! - [`validation`]: per-kind checks with Kubernetes' messages; [`status`]: error bodies.
//! - [`protobuf`]: Kubernetes' protobuf bodies, read into and written from the same JSON.

pub mod admissionregistration_v1;
pub mod apiary_v1;
pub mod apiextensions_v1;
pub mod apply;
pub mod apps_v1;
pub mod autoscaling_v1;
pub mod autoscaling_v2;
pub mod batch_v1;
pub mod bootstrap_token;
pub mod cel_rules;
pub mod certificates_v1;
pub mod coordination_v1;
pub mod core_v1;
pub mod cron;
pub mod discovery_v1;
pub mod duplicates;
pub mod events;
pub mod intstr;
pub mod meta;
pub mod networking_v1;
pub mod protobuf;
pub mod quantity;
pub mod rbac_v1;
pub mod remotecommand;
pub mod resource;
pub mod selector;
pub mod status;
pub mod storage_v1;
pub mod strategic;
pub mod structural;
pub mod validation;
pub mod yaml;

pub use intstr::IntOrString;
pub use meta::{
    Condition, List, ListMeta, NoStatus, Object, ObjectMeta, ObjectRef, OwnerReference, Time,
    TypeMeta, WatchEvent, WatchEventType, from_json,
};
pub use quantity::Quantity;
pub use resource::{Resource, ResourceInfo};
pub use selector::LabelSelector;
pub use status::Status;
pub use validation::FieldError;
