//! `autoscaling/v1`: Scale, the body of the `scale` subresource (`kubectl scale`).

use serde::{Deserialize, Serialize};

use crate::meta::{Object, is_zero};

/// The replica count of a scalable resource (`deployments/scale`, …).
pub type Scale = Object<ScaleSpec, ScaleStatus>;

/// The desired replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScaleSpec {
    #[serde(skip_serializing_if = "is_zero")]
    pub replicas: i32,
}

/// The observed replicas and the label selector of the pods, in string form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScaleStatus {
    pub replicas: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub selector: String,
}
