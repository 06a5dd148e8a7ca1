//! Secrets: `stringData` is a write-only convenience, folded into `data` on every write.

use serde_json::Value;

use super::super::KindStrategy;
use crate::apiserver::resources::ResourceType;

/// The strategy of `v1` `Secret`.
#[derive(Debug)]
pub struct Secrets;

impl KindStrategy for Secrets {
    fn prepare_write(&self, _resource: &ResourceType, object: &mut Value) {
        apiary_api::core_v1::Secret::fold_string_data(object);
    }
}
