//! CustomResourceDefinitions: their names' defaults, the finalizer that removes their objects
//! before them, the status kube-apiserver answers a create with, and the plurals they may not
//! take from the built-ins.

use apiary_api::validation;
use serde_json::{Value, json};

use super::{KindStrategy, add_finalizer, invalid, object_name, validate_built_in};
use crate::apiserver::{
    custom_resources::{self, CLEANUP_FINALIZER},
    objects::Result,
    resources::ResourceType,
};

/// The strategy of `apiextensions.k8s.io/v1` `CustomResourceDefinition`.
#[derive(Debug)]
pub struct CustomResourceDefinitions;

impl KindStrategy for CustomResourceDefinitions {
    fn prepare_write(&self, _resource: &ResourceType, object: &mut Value) {
        default_crd(object);
    }

    fn prepare_for_create(&self, resource: &ResourceType, object: &mut Value) {
        self.default(resource, object);
        // Its objects go before it does.
        add_finalizer(object, CLEANUP_FINALIZER);
        // What kube-apiserver answers a create with, before the CRD is established.
        let storage = object["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["storage"] == true)
            .map(|v| v["name"].clone())
            .collect::<Vec<_>>();
        object["status"] = json!({
            "acceptedNames": { "plural": "", "kind": "" },
            "storedVersions": storage,
        });
    }

    fn validate(
        &self,
        resource: &ResourceType,
        _sub: Option<&str>,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<()> {
        let name = object_name(object);
        if let Ok(crd) = apiary_api::meta::from_json(object.clone())
            && let Some(why) = custom_resources::conflict_with_built_ins(&crd)
        {
            let field = "spec.names.plural";
            return invalid(
                resource,
                name,
                &vec![validation::FieldError::invalid(field, name, why)],
            );
        }
        validate_built_in(resource, object, old)
    }
}

/// A CRD's defaults: `singular` is the kind lowercased, `listKind` the kind + `List`, and
/// conversion `None`.
fn default_crd(crd: &mut Value) {
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let names = &mut crd["spec"]["names"];
    if names.is_object() && !kind.is_empty() {
        if names["singular"].as_str().is_none_or(str::is_empty) {
            names["singular"] = json!(kind.to_ascii_lowercase());
        }
        if names["listKind"].as_str().is_none_or(str::is_empty) {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    if crd["spec"].is_object() && crd["spec"]["conversion"].is_null() {
        crd["spec"]["conversion"] = json!({ "strategy": "None" });
    }
}
