//! Custom resources: what a CustomResourceDefinition's version says of its objects. Its
//! structural schema prunes, defaults and validates them; its generation counts changes to all
//! but metadata (and status, when that is a subresource); its printer columns are its table and
//! its `scale` subresource says where replicas are.

use std::sync::Arc;

use apiary_api::validation;
use serde_json::Value;

use super::{KindStrategy, ScalePaths, invalid, object_name, validate_built_in};
use crate::apiserver::{
    custom_resources::CustomVersion,
    error::ApiError,
    objects::Result,
    resources::{ResourceType, StorageKeys as _},
    tables,
};

/// The strategy of a custom resource's version; without one (its CRD went away during the
/// request) only the rules of every object apply.
#[derive(Clone, Debug)]
pub struct Custom {
    version: Option<Arc<CustomVersion>>,
}

impl Custom {
    pub fn new(version: Option<Arc<CustomVersion>>) -> Self {
        Self { version }
    }
}

impl KindStrategy for Custom {
    fn prune_and_default(&self, object: &mut Value) -> Vec<String> {
        let Some(custom) = &self.version else {
            return Vec::new();
        };
        let unknown = apiary_api::structural::prune(&custom.schema, object);
        apiary_api::structural::default(&custom.schema, object);
        unknown
    }

    /// Its unknown fields are [`KindStrategy::prune_and_default`]'s, pruned.
    fn unknown_fields(&self, _resource: &ResourceType, _object: &Value) -> Vec<String> {
        Vec::new()
    }

    fn apply_shape(&self) -> apiary_api::apply::Shape<'_> {
        match &self.version {
            Some(custom) => apiary_api::apply::Shape::Schema(Some(&custom.schema)),
            None => apiary_api::apply::Shape::BUILT_IN,
        }
    }

    /// The schema's defaults are [`KindStrategy::prune_and_default`]'s.
    fn default(&self, _resource: &ResourceType, _object: &mut Value) {}

    /// A custom object's generation counts changes to anything but its metadata (and its
    /// status, when that is a subresource).
    fn generation_changed(&self, resource: &ResourceType, old: &Value, new: &Value) -> bool {
        let content = |o: &Value| {
            let mut o = o.clone();
            if let Some(fields) = o.as_object_mut() {
                fields.remove("metadata");
                if resource.has_subresource("status") {
                    fields.remove("status");
                }
            }
            o
        };
        content(old) != content(new)
    }

    fn validate(
        &self,
        resource: &ResourceType,
        _sub: Option<&str>,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<()> {
        match &self.version {
            Some(custom) => invalid(
                resource,
                object_name(object),
                &validate_custom(custom, object, old)?,
            ),
            None => validate_built_in(resource, object, old),
        }
    }

    fn table(&self, resource: &ResourceType, objects: &[Value], metadata: Value) -> Value {
        match &self.version {
            Some(custom) => tables::custom_table(&custom.columns, objects, metadata),
            None => tables::table(resource, objects, metadata),
        }
    }

    fn scale_paths(&self) -> ScalePaths {
        self.version
            .as_ref()
            .and_then(|custom| custom.scale.clone())
    }
}

/// A custom object against its version's schema, and its metadata as every object's.
fn validate_custom(
    custom: &CustomVersion,
    object: &Value,
    old: Option<&Value>,
) -> Result<validation::ErrorList> {
    let meta = |v: &Value| {
        apiary_api::meta::from_json::<apiary_api::meta::ObjectMeta>(v["metadata"].clone())
            .map_err(|e| ApiError::bad_request(format!("invalid metadata: {e}")))
    };
    let new_meta = meta(object)?;
    let mut errors = validation::validate_object_meta(
        &new_meta,
        custom.info.namespaced,
        validation::NameRule::Subdomain,
    );
    if let Some(old) = old {
        errors.extend(validation::validate_object_meta_update(
            &meta(old)?,
            &new_meta,
        ));
    }
    errors.extend(apiary_api::structural::validate(
        &custom.schema,
        object,
        old,
    ));
    Ok(errors)
}
