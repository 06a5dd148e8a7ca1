//! HorizontalPodAutoscalers: stored as `autoscaling/v2`, also written through `autoscaling/v1`
//! (what `kubectl autoscale` sends), whose objects are converted to the stored form before
//! they are defaulted and validated (an update's merge with the old object, and its generation,
//! happen before, in the version of the request, where both are in one shape).

use serde_json::Value;

use super::KindStrategy;
use crate::apiserver::resources::ResourceType;

/// The strategy of `autoscaling` `HorizontalPodAutoscaler`, in either version.
#[derive(Debug)]
pub struct HorizontalPodAutoscalers;

impl KindStrategy for HorizontalPodAutoscalers {
    fn prepare_write(&self, resource: &ResourceType, object: &mut Value) {
        apiary_api::resource::served_to_stored(resource, object);
    }

    /// Checked once converted, so against the stored version's schema. (What a v1 client sends
    /// that v1 has no field for is dropped by the conversion, not reported.)
    fn unknown_fields(&self, _resource: &ResourceType, object: &Value) -> Vec<String> {
        crate::apiserver::openapi::unknown_fields(
            &apiary_api::resource::HORIZONTAL_POD_AUTOSCALERS,
            object,
        )
    }
}
